//! Keys and values on the device: one pool per model ([`KvPool`]), a pair of buffers per
//! layer (latent attention: one compressed row per position, no values) in pages of
//! [`PAGE`] positions, f32 or packed f16; each sequence's cache ([`GpuKvCache`]) is a list
//! of pages. With every sequence's positions in the same buffers, one attention dispatch
//! per layer serves a whole batch of sessions (and one scatter per layer writes their new
//! keys and values), where a buffer per sequence needed a dispatch per sequence and layer.
//! The pool doubles when it runs out of pages and never shrinks (a server's pool settles
//! at the size its busiest moment needed); pages come back when a cache is dropped.

use std::sync::{Arc, Mutex};

use super::attention::cache_widths;
use super::GpuModel;
use crate::compute::gpu::recorder::Recorder;
use crate::compute::gpu::Gpu;
use crate::{Error, Result};

/// Positions per page.
pub(super) const PAGE: usize = 16;

/// Pages a new pool starts with (it doubles from there).
const FIRST_PAGES: usize = 64;

/// Free pages, shared by the pool and the caches that return pages to it.
pub(super) type FreePages = Arc<Mutex<Vec<u32>>>;

/// One sequence's keys and values: the pool pages holding its positions in order, for up
/// to `max_len` positions. Its pages go back to the pool when it is dropped, so a
/// server's sessions hold device memory for what they use, not for their whole context.
pub struct GpuKvCache {
    pub(super) pages: Vec<u32>,
    pub(super) len: usize,
    pub(super) max_len: usize,
    free: FreePages,
}

impl GpuKvCache {
    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets every position from `len` on: the next pass writes over them (the pages
    /// stay with the cache). No-op when `len` is not shorter.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Whether no position has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache row of position `s` in the pool's buffers.
    pub(super) fn row(&self, s: usize) -> u32 {
        self.pages[s / PAGE] * PAGE as u32 + (s % PAGE) as u32
    }
}

impl Drop for GpuKvCache {
    fn drop(&mut self) {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).append(&mut self.pages);
    }
}

/// The device buffers every [`GpuKvCache`] of a model lives in.
pub(super) struct KvPool {
    /// Per layer: `pages × PAGE` rows of keys (and of values), f32 or packed f16 pairs.
    pub(super) k: Vec<wgpu::Buffer>,
    pub(super) v: Vec<wgpu::Buffer>,
    /// Pages the buffers hold.
    pages: usize,
    free: FreePages,
    /// Keys and values are f16, two to a word (else f32).
    pub(super) half: bool,
    /// Values per row: keys, values.
    widths: (usize, usize),
}

/// Words (f32 values, or f16 pairs) that hold `values` cached values.
fn cache_words(values: usize, half: bool) -> usize {
    if half {
        values.div_ceil(2)
    } else {
        values
    }
}

impl KvPool {
    /// The free pages, which caches take their pages from and return them to (without
    /// waiting for the pool, which a step holds while it is recorded).
    pub(super) fn free_pages(&self) -> FreePages {
        self.free.clone()
    }

    /// An empty pool for `layers` layers of rows `widths` values wide.
    pub(super) fn new(gpu: &Gpu, layers: usize, widths: (usize, usize), half: bool) -> KvPool {
        let empty = |label| (0..layers).map(|_| gpu.output(label, 1)).collect();
        KvPool { k: empty("k cache"), v: empty("v cache"), pages: 0, free: Arc::default(), half, widths }
    }

