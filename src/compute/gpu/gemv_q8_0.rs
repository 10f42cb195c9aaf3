//! Q8_0 matrices on the GPU (`shaders/gemv_q8_0.wgsl`, run through
//! [`super::matrix::GpuMatrix`]).
//!
//! GGUF's Q8_0 block is 34 bytes (f16 scale, 32 signed bytes), so blocks are not 4-byte
//! aligned and WGSL cannot read them in place. [`Q8_0Packed`] splits them at upload into
//! f32 scales and 4-byte-aligned quant words; [`Q8_0Packed::unpack`] undoes it, and the
//! tests check the round trip. Q4_0 and Q5_0 matrices are widened into the same layout
//! ([`Q8_0Packed::widen`]) and use the same kernel. Activations are quantized in the kernel exactly as the CPU
//! backend quantizes them, so the two agree up to the order of float additions.

use crate::compute::QMatrix;
use crate::quant::GgmlType;
use crate::{Error, Result};

const BLOCK_BYTES: usize = 34;

/// A Q8_0 matrix split into f32 scales and quant words, row-major over (row, block).
#[derive(Debug, PartialEq)]
pub struct Q8_0Packed {
    /// Rows (output features).
    pub rows: usize,
    /// Blocks per row (`cols / 32`).
    pub blocks: usize,
    /// One scale per block, the f16 scale widened exactly.
    pub scales: Vec<f32>,
    /// Eight little-endian words of four signed bytes per block.
    pub quants: Vec<u32>,
}

impl Q8_0Packed {
    /// Splits `w`'s blocks; `w` must be Q8_0.
    pub fn pack(w: &QMatrix) -> Result<Q8_0Packed> {
        if w.ty != GgmlType::Q8_0 {
            return Err(Error::Invalid(format!("gemv_q8_0: the matrix is {}, not Q8_0", w.ty)));
        }
        let blocks = w.cols / 32;
        let mut scales = Vec::with_capacity(w.rows * blocks);
        let mut quants = Vec::with_capacity(w.rows * blocks * 8);
        for b in w.data.chunks_exact(BLOCK_BYTES) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            quants.extend(b[2..].chunks_exact(4).map(|q| u32::from_le_bytes([q[0], q[1], q[2], q[3]])));
        }
        Ok(Q8_0Packed { rows: w.rows, blocks, scales, quants })
    }

    /// Q4_0 or Q5_0 blocks widened to this layout: each weight's integer (`n - 8`, or
    /// `n - 16` for five bits) fits a signed byte and the block scale is the same, so
    /// the Q8_0 kernel computes exactly the integer sums the CPU backend does for them,
    /// at the price of a byte per weight on the device.
    pub fn widen(w: &QMatrix) -> Result<Q8_0Packed> {
        let (block, five) = match w.ty {
            GgmlType::Q4_0 => (18, false),
            GgmlType::Q5_0 => (22, true),
            ty => return Err(Error::Invalid(format!("gemv_q8_0: {ty} is not widened to Q8_0"))),
        };
        let blocks = w.cols / 32;
        let mut scales = Vec::with_capacity(w.rows * blocks);
        let mut quants = Vec::with_capacity(w.rows * blocks * 8);
        for b in w.data.chunks_exact(block) {
            scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            let (qh, qs) = if five { (u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &b[6..22]) } else { (0, &b[2..18]) };
            let value = |j: usize| -> u8 {
                let nib = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
                let q = if five { (nib | ((((qh >> j) & 1) as u8) << 4)) as i8 - 16 } else { nib as i8 - 8 };
                q as u8
            };
            quants.extend((0..8).map(|k| u32::from_le_bytes([value(4 * k), value(4 * k + 1), value(4 * k + 2), value(4 * k + 3)])));
        }
        Ok(Q8_0Packed { rows: w.rows, blocks, scales, quants })
    }

    /// The GGUF blocks back (a scale narrowed to f16 is exact: it was widened from one).
    pub fn unpack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.scales.len() * BLOCK_BYTES);
        for (s, q) in self.scales.iter().zip(self.quants.chunks_exact(8)) {
            out.extend(half::f16::from_f32(*s).to_le_bytes());
            out.extend(q.iter().flat_map(|w| w.to_le_bytes()));
        }
        out
    }
}

