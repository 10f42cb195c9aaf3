//! A weight matrix in its stored block format, held by a cheap shared handle.

use std::sync::Arc;

use bytes::Bytes;

use crate::quant::{GgmlType, Packed, PackedRows};

/// A row-major weight matrix of `rows × cols` elements stored as GGUF blocks.
///
/// `data` is a [`Bytes`] handle: a zero-copy view of a memory-mapped file or a buffer
/// owned by the expert cache, so matrices pass between threads without copying.
#[derive(Clone)]
pub struct QMatrix {
    /// Block format.
    pub ty: GgmlType,
    /// Number of rows (output features).
    pub rows: usize,
    /// Row length (input features).
    pub cols: usize,
    /// `rows * row_bytes()` bytes.
    pub data: Bytes,
    /// The same rows interleaved for the CPU's VNNI kernels (Q8_0, Q4_K, Q5_K and Q6_K;
    /// [`QMatrix::pack`]), which CPU matrix products then use instead of `data`.
    pub packed: Option<PackedRows>,
}

impl QMatrix {
    /// A matrix over `data` (GGUF blocks), not packed.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Bytes) -> QMatrix {
        QMatrix { ty, rows, cols, data, packed: None }
    }

    /// Adds the interleaved copy the CPU kernels prefer, where this CPU has them (AVX-512
    /// VNNI) and the format has a layout (Q8_0, Q4_K, Q5_K, Q6_K); otherwise leaves the matrix as it
    /// is. Costs a copy of the matrix in memory; `data` stays for everything else (GPU
    /// upload, lookups).
    pub fn pack(&mut self) {
        if self.packed.is_none() && crate::quant::packing_available() {
            self.packed = Packed::pack(self.ty, &self.data, self.rows, self.cols).map(|p| PackedRows::new(Arc::new(p)));
        }
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols as u64).expect("validated at load") as usize
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `r0..r1` as a matrix sharing the same bytes (and the packed copy, when the
    /// range falls on its row groups).
    pub fn slice_rows(&self, r0: usize, r1: usize) -> QMatrix {
        let rb = self.row_bytes();
        let packed = self.packed.as_ref().and_then(|p| p.slice(r0, r1));
        QMatrix { ty: self.ty, rows: r1 - r0, cols: self.cols, data: self.data.slice(r0 * rb..r1 * rb), packed }
    }

    /// Row `r` dequantized to f32.
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.cols];
        crate::quant::dequantize(self.ty, self.row(r), &mut out);
        out
    }

    /// The whole matrix dequantized to f32 (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        crate::quant::dequantize(self.ty, &self.data, &mut out);
        out
    }
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let packed = if self.packed.is_some() { ", packed" } else { "" };
        write!(f, "QMatrix({} {}x{}{packed})", self.ty, self.rows, self.cols)
    }
}