    /// Makes at least `need` pages free: new buffers of twice the pages (or more), the
    /// pages held copied over by `rec`. Whether it grew.
    fn reserve(&mut self, gpu: &Gpu, rec: &mut Recorder, need: usize) -> Result<bool> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() >= need {
            return Ok(false);
        }
        let pages = (2 * self.pages).max(FIRST_PAGES).max(self.pages + need - free.len());
        let (kw, vw) = self.widths;
        let bytes = (cache_words(pages * PAGE * kw.max(vw), self.half) * 4) as u64;
        if bytes > gpu.max_storage_bytes() {
            return Err(Error::Invalid(format!(
                "the device key/value cache would need {bytes} bytes per layer for {} positions, more than the device's largest buffer ({} bytes): fewer sessions or shorter contexts",
                pages * PAGE,
                gpu.max_storage_bytes()
            )));
        }
        for (bufs, width, label) in [(&mut self.k, kw, "k cache"), (&mut self.v, vw, "v cache")] {
            for b in bufs.iter_mut() {
                let grown = gpu.output(label, cache_words(pages * PAGE * width, self.half));
                let held = cache_words(self.pages * PAGE * width, self.half);
                if held > 0 {
                    rec.copy(b, 0, &grown, 0, (held * 4) as u64);
                }
                *b = grown;
            }
        }
        free.extend((self.pages as u32..pages as u32).rev());
        self.pages = pages;
        Ok(true)
    }

    /// Gives each cache the pages its next positions need (`(cache, new positions)`),
    /// growing the pool first if it must (its copy recorded in `rec`). Whether it grew.
    pub(super) fn allocate(&mut self, gpu: &Gpu, rec: &mut Recorder, caches: &mut [(&mut GpuKvCache, usize)]) -> Result<bool> {
        let want = |c: &GpuKvCache, n: usize| (c.len + n).div_ceil(PAGE).saturating_sub(c.pages.len());
        let need: usize = caches.iter().map(|(c, n)| want(c, *n)).sum();
        let grew = self.reserve(gpu, rec, need)?;
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for (c, n) in caches.iter_mut() {
            let k = want(c, *n);
            let at = free.len() - k;
            c.pages.extend(free.drain(at..).rev());
        }
        Ok(grew)
    }

    /// Bytes the pool's buffers take on the device.
    pub(super) fn device_bytes(&self) -> u64 {
        let (kw, vw) = self.widths;
        (self.k.len() * cache_words(self.pages * PAGE * kw, self.half) * 4 + self.v.len() * cache_words(self.pages * PAGE * vw, self.half) * 4) as u64
    }
}

/// Whether `model`'s device caches hold f16 keys and values (see
/// [`GpuModel::half_cache`]).
pub(super) fn half_kv(model: &crate::model::Model) -> bool {
    let (kw, vw) = cache_widths(&model.config);
    model.kv_type() == crate::model::KvType::F16 && model.config.mla.is_none() && kw % 2 == 0 && vw % 2 == 0
}

impl<'a> GpuModel<'a> {
    /// Whether the caches hold f16 keys and values: when the model's key/value type says
    /// so (`Model::set_kv_type`), as on the CPU, for grouped-query attention whose key and
    /// value rows pair up into words (latent attention's compressed rows stay f32, as on
    /// the CPU).
    pub fn half_cache(&self) -> bool {
        half_kv(self.model)
    }

    /// Bytes a device cache takes per position, over all layers (f32 or f16 keys and
    /// values, or latent attention's compressed rows).
    pub fn kv_bytes_per_position(&self) -> u64 {
        let (kw, vw) = cache_widths(&self.model.config);
        let bytes = if self.half_cache() { 2 } else { 4 };
        (self.layers.len() * (kw + vw) * bytes) as u64
    }

    /// Bytes of device memory the key/value pool holds now (every cache's pages, used or
    /// free).
    pub fn kv_device_bytes(&self) -> u64 {
        self.kv.lock().unwrap_or_else(|p| p.into_inner()).device_bytes()
    }

    /// An empty cache for one sequence of at most `max_len` positions (pages are taken
    /// from the model's pool as it grows).
    pub fn new_cache(&self, max_len: usize) -> GpuKvCache {
        GpuKvCache { pages: Vec::new(), len: 0, max_len, free: self.kv_free.clone() }
    }
}
