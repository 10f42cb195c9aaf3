//! Causal self-attention over the KV cache: grouped-query attention and DeepSeek's
//! multi-head latent attention (absorbed form: the cache holds the compressed KV and the
//! shared rope key, `kv_lora + rope` floats per token and layer).

#![allow(clippy::needless_range_loop)] // index loops mirror the block layouts

use rayon::prelude::*;

use super::config::Config;
use super::rope::Rotation;
use super::weights::Attention;
use crate::compute::cpu::{add_assign, attend_group, latent_mix, latent_scores, matmul, matmul_many, rms_norm, softmax, CacheValue};

/// The element type of grouped-query layers' cached keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// f32: the values exactly as computed (the default).
    #[default]
    F32,
    /// f16: half the memory per position, and half the bytes attention reads; keys and
    /// values are rounded to f16 as they are stored (llama.cpp's default cache type).
    F16,
}

/// One grouped-query layer's cached keys (or values), in the cache's element type: one
/// run of positions per key-value head, so that attending with a head reads its keys (or
/// values) as one contiguous stream instead of a slice of every position's row. With
/// sixteen sessions decoding, the caches come from memory each step (the experts
/// streaming through evict them), and position-major rows read at about a third of
/// the memory's speed.
pub enum KvRows {
    /// f32 values, per key-value head.
    F32(Vec<Vec<f32>>),
    /// f16 values, per key-value head.
    F16(Vec<Vec<half::f16>>),
}

impl KvRows {
    /// An empty cache of type `t` for `heads` key-value heads.
    pub fn new(t: KvType, heads: usize) -> KvRows {
        match t {
            KvType::F32 => KvRows::F32(vec![Vec::new(); heads]),
            KvType::F16 => KvRows::F16(vec![Vec::new(); heads]),
        }
    }

    /// Appends `x`, rows of `heads × d` values (one per position), each head's part to
    /// its run (rounded to nearest, ties to even, for f16).
    fn extend(&mut self, x: &[f32], d: usize) {
        fn spread<E>(runs: &mut [Vec<E>], x: &[f32], d: usize, f: impl Fn(f32) -> E + Copy) {
            for row in x.chunks_exact(runs.len() * d) {
                for (run, part) in runs.iter_mut().zip(row.chunks_exact(d)) {
                    run.extend(part.iter().map(|&v| f(v)));
                }
            }
        }
        match self {
            KvRows::F32(runs) => spread(runs, x, d, |v| v),
            KvRows::F16(runs) => spread(runs, x, d, half::f16::from_f32),
        }
    }

    /// Keeps the first `n` values of each head.
    fn truncate(&mut self, n: usize) {
        match self {
            KvRows::F32(runs) => runs.iter_mut().for_each(|r| r.truncate(n)),
            KvRows::F16(runs) => runs.iter_mut().for_each(|r| r.truncate(n)),
        }
    }

    /// Bytes of values held.
    fn bytes(&self) -> usize {
        match self {
            KvRows::F32(runs) => runs.iter().map(|r| r.len() * 4).sum(),
            KvRows::F16(runs) => runs.iter().map(|r| r.len() * 2).sum(),
        }
    }

    /// A copy of the first `n` values of each head.
    fn prefix(&self, n: usize) -> KvRows {
        match self {
            KvRows::F32(runs) => KvRows::F32(runs.iter().map(|r| r[..n.min(r.len())].to_vec()).collect()),
            KvRows::F16(runs) => KvRows::F16(runs.iter().map(|r| r[..n.min(r.len())].to_vec()).collect()),
        }
    }
}

/// Position-heads (query heads times positions attended) below which a sequence's
/// attention runs on the calling thread: at a few nanoseconds each, fewer are not worth
/// splitting across threads. (An upper bound is compared: tokens × heads × the last
/// token's length.)
const PARALLEL_MIN_POSITIONS: usize = 1 << 13;

/// Latent-attention heads that read the cache together: their queries (a few KiB each)
/// and latent sums stay in the first-level cache while each cached row is read once.
const LATENT_GROUP: usize = 8;

