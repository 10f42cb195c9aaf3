//! What runs the pipeline's steps: the model on the CPU, or its copy on a GPU. The
//! scheduler holds each session's cache as a [`SessionCache`] made by the engine, and the
//! compute actor hands a step's caches back to the same engine; the rest of the pipeline
//! does not know which backend runs.

use std::sync::Arc;

use odmoe::model::{KvCache, Logits, Model, Sequence};

use super::compute::StepItem;

/// The backend a pipeline runs on.
#[derive(Clone)]
pub enum Engine {
    /// The CPU backend (the reference).
    Cpu(Arc<Model>),
    /// The wgpu backend: weights, caches and (within its budget) experts on the device.
    #[cfg(feature = "gpu")]
    Gpu(Arc<GpuEngine>),
}

/// One session's key/value cache, on the engine's side.
pub enum SessionCache {
    /// In host memory ([`Engine::Cpu`]).
    Cpu(KvCache),
    /// In device buffers ([`Engine::Gpu`]).
    #[cfg(feature = "gpu")]
    Gpu(odmoe::model::GpuKvCache),
}

impl SessionCache {
    /// A cache holding nothing (what a finished session keeps until it is dropped).
    pub fn empty() -> SessionCache {
        SessionCache::Cpu(KvCache::default())
    }
}

impl Engine {
    /// The model (its configuration, tokenizer metadata and expert source).
    pub fn model(&self) -> &Arc<Model> {
        match self {
            Engine::Cpu(m) => m,
            #[cfg(feature = "gpu")]
            Engine::Gpu(g) => &g.model,
        }
    }

    /// Which backend, for the log.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cpu(_) => "cpu".into(),
            #[cfg(feature = "gpu")]
            Engine::Gpu(g) => format!("gpu: {}", g.describe),
        }
    }

    /// A fresh cache for one session of at most `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> SessionCache {
        match self {
            Engine::Cpu(m) => SessionCache::Cpu(m.new_cache(max_len)),
            #[cfg(feature = "gpu")]
            Engine::Gpu(g) => SessionCache::Gpu(g.model_on_device().new_cache(max_len)),
        }
    }

    /// Bytes a session's cache takes per position (the device cache holds f32 values
    /// whatever the CPU cache's element type).
    pub fn kv_bytes_per_position(&self) -> u64 {
        match self {
            Engine::Cpu(m) => m.kv_bytes_per_position(),
            #[cfg(feature = "gpu")]
            Engine::Gpu(g) => g.model_on_device().kv_bytes_per_position(),
        }
    }

    /// One batched forward pass over `items` (their caches advanced): per item, its last
    /// position's logits when it asks for them, else nothing.
    #[cfg_attr(not(feature = "gpu"), allow(irrefutable_let_patterns))]
    pub fn forward_batch(&self, items: &mut [StepItem]) -> Result<Vec<Vec<f32>>, String> {
        let which = |it: &StepItem| if it.logits { Logits::Last } else { Logits::None };
        match self {
            Engine::Cpu(m) => {
                let mut seqs = Vec::with_capacity(items.len());
                for it in items.iter_mut() {
                    let logits = which(it);
                    let SessionCache::Cpu(cache) = &mut it.cache else { return Err(wrong_cache()) };
                    seqs.push(Sequence { tokens: &it.tokens, cache, logits });
                }
                m.forward_batch(&mut seqs).map_err(|e| e.to_string())
            }
            #[cfg(feature = "gpu")]
            Engine::Gpu(g) => {
                let mut seqs = Vec::with_capacity(items.len());
                for it in items.iter_mut() {
                    let logits = which(it);
                    let SessionCache::Gpu(cache) = &mut it.cache else { return Err(wrong_cache()) };
                    seqs.push(odmoe::model::GpuSequence { tokens: &it.tokens, cache, logits });
                }
                g.model_on_device().forward_batch(&mut seqs).map_err(|e| e.to_string())
            }
        }
    }
}

fn wrong_cache() -> String {
    "a session's cache belongs to another backend".into()
}

/// The model's copy on a GPU for the server's lifetime.
#[cfg(feature = "gpu")]
pub struct GpuEngine {
    model: Arc<Model>,
    device: odmoe::model::GpuModel<'static>,
    describe: String,
}

#[cfg(feature = "gpu")]
impl GpuEngine {
    /// Uploads `model` to `gpu`, keeping up to `expert_budget` bytes of routed experts on
    /// the device (all of them, routed there, when they fit). The model and the device
    /// live as long as the process: a server keeps its model until it exits.
    pub fn new(model: Arc<Model>, gpu: odmoe::compute::gpu::Gpu, expert_budget: u64) -> odmoe::Result<GpuEngine> {
        let describe = gpu.describe();
        let (m, g): (&'static Model, &'static odmoe::compute::gpu::Gpu) = (Box::leak(Box::new(model.clone())), Box::leak(Box::new(gpu)));
        let device = odmoe::model::GpuModel::with_expert_budget(m, g, expert_budget)?;
        Ok(GpuEngine { model, device, describe })
    }

    fn model_on_device(&self) -> &odmoe::model::GpuModel<'static> {
        &self.device
    }
}
