//! The routed experts of a [`GpuModel`]: all of them stacked per layer when they fit the
//! device expert budget (routing and every chosen expert then run on the device), or
//! else those routed lately, fetched through the expert source as the CPU routes
//! ([`DeviceExperts`]).

use super::{ExpertGrouping, GpuFfn, GpuMlp, GpuModel, Vector};
use crate::compute::gpu::expert_tiles::{expert_tiles, Tiles, MAX_EXPERTS};
use crate::compute::gpu::matrix::{device_bytes, Experts, GpuMatrix};
use crate::compute::gpu::recorder::Recorder;
use crate::compute::gpu::{route, Gpu};
use crate::model::config::MoeConfig;
use crate::model::router::route;
use crate::model::weights::Ffn;
use crate::{Error, Result};

/// Weights of one expert projection from which grouping pairs by expert can pay (see
/// `GpuModel::groups_pairs`): Mixtral's 58M did, Qwen3-30B-A3B's 1.5M did not.
const GROUPED_EXPERT_WEIGHTS: usize = 16 << 20;

/// Routed experts kept on the device between steps, in slabs: one stack of equal slots
/// per projection for each shape and format of expert (usually one for the whole model;
/// quantization mixes such as Q4_K_M give some layers' down projections another format).
/// An expert a step needs is fetched from the model's expert source (the pager
/// included) and written into a slot only if it is not held already; a step's experts
/// are then one indexed product per projection, like resident experts. Slots are
/// device memory whether they hold an expert or not: a slab grows (doubling at most)
/// within its shape's part of `budget` — by the bytes of the layers of that shape, so
/// the parts add up to the budget once every layer has been seen — and beyond it the
/// least recently used slot of the slab is taken over, never one the current layer
/// uses; a layer that needs more experts than its slab has slots grows it regardless.
///
/// A slot is written through the queue, which applies the write before the next
/// submission's commands and after every earlier submission's: a layer that fetches
/// has submitted everything recorded before it (the router's logits are read back), so
/// no recorded command still waits to read what a slot held.
pub(super) struct DeviceExperts {
    budget: u64,
    /// MoE layers of the model (each shape's part of the budget is by its layers).
    moe_layers: usize,
    state: std::sync::Mutex<DeviceState>,
}

/// Format and shape of an expert's three projections: experts alike share a slab.
type Shape = [(crate::quant::GgmlType, usize, usize); 3];

#[derive(Default)]
struct DeviceState {
    slabs: std::collections::HashMap<Shape, Slab>,
    /// Each MoE layer's expert shape, once it has fetched.
    layer_shape: std::collections::HashMap<usize, Shape>,
    clock: u64,
    uploads: u64,
}

/// One shape's slots.
struct Slab {
    mlp: std::sync::Arc<GpuMlp>,
    /// Device bytes of one slot (its three projections).
    slot_bytes: u64,
    /// Which (layer, expert) each slot holds, and when it was last used.
    owner: Vec<Option<((usize, usize), u64)>>,
    index: std::collections::HashMap<(usize, usize), usize>,
}

impl Slab {
    fn new(gpu: &Gpu, like: &crate::experts::ExpertWeights, slots: usize) -> Result<Slab> {
        let mlp = GpuMlp { gate: GpuMatrix::slab(gpu, &like.gate, slots)?, up: GpuMatrix::slab(gpu, &like.up, slots)?, down: GpuMatrix::slab(gpu, &like.down, slots)? };
        let slot_bytes = [&like.gate, &like.up, &like.down].into_iter().map(device_bytes).sum();
        Ok(Slab { mlp: std::sync::Arc::new(mlp), slot_bytes, owner: vec![None; slots], index: Default::default() })
    }

    fn slots(&self) -> usize {
        self.owner.len()
    }

    /// The same slab with `slots` slots, what it holds copied over (submitted at once,
    /// before any write to the new slots is).
    fn grown(&self, gpu: &Gpu, like: &crate::experts::ExpertWeights, slots: usize) -> Result<Slab> {
        let mut g = Slab::new(gpu, like, slots)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for (old, new) in [(&self.mlp.gate, &g.mlp.gate), (&self.mlp.up, &g.mlp.up), (&self.mlp.down, &g.mlp.down)] {
            for (a, b) in old.buffers().iter().zip(new.buffers()) {
                enc.copy_buffer_to_buffer(a, 0, b, 0, a.size());
            }
        }
        gpu.queue.submit([enc.finish()]);
        g.owner[..self.slots()].copy_from_slice(&self.owner);
        g.index = self.index.clone();
        Ok(g)
    }
}

impl DeviceExperts {
    pub(super) fn new(budget: u64, moe_layers: usize) -> DeviceExperts {
        DeviceExperts { budget, moe_layers, state: Default::default() }
    }

