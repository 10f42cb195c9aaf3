//! Q6_K in the interleaved layout: one 512-bit register holds four consecutive quants of
//! each of sixteen rows, each widened to a byte (`q + 32`, 0..64).
//!
//! Why: Q4_K_M files keep the output matrix and part of the down projections in Q6_K,
//! and the output matrix meets every token of a step. In GGUF order each token pays the
//! six-bit decode (two bit fields from two arrays) and horizontal sums again. Here the
//! decode is done once, at load: the line is what `vpdpbusd` multiplies (unsigned), the
//! `+ 32` is taken back by starting each sub-block's sum at `-32 · Σ a` (per token), and
//! the signed sub-block scales multiply the sums lane by lane (`vpmulld`). The price is
//! memory: a byte per weight plus scales, 4,384 bytes per sixteen rows and super-block
//! against 3,360 in the file.
//!
//! Layout, per group of sixteen rows (the last padded with zero rows) and super-block of
//! 256 values: 64 lines, line `m` holding in lane `r` values `4m..4m + 4` of row `r`;
//! the sixteen sub-block scales as bytes `[j][lane]`; `d` as f16 per lane.
//!
//! Every row and token gets, super-block by super-block from zero,
//! `acc = fma(f32(Σ_j sc_j Σ q·a), d_w · d_a, acc)` (integer sums exact); that is
//! [`PackedQ6K::dot_row`], and the tests hold the kernel to it bit for bit.

#![allow(clippy::needless_range_loop)] // index loops mirror the lanes and lines of the layout

use half::f16;

use super::{for_each_group, Line, GROUP_ROWS};
use crate::quant::blocks::{as_blocks, ActQ8_K, BlockQ6_K, QK_K};
#[cfg(target_arch = "x86_64")]
use crate::quant::Activations;

