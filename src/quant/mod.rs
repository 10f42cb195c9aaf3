//! GGML block formats: layouts, dequantization, activation quantization and fused dot
//! products. Which types can be computed is decided once, at load time
//! ([`GgmlType::is_computable`]); there is no silent fallback.

mod activations;
pub mod blocks;
mod dequant;
mod dot;
#[cfg(target_arch = "x86_64")]
mod dot_avx2;
#[cfg(target_arch = "aarch64")]
mod dot_neon;
#[cfg(target_arch = "x86_64")]
mod dot_vnni;
mod ggml_type;
mod out_grid;
mod packed;

pub use activations::{quantize_q8_0, quantize_q8_k, ActKind, ActRow, Activations};
pub use dequant::dequantize;
pub use dot::{dot, dot_rows, dot_rows_into};
#[cfg(target_arch = "x86_64")]
pub(crate) use dot::has_avx2;

pub use ggml_type::GgmlType;
pub use out_grid::OutGrid;
pub use packed::{dot_packed_into, packing_available, Packed, PackedQ4K, PackedQ6K, PackedQ8_0, PackedRows, GROUP_ROWS};

#[cfg(test)]
mod tests;
