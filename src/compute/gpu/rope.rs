//! Rotary position embedding on the GPU (`shaders/rope.wgsl`). The angles' cosines and
//! sines are computed on the host by [`Rotation`] — the CPU backend's own — so normal,
//! NeoX and YaRN rotations are all the same kernel; the CPU reference is
//! [`Rotation::apply`].

use super::recorder::Recorder;
use super::kernel::{Kernel, MAX_GROUPS};
use super::Gpu;
use crate::model::config::RopeStyle;
use crate::model::rope::Rotation;
use crate::{Error, Result};

/// The compiled rope kernel.
pub struct Rope(Kernel);

impl Rope {
    /// Compiles the kernel.
    pub fn new(gpu: &Gpu) -> Rope {
        Rope(Kernel::new(gpu, "rope", include_str!("../../../shaders/rope.wgsl"), "main"))
    }

    /// The cosines then the sines of `rot` (one rotation per token), as the kernel reads them.
    pub fn table(rot: &[Rotation]) -> Vec<f32> {
        let mut out: Vec<f32> = rot.iter().flat_map(|r| r.table().0.iter().copied()).collect();
        out.extend(rot.iter().flat_map(|r| r.table().1.iter().copied()));
        out
    }

    /// Records rotating `x` (`n × heads × head_dim` on the device) in place by the
    /// rotations whose [`Rope::table`] is in `cs`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(&self, rec: &mut Recorder, x: &wgpu::Buffer, cs: &wgpu::Buffer, rot: &[Rotation], heads: usize, head_dim: usize) -> Result<()> {
        let zero = rec.gpu().zero_word.clone();
        self.record_pair(rec, (x, heads), (&zero, 0), cs, rot, head_dim)
    }

    /// Records rotating two tensors of the same tokens and head size (queries and keys)
    /// in one dispatch: `a` and `b` with their head counts.
    pub fn record_pair(&self, rec: &mut Recorder, a: (&wgpu::Buffer, usize), b: (&wgpu::Buffer, usize), cs: &wgpu::Buffer, rot: &[Rotation], head_dim: usize) -> Result<()> {
        let Some(first) = rot.first() else { return Ok(()) };
        let half = first.table().0.len();
        if 2 * half > head_dim {
            return Err(Error::Invalid(format!("rope: {} rotated dimensions exceed the head's {head_dim}", 2 * half)));
        }
        let neox = u32::from(first.style() == RopeStyle::Neox);
        let total = rot.len() * (a.1 + b.1) * half;
        let groups = total.div_ceil(256).max(1);
        let gx = groups.min(MAX_GROUPS as usize);
        let dims = [rot.len() as u32, a.1 as u32, head_dim as u32, half as u32, neox, (gx * 256) as u32, b.1 as u32];
        self.0.record_bound(rec, &[(0, a.0), (1, cs), (3, b.0)], 2, &dims, [gx as u32, groups.div_ceil(gx) as u32, 1])
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::model::config::RopeConfig;

    #[test]
    fn gpu_rope_matches_the_cpu_rotation() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = Rope::new(&gpu);
        // interleaved and NeoX pairs, partial rotation, YaRN scaling
        let base = RopeConfig { style: RopeStyle::Interleaved, n_rot: 64, freq_base: 10000.0, freq_scale: 1.0, ext_factor: 0.0, mscale: 1.0, beta_fast: 32.0, beta_slow: 1.0, n_ctx_orig: 4096 };
        let yarn = RopeConfig { style: RopeStyle::Neox, n_rot: 64, freq_base: 1e6, freq_scale: 0.25, ext_factor: 1.0, mscale: 1.1, ..base.clone() };
        let partial = RopeConfig { style: RopeStyle::Neox, n_rot: 32, ..base.clone() };
        for (cfg, heads, head_dim, pos0, n) in [(base, 3, 64, 0, 5), (yarn, 2, 64, 1000, 3), (partial, 4, 80, 17, 7)] {
            let rot: Vec<Rotation> = (0..n).map(|t| Rotation::new(&cfg, pos0 + t)).collect();
            let x = values(n * heads * head_dim, 3);
            let mut want = x.clone();
            for t in 0..n {
                for h in want[t * heads * head_dim..(t + 1) * heads * head_dim].chunks_exact_mut(head_dim) {
                    rot[t].apply(h);
                }
            }
            let (xb, cs) = (gpu.upload("x", &x).unwrap(), gpu.upload("cs", &Rope::table(&rot)).unwrap());
            let mut enc = Recorder::new(&gpu);
            k.record(&mut enc, &xb, &cs, &rot, heads, head_dim).unwrap();
            enc.submit();
            for (i, (a, b)) in gpu.read_f32(&xb, x.len()).unwrap().iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{:?} [{i}]: gpu {a} vs cpu {b}", cfg.style);
            }
            // as a pair (queries and keys with fewer heads, in one dispatch): the same
            let kv_heads = 1;
            let y = values(n * kv_heads * head_dim, 4);
            let mut want_y = y.clone();
            for t in 0..n {
                rot[t].apply(&mut want_y[t * head_dim..(t + 1) * head_dim]);
            }
            let (xb, yb) = (gpu.upload("x", &x).unwrap(), gpu.upload("y", &y).unwrap());
            let mut enc = Recorder::new(&gpu);
            k.record_pair(&mut enc, (&xb, heads), (&yb, kv_heads), &cs, &rot, head_dim).unwrap();
            enc.submit();
            let got = gpu.read_f32(&xb, x.len()).unwrap().into_iter().chain(gpu.read_f32(&yb, y.len()).unwrap());
            for (i, (a, b)) in got.zip(want.iter().chain(&want_y)).enumerate() {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{:?} pair [{i}]: gpu {a} vs cpu {b}", cfg.style);
            }
        }
    }
}
