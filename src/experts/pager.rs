//! On-demand experts: routed experts are read from the model file with positioned reads
//! into a cache bounded by a byte budget, instead of being reached through the mapping.
//!
//! Guarantees:
//! - Exact: the bytes are the file's bytes, so results equal the resident run bit for bit.
//! - Never two reads of one expert at once: a request for an expert being read waits for
//!   that read (single flight).
//! - Experts in use are pinned: handing out an expert gives the caller a shared handle; the
//!   cache never evicts an entry while such a handle is alive.
//! - The budget is split evenly over the layers that have experts, and each layer evicts
//!   its least recently used unpinned experts to stay within its share. An expert larger
//!   than its layer's share is still read (the layer must run) and kept only while used.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::{ExpertSource, ExpertWeights};
use crate::compute::QMatrix;
use crate::gguf::GgufModel;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// Where one projection of every expert of a layer lies: expert `e` is the byte range
/// `offset + e * stride .. + stride` of file `file`.
#[derive(Clone, Debug)]
struct ProjectionLayout {
    file: usize,
    offset: u64,
    stride: u64,
    ty: GgmlType,
    rows: usize,
    cols: usize,
}

#[derive(Clone, Debug)]
struct LayerLayout {
    gate: ProjectionLayout,
    up: ProjectionLayout,
    down: ProjectionLayout,
    n_expert: usize,
    /// Store records: gate|up|down are contiguous, read in one go and checked against this CRC-32.
    crc32: Option<Vec<u32>>,
}

impl LayerLayout {
    /// Bytes of one expert's three projections (without record padding).
    fn expert_bytes(&self) -> u64 {
        self.proj_bytes(&self.gate) + self.proj_bytes(&self.up) + self.proj_bytes(&self.down)
    }

    fn proj_bytes(&self, p: &ProjectionLayout) -> u64 {
        p.ty.row_bytes(p.cols as u64).expect("validated") * p.rows as u64
    }
}

enum Slot {
    Loading,
    Ready { data: Arc<ExpertBuf>, last_use: u64 },
}

struct CacheState {
    slots: HashMap<(usize, usize), Slot>,
    /// Bytes held per layer.
    used: Vec<u64>,
    clock: u64,
}

/// Counters the server publishes; all monotonic.
#[derive(Default, Debug)]
pub struct PagerStats {
    /// Requests served from the cache.
    pub hits: AtomicU64,
    /// Requests that needed a read.
    pub misses: AtomicU64,
    /// Bytes read from disk.
    pub bytes_read: AtomicU64,
    /// Total time spent in reads, in microseconds.
    pub read_micros: AtomicU64,
    /// Total time callers waited for experts that were not ready, in microseconds.
    pub wait_micros: AtomicU64,
    /// Experts evicted.
    pub evictions: AtomicU64,
}

/// A snapshot of [`PagerStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagerStatsSnapshot {
    /// Requests served from the cache.
    pub hits: u64,
    /// Requests that needed a read.
    pub misses: u64,
    /// Bytes read from disk.
    pub bytes_read: u64,
    /// Time spent in reads (µs).
    pub read_micros: u64,
    /// Time callers waited (µs).
    pub wait_micros: u64,
    /// Experts evicted.
    pub evictions: u64,
}

/// Routed experts read on demand from GGUF files into a byte-budgeted cache.
pub struct PagedExperts {
    files: Vec<File>,
    layers: Vec<Option<LayerLayout>>,
    layer_budget: u64,
    state: Mutex<CacheState>,
    ready: Condvar,
    stats: PagerStats,
    read_threads: usize,
    /// Store files opened with O_DIRECT (bypassing the page cache).
    direct: bool,
}

impl PagedExperts {
    /// Pages the experts of `g` (already validated by the model loader) within `budget`
    /// bytes (`u64::MAX` for no limit), reading with up to `read_threads` threads.
    pub fn from_gguf(g: &GgufModel, n_layer: usize, budget: u64, read_threads: usize) -> Result<PagedExperts> {
        let mut files = Vec::new();
        for f in g.files() {
            files.push(File::open(f.path()).map_err(|source| Error::Io { path: f.path().to_path_buf(), source })?);
        }
        let mut layers = Vec::with_capacity(n_layer);
        for l in 0..n_layer {
            let proj = |name: &str| -> Option<(ProjectionLayout, usize)> {
                let full = format!("blk.{l}.ffn_{name}_exps.weight");
                let (fi, info) = g.tensor_location(&full)?;
                let n_expert = *info.dims.get(2)? as usize;
                let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
                Some((ProjectionLayout { file: fi, offset: info.offset, stride: info.size / n_expert as u64, ty: info.ggml_type, rows, cols }, n_expert))
            };
            layers.push(match (proj("gate"), proj("up"), proj("down")) {
                (Some((gate, n)), Some((up, _)), Some((down, _))) => Some(LayerLayout { gate, up, down, n_expert: n, crc32: None }),
                _ => None,
            });
        }
        Ok(Self::new(files, layers, budget, read_threads))
    }

