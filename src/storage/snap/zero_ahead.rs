//! Zero-ahead for persistent COWs on disk file systems: a background thread keeps the next few
//! MiB past the last allocated chunk written with zeroes and synced, so a commit's `fdatasync`
//! overwrites blocks the file system already allocated (a data flush) instead of committing
//! its journal for new blocks every time. Snapshot creation stays instant (the COW stays
//! sparse past the lead); the allocator waits only if it reaches a piece being written.
//! Where commits are large (sequential writes), a journal commit is shared by many chunks and
//! the zeroes' second write of every block would cost more than it saves: zero-ahead pauses.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use log::warn;

use crate::storage::block::device::BlockDevice;
use crate::storage::on_disk_file_system;

/// How far past the last allocated byte the thread keeps the COW written.
const LEAD: u64 = 16 << 20;
/// The most bytes of one zero write (the longest the allocator can wait for).
const PIECE: u64 = 256 << 10;
/// Zero-ahead pauses while commits carry this many bytes of new chunks on average: more than
/// 32 scattered 4 KiB first writes (queue depth 32) ever make, which gain most from it, and
/// less than 64 KiB sequential writes at depth 4 or more make, which lose to the zeroes' write.
const LARGE_COMMIT: u64 = 192 << 10;

/// A running zero-ahead thread; dropping it stops the thread (after the piece it writes).
pub struct ZeroAhead {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Shared {
    dev: Arc<dyn BlockDevice>,
    name: String,
    lead: u64,
    piece: u64,
    state: Mutex<State>,
    /// Signals a change of `allocated`, `busy` or `stop`.
    changed: Condvar,
}

struct State {
    /// Bytes below this belong to allocated chunks: the thread never writes there.
    allocated: u64,
    /// Bytes in `allocated..written` are written (zeroes, or data from before a restart).
    written: u64,
    /// The piece being written now.
    busy: Option<Range<u64>>,
    /// Set by the first allocation: until then the COW may never be written (and its
    /// creation, inside a checkpoint's pause, should not share the disk with 16 MiB of zeroes).
    armed: bool,
    stop: bool,
    /// Bytes of new chunks per commit, a moving average (weight 1/8 to the latest).
    commit_avg: u64,
}

impl fmt::Debug for ZeroAhead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("ZeroAhead")
            .field("allocated", &s.allocated)
            .field("written", &s.written)
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(g).unwrap_or_else(PoisonError::into_inner)
    }

    /// The next piece to write, or `None` when the lead is full (or the COW ends).
    fn next_piece(&self, s: &State) -> Option<Range<u64>> {
        let start = s.written.max(s.allocated);
        let end = (s.allocated + self.lead).min(self.dev.size());
        (start < end).then(|| start..end.min(start + self.piece))
    }
}

impl ZeroAhead {
    /// Starts zero-ahead for a COW whose chunks below byte `allocated` are in use, when the COW
    /// is a regular file on a disk file system (not tmpfs, not a block device); `None` otherwise.
    pub fn start(dev: Arc<dyn BlockDevice>, name: &str, allocated: u64) -> Option<ZeroAhead> {
        let fd = dev.raw_fd()?;
        if !on_disk_file_system(fd) {
            return None;
        }
        // Written already up to the first hole (all of it for a preallocated COW).
        // SAFETY: lseek on a descriptor the device keeps open.
        let hole = unsafe { libc::lseek(fd, allocated as libc::off_t, libc::SEEK_HOLE) };
        let written = u64::try_from(hole).unwrap_or(allocated);
        ZeroAhead::spawn(dev, name, allocated, written, LEAD, PIECE)
            .map_err(|e| warn!("{name}: zero-ahead not started: {e}"))
            .ok()
    }

    fn spawn(
        dev: Arc<dyn BlockDevice>,
        name: &str,
        allocated: u64,
        written: u64,
        lead: u64,
        piece: u64,
    ) -> std::io::Result<ZeroAhead> {
        let shared = Arc::new(Shared {
            dev,
            name: name.to_owned(),
            lead,
            piece,
            state: Mutex::new(State {
                allocated,
                written,
                busy: None,
                armed: false,
                stop: false,
                commit_avg: 0,
            }),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name("snapblk-zero".into())
            .spawn(move || run(&s))?;
        Ok(ZeroAhead {
            shared,
            thread: Some(thread),
        })
    }

    /// Called by the allocator (under the origin lock) once chunks up to byte `end` are in
    /// use: waits while a zero write covers any of them (one piece at most), so no zero ever
    /// lands on a chunk that holds data, and wakes the thread when the lead runs short.
    pub fn allocated(&self, end: u64) {
        let sh = &self.shared;
        let mut s = sh.lock();
        while s.busy.as_ref().is_some_and(|b| b.start < end) {
            s = sh.wait(s);
        }
        if end > s.allocated {
            s.allocated = end;
            s.armed = true;
            if s.written < end + sh.lead / 2 && !s.stop && !s.paused() {
                sh.changed.notify_all();
            }
        }
    }
}

impl ZeroAhead {
    /// Called when a commit of `bytes` of new chunks completed: keeps the average that pauses
    /// zero-ahead under large commits.
    pub fn committed(&self, bytes: u64) {
        if bytes == 0 {
            return; // a flush-only cycle
        }
        let mut s = self.shared.lock();
        s.commit_avg = s.commit_avg - s.commit_avg / 8 + bytes / 8;
    }
}

impl State {
    fn paused(&self) -> bool {
        self.commit_avg >= LARGE_COMMIT
    }
}

impl Drop for ZeroAhead {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.lock().stop = true;
        sh.changed.notify_all();
        // A COW reset reuses the file from chunk 0: no zero may land after this returns, and
        // the thread's handle on the COW (its file lock) goes with it, so the file can be
        // opened again at once. The thread never takes the origin lock: the join ends after
        // the piece or sync in progress.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: sleeps until the first allocation and then until the written lead falls under
/// half, then writes pieces of zeroes up to the full lead and syncs them once.
fn run(sh: &Shared) {
    let zeroes = vec![0u8; sh.piece as usize];
    let mut s = sh.lock();
    loop {
        while !s.stop && (!s.armed || s.paused() || s.written >= s.allocated + sh.lead / 2) {
            s = sh.wait(s);
        }
        let mut wrote = false;
        while let Some(piece) = sh.next_piece(&s).filter(|_| !s.stop && !s.paused()) {
            s.busy = Some(piece.clone());
            drop(s);
            let len = (piece.end - piece.start) as usize;
            let r = sh.dev.write_at(&zeroes[..len], piece.start);
            s = sh.lock();
            s.busy = None;
            sh.changed.notify_all();
            if let Err(e) = r {
                // Best effort: the COW works as before, sparse (a full file system, say).
                warn!("{}: zero-ahead stopped: {e}", sh.name);
                s.stop = true;
                break;
            }
            s.written = piece.end;
            wrote = true;
        }
        if wrote {
            drop(s);
            if let Err(e) = sh.dev.flush() {
                warn!("{}: zero-ahead sync: {e}", sh.name);
            }
            s = sh.lock();
        }
        if s.stop {
            return;
        }
        // The COW's end: nothing more to write, ever.
        if sh.next_piece(&s).is_none() && s.allocated + sh.lead >= sh.dev.size() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "zero_ahead_tests.rs"]
mod tests;
