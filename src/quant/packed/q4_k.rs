//! Q4_K and Q5_K in the interleaved layout: one 512-bit register holds eight consecutive
//! 4-bit quants of each of sixteen rows (two `vpdpbusd` operands once split into nibbles);
//! Q5_K's fifth bits sit in lines of their own, one per sub-block, merged into the nibbles
//! with a shift and a mask.
//!
//! Why: in GGUF order a Q4_K row's super-block is decoded (nibbles, six-bit scales and
//! mins) for every token that meets it and its sums end in horizontal reductions.
//! Interleaved, a 64-byte line split into low and high nibbles gives two registers of
//! unsigned quants — exactly what `vpdpbusd` multiplies with the token's signed 8-bit
//! activations, no offset needed — the sub-block sums stay in their lanes, the scales
//! multiply them lane by lane (`vpmulld`), and the mins meet the activation sums in four
//! `vpdpwssd`. Decoding a line serves every token of the tile.
//!
//! Layout, per group of sixteen rows (the last padded with zero rows) and super-block of
//! 256 values: 32 lines, line `m` holding in lane `r`, byte `i`, value `8m + i` of row
//! `r` in the low nibble and value `8m + 4 + i` in the high nibble; the sub-block scales
//! as bytes `[j][lane]`; the mins as byte pairs `[pair][lane][2]` (sub-blocks `2·pair`
//! and `2·pair + 1`, what `vpdpwssd` multiplies once widened to 16 bits); `d` and `dmin`
//! as f16 per lane. Q5_K adds 8 high lines, line `j` holding in lane `r`, byte `i`, bit
//! `2k + e`, the fifth bit of value `32j + 8k + 4e + i` (so low line `4j + k` finds its
//! low nibbles' fifth bits at bit `2k`, its high nibbles' at `2k + 1`): the file's 32
//! bytes of `qh` per row, rearranged.
//!
//! Every row and token gets, super-block by super-block from zero,
//! `acc = fma(f32(Σ_j sc_j Σ q·a), d_w · d_a, acc)` then
//! `acc = fma(-f32(Σ_j m_j Σ a), dmin_w · d_a, acc)` (integer sums exact); that is
//! [`PackedQ4K::dot_row`], and the tests hold the kernel to it bit for bit.

#![allow(clippy::needless_range_loop)] // index loops mirror the lanes and lines of the layout

use half::f16;

use crate::huge_pages::HugeBuf;
use super::{for_each_group, Line, GROUP_ROWS};
use crate::quant::blocks::{as_blocks, ActQ8_K, BlockQ4_K, BlockQ5_K, QK_K};
use crate::quant::dequant::k4_scales_mins;
#[cfg(target_arch = "x86_64")]
use crate::quant::Activations;

/// Quant `v` (0..256) of a Q4_K block (or the low four bits of a Q5_K one): chunk
/// `v / 64` of 32 bytes, low nibbles for its first 32 values, high nibbles for the next 32.
#[inline(always)]
fn nibble(qs: &[u8; 128], v: usize) -> u8 {
    let (chunk, l) = (v / 64, v % 64);
    let byte = qs[chunk * 32 + l % 32];
    if l < 32 {
        byte & 0x0F
    } else {
        byte >> 4
    }
}

/// One super-block of one row, as the packing reads it from either format.
struct SuperBlock<'a> {
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &'a [u8; 12],
    qs: &'a [u8; 128],
    /// Q5_K's fifth bits (bit `j` of byte `l`: value `32j + l`).
    qh: Option<&'a [u8; 32]>,
}

/// A Q4_K or Q5_K matrix in the interleaved layout (see the module docs).
pub struct PackedQ4K {
    rows: usize,
    supers: usize,
    /// `(group, super-block, m)` → line; `groups × supers × 32`.
    lines: HugeBuf<Line>,
    /// `(group, super-block)` → sub-block scales, `[j * 16 + lane]`.
    scales: HugeBuf<[u8; 128]>,
    /// `(group, super-block)` → sub-block mins, `[pair * 32 + lane * 2 + (j % 2)]`.
    mins: HugeBuf<[u8; 128]>,
    /// `(group, super-block)` → `d` of each lane (f16 bits).
    d: HugeBuf<[u16; GROUP_ROWS]>,
    /// `(group, super-block)` → `dmin` of each lane (f16 bits).
    dmin: HugeBuf<[u16; GROUP_ROWS]>,
    /// Q5_K: `(group, super-block, sub-block)` → high line; `groups × supers × 8`. Empty
    /// for Q4_K.
    high: HugeBuf<Line>,
}

impl PackedQ4K {
    /// Repacks `rows` rows of `cols` Q4_K values (GGUF layout).
    pub fn pack(data: &[u8], rows: usize, cols: usize) -> PackedQ4K {
        assert!(cols.is_multiple_of(QK_K), "Q4_K rows of {cols} values");
        let row_bytes = cols / QK_K * std::mem::size_of::<BlockQ4_K>();
        assert_eq!(data.len(), rows * row_bytes, "Q4_K data of the wrong size");
        Self::pack_rows(data.len(), rows, cols, false, |r| {
            let w: &[BlockQ4_K] = as_blocks(&data[r * row_bytes..(r + 1) * row_bytes]).expect("whole blocks");
            w.iter().map(|b| SuperBlock { d: b.d, dmin: b.dmin, scales: &b.scales, qs: &b.qs, qh: None }).collect()
        })
    }

