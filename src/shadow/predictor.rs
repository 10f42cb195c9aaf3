//! The shadow predictor: from the state entering one MoE layer's experts, which experts
//! the next `lookahead` MoE layers will choose.
//!
//! One small network serves every layer, conditioned on it:
//!
//! ```text
//! x̂ = x / rms(x)                               the router input, scale removed
//! a = silu(W1 · x̂ + b1[layer])                  shared trunk, rank r, a bias per layer
//! z[d] = W2[layer][d] · a + b2[layer][d]        one head per (layer, distance d = 1..D)
//! ```
//!
//! `z[d]` ranks the experts of the d-th MoE layer after `layer`. The trunk is shared so
//! the size stays small for wide models: for Kimi-K2 (hidden 7168, 61 layers, 384
//! experts) with r = 256 and D = 2 it is 1.8 M + 12.0 M parameters, 55 MB in f32, and a
//! prediction is about 1.9 M multiply-adds (well under a millisecond on one core).
//!
//! Saved as safetensors: tensors `w1` `[r, n_embd]`, `b1` `[n_layers, r]`, `w2`
//! `[n_layers, D, n_expert, r]`, `b2` `[n_layers, D, n_expert]` (f32), and metadata
//! `layers` (comma-separated model layer indices), `n_embd`, `n_expert`, `top_k`,
//! `lookahead`, `rank`, plus `report` (the held-out evaluation, JSON) when trained here.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::compute::cpu::{axpy, dot, silu};
use crate::{Error, Result};

/// A trained shadow predictor.
#[derive(Clone, Debug)]
pub struct Shadow {
    /// Width of the states it reads.
    pub n_embd: usize,
    /// Experts per layer.
    pub n_expert: usize,
    /// Experts a token chooses per layer.
    pub top_k: usize,
    /// MoE layers ahead it predicts (D).
    pub lookahead: usize,
    /// Width of the shared trunk (r).
    pub rank: usize,
    /// Model indices of the MoE layers it knows, ascending.
    pub layers: Vec<usize>,
    /// `rank × n_embd`.
    pub w1: Vec<f32>,
    /// `n_layers × rank`.
    pub b1: Vec<f32>,
    /// `n_layers × D × n_expert × rank`.
    pub w2: Vec<f32>,
    /// `n_layers × D × n_expert`.
    pub b2: Vec<f32>,
    /// The held-out evaluation made when it was trained (JSON), if any.
    pub report: Option<String>,
}

/// The trunk's activations for one state: what the heads and the backward pass need.
pub(crate) struct Trunk {
    /// Normalized input.
    pub x: Vec<f32>,
    /// Pre-activation.
    pub pre: Vec<f32>,
    /// `silu(pre)`.
    pub a: Vec<f32>,
}

impl Shadow {
    /// A predictor with all-zero weights of the given shape (training starts from it).
    pub fn zeros(n_embd: usize, n_expert: usize, top_k: usize, layers: Vec<usize>, lookahead: usize, rank: usize) -> Shadow {
        let n = layers.len();
        Shadow {
            n_embd,
            n_expert,
            top_k,
            lookahead,
            rank,
            w1: vec![0.0; rank * n_embd],
            b1: vec![0.0; n * rank],
            w2: vec![0.0; n * lookahead * n_expert * rank],
            b2: vec![0.0; n * lookahead * n_expert],
            layers,
            report: None,
        }
    }

    /// Parameters in all.
    pub fn parameters(&self) -> usize {
        self.w1.len() + self.b1.len() + self.w2.len() + self.b2.len()
    }

    /// Position of model layer `layer` among the known ones.
    pub fn layer_index(&self, layer: usize) -> Option<usize> {
        self.layers.binary_search(&layer).ok()
    }

    pub(crate) fn trunk(&self, i: usize, state: &[f32]) -> Trunk {
        let mut x = state.to_vec();
        normalize(&mut x);
        let b1 = &self.b1[i * self.rank..(i + 1) * self.rank];
        let pre: Vec<f32> = self.w1.chunks_exact(self.n_embd).zip(b1).map(|(w, b)| dot(w, &x) + b).collect();
        let a = pre.iter().map(|&p| silu(p)).collect();
        Trunk { x, pre, a }
    }

    /// Offset of head `(i, d)` (d counted from 0) in `w2` rows and `b2`.
    pub(crate) fn head(&self, i: usize, d: usize) -> usize {
        (i * self.lookahead + d) * self.n_expert
    }

