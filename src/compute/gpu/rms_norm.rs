//! RMS normalization of rows on the GPU (`shaders/rms_norm.wgsl`); the CPU reference is
//! the CPU backend's [`crate::compute::cpu::rms_norm`].

use super::recorder::Recorder;
use super::kernel::{Kernel, MAX_GROUPS};
use super::Gpu;
use crate::Result;

/// The compiled RMS norm kernel, for one model's epsilon.
pub struct RmsNorm {
    kernel: Kernel,
    into: Kernel,
    eps: f32,
}

impl RmsNorm {
    /// Compiles the kernel.
    pub fn new(gpu: &Gpu, eps: f32) -> RmsNorm {
        let src = concat!(include_str!("../../../shaders/exact.wgsl"), include_str!("../../../shaders/rms_norm.wgsl"));
        RmsNorm { kernel: Kernel::new(gpu, "rms_norm", src, "main"), into: Kernel::new(gpu, "rms_norm_into", src, "into"), eps }
    }

    /// Records normalizing the `rows` rows of `x` (each `d` long) in place, scaled by `g`.
    pub fn record(&self, rec: &mut Recorder, x: &wgpu::Buffer, g: &wgpu::Buffer, rows: usize, d: usize) -> Result<()> {
        let per_y = rows.min(MAX_GROUPS as usize).max(1);
        let dims = [rows as u32, d as u32, self.eps.to_bits(), per_y as u32];
        self.kernel.record(rec, &[x, g], &dims, [per_y as u32, rows.div_ceil(per_y).max(1) as u32, 1])
    }

    /// Records writing `x`'s rows normalized into `y` (same shape), `x` unchanged.
    pub fn record_into(&self, rec: &mut Recorder, x: &wgpu::Buffer, y: &wgpu::Buffer, g: &wgpu::Buffer, rows: usize, d: usize) -> Result<()> {
        let per_y = rows.min(MAX_GROUPS as usize).max(1);
        let dims = [rows as u32, d as u32, self.eps.to_bits(), per_y as u32];
        self.into.record_bound(rec, &[(0, x), (1, g), (3, y)], 2, &dims, [per_y as u32, rows.div_ceil(per_y).max(1) as u32, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu;

    #[test]
    fn gpu_rms_norm_matches_the_cpu_backend() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = RmsNorm::new(&gpu, 1e-6);
        // rows of many magnitudes (the mean, root and reciprocal across exponents), sizes
        // with and without a tail, past one stretch of squares
        for (rows, d) in [(1, 1), (3, 100), (5, 2048), (2, 7168), (40, 515)] {
            let x: Vec<f32> = values(rows * d, d as u64).iter().enumerate().map(|(i, v)| v * 1.37f32.powi((i / d) as i32 * 3 - 50)).collect();
            let g = values(d, 7);
            let mut want = x.clone();
            cpu::rms_norm(&mut want, &g, 1e-6);
            let (xb, gb) = (gpu.upload("x", &x).unwrap(), gpu.upload("g", &g).unwrap());
            // out of place first (x must stay), then in place
            let yb = gpu.output("y", rows * d);
            let mut enc = Recorder::new(&gpu);
            k.record_into(&mut enc, &xb, &yb, &gb, rows, d).unwrap();
            enc.submit();
            let into = gpu.read_f32(&yb, rows * d).unwrap();
            let mut enc = Recorder::new(&gpu);
            k.record(&mut enc, &xb, &gb, rows, d).unwrap();
            enc.submit();
            let got = gpu.read_f32(&xb, rows * d).unwrap();
            assert_eq!(into, got, "{rows}x{d}: the same values either way");
            // the same bits as the CPU backend
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{rows}x{d} [{i}]: gpu {a} vs cpu {b}");
            }
        }
    }
}
