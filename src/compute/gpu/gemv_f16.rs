//! F16 and BF16 matrices on the GPU (`shaders/gemv_f16.wgsl`, run through
//! [`super::matrix::GpuMatrix`]): the GGUF bytes are uploaded as they are and read two
//! values to a word, widened exactly; activations stay f32, as on the CPU. One source
//! serves both formats: the bf16 kernel is compiled with its `BF16` constant set.

use std::sync::OnceLock;

/// The kernel source with the bf16 widening switched on.
pub(super) fn bf16_source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    super::kernel::with_switch(&SOURCE, include_str!("../../../shaders/gemv_f16.wgsl"), "BF16")
}

#[cfg(test)]
mod tests {
    use super::super::matrix::GpuMatrix;
    use super::super::tests::{gpu_or_skip, values};
    use crate::compute::{cpu, QMatrix};
    use crate::quant::GgmlType;

    #[test]
    fn gpu_f16_and_bf16_gemv_match_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        for ty in [GgmlType::F16, GgmlType::BF16] {
            // 8, 16 and 32 lanes per row; rows not a multiple of a workgroup's
            for (rows, cols, n) in [(3, 2, 1), (37, 30, 3), (70_001, 16, 1), (5, 1000, 2)] {
                let bytes: Vec<u8> = values(rows * cols, rows as u64)
                    .iter()
                    .flat_map(|&v| match ty {
                        GgmlType::F16 => half::f16::from_f32(v).to_le_bytes(),
                        _ => half::bf16::from_f32(v).to_le_bytes(),
                    })
                    .collect();
                let w = QMatrix::new(ty, rows, cols, bytes.into());
                let x = values(n * cols, cols as u64);
                let got = GpuMatrix::new(&gpu, &w).unwrap().run(&gpu, &x).unwrap();
                let want = cpu::matmul(&w, &x);
                for (i, (g, c)) in got.iter().zip(&want).enumerate() {
                    assert!((g - c).abs() <= 1e-5 * (cols as f32).sqrt() * c.abs().max(1.0), "{ty} {rows}x{cols} n={n} [{i}]: gpu {g} vs cpu {c}");
                }
            }
            // rows of odd length are refused by name
            let odd = QMatrix::new(ty, 1, 3, vec![0u8; 6].into());
            assert!(GpuMatrix::new(&gpu, &odd).err().unwrap().to_string().contains("odd length"));
        }
    }
}
