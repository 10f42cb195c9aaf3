//! Dropping a file's cached pages, so that a benchmark's reads come from the disk.

use std::fs::File;

/// Asks the kernel to drop `f`'s cached pages (Linux; elsewhere a note says the first
/// reads may come from memory).
pub fn forget_pages(f: &File) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscall on an open descriptor.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = f;
        eprintln!("note: this system cannot drop a file's cached pages; reads may come from memory");
    }
}
