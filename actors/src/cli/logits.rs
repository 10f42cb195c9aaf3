//! `odmoe logits`: logits at every position, as JSON, for checks against reference
//! implementations. The output shape is a contract: `{"logits": [[f32; vocab]; n]}`.

use std::io::Write;
use std::path::Path;

use odmoe::model::{ExpertMode, Logits, Model};

use super::Backend;

pub fn run(model: &Path, tokens: &[u32], backend: Backend, mode: &ExpertMode) -> Result<(), Box<dyn std::error::Error>> {
    let m = super::open_model(model, mode, super::expert_packing(backend))?;
    let logits = match super::resolve_backend(backend, &m) {
        Backend::Gpu => gpu_logits(&m, tokens)?,
        _ => {
            let mut cache = m.new_cache(tokens.len());
            m.forward(tokens, &mut cache, Logits::All)?
        }
    };
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

/// The first GPU adapter, or an error saying how to get one; names it on stderr.
#[cfg(feature = "gpu")]
pub fn open_gpu() -> Result<odmoe::compute::gpu::Gpu, Box<dyn std::error::Error>> {
    let gpu = odmoe::compute::gpu::Gpu::open()?.ok_or("no GPU adapter found (on Linux, install a Vulkan driver; mesa-vulkan-drivers provides a software one)")?;
    eprintln!("gpu: {}", gpu.describe());
    Ok(gpu)
}

#[cfg(feature = "gpu")]
fn gpu_logits(m: &Model, tokens: &[u32]) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    Ok(m.logits_gpu(&open_gpu()?, tokens)?)
}

#[cfg(not(feature = "gpu"))]
fn gpu_logits(_: &Model, _: &[u32]) -> Result<Vec<f32>, Box<dyn std::error::Error>> {
    Err("this build has no GPU backend (built without the gpu feature); use --backend cpu".into())
}
