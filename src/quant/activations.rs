//! Activations prepared for the fused dot products: kept in f32 for float weights,
//! quantized to 8 bits (as llama.cpp does) for quantized weights.

// The forms kept beside the quants (offset bytes, sums, packed-kernel offsets) serve the
// x86 kernels; elsewhere only the portable kernels run.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::blocks::{ActQ8_0, ActQ8_K, QK, QK_K};
use super::GgmlType;
use std::sync::OnceLock;

use half::f16;

/// The form activations take for a given weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Plain f32 (F32, F16 and BF16 weights).
    F32,
    /// 8-bit blocks of 32 with scale and sum (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights).
    Q8_0,
    /// 8-bit super-blocks of 256 with group sums (the K-quants).
    Q8K,
}

impl ActKind {
    /// The activation form that weights of type `ty` are multiplied with.
    pub fn for_weights(ty: GgmlType) -> ActKind {
        use GgmlType::*;
        match ty {
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => ActKind::Q8_0,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => ActKind::Q8K,
            _ => ActKind::F32,
        }
    }
}

/// A batch of activation rows (one per token), each of length `k`, in one form.
pub struct Activations {
    kind: ActKind,
    k: usize,
    n: usize,
    f32s: Vec<f32>,
    q8: Vec<ActQ8_0>,
    /// The Q8_0 quants offset to unsigned bytes, for the file-layout VNNI kernel (made on
    /// first use).
    q8_unsigned: OnceLock<Vec<[u8; 32]>>,
    /// Each Q8_0 block's `-128 · Σ q`, for the packed kernel (made with the quants).
    q8_offsets: Vec<i32>,
    /// Each Q8_K super-block's eight sub-block sums as four pairs of 16-bit values (one
    /// 32-bit word each), for the packed Q4_K kernel (made on first use).
    q8k_pairs: OnceLock<Vec<[i32; 4]>>,
    /// Each Q8_K super-block's `-32 ·` sums of sixteen quants, for the packed Q6_K kernel
    /// (made on first use).
    q8k_offsets: OnceLock<Vec<[i32; 16]>>,
    q8k: Vec<ActQ8_K>,
}

