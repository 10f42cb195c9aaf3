//! Adding expert outputs into a layer's output on the GPU (`shaders/moe_combine.wgsl`):
//! routed experts' rows scattered to their tokens with their routing weights, and a
//! shared expert behind a sigmoid gate. Tokens routed to one expert are distinct, so one
//! dispatch never adds twice to the same value.

use super::recorder::Recorder;
use super::kernel::{Kernel, MAX_GROUPS};
use super::Gpu;
use crate::Result;

/// The compiled combine kernels.
pub struct MoeCombine {
    scatter: Kernel,
    gated: Kernel,
    weighted: Kernel,
}

fn grid(total: usize) -> ([u32; 3], u32) {
    let groups = total.div_ceil(256).max(1);
    let gx = groups.min(MAX_GROUPS as usize);
    ([gx as u32, groups.div_ceil(gx) as u32, 1], (gx * 256) as u32)
}

impl MoeCombine {
    /// Compiles the kernels.
    pub fn new(gpu: &Gpu) -> MoeCombine {
        let src = include_str!("../../../shaders/moe_combine.wgsl");
        MoeCombine { scatter: Kernel::new(gpu, "scatter_add", src, "scatter_add"), gated: Kernel::new(gpu, "gated_add", src, "gated_add"), weighted: Kernel::new(gpu, "weighted_sum", src, "weighted_sum") }
    }

    /// Records `out[idx[i]] += wts[i] · y[i]` for the `rows` rows of `y` (each `d` long);
    /// `idx` holds u32 token indices, `wts` f32 weights.
    #[allow(clippy::too_many_arguments)]
    pub fn scatter_add(&self, rec: &mut Recorder, out: &wgpu::Buffer, y: &wgpu::Buffer, idx: &wgpu::Buffer, wts: &wgpu::Buffer, rows: usize, d: usize) -> Result<()> {
        let (g, per) = grid(rows * d);
        self.scatter.record(rec, &[out, y, idx, wts], &[rows as u32, d as u32, per], g)
    }

    /// Records `out[t] += sigmoid(gate[t]) · y[t]` for `rows` rows of `d` values.
    #[allow(clippy::too_many_arguments)]
    pub fn gated_add(&self, rec: &mut Recorder, out: &wgpu::Buffer, y: &wgpu::Buffer, gate: &wgpu::Buffer, rows: usize, d: usize) -> Result<()> {
        let (g, per) = grid(rows * d);
        self.gated.record_bound(rec, &[(0, out), (1, y), (3, gate)], 4, &[rows as u32, d as u32, per], g)
    }

    /// Records `out[t] = Σ_s wts[t·k + s] · y[t·k + s]` (with `accumulate`, `+=`) for
    /// `rows` tokens of `d` values: each token's `k` routed expert outputs (consecutive
    /// rows of `y`) mixed by weight.
    #[allow(clippy::too_many_arguments)]
    pub fn weighted_sum(&self, rec: &mut Recorder, out: &wgpu::Buffer, y: &wgpu::Buffer, wts: &wgpu::Buffer, rows: usize, k: usize, d: usize, accumulate: bool) -> Result<()> {
        let (g, per) = grid(rows * d);
        self.weighted.record_bound(rec, &[(0, out), (1, y), (3, wts)], 4, &[rows as u32, d as u32, per, k as u32, accumulate as u32], g)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::compute::cpu::sigmoid;

    #[test]
    fn gpu_combines_expert_outputs_like_the_cpu_loop() {
        let Some(gpu) = gpu_or_skip() else { return };
        let k = MoeCombine::new(&gpu);
        let (n, d) = (5, 70);
        let out0 = values(n * d, 1);
        let y = values(3 * d, 2);
        let (idx, wts) = ([4u32, 0, 2], [0.5f32, 0.25, -1.5]);
        let mut want = out0.clone();
        for (i, (&t, &w)) in idx.iter().zip(&wts).enumerate() {
            for j in 0..d {
                want[t as usize * d + j] += w * y[i * d + j];
            }
        }
        let out = gpu.upload("out", &out0).unwrap();
        let (yb, ib, wb) = (gpu.upload("y", &y).unwrap(), gpu.storage("idx", bytemuck::cast_slice(&idx)).unwrap(), gpu.upload("w", &wts).unwrap());
        let mut enc = Recorder::new(&gpu);
        k.scatter_add(&mut enc, &out, &yb, &ib, &wb, 3, d).unwrap();
        enc.submit();
        // a device may fuse the multiply and add (one rounding instead of two)
        for (i, (a, b)) in gpu.read_f32(&out, n * d).unwrap().iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "scatter [{i}]: gpu {a} vs cpu {b}");
        }

        // weighted sum of k = 3 rows per token, overwriting
        let (k3, yk, wk) = (3, values(n * 3 * d, 5), values(n * 3, 6));
        let mut mixed = vec![0.0f32; n * d];
        for t in 0..n {
            for s in 0..k3 {
                for j in 0..d {
                    mixed[t * d + j] += wk[t * k3 + s] * yk[(t * k3 + s) * d + j];
                }
            }
        }
        let (ob, ykb, wkb) = (gpu.upload("out", &values(n * d, 7)).unwrap(), gpu.upload("y", &yk).unwrap(), gpu.upload("w", &wk).unwrap());
        let mut enc = Recorder::new(&gpu);
        k.weighted_sum(&mut enc, &ob, &ykb, &wkb, n, k3, d, false).unwrap();
        enc.submit();
        for (i, (a, b)) in gpu.read_f32(&ob, n * d).unwrap().iter().zip(&mixed).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "weighted [{i}]: gpu {a} vs cpu {b}");
        }
        // accumulating adds the same again
        let mut enc = Recorder::new(&gpu);
        k.weighted_sum(&mut enc, &ob, &ykb, &wkb, n, k3, d, true).unwrap();
        enc.submit();
        for (i, (a, b)) in gpu.read_f32(&ob, n * d).unwrap().iter().zip(&mixed).enumerate() {
            assert!((a - 2.0 * b).abs() <= 2e-5 * b.abs().max(1.0), "weighted, added [{i}]: gpu {a} vs cpu {}", 2.0 * b);
        }

        let (ys, gate) = (values(n * d, 3), values(n, 4));
        for t in 0..n {
            for j in 0..d {
                want[t * d + j] += sigmoid(gate[t]) * ys[t * d + j];
            }
        }
        let (yb, gb) = (gpu.upload("y", &ys).unwrap(), gpu.upload("gate", &gate).unwrap());
        let mut enc = Recorder::new(&gpu);
        k.gated_add(&mut enc, &out, &yb, &gb, n, d).unwrap();
        enc.submit();
        for (i, (a, b)) in gpu.read_f32(&out, n * d).unwrap().iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "gated [{i}]: gpu {a} vs cpu {b}");
        }
    }
}
