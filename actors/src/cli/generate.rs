//! `odmoe generate`: stream text from a prompt to stdout; timings to stderr.

use std::io::Write;
use std::path::Path;

use odmoe::generate::{generate, GenerateOptions};
use odmoe::model::{ExpertMode, Model, Prefetch};
use odmoe::sampling::SamplingParams;
use odmoe::tokenizer::Tokenizer;

/// What to generate.
pub struct Args {
    pub prompt: String,
    pub chat: bool,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// How the model runs (from the flags, the configuration file and the environment).
pub struct RunSettings {
    pub mode: ExpertMode,
    pub prefetch: Prefetch,
    /// Element type of the key/value cache.
    pub kv_type: odmoe::model::KvType,
    pub shadow: Option<std::sync::Arc<odmoe::shadow::Shadow>>,
    pub backend: super::Backend,
    /// Device memory for routed experts on the GPU backend.
    pub gpu_expert_budget: u64,
    /// Positions asked for (`--ctx-size`, `limits.context`).
    pub context: Option<usize>,
    /// The memory keys and values may take (`limits.kv_budget`).
    pub kv_budget: Option<u64>,
}

/// Opens the model at `path` as `r` says.
pub fn open_for_run(path: &Path, r: &RunSettings) -> Result<Model, Box<dyn std::error::Error>> {
    let mut m = super::open_model(path, &r.mode, super::expert_packing(r.backend))?;
    m.set_prefetch(r.prefetch);
    m.set_kv_type(r.kv_type);
    if let Some(s) = r.shadow.clone() {
        m.set_shadow(s)?;
    }
    Ok(m)
}

/// The context a generation may use ([`super::context::resolve`]), said on stderr.
pub fn max_context(m: &Model, r: &RunSettings) -> usize {
    let c = super::context::resolve(m, r.context, r.kv_budget);
    eprintln!("context: {} positions ({})", c.positions, c.why);
    c.positions
}

pub fn run(model: &Path, a: Args, r: RunSettings) -> Result<(), Box<dyn std::error::Error>> {
    a.sampling.validate()?;
    if a.prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    let m = open_for_run(model, &r)?;
    let tok = Tokenizer::from_gguf(m.metadata())?;
    let ids = if a.chat {
        let template = odmoe::tokenizer::ChatTemplate::from_gguf(m.metadata())?;
        let msgs = [odmoe::tokenizer::ChatMessage::new("user", &a.prompt)];
        // the template's markup becomes control tokens, the prompt's text never does
        let (text, prompt) = template.render_spans(&msgs, true)?;
        tok.encode_spans(&text, true, true, &prompt)?
    } else {
        tok.encode(&a.prompt, true, false)?
    };
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        stop: a.stop,
        sampling: a.sampling,
        max_context: max_context(&m, &r),
    };
    let mut out = std::io::stdout().lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
        out.flush()?;
    }
    // a closed stdout (e.g. `| head`) ends generation quietly
    let on_text = |s: &str| out.write_all(s.as_bytes()).and_then(|_| out.flush()).is_ok();
    let g = match super::resolve_backend(r.backend, &m) {
        super::Backend::Gpu => gpu_generate(&m, &tok, &ids, &opts, r.gpu_expert_budget, on_text)?,
        _ => generate(&m, &tok, &ids, &opts, on_text)?,
    };
    writeln!(out).ok();
    eprintln!(
        "\nprompt: {} tokens in {:.2} s ({:.1} tokens/s); generated: {} tokens in {:.2} s ({:.1} tokens/s); finish: {}",
        g.prompt_tokens,
        g.prompt_seconds,
        g.prompt_tokens as f64 / g.prompt_seconds.max(1e-9),
        g.generated_tokens,
        g.decode_seconds,
        g.generated_tokens as f64 / g.decode_seconds.max(1e-9),
        g.finish
    );
    print_expert_stats(&m);
    Ok(())
}

/// The expert cache's figures on stderr, when experts are paged.
pub fn print_expert_stats(m: &Model) {
    if let Some(p) = m.pager() {
        let s = p.stats();
        eprintln!(
            "experts: {} hits, {} misses ({:.1}% hit rate), {:.1} MiB read, {} evictions, {:.2} s waiting on reads; reads p50 {:.1} ms, p99 {:.1} ms; cache holds {:.1} MiB",
            s.hits,
            s.misses,
            100.0 * s.hit_rate(),
            s.bytes_read as f64 / (1u64 << 20) as f64,
            s.evictions,
            s.wait_micros as f64 / 1e6,
            s.read_p50_micros as f64 / 1e3,
            s.read_p99_micros as f64 / 1e3,
            p.cached_bytes() as f64 / (1u64 << 20) as f64
        );
        if m.prefetch() != Prefetch::Off {
            eprintln!(
                "prefetch: {} reads, {} served a later demand, {:.1} MiB wasted, {} cancelled before reading",
                s.prefetch_reads,
                s.prefetch_hits,
                s.prefetch_wasted_bytes as f64 / (1u64 << 20) as f64,
                s.prefetch_cancelled
            );
        }
    }
}

/// [`generate`] with the wgpu backend: the model's weights and the KV cache on the device.
#[cfg(feature = "gpu")]
fn gpu_generate(m: &Model, tok: &Tokenizer, ids: &[u32], opts: &GenerateOptions, expert_budget: u64, on_text: impl FnMut(&str) -> bool) -> Result<odmoe::generate::Generation, Box<dyn std::error::Error>> {
    let gpu = super::logits::open_gpu()?;
    let t = std::time::Instant::now();
    let g = odmoe::model::GpuModel::with_expert_budget(m, &gpu, expert_budget)?;
    let gb = |b: u64| if b >= 100_000_000 { format!("{:.2} GB", b as f64 / 1e9) } else { format!("{:.1} MB", b as f64 / 1e6) };
    let experts = g.all_expert_bytes()?;
    if experts == 0 {
        eprintln!("gpu: weights uploaded in {:.1} s", t.elapsed().as_secs_f64());
    } else if g.experts_resident() {
        eprintln!("gpu: weights uploaded in {:.1} s; all routed experts on the device ({}), routed there", t.elapsed().as_secs_f64(), gb(experts));
    } else {
        eprintln!("gpu: weights uploaded in {:.1} s; routed experts ({}) exceed the device expert budget ({}, gpu.expert_budget or --gpu-expert-budget): fetched as routed, the latest kept", t.elapsed().as_secs_f64(), gb(experts), gb(expert_budget));
    }
    let mut cache = g.new_cache(opts.max_context);
    Ok(odmoe::generate::generate_with(|t| g.forward(t, &mut cache, odmoe::model::Logits::Last), tok, ids, opts, on_text)?)
}

#[cfg(not(feature = "gpu"))]
fn gpu_generate(_: &Model, _: &Tokenizer, _: &[u32], _: &GenerateOptions, _: u64, _: impl FnMut(&str) -> bool) -> Result<odmoe::generate::Generation, Box<dyn std::error::Error>> {
    Err("this build has no GPU backend (built without the gpu feature); use --backend cpu".into())
}
