//! Subcommands of the `odmoe` binary. Each one is a small module; the argument
//! definitions here are the command-line contract (see DESIGN.md).

mod chat;
mod collect;
pub mod context;
mod convert;
mod demo;
mod generate;
pub mod info;
pub mod logits;
mod tokenize;
mod train_shadow;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, KvTypeConfig, PrefetchMode};

/// Runs Mixture-of-Experts language models from GGUF files, larger than memory if need be:
/// routed experts are read from disk into a cache of the size you set (--cache-budget).
/// Without --model, commands use the demo model that ships with odmoe.
#[derive(Parser)]
#[command(name = "odmoe", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Compute backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The CPU reference backend.
    Cpu,
    /// wgpu (Vulkan/Metal/DX12).
    Gpu,
    /// The GPU when there is a hardware adapter that can run the model, else the CPU
    /// (a software Vulkan driver such as lavapipe does not count).
    Auto,
}

/// Whether mapped experts get the CPU's packed copy under backend `b`: not when the GPU
/// is asked for by name (the copy would cost memory and load time for nothing; with
/// `auto` the choice is made after loading, so the default applies).
pub fn expert_packing(b: Backend) -> odmoe::model::PackExperts {
    if b == Backend::Gpu {
        odmoe::model::PackExperts::Never
    } else {
        odmoe::model::PackExperts::Auto
    }
}

/// The backend `b` means for `m`: `Auto` becomes the GPU or the CPU, saying which and
/// why on stderr.
pub fn resolve_backend(b: Backend, m: &odmoe::model::Model) -> Backend {
    if b != Backend::Auto {
        return b;
    }
    let (chosen, why) = auto_backend(m);
    eprintln!("backend: {} ({why})", if chosen == Backend::Gpu { "gpu" } else { "cpu" });
    chosen
}

#[cfg(feature = "gpu")]
fn auto_backend(m: &odmoe::model::Model) -> (Backend, String) {
    match odmoe::compute::gpu::Gpu::open() {
        Ok(Some(g)) if g.info.device_type == odmoe::compute::gpu::DeviceType::Cpu => (Backend::Cpu, format!("the only adapter is a software one: {}", g.describe())),
        Ok(Some(g)) => match odmoe::model::gpu_unsupported(m) {
            Some(why) => (Backend::Cpu, format!("{} cannot run this model: {why}", g.describe())),
            None => (Backend::Gpu, g.describe()),
        },
        Ok(None) => (Backend::Cpu, "no GPU adapter".into()),
        Err(e) => (Backend::Cpu, format!("the GPU did not open: {e}")),
    }
}

