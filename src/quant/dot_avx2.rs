//! AVX2 versions of the hot fused dot products (Q8_0, Q2_K–Q6_K), the formats of typical
//! Q2_K / Q3_K_M / Q4_K_M / Q5_K_M / Q6_K / Q8_0 files. Each computes exactly the integer
//! sums of the portable kernel in `dot.rs` and scales and adds them in its order (block
//! after block, one fused multiply-add each), so the results are the same bits. F16 rows
//! ([`dot_f16_rows`]) keep the portable order exactly too.
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

/// The sum of eight i32 lanes (exact, as integers).
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(s) + _mm_extract_epi32::<1>(s)
}

/// One block's step of the shared order (`dot.rs`): `acc + i · scale`, one rounding.
#[inline(always)]
unsafe fn block_fma(i: i32, scale: f32, acc: f32) -> f32 {
    _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(i as f32), _mm_set_ss(scale), _mm_set_ss(acc)))
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

/// Eight blocks' integer sums, one per lane in order, from their eight-lane partial sums
/// (exact: integers).
#[inline(always)]
pub(super) unsafe fn lane_sums8(s: [__m256i; 8]) -> __m256i {
    // each 128-bit half of a horizontal add holds pairs of both inputs' lanes
    let ab = _mm256_hadd_epi32(_mm256_hadd_epi32(s[0], s[1]), _mm256_hadd_epi32(s[2], s[3]));
    let cd = _mm256_hadd_epi32(_mm256_hadd_epi32(s[4], s[5]), _mm256_hadd_epi32(s[6], s[7]));
    // ab: blocks 0–3' sums of lanes 0–3 (low half) and 4–7 (high half); cd: blocks 4–7'
    _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(ab, cd), _mm256_permute2x128_si256::<0x31>(ab, cd))
}

/// Eight Q8_0 rows `w` (each the same number of blocks) times `T` tokens' activations:
/// `out[t][r]`. Lane `r` of each vector is row `r`, so a row's blocks are scaled and
/// added one after another, `acc = fma(I, d_w · d_a, acc)`: the order of the portable
/// kernel and of the packed one (see `dot.rs`), with eight rows' chains side by side
/// where one row's would wait on each other. Fewer rows: repeat one and drop its lanes.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_rows<const T: usize>(w: [&[BlockQ8_0]; 8], a: [&[ActQ8_0]; T]) -> [[f32; 8]; T] {
    let blocks = w[0].len();
    assert!(w.iter().all(|r| r.len() == blocks) && a.iter().all(|t| t.len() == blocks), "rows and activations of different widths");
    let mut acc = [_mm256_setzero_ps(); T];
    for j in 0..blocks {
        let d = |r: usize| u16::from_le_bytes(w[r][j].d) as i16;
        let dw = _mm256_cvtph_ps(_mm_setr_epi16(d(0), d(1), d(2), d(3), d(4), d(5), d(6), d(7)));
        for t in 0..T {
            let y = load_i8(&a[t][j].qs);
            let mut s = [_mm256_setzero_si256(); 8];
            for r in 0..8 {
                s[r] = mul_sum_i8(load_i8(&w[r][j].qs), y);
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
    let mut acc = [0.0f32; T];
    for (i, b) in w.iter().enumerate() {
        k4_family(b.d, b.dmin, &b.scales, &b.qs, None, a.map(|a| &a[i]), &mut acc);
    }
    acc
}

/// [`dot_q4_k_tokens`] for Q5_K.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_k_tokens<const T: usize>(w: &[BlockQ5_K], a: [&[ActQ8_K]; T]) -> [f32; T] {
    let mut acc = [0.0f32; T];
    for (i, b) in w.iter().enumerate() {
        k4_family(b.d, b.dmin, &b.scales, &b.qs, Some(&b.qh), a.map(|a| &a[i]), &mut acc);
    }
    acc
}

/// One super-block of Q4_K, or of Q5_K with its fifth bits `qh` (bit `j` of byte `l`:
/// value `32j + l`), times `T` tokens' blocks `y`, added into each token's running sums.
/// The weights are unpacked once; every token's own operations are those of one token.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn k4_family<const T: usize>(d: [u8; 2], dmin: [u8; 2], scales: &[u8; 12], qs: &[u8; 128], qh: Option<&[u8; 32]>, y: [&ActQ8_K; T], acc: &mut [f32; T]) {
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
        acc[t] = block_fma(-mins[t], dmw * y[t].d, block_fma(hsum_i32(sumi[t]), dw * y[t].d, acc[t]));
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
    let mut acc = [0.0f32; T];
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
            acc[t] = block_fma(hsum_i32(sumi[t]) - 32 * corr[t], dw * a[t][i].d, acc[t]);
        }
    }
    acc
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
    let mut acc = 0.0f32;
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
        acc = block_fma(-hsum_i32(summs), f16_le(b.dmin) * y.d, block_fma(hsum_i32(isum), f16_le(b.d) * y.d, acc));
    }
    acc
}

/// Q3_K: value `128h + 32s + l` is bits `2s..2s + 2` of byte `32h + l` of `qs`, minus 4
/// unless bit `4h + s` of `hmask[l]` is set. Summed here as `(q + 4) · y` (unsigned
/// quants, what `vpmaddubsw` takes) less `4 · Σy` per group (the activation sums).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q3_k(w: &[BlockQ3_K], a: &[ActQ8_K]) -> f32 {
    let (m3, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
    let mut acc = 0.0f32;
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
        acc = block_fma(hsum_i32(_mm256_sub_epi32(isum, offset)), f16_le(b.d) * y.d, acc);
    }
    acc
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