    pub(crate) fn head_logits(&self, i: usize, d: usize, a: &[f32]) -> Vec<f32> {
        let h = self.head(i, d);
        (0..self.n_expert).map(|e| dot(&self.w2[(h + e) * self.rank..(h + e + 1) * self.rank], a) + self.b2[h + e]).collect()
    }

    /// Scores of every expert of each MoE layer ahead of model layer `layer`, from one
    /// token's `state` there: `(target model layer, n_expert scores)` for each distance
    /// that exists. Empty for a layer it does not know. The same computation as
    /// [`Shadow::predict`], so what is measured with it is what prefetching uses.
    pub fn scores(&self, layer: usize, state: &[f32]) -> Vec<(usize, Vec<f32>)> {
        assert_eq!(state.len(), self.n_embd, "state width");
        self.layer_index(layer).map_or_else(Vec::new, |i| self.rows_scores(i, state, self.lookahead))
    }

    /// The experts to read ahead for the layers after `layer`, given the step's rows
    /// there (`n × n_embd`): for each layer within `depth` (at most the trained
    /// lookahead), the union of every row's `top_k` best-scored experts, ascending.
    pub fn predict(&self, layer: usize, rows: &[f32], depth: usize) -> Vec<(usize, Vec<usize>)> {
        let Some(i) = self.layer_index(layer) else { return Vec::new() };
        self.rows_scores(i, rows, depth)
            .into_iter()
            .map(|(target, z)| {
                let mut ids: Vec<usize> = z.chunks_exact(self.n_expert).flat_map(|row| top(row, self.top_k)).collect();
                ids.sort_unstable();
                ids.dedup();
                (target, ids)
            })
            .collect()
    }

    /// `(target model layer, n × n_expert scores)` for each distance up to `depth` (at
    /// least 1, at most the trained lookahead) from the rows at the `i`-th known layer:
    /// the training pass's forward, row by row (rows side by side on the thread pool when
    /// there are enough to repay it; a row's scores never depend on the others).
    fn rows_scores(&self, i: usize, rows: &[f32], depth: usize) -> Vec<(usize, Vec<f32>)> {
        let dists: Vec<usize> = (0..depth.max(1).min(self.lookahead)).take_while(|dist| i + dist + 1 < self.layers.len()).collect();
        let one = |row: &[f32]| {
            let a = self.trunk(i, row).a;
            dists.iter().map(|&dist| self.head_logits(i, dist, &a)).collect::<Vec<_>>()
        };
        let per_row: Vec<Vec<Vec<f32>>> = if rows.len() >= 8 * self.n_embd {
            rows.par_chunks_exact(self.n_embd).map(one).collect()
        } else {
            rows.chunks_exact(self.n_embd).map(one).collect()
        };
        dists.iter().enumerate().map(|(k, &dist)| (self.layers[i + dist + 1], per_row.iter().flat_map(|r| r[k].iter().copied()).collect())).collect()
    }

    /// Writes the predictor to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        let n = self.layers.len();
        let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let tensors = [
            ("w1", vec![self.rank, self.n_embd], bytes(&self.w1)),
            ("b1", vec![n, self.rank], bytes(&self.b1)),
            ("w2", vec![n, self.lookahead, self.n_expert, self.rank], bytes(&self.w2)),
            ("b2", vec![n, self.lookahead, self.n_expert], bytes(&self.b2)),
        ];
        let views: Vec<(&str, TensorView<'_>)> = tensors.iter().map(|(name, shape, b)| (*name, TensorView::new(Dtype::F32, shape.clone(), b).expect("shape matches data"))).collect();
        let mut meta: HashMap<String, String> = HashMap::new();
        meta.insert("layers".into(), self.layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(","));
        for (k, v) in [("n_embd", self.n_embd), ("n_expert", self.n_expert), ("top_k", self.top_k), ("lookahead", self.lookahead), ("rank", self.rank)] {
            meta.insert(k.into(), v.to_string());
        }
        if let Some(r) = &self.report {
            meta.insert("report".into(), r.clone());
        }
        safetensors::tensor::serialize_to_file(views, Some(meta), path).map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
    }

