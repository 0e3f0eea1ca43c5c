//! Verbatim descriptor tables, for tests that need chains no well-behaved driver builds:
//! loops, `next` pointing out of the table, INDIRECT mixed with NEXT, nested tables.

use virtio_queue::desc::split::Descriptor;

use super::Queue;
use crate::frontend::error::{FrontendError, Result};

/// Where a raw descriptor's `next` field points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawNext {
    /// The descriptor at this index of the same `submit_table` slice (so loops are possible).
    Entry(usize),
    /// This exact descriptor-table index, whatever it holds.
    Index(u16),
}

/// One descriptor written exactly as given (flags included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    /// Raw VRING_DESC_F_* bits; nothing is added or removed.
    pub flags: u16,
    pub next: RawNext,
}

impl Queue {
    /// Writes `descs` verbatim into free descriptor slots and publishes `descs[0]` as the head
    /// (no kick). The slots stay reserved until the head completes, whatever the `next` links
    /// say, so a backend that drops the chain only costs those slots.
    pub fn submit_table(&mut self, descs: &[RawDesc]) -> Result<u16> {
        if descs.is_empty() {
            return Err(FrontendError::EmptyChain);
        }
        if descs.len() > self.free.len() {
            return Err(FrontendError::RingFull {
                needed: descs.len(),
                free: self.free.len(),
            });
        }
        let n = self.free.len();
        let ids = &self.free[n - descs.len()..];
        let id_of = |k: usize| ids[ids.len() - 1 - k];
        for (k, d) in descs.iter().enumerate() {
            let next = match d.next {
                RawNext::Entry(j) if j < descs.len() => id_of(j),
                RawNext::Entry(_) => {
                    return Err(FrontendError::InvalidGeometry(
                        "raw next entry out of the slice",
                    ))
                }
                RawNext::Index(i) => i,
            };
            let desc = Descriptor::new(d.addr, d.len, d.flags, next);
            self.mem.write_obj(self.layout.desc_addr(id_of(k)), desc)?;
        }
        // Shadow links follow slice order, so freeing releases exactly these slots.
        for k in 0..descs.len() {
            let following = if k + 1 < descs.len() { id_of(k + 1) } else { 0 };
            self.next[usize::from(id_of(k))] = following;
        }
        let head = id_of(0);
        self.free.truncate(n - descs.len());
        self.chain_len[usize::from(head)] = descs.len() as u16;
        self.publish(head)
    }
}
