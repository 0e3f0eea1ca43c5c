//! Shared mappings of memory-backed images: a read or a write is one memcpy to or from the
//! page cache instead of a preadv or pwritev (no syscall, no page-cache lookup once the page is
//! mapped, and no inode lock, which serialises pwritev calls from different queues). A file
//! opened read-only is mapped read-only and never written.
//!
//! Only fully allocated files on tmpfs or ramfs are mapped. A read fault on a tmpfs hole
//! allocates the page, which preadv never does, so a sparse image stays on preadv, and a
//! mapping is retired (reads go back to preadv) once its owner punches a hole.
//!
//! A file truncated underneath its mapping would kill the daemon with SIGBUS on the next read
//! of the lost range. The handler installed here maps a private zero page over the faulting
//! address instead and counts the fault; from then on no mapping is used, and a read that saw
//! the count change returns `None` so that its caller reads (or writes) again with preadv (or
//! pwritev), which reports the short file as an error. A SIGBUS anywhere else gets the action that was there before.
//!
//! The same handler guards mappings other modules own ([`ForeignGuard`]: the daemon registers
//! each frontend's guest memory, whose file the frontend may truncate): a fault there gets the
//! zero page too, and sets that guard's flag instead of retiring image mappings.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use log::warn;

use crate::storage::memory_backed;

/// Mappings the SIGBUS handler recognises (the daemon maps one per served memory-backed image).
const REGIONS: usize = 256;

struct Region {
    start: AtomicUsize,
    len: AtomicUsize,
}

static REGION: [Region; REGIONS] = [const {
    Region {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
    }
}; REGIONS];
/// SIGBUS faults caught on a mapping since the process started.
static FAULTS: AtomicUsize = AtomicUsize::new(0);
static FAULT_LOGGED: AtomicBool = AtomicBool::new(false);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The SIGBUS action before ours (`None`: installing ours failed).
static PREVIOUS: OnceLock<Option<Previous>> = OnceLock::new();

struct Previous(libc::sigaction);
// SAFETY: a sigaction is plain data (a handler address, a mask and flags).
unsafe impl Sync for Previous {}
unsafe impl Send for Previous {}

/// How the serve and origin log lines say that reads copy from a mapping.
pub const LOG_NOTE: &str = ", reads and writes through a shared mapping";

/// A `MAP_SHARED` view of a whole file, writable when the file was opened for writing.
#[derive(Debug)]
pub struct Mapping {
    base: *mut u8,
    len: usize,
    region: usize,
    writable: bool,
    retired: AtomicBool,
    populate: Option<Populate>,
}

/// The thread that maps the file's pages into the page tables ahead of use.
#[derive(Debug)]
struct Populate {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

// SAFETY: the mapping is only accessed through `read` and `write`, which copy to and from
// it (concurrent copies race as concurrent pwritev calls do), and the kernel keeps it valid
// until `drop` unmaps it.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `file` when it is a fully allocated regular file on
    /// tmpfs or ramfs; `None` otherwise, or when mapping or guarding it is not possible.
    pub fn of(file: &File, len: u64) -> Option<Mapping> {
        let fd = file.as_raw_fd();
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        if !file.metadata().ok()?.is_file() || !memory_backed(fd) || !dense(fd, len) {
            return None;
        }
        if !guard_installed() {
            return None;
        }
        // SAFETY: fcntl(F_GETFL) on a descriptor the caller holds open.
        let mode = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        let writable = mode >= 0 && mode & libc::O_ACCMODE == libc::O_RDWR;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of an open file; nothing else is touched.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        if base == libc::MAP_FAILED {
            return None;
        }
        let Some(region) = register(base as usize, len) else {
            // SAFETY: unmaps exactly the mapping created above, never used.
            unsafe { libc::munmap(base, len) };
            return None;
        };
        Some(Mapping {
            base: base.cast(),
            len,
            region,
            writable,
            retired: AtomicBool::new(false),
            populate: populate(base as usize, len),
        })
    }

    /// Copies the bytes at `offset` into `iov`, filling every buffer; returns the count.
    /// `None`: nothing usable was copied (the range is outside the mapping, the mapping is
    /// retired, or a fault was caught): read with preadv instead.
    ///
    /// # Safety
    /// Every iovec must name writable memory of its length that does not overlap the mapping.
    pub unsafe fn read(&self, iov: &[libc::iovec], offset: u64) -> Option<usize> {
        let range = self.usable(iov, offset)?;
        let mut at = range.start;
        for v in iov {
            // SAFETY: `at + iov_len` stays inside the mapping (checked by `usable`); the
            // caller vouches for the destination.
            unsafe {
                std::ptr::copy_nonoverlapping(self.base.add(at), v.iov_base.cast(), v.iov_len)
            };
            at += v.iov_len;
        }
        self.unfaulted(range.len())
    }

