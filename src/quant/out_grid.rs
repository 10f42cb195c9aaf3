//! Where the fused dot products write: a `rows × tokens` grid laid over an output slice
//! with any strides, so a matrix product can write token-major results (`y[t][r]`, what
//! the next layer reads) straight from kernels that walk weight rows, with threads
//! owning disjoint row ranges of the same output.

use std::marker::PhantomData;

/// A `rows × n` window onto an `f32` slice: entry `(r, t)` lives at `r * row_stride + t *
/// tok_stride` from the window's start. Windows handed out together never share an entry.
pub struct OutGrid<'a> {
    ptr: *mut f32,
    rows: usize,
    n: usize,
    row_stride: usize,
    tok_stride: usize,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: an OutGrid is an exclusive borrow of its entries (constructors guarantee that
// windows made from one slice are disjoint), like a `&mut [f32]`.
unsafe impl Send for OutGrid<'_> {}

impl<'a> OutGrid<'a> {
    /// All of `out` as `rows × n`, row-major (`out[r * n + t]`).
    pub fn row_major(out: &'a mut [f32], rows: usize, n: usize) -> Self {
        assert_eq!(out.len(), rows * n, "output of {} values for {rows} rows × {n} tokens", out.len());
        OutGrid { ptr: out.as_mut_ptr(), rows, n, row_stride: n, tok_stride: 1, _out: PhantomData }
    }

    /// `out` as `n` tokens × `rows` values (`out[t * rows + r]`), cut into windows of
    /// `chunk_rows` rows each (the last may be shorter), for threads to fill side by side.
    pub fn token_major_chunks(out: &'a mut [f32], rows: usize, n: usize, chunk_rows: usize) -> Vec<Self> {
        assert_eq!(out.len(), rows * n, "output of {} values for {rows} rows × {n} tokens", out.len());
        assert!(chunk_rows > 0);
        let base = out.as_mut_ptr();
        (0..rows)
            .step_by(chunk_rows)
            // SAFETY: r0 < rows ≤ out.len() (n ≥ 1 when rows > 0 entries exist; with n = 0
            // no entry is ever written), so the offset stays inside the allocation.
            .map(|r0| OutGrid { ptr: unsafe { base.add(r0.min(out.len())) }, rows: chunk_rows.min(rows - r0), n, row_stride: 1, tok_stride: rows, _out: PhantomData })
            .collect()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Writes entry `(r, t)`.
    #[inline(always)]
    pub fn set(&mut self, r: usize, t: usize, v: f32) {
        assert!(r < self.rows && t < self.n, "entry ({r}, {t}) outside {} × {}", self.rows, self.n);
        // SAFETY: inside the window (checked above), which the constructor placed inside
        // the borrowed slice and apart from every other window of it.
        unsafe { *self.ptr.add(r * self.row_stride + t * self.tok_stride) = v }
    }

    /// Entries `(r0..r0 + len, t)` as one slice, when rows are contiguous in this
    /// window (token-major output); `None` otherwise.
    #[inline(always)]
    pub fn run_mut(&mut self, r0: usize, t: usize, len: usize) -> Option<&mut [f32]> {
        assert!(r0 + len <= self.rows && t < self.n, "rows {r0}..{} of token {t} outside {} × {}", r0 + len, self.rows, self.n);
        // SAFETY: the run lies inside the window (checked above), whose entries for one
        // token are contiguous here, inside the borrowed slice and apart from other windows.
        (self.row_stride == 1).then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r0 + t * self.tok_stride), len) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_major_windows_cover_the_output_once() {
        let (rows, n) = (7, 3);
        let mut out = vec![-1.0f32; rows * n];
        let mut windows = OutGrid::token_major_chunks(&mut out, rows, n, 3);
        assert_eq!(windows.iter().map(OutGrid::rows).collect::<Vec<_>>(), [3, 3, 1]);
        for (i, w) in windows.iter_mut().enumerate() {
            for r in 0..w.rows() {
                for t in 0..n {
                    w.set(r, t, (100 * t + 3 * i + r) as f32);
                }
            }
        }
        drop(windows);
        for t in 0..n {
            for r in 0..rows {
                assert_eq!(out[t * rows + r], (100 * t + r) as f32);
            }
        }
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn writes_outside_a_window_are_refused() {
        let mut out = vec![0.0f32; 8];
        let mut w = OutGrid::token_major_chunks(&mut out, 4, 2, 2);
        w[0].set(2, 0, 1.0);
    }
}
