//! The attention block of a layer on the GPU backend: grouped-query attention (Mixtral,
//! Qwen, OLMoE) or latent attention (DeepSeek, Kimi), every token of a batch over its own
//! sequence's pages of the key/value pool in one dispatch, the output projection added to
//! the residual stream.
//!
//! Latent attention follows the CPU backend's absorbed form
//! ([`crate::model::attention`]): each position caches one row of `kv_lora + rope` values
//! (the compressed keys, normalized, then the shared rope key, rotated); each query head's
//! non-rope part goes through that head's slice of `wk_b` into the compressed space, is
//! joined with its rotated rope part, and attends over the cached rows as keys, their
//! first `kv_lora` values serving as the values; each head's result goes back out through
//! its slice of `wv_b`. The per-head products are stacks of `n_head` matrices run as one
//! indexed product (as routed experts are), the head ids in a buffer made once per step.

use super::cache::{KvPool, PAGE};
use super::{GpuKvCache, GpuModel, Vector};
use crate::compute::gpu::attention::{PageTables, Paging, Shape};
use crate::compute::gpu::copy_rows::Rows;
use crate::compute::gpu::expert_tiles::{Tiles, TILE, TILE_WORDS};
use crate::compute::gpu::kernel::MAX_GROUPS;
use crate::compute::gpu::matrix::{Experts, GpuMatrix};
use crate::compute::gpu::recorder::Recorder;
use crate::compute::gpu::Gpu;
use crate::model::config::Config;
use crate::model::rope::Rotation;
use crate::model::weights::Attention;
use crate::{Error, Result};

/// A layer's attention weights on the device.
pub(super) enum LayerAttention {
    /// Grouped-query attention.
    Standard {
        wq: GpuMatrix,
        wk: GpuMatrix,
        wv: GpuMatrix,
        wo: GpuMatrix,
        biases: [Option<Vector>; 3],
        q_norm: Option<Vector>,
        k_norm: Option<Vector>,
    },
    /// Latent attention; `wk_b` and `wv_b` are stacks of one matrix per head.
    Latent {
        wq_a: Option<GpuMatrix>,
        q_a_norm: Option<Vector>,
        wq: GpuMatrix,
        wkv_a: GpuMatrix,
        kv_a_norm: Vector,
        wk_b: GpuMatrix,
        wv_b: GpuMatrix,
        wo: GpuMatrix,
    },
}

impl LayerAttention {
    /// Uploads `a`.
    pub(super) fn new(gpu: &Gpu, cfg: &Config, a: &Attention) -> Result<LayerAttention> {
        let vector = |v: &Option<Vec<f32>>| v.as_deref().map(|v| Vector::new(gpu, v)).transpose();
        Ok(match a {
            Attention::Standard { wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm } => LayerAttention::Standard {
                wq: GpuMatrix::new(gpu, wq)?,
                wk: GpuMatrix::new(gpu, wk)?,
                wv: GpuMatrix::new(gpu, wv)?,
                wo: GpuMatrix::new(gpu, wo)?,
                biases: [vector(bq)?, vector(bk)?, vector(bv)?],
                q_norm: vector(q_norm)?,
                k_norm: vector(k_norm)?,
            },
            Attention::Mla { wq_a, q_a_norm, wq, wkv_a, kv_a_norm, wk_b, wv_b, wo } => {
                let m = cfg.mla.as_ref().expect("MLA config");
                let per_head = |w: &crate::compute::QMatrix, rows: usize| -> Result<GpuMatrix> {
                    let heads: Vec<_> = (0..cfg.n_head).map(|h| w.slice_rows(h * rows, (h + 1) * rows)).collect();
                    GpuMatrix::stacked(gpu, &heads)
                };
                LayerAttention::Latent {
                    wq_a: wq_a.as_ref().map(|w| GpuMatrix::new(gpu, w)).transpose()?,
                    q_a_norm: vector(q_a_norm)?,
                    wq: GpuMatrix::new(gpu, wq)?,
                    wkv_a: GpuMatrix::new(gpu, wkv_a)?,
                    kv_a_norm: Vector::new(gpu, kv_a_norm)?,
                    wk_b: per_head(wk_b, m.kv_lora_rank)?,
                    wv_b: per_head(wv_b, m.v_dim)?,
                    wo: GpuMatrix::new(gpu, wo)?,
                }
            }
        })
    }

