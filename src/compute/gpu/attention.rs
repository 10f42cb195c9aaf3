//! Causal grouped-query attention over a paged KV cache on the GPU
//! (`shaders/attention.wgsl`): every token of a batch, each over its own sequence's
//! cached positions, in one dispatch (a workgroup per token and head): scores, softmax and
//! weighted values, over a scratch buffer of each token's `heads × positions` scores. The
//! cache rows of a sequence's positions come from its page table ([`Paging`]). The CPU
//! reference is the CPU backend's [`crate::compute::cpu::attend_head`], applied head by
//! head over each sequence's positions in order.
//!
//! The scratch grows with the prompt chunk times the context; chunked prefill keeps it
//! bounded.

use super::recorder::Recorder;
use super::kernel::{Kernel, MAX_GROUPS};
use super::Gpu;
use crate::{Error, Result};

/// The compiled attention kernel, for f32 caches and for f16 ones.
pub struct Attention {
    kernel: Kernel,
    half: Kernel,
}

/// The kernel's source for a cache of packed f16 pairs.
fn half_source() -> &'static str {
    static SOURCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SOURCE.get_or_init(|| {
        let src = include_str!("../../../shaders/attention.wgsl");
        let (flag, alias) = ("const HALF: bool = false;", "alias Kv = f32;");
        assert!(src.contains(flag) && src.contains(alias), "attention.wgsl declares its HALF switch and Kv type");
        src.replace(flag, "const HALF: bool = true;").replace(alias, "alias Kv = u32;")
    })
}

/// The heads of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Query and key values per head.
    pub head_dim: usize,
    /// Value values per head.
    pub value_dim: usize,
    /// Score scale (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// Values from one cached position to the next: `kv_heads × value_dim`, or more where
    /// each position's values are the first part of a wider row (latent attention reads
    /// its values from the compressed key rows).
    pub value_stride: usize,
    /// The cache holds f16 values, two to a word (first in the low half), rather than f32.
    pub half: bool,
}

/// Where a batch's token rows find their positions: per row, the positions it sees, its
/// sequence's page table and its scores' place in the scratch ([`PageTables::new`]), on
/// the device.
pub struct Paging<'a> {
    /// Three u32 per token row: positions seen, first page-table entry, first score.
    pub rows: &'a wgpu::Buffer,
    /// The sequences' page tables, one after another.
    pub pages: &'a wgpu::Buffer,
    /// Token rows.
    pub n: usize,
    /// The first token's row in the query and output buffers.
    pub row0: usize,
    /// Scratch floats the rows' scores take, for `heads` heads.
    pub scores: usize,
    /// Positions per page.
    pub page: usize,
}

/// The host side of [`Paging`]: the rows' entries and the page tables, to upload.
#[derive(Debug, Default)]
pub struct PageTables {
    /// Three u32 per token row (see [`Paging::rows`]).
    pub rows: Vec<u32>,
    /// The page tables, one after another.
    pub pages: Vec<u32>,
    /// Scratch floats needed.
    pub scores: usize,
}

impl PageTables {
    /// The tables for sequences whose new tokens are consecutive rows, in order: each
    /// `(page table, cached positions before the new tokens, new tokens)`; `heads` score
    /// rows per token.
    pub fn new(seqs: &[(&[u32], usize, usize)], heads: usize) -> PageTables {
        let mut t = PageTables::default();
        for &(table, pos0, n) in seqs {
            let first = t.pages.len() as u32;
            t.pages.extend_from_slice(table);
            for i in 0..n {
                let end = pos0 + i + 1;
                t.rows.extend([end as u32, first, t.scores as u32]);
                t.scores += heads * end;
            }
        }
        if t.pages.is_empty() {
            t.pages.push(0); // a binding may not be empty
        }
        t
    }
}

/// A 2-D grid of `total` items, `per` per workgroup: (groups x, groups y, items per row).
fn grid(total: usize, per: usize) -> ([u32; 3], u32) {
    let groups = total.div_ceil(per).max(1);
    let gx = groups.min(MAX_GROUPS as usize);
    ([gx as u32, groups.div_ceil(gx) as u32, 1], (gx * per) as u32)
}

