//! f32 values to packed f16 pairs on the GPU (`shaders/half_rows.wgsl`): how new keys
//! and values enter an f16 key/value cache. Rounded as the CPU's f16 cache rounds them
//! (to nearest, ties to even), so both backends cache the same values; the CPU
//! reference is [`to_half_words`].

use super::kernel::{grid, Kernel};
use super::recorder::Recorder;
use super::Gpu;
use crate::{Error, Result};

/// The compiled kernels.
pub struct HalfRows {
    kernel: Kernel,
    scatter: Kernel,
}

impl HalfRows {
    /// Compiles the kernel.
    pub fn new(gpu: &Gpu) -> HalfRows {
        let src = include_str!("../../../shaders/half_rows.wgsl");
        HalfRows { kernel: Kernel::new(gpu, "half_rows", src, "main"), scatter: Kernel::new(gpu, "half_scatter", src, "scatter") }
    }

    /// Records packing `values` f32 values of `src` from value `src_off` on into
    /// `values / 2` words of `dst` from word `dst_off` on (`values` even).
    pub fn record(&self, rec: &mut Recorder, src: &wgpu::Buffer, src_off: usize, dst: &wgpu::Buffer, dst_off: usize, values: usize) -> Result<()> {
        if !values.is_multiple_of(2) {
            return Err(Error::Invalid(format!("f16 pairs of an odd number of values ({values})")));
        }
        let words = values / 2;
        if words == 0 {
            return Ok(());
        }
        let groups = words.div_ceil(256);
        let (per_y, gy) = grid(groups);
        let dims = [words as u32, src_off as u32, dst_off as u32, per_y as u32];
        self.kernel.record(rec, &[src, dst], &dims, [per_y as u32, gy as u32, 1])
    }
}

impl HalfRows {
    /// Records packing `rows` rows of `width` values (even), row r from value `src_off +
    /// r · width` of `src`, into row `idx[r]` of `dst` (`width / 2` words a row; `idx`:
    /// u32 row numbers).
    #[allow(clippy::too_many_arguments)]
    pub fn scatter(&self, rec: &mut Recorder, src: &wgpu::Buffer, src_off: usize, dst: &wgpu::Buffer, idx: &wgpu::Buffer, rows: usize, width: usize) -> Result<()> {
        if !width.is_multiple_of(2) {
            return Err(Error::Invalid(format!("f16 rows of an odd number of values ({width})")));
        }
        let words = rows * width / 2;
        if words == 0 {
            return Ok(());
        }
        let groups = words.div_ceil(256);
        let (per_y, gy) = grid(groups);
        let dims = [rows as u32, width as u32, src_off as u32, per_y as u32];
        self.scatter.record_bound(rec, &[(0, src), (1, dst), (3, idx)], 4, &dims, [per_y as u32, gy as u32, 1])
    }
}

/// The CPU reference: `values` packed two f16 to a word, the first in the low half.
pub fn to_half_words(values: &[f32]) -> Vec<u32> {
    values.chunks_exact(2).map(|p| u32::from(half::f16::from_f32(p[0]).to_bits()) | (u32::from(half::f16::from_f32(p[1]).to_bits()) << 16)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;

    #[test]
    fn gpu_f16_packing_matches_the_cpu_rounding() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = HalfRows::new(&gpu);
        // ordinary values, exact ties (to even, both ways), subnormals, the largest
        // finite value and beyond, zeros of both signs
        let mut v = values(1000, 3);
        v.extend([1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, -(1.0 + 1.0 / 2048.0), 3e-6, -7.5e-8, 1e-9, 65504.0, 65519.0, 65520.0, -1e6, 0.0, -0.0]);
        let want = to_half_words(&v);
        let before: Vec<u32> = (0..want.len() as u32 + 9).map(|i| i.wrapping_mul(2654435761)).collect();
        let src = gpu.upload("src", &[vec![7.0; 6], v.clone()].concat()).unwrap();
        let dst = gpu.storage("dst", bytemuck::cast_slice(&before)).unwrap();
        let mut rec = Recorder::new(&gpu);
        k.record(&mut rec, &src, 6, &dst, 5, v.len()).unwrap();
        rec.submit();
        let got: Vec<u32> = bytemuck::cast_slice(&gpu.read_f32(&dst, before.len()).unwrap()).to_vec();
        // words before and after the written ones keep theirs
        assert_eq!(got[..5], before[..5]);
        assert_eq!(got[5..5 + want.len()], want[..]);
        assert_eq!(got[5 + want.len()..], before[5 + want.len()..]);
        assert!(k.record(&mut Recorder::new(&gpu), &src, 0, &dst, 0, 3).is_err());
    }

    #[test]
    fn gpu_half_scatters_match_the_cpu_reference() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = HalfRows::new(&gpu);
        let (rows, width, src_off, dst_rows) = (37, 130, 6, 50);
        let src = values(src_off + rows * width, 8);
        let idx: Vec<u32> = (0..rows as u32).map(|r| (r * 11 + 2) % dst_rows as u32).collect();
        let mut want = vec![0u32; dst_rows * width / 2];
        for (r, &i) in idx.iter().enumerate() {
            let w = to_half_words(&src[src_off + r * width..src_off + (r + 1) * width]);
            want[i as usize * width / 2..(i as usize + 1) * width / 2].copy_from_slice(&w);
        }
        let sb = gpu.upload("src", &src).unwrap();
        let db = gpu.storage("dst", bytemuck::cast_slice(&vec![0u32; dst_rows * width / 2])).unwrap();
        let ib = gpu.storage("idx", bytemuck::cast_slice(&idx)).unwrap();
        let mut rec = Recorder::new(&gpu);
        k.scatter(&mut rec, &sb, src_off, &db, &ib, rows, width).unwrap();
        rec.submit();
        let got: Vec<u32> = gpu.read_f32(&db, want.len()).unwrap().into_iter().map(f32::to_bits).collect();
        assert_eq!(got, want);
    }
}
