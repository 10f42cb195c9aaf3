//! `odmoe collect`: runs a model over a text corpus and streams routing traces to disk
//! (format: `odmoe::shadow::trace`), with a progress bar over the corpus bytes.
//!
//! The corpus is read and tokenized a piece at a time (about 64 KiB of text, cut at a line
//! end) and cut into windows of `window` tokens, each run from an empty context in prompt
//! chunks; nothing but the current window is held, so memory stays flat.

use std::io::{BufRead, BufReader};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use odmoe::model::router::Route;
use odmoe::model::{ExpertMode, Logits, Model, Sequence};
use odmoe::shadow::{TraceHeader, TraceWriter};
use odmoe::tokenizer::Tokenizer;

/// Tokens per forward pass within a window.
const CHUNK: usize = 128;
/// Text per tokenizer call.
const PIECE_BYTES: usize = 64 * 1024;

pub fn run(model: &Path, mode: &ExpertMode, corpus: &Path, output: &Path, max_tokens: Option<usize>, window: usize) -> Result<(), Box<dyn std::error::Error>> {
    let m = Model::open_with(model, mode)?;
    let tok = Tokenizer::from_gguf(m.metadata())?;
    let cfg = m.config();
    let moe = cfg.moe.as_ref().ok_or("the model has no routed experts: nothing to trace")?;
    let layers = m.moe_layers();
    let window = window.clamp(2, cfg.n_ctx_train.max(2));
    let file = std::fs::File::open(corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let total = file.metadata()?.len();
    let header = TraceHeader { n_embd: cfg.n_embd, n_expert: moe.n_expert, top_k: moe.n_expert_used, layers: layers.clone(), source: model.display().to_string() };
    let mut out = TraceWriter::create(output, header)?;
    let bar = ProgressBar::new(total);
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} of text ({eta})")?.progress_chars("=> "));
    let limit = max_tokens.unwrap_or(usize::MAX);
    let mut reader = BufReader::new(file);
    let (mut pending, mut text, mut read) = (Vec::<u32>::new(), String::new(), 0u64);
    let started = std::time::Instant::now();
    loop {
        // fill the pending tokens with at least a window, a piece of text at a time
        let mut eof = false;
        while pending.len() < window && !eof {
            text.clear();
            while text.len() < PIECE_BYTES {
                let n = reader.read_line(&mut text).map_err(|e| format!("{}: {e} (the corpus must be UTF-8 text)", corpus.display()))?;
                if n == 0 {
                    eof = true;
                    break;
                }
            }
            read += text.len() as u64;
            pending.extend(tok.encode(&text, false, false)?);
        }
        // each window starts as a prompt would: with BOS where the model expects one
        let bos = tok.bos().filter(|_| tok.adds_bos());
        let room = (limit - out.tokens() as usize).min(window).saturating_sub(bos.is_some() as usize);
        let take = pending.len().min(room);
        if take == 0 {
            break;
        }
        let ids: Vec<u32> = bos.into_iter().chain(pending.drain(..take)).collect();
        trace_window(&m, &ids, &layers, &mut out)?;
        bar.set_position(read);
        bar.set_message(format!("{} tokens", out.tokens()));
        if (out.tokens() as usize) >= limit || (eof && pending.is_empty()) {
            break;
        }
    }
    let n = out.finish()?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(output)?.len();
    eprintln!(
        "{}: {n} tokens × {} layers traced in {secs:.1} s ({:.0} tokens/s), {:.1} MiB",
        output.display(),
        layers.len(),
        n as f64 / secs.max(1e-9),
        bytes as f64 / (1u64 << 20) as f64
    );
    if n == 0 {
        return Err(format!("{}: the corpus gave no tokens", corpus.display()).into());
    }
    Ok(())
}

/// Runs one window from an empty context and writes a record per token.
fn trace_window(m: &Model, ids: &[u32], layers: &[usize], out: &mut TraceWriter) -> Result<(), Box<dyn std::error::Error>> {
    let d = m.config().n_embd;
    let mut cache = m.new_cache(ids.len());
    for chunk in ids.chunks(CHUNK) {
        // per recorded layer: the chunk's router inputs and routes
        let mut seen: Vec<Option<(Vec<f32>, Vec<Route>)>> = vec![None; layers.len()];
        let mut trace = |layer: usize, rows: &[f32], routes: &[Route]| {
            if let Ok(i) = layers.binary_search(&layer) {
                seen[i] = Some((rows.to_vec(), routes.to_vec()));
            }
        };
        let mut seqs = [Sequence { tokens: chunk, cache: &mut cache, logits: Logits::None }];
        m.forward_batch_traced(&mut seqs, Some(&mut trace))?;
        let seen: Vec<(Vec<f32>, Vec<Route>)> = seen.into_iter().map(|s| s.ok_or("a MoE layer reported no routes")).collect::<Result<_, _>>()?;
        for (t, &token) in chunk.iter().enumerate() {
            let parts: Vec<(&[f32], &[usize], &[f32])> = seen.iter().map(|(rows, routes)| (&rows[t * d..(t + 1) * d], &routes[t].ids[..], &routes[t].weights[..])).collect();
            out.push(token, &parts)?;
        }
    }
    Ok(())
}
