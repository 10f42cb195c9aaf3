//! One query head attending over a sequence's cached keys and values: scores, softmax,
//! weighted sum of values. The inner loop of decoding with many sessions, so it is
//! written for the vector unit: positions are scored eight at a time (each position's
//! products summed in eight lanes, the eight positions' lanes then folded together in one
//! transpose-and-add tree), the exponentials are a vector polynomial instead of a libm
//! call per score, and the values are summed unnormalized (even and odd positions apart, for twice the
//! independent work), dividing once at the end. The query heads that share a key-value
//! head ([`attend_group`]) go through the same operations together, up to four at a time,
//! so each cached key and value is loaded once for all of them. With many sessions the
//! caches come from memory (the weights streaming through each step evict them), so the
//! vector code asks for keys and values ahead of use: keys a few rows ahead of scoring,
//! values while the keys are scored, and the rest of each value row on the first of the
//! passes over them.
//!
//! The portable code performs the same float operations in the same order as the AVX2
//! code (fused multiply-adds where it uses them, the same reduction tree), so both give
//! the same bits and a token's numbers do not depend on the CPU's vector extensions.

/// Lanes per vector: the AVX2 width, and the grouping both versions sum in.
const L: usize = 8;

/// An element type the KV cache can hold: f32, or f16 (half the memory and the reading;
/// values widen exactly, so attention over an f16 cache equals attention over an f32
/// cache of the same rounded values, bit for bit).
pub trait CacheValue: Copy + Send + Sync + 'static {
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// Eight consecutive values widened to f32.
    ///
    /// # Safety
    /// `p` must point to eight readable values; the CPU must have AVX2 and F16C.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl CacheValue for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl CacheValue for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Softmax-weighted sum of values for query `q` over `len` cached positions: `scores[s] =
/// (q · k_s) · scale`, `out = Σ_s softmax(scores)_s · v_s`. Position `s`'s key starts at
/// `k[s * k_stride..]` (length `q.len()`), its value at `v[s * v_stride..]` (length
/// `out.len()`). The first `cold` positions (at most `len`) may have left the processor's
/// caches — those cached before the current pass, which the step's weights have streamed
/// past since — and are asked for ahead of use; the rest were just written. `scores` is
/// scratch space; `out` is overwritten. `cold` changes the speed only, never the result.
#[allow(clippy::too_many_arguments)]
pub fn attend_head<E: CacheValue>(q: &[f32], k: &[E], k_stride: usize, v: &[E], v_stride: usize, len: usize, cold: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    assert!(len > 0, "attention over no positions");
    assert!(k.len() >= (len - 1) * k_stride + q.len() && v.len() >= (len - 1) * v_stride + out.len(), "cache shorter than {len} positions");
    scores.clear();
    scores.resize(len.next_multiple_of(L), 0.0);
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() && q.len().is_multiple_of(L) && out.len().is_multiple_of(L) {
        // SAFETY: the CPU features were detected at run time; lengths checked above.
        unsafe { avx2::attend(q, k, k_stride, v, v_stride, len, cold.min(len), scale, scores, out) };
        return;
    }
    let _ = cold;
    portable::attend(q, k, k_stride, v, v_stride, len, scale, scores, out)
}

