//! The routed experts of a [`GpuModel`]: all of them stacked per layer when they fit the
//! device expert budget (routing and every chosen expert then run on the device), or
//! else those routed lately, fetched through the expert source as the CPU routes
//! ([`DeviceExperts`]).

use super::{GpuFfn, GpuMlp, GpuModel, Vector};
use crate::compute::gpu::matrix::{device_bytes, Experts, GpuMatrix};
use crate::compute::gpu::recorder::Recorder;
use crate::compute::gpu::{route, Gpu};
use crate::model::config::MoeConfig;
use crate::model::router::group_by_expert;
use crate::model::weights::Ffn;
use crate::Result;

/// Routed experts kept on the device between steps: an expert a step needs is fetched
/// from the model's expert source (the pager included) and uploaded only if it is not
/// held already; beyond `budget` bytes (of their blocks) the least recently used are
/// dropped, never one the current step uses. (Buffers a recorded pass still references
/// live on until the device is done with them.)
pub(super) struct DeviceExperts {
    budget: u64,
    state: std::sync::Mutex<DeviceState>,
}

#[derive(Default)]
struct DeviceState {
    held: std::collections::HashMap<(usize, usize), (std::sync::Arc<GpuMlp>, u64, u64)>,
    bytes: u64,
    clock: u64,
    uploads: u64,
}

impl DeviceExperts {
    pub(super) fn new(budget: u64) -> DeviceExperts {
        DeviceExperts { budget, state: Default::default() }
    }

    /// The device copies of `ids` of `layer`, in order; `fetch(missing)` brings the host
    /// weights of those not held.
    fn get(&self, gpu: &Gpu, layer: usize, ids: &[usize], fetch: impl FnOnce(&[usize]) -> Result<Vec<crate::experts::ExpertWeights>>) -> Result<Vec<std::sync::Arc<GpuMlp>>> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let missing: Vec<usize> = ids.iter().copied().filter(|&e| !st.held.contains_key(&(layer, e))).collect();
        if !missing.is_empty() {
            for (&e, w) in missing.iter().zip(fetch(&missing)?) {
                let bytes = [&w.gate, &w.up, &w.down].into_iter().map(device_bytes).sum();
                let mlp = std::sync::Arc::new(GpuMlp::new(gpu, &w.gate, &w.up, &w.down)?);
                st.held.insert((layer, e), (mlp, bytes, 0));
                st.bytes += bytes;
                st.uploads += 1;
            }
        }
        st.clock += 1;
        let now = st.clock;
        let out = ids
            .iter()
            .map(|&e| {
                let entry = st.held.get_mut(&(layer, e)).expect("just made present");
                entry.2 = now;
                entry.0.clone()
            })
            .collect();
        // over budget: drop the least recently used, never this step's
        while st.bytes > self.budget {
            let Some((&key, _)) = st.held.iter().filter(|(_, v)| v.2 != now).min_by_key(|(_, v)| v.2) else { break };
            let (_, bytes, _) = st.held.remove(&key).expect("present");
            st.bytes -= bytes;
        }
        Ok(out)
    }
}

impl<'a> GpuModel<'a> {
    /// Routed experts uploaded so far (each upload follows a fetch from the expert source).
    pub fn expert_uploads(&self) -> u64 {
        self.experts.state.lock().unwrap_or_else(|p| p.into_inner()).uploads
    }

    /// Device bytes of every routed expert of every layer (what the device expert budget
    /// must allow for all of them to be resident).
    pub fn all_expert_bytes(&self) -> Result<u64> {
        let Some(moe) = self.model.config.moe.as_ref() else { return Ok(0) };
        let Some(first) = self.layers.iter().position(|l| matches!(l.ffn, GpuFfn::Moe { .. })) else { return Ok(0) };
        let one = self.model.experts.expert(first, 0)?;
        let per_expert: u64 = [&one.gate, &one.up, &one.down].into_iter().map(device_bytes).sum();
        let moe_layers = self.layers.iter().filter(|l| matches!(l.ffn, GpuFfn::Moe { .. })).count() as u64;
        Ok(per_expert * moe.n_expert as u64 * moe_layers)
    }

