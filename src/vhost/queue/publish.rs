//! How a queue's completions reach the used ring: at once when the frontend keeps an inflight
//! region (which records the heads still in flight), in pop order when it does not; and, at a
//! ring's start, recovery from the region after a restart (resubmitting what was in flight).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{info, warn};
use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryAtomic};

use super::{Mem, QueueWorker, RingFault, Vring};
use crate::vhost::chain;
use crate::vhost::tracker::{QueueLog, Region};
use crate::virtio_blk::request::parse;

/// Where a queue stands with inflight tracking.
pub(super) enum Tracking {
    /// No region: used entries are published in pop order.
    Off,
    /// A region was given; the queue recovers from it when its ring starts.
    Pending(Arc<Region>),
    On(QueueLog),
}

impl QueueWorker {
    /// Tracks this queue's in-flight heads in `region` from the next ring start on.
    pub fn track_inflight(&mut self, region: Arc<Region>) {
        self.tracking = Tracking::Pending(region);
    }

    /// The ring was stopped (and drained): the next start recovers from the region again.
    pub fn stopped(&mut self) {
        self.broken = None;
        if let Tracking::On(log) = &self.tracking {
            self.tracking = Tracking::Pending(log.region().clone());
        }
    }

    /// At the first kick of a started ring with a region: makes the region consistent with the
    /// ring and resubmits the requests an earlier instance left in flight (after `kill -9`).
    pub(super) fn recover(
        &mut self,
        mem: &Arc<Mem>,
        state: &mut VringState<GuestMemoryAtomic<Mem>>,
    ) {
        let Tracking::Pending(region) = std::mem::replace(&mut self.tracking, Tracking::Off) else {
            return;
        };
        let q = state.get_queue();
        let (size, table) = (q.size(), GuestAddress(q.desc_table()));
        let Some(mut log) = u16::try_from(self.index)
            .ok()
            .and_then(|i| region.queue(i, size))
        else {
            warn!(
                "queue {}: the inflight region has no room for a ring of {size} entries; \
                 completing in order",
                self.index
            );
            return;
        };
        let used = match q.used_idx(&**mem, Ordering::Acquire) {
            Ok(u) => u.0,
            Err(e) => {
                warn!("queue {}: cannot read the used index: {e}", self.index);
                return;
            }
        };
        let rec = log.recover(used);
        if let Some(next) = rec.next_avail {
            state.get_queue_mut().set_next_avail(next);
        }
        self.tracking = Tracking::On(log);
        if !rec.resubmit.is_empty() {
            info!(
                "queue {}: resubmitting {} requests left in flight by the previous daemon",
                self.index,
                rec.resubmit.len()
            );
        }
        for head in rec.resubmit {
            if let Err(fault) = chain::walk(&**mem, table, size, head, &mut self.chain_buf) {
                self.break_ring(fault.into());
                return;
            }
            let descs = self.chain_buf.iter().copied();
            match parse(
                descs,
                &**mem,
                &self.disk.geometry,
                &self.limits,
                &mut self.parse_buf,
            ) {
                Ok(req) => self.start(head, req, mem, state),
                Err(rej) => self.reject(head, rej, mem, state),
            }
        }
    }

    /// Completes `head`. With inflight tracking, at once: the region records which heads are
    /// still in flight. Without it, used entries are published in the order the chains were
    /// popped, so the used index always counts a prefix of the available ring: when the daemon
    /// is killed, the frontend restarts the ring from the used index and the restarted daemon
    /// sees exactly the requests that never completed, none twice.
    pub(super) fn add_used(
        &mut self,
        state: &mut VringState<GuestMemoryAtomic<Mem>>,
        head: u16,
        used: u32,
    ) {
        if let Tracking::On(log) = &self.tracking {
            log.before_publish(head);
            let added = add_to_ring(state, head, used);
            log.after_publish(head, state.get_queue().next_used());
            self.pending_signal = true;
            if let Err(fault) = added {
                self.break_ring(fault);
            }
            return;
        }
        let i = usize::from(head);
        if !self.popped.get(i).copied().unwrap_or(false) {
            // Not in the pop order (cannot happen): publish as is.
            return self.publish(state, head, used);
        }
        self.done[i] = Some(used);
        while let Some(&front) = self.order.front() {
            let Some(used) = self.done[usize::from(front)].take() else {
                break;
            };
            self.order.pop_front();
            self.popped[usize::from(front)] = false;
            self.publish(state, front, used);
        }
    }

    pub(super) fn publish(
        &mut self,
        state: &mut VringState<GuestMemoryAtomic<Mem>>,
        head: u16,
        used: u32,
    ) {
        if let Err(fault) = add_to_ring(state, head, used) {
            self.break_ring(fault);
        }
        self.pending_signal = true;
    }

    pub(super) fn signal(&mut self, vring: &Vring) {
        if !std::mem::take(&mut self.pending_signal) {
            return;
        }
        if vring.needs_notification().unwrap_or(true) {
            if let Err(e) = vring.signal_used_queue() {
                if self.log.allow() {
                    warn!("queue {}: cannot signal the guest: {e}", self.index);
                }
            }
        }
    }
}

/// Adds `head`'s used entry (and moves the used index). Heads are checked against the queue
/// size when popped, so a failure means the used ring is outside guest memory: the ring is
/// broken.
fn add_to_ring(
    state: &mut VringState<GuestMemoryAtomic<Mem>>,
    head: u16,
    used: u32,
) -> Result<(), RingFault> {
    state
        .add_used(head, used)
        .map_err(|_| RingFault::UsedOutside(state.get_queue().used_ring()))
}
