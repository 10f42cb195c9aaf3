//! AVX2 versions of the hot fused dot products (Q8_0, Q2_K–Q6_K), the formats of typical
//! Q2_K / Q3_K_M / Q4_K_M / Q5_K_M / Q6_K / Q8_0 files. Each computes exactly the integer
//! sums of the portable kernel in `dot.rs` and differs from it only in the order of the
//! float additions. F16 rows ([`dot_f16_rows`]) keep the portable order exactly.
//!
//! Only called after run-time detection of AVX2, FMA and F16C.

#![allow(clippy::needless_range_loop)] // index loops mirror the block layouts

use std::arch::x86_64::*;

use super::blocks::{f16_le, ActQ8_0, ActQ8_K, BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockQ8_0};
use super::dequant::{k4_scales_mins, q3k_scales};

#[inline(always)]
unsafe fn f16_to_f32(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(b) as i32)))
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[inline(always)]
unsafe fn load(p: &[u8]) -> __m256i {
    debug_assert!(p.len() >= 32);
    _mm256_loadu_si256(p.as_ptr() as *const __m256i)
}

#[inline(always)]
unsafe fn load_i8(p: &[i8]) -> __m256i {
    debug_assert!(p.len() >= 32);
    _mm256_loadu_si256(p.as_ptr() as *const __m256i)
}

/// Sums of products of signed bytes, as eight i32 lanes. `y` must not hold -128
/// (quantized activations lie in -127..=127).
#[inline(always)]
unsafe fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0(w: &[BlockQ8_0], a: &[ActQ8_0]) -> f32 {
    // two blocks per step, two accumulators
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let pairs = w.len() / 2;
    for i in 0..pairs {
        let (b0, b1, y0, y1) = (&w[2 * i], &w[2 * i + 1], &a[2 * i], &a[2 * i + 1]);
        let s0 = mul_sum_i8(load_i8(&b0.qs), load_i8(&y0.qs));
        let s1 = mul_sum_i8(load_i8(&b1.qs), load_i8(&y1.qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(b0.d) * y0.d), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(b1.d) * y1.d), _mm256_cvtepi32_ps(s1), acc1);
    }
    if w.len() % 2 == 1 {
        let (b, y) = (&w[w.len() - 1], &a[w.len() - 1]);
        let s = mul_sum_i8(load_i8(&b.qs), load_i8(&y.qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(b.d) * y.d), _mm256_cvtepi32_ps(s), acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

/// [`dot_q8_0`] of one weight row with four activation rows at once: each weight block
/// is loaded and made absolute once for all four. Every result is computed with exactly
/// the operations of `dot_q8_0`, so it is bit-identical to calling it four times.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_x4(w: &[BlockQ8_0], a: [&[ActQ8_0]; 4]) -> [f32; 4] {
    let mut acc0 = [_mm256_setzero_ps(); 4];
    let mut acc1 = [_mm256_setzero_ps(); 4];
    let pairs = w.len() / 2;
    for i in 0..pairs {
        let (b0, b1) = (&w[2 * i], &w[2 * i + 1]);
        let (x0, x1) = (load_i8(&b0.qs), load_i8(&b1.qs));
        let (ax0, ax1) = (_mm256_sign_epi8(x0, x0), _mm256_sign_epi8(x1, x1));
        let (d0, d1) = (f16_to_f32(b0.d), f16_to_f32(b1.d));
        for t in 0..4 {
            let (y0, y1) = (&a[t][2 * i], &a[t][2 * i + 1]);
            let s0 = _mm256_madd_epi16(_mm256_maddubs_epi16(ax0, _mm256_sign_epi8(load_i8(&y0.qs), x0)), _mm256_set1_epi16(1));
            let s1 = _mm256_madd_epi16(_mm256_maddubs_epi16(ax1, _mm256_sign_epi8(load_i8(&y1.qs), x1)), _mm256_set1_epi16(1));
            acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * y0.d), _mm256_cvtepi32_ps(s0), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * y1.d), _mm256_cvtepi32_ps(s1), acc1[t]);
        }
    }
    if w.len() % 2 == 1 {
        let b = &w[w.len() - 1];
        for t in 0..4 {
            let y = &a[t][w.len() - 1];
            let s = mul_sum_i8(load_i8(&b.qs), load_i8(&y.qs));
            acc0[t] = _mm256_fmadd_ps(_mm256_set1_ps(f16_to_f32(b.d) * y.d), _mm256_cvtepi32_ps(s), acc0[t]);
        }
    }
    [0, 1, 2, 3].map(|t| hsum(_mm256_add_ps(acc0[t], acc1[t])))
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k(w: &[BlockQ4_K], a: &[ActQ8_K]) -> f32 {
    dot_q4_k_tokens(w, [a])[0]
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_k(w: &[BlockQ5_K], a: &[ActQ8_K]) -> f32 {
    dot_q5_k_tokens(w, [a])[0]
}

/// [`dot_q4_k`] of one row with `T` tokens at once: each super-block's scales and
/// nibbles are unpacked once for all of them (a batched step's experts see a few tokens
/// each), and each token gets exactly the operations, so the bits, it gets alone.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_k_tokens<const T: usize>(w: &[BlockQ4_K], a: [&[ActQ8_K]; T]) -> [f32; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    let mut mins_acc = [0.0f32; T];
    for (i, b) in w.iter().enumerate() {
        k4_family(b.d, b.dmin, &b.scales, &b.qs, None, a.map(|a| &a[i]), &mut acc, &mut mins_acc);
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = hsum(acc[t]) - mins_acc[t];
    }
    out
}