    /// Copies `iov` into the file at `offset`; returns the count. `None`: the mapping is
    /// read-only or retired, the range is outside it, or a fault was caught (part of the
    /// data may have reached the file): write with pwritev instead.
    ///
    /// # Safety
    /// Every iovec must name readable memory of its length that does not overlap the mapping.
    pub unsafe fn write(&self, iov: &[libc::iovec], offset: u64) -> Option<usize> {
        if !self.writable {
            return None;
        }
        let range = self.usable(iov, offset)?;
        self.prefault(range.clone());
        let mut at = range.start;
        for v in iov {
            // SAFETY: as in `read`, the other way; the mapping is writable.
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast(), self.base.add(at), v.iov_len)
            };
            at += v.iov_len;
        }
        self.unfaulted(range.len())
    }

    /// Reads one byte of every page in `range`. A write fault maps one page, a read
    /// fault maps the pages around it too (64 KiB), and on tmpfs a page mapped by a read is
    /// writable: random 4 KiB writes went from one fault each to one per sixteen.
    fn prefault(&self, range: std::ops::Range<usize>) {
        let page = PAGE.load(Ordering::Relaxed);
        for at in (range.start & !(page - 1)..range.end).step_by(page) {
            // SAFETY: `at` is inside the mapping (`usable` checked the range, and its start
            // rounded down stays in it); a fault is caught as for any copy.
            unsafe { std::ptr::read_volatile(self.base.add(at)) };
        }
    }

    /// The bytes of the mapping `iov` at `offset` covers, when the mapping can serve them.
    fn usable(&self, iov: &[libc::iovec], offset: u64) -> Option<std::ops::Range<usize>> {
        if self.retired.load(Ordering::Relaxed) || FAULTS.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let total = iov
            .iter()
            .try_fold(0usize, |n, v| n.checked_add(v.iov_len))?;
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(total)?;
        (end <= self.len).then_some(start..end)
    }

    /// `Some(n)` unless a fault was caught. The handler counts a fault before it patches the
    /// page, so a copy that touched a patched page sees the count change here.
    fn unfaulted(&self, n: usize) -> Option<usize> {
        if FAULTS.load(Ordering::SeqCst) != 0 {
            if !FAULT_LOGGED.swap(true, Ordering::Relaxed) {
                warn!("a memory-backed image shrank while mapped; using preadv and pwritev for every image from now on");
            }
            return None;
        }
        Some(n)
    }

    /// Stops using the mapping: the file got a hole, which a read fault would fill again.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if let Some(p) = self.populate.take() {
            p.stop.store(true, Ordering::Relaxed);
            let _ = p.thread.join();
        }
        REGION[self.region].len.store(0, Ordering::SeqCst);
        REGION[self.region].start.store(0, Ordering::SeqCst);
        // SAFETY: the mapping created in `of`; `&mut self` means no read is running.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Bytes `populate` maps per madvise call, between checks of its stop flag.
const POPULATE_STEP: usize = 64 << 20;

/// Starts a thread that maps every page of the mapping into the page tables
/// (`MADV_POPULATE_READ`, Linux 5.14; on tmpfs a page mapped for reading is writable), about
/// 70 ms per GiB on the test VM: afterwards nothing faults (random 4 KiB writes to a fresh
/// mapping faulted on almost every request, `prefault` makes that one in sixteen). Page tables
/// cost 2 MiB per GiB, 0.2% of the memory the image itself uses.
fn populate(base: usize, len: usize) -> Option<Populate> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("mapping-populate".into())
        .spawn(move || {
            let mut at = 0;
            while at < len && !flag.load(Ordering::Relaxed) {
                let n = POPULATE_STEP.min(len - at);
                // SAFETY: a range of the mapping, which `Drop` keeps alive until this thread
                // has stopped; populating only reads the pages in.
                let rc = unsafe {
                    libc::madvise(
                        (base + at) as *mut libc::c_void,
                        n,
                        libc::MADV_POPULATE_READ,
                    )
                };
                if rc != 0 {
                    return; // an older kernel, or the file shrank: faults do the work
                }
                at += n;
            }
        })
        .ok()?;
    Some(Populate { stop, thread })
}

/// True when `fd` has no hole in its first `len` bytes.
fn dense(fd: i32, len: usize) -> bool {
    // SAFETY: lseek on a descriptor the caller holds open.
    let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
    usize::try_from(hole).is_ok_and(|h| h >= len)
}