/// One token's activations, borrowed from [`Activations`].
#[derive(Clone, Copy)]
pub enum ActRow<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// Q8_0 blocks.
    Q8_0(&'a [ActQ8_0]),
    /// Q8_K blocks.
    Q8K(&'a [ActQ8_K]),
}

impl Activations {
    /// Prepares `x` (`n` rows of `k` values, row-major) for weights of kind `kind`.
    pub fn new(kind: ActKind, x: &[f32], k: usize) -> Self {
        assert!(k > 0 && x.len().is_multiple_of(k));
        let n = x.len() / k;
        let mut a = Activations { kind, k, n, f32s: Vec::new(), q8: Vec::new(), q8_unsigned: OnceLock::new(), q8_offsets: Vec::new(), q8k_pairs: OnceLock::new(), q8k_offsets: OnceLock::new(), q8k: Vec::new() };
        match kind {
            ActKind::F32 => a.f32s = x.to_vec(),
            ActKind::Q8_0 => {
                assert!(k.is_multiple_of(QK), "row length {k} is not a multiple of {QK}");
                (a.q8, a.q8_offsets) = quantize_q8_0_blocks(x);
            }
            ActKind::Q8K => {
                assert!(k.is_multiple_of(QK_K), "row length {k} is not a multiple of {QK_K}");
                a.q8k = x.chunks_exact(QK_K).map(quantize_q8_k).collect();
            }
        }
        a
    }

    /// The form of these activations.
    pub fn kind(&self) -> ActKind {
        self.kind
    }

    /// Number of rows (tokens).
    pub fn n_rows(&self) -> usize {
        self.n
    }

    /// Row length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Row `t`'s Q8_0 quants offset by 128 to unsigned bytes, one `[u8; 32]` per block
    /// (what `vpdpbusd` multiplies); made on first use.
    #[inline]
    pub(crate) fn row_unsigned(&self, t: usize) -> &[[u8; 32]] {
        let b = self.k / QK;
        &self.q8_unsigned.get_or_init(|| self.q8.iter().map(|b| b.qs.map(|q| (q as u8) ^ 0x80)).collect())[t * b..(t + 1) * b]
    }

    /// Row `t`'s Q8_0 blocks' `-128 · Σ q` (what the packed kernel starts each block's
    /// sum from, taking back the `+ 128` of its unsigned weights).
    #[inline]
    pub(crate) fn row_offsets(&self, t: usize) -> &[i32] {
        let b = self.k / QK;
        &self.q8_offsets[t * b..(t + 1) * b]
    }

    /// Row `t`'s Q8_0 blocks (the activations must be of that kind).
    #[inline]
    pub(crate) fn q8_0_row(&self, t: usize) -> &[ActQ8_0] {
        assert_eq!(self.kind, ActKind::Q8_0, "Q8_0 blocks of other activations");
        let b = self.k / QK;
        &self.q8[t * b..(t + 1) * b]
    }

    /// Row `t`'s Q8_K sub-block sums (32 values each) as 16-bit pairs, four words per
    /// super-block; made on first use.
    #[inline]
    pub(crate) fn row_sum_pairs(&self, t: usize) -> &[[i32; 4]] {
        let b = self.k / QK_K;
        &self.q8k_pairs.get_or_init(|| self.q8k.iter().map(sum_pairs).collect())[t * b..(t + 1) * b]
    }

    /// Row `t`'s Q8_K `-32 ·` sums of each sixteen quants (what the packed Q6_K kernel
    /// starts each sub-block's sum from, taking back the `+ 32` of its unsigned quants);
    /// made on first use.
    #[inline]
    pub(crate) fn row_q6_offsets(&self, t: usize) -> &[[i32; 16]] {
        let b = self.k / QK_K;
        &self.q8k_offsets.get_or_init(|| self.q8k.iter().map(|b| b.bsums.map(|s| -32 * s as i32)).collect())[t * b..(t + 1) * b]
    }

    /// Row `t`'s Q8_K blocks (the activations must be of that kind).
    #[inline]
    pub(crate) fn q8_k_row(&self, t: usize) -> &[ActQ8_K] {
        assert_eq!(self.kind, ActKind::Q8K, "Q8_K blocks of other activations");
        let b = self.k / QK_K;
        &self.q8k[t * b..(t + 1) * b]
    }

    /// Row `t`.
    #[inline]
    pub fn row(&self, t: usize) -> ActRow<'_> {
        match self.kind {
            ActKind::F32 => ActRow::F32(&self.f32s[t * self.k..(t + 1) * self.k]),
            ActKind::Q8_0 => {
                let b = self.k / QK;
                ActRow::Q8_0(&self.q8[t * b..(t + 1) * b])
            }
            ActKind::Q8K => {
                let b = self.k / QK_K;
                ActRow::Q8K(&self.q8k[t * b..(t + 1) * b])
            }
        }
    }
}

/// llama.cpp's `quantize_row_q8_1_ref` for one block (the Q8_0 quants plus the sum).
pub fn quantize_q8_0(x: &[f32]) -> ActQ8_0 {
    #[cfg(target_arch = "x86_64")]
    if super::dot::has_avx2() && x.len() == QK {
        // SAFETY: the CPU features were detected at run time; the length is checked.
        return unsafe { quantize_q8_0_avx2(x).0 };
    }
    quantize_q8_0_body(x)
}

