//! CPU kernels: quantized matrix multiplication on all cores, normalization, activation
//! functions and softmax. Plain f32 everywhere except inside the fused dot products.

use rayon::prelude::*;

mod attend;
pub use attend::attend_head;

use super::QMatrix;
use crate::quant::{dot_rows_into, ActKind, Activations, OutGrid};

/// Below this many weight bytes a matmul runs on the calling thread.
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// `y = x · Wᵀ` for `n = x.len() / w.cols` tokens: returns `n × w.rows` values, row-major.
pub fn matmul(w: &QMatrix, x: &[f32]) -> Vec<f32> {
    assert!(x.len().is_multiple_of(w.cols), "matmul: input length {} is not a multiple of {}", x.len(), w.cols);
    let n = x.len() / w.cols;
    let acts = Activations::new(ActKind::for_weights(w.ty), x, w.cols);
    let rb = w.row_bytes();
    let mut y = vec![0.0f32; n * w.rows];
    let small = w.data.len() < PARALLEL_MIN_BYTES || w.rows < 2;
    // ~4 chunks per thread balances load without much scheduling overhead.
    let chunk_rows = if small { w.rows } else { w.rows.div_ceil(rayon::current_num_threads().max(1) * 4).max(1) };
    let mut windows = OutGrid::token_major_chunks(&mut y, w.rows, n, chunk_rows.max(1));
    let run = |(i, out): (usize, &mut OutGrid)| {
        let r0 = i * chunk_rows;
        dot_rows_into(w.ty, &w.data[r0 * rb..(r0 + out.rows()) * rb], rb, &acts, out);
    };
    if small {
        windows.iter_mut().enumerate().for_each(run);
    } else {
        windows.par_iter_mut().enumerate().for_each(run);
    }
    drop(windows);
    y
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

/// SiLU (`x · sigmoid(x)`).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Logistic sigmoid.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `gate = silu(gate) * up`, element-wise (SwiGLU).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
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
        let m = QMatrix { ty: GgmlType::F32, rows, cols, data: bytes.into() };
        let y = matmul(&m, &x);
        for t in 0..n {
            for r in 0..rows {
                let want: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                assert!((y[t * rows + r] - want).abs() < 1e-5, "t{t} r{r}");
            }
        }
    }
}
