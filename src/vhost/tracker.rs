//! Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): a shared region the frontend
//! keeps across backend restarts records, per queue, the heads popped and not yet completed, so
//! completions are published as they finish and a daemon restarted after `kill -9` resubmits
//! exactly the unfinished requests.
//!
//! The layout is libvhost-user's (QEMU's `VuVirtqInflight`), one 64-byte-aligned block per queue:
//! `features: u64, version: u16, desc_num: u16, last_batch_head: u16, used_idx: u16`, then
//! `desc_num` entries of `inflight: u8, padding: [u8; 5], next: u16, counter: u64`.
//!
//! Publishing one completion: `last_batch_head = head`, add the used entry (the ring's used
//! index moves), clear `desc[head].inflight`, `used_idx = ` the ring's used index. A crash
//! between the two index updates leaves them different; recovery then knows `last_batch_head`
//! was published and clears it.

use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{fence, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

const HEADER: usize = 16;
const DESC: usize = 16;
const ALIGN: usize = 64;
const VERSION: u16 = 1;

/// Bytes of one queue's block for a ring of `queue_size` entries.
fn queue_bytes(queue_size: u16) -> usize {
    (HEADER + DESC * usize::from(queue_size)).next_multiple_of(ALIGN)
}

/// Bytes of a region for `num_queues` rings of `queue_size` entries.
pub fn region_size(num_queues: u16, queue_size: u16) -> u64 {
    (usize::from(num_queues) * queue_bytes(queue_size)) as u64
}

/// Seals a region must carry: the frontend holds the file and could otherwise shrink it under
/// the daemon's mapping (a SIGBUS on the next access).
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Creates a zeroed, sealed region for GET_INFLIGHT_FD.
pub fn create(num_queues: u16, queue_size: u16) -> io::Result<File> {
    let size = region_size(num_queues, queue_size);
    if size == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "inflight region for 0 queues or 0 entries",
        ));
    }
    // SAFETY: a NUL-terminated name; the returned fd is owned by the File below.
    let fd = unsafe {
        libc::memfd_create(
            c"snapblk-inflight".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
    file.set_len(size)?;
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// A mapped region (SET_INFLIGHT_FD), shared by the queues' logs.
pub struct Region {
    base: *mut u8,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping lives as long as the Region; every access goes through atomics, and each
// queue's block is written by that queue's worker only.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// Maps `size` bytes of `file` from `offset`, which must hold `num_queues` blocks of
    /// `queue_size` entries.
    pub fn map(
        file: &File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> io::Result<Arc<Region>> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let need = region_size(num_queues, queue_size);
        if need == 0 || size < need {
            return Err(invalid(format!(
                "inflight region of {size} bytes is too small for {num_queues} queues of \
                 {queue_size} entries ({need} bytes)"
            )));
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        // SAFETY: fcntl on a descriptor the caller owns.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(invalid(
                "inflight region is not sealed against shrinking (not one this daemon made)".into(),
            ));
        }
        let file_len = file.metadata()?.len();
        if offset % page != 0 || offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(invalid(format!(
                "inflight region [{offset}, +{size}) is not page-aligned inside its \
                 {file_len}-byte file"
            )));
        }
        let len = usize::try_from(size).map_err(|_| invalid("inflight region too large".into()))?;
        // SAFETY: a fresh shared mapping of a range checked to lie inside the file; the
        // result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Region {
            base: base.cast(),
            len,
            num_queues,
            queue_size,
        }))
    }

    /// The log of queue `index`, whose ring has `ring_size` entries; None when the region has
    /// no block for it or its blocks are smaller than the ring.
    pub fn queue(self: &Arc<Self>, index: u16, ring_size: u16) -> Option<QueueLog> {
        if index >= self.num_queues || ring_size > self.queue_size || ring_size == 0 {
            return None;
        }
        let offset = usize::from(index) * queue_bytes(self.queue_size);
        Some(QueueLog {
            region: self.clone(),
            // SAFETY: the block [offset, offset + queue_bytes) lies inside the mapping
            // (region_size checked in `map`).
            base: unsafe { self.base.add(offset) },
            entries: self.queue_size,
            counter: 1,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`; no QueueLog outlives its Arc<Region>.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// What a queue resumes with after recovery.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Heads popped by an earlier instance and never completed, in the order they were popped.
    pub resubmit: Vec<u16>,
    /// The available-ring index to pop from next (the used index plus the resubmitted heads);
    /// None for a fresh block, where the frontend's SET_VRING_BASE stands.
    pub next_avail: Option<u16>,
}

/// One queue's block of the region. Owned by the queue's worker.
pub struct QueueLog {
    region: Arc<Region>,
    base: *mut u8,
    /// Entries in the block (the region's queue size).
    entries: u16,
    /// Pop order of the next head.
    counter: u64,
}

// SAFETY: see Region; a QueueLog is used by one thread at a time.
unsafe impl Send for QueueLog {}

impl QueueLog {
    fn u16_at(&self, offset: usize) -> &AtomicU16 {
        // SAFETY: offsets used are inside the block and 2-aligned (the block is 64-aligned).
        unsafe { &*self.base.add(offset).cast::<AtomicU16>() }
    }

    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as above, 8-aligned.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }

    fn flag(&self, head: u16) -> &AtomicU8 {
        // SAFETY: `head < entries` is checked by every caller; the entry is inside the block.
        unsafe {
            &*self
                .base
                .add(HEADER + DESC * usize::from(head))
                .cast::<AtomicU8>()
        }
    }

    fn counter_of(&self, head: u16) -> &AtomicU64 {
        self.u64_at(HEADER + DESC * usize::from(head) + 8)
    }

    fn version(&self) -> &AtomicU16 {
        self.u16_at(8)
    }

    fn desc_num(&self) -> &AtomicU16 {
        self.u16_at(10)
    }

    fn last_batch_head(&self) -> &AtomicU16 {
        self.u16_at(12)
    }

    fn used_idx(&self) -> &AtomicU16 {
        self.u16_at(14)
    }

    /// Reads what an earlier instance left, given the ring's used index, and makes the block
    /// consistent with it. A fresh (or foreign-sized) block is initialised and resubmits
    /// nothing.
    pub fn recover(&mut self, ring_used: u16) -> Recovery {
        let fresh = Recovery {
            resubmit: Vec::new(),
            next_avail: None,
        };
        if self.version().load(Ordering::Acquire) != VERSION
            || self.desc_num().load(Ordering::Acquire) != self.entries
        {
            for h in 0..self.entries {
                self.flag(h).store(0, Ordering::Relaxed);
                self.counter_of(h).store(0, Ordering::Relaxed);
            }
            self.u64_at(0).store(0, Ordering::Relaxed);
            self.desc_num().store(self.entries, Ordering::Relaxed);
            self.last_batch_head().store(0, Ordering::Relaxed);
            self.used_idx().store(ring_used, Ordering::Relaxed);
            self.version().store(VERSION, Ordering::Release);
            self.counter = 1;
            return fresh;
        }
        if self.used_idx().load(Ordering::Acquire) != ring_used {
            // Killed between publishing `last_batch_head` and recording it: it is complete.
            let last = self.last_batch_head().load(Ordering::Acquire);
            if last < self.entries {
                self.flag(last).store(0, Ordering::Release);
            }
            self.used_idx().store(ring_used, Ordering::Release);
        }
        let mut heads: Vec<(u64, u16)> = (0..self.entries)
            .filter(|&h| self.flag(h).load(Ordering::Acquire) == 1)
            .map(|h| (self.counter_of(h).load(Ordering::Acquire), h))
            .collect();
        heads.sort_unstable();
        self.counter = heads.last().map_or(1, |&(c, _)| c.wrapping_add(1));
        Recovery {
            next_avail: Some(ring_used.wrapping_add(heads.len() as u16)),
            resubmit: heads.into_iter().map(|(_, h)| h).collect(),
        }
    }

    /// Records that `head` was popped (before any of its I/O starts).
    pub fn begin(&mut self, head: u16) {
        if head >= self.entries {
            return;
        }
        self.counter_of(head).store(self.counter, Ordering::Relaxed);
        self.counter = self.counter.wrapping_add(1);
        self.flag(head).store(1, Ordering::Release);
    }

    /// Called before `head`'s used entry is added to the ring.
    pub fn before_publish(&self, head: u16) {
        if head < self.entries {
            self.last_batch_head().store(head, Ordering::Release);
            fence(Ordering::SeqCst);
        }
    }

    /// Called once `head`'s used entry is in the ring and the ring's used index is `ring_used`.
    pub fn after_publish(&self, head: u16, ring_used: u16) {
        if head < self.entries {
            fence(Ordering::SeqCst);
            self.flag(head).store(0, Ordering::Release);
            self.used_idx().store(ring_used, Ordering::Release);
        }
    }

    /// Whether `head` is recorded as in flight.
    #[cfg(test)]
    fn in_flight(&self, head: u16) -> bool {
        head < self.entries && self.flag(head).load(Ordering::Acquire) == 1
    }

    /// The region this log is part of.
    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(queues: u16, size: u16, q: u16) -> (File, QueueLog) {
        let f = create(queues, size).unwrap();
        let r = Region::map(&f, 0, region_size(queues, size), queues, size).unwrap();
        (f, r.queue(q, size).unwrap())
    }

    /// A second instance over the same file, as a restarted daemon sees it.
    fn reopen(f: &File, queues: u16, size: u16, q: u16) -> QueueLog {
        let r = Region::map(f, 0, region_size(queues, size), queues, size).unwrap();
        r.queue(q, size).unwrap()
    }

    #[test]
    fn layout_matches_libvhost_user() {
        assert_eq!(queue_bytes(128), 2112);
        assert_eq!(queue_bytes(256), 4160);
        assert_eq!(region_size(2, 256), 8320);
        assert_eq!(create(2, 256).unwrap().metadata().unwrap().len(), 8320);
    }

    #[test]
    fn fresh_region_resubmits_nothing_and_keeps_the_frontends_base() {
        let (_f, mut l) = log(1, 8, 0);
        assert_eq!(
            l.recover(5),
            Recovery {
                resubmit: vec![],
                next_avail: None
            }
        );
    }

    #[test]
    fn unfinished_heads_come_back_in_pop_order() {
        let (f, mut l) = log(2, 8, 1);
        l.recover(0);
        for h in [6, 2, 4, 0] {
            l.begin(h);
        }
        // 2 and 0 complete out of order; the ring's used index is 2.
        l.before_publish(2);
        l.after_publish(2, 1);
        l.before_publish(0);
        l.after_publish(0, 2);
        let mut again = reopen(&f, 2, 8, 1);
        assert_eq!(
            again.recover(2),
            Recovery {
                resubmit: vec![6, 4],
                next_avail: Some(4)
            }
        );
        // New pops are ordered after the resubmitted ones.
        again.begin(3);
        assert!(
            again.counter_of(3).load(Ordering::Relaxed)
                > again.counter_of(4).load(Ordering::Relaxed)
        );
        // Queue 0's block is untouched.
        assert_eq!(reopen(&f, 2, 8, 0).recover(0).resubmit, Vec::<u16>::new());
    }

    #[test]
    fn killed_between_used_index_and_clear_counts_the_head_as_done() {
        let (f, mut l) = log(1, 8, 0);
        l.recover(10);
        l.begin(3);
        l.begin(5);
        // The used entry for 5 reached the ring (used index 11) but the flag was not cleared.
        l.before_publish(5);
        let mut again = reopen(&f, 1, 8, 0);
        assert_eq!(
            again.recover(11),
            Recovery {
                resubmit: vec![3],
                next_avail: Some(12)
            }
        );
        assert!(!again.in_flight(5));
        // Recovery is idempotent: a second restart sees the same.
        assert_eq!(reopen(&f, 1, 8, 0).recover(11).resubmit, vec![3]);
    }

    #[test]
    fn killed_before_the_used_index_moved_resubmits_the_head() {
        let (f, mut l) = log(1, 8, 0);
        l.recover(0);
        l.begin(1);
        l.before_publish(1);
        assert_eq!(reopen(&f, 1, 8, 0).recover(0).resubmit, vec![1]);
    }

    #[test]
    fn bad_regions_are_refused() {
        let f = create(1, 8).unwrap();
        assert!(Region::map(&f, 0, 64, 2, 8).is_err(), "too small");
        assert!(
            Region::map(&f, 4096, region_size(1, 8), 1, 8).is_err(),
            "past the end"
        );
        assert!(
            Region::map(&f, 8, region_size(1, 8), 1, 8).is_err(),
            "unaligned"
        );
        let r = Region::map(&f, 0, region_size(1, 8), 1, 8).unwrap();
        assert!(r.queue(1, 8).is_none(), "no block for queue 1");
        assert!(r.queue(0, 16).is_none(), "ring larger than the block");
        assert!(r.queue(0, 4).is_some());
        assert!(create(0, 8).is_err());
        let unsealed = tempfile::tempfile().unwrap();
        unsealed.set_len(region_size(1, 8)).unwrap();
        assert!(
            Region::map(&unsealed, 0, region_size(1, 8), 1, 8).is_err(),
            "unsealed"
        );
        assert!(f.set_len(0).is_err(), "a region cannot shrink");
    }

    #[test]
    fn foreign_sized_block_is_reset() {
        let (f, mut l) = log(1, 8, 0);
        l.recover(0);
        l.begin(2);
        l.desc_num().store(4, Ordering::Relaxed);
        let mut again = reopen(&f, 1, 8, 0);
        assert_eq!(again.recover(0).resubmit, Vec::<u16>::new());
        assert!(!again.in_flight(2));
    }
}