impl Attention {
    /// Compiles the kernel.
    pub fn new(gpu: &Gpu) -> Attention {
        let src = include_str!("../../../shaders/attention.wgsl");
        Attention { kernel: Kernel::new(gpu, "attention", src, "main"), half: Kernel::new(gpu, "attention_f16", half_source(), "main") }
    }

    /// Records attention of `q`'s token rows `paging.row0..` (`paging.n`), each over its sequence's
    /// positions in the paged cache `k`, `v`, into the same rows of `out` (`heads ×
    /// value_dim` each), using `scratch` (at least `paging.scores` f32).
    #[allow(clippy::too_many_arguments)]
    pub fn record(&self, rec: &mut Recorder, sh: Shape, paging: &Paging, q: &wgpu::Buffer, k: &wgpu::Buffer, v: &wgpu::Buffer, scratch: &wgpu::Buffer, out: &wgpu::Buffer) -> Result<()> {
        if sh.kv_heads == 0 || !sh.heads.is_multiple_of(sh.kv_heads) {
            return Err(Error::Invalid(format!("attention: {} query heads over {} key/value heads", sh.heads, sh.kv_heads)));
        }
        if scratch.size() < (paging.scores * 4) as u64 {
            return Err(Error::Invalid(format!("attention: scratch of {} bytes, {} needed", scratch.size(), paging.scores * 4)));
        }
        if paging.n == 0 {
            return Ok(());
        }
        let dims = |per_y: u32| [paging.n as u32, sh.heads as u32, sh.kv_heads as u32, sh.head_dim as u32, sh.value_dim as u32, sh.scale.to_bits(), per_y, sh.value_stride as u32, paging.page as u32, paging.row0 as u32];
        let (g, per) = grid(paging.n * sh.heads, 1);
        let kernel = if sh.half { &self.half } else { &self.kernel };
        kernel.record(rec, &[q, k, v, scratch, out, paging.rows, paging.pages], &dims(per), g)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu;

    #[test]
    fn gpu_attention_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = Attention::new(&gpu);
        // grouped heads, value width unlike the key width, wide values, values read from
        // the key rows (latent attention), f16 caches (a head size not a multiple of
        // four); each case a batch of sequences in pages of 4 or 64 positions laid out in
        // a shuffled order: prefill from empty, decode after a long cache, a chunk in the
        // middle of a sequence
        let seqs: [&[(usize, usize)]; 3] = [&[(0, 5)], &[(300, 1), (70, 3), (0, 2)], &[(2, 2), (6, 3), (9, 1)]];
        for (sh, seqs, page) in [
            (Shape { heads: 4, kv_heads: 2, head_dim: 16, value_dim: 16, scale: 0.25, value_stride: 32, half: false }, seqs[0], 4),
            (Shape { heads: 8, kv_heads: 1, head_dim: 64, value_dim: 64, scale: 0.125, value_stride: 64, half: false }, seqs[1], 64),
            (Shape { heads: 6, kv_heads: 3, head_dim: 24, value_dim: 40, scale: 0.2, value_stride: 120, half: false }, seqs[1], 4),
            (Shape { heads: 2, kv_heads: 1, head_dim: 18, value_dim: 10, scale: 0.3, value_stride: 10, half: false }, seqs[2], 4),
            (Shape { heads: 2, kv_heads: 2, head_dim: 8, value_dim: 300, scale: 0.3, value_stride: 600, half: false }, seqs[2], 4),
            // latent: the values are the first value_dim of each key row (one shared head)
            (Shape { heads: 4, kv_heads: 1, head_dim: 24, value_dim: 16, scale: 0.2, value_stride: 24, half: false }, seqs[1], 4),
            (Shape { heads: 2, kv_heads: 1, head_dim: 310, value_dim: 300, scale: 0.05, value_stride: 310, half: false }, seqs[2], 64),
            (Shape { heads: 6, kv_heads: 3, head_dim: 24, value_dim: 40, scale: 0.2, value_stride: 120, half: true }, seqs[1], 4),
            (Shape { heads: 2, kv_heads: 1, head_dim: 18, value_dim: 300, scale: 0.3, value_stride: 300, half: true }, seqs[2], 64),
        ] {
            let (kw, latent) = (sh.kv_heads * sh.head_dim, sh.value_stride != sh.kv_heads * sh.value_dim);
            // an f16 cache holds the values rounded to f16: the CPU reference attends over
            // the same rounded values (widening them back is exact)
            let rounded = |v: Vec<f32>| if sh.half { v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect::<Vec<f32>>() } else { v };
            // pages handed out in a shuffled order
            let pages_of = |len: usize| len.div_ceil(page);
            let total_pages: usize = seqs.iter().map(|&(p0, n)| pages_of(p0 + n)).sum();
            let mut free: Vec<u32> = (0..total_pages as u32).collect();
            free.sort_by_key(|&p| (p * 7919) % total_pages as u32);
            let rows_total = total_pages * page;
            let (mut kpool, mut vpool) = (vec![0.0f32; rows_total * kw], vec![0.0f32; rows_total * sh.value_stride]);
            let (mut tables, mut want, mut q_all) = (Vec::new(), Vec::new(), Vec::new());
            let mut scores = Vec::new();
            for (i, &(pos0, n)) in seqs.iter().enumerate() {
                let len = pos0 + n;
                let table: Vec<u32> = free.drain(..pages_of(len)).collect();
                let q = values(n * sh.heads * sh.head_dim, 1 + i as u64);
                let kc = rounded(values(len * kw, 2 + i as u64));
                let vc = if latent { kc.clone() } else { rounded(values(len * sh.value_stride, 3 + i as u64)) };
                for s in 0..len {
                    let row = table[s / page] as usize * page + s % page;
                    kpool[row * kw..(row + 1) * kw].copy_from_slice(&kc[s * kw..(s + 1) * kw]);
                    vpool[row * sh.value_stride..(row + 1) * sh.value_stride].copy_from_slice(&vc[s * sh.value_stride..(s + 1) * sh.value_stride]);
                }
                let group = sh.heads / sh.kv_heads;
                for t in 0..n {
                    for h in 0..sh.heads {
                        let kvh = h / group;
                        let qh = &q[(t * sh.heads + h) * sh.head_dim..(t * sh.heads + h + 1) * sh.head_dim];
                        let mut o = vec![0.0f32; sh.value_dim];
                        cpu::attend_head(qh, &kc[kvh * sh.head_dim..], kw, &vc[kvh * sh.value_dim..], sh.value_stride, pos0 + t + 1, 0, sh.scale, &mut scores, &mut o);
                        want.extend(o);
                    }
                }
                q_all.extend(q);
                tables.push((table, pos0, n));
            }
            let seq_tables: Vec<(&[u32], usize, usize)> = tables.iter().map(|(t, p, n)| (&t[..], *p, *n)).collect();
            let pt = PageTables::new(&seq_tables, sh.heads);
            let n: usize = seqs.iter().map(|s| s.1).sum();
            let cache = |v: &[f32]| if sh.half { gpu.storage("cache", bytemuck::cast_slice(&super::super::half_rows::to_half_words(v))).unwrap() } else { gpu.upload("cache", v).unwrap() };
            let (qb, kb, vb) = (gpu.upload("q", &q_all).unwrap(), cache(&kpool), cache(if latent { &kpool } else { &vpool }));
            let (rb, pb) = (gpu.storage("rows", bytemuck::cast_slice(&pt.rows)).unwrap(), gpu.storage("pages", bytemuck::cast_slice(&pt.pages)).unwrap());
            let (scratch, out) = (gpu.output("scores", pt.scores), gpu.output("out", want.len()));
            let mut enc = Recorder::new(&gpu);
            k.record(&mut enc, sh, &Paging { rows: &rb, pages: &pb, n, row0: 0, scores: pt.scores, page }, &qb, &kb, &vb, &scratch, &out).unwrap();
            enc.submit();
            for (i, (a, b)) in gpu.read_f32(&out, want.len()).unwrap().iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{sh:?} {seqs:?} [{i}]: gpu {a} vs cpu {b}");
            }
        }
    }
}
