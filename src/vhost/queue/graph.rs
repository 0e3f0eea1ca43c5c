//! A queue's graph requests: a node's reads and writes run on the queue's io_uring when the
//! engine plans them whole, and COW breaks wait, parked, until their exceptions are committed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost_user_backend::VringT;

use super::{Mem, QueueWorker, Vring, COMMIT_TASK};
use crate::storage::{DirectTarget, NewExceptions};
use crate::vhost::inflight::{copy_guest, IoOp, PrepareError};

impl QueueWorker {
    /// Runs a graph node's read or write on the io_uring when the engine places the whole
    /// request on one file. `None`: take the helper-thread path.
    pub(super) fn start_direct(
        &mut self,
        idx: usize,
        mem: &Arc<Mem>,
    ) -> Option<Result<(), PrepareError>> {
        let node = self.direct.as_ref()?;
        let slot = self.slots.get_mut(idx);
        let write = match slot.op {
            IoOp::Read => false,
            IoOp::Write => true,
            _ => return None,
        };
        // Buffers first: a plan may allocate exceptions, which a request that then fails
        // without I/O would leave behind. (Bounced when the origin is O_DIRECT and they are
        // unaligned, whichever file the plan picks.)
        if let Err(e) = slot.prepare(&self.parse_buf, mem, &self.disk.geometry, node.o_direct) {
            return Some(Err(e));
        }
        let Some(plan) = node.plan(write, slot.offset, u64::from(slot.data_len)) else {
            slot.reset_buffers();
            if write && node.snapshot.is_none() && self.hold_origin_write(idx, mem) {
                return Some(Ok(()));
            }
            return None;
        };
        slot.file = if plan.target == DirectTarget::Origin {
            0
        } else {
            1
        };
        slot.file_delta = plan.offset.wrapping_sub(slot.offset);
        slot.ticket = Some(plan.ticket);
        self.queue_sqes(idx);
        Some(Ok(()))
    }

    /// Hands an origin write that needs copy-outs to the engine's held writes, which batch the
    /// copy-outs and commits of many writes: it completes once it landed in the origin (in
    /// the kernel's page cache: a `kill -9` keeps it), durable too in write-through mode.
    /// False: not taken.
    fn hold_origin_write(&mut self, idx: usize, mem: &Arc<Mem>) -> bool {
        let (Some(node), Some(pool), Some(notify)) = (&self.direct, &self.pool, &self.held_notify)
        else {
            return false;
        };
        let slot = self.slots.get_mut(idx);
        let len = u64::from(slot.data_len);
        if len == 0 || len > crate::storage::MAX_HELD_WRITE {
            return false;
        }
        let mut data = vec![0u8; len as usize];
        if !copy_guest(&self.parse_buf, mem, 0, &mut data, false) {
            return false;
        }
        let writeback = self.disk.writeback.load(Ordering::Relaxed);
        let (done, notify) = (pool.done.clone(), notify.clone());
        let n = i32::try_from(len).unwrap_or(i32::MAX);
        let done: crate::storage::HeldDone = Box::new(move |r: std::io::Result<()>| {
            let res = match r {
                Ok(()) => n,
                Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
            };
            let mut d = done.lock().unwrap_or_else(|p| p.into_inner());
            d.push((idx, res));
            // A batch lands many writes at once: only the first completion the queue has not
            // taken yet wakes it (it reads the eventfd before it takes them all).
            let wake = d.len() == 1;
            drop(d);
            if wake {
                let _ = notify.write(1);
            }
        });
        if !node.origin.hold_write(slot.offset, data, !writeback, done) {
            return false;
        }
        slot.pending = 1;
        slot.helper = true;
        self.pool_jobs += 1;
        true
    }

    pub(super) fn finish(&mut self, idx: usize) -> Option<(u16, u32)> {
        let slot = self.slots.get_mut(idx);
        if let (Some(ticket), Some(node)) = (slot.ticket.take(), &self.direct) {
            if let Some(t) = node.finish(ticket, !slot.failed) {
                // New exceptions: the request completes once they are committed.
                self.committing.push((idx, t));
                return None;
            }
        }
        self.complete(idx)
    }

    /// Hands the commit of the parked requests' exceptions to a pool thread (one at a time:
    /// the requests that finish meanwhile share the next commit).
    pub(super) fn start_commit(&mut self) {
        if self.commit_task || self.committing.is_empty() {
            return;
        }
        let (Some(pool), Some(node)) = (&self.pool, &self.direct) else {
            return;
        };
        let node = node.clone();
        let waits: Vec<NewExceptions> = self.committing.iter().map(|&(_, t)| t).collect();
        // Write-back: the commit leaves its metadata write to the next FLUSH's sync.
        let light = self.disk.writeback.load(Ordering::Relaxed);
        let task = Box::new(move || node.commit(&waits, light));
        if pool.submit_task(COMMIT_TASK, task).is_ok() {
            self.commit_task = true;
            return;
        }
        // No pool thread left: the requests fail.
        for (idx, _) in std::mem::take(&mut self.committing) {
            self.slots.get_mut(idx).failed = true;
            if let Some(done) = self.complete(idx) {
                self.settled.push(done);
            }
        }
    }

    /// Commits the parked requests' exceptions: at once when the COW is memory-backed (the
    /// commit costs a copy, no wait for a device) and nobody else is committing, else on a
    /// pool thread. Completes those settled.
    pub(super) fn commit_parked(&mut self, vring: &Vring) {
        if self.committing.is_empty() {
            return;
        }
        if let (Some(node), true) = (&self.direct, self.files.is_inline(1)) {
            node.try_commit();
        }
        self.settle();
        self.start_commit();
        if !self.settled.is_empty() {
            let mut state = vring.get_mut();
            let mut settled = std::mem::take(&mut self.settled);
            for (head, used) in settled.drain(..) {
                self.add_used(&mut state, head, used);
            }
            self.settled = settled;
        }
    }

    /// The commit task failed (it panicked): the parked requests fail, their writes not
    /// committed. Returns them to publish.
    pub(super) fn fail_committing(&mut self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        for (idx, _) in std::mem::take(&mut self.committing) {
            self.slots.get_mut(idx).failed = true;
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            out.extend(self.complete(idx));
        }
        out
    }

    /// Completes the parked requests whose exceptions are committed (into `settled`).
    pub(super) fn settle(&mut self) {
        let Some(node) = self.direct.clone() else {
            return;
        };
        let mut i = 0;
        while i < self.committing.len() {
            let (idx, t) = self.committing[i];
            match node.settled(&t) {
                None => i += 1,
                Some(ok) => {
                    self.committing.swap_remove(i);
                    if !ok {
                        self.slots.get_mut(idx).failed = true;
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Some(done) = self.complete(idx) {
                        self.settled.push(done);
                    }
                }
            }
        }
    }
}
