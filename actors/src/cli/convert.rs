//! `odmoe convert`: GGUF (single or split) to an expert store, with a progress bar.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use odmoe::experts::store;
use odmoe::gguf::GgufModel;
use odmoe::model::Model;

pub fn run(input: &Path, output: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let g = GgufModel::open(input)?;
    // refuse early what the engine could not run
    Model::open(input).map_err(|e| format!("{}: {e}", input.display()))?;
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")?.progress_chars("=> "));
    bar.set_message("converting");
    store::convert(&g, output, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_with_message("converted");
    let s = store::Store::open(output)?;
    let experts: u64 = s.manifest().layers.iter().map(|l| l.record_bytes * l.n_expert as u64).sum();
    eprintln!("{}: {} expert files, {:.1} MiB of expert records", output.display(), s.manifest().layers.len(), experts as f64 / (1u64 << 20) as f64);
    Ok(())
}
