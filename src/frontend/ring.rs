//! Split-virtqueue layout (virtio 1.x, 2.7) and the event-index arithmetic, free of I/O.
//!
//! ```text
//!  desc:  size x { addr: le64, len: le32, flags: le16, next: le16 }        align 16
//!  avail: flags: le16, idx: le16, ring[size]: le16, used_event: le16      align 2
//!  used:  flags: le16, idx: le16, ring[size]: { id: le32, len: le32 },    align 4
//!         avail_event: le16
//! ```
//! All three live in one allocation: desc, then avail, then used (4-aligned).

use vm_memory::GuestAddress;

/// Size of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Size of one used-ring element.
pub const USED_ELEM_SIZE: u64 = 8;

/// Where the parts of one split ring of `size` entries live in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
}

impl RingLayout {
    /// Bytes needed for a ring of `size` entries laid out by [`RingLayout::at`].
    pub fn bytes(size: u16) -> u64 {
        let n = u64::from(size);
        let avail_end = n * DESC_SIZE + 6 + 2 * n;
        avail_end.div_ceil(4) * 4 + 6 + USED_ELEM_SIZE * n
    }

    /// Lays out a ring of `size` entries starting at `base` (which must be 16-aligned).
    pub fn at(base: GuestAddress, size: u16) -> Self {
        let n = u64::from(size);
        let avail = base.0 + n * DESC_SIZE;
        let used = (avail + 6 + 2 * n).div_ceil(4) * 4;
        Self {
            size,
            desc: base,
            avail: GuestAddress(avail),
            used: GuestAddress(used),
        }
    }

    /// Descriptor `i` of the table.
    pub fn desc_addr(&self, i: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + u64::from(i) * DESC_SIZE)
    }

    pub fn avail_flags(&self) -> GuestAddress {
        self.avail
    }

    pub fn avail_idx(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 2)
    }

    /// Avail-ring slot that free-running index `idx` lands in.
    pub fn avail_slot(&self, idx: u16) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(idx % self.size))
    }

    /// `used_event`: the driver asks to be notified when used idx passes this value.
    pub fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size))
    }

    pub fn used_flags(&self) -> GuestAddress {
        self.used
    }

    pub fn used_idx(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 2)
    }

    /// Used-ring element that free-running index `idx` lands in.
    pub fn used_elem(&self, idx: u16) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + USED_ELEM_SIZE * u64::from(idx % self.size))
    }

    /// `avail_event`: the device asks to be kicked when avail idx passes this value.
    pub fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + USED_ELEM_SIZE * u64::from(self.size))
    }
}

/// `vring_need_event` of the virtio spec: having moved an index from `old` to `new`, must the
/// other side be notified, given that it asked for a notification once the index passes
/// `event`? True exactly when `event` lies in the half-open window `[old, new)`, modulo 2^16.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Checks a queue size: a power of two from 2 to 32768.
pub fn valid_queue_size(size: u16) -> bool {
    size >= 2 && size.is_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_256_entry_ring_matches_the_spec() {
        let l = RingLayout::at(GuestAddress(0x1000), 256);
        assert_eq!(l.avail.0, 0x1000 + 4096);
        assert_eq!(l.used_event().0, l.avail.0 + 4 + 512);
        // avail is 6 + 512 = 518 bytes, used starts at the next 4-aligned address.
        assert_eq!(l.used.0, (l.avail.0 + 518).div_ceil(4) * 4);
        assert_eq!(l.avail_event().0, l.used.0 + 4 + 8 * 256);
        assert_eq!(RingLayout::bytes(256), l.avail_event().0 + 2 - 0x1000);
    }

    #[test]
    fn slots_wrap_modulo_ring_size() {
        let l = RingLayout::at(GuestAddress(0), 4);
        assert_eq!(l.avail_slot(5), l.avail_slot(1));
        assert_eq!(l.used_elem(u16::MAX), l.used_elem(3));
        assert_eq!(l.used_elem(0).0, l.used.0 + 4);
    }

    #[test]
    fn odd_sizes_keep_used_ring_aligned() {
        for size in [2u16, 4, 8, 32768] {
            let l = RingLayout::at(GuestAddress(0), size);
            assert_eq!(l.used.0 % 4, 0);
            assert!(l.used.0 >= l.used_event().0 + 2);
        }
    }

    #[test]
    fn need_event_fires_only_when_event_is_crossed() {
        // Moving 10 -> 12 crosses events 10 and 11, not 12 or 9.
        assert!(vring_need_event(10, 12, 10));
        assert!(vring_need_event(11, 12, 10));
        assert!(!vring_need_event(12, 12, 10));
        assert!(!vring_need_event(9, 12, 10));
        // No movement never notifies.
        assert!(!vring_need_event(5, 5, 5));
    }

    #[test]
    fn need_event_handles_wraparound() {
        assert!(vring_need_event(u16::MAX, 1, u16::MAX - 1));
        assert!(vring_need_event(0, 1, u16::MAX - 1));
        assert!(!vring_need_event(1, 1, u16::MAX - 1));
        assert!(!vring_need_event(u16::MAX - 2, 1, u16::MAX - 1));
    }

    #[test]
    fn need_event_matches_a_brute_force_model() {
        for old in [0u16, 100, 65500] {
            for step in 0u16..40 {
                let new = old.wrapping_add(step);
                for back in 0u16..50 {
                    let event = new.wrapping_sub(back);
                    // Crossed iff event is one of old, old+1, ..., new-1.
                    let crossed = (0..step).any(|k| old.wrapping_add(k) == event);
                    assert_eq!(vring_need_event(event, new, old), crossed);
                }
            }
        }
    }

    #[test]
    fn queue_size_must_be_a_power_of_two() {
        assert!(valid_queue_size(256));
        assert!(valid_queue_size(32768));
        assert!(!valid_queue_size(0));
        assert!(!valid_queue_size(1));
        assert!(!valid_queue_size(100));
    }
}
