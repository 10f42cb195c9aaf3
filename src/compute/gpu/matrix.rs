//! A weight matrix on the GPU in whichever block format it has a kernel for — F32
//! (`shaders/gemv_f32.wgsl`, here), Q8_0 ([`super::gemv_q8_0`]), Q4_K
//! ([`super::gemv_q4_k`]) or Q6_K ([`super::gemv_q6_k`]) — so the forward pass records
//! `y = x · Wᵀ` without caring which.

use super::gemv_q4_k::GemvQ4K;
use super::gemv_q6_k::GemvQ6K;
use super::gemv_q8_0::GemvQ8_0;
use super::kernel::Kernel;
use super::Gpu;
use crate::compute::QMatrix;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// A matrix resident on the GPU.
pub struct GpuMatrix(Inner);

enum Inner {
    /// Plain f32 rows.
    F32 { rows: usize, cols: usize, w: wgpu::Buffer, kernel: Kernel },
    /// Q8_0 blocks, repacked.
    Q8_0 { cols: usize, g: GemvQ8_0 },
    /// Q4_K blocks, in place.
    Q4K { cols: usize, g: GemvQ4K },
    /// Q6_K blocks, padded.
    Q6K { cols: usize, g: GemvQ6K },
}

impl GpuMatrix {
    /// Uploads `w`; formats without a GPU kernel yet are an error naming the format.
    pub fn new(gpu: &Gpu, w: &QMatrix) -> Result<GpuMatrix> {
        Ok(GpuMatrix(match w.ty {
            GgmlType::F32 => Inner::F32 {
                rows: w.rows,
                cols: w.cols,
                w: gpu.storage("f32 weights", &w.data)?,
                kernel: Kernel::new(gpu, "gemv_f32", concat!(include_str!("../../../shaders/gemv_common.wgsl"), include_str!("../../../shaders/gemv_f32.wgsl")), "main"),
            },
            GgmlType::Q8_0 => Inner::Q8_0 { cols: w.cols, g: GemvQ8_0::new(gpu, w)? },
            GgmlType::Q4_K => Inner::Q4K { cols: w.cols, g: GemvQ4K::new(gpu, w)? },
            GgmlType::Q6_K => Inner::Q6K { cols: w.cols, g: GemvQ6K::new(gpu, w)? },
            ty => return Err(Error::Gpu(format!("no GPU kernel for {ty} weights yet (F32, Q8_0, Q4_K and Q6_K have one)"))),
        }))
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match &self.0 {
            Inner::F32 { cols, .. } | Inner::Q8_0 { cols, .. } | Inner::Q4K { cols, .. } | Inner::Q6K { cols, .. } => *cols,
        }
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
        match &self.0 {
            Inner::F32 { rows, .. } => *rows,
            Inner::Q8_0 { g, .. } => g.rows(),
            Inner::Q4K { g, .. } => g.rows(),
            Inner::Q6K { g, .. } => g.rows(),
        }
    }

    /// Records `y = x · Wᵀ` for `n` rows of `x` into `enc`.
    pub fn record(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, x: &wgpu::Buffer, y: &wgpu::Buffer, n: usize) -> Result<()> {
        match &self.0 {
            Inner::F32 { rows, cols, w, kernel } => kernel.record_gemv(gpu, enc, &[w, x, y], *rows, *cols, n),
            Inner::Q8_0 { g, .. } => g.record(gpu, enc, x, y, n),
            Inner::Q4K { g, .. } => g.record(gpu, enc, x, y, n),
            Inner::Q6K { g, .. } => g.record(gpu, enc, x, y, n),
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
