//! Q8_0 in the interleaved layout: one 512-bit register holds four consecutive quants
//! of each of sixteen rows.
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

use half::f16;

use crate::huge_pages::HugeBuf;
use super::{for_each_group, Line, GROUP_ROWS};
use crate::quant::blocks::{as_blocks, ActQ8_0, BlockQ8_0, QK};
#[cfg(target_arch = "x86_64")]
use crate::quant::Activations;

/// A Q8_0 matrix in the interleaved layout (see the module docs).
pub struct PackedQ8_0 {
    rows: usize,
    blocks: usize,
    /// `(group, block, k)` → line; `groups × blocks × 8`.
    lines: HugeBuf<Line>,
    /// `(group, block)` → the sixteen rows' f16 scales (bits).
    scales: HugeBuf<[u16; GROUP_ROWS]>,
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
        let mut lines = crate::huge_pages::filled_buf(groups * blocks * 8, Line([0x80; 64]));
        let mut scales = crate::huge_pages::filled_buf(groups * blocks, [0u16; GROUP_ROWS]);
        for_each_group(data.len(), lines.chunks_mut(blocks * 8).zip(scales.chunks_mut(blocks)), |g, (lines, scales)| {
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
        });
        PackedQ8_0 { rows, blocks, lines, scales }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.blocks * QK
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

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::*;

    /// Lines (64 bytes each) ahead of the block being multiplied that are asked for in
    /// advance by a tile of `tokens` tokens: 4 KiB (eight blocks of this group, or the next
    /// group's first), 8 KiB from six tokens on. A batched step streaming every expert of a
    /// Mixtral-shaped model from memory took 5-10% less time with 4 KiB than with the
    /// hardware prefetcher alone. The more tokens, the longer each block takes and the
    /// further ahead the reads must start: streaming expert-sized matrices on both cores,
    /// 8 KiB took 6-12% less time than 4 KiB at 4 to 8 tokens (1 and 2: the same within
    /// 1-4%; 12 and 16 KiB no better than 8). In whole steps of the Mixtral-shaped model
    /// (rounds alternated in one process), 64 sequences, whose experts see tiles of
    /// eight, took 4-7% less time; 16 sequences (about four tokens an expert) the same.
    /// (8 KiB for every tile: 64 sequences 6-12% less, 16 sequences 0-3% more.)
    const fn prefetch_lines(tokens: usize) -> usize {
        if tokens >= 6 {
            128
        } else {
            64
        }
    }

    /// Group `g` times `T` tokens: per token, the sixteen rows' results in lane order.
    #[inline(always)]
    unsafe fn group_tokens<const T: usize>(p: &PackedQ8_0, g: usize, a: [&[ActQ8_0]; T], offsets: [&[i32]; T]) -> [__m512; T] {
        let blocks = p.blocks;
        let lines = &p.lines[g * blocks * 8..(g + 1) * blocks * 8];
        let scales = &p.scales[g * blocks..(g + 1) * blocks];
        let mut acc = [_mm512_setzero_ps(); T];
        // wrapping: near the end the address passes the array, which a prefetch may name
        let ahead = p.lines.as_ptr().wrapping_add(g * blocks * 8 + prefetch_lines(T));
        for b in 0..blocks {
            for k in 0..8 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(b * 8 + k) as *const i8);
            }
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

    impl super::super::vnni::GroupTiles for PackedQ8_0 {
        #[inline(always)]
        unsafe fn group_tokens<const T: usize>(&self, g: usize, acts: &Activations, t0: usize) -> [__m512; T] {
            let a: [&[ActQ8_0]; T] = std::array::from_fn(|i| acts.q8_0_row(t0 + i));
            let o: [&[i32]; T] = std::array::from_fn(|i| acts.row_offsets(t0 + i));
            group_tokens::<T>(self, g, a, o)
        }
    }
}