fn register(start: usize, len: usize) -> Option<usize> {
    for (i, r) in REGION.iter().enumerate() {
        if r.start
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            r.len.store(len, Ordering::SeqCst);
            return Some(i);
        }
    }
    None
}

fn ours(addr: usize) -> bool {
    REGION.iter().any(|r| {
        let start = r.start.load(Ordering::SeqCst);
        start != 0 && addr >= start && addr - start < r.len.load(Ordering::SeqCst)
    })
}

fn guard_installed() -> bool {
    PREVIOUS
        .get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if let Ok(p) = usize::try_from(page) {
                PAGE.store(p, Ordering::Relaxed);
            }
            // SAFETY: installs a handler that only uses async-signal-safe calls (atomics,
            // mmap, sigaction); `old` receives the previous action.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                let handler: Handler = on_sigbus;
                act.sa_sigaction = handler as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut act.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(libc::SIGBUS, &act, &mut old) == 0).then_some(Previous(old))
            }
        })
        .is_some()
}

type Handler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands SA_SIGINFO handlers a valid siginfo.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    let image = code == libc::BUS_ADRERR && ours(addr);
    if image || (code == libc::BUS_ADRERR && foreign_fault(addr)) {
        if image {
            FAULTS.fetch_add(1, Ordering::SeqCst);
        }
        let page = PAGE.load(Ordering::Relaxed);
        // SAFETY: replaces one page of a mapping this module owns (checked by `ours`) with
        // private zeroes, writable so that a faulting write completes too; the faulting copy
        // then completes and its caller sees FAULTS.
        let p = unsafe {
            libc::mmap(
                (addr & !(page - 1)) as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return;
        }
    }
    // Not ours: put the previous action back; the fault repeats on return and gets it.
    if let Some(Some(Previous(old))) = PREVIOUS.get() {
        // SAFETY: restores the action saved when ours was installed.
        unsafe { libc::sigaction(libc::SIGBUS, old, std::ptr::null_mut()) };
    } else {
        // SAFETY: signal with SIG_DFL has no preconditions.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    }
}

/// Foreign mappings the SIGBUS handler recognises.
const FOREIGN: usize = 4096;

struct Foreign {
    start: AtomicUsize,
    len: AtomicUsize,
    faulted: AtomicBool,
}

static FOREIGN_REGION: [Foreign; FOREIGN] = [const {
    Foreign {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    }
}; FOREIGN];
/// SIGBUS faults caught on foreign mappings since the process started.
static FOREIGN_FAULTS: AtomicUsize = AtomicUsize::new(0);

/// Marks the foreign mapping holding `addr` as faulted; false when none holds it.
fn foreign_fault(addr: usize) -> bool {
    for r in &FOREIGN_REGION {
        let start = r.start.load(Ordering::SeqCst);
        if start != 0 && addr >= start && addr - start < r.len.load(Ordering::SeqCst) {
            r.faulted.store(true, Ordering::SeqCst);
            FOREIGN_FAULTS.fetch_add(1, Ordering::SeqCst);
            return true;
        }
    }
    false
}

/// Faults caught on foreign mappings so far: a cheap check before asking each guard.
pub fn foreign_faults() -> usize {
    FOREIGN_FAULTS.load(Ordering::SeqCst)
}

/// A mapping owned elsewhere that the SIGBUS handler guards while this lives: a fault in it
/// (its file shrank) maps a private zero page over the faulting page and sets [`faulted`]
/// instead of killing the process. The owner must stop trusting the mapping's contents.
///
/// [`faulted`]: ForeignGuard::faulted
#[derive(Debug)]
pub struct ForeignGuard {
    slot: usize,
}

impl ForeignGuard {
    /// Guards `len` bytes at `start`. `None`: the handler cannot be installed or every slot is
    /// taken.
    pub fn new(start: usize, len: usize) -> Option<ForeignGuard> {
        if start == 0 || len == 0 || !guard_installed() {
            return None;
        }
        for (slot, r) in FOREIGN_REGION.iter().enumerate() {
            if r.start
                .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                r.faulted.store(false, Ordering::SeqCst);
                r.len.store(len, Ordering::SeqCst);
                return Some(ForeignGuard { slot });
            }
        }
        None
    }

    /// Whether a fault was caught in the mapping.
    pub fn faulted(&self) -> bool {
        FOREIGN_REGION[self.slot].faulted.load(Ordering::SeqCst)
    }
}

impl Drop for ForeignGuard {
    fn drop(&mut self) {
        let r = &FOREIGN_REGION[self.slot];
        r.len.store(0, Ordering::SeqCst);
        r.start.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[path = "mapped_tests.rs"]
mod tests;
