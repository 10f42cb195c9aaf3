//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p, and
//! repetition/presence/frequency penalties, reproducible from a seed.

use std::collections::HashMap;

use crate::{Error, Result};

/// Sampling settings. The defaults sample at temperature 0.8 with top-p 0.95, like
/// llama.cpp's; temperature 0 means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability sums to at least p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = off).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of tokens already seen (1 = off).
    pub repetition_penalty: f32,
    /// Subtract from the logit of every token already seen (0 = off).
    pub presence_penalty: f32,
    /// Subtract, per occurrence, from the logit of tokens already seen (0 = off).
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks that every value is in range, naming the first that is not.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, range: &str| Err(Error::Invalid(format!("{what} must be {range}, got {v}")));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, ">= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition_penalty", self.repetition_penalty, "> 0");
        }
        if !self.presence_penalty.is_finite() || self.presence_penalty.abs() > 2.0 {
            return bad("presence_penalty", self.presence_penalty, "in [-2, 2]");
        }
        if !self.frequency_penalty.is_finite() || self.frequency_penalty.abs() > 2.0 {
            return bad("frequency_penalty", self.frequency_penalty, "in [-2, 2]");
        }
        Ok(())
    }
}

/// A seeded sampler. Keeps its random state across calls, so one sampler per sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: u64,
}

impl Sampler {
    /// A sampler with validated settings.
    pub fn new(params: SamplingParams) -> Result<Sampler> {
        params.validate()?;
        // splitmix64 of the seed, so that nearby seeds give unrelated streams
        let mut z = params.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(Sampler { params, rng: (z ^ (z >> 31)) | 1 })
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    fn next_f64(&mut self) -> f64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the next token from `logits`, given the tokens so far (for penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let mut logits = std::borrow::Cow::Borrowed(logits);
        if p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
            let mut counts: HashMap<u32, u32> = HashMap::new();
            for &t in recent {
                *counts.entry(t).or_default() += 1;
            }
            let logits = logits.to_mut();
            for (&t, &c) in &counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    if *l > 0.0 {
                        *l /= p.repetition_penalty;
                    } else {
                        *l *= p.repetition_penalty;
                    }
                    *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
                }
            }
        }
        let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).map_or(0, |(i, _)| i as u32);
        if p.temperature == 0.0 {
            return argmax(&logits);
        }
        // most likely first, ties by id: a total order, so the top k kept in order by one
        // pass are the first k of the whole list sorted
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut cand = if p.top_k > 0 { top_k(&logits, p.top_k) } else { Vec::new() };
        if p.top_k == 0 || cand.len() < p.top_k {
            // no top-k, or no more finite logits than k: all of them
            cand = logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)).collect();
            cand.sort_by(order);
        }
        if cand.is_empty() {
            return argmax(&logits);
        }
        // softmax at temperature
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand.iter().map(|&(_, l)| (((l - max) / p.temperature) as f64).exp()).collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut n = 0;
            for &x in &probs[..keep] {
                acc += x;
                n += 1;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.next_f64() * total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            r -= x;
            if r <= 0.0 {
                return cand[i].0;
            }
        }
        cand[keep - 1].0
    }
}

