//! Loading a persistent store's exception table from its COW: every area read in pieces and
//! each entry checked (in range, not on metadata, no duplicate old or new chunk) before use.

use super::{io_err, Persistent, READ_PIECE};
use crate::storage::block::device::BlockDevice;
use crate::storage::error::CowError;
use crate::storage::snap::exmap::ExMap;
use crate::storage::snap::format::{CHUNK_NUMBER_LIMIT, ENTRY_BYTES};
use crate::storage::units::ChunkIndex;

impl Persistent {
    /// Reads the table from area 0 up to its end (the first entry with new chunk 0, or an area
    /// that is not full) into `table` and `map`, and sets `next_free` after it.
    pub(super) fn read_table(&mut self, dev: &dyn BlockDevice) -> Result<(), CowError> {
        let geo = self.geo;
        let chunks = self.cow_chunks();
        // Data indices in use (data index → old chunk), to refuse duplicate targets.
        let mut seen = ExMap::new();
        let mut max_new = None;
        for area in 0.. {
            let chunk = geo.area_chunk(area);
            if chunk >= chunks {
                return Err(CowError::AreaPastEnd {
                    cow: self.name.clone(),
                    area,
                    chunk,
                });
            }
            let base = geo.cs.start(ChunkIndex(chunk));
            let area_bytes = geo.cs.bytes();
            let mut piece = vec![0u8; READ_PIECE.min(area_bytes) as usize];
            let mut in_area = 0u64;
            let mut offset = 0;
            'area: while offset < area_bytes {
                dev.read_at(&mut piece, base + offset)
                    .map_err(io_err(&self.name))?;
                offset += piece.len() as u64;
                for e in piece.chunks_exact(ENTRY_BYTES as usize) {
                    let old = u64::from_le_bytes(e[0..8].try_into().unwrap_or([0; 8]));
                    let new = u64::from_le_bytes(e[8..16].try_into().unwrap_or([0; 8]));
                    if new == 0 {
                        break 'area;
                    }
                    let d = self.check_entry(old, new, chunks, &seen)?;
                    seen.insert(d, old);
                    max_new = max_new.max(Some(new));
                    self.table.push(old, d);
                    self.map.insert(old, d);
                    in_area += 1;
                }
            }
            if in_area < geo.epa() {
                break;
            }
        }
        if let Some(m) = max_new {
            self.next_free = m + 1;
            if self.next_free % geo.stride() == 1 {
                self.next_free += 1;
            }
        }
        Ok(())
    }

    /// Checks one loaded entry; returns the data index of its COW chunk.
    fn check_entry(&self, old: u64, new: u64, chunks: u64, seen: &ExMap) -> Result<u64, CowError> {
        let index = self.table.len();
        let cow = self.name.clone();
        if old >= CHUNK_NUMBER_LIMIT || new >= CHUNK_NUMBER_LIMIT {
            let value = old.max(new);
            return Err(CowError::ChunkNumberTooLarge { cow, index, value });
        }
        if new >= chunks {
            return Err(CowError::EntryPastEnd {
                cow,
                index,
                old,
                new,
                chunks,
            });
        }
        if self.geo.is_metadata(new) {
            return Err(CowError::EntryOnMetadata {
                cow,
                index,
                old,
                new,
            });
        }
        if self.map.contains(old) {
            return Err(CowError::DuplicateEntry { cow, index, old });
        }
        let d = self.geo.data_index(new);
        if seen.contains(d) {
            return Err(CowError::DuplicateTarget { cow, index, new });
        }
        Ok(d)
    }
}
