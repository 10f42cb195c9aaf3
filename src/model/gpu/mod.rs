//! The forward pass on the GPU backend: the model's non-expert weights resident on the
//! device ([`GpuModel`]), a KV cache per sequence in pages of a device pool ([`GpuKvCache`]), and
//! a pass that appends tokens to one or several sequences' caches and returns logits — for
//! `odmoe logits --backend gpu` (every position of one prompt), `odmoe generate --backend
//! gpu` (prefill, then one token at a time) and the server's batched steps
//! ([`GpuModel::forward_batch`]).
//!
//! Covers grouped-query attention (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) and latent
//! attention (DeepSeek, Kimi; [`attention`]) with F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K,
//! Q3_K, Q4_K, Q5_K and Q6_K weights; other block formats are refused with an error saying
//! so ([`gpu_unsupported`]). Routed experts:
//! - all resident (when they fit the device expert budget): each layer's experts are one
//!   stack per projection; routing runs on the device and each projection is one
//!   dispatch over every chosen expert, so nothing is read back until the logits;
//! - otherwise fetched: the router's logits come back once per MoE layer, the CPU
//!   routes, and the chosen experts are fetched through the expert source (the pager
//!   included) and kept on the device within the budget, least recently used dropped.
//!
//! Each step is recorded through the model's [`Workspace`] (the same buffers and bind
//! groups every step) and submitted every few layers ([`SUBMIT_EVERY`] by default), so the device works
//! while the rest is recorded.

mod attention;
mod cache;
mod experts;

use super::config::Config;
use super::rope::Rotation;
use super::weights::{Attention, Ffn};
use super::{Logits, Model};
use crate::compute::gpu::attention::Attention as AttentionKernel;
use crate::compute::gpu::copy_rows::CopyRows;
use crate::compute::gpu::half_rows::HalfRows;
use attention::{LayerAttention, StepInputs};
pub use cache::GpuKvCache;
use crate::compute::gpu::elementwise::Elementwise;
use crate::compute::gpu::expert_tiles::{ExpertTiles, Tiles};
use crate::compute::gpu::matrix::{Experts, GpuMatrix};
use crate::compute::gpu::moe_combine::MoeCombine;
use crate::compute::gpu::quantize::{ActFormat, QuantizedRows};
use crate::compute::gpu::route;
use experts::DeviceExperts;
use crate::compute::gpu::rms_norm::RmsNorm;
use crate::compute::gpu::rope::Rope;
use crate::compute::gpu::recorder::{ProfileReport, Recorder, Workspace};
use crate::compute::gpu::Gpu;
use crate::compute::QMatrix;
use crate::{Error, Result};

struct Kernels {
    norm: RmsNorm,
    ew: Elementwise,
    rope: Rope,
    attn: AttentionKernel,
    combine: MoeCombine,
    tiles: ExpertTiles,
    copy: CopyRows,
    half: HalfRows,
}

/// A weight vector on the device (norm gains, biases) with its length.
struct Vector {
    buf: wgpu::Buffer,
    len: usize,
}

impl Vector {
    fn new(gpu: &Gpu, v: &[f32]) -> Result<Vector> {
        Ok(Vector { buf: gpu.upload("weights", v)?, len: v.len() })
    }
}

/// A SwiGLU block's three projections.
struct GpuMlp {
    gate: GpuMatrix,
    up: GpuMatrix,
    down: GpuMatrix,
}

impl GpuMlp {
    fn new(gpu: &Gpu, gate: &QMatrix, up: &QMatrix, down: &QMatrix) -> Result<GpuMlp> {
        Ok(GpuMlp { gate: GpuMatrix::new(gpu, gate)?, up: GpuMatrix::new(gpu, up)?, down: GpuMatrix::new(gpu, down)? })
    }
}

// one per layer: the variants' sizes do not matter
#[allow(clippy::large_enum_variant)]
enum GpuFfn {
    Dense(GpuMlp),
    Moe {
        router: GpuMatrix,
        /// The selection bias (DeepSeek-V3's `exp_probs_b`).
        bias: Option<Vector>,
        shared: Option<GpuMlp>,
        shared_gate: Option<GpuMatrix>,
        /// All of the layer's routed experts, stacked, when the device holds them all.
        resident: Option<Box<GpuMlp>>,
    },
}

