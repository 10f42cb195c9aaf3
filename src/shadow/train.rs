//! Training the shadow predictor on routing traces, and measuring it against the
//! baselines it must beat, on tokens it was not trained on.
//!
//! The network is two small matrix products, so its backward pass is written out here
//! (about forty lines) rather than taken from an autograd framework: candle or burn would
//! add hundreds of crates to a build that already takes minutes on two cores, for a model
//! whose gradients fit on a page. Training is data-parallel over each mini-batch (rayon)
//! with Adam.
//!
//! Loss: for each known layer and each distance d ahead, softmax cross-entropy of the
//! head's scores against the experts actually chosen there (each of the `top_k` gets
//! `1/top_k` of the target mass), summed over distances, averaged over the batch.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::predictor::{top, Shadow};
use super::trace::Traces;
use crate::compute::cpu::{axpy, sigmoid, softmax};
use crate::Result;

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// MoE layers ahead to predict (D).
    pub lookahead: usize,
    /// Width of the shared trunk.
    pub rank: usize,
    /// Passes over the training tokens.
    pub epochs: usize,
    /// Examples (token, layer) per optimizer step.
    pub batch: usize,
    /// Adam's step size (decayed along a cosine to a tenth over the run).
    pub lr: f32,
    /// Fraction of the tokens, taken from the end, held out for evaluation.
    pub holdout: f64,
    /// Seed of the initialization and the shuffling.
    pub seed: u64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { lookahead: 2, rank: 256, epochs: 6, batch: 256, lr: 2e-3, holdout: 0.1, seed: 20261127 }
    }
}

/// First held-out token: the tokens before it train, the rest evaluate.
pub fn split_point(n_tokens: usize, holdout: f64) -> usize {
    let held = ((n_tokens as f64) * holdout.clamp(0.0, 0.9)).round() as usize;
    n_tokens - held.max(1).min(n_tokens)
}

/// A small deterministic generator (xorshift64*), for initialization and shuffling.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// Adam's running moments for one parameter vector.
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Moments {
    fn new(n: usize) -> Self {
        Moments { m: vec![0.0; n], v: vec![0.0; n] }
    }
    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f32, t: i32) {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + eps);
        }
    }
}

/// Per-layer expert counts over tokens `0..end`: `counts[i][e]`.
fn expert_counts(traces: &Traces, end: usize) -> Result<Vec<Vec<u64>>> {
    let h = traces.header();
    let mut counts = vec![vec![0u64; h.n_expert]; h.layers.len()];
    for t in 0..end {
        for (i, c) in counts.iter_mut().enumerate() {
            for e in traces.experts(t, i)? {
                c[e] += 1;
            }
        }
    }
    Ok(counts)
}

/// Trains a predictor on the tokens before the held-out split. `progress(epoch, mean
/// loss)` is called after each epoch.
pub fn train(traces: &Traces, opts: &TrainOptions, progress: &mut dyn FnMut(usize, f64)) -> Result<Shadow> {
    let h = traces.header();
    let n = h.layers.len();
    let split = split_point(traces.len(), opts.holdout);
    let mut s = Shadow::zeros(h.n_embd, h.n_expert, h.top_k, h.layers.clone(), opts.lookahead.max(1), opts.rank.max(1));
    let mut rng = Rng(opts.seed | 1);
    let (sd1, sd2) = (1.0 / (h.n_embd as f32).sqrt(), 0.1 / (s.rank as f32).sqrt());
    s.w1.iter_mut().for_each(|w| *w = rng.normal() * sd1);
    s.w2.iter_mut().for_each(|w| *w = rng.normal() * sd2);
    // heads start from the log-frequency of each target layer's experts
    let counts = expert_counts(traces, split)?;
    for i in 0..n {
        for d in 0..s.lookahead {
            if let Some(c) = counts.get(i + d + 1) {
                let total: u64 = c.iter().sum::<u64>().max(1);
                let head = s.head(i, d);
                for (e, &k) in c.iter().enumerate() {
                    s.b2[head + e] = ((k as f32 + 1.0) / total as f32).ln();
                }
            }
        }
    }
    let mut examples: Vec<(usize, usize)> = (0..split).flat_map(|t| (0..n.saturating_sub(1)).map(move |i| (t, i))).collect();
    if examples.is_empty() {
        return Err(crate::Error::Invalid(format!("too few traces to train on: {} tokens, {n} layers", traces.len())));
    }
    let mut moments = [Moments::new(s.w1.len()), Moments::new(s.b1.len()), Moments::new(s.w2.len()), Moments::new(s.b2.len())];
    let steps_total = (examples.len().div_ceil(opts.batch) * opts.epochs).max(1);
    let mut step = 0i32;
    for epoch in 0..opts.epochs {
        for i in (1..examples.len()).rev() {
            examples.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut loss_sum = 0.0f64;
        for batch in examples.chunks(opts.batch) {
            let pieces = (rayon::current_num_threads() * 2).max(1);
            let (g, loss) = batch
                .par_chunks(batch.len().div_ceil(pieces))
                .map(|part| gradients(&s, traces, part))
                .reduce_with(|a, b| {
                    let ((mut ga, la), (gb, lb)) = (a?, b?);
                    add(&mut ga, &gb);
                    Ok((ga, la + lb))
                })
                .expect("non-empty batch")?;
            loss_sum += loss;
            step += 1;
            let progress_frac = step as f32 / steps_total as f32;
            let lr = opts.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f32::consts::PI * progress_frac).cos()));
            let scale = 1.0 / batch.len() as f32;
            let [m1, mb1, m2, mb2] = &mut moments;
            let sc = |v: &[f32]| v.iter().map(|x| x * scale).collect::<Vec<f32>>();
            m1.step(&mut s.w1, &sc(&g.w1), lr, step);
            mb1.step(&mut s.b1, &sc(&g.b1), lr, step);
            m2.step(&mut s.w2, &sc(&g.w2), lr, step);
            mb2.step(&mut s.b2, &sc(&g.b2), lr, step);
        }
        progress(epoch + 1, loss_sum / examples.len() as f64);
    }
    Ok(s)
}