    /// Uploads each MoE layer's routed experts as one stack per projection, so a step
    /// routes on the device and runs every chosen expert in one dispatch per projection,
    /// with no readback (the "all experts resident" mode, taken when they fit the budget).
    pub(super) fn upload_all_experts(&mut self) -> Result<()> {
        let Some(moe) = self.model.config.moe.as_ref() else { return Ok(()) };
        let ids: Vec<usize> = (0..moe.n_expert).collect();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let GpuFfn::Moe { resident, .. } = &mut layer.ffn else { continue };
            let (mut gate, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new());
            for chunk in ids.chunks(32) {
                for w in self.model.experts.experts(l, chunk)? {
                    gate.push(w.gate);
                    up.push(w.up);
                    down.push(w.down);
                }
            }
            *resident = Some(Box::new(GpuMlp { gate: GpuMatrix::stacked(self.gpu, &gate)?, up: GpuMatrix::stacked(self.gpu, &up)?, down: GpuMatrix::stacked(self.gpu, &down)? }));
        }
        Ok(())
    }

    /// Whether every routed expert is on the device (routing then runs there too).
    pub fn experts_resident(&self) -> bool {
        self.layers.iter().all(|l| match &l.ffn {
            GpuFfn::Moe { resident, .. } => resident.is_some(),
            GpuFfn::Dense(_) => true,
        })
    }

    /// The routed experts of one MoE layer for the `n` rows of `h`, all on the device:
    /// route, then each projection once over every (token, chosen expert) pair, then each
    /// token's outputs mixed by their weights — into a new buffer, or added straight to
    /// `residual` (then `None` is returned).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn resident_experts(&self, rec: &mut Recorder, moe: &MoeConfig, experts: &GpuMlp, logits: &wgpu::Buffer, bias: Option<&Vector>, h: &wgpu::Buffer, n: usize, residual: Option<&wgpu::Buffer>) -> Result<Option<wgpu::Buffer>> {
        let (k, d) = (moe.n_expert_used, self.model.config.n_embd);
        let nk = n * k;
        let routes = route::record(rec, moe, logits, bias.map(|b| &b.buf), n)?;
        let [g, u] = self.matmuls(rec, [&experts.gate, &experts.up], h, n, Some(Experts { ids: &routes.ids, act_div: k }))?;
        let qd = self.swiglu_for(rec, &experts.down, &g, &u, nk)?;
        let o = rec.output("expert out", nk * d);
        experts.down.record_quantized(rec, &g, qd.as_ref(), &o, nk, Some(Experts { ids: &routes.ids, act_div: 1 }))?;
        if let Some(x) = residual {
            self.k.combine.weighted_sum(rec, x, &o, &routes.weights, n, k, d, true)?;
            return Ok(None);
        }
        let out = rec.output("ffn out", n * d);
        self.k.combine.weighted_sum(rec, &out, &o, &routes.weights, n, k, d, false)?;
        Ok(Some(out))
    }

    /// The routed experts of MoE layer `l` when the device does not hold them all: the
    /// router logits come back, the CPU routes, and the chosen experts are fetched (those
    /// not already on the device) and applied one by one. With the model's prefetch on,
    /// the layer's input comes back too and the later layers' likely experts are asked
    /// for first (as the CPU pass does).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fetched_experts(&self, rec: &mut Recorder, l: usize, moe: &MoeConfig, lb: &wgpu::Buffer, h: &wgpu::Buffer, n: usize) -> Result<wgpu::Buffer> {
        let (gpu, d) = (self.gpu, self.model.config.n_embd);
        let Ffn::Moe { bias, .. } = &self.model.weights.layers[l].ffn else { unreachable!("the layers mirror the model's") };
        let routed = n * moe.n_expert;
        let logits = if self.model.prefetch() == crate::model::Prefetch::Off {
            self.read(rec, lb, routed)?
        } else {
            // the layer's input comes back with the logits (one wait), so the expert
            // source reads the next layers' likely experts while this one runs
            let both = rec.output("logits and input", routed + n * d);
            rec.copy(lb, 0, &both, 0, (routed * 4) as u64);
            rec.copy(h, 0, &both, (routed * 4) as u64, (n * d * 4) as u64);
            let mut v = self.read(rec, &both, routed + n * d)?;
            self.model.prefetch_ahead(l, &v[routed..]);
            v.truncate(routed);
            v
        };
        // tokens by expert, each expert fetched once, as the CPU pass does
        let by_expert = group_by_expert(moe, &logits, bias.as_deref(), None);
        let ids: Vec<usize> = by_expert.keys().copied().collect();
        let fetched = self.experts.get(gpu, l, &ids, |missing| self.model.experts.experts(l, missing));
        self.model.layer_done(l);
        let fetched = fetched?;
        let out = rec.output("ffn out", n * d);
        rec.clear(&out); // the experts add into it
        for (toks, w) in by_expert.values().zip(&fetched) {
            let m = toks.len();
            let xe = rec.output("expert in", m * d);
            for (i, &(t, _)) in toks.iter().enumerate() {
                rec.copy(h, (t * d * 4) as u64, &xe, (i * d * 4) as u64, (d * 4) as u64);
            }
            let y = self.mlp(rec, w, &xe, m)?;
            let idx: Vec<u32> = toks.iter().map(|&(t, _)| t as u32).collect();
            let wts: Vec<f32> = toks.iter().map(|&(_, w)| w).collect();
            let (ib, wb) = (gpu.storage("expert tokens", bytemuck::cast_slice(&idx))?, rec.upload("expert weights", &wts)?);
            self.k.combine.scatter_add(rec, &out, &y, &ib, &wb, m, d)?;
        }
        Ok(out)
    }
}