/// [`quantize_q8_0`] of every block of `x`, with each block's `-128 · Σ q` (see
/// [`Activations::row_offsets`]). The AVX2 version does the same float operations as
/// [`quantize_q8_0_body`] eight values at a time, so both give the same bits.
fn quantize_q8_0_blocks(x: &[f32]) -> (Vec<ActQ8_0>, Vec<i32>) {
    #[cfg(target_arch = "x86_64")]
    if super::dot::has_avx2() {
        let mut blocks = Vec::with_capacity(x.len() / QK);
        let mut offsets = Vec::with_capacity(x.len() / QK);
        for c in x.chunks_exact(QK) {
            // SAFETY: the CPU features were detected at run time; `c` holds 32 values.
            let (b, sum) = unsafe { quantize_q8_0_avx2(c) };
            blocks.push(b);
            offsets.push(-128 * sum);
        }
        return (blocks, offsets);
    }
    x.chunks_exact(QK)
        .map(|c| {
            let b = quantize_q8_0_body(c);
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            (b, -128 * sum)
        })
        .unzip()
}

/// One block of [`quantize_q8_0_body`] in AVX2 registers, and the sum of its quants.
/// `x` must hold 32 values. The maximum and the sum are folded within the registers and
/// the f16 roundings are F16C instructions (exact either way: a maximum and an integer
/// sum do not depend on their order, and F16C rounds to nearest even as `half` does):
/// storing the lanes to fold them and a library call per rounding took most of the time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8_0_avx2(x: &[f32]) -> (ActQ8_0, i32) {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.len(), QK);
    let p = x.as_ptr();
    let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)), _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
    // the lanes' maximum, ignoring NaN lanes as `f32::max` does (`maxps` returns its
    // second operand when either is NaN, so NaN lanes are first replaced by zero)
    let m = _mm256_and_ps(m, _mm256_cmp_ps::<_CMP_ORD_Q>(m, m));
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    let (half, one, sign) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
    let mut q = [_mm256_setzero_si256(); 4];
    for (q, &v) in q.iter_mut().zip(&v) {
        // round_half_away(v * id)
        let f = _mm256_mul_ps(v, id);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(f);
        let away = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_and_ps(_mm256_sub_ps(f, t), abs_mask), half);
        let step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(f, sign)));
        let r = _mm256_add_ps(t, step);
        // `as i8`: NaN to 0, the rest saturated (an overflowing scale makes infinities)
        let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        *q = _mm256_cvttps_epi32(_mm256_max_ps(_mm256_min_ps(r, _mm256_set1_ps(127.0)), _mm256_set1_ps(-128.0)));
    }
    // the packs interleave 128-bit halves, the permute puts the bytes back in order
    let w = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    let bytes = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; 32];
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, bytes);
    let s8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256::<1>(s8));
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<0b01>(s2)));
    // f32 -> f16 -> f32, rounding to nearest even
    let round_f16 = |x: f32| _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))));
    (ActQ8_0 { d: round_f16(d), s: round_f16(sum as f32 * d), qs }, sum)
}

/// `f.round()` (halves away from zero) written so that it compiles to vector instructions
/// instead of a call to `roundf` per value.
#[inline(always)]
fn round_half_away(f: f32) -> f32 {
    let t = f.trunc();
    if (f - t).abs() >= 0.5 {
        t + 1.0f32.copysign(f)
    } else {
        t
    }
}

#[inline(always)]
fn quantize_q8_0_body(x: &[f32]) -> ActQ8_0 {
    // eight running maxima (exact in any order) so the search is a few vector operations
    let mut m = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            m[i] = m[i].max(c[i].abs());
        }
    }
    let amax = m.iter().chain(x.chunks_exact(8).remainder()).fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = round_half_away(v * id) as i8;
        sum += *q as i32;
    }
    let d16 = f16::from_f32(d).to_f32();
    ActQ8_0 { d: d16, s: f16::from_f32(sum as f32 * d).to_f32(), qs }
}

