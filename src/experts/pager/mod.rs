//! On-demand experts: routed experts are read from the model file with positioned reads
//! into a cache bounded by a byte budget, instead of being reached through the mapping.
//!
//! A fixed pool of reader threads serves two queues: demand reads (an expert a running
//! layer needs now) and prefetches (an expert a predictor expects soon). Guarantees:
//! - Exact: the bytes are the file's bytes, so results equal the resident run bit for bit.
//! - Never two reads of one expert at once: a demand for an expert already queued or being
//!   read joins that read (single flight); a queued prefetch that is demanded is promoted.
//! - Demand before prefetch: readers always take a queued demand read first, and at most
//!   `prefetch_in_flight` prefetch reads run at once, so prefetches never occupy every
//!   reader.
//! - Prefetches are hints: they can be cancelled (those not yet started are dropped), are
//!   silently skipped for experts already cached or on their way, and a failed prefetch
//!   read is forgotten (a later demand reads again and reports the error).
//! - Experts in use are pinned: handing out an expert gives the caller a shared handle; the
//!   cache never evicts an entry while such a handle is alive.
//! - The budget is split evenly over the layers that have experts, and each layer evicts
//!   its least recently used unpinned experts to stay within its share. An expert larger
//!   than its layer's share is still read (the layer must run) and kept only while used.

mod io;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;

use super::{ExpertSource, ExpertWeights};
use crate::compute::QMatrix;
use crate::gguf::GgufModel;
use crate::quant::GgmlType;
use crate::{Error, Result};
use io::{BufPool, ExpertBuf, LayerLayout, ProjectionLayout, Shared};
pub use stats::{PagerStats, PagerStatsSnapshot};

/// How a pager reads and how much it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagerOptions {
    /// Cache byte budget for routed experts (`u64::MAX`: no limit).
    pub budget: u64,
    /// Reader threads, i.e. reads in flight at most.
    pub read_threads: usize,
    /// Prefetch reads in flight at most (capped at `read_threads`).
    pub prefetch_in_flight: usize,
    /// Read bypassing the page cache (`O_DIRECT` on Linux, `F_NOCACHE` on macOS) where the filesystem allows it;
    /// the default, because under a memory limit buffered reads fill the page cache and
    /// pay for its reclaim (`benches/overbudget.sh`: 1.29 vs 1.65 tokens/s without
    /// prefetch). Dropping each read's pages with `posix_fadvise` instead halved
    /// throughput in `benches/expert_fetch`.
    pub direct_io: bool,
}

impl Default for PagerOptions {
    fn default() -> Self {
        PagerOptions { budget: u64::MAX, read_threads: 8, prefetch_in_flight: 4, direct_io: true }
    }
}

type Key = (usize, usize);

enum Slot {
    /// In a queue, not started. `demand`: a caller is waiting (it is in the demand queue).
    Queued { demand: bool, waiters: Vec<u64> },
    /// A reader has it. `prefetch`: it was started as a prefetch.
    Reading { prefetch: bool, waiters: Vec<u64> },
    /// Cached. `prefetched_unused`: brought in by a prefetch and not yet demanded.
    Ready { data: Arc<ExpertBuf>, last_use: u64, prefetched_unused: bool },
}

struct CacheState {
    slots: HashMap<Key, Slot>,
    /// Bytes held per layer.
    used: Vec<u64>,
    clock: u64,
    demand: VecDeque<Key>,
    prefetch: VecDeque<Key>,
    prefetch_in_flight: usize,
    next_ticket: u64,
    /// Finished reads awaiting pickup by the caller holding the ticket.
    delivered: HashMap<u64, std::result::Result<Arc<ExpertBuf>, String>>,
    shutdown: bool,
}

/// What the reader threads share with the callers.
struct Core {
    files: Vec<File>,
    /// Mappings of evicted experts, reused by the next reads.
    buffers: Arc<BufPool>,
    layers: Vec<Option<LayerLayout>>,
    layer_budget: u64,
    prefetch_limit: usize,
    direct: bool,
    state: Mutex<CacheState>,
    /// Signalled when a read completes.
    ready: Condvar,
    /// Signalled when a job is queued (or on shutdown).
    work: Condvar,
    stats: PagerStats,
}

