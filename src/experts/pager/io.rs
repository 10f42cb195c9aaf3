//! How experts lie in files and how one is read: positioned reads of each expert's
//! byte ranges into a page-aligned buffer (so `O_DIRECT` can read into it), with the
//! store's CRC-32 checked on every read from disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use crate::quant::GgmlType;

/// Where one projection of every expert of a layer lies: expert `e` is the byte range
/// `offset + e * stride .. + stride` of file `file`.
#[derive(Clone, Debug)]
pub(super) struct ProjectionLayout {
    pub(super) file: usize,
    pub(super) offset: u64,
    pub(super) stride: u64,
    pub(super) ty: GgmlType,
    pub(super) rows: usize,
    pub(super) cols: usize,
}

#[derive(Clone, Debug)]
pub(super) struct LayerLayout {
    pub(super) gate: ProjectionLayout,
    pub(super) up: ProjectionLayout,
    pub(super) down: ProjectionLayout,
    pub(super) n_expert: usize,
    /// Store records: gate|up|down are contiguous, read in one go and checked against this CRC-32.
    pub(super) crc32: Option<Vec<u32>>,
}

impl LayerLayout {
    /// Bytes of one expert's three projections (without record padding).
    pub(super) fn expert_bytes(&self) -> u64 {
        self.proj_bytes(&self.gate) + self.proj_bytes(&self.up) + self.proj_bytes(&self.down)
    }

    pub(super) fn proj_bytes(&self, p: &ProjectionLayout) -> u64 {
        p.ty.row_bytes(p.cols as u64).expect("validated") * p.rows as u64
    }
}

/// Keeps an expert's buffer alive (and pinned) while any handle on it exists.
pub(super) struct Shared(pub(super) Arc<ExpertBuf>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref().as_ref()
    }
}

/// An expert's bytes in their own anonymous memory mapping: page-aligned (so direct I/O
/// can read into it) and populated at once. (Heap allocations of a few MB, freed from
/// several reader threads, stayed in the allocator's per-thread arenas and grew the
/// resident set well past the cache budget.) When dropped, the mapping goes back to its
/// [`BufPool`] for the next read, or to the system if the pool is full. `cap` bytes: the
/// expert plus any record padding or alignment slack.
pub(super) struct ExpertBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    /// Where gate, up and down lie in the buffer (direct reads of a GGUF file leave
    /// alignment slack around each).
    parts: [std::ops::Range<usize>; 3],
    pool: Option<Arc<BufPool>>,
}

// SAFETY: a uniquely owned mapping of plain bytes.
unsafe impl Send for ExpertBuf {}
// SAFETY: shared access is read-only.
unsafe impl Sync for ExpertBuf {}

/// Mappings of dropped expert buffers, kept for the next reads. A fresh mapping costs the
/// kernel a zeroed page every 4 KiB and, when unmapped, a TLB flush on every core: in a
/// disk-bound decode of the synthetic 30B model a third of the CPU time went to zeroing
/// pages. Holds at most `max` mappings; their bytes sit outside the cache budget, so
/// `max` is kept to about one per reader thread.
pub(super) struct BufPool {
    free: Mutex<Vec<(std::ptr::NonNull<u8>, usize)>>,
    max: usize,
}

// SAFETY: the pool owns the free mappings; access goes through the mutex.
unsafe impl Send for BufPool {}
// SAFETY: as above.
unsafe impl Sync for BufPool {}

impl BufPool {
    /// A pool keeping at most `max` free mappings.
    pub(super) fn new(max: usize) -> Arc<BufPool> {
        Arc::new(BufPool { free: Mutex::new(Vec::new()), max })
    }

    /// A buffer of at least `cap` bytes (a kept mapping up to 64 KiB larger, or a new
    /// one). Its contents are unspecified until read into: every byte is initialized, as
    /// zero or as an earlier expert's data.
    fn take(self: &Arc<Self>, cap: usize) -> std::io::Result<ExpertBuf> {
        let cap = cap.max(1);
        let kept = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let fit = free.iter().position(|&(_, c)| c == cap).or_else(|| free.iter().position(|&(_, c)| c >= cap && c - cap <= 64 << 10));
            fit.map(|i| free.swap_remove(i))
        };
        let (ptr, cap) = match kept {
            Some(m) => m,
            None => (map(cap)?, cap),
        };
        Ok(ExpertBuf { ptr, cap, parts: [0..0, 0..0, 0..0], pool: Some(self.clone()) })
    }

    /// Free mappings held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        for &(ptr, cap) in self.free.get_mut().unwrap_or_else(|p| p.into_inner()).iter() {
            // SAFETY: mapped by `map` with this length and no longer referenced.
            unsafe { libc::munmap(ptr.as_ptr().cast(), cap) };
        }
    }
}

/// Pages of a fresh buffer faulted in at once (Linux; elsewhere on first touch).
#[cfg(target_os = "linux")]
const POPULATE: libc::c_int = libc::MAP_POPULATE;
#[cfg(not(target_os = "linux"))]
const POPULATE: libc::c_int = 0;

