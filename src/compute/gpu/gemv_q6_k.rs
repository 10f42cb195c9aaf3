//! Q6_K matrices on the GPU (`shaders/gemv_q6_k.wgsl`, run through
//! [`super::matrix::GpuMatrix`]). GGUF's Q6_K block is 210 bytes, so blocks are repacked
//! at upload into 212-byte slots ([`super::matrix::pad_blocks`]); activations are
//! quantized in the kernel to Q8_K as the CPU backend does, and the test compares with
//! the CPU backend's matmul.

#[cfg(test)]
mod tests {
    use super::super::tests::{gemv_matches_the_cpu_backend, gpu_or_skip, several_rows_match_each_row_alone};
    use crate::quant::GgmlType;

    #[test]
    fn gpu_q6_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        gemv_matches_the_cpu_backend(&gpu, GgmlType::Q6_K, &[(3, 256, 1), (37, 768, 3), (70_001, 256, 1)], &[(208, 1e-3)]);
    }

    #[test]
    fn several_activation_rows_give_each_row_what_it_gets_alone() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 16 and 32 lanes per row, up to, exactly and past one workgroup's eight rows
        let shapes = [(37, 256, 2), (37, 768, 8), (21, 2560, 9), (5, 1280, 17)];
        several_rows_match_each_row_alone(&gpu, GgmlType::Q6_K, &shapes, &[(208, 1e-3)]);
    }
}
