//! Transparent huge pages for the packed copies of resident weight matrices.
//!
//! Why: a step streams its weights from memory, and with 4 KiB pages that is a page walk
//! every 4 KiB (some 190,000 for one 16-sequence step of a Mixtral-shaped model, 0.78
//! GB), and the processor's own read-ahead stops at every 4 KiB page boundary. Backed by
//! 2 MiB pages, the same packed Q8_0 products over 0.3 GB of weights ran 1–11% faster
//! (about 5% typically, alternating rounds in one process, one to eight tokens); on that
//! Mixtral-shaped model a 16-sequence step took 5–13% less time in four alternations of
//! runs with and without, and decoding one sequence 2–11% less.
//!
//! Only whole, aligned 2 MiB pages can be huge, so each buffer advised on its own got
//! only the whole huge pages inside it: about half of an expert-sized matrix (a few MiB),
//! none of a matrix under 2 MiB (every expert of Qwen3-30B-A3B). Packed buffers are
//! therefore carved one after another from [`Slab`]s of 32 MiB (buffers over 16 MiB get a
//! slab of their own), aligned to 2 MiB and advised whole: every byte of them is on huge
//! pages, and the only memory not used is the unfilled end of the last slab, never
//! touched. A slab is freed once every buffer carved from it is gone and no new buffer
//! can be carved from it.
//!
//! Not for the pager's expert buffers: made during generation, their huge pages cost more
//! than they saved (a Mixtral-shaped model paged under an unlimited budget decoded 1,000
//! tokens at 150–156 tokens/s with them, 160–175 without).
//!
//! Only on Linux, where transparent huge pages are set to `madvise` (the usual default)
//! or `always`; elsewhere, and with `ODMOE_NO_HUGE_PAGES=1` (to compare), the buffers
//! are plain allocations.

use std::alloc::Layout;
use std::sync::{Arc, Mutex};

/// Bytes of a huge page (x86-64 and most arm64 kernels).
const HUGE_PAGE: usize = 2 << 20;

/// Whether huge pages are asked for (checked once; `ODMOE_NO_HUGE_PAGES=1` says no).
fn wanted() -> bool {
    static WANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WANTED.get_or_init(|| cfg!(target_os = "linux") && std::env::var_os("ODMOE_NO_HUGE_PAGES").is_none_or(|v| v != "1"))
}

