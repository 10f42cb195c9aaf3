//! Q8_0 weights repacked for the AVX-512 VNNI kernel: sixteen rows interleaved so that
//! one 512-bit register holds four consecutive quants of each of sixteen rows.
//!
//! Why: in GGUF order a row's block is 32 consecutive bytes, so a vector dot product ends
//! in a horizontal sum per row, block and token. Interleaved, lane `r` of every
//! `vpdpbusd` belongs to row `r`: one token's four quants (broadcast) meet sixteen rows'
//! four quants and the sixteen sums stay in their lanes, so a block costs eight
//! `vpdpbusd`, one convert and one fused multiply-add per sixteen rows and token, with
//! no reduction, whether a step has one token or sixty-four.
//!
//! Layout, per group of sixteen rows (the last group padded with zero rows) and block of
//! 32 columns: eight 64-byte lines, line `k` holding bytes `4k..4k + 4` of each row's
//! quants in lane order, stored as `q + 128` (unsigned, the operand `vpdpbusd` wants
//! unsigned); then the sixteen f16 scales in a separate array. The `+ 128` is taken back
//! with each activation block's `-128 · Σ a`, made once per token ([`Activations`]).
//!
//! Every row and token gets `acc = fma(f32(Σ w·a), d_w · d_a, acc)` block by block from
//! zero — the same operations in the same order whatever the batch, so a token's
//! result never depends on the tokens that share its step. [`PackedQ8_0::dot_row`] is
//! the scalar statement of that order and the tests hold the kernel to it bit for bit.

#![allow(clippy::needless_range_loop)] // index loops mirror the lanes and lines of the layout

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use super::activations::Activations;
use super::blocks::{as_blocks, ActQ8_0, BlockQ8_0, QK};
use super::out_grid::OutGrid;

/// Rows interleaved in one group: one per 32-bit lane of a 512-bit register.
pub const GROUP_ROWS: usize = 16;

/// Four quants of each of sixteen rows, aligned for full-width loads.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);
const _: () = assert!(std::mem::size_of::<Line>() == 64 && std::mem::align_of::<Line>() == 64);

/// A Q8_0 matrix in the interleaved layout (see the module docs).
pub struct PackedQ8_0 {
    rows: usize,
    blocks: usize,
    /// `(group, block, k)` → line; `groups × blocks × 8`.
    lines: Vec<Line>,
    /// `(group, block)` → the sixteen rows' f16 scales (bits).
    scales: Vec<[u16; GROUP_ROWS]>,
}

impl PackedQ8_0 {
    /// Repacks `rows` rows of `cols` Q8_0 values (GGUF layout, `rows × cols / 32` blocks).
    pub fn pack(data: &[u8], rows: usize, cols: usize) -> PackedQ8_0 {
        assert!(cols.is_multiple_of(QK), "Q8_0 rows of {cols} values");
        let blocks = cols / QK;
        let row_bytes = blocks * std::mem::size_of::<BlockQ8_0>();
        assert_eq!(data.len(), rows * row_bytes, "Q8_0 data of the wrong size");
        let groups = rows.div_ceil(GROUP_ROWS);
        // padding rows: quants 0 (stored 0x80) and scale 0
        let mut lines = vec![Line([0x80; 64]); groups * blocks * 8];
        let mut scales = vec![[0u16; GROUP_ROWS]; groups * blocks];
        let pack_group = |(g, (lines, scales)): (usize, (&mut [Line], &mut [[u16; GROUP_ROWS]]))| {
            for lane in 0..GROUP_ROWS.min(rows - g * GROUP_ROWS) {
                let r = g * GROUP_ROWS + lane;
                let w: &[BlockQ8_0] = as_blocks(&data[r * row_bytes..(r + 1) * row_bytes]).expect("whole blocks");
                for (b, blk) in w.iter().enumerate() {
                    scales[b][lane] = u16::from_le_bytes(blk.d);
                    for k in 0..8 {
                        for i in 0..4 {
                            lines[b * 8 + k].0[lane * 4 + i] = (blk.qs[4 * k + i] as u8) ^ 0x80;
                        }
                    }
                }
            }
        };
        let work = lines.chunks_mut(blocks * 8).zip(scales.chunks_mut(blocks)).enumerate();
        if data.len() >= 1 << 20 {
            work.par_bridge().for_each(pack_group);
        } else {
            work.for_each(pack_group);
        }
        PackedQ8_0 { rows, blocks, lines, scales }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of groups of [`GROUP_ROWS`] rows (the last one may be partly padding).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP_ROWS)
    }

    /// Row `r` times one token's activations, by the reference order (scalar code).
    pub fn dot_row(&self, r: usize, a: &[ActQ8_0]) -> f32 {
        assert!(r < self.rows && a.len() == self.blocks);
        let (g, lane) = (r / GROUP_ROWS, r % GROUP_ROWS);
        let mut acc = 0.0f32;
        for (b, y) in a.iter().enumerate() {
            let mut s = -128 * y.qs.iter().map(|&q| q as i32).sum::<i32>();
            for k in 0..8 {
                let line = &self.lines[(g * self.blocks + b) * 8 + k].0;
                for i in 0..4 {
                    s += line[lane * 4 + i] as i32 * y.qs[4 * k + i] as i32;
                }
            }
            let dw = f16::from_bits(self.scales[g * self.blocks + b][lane]).to_f32();
            acc = (s as f32).mul_add(dw * y.d, acc);
        }
        acc
    }
}