/// A fresh zero-filled private anonymous mapping of `cap` bytes, populated.
fn map(cap: usize) -> std::io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), cap, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | POPULATE, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

impl ExpertBuf {
    fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: `cap` initialized bytes mapped for self alone.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// Bytes the buffer holds in memory (the expert and any alignment slack): what the
    /// cache budget and the read counters account.
    pub(super) fn size(&self) -> usize {
        self.cap
    }

    /// Byte ranges of gate, up and down within [`AsRef::as_ref`].
    pub(super) fn parts(&self) -> &[std::ops::Range<usize>; 3] {
        &self.parts
    }
}

impl AsRef<[u8]> for ExpertBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `cap` initialized bytes mapped for self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }
}

impl Drop for ExpertBuf {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let mut free = pool.free.lock().unwrap_or_else(|p| p.into_inner());
            if free.len() < pool.max {
                free.push((self.ptr, self.cap));
                return;
            }
        }
        // SAFETY: mapped by `map` with this length; no references outlive self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

/// Alignment of direct reads: offsets, lengths and buffers (the filesystem block size
/// on everything we know of is at most a page).
const DIRECT_ALIGN: u64 = 4096;

/// Reads from `at` until `buf` is full or the file ends, as long as the first `need`
/// bytes arrive (a direct read rounded up past the end of the file stops short).
fn read_at_least(f: &File, buf: &mut [u8], at: u64, need: usize) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if done < need {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file ends before the expert does"));
    }
    Ok(())
}

/// Reads expert `expert` of `layer` (laid out as `l`) from `files`. With `direct` (files
/// opened with `O_DIRECT`), store records are read whole (their padded, 64 KiB-aligned
/// size) and each projection of a GGUF expert is read as its enclosing aligned span.
/// Errors are messages naming the expert; a checksum mismatch is reported as corruption.
pub(super) fn read_expert(pool: &Arc<BufPool>, files: &[File], l: &LayerLayout, layer: usize, expert: usize, direct: bool) -> Result<ExpertBuf, String> {
    let len = l.expert_bytes() as usize;
    let fail = |e: std::io::Error| format!("reading expert {expert} of layer {layer}: {e} (is the model file truncated or changing?)");
    let [g, u, _] = [&l.gate, &l.up, &l.down].map(|p| l.proj_bytes(p) as usize);
    let mut buf;
    if let Some(crcs) = &l.crc32 {
        // one contiguous record
        let read_len = if direct { l.gate.stride as usize } else { len };
        buf = pool.take(read_len).map_err(fail)?;
        let at = l.gate.offset + expert as u64 * l.gate.stride;
        read_at_least(&files[l.gate.file], &mut buf.full_mut()[..read_len], at, len).map_err(fail)?;
        if crc32fast::hash(&buf.as_ref()[..len]) != crcs[expert] {
            return Err(format!("expert {expert} of layer {layer} is corrupt: its checksum does not match the store's manifest"));
        }
        buf.parts = [0..g, g..g + u, g + u..len];
    } else {
        // each projection's span: exact, or widened to alignment for direct reads
        let spans = [&l.gate, &l.up, &l.down].map(|p| {
            let (from, n) = (p.offset + expert as u64 * p.stride, l.proj_bytes(p));
            let (a0, a1) = if direct { (from / DIRECT_ALIGN * DIRECT_ALIGN, (from + n).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN) } else { (from, from + n) };
            (p.file, a0, (a1 - a0) as usize, (from - a0) as usize, n as usize)
        });
        buf = pool.take(spans.iter().map(|s| s.2).sum()).map_err(fail)?;
        let mut at = 0usize;
        for (i, &(file, a0, span, skip, n)) in spans.iter().enumerate() {
            read_at_least(&files[file], &mut buf.full_mut()[at..at + span], a0, skip + n).map_err(fail)?;
            buf.parts[i] = at + skip..at + skip + n;
            at += span;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffers_are_reused_up_to_the_pool_size() {
        let pool = BufPool::new(2);
        let mut a = pool.take(10_000).unwrap();
        a.full_mut()[..3].copy_from_slice(&[1, 2, 3]);
        let addr = a.as_ref().as_ptr();
        drop(a);
        assert_eq!(pool.held(), 1);
        // the same size (or a little smaller) gets the kept mapping back
        let b = pool.take(9_000).unwrap();
        assert_eq!((b.as_ref().as_ptr(), b.size(), pool.held()), (addr, 10_000, 0));
        // much smaller or larger sizes get a fresh one
        let (c, d, e) = (pool.take(100).unwrap(), pool.take(1 << 20).unwrap(), pool.take(10_000).unwrap());
        assert_eq!((c.size(), d.size()), (100, 1 << 20));
        assert_ne!(e.as_ref().as_ptr(), addr);
        drop((b, c, d, e));
        assert_eq!(pool.held(), 2, "at most two kept; the rest unmapped");
    }
}
