//! Exception stores: where a snapshot keeps its origin-chunk → COW-chunk table. The trait is
//! pure bookkeeping, called under the origin lock; the metadata I/O it plans (`MetaIo`) runs
//! outside the lock. `Transient` (N) lives here; `Persistent` (P, PO) in persistent.rs.

use std::fmt;
use std::io;
use std::ops::Range;

use super::exmap::ExMap;
use crate::storage::block::device::BlockDevice;
use crate::storage::units::{binary_units, ChunkIndex, ChunkSize, SECTOR_BYTES};

/// The store type letters of a snapshot table line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `P`: persistent.
    Persistent,
    /// `PO`: persistent; a full COW on the snapshot path sets `Overflow` instead of invalidating.
    PersistentOverflow,
    /// `N`: transient, lost on restart.
    Transient,
}

impl StoreKind {
    pub fn letters(self) -> &'static str {
        match self {
            StoreKind::Persistent => "P",
            StoreKind::PersistentOverflow => "PO",
            StoreKind::Transient => "N",
        }
    }

    /// Parses `P`, `PO` or `N` (any case).
    pub fn parse(s: &str) -> Option<StoreKind> {
        match s.to_ascii_uppercase().as_str() {
            "P" => Some(StoreKind::Persistent),
            "PO" => Some(StoreKind::PersistentOverflow),
            "N" => Some(StoreKind::Transient),
            _ => None,
        }
    }

    pub fn is_persistent(self) -> bool {
        self != StoreKind::Transient
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letters())
    }
}

/// Metadata I/O planned under the lock, run outside it: zero, flush, write, flush.
#[derive(Debug, Default)]
pub struct MetaIo {
    /// Zero these byte ranges (offset, len): exception areas the table is about to run into.
    pub zero: Vec<(u64, u64)>,
    /// Flush before the writes, so the copied data and the zeroed areas are durable first.
    pub flush_first: bool,
    /// Write these bytes at these offsets: parts of exception areas, or the header.
    pub write: Vec<(u64, Vec<u8>)>,
    /// Flush the COW after, making the metadata durable.
    pub flush_after: bool,
}

impl MetaIo {
    pub fn is_empty(&self) -> bool {
        !self.flush_first && self.zero.is_empty() && self.write.is_empty() && !self.flush_after
    }

    pub fn run(&self, dev: &dyn BlockDevice) -> io::Result<()> {
        // Areas are zeroed before the flush, so they are durable before any entry that makes
        // the table run into them: a torn commit ends the table at a zero, never in old bytes.
        for &(offset, len) in &self.zero {
            dev.write_zeroes(offset, len)?;
        }
        if self.flush_first {
            dev.flush()?;
        }
        for (offset, bytes) in &self.write {
            dev.write_at(bytes, *offset)?;
        }
        if self.flush_after {
            dev.flush()?;
        }
        Ok(())
    }
}

/// The numbers of a status line: `<allocated>/<total> <metadata>`, in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub allocated_sectors: u64,
    pub total_sectors: u64,
    pub metadata_sectors: u64,
}

impl Usage {
    /// The same numbers for people: `64.0 KiB of 8.0 MiB used (1%), 8.0 KiB metadata`.
    pub fn describe(&self) -> String {
        let b = |sectors: u64| binary_units(sectors * SECTOR_BYTES);
        let pct = if self.total_sectors == 0 {
            0.0
        } else {
            self.allocated_sectors as f64 * 100.0 / self.total_sectors as f64
        };
        format!(
            "{} of {} used ({pct:.0}%), {} metadata",
            b(self.allocated_sectors),
            b(self.total_sectors),
            b(self.metadata_sectors)
        )
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}",
            self.allocated_sectors, self.total_sectors, self.metadata_sectors
        )
    }
}

/// Exceptions consecutive in both old and new chunk: `len` chunks from `old` and `new`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub old: ChunkIndex,
    pub new: ChunkIndex,
    pub len: u64,
}

/// An exception table. Every method is bookkeeping only (no I/O), so it may run under a lock.
pub trait ExceptionStore: Send {
    fn kind(&self) -> StoreKind;
    fn chunk_size(&self) -> ChunkSize;
    /// The COW chunk holding a committed exception for `old`.
    fn lookup(&self, old: ChunkIndex) -> Option<ChunkIndex>;
    fn exception_count(&self) -> u64;
    /// Appends the old chunks in `[from, to)` that have a committed exception, as ranges in
    /// order; ranges that touch are joined (also with the last one already in `out`).
    fn exception_ranges(&self, from: ChunkIndex, to: ChunkIndex, out: &mut Vec<Range<u64>>);
    /// Allocates a COW chunk for a new exception; `None` when the COW is full.
    fn prepare(&mut self) -> Option<ChunkIndex>;
    /// Allocates `n` consecutive COW chunks and returns the first, or allocates nothing:
    /// `None` when they do not fit or would not be consecutive (a metadata area between).
    fn prepare_run(&mut self, n: u64) -> Option<ChunkIndex> {
        if n == 1 {
            self.prepare()
        } else {
            None
        }
    }
    /// How many entries one commit may carry.
    fn commit_room(&self) -> usize;
    /// Plans the metadata writes committing `batch` (at most `commit_room()` entries, in as
    /// many exception areas as they fill).
    fn plan_commit(&self, batch: &[(ChunkIndex, ChunkIndex)]) -> MetaIo;
    /// Records a batch whose `plan_commit` I/O succeeded.
    fn complete_commit(&mut self, batch: &[(ChunkIndex, ChunkIndex)]);
    /// Plans marking the store invalid on disk.
    fn plan_invalidate(&self) -> MetaIo;
    fn usage(&self) -> Usage;
    /// The newest run of the table (merge order); `None` when empty or not mergeable.
    fn last_run(&self) -> Option<Run>;
    /// Plans clearing the last `n` entries (a merged run).
    fn plan_merge_clear(&self, n: u64) -> MetaIo;
    fn complete_merge_clear(&mut self, n: u64);
}

