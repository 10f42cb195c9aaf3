//! Q4_K matrices on the GPU (`shaders/gemv_q4_k.wgsl`, run through
//! [`super::matrix::GpuMatrix`]). Q4_K blocks are 144 bytes (a multiple of 4), so the
//! GGUF bytes are uploaded as they are and read as words. Activations are quantized in
//! the kernel to Q8_K exactly as the CPU backend does; the test compares with the CPU
//! backend's matmul.

#[cfg(test)]
mod tests {
    use super::super::matrix::GpuMatrix;
    use super::super::tests::{gpu_or_skip, random_matrix, values};
    use crate::quant::{dequantize, GgmlType};

    #[test]
    fn gpu_q4_k_and_q5_k_gemv_match_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 8, 16 and 32 lanes per row (4, 12 and 40 items of 64 weights); Q5_K is the same
        // kernel compiled with its fifth bits
        let shapes = [(3, 256, 1), (37, 768, 3), (70_001, 256, 1), (5, 2560, 2)];
        for (ty, (rows, cols, n)) in [GgmlType::Q4_K, GgmlType::Q5_K].into_iter().flat_map(|ty| shapes.map(|s| (ty, s))) {
            let w = random_matrix(ty, rows, cols, rows as u64 + 5, &[(0, 2e-3), (2, 1e-3)]);
            let x = values(n * cols, cols as u64);
            let got = GpuMatrix::new(&gpu, &w).unwrap().run(&gpu, &x).unwrap();
            let cpu = crate::compute::cpu::matmul(&w, &x);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                dequantize(ty, &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()], &mut row);
                for t in 0..n {
                    let terms = row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| *a as f64 * *b as f64);
                    let mag = terms.fold(0.0, |m, v: f64| m + v.abs());
                    let (g, want) = (got[t * rows + r] as f64, cpu[t * rows + r] as f64);
                    assert!((g - want).abs() <= 1e-5 * mag + 1e-6, "{ty} {rows}x{cols} n={n} row {r} token {t}: gpu {g} vs {want} (terms {mag})");
                }
            }
        }
    }
}
