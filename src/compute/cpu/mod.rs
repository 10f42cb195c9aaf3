//! CPU kernels: quantized matrix multiplication on all cores, normalization, activation
//! functions and softmax. Plain f32 everywhere except inside the fused dot products.

use rayon::prelude::*;

mod attend;
pub use attend::{attend_group, attend_head, CacheValue};
mod exp;
use exp::exp_nonpositive;
mod latent;
pub use latent::{latent_mix, latent_scores};

use super::QMatrix;
use crate::quant::{dot_packed_into, dot_rows_into, ActKind, Activations, OutGrid, GROUP_ROWS};

/// Below this many weight bytes a matmul runs on the calling thread.
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// `y = x · Wᵀ` for `n = x.len() / w.cols` tokens: returns `n × w.rows` values, row-major.
pub fn matmul(w: &QMatrix, x: &[f32]) -> Vec<f32> {
    let [y] = matmul_many([w], x);
    y
}

/// [`matmul`] of one input with several matrices of the same width (the query, key and
/// value projections; an expert's gate and up): the input is quantized once per
/// activation form, and the rows of all the matrices share one parallel loop.
pub fn matmul_many<const K: usize>(ws: [&QMatrix; K], x: &[f32]) -> [Vec<f32>; K] {
    let cols = ws.first().map_or(1, |w| w.cols);
    assert!(ws.iter().all(|w| w.cols == cols), "matmul_many: matrices of different widths");
    assert!(x.len().is_multiple_of(cols), "matmul: input length {} is not a multiple of {cols}", x.len());
    let n = x.len() / cols;
    let kinds = ws.map(|w| ActKind::for_weights(w.ty));
    let mut acts: Vec<(ActKind, Activations)> = Vec::new();
    for k in kinds {
        if !acts.iter().any(|(a, _)| *a == k) {
            acts.push((k, Activations::new(k, x, cols)));
        }
    }
    let acts_of = |k: ActKind| &acts.iter().find(|(a, _)| *a == k).expect("prepared above").1;
    let mut ys = ws.map(|w| vec![0.0f32; n * w.rows]);
    let bytes: usize = ws.iter().map(|w| w.data.len()).sum();
    let small = bytes < PARALLEL_MIN_BYTES;
    // ~4 chunks per thread and matrix balances load without much scheduling overhead
    let parts = if small { 1 } else { rayon::current_num_threads().max(1) * 4 };
    let mut jobs = Vec::new();
    for (i, y) in ys.iter_mut().enumerate() {
        let mut chunk_rows = ws[i].rows.div_ceil(parts).max(1);
        if ws[i].packed.is_some() {
            // a packed matrix is cut on its groups of rows
            chunk_rows = chunk_rows.next_multiple_of(GROUP_ROWS);
        }
        for (c, out) in OutGrid::token_major_chunks(y, ws[i].rows, n, chunk_rows).into_iter().enumerate() {
            jobs.push((i, c * chunk_rows, out));
        }
    }
    let run = |(i, r0, out): &mut (usize, usize, OutGrid)| {
        let (w, rb) = (ws[*i], ws[*i].row_bytes());
        if let Some(p) = &w.packed {
            return dot_packed_into(p, *r0, acts_of(kinds[*i]), out);
        }
        dot_rows_into(w.ty, &w.data[*r0 * rb..(*r0 + out.rows()) * rb], rb, acts_of(kinds[*i]), out);
    };
    if small || jobs.len() < 2 {
        jobs.iter_mut().for_each(run);
    } else {
        jobs.par_iter_mut().for_each(run);
    }
    drop(jobs);
    ys
}

/// RMS normalization of each `w.len()`-long row of `x`, in place, scaled by `w`. The sum
/// of squares is [`dot`]'s (eight running sums, then the tail), an order the GPU kernel
/// reproduces, so both backends give the same bits where it matters most: a quantized
/// embedding's values sit exactly on the next matrix's activation-rounding ties.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(w.len()) {
        let ss: f32 = dot(row, row) / row.len() as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// SiLU (`x · sigmoid(x)`), from `e^(-|x|)` so the exponential never overflows:
