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

/// Alignment of expert buffers: what direct I/O needs on common filesystems.
const BUF_ALIGN: usize = 4096;

/// An expert's bytes in a page-aligned allocation (so direct I/O can read into it);
/// `len` bytes are the expert, `cap` may include the record's padding.
pub(super) struct ExpertBuf {
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
    pub(super) fn len(&self) -> usize {
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


/// Reads expert `expert` of `layer` (laid out as `l`) from `files`. With `direct`, store
/// records are read whole (their padded, 64 KiB-aligned size) as `O_DIRECT` requires.
/// Errors are messages naming the expert; a checksum mismatch is reported as corruption.
pub(super) fn read_expert(files: &[File], l: &LayerLayout, layer: usize, expert: usize, direct: bool) -> Result<ExpertBuf, String> {
    let len = l.expert_bytes() as usize;
    let fail = |e: std::io::Error| format!("reading expert {expert} of layer {layer}: {e} (is the model file truncated or changing?)");
    let mut buf;
    if let Some(crcs) = &l.crc32 {
        // one contiguous record
        let read_len = if direct { l.gate.stride as usize } else { len };
        buf = ExpertBuf::zeroed(read_len, len);
        files[l.gate.file].read_exact_at(buf.full_mut(), l.gate.offset + expert as u64 * l.gate.stride).map_err(fail)?;
        if crc32fast::hash(buf.as_ref()) != crcs[expert] {
            return Err(format!("expert {expert} of layer {layer} is corrupt: its checksum does not match the store's manifest"));
        }
    } else {
        buf = ExpertBuf::zeroed(len, len);
        let mut at = 0usize;
        for p in [&l.gate, &l.up, &l.down] {
            let n = l.proj_bytes(p) as usize;
            files[p.file].read_exact_at(&mut buf.full_mut()[at..at + n], p.offset + expert as u64 * p.stride).map_err(fail)?;
            at += n;
        }
    }
    Ok(buf)
}