    /// Pages the experts of an expert store (one record per expert, checksummed).
    pub fn from_store(store: &super::store::Store, n_layer: usize, budget: u64, read_threads: usize) -> Result<PagedExperts> {
        Self::from_store_with(store, n_layer, budget, read_threads, false)
    }

    /// As [`Self::from_store`], optionally reading with `O_DIRECT` (page cache bypassed;
    /// falls back to buffered reads where the filesystem refuses it, see [`Self::direct_io`]).
    pub fn from_store_with(store: &super::store::Store, n_layer: usize, budget: u64, read_threads: usize, direct: bool) -> Result<PagedExperts> {
        let mut paths = Vec::new();
        let mut layers: Vec<Option<LayerLayout>> = vec![None; n_layer];
        for le in &store.manifest().layers {
            if le.layer >= n_layer {
                return Err(Error::model(format!("store: expert file for layer {} but the model has {n_layer} layers", le.layer)));
            }
            let path = store.dir().join(&le.file);
            let len = std::fs::metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?.len();
            let need = le.record_bytes * le.n_expert as u64;
            if len < need || le.crc32.len() != le.n_expert {
                return Err(Error::model(format!("store: {} is truncated or inconsistent ({len} bytes, {need} expected for {} experts)", path.display(), le.n_expert)));
            }
            let ty = |name: &str| GgmlType::from_name(name).ok_or_else(|| Error::model(format!("store: unknown type {name}")));
            let file = paths.len();
            paths.push(path);
            let proj = |pi: &super::store::ProjectionInfo, offset: u64| -> Result<ProjectionLayout> {
                let t = ty(&pi.ty)?;
                if t.row_bytes(pi.cols as u64).map(|rb| rb * pi.rows as u64) != Some(pi.bytes) {
                    return Err(Error::model(format!("store: layer {}: {} bytes for a {}x{} {} projection", le.layer, pi.bytes, pi.rows, pi.cols, pi.ty)));
                }
                Ok(ProjectionLayout { file, offset, stride: le.record_bytes, ty: t, rows: pi.rows, cols: pi.cols })
            };
            let gate = proj(&le.gate, 0)?;
            let up = proj(&le.up, le.gate.bytes)?;
            let down = proj(&le.down, le.gate.bytes + le.up.bytes)?;
            layers[le.layer] = Some(LayerLayout { gate, up, down, n_expert: le.n_expert, crc32: Some(le.crc32.clone()) });
        }
        // Direct I/O for all files or none: reads size their buffers by the mode.
        let open_direct = |p: &PathBuf| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(p)
        };
        let direct_files = if direct { paths.iter().map(open_direct).collect::<std::io::Result<Vec<File>>>().ok() } else { None };
        let direct = direct_files.is_some();
        let files = match direct_files {
            Some(f) => f,
            None => paths.iter().map(|p| File::open(p).map_err(|source| Error::Io { path: p.clone(), source })).collect::<Result<Vec<File>>>()?,
        };
        let mut p = Self::new(files, layers, budget, read_threads);
        p.direct = direct;
        Ok(p)
    }

    /// Experts, expert FFN size and hidden size of `layer`'s routed experts, if it has any.
    pub fn layer_shape(&self, layer: usize) -> Option<(usize, usize, usize)> {
        self.layers.get(layer)?.as_ref().map(|l| (l.n_expert, l.gate.rows, l.gate.cols))
    }

    /// Whether reads bypass the page cache.
    pub fn direct_io(&self) -> bool {
        self.direct
    }

    fn new(files: Vec<File>, layers: Vec<Option<LayerLayout>>, budget: u64, read_threads: usize) -> PagedExperts {
        let n_moe = layers.iter().filter(|l| l.is_some()).count().max(1) as u64;
        PagedExperts {
            files,
            layer_budget: if budget == u64::MAX { u64::MAX } else { budget / n_moe },
            state: Mutex::new(CacheState { slots: HashMap::new(), used: vec![0; layers.len()], clock: 0 }),
            ready: Condvar::new(),
            stats: PagerStats::default(),
            read_threads: read_threads.max(1),
            direct: false,
            layers,
        }
    }

    /// Bytes of routed experts in the whole model.
    pub fn total_expert_bytes(&self) -> u64 {
        self.layers.iter().flatten().map(|l| l.expert_bytes() * l.n_expert as u64).sum()
    }

    /// Bytes of one expert of `layer` (0 for layers without experts).
    pub fn expert_bytes(&self, layer: usize) -> u64 {
        self.layers.get(layer).and_then(|l| l.as_ref()).map_or(0, |l| l.expert_bytes())
    }

    /// Current counters.
    pub fn stats(&self) -> PagerStatsSnapshot {
        let s = &self.stats;
        PagerStatsSnapshot {
            hits: s.hits.load(Ordering::Relaxed),
            misses: s.misses.load(Ordering::Relaxed),
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            read_micros: s.read_micros.load(Ordering::Relaxed),
            wait_micros: s.wait_micros.load(Ordering::Relaxed),
            evictions: s.evictions.load(Ordering::Relaxed),
        }
    }

    /// Bytes the cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        self.state.lock().unwrap().used.iter().sum()
    }

    fn layout(&self, layer: usize, expert: usize) -> Result<&LayerLayout> {
        let l = self.layers.get(layer).and_then(|l| l.as_ref()).ok_or_else(|| Error::Invalid(format!("layer {layer} has no routed experts")))?;
        if expert >= l.n_expert {
            return Err(Error::Invalid(format!("layer {layer}: expert {expert} out of range ({})", l.n_expert)));
        }
        Ok(l)
    }

    fn read(&self, layer: usize, expert: usize) -> Result<Arc<ExpertBuf>> {
        let l = self.layout(layer, expert)?;
        let t0 = Instant::now();
        let len = l.expert_bytes() as usize;
        let fail = |e: std::io::Error| Error::model(format!("reading expert {expert} of layer {layer}: {e} (is the model file truncated or changing?)"));
        let mut buf;
        if let Some(crcs) = &l.crc32 {
            // one contiguous record; with direct I/O the whole aligned record is read
            let read_len = if self.direct { l.gate.stride as usize } else { len };
            buf = ExpertBuf::zeroed(read_len, len);
            self.files[l.gate.file].read_exact_at(buf.full_mut(), l.gate.offset + expert as u64 * l.gate.stride).map_err(fail)?;
            if crc32fast::hash(buf.as_ref()) != crcs[expert] {
                return Err(Error::model(format!("expert {expert} of layer {layer} is corrupt: its checksum does not match the store's manifest")));
            }
        } else {
            buf = ExpertBuf::zeroed(len, len);
            let mut at = 0usize;
            for p in [&l.gate, &l.up, &l.down] {
                let n = l.proj_bytes(p) as usize;
                self.files[p.file].read_exact_at(&mut buf.full_mut()[at..at + n], p.offset + expert as u64 * p.stride).map_err(fail)?;
                at += n;
            }
        }
        self.stats.read_micros.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.bytes_read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(Arc::new(buf))
    }

    fn weights(&self, layer: usize, data: Arc<ExpertBuf>) -> ExpertWeights {
        let l = self.layers[layer].as_ref().expect("layer has experts");
        let bytes = Bytes::from_owner(Shared(data));
        let (g, u) = (l.proj_bytes(&l.gate) as usize, l.proj_bytes(&l.up) as usize);
        let m = |p: &ProjectionLayout, r: std::ops::Range<usize>| QMatrix { ty: p.ty, rows: p.rows, cols: p.cols, data: bytes.slice(r) };
        ExpertWeights { gate: m(&l.gate, 0..g), up: m(&l.up, g..g + u), down: m(&l.down, g + u..bytes.len()) }
    }

    /// Evicts least recently used, unpinned experts of `layer` until `incoming` more
    /// bytes fit in its share.
    fn make_room(&self, st: &mut CacheState, layer: usize, incoming: u64) {
        while st.used[layer] + incoming > self.layer_budget {
            let victim = st
                .slots
                .iter()
                .filter_map(|(&(l, e), s)| match s {
                    Slot::Ready { data, last_use } if l == layer && Arc::strong_count(data) == 1 => Some(((l, e), *last_use, data.len() as u64)),
                    _ => None,
                })
                .min_by_key(|&(_, t, _)| t);
            let Some((key, _, size)) = victim else { break };
            st.slots.remove(&key);
            st.used[layer] -= size;
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get(&self, layer: usize, expert: usize) -> Result<ExpertWeights> {
        self.layout(layer, expert)?;
        let key = (layer, expert);
        let mut st = self.state.lock().unwrap();
        let mut waited: Option<Instant> = None;
        loop {
            st.clock += 1;
            let now = st.clock;
            match st.slots.get_mut(&key) {
                Some(Slot::Ready { data, last_use }) => {
                    *last_use = now;
                    let data = data.clone();
                    match waited {
                        Some(t) => {
                            self.stats.wait_micros.fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                        }
                        None => {
                            self.stats.hits.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(st);
                    return Ok(self.weights(layer, data));
                }
                Some(Slot::Loading) => {
                    waited.get_or_insert_with(Instant::now);
                    st = self.ready.wait(st).unwrap();
                }
                None => break,
            }
        }
        st.slots.insert(key, Slot::Loading);
        drop(st);
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let read = self.read(layer, expert);
        let mut st = self.state.lock().unwrap();
        let result = match read {
            Ok(data) => {
                let size = data.len() as u64;
                self.make_room(&mut st, layer, size);
                st.clock += 1;
                let now = st.clock;
                if st.used[layer] + size <= self.layer_budget {
                    st.slots.insert(key, Slot::Ready { data: data.clone(), last_use: now });
                    st.used[layer] += size;
                } else {
                    st.slots.remove(&key);
                }
                Ok(data)
            }
            Err(e) => {
                st.slots.remove(&key);
                Err(e)
            }
        };
        drop(st);
        self.ready.notify_all();
        self.stats.wait_micros.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        result.map(|d| self.weights(layer, d))
    }
}

/// Keeps an expert's buffer alive (and pinned) while any handle on it exists.
struct Shared(Arc<ExpertBuf>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_ref()
    }
}

/// Alignment of expert buffers: what direct I/O needs on common filesystems.
const BUF_ALIGN: usize = 4096;

/// An expert's bytes in a page-aligned allocation (so direct I/O can read into it);
/// `len` bytes are the expert, `cap` may include the record's padding.
struct ExpertBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: a uniquely owned heap allocation of plain bytes.
unsafe impl Send for ExpertBuf {}
// SAFETY: shared access is read-only.
unsafe impl Sync for ExpertBuf {}

impl ExpertBuf {
    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap.max(1), BUF_ALIGN).expect("expert size fits a layout")
    }

    fn zeroed(cap: usize, len: usize) -> ExpertBuf {
        assert!(len <= cap);
        // SAFETY: the layout has non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(Self::layout(cap)) };
        let ptr = std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(cap)));
        ExpertBuf { ptr, len, cap }
    }

    fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: `cap` initialized (zeroed) bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Bytes of the expert.
    fn len(&self) -> usize {
        self.len
    }
}