/// Every query head of tokens `0..n` (query rows `q`, token `t` at position `pos0 + t`)
/// attending over cached keys `kc` and values `vc`, into `out`. The query heads of one
/// key-value head and token are one task, on the thread pool when the sequence is long
/// enough: one sequence (a long prompt, or a lone session decoding at a long context)
/// would otherwise attend on one core. Each head's result is the same either way.
fn attend_heads<E: CacheValue>(cfg: &Config, q: &[f32], kc: &[Vec<E>], vc: &[Vec<E>], n: usize, pos0: usize, out: &mut [f32]) {
    let (hd, hdv, nh, nkv) = (cfg.head_dim_k, cfg.head_dim_v, cfg.n_head, cfg.n_head_kv);
    let group = nh / nkv;
    // task i: token i / nkv, key-value head i % nkv, whose query heads are consecutive
    let task = |i: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (t, kvh) = (i / nkv, i % nkv);
        let qs = &q[(t * nh + kvh * group) * hd..(t * nh + (kvh + 1) * group) * hd];
        // the positions cached before this pass are out of the processor's caches for the
        // first token only: the later ones find them where it left them, and asking for
        // rows already at hand costs (20-55% in the cache-resident rounds of
        // benches/attention.rs)
        let cold = if t == 0 { pos0 } else { 0 };
        attend_group(qs, group, &kc[kvh], hd, &vc[kvh], hdv, pos0 + t + 1, cold, cfg.kq_scale, scores, o);
    };
    if n * nh * (pos0 + n) < PARALLEL_MIN_POSITIONS {
        let mut scores = Vec::new();
        out.chunks_mut(group * hdv).enumerate().for_each(|(i, o)| task(i, o, &mut scores));
    } else {
        out.par_chunks_mut(group * hdv).enumerate().for_each_init(Vec::new, |scores, (i, o)| task(i, o, scores));
    }
}

/// One layer's cached keys and values.
pub enum LayerCache {
    /// Keys and values, `n_head_kv * head_dim` values per token each.
    Standard {
        /// Keys.
        k: KvRows,
        /// Values.
        v: KvRows,
    },
    /// Normalized compressed KV followed by the roped key, per token.
    Latent {
        /// `kv_lora + rope` floats per token.
        c: Vec<f32>,
    },
}

/// Query, key and value rows for a batch of tokens, computed from their normalized hidden
/// states in one matrix multiplication per projection (rope already applied). The rows of
/// each sequence in the batch are then attended against that sequence's own cache.
pub enum Projected {
    /// Grouped-query attention: `q` is `n × n_head × head_dim_k`, `k` is
    /// `n × n_head_kv × head_dim_k`, `v` is `n × n_head_kv × head_dim_v`.
    Standard { q: Vec<f32>, k: Vec<f32>, v: Vec<f32> },
    /// Latent attention: `q` is `n × n_head × (nope + rope)` (rope part not yet rotated),
    /// `c` is `n × (kv_lora + rope)`, normalized and roped as the cache stores it.
    Latent { q: Vec<f32>, c: Vec<f32> },
}

/// Computes the projections of `h` (`n × n_embd`, normalized) for tokens rotated by `rot`.
pub fn project(cfg: &Config, w: &Attention, h: &[f32], rot: &[Rotation]) -> Projected {
    let n = h.len() / cfg.n_embd;
    match w {
        Attention::Standard { wq, wk, wv, bq, bk, bv, q_norm, k_norm, .. } => {
            let (hd, nh, nkv) = (cfg.head_dim_k, cfg.n_head, cfg.n_head_kv);
            let [mut q, mut k, mut v] = matmul_many([wq, wk, wv], h);
            for (x, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                if let Some(b) = b {
                    for row in x.chunks_exact_mut(b.len()) {
                        add_assign(row, b);
                    }
                }
            }
            if let Some(g) = q_norm {
                rms_norm(&mut q, g, cfg.rms_eps);
            }
            if let Some(g) = k_norm {
                rms_norm(&mut k, g, cfg.rms_eps);
            }
            for t in 0..n {
                for hq in q[t * nh * hd..(t + 1) * nh * hd].chunks_exact_mut(hd) {
                    rot[t].apply(hq);
                }
                for hk in k[t * nkv * hd..(t + 1) * nkv * hd].chunks_exact_mut(hd) {
                    rot[t].apply(hk);
                }
            }
            Projected::Standard { q, k, v }
        }
        Attention::Mla { wq_a, q_a_norm, wq, wkv_a, kv_a_norm, .. } => {
            let m = cfg.mla.as_ref().expect("MLA config");
            let (rope, lora) = (m.rope_dim, m.kv_lora_rank);
            let q = match (wq_a, q_a_norm) {
                (Some(a), Some(g)) => {
                    let mut qa = matmul(a, h);
                    rms_norm(&mut qa, g, cfg.rms_eps);
                    matmul(wq, &qa)
                }
                _ => matmul(wq, h),
            };
            let mut c = matmul(wkv_a, h);
            let width = lora + rope;
            for t in 0..n {
                let row = &mut c[t * width..(t + 1) * width];
                rms_norm(&mut row[..lora], kv_a_norm, cfg.rms_eps);
                rot[t].apply(&mut row[lora..]);
            }
            Projected::Latent { q, c }
        }
    }
}

