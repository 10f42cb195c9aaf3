//! Models: configuration from GGUF metadata, weights, and the forward pass of each
//! supported MoE architecture on the CPU backend.

mod attention;
pub mod config;
mod ffn;
#[cfg(feature = "gpu")]
mod gpu;
pub mod rope;
pub mod source;
pub mod router;
pub mod weights;

use std::path::Path;

use rayon::prelude::*;
use std::sync::Arc;

pub use attention::{KvRows, KvType, LayerCache};
#[cfg(feature = "gpu")]
pub use gpu::{gpu_unsupported, ExpertGrouping, GpuKvCache, GpuModel, GpuSequence, DEFAULT_DEVICE_EXPERT_BYTES, SUBMIT_EVERY};
pub use config::{Arch, Config};


use crate::compute::cpu::{add_assign, matmul, rms_norm};
use crate::experts::store::Store;
use crate::shadow::Shadow;
use crate::experts::{ExpertSource, PagedExperts, PagerOptions, ResidentExperts};
use crate::gguf::{GgufModel, Metadata};
use source::TensorSource;
use crate::{Error, Result};
use rope::Rotation;
use weights::Weights;

/// A loaded model ready to run.
pub struct Model {
    config: Config,
    weights: Weights,
    experts: Arc<dyn ExpertSource>,
    pager: Option<Arc<PagedExperts>>,
    source: Arc<dyn TensorSource>,
    prefetch: Prefetch,
    shadow: Option<Arc<Shadow>>,
    kv_type: KvType,
}

/// How a model's routed experts are reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpertMode {
    /// Through the memory mapping of the model file (the OS pages them in and out).
    Mapped,
    /// Read on demand into a byte-budgeted cache by a pool of readers.
    Paged(PagerOptions),
}

/// Whether memory-mapped routed experts get a copy in the interleaved layout of the
/// CPU's AVX-512 VNNI kernels (Q8_0, Q4_K and Q6_K; several times faster for batched
/// steps).
/// Paged experts stay in the file's layout; both layouts' kernels give the same bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PackExperts {
    /// When the copy fits in half the memory available (`ODMOE_PACK_EXPERTS=1` or `0`
    /// decides instead).
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never: the experts are computed from the mapping.
    Never,
}

/// Which experts are read ahead of the layer that needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Prefetch {
    /// None: every miss is read when its layer asks.
    #[default]
    Off,
    /// While layer L computes, the routers of layers L+1..=L+depth are applied to L's FFN
    /// input and the experts they pick are prefetched (no training needed; exact results
    /// either way). A depth of 0 is taken as 1.
    Gate {
        /// Layers ahead whose experts are guessed.
        depth: usize,
    },
    /// While layer L computes, the trained shadow predictor ([`Model::set_shadow`])
    /// guesses the experts of the next `depth` MoE layers (at most its trained lookahead)
    /// from L's FFN input, and they are prefetched. Exact results either way.
    Shadow {
        /// MoE layers ahead whose experts are guessed.
        depth: usize,
    },
}

/// Per-sequence attention state: one cache per layer and the number of positions held.
/// The default is an empty cache that accepts no positions.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    max_len: usize,
}

impl KvCache {
    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions this cache accepts.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Bytes of keys and values held (not counting spare capacity).
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(LayerCache::bytes).sum()
    }
}

impl Model {
    /// A new cache of at most `max_len` positions holding a copy of the first `len`
    /// positions of `cache` (a conversation's earlier turns, a shared system prompt): a
    /// pass over the tokens after them gives exactly what it gives after processing
    /// all of them, as every pass computes each position alone.
    pub fn cache_prefix(&self, cache: &KvCache, len: usize, max_len: usize) -> KvCache {
        let len = len.min(cache.len).min(max_len);
        KvCache { layers: cache.layers.iter().map(|l| l.prefix(&self.config, len)).collect(), len, max_len }
    }

    /// Forgets every position of `cache` from `len` on, so that the next pass continues
    /// after position `len - 1` (a conversation whose new prompt shares only its first
    /// `len` tokens with what was processed). No-op when `len` is not shorter.
    pub fn truncate_cache(&self, cache: &mut KvCache, len: usize) {
        if len >= cache.len {
            return;
        }
        for layer in &mut cache.layers {
            layer.truncate(&self.config, len);
        }
        cache.len = len;
    }
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Every position (`n × n_vocab`).
    All,
    /// Only the last position (`n_vocab`).
    Last,
    /// None (a prompt chunk that is not the prompt's end).
    None,
}

