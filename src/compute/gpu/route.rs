//! Expert routing on the GPU (`shaders/route.wgsl`): router logits to each token's chosen
//! experts and mixing weights in device buffers, so a MoE layer's expert products follow
//! without a readback. The CPU router ([`crate::model::router::route`]) is the reference.

use super::recorder::Recorder;
use super::kernel::grid;
use crate::model::config::{Gating, GroupScore, MoeConfig};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../../shaders/route.wgsl");

/// Most experts per layer the kernel holds (Kimi-K2 has 384, DeepSeek-V3 256).
pub const MAX_EXPERTS: usize = 1024;
/// Most experts per token.
pub const MAX_K: usize = 64;
/// Most expert groups (their kept set is a 32-bit mask).
pub const MAX_GROUPS: usize = 32;

/// Each token's chosen experts (`n × k` ids, best first) and their weights.
pub struct Routes {
    /// Expert ids, u32.
    pub ids: wgpu::Buffer,
    /// Mixing weights, f32.
    pub weights: wgpu::Buffer,
}

/// Whether `cfg`'s routing fits the kernel (else the caller routes on the CPU).
pub fn supported(cfg: &MoeConfig) -> bool {
    cfg.n_expert <= MAX_EXPERTS && cfg.n_expert_used <= MAX_K && cfg.n_expert_used <= cfg.n_expert && cfg.n_group <= MAX_GROUPS && cfg.n_group >= 1 && cfg.n_expert.is_multiple_of(cfg.n_group)
}

/// Records routing `n` tokens' router `logits` (`n × n_expert`), with DeepSeek's selection
/// `bias` (`n_expert`) if the model has one.
pub fn record(rec: &mut Recorder, cfg: &MoeConfig, logits: &wgpu::Buffer, bias: Option<&wgpu::Buffer>, n: usize) -> Result<Routes> {
    if !supported(cfg) {
        return Err(Error::Gpu(format!("routing {} experts, {} per token, in {} groups is beyond the GPU router", cfg.n_expert, cfg.n_expert_used, cfg.n_group)));
    }
    let k = cfg.n_expert_used;
    let routes = Routes { ids: rec.output("expert ids", n * k), weights: rec.output("expert weights", n * k) };
    let (gx, gy) = grid(n);
    let dims = [
        n as u32,
        cfg.n_expert as u32,
        k as u32,
        gx as u32,
        (cfg.gating == Gating::Sigmoid) as u32,
        bias.is_some() as u32,
        cfg.norm_weights as u32,
        cfg.weights_scale.to_bits(),
        cfg.n_group as u32,
        cfg.n_group_used as u32,
        (cfg.group_score == GroupScore::SumTop2) as u32,
    ];
    let kernel = rec.gpu().kernel("route", SOURCE, "main");
    kernel.record(rec, &[logits, bias.unwrap_or(&rec.gpu().zero_word), &routes.ids, &routes.weights], &dims, [gx as u32, gy as u32, 1])?;
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{gpu_or_skip, values};
    use super::*;
    use crate::model::router::route;

    fn moe(n_expert: usize, k: usize, gating: Gating, norm: bool, scale: f32, groups: (usize, usize, GroupScore)) -> MoeConfig {
        MoeConfig { n_expert, n_expert_used: k, n_ff_exp: 0, gating, norm_weights: norm, weights_scale: scale, n_group: groups.0, n_group_used: groups.1, group_score: groups.2, n_ff_shexp: 0, n_dense_lead: 0 }
    }

    #[test]
    fn gpu_routes_like_the_cpu_router() {
        let Some(gpu) = gpu_or_skip() else { return };
        let cases = [
            moe(8, 2, Gating::Softmax, false, 1.0, (1, 1, GroupScore::Max)),      // Mixtral
            moe(128, 8, Gating::Softmax, true, 1.0, (1, 1, GroupScore::Max)),     // Qwen3-MoE
            moe(60, 4, Gating::Softmax, false, 1.0, (1, 1, GroupScore::Max)),     // Qwen2-MoE
            moe(256, 8, Gating::Sigmoid, true, 2.5, (8, 4, GroupScore::SumTop2)), // DeepSeek-V3
            moe(64, 6, Gating::Softmax, false, 16.0, (8, 3, GroupScore::Max)),    // DeepSeek-V2
            moe(384, 8, Gating::Sigmoid, true, 2.827, (1, 1, GroupScore::Max)),   // Kimi-K2
        ];
        for (c, cfg) in cases.iter().enumerate() {
            let n = 5;
            let logits: Vec<f32> = values(n * cfg.n_expert, c as u64 + 3).iter().map(|v| v * 1.7).collect();
            let bias = (cfg.gating == Gating::Sigmoid).then(|| values(cfg.n_expert, 99).iter().map(|v| v * 0.01).collect::<Vec<f32>>());
            let lb = gpu.upload("logits", &logits).unwrap();
            let bb = bias.as_ref().map(|b| gpu.upload("bias", b).unwrap());
            let mut enc = Recorder::new(&gpu);
            let r = record(&mut enc, cfg, &lb, bb.as_ref(), n).unwrap();
            enc.submit();
            let k = cfg.n_expert_used;
            let ids: Vec<usize> = gpu.read_f32(&r.ids, n * k).unwrap().iter().map(|v| v.to_bits() as usize).collect();
            let wts = gpu.read_f32(&r.weights, n * k).unwrap();
            for t in 0..n {
                let want = route(cfg, &logits[t * cfg.n_expert..(t + 1) * cfg.n_expert], bias.as_deref());
                assert_eq!(&ids[t * k..(t + 1) * k], &want.ids[..], "case {c} token {t}: chosen experts");
                for (g, w) in wts[t * k..(t + 1) * k].iter().zip(&want.weights) {
                    assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "case {c} token {t}: weight {g} vs {w}");
                }
            }
        }
    }
}
