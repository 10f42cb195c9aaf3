//! Q5_K matrices on the GPU: the Q4_K kernel (`shaders/gemv_q4_k.wgsl`) compiled with its
//! `FIVE_BITS` switch on, run through [`super::matrix::GpuMatrix`]. Q5_K blocks are 176
//! bytes (a multiple of 16), so the GGUF bytes are uploaded as they are and read as
//! words. Activations are quantized on the device exactly as the CPU backend does; the
//! Q4_K kernel's test covers both formats.

use std::sync::OnceLock;

/// The Q4_K kernel source with the fifth bits switched on.
pub(super) fn source() -> &'static str {
    static SOURCE: OnceLock<String> = OnceLock::new();
    super::kernel::with_switch(&SOURCE, include_str!("../../../shaders/gemv_q4_k.wgsl"), "FIVE_BITS")
}
