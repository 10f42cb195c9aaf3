//! Feed-forward blocks: dense SwiGLU, and the mixture of experts (router, routed experts
//! computed expert by expert over the tokens routed to them, shared experts).

use rayon::prelude::*;

use super::config::Config;
use super::router::{group_by_expert, route, Route};
use super::weights::{Ffn, Mlp};
use crate::compute::cpu::{matmul, matmul_many, sigmoid, swiglu};
use crate::experts::ExpertSource;
use crate::Result;

fn mlp(m: &Mlp, x: &[f32]) -> Vec<f32> {
    let [mut g, u] = matmul_many([&m.gate, &m.up], x);
    swiglu(&mut g, &u);
    matmul(&m.down, &g)
}

/// The experts `f`'s router would choose for the tokens `x` (`n × n_embd`), each once,
/// or `None` when `f` is dense. Applied to the state entering an earlier layer, this is
/// the zero-training prediction of which experts that layer will need.
pub fn router_choice(cfg: &Config, f: &Ffn, x: &[f32]) -> Option<Vec<usize>> {
    let Ffn::Moe { router, bias, .. } = f else { return None };
    let moe = cfg.moe.as_ref()?;
    let logits = matmul(router, x);
    let mut ids: Vec<usize> = logits.chunks_exact(moe.n_expert).flat_map(|l| route(moe, l, bias.as_deref()).ids).collect();
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

/// The selection scores `f`'s router gives each expert for each row of `x` (`n ×
/// n_expert`; group limits not applied), or `None` when `f` is dense. The zero-training
/// baseline the shadow predictor is measured against.
pub fn router_scores(cfg: &Config, f: &Ffn, x: &[f32]) -> Option<Vec<f32>> {
    let Ffn::Moe { router, bias, .. } = f else { return None };
    let moe = cfg.moe.as_ref()?;
    let logits = matmul(router, x);
    Some(logits.chunks_exact(moe.n_expert).flat_map(|l| super::router::scores(moe, l, bias.as_deref()).1).collect())
}

/// Applies the FFN of `layer` to `x` (`n × n_embd`, normalized). Returns `n × n_embd`.
/// With `routes`, a MoE layer also hands back each row's route (traces, predictors).
pub fn forward(cfg: &Config, layer: usize, f: &Ffn, experts: &dyn ExpertSource, x: &[f32], routes: Option<&mut Vec<Route>>) -> Result<Vec<f32>> {
    let d = cfg.n_embd;
    let n = x.len() / d;
    match f {
        Ffn::Dense(m) => Ok(mlp(m, x)),
        Ffn::Moe { router, bias, shared, shared_gate } => {
            let moe = cfg.moe.as_ref().expect("MoE config");
            let logits = matmul(router, x);
            // Group the tokens by expert so each expert is fetched once per batch.
            let by_expert = group_by_expert(moe, &logits, bias.as_deref(), routes);
            let mut out = vec![0.0f32; n * d];
            // Fetch every expert this batch needs at once, so a disk-backed source can read
            // them in parallel; each is fetched once however many tokens it serves.
            let ids: Vec<usize> = by_expert.keys().copied().collect();
            let fetched = experts.experts(layer, &ids)?;
            // experts run side by side (each matmul splits further across the pool);
            // their outputs are then added in expert order, as one after another would
            let ys: Vec<Vec<f32>> = by_expert
                .values()
                .zip(&fetched)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|(toks, w)| {
                    let mut xe = Vec::with_capacity(toks.len() * d);
                    for &(t, _) in toks {
                        xe.extend_from_slice(&x[t * d..(t + 1) * d]);
                    }
                    let [mut g, u] = matmul_many([&w.gate, &w.up], &xe);
                    swiglu(&mut g, &u);
                    matmul(&w.down, &g)
                })
                .collect();
            for (toks, y) in by_expert.values().zip(&ys) {
                for (i, &(t, wt)) in toks.iter().enumerate() {
                    for (o, v) in out[t * d..(t + 1) * d].iter_mut().zip(&y[i * d..(i + 1) * d]) {
                        *o += wt * v;
                    }
                }
            }
            if let Some(s) = shared {
                let y = mlp(s, x);
                let gate = shared_gate.as_ref().map(|g| matmul(g, x));
                for t in 0..n {
                    let gt = gate.as_ref().map_or(1.0, |g| sigmoid(g[t]));
                    for (o, v) in out[t * d..(t + 1) * d].iter_mut().zip(&y[t * d..(t + 1) * d]) {
                        *o += gt * v;
                    }
                }
            }
            Ok(out)
        }
    }
}
