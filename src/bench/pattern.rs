//! The verify pattern and a fast PRNG (splitmix64), both allocation-free.
//!
//! Every 512-byte sector of a verified write holds:
//! ```text
//!  0: byte offset of the sector on the disk (le64)   8: write generation (le32)
//! 12: magic "SNPB"                                  16: 62 pseudo-random le64 words
//! ```
//! seeded from (offset, generation), so a stale, misplaced or torn sector never matches.

/// Sector size of the pattern.
pub const SECTOR: usize = 512;
const MAGIC: [u8; 4] = *b"SNPB";

/// splitmix64: tiny, fast, and good enough to pick offsets and fill patterns.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0), by multiply-high.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

fn seed(offset: u64, gen: u32) -> u64 {
    offset.rotate_left(17) ^ (u64::from(gen) << 32 | u64::from(gen)) ^ 0x5eed
}

/// Fills `buf` (a multiple of 512 bytes, written at disk byte `offset`) with generation `gen`.
pub fn fill(buf: &mut [u8], offset: u64, gen: u32) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR).enumerate() {
        let off = offset + (i * SECTOR) as u64;
        sector[0..8].copy_from_slice(&off.to_le_bytes());
        sector[8..12].copy_from_slice(&gen.to_le_bytes());
        sector[12..16].copy_from_slice(&MAGIC);
        let mut rng = Rng::new(seed(off, gen));
        for w in sector[16..].chunks_exact_mut(8) {
            w.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
    }
}

/// Whether one 512-byte `sector` read from disk byte `offset` holds generation `gen`.
pub fn sector_matches(sector: &[u8], offset: u64, gen: u32) -> bool {
    if sector.len() != SECTOR
        || sector[0..8] != offset.to_le_bytes()
        || sector[8..12] != gen.to_le_bytes()
        || sector[12..16] != MAGIC
    {
        return false;
    }
    let mut rng = Rng::new(seed(offset, gen));
    sector[16..]
        .chunks_exact(8)
        .all(|w| w == rng.next_u64().to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_sectors_verify_only_with_their_offset_and_generation() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 8192, 7);
        for (i, s) in buf.chunks(SECTOR).enumerate() {
            let off = 8192 + (i * SECTOR) as u64;
            assert!(sector_matches(s, off, 7));
            assert!(!sector_matches(s, off, 8));
            assert!(!sector_matches(s, off + 512, 7));
        }
        buf[4000] ^= 1;
        assert!(!sector_matches(&buf[3584..], 8192 + 3584, 7));
        assert!(!sector_matches(&[0u8; 512], 0, 0));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
