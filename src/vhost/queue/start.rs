//! Starting a parsed request: the immediate answers (get-id, a read-only flush), a refused
//! chain's status, a slot in the in-flight table, then the engine's direct plan, the helper
//! pool, or the image's SQEs on the queue's io_uring.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::warn;
use vhost_user_backend::VringState;
use vm_memory::{Bytes, GuestMemoryAtomic};

use super::{Backing, Mem, QueueWorker};
use crate::vhost::inflight::IoOp;
use crate::vhost::pool::{Job, JobOp};
use crate::virtio_blk::request::{Rejected, Request, RequestKind, Status, ID_BYTES};

impl QueueWorker {
    pub(super) fn reject(
        &mut self,
        head: u16,
        rej: Rejected,
        mem: &Mem,
        state: &mut VringState<GuestMemoryAtomic<Mem>>,
    ) {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        if self.log.allow() {
            warn!(
                "queue {}: request {head} refused: {}",
                self.index, rej.error
            );
        }
        let used = match rej.status {
            Some(addr) => {
                let _ = mem.write_obj(rej.error.status() as u8, addr);
                1
            }
            None => 0,
        };
        self.add_used(state, head, used);
    }

    pub(super) fn start(
        &mut self,
        head: u16,
        req: Request,
        mem: &Arc<Mem>,
        state: &mut VringState<GuestMemoryAtomic<Mem>>,
    ) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let immediate = match req.kind {
            RequestKind::GetId => Some(self.get_id(mem)),
            RequestKind::Flush if self.disk.geometry.readonly => Some(1),
            _ => None,
        };
        if let Some(used) = immediate {
            let _ = mem.write_obj(Status::Ok as u8, req.status);
            self.add_used(state, head, used);
            return;
        }
        let Some(idx) = self.slots.alloc() else {
            // Not reached: handle_kick checks for a free slot before popping.
            let _ = mem.write_obj(Status::IoErr as u8, req.status);
            self.add_used(state, head, 1);
            return;
        };
        self.stats
            .in_flight
            .store(self.slots.in_flight() as u64, Ordering::Relaxed);
        let slot = self.slots.get_mut(idx);
        slot.begin(head, req, mem.clone());
        match self.start_direct(idx, mem) {
            None => {}
            Some(Ok(())) => return,
            Some(Err(e)) => {
                if self.log.allow() {
                    warn!("queue {}: request {head}: {e}", self.index);
                }
                self.slots.get_mut(idx).failed = true;
                if let Some((head, used)) = self.finish(idx) {
                    self.add_used(state, head, used);
                }
                return;
            }
        }
        let slot = self.slots.get_mut(idx);
        if let Some(pool) = &self.pool {
            let op = match slot.op {
                IoOp::Read => JobOp::Read,
                IoOp::Write => JobOp::Write,
                IoOp::Flush => JobOp::Flush,
                IoOp::Discard => JobOp::Discard,
                IoOp::WriteZeroes { .. } => JobOp::WriteZeroes,
            };
            slot.pending = 1;
            slot.helper = true;
            self.pool_jobs += 1;
            let job = Job {
                slot: idx,
                op,
                offset: slot.offset,
                len: slot.data_len,
                segs: self.parse_buf.clone(),
                ranges: slot.ranges,
                mem: mem.clone(),
                durable: !self.disk.writeback.load(Ordering::Relaxed),
            };
            if pool.submit(job).is_err() {
                let slot = self.slots.get_mut(idx);
                slot.failed = true;
                slot.helper = false;
                self.pool_jobs -= 1;
                if let Some((head, used)) = self.finish(idx) {
                    self.add_used(state, head, used);
                }
            }
            return;
        }
        let Backing::Image(image) = &self.disk.backing else {
            return;
        };
        let image = image.clone();
        let slot = self.slots.get_mut(idx);
        if let Err(e) = slot.prepare(&self.parse_buf, mem, &self.disk.geometry, image.direct()) {
            if self.log.allow() {
                warn!("queue {}: request {head}: {e}", self.index);
            }
            slot.failed = true;
            if let Some((head, used)) = self.finish(idx) {
                self.add_used(state, head, used);
            }
            return;
        }
        if matches!(slot.op, IoOp::Discard | IoOp::WriteZeroes { .. }) && image.is_block_device() {
            // Block devices discard through ioctls, synchronously (rare, slow path).
            slot.failed = slot.block_device_ranges(&image).is_err();
            if let Some((head, used)) = self.finish(idx) {
                self.add_used(state, head, used);
            }
            return;
        }
        self.queue_sqes(idx);
    }

    fn get_id(&self, mem: &Mem) -> u32 {
        let serial = &self.disk.geometry.serial;
        let mut id = [0u8; ID_BYTES];
        let n = serial.len().min(ID_BYTES);
        id[..n].copy_from_slice(&serial[..n]);
        let mut written = 0usize;
        for seg in &self.parse_buf {
            let take = (seg.len as usize).min(ID_BYTES - written);
            let _ = mem.write_slice(&id[written..written + take], seg.addr);
            written += take;
        }
        written as u32 + 1
    }
}
