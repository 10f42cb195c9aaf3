//! Q6_K in the interleaved layout: the low four bits of each quant in lines as Q4_K
//! packs its nibbles, the top two bits in lines of their own, sixteen rows side by side.
//!
//! Why: Q4_K_M files keep the output matrix and part of the down projections in Q6_K,
//! and the output matrix meets every token of a step. In GGUF order each token pays the
//! six-bit decode and horizontal sums again. Here a low line and its share of a high line
//! decode, with a few masks and shifts, into two registers of unsigned quants (`q + 32`,
//! 0..64) — what `vpdpbusd` multiplies — for every token of the tile; the `+ 32` is
//! taken back by starting each sub-block's sum at `-32 · Σ a` (per token), and the signed
//! sub-block scales multiply the sums lane by lane (`vpmulld`). The layout takes the
//! file's bytes exactly (3,360 per sixteen rows and super-block), so a single token,
//! bound by reading, loses nothing.
//!
//! Layout, per group of sixteen rows (the last padded with zero rows) and super-block of
//! 256 values: 32 low lines, line `m` holding in lane `r`, byte `i`, the low four bits of
//! value `8m + i` (low nibble) and of value `8m + 4 + i` (high nibble); 16 high lines,
//! line `h` holding in lane `r`, byte `i`, the top two bits of values `16h + i`,
//! `16h + 4 + i`, `16h + 8 + i` and `16h + 12 + i` (bits 0–1, 2–3, 4–5, 6–7); the sixteen
//! sub-block scales as bytes `[j][lane]`; `d` as f16 per lane.
//!
//! Every row and token gets, super-block by super-block from zero,
//! `acc = fma(f32(Σ_j sc_j Σ q·a), d_w · d_a, acc)` (integer sums exact); that is
//! [`PackedQ6K::dot_row`], and the tests hold the kernel to it bit for bit.

#![allow(clippy::needless_range_loop)] // index loops mirror the lanes and lines of the layout

use half::f16;

use crate::huge_pages::HugeBuf;
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
    /// `(group, super-block, m)` → low line; `groups × supers × 32`.
    low: HugeBuf<Line>,
    /// `(group, super-block, h)` → high line; `groups × supers × 16`.
    high: HugeBuf<Line>,
    /// `(group, super-block)` → sub-block scales, `[j * 16 + lane]`.
    scales: HugeBuf<[i8; 256]>,
    /// `(group, super-block)` → `d` of each lane (f16 bits).
    d: HugeBuf<[u16; GROUP_ROWS]>,
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
        let mut low = crate::huge_pages::filled_buf(groups * supers * 32, Line([0; 64]));
        let mut high = crate::huge_pages::filled_buf(groups * supers * 16, Line([0; 64]));
        let mut scales = crate::huge_pages::filled_buf(groups * supers, [0i8; 256]);
        let mut d = crate::huge_pages::filled_buf(groups * supers, [0u16; GROUP_ROWS]);
        let parts = low.chunks_mut(supers * 32).zip(high.chunks_mut(supers * 16)).zip(scales.chunks_mut(supers).zip(d.chunks_mut(supers)));
        for_each_group(data.len(), parts, |g, ((low, high), (scales, d))| {
            for lane in 0..GROUP_ROWS.min(rows - g * GROUP_ROWS) {
                let r = g * GROUP_ROWS + lane;
                let w: &[BlockQ6_K] = as_blocks(&data[r * row_bytes..(r + 1) * row_bytes]).expect("whole blocks");
                for (s, blk) in w.iter().enumerate() {
                    for j in 0..16 {
                        scales[s][j * 16 + lane] = blk.scales[j];
                    }
                    d[s][lane] = u16::from_le_bytes(blk.d);
                    for v in 0..QK_K {
                        let q = quant(blk, v);
                        let (m, i) = (v / 8, v % 8);
                        low[s * 32 + m].0[lane * 4 + i % 4] |= (q & 0x0F) << (4 * (i / 4));
                        let (h, w) = (v / 16, v % 16);
                        high[s * 16 + h].0[lane * 4 + w % 4] |= (q >> 4) << (2 * (w / 4));
                    }
                }
            }
        });
        PackedQ6K { rows, supers, low, high, scales, d }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.supers * QK_K
    }

    /// Quant `v` of lane `lane` in super-block entry `gs`, plus 32, read back from the
    /// two planes.
    fn value(&self, gs: usize, lane: usize, v: usize) -> u8 {
        let (m, i) = (v / 8, v % 8);
        let lo = (self.low[gs * 32 + m].0[lane * 4 + i % 4] >> (4 * (i / 4))) & 0x0F;
        let (h, w) = (v / 16, v % 16);
        let hi = (self.high[gs * 16 + h].0[lane * 4 + w % 4] >> (2 * (w / 4))) & 0x03;
        lo | (hi << 4)
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
                for v in 16 * j..16 * j + 16 {
                    sub += self.value(gs, lane, v) as i32 * y.qs[v] as i32;
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
        let (nib, top) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
        // (x & 0x0f) | (y & 0x30), byte by byte
        let merge = |x: __m512i, y: __m512i| _mm512_or_si512(_mm512_and_si512(x, nib), _mm512_and_si512(y, top));
        for s in 0..supers {
            let gs = g * supers + s;
            let (low, high) = (&p.low[gs * 32..gs * 32 + 32], &p.high[gs * 16..gs * 16 + 16]);
            let mut isum = [_mm512_setzero_si512(); T];
            for j in 0..16 {
                let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.scales[gs][j * 16..].as_ptr() as *const __m128i));
                let mut sub: [__m512i; T] = std::array::from_fn(|t| _mm512_set1_epi32(offsets[t][s][j]));
                let h = _mm512_load_si512(high[j].0.as_ptr() as *const __m512i);
                for e in 0..2 {
                    let l = _mm512_load_si512(low[2 * j + e].0.as_ptr() as *const __m512i);
                    let l4 = _mm512_srli_epi16::<4>(l);
                    // the two top bits of each value moved to bits 4-5 (fields 0, 1 for the
                    // first low line of the sub-block, 2, 3 for the second)
                    let (ql, qh) = if e == 0 {
                        (merge(l, _mm512_slli_epi16::<4>(h)), merge(l4, _mm512_slli_epi16::<2>(h)))
                    } else {
                        (merge(l, h), merge(l4, _mm512_srli_epi16::<2>(h)))
                    };
                    for t in 0..T {
                        let q = a[t][s].qs.as_ptr().add(16 * j + 8 * e) as *const i32;
                        sub[t] = _mm512_dpbusd_epi32(sub[t], ql, _mm512_set1_epi32(q.read_unaligned()));
                        sub[t] = _mm512_dpbusd_epi32(sub[t], qh, _mm512_set1_epi32(q.add(1).read_unaligned()));
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
        #[inline(always)]
        unsafe fn group_tokens<const T: usize>(&self, g: usize, acts: &Activations, t0: usize) -> [__m512; T] {
            let a: [&[ActQ8_K]; T] = std::array::from_fn(|i| acts.q8_k_row(t0 + i));
            let o: [&[[i32; 16]]; T] = std::array::from_fn(|i| acts.row_q6_offsets(t0 + i));
            group_tokens::<T>(self, g, a, o)
        }
    }
}