/// Asks the kernel to back the whole huge pages within `len` bytes from `ptr` with huge
/// pages when they are first touched. A hint: nothing happens where the system says no.
pub(crate) fn advise(ptr: *mut u8, len: usize) {
    let (start, end) = ((ptr as usize).next_multiple_of(HUGE_PAGE), (ptr as usize).saturating_add(len) / HUGE_PAGE * HUGE_PAGE);
    if !wanted() || end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the range lies within the caller's allocation; the advice changes how its
    // pages are backed, never their contents.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// Bytes of a shared slab (buffers larger than half of it get a slab of their own).
const SLAB: usize = 32 << 20;

/// One allocation, aligned to a huge page and advised whole, that buffers are carved
/// from; freed when the last [`HugeBuf`] holding it (and the carver) let go.
struct Slab {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: a Slab is only an allocation; the buffers carved from it are disjoint and
// each is accessed through its own HugeBuf.
unsafe impl Send for Slab {}
unsafe impl Sync for Slab {}

impl Slab {
    fn new(bytes: usize) -> Slab {
        let layout = Layout::from_size_align(bytes.next_multiple_of(HUGE_PAGE), HUGE_PAGE).expect("slab size");
        // SAFETY: the layout has a non-zero size (callers ask for at least one byte).
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        advise(ptr, layout.size());
        Slab { ptr, layout }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The slab buffers are being carved from and how many of its bytes are taken.
static CARVING: Mutex<Option<(Arc<Slab>, usize)>> = Mutex::new(None);

/// A fixed-length buffer of `T` on huge pages (see the module docs), or a plain
/// allocation where huge pages are not wanted.
pub(crate) struct HugeBuf<T> {
    ptr: *mut T,
    len: usize,
    /// The slab holding the values; `None`: a plain allocation of `len` values.
    slab: Option<Arc<Slab>>,
}

// SAFETY: a HugeBuf owns its values like a Vec (its slab range is its own).
unsafe impl<T: Send> Send for HugeBuf<T> {}
unsafe impl<T: Sync> Sync for HugeBuf<T> {}

impl<T> std::ops::Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialized values at `ptr`, owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T> std::ops::DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        match self.slab {
            // SAFETY: the values were initialized and are dropped once; the memory goes
            // with the slab.
            Some(_) => unsafe { std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) },
            // SAFETY: a boxed slice of `len` values made in `filled_buf` (its allocation is
            // a Vec's of capacity `len`).
            None => drop(unsafe { Vec::from_raw_parts(self.ptr, self.len, self.len) }),
        }
    }
}

/// `n` copies of `v`, on huge pages where they are wanted (see the module docs).
pub(crate) fn filled_buf<T: Clone>(n: usize, v: T) -> HugeBuf<T> {
    let layout = Layout::array::<T>(n).expect("buffer size");
    if !wanted() || layout.size() == 0 || layout.align() > HUGE_PAGE {
        let mut plain = std::mem::ManuallyDrop::new(vec![v; n].into_boxed_slice());
        return HugeBuf { ptr: plain.as_mut_ptr(), len: n, slab: None };
    }
    let (slab, at) = carve(layout);
    // SAFETY: `carve` gave `layout.size()` bytes at `at`, aligned for T, that no other
    // buffer uses.
    let ptr = unsafe { slab.ptr.add(at) }.cast::<T>();
    for i in 0..n {
        // SAFETY: inside the carved range; each slot written once.
        unsafe { ptr.add(i).write(v.clone()) };
    }
    HugeBuf { ptr, len: n, slab: Some(slab) }
}

/// A range for `layout` in the current slab, or in a new one: the bytes' offset in it.
fn carve(layout: Layout) -> (Arc<Slab>, usize) {
    if layout.size() > SLAB / 2 {
        return (Arc::new(Slab::new(layout.size())), 0);
    }
    let mut carving = CARVING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((slab, used)) = carving.as_mut() {
        let at = used.next_multiple_of(layout.align());
        if at + layout.size() <= slab.layout.size() {
            *used = at + layout.size();
            return (slab.clone(), at);
        }
    }
    let slab = Arc::new(Slab::new(SLAB));
    *carving = Some((slab.clone(), layout.size()));
    (slab, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-byte-aligned element, as packed lines are.
    #[derive(Clone, Copy, PartialEq, Debug)]
    #[repr(C, align(64))]
    struct Line([u8; 64]);

    #[test]
    fn buffers_hold_what_was_asked_apart_and_aligned() {
        // sizes around a huge page, tiny, empty, and one larger than half a slab
        let sizes = [3 * HUGE_PAGE / 8 + 5, 1000, 0, 1, 3 * SLAB / 4 / 8];
        let words: Vec<HugeBuf<u64>> = sizes.iter().enumerate().map(|(i, &n)| filled_buf(n, i as u64 * 0x0101_0101)).collect();
        let lines: Vec<HugeBuf<Line>> = (0..40).map(|i| filled_buf(i * 37, Line([i as u8; 64]))).collect();
        for (i, (w, &n)) in words.iter().zip(&sizes).enumerate() {
            assert_eq!(w.len(), n);
            assert!(w.iter().all(|&x| x == i as u64 * 0x0101_0101));
        }
        let mut spans: Vec<(usize, usize)> = words.iter().map(|w| (w.as_ptr() as usize, w.len() * 8)).collect();
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l.len(), i * 37);
            assert!(l.iter().all(|x| *x == Line([i as u8; 64])));
            assert_eq!(l.as_ptr() as usize % 64, 0, "a line buffer off its alignment");
            spans.push((l.as_ptr() as usize, l.len() * 64));
        }
        // no two buffers share a byte
        spans.retain(|s| s.1 > 0);
        spans.sort_unstable();
        for pair in spans.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "buffers overlap: {pair:?}");
        }
        // writing one leaves the others as they were
        let mut lines = lines;
        lines[5].fill(Line([0xee; 64]));
        assert!(lines[4].iter().chain(lines[6].iter()).all(|x| x.0[0] != 0xee));
    }

    #[test]
    fn values_are_dropped_once_with_their_buffer() {
        let token = Arc::new(());
        let bufs: Vec<HugeBuf<Arc<()>>> = (0..5).map(|i| filled_buf(i * 10, token.clone())).collect();
        assert_eq!(Arc::strong_count(&token), 1 + 100);
        drop(bufs);
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn a_range_with_no_whole_huge_page_inside_is_left_alone() {
        let mut small = [0u8; 64];
        advise(small.as_mut_ptr(), small.len());
        assert_eq!(small, [0u8; 64]);
    }
}
