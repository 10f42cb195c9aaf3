//! Numeric kernels of the forward pass.
//!
//! [`cpu`] is the reference backend and what GPU-less machines run; [`gpu`] (feature
//! `gpu`, on by default) is the wgpu backend being built beside it.

pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
mod qmatrix;

pub use qmatrix::QMatrix;