/// The observer of [`Model::forward_batch_traced`]: `(layer, rows, routes)` for each MoE
/// layer, rows being `n × n_embd` router inputs and routes one per row.
pub type LayerTrace<'a> = dyn FnMut(usize, &[f32], &[router::Route]) + Send + 'a;

/// One sequence's part of a batched step ([`Model::forward_batch`]).
pub struct Sequence<'a> {
    /// New tokens, after the positions already in `cache`.
    pub tokens: &'a [u32],
    /// The sequence's cache; the tokens are appended to it.
    pub cache: &'a mut KvCache,
    /// Which of its positions' logits to return.
    pub logits: Logits,
}

impl Model {
    /// Opens a model — a GGUF file (any shard of a split one) or an expert store
    /// directory — and checks every tensor it needs. GGUF experts are reached through the
    /// mapping; a store's are paged with no budget.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        Self::open_with(path, &ExpertMode::Mapped)
    }

    /// Opens a model with its routed experts reached as `mode` says.
    pub fn open_with(path: impl AsRef<Path>, mode: &ExpertMode) -> Result<Model> {
        Self::open_with_packing(path, mode, PackExperts::Auto)
    }

    /// [`Model::open_with`], saying whether mapped experts get the CPU's interleaved
    /// layout ([`PackExperts`]; paged experts never do).
    pub fn open_with_packing(path: impl AsRef<Path>, mode: &ExpertMode, pack: PackExperts) -> Result<Model> {
        Self::open_reporting(path, mode, pack, &|_, _| {})
    }

    /// [`Model::open_with_packing`] calling `progress(done, total)` as the weights are
    /// copied into the CPU's interleaved layout (bytes; the slow part of loading a large
    /// model that fits in memory), for a progress bar.
    pub fn open_reporting(path: impl AsRef<Path>, mode: &ExpertMode, pack: PackExperts, progress: &dyn Fn(u64, u64)) -> Result<Model> {
        let path = path.as_ref();
        if Store::is_store(path) {
            let store = Arc::new(Store::open(path)?);
            let config = Config::from_metadata(store.metadata())?;
            let mut weights = Weights::load(store.as_ref(), &config, false)?;
            weights.pack_for_cpu(false, progress);
            let opts = match mode {
                ExpertMode::Paged(o) => o.clone(),
                ExpertMode::Mapped => PagerOptions::default(),
            };
            let pager = Arc::new(PagedExperts::from_store(&store, config.n_layer, &opts)?);
            // the store's expert files must hold what the configuration calls for
            if let Some(moe) = &config.moe {
                for l in moe.n_dense_lead..config.n_layer {
                    let want = (moe.n_expert, moe.n_ff_exp, config.n_embd);
                    match pager.layer_shape(l) {
                        Some(got) if got == want => {}
                        got => return Err(Error::model(format!("store: layer {l} experts are {got:?} (experts, ffn, hidden), the model needs {want:?}"))),
                    }
                }
            }
            return Ok(Model { config, weights, experts: pager.clone(), pager: Some(pager), source: store, prefetch: Prefetch::Off, shadow: None, kv_type: KvType::F32 });
        }
        let g = Arc::new(GgufModel::open(path)?);
        let pack = if matches!(mode, ExpertMode::Paged(_)) { PackExperts::Never } else { pack };
        let mut m = Self::from_gguf_packing(g.clone(), pack, progress)?;
        if let ExpertMode::Paged(opts) = mode {
            let pager = Arc::new(PagedExperts::from_gguf(&g, m.config.n_layer, opts)?);
            m.experts = pager.clone();
            m.pager = Some(pager);
        }
        Ok(m)
    }

    /// Builds the model from an opened GGUF file, with experts served from the mapping.
    pub fn from_gguf(g: Arc<GgufModel>) -> Result<Model> {
        Self::from_gguf_packing(g, PackExperts::Auto, &|_, _| {})
    }

    fn from_gguf_packing(g: Arc<GgufModel>, pack: PackExperts, progress: &dyn Fn(u64, u64)) -> Result<Model> {
        let config = Config::from_metadata(g.metadata())?;
        let mut weights = Weights::load(g.as_ref(), &config, true)?;
        let pack_experts = match pack {
            PackExperts::Always => true,
            PackExperts::Never => false,
            // a copy that fits in half the memory available; a model larger than memory
            // keeps relying on the mapping
            PackExperts::Auto => match std::env::var("ODMOE_PACK_EXPERTS").as_deref() {
                Ok("1") => true,
                Ok("0") => false,
                _ => weights.stacked_expert_bytes() <= available_memory().unwrap_or(0) / 2,
            },
        };
        weights.pack_for_cpu(pack_experts, progress);
        let experts = Arc::new(ResidentExperts::new(std::mem::take(&mut weights.experts)));
        Ok(Model { config, weights, experts, pager: None, source: g, prefetch: Prefetch::Off, shadow: None, kv_type: KvType::F32 })
    }

    /// The expert pager, when experts are paged.
    pub fn pager(&self) -> Option<&PagedExperts> {
        self.pager.as_deref()
    }

    /// Replaces the expert source.
    pub fn with_experts(mut self, experts: Arc<dyn ExpertSource>) -> Model {
        self.experts = experts;
        self.pager = None;
        self
    }

    /// Sets how experts are read ahead (results are the same either way).
    pub fn set_prefetch(&mut self, p: Prefetch) {
        self.prefetch = p;
    }

    /// Sets the element type of the caches [`Model::new_cache`] makes from now on (f32 by
    /// default; f16 halves their memory but rounds keys and values). Latent attention's
    /// compressed cache stays f32.
    pub fn set_kv_type(&mut self, t: KvType) {
        self.kv_type = t;
    }

    /// The element type of the caches [`Model::new_cache`] makes.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// The selection scores layer `layer`'s router gives each expert for the rows `x`
    /// (`n × n_embd`, normalized FFN inputs), or `None` for a dense layer.
    pub fn router_scores(&self, layer: usize, x: &[f32]) -> Option<Vec<f32>> {
        ffn::router_scores(&self.config, &self.weights.layers.get(layer)?.ffn, x)
    }

    /// Indices of the layers with routed experts.
    pub fn moe_layers(&self) -> Vec<usize> {
        self.weights.layers.iter().enumerate().filter(|(_, l)| matches!(l.ffn, weights::Ffn::Moe { .. })).map(|(i, _)| i).collect()
    }

    /// Installs the trained predictor that [`Prefetch::Shadow`] uses, after checking that
    /// it was trained for this model's shape.
    pub fn set_shadow(&mut self, s: Arc<Shadow>) -> Result<()> {
        let moe = self.config.moe.as_ref().ok_or_else(|| Error::Invalid("the model has no routed experts to predict".into()))?;
        let layers = self.moe_layers();
        if s.n_embd != self.config.n_embd || s.n_expert != moe.n_expert || s.top_k != moe.n_expert_used || s.layers != layers {
            return Err(Error::Invalid(format!(
                "the shadow predictor was trained for another model: hidden {}, {} experts, top-{}, layers {:?} (this model: {}, {}, top-{}, {:?})",
                s.n_embd, s.n_expert, s.top_k, s.layers, self.config.n_embd, moe.n_expert, moe.n_expert_used, layers
            )));
        }
        self.shadow = Some(s);
        Ok(())
    }

    /// How experts are read ahead.
    pub fn prefetch(&self) -> Prefetch {
        self.prefetch
    }

    /// The model's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The model's metadata (tokenizer, chat template, hyperparameters).
    pub fn metadata(&self) -> &Metadata {
        self.source.metadata()
    }

    /// Bytes a cache from [`Model::new_cache`] takes per position, over all layers (keys
    /// and values in the cache's element type, or latent attention's compressed row):
    /// what a server budgets its sessions' memory with.
    pub fn kv_bytes_per_position(&self) -> u64 {
        let c = &self.config;
        let per_layer = match &c.mla {
            Some(m) => (m.kv_lora_rank + m.rope_dim) * 4,
            None => c.n_head_kv * (c.head_dim_k + c.head_dim_v) * if self.kv_type == KvType::F16 { 2 } else { 4 },
        };
        (c.n_layer * per_layer) as u64
    }

    /// A fresh cache for one sequence of at most `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        let layers = (0..self.config.n_layer)
            .map(|_| if self.config.mla.is_some() { LayerCache::Latent { c: Vec::new() } } else { LayerCache::Standard { k: KvRows::new(self.kv_type, self.config.n_head_kv), v: KvRows::new(self.kv_type, self.config.n_head_kv) } })
            .collect();
        KvCache { layers, len: 0, max_len }
    }

    /// Runs `tokens` through the model after the positions already in `cache`, appends
    /// them to the cache, and returns logits as `which` asks.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let mut seqs = [Sequence { tokens, cache, logits: which }];
        Ok(self.forward_batch(&mut seqs)?.pop().expect("one sequence in, one out"))
    }

    /// Runs one step over several sequences at once: each brings its new tokens and its own
    /// cache. Every projection and expert runs once over all the step's tokens (an expert
    /// is fetched once however many sequences route to it); attention stays within each
    /// sequence. Each token's numbers are computed exactly as if its sequence ran alone.
    /// Returns each sequence's logits as its `logits` asks. On error no cache changes.
    pub fn forward_batch(&self, seqs: &mut [Sequence<'_>]) -> Result<Vec<Vec<f32>>> {
        self.forward_batch_traced(seqs, None)
    }

    /// [`Model::forward_batch`] that also reports, for every MoE layer, the rows entering
    /// its experts (the FFN input after its norm: what the router sees) and each row's
    /// route, through `trace(layer, rows, routes)`. Rows are the step's tokens in order.
    /// Used to record routing traces; the results are those of `forward_batch`.
    ///
    /// The pass runs on a worker of the thread pool, so each of its parallel loops (a few
    /// dozen per step) starts on a thread that is already awake instead of waking the pool
    /// from outside and sleeping until it is done.
    pub fn forward_batch_traced(&self, seqs: &mut [Sequence<'_>], trace: Option<&mut LayerTrace<'_>>) -> Result<Vec<Vec<f32>>> {
        rayon::scope(|_| self.forward_batch_on_pool(seqs, trace))
    }

    fn forward_batch_on_pool(&self, seqs: &mut [Sequence<'_>], trace: Option<&mut LayerTrace<'_>>) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.config;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        for s in seqs.iter() {
            self.check(s.tokens, s.cache)?;
        }
        let d = cfg.n_embd;
        // the step's rows: sequence i holds rows spans[i].0..spans[i].1
        let mut spans = Vec::with_capacity(seqs.len());
        let mut rot = Vec::new();
        let mut x = Vec::new();
        for s in seqs.iter() {
            let t0 = spans.last().map_or(0, |&(_, e)| e);
            spans.push((t0, t0 + s.tokens.len()));
            for (i, &t) in s.tokens.iter().enumerate() {
                rot.push(Rotation::new(&cfg.rope, s.cache.len + i));
                x.extend(self.weights.tok_embd.row_f32(t as usize));
            }
        }
        if let Err(e) = self.layers(&mut x, &rot, &spans, seqs, trace) {
            for s in seqs.iter_mut() {
                for layer in &mut s.cache.layers {
                    layer.truncate(cfg, s.cache.len);
                }
            }
            return Err(e);
        }
        let mut out = Vec::with_capacity(seqs.len());
        for (s, &(t0, t1)) in seqs.iter_mut().zip(&spans) {
            s.cache.len += t1 - t0;
            let rows = match s.logits {
                Logits::All => t0..t1,
                Logits::Last => t1 - 1..t1,
                Logits::None => t1..t1,
            };
            if rows.is_empty() {
                out.push(Vec::new());
                continue;
            }
            let mut h = x[rows.start * d..rows.end * d].to_vec();
            rms_norm(&mut h, &self.weights.output_norm, cfg.rms_eps);
            out.push(h);
        }
        // one output projection for every sequence's rows
        let lens: Vec<usize> = out.iter().map(Vec::len).collect();
        if lens.iter().all(|&n| n == 0) {
            return Ok(out);
        }
        let all = matmul(&self.weights.output, &out.concat());
        // a mapped model file shrank under the pass: it read zeros (gguf::file_changed)
        if crate::gguf::file_changed() {
            return Err(Error::model("a model file was truncated or replaced on disk while in use, so these results are not its; load the model again (restart the server)"));
        }
        // a NaN or an infinity here would be sampled or printed as if it meant something
        if let Some(i) = all.iter().position(|v| !v.is_finite()) {
            return Err(Error::model(format!(
                "the logits are not finite ({} for token {} of the step's output): the model's weights or settings are damaged",
                all[i],
                i % cfg.n_vocab
            )));
        }
        let mut rest = &all[..];
        for (o, n) in out.iter_mut().zip(lens) {
            let (mine, more) = rest.split_at(n / d * cfg.n_vocab);
            *o = mine.to_vec();
            rest = more;
        }
        Ok(out)
    }

    fn check(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        let cfg = &self.config;
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to process".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.n_vocab) {
            return Err(Error::Invalid(format!("token id {bad} is out of range (vocabulary has {} tokens)", cfg.n_vocab)));
        }
        if cache.len + tokens.len() > cache.max_len {
            return Err(Error::Invalid(format!(
                "context overflow: {} cached + {} new positions exceed the limit of {}",
                cache.len,
                tokens.len(),
                cache.max_len
            )));
        }
        Ok(())
    }

    /// Every layer over the step's rows `x`; appends to the caches' layers (not `len`).
    fn layers(&self, x: &mut [f32], rot: &[Rotation], spans: &[(usize, usize)], seqs: &mut [Sequence<'_>], mut trace: Option<&mut LayerTrace<'_>>) -> Result<()> {
        let cfg = &self.config;
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let mut h = x.to_vec();
            rms_norm(&mut h, &layer.attn_norm, cfg.rms_eps);
            let p = attention::project(cfg, &layer.attn, &h, rot);
            // each sequence attends over its own cache: side by side
            let attended: Vec<f32> = seqs
                .par_iter_mut()
                .zip(spans)
                .map(|(s, &(t0, t1))| {
                    let pos0 = s.cache.len;
                    p.attend(cfg, &layer.attn, rot, t0..t1, pos0, &mut s.cache.layers[l])
                })
                .collect::<Vec<_>>()
                .concat();
            add_assign(x, &attention::output(&layer.attn, &attended));
            let mut h = x.to_vec();
            rms_norm(&mut h, &layer.ffn_norm, cfg.rms_eps);
            self.prefetch_ahead(l, &h);
            let mut routes = trace.as_ref().map(|_| Vec::new());
            let f = ffn::forward(cfg, l, &layer.ffn, self.experts.as_ref(), &h, routes.as_mut());
            if let (Some(t), Some(r)) = (trace.as_mut(), routes) {
                if !r.is_empty() {
                    t(l, &h, &r);
                }
            }
            self.layer_done(l);
            add_assign(x, &f?);
        }
        Ok(())
    }
}

