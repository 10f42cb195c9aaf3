//! A weight matrix in its stored block format, held by a cheap shared handle.

use bytes::Bytes;

use crate::quant::GgmlType;

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
}

impl QMatrix {
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols as u64).expect("validated at load") as usize
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Rows `r0..r1` as a matrix sharing the same bytes.
    pub fn slice_rows(&self, r0: usize, r1: usize) -> QMatrix {
        let rb = self.row_bytes();
        QMatrix { ty: self.ty, rows: r1 - r0, cols: self.cols, data: self.data.slice(r0 * rb..r1 * rb) }
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
        write!(f, "QMatrix({} {}x{})", self.ty, self.rows, self.cols)
    }
}