    /// Repacks `rows` rows of `cols` Q5_K values (GGUF layout).
    pub fn pack_q5(data: &[u8], rows: usize, cols: usize) -> PackedQ4K {
        assert!(cols.is_multiple_of(QK_K), "Q5_K rows of {cols} values");
        let row_bytes = cols / QK_K * std::mem::size_of::<BlockQ5_K>();
        assert_eq!(data.len(), rows * row_bytes, "Q5_K data of the wrong size");
        Self::pack_rows(data.len(), rows, cols, true, |r| {
            let w: &[BlockQ5_K] = as_blocks(&data[r * row_bytes..(r + 1) * row_bytes]).expect("whole blocks");
            w.iter().map(|b| SuperBlock { d: b.d, dmin: b.dmin, scales: &b.scales, qs: &b.qs, qh: Some(&b.qh) }).collect()
        })
    }

    /// The packing of both formats: `row(r)` gives row `r`'s super-blocks.
    fn pack_rows<'a>(bytes: usize, rows: usize, cols: usize, five_bits: bool, row: impl Fn(usize) -> Vec<SuperBlock<'a>> + Sync + Send) -> PackedQ4K {
        let supers = cols / QK_K;
        let groups = rows.div_ceil(GROUP_ROWS);
        // padding rows: zero quants, scales, mins and d
        let mut lines = crate::huge_pages::filled_buf(groups * supers * 32, Line([0; 64]));
        let mut scales = crate::huge_pages::filled_buf(groups * supers, [0u8; 128]);
        let mut mins = crate::huge_pages::filled_buf(groups * supers, [0u8; 128]);
        let mut d = crate::huge_pages::filled_buf(groups * supers, [0u16; GROUP_ROWS]);
        let mut dmin = crate::huge_pages::filled_buf(groups * supers, [0u16; GROUP_ROWS]);
        let mut high = crate::huge_pages::filled_buf(if five_bits { groups * supers * 8 } else { 0 }, Line([0; 64]));
        let high_per_group = if five_bits { supers * 8 } else { 0 };
        let mut high_parts: Vec<&mut [Line]> = if five_bits { high.chunks_mut(high_per_group).collect() } else { (0..groups).map(|_| &mut [][..]).collect() };
        let parts = lines.chunks_mut(supers * 32).zip(scales.chunks_mut(supers)).zip(mins.chunks_mut(supers)).zip(d.chunks_mut(supers).zip(dmin.chunks_mut(supers))).zip(high_parts.iter_mut());
        for_each_group(bytes, parts, |g, ((((lines, scales), mins), (d, dmin)), high)| {
            for lane in 0..GROUP_ROWS.min(rows - g * GROUP_ROWS) {
                for (s, blk) in row(g * GROUP_ROWS + lane).iter().enumerate() {
                    let (sc, m) = k4_scales_mins(blk.scales);
                    for j in 0..8 {
                        scales[s][j * 16 + lane] = sc[j];
                        mins[s][(j / 2) * 32 + lane * 2 + j % 2] = m[j];
                    }
                    d[s][lane] = u16::from_le_bytes(blk.d);
                    dmin[s][lane] = u16::from_le_bytes(blk.dmin);
                    for line in 0..32 {
                        for i in 0..4 {
                            lines[s * 32 + line].0[lane * 4 + i] = nibble(blk.qs, 8 * line + i) | (nibble(blk.qs, 8 * line + 4 + i) << 4);
                        }
                    }
                    if let Some(qh) = blk.qh {
                        for v in 0..QK_K {
                            let (j, o) = (v / 32, v % 32);
                            let (k, e, i) = (o / 8, (o % 8) / 4, o % 4);
                            let bit = (qh[v % 32] >> (v / 32)) & 1;
                            high[s * 8 + j].0[lane * 4 + i] |= bit << (2 * k + e);
                        }
                    }
                }
            }
        });
        drop(high_parts);
        PackedQ4K { rows, supers, lines, scales, mins, d, dmin, high }
    }

    /// Whether these are Q5_K rows (fifth bits in high lines).
    fn five_bits(&self) -> bool {
        !self.high.is_empty()
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
            let (mut isum, mut mins) = (0i32, 0i32);
            for j in 0..8 {
                let mut sub = 0i32;
                for line in 4 * j..4 * j + 4 {
                    let bytes = &self.lines[gs * 32 + line].0[lane * 4..lane * 4 + 4];
                    for i in 0..4 {
                        // Q5_K's fifth bits: bit 2k (low nibble) and 2k + 1 (high nibble)
                        let (lo5, hi5) = match self.five_bits() {
                            true => {
                                let h = self.high[gs * 8 + j].0[lane * 4 + i] >> (2 * (line % 4));
                                ((h & 1) << 4, ((h >> 1) & 1) << 4)
                            }
                            false => (0, 0),
                        };
                        sub += ((bytes[i] & 0x0F) | lo5) as i32 * y.qs[8 * line + i] as i32;
                        sub += ((bytes[i] >> 4) | hi5) as i32 * y.qs[8 * line + 4 + i] as i32;
                    }
                }
                isum += self.scales[gs][j * 16 + lane] as i32 * sub;
                let sums = y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32;
                mins += self.mins[gs][(j / 2) * 32 + lane * 2 + j % 2] as i32 * sums;
            }
            let dw = f16::from_bits(self.d[gs][lane]).to_f32();
            let dmw = f16::from_bits(self.dmin[gs][lane]).to_f32();
            acc = (isum as f32).mul_add(dw * y.d, acc);
            acc = (-(mins as f32)).mul_add(dmw * y.d, acc);
        }
        acc
    }
}

