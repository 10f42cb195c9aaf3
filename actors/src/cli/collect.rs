//! `odmoe collect`: runs a model over a text corpus and streams routing traces to disk
//! (format: `odmoe::shadow::trace`), with a progress bar over the corpus bytes.
//!
//! The corpus is read and tokenized a piece at a time (about 64 KiB of text, cut at a line
//! end) and cut into windows of `window` tokens, each run from an empty context in prompt
//! chunks; nothing but the current window is held, so memory stays flat.

use std::io::{BufRead, BufReader};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use odmoe::model::{ExpertMode, Model};
use odmoe::shadow::{trace, TraceHeader, TraceWriter};
use odmoe::tokenizer::Tokenizer;

/// Tokens per forward pass within a window.
const CHUNK: usize = 128;
/// Text per tokenizer call.
const PIECE_BYTES: usize = 64 * 1024;

pub fn run(model: &Path, mode: &ExpertMode, corpus: &Path, output: &Path, max_tokens: Option<usize>, window: usize) -> Result<(), Box<dyn std::error::Error>> {
    let m = Model::open_with(model, mode)?;
    let tok = Tokenizer::from_gguf(m.metadata())?;
    let header = TraceHeader::for_model(&m, &model.display().to_string())?;
    let layers = header.layers.clone();
    let window = window.clamp(2, m.config().n_ctx_train.max(2));
    let file = std::fs::File::open(corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
    let total = file.metadata()?.len();
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
        trace::record(&m, &ids, CHUNK, &mut out)?;
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
