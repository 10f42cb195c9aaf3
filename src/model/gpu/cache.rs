//! Each sequence's keys and values on the device ([`GpuKvCache`]): one pair of buffers
//! per layer (latent attention: one compressed row per position, no values), f32 or
//! packed f16, starting small and doubling as the sequence grows.

use super::attention::cache_widths;
use super::GpuModel;
use crate::compute::gpu::recorder::Recorder;

/// One sequence's keys and values in device buffers, one pair per layer, for up to
/// `max_len` positions; the buffers start small and double as the sequence grows, so a
/// server's sessions hold device memory for what they use, not for their whole context.
pub struct GpuKvCache {
    pub(super) k: Vec<wgpu::Buffer>,
    pub(super) v: Vec<wgpu::Buffer>,
    pub(super) len: usize,
    pub(super) max_len: usize,
    /// Positions the buffers hold.
    room: usize,
    /// Keys and values are f16, two to a word (else f32).
    pub(super) half: bool,
}

/// Words (f32 values, or f16 pairs) that hold `values` cached values.
fn cache_words(values: usize, half: bool) -> usize {
    if half {
        values.div_ceil(2)
    } else {
        values
    }
}

/// Positions a new [`GpuKvCache`] has room for (it grows from there).
const FIRST_CACHE_ROOM: usize = 256;

impl GpuKvCache {
    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position has been processed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<'a> GpuModel<'a> {
    /// Whether the caches hold f16 keys and values: when the model's key/value type says
    /// so (`Model::set_kv_type`), as on the CPU, for grouped-query attention whose key and
    /// value rows pair up into words (latent attention's compressed rows stay f32, as on
    /// the CPU).
    pub fn half_cache(&self) -> bool {
        let (kw, vw) = cache_widths(&self.model.config);
        self.model.kv_type() == crate::model::KvType::F16 && self.model.config.mla.is_none() && kw % 2 == 0 && vw % 2 == 0
    }

    /// Bytes a device cache takes per position, over all layers (f32 or f16 keys and
    /// values, or latent attention's compressed rows).
    pub fn kv_bytes_per_position(&self) -> u64 {
        let (kw, vw) = cache_widths(&self.model.config);
        let bytes = if self.half_cache() { 2 } else { 4 };
        (self.layers.len() * (kw + vw) * bytes) as u64
    }

    /// An empty cache for one sequence of at most `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> GpuKvCache {
        let (kw, vw) = cache_widths(&self.model.config);
        let n = self.layers.len();
        let room = max_len.clamp(1, FIRST_CACHE_ROOM);
        let half = self.half_cache();
        GpuKvCache {
            k: (0..n).map(|_| self.gpu.output("k cache", cache_words(room * kw, half))).collect(),
            v: (0..n).map(|_| self.gpu.output("v cache", cache_words(room * vw, half))).collect(),
            len: 0,
            max_len,
            room,
            half,
        }
    }

    /// Makes `cache` hold at least `len` positions (up to its limit): new buffers of
    /// twice the room (or `len`), the cached positions copied over by `rec`. Whether it
    /// grew.
    pub(super) fn reserve(&self, rec: &mut Recorder, cache: &mut GpuKvCache, len: usize) -> bool {
        if len <= cache.room {
            return false;
        }
        let (kw, vw) = cache_widths(&self.model.config);
        let room = (2 * cache.room).max(len).min(cache.max_len.max(len));
        for (bufs, width, label) in [(&mut cache.k, kw, "k cache"), (&mut cache.v, vw, "v cache")] {
            for b in bufs.iter_mut() {
                let grown = self.gpu.output(label, cache_words(room * width, cache.half));
                let held = cache_words(cache.len * width, cache.half);
                if held > 0 {
                    rec.copy(b, 0, &grown, 0, (held * 4) as u64);
                }
                *b = grown;
            }
        }
        cache.room = room;
        true
    }

}