fn add(a: &mut Shadow, b: &Shadow) {
    for (x, y) in [(&mut a.w1, &b.w1), (&mut a.b1, &b.b1), (&mut a.w2, &b.w2), (&mut a.b2, &b.b2)] {
        x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
    }
}

/// Summed gradients and loss over `part`'s (token, layer) examples.
fn gradients(s: &Shadow, traces: &Traces, part: &[(usize, usize)]) -> Result<(Shadow, f64)> {
    let n = s.layers.len();
    let r = s.rank;
    let mut g = Shadow::zeros(s.n_embd, s.n_expert, s.top_k, s.layers.clone(), s.lookahead, r);
    let mut loss = 0.0f64;
    let mut state = Vec::new();
    for &(t, i) in part {
        traces.state(t, i, &mut state);
        let tr = s.trunk(i, &state);
        let mut da = vec![0.0f32; r];
        for d in 0..s.lookahead {
            let j = i + d + 1;
            if j >= n {
                break;
            }
            let mut p = s.head_logits(i, d, &tr.a);
            softmax(&mut p);
            let mut gz = p.clone();
            for e in traces.experts(t, j)? {
                loss -= (p[e].max(1e-12) as f64).ln() / s.top_k as f64;
                gz[e] -= 1.0 / s.top_k as f32;
            }
            let head = s.head(i, d);
            for (e, &ge) in gz.iter().enumerate() {
                axpy(&mut g.w2[(head + e) * r..(head + e + 1) * r], ge, &tr.a);
                g.b2[head + e] += ge;
            }
            s.head_backward(i, d, &gz, &mut da);
        }
        // through silu: d silu(p)/dp = σ(p) (1 + p (1 − σ(p)))
        for (k, (&pre, da)) in tr.pre.iter().zip(&da).enumerate() {
            let sg = sigmoid(pre);
            let dp = da * sg * (1.0 + pre * (1.0 - sg));
            g.b1[i * r + k] += dp;
            axpy(&mut g.w1[k * s.n_embd..(k + 1) * s.n_embd], dp, &tr.x);
        }
    }
    Ok((g, loss))
}

/// Recall of one method at one distance: the share of the experts actually chosen that
/// were among its `top_k` (and `2 · top_k`) guesses.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Recall {
    /// Among the best `top_k` guesses.
    pub at_k: f64,
    /// Among the best `2 · top_k` guesses.
    pub at_2k: f64,
}

/// The held-out evaluation at one distance (MoE layers ahead).
#[derive(Clone, Debug, Serialize)]
pub struct DistanceReport {
    /// Layers ahead (1 = the next MoE layer).
    pub distance: usize,
    /// (token, layer) pairs measured.
    pub samples: u64,
    /// The trained predictor.
    pub shadow: Recall,
    /// The target layer's router applied to the current state (no training).
    pub gate: Option<Recall>,
    /// The target layer's most frequent experts in the training tokens.
    pub frequency: Recall,
    /// The experts the previous token chose at the target layer (two tokens for 2k).
    pub previous_token: Recall,
}

/// What `train-shadow` reports and stores beside the weights.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Tokens trained on.
    pub train_tokens: usize,
    /// Tokens held out.
    pub heldout_tokens: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// One entry per distance.
    pub distances: Vec<DistanceReport>,
    /// Mean time of one prediction (one token, one layer, every distance), microseconds.
    pub predict_us: f64,
    /// Mean time of [`Shadow::predict`] for 64 tokens at once (one layer, every
    /// distance), microseconds.
    pub predict_64_us: f64,
    /// Bytes of the parameters (f32).
    pub parameter_bytes: usize,
    /// Whether the predictor beat every baseline at recall@k at every distance.
    pub beats_baselines: bool,
}

/// A router applied to a state: `(target model layer, state) -> selection scores`.
pub type GateScores<'a> = dyn Fn(usize, &[f32]) -> Option<Vec<f32>> + Sync + 'a;

fn hits(guess: &[usize], truth: &[usize]) -> u64 {
    truth.iter().filter(|e| guess.contains(e)).count() as u64
}