/// [`attend_head`] for `heads` query heads that share keys and values (the query heads
/// of one grouped-query key-value head): `qs` holds the queries one after another, `out`
/// their results. Each head gets exactly [`attend_head`]'s bits; the vector code reads
/// each position's key and value once for up to four heads, where one head at a time
/// streams them once per head (from memory, at long contexts).
#[allow(clippy::too_many_arguments)]
pub fn attend_group<E: CacheValue>(qs: &[f32], heads: usize, k: &[E], k_stride: usize, v: &[E], v_stride: usize, len: usize, cold: usize, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    assert!(heads > 0 && qs.len().is_multiple_of(heads) && out.len().is_multiple_of(heads), "attend_group: {heads} heads of uneven sizes");
    let (d, dv) = (qs.len() / heads, out.len() / heads);
    assert!(len > 0, "attention over no positions");
    assert!(k.len() >= (len - 1) * k_stride + d && v.len() >= (len - 1) * v_stride + dv, "cache shorter than {len} positions");
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() && d.is_multiple_of(L) && dv.is_multiple_of(L) && heads > 1 {
        let (padded, cold) = (len.next_multiple_of(L), cold.min(len));
        scores.clear();
        scores.resize(4 * padded, 0.0);
        let mut h = 0;
        while h < heads {
            let (q, o) = (&qs[h * d..], &mut out[h * dv..]);
            // SAFETY: the CPU features were detected at run time; lengths checked above.
            unsafe {
                match heads - h {
                    1 => avx2::attend(&q[..d], k, k_stride, v, v_stride, len, cold, scale, &mut scores[..padded], &mut o[..dv]),
                    2 | 3 => avx2::attend_heads::<E, 2>(&q[..2 * d], k, k_stride, v, v_stride, len, cold, scale, scores, &mut o[..2 * dv]),
                    _ => avx2::attend_heads::<E, 4>(&q[..4 * d], k, k_stride, v, v_stride, len, cold, scale, scores, &mut o[..4 * dv]),
                }
            }
            h += match heads - h {
                1 => 1,
                2 | 3 => 2,
                _ => 4,
            };
        }
        return;
    }
    for (q, o) in qs.chunks_exact(d).zip(out.chunks_exact_mut(dv)) {
        attend_head(q, k, k_stride, v, v_stride, len, cold, scale, scores, o);
    }
}

