//! odmoe engine: reads GGUF Mixture-of-Experts models and computes their logits.
//!
//! The engine is synchronous and testable without a runtime. Its parts:
//! - [`gguf`]: memory-mapped GGUF reader (single and split files), hostile-input safe.
//! - [`quant`]: the GGML block formats, their dequantization and fused dot products.
//! - [`model`]: hyperparameters from GGUF metadata and the forward pass of each architecture.
//! - [`compute`]: the numeric kernels the forward pass is built from (CPU reference backend).
//! - [`experts`]: the one narrow interface through which routed experts are reached.
//! - [`shadow`]: routing traces and the trained predictor that prefetches experts.
//! - [`tokenizer`]: the tokenizer stored in the GGUF metadata, and streaming decoding.
#![warn(missing_docs)]

pub mod compute;
pub mod error;
pub mod experts;
pub mod generate;
pub mod gguf;
mod huge_pages;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod shadow;
pub mod tokenizer;

pub use error::{Error, Result};