    /// The slab holding `ids` of `layer` and their slots, in order; `fetch(missing)`
    /// brings the host weights of those not held.
    fn get(&self, gpu: &Gpu, layer: usize, ids: &[usize], fetch: impl FnOnce(&[usize]) -> Result<Vec<crate::experts::ExpertWeights>>) -> Result<(std::sync::Arc<GpuMlp>, Vec<u32>)> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *st;
        let held = |st: &DeviceState, e: usize| st.layer_shape.get(&layer).and_then(|s| st.slabs.get(s)).is_some_and(|slab| slab.index.contains_key(&(layer, e)));
        let missing: Vec<usize> = ids.iter().copied().filter(|&e| !held(st, e)).collect();
        let weights = if missing.is_empty() { Vec::new() } else { fetch(&missing)? };
        if let Some(w) = weights.first() {
            let shape = [&w.gate, &w.up, &w.down].map(|m| (m.ty, m.rows, m.cols));
            st.layer_shape.insert(layer, shape);
        }
        st.clock += 1;
        let now = st.clock;
        let shape = *st.layer_shape.get(&layer).expect("a layer's experts were fetched once");
        if let std::collections::hash_map::Entry::Vacant(v) = st.slabs.entry(shape) {
            v.insert(Slab::new(gpu, weights.first().expect("a new shape comes with fetched experts"), 0)?);
        }
        // this shape's part of the budget, by the bytes of the layers seen so far (the
        // layers not seen yet counted at the largest slot seen)
        let slot_of = |sh: &Shape| st.slabs[sh].slot_bytes;
        let seen: u64 = st.layer_shape.values().map(slot_of).sum();
        let largest = st.slabs.values().map(|s| s.slot_bytes).max().unwrap_or(1);
        let unseen = self.moe_layers.saturating_sub(st.layer_shape.len()) as u64 * largest;
        let mine: u64 = st.layer_shape.values().filter(|&sh| *sh == shape).map(slot_of).sum();
        let share = (self.budget as u128 * mine as u128 / (seen + unseen).max(1) as u128) as u64;
        let slab = st.slabs.get_mut(&shape).expect("made above");
        let in_use: std::collections::HashSet<usize> = ids.iter().filter_map(|&e| slab.index.get(&(layer, e)).copied()).collect();
        for (i, (&e, w)) in missing.iter().zip(&weights).enumerate() {
            let slot = match slab.owner.iter().position(Option::is_none) {
                Some(s) => s,
                None => {
                    // grow (by what the layer still needs, or doubling) while this
                    // shape's part of the budget has room; else take over the least
                    // recently used slot this layer does not use, or (none left) grow by
                    // what the layer still needs
                    let lru = (0..slab.slots()).filter(|s| !in_use.contains(s) && slab.owner[*s].is_some_and(|(_, t)| t != now)).min_by_key(|&s| slab.owner[s].map(|(_, t)| t));
                    let slots = slab.slots();
                    let room = (share.saturating_sub(slab.slot_bytes * slots as u64) / slab.slot_bytes.max(1)) as usize;
                    let more = match (slots.max(missing.len() - i).min(room), lru) {
                        (0, Some(s)) => {
                            let (key, _) = slab.owner[s].take().expect("occupied");
                            slab.index.remove(&key);
                            0
                        }
                        (0, None) => missing.len() - i,
                        (m, _) => m,
                    };
                    if more > 0 {
                        *slab = slab.grown(gpu, w, slots + more)?;
                    }
                    slab.owner.iter().position(Option::is_none).expect("a slot was freed or added")
                }
            };
            slab.mlp.gate.write(gpu, slot, &w.gate)?;
            slab.mlp.up.write(gpu, slot, &w.up)?;
            slab.mlp.down.write(gpu, slot, &w.down)?;
            slab.owner[slot] = Some(((layer, e), now));
            slab.index.insert((layer, e), slot);
            st.uploads += 1;
        }
        let slots = ids
            .iter()
            .map(|&e| {
                let s = slab.index[&(layer, e)];
                slab.owner[s] = Some(((layer, e), now));
                s as u32
            })
            .collect();
        Ok((slab.mlp.clone(), slots))
    }
}

impl<'a> GpuModel<'a> {
    /// Routed experts uploaded so far (each upload follows a fetch from the expert source).
    pub fn expert_uploads(&self) -> u64 {
        self.experts.state.lock().unwrap_or_else(|p| p.into_inner()).uploads
    }

    /// Device bytes of the slots for fetched experts (what the device expert budget
    /// bounds, but for a layer that needs more).
    pub fn expert_slot_bytes(&self) -> u64 {
        let st = self.experts.state.lock().unwrap_or_else(|p| p.into_inner());
        st.slabs.values().map(|s| s.slot_bytes * s.slots() as u64).sum()
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
        let routes = route::record(rec, moe, logits, bias.map(|b| &b.buf), n)?;
        let k = moe.n_expert_used;
        let count = experts.gate.count();
        let tiles = if self.groups_pairs(experts, n, n * k, count) && count <= MAX_EXPERTS { Some(self.k.tiles.record(rec, &routes.ids, n * k, count)?) } else { None };
        self.routed_experts(rec, experts, &routes, tiles.as_ref(), k, h, n, residual)
    }