/// [`dot_q4_k_tokens`] for Q5_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_k_tokens<const T: usize>(w: &[BlockQ5_K], a: [&[ActQ8_K]; T]) -> [f32; T] {
    let mut acc = [_mm256_setzero_ps(); T];
    let mut mins_acc = [0.0f32; T];
    for (i, b) in w.iter().enumerate() {
        k4_family(b.d, b.dmin, &b.scales, &b.qs, Some(&b.qh), a.map(|a| &a[i]), &mut acc, &mut mins_acc);
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = hsum(acc[t]) - mins_acc[t];
    }
    out
}

/// One super-block of Q4_K, or of Q5_K with its fifth bits `qh` (bit `j` of byte `l`:
/// value `32j + l`), times `T` tokens' blocks `y`, added into each token's running sums.
/// The weights are unpacked once; every token's own operations are those of one token.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn k4_family<const T: usize>(d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], qs: &[u8; 128], qh: Option<&[u8; 32]>, y: [&ActQ8_K; T], acc: &mut [__m256; T], mins_acc: &mut [f32; T]) {
    let m4 = _mm256_set1_epi8(0x0F);
    let (sc, m) = k4_scales_mins(scales);
    let mw = _mm256_cvtepu8_epi32(_mm_loadl_epi64(m.as_ptr() as *const __m128i));
    // (loops, not closures, around intrinsics: a closure does not inherit the CPU
    // features, and where it is not inlined each intrinsic becomes a call)
    let mut mins = [0i32; T];
    for t in 0..T {
        // Σ_j m[j] · (bsums[2j] + bsums[2j+1]) in one multiply-add
        let bs = _mm256_loadu_si256(y[t].bsums.as_ptr() as *const __m256i);
        let pairs = _mm256_madd_epi16(bs, _mm256_set1_epi16(1)); // 8 × i32
        let mins_v = _mm256_mullo_epi32(pairs, mw);
        let mins_v = _mm_add_epi32(_mm256_castsi256_si128(mins_v), _mm256_extracti128_si256(mins_v, 1));
        let mins_v = _mm_add_epi32(mins_v, _mm_unpackhi_epi64(mins_v, mins_v));
        mins[t] = _mm_cvtsi128_si32(mins_v) + _mm_extract_epi32(mins_v, 1);
    }
    // chunk j's fifth bits are bits 2j and 2j + 1 of each qh byte: shifted down two per
    // chunk, they are read at bits 0 and 1 (what 16-bit shifts carry in from the
    // neighbouring byte lands higher up and is masked away)
    let mut h = qh.map_or(_mm256_setzero_si256(), |qh| load(qh));
    let fifth = _mm256_set1_epi8(0x10);
    let mut sumi = [_mm256_setzero_si256(); T];
    for j in 0..4 {
        let q = load(&qs[j * 32..]);
        let mut lo = _mm256_and_si256(q, m4);
        let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if qh.is_some() {
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), fifth));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), fifth));
            h = _mm256_srli_epi16(h, 2);
        }
        let (s_lo, s_hi) = (_mm256_set1_epi16(sc[2 * j] as i16), _mm256_set1_epi16(sc[2 * j + 1] as i16));
        for t in 0..T {
            let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load_i8(&y[t].qs[j * 64..])), s_lo);
            let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load_i8(&y[t].qs[j * 64 + 32..])), s_hi);
            sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p_lo, p_hi));
        }
    }
    let (dw, dmw) = (f16_to_f32(d), f16_to_f32(dmin));
    for t in 0..T {
        let d = y[t].d * dw;
        acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        mins_acc[t] += y[t].d * dmw * mins[t] as f32;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k(w: &[BlockQ6_K], a: &[ActQ8_K]) -> f32 {
    dot_q6_k_tokens(w, [a])[0]
}

/// [`dot_q6_k`] of one row with `T` tokens at once: each super-block's six-bit values
/// are assembled once for all of them, and each token gets exactly the operations, so
/// the bits, it gets alone.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k_tokens<const T: usize>(w: &[BlockQ6_K], a: [&[ActQ8_K]; T]) -> [f32; T] {
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(0x03);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut corr_acc = [0.0f32; T];
    for (i, b) in w.iter().enumerate() {
        // Quants are stored +32; subtract 32 × Σ activations of each group afterwards.
        let mut corr = [0i32; T];
        for t in 0..T {
            for g in 0..16 {
                corr[t] += b.scales[g] as i32 * a[t][i].bsums[g] as i32;
            }
        }
        let mut sumi = [_mm256_setzero_si256(); T];
        for half in 0..2 {
            let ql0 = load(&b.ql[half * 64..]);
            let ql1 = load(&b.ql[half * 64 + 32..]);
            let qh = load(&b.qh[half * 32..]);
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4)),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let g = half * 8 + 2 * k;
                let s = _mm256_set_m128i(_mm_set1_epi16(b.scales[g + 1] as i16), _mm_set1_epi16(b.scales[g] as i16));
                for t in 0..T {
                    let p = _mm256_maddubs_epi16(qk, load_i8(&a[t][i].qs[half * 128 + k * 32..]));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, s));
                }
            }
        }
        let dw = f16_to_f32(b.d);
        for t in 0..T {
            let d = dw * a[t][i].d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            corr_acc[t] += d * (32 * corr[t]) as f32;
        }
    }
    let mut out = [0.0f32; T];
    for t in 0..T {
        out[t] = hsum(acc[t]) - corr_acc[t];
    }
    out
}

