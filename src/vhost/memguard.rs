//! A connection's guest memory, guarded against a frontend that shrinks it.
//!
//! Regions are checked against their files when they are mapped (vendored vhost-user-backend
//! patch 0002), but a file that is not sealed against shrinking (`F_SEAL_SHRINK`: QEMU seals
//! its memfd backends, not `memory-backend-file`) can be truncated afterwards, and the next
//! access to the lost part would kill the daemon with SIGBUS. Each such region is registered
//! with the SIGBUS handler of `storage::block::mapped` ([`ForeignGuard`]): a fault maps a zero page
//! over the faulting page instead, and the connection is then treated as broken. Its queues
//! stop, requests completing from then on fail with IOERR (a write in flight at the fault may
//! have read zeroes from that page: it fails, and its sectors are undefined, as for any failed
//! write), and the frontend is disconnected. Other connections are unaffected.
//!
//! Regions stay guarded until the connection ends: a region removed with REM_MEM_REG may
//! still be mapped by requests in flight. Between the mapping of a region and the
//! `update_memory` call that registers it the region is not guarded (microseconds, and only a
//! frontend racing its own SET_MEM_TABLE with a truncation could hit it).

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use log::warn;
use vhost_user_backend::ShutdownHandle;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::storage::block::mapped::{foreign_faults, ForeignGuard};

/// Most regions one connection has guarded (memory hotplug adds regions over time).
const MAX_REGIONS: usize = 512;

/// The guards of one connection.
#[derive(Default)]
pub struct MemoryGuard {
    regions: Mutex<Vec<(usize, usize, ForeignGuard)>>,
    /// `foreign_faults()` when last checked.
    seen: AtomicUsize,
    faulted: AtomicBool,
    /// Logged once: a region could not be guarded.
    unguarded: AtomicBool,
    disconnect: Mutex<Option<ShutdownHandle>>,
}

impl MemoryGuard {
    pub fn new() -> Arc<MemoryGuard> {
        Arc::new(MemoryGuard::default())
    }

    /// Guards every region of `mem` that is not sealed against shrinking and not guarded yet.
    pub fn cover(&self, mem: &GuestMemoryMmap<()>) {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        for r in mem.iter() {
            let (start, len) = (r.as_ptr() as usize, r.len() as usize);
            if regions.iter().any(|&(s, l, _)| s == start && l == len) || sealed(r) {
                continue;
            }
            let guard = (regions.len() < MAX_REGIONS)
                .then(|| ForeignGuard::new(start, len))
                .flatten();
            match guard {
                Some(g) => regions.push((start, len, g)),
                None if !self.unguarded.swap(true, Ordering::Relaxed) => warn!(
                    "a guest memory region of {len} bytes is not guarded: if the frontend \
                     truncates its file, the daemon dies of SIGBUS"
                ),
                None => {}
            }
        }
    }

    /// Whether this connection's guest memory lost pages under its mapping. Cheap while no
    /// foreign mapping anywhere faulted.
    pub fn faulted(&self) -> bool {
        let now = foreign_faults();
        if self.seen.load(Ordering::Relaxed) != now {
            self.seen.store(now, Ordering::Relaxed);
            let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
            if regions.iter().any(|(_, _, g)| g.faulted()) {
                self.faulted.store(true, Ordering::SeqCst);
            }
        }
        self.faulted.load(Ordering::SeqCst)
    }

    /// How to cut the connection when its memory faulted.
    pub fn set_disconnect(&self, handle: ShutdownHandle) {
        *self.disconnect.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
    }

    /// Disconnects the frontend (once).
    pub fn disconnect(&self) {
        let handle = self
            .disconnect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            h.shutdown();
        }
    }
}

/// Whether the region's file can no longer shrink.
fn sealed(r: &vm_memory::GuestRegionMmap<()>) -> bool {
    let Some(fo) = r.file_offset() else {
        return false;
    };
    // SAFETY: fcntl(F_GET_SEALS) on a descriptor the region holds open.
    let seals = unsafe { libc::fcntl(fo.file().as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}