struct GpuLayer {
    attn_norm: Vector,
    ffn_norm: Vector,
    attn: LayerAttention,
    ffn: GpuFfn,
}

/// A model's non-expert weights uploaded once to a GPU, with the compiled kernels, and
/// its routed experts: all of them, stacked per layer, when they fit the device expert
/// budget, else those used lately.
pub struct GpuModel<'a> {
    model: &'a Model,
    gpu: &'a Gpu,
    k: Kernels,
    layers: Vec<GpuLayer>,
    output_norm: Vector,
    output: GpuMatrix,
    experts: DeviceExperts,
    /// Buffers and bind groups reused from step to step.
    ws: std::sync::Mutex<Workspace>,
    /// Whether steps are timed per kernel, and the last timed step's report.
    profiling: std::sync::atomic::AtomicBool,
    profile: std::sync::Mutex<Option<ProfileReport>>,
    layers_per_submit: std::sync::atomic::AtomicUsize,
    /// Tokens per indexed per-head product of latent attention.
    head_product_tokens: std::sync::atomic::AtomicUsize,
    /// When batched steps group (token, expert) pairs by expert ([`ExpertGrouping`] as a u8).
    expert_grouping: std::sync::atomic::AtomicU8,
    /// Every sequence's keys and values, in pages.
    kv: std::sync::Mutex<cache::KvPool>,
    /// The pool's free pages (new caches need no lock on the pool).
    kv_free: cache::FreePages,
}

/// When batched steps run routed experts over (token, expert) pairs grouped by expert
/// ([`GpuModel::set_expert_grouping`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertGrouping {
    /// Pair by pair, always.
    Never = 0,
    /// Where it was measured to pay (the default): large experts, many pairs per expert.
    WhenItPays = 1,
    /// Whenever a step has several tokens and the format a several-row kernel (tests of
    /// the grouped path use it).
    Always = 2,
}

/// Layers recorded per submission within a pass, by default
/// ([`GpuModel::set_layers_per_submit`]).
pub const SUBMIT_EVERY: usize = 4;

/// Device memory for routed experts that [`GpuModel::new`] allows by default.
pub const DEFAULT_DEVICE_EXPERT_BYTES: u64 = 1 << 30;

/// One sequence's part of a batched step ([`GpuModel::forward_batch`]).
pub struct GpuSequence<'a> {
    /// New tokens, after the positions already in `cache`.
    pub tokens: &'a [u32],
    /// The sequence's cache; the tokens are appended to it.
    pub cache: &'a mut GpuKvCache,
    /// Which of its positions' logits to return.
    pub logits: Logits,
}

