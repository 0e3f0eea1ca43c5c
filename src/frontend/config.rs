//! virtio-blk feature bits the frontend asks for, and the device config space it reads.
//!
//! Config space layout (virtio 1.2, 5.2.4), little-endian, the first 60 bytes:
//! ```text
//!  0 capacity u64        8 size_max u32       12 seg_max u32      16 geometry (4 bytes)
//! 20 blk_size u32       24 physical_block_exp u8  25 alignment_offset u8  26 min_io_size u16
//! 28 opt_io_size u32    32 writeback u8      33 unused u8         34 num_queues u16
//! 36 max_discard_sectors u32   40 max_discard_seg u32   44 discard_sector_alignment u32
//! 48 max_write_zeroes_sectors u32   52 max_write_zeroes_seg u32   56 write_zeroes_may_unmap u8
//! 57 unused [u8; 3]
//! ```

use vhost::vhost_user::VhostUserVirtioFeatures;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Bytes of config space read with GET_CONFIG (through `write_zeroes_may_unmap` + padding).
pub const CONFIG_SIZE: usize = 60;
/// Offset of the `writeback` byte (CONFIG_WCE).
pub const WRITEBACK_OFFSET: u32 = 32;

/// Bit mask of one feature number.
pub const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// Features requested by default; the negotiated set is this intersected with the offer.
pub const DEFAULT_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_BLK_F_SIZE_MAX)
    | bit(VIRTIO_BLK_F_SEG_MAX)
    | bit(VIRTIO_BLK_F_GEOMETRY)
    | bit(VIRTIO_BLK_F_RO)
    | bit(VIRTIO_BLK_F_BLK_SIZE)
    | bit(VIRTIO_BLK_F_FLUSH)
    | bit(VIRTIO_BLK_F_TOPOLOGY)
    | bit(VIRTIO_BLK_F_CONFIG_WCE)
    | bit(VIRTIO_BLK_F_MQ)
    | bit(VIRTIO_BLK_F_DISCARD)
    | bit(VIRTIO_BLK_F_WRITE_ZEROES)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// The parsed virtio-blk config space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Size in 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub physical_block_exp: u8,
    pub alignment_offset: u8,
    pub min_io_size: u16,
    pub opt_io_size: u32,
    /// 1 = writeback cache, 0 = writethrough (meaningful with CONFIG_WCE).
    pub writeback: u8,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// Parses the first [`CONFIG_SIZE`] bytes of config space; missing bytes read as zero.
    pub fn parse(raw: &[u8]) -> Self {
        let mut b = [0u8; CONFIG_SIZE];
        let n = raw.len().min(CONFIG_SIZE);
        b[..n].copy_from_slice(&raw[..n]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Self {
            capacity: u64_at(0),
            size_max: u32_at(8),
            seg_max: u32_at(12),
            blk_size: u32_at(20),
            physical_block_exp: b[24],
            alignment_offset: b[25],
            min_io_size: u16_at(26),
            opt_io_size: u32_at(28),
            writeback: b[32],
            num_queues: u16_at(34),
            max_discard_sectors: u32_at(36),
            max_discard_seg: u32_at(40),
            discard_sector_alignment: u32_at(44),
            max_write_zeroes_sectors: u32_at(48),
            max_write_zeroes_seg: u32_at(52),
            write_zeroes_may_unmap: b[56],
        }
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity.saturating_mul(512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_little_endian_fields_at_spec_offsets() {
        let mut raw = [0u8; CONFIG_SIZE];
        raw[0..8].copy_from_slice(&0x1_0000_0002u64.to_le_bytes());
        raw[12..16].copy_from_slice(&126u32.to_le_bytes());
        raw[20..24].copy_from_slice(&4096u32.to_le_bytes());
        raw[32] = 1;
        raw[34..36].copy_from_slice(&2u16.to_le_bytes());
        raw[36..40].copy_from_slice(&32768u32.to_le_bytes());
        raw[56] = 1;
        let c = BlkConfig::parse(&raw);
        assert_eq!(c.capacity, 0x1_0000_0002);
        assert_eq!(c.seg_max, 126);
        assert_eq!(c.blk_size, 4096);
        assert_eq!(c.writeback, 1);
        assert_eq!(c.num_queues, 2);
        assert_eq!(c.max_discard_sectors, 32768);
        assert_eq!(c.write_zeroes_may_unmap, 1);
    }

    #[test]
    fn parse_of_a_short_config_zero_fills() {
        let c = BlkConfig::parse(&8u64.to_le_bytes());
        assert_eq!(c.capacity, 8);
        assert_eq!(c.num_queues, 0);
    }

    #[test]
    fn default_features_include_protocol_features_bit() {
        assert_ne!(DEFAULT_FEATURES & (1 << 30), 0);
        assert_ne!(DEFAULT_FEATURES & (1 << 32), 0);
    }
}
