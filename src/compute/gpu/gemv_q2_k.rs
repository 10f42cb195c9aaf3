//! Q2_K matrices on the GPU (`shaders/gemv_q2_k.wgsl`, run through
//! [`super::matrix::GpuMatrix`]): the 2-bit format of the smallest files of the largest
//! models. Q2_K blocks are 84 bytes (a multiple of 4), so the GGUF bytes are uploaded as
//! they are and read as words. Activations are quantized in the kernel to Q8_K as the CPU
//! backend does; the test compares with the CPU backend's matmul.

#[cfg(test)]
mod tests {
    use super::super::tests::{gemv_matches_the_cpu_backend, gpu_or_skip};
    use crate::quant::GgmlType;

    #[test]
    fn gpu_q2_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 16 work items per block: 8, 16 and 32 lanes per row; d and dmin at 80 and 82
        gemv_matches_the_cpu_backend(&gpu, GgmlType::Q2_K, &[(3, 256, 1), (37, 768, 3), (70_001, 256, 1), (5, 2560, 2)], &[(80, 2e-3), (82, 1e-3)]);
    }
}