#[cfg(not(feature = "gpu"))]
fn auto_backend(_: &odmoe::model::Model) -> (Backend, String) {
    (Backend::Cpu, "this build has no GPU backend".into())
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible HTTP API (chat and text completions, streamed as SSE).
    Serve {
        /// GGUF model file or expert store; the demo model if not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// TOML configuration file (see odmoe.example.toml); ODMOE_<SECTION>_<KEY>
        /// environment variables override it, and these flags override both.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1].
        #[arg(long)]
        host: Option<String>,
        /// Port (0 picks a free one) [default: 8080].
        #[arg(long)]
        port: Option<u16>,
        /// Read routed experts on demand into a cache of this many bytes (e.g. 512MiB,
        /// 4GiB, unlimited). Without it, experts are reached through the file mapping.
        #[arg(long)]
        cache_budget: Option<String>,
        /// Read experts ahead of the layer that needs them [default: off].
        #[arg(long, value_enum)]
        prefetch: Option<PrefetchMode>,
        /// The shadow predictor for `--prefetch shadow` (made by `odmoe train-shadow`).
        #[arg(long)]
        shadow: Option<PathBuf>,
        /// Element type of each session's key/value cache (f16: half the memory, keys
        /// and values rounded; both backends) [default: f32].
        #[arg(long, value_enum)]
        kv_type: Option<KvTypeConfig>,
        /// Where the sessions' steps run (gpu: as for generate; auto: a hardware GPU that
        /// can run the model, else the CPU) [default: server.backend, cpu].
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Device memory for routed experts on the GPU (e.g. 24GiB) [default: gpu.expert_budget,
        /// 1GiB]: when every expert fits, all are uploaded once and routed on the device.
        #[arg(long)]
        gpu_expert_budget: Option<String>,
        /// Positions per session, prompt and reply together [default: limits.context, or
        /// the model's trained context within the memory keys and values may take].
        #[arg(short = 'c', long)]
        ctx_size: Option<usize>,
    },
    /// Print the logits at every position as JSON: {"logits": [[f32; vocab]; n_tokens]}.
    Logits {
        /// GGUF model file (any shard of a split model); the demo model if not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Comma-separated token ids, e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', required = true)]
        tokens: Vec<u32>,
        /// Compute backend.
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        backend: Backend,
        /// Read routed experts on demand into a cache of this many bytes (e.g. 512MiB,
        /// 4GiB, unlimited). Without it, experts are reached through the file mapping.
        #[arg(long)]
        cache_budget: Option<String>,
    },
    /// Generate text from a prompt, streamed to stdout (timings on stderr).
    #[command(allow_negative_numbers = true)]
    Generate {
        /// GGUF model file (any shard of a split model) or expert store; the demo model if
        /// not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// The prompt.
        #[arg(short, long)]
        prompt: String,
        /// Wrap the prompt in the model's chat template as a user message.
        #[arg(long)]
        chat: bool,
        /// Most tokens to generate.
        #[arg(short = 'n', long, default_value_t = 256)]
        max_tokens: usize,
        /// Stop before this string (may be repeated).
        #[arg(long)]
        stop: Vec<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Talk with the model in the terminal: each line you type is a user message, the
    /// reply streams back, and the conversation (in the model's chat template) carries on.
    /// Ctrl-C stops a reply; Ctrl-D, /exit or /quit ends the chat.
    #[command(allow_negative_numbers = true)]
    Chat {
        /// GGUF model file (any shard of a split model) or expert store; the demo model if
        /// not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// A system message that opens the conversation.
        #[arg(short, long)]
        system: Option<String>,
        /// Most tokens in one reply.
        #[arg(short = 'n', long, default_value_t = 1024)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the model over a text corpus and record routing traces: per token and MoE
    /// layer, the router's input (f16) and the experts and weights it chose.
    Collect {
        /// GGUF model file or expert store; the demo model if not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Text file to run over (read as UTF-8).
        #[arg(long)]
        corpus: PathBuf,
        /// Trace file to write (replaced if it exists).
        #[arg(long)]
        output: PathBuf,
        /// Stop after this many tokens (default: the whole corpus).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Tokens per window: the corpus is cut into windows run from an empty context.
        #[arg(long, default_value_t = 512)]
        window: usize,
        /// Read routed experts on demand into a cache of this many bytes.
        #[arg(long)]
        cache_budget: Option<String>,
    },
    /// Train the shadow predictor on routing traces and compare it, on held-out tokens,
    /// with the baselines it must beat.
    TrainShadow {
        /// Trace file from `odmoe collect`.
        #[arg(long)]
        traces: PathBuf,
        /// Predictor file to write (safetensors).
        #[arg(long)]
        output: PathBuf,
        /// MoE layers ahead to predict.
        #[arg(long, default_value_t = 2)]
        lookahead: usize,
        /// Width of the predictor's shared layer.
        #[arg(long, default_value_t = 256)]
        rank: usize,
        /// Passes over the training tokens.
        #[arg(long, default_value_t = 6)]
        epochs: usize,
        /// Fraction of the tokens (the last ones) held out for evaluation.
        #[arg(long, default_value_t = 0.1)]
        holdout: f64,
        /// The model the traces came from, for the router baseline (default: the path
        /// recorded in the traces, if it still exists).
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Random seed.
        #[arg(long, default_value_t = 20261127)]
        seed: u64,
    },
    /// Tokenize text with the model's tokenizer; prints {"ids": [...]}.
    Tokenize {
        /// GGUF model file or expert store; the demo model if not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Text to tokenize.
        #[arg(long, conflicts_with = "file")]
        text: Option<String>,
        /// File whose contents to tokenize.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Do not add BOS even if the model's metadata asks for it.
        #[arg(long)]
        no_bos: bool,
        /// Turn special-token text such as <|im_start|> into that token.
        #[arg(long)]
        special: bool,
    },
    /// Turn token ids back into text; prints {"text": "..."}.
    Detokenize {
        /// GGUF model file or expert store; the demo model if not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<u32>,
    },
    /// Convert a GGUF model (single or split) into an expert store directory for paging.
    Convert {
        /// GGUF model file (any shard of a split model); the demo model if not given.
        #[arg(short, long, visible_alias = "input")]
        model: Option<PathBuf>,
        /// Output directory (must not exist).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Describe a model: architecture, hyperparameters, tensor types, base and expert bytes.
    Info {
        /// GGUF model file (any shard of a split model) or expert store; the demo model if
        /// not given.
        #[arg(short, long)]
        model: Option<PathBuf>,
    },
}

/// How `generate` and `chat` pick each token.
#[derive(clap::Args)]
struct SamplingArgs {
    /// Sampling temperature (0 = greedy).
    #[arg(short, long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn params(&self) -> odmoe::sampling::SamplingParams {
        odmoe::sampling::SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed,
            ..Default::default()
        }
    }
}

/// Where and how `generate` and `chat` run the model.
#[derive(clap::Args)]
struct RunArgs {
    /// Read routed experts on demand into a cache of this many bytes (e.g. 512MiB,
    /// 4GiB, unlimited). Without it, experts are reached through the file mapping.
    #[arg(long)]
    cache_budget: Option<String>,
    /// Read experts ahead of the layer that needs them [default: off].
    #[arg(long, value_enum)]
    prefetch: Option<PrefetchMode>,
    /// The shadow predictor for `--prefetch shadow` (made by `odmoe train-shadow`).
    #[arg(long)]
    shadow: Option<PathBuf>,
    /// Element type of the key/value cache (f16: half the memory, keys and values
    /// rounded; both backends) [default: f32].
    #[arg(long, value_enum)]
    kv_type: Option<KvTypeConfig>,
    /// TOML configuration file: its [cache], [prefetch], [threads] and [gpu] sections
    /// apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Compute backend (gpu: models with F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K,
    /// Q3_K, Q4_K, Q5_K or Q6_K weights; auto: a hardware GPU that can run the model,
    /// else the CPU).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Device memory for routed experts on the GPU (e.g. 24GiB) [default: gpu.expert_budget,
    /// 1GiB]: when every expert fits, all are uploaded once and routed on the device.
    #[arg(long)]
    gpu_expert_budget: Option<String>,
    /// Positions, prompt and generated tokens together [default: limits.context, or the
    /// model's trained context within the memory keys and values may take].
    #[arg(short = 'c', long)]
    ctx_size: Option<usize>,
}

impl RunArgs {
    /// The configuration these flags (and the file and environment) make, with the
    /// compute threads started.
    fn settings(self) -> Result<generate::RunSettings, Box<dyn std::error::Error>> {
        let mut c = Config::load(self.config.as_deref(), std::env::vars())?;
        apply_cache_flags(&mut c, self.cache_budget.as_deref(), self.prefetch, self.shadow)?;
        if let Some(t) = self.kv_type {
            c.cache.kv_type = t;
        }
        apply_gpu_flags(&mut c, self.gpu_expert_budget.as_deref())?;
        apply_threads(&c)?;
        if self.ctx_size == Some(0) {
            return Err("--ctx-size must be at least 1".into());
        }
        let context = self.ctx_size.or(c.limits.context);
        Ok(generate::RunSettings { mode: c.expert_mode(), prefetch: c.prefetch(), shadow: c.shadow()?, kv_type: c.kv_type(), backend: self.backend, gpu_expert_budget: c.gpu.expert_budget.0, context, kv_budget: c.limits.kv_budget.map(|s| s.0) })
    }
}

/// Parses the command line and runs the subcommand.
pub fn run() -> Result<(), Box<dyn std::error::Error>> {
    let command = Cli::parse().command;
    if !matches!(command, Command::Serve { .. }) {
        end_quietly_on_closed_stdout();
    }
    match command {
        Command::Logits { model, tokens, backend, cache_budget } => {
            logits::run(&demo::resolve(model)?, &tokens, backend, &expert_mode(cache_budget.as_deref())?)
        }
        Command::Info { model } => info::run(&demo::resolve(model)?),
        Command::Serve { model, config, host, port, cache_budget, prefetch, shadow, kv_type, backend, gpu_expert_budget, ctx_size } => {
            let mut c = Config::load(config.as_deref(), std::env::vars())?;
            if let Some(h) = host {
                c.server.host = h;
            }
            if let Some(p) = port {
                c.server.port = p;
            }
            apply_cache_flags(&mut c, cache_budget.as_deref(), prefetch, shadow)?;
            if let Some(t) = kv_type {
                c.cache.kv_type = t;
            }
            if let Some(b) = backend {
                c.server.backend = b;
            }
            apply_gpu_flags(&mut c, gpu_expert_budget.as_deref())?;
            if let Some(n) = ctx_size {
                c.limits.context = Some(n);
            }
            c = c.checked()?;
            apply_threads(&c)?;
            let server = crate::server::ServerConfig::from_config(&c)?;
            crate::server::run(&demo::resolve(model)?, &c.expert_mode(), server)
        }
        Command::Convert { model, output } => convert::run(&demo::resolve(model)?, &output),
        Command::Generate { model, prompt, chat, max_tokens, stop, sampling, run } => {
            generate::run(&demo::resolve(model)?, generate::Args { prompt, chat, max_tokens, sampling: sampling.params(), stop }, run.settings()?)
        }
        Command::Chat { model, system, max_tokens, sampling, run } => chat::run(&demo::resolve(model)?, chat::Args { system, max_tokens, sampling: sampling.params() }, run.settings()?),
        Command::Tokenize { model, text, file, no_bos, special } => tokenize::tokenize(&demo::resolve(model)?, text, file.as_deref(), no_bos, special),
        Command::Detokenize { model, ids } => tokenize::detokenize(&demo::resolve(model)?, &ids),
        Command::Collect { model, corpus, output, max_tokens, window, cache_budget } => {
            collect::run(&demo::resolve(model)?, &expert_mode(cache_budget.as_deref())?, &corpus, &output, max_tokens, window)
        }
        Command::TrainShadow { traces, output, lookahead, rank, epochs, holdout, model, seed } => {
            let opts = odmoe::shadow::TrainOptions { lookahead, rank, epochs, holdout, seed, ..Default::default() };
            train_shadow::run(&traces, &output, &opts, model.as_deref())
        }
    }
}

/// The expert mode a `--cache-budget` flag asks for (default settings otherwise).
fn expert_mode(budget: Option<&str>) -> Result<odmoe::model::ExpertMode, Box<dyn std::error::Error>> {
    let mut c = Config::default();
    apply_cache_flags(&mut c, budget, None, None)?;
    Ok(c.expert_mode())
}

/// `--cache-budget`, `--prefetch` and `--shadow` override the configuration.
fn apply_cache_flags(c: &mut Config, budget: Option<&str>, prefetch: Option<PrefetchMode>, shadow: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(s) = shadow {
        c.prefetch.shadow = Some(s);
    }
    if let Some(b) = budget {
        c.cache.budget = Some(crate::config::Size(odmoe::experts::parse_size(b)?));
    }
    if let Some(p) = prefetch {
        c.prefetch.mode = p;
    }
    Ok(())
}

/// `--gpu-expert-budget` over `[gpu] expert_budget`.
fn apply_gpu_flags(c: &mut Config, expert_budget: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(b) = expert_budget {
        c.gpu.expert_budget = crate::config::Size(odmoe::experts::parse_size(b).map_err(|e| format!("--gpu-expert-budget: {e}"))?);
    }
    Ok(())
}

/// Sizes the compute thread pool as `[threads] compute` says (0: one per core) and names
/// its threads `odmoe-compute-N` (what `top -H` shows; the load benchmark tells the
/// engine's CPU time from the server's by it).
fn apply_threads(c: &Config) -> Result<(), Box<dyn std::error::Error>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(c.threads.compute)
        .thread_name(|i| format!("odmoe-compute-{i}"))
        .build_global()
        .map_err(|e| format!("threads.compute: {e}"))?;
    Ok(())
}

/// Lets a command whose reader went away (`odmoe logits ... | head`) end as `cat` does,
/// quietly, instead of failing with "Broken pipe": the Rust runtime ignores SIGPIPE, so
/// each write would return an error; the default action ends the process. The server
/// keeps ignoring it (a client that leaves is an error on its socket, not the end).
fn end_quietly_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: restores a signal's default action at startup, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Opens a model as `open_with_packing` does, with a progress bar on stderr (where it
/// is a terminal) once copying the weights into the CPU's layout has taken a second.
pub fn open_model(path: &std::path::Path, mode: &odmoe::model::ExpertMode, pack: odmoe::model::PackExperts) -> odmoe::Result<odmoe::model::Model> {
    use indicatif::{ProgressBar, ProgressStyle};
    let start = std::time::Instant::now();
    let bar: std::sync::OnceLock<ProgressBar> = std::sync::OnceLock::new();
    let progress = |done: u64, total: u64| {
        if bar.get().is_none() && start.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        let b = bar.get_or_init(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template("loading: preparing weights [{bar:40}] {bytes}/{total_bytes} ({eta})") {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        b.set_position(done);
    };
    let m = odmoe::model::Model::open_reporting(path, mode, pack, &progress);
    if let Some(b) = bar.get() {
        b.finish_and_clear();
        eprintln!("loaded in {:.1} s", start.elapsed().as_secs_f64());
    }
    m
}

/// `msg` fit for a terminal or a log line: control characters other than newlines
/// escaped, and each line cut at 300 characters (an error can quote a name read from a
/// damaged file, which may be any bytes and any length).
pub fn printable(msg: &str) -> String {
    const MAX: usize = 300;
    let mut out = String::with_capacity(msg.len().min(4 * MAX));
    for (i, line) in msg.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut chars = line.chars();
        for c in chars.by_ref().take(MAX) {
            if c.is_control() && c != '\t' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        let rest = chars.count();
        if rest > 0 {
            out.push_str(&format!("… ({rest} more characters)"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn errors_are_printable_and_bounded() {
        assert_eq!(printable("plain\nlines\tand tabs"), "plain\nlines\tand tabs");
        assert_eq!(printable("bell\u{7}esc\u{1b}[31m"), "bell\\u{7}esc\\u{1b}[31m");
        let long = format!("name {}", "\u{fffd}".repeat(11_000));
        let p = printable(&long);
        assert!(p.chars().count() < 340 && p.ends_with("(10705 more characters)"), "{p}");
    }
}
