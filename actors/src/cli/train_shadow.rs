//! `odmoe train-shadow`: trains the shadow predictor on routing traces, measures it and
//! the baselines on the held-out tokens, and writes it with that report inside.

use std::path::Path;

use odmoe::model::Model;
use odmoe::shadow::{evaluate, train, TrainOptions, Traces};

pub fn run(traces: &Path, output: &Path, opts: &TrainOptions, model: Option<&Path>) -> Result<(), Box<dyn std::error::Error>> {
    let t = Traces::open(traces)?;
    let h = t.header().clone();
    if t.len() < 20 {
        return Err(format!("{}: {} tokens of traces are too few to train on (collect more)", traces.display(), t.len()).into());
    }
    eprintln!(
        "{}: {} tokens, {} MoE layers, hidden {}, {} experts, top-{}; training on the first {:.0}%",
        traces.display(),
        t.len(),
        h.layers.len(),
        h.n_embd,
        h.n_expert,
        h.top_k,
        100.0 * (1.0 - opts.holdout)
    );
    // the router baseline needs the model the traces came from
    let model_path = model.map(Path::to_path_buf).or_else(|| Some(h.source.clone().into()).filter(|p: &std::path::PathBuf| !h.source.is_empty() && p.exists()));
    let model = match &model_path {
        Some(p) => {
            let m = Model::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
            if m.moe_layers() != h.layers || m.config().n_embd != h.n_embd {
                return Err(format!("{} is not the model these traces came from (layers or width differ)", p.display()).into());
            }
            Some(m)
        }
        None => {
            eprintln!("note: the model the traces came from ({:?}) is not here: the router baseline is left out (pass --model)", h.source);
            None
        }
    };
    let started = std::time::Instant::now();
    let mut shadow = train(&t, opts, &mut |epoch, loss| eprintln!("epoch {epoch}/{}: loss {loss:.4} ({:.0} s)", opts.epochs, started.elapsed().as_secs_f64()))?;
    let gate = model.as_ref().map(|m| move |layer: usize, state: &[f32]| m.router_scores(layer, state));
    let report = evaluate(&shadow, &t, opts.holdout, gate.as_ref().map(|g| g as &odmoe::shadow::train::GateScores<'_>))?;
    shadow.report = Some(serde_json::to_string(&report)?);
    shadow.save(output)?;
    println!("held-out recall ({} tokens trained on, {} held out):\n\n{}", report.train_tokens, report.heldout_tokens, report.table());
    println!(
        "prediction: {:.1} µs per token and layer (one thread), {:.0} µs for 64 tokens at once; parameters: {:.2} MiB",
        report.predict_us,
        report.predict_64_us,
        report.parameter_bytes as f64 / (1u64 << 20) as f64
    );
    if report.beats_baselines {
        println!("the predictor beats every baseline at recall@{} at every distance", h.top_k);
    } else {
        println!("the predictor does NOT beat every baseline at recall@{} at every distance: prefer --prefetch gate or off", h.top_k);
    }
    eprintln!("wrote {}", output.display());
    Ok(())
}
