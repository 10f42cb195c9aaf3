//! Adding expert outputs into a layer's output on the GPU (`shaders/moe_combine.wgsl`):
//! each token's routed experts' rows mixed by their routing weights, and a shared expert
//! behind a sigmoid gate.

use super::recorder::Recorder;
use super::kernel::{Kernel, MAX_GROUPS};
use super::Gpu;
use crate::Result;

/// The compiled combine kernels.
pub struct MoeCombine {
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
        MoeCombine { gated: Kernel::new(gpu, "gated_add", src, "gated_add"), weighted: Kernel::new(gpu, "weighted_sum", src, "weighted_sum") }
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

        // a gated shared expert added to the layer's output
        let out0 = values(n * d, 1);
        let mut want = out0.clone();
        let out = gpu.upload("out", &out0).unwrap();
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