/// Routed experts read on demand from GGUF files or an expert store into a
/// byte-budgeted cache, by a pool of reader threads.
pub struct PagedExperts {
    core: Arc<Core>,
    workers: Vec<JoinHandle<()>>,
}
impl PagedExperts {
    /// Pages the experts of `g` (already validated by the model loader) as `opts` say.
    pub fn from_gguf(g: &GgufModel, n_layer: usize, opts: &PagerOptions) -> Result<PagedExperts> {
        let paths: Vec<PathBuf> = g.files().iter().map(|f| f.path().to_path_buf()).collect();
        let (files, direct) = open_files(&paths, opts.direct_io)?;
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
        Ok(Self::start(files, layers, opts, direct))
    }

    /// Pages the experts of an expert store (one checksummed record per expert) as `opts`
    /// say; with `opts.direct_io`, all files are opened with `O_DIRECT` or, where the
    /// filesystem refuses it, none are (see [`Self::direct_io`]).
    pub fn from_store(store: &super::store::Store, n_layer: usize, opts: &PagerOptions) -> Result<PagedExperts> {
        let mut paths = Vec::new();
        let mut layers: Vec<Option<LayerLayout>> = vec![None; n_layer];
        for le in &store.manifest().layers {
            if le.layer >= n_layer {
                return Err(Error::model(format!("store: expert file for layer {} but the model has {n_layer} layers", le.layer)));
            }
            let need = le.check()?;
            let path = store.dir().join(&le.file);
            let len = std::fs::metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?.len();
            if len < need {
                return Err(Error::model(format!("store: {} is truncated ({len} bytes, {need} expected for {} experts)", path.display(), le.n_expert)));
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
        let (files, direct) = open_files(&paths, opts.direct_io)?;
        Ok(Self::start(files, layers, opts, direct))
    }

    fn start(files: Vec<File>, layers: Vec<Option<LayerLayout>>, opts: &PagerOptions, direct: bool) -> PagedExperts {
        let n_moe = layers.iter().filter(|l| l.is_some()).count().max(1) as u64;
        let threads = opts.read_threads.max(1);
        let core = Arc::new(Core {
            files,
            buffers: BufPool::new(threads),
            layer_budget: if opts.budget == u64::MAX { u64::MAX } else { opts.budget / n_moe },
            prefetch_limit: opts.prefetch_in_flight.min(threads),
            direct,
            state: Mutex::new(CacheState {
                slots: HashMap::new(),
                used: vec![0; layers.len()],
                clock: 0,
                demand: VecDeque::new(),
                prefetch: VecDeque::new(),
                prefetch_in_flight: 0,
                next_ticket: 0,
                delivered: HashMap::new(),
                shutdown: false,
            }),
            ready: Condvar::new(),
            work: Condvar::new(),
            stats: PagerStats::default(),
            layers,
        });
        let workers = (0..threads)
            .map(|i| {
                let c = core.clone();
                std::thread::Builder::new().name(format!("odmoe-read-{i}")).spawn(move || c.serve_reads()).expect("spawning a reader thread")
            })
            .collect();
        PagedExperts { core, workers }
    }

    /// Experts, expert FFN size and hidden size of `layer`'s routed experts, if it has any.
    pub fn layer_shape(&self, layer: usize) -> Option<(usize, usize, usize)> {
        self.core.layers.get(layer)?.as_ref().map(|l| (l.n_expert, l.gate.rows, l.gate.cols))
    }

    /// Whether reads bypass the page cache.
    pub fn direct_io(&self) -> bool {
        self.core.direct
    }

    /// Bytes of routed experts in the whole model.
    pub fn total_expert_bytes(&self) -> u64 {
        self.core.layers.iter().flatten().map(|l| l.expert_bytes() * l.n_expert as u64).sum()
    }

    /// Bytes of one expert of `layer` (0 for layers without experts).
    pub fn expert_bytes(&self, layer: usize) -> u64 {
        self.core.layers.get(layer).and_then(|l| l.as_ref()).map_or(0, |l| l.expert_bytes())
    }

    /// Current counters.
    pub fn stats(&self) -> PagerStatsSnapshot {
        self.core.stats.snapshot()
    }

    /// The cache's byte budget (`u64::MAX`: none), as split evenly over the layers.
    pub fn budget(&self) -> u64 {
        let n = self.core.layers.iter().filter(|l| l.is_some()).count() as u64;
        self.core.layer_budget.saturating_mul(n.max(1))
    }

    /// Bytes the cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        self.core.lock().used.iter().sum()
    }

    fn check(&self, layer: usize, expert: usize) -> Result<()> {
        let l = self.core.layers.get(layer).and_then(|l| l.as_ref()).ok_or_else(|| Error::Invalid(format!("layer {layer} has no routed experts")))?;
        if expert >= l.n_expert {
            return Err(Error::Invalid(format!("layer {layer}: expert {expert} out of range ({})", l.n_expert)));
        }
        Ok(())
    }

    fn weights(&self, layer: usize, data: Arc<ExpertBuf>) -> ExpertWeights {
        let l = self.core.layers[layer].as_ref().expect("layer has experts");
        let [g, u, d] = data.parts().clone();
        let bytes = Bytes::from_owner(Shared(data));
        let m = |p: &ProjectionLayout, r: std::ops::Range<usize>| QMatrix::new(p.ty, p.rows, p.cols, bytes.slice(r));
        ExpertWeights { gate: m(&l.gate, g), up: m(&l.up, u), down: m(&l.down, d) }
    }

    /// The experts `ids` of `layer`, in that order: cached ones at once, the others read
    /// in parallel by the reader pool (before any prefetch) and waited for.
    fn demand(&self, layer: usize, ids: &[usize]) -> Result<Vec<ExpertWeights>> {
        for &e in ids {
            self.check(layer, e)?;
        }
        let core = &*self.core;
        let mut out: Vec<Option<Arc<ExpertBuf>>> = vec![None; ids.len()];
        let mut tickets: Vec<(usize, u64)> = Vec::new();
        let mut st = core.lock();
        for (i, &e) in ids.iter().enumerate() {
            let key = (layer, e);
            st.clock += 1;
            let now = st.clock;
            let ticket = st.next_ticket;
            let mut queue_demand = false;
            match st.slots.get_mut(&key) {
                Some(Slot::Ready { data, last_use, prefetched_unused }) => {
                    *last_use = now;
                    if std::mem::take(prefetched_unused) {
                        PagerStats::add(&core.stats.prefetch_hits, 1);
                    }
                    PagerStats::add(&core.stats.hits, 1);
                    out[i] = Some(data.clone());
                    continue;
                }
                Some(Slot::Queued { demand, waiters }) => {
                    if !*demand {
                        PagerStats::add(&core.stats.prefetch_hits, 1);
                        *demand = true;
                        queue_demand = true;
                    }
                    waiters.push(ticket);
                }
                Some(Slot::Reading { prefetch, waiters }) => {
                    if *prefetch {
                        PagerStats::add(&core.stats.prefetch_hits, 1);
                    }
                    waiters.push(ticket);
                }
                None => {
                    st.slots.insert(key, Slot::Queued { demand: true, waiters: vec![ticket] });
                    queue_demand = true;
                }
            }
            PagerStats::add(&core.stats.misses, 1);
            if queue_demand {
                st.demand.push_back(key);
            }
            st.next_ticket += 1;
            tickets.push((i, ticket));
        }
        if !tickets.is_empty() {
            core.work.notify_all();
            let t0 = Instant::now();
            let mut error = None;
            let mut left = tickets.len();
            while left > 0 {
                for &(i, t) in &tickets {
                    if let Some(r) = st.delivered.remove(&t) {
                        left -= 1;
                        match r {
                            Ok(d) => out[i] = Some(d),
                            Err(m) => error = Some(m),
                        }
                    }
                }
                if left > 0 {
                    st = core.ready.wait(st).unwrap();
                }
            }
            PagerStats::add(&core.stats.wait_micros, t0.elapsed().as_micros() as u64);
            if let Some(m) = error {
                return Err(Error::Model(m));
            }
        }
        drop(st);
        Ok(out.into_iter().map(|d| self.weights(layer, d.expect("every expert delivered"))).collect())
    }
}

/// Opens `paths` for reading, all with `O_DIRECT` when `direct` asks and the filesystem
/// allows it for every one, else all buffered (reads size their buffers by the mode).
/// Returns the files and whether they are direct.
fn open_files(paths: &[PathBuf], direct: bool) -> Result<(Vec<File>, bool)> {
    // Linux: `O_DIRECT` (aligned offsets, lengths and buffers required)
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        let opened: std::io::Result<Vec<File>> = paths.iter().map(|p| std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(p)).collect();
        if let Ok(files) = opened {
            return Ok((files, true));
        }
    }
    let files = paths.iter().map(|p| File::open(p).map_err(|source| Error::Io { path: p.clone(), source })).collect::<Result<Vec<File>>>()?;
    // macOS: `F_NOCACHE` on the open file does what `O_DIRECT` does (reads bypass the
    // unified buffer cache); it requires no alignment, and the aligned reads direct mode
    // makes are the efficient ones there too
    #[cfg(target_os = "macos")]
    if direct {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on descriptors these files own
        if files.iter().all(|f| unsafe { libc::fcntl(f.as_raw_fd(), libc::F_NOCACHE, 1) } != -1) {
            return Ok((files, true));
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let _ = direct;
    Ok((files, false))
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reader thread: takes jobs (demand first) until shutdown.
    fn serve_reads(&self) {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return;
            }
            let Some((key, prefetch)) = self.next_job(&mut st) else {
                st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            drop(st);
            let (layer, expert) = key;
            let t0 = Instant::now();
            let layout = self.layers[layer].as_ref().expect("queued experts are validated");
            let read = io::read_expert(&self.buffers, &self.files, layout, layer, expert, self.direct).map(Arc::new);
            match &read {
                Ok(b) => self.stats.record_read(b.size() as u64, t0.elapsed().as_micros() as u64),
                Err(_) => drop(self.stats.read_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            }
            st = self.lock();
            self.complete(&mut st, key, prefetch, read);
            self.ready.notify_all();
            // a finished prefetch may let a queued one start
            self.work.notify_one();
        }
    }

    /// The next expert to read and whether it starts as a prefetch; marks it as reading.
    fn next_job(&self, st: &mut CacheState) -> Option<(Key, bool)> {
        while let Some(key) = st.demand.pop_front() {
            if let Some(slot) = st.slots.get_mut(&key) {
                if let Slot::Queued { waiters, .. } = slot {
                    *slot = Slot::Reading { prefetch: false, waiters: std::mem::take(waiters) };
                    return Some((key, false));
                }
            }
        }
        if st.prefetch_in_flight >= self.prefetch_limit {
            return None;
        }
        while let Some(key) = st.prefetch.pop_front() {
            let Some(slot) = st.slots.get_mut(&key) else { continue };
            if let Slot::Queued { demand, waiters } = slot {
                // a promoted prefetch found here first is read as the demand it now is
                let prefetch = !*demand;
                *slot = Slot::Reading { prefetch, waiters: std::mem::take(waiters) };
                if prefetch {
                    st.prefetch_in_flight += 1;
                    PagerStats::add(&self.stats.prefetch_reads, 1);
                }
                return Some((key, prefetch));
            }
        }
        None
    }

    /// Hands a finished read to its waiters and caches it if its layer's share allows.
    fn complete(&self, st: &mut CacheState, key: Key, started_as_prefetch: bool, read: std::result::Result<Arc<ExpertBuf>, String>) {
        if started_as_prefetch {
            st.prefetch_in_flight -= 1;
        }
        let waiters = match st.slots.remove(&key) {
            Some(Slot::Reading { waiters, .. }) => waiters,
            _ => unreachable!("only the reader completes a reading slot"),
        };
        match read {
            Ok(data) => {
                let size = data.size() as u64;
                let unused = waiters.is_empty();
                for &w in &waiters {
                    st.delivered.insert(w, Ok(data.clone()));
                }
                let layer = key.0;
                self.make_room(st, layer, size);
                if st.used[layer] + size <= self.layer_budget {
                    st.clock += 1;
                    let now = st.clock;
                    st.slots.insert(key, Slot::Ready { data, last_use: now, prefetched_unused: unused });
                    st.used[layer] += size;
                } else if unused {
                    PagerStats::add(&self.stats.prefetch_wasted_bytes, size);
                }
            }
            Err(msg) => {
                for &w in &waiters {
                    st.delivered.insert(w, Err(msg.clone()));
                }
            }
        }
    }

    /// Evicts least recently used, unpinned experts of `layer` until `incoming` more
    /// bytes fit in its share.
    fn make_room(&self, st: &mut CacheState, layer: usize, incoming: u64) {
        while st.used[layer] + incoming > self.layer_budget {
            let victim = st
                .slots
                .iter()
                .filter_map(|(&(l, e), s)| match s {
                    Slot::Ready { data, last_use, prefetched_unused } if l == layer && Arc::strong_count(data) == 1 => Some(((l, e), *last_use, data.size() as u64, *prefetched_unused)),
                    _ => None,
                })
                .min_by_key(|v| v.1);
            let Some((key, _, size, unused)) = victim else { break };
            st.slots.remove(&key);
            st.used[layer] -= size;
            PagerStats::add(&self.stats.evictions, 1);
            if unused {
                PagerStats::add(&self.stats.prefetch_wasted_bytes, size);
            }
        }
    }
}

impl Drop for PagedExperts {
    fn drop(&mut self) {
        self.core.lock().shutdown = true;
        self.core.work.notify_all();
        for w in self.workers.drain(..) {
            w.join().ok();
        }
    }
}

impl ExpertSource for PagedExperts {
    fn expert(&self, layer: usize, expert: usize) -> Result<ExpertWeights> {
        Ok(self.demand(layer, &[expert])?.pop().expect("one expert"))
    }

    fn experts(&self, layer: usize, ids: &[usize]) -> Result<Vec<ExpertWeights>> {
        self.demand(layer, ids)
    }

    fn prefetch(&self, layer: usize, ids: &[usize]) {
        let core = &*self.core;
        if core.prefetch_limit == 0 {
            return;
        }
        let mut st = core.lock();
        let mut queued = false;
        for &e in ids {
            if self.check(layer, e).is_err() || st.slots.contains_key(&(layer, e)) {
                continue;
            }
            st.slots.insert((layer, e), Slot::Queued { demand: false, waiters: Vec::new() });
            st.prefetch.push_back((layer, e));
            queued = true;
        }
        drop(st);
        if queued {
            core.work.notify_all();
        }
    }

    fn cancel_prefetches(&self, through_layer: Option<usize>) {
        let core = &*self.core;
        let mut st = core.lock();
        let queue = std::mem::take(&mut st.prefetch);
        let mut keep = VecDeque::with_capacity(queue.len());
        for key in queue {
            match st.slots.get(&key) {
                Some(Slot::Queued { demand: false, .. }) if through_layer.is_none_or(|t| key.0 <= t) => {
                    st.slots.remove(&key);
                    PagerStats::add(&core.stats.prefetch_cancelled, 1);
                }
                Some(Slot::Queued { .. }) => keep.push_back(key),
                _ => {}
            }
        }
        st.prefetch = keep;
    }
}
