//! Q6_K matrices on the GPU (`shaders/gemv_q6_k.wgsl`, run through
//! [`super::matrix::GpuMatrix`]). GGUF's Q6_K block is 210 bytes, so blocks are repacked
//! at upload into 212-byte slots ([`pad_blocks`], round trip tested); activations are
//! quantized in the kernel to Q8_K as the CPU backend does, and the test compares with
//! the CPU backend's matmul.

const BLOCK: usize = 210;
const SLOT: usize = 212;

/// The blocks of `data` in 212-byte slots, two zero bytes after each.
pub fn pad_blocks(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / BLOCK * SLOT);
    for b in data.chunks_exact(BLOCK) {
        out.extend_from_slice(b);
        out.extend_from_slice(&[0, 0]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::matrix::GpuMatrix;
    use super::super::tests::{gpu_or_skip, random_matrix, values};
    use super::*;
    use crate::compute::cpu;
    use crate::quant::{dequantize, GgmlType};

    #[test]
    fn padding_keeps_every_block() {
        let w = random_matrix(GgmlType::Q6_K, 2, 512, 3, &[(208, 1e-3)]);
        let p = pad_blocks(&w.data);
        assert_eq!(p.len(), 4 * SLOT);
        let back: Vec<u8> = p.chunks_exact(SLOT).flat_map(|s| s[..BLOCK].to_vec()).collect();
        assert_eq!(back, w.data.to_vec());
    }

    #[test]
    fn gpu_q6_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (rows, cols, n) in [(3, 256, 1), (37, 768, 3), (70_001, 256, 1)] {
            let w = random_matrix(GgmlType::Q6_K, rows, cols, rows as u64 + 11, &[(208, 1e-3)]);
            let x = values(n * cols, cols as u64);
            let got = GpuMatrix::new(&gpu, &w).unwrap().run(&gpu, &x).unwrap();
            let want = cpu::matmul(&w, &x);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                dequantize(GgmlType::Q6_K, &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()], &mut row);
                for t in 0..n {
                    let mag: f64 = row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let (g, c) = (got[t * rows + r] as f64, want[t * rows + r] as f64);
                    assert!((g - c).abs() <= 1e-5 * mag + 1e-6, "{rows}x{cols} n={n} row {r} token {t}: gpu {g} vs cpu {c} (terms {mag})");
                }
            }
        }
    }
}