/// Measures `s` and the baselines on the held-out tokens (those from the split on).
pub fn evaluate(s: &Shadow, traces: &Traces, holdout: f64, gate: Option<&GateScores<'_>>) -> Result<Report> {
    let h = traces.header();
    let (n, k) = (h.layers.len(), h.top_k);
    let split = split_point(traces.len(), holdout);
    let counts = expert_counts(traces, split)?;
    let freq_rank: Vec<Vec<usize>> = counts.iter().map(|c| top(&c.iter().map(|&v| v as f32).collect::<Vec<_>>(), 2 * k)).collect();
    // [distance][method: shadow, gate, freq, prev][at k, at 2k]
    let tokens: Vec<usize> = (split..traces.len()).collect();
    let tallies = tokens
        .par_chunks(64)
        .map(|ts| -> Result<Vec<[[u64; 2]; 4]>> {
            let mut tally = vec![[[0u64; 2]; 4]; s.lookahead];
            let mut state = Vec::new();
            for &t in ts {
                for i in 0..n.saturating_sub(1) {
                    traces.state(t, i, &mut state);
                    let scores = s.scores(h.layers[i], &state);
                    for (d, (target, sc)) in scores.iter().enumerate() {
                        let j = i + d + 1;
                        let truth = traces.experts(t, j)?;
                        let mut add = |m: usize, guess: &[usize]| {
                            tally[d][m][0] += hits(&guess[..k.min(guess.len())], &truth);
                            tally[d][m][1] += hits(guess, &truth);
                        };
                        add(0, &top(sc, 2 * k));
                        if let Some(g) = gate.and_then(|g| g(*target, &state)) {
                            add(1, &top(&g, 2 * k));
                        }
                        add(2, &freq_rank[j]);
                        let mut prev = if t > 0 { traces.experts(t - 1, j)? } else { Vec::new() };
                        if t > 1 {
                            for e in traces.experts(t - 2, j)? {
                                if !prev.contains(&e) {
                                    prev.push(e);
                                }
                            }
                        }
                        add(3, &prev);
                    }
                }
            }
            Ok(tally)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut distances = Vec::new();
    let mut beats = true;
    for d in 0..s.lookahead {
        let samples = (tokens.len() * n.saturating_sub(d + 1)) as u64;
        if samples == 0 {
            continue;
        }
        let sum = |m: usize, w: usize| tallies.iter().map(|t| t[d][m][w]).sum::<u64>() as f64 / (samples * k as u64) as f64;
        let recall = |m: usize| Recall { at_k: sum(m, 0), at_2k: sum(m, 1) };
        let r = DistanceReport {
            distance: d + 1,
            samples,
            shadow: recall(0),
            gate: gate.map(|_| recall(1)),
            frequency: recall(2),
            previous_token: recall(3),
        };
        let best_baseline = [r.gate.as_ref().map_or(0.0, |g| g.at_k), r.frequency.at_k, r.previous_token.at_k].into_iter().fold(0.0, f64::max);
        beats &= r.shadow.at_k > best_baseline;
        distances.push(r);
    }
    // latency: one token, one layer, every distance, on this thread
    let mut state = Vec::new();
    traces.state(split.min(traces.len() - 1), 0, &mut state);
    let reps = 200;
    let t0 = Instant::now();
    for r in 0..reps {
        std::hint::black_box(s.scores(h.layers[r % n.saturating_sub(1).max(1)], &state));
    }
    let predict_us = t0.elapsed().as_secs_f64() * 1e6 / reps as f64;
    // a batched step: 64 rows through `predict` at once (on the thread pool)
    let mut rows = Vec::with_capacity(64 * h.n_embd);
    for j in 0..64 {
        traces.state((split + j).min(traces.len() - 1), 0, &mut state);
        rows.extend_from_slice(&state);
    }
    let t0 = Instant::now();
    for r in 0..reps / 10 {
        std::hint::black_box(s.predict(h.layers[r % n.saturating_sub(1).max(1)], &rows, s.lookahead));
    }
    let predict_64_us = t0.elapsed().as_secs_f64() * 1e6 / (reps / 10) as f64;
    Ok(Report {
        train_tokens: split,
        heldout_tokens: traces.len() - split,
        top_k: k,
        distances,
        predict_us,
        predict_64_us,
        parameter_bytes: 4 * s.parameters(),
        beats_baselines: beats,
    })
}

impl Report {
    /// The report as a Markdown table (one row per distance and method).
    pub fn table(&self) -> String {
        let k = self.top_k;
        let mut out = format!("| distance | method | recall@{k} | recall@{} |\n| --- | --- | --- | --- |\n", 2 * k);
        for d in &self.distances {
            let mut row = |name: &str, r: &Recall| out.push_str(&format!("| {} | {name} | {:.3} | {:.3} |\n", d.distance, r.at_k, r.at_2k));
            row("shadow (trained)", &d.shadow);
            if let Some(g) = &d.gate {
                row("next layer's router", g);
            }
            row("layer frequency", &d.frequency);
            row("previous token", &d.previous_token);
        }
        out
    }
}