/// The memory the system could give this process now (`MemAvailable`), where it says.
/// Memory the system can give without swapping (Linux's `MemAvailable`); `None` where it
/// cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Model {
    /// With prefetch on, asks the expert source for the experts the layers after `l` are
    /// expected to route to, from `h`, layer `l`'s normalized FFN input (`n × n_embd`):
    /// each later layer's router applied to it (`gate`), or the shadow predictor's guess.
    pub(crate) fn prefetch_ahead(&self, l: usize, h: &[f32]) {
        let cfg = &self.config;
        match (self.prefetch, &self.shadow) {
            (Prefetch::Gate { depth }, _) => {
                // layer l+1 is asked for by every layer within reach, so its guess is
                // refined as the pass gets closer; the pager skips repeats
                for ahead in l + 1..=(l + depth.max(1)).min(self.weights.layers.len() - 1) {
                    if let Some(ids) = ffn::router_choice(cfg, &self.weights.layers[ahead].ffn, h) {
                        self.experts.prefetch(ahead, &ids);
                    }
                }
            }
            (Prefetch::Shadow { depth }, Some(s)) => {
                for (ahead, ids) in s.predict(l, h, depth) {
                    self.experts.prefetch(ahead, &ids);
                }
            }
            _ => {}
        }
    }

    /// Layer `l`'s experts are fetched: its prefetches that never started are of no use
    /// now.
    pub(crate) fn layer_done(&self, l: usize) {
        if self.prefetch != Prefetch::Off {
            self.experts.cancel_prefetches(Some(l));
        }
    }
}
