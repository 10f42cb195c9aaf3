//! How experts lie in files and how one is read: positioned reads of each expert's
//! byte ranges into a page-aligned buffer (so `O_DIRECT` can read into it), with the
//! store's CRC-32 checked on every read from disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

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
/// can read into it), populated at once, and returned to the system the moment the
/// buffer is dropped. (Heap allocations of a few MB, freed from several reader threads,
/// stayed in the allocator's per-thread arenas and grew the resident set well past the
/// cache budget.) `cap` bytes: the expert plus any record padding or alignment slack.
pub(super) struct ExpertBuf {
    ptr: std::ptr::NonNull<u8>,
    cap: usize,
    /// Where gate, up and down lie in the buffer (direct reads of a GGUF file leave
    /// alignment slack around each).
    parts: [std::ops::Range<usize>; 3],
}

// SAFETY: a uniquely owned mapping of plain bytes.
unsafe impl Send for ExpertBuf {}
// SAFETY: shared access is read-only.
unsafe impl Sync for ExpertBuf {}

impl ExpertBuf {
    /// A zero-filled buffer of `cap` bytes.
    fn zeroed(cap: usize) -> std::io::Result<ExpertBuf> {
        let cap = cap.max(1);
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), cap, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1, 0)
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        Ok(ExpertBuf { ptr, cap, parts: [0..0, 0..0, 0..0] })
    }

    fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: `cap` zero-initialized bytes mapped for self alone.
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
        // SAFETY: mapped in `zeroed` with this length; no references outlive self.
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
pub(super) fn read_expert(files: &[File], l: &LayerLayout, layer: usize, expert: usize, direct: bool) -> Result<ExpertBuf, String> {
    let len = l.expert_bytes() as usize;
    let fail = |e: std::io::Error| format!("reading expert {expert} of layer {layer}: {e} (is the model file truncated or changing?)");
    let [g, u, _] = [&l.gate, &l.up, &l.down].map(|p| l.proj_bytes(p) as usize);
    let mut buf;
    if let Some(crcs) = &l.crc32 {
        // one contiguous record
        let read_len = if direct { l.gate.stride as usize } else { len };
        buf = ExpertBuf::zeroed(read_len).map_err(fail)?;
        let at = l.gate.offset + expert as u64 * l.gate.stride;
        read_at_least(&files[l.gate.file], buf.full_mut(), at, len).map_err(fail)?;
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
        buf = ExpertBuf::zeroed(spans.iter().map(|s| s.2).sum()).map_err(fail)?;
        let mut at = 0usize;
        for (i, &(file, a0, span, skip, n)) in spans.iter().enumerate() {
            read_at_least(&files[file], &mut buf.full_mut()[at..at + span], a0, skip + n).map_err(fail)?;
            buf.parts[i] = at + skip..at + skip + n;
            at += span;
        }
    }
    Ok(buf)
}
