//! The available side of a queue's split ring, read here rather than through virtio-queue's
//! `pop_descriptor_chain`, which logs and returns nothing on a broken ring (an avail index
//! more than the queue size ahead, a ring outside guest memory), every time it is called: the
//! queue thread then spun on it, logging a million lines a second. Here every index, head and
//! ring address is checked, and the first fault breaks the queue: it is logged once and the
//! queue pops nothing more until the frontend starts the ring again. Other queues, other
//! exports and new connections are unaffected.

use std::sync::atomic::Ordering;

use log::warn;
use vhost_user_backend::VringState;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic};

use super::{Mem, QueueWorker};
use crate::vhost::chain::DescTableOutside;

/// Bytes before the first element of the available ring (flags, idx).
const AVAIL_HEADER: u64 = 4;

/// A fault of the ring itself, not of one request in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingFault {
    #[error("the available ring at {0:#x} lies outside guest memory")]
    AvailOutside(u64),
    #[error("the available index {avail} is more than the queue size {size} ahead of {next}")]
    AvailAhead { avail: u16, next: u16, size: u16 },
    #[error("the available ring names head {head}, past the queue size {size}")]
    HeadOutOfRange { head: u16, size: u16 },
    #[error(transparent)]
    DescTable(#[from] DescTableOutside),
    #[error("the used ring at {0:#x} lies outside guest memory")]
    UsedOutside(u64),
    #[error("guest memory shrank under its mapping (the frontend truncated its file)")]
    MemoryShrank,
}

type State = VringState<GuestMemoryAtomic<Mem>>;

impl QueueWorker {
    /// How many chains the driver made available past `next_avail` (0 while the ring is not
    /// started).
    pub(super) fn available(&self, state: &State, mem: &Mem) -> Result<u16, RingFault> {
        let q = state.get_queue();
        if !q.ready() || q.avail_ring() == 0 {
            return Ok(0);
        }
        let idx_at = GuestAddress(q.avail_ring()).checked_add(2);
        let avail = idx_at
            .and_then(|a| mem.load::<u16>(a, Ordering::Acquire).ok())
            .map(u16::from_le)
            .ok_or(RingFault::AvailOutside(q.avail_ring()))?;
        let (next, size) = (q.next_avail(), q.size());
        let ahead = avail.wrapping_sub(next);
        if ahead > size {
            return Err(RingFault::AvailAhead { avail, next, size });
        }
        Ok(ahead)
    }

    /// Takes the next head from the available ring (the caller checked with `available` that
    /// there is one) and walks its chain into `chain_buf`.
    pub(super) fn pop_chain(&mut self, state: &mut State, mem: &Mem) -> Result<u16, RingFault> {
        let q = state.get_queue();
        let (next, size) = (q.next_avail(), q.size());
        let slot = u64::from(next % size.max(1)) * 2;
        let head = GuestAddress(q.avail_ring())
            .checked_add(AVAIL_HEADER + slot)
            .and_then(|a| mem.load::<u16>(a, Ordering::Acquire).ok())
            .map(u16::from_le)
            .ok_or(RingFault::AvailOutside(q.avail_ring()))?;
        if head >= size {
            return Err(RingFault::HeadOutOfRange { head, size });
        }
        let table = GuestAddress(q.desc_table());
        crate::vhost::chain::walk(mem, table, size, head, &mut self.chain_buf)?;
        state.get_queue_mut().set_next_avail(next.wrapping_add(1));
        Ok(head)
    }

    /// Stops the queue for good (until the ring is started again): logged once.
    pub(super) fn break_ring(&mut self, fault: RingFault) {
        // A ring read from pages the frontend truncated reads zeroes and looks broken in some
        // other way: the lost memory is the cause to report.
        let fault = if self.guard.faulted() {
            RingFault::MemoryShrank
        } else {
            fault
        };
        if self.broken.is_none() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            warn!(
                "queue {}: the frontend's ring is broken, the queue stops until the frontend \
                 starts it again: {fault}",
                self.index
            );
            self.broken = Some(fault);
        }
    }

    /// After work that touched guest memory: when the connection's memory lost pages under
    /// its mapping, the queue stops and the frontend is disconnected.
    pub(super) fn check_memory(&mut self) {
        if self.guard.faulted() {
            self.break_ring(RingFault::MemoryShrank);
            self.guard.disconnect();
        }
    }

    /// Whether the queue is stopped by a broken ring.
    pub fn broken(&self) -> bool {
        self.broken.is_some()
    }
}