/// `Σ_g scale[g] · Σ_{l<16} q[16g + l] · y[16g + l]` over the 32 values `q` (unsigned, at
/// most 127) of groups `g0` and `g0 + 1`, as eight i32 lanes; `scales` holds `scale[g0]`
/// in its low half and `scale[g0 + 1]` in its high half (see [`scale_pairs`]).
#[inline(always)]
unsafe fn two_groups(q: __m256i, y: &[i8], scales: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, load_i8(y)), scales)
}

/// The sixteen 16-bit scales `s` of a super-block's groups as eight vectors, vector `k`
/// holding `s[2k]` in its low 128 bits and `s[2k + 1]` in its high 128 bits (what
/// [`two_groups`] multiplies with).
#[inline(always)]
unsafe fn scale_pairs(s: __m256i) -> [__m256i; 8] {
    // within each half of `lo` / `hi`: scales 0..8 / 8..16; a byte shuffle per pair
    let (lo, hi) = (_mm256_permute2x128_si256::<0x00>(s, s), _mm256_permute2x128_si256::<0x11>(s, s));
    std::array::from_fn(|k| {
        let e = (4 * (k % 4)) as i8;
        let pick = _mm256_setr_epi8(e, e + 1, e, e + 1, e, e + 1, e, e + 1, e, e + 1, e, e + 1, e, e + 1, e, e + 1, e + 2, e + 3, e + 2, e + 3, e + 2, e + 3, e + 2, e + 3, e + 2, e + 3, e + 2, e + 3, e + 2, e + 3, e + 2, e + 3);
        _mm256_shuffle_epi8(if k < 4 { lo } else { hi }, pick)
    })
}