/// The transient store (N): no header, no metadata, data from COW chunk 0.
#[derive(Debug)]
pub struct Transient {
    cs: ChunkSize,
    cow_sectors: u64,
    next_free_sectors: u64,
    /// Old chunk → COW chunk. Allocation is sequential, so a sequential rewrite is one run.
    map: ExMap,
}

impl Transient {
    pub fn new(cs: ChunkSize, cow_sectors: u64) -> Transient {
        Transient {
            cs,
            cow_sectors,
            next_free_sectors: 0,
            map: ExMap::new(),
        }
    }
}

impl ExceptionStore for Transient {
    fn kind(&self) -> StoreKind {
        StoreKind::Transient
    }

    fn chunk_size(&self) -> ChunkSize {
        self.cs
    }

    fn lookup(&self, old: ChunkIndex) -> Option<ChunkIndex> {
        self.map.get(old.0).map(ChunkIndex)
    }

    fn exception_count(&self) -> u64 {
        self.map.len()
    }

    fn exception_ranges(&self, from: ChunkIndex, to: ChunkIndex, out: &mut Vec<Range<u64>>) {
        self.map.old_ranges(from.0, to.0, out);
    }

    fn prepare(&mut self) -> Option<ChunkIndex> {
        let cs = self.cs.sectors();
        if self.cow_sectors < self.next_free_sectors.saturating_add(cs) {
            return None;
        }
        let chunk = ChunkIndex(self.next_free_sectors / cs);
        self.next_free_sectors += cs;
        Some(chunk)
    }

    fn prepare_run(&mut self, n: u64) -> Option<ChunkIndex> {
        let sectors = n.checked_mul(self.cs.sectors())?;
        let end = self.next_free_sectors.checked_add(sectors)?;
        if n == 0 || self.cow_sectors < end {
            return None;
        }
        let chunk = ChunkIndex(self.next_free_sectors / self.cs.sectors());
        self.next_free_sectors = end;
        Some(chunk)
    }

    fn commit_room(&self) -> usize {
        usize::MAX
    }

    fn plan_commit(&self, _batch: &[(ChunkIndex, ChunkIndex)]) -> MetaIo {
        MetaIo::default()
    }

    fn complete_commit(&mut self, batch: &[(ChunkIndex, ChunkIndex)]) {
        for (old, new) in batch {
            self.map.insert(old.0, new.0);
        }
    }

    fn plan_invalidate(&self) -> MetaIo {
        MetaIo::default()
    }

    fn usage(&self) -> Usage {
        Usage {
            allocated_sectors: self.next_free_sectors,
            total_sectors: self.cow_sectors,
            metadata_sectors: 0,
        }
    }

    fn last_run(&self) -> Option<Run> {
        None
    }

    fn plan_merge_clear(&self, _n: u64) -> MetaIo {
        MetaIo::default()
    }

    fn complete_merge_clear(&mut self, _n: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_status_after_one_4k_exception_is_8_of_2048() {
        let mut t = Transient::new(ChunkSize::new(8, "c").unwrap(), 2048);
        let c = t.prepare().unwrap();
        assert_eq!(c, ChunkIndex(0));
        t.complete_commit(&[(ChunkIndex(5), c)]);
        assert_eq!(t.usage().to_string(), "8/2048 0");
        assert_eq!(t.lookup(ChunkIndex(5)), Some(ChunkIndex(0)));
    }

    #[test]
    fn transient_is_full_when_no_chunk_fits() {
        let mut t = Transient::new(ChunkSize::new(8, "c").unwrap(), 20);
        assert!(t.prepare().is_some());
        assert!(t.prepare().is_some());
        assert!(t.prepare().is_none(), "16 + 8 > 20");
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in [
            StoreKind::Persistent,
            StoreKind::PersistentOverflow,
            StoreKind::Transient,
        ] {
            assert_eq!(StoreKind::parse(k.letters()), Some(k));
        }
        assert_eq!(StoreKind::parse("x"), None);
    }
}
