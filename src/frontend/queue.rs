//! Driver side of one split virtqueue: submit descriptor chains, kick, reap and wait.
//!
//! One `Queue` is owned by one thread; nothing here locks. The hot path allocates nothing:
//! free descriptors live on a preallocated stack, chains are remembered in a shadow `next`
//! array, and indirect tables are preallocated, one per descriptor head.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestAddress, Le64};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use super::error::{FrontendError, Result};
use super::memory::{GuestMem, Slab};
use super::ring::{valid_queue_size, vring_need_event, RingLayout, DESC_SIZE};

mod raw;

pub use raw::{RawDesc, RawNext};

/// Longest chain that can be submitted as one indirect descriptor.
pub const MAX_INDIRECT: usize = 64;

/// One buffer of a descriptor chain. `addr` is a raw guest address, so tests may point it
/// anywhere, including outside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VRING_DESC_F_WRITE).
    pub writable: bool,
}

impl Segment {
    /// A buffer the device reads.
    pub fn to_device(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr: addr.0,
            len,
            writable: false,
        }
    }

    /// A buffer the device writes.
    pub fn from_device(addr: GuestAddress, len: u32) -> Self {
        Self {
            addr: addr.0,
            len,
            writable: true,
        }
    }
}

/// A chain the backend has put in the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index, as returned by [`Queue::submit`].
    pub head: u16,
    /// Bytes the backend says it wrote into the chain.
    pub len: u32,
}

/// The driver state of one virtqueue.
pub struct Queue {
    index: u16,
    mem: Arc<GuestMem>,
    layout: RingLayout,
    event_idx: bool,
    timeout: Duration,
    kick: EventFd,
    call: EventFd,
    /// Stack of free descriptor indexes.
    free: Vec<u16>,
    /// Shadow of each descriptor's `next` field.
    next: Vec<u16>,
    /// Per head: descriptors its chain occupies; 0 when the head is not in flight.
    chain_len: Vec<u16>,
    /// One indirect table of MAX_INDIRECT entries per head, if indirect was negotiated.
    indirect: Option<Slab>,
    avail_idx: u16,
    /// Avail index at the last kick decision.
    kicked_idx: u16,
    last_used: u16,
    /// Used index as last read from the ring.
    seen_used: u16,
    in_flight: u16,
}

