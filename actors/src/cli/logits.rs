//! `odmoe logits`: logits at every position, as JSON, for checks against reference
//! implementations. The output shape is a contract: `{"logits": [[f32; vocab]; n]}`.

use std::io::Write;
use std::path::Path;

use odmoe::model::{ExpertMode, Logits, Model};

use super::Backend;

pub fn run(model: &Path, tokens: &[u32], backend: Backend, mode: &ExpertMode) -> Result<(), Box<dyn std::error::Error>> {
    if backend == Backend::Gpu {
        return Err("the gpu backend is not available in this build; use --backend cpu".into());
    }
    let m = Model::open_with(model, mode)?;
    let mut cache = m.new_cache(tokens.len());
    let logits = m.forward(tokens, &mut cache, Logits::All)?;
    let vocab = m.config().n_vocab;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    write_json(&mut out, &logits, vocab)?;
    out.flush()?;
    Ok(())
}

/// Writes `{"logits": [[...], ...]}` with each f32 in its shortest round-trip form
/// (non-finite values, which JSON cannot hold, become `null`).
fn write_json(out: &mut impl Write, logits: &[f32], vocab: usize) -> std::io::Result<()> {
    out.write_all(b"{\"logits\":[")?;
    for (i, row) in logits.chunks_exact(vocab).enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(b"[")?;
        for (j, v) in row.iter().enumerate() {
            if j > 0 {
                out.write_all(b",")?;
            }
            if v.is_finite() {
                write!(out, "{v}")?;
            } else {
                out.write_all(b"null")?;
            }
        }
        out.write_all(b"]")?;
    }
    out.write_all(b"]}\n")
}
