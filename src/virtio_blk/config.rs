//! The virtio-blk config space and feature set the daemon offers for one disk.

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Byte offset of the `wce` (writeback) field inside `struct virtio_blk_config`.
pub const WCE_OFFSET: u32 = 32;
/// Bytes of config space exposed: up to and including `write_zeroes_may_unmap` + padding.
pub const CONFIG_LEN: usize = 60;
/// Largest data segment the driver may use (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest discard / write-zeroes range in sectors (as QEMU: INT_MAX rounded, in sectors).
pub const MAX_DISCARD_SECTORS: u32 = (i32::MAX as u32) >> 9;
/// Most discard / write-zeroes segments in one request.
pub const MAX_DISCARD_SEG: u32 = 32;

/// The per-request limits the device advertises (`seg_max`, `size_max`) and request parsing
/// enforces: together they bound the data of one request (`seg_max * size_max` bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most data segments (descriptors other than the header and the status) in a request.
    pub seg_max: u32,
    /// Most bytes in one data segment.
    pub size_max: u32,
}

impl RequestLimits {
    /// The limits of a device whose queues have at most `queue_size` entries: every data
    /// segment of a request fits in the ring beside its header and status.
    pub fn for_queue_size(queue_size: u16) -> RequestLimits {
        RequestLimits {
            seg_max: u32::from(queue_size).saturating_sub(2).max(1),
            size_max: SIZE_MAX,
        }
    }
}

/// What the guest is told about a disk, and the limits request parsing enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskGeometry {
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Logical block size in bytes (512 or 4096).
    pub logical_block_size: u32,
    pub readonly: bool,
    /// Whether discard and write-zeroes are offered.
    pub discard: bool,
    /// At most 20 bytes; longer serials are truncated.
    pub serial: Vec<u8>,
}

impl DiskGeometry {
    /// Sectors per logical block.
    pub fn block_sectors(&self) -> u64 {
        u64::from(self.logical_block_size / 512)
    }
}

/// Config space for one export, built once per device.
#[derive(Debug, Clone)]
pub struct BlkConfig {
    pub geometry: DiskGeometry,
    pub num_queues: u16,
    pub queue_size: u16,
}

impl BlkConfig {
    /// The per-request limits advertised in the config space.
    pub fn limits(&self) -> RequestLimits {
        RequestLimits::for_queue_size(self.queue_size)
    }

    /// `seg_max`: data descriptors per request (queue size minus header and status).
    pub fn seg_max(&self) -> u32 {
        self.limits().seg_max
    }

    /// The virtio feature bits this export offers.
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_TOPOLOGY)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_CONFIG_WCE)
            | (1 << VIRTIO_BLK_F_MQ);
        if self.geometry.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else if self.geometry.discard {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    /// Serializes `struct virtio_blk_config` (little-endian) with the given writeback flag.
    pub fn to_bytes(&self, writeback: bool) -> [u8; CONFIG_LEN] {
        let g = &self.geometry;
        let mut b = [0u8; CONFIG_LEN];
        let align = (g.logical_block_size / 512).max(1);
        b[0..8].copy_from_slice(&g.capacity_sectors.to_le_bytes());
        b[8..12].copy_from_slice(&self.limits().size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max().to_le_bytes());
        // geometry (16..20) left zero: not offered.
        b[20..24].copy_from_slice(&g.logical_block_size.to_le_bytes());
        b[24] = 0; // physical_block_exp
        b[25] = 0; // alignment_offset
        b[26..28].copy_from_slice(&(align as u16).to_le_bytes()); // min_io_size
        b[28..32].copy_from_slice(&0u32.to_le_bytes()); // opt_io_size
        b[WCE_OFFSET as usize] = u8::from(writeback);
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        b[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        b[44..48].copy_from_slice(&align.to_le_bytes());
        b[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
        b[52..56].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
        b[56] = 1; // write_zeroes_may_unmap
        b
    }

    /// Exactly `size` bytes of config space from `offset`, zero past the end.
    pub fn read(&self, writeback: bool, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes(writeback);
        (offset as usize..(offset as usize).saturating_add(size as usize))
            .map(|i| bytes.get(i).copied().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(readonly: bool) -> BlkConfig {
        BlkConfig {
            geometry: DiskGeometry {
                capacity_sectors: 2048,
                logical_block_size: 4096,
                readonly,
                discard: true,
                serial: b"x".to_vec(),
            },
            num_queues: 2,
            queue_size: 256,
        }
    }

    #[test]
    fn config_read_returns_exactly_the_requested_size() {
        let c = cfg(false);
        assert_eq!(c.read(true, 0, 57).len(), 57);
        assert_eq!(c.read(true, 50, 100).len(), 100);
        assert_eq!(c.read(true, 0, 8), 2048u64.to_le_bytes());
        assert_eq!(c.read(true, WCE_OFFSET, 1), [1]);
        assert_eq!(c.read(false, WCE_OFFSET, 1), [0]);
        assert_eq!(c.read(true, 34, 2), 2u16.to_le_bytes());
        assert_eq!(c.read(true, 20, 4), 4096u32.to_le_bytes());
    }

    #[test]
    fn readonly_offers_ro_and_no_discard() {
        let ro = cfg(true).features();
        assert_ne!(ro & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(ro & (1 << VIRTIO_BLK_F_DISCARD), 0);
        let rw = cfg(false).features();
        assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    }
}
