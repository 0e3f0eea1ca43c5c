//! Units of the snapshot engine as newtypes: sectors, chunk indices and a validated chunk size.

use std::fmt;

use super::error::CowError;

/// Bytes in a sector.
pub const SECTOR_BYTES: u64 = 512;
/// Largest chunk size in sectors (1 GiB).
pub const MAX_CHUNK_SECTORS: u64 = 1 << 21;
/// Chunk size a persistent store uses when none is requested and none is on disk (16 KiB).
pub const DEFAULT_CHUNK_SECTORS: u64 = 32;

/// A count or position in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sector(pub u64);

impl Sector {
    /// The byte offset of this sector.
    pub fn bytes(self) -> u64 {
        self.0 * SECTOR_BYTES
    }
}

impl fmt::Display for Sector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A chunk number: in the origin (old chunk) or in the COW device (new chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkIndex(pub u64);

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A chunk size: a power of two of at most 2^21 sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize(u64);

impl ChunkSize {
    /// Validates a chunk size in sectors for the COW named `cow`. Zero is an error here: the
    /// callers decide what zero means for their store type.
    pub fn new(sectors: u64, cow: &str) -> Result<ChunkSize, CowError> {
        if sectors == 0 || !sectors.is_power_of_two() {
            return Err(CowError::ChunkNotPowerOfTwo {
                cow: cow.to_owned(),
                value: sectors,
            });
        }
        if sectors > MAX_CHUNK_SECTORS {
            return Err(CowError::ChunkTooHigh {
                cow: cow.to_owned(),
                value: sectors,
            });
        }
        Ok(ChunkSize(sectors))
    }

    /// Also checks that the chunk is a multiple of the logical block sizes (bytes) of the origin
    /// and of the COW.
    pub fn for_devices(
        sectors: u64,
        cow: &str,
        origin_block: u32,
        cow_block: u32,
    ) -> Result<ChunkSize, CowError> {
        let cs = ChunkSize::new(sectors, cow)?;
        for (which, block) in [("origin", origin_block), ("COW", cow_block)] {
            if block == 0 || cs.bytes() % u64::from(block) != 0 {
                return Err(CowError::ChunkNotBlockMultiple {
                    cow: cow.to_owned(),
                    value: sectors,
                    block,
                    which,
                });
            }
        }
        Ok(cs)
    }

    pub fn sectors(self) -> u64 {
        self.0
    }

    pub fn bytes(self) -> u64 {
        self.0 * SECTOR_BYTES
    }

    /// The chunk holding a byte offset.
    pub fn chunk_of(self, byte: u64) -> ChunkIndex {
        ChunkIndex(byte / self.bytes())
    }

    /// The byte offset where a chunk starts (saturating: chunk numbers come from disk).
    pub fn start(self, chunk: ChunkIndex) -> u64 {
        chunk.0.saturating_mul(self.bytes())
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A byte count for people, in binary units: `512 B`, `1.5 KiB`, `16.0 GiB`.
pub fn binary_units(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_65_is_not_a_power_of_two() {
        let e = ChunkSize::new(65, "cow0").unwrap_err().to_string();
        assert!(e.contains("Chunk size is not a power of 2"), "{e}");
        assert!(e.contains("65") && e.contains("cow0"), "{e}");
    }

    #[test]
    fn chunk_size_2_pow_22_is_too_high() {
        let e = ChunkSize::new(1 << 22, "cow0").unwrap_err().to_string();
        assert!(e.contains("Chunk size is too high"), "{e}");
        assert!(e.contains("4194304") && e.contains("cow0"), "{e}");
        assert!(ChunkSize::new(1 << 21, "c").is_ok());
        assert!(ChunkSize::new(1, "c").is_ok());
    }

    #[test]
    fn chunk_size_must_cover_logical_blocks() {
        assert!(ChunkSize::for_devices(8, "c", 4096, 512).is_ok());
        let e = ChunkSize::for_devices(4, "c", 512, 4096)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4096") && e.contains("COW"), "{e}");
    }

    #[test]
    fn chunk_math() {
        let cs = ChunkSize::new(8, "c").unwrap();
        assert_eq!(cs.bytes(), 4096);
        assert_eq!(cs.chunk_of(8191), ChunkIndex(1));
        assert_eq!(cs.start(ChunkIndex(3)), 12288);
        assert_eq!(Sector(3).bytes(), 1536);
    }
}
