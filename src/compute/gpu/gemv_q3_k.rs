//! Q3_K matrices on the GPU (`shaders/gemv_q3_k.wgsl`, run through
//! [`super::matrix::GpuMatrix`]): the 3-bit format of Q3_K_M files. GGUF's Q3_K block is
//! 110 bytes, so blocks are repacked at upload into 112-byte slots
//! ([`super::matrix::pad_blocks`]); activations are quantized in the kernel to Q8_K as the
//! CPU backend does, and the test compares with the CPU backend's matmul.

#[cfg(test)]
mod tests {
    use super::super::tests::{gemv_matches_the_cpu_backend, gpu_or_skip};
    use crate::quant::GgmlType;

    #[test]
    fn gpu_q3_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        gemv_matches_the_cpu_backend(&gpu, GgmlType::Q3_K, &[(3, 256, 1), (37, 768, 3), (70_001, 256, 1), (5, 2560, 2)], &[(108, 1e-3)]);
    }
}
