//! Numeric kernels of the forward pass.
//!
//! [`cpu`] is the reference backend and what GPU-less machines run; a wgpu backend will
//! sit beside it behind the same operations.

pub mod cpu;
mod qmatrix;

pub use qmatrix::QMatrix;