/// `x · Wᵀ` with W dequantized and every product summed in f64 (activations not
/// quantized), plus, per output, the sum of the products' magnitudes: the scale of the
/// rounding error when comparing backends.
pub fn reference(w: &QMatrix, x: &[f32]) -> (Vec<f32>, Vec<f64>) {
    let n = x.len() / w.cols;
    let p = Q8_0Packed::pack(w).expect("Q8_0");
    let (mut y, mut mag) = (vec![0.0f32; n * w.rows], vec![0.0f64; n * w.rows]);
    for t in 0..n {
        for r in 0..w.rows {
            let (mut s, mut m) = (0.0f64, 0.0f64);
            for c in 0..w.cols {
                let blk = r * p.blocks + c / 32;
                let word = p.quants[blk * 8 + (c % 32) / 4];
                let q = (word >> (8 * (c % 4))) as u8 as i8;
                let v = p.scales[blk] as f64 * q as f64 * x[t * w.cols + c] as f64;
                s += v;
                m += v.abs();
            }
            y[t * w.rows + r] = s as f32;
            mag[t * w.rows + r] = m;
        }
    }
    (y, mag)
}

#[cfg(test)]
mod tests {
    #[test]
    fn widened_q4_0_and_q5_0_blocks_dequantize_as_the_originals() {
        use super::super::tests::random_matrix;
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
            let (rows, cols) = (3, 96);
            let w = random_matrix(ty, rows, cols, 21, &[(0, 1e-2)]);
            let p = Q8_0Packed::widen(&w).unwrap();
            let mut want = vec![0.0f32; rows * cols];
            crate::quant::dequantize(ty, &w.data, &mut want);
            for (i, v) in want.iter().enumerate() {
                let blk = i / 32;
                let q = (p.quants[blk * 8 + (i % 32) / 4] >> (8 * (i % 4))) as u8 as i8;
                assert_eq!((p.scales[blk] * q as f32).to_bits(), v.to_bits(), "{ty} value {i}");
            }
        }
        assert!(Q8_0Packed::widen(&random_matrix(GgmlType::Q8_0, 1, 32, 1, &[(0, 1e-2)])).is_err());
    }

    use super::super::matrix::GpuMatrix;
    use super::super::tests::random_matrix;
    use super::*;

    #[test]
    fn packing_round_trips_the_gguf_blocks() {
        let w = random_matrix(GgmlType::Q8_0, 5, 96, 3, &[(0, 2e-4)]);
        let p = Q8_0Packed::pack(&w).unwrap();
        assert_eq!((p.scales.len(), p.quants.len()), (15, 120));
        assert_eq!(p.unpack(), w.data.to_vec());
        // the words hold the block's bytes in order
        assert_eq!(p.quants[0].to_le_bytes(), [w.data[2], w.data[3], w.data[4], w.data[5]]);
    }

    #[test]
    fn gpu_gemv_matches_the_cpu_reference_on_odd_sizes() {
        let Some(gpu) = super::super::tests::gpu_or_skip() else { return };
        eprintln!("adapter: {}", gpu.describe());
        // odd row counts, a block count that is not a multiple of the workgroup, several
        // tokens, and more rows than one dispatch dimension holds
        for (rows, cols, n) in [(37, 224, 3), (1, 32, 1), (130, 2080, 2), (70_001, 64, 1)] {
            let w = random_matrix(GgmlType::Q8_0, rows, cols, rows as u64, &[(0, 2e-4)]);
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let got = GpuMatrix::new(&gpu, &w).unwrap().run(&gpu, &x).unwrap();
            let want = crate::compute::cpu::matmul(&w, &x);
            let (_, mag) = reference(&w, &x);
            assert_eq!(got.len(), want.len());
            for (i, ((g, w), m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                // f32 sums in another order: error within a few ulps of the terms' magnitude
                assert!(((g - w) as f64).abs() <= 1e-5 * m + 1e-6, "{rows}x{cols} n={n} output {i}: gpu {g} vs {w} (terms {m})");
            }
        }
    }

    #[test]
    fn several_activation_rows_give_each_row_what_it_gets_alone() {
        let Some(gpu) = super::super::tests::gpu_or_skip() else { return };
        // up to, exactly and past one workgroup's eight rows, lane widths 8 and 32
        let shapes = [(37, 224, 2), (37, 224, 8), (130, 2080, 9), (19, 64, 17)];
        super::super::tests::several_rows_match_each_row_alone(&gpu, GgmlType::Q8_0, &shapes, &[(0, 2e-4)]);
    }
}