impl Projected {
    /// Appends the keys and values of tokens `rows` to `cache` and attends their queries
    /// over it; the first of them sits at position `pos0`, and `rot` holds every token's
    /// rotation (as given to [`project`]). Returns `(t1 - t0) × n_head ×
    /// head_dim_v` values, ready for the output projection.
    pub fn attend(&self, cfg: &Config, w: &Attention, rot: &[Rotation], rows: std::ops::Range<usize>, pos0: usize, cache: &mut LayerCache) -> Vec<f32> {
        let (t0, t1) = (rows.start, rows.end);
        let n = t1 - t0;
        let nh = cfg.n_head;
        match (self, w, cache) {
            (Projected::Standard { q, k, v }, Attention::Standard { .. }, LayerCache::Standard { k: kc, v: vc }) => {
                let (hd, hdv, nkv) = (cfg.head_dim_k, cfg.head_dim_v, cfg.n_head_kv);
                kc.extend(&k[t0 * nkv * hd..t1 * nkv * hd], hd);
                vc.extend(&v[t0 * nkv * hdv..t1 * nkv * hdv], hdv);
                let mut out = vec![0.0f32; n * nh * hdv];
                let q = &q[t0 * nh * hd..t1 * nh * hd];
                match (&*kc, &*vc) {
                    (KvRows::F32(kc), KvRows::F32(vc)) => attend_heads(cfg, q, kc, vc, n, pos0, &mut out),
                    (KvRows::F16(kc), KvRows::F16(vc)) => attend_heads(cfg, q, kc, vc, n, pos0, &mut out),
                    _ => unreachable!("keys and values are cached in one type"),
                }
                out
            }
            (Projected::Latent { q, c }, Attention::Mla { wk_b, wv_b, .. }, LayerCache::Latent { c: cache }) => {
                let m = cfg.mla.as_ref().expect("MLA config");
                let (nope, rope, lora, vd) = (m.nope_dim, m.rope_dim, m.kv_lora_rank, m.v_dim);
                let width = lora + rope;
                cache.extend_from_slice(&c[t0 * width..t1 * width]);
                let mut out = vec![0.0f32; n * nh * vd];
                let cache = &cache[..];
                let group = LATENT_GROUP.min(nh);
                let groups = nh.div_ceil(group);
                // task i: token i / groups, heads of group i % groups: every head attends
                // over the same latent cache, so the group's scores and sums are small
                // matrix products (`latent_scores`, `latent_mix`: each cached value read
                // once per four heads, each head's bits those of `dot` and `axpy`)
                let task = |i: usize, o: &mut [f32], scores: &mut Vec<f32>| {
                    let (t, h0) = (i / groups, i % groups * group);
                    let heads = o.len() / vd;
                    let len = pos0 + t + 1;
                    let mut q_abs = Vec::with_capacity(heads * lora);
                    let mut q_pe = Vec::with_capacity(heads * rope);
                    for head in h0..h0 + heads {
                        let qh = &q[((t0 + t) * nh + head) * (nope + rope)..((t0 + t) * nh + head + 1) * (nope + rope)];
                        q_abs.extend(matmul(&wk_b.slice_rows(head * lora, (head + 1) * lora), &qh[..nope]));
                        let pe = q_pe.len();
                        q_pe.extend_from_slice(&qh[nope..]);
                        rot[t0 + t].apply(&mut q_pe[pe..]);
                    }
                    scores.clear();
                    scores.resize(heads * len, 0.0);
                    latent_scores(&q_abs, &q_pe, &cache[..len * width], lora, len, cfg.kq_scale, scores);
                    for sc in scores.chunks_exact_mut(len) {
                        softmax(sc);
                    }
                    let mut lat = vec![0.0f32; heads * lora];
                    latent_mix(scores, cache, width, len, &mut lat, lora);
                    for (j, (o, l)) in o.chunks_exact_mut(vd).zip(lat.chunks_exact(lora)).enumerate() {
                        let head = h0 + j;
                        o.copy_from_slice(&matmul(&wv_b.slice_rows(head * vd, (head + 1) * vd), l));
                    }
                };
                // a token's heads in groups (the last one smaller where they do not divide)
                if n * nh * (pos0 + n) < PARALLEL_MIN_POSITIONS {
                    let mut scores = Vec::new();
                    for (t, row) in out.chunks_mut(nh * vd).enumerate() {
                        row.chunks_mut(group * vd).enumerate().for_each(|(g, o)| task(t * groups + g, o, &mut scores));
                    }
                } else {
                    out.par_chunks_mut(nh * vd)
                        .enumerate()
                        .flat_map(|(t, row)| row.par_chunks_mut(group * vd).enumerate().map(move |(g, o)| (t * groups + g, o)))
                        .for_each_init(Vec::new, |scores, (i, o)| task(i, o, scores));
                }
                out
            }
            _ => unreachable!("cache kind matches the attention kind"),
        }
    }
}

