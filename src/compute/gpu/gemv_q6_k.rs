//! Q6_K matrix times activation rows on the GPU (`shaders/gemv_q6_k.wgsl`). GGUF's Q6_K
//! block is 210 bytes, so blocks are repacked at upload into 212-byte slots
//! ([`pad_blocks`], round trip tested); activations are quantized in the kernel to Q8_K
//! as the CPU backend does, and the test compares with the CPU backend's matmul.

use super::kernel::Kernel;
use super::Gpu;
use crate::compute::QMatrix;
use crate::quant::GgmlType;
use crate::{Error, Result};

const BLOCK: usize = 210;
const SLOT: usize = 212;

/// The blocks of `data` in 212-byte slots, two zero bytes after each.
pub fn pad_blocks(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / BLOCK * SLOT);
    for b in data.chunks_exact(BLOCK) {
        out.extend_from_slice(b);
        out.extend_from_slice(&[0, 0]);
    }
    out
}

/// A Q6_K matrix resident on the GPU, with the kernel that multiplies by it.
pub struct GemvQ6K {
    rows: usize,
    blocks: usize,
    weights: wgpu::Buffer,
    kernel: Kernel,
}

impl GemvQ6K {
    /// Uploads `w` (Q6_K) to `gpu`.
    pub fn new(gpu: &Gpu, w: &QMatrix) -> Result<GemvQ6K> {
        if w.ty != GgmlType::Q6_K {
            return Err(Error::Invalid(format!("gemv_q6_k: the matrix is {}, not Q6_K", w.ty)));
        }
        Ok(GemvQ6K {
            rows: w.rows,
            blocks: w.cols / 256,
            weights: gpu.storage("q6_k weights", &pad_blocks(&w.data))?,
            kernel: Kernel::new(gpu, "gemv_q6_k", concat!(include_str!("../../../shaders/gemv_common.wgsl"), include_str!("../../../shaders/gemv_q6_k.wgsl")), "main"),
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Records `y = x · Wᵀ` for the `n` rows of `x` (`n × cols` f32 on the device).
    pub fn record(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) -> Result<()> {
        self.kernel.record_gemv(gpu, enc, &[&self.weights, x, y], self.rows, self.blocks, n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu;
    use crate::quant::dequantize;

    fn matrix(rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut s = seed | 1;
        let mut data = Vec::new();
        for _ in 0..rows * cols / 256 {
            let mut b: Vec<u8> = (0..BLOCK)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            b[208..].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
            data.extend(b);
        }
        QMatrix { ty: GgmlType::Q6_K, rows, cols, data: data.into() }
    }

    #[test]
    fn padding_keeps_every_block() {
        let w = matrix(2, 512, 3);
        let p = pad_blocks(&w.data);
        assert_eq!(p.len(), 4 * SLOT);
        let back: Vec<u8> = p.chunks_exact(SLOT).flat_map(|s| s[..BLOCK].to_vec()).collect();
        assert_eq!(back, w.data.to_vec());
    }

    #[test]
    fn gpu_q6_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (rows, cols, n) in [(3, 256, 1), (37, 768, 3), (70_001, 256, 1)] {
            let w = matrix(rows, cols, rows as u64 + 11);
            let x = values(n * cols, cols as u64);
            let g = GemvQ6K::new(&gpu, &w).unwrap();
            let (xb, y) = (gpu.upload("x", &x).unwrap(), gpu.output("y", n * rows));
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            g.record(&gpu, &mut enc, &xb, &y, n).unwrap();
            gpu.queue.submit([enc.finish()]);
            let got = gpu.read_f32(&y, n * rows).unwrap();
            let want = cpu::matmul(&w, &x);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                dequantize(GgmlType::Q6_K, &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()], &mut row);
                for t in 0..n {
                    let mag: f64 = row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let (g, c) = (got[t * rows + r] as f64, want[t * rows + r] as f64);
                    assert!((g - c).abs() <= 1e-5 * mag + 1e-6, "{rows}x{cols} n={n} row {r} token {t}: gpu {g} vs cpu {c} (terms {mag})");
                }
            }
        }
    }
}