/// The sums of a super-block's eight groups of 32 quants, paired into 32-bit words
/// (low half the even group), as `vpdpwssd` takes them.
fn sum_pairs(b: &ActQ8_K) -> [i32; 4] {
    std::array::from_fn(|p| {
        let sum = |j: usize| b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32;
        // each sum is at most 32 · 127 in magnitude: it fits 16 bits
        (sum(2 * p) as i16 as u16 as u32 | ((sum(2 * p + 1) as i16 as u16 as u32) << 16)) as i32
    })
}

/// llama.cpp's `quantize_row_q8_K_ref` for one super-block (256 values): the AVX2 version
/// where the CPU has it (the same operations eight values at a time, so the same bits;
/// the scalar loop's libm rounding call per value was a tenth of a batched step of a
/// K-quant model).
pub fn quantize_q8_k(x: &[f32]) -> ActQ8_K {
    #[cfg(target_arch = "x86_64")]
    if super::dot::has_avx2() && x.len() == QK_K {
        // SAFETY: the CPU features were detected at run time; the length is checked.
        if let Some(b) = unsafe { quantize_q8_k_avx2(x) } {
            return b;
        }
    }
    quantize_q8_k_scalar(x)
}

/// [`quantize_q8_k_scalar`] in AVX2 registers; `None` where no value has the largest
/// magnitude exactly (NaNs) or the scale overflows (values under 4e-37), cases left to the
/// scalar code. `x` must hold 256 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_q8_k_avx2(x: &[f32]) -> Option<ActQ8_K> {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.len(), QK_K);
    let p = x.as_ptr();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut m = _mm256_setzero_ps();
    for i in (0..QK_K).step_by(8) {
        m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(p.add(i)), abs_mask));
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0.0f32, |a, &v| a.max(v));
    let mut out = ActQ8_K { d: 0.0, qs: [0; 256], bsums: [0; 16] };
    if amax == 0.0 {
        return Some(out);
    }
    // the scalar loop keeps the first value of the largest magnitude, with its sign
    let target = _mm256_set1_ps(amax);
    let mut max = None;
    for i in (0..QK_K).step_by(8) {
        let v = _mm256_loadu_ps(p.add(i));
        let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_and_ps(v, abs_mask), target));
        if hit != 0 {
            max = Some(x[i + hit.trailing_zeros() as usize]);
            break;
        }
    }
    let iscale = -127.0 / max?;
    if !iscale.is_finite() {
        // a block of values so small that the scale overflows: the scalar code's casts
        return None;
    }
    let (scale, top) = (_mm256_set1_ps(iscale), _mm256_set1_epi32(127));
    for i in (0..QK_K).step_by(32) {
        let q: [__m256i; 4] = std::array::from_fn(|j| {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(scale, _mm256_loadu_ps(p.add(i + 8 * j))));
            _mm256_min_epi32(_mm256_cvtps_epi32(r), top)
        });
        // the packs interleave 128-bit halves, the permute puts the bytes back in order
        let w = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let bytes = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out.qs.as_mut_ptr().add(i) as *mut __m256i, bytes);
    }
    for (j, s) in out.bsums.iter_mut().enumerate() {
        *s = out.qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i16).sum();
    }
    out.d = 1.0 / iscale;
    Some(out)
}

/// The portable [`quantize_q8_k`].
fn quantize_q8_k_scalar(x: &[f32]) -> ActQ8_K {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut out = ActQ8_K { d: 0.0, qs: [0; 256], bsums: [0; 16] };
    if amax == 0.0 {
        return out;
    }
    let iscale = -127.0 / max;
    for (q, &v) in out.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (j, s) in out.bsums.iter_mut().enumerate() {
        *s = out.qs[j * 16..(j + 1) * 16].iter().map(|&q| q as i16).sum();
    }
    out.d = 1.0 / iscale;
    out
}

