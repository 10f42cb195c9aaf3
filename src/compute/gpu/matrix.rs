//! A weight matrix on the GPU in whichever block format it has a kernel for — F32
//! (`shaders/gemv_f32.wgsl`, here), Q8_0 ([`super::gemv_q8_0`]), Q4_K
//! ([`super::gemv_q4_k`]) or Q6_K ([`super::gemv_q6_k`]) — so the forward pass records
//! `y = x · Wᵀ` without caring which.

use super::gemv_q6_k::pad_blocks;
use super::gemv_q8_0::Q8_0Packed;
use super::kernel::Kernel;
use super::quantize::{self, ActFormat};
use super::Gpu;
use std::sync::Arc;
use crate::compute::QMatrix;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// A matrix resident on the GPU with the kernel for its format.
pub struct GpuMatrix {
    rows: usize,
    cols: usize,
    /// What the kernel walks per row: columns (F32) or blocks.
    per_row: usize,
    /// The weights as the kernel reads them (two buffers for Q8_0: quants, scales).
    weights: Vec<wgpu::Buffer>,
    kernel: Arc<Kernel>,
    /// How the kernel wants its activations quantized first (`None`: read as f32).
    acts: Option<ActFormat>,
    /// Whether the kernel also reads the activations' sums per 32 (Q4_K's minimums).
    sums: bool,
}

macro_rules! gemv_source {
    ($name:literal) => {
        concat!(include_str!("../../../shaders/gemv_common.wgsl"), include_str!(concat!("../../../shaders/", $name, ".wgsl")))
    };
    ($name:literal, lanes) => {
        concat!(include_str!("../../../shaders/gemv_lanes.wgsl"), include_str!(concat!("../../../shaders/", $name, ".wgsl")))
    };
}

/// Rows per workgroup of the integer kernels (`shaders/gemv_lanes.wgsl`).
const ROWS_PER_GROUP: usize = 8;

impl GpuMatrix {
    /// Uploads `w`; formats without a GPU kernel yet are an error naming the format.
    pub fn new(gpu: &Gpu, w: &QMatrix) -> Result<GpuMatrix> {
        let (weights, source, name, per_row, acts) = match w.ty {
            GgmlType::F32 => (vec![gpu.storage("f32 weights", &w.data)?], gemv_source!("gemv_f32"), "gemv_f32", w.cols, None),
            GgmlType::Q8_0 => {
                let p = Q8_0Packed::pack(w)?;
                let bufs = vec![gpu.storage("q8_0 quants", bytemuck::cast_slice(&p.quants))?, gpu.storage("q8_0 scales", bytemuck::cast_slice(&p.scales))?];
                (bufs, gemv_source!("gemv_q8_0", lanes), "gemv_q8_0", p.blocks, Some(ActFormat::Q8_0))
            }
            GgmlType::Q4_K => (vec![gpu.storage("q4_k weights", &w.data)?], gemv_source!("gemv_q4_k", lanes), "gemv_q4_k", w.cols / 256, Some(ActFormat::Q8_K)),
            GgmlType::Q6_K => (vec![gpu.storage("q6_k weights", &pad_blocks(&w.data))?], gemv_source!("gemv_q6_k", lanes), "gemv_q6_k", w.cols / 256, Some(ActFormat::Q8_K)),
            ty => return Err(Error::Gpu(format!("no GPU kernel for {ty} weights yet (F32, Q8_0, Q4_K and Q6_K have one)"))),
        };
        Ok(GpuMatrix { rows: w.rows, cols: w.cols, per_row, weights, kernel: gpu.kernel(name, source, "main"), acts, sums: w.ty == GgmlType::Q4_K })
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `x · Wᵀ` for `x` holding whole rows of `cols` values: uploads, runs, reads back.
    pub fn run(&self, gpu: &Gpu, x: &[f32]) -> Result<Vec<f32>> {
        let cols = self.cols();
        if cols == 0 || !x.len().is_multiple_of(cols) {
            return Err(Error::Invalid(format!("matrix product: input length {} is not a multiple of {cols}", x.len())));
        }
        let n = x.len() / cols;
        let rows = self.rows();
        let (xb, y) = (gpu.upload("x", x)?, gpu.output("y", n * rows));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.record(gpu, &mut enc, &xb, &y, n)?;
        gpu.queue.submit([enc.finish()]);
        gpu.read_f32(&y, n * rows)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Records `y = x · Wᵀ` for `n` rows of `x` into `enc`.
    pub fn record(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) -> Result<()> {
        let mut bufs: Vec<&wgpu::Buffer> = self.weights.iter().collect();
        match self.acts {
            None => {
                bufs.extend([x, y]);
                self.kernel.record_gemv(gpu, enc, &bufs, self.rows, self.per_row, n)
            }
            Some(format) => {
                let q = quantize::record(gpu, enc, format, x, n * self.cols)?;
                bufs.extend([&q.xq, &q.xs]);
                if self.sums {
                    bufs.push(&q.bsums);
                }
                bufs.push(y);
                self.kernel.record_gemv_grouped(gpu, enc, &bufs, self.rows, self.per_row, n, ROWS_PER_GROUP)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu;

    #[test]
    fn gpu_f32_gemv_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        for (rows, cols, n) in [(1, 1, 1), (37, 100, 3), (70_001, 8, 2)] {
            let wv = values(rows * cols, 9);
            let w = QMatrix { ty: GgmlType::F32, rows, cols, data: wv.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>().into() };
            let x = values(n * cols, 5);
            let want = cpu::matmul(&w, &x);
            let m = GpuMatrix::new(&gpu, &w).unwrap();
            let (xb, y) = (gpu.upload("x", &x).unwrap(), gpu.output("y", n * rows));
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            m.record(&gpu, &mut enc, &xb, &y, n).unwrap();
            gpu.queue.submit([enc.finish()]);
            for (i, (a, b)) in gpu.read_f32(&y, n * rows).unwrap().iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (cols as f32).sqrt() * b.abs().max(1.0), "{rows}x{cols} n={n} [{i}]: gpu {a} vs cpu {b}");
            }
        }
        // a format without a kernel is refused by name
        let q5 = QMatrix { ty: GgmlType::Q5_K, rows: 1, cols: 256, data: vec![0u8; 176].into() };
        assert!(GpuMatrix::new(&gpu, &q5).err().unwrap().to_string().contains("Q5_K"));
    }
}
