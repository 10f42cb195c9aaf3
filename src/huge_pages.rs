//! Transparent huge pages for the packed copies of resident weight matrices.
//!
//! Why: a step streams its weights from memory, and with 4 KiB pages that is a page walk
//! every 4 KiB (some 190,000 for one 16-sequence step of a Mixtral-shaped model, 0.78
//! GB). Backed by 2 MiB pages, the same packed Q8_0 products over 0.3 GB of weights ran
//! 1–11% faster (about 5% typically, alternating rounds in one process, one to eight
//! tokens); on that Mixtral-shaped model a 16-sequence step took 5–13% less time in four
//! alternations of runs with and without, and decoding one sequence 2–11% less.
//!
//! Not for the pager's expert buffers: made during generation, their huge pages cost more
//! than they saved (a Mixtral-shaped model paged under an unlimited budget decoded 1,000
//! tokens at 150–156 tokens/s with them, 160–175 without).
//!
//! Only on Linux, where transparent huge pages are set to `madvise` (the usual default)
//! or `always`; elsewhere, and with `ODMOE_NO_HUGE_PAGES=1` (to compare), nothing changes.
//! Only the whole 2 MiB pages inside a buffer are asked for, and only before the buffer
//! is first written: a page already touched stays as it is.

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

/// `n` copies of `v`, in memory advised ([`advise`]) before it is filled.
pub(crate) fn filled_vec<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(n);
    advise(out.as_mut_ptr().cast(), n * std::mem::size_of::<T>());
    out.resize(n, v);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advised_vectors_hold_what_was_asked() {
        // larger than a huge page (an advised interior), smaller, and empty
        for n in [3 * HUGE_PAGE / 8 + 5, 1000, 0] {
            let v = filled_vec(n, 0x0123_4567_89ab_cdefu64);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0x0123_4567_89ab_cdef));
        }
        // a range with no whole huge page inside is left alone
        let mut small = [0u8; 64];
        advise(small.as_mut_ptr(), small.len());
        assert_eq!(small, [0u8; 64]);
    }
}
