//! Q5_K matrices on the GPU: the Q4_K kernel (`shaders/gemv_q4_k.wgsl`) compiled with its
//! `FIVE_BITS` switch on, run through [`super::matrix::GpuMatrix`]. Q5_K blocks are 176
//! bytes (a multiple of 16), so the GGUF bytes are uploaded as they are and read as
//! words. Activations are quantized on the device exactly as the CPU backend does; the
//! test compares with the CPU backend's matmul.

use std::sync::OnceLock;

/// The Q4_K kernel source with the fifth bits switched on.
pub(super) fn source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    super::kernel::with_switch(&SOURCE, include_str!("../../../shaders/gemv_q4_k.wgsl"), "FIVE_BITS")
}

#[cfg(test)]
mod tests {
    use super::super::matrix::GpuMatrix;
    use super::super::tests::{gpu_or_skip, random_matrix, values};
    use crate::quant::{dequantize, GgmlType};

    #[test]
    fn gpu_q5_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 8, 16 and 32 lanes per row (4, 12 and 40 items of 64 weights)
        for (rows, cols, n) in [(3, 256, 1), (37, 768, 3), (70_001, 256, 1), (5, 2560, 2)] {
            let w = random_matrix(GgmlType::Q5_K, rows, cols, rows as u64 + 5, &[(0, 2e-3), (2, 1e-3)]);
            let x = values(n * cols, cols as u64);
            let got = GpuMatrix::new(&gpu, &w).unwrap().run(&gpu, &x).unwrap();
            let cpu = crate::compute::cpu::matmul(&w, &x);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                dequantize(GgmlType::Q5_K, &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()], &mut row);
                for t in 0..n {
                    let terms = row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| *a as f64 * *b as f64);
                    let mag = terms.fold(0.0, |m, v: f64| m + v.abs());
                    let (g, want) = (got[t * rows + r] as f64, cpu[t * rows + r] as f64);
                    assert!((g - want).abs() <= 1e-5 * mag + 1e-6, "{rows}x{cols} n={n} row {r} token {t}: gpu {g} vs {want} (terms {mag})");
                }
            }
        }
    }
}
