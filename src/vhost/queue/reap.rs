//! How a queue's I/O reaches the kernel and comes back: pushing SQEs, reaping io_uring CQEs
//! and the helper threads' results, completing requests, and draining what is in flight.
//!
//! Nothing is stranded: an SQE that cannot be queued (the submission ring is full and
//! io_uring_enter fails) completes its request with an error instead of being dropped; SQEs a
//! failed submit left in the ring are submitted again at the next event or drain step; and a
//! drain that does not finish says in the log, every `DRAIN_REPORT_EVERY`, what it waits for.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};
use log::{error, warn};
use vhost_user_backend::VringT;
use vm_memory::Bytes;

use super::{QueueWorker, Tag, Vring, COMMIT_TASK, FIXED_IMAGE};
use crate::vhost::inflight::{IoOp, Progress};
use crate::virtio_blk::request::Status;

/// How long one drain step waits for a completion.
const DRAIN_STEP: Duration = Duration::from_millis(100);
/// How often a drain that has not finished logs what it waits for (the first time after
/// `QueueWorker::drain_report_after`).
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(30);
/// Requests a drain report names one by one.
const REPORT_SLOTS: usize = 8;

impl QueueWorker {
    /// Handles the completion eventfd (io_uring and helper threads).
    pub fn handle_completions(&mut self, vring: &Vring) {
        let _ = self.event.read();
        let was_full = self.slots.is_full();
        // SQEs a failed submit left in the ring.
        self.submit();
        self.reap(vring);
        if was_full && !self.slots.is_full() {
            self.handle_kick(vring);
        } else {
            self.check_memory();
            self.signal(vring);
        }
    }

    /// Waits for every request in flight and completes it (GET_VRING_BASE, disconnect,
    /// shutdown). Logs what it waits for when it takes long.
    pub fn drain(&mut self) {
        let start = Instant::now();
        let mut report_at = self.drain_report_after;
        self.release_parked();
        while self.slots.in_flight() > 0 {
            self.submit();
            self.wait_for_completion();
            match self.vring.clone() {
                Some(v) => {
                    self.reap(&v);
                    self.signal(&v);
                }
                None => self.reap_unpublished(),
            }
            let waited = start.elapsed();
            if self.slots.in_flight() > 0 && waited >= report_at {
                let report = self.in_flight_report();
                warn!(
                    "queue {}: draining for {} s, still waiting for {report}",
                    self.index,
                    waited.as_secs(),
                );
                report_at = waited + DRAIN_REPORT_EVERY;
            }
        }
        if self.vring.is_none() {
            // Nothing can be published without a ring: start the next one afresh.
            self.order.clear();
            self.done.fill(None);
            self.popped.fill(false);
        }
    }

    /// Reaps without a ring to publish to (the backend is going away): requests complete
    /// (their status bytes are written) but no used entry is added.
    fn reap_unpublished(&mut self) {
        let mut cqes = Vec::new();
        let mut batch = [(0u64, 0i32); 64];
        loop {
            let n = self.uring.reap(&mut batch);
            if n == 0 {
                break;
            }
            cqes.extend_from_slice(&batch[..n]);
        }
        if let Some(pool) = &self.pool {
            pool.take_done(&mut self.pool_done);
        }
        for (idx, res) in std::mem::take(&mut self.pool_done) {
            if idx == COMMIT_TASK {
                self.commit_task = false;
                if res < 0 {
                    self.fail_committing();
                }
            } else {
                cqes.push((idx as u64, res));
            }
        }
        for (ud, res) in cqes {
            let _ = self.on_cqe(ud, res);
        }
        self.settle();
        self.start_commit();
        self.settled.clear();
    }