/// Quant `v` (0..256) of a Q6_K block plus 32 (0..64): four low bits from `ql`, two high
/// bits from `qh`, as llama.cpp lays them out.
#[inline(always)]
fn quant(b: &BlockQ6_K, v: usize) -> u8 {
    let (half, r) = (v / 128, v % 128);
    let low = (b.ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
    let high = (b.qh[half * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
    low | (high << 4)
}

/// A Q6_K matrix in the interleaved layout (see the module docs).
pub struct PackedQ6K {
    rows: usize,
    supers: usize,
    /// `(group, super-block, m)` → line; `groups × supers × 64`.
    lines: Vec<Line>,
    /// `(group, super-block)` → sub-block scales, `[j * 16 + lane]`.
    scales: Vec<[i8; 256]>,
    /// `(group, super-block)` → `d` of each lane (f16 bits).
    d: Vec<[u16; GROUP_ROWS]>,
}

impl PackedQ6K {
    /// Repacks `rows` rows of `cols` Q6_K values (GGUF layout).
    pub fn pack(data: &[u8], rows: usize, cols: usize) -> PackedQ6K {
        assert!(cols.is_multiple_of(QK_K), "Q6_K rows of {cols} values");
        let supers = cols / QK_K;
        let row_bytes = supers * std::mem::size_of::<BlockQ6_K>();
        assert_eq!(data.len(), rows * row_bytes, "Q6_K data of the wrong size");
        let groups = rows.div_ceil(GROUP_ROWS);
        // padding rows: scales and d zero, so whatever their quants they add nothing
        let mut lines = vec![Line([0; 64]); groups * supers * 64];
        let mut scales = vec![[0i8; 256]; groups * supers];
        let mut d = vec![[0u16; GROUP_ROWS]; groups * supers];
        let parts = lines.chunks_mut(supers * 64).zip(scales.chunks_mut(supers)).zip(d.chunks_mut(supers));
        for_each_group(data.len(), parts, |g, ((lines, scales), d)| {
            for lane in 0..GROUP_ROWS.min(rows - g * GROUP_ROWS) {
                let r = g * GROUP_ROWS + lane;
                let w: &[BlockQ6_K] = as_blocks(&data[r * row_bytes..(r + 1) * row_bytes]).expect("whole blocks");
                for (s, blk) in w.iter().enumerate() {
                    for j in 0..16 {
                        scales[s][j * 16 + lane] = blk.scales[j];
                    }
                    d[s][lane] = u16::from_le_bytes(blk.d);
                    for line in 0..64 {
                        for i in 0..4 {
                            lines[s * 64 + line].0[lane * 4 + i] = quant(blk, 4 * line + i);
                        }
                    }
                }
            }
        });
        PackedQ6K { rows, supers, lines, scales, d }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.supers * QK_K
    }

    /// Row `r` times one token's activations, by the reference order (scalar code).
    pub fn dot_row(&self, r: usize, a: &[ActQ8_K]) -> f32 {
        assert!(r < self.rows && a.len() == self.supers);
        let (g, lane) = (r / GROUP_ROWS, r % GROUP_ROWS);
        let mut acc = 0.0f32;
        for (s, y) in a.iter().enumerate() {
            let gs = g * self.supers + s;
            let mut isum = 0i32;
            for j in 0..16 {
                let mut sub = -32 * y.bsums[j] as i32;
                for line in 4 * j..4 * j + 4 {
                    let bytes = &self.lines[gs * 64 + line].0[lane * 4..lane * 4 + 4];
                    for i in 0..4 {
                        sub += bytes[i] as i32 * y.qs[4 * line + i] as i32;
                    }
                }
                isum += self.scales[gs][j * 16 + lane] as i32 * sub;
            }
            let dw = f16::from_bits(self.d[gs][lane]).to_f32();
            acc = (isum as f32).mul_add(dw * y.d, acc);
        }
        acc
    }
}

impl std::fmt::Debug for PackedQ6K {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ6K({}x{})", self.rows, self.supers * QK_K)
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::*;

    /// Group `g` times `T` tokens (`a`: their Q8_K blocks; `offsets`: `-32 ·` their sums
    /// per sixteen quants, sixteen per super-block).
    #[inline(always)]
    unsafe fn group_tokens<const T: usize>(p: &PackedQ6K, g: usize, a: [&[ActQ8_K]; T], offsets: [&[[i32; 16]]; T]) -> [__m512; T] {
        let supers = p.supers;
        let mut acc = [_mm512_setzero_ps(); T];
        for s in 0..supers {
            let gs = g * supers + s;
            let lines = &p.lines[gs * 64..gs * 64 + 64];
            let mut isum = [_mm512_setzero_si512(); T];
            for j in 0..16 {
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.scales[gs][j * 16..].as_ptr() as *const __m128i));
                let mut sub: [__m512i; T] = std::array::from_fn(|t| _mm512_set1_epi32(offsets[t][s][j]));
                for line in 4 * j..4 * j + 4 {
                    let w = _mm512_load_si512(lines[line].0.as_ptr() as *const __m512i);
                    for t in 0..T {
                        let q = (a[t][s].qs.as_ptr().add(4 * line) as *const i32).read_unaligned();
                        sub[t] = _mm512_dpbusd_epi32(sub[t], w, _mm512_set1_epi32(q));
                    }
                }
                for t in 0..T {
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(sub[t], sc));
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p.d[gs].as_ptr() as *const __m256i));
            for t in 0..T {
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dw, _mm512_set1_ps(a[t][s].d)), acc[t]);
            }
        }
        acc
    }

    impl super::super::vnni::GroupTiles for PackedQ6K {
        const MAX_TOKENS: usize = 8;

        #[inline(always)]
        unsafe fn group_tokens<const T: usize>(&self, g: usize, acts: &Activations, t0: usize) -> [__m512; T] {
            let a: [&[ActQ8_K]; T] = std::array::from_fn(|i| acts.q8_k_row(t0 + i));
            let o: [&[[i32; 16]]; T] = std::array::from_fn(|i| acts.row_q6_offsets(t0 + i));
            group_tokens::<T>(self, g, a, o)
        }
    }
}
