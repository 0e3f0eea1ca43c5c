//! The persistent store's on-disk layout (dm-snap-persistent.c): the header sector and where
//! the exception areas and data chunks sit in the COW for a chunk size.

use crate::storage::units::{ChunkSize, SECTOR_BYTES};

pub const SNAP_MAGIC: u32 = 0x7041_6e53;
pub const DISK_VERSION: u32 = 1;
pub const ENTRY_BYTES: u64 = 16;
pub const CHUNK_NUMBER_LIMIT: u64 = 1 << 56;

/// The on-disk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub valid: bool,
    pub version: u32,
    pub chunk_size: u32,
}

impl Header {
    /// The header sector (512 bytes, zero after the 16 header bytes).
    pub fn to_sector(self) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR_BYTES as usize];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&u32::from(self.valid).to_le_bytes());
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        b
    }

    pub fn parse(b: &[u8; 16]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            magic: word(0),
            valid: word(4) != 0,
            version: word(8),
            chunk_size: word(12),
        }
    }
}

/// Exception-area geometry for one chunk size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub cs: ChunkSize,
}

impl Geometry {
    /// Entries per area.
    pub fn epa(self) -> u64 {
        self.cs.sectors() * 32
    }

    pub fn stride(self) -> u64 {
        self.epa() + 1
    }

    /// The COW chunk holding area `a`.
    pub fn area_chunk(self, a: u64) -> u64 {
        1u64.saturating_add(a.saturating_mul(self.stride()))
    }

    /// True for header and area chunks.
    pub fn is_metadata(self, chunk: u64) -> bool {
        chunk == 0 || chunk % self.stride() == 1
    }

    /// The position of data chunk `chunk` among the data chunks (0 for chunk 2). `chunk` must not
    /// be a metadata chunk.
    pub fn data_index(self, chunk: u64) -> u64 {
        chunk - 2 - (chunk - 1) / self.stride()
    }

    /// The COW chunk of data index `d`: the inverse of [`Geometry::data_index`].
    pub fn data_chunk(self, d: u64) -> u64 {
        d + d / self.epa() + 2
    }
}