/// Q2_K: value `128h + 32s + l` is bits `2s..2s + 2` of byte `32h + l`; its group of 16 is
/// `8h + 2s + l / 16`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q2_k(w: &[BlockQ2_K], a: &[ActQ8_K]) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.iter().zip(a) {
        // Σ_j min_j · bsums_j: the mins (high nibbles) widened to 16 bits meet the sums
        let sc = _mm_loadu_si128(b.scales.as_ptr() as *const __m128i);
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0x0F)));
        let summs = _mm256_madd_epi16(mins, _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i));
        let scales = scale_pairs(_mm256_cvtepu8_epi16(_mm_and_si128(sc, _mm_set1_epi8(0x0F))));
        let mut isum = _mm256_setzero_si256();
        for h in 0..2 {
            let mut q = load(&b.qs[32 * h..]);
            for s in 0..4 {
                let g = 8 * h + 2 * s;
                isum = _mm256_add_epi32(isum, two_groups(_mm256_and_si256(q, m3), &y.qs[16 * g..], scales[4 * h + s]));
                q = _mm256_srli_epi16(q, 2);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y.d * f16_le(b.d)), _mm256_cvtepi32_ps(isum), acc);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(y.d * f16_le(b.dmin)), _mm256_cvtepi32_ps(summs), acc);
    }
    hsum(acc)
}

/// Q3_K: value `128h + 32s + l` is bits `2s..2s + 2` of byte `32h + l` of `qs`, minus 4
/// unless bit `4h + s` of `hmask[l]` is set. Summed here as `(q + 4) · y` (unsigned
/// quants, what `vpmaddubsw` takes) less `4 · Σy` per group (the activation sums).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q3_k(w: &[BlockQ3_K], a: &[ActQ8_K]) -> f32 {
    let (m3, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.iter().zip(a) {
        let sc8 = q3k_scales(&b.scales);
        // Σ_g scale_g · 4 · bsums_g, taken back at the end
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc8.as_ptr() as *const __m128i));
        let offset = _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i)), 2);
        let scales = scale_pairs(sc16);
        let mut hm = load(&b.hmask);
        let mut isum = _mm256_setzero_si256();
        for h in 0..2 {
            let mut q = load(&b.qs[32 * h..]);
            for s in 0..4 {
                let g = 8 * h + 2 * s;
                // the high bit (set: no -4) is bit 2 of the unsigned quant
                let u = _mm256_or_si256(_mm256_and_si256(q, m3), _mm256_slli_epi16(_mm256_and_si256(hm, one), 2));
                isum = _mm256_add_epi32(isum, two_groups(u, &y.qs[16 * g..], scales[4 * h + s]));
                q = _mm256_srli_epi16(q, 2);
                hm = _mm256_srli_epi16(hm, 1);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_le(b.d) * y.d), _mm256_cvtepi32_ps(_mm256_sub_epi32(isum, offset)), acc);
    }
    hsum(acc)
}

/// `R` F16 rows times one token's f32 activations, each row in the portable kernel's
/// order (eight lanes of multiply-then-add, the lanes summed in order, then the values
/// past the last eight one by one), so the same bits. The portable code converted each
/// half with a call per value (6.8 GB/s on a 470 MB matrix, a quarter of BF16's speed,
/// which the compiler vectorizes); here eight at a time (`vcvtph2ps`), `R` rows side by
/// side so the chains of additions overlap.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f16_rows<const R: usize>(w: [&[u8]; R], x: &[f32]) -> [f32; R] {
    let n = x.len() / 8 * 8;
    for r in 0..R {
        assert!(w[r].len() >= 2 * x.len(), "F16 row shorter than the activations");
    }
    let mut acc = [_mm256_setzero_ps(); R];
    for i in (0..n).step_by(8) {
        let xv = _mm256_loadu_ps(x.as_ptr().add(i));
        for r in 0..R {
            let h = _mm256_cvtph_ps(_mm_loadu_si128(w[r].as_ptr().add(2 * i) as *const __m128i));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(h, xv));
        }
    }
    std::array::from_fn(|r| {
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
        let mut s = 0.0f32;
        for i in n..x.len() {
            s += f16_to_f32([w[r][2 * i], w[r][2 * i + 1]]) * x[i];
        }
        lanes.iter().sum::<f32>() + s
    })
}
