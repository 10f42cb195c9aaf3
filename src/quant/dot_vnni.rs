//! The Q8_0 kernel in the file's layout for CPUs with AVX-512 VNNI: what
//! [`super::dot_avx2::dot_q8_0_rows`] computes, with each block's partial sums made by
//! one `vpdpbusd` instead of four instructions. Routed experts that are paged (read into
//! buffers in the file's layout, never packed) take it in batched steps.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the activations come offset by 128
//! (`u`, kept beside them in [`super::Activations`]) and each block's sum starts from
//! `-128 · Σ w` (made once per block and row for all tokens): `Σ (a + 128) w - 128 Σ w =
//! Σ a w`. The integer sums are exact and scaled and added as the AVX2 kernel does, so
//! the results are its bits (and the portable kernel's).

#![allow(clippy::needless_range_loop)] // index loops mirror the eight rows

use std::arch::x86_64::*;

use super::blocks::{ActQ8_0, BlockQ8_0};
use super::dot_avx2::lane_sums8;

/// Eight Q8_0 rows times `T` tokens (`a`, with `u` their quants plus 128): `out[t][r]`.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-512 F/VL/VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub unsafe fn dot_q8_0_rows_vnni<const T: usize>(w: [&[BlockQ8_0]; 8], a: [&[ActQ8_0]; T], u: [&[[u8; 32]]; T]) -> [[f32; 8]; T] {
    let blocks = w[0].len();
    assert!(w.iter().all(|r| r.len() == blocks) && a.iter().all(|t| t.len() == blocks) && u.iter().all(|t| t.len() == blocks), "rows and activations of different widths");
    let zero = _mm256_setzero_si256();
    let bias = _mm256_set1_epi8(-128);
    let mut acc = [_mm256_setzero_ps(); T];
    for j in 0..blocks {
        let d = |r: usize| u16::from_le_bytes(w[r][j].d) as i16;
        let dw = _mm256_cvtph_ps(_mm_setr_epi16(d(0), d(1), d(2), d(3), d(4), d(5), d(6), d(7)));
        let mut x = [zero; 8];
        let mut start = [zero; 8];
        for r in 0..8 {
            x[r] = _mm256_loadu_si256(w[r][j].qs.as_ptr() as *const __m256i);
            start[r] = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, x[r]));
        }
        for t in 0..T {
            let ut = _mm256_loadu_si256(u[t][j].as_ptr() as *const __m256i);
            let mut s = [zero; 8];
            for r in 0..8 {
                s[r] = _mm256_dpbusd_epi32(start[r], ut, x[r]);
            }
            let isum = _mm256_cvtepi32_ps(lane_sums8(s));
            acc[t] = _mm256_fmadd_ps(isum, _mm256_mul_ps(dw, _mm256_set1_ps(a[t][j].d)), acc[t]);
        }
    }
    let mut out = [[0.0f32; 8]; T];
    for t in 0..T {
        _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
    }
    out
}