/// The tree both versions fold eight lanes with: `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`
/// (what two rounds of `vhaddps` and a cross-half add compute).
#[inline(always)]
fn fold(l: &[f32; L]) -> f32 {
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

mod portable {
    use super::*;
    use crate::compute::cpu::exp::exp_nonpositive;

    /// Position `s`'s score: lane `i` sums `q[d] k[d]` over `d ≡ i (mod 8)` with fused
    /// multiply-adds, the lanes are folded, leftover dimensions (past the last multiple of
    /// eight) are added one by one, then the product with `scale`.
    #[inline(always)]
    fn score<E: CacheValue>(q: &[f32], k: &[E], scale: f32) -> f32 {
        let mut lanes = [0.0f32; L];
        let whole = q.len() / L * L;
        for (qc, kc) in q[..whole].chunks_exact(L).zip(k[..whole].chunks_exact(L)) {
            for i in 0..L {
                lanes[i] = qc[i].mul_add(kc[i].to_f32(), lanes[i]);
            }
        }
        let mut s = fold(&lanes);
        for d in whole..q.len() {
            s = q[d].mul_add(k[d].to_f32(), s);
        }
        s * scale
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend<E: CacheValue>(q: &[f32], k: &[E], k_stride: usize, v: &[E], v_stride: usize, len: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        let (d, dv) = (q.len(), out.len());
        for s in 0..len {
            scores[s] = score(q, &k[s * k_stride..s * k_stride + d], scale);
        }
        let max = scores[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // running sums by position modulo 8, folded: the vector version's order
        let mut sums = [0.0f32; L];
        for s in 0..len {
            scores[s] = exp_nonpositive(scores[s] - max);
            sums[s % L] += scores[s];
        }
        // even and odd positions summed apart, then added
        let mut odd = vec![0.0f32; dv];
        out.fill(0.0);
        for s in 0..len {
            let (e, vs) = (scores[s], &v[s * v_stride..s * v_stride + dv]);
            let acc = if s % 2 == 0 { &mut *out } else { &mut odd[..] };
            for (o, &x) in acc.iter_mut().zip(vs) {
                *o = e.mul_add(x.to_f32(), *o);
            }
        }
        for (o, x) in out.iter_mut().zip(&odd) {
            *o += x;
        }
        let inv = 1.0 / fold(&sums);
        for o in out.iter_mut() {
            *o *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use crate::compute::cpu::exp::avx2::exp8;
    use std::arch::x86_64::*;

    /// Rows ahead of the one being read that are asked for: on 16 sequences' caches in
    /// memory (100–400 positions, four key-value heads of 64), the attention of a layer
    /// took 30–40% less time with the keys and values asked for ahead than without
    /// (4 rows ahead: less gain; 8 to 32: the same within the noise; every other line
    /// only: most of the gain lost). Where a cache is already in the processor's caches
    /// the requests cost 20–55% (the first rounds of `benches/attention.rs` with every
    /// position marked cold): so only positions cached before the current pass are asked
    /// for, which a model larger than the last-level cache has evicted since.
    const PREFETCH_ROWS: usize = 16;

    /// Asks for rows `rows` of a cache run (`stride` values apart, `width` values each)
    /// to be brought in (`HINT`), a line at a time. The rows must lie in the run.
    #[inline(always)]
    unsafe fn prefetch_rows<E, const HINT: i32>(base: *const E, stride: usize, width: usize, rows: std::ops::Range<usize>) {
        for r in rows {
            let row = base.add(r * stride) as *const i8;
            for b in (0..width * std::mem::size_of::<E>()).step_by(64) {
                _mm_prefetch::<HINT>(row.add(b));
            }
        }
    }

    /// [`fold`] of each of eight vectors at once: lane `p` of the result is `fold(v[p])`.
    #[inline(always)]
    unsafe fn fold8(v: [__m256; L]) -> __m256 {
        let a = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
        let b = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
        // a = [fold-halves of v0..v3: low lanes (0..4) | high lanes (4..8)], b likewise
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(a, b), _mm256_permute2f128_ps::<0x31>(a, b))
    }

    /// The eight lane sums (see `portable::score`) of positions `s0..s0 + m` (`m ≤ 8`;
    /// the rest stay zero), the positions' chains interleaved so the multiply-adds of one
    /// do not wait on each other.
    #[inline(always)]
    unsafe fn lanes8<E: CacheValue>(q: &[f32], k: *const E, k_stride: usize, m: usize) -> [__m256; L] {
        let mut acc = [_mm256_setzero_ps(); L];
        if m == L {
            // the usual case, with a constant trip count the accumulators stay in registers
            for c in (0..q.len()).step_by(L) {
                let qc = _mm256_loadu_ps(q.as_ptr().add(c));
                for (p, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qc, E::load8(k.add(p * k_stride + c)), *a);
                }
            }
        } else {
            for (p, a) in acc.iter_mut().enumerate().take(m) {
                for c in (0..q.len()).step_by(L) {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(c)), E::load8(k.add(p * k_stride + c)), *a);
                }
            }
        }
        acc
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend<E: CacheValue>(q: &[f32], k: &[E], k_stride: usize, v: &[E], v_stride: usize, len: usize, cold: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        if cold > 0 {
            attend_ahead::<E, true>(q, k, k_stride, v, v_stride, len, cold, scale, scores, out)
        } else {
            attend_ahead::<E, false>(q, k, k_stride, v, v_stride, len, cold, scale, scores, out)
        }
    }

    /// [`attend`] with (`AHEAD`) or without the requests for rows ahead: apart, so that
    /// attending over a cache just written runs the code it ran before they existed.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend_ahead<E: CacheValue, const AHEAD: bool>(q: &[f32], k: &[E], k_stride: usize, v: &[E], v_stride: usize, len: usize, cold: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        let (kp, vp, sp) = (k.as_ptr(), v.as_ptr(), scores.as_mut_ptr());
        let sc = _mm256_set1_ps(scale);
        let mut max = _mm256_set1_ps(f32::NEG_INFINITY);
        let dv = out.len();
        if AHEAD {
            prefetch_rows::<E, _MM_HINT_T0>(kp, k_stride, q.len(), 0..PREFETCH_ROWS.min(cold));
        }
        let mut s0 = 0;
        while s0 < len {
            // eight positions (fewer at the end: the rest score -inf and weigh 0)
            let m = (len - s0).min(L);
            if AHEAD {
                prefetch_rows::<E, _MM_HINT_T0>(kp, k_stride, q.len(), (s0 + PREFETCH_ROWS).min(cold)..(s0 + PREFETCH_ROWS + L).min(cold));
                prefetch_rows::<E, _MM_HINT_T1>(vp, v_stride, dv, s0.min(cold)..(s0 + m).min(cold));
            }
            let mut s = _mm256_mul_ps(fold8(lanes8(q, kp.add(s0 * k_stride), k_stride, m)), sc);
            if m < L {
                let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(m as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                s = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), s, _mm256_castsi256_ps(keep));
            }
            _mm256_storeu_ps(sp.add(s0), s);
            max = _mm256_max_ps(max, s);
            s0 += L;
        }
        let mut lanes_max = [0.0f32; L];
        _mm256_storeu_ps(lanes_max.as_mut_ptr(), max);
        let sums = exponentials(sp, len, lanes_max.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let op = out.as_mut_ptr();
        // 32 values at a time, even and odd positions summed apart (eight independent
        // chains of multiply-adds), the two sums added at the end
        let mut c = 0;
        while c + 4 * L <= dv {
            let (mut even, mut odd) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
            let mut s = 0;
            while s < len {
                if AHEAD && c == 0 {
                    prefetch_rows::<E, _MM_HINT_T0>(vp, v_stride, dv, (s + PREFETCH_ROWS).min(cold)..(s + PREFETCH_ROWS + 2).min(cold));
                }
                let (e, row) = (_mm256_set1_ps(*sp.add(s)), vp.add(s * v_stride + c));
                for (j, a) in even.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(e, E::load8(row.add(j * L)), *a);
                }
                if s + 1 < len {
                    let (e, row) = (_mm256_set1_ps(*sp.add(s + 1)), vp.add((s + 1) * v_stride + c));
                    for (j, a) in odd.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(e, E::load8(row.add(j * L)), *a);
                    }
                }
                s += 2;
            }
            for j in 0..4 {
                _mm256_storeu_ps(op.add(c + j * L), _mm256_add_ps(even[j], odd[j]));
            }
            c += 4 * L;
        }
        while c < dv {
            let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for s in 0..len {
                let x = _mm256_fmadd_ps(_mm256_set1_ps(*sp.add(s)), E::load8(vp.add(s * v_stride + c)), if s % 2 == 0 { even } else { odd });
                if s % 2 == 0 {
                    even = x;
                } else {
                    odd = x;
                }
            }
            _mm256_storeu_ps(op.add(c), _mm256_add_ps(even, odd));
            c += L;
        }
        normalize(op, dv, sums);
    }

    /// Scores `sp[..len]` (from `len` on: anything but NaN) replaced by `e^(score - max)`,
    /// zero past `len` up to the next multiple of eight; returns the running sums of the
    /// eight lanes (position modulo 8).
    #[inline(always)]
    unsafe fn exponentials(sp: *mut f32, len: usize, max: f32) -> __m256 {
        let max = _mm256_set1_ps(max);
        let mut sums = _mm256_setzero_ps();
        for s0 in (0..len).step_by(L) {
            // padding lanes hold -inf: exp8 gives a number under 2^-125 there, so mask it
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sp.add(s0)), max));
            let m = (len - s0).min(L) as i32;
            let keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(m), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
            let e = _mm256_and_ps(e, keep);
            _mm256_storeu_ps(sp.add(s0), e);
            sums = _mm256_add_ps(sums, e);
        }
        sums
    }

    /// `out[..dv]` divided by the folded sum of the exponentials' lanes.
    #[inline(always)]
    unsafe fn normalize(op: *mut f32, dv: usize, sums: __m256) {
        let mut sum_lanes = [0.0f32; L];
        _mm256_storeu_ps(sum_lanes.as_mut_ptr(), sums);
        let inv = _mm256_set1_ps(1.0 / fold(&sum_lanes));
        for c in (0..dv).step_by(L) {
            _mm256_storeu_ps(op.add(c), _mm256_mul_ps(_mm256_loadu_ps(op.add(c)), inv));
        }
    }

    /// [`attend`] for `H` heads (2 or 4) over the same keys and values: queries `qs` one
    /// after another, results into `out` likewise; `scores` holds at least `H` times the
    /// positions rounded up to eight. Each head's floats go through [`attend`]'s
    /// operations in its order: a position's lanes are multiply-added chunk by chunk and
    /// folded by [`fold8`] (here eight (head, position) pairs at a time), the values summed
    /// even and odd positions apart. Keys and values are loaded once for the `H` heads.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn attend_heads<E: CacheValue, const H: usize>(qs: &[f32], k: &[E], k_stride: usize, v: &[E], v_stride: usize, len: usize, cold: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        if cold > 0 {
            attend_heads_ahead::<E, H, true>(qs, k, k_stride, v, v_stride, len, cold, scale, scores, out)
        } else {
            attend_heads_ahead::<E, H, false>(qs, k, k_stride, v, v_stride, len, cold, scale, scores, out)
        }
    }

    /// [`attend_heads`] with (`AHEAD`) or without the requests for rows ahead.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn attend_heads_ahead<E: CacheValue, const H: usize, const AHEAD: bool>(qs: &[f32], k: &[E], k_stride: usize, v: &[E], v_stride: usize, len: usize, cold: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        let (d, dv, padded) = (qs.len() / H, out.len() / H, len.next_multiple_of(L));
        // positions scored together: H × P = 8 (head, position) lanes
        let p = L / H;
        let (kp, vp, qp) = (k.as_ptr(), v.as_ptr(), qs.as_ptr());
        let sp: [*mut f32; H] = std::array::from_fn(|h| scores.as_mut_ptr().add(h * padded));
        let sc = _mm256_set1_ps(scale);
        if AHEAD {
            prefetch_rows::<E, _MM_HINT_T0>(kp, k_stride, d, 0..PREFETCH_ROWS.min(cold));
        }
        let mut s0 = 0;
        while s0 < len {
            let m = (len - s0).min(p);
            if AHEAD {
                prefetch_rows::<E, _MM_HINT_T0>(kp, k_stride, d, (s0 + PREFETCH_ROWS).min(cold)..(s0 + PREFETCH_ROWS + p).min(cold));
                prefetch_rows::<E, _MM_HINT_T1>(vp, v_stride, dv, s0.min(cold)..(s0 + m).min(cold));
            }
            let mut acc = [_mm256_setzero_ps(); L];
            // a constant trip count keeps the accumulators in registers; the tail (fewer
            // than p positions) takes the slow road
            let positions = |acc: &mut [__m256; L], m: usize| {
                for c in (0..d).step_by(L) {
                    // a loop, not `from_fn`: a closure does not inherit the CPU features
                    let mut q = [_mm256_setzero_ps(); H];
                    for (h, qh) in q.iter_mut().enumerate() {
                        *qh = _mm256_loadu_ps(qp.add(h * d + c));
                    }
                    for j in 0..m {
                        let kv = E::load8(kp.add((s0 + j) * k_stride + c));
                        for h in 0..H {
                            acc[h * p + j] = _mm256_fmadd_ps(q[h], kv, acc[h * p + j]);
                        }
                    }
                }
            };
            if m == p {
                positions(&mut acc, L / H);
            } else {
                positions(&mut acc, m);
            }
            let mut lanes = [0.0f32; L];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(fold8(acc), sc));
            for h in 0..H {
                for j in 0..m {
                    *sp[h].add(s0 + j) = lanes[h * p + j];
                }
            }
            s0 += p;
        }
        let mut sums = [_mm256_setzero_ps(); H];
        for h in 0..H {
            let row = std::slice::from_raw_parts_mut(sp[h], padded);
            row[len..].fill(f32::NEG_INFINITY);
            sums[h] = exponentials(sp[h], len, row[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max));
        }
        let op = out.as_mut_ptr();
        for c in (0..dv).step_by(L) {
            let (mut even, mut odd) = ([_mm256_setzero_ps(); H], [_mm256_setzero_ps(); H]);
            let mut s = 0;
            while s < len {
                if AHEAD && c == 0 {
                    prefetch_rows::<E, _MM_HINT_T0>(vp, v_stride, dv, (s + PREFETCH_ROWS).min(cold)..(s + PREFETCH_ROWS + 2).min(cold));
                }
                let x = E::load8(vp.add(s * v_stride + c));
                for h in 0..H {
                    even[h] = _mm256_fmadd_ps(_mm256_set1_ps(*sp[h].add(s)), x, even[h]);
                }
                if s + 1 < len {
                    let x = E::load8(vp.add((s + 1) * v_stride + c));
                    for h in 0..H {
                        odd[h] = _mm256_fmadd_ps(_mm256_set1_ps(*sp[h].add(s + 1)), x, odd[h]);
                    }
                }
                s += 2;
            }
            for h in 0..H {
                _mm256_storeu_ps(op.add(h * dv + c), _mm256_add_ps(even[h], odd[h]));
            }
        }
        for (h, &sum) in sums.iter().enumerate() {
            normalize(op.add(h * dv), dv, sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::compute::cpu::test_values as data;

    /// The textbook formula in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(q: &[f32], k: &[f32], ks: usize, v: &[f32], vs: usize, len: usize, scale: f32, dv: usize) -> Vec<f64> {
        let sc: Vec<f64> = (0..len).map(|s| q.iter().zip(&k[s * ks..]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64).collect();
        let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..dv).map(|d| (0..len).map(|s| e[s] * v[s * vs + d] as f64).sum::<f64>() / z).collect()
    }

    #[test]
    fn matches_the_formula_on_odd_sizes() {
        // head sizes with and without a vector tail, lengths around the 8-position groups
        for (d, dv) in [(32usize, 32usize), (64, 128), (12, 20), (8, 8), (3, 5)] {
            for len in [1usize, 2, 7, 8, 9, 33, 130] {
                let (ks, vs) = (d * 2 + 3, dv + 1);
                let (q, k, v) = (data(d, 1), data(len * ks, 2), data(len * vs, 3));
                // a large scale makes some exponentials underflow
                for scale in [0.18f32, 40.0] {
                    let mut out = vec![f32::NAN; dv];
                    attend_head(&q, &k, ks, &v, vs, len, len, scale, &mut Vec::new(), &mut out);
                    let want = naive(&q, &k, ks, &v, vs, len, scale, dv);
                    for (o, w) in out.iter().zip(&want) {
                        assert!((*o as f64 - w).abs() < 1e-5, "d {d} dv {dv} len {len} scale {scale}: {o} vs {w}");
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_and_portable_versions_agree_bit_for_bit() {
        if !crate::quant::has_avx2() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        for (d, dv) in [(32usize, 32usize), (64, 128), (8, 16)] {
            for len in [1usize, 5, 8, 17, 258] {
                let (ks, vs) = (d * 4, dv * 4);
                let (q, k, v) = (data(d, 4), data(len * ks, 5), data(len * vs, 6));
                let (mut a, mut b) = (vec![0.0f32; dv], vec![0.0f32; dv]);
                let (mut sa, mut sb) = (vec![0.0; len.next_multiple_of(L)], vec![0.0; len.next_multiple_of(L)]);
                // SAFETY: AVX2 and FMA detected above.
                unsafe { avx2::attend(&q, &k, ks, &v, vs, len, len, 0.2, &mut sa, &mut a) };
                portable::attend(&q, &k, ks, &v, vs, len, 0.2, &mut sb, &mut b);
                assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "d {d} dv {dv} len {len}");
            }
        }
    }

    #[test]
    fn a_group_of_heads_gets_each_head_s_bits() {
        // group sizes that take every path (4s, 2s, a last single head), head sizes with
        // and without a vector tail, lengths around the position tiles, underflowing
        // exponentials at the large scale, both cache types
        for heads in [1usize, 2, 3, 4, 5, 7, 8] {
            for (d, dv) in [(64usize, 64usize), (32, 32), (8, 24), (128, 128), (12, 20)] {
                for len in [1usize, 2, 3, 5, 8, 9, 33, 130] {
                    let (ks, vs) = (d * 2 + 8, dv + 16);
                    let qs = data(heads * d, 21);
                    let (k, v) = (data(len * ks, 22), data(len * vs, 23));
                    let (k16, v16): (Vec<half::f16>, Vec<half::f16>) = (k.iter().map(|&x| half::f16::from_f32(x)).collect(), v.iter().map(|&x| half::f16::from_f32(x)).collect());
                    for scale in [0.18f32, 40.0] {
                        let mut got = vec![f32::NAN; heads * dv];
                        attend_group(&qs, heads, &k, ks, &v, vs, len, len, scale, &mut Vec::new(), &mut got);
                        let mut got16 = vec![f32::NAN; heads * dv];
                        attend_group(&qs, heads, &k16, ks, &v16, vs, len, len / 2, scale, &mut Vec::new(), &mut got16);
                        for h in 0..heads {
                            let (mut want, mut want16) = (vec![0.0f32; dv], vec![0.0f32; dv]);
                            attend_head(&qs[h * d..(h + 1) * d], &k, ks, &v, vs, len, 0, scale, &mut Vec::new(), &mut want);
                            attend_head(&qs[h * d..(h + 1) * d], &k16, ks, &v16, vs, len, 0, scale, &mut Vec::new(), &mut want16);
                            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                            let ctx = format!("heads {heads} d {d} dv {dv} len {len} scale {scale} head {h}");
                            assert_eq!(bits(&got[h * dv..(h + 1) * dv]), bits(&want), "{ctx}");
                            assert_eq!(bits(&got16[h * dv..(h + 1) * dv]), bits(&want16), "f16, {ctx}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_f16_cache_gives_the_bits_of_an_f32_cache_of_the_same_values() {
        for (d, dv) in [(32usize, 32usize), (64, 128), (12, 20)] {
            for len in [1usize, 9, 130] {
                let (ks, vs) = (d * 2, dv * 2);
                let q = data(d, 11);
                let (k16, v16): (Vec<half::f16>, Vec<half::f16>) = (data(len * ks, 12).into_iter().map(half::f16::from_f32).collect(), data(len * vs, 13).into_iter().map(half::f16::from_f32).collect());
                let (k32, v32): (Vec<f32>, Vec<f32>) = (k16.iter().map(|x| x.to_f32()).collect(), v16.iter().map(|x| x.to_f32()).collect());
                let (mut a, mut b) = (vec![0.0f32; dv], vec![0.0f32; dv]);
                attend_head(&q, &k16, ks, &v16, vs, len, len, 0.2, &mut Vec::new(), &mut a);
                attend_head(&q, &k32, ks, &v32, vs, len, len, 0.2, &mut Vec::new(), &mut b);
                assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), b.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "d {d} dv {dv} len {len}");
                // and the portable code reads f16 as the vector code does
                let mut c = vec![0.0f32; dv];
                portable::attend(&q, &k16, ks, &v16, vs, len, 0.2, &mut vec![0.0; len.next_multiple_of(L)], &mut c);
                assert_eq!(a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "portable, d {d} dv {dv} len {len}");
            }
        }
    }
}