/// The `k` best finite logits, best first (higher logit, then lower id). Returns fewer
/// when fewer are finite.
///
/// The finite maxima of `k` or more blocks of the logits are as many distinct logits, so
/// the `k`-th largest of them is at most the `k`-th best logit: only blocks whose maximum
/// reaches it can hold one of the best, and in them only logits that reach it. Those few
/// candidates are sorted. (Keeping the best `k` in order in one pass took about 14 µs for
/// 4096 logits, most of it shifting the list on inserts; sampling 64 sessions' tokens
/// takes that 64 times between two steps.)
fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    const LANES: usize = 8;
    if k == 0 || logits.is_empty() {
        return Vec::new();
    }
    let finite = |l: f32| if l.is_finite() { l } else { f32::NEG_INFINITY };
    let size = logits.len().div_ceil((4 * k).min(logits.len())).next_multiple_of(LANES);
    // each block's largest finite logit (-inf where none), eight lanes at a time
    let maxima: Vec<f32> = logits
        .chunks(size)
        .map(|block| {
            let mut lanes = [f32::NEG_INFINITY; LANES];
            let mut rows = block.chunks_exact(LANES);
            for row in &mut rows {
                for (m, &l) in lanes.iter_mut().zip(row) {
                    let v = finite(l);
                    *m = if v > *m { v } else { *m };
                }
            }
            rows.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &l| if finite(l) > m { finite(l) } else { m })
        })
        .collect();
    let mut floor = f32::NEG_INFINITY;
    if maxima.iter().filter(|m| m.is_finite()).count() >= k {
        let mut m = maxima.clone();
        let (_, kth, _) = m.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        floor = *kth;
    }
    let mut cand: Vec<(u32, f32)> = Vec::new();
    for (b, block) in logits.chunks(size).enumerate() {
        if maxima[b] < floor || maxima[b] == f32::NEG_INFINITY {
            continue;
        }
        for (j, &l) in block.iter().enumerate() {
            if l >= floor && l.is_finite() {
                cand.push(((b * size + j) as u32, l));
            }
        }
    }
    cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    cand.truncate(k);
    cand
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, ..Default::default() }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 1.9], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params(1.0) }).unwrap();
            (0..20).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 3, 0]) = [0.75, 0.25]
        let logits = [3.0f32.ln(), 0.0];
        let mut s = Sampler::new(SamplingParams { seed: 1, ..params(1.0) }).unwrap();
        let n = 20_000;
        let zeros = (0..n).filter(|_| s.sample(&logits, &[]) == 0).count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn filters_cut_the_tail() {
        let logits = [5.0, 4.9, 0.0, -1.0];
        let mut s = Sampler::new(SamplingParams { top_k: 2, seed: 3, ..params(1.0) }).unwrap();
        assert!((0..200).all(|_| s.sample(&logits, &[]) < 2));
        let mut s = Sampler::new(SamplingParams { min_p: 0.5, seed: 3, ..params(1.0) }).unwrap();
        assert!((0..200).all(|_| s.sample(&logits, &[]) < 2));
        let mut s = Sampler::new(SamplingParams { top_p: 0.1, seed: 3, ..params(1.0) }).unwrap();
        assert!((0..200).all(|_| s.sample(&logits, &[]) == 0));
    }

    #[test]
    fn top_k_equals_sorting_everything() {
        // ties, signed zeros, infinities and NaN among ordinary values
        let mut logits: Vec<f32> = (0..3000).map(|i| ((i * 7919 % 1009) as f32 * 0.01).sin() * 5.0).collect();
        for (i, v) in [(5, 0.0), (6, -0.0), (7, f32::INFINITY), (8, f32::NAN), (9, f32::NEG_INFINITY), (10, 4.99), (11, 4.99)] {
            logits[i] = v;
        }
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let mut all: Vec<(u32, f32)> = logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)).collect();
        all.sort_by(order);
        for k in [1, 2, 40, 500, all.len()] {
            let got: Vec<(u32, u32)> = top_k(&logits, k).iter().map(|&(i, l)| (i, l.to_bits())).collect();
            let want: Vec<(u32, u32)> = all[..k].iter().map(|&(i, l)| (i, l.to_bits())).collect();
            assert_eq!(got, want, "k = {k}");
        }
        assert_eq!(top_k(&logits, all.len() + 5).len(), all.len());
        // short and odd lengths, runs of equal values, blocks of non-finite values, k past
        // the number of blocks
        let mut x = 12345u64;
        for n in [1usize, 7, 9, 100, 4096, 4099] {
            let mut logits: Vec<f32> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x % 64) as f32 - 32.0) / 4.0
                })
                .collect();
            for v in logits.iter_mut().skip(3).step_by(11).take(20) {
                *v = f32::NAN;
            }
            for v in logits.iter_mut().take(n / 3).skip(n / 4) {
                *v = f32::NEG_INFINITY;
            }
            let mut all: Vec<(u32, f32)> = logits.iter().enumerate().filter(|(_, l)| l.is_finite()).map(|(i, &l)| (i as u32, l)).collect();
            all.sort_by(order);
            for k in [1, 3, 40, 200, n] {
                let got: Vec<(u32, u32)> = top_k(&logits, k).iter().map(|&(i, l)| (i, l.to_bits())).collect();
                let want: Vec<(u32, u32)> = all[..k.min(all.len())].iter().map(|&(i, l)| (i, l.to_bits())).collect();
                assert_eq!(got, want, "n = {n}, k = {k}");
            }
        }
    }

    #[test]
    fn penalties_discourage_repeats() {
        let logits = [2.0, 1.9];
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 1.5, ..params(0.0) }).unwrap();
        assert_eq!(s.sample(&logits, &[0]), 1);
        let mut s = Sampler::new(SamplingParams { frequency_penalty: 0.2, ..params(0.0) }).unwrap();
        assert_eq!(s.sample(&logits, &[0]), 1);
        let mut s = Sampler::new(SamplingParams { presence_penalty: 0.2, ..params(0.0) }).unwrap();
        assert_eq!(s.sample(&logits, &[0]), 1);
    }

    #[test]
    fn invalid_values_are_named() {
        for (p, name) in [
            (SamplingParams { temperature: -1.0, ..Default::default() }, "temperature"),
            (SamplingParams { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingParams { min_p: 2.0, ..Default::default() }, "min_p"),
            (SamplingParams { repetition_penalty: 0.0, ..Default::default() }, "repetition_penalty"),
            (SamplingParams { temperature: f32::NAN, ..Default::default() }, "temperature"),
        ] {
            let e = Sampler::new(p).err().unwrap().to_string();
            assert!(e.contains(name), "{e}");
        }
    }
}