/// `x / (1 + e^-x)` for `x ≥ 0`, `x·eˣ / (1 + eˣ)` below (below -87, where the exponential
/// stops at e⁻⁸⁷, about `x·e⁻⁸⁷`: as negligible as the true value). [`swiglu`]'s vector code does the
/// same operations, so a value gets the same bits either way.
#[inline]
pub fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let num = if x >= 0.0 { x } else { x * e };
    num / (1.0 + e)
}

/// Logistic sigmoid.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`, element-wise (SwiGLU): [`silu`] eight values at a time where
/// the CPU has AVX2 (a libm `expf` call per value cost a tenth of a batched decode step).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up of different lengths");
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // advanced by the x86 kernels only
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() {
        // SAFETY: the CPU features were detected at run time; lengths checked above.
        done = unsafe { swiglu_avx2(gate, up) };
    }
    for (g, u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = silu(*g) * u;
    }
}

/// [`swiglu`] over the whole multiples of eight; returns how many values it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(gate: &mut [f32], up: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let whole = gate.len() / 8 * 8;
    let (gp, up) = (gate.as_mut_ptr(), up.as_ptr());
    let (sign, one) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(1.0));
    for i in (0..whole).step_by(8) {
        let x = _mm256_loadu_ps(gp.add(i));
        let e = exp::avx2::exp8(_mm256_or_ps(x, sign));
        let non_negative = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_setzero_ps());
        let num = _mm256_blendv_ps(_mm256_mul_ps(x, e), x, non_negative);
        let silu = _mm256_div_ps(num, _mm256_add_ps(one, e));
        _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(up.add(i))));
    }
    whole
}

/// Softmax in place.
#[inline]
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `acc += x`, element-wise.
pub fn add_assign(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

/// Dot product of two f32 slices. Eight running sums, so the order of additions (and
/// the result) is the same whatever vector width the CPU offers.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() {
        // SAFETY: the CPU features were detected at run time.
        return unsafe { dot_avx2(a, b) };
    }
    dot_body(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_body(a, b)
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let n = a.len() / 8 * 8;
    for (x, y) in a[..n].chunks_exact(8).zip(b[..n].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += a · x`, element-wise (the same result at any vector width).
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::quant::has_avx2() {
        // SAFETY: the CPU features were detected at run time.
        return unsafe { axpy_avx2(y, a, x) };
    }
    axpy_body(y, a, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_body(y, a, x)
}

#[inline(always)]
fn axpy_body(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Deterministic values in [-1, 1] (an xorshift) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;

    #[test]
    fn matmul_f32_matches_naive() {
        let (rows, cols, n) = (37, 19, 3);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.2).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = QMatrix::new(GgmlType::F32, rows, cols, bytes.into());
        let y = matmul(&m, &x);
        for t in 0..n {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                assert!((y[t * rows + r] - want).abs() < 1e-5, "t{t} r{r}");
            }
        }
    }

    #[test]
    fn silu_is_accurate_and_swiglu_vectors_equal_it() {
        let xs: Vec<f32> = (0..40_001).map(|i| (i as f32 - 20_000.0) * 0.004_7).chain([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, 200.0, -200.0, f32::INFINITY]).collect();
        for &x in &xs {
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            let got = silu(x) as f64;
            if x < -87.0 {
                // the exponential stops at e^-87 there: about x·e^-87, negligible all the same
                assert!(got.abs() < 1e-35 && got <= 0.0, "silu({x}) = {got}");
                continue;
            }
            if x.is_infinite() {
                assert_eq!(got, want, "silu({x})");
                continue;
            }
            assert!((got - want).abs() <= 4.0 * f32::EPSILON as f64 * want.abs().max(f32::MIN_POSITIVE as f64), "silu({x}) = {got}, want {want}");
        }
        // lengths with and without a tail past the last eight
        for len in [xs.len(), 8, 13, 3] {
            let up: Vec<f32> = (0..len).map(|i| 1.0 - i as f32 * 0.001).collect();
            let mut g = xs[..len].to_vec();
            swiglu(&mut g, &up);
            for i in 0..len {
                assert_eq!(g[i].to_bits(), (silu(xs[i]) * up[i]).to_bits(), "swiglu at {i} (x = {})", xs[i]);
            }
        }
    }
}
