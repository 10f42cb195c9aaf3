//! Q4_K matrix times activation rows on the GPU (`shaders/gemv_q4_k.wgsl`). Q4_K blocks
//! are 144 bytes (a multiple of 4), so the GGUF bytes are uploaded as they are and read
//! as words. Activations are quantized in the kernel to Q8_K exactly as the CPU backend
//! does; the test compares with the CPU backend's matmul.

use super::kernel::{Kernel, MAX_GROUPS};
use super::Gpu;
use crate::compute::QMatrix;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// A Q4_K matrix resident on the GPU, with the kernel that multiplies by it.
pub struct GemvQ4K {
    rows: usize,
    blocks: usize,
    weights: wgpu::Buffer,
    kernel: Kernel,
}

impl GemvQ4K {
    /// Uploads `w` (Q4_K) to `gpu`.
    pub fn new(gpu: &Gpu, w: &QMatrix) -> Result<GemvQ4K> {
        if w.ty != GgmlType::Q4_K {
            return Err(Error::Invalid(format!("gemv_q4_k: the matrix is {}, not Q4_K", w.ty)));
        }
        Ok(GemvQ4K {
            rows: w.rows,
            blocks: w.cols / 256,
            weights: gpu.storage("q4_k weights", &w.data)?,
            kernel: Kernel::new(gpu, "gemv_q4_k", include_str!("../../../shaders/gemv_q4_k.wgsl"), "main"),
        })
    }

    /// Records `y = x · Wᵀ` for the `n` rows of `x` (`n × cols` f32 on the device) into
    /// `enc`, writing `n × rows` f32 to `y`.
    pub fn record(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) -> Result<()> {
        let max = MAX_GROUPS as usize;
        if n == 0 || n > max {
            return Err(Error::Invalid(format!("gemv_q4_k: {n} activation rows (1..={max} per dispatch)")));
        }
        let (gx, gy) = if self.rows <= max { (self.rows, 1) } else { (max, self.rows.div_ceil(max)) };
        let dims = [self.rows as u32, self.blocks as u32, n as u32, gx as u32];
        self.kernel.record(gpu, enc, &[&self.weights, x, y], &dims, [gx as u32, gy as u32, n as u32])
    }

    /// `x · Wᵀ` for `x` holding whole rows: uploads, runs, reads back.
    pub fn run(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        let cols = self.blocks * 256;
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(Error::Invalid(format!("gemv_q4_k: input length {} is not a multiple of {cols}", x.len())));
        }
        let n = x.len() / cols;
        let xb = gpu.upload("gemv x", x)?;
        let y = gpu.output("gemv y", n * self.rows);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(gpu, &mut enc, &xb, &y, n)?;
        gpu.queue.submit([enc.finish()]);
        gpu.read_f32(&y, n * self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::quant::dequantize;

    /// A Q4_K matrix of random blocks with modest, finite super-block scales.
    fn matrix(rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut s = seed | 1;
        let mut data = Vec::new();
        for _ in 0..rows * cols / 256 {
            let mut b: Vec<u8> = (0..144)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
            b[..2].copy_from_slice(&half::f16::from_f32(0.002 + (s % 7) as f32 * 1e-3).to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
            data.extend(b);
        }
        QMatrix { ty: GgmlType::Q4_K, rows, cols, data: data.into() }
    }

    #[test]
    fn gpu_q4_k_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (rows, cols, n) in [(3, 256, 1), (37, 768, 3), (70_001, 256, 1)] {
            let w = matrix(rows, cols, rows as u64 + 5);
            let x = values(n * cols, cols as u64);
            let got = GemvQ4K::new(&gpu, &w).unwrap().run(&gpu, &x).unwrap();
            let cpu = crate::compute::cpu::matmul(&w, &x);
            let mut row = vec![0.0f32; cols];
            for r in 0..rows {
                dequantize(GgmlType::Q4_K, &w.data[r * w.row_bytes()..(r + 1) * w.row_bytes()], &mut row);
                for t in 0..n {
                    let terms = row.iter().zip(&x[t * cols..(t + 1) * cols]).map(|(a, b)| *a as f64 * *b as f64);
                    let mag = terms.fold(0.0, |m, v: f64| m + v.abs());
                    let (g, want) = (got[t * rows + r] as f64, cpu[t * rows + r] as f64);
                    assert!((g - want).abs() <= 1e-5 * mag + 1e-6, "{rows}x{cols} n={n} row {r} token {t}: gpu {g} vs {want} (terms {mag})");
                }
            }
        }
    }
}
