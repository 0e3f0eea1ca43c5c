//! Walks a split-ring descriptor chain from its head index: for every chain the queue pops
//! (see `queue/ring.rs`) and for heads resubmitted after a restart. Same rules as
//! virtio-queue's iterator: NEXT links within the table, one level of INDIRECT, at most as many
//! descriptors as the table has; a bad link ends the chain (the request parser then refuses
//! it). A descriptor of the ring's own table that cannot be read is a fault of the ring, not
//! of one request: [`DescTableOutside`].

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const DESC_BYTES: u64 = 16;

#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc<M: GuestMemoryBackend + Bytes<GuestAddress>>(
    mem: &M,
    table: GuestAddress,
    i: u16,
) -> Option<Desc> {
    let mut raw = [0u8; DESC_BYTES as usize];
    let at = table.checked_add(u64::from(i) * DESC_BYTES)?;
    mem.read_slice(&mut raw, at).ok()?;
    let le = |r: std::ops::Range<usize>| -> u64 {
        raw[r]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
    };
    Some(Desc {
        addr: le(0..8),
        len: le(8..12) as u32,
        flags: le(12..14) as u16,
        next: le(14..16) as u16,
    })
}

/// Descriptor `index` of the ring's table lies outside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("descriptor {index} of the table at {table:#x} lies outside guest memory")]
pub struct DescTableOutside {
    pub table: u64,
    pub index: u16,
}

/// The `(address, length, device-writable)` of each buffer in the chain starting at `head` of
/// the descriptor table at `table` with `size` entries, in `out` (cleared first).
pub fn walk<M: GuestMemoryBackend + Bytes<GuestAddress>>(
    mem: &M,
    table: GuestAddress,
    size: u16,
    head: u16,
    out: &mut Vec<(GuestAddress, u32, bool)>,
) -> Result<(), DescTableOutside> {
    out.clear();
    let ring_table = table;
    let (mut table, mut size, mut i) = (table, size, head);
    let mut indirect = false;
    let mut budget = u32::from(size);
    while i < size && budget > 0 {
        budget -= 1;
        let Some(d) = read_desc(mem, table, i) else {
            if indirect {
                return Ok(());
            }
            return Err(DescTableOutside {
                table: ring_table.0,
                index: i,
            });
        };
        if d.flags & F_INDIRECT != 0 {
            let entries = u64::from(d.len) / DESC_BYTES;
            if indirect || d.len == 0 || u64::from(d.len) % DESC_BYTES != 0 || entries > 65535 {
                return Ok(());
            }
            indirect = true;
            table = GuestAddress(d.addr);
            size = entries as u16;
            budget = u32::from(size);
            i = 0;
            continue;
        }
        out.push((GuestAddress(d.addr), d.len, d.flags & F_WRITE != 0));
        if d.flags & F_NEXT == 0 {
            return Ok(());
        }
        i = d.next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueT;
    use vm_memory::GuestMemoryMmap;

    const NEXT: u16 = F_NEXT;
    const WRITE: u16 = F_WRITE;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap()
    }

    fn popped(
        mem: &GuestMemoryMmap<()>,
        vq: &MockSplitQueue<GuestMemoryMmap<()>>,
    ) -> Vec<(GuestAddress, u32, bool)> {
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(mem).unwrap();
        chain
            .map(|d| (d.addr(), d.len(), d.is_write_only()))
            .collect()
    }

    #[test]
    fn matches_virtio_queue_for_a_direct_chain() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x1000, 16, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x2000, 4096, NEXT | WRITE, 2)),
            RawDescriptor::from(SplitDescriptor::new(0x3000, 1, WRITE, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut out = Vec::new();
        walk(&m, vq.desc_table_addr(), 16, 0, &mut out).unwrap();
        assert_eq!(out, popped(&m, &vq));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn follows_one_indirect_table() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let table = GuestAddress(0x8000);
        let inner = [
            SplitDescriptor::new(0x1000, 16, NEXT, 1),
            SplitDescriptor::new(0x2000, 512, NEXT, 2),
            SplitDescriptor::new(0x3000, 1, WRITE, 0),
        ];
        for (i, d) in inner.iter().enumerate() {
            m.write_obj(*d, table.unchecked_add(16 * i as u64)).unwrap();
        }
        let head = [RawDescriptor::from(SplitDescriptor::new(
            0x8000, 48, F_INDIRECT, 0,
        ))];
        vq.add_desc_chains(&head, 0).unwrap();
        let mut out = Vec::new();
        walk(&m, vq.desc_table_addr(), 16, 0, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[1], (GuestAddress(0x2000), 512, false));
        assert_eq!(out, popped(&m, &vq));
    }

    #[test]
    fn loops_and_bad_links_end_the_chain() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 4);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x1000, 16, NEXT, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x2000, 16, NEXT, 0)),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut out = Vec::new();
        walk(&m, vq.desc_table_addr(), 4, 0, &mut out).unwrap();
        assert_eq!(out.len(), 4, "a loop stops after the table's size");
        walk(&m, vq.desc_table_addr(), 4, 9, &mut out).unwrap();
        assert!(out.is_empty(), "head outside the table");
    }

    #[test]
    fn a_table_outside_guest_memory_is_a_ring_fault_an_indirect_one_ends_the_chain() {
        let m = mem();
        let mut out = Vec::new();
        // The last 16 bytes of memory hold descriptor 0; descriptor 1 is past the end.
        let table = GuestAddress(0x100000 - 16);
        m.write_obj(SplitDescriptor::new(0x1000, 16, NEXT, 1), table)
            .unwrap();
        let err = walk(&m, table, 4, 0, &mut out).unwrap_err();
        assert_eq!(
            err,
            DescTableOutside {
                table: table.0,
                index: 1
            }
        );
        assert!(walk(&m, GuestAddress(1 << 40), 4, 0, &mut out).is_err());
        // An indirect table outside memory only ends the chain.
        let table = GuestAddress(0x8000);
        m.write_obj(SplitDescriptor::new(1 << 40, 48, F_INDIRECT, 0), table)
            .unwrap();
        assert_eq!(walk(&m, table, 4, 0, &mut out), Ok(()));
        assert!(out.is_empty());
    }
}