    /// Every device buffer of the weights (for the workspace to pin).
    pub(super) fn buffers(&self) -> Vec<&wgpu::Buffer> {
        let mut out = Vec::new();
        match self {
            LayerAttention::Standard { wq, wk, wv, wo, biases, q_norm, k_norm } => {
                [wq, wk, wv, wo].into_iter().for_each(|m| out.extend(m.buffers()));
                out.extend(biases.iter().chain([q_norm, k_norm]).flatten().map(|v| &v.buf));
            }
            LayerAttention::Latent { wq_a, q_a_norm, wq, wkv_a, kv_a_norm, wk_b, wv_b, wo } => {
                wq_a.iter().chain([wq, wkv_a, wk_b, wv_b, wo]).for_each(|m| out.extend(m.buffers()));
                out.extend(q_a_norm.iter().chain([kv_a_norm]).map(|v| &v.buf));
            }
        }
        out
    }
}

/// Values a cache position holds per layer, keys and values: latent attention caches one
/// row of compressed keys with the rope key, and no values of its own.
pub(super) fn cache_widths(cfg: &Config) -> (usize, usize) {
    match &cfg.mla {
        Some(m) => (m.kv_lora_rank + m.rope_dim, 0),
        None => (cfg.n_head_kv * cfg.head_dim_k, cfg.n_head_kv * cfg.head_dim_v),
    }
}

/// What a layer's attention needs of the step beside its weights.
pub(super) struct StepInputs<'s> {
    /// Every row's rotation, and their table on the device.
    pub rot: &'s [Rotation],
    pub cs: &'s wgpu::Buffer,
    /// Attention scores' scratch, large enough for any one of `batches`.
    pub scratch: &'s wgpu::Buffer,
    /// For latent attention: `i % n_head` for each (token, head) row of one product.
    pub head_ids: Option<&'s wgpu::Buffer>,
    /// Those rows grouped by head ([`head_tiles`]), when the step's products run in one
    /// piece and have several tokens.
    pub head_tiles: Option<&'s Tiles>,
    /// The key/value pool.
    pub kv: &'s KvPool,
    /// The step's sequences in groups whose attention runs as one dispatch.
    pub batches: &'s [AttentionBatch],
    /// Each new token's cache row (u32), where its keys and values go.
    pub cache_rows: &'s wgpu::Buffer,
}

/// Consecutive sequences of a step whose tokens attend in one dispatch: their page tables
/// and rows on the device ([`Paging`]).
pub(super) struct AttentionBatch {
    rows: wgpu::Buffer,
    pages: wgpu::Buffer,
    row0: usize,
    n: usize,
    /// Scratch floats the batch's scores take.
    pub scores: usize,
}

impl AttentionBatch {
    fn paging(&self) -> Paging<'_> {
        Paging { rows: &self.rows, pages: &self.pages, n: self.n, row0: self.row0, scores: self.scores, page: PAGE }
    }
}

/// The step's sequences (tokens, cache with its pages for the new positions) in as few
/// attention batches as keep each batch's scores (`heads` rows per token over the
/// positions it sees) within the device's largest buffer, `max_bytes`.
pub(super) fn attention_batches(rec: &mut Recorder, seqs: &[(&[u32], &GpuKvCache, crate::model::Logits)], heads: usize, max_bytes: u64) -> Result<Vec<AttentionBatch>> {
    let scores_of = |t: usize, len: usize| heads * (len * t + t * (t + 1) / 2);
    let mut out = Vec::new();
    let (mut first, mut row0, mut rows, mut scores) = (0, 0, 0, 0);
    let mut flush = |upto: usize, first: usize, row0: usize, rows: usize, scores: usize| -> Result<()> {
        if upto == first {
            return Ok(());
        }
        let tables: Vec<(&[u32], usize, usize)> = seqs[first..upto].iter().map(|(t, c, _)| (&c.pages[..], c.len, t.len())).collect();
        let pt = PageTables::new(&tables, heads);
        debug_assert_eq!(pt.scores, scores);
        // (u32 words, uploaded as f32 bits into the workspace's buffers)
        let (rows_buf, pages) = (rec.upload("attention rows", bytemuck::cast_slice(&pt.rows))?, rec.upload("page tables", bytemuck::cast_slice(&pt.pages))?);
        out.push(AttentionBatch { rows: rows_buf, pages, row0, n: rows, scores });
        Ok(())
    };
    for (i, (t, c, _)) in seqs.iter().enumerate() {
        let s = scores_of(t.len(), c.len);
        if s as u64 * 4 > max_bytes {
            return Err(Error::Invalid(format!("attention scores of {} bytes for one sequence's chunk exceed the device's largest buffer ({max_bytes} bytes): feed fewer tokens per step", s * 4)));
        }
        if (scores + s) as u64 * 4 > max_bytes {
            flush(i, first, row0, rows, scores)?;
            (first, row0, rows, scores) = (i, row0 + rows, 0, 0);
        }
        rows += t.len();
        scores += s;
    }
    flush(seqs.len(), first, row0, rows, scores)?;
    Ok(out)
}