impl std::fmt::Debug for PackedQ4K {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ4K({}x{}{})", self.rows, self.supers * QK_K, if self.five_bits() { ", Q5_K" } else { "" })
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::*;

    /// Group `g` times `T` tokens (`a`: their Q8_K blocks; `pairs`: their sub-block sums
    /// as 16-bit pairs, four per super-block).
    #[inline(always)]
    unsafe fn group_tokens<const T: usize, const FIVE: bool>(p: &PackedQ4K, g: usize, a: [&[ActQ8_K]; T], pairs: [&[[i32; 4]]; T]) -> [__m512; T] {
        let supers = p.supers;
        let (low, fifth) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
        let mut acc = [_mm512_setzero_ps(); T];
        for s in 0..supers {
            let gs = g * supers + s;
            let lines = &p.lines[gs * 32..gs * 32 + 32];
            let mut isum = [_mm512_setzero_si512(); T];
            for j in 0..8 {
                let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.scales[gs][j * 16..].as_ptr() as *const __m128i));
                let mut sub = [_mm512_setzero_si512(); T];
                let h = if FIVE { _mm512_load_si512(p.high[gs * 8 + j].0.as_ptr() as *const __m512i) } else { _mm512_setzero_si512() };
                for line in 4 * j..4 * j + 4 {
                    let w = _mm512_load_si512(lines[line].0.as_ptr() as *const __m512i);
                    let mut lo = _mm512_and_si512(w, low);
                    let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), low);
                    if FIVE {
                        // bits 2k and 2k + 1 of the high line to bit 4 (shifts stay within bytes)
                        let (l5, h5) = match line % 4 {
                            0 => (_mm512_slli_epi16::<4>(h), _mm512_slli_epi16::<3>(h)),
                            1 => (_mm512_slli_epi16::<2>(h), _mm512_slli_epi16::<1>(h)),
                            2 => (h, _mm512_srli_epi16::<1>(h)),
                            _ => (_mm512_srli_epi16::<2>(h), _mm512_srli_epi16::<3>(h)),
                        };
                        lo = _mm512_or_si512(lo, _mm512_and_si512(l5, fifth));
                        hi = _mm512_or_si512(hi, _mm512_and_si512(h5, fifth));
                    }
                    for t in 0..T {
                        let q = a[t][s].qs.as_ptr().add(8 * line) as *const i32;
                        sub[t] = _mm512_dpbusd_epi32(sub[t], lo, _mm512_set1_epi32(q.read_unaligned()));
                        sub[t] = _mm512_dpbusd_epi32(sub[t], hi, _mm512_set1_epi32(q.add(1).read_unaligned()));
                    }
                }
                for t in 0..T {
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(sub[t], sc));
                }
            }
            let mut mins = [_mm512_setzero_si512(); T];
            for pair in 0..4 {
                let m = _mm512_cvtepu8_epi16(_mm256_loadu_si256(p.mins[gs][pair * 32..].as_ptr() as *const __m256i));
                for t in 0..T {
                    mins[t] = _mm512_dpwssd_epi32(mins[t], m, _mm512_set1_epi32(pairs[t][s][pair]));
                }
            }
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p.d[gs].as_ptr() as *const __m256i));
            let dmw = _mm512_cvtph_ps(_mm256_loadu_si256(p.dmin[gs].as_ptr() as *const __m256i));
            for t in 0..T {
                let da = _mm512_set1_ps(a[t][s].d);
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dw, da), acc[t]);
                acc[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins[t]), _mm512_mul_ps(dmw, da), acc[t]);
            }
        }
        acc
    }

    impl super::super::vnni::GroupTiles for PackedQ4K {
        #[inline(always)]
        unsafe fn group_tokens<const T: usize>(&self, g: usize, acts: &Activations, t0: usize) -> [__m512; T] {
            let a: [&[ActQ8_K]; T] = std::array::from_fn(|i| acts.q8_k_row(t0 + i));
            let pairs: [&[[i32; 4]]; T] = std::array::from_fn(|i| acts.row_sum_pairs(t0 + i));
            if self.five_bits() {
                group_tokens::<T, true>(self, g, a, pairs)
            } else {
                group_tokens::<T, false>(self, g, a, pairs)
            }
        }
    }
}
