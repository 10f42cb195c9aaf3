//! Q4_K matrices on the GPU (`shaders/gemv_q4_k.wgsl`, run through
//! [`super::matrix::GpuMatrix`]). Q4_K blocks are 144 bytes (a multiple of 4), so the
//! GGUF bytes are uploaded as they are and read as words. Activations are quantized in
//! the kernel to Q8_K exactly as the CPU backend does; the test compares with the CPU
//! backend's matmul.

#[cfg(test)]
mod tests {
    use super::super::tests::{gemv_matches_the_cpu_backend, gpu_or_skip, several_rows_match_each_row_alone};
    use crate::quant::GgmlType;

    #[test]
    fn gpu_q4_k_and_q5_k_gemv_match_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 8, 16 and 32 lanes per row (4, 12 and 40 items of 64 weights); Q5_K is the same
        // kernel compiled with its fifth bits
        let shapes = [(3, 256, 1), (37, 768, 3), (70_001, 256, 1), (5, 2560, 2)];
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K] {
            gemv_matches_the_cpu_backend(&gpu, ty, &shapes, &[(0, 2e-3), (2, 1e-3)]);
        }
    }

    #[test]
    fn several_activation_rows_give_each_row_what_it_gets_alone() {
        let Some(gpu) = gpu_or_skip() else { return };
        // 8 and 32 lanes per row, an odd item count (the unpaired last item), up to,
        // exactly and past one workgroup's eight rows
        let shapes = [(37, 768, 2), (37, 256, 8), (21, 2560, 9), (5, 1280, 17)];
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K] {
            several_rows_match_each_row_alone(&gpu, ty, &shapes, &[(0, 2e-3), (2, 1e-3)]);
        }
    }
}