/// The (token, head) rows `t · heads + h` of `n` tokens grouped by head in tiles of up to
/// eight (the layout of [`crate::compute::gpu::expert_tiles::expert_tiles`] for ids `i %
/// heads`, made directly).
pub(super) fn head_tiles(n: usize, heads: usize) -> Vec<u32> {
    let mut words = Vec::with_capacity(heads * n.div_ceil(TILE) * TILE_WORDS);
    for h in 0..heads {
        for t0 in (0..n).step_by(TILE) {
            let count = TILE.min(n - t0);
            let mut tile = [0u32; TILE_WORDS];
            tile[0] = h as u32;
            tile[1] = count as u32;
            for j in 0..count {
                tile[2 + j] = ((t0 + j) * heads + h) as u32;
            }
            words.extend(tile);
        }
    }
    words
}

/// Tokens per indexed per-head product (its output row groups are one dispatch
/// dimension).
pub(super) fn tokens_per_head_product(cfg: &Config) -> usize {
    (MAX_GROUPS as usize / cfg.n_head.max(1)).max(1)
}

impl<'a> GpuModel<'a> {
    /// Records layer `l`'s attention of the `n` normalized rows `h` (the step's sequences
    /// one after another), appending each sequence's keys and values to its cache, and
    /// adds the output projection into the residual stream `x`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_attention(&self, rec: &mut Recorder, l: usize, attn: &LayerAttention, h: &wgpu::Buffer, x: &wgpu::Buffer, n: usize, step: &StepInputs<'_>) -> Result<()> {
        let cfg: &Config = &self.model.config;
        let nh = cfg.n_head;
        match attn {
            LayerAttention::Standard { wq, wk, wv, wo, biases, q_norm, k_norm } => {
                let (nkv, hd, hdv) = (cfg.n_head_kv, cfg.head_dim_k, cfg.head_dim_v);
                let [q, kb, vb] = self.matmuls(rec, [wq, wk, wv], h, n, None)?;
                for (buf, bias, width) in [(&q, &biases[0], n * nh * hd), (&kb, &biases[1], n * nkv * hd), (&vb, &biases[2], n * nkv * hdv)] {
                    if let Some(b) = bias {
                        self.k.ew.add_row(rec, buf, &b.buf, width, b.len)?;
                    }
                }
                if let Some(g) = q_norm {
                    self.norm(rec, &q, g, n * nh * hd)?;
                }
                if let Some(g) = k_norm {
                    self.norm(rec, &kb, g, n * nkv * hd)?;
                }
                self.k.rope.record_pair(rec, (&q, nh), (&kb, nkv), step.cs, step.rot, hd)?;
                // the new keys and values join their sequences' pages, and every token
                // attends over its own sequence's positions
                let (kc, vc) = (&step.kv.k[l], &step.kv.v[l]);
                if step.kv.half {
                    // rounded to f16 as the CPU's f16 cache rounds them
                    self.k.half.scatter(rec, &kb, 0, kc, step.cache_rows, n, nkv * hd)?;
                    self.k.half.scatter(rec, &vb, 0, vc, step.cache_rows, n, nkv * hdv)?;
                } else {
                    self.k.copy.scatter(rec, &kb, 0, kc, step.cache_rows, n, nkv * hd)?;
                    self.k.copy.scatter(rec, &vb, 0, vc, step.cache_rows, n, nkv * hdv)?;
                }
                let att = rec.output("attended", n * nh * hdv);
                let shape = Shape { heads: nh, kv_heads: nkv, head_dim: hd, value_dim: hdv, scale: cfg.kq_scale, value_stride: nkv * hdv, half: step.kv.half };
                for b in step.batches {
                    self.k.attn.record(rec, shape, &b.paging(), &q, kc, vc, step.scratch, &att)?;
                }
                wo.record_add(rec, &att, x, n)
            }
            LayerAttention::Latent { wq_a, q_a_norm, wq, wkv_a, kv_a_norm, wk_b, wv_b, wo } => {
                let m = cfg.mla.as_ref().expect("MLA config");
                let (nope, rope, lora) = (m.nope_dim, m.rope_dim, m.kv_lora_rank);
                let (width, qw) = (lora + rope, nope + rope);
                let ids = step.head_ids.expect("head ids made for latent attention");
                let copy = &self.k.copy;
                // queries: n × heads × (nope + rope)
                let q = match (wq_a, q_a_norm) {
                    (Some(a), Some(g)) => {
                        let qa = self.matmul(rec, a, h, n)?;
                        self.norm(rec, &qa, g, n * a.rows())?;
                        self.matmul(rec, wq, &qa, n)?
                    }
                    _ => self.matmul(rec, wq, h, n)?,
                };
                // compressed keys: normalized, and the rope key rotated, in place
                let c = self.matmul(rec, wkv_a, h, n)?;
                let lat = rec.output("compressed keys", n * lora);
                copy.record(rec, &c, Rows::new(0, width), &lat, Rows::new(0, lora), n, lora)?;
                self.norm(rec, &lat, kv_a_norm, n * lora)?;
                copy.record(rec, &lat, Rows::new(0, lora), &c, Rows::new(0, width), n, lora)?;
                let kpe = rec.output("rope key", n * rope);
                copy.record(rec, &c, Rows::new(lora, width), &kpe, Rows::new(0, rope), n, rope)?;
                self.k.rope.record(rec, &kpe, step.cs, step.rot, 1, rope)?;
                copy.record(rec, &kpe, Rows::new(0, rope), &c, Rows::new(lora, width), n, rope)?;
                // each head's query in the compressed space, joined with its rotated rope
                // part: n × heads × (kv_lora + rope)
                let qn = rec.output("query heads", n * nh * nope);
                copy.record(rec, &q, Rows::new(0, qw), &qn, Rows::new(0, nope), n * nh, nope)?;
                let qpe = rec.output("query rope", n * nh * rope);
                copy.record(rec, &q, Rows::new(nope, qw), &qpe, Rows::new(0, rope), n * nh, rope)?;
                self.k.rope.record(rec, &qpe, step.cs, step.rot, nh, rope)?;
                let absorbed = self.per_head(rec, wk_b, &qn, n, ids, step.head_tiles)?;
                let ql = rec.output("latent queries", n * nh * width);
                copy.record(rec, &absorbed, Rows::new(0, lora), &ql, Rows::new(0, width), n * nh, lora)?;
                copy.record(rec, &qpe, Rows::new(0, rope), &ql, Rows::new(lora, width), n * nh, rope)?;
                // the rows join their sequences' pages; every token attends over its own
                // sequence's cached rows, keys and (their first kv_lora values) values alike
                let kc = &step.kv.k[l];
                copy.scatter(rec, &c, 0, kc, step.cache_rows, n, width)?;
                let att = rec.output("attended", n * nh * lora);
                let shape = Shape { heads: nh, kv_heads: 1, head_dim: width, value_dim: lora, scale: cfg.kq_scale, value_stride: width, half: false };
                for b in step.batches {
                    self.k.attn.record(rec, shape, &b.paging(), &ql, kc, kc, step.scratch, &att)?;
                }
                // out of the compressed space, head by head: n × heads × v_dim
                let o = self.per_head(rec, wv_b, &att, n, ids, step.head_tiles)?;
                wo.record_add(rec, &o, x, n)
            }
        }
    }

    /// Head h's matrix of the stack `w` times row (t, h) of `x` (`n` tokens × heads rows),
    /// for every token and head: `n × heads × w.rows()` values. A product takes at most
    /// [`GpuModel::set_head_product_tokens`] tokens; more go through several.
    fn per_head(&self, rec: &mut Recorder, w: &GpuMatrix, x: &wgpu::Buffer, n: usize, ids: &wgpu::Buffer, tiles: Option<&Tiles>) -> Result<wgpu::Buffer> {
        let nh = self.model.config.n_head;
        let (cols, rows) = (w.cols(), w.rows());
        let per = self.head_product_tokens.load(std::sync::atomic::Ordering::Relaxed);
        if n <= per {
            let [y] = self.matmuls(rec, [w], x, n * nh, Some(Experts { ids, act_div: 1, tiles }))?;
            return Ok(y);
        }
        let y = rec.output("per head", n * nh * rows);
        for t0 in (0..n).step_by(per) {
            let m = per.min(n - t0);
            let xs = rec.output("per head in", m * nh * cols);
            rec.copy(x, (t0 * nh * cols * 4) as u64, &xs, 0, (m * nh * cols * 4) as u64);
            let [ys] = self.matmuls(rec, [w], &xs, m * nh, Some(Experts { ids, act_div: 1, tiles: None }))?;
            rec.copy(&ys, 0, &y, (t0 * nh * rows * 4) as u64, (m * nh * rows * 4) as u64);
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_tiles_are_the_grouping_of_the_head_ids() {
        for (n, heads) in [(2, 3), (9, 4), (17, 1), (8, 128)] {
            let ids: Vec<u32> = (0..n * heads).map(|i| (i % heads) as u32).collect();
            assert_eq!(head_tiles(n, heads), crate::compute::gpu::expert_tiles::expert_tiles(&ids), "{n} tokens, {heads} heads");
        }
    }
}
