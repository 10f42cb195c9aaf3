//! Q6_K matrices on the GPU (`shaders/gemv_q6_k.wgsl`, run through
//! [`super::matrix::GpuMatrix`]). GGUF's Q6_K block is 210 bytes, so blocks are repacked
//! at upload into 212-byte slots ([`super::matrix::pad_blocks`]); activations are
//! quantized in the kernel to Q8_K as the CPU backend does, and the test compares with
//! the CPU backend's matmul.

#[cfg(test)]
mod tests {
    use super::super::tests::{gemv_matches_the_cpu_backend, gpu_or_skip};
    use crate::quant::GgmlType;

    #[test]
    fn gpu_q6_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        gemv_matches_the_cpu_backend(&gpu, GgmlType::Q6_K, &[(3, 256, 1), (37, 768, 3), (70_001, 256, 1)], &[(208, 1e-3)]);
    }
}