impl std::fmt::Debug for PackedQ8_0 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8_0({}x{})", self.rows, self.blocks * QK)
    }
}

/// A run of whole groups of a [`PackedQ8_0`]: what a matrix that is a row slice of a
/// packed one (an expert of a stacked tensor) holds, without copying.
#[derive(Clone, Debug)]
pub struct PackedRows {
    packed: Arc<PackedQ8_0>,
    first_group: usize,
}

impl PackedRows {
    /// All rows of `packed`.
    pub fn new(packed: Arc<PackedQ8_0>) -> PackedRows {
        PackedRows { packed, first_group: 0 }
    }

    /// Rows `r0..r1` (relative to this view), if they fall on group boundaries (`r1` may
    /// also be the last row of the underlying matrix).
    pub fn slice(&self, r0: usize, r1: usize) -> Option<PackedRows> {
        let start = self.first_group * GROUP_ROWS;
        let end_ok = r1.is_multiple_of(GROUP_ROWS) || start + r1 == self.packed.rows;
        (r0.is_multiple_of(GROUP_ROWS) && end_ok && start + r1 <= self.packed.rows)
            .then(|| PackedRows { packed: self.packed.clone(), first_group: self.first_group + r0 / GROUP_ROWS })
    }

    /// Row `r` (relative to this view) times one token, by the reference order.
    pub fn dot_row(&self, r: usize, a: &[ActQ8_0]) -> f32 {
        self.packed.dot_row(self.first_group * GROUP_ROWS + r, a)
    }
}