impl AsRef<[u8]> for ExpertBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len <= cap` initialized bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for ExpertBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
    }
}

impl ExpertSource for PagedExperts {
    fn expert(&self, layer: usize, expert: usize) -> Result<ExpertWeights> {
        self.get(layer, expert)
    }

    fn experts(&self, layer: usize, ids: &[usize]) -> Result<Vec<ExpertWeights>> {
        if ids.len() <= 1 || self.read_threads == 1 {
            return ids.iter().map(|&e| self.get(layer, e)).collect();
        }
        // Independent reads in parallel; the cache keeps them single-flight.
        let chunk = ids.len().div_ceil(self.read_threads);
        let results: Vec<Result<Vec<ExpertWeights>>> = std::thread::scope(|s| {
            let handles: Vec<_> = ids.chunks(chunk).map(|c| s.spawn(move || c.iter().map(|&e| self.get(layer, e)).collect::<Result<Vec<_>>>())).collect();
            handles.into_iter().map(|h| h.join().expect("reader thread")).collect()
        });
        let mut out = Vec::with_capacity(ids.len());
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }
}

/// Parses a byte size: a plain number of bytes, or with a suffix KiB/MiB/GiB/TiB (powers
/// of 1024) or KB/MB/GB/TB (powers of 1000), case-insensitive; `unlimited` for no limit.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(Error::Invalid(format!("size {s:?}: unknown unit {other:?} (use bytes, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"))),
    };
    let v: f64 = num.parse().map_err(|_| Error::Invalid(format!("size {s:?} is not a number with an optional unit")))?;
    let bytes = v * mult;
    if !(bytes.is_finite() && (0.0..1.8e19).contains(&bytes)) {
        return Err(Error::Invalid(format!("size {s:?} is out of range")));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5kb").unwrap(), 1500);
        assert_eq!(parse_size("unlimited").unwrap(), u64::MAX);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("-3GiB").is_err());
        assert!(parse_size("").is_err());
    }
}
