//! The Q8_0 kernel for batched steps on CPUs with AVX-512 VNNI: a register tile of `R`
//! weight rows × `N` tokens, two blocks per 512-bit register.
//!
//! Why a tile: in a batched step the same weight row meets every token, so a row's
//! blocks are loaded (and their `-128 · Σ w` start values and scales made) once per tile
//! instead of once per token, and a token's activations once for `R` rows. What remains
//! per block pair, row and token is four vector operations (`vpdpbusd`, convert,
//! scale product, fused multiply-add) for 64 multiply-adds.
//!
//! Every result is bit-identical to [`super::dot_avx2::dot_q8_0`]: each i32 lane holds the
//! same integer sum as `mul_sum_i8` (see [`dot_q8_0_vnni_tile`]), the low half of a
//! 512-bit accumulator is that kernel's `acc0` (even blocks) and the high half its `acc1`
//! (odd blocks), each scale is the same `f32` product `d_w · d_a`, and the final
//! reduction adds the halves and then the lanes in the same order. So a token's logits
//! do not depend on which tokens share its step, nor on the CPU's vector extensions.

#![allow(clippy::needless_range_loop)] // index loops mirror the tile's rows and tokens

use std::arch::x86_64::*;

use super::blocks::BlockQ8_0;

#[inline(always)]
unsafe fn f16_to_f32(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(b) as i32)))
}

/// The AVX2 kernel's `hsum(acc0 + acc1)`, with `acc0` the low half of `v`, `acc1` the high.
#[inline(always)]
unsafe fn hsum_halves(v: __m512) -> f32 {
    let v = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `R` weight rows (`w`, each `blocks` Q8_0 blocks) times `N` tokens' activations: per token
/// the quants offset by 128 to unsigned bytes (`u`, what `vpdpbusd` multiplies) and the
/// block scales repeated eight times (`d8`, one 32-byte lane group per block). Returns
/// `out[r][t]`.
///
/// `vpdpbusd` multiplies unsigned by signed bytes, so each block's sum starts from
/// `-128 · Σ w` (made once per block and row for all tokens): `Σ (a + 128) w - 128 Σ w =
/// Σ a w`, lane by lane, as the AVX2 kernel sums them.
///
/// # Safety
/// The CPU must have AVX-512 F/VL/DQ/VNNI and F16C; every row and token must hold the
/// same number of blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq,avx512vnni")]
pub unsafe fn dot_q8_0_vnni_tile<const R: usize, const N: usize>(w: [&[BlockQ8_0]; R], d8: [&[[f32; 8]]; N], u: [&[[u8; 32]]; N]) -> [[f32; N]; R] {
    let blocks = w[0].len();
    assert!(w.iter().all(|r| r.len() == blocks));
    for t in 0..N {
        assert!(u[t].len() == blocks && d8[t].len() == blocks);
    }
    let zero = _mm512_setzero_si512();
    let bias = _mm512_set1_epi8(-128);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    for i in 0..blocks / 2 {
        let j = 2 * i;
        let mut x = [zero; R];
        let mut start = [zero; R];
        let mut dw = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let (b0, b1) = (&w[r][j], &w[r][j + 1]);
            let lo = _mm256_loadu_si256(b0.qs.as_ptr() as *const __m256i);
            let hi = _mm256_loadu_si256(b1.qs.as_ptr() as *const __m256i);
            x[r] = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            start[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, x[r]));
            let d = _mm512_castps256_ps512(_mm256_set1_ps(f16_to_f32(b0.d)));
            dw[r] = _mm512_insertf32x8::<1>(d, _mm256_set1_ps(f16_to_f32(b1.d)));
        }
        for t in 0..N {
            // blocks j and j + 1 sit side by side: one 64-byte load each
            let ut = _mm512_loadu_si512(u[t][j..].as_ptr() as *const __m512i);
            let dt = _mm512_loadu_ps(d8[t][j..].as_ptr() as *const f32);
            for r in 0..R {
                let s = _mm512_dpbusd_epi32(start[r], ut, x[r]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], dt), _mm512_cvtepi32_ps(s), acc[r][t]);
            }
        }
    }
    if blocks % 2 == 1 {
        // the last block goes to the even half, as in the AVX2 kernel
        let j = blocks - 1;
        let z = _mm256_setzero_si256();
        for r in 0..R {
            let x = _mm256_loadu_si256(w[r][j].qs.as_ptr() as *const __m256i);
            let start = _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, _mm256_set1_epi8(-128), x));
            let dw = f16_to_f32(w[r][j].d);
            for t in 0..N {
                let s = _mm256_dpbusd_epi32(start, _mm256_loadu_si256(u[t][j].as_ptr() as *const __m256i), x);
                let lo = _mm256_fmadd_ps(_mm256_set1_ps(dw * d8[t][j][0]), _mm256_cvtepi32_ps(s), _mm512_castps512_ps256(acc[r][t]));
                acc[r][t] = _mm512_insertf32x8::<0>(acc[r][t], lo);
            }
        }
    }
    std::array::from_fn(|r| std::array::from_fn(|t| hsum_halves(acc[r][t])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::as_blocks;
    use crate::quant::tests::random_row;
    use crate::quant::{ActKind, ActRow, Activations, GgmlType};

    #[test]
    fn tile_equals_avx2_kernel_bit_for_bit() {
        if !crate::quant::dot::has_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        // odd and even block counts; random weights include -128
        for cols in [288usize, 1024, 32] {
            let rows: Vec<Vec<u8>> = (0..2).map(|r| random_row(GgmlType::Q8_0, cols, 5 + r)).collect();
            let w: Vec<&[BlockQ8_0]> = rows.iter().map(|r| as_blocks(r).unwrap()).collect();
            let x: Vec<f32> = (0..3 * cols).map(|i| ((i * 17 % 31) as f32 - 15.0) / 9.0).collect();
            let acts = Activations::new(ActKind::Q8_0, &x, cols);
            let a = |t| match acts.row(t) {
                ActRow::Q8_0(a) => a,
                _ => unreachable!(),
            };
            // SAFETY: the CPU features were detected above.
            let got = unsafe { dot_q8_0_vnni_tile::<2, 3>([w[0], w[1]], [0, 1, 2].map(|t| acts.row_scales8(t)), [0, 1, 2].map(|t| acts.row_unsigned(t))) };
            for r in 0..2 {
                for t in 0..3 {
                    let want = unsafe { crate::quant::dot_avx2::dot_q8_0(w[r], a(t)) };
                    assert_eq!(got[r][t].to_bits(), want.to_bits(), "cols {cols} row {r} token {t}");
                }
            }
        }
    }
}