    /// Blocks for at most `DRAIN_STEP` until something completes.
    fn wait_for_completion(&mut self) {
        // Without a wait on the ring (an older kernel), the eventfd is polled instead.
        if self.pool.is_none() && self.uring.in_flight > 0 && self.uring.wait(DRAIN_STEP) {
            return;
        }
        let mut fds = [libc::pollfd {
            fd: self.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = DRAIN_STEP.as_millis() as i32;
        // SAFETY: one valid pollfd; the timeout bounds the wait so a lost wakeup cannot hang.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        let _ = self.event.read();
    }

    /// What the requests in flight wait for, for the log.
    pub(super) fn in_flight_report(&mut self) -> String {
        let unsubmitted = self.uring.unsubmitted();
        let parked = self.committing.len();
        let mut out = format!(
            "{} requests ({} io_uring operations in flight, {} not yet submitted, {} helper-thread \
             jobs, {} writes waiting for their exceptions' commit{})",
            self.slots.in_flight(),
            self.uring.in_flight,
            unsubmitted,
            self.pool_jobs,
            parked,
            if self.commit_task {
                ", which a helper thread is running"
            } else {
                ""
            },
        );
        for idx in self.slots.busy().take(REPORT_SLOTS) {
            let slot = self.slots.get(idx);
            let waits = if self.committing.iter().any(|&(i, _)| i == idx) {
                "its exceptions' commit".to_string()
            } else {
                format!("{} operations", slot.pending)
            };
            out.push_str(&format!(
                "; head {}: {:?} of {} bytes at byte {} waits for {waits}",
                slot.head, slot.op, slot.data_len, slot.offset
            ));
        }
        out
    }

    /// Queues one SQE. When the submission ring is full and cannot be emptied, the SQE's
    /// request fails (a completion with the error is queued for the next reap) rather than
    /// waiting for a completion that would never come.
    pub(super) fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every pointer in the entry (iovecs and the guest buffers they name) stays
        // valid until its completion is reaped: the slot owns the iovec array and holds an Arc
        // on the guest memory mapping.
        if let Err(err) = unsafe { self.uring.push(&e) } {
            if self.log.allow() {
                error!(
                    "queue {}: io_uring submit failed, failing the operation: {err}",
                    self.index
                );
            }
            let res = -err.raw_os_error().unwrap_or(libc::EIO);
            self.pool_done.push((e.get_user_data() as usize, res));
            // Make sure a reap runs soon, whatever the caller does next.
            let _ = self.event.write(1);
        }
    }

    /// Submits the queued SQEs. On failure they stay queued and go with the next submit
    /// (the next event, or the next drain step).
    pub(super) fn submit(&mut self) {
        if let Err(e) = self.uring.submit() {
            if self.log.allow() {
                error!(
                    "queue {}: io_uring submit failed, retrying at the next event: {e}",
                    self.index
                );
            }
        }
    }

    /// Reaps completions; finished requests go to the used ring.
    pub(super) fn reap(&mut self, vring: &Vring) {
        self.reap_completions(vring);
        self.commit_parked(vring);
    }

    fn reap_completions(&mut self, vring: &Vring) {
        if let Err(e) = self.uring.enter_for_task_work() {
            if self.log.allow() {
                error!("queue {}: io_uring enter failed: {e}", self.index);
            }
        }
        if let Some(pool) = &self.pool {
            pool.take_done(&mut self.pool_done);
        }
        // Completing one may queue another (a short inline transfer continues, an SQE that
        // cannot be queued fails): loop until none is left.
        while !self.pool_done.is_empty() {
            let mut done = std::mem::take(&mut self.pool_done);
            let mut state = vring.get_mut();
            for &(idx, res) in &done {
                if idx == COMMIT_TASK {
                    self.commit_task = false;
                    if res < 0 {
                        for (head, used) in self.fail_committing() {
                            self.add_used(&mut state, head, used);
                        }
                    }
                    continue;
                }
                if let Some((head, used)) = self.on_cqe(idx as u64, res) {
                    self.add_used(&mut state, head, used);
                }
            }
            drop(state);
            done.clear();
            if self.pool_done.is_empty() {
                self.pool_done = done; // keep the allocation
            }
        }
        let mut batch = [(0u64, 0i32); 64];
        loop {
            let n = self.uring.reap(&mut batch);
            if n == 0 {
                return;
            }
            let mut state = vring.get_mut();
            for &(ud, res) in &batch[..n] {
                if let Some((head, used)) = self.on_cqe(ud, res) {
                    self.add_used(&mut state, head, used);
                }
            }
            drop(state);
            // Short transfers and fallbacks may have queued more work.
            self.submit();
        }
    }

    /// Accounts one completion (a CQE, a helper thread's result, or a failed push); returns
    /// `(head, used_len)` when its request is complete.
    pub(super) fn on_cqe(&mut self, ud: u64, res: i32) -> Option<(u16, u32)> {
        let tag = Tag(ud);
        let (idx, range) = (tag.slot_index(), tag.range_index());
        if !self.slots.in_use(idx) {
            return None; // never complete a request twice
        }
        if self.slots.get(idx).helper {
            self.slots.get_mut(idx).helper = false;
            self.pool_jobs = self.pool_jobs.saturating_sub(1);
        }
        let slot = self.slots.get_mut(idx);
        slot.pending = slot.pending.saturating_sub(1);
        if res == -libc::EOPNOTSUPP
            && !tag.is_zero_pair()
            && matches!(slot.op, IoOp::WriteZeroes { unmap: false })
        {
            // This filesystem has no ZERO_RANGE: punch + allocate from now on.
            self.disk.zero_range.store(false, Ordering::Relaxed);
            self.slots.get_mut(idx).pending += 2;
            self.push_zero_pair(tag.zero_pair(), idx, range);
            return None;
        }
        let slot = self.slots.get_mut(idx);
        if res < 0 {
            slot.failed = true;
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            if self.log.allow() {
                let err = std::io::Error::from_raw_os_error(-res);
                warn!(
                    "queue {}: {:?} at byte {} failed: {err}",
                    self.index, slot.op, slot.offset
                );
            }
        } else if matches!(slot.op, IoOp::Read | IoOp::Write) && !slot.failed {
            match slot.advance(res as u32) {
                Progress::Done => {}
                Progress::More => {
                    self.queue_sqes(idx);
                    return None;
                }
                Progress::Stuck => slot.failed = true,
            }
        }
        if self.slots.get_mut(idx).pending > 0 {
            return None;
        }
        let writeback = self.disk.writeback.load(Ordering::Relaxed);
        let slot = self.slots.get_mut(idx);
        if !writeback
            && self.files.rbd
            && slot.op == IoOp::Write
            && slot.file == 0
            && slot.ticket.is_some()
            && !slot.failed
            && !slot.synced
        {
            // Write-through to RBD: durable (flushed from librbd's cache) before it completes.
            slot.synced = true;
            slot.pending = 1;
            self.submit_rbd(crate::storage::AioOp::Flush, Tag::slot(idx));
            return None;
        }
        if !writeback
            && self.pool.is_none()
            && matches!(slot.op, IoOp::Discard | IoOp::WriteZeroes { .. })
            && !slot.failed
            && !slot.synced
        {
            // Write-through: the new extents are durable before the request completes (a
            // plain image's writes carry RWF_DSYNC; fallocate has no such flag).
            slot.synced = true;
            slot.pending = 1;
            let e = opcode::Fsync::new(FIXED_IMAGE)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            self.push(e.user_data(idx as u64));
            return None;
        }
        self.finish(idx)
    }

    /// Writes the status of a finished request and frees its slot.
    pub(super) fn complete(&mut self, idx: usize) -> Option<(u16, u32)> {
        // Guest memory that lost pages may have given the request zeroes.
        let shrank = self.guard.faulted();
        let slot = self.slots.get_mut(idx);
        slot.failed |= shrank;
        let (status, used) = slot.finish();
        if status == Status::Ok {
            let bytes = u64::from(slot.data_len);
            match slot.op {
                IoOp::Read => self.stats.read_bytes.fetch_add(bytes, Ordering::Relaxed),
                IoOp::Write => self.stats.write_bytes.fetch_add(bytes, Ordering::Relaxed),
                _ => 0,
            };
        }
        let head = slot.head;
        if let Some(mem) = slot.mem.as_ref() {
            let _ = mem.write_obj(status as u8, slot.status);
        }
        self.slots.free(idx);
        self.stats
            .in_flight
            .store(self.slots.in_flight() as u64, Ordering::Relaxed);
        Some((head, used))
    }
}