impl<'a> GpuModel<'a> {
    /// Uploads `model`'s attention, router, shared-expert, norm and output weights to
    /// `gpu`, and keeps up to [`DEFAULT_DEVICE_EXPERT_BYTES`] of routed experts there.
    pub fn new(model: &'a Model, gpu: &'a Gpu) -> Result<GpuModel<'a>> {
        Self::with_expert_budget(model, gpu, DEFAULT_DEVICE_EXPERT_BYTES)
    }

    /// [`GpuModel::new`] keeping at most `budget` bytes of routed experts on the device
    /// between steps (0: upload each step's experts afresh).
    pub fn with_expert_budget(model: &'a Model, gpu: &'a Gpu, budget: u64) -> Result<GpuModel<'a>> {
        let cfg = &model.config;
        let k = Kernels { norm: RmsNorm::new(gpu, cfg.rms_eps), ew: Elementwise::new(gpu), rope: Rope::new(gpu), attn: AttentionKernel::new(gpu), combine: MoeCombine::new(gpu), tiles: ExpertTiles::new(gpu), copy: CopyRows::new(gpu), half: HalfRows::new(gpu) };
        let w = &model.weights;
        let mut layers = Vec::with_capacity(w.layers.len());
        for layer in &w.layers {
            let vector = |v: &Option<Vec<f32>>| v.as_deref().map(|v| Vector::new(gpu, v)).transpose();
            let ffn = match &layer.ffn {
                Ffn::Dense(m) => GpuFfn::Dense(GpuMlp::new(gpu, &m.gate, &m.up, &m.down)?),
                Ffn::Moe { router, shared, shared_gate, bias, .. } => GpuFfn::Moe {
                    router: GpuMatrix::new(gpu, router)?,
                    bias: vector(bias)?,
                    resident: None,
                    shared: shared.as_ref().map(|m| GpuMlp::new(gpu, &m.gate, &m.up, &m.down)).transpose()?,
                    shared_gate: shared_gate.as_ref().map(|g| GpuMatrix::new(gpu, g)).transpose()?,
                },
            };
            layers.push(GpuLayer {
                attn_norm: Vector::new(gpu, &layer.attn_norm)?,
                ffn_norm: Vector::new(gpu, &layer.ffn_norm)?,
                attn: LayerAttention::new(gpu, cfg, &layer.attn)?,
                ffn,
            });
        }
        let moe_layers = w.layers.iter().filter(|l| matches!(l.ffn, Ffn::Moe { .. })).count();
        let experts = DeviceExperts::new(budget, moe_layers);
        let kv = cache::KvPool::new(gpu, layers.len(), attention::cache_widths(cfg), cache::half_kv(model));
        let kv_free = kv.free_pages();
        let kv = kv.into();
        let mut g = GpuModel { model, gpu, k, layers, output_norm: Vector::new(gpu, &w.output_norm)?, output: GpuMatrix::new(gpu, &w.output)?, experts, ws: Default::default(), profiling: Default::default(), profile: Default::default(), layers_per_submit: SUBMIT_EVERY.into(), head_product_tokens: attention::tokens_per_head_product(cfg).into(), expert_grouping: (ExpertGrouping::WhenItPays as u8).into(), kv, kv_free };
        if g.all_expert_bytes()? <= budget {
            g.upload_all_experts()?;
        }
        g.pin_weights();
        Ok(g)
    }

    /// Lets the workspace keep bind groups that name the model's own buffers.
    fn pin_weights(&mut self) {
        let ws = self.ws.get_mut().unwrap_or_else(|p| p.into_inner());
        let pin_mlp = |m: &GpuMlp, ws: &mut Workspace| [&m.gate, &m.up, &m.down].into_iter().flat_map(|w| w.buffers()).for_each(|b| ws.pin(b));
        for l in &self.layers {
            for b in [&l.attn_norm.buf, &l.ffn_norm.buf].into_iter().chain(l.attn.buffers()) {
                ws.pin(b);
            }
            match &l.ffn {
                GpuFfn::Dense(m) => pin_mlp(m, ws),
                GpuFfn::Moe { router, bias, shared, shared_gate, resident } => {
                    router.buffers().iter().chain(shared_gate.iter().flat_map(|g| g.buffers())).for_each(|b| ws.pin(b));
                    if let Some(b) = bias {
                        ws.pin(&b.buf);
                    }
                    shared.iter().chain(resident.as_deref()).for_each(|m| pin_mlp(m, ws));
                }
            }
        }
        ws.pin(&self.output_norm.buf);
        self.output.buffers().iter().for_each(|b| ws.pin(b));
        ws.pin(&self.gpu.zero_word);
    }

    /// Times each kernel of the following steps on the device (where it has timestamp
    /// queries; each dispatch then gets its own pass, so steps run somewhat slower) —
    /// for finding where a step's device time goes.
    pub fn set_profiling(&self, on: bool) {
        self.profiling.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last profiled step's device time per kernel, most first (see
    /// [`crate::compute::gpu::recorder::ProfileReport`]); `None` if none was profiled.
    pub fn take_profile(&self) -> Option<ProfileReport> {
        self.profile.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Submits every `n` layers of a pass (at least 1): fewer submissions cost less on
    /// the CPU, more let the device start sooner.
    pub fn set_layers_per_submit(&self, n: usize) {
        self.layers_per_submit.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// When a step of several tokens runs the routed experts over (token, expert) pairs
    /// grouped by expert (each expert read once per tile of pairs) rather than pair by
    /// pair; the outputs are the same bit for bit, only the speed differs.
    pub fn set_expert_grouping(&self, when: ExpertGrouping) {
        self.expert_grouping.store(when as u8, std::sync::atomic::Ordering::Relaxed);
    }

    /// Latent attention's per-head products take at most `n` tokens each (at least 1; by
    /// default as many as one dispatch allows, `65535 / n_head`): longer chunks go through
    /// several. Results do not change.
    pub fn set_head_product_tokens(&self, n: usize) {
        let most = attention::tokens_per_head_product(&self.model.config);
        self.head_product_tokens.store(n.clamp(1, most), std::sync::atomic::Ordering::Relaxed);
    }

    fn matmul(&self, rec: &mut Recorder, w: &GpuMatrix, x: &wgpu::Buffer, n: usize) -> Result<wgpu::Buffer> {
        let y = rec.output("y", n * w.rows());
        w.record(rec, x, &y, n)?;
        Ok(y)
    }

    /// `x`'s rows normalized by `g` into a new buffer (x unchanged).
    fn normed(&self, rec: &mut Recorder, x: &wgpu::Buffer, g: &Vector, len: usize) -> Result<wgpu::Buffer> {
        let y = rec.output("normed", len);
        self.k.norm.record_into(rec, x, &y, &g.buf, len / g.len, g.len)?;
        Ok(y)
    }

    /// `x · Wᵀ` for each of `ws` (same input width), quantizing `x` once where their
    /// formats agree (q, k and v; gate and up). With `experts`, each `w` is a stack and
    /// `n · act_div` row groups come out, one per (token, chosen expert).
    fn matmuls<const K: usize>(&self, rec: &mut Recorder, ws: [&GpuMatrix; K], x: &wgpu::Buffer, n: usize, experts: Option<Experts>) -> Result<[wgpu::Buffer; K]> {
        let groups = experts.map_or(n, |e| n * e.act_div);
        let mut quantized: Vec<(Option<ActFormat>, Option<QuantizedRows>)> = Vec::new();
        let mut out = Vec::with_capacity(K);
        for w in ws {
            let format = w.act_format();
            if !quantized.iter().any(|(f, _)| *f == format) {
                quantized.push((format, w.quantize(rec, x, n)?));
            }
            let q = quantized.iter().find(|(f, _)| *f == format).and_then(|(_, q)| q.as_ref());
            let y = rec.output("y", groups * w.rows());
            w.record_quantized(rec, x, q, &y, groups, experts)?;
            out.push(y);
        }
        Ok(out.try_into().unwrap_or_else(|_| unreachable!("one output per matrix")))
    }

    fn norm(&self, rec: &mut Recorder, x: &wgpu::Buffer, g: &Vector, len: usize) -> Result<()> {
        self.k.norm.record(rec, x, &g.buf, len / g.len, g.len)
    }

    fn mlp(&self, rec: &mut Recorder, m: &GpuMlp, x: &wgpu::Buffer, n: usize) -> Result<wgpu::Buffer> {
        let [g, u] = self.matmuls(rec, [&m.gate, &m.up], x, n, None)?;
        let q = self.swiglu_for(rec, &m.down, &g, &u, n)?;
        let y = rec.output("y", n * m.down.rows());
        m.down.record_quantized(rec, &g, q.as_ref(), &y, n, None)?;
        Ok(y)
    }

    /// SwiGLU of `n` rows of `g` and `u` as `down`'s input: fused into its activation
    /// quantization where it has one, else computed into `g` (f32 weights).
    fn swiglu_for(&self, rec: &mut Recorder, down: &GpuMatrix, g: &wgpu::Buffer, u: &wgpu::Buffer, n: usize) -> Result<Option<QuantizedRows>> {
        match down.quantize_swiglu(rec, g, u, n)? {
            Some(q) => Ok(Some(q)),
            None => {
                self.k.ew.swiglu(rec, g, u, n * down.cols())?;
                Ok(None)
            }
        }
    }

    /// Submits what `rec` holds and reads `buf` back.
    fn read(&self, rec: &mut Recorder, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        rec.submit();
        self.gpu.read_f32(buf, len)
    }

    /// Runs `tokens` after the positions in `cache`, appends them to it, and returns
    /// logits as `which` asks (as [`Model::forward`] does on the CPU).
    ///
    /// A long input runs in chunks ([`GpuModel::max_chunk`]), so a prompt of any length
    /// fits the device's dispatch and buffer limits; on error the cache is as it was.
    pub fn forward(&self, tokens: &[u32], cache: &mut GpuKvCache, which: Logits) -> Result<Vec<f32>> {
        let len0 = cache.len;
        let chunk = self.max_chunk(len0 + tokens.len());
        let mut out = Vec::new();
        let mut pieces = tokens.chunks(chunk).peekable();
        while let Some(piece) = pieces.next() {
            // every chunk's logits for `All`, only the last chunk's otherwise
            let logits = if which == Logits::All || pieces.peek().is_none() { which } else { Logits::None };
            match self.forward_batch(&mut [GpuSequence { tokens: piece, cache, logits }]) {
                Ok(mut o) => out.extend(o.pop().expect("one sequence, one result")),
                Err(e) => {
                    // positions past len0 are simply overwritten later
                    cache.len = len0;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// The most tokens of one sequence a pass takes when the sequence ends at `len`
    /// positions: at most 512, and within the device's limits on dispatches (a row
    /// group per token and chosen expert) and on one buffer (the attention scores of
    /// every token and head over `len` positions).
    pub fn max_chunk(&self, len: usize) -> usize {
        let cfg = &self.model.config;
        let k = cfg.moe.as_ref().map_or(1, |m| m.n_expert_used.max(1));
        let max_bytes = self.gpu.max_storage_bytes() as usize;
        let scores_per_token = cfg.n_head.max(1) * len.next_multiple_of(256) * 4;
        512.min(crate::compute::gpu::kernel::MAX_GROUPS as usize / k).min(max_bytes / scores_per_token).max(1)
    }

    /// One pass over several sequences at once (continuous batching, as
    /// [`Model::forward_batch`] on the CPU): every sequence's new tokens are rows of the
    /// same matrix products, attention runs each token over its own sequence's cache, and each
    /// sequence gets the logits it asks for. A sequence's results do not depend on the
    /// others in the batch. On error no cache has changed.
    pub fn forward_batch(&self, seqs: &mut [GpuSequence<'_>]) -> Result<Vec<Vec<f32>>> {
        let cfg: &Config = &self.model.config;
        let gpu = self.gpu;
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                return Err(Error::Invalid("no tokens to process".into()));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
                return Err(Error::Invalid(format!("token id {bad} is out of range (vocabulary has {} tokens)", cfg.n_vocab)));
            }
            if s.cache.len + s.tokens.len() > s.cache.max_len {
                return Err(Error::Invalid(format!("context overflow: {} cached + {} new positions exceed the limit of {}", s.cache.len, s.tokens.len(), s.cache.max_len)));
            }
        }
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut ws = self.ws.lock().unwrap_or_else(|p| p.into_inner());
        let mut rec = Recorder::with_workspace(gpu, &mut ws);
        // pages for the new positions first: a pool that grows is copied into its new
        // buffers, submitted at once so that a pass failing later loses nothing
        let mut kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted: Vec<(&mut GpuKvCache, usize)> = seqs.iter_mut().map(|s| (&mut *s.cache, s.tokens.len())).collect();
        let grew = kv.allocate(gpu, &mut rec, &mut wanted);
        drop(wanted);
        match grew {
            Ok(true) => rec.submit(),
            Ok(false) => {}
            Err(e) => {
                drop((kv, rec));
                ws.recycle();
                return Err(e);
            }
        }
        let profiling = self.profiling.load(std::sync::atomic::Ordering::Relaxed) && rec.start_profile();
        let parts: Vec<(&[u32], &GpuKvCache, Logits)> = seqs.iter().map(|s| (s.tokens, &*s.cache, s.logits)).collect();
        let mut result = self.record_batch(&mut rec, &kv, &parts);
        drop(kv);
        if profiling && result.is_ok() {
            match rec.finish_profile() {
                Ok(report) => *self.profile.lock().unwrap_or_else(|p| p.into_inner()) = report,
                Err(e) => result = Err(e),
            }
        }
        drop(rec);
        // every buffer taken is either in a submitted step or in commands never submitted
        ws.recycle();
        let result = result?;
        for s in seqs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        Ok(result)
    }

    /// Records (and submits) the pass of [`GpuModel::forward_batch`] over `seqs` (tokens,
    /// cache, logits wanted), leaving the caches' lengths alone.
    fn record_batch(&self, rec: &mut Recorder, kv: &cache::KvPool, seqs: &[(&[u32], &GpuKvCache, Logits)]) -> Result<Vec<Vec<f32>>> {
        let cfg: &Config = &self.model.config;
        let d = cfg.n_embd;
        let n: usize = seqs.iter().map(|s| s.0.len()).sum();
        let mut xh = Vec::with_capacity(n * d);
        let mut rot = Vec::with_capacity(n);
        for (tokens, cache, _) in seqs {
            for (i, &t) in tokens.iter().enumerate() {
                xh.extend(self.model.weights.tok_embd.row_f32(t as usize));
                rot.push(Rotation::new(&cfg.rope, cache.len + i));
            }
        }
        let x = rec.upload("x", &xh)?;
        let cs = rec.upload("rope", &Rope::table(&rot))?;
        let nh = cfg.n_head;
        let batches = attention::attention_batches(rec, seqs, nh, self.gpu.max_storage_bytes())?;
        // one scratch serves every attention batch in turn
        let scratch = rec.output("scores", batches.iter().map(|b| b.scores).max().unwrap_or(0));
        // each new position's cache row, for the scatter of its keys and values
        let rows: Vec<u32> = seqs.iter().flat_map(|(t, c, _)| (c.len..c.len + t.len()).map(|s| c.row(s))).collect();
        let cache_rows = rec.upload("cache rows", bytemuck::cast_slice(&rows))?;
        // latent attention's per-head products: row i uses head i mod n_head
        let per = self.head_product_tokens.load(std::sync::atomic::Ordering::Relaxed);
        let head_ids = match cfg.mla {
            Some(_) => {
                let rows = n.min(per) * nh;
                let ids: Vec<u32> = (0..rows).map(|i| (i % nh) as u32).collect();
                Some(self.gpu.storage("head ids", bytemuck::cast_slice(&ids))?)
            }
            None => None,
        };
        // and those rows grouped by head, so a head's matrix is read once for up to eight
        // tokens (where the products run in one piece)
        let head_tiles = match cfg.mla {
            Some(_) if n > 1 && n <= per => Some(Tiles::upload(rec, &attention::head_tiles(n, nh))?),
            _ => None,
        };
        let step = StepInputs { rot: &rot, cs: &cs, scratch: &scratch, head_ids: head_ids.as_ref(), head_tiles: head_tiles.as_ref(), kv, batches: &batches, cache_rows: &cache_rows };

        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.normed(rec, &x, &layer.attn_norm, n * d)?;
            self.record_attention(rec, l, &layer.attn, &h, &x, n, &step)?;

            let h = self.normed(rec, &x, &layer.ffn_norm, n * d)?;
            // the layer's output, unless it was added to the residual stream already
            let out = match &layer.ffn {
                GpuFfn::Dense(m) => Some(self.mlp(rec, m, &h, n)?),
                GpuFfn::Moe { router, bias: bias_v, shared, shared_gate, resident } => {
                    let moe = cfg.moe.as_ref().expect("MoE config");
                    let lb = self.matmul(rec, router, &h, n)?;
                    // with nothing to add after them, the routed experts add into x
                    let direct = shared.is_none().then_some(&x);
                    let out = match resident {
                        Some(experts) if route::supported(moe) => self.resident_experts(rec, moe, experts, &lb, bias_v.as_ref(), &h, n, direct)?,
                        _ => self.fetched_experts(rec, l, moe, &lb, &h, n, direct)?,
                    };
                    match (out, shared) {
                        (Some(out), Some(s)) => {
                            let ys = self.mlp(rec, s, &h, n)?;
                            match shared_gate {
                                Some(g) => {
                                    let gl = self.matmul(rec, g, &h, n)?;
                                    self.k.combine.gated_add(rec, &out, &ys, &gl, n, d)?;
                                }
                                None => self.k.ew.add(rec, &out, &ys, n * d)?,
                            }
                            Some(out)
                        }
                        (out, _) => out,
                    }
                }
            };
            if let Some(out) = out {
                self.k.ew.add(rec, &x, &out, n * d)?;
            }
            // hand the device what is recorded every few layers, so it computes while
            // the rest of the pass is recorded
            let every = self.layers_per_submit.load(std::sync::atomic::Ordering::Relaxed).max(1);
            if l % every == every - 1 {
                rec.submit();
            }
        }
        // the rows whose logits are wanted, as (first row, count) per sequence
        let mut wanted = Vec::with_capacity(seqs.len());
        let mut row0 = 0;
        for (tokens, _, which) in seqs {
            let m = tokens.len();
            wanted.push(match which {
                Logits::All => (row0, m),
                Logits::Last => (row0 + m - 1, 1),
                Logits::None => (row0 + m, 0),
            });
            row0 += m;
        }
        let rows: usize = wanted.iter().map(|w| w.1).sum();
        if rows == 0 {
            rec.submit();
            return Ok(vec![Vec::new(); seqs.len()]);
        }
        let xs = rec.output("last rows", rows * d);
        let mut at = 0;
        for &(first, m) in wanted.iter().filter(|w| w.1 > 0) {
            rec.copy(&x, (first * d * 4) as u64, &xs, (at * d * 4) as u64, (m * d * 4) as u64);
            at += m;
        }
        self.norm(rec, &xs, &self.output_norm, rows * d)?;
        let logits = self.matmul(rec, &self.output, &xs, rows)?;
        let all = self.read(rec, &logits, rows * cfg.n_vocab)?;
        let mut rest = &all[..];
        Ok(wanted
            .iter()
            .map(|&(_, m)| {
                let (mine, after) = rest.split_at(m * cfg.n_vocab);
                rest = after;
                mine.to_vec()
            })
            .collect())
    }
}

/// Why the GPU backend cannot run `model` (a block format without a kernel), or `None`
/// when it can: `--backend auto` falls back to the CPU on `Some`.
pub fn gpu_unsupported(model: &Model) -> Option<String> {
    use crate::compute::gpu::matrix::{has_gpu_kernel as has_kernel, GPU_FORMATS};
    let mut types = vec![model.weights.output.ty];
    for (l, layer) in model.weights.layers.iter().enumerate() {
        match &layer.attn {
            Attention::Standard { wq, wk, wv, wo, .. } => types.extend([wq.ty, wk.ty, wv.ty, wo.ty]),
            Attention::Mla { wq_a, wq, wkv_a, wk_b, wv_b, wo, .. } => types.extend(wq_a.iter().chain([wq, wkv_a, wk_b, wv_b, wo]).map(|w| w.ty)),
        }
        match &layer.ffn {
            Ffn::Dense(m) => types.extend([m.gate.ty, m.up.ty, m.down.ty]),
            Ffn::Moe { router, shared, shared_gate, .. } => {
                types.push(router.ty);
                types.extend(shared.iter().flat_map(|m| [m.gate.ty, m.up.ty, m.down.ty]));
                types.extend(shared_gate.iter().map(|g| g.ty));
                if let Ok(e) = model.experts.expert(l, 0) {
                    types.extend([e.gate.ty, e.up.ty, e.down.ty]);
                }
            }
        }
    }
    types.into_iter().find(|&t| !has_kernel(t)).map(|t| format!("no GPU kernel for {t} weights yet ({GPU_FORMATS} have one)"))
}

impl Model {
    /// Every position's logits (`n × n_vocab`) for `tokens` from the start of a sequence,
    /// computed on `gpu`.
    pub fn logits_gpu(&self, gpu: &Gpu, tokens: &[u32]) -> Result<Vec<f32>> {
        let g = GpuModel::new(self, gpu)?;
        let mut cache = g.new_cache(tokens.len());
        g.forward(tokens, &mut cache, Logits::All)
    }
}
