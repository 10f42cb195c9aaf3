//! Element-wise kernels on the GPU (`shaders/elementwise.wgsl`): the residual add, a
//! bias added to every row, and SwiGLU. The CPU references are the CPU backend's [`crate::compute::cpu::add_assign`]
//! and [`crate::compute::cpu::swiglu`].

use super::recorder::Recorder;
use super::kernel::{grid, Kernel};
use super::Gpu;
use crate::Result;

/// The compiled element-wise kernels.
pub struct Elementwise {
    add: Kernel,
    add_row: Kernel,
    swiglu: Kernel,
}

impl Elementwise {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> Elementwise {
        let src = include_str!("../../../shaders/elementwise.wgsl");
        Elementwise { add: Kernel::new(gpu, "add", src, "add"), add_row: Kernel::new(gpu, "add_row", src, "add_row"), swiglu: Kernel::new(gpu, "swiglu", src, "swiglu") }
    }

    fn record(k: &Kernel, rec: &mut Recorder, a: &wgpu::Buffer, b: &wgpu::Buffer, len: usize, b_len: usize) -> Result<()> {
        let groups = len.div_ceil(256).max(1);
        let (per_y, gy) = grid(groups);
        k.record(rec, &[a, b], &[len as u32, per_y as u32, b_len.max(1) as u32], [per_y as u32, gy as u32, 1])
    }

    /// Records `a += b` over `len` values.
    pub fn add(&self, rec: &mut Recorder, a: &wgpu::Buffer, b: &wgpu::Buffer, len: usize) -> Result<()> {
        Self::record(&self.add, rec, a, b, len, len)
    }

    /// Records `a[i] += b[i mod b_len]` over `len` values of `a` (a bias on every row).
    pub fn add_row(&self, rec: &mut Recorder, a: &wgpu::Buffer, b: &wgpu::Buffer, len: usize, b_len: usize) -> Result<()> {
        Self::record(&self.add_row, rec, a, b, len, b_len)
    }

    /// Records `a = silu(a) · b` over `len` values.
    pub fn swiglu(&self, rec: &mut Recorder, a: &wgpu::Buffer, b: &wgpu::Buffer, len: usize) -> Result<()> {
        Self::record(&self.swiglu, rec, a, b, len, len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu;

    #[test]
    fn gpu_add_and_swiglu_match_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = Elementwise::new(&gpu);
        // lengths around a workgroup, and more groups than one dispatch dimension holds
        for len in [1, 255, 257, 3 * 256 + 5, 256 * 65535 + 300] {
            let (a, b) = (values(len, 1), values(len, 2));
            let (ab, bb) = (gpu.upload("a", &a).unwrap(), gpu.upload("b", &b).unwrap());
            let mut enc = Recorder::new(&gpu);
            k.add(&mut enc, &ab, &bb, len).unwrap();
            enc.submit();
            let mut want = a.clone();
            cpu::add_assign(&mut want, &b);
            assert_eq!(gpu.read_f32(&ab, len).unwrap(), want, "add, {len} values");

            let (ab, row) = (gpu.upload("a", &a).unwrap(), values(7, 4));
            let rb = gpu.upload("row", &row).unwrap();
            let mut enc = Recorder::new(&gpu);
            k.add_row(&mut enc, &ab, &rb, len, 7).unwrap();
            enc.submit();
            let want: Vec<f32> = a.iter().enumerate().map(|(i, x)| x + row[i % 7]).collect();
            assert_eq!(gpu.read_f32(&ab, len).unwrap(), want, "add_row, {len} values");

            let ab = gpu.upload("a", &a).unwrap();
            let mut enc = Recorder::new(&gpu);
            k.swiglu(&mut enc, &ab, &bb, len).unwrap();
            enc.submit();
            let mut want = a.clone();
            cpu::swiglu(&mut want, &b);
            for (i, (x, y)) in gpu.read_f32(&ab, len).unwrap().iter().zip(&want).enumerate() {
                // the GPU's exp is not correctly rounded
                assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-2), "swiglu, {len} values [{i}]: gpu {x} vs cpu {y}");
            }
        }
    }
}