/// Whether this CPU runs the packed kernel (AVX-512 VNNI; `ODMOE_NO_VNNI=1` says no):
/// matrices are packed only where it does.
pub fn packing_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::dot::has_vnni();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The rows `r0..r0 + out.rows()` of `w` (relative to the view; `r0` a multiple of
/// [`GROUP_ROWS`]) times every token of `acts` (Q8_0 activations), into `out`.
/// Only where [`super::dot::has_vnni`] holds: the caller packs matrices only there.
pub fn dot_packed_into(w: &PackedRows, r0: usize, acts: &Activations, out: &mut OutGrid) {
    assert!(r0.is_multiple_of(GROUP_ROWS), "packed rows start on a group");
    assert!(w.first_group * GROUP_ROWS + r0 + out.rows() <= w.packed.rows, "rows outside the matrix");
    assert_eq!(acts.k(), w.packed.blocks * QK, "activations of the wrong width");
    #[cfg(target_arch = "x86_64")]
    {
        assert!(super::dot::has_vnni(), "packed Q8_0 needs AVX-512 VNNI");
        // SAFETY: the CPU features were checked just above.
        unsafe { vnni::dot_groups(&w.packed, w.first_group + r0 / GROUP_ROWS, acts, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (acts, out);
        unreachable!("packed Q8_0 needs AVX-512 VNNI");
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::*;

    /// Tokens whose sums one pass over a group keeps in registers.
    const MAX_TOKENS: usize = 8;

    /// Group `g` times `T` tokens: per token, the sixteen rows' results in lane order.
    #[inline(always)]
    unsafe fn group_tokens<const T: usize>(p: &PackedQ8_0, g: usize, a: [&[ActQ8_0]; T], offsets: [&[i32]; T]) -> [__m512; T] {
        let blocks = p.blocks;
        let lines = &p.lines[g * blocks * 8..(g + 1) * blocks * 8];
        let scales = &p.scales[g * blocks..(g + 1) * blocks];
        let mut acc = [_mm512_setzero_ps(); T];
        for b in 0..blocks {
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(scales[b].as_ptr() as *const __m256i));
            let mut s: [__m512i; T] = std::array::from_fn(|t| _mm512_set1_epi32(offsets[t][b]));
            for k in 0..8 {
                let w = _mm512_load_si512(lines[b * 8 + k].0.as_ptr() as *const __m512i);
                for t in 0..T {
                    let q = (a[t][b].qs.as_ptr() as *const i32).add(k).read_unaligned();
                    s[t] = _mm512_dpbusd_epi32(s[t], w, _mm512_set1_epi32(q));
                }
            }
            for t in 0..T {
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(a[t][b].d));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), d, acc[t]);
            }
        }
        acc
    }

    #[inline(always)]
    unsafe fn tile<const T: usize>(p: &PackedQ8_0, g: usize, acts: &Activations, t0: usize, out: &mut OutGrid, r: usize, live: usize) {
        let a: [&[ActQ8_0]; T] = std::array::from_fn(|i| acts.q8_0_row(t0 + i));
        let o: [&[i32]; T] = std::array::from_fn(|i| acts.row_offsets(t0 + i));
        let y = group_tokens::<T>(p, g, a, o);
        let mask: __mmask16 = if live == GROUP_ROWS { !0 } else { (1 << live) - 1 };
        for (i, y) in y.iter().enumerate() {
            match out.run_mut(r, t0 + i, live) {
                Some(run) => _mm512_mask_storeu_ps(run.as_mut_ptr(), mask, *y),
                None => {
                    let mut v = [0.0f32; GROUP_ROWS];
                    _mm512_storeu_ps(v.as_mut_ptr(), *y);
                    for (j, &x) in v[..live].iter().enumerate() {
                        out.set(r + j, t0 + i, x);
                    }
                }
            }
        }
    }

    /// Groups `first..` of `p` (as many as `out` has rows) times every token.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn dot_groups(p: &PackedQ8_0, first: usize, acts: &Activations, out: &mut OutGrid) {
        let n = acts.n_rows();
        let mut r = 0;
        while r < out.rows() {
            let g = first + r / GROUP_ROWS;
            let live = GROUP_ROWS.min(out.rows() - r);
            let mut t = 0;
            while t + MAX_TOKENS <= n {
                tile::<MAX_TOKENS>(p, g, acts, t, out, r, live);
                t += MAX_TOKENS;
            }
            if n - t >= 4 {
                tile::<4>(p, g, acts, t, out, r, live);
                t += 4;
            }
            if n - t >= 2 {
                tile::<2>(p, g, acts, t, out, r, live);
                t += 2;
            }
            if n - t == 1 {
                tile::<1>(p, g, acts, t, out, r, live);
            }
            r += GROUP_ROWS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::random_row;
    use crate::quant::{ActKind, ActRow, GgmlType};

    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        (0..rows).flat_map(|r| random_row(GgmlType::Q8_0, cols, seed + r as u64)).collect()
    }

    #[test]
    fn reference_order_matches_the_gguf_dot_product() {
        let (rows, cols) = (21, 96);
        let data = matrix(rows, cols, 3);
        let p = PackedQ8_0::pack(&data, rows, cols);
        let x: Vec<f32> = (0..cols).map(|i| ((i * 29 % 37) as f32 - 18.0) / 7.0).collect();
        let acts = Activations::new(ActKind::Q8_0, &x, cols);
        let ActRow::Q8_0(a) = acts.row(0) else { unreachable!() };
        let rb = data.len() / rows;
        for r in 0..rows {
            let want = crate::quant::dot(GgmlType::Q8_0, &data[r * rb..(r + 1) * rb], acts.row(0));
            let got = p.dot_row(r, a);
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "row {r}: {got} vs {want}");
        }
    }

    #[test]
    fn kernel_equals_reference_bit_for_bit_at_every_batch_size() {
        if !crate::quant::dot::has_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        // rows not a multiple of 16, an odd number of blocks; token counts cover every tile
        let (rows, cols) = (37, 160);
        let data = matrix(rows, cols, 11);
        let packed = PackedRows::new(Arc::new(PackedQ8_0::pack(&data, rows, cols)));
        for n in [1usize, 2, 3, 5, 8, 15, 16] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 17 % 31) as f32 - 15.0) / 9.0).collect();
            let acts = Activations::new(ActKind::Q8_0, &x, cols);
            // a window that starts on the second group, as a thread's share does
            let mut y = vec![0.0f32; rows * n];
            let mut windows = OutGrid::token_major_chunks(&mut y, rows, n, 16);
            for (i, w) in windows.iter_mut().enumerate() {
                dot_packed_into(&packed, i * 16, &acts, w);
            }
            drop(windows);
            for t in 0..n {
                let ActRow::Q8_0(a) = acts.row(t) else { unreachable!() };
                for r in 0..rows {
                    assert_eq!(y[t * rows + r].to_bits(), packed.dot_row(r, a).to_bits(), "n {n} token {t} row {r}");
                }
            }
        }
    }

    #[test]
    fn views_slice_on_group_boundaries_only() {
        let (rows, cols) = (40, 32);
        let p = PackedRows::new(Arc::new(PackedQ8_0::pack(&matrix(rows, cols, 1), rows, cols)));
        assert!(p.slice(0, 16).is_some() && p.slice(16, 40).is_some() && p.slice(32, 40).is_some());
        assert!(p.slice(8, 16).is_none() && p.slice(0, 20).is_none());
        let tail = p.slice(16, 40).unwrap();
        let x = vec![0.5f32; cols];
        let acts = Activations::new(ActKind::Q8_0, &x, cols);
        let ActRow::Q8_0(a) = acts.row(0) else { unreachable!() };
        assert_eq!(tail.dot_row(3, a).to_bits(), p.dot_row(19, a).to_bits());
    }
}