    /// Each projection of the stack `experts` once over every (token, chosen expert)
    /// pair of `routes` (`k` per token: slot ids and weights), then each token's outputs
    /// mixed by their weights, into a new buffer or added to `residual`.
    #[allow(clippy::too_many_arguments)]
    fn routed_experts(&self, rec: &mut Recorder, experts: &GpuMlp, routes: &route::Routes, tiles: Option<&Tiles>, k: usize, h: &wgpu::Buffer, n: usize, residual: Option<&wgpu::Buffer>) -> Result<Option<wgpu::Buffer>> {
        let (nk, d) = (n * k, self.model.config.n_embd);
        let [g, u] = self.matmuls(rec, [&experts.gate, &experts.up], h, n, Some(Experts { ids: &routes.ids, act_div: k, tiles }))?;
        let qd = self.swiglu_for(rec, &experts.down, &g, &u, nk)?;
        let o = rec.output("expert out", nk * d);
        experts.down.record_quantized(rec, &g, qd.as_ref(), &o, nk, Some(Experts { ids: &routes.ids, act_div: 1, tiles }))?;
        if let Some(x) = residual {
            self.k.combine.weighted_sum(rec, x, &o, &routes.weights, n, k, d, true)?;
            return Ok(None);
        }
        let out = rec.output("ffn out", n * d);
        self.k.combine.weighted_sum(rec, &out, &o, &routes.weights, n, k, d, false)?;
        Ok(Some(out))
    }

    /// The routed experts of MoE layer `l` when the device does not hold them all: the
    /// router logits come back, the CPU routes, the chosen experts not in the device's
    /// slots are fetched and written there ([`DeviceExperts`]), and the layer runs as
    /// resident experts do, one product per projection over the slots the routes name.
    /// With the model's prefetch on, the layer's input comes back too and the later
    /// layers' likely experts are asked for first (as the CPU pass does).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fetched_experts(&self, rec: &mut Recorder, l: usize, moe: &MoeConfig, lb: &wgpu::Buffer, h: &wgpu::Buffer, n: usize, residual: Option<&wgpu::Buffer>) -> Result<Option<wgpu::Buffer>> {
        let (gpu, d, k) = (self.gpu, self.model.config.n_embd, moe.n_expert_used);
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
        // each token's route, as the CPU pass routes; each expert fetched once
        let routes: Vec<_> = logits.chunks_exact(moe.n_expert).map(|l| route(moe, l, bias.as_deref())).collect();
        let mut ids: Vec<usize> = routes.iter().flat_map(|r| r.ids.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let fetched = self.experts.get(gpu, l, &ids, |missing| self.model.experts.experts(l, missing));
        self.model.layer_done(l);
        let (slab, slots) = fetched?;
        let slot_of = |e: usize| slots[ids.binary_search(&e).expect("every routed expert was fetched")];
        let (mut pair_slots, mut weights) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
        for r in &routes {
            if r.ids.len() != k {
                return Err(Error::Invalid(format!("a route of {} experts where {k} are used", r.ids.len())));
            }
            pair_slots.extend(r.ids.iter().map(|&e| slot_of(e)));
            weights.extend_from_slice(&r.weights);
        }
        // the slot ids go up as f32 bits (the workspace's buffers are f32)
        let routes = route::Routes { ids: rec.upload("expert slots", bytemuck::cast_slice(&pair_slots))?, weights: rec.upload("expert weights", &weights)? };
        // the pairs grouped by slot here, where the routes are
        let tiles = if self.groups_pairs(&slab, n, n * k, ids.len()) { Some(Tiles::upload(rec, &expert_tiles(&pair_slots))?) } else { None };
        self.routed_experts(rec, &slab, &routes, tiles.as_ref(), k, h, n, residual)
    }

    /// Whether the `pairs` (token, expert) pairs of `tokens` tokens over `used` experts (at
    /// most) run `experts` grouped by expert: several tokens, a several-row kernel for one
    /// of the projections at least, and by default ([`ExpertGrouping::WhenItPays`]) large
    /// experts and eight pairs or more per expert on average. Measured on an H200 with the
    /// one-row kernels' fastest layouts (`benches/gpu_gemv`, grouped ÷ pair by pair):
    /// Mixtral-sized experts (14336 × 4096) at 4, 16 and 64 tokens, 1.6, 4 and 16 pairs
    /// per expert: Q8_0 0.42×, 0.70×, 1.39×; Q4_K 0.85×, 1.07×, 1.12×; Qwen3-30B-A3B-sized
    /// ones (768 × 2048, 128 experts, top-8) 0.36×, 0.35×, 0.50× (a whole 64-sequence step
    /// of that model: 0.84×). Below that the grouping kernel and the several-row kernel's
    /// extra work cost more than the repeated reads save.
    fn groups_pairs(&self, experts: &GpuMlp, tokens: usize, pairs: usize, used: usize) -> bool {
        let kernel = [&experts.gate, &experts.up, &experts.down].iter().any(|m| m.takes_tiles());
        let pays = experts.gate.rows() * experts.gate.cols() >= GROUPED_EXPERT_WEIGHTS && pairs >= 8 * used;
        let when = self.expert_grouping.load(std::sync::atomic::Ordering::Relaxed);
        kernel && tokens > 1 && (when == ExpertGrouping::Always as u8 || (when == ExpertGrouping::WhenItPays as u8 && pays))
    }
}