impl Queue {
    /// Allocates the ring (and indirect tables) of queue `index` in `mem`.
    pub fn new(
        index: u16,
        mem: Arc<GuestMem>,
        size: u16,
        event_idx: bool,
        indirect: bool,
        timeout: Duration,
    ) -> Result<Self> {
        if !valid_queue_size(size) {
            return Err(FrontendError::InvalidQueueSize(size));
        }
        let base = mem.alloc(RingLayout::bytes(size), 4096)?;
        let layout = RingLayout::at(base, size);
        let indirect = if indirect {
            let table = MAX_INDIRECT as u64 * DESC_SIZE;
            Some(Slab::new(&mem, u32::from(size), table, 16)?)
        } else {
            None
        };
        let eventfd = || EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map_err(FrontendError::EventFd);
        Ok(Self {
            index,
            layout,
            event_idx,
            timeout,
            kick: eventfd()?,
            call: eventfd()?,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            chain_len: vec![0; usize::from(size)],
            indirect,
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            seen_used: 0,
            in_flight: 0,
            mem,
        })
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    pub fn size(&self) -> u16 {
        self.layout.size
    }

    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    pub fn memory(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    pub fn has_indirect(&self) -> bool {
        self.indirect.is_some()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub(crate) fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    pub(crate) fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Places `chain` in the descriptor table (or, with `indirect`, in this head's indirect
    /// table) and publishes it in the avail ring. Does not kick. Returns the head index.
    pub fn submit(&mut self, chain: &[Segment], indirect: bool) -> Result<u16> {
        if chain.is_empty() {
            return Err(FrontendError::EmptyChain);
        }
        let head = if indirect {
            self.place_indirect(chain)?
        } else {
            self.place_direct(chain)?
        };
        self.publish(head)
    }

    /// Puts a placed chain's head in the avail ring and advances avail idx.
    fn publish(&mut self, head: u16) -> Result<u16> {
        self.mem.store(
            self.layout.avail_slot(self.avail_idx),
            head.to_le(),
            Ordering::Relaxed,
        )?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.store(
            self.layout.avail_idx(),
            self.avail_idx.to_le(),
            Ordering::Release,
        )?;
        self.in_flight += 1;
        Ok(head)
    }

    fn place_direct(&mut self, chain: &[Segment]) -> Result<u16> {
        if chain.len() > self.free.len() {
            return Err(FrontendError::RingFull {
                needed: chain.len(),
                free: self.free.len(),
            });
        }
        let n = self.free.len();
        // The chain takes the top `chain.len()` entries of the stack, last one first.
        let ids = &self.free[n - chain.len()..];
        for (k, seg) in chain.iter().enumerate() {
            let id = ids[ids.len() - 1 - k];
            let next = if k + 1 < chain.len() {
                ids[ids.len() - 2 - k]
            } else {
                0
            };
            let mut flags = if seg.writable { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < chain.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let desc = Descriptor::new(seg.addr, seg.len, flags as u16, next);
            self.mem.write_obj(self.layout.desc_addr(id), desc)?;
            self.next[usize::from(id)] = next;
        }
        let head = ids[ids.len() - 1];
        self.free.truncate(n - chain.len());
        self.chain_len[usize::from(head)] = chain.len() as u16;
        Ok(head)
    }

    fn place_indirect(&mut self, chain: &[Segment]) -> Result<u16> {
        let tables = self
            .indirect
            .ok_or(FrontendError::IndirectUnavailable(self.index))?;
        if chain.len() > MAX_INDIRECT {
            return Err(FrontendError::IndirectTooLong {
                len: chain.len(),
                max: MAX_INDIRECT,
            });
        }
        let head = *self
            .free
            .last()
            .ok_or(FrontendError::RingFull { needed: 1, free: 0 })?;
        let table = tables.slot(u32::from(head));
        for (k, seg) in chain.iter().enumerate() {
            let mut flags = if seg.writable { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < chain.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let desc = Descriptor::new(seg.addr, seg.len, flags as u16, (k + 1) as u16);
            self.mem
                .write_obj(GuestAddress(table.0 + k as u64 * DESC_SIZE), desc)?;
        }
        let len = (chain.len() as u64 * DESC_SIZE) as u32;
        let desc = Descriptor::new(table.0, len, VRING_DESC_F_INDIRECT as u16, 0);
        self.mem.write_obj(self.layout.desc_addr(head), desc)?;
        self.free.pop();
        self.chain_len[usize::from(head)] = 1;
        Ok(head)
    }

    /// Notifies the backend of chains published since the last kick, unless it asked not to
    /// be (avail_event with EVENT_IDX, VRING_USED_F_NO_NOTIFY otherwise). Returns whether the
    /// eventfd was written.
    pub fn kick(&mut self) -> Result<bool> {
        if self.avail_idx == self.kicked_idx {
            return Ok(false);
        }
        // The avail idx store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let event = u16::from_le(
                self.mem
                    .load(self.layout.avail_event(), Ordering::Acquire)?,
            );
            vring_need_event(event, self.avail_idx, self.kicked_idx)
        } else {
            let flags = u16::from_le(self.mem.load(self.layout.used_flags(), Ordering::Acquire)?);
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        self.kicked_idx = self.avail_idx;
        if need {
            self.force_kick()?;
        }
        Ok(need)
    }

    /// Writes the kick eventfd unconditionally.
    pub fn force_kick(&self) -> Result<()> {
        self.kick.write(1).map_err(|source| FrontendError::Kick {
            queue: self.index,
            source,
        })
    }

    /// Whether the used ring holds entries not yet popped. Validates the used index.
    pub fn has_used(&mut self) -> Result<bool> {
        if self.seen_used == self.last_used {
            let idx = u16::from_le(self.mem.load(self.layout.used_idx(), Ordering::Acquire)?);
            let advanced = idx.wrapping_sub(self.last_used);
            if advanced > self.in_flight {
                return Err(FrontendError::UsedOverrun {
                    queue: self.index,
                    advanced,
                    in_flight: self.in_flight,
                });
            }
            self.seen_used = idx;
        }
        Ok(self.seen_used != self.last_used)
    }

    /// Pops one completion, if any, and frees its descriptors.
    pub fn pop_used(&mut self) -> Result<Option<Completion>> {
        if !self.has_used()? {
            return Ok(None);
        }
        let raw = u64::from(
            self.mem
                .read_obj::<Le64>(self.layout.used_elem(self.last_used))?,
        );
        let (id, len) = (raw as u32, (raw >> 32) as u32);
        let chain = self.chain_len.get(id as usize).copied().unwrap_or(0);
        if chain == 0 {
            return Err(FrontendError::BadUsedId {
                queue: self.index,
                id,
            });
        }
        let head = id as u16;
        self.chain_len[usize::from(head)] = 0;
        let mut cur = head;
        for _ in 0..chain {
            self.free.push(cur);
            cur = self.next[usize::from(cur)];
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.in_flight -= 1;
        Ok(Some(Completion { head, len }))
    }

    /// Pops every available completion into `out` (which is not cleared). Returns how many.
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> Result<usize> {
        let before = out.len();
        while let Some(c) = self.pop_used()? {
            out.push(c);
        }
        Ok(out.len() - before)
    }

    /// Blocks until the used ring holds at least one entry, or the queue's timeout passes.
    /// Re-arms `used_event` (EVENT_IDX) for the next completion before sleeping.
    pub fn wait(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if self.has_used()? {
                return Ok(());
            }
            if self.event_idx {
                self.mem.store(
                    self.layout.used_event(),
                    self.last_used.to_le(),
                    Ordering::Release,
                )?;
                // The used_event store must be visible before we re-read the used idx.
                fence(Ordering::SeqCst);
                if self.has_used()? {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FrontendError::Timeout {
                    queue: self.index,
                    timeout: self.timeout,
                });
            }
            if self.poll_call(left)? {
                self.drain_call()?;
            }
        }
    }

    /// poll() on the call eventfd; true when it is readable.
    fn poll_call(&self, timeout: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd array of length 1 that outlives the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(FrontendError::Wait {
                queue: self.index,
                source: err,
            });
        }
        Ok(rc > 0)
    }

    /// Clears the call eventfd after poll() reported it readable.
    fn drain_call(&self) -> Result<()> {
        match self.call.read() {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(source) => Err(FrontendError::Wait {
                queue: self.index,
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