    /// Reads a predictor written by [`Shadow::save`], checking every shape.
    pub fn load(path: &Path) -> Result<Shadow> {
        let bad = |m: String| Error::Invalid(format!("{}: not a shadow predictor: {m}", path.display()));
        let data = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let (_, info) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| bad(e.to_string()))?;
        let meta = info.metadata().clone().unwrap_or_default();
        let num = |k: &str| -> Result<usize> { meta.get(k).and_then(|v| v.parse().ok()).ok_or_else(|| bad(format!("metadata {k} missing or not a number"))) };
        let (n_embd, n_expert, top_k, lookahead, rank) = (num("n_embd")?, num("n_expert")?, num("top_k")?, num("lookahead")?, num("rank")?);
        let layers: Vec<usize> = meta
            .get("layers")
            .ok_or_else(|| bad("metadata layers missing".into()))?
            .split(',')
            .map(|v| v.parse().map_err(|_| bad(format!("bad layer index {v:?}"))))
            .collect::<Result<_>>()?;
        if top_k == 0 || top_k > n_expert || lookahead == 0 || rank == 0 || layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("inconsistent metadata".into()));
        }
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| bad(e.to_string()))?;
        let n = layers.len();
        let tensor = |name: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape.as_slice() {
                return Err(bad(format!("{name} is {:?} {:?}, expected F32 {shape:?}", t.dtype(), t.shape())));
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
        };
        Ok(Shadow {
            w1: tensor("w1", vec![rank, n_embd])?,
            b1: tensor("b1", vec![n, rank])?,
            w2: tensor("w2", vec![n, lookahead, n_expert, rank])?,
            b2: tensor("b2", vec![n, lookahead, n_expert])?,
            n_embd,
            n_expert,
            top_k,
            lookahead,
            rank,
            layers,
            report: meta.get("report").cloned(),
        })
    }

    /// `W2[i][d]ᵀ · g` added into `out` (the backward pass through a head).
    pub(crate) fn head_backward(&self, i: usize, d: usize, g: &[f32], out: &mut [f32]) {
        let h = self.head(i, d);
        for (e, &ge) in g.iter().enumerate() {
            axpy(out, ge, &self.w2[(h + e) * self.rank..(h + e + 1) * self.rank]);
        }
    }
}

/// `x / rms(x)` in place: the network's input, the state's scale removed.
fn normalize(x: &mut [f32]) {
    let ms = dot(x, x) / x.len() as f32;
    let inv = if ms > 0.0 { 1.0 / ms.sqrt() } else { 0.0 };
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_predicts_the_best_scored_experts() {
        let mut s = Shadow::zeros(4, 6, 2, vec![1, 2, 3], 2, 3);
        for (i, w) in s.w1.iter_mut().enumerate() {
            *w = (i as f32 * 0.37).sin();
        }
        for (i, w) in s.w2.iter_mut().enumerate() {
            *w = (i as f32 * 0.11).cos();
        }
        let h = s.head(0, 0);
        s.b2[h + 5] = 100.0; // layer 2's expert 5 always wins from layer 1
        s.report = Some("{}".into());
        let dir = std::env::temp_dir().join(format!("odmoe-shadow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.safetensors");
        s.save(&path).unwrap();
        let t = Shadow::load(&path).unwrap();
        assert_eq!((t.w1.clone(), t.w2.clone(), t.layers.clone(), t.report.clone()), (s.w1.clone(), s.w2.clone(), s.layers.clone(), s.report.clone()));
        let rows = [0.5, -1.0, 2.0, 0.1, 1.0, 1.0, -3.0, 0.0];
        let p = t.predict(1, &rows, 2);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].0, p[1].0), (2, 3));
        assert!(p[0].1.contains(&5) && p[0].1.len() <= 4);
        // a step's rows (enough to go side by side) pick what each picks alone
        let many: Vec<f32> = (0..40 * 4).map(|k| ((k * 37 % 23) as f32 - 11.0) * 0.3).collect();
        let mut want: Vec<usize> = many.chunks_exact(4).flat_map(|row| top(&t.head_logits(0, 0, &t.trunk(0, row).a), 2)).collect();
        want.sort_unstable();
        want.dedup();
        assert_eq!(t.predict(1, &many, 1), vec![(2, want)]);
        // the last layer has nothing ahead; unknown layers predict nothing
        assert!(t.predict(3, &rows, 2).is_empty());
        assert!(t.predict(0, &rows, 2).is_empty());
        assert_eq!(t.predict(2, &rows, 2).len(), 1);
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(Shadow::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