/// Round to nearest, ties to even (llama.cpp's `nearest_int`).
#[inline]
fn nearest_int(f: f32) -> i32 {
    f.round_ties_even() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_away_equals_round() {
        let mut cases = vec![0.5f32, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 126.5, -127.5, 0.0, -0.0, 8388607.5, 1e30, f32::MIN_POSITIVE];
        cases.extend((0..100_000).map(|i| (i as f32 - 50_000.0) * 0.00291));
        for f in cases {
            assert_eq!(round_half_away(f).to_bits(), f.round().to_bits(), "{f}");
        }
        // the vector build of the whole block equals the portable one
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 0.37).collect();
        let (a, b) = (quantize_q8_0(&x), quantize_q8_0_body(&x));
        assert_eq!((a.qs, a.d.to_bits(), a.s.to_bits()), (b.qs, b.d.to_bits(), b.s.to_bits()));
    }

    /// `n` pseudo-random values in -10..10 (xorshift from `seed`).
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 20001) as f32 / 1000.0 - 10.0
            })
            .collect()
    }

    #[test]
    fn vector_q8_k_blocks_equal_the_portable_ones() {
        let mut blocks: Vec<Vec<f32>> = (0..100).map(|i| values(256, 777 + i)).collect();
        // zeros; the largest magnitude twice with both signs (the first decides); values on
        // rounding ties (max 127: the scale is -1); huge and tiny values
        blocks.push(vec![0.0; 256]);
        blocks.push((0..256).map(|i| match i { 7 => -3.0, 200 => 3.0, _ => (i % 5) as f32 * 0.5 }).collect());
        blocks.push((0..256).map(|i| match i { 3 => 3.0, 9 => -3.0, _ => -(i % 7) as f32 * 0.25 }).collect());
        blocks.push((0..256).map(|i| if i == 0 { 127.0 } else { (i as f32 - 128.0) + 0.5 }).collect());
        blocks.push((0..256).map(|i| (i as f32 - 100.0) * 1e30).collect());
        blocks.push((0..256).map(|i| (i as f32 - 100.0) * 1e-40).collect());
        for (n, b) in blocks.iter().enumerate() {
            let (v, w) = (quantize_q8_k(b), quantize_q8_k_scalar(b));
            assert_eq!((v.d.to_bits(), v.qs, v.bsums), (w.d.to_bits(), w.qs, w.bsums), "block {n}");
        }
    }

    #[test]
    fn vector_q8_0_blocks_equal_the_portable_ones() {
        // random blocks, a zero block, blocks whose scaled values sit on rounding ties
        // (127 / amax exact: amax 127 gives id 1, so halves stay halves), huge and tiny values
        let mut x = values(32 * 200, 12345);
        x.extend([0.0f32; 32]);
        x.extend((0..32).map(|i| if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 }));
        x.extend((0..32).map(|i| if i == 3 { -127.0 } else { -(i as f32) * 2.5 }));
        x.extend((0..32).map(|i| (i as f32 - 15.0) * 1e30));
        x.extend((0..32).map(|i| (i as f32 - 15.0) * 1e-40));
        // a NaN among ordinary values (left out of the maximum), an infinity (the scale
        // overflows: quants 0, the scaled sum NaN), NaNs only
        x.extend((0..32).map(|i| if i == 5 { f32::NAN } else { i as f32 - 9.0 }));
        x.extend((0..32).map(|i| if i == 30 { f32::NEG_INFINITY } else { i as f32 }));
        x.extend([f32::NAN; 32]);
        let (blocks, offsets) = quantize_q8_0_blocks(&x);
        for (i, c) in x.chunks_exact(QK).enumerate() {
            let b = quantize_q8_0_body(c);
            assert_eq!((blocks[i].qs, blocks[i].d.to_bits(), blocks[i].s.to_bits()), (b.qs, b.d.to_bits(), b.s.to_bits()), "block {i}");
            assert_eq!(offsets[i], -128 * b.qs.iter().map(|&q| q as i32).sum::<i32>(), "block {i}");
        }
    }
}