/// The output projection of attended rows.
pub fn output(w: &Attention, attended: &[f32]) -> Vec<f32> {
    match w {
        Attention::Standard { wo, .. } | Attention::Mla { wo, .. } => matmul(wo, attended),
    }
}

impl LayerCache {
    /// Bytes of values held.
    pub fn bytes(&self) -> u64 {
        (match self {
            LayerCache::Standard { k, v } => k.bytes() + v.bytes(),
            LayerCache::Latent { c } => c.len() * 4,
        }) as u64
    }

    /// A copy of the first `len` positions.
    pub fn prefix(&self, cfg: &Config, len: usize) -> LayerCache {
        match self {
            LayerCache::Standard { k, v } => LayerCache::Standard { k: k.prefix(len * cfg.head_dim_k), v: v.prefix(len * cfg.head_dim_v) },
            LayerCache::Latent { c } => {
                let m = cfg.mla.as_ref().expect("MLA config");
                LayerCache::Latent { c: c[..(len * (m.kv_lora_rank + m.rope_dim)).min(c.len())].to_vec() }
            }
        }
    }

    /// Drops every position from `len` on (undoes a pass that failed part way).
    pub fn truncate(&mut self, cfg: &Config, len: usize) {
        match self {
            LayerCache::Standard { k, v } => {
                k.truncate(len * cfg.head_dim_k);
                v.truncate(len * cfg.head_dim_v);
            }
            LayerCache::Latent { c } => {
                let m = cfg.mla.as_ref().expect("MLA config");
                c.truncate(len * (m.kv_lora_rank + m.rope_dim));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_rows_are_kept_per_head_and_cut_by_position() {
        // three positions of two heads of two values: position p, head h holds 10p + 2h (+1)
        let rows: Vec<f32> = (0..3).flat_map(|p| (0..2).flat_map(move |h| [(10 * p + 2 * h) as f32, (10 * p + 2 * h + 1) as f32])).collect();
        for t in [KvType::F32, KvType::F16] {
            let mut kv = KvRows::new(t, 2);
            kv.extend(&rows[..4], 2);
            kv.extend(&rows[4..], 2);
            let heads: Vec<Vec<f32>> = match &kv {
                KvRows::F32(r) => r.clone(),
                KvRows::F16(r) => r.iter().map(|h| h.iter().map(|v| v.to_f32()).collect()).collect(),
            };
            assert_eq!(heads, [vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0], vec![2.0, 3.0, 12.0, 13.0, 22.0, 23.0]], "{t:?}");
            assert_eq!(kv.bytes(), 12 * if t == KvType::F16 { 2 } else { 4 });
            kv.truncate(2);
            let kept = match &kv {
                KvRows::F32(r) => r.iter().map(Vec::len).collect::<Vec<_>>(),
                KvRows::F16(r) => r.iter().map(Vec::len).collect(),
            };
            assert_eq!(kept, [2, 2], "{t:?}: one position of each head kept");
        }
    }
}
