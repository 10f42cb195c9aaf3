//! Mapped model files that change under a running process.
//!
//! A model file is memory-mapped; when another process truncates it (a `cp` over it, a
//! download restarted in place), reading a page past its new end raises SIGBUS, whose
//! default action ends the process: every session lost, no message. Each mapping here
//! is registered ([`GuardedMap`]), and a SIGBUS handler that finds the faulting address
//! inside one maps a page of zeros there (so the read completes), notes that the file
//! changed and returns. The computation that read it is garbage, so the forward pass
//! reports an error when it ends ([`file_changed`]), and a server says so on every
//! request from then on instead of dying. A SIGBUS anywhere else keeps its default action.
//!
//! Guarantee: the handler only reads atomics and makes one `mmap` call (a system call,
//! safe in a signal handler on Linux and macOS), takes no lock and allocates nothing.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use memmap2::Mmap;

/// Mappings watched at once (a split model's shards and a store's base file).
const SLOTS: usize = 256;

/// `[start, end)` of each registered mapping; a free slot holds `(0, 0)`.
static RANGES: [(AtomicUsize, AtomicUsize); SLOTS] = [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SLOTS];
/// Set once a mapped file was found changed.
static CHANGED: AtomicBool = AtomicBool::new(false);
/// The system's page size, read when the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// Whether a mapped model file has changed (shrunk) since it was opened: every
/// computation since may have read zeros in place of weights.
pub fn file_changed() -> bool {
    CHANGED.load(Ordering::SeqCst)
}

/// A read-only file mapping, watched for the file changing under it while it lives.
pub struct GuardedMap {
    map: Mmap,
    slot: Option<usize>,
}

impl GuardedMap {
    /// Watches `map`.
    pub fn new(map: Mmap) -> GuardedMap {
        install();
        let (start, len) = (map.as_ptr() as usize, map.len());
        let slot = (len > 0)
            .then(|| {
                RANGES.iter().position(|(s, e)| {
                    // claim a free slot: its end first, so a half-written slot never matches
                    e.compare_exchange(0, start + len, Ordering::SeqCst, Ordering::SeqCst).is_ok() && {
                        s.store(start, Ordering::SeqCst);
                        true
                    }
                })
            })
            .flatten();
        GuardedMap { map, slot }
    }
}

impl std::ops::Deref for GuardedMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            RANGES[i].0.store(0, Ordering::SeqCst);
            RANGES[i].1.store(0, Ordering::SeqCst);
        }
    }
}

#[cfg(unix)]
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sysconf and sigaction with a handler that is async-signal-safe (above)
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::SeqCst);
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

#[cfg(not(unix))]
fn install() {}

#[cfg(unix)]
extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers
    let addr = unsafe { (*info).si_addr() } as usize;
    let ours = RANGES.iter().any(|(s, e)| {
        let (s, e) = (s.load(Ordering::SeqCst), e.load(Ordering::SeqCst));
        s != 0 && s <= addr && addr < e
    });
    if ours {
        let page = PAGE.load(Ordering::SeqCst);
        let at = addr & !(page - 1);
        // SAFETY: replaces one page of a read-only file mapping this process owns with
        // zeros; nothing else lives at that address
        let p = unsafe { libc::mmap(at as *mut libc::c_void, page, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED, -1, 0) };
        if p != libc::MAP_FAILED {
            CHANGED.store(true, Ordering::SeqCst);
            return;
        }
    }
    // not a watched mapping (or no page could be put there): the default action, which
    // the faulting read raises again on return
    // SAFETY: resets this signal's disposition
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}
