//! The persistent exception store (P, PO), byte-compatible with Linux dm-snap-persistent.c.
//!
//! ```text
//! COW chunk:  0        1        2 .. 1+epa    1+stride   ...
//!           +--------+--------+-------------+----------+----
//!           | header | area 0 | data chunks | area 1   | data ...
//!           +--------+--------+-------------+----------+----
//! header (le32 each): magic 0x70416e53 "SnAp" | valid | version 1 | chunk_size (sectors)
//! area:  epa = cs*32 entries of {le64 old_chunk, le64 new_chunk}; the table ends at the first
//!        entry with new_chunk == 0. stride = epa + 1; area a is at chunk 1 + a*stride.
//! ```
//! Entry j of the table sits in area j / epa at slot j % epa. Before the last slot of an area is
//! committed, the next area is zeroed, so the table always ends inside the COW.
//!
//! In memory, COW chunks are kept as data indices (data chunks counted without the header and
//! areas, see [`Geometry::data_index`]), so exceptions allocated in order stay one run across
//! area boundaries: a sequentially rewritten origin costs a few runs, whatever its size.

use std::sync::Arc;

use log::warn;

use super::exlog::ExLog;
use super::exmap::ExMap;
use super::format::ENTRY_BYTES;
pub use super::format::{Geometry, Header, DISK_VERSION, SNAP_MAGIC};
use super::store::{ExceptionStore, MetaIo, Run, StoreKind, Usage};
use super::zero_ahead::ZeroAhead;
use crate::storage::block::device::BlockDevice;
use crate::storage::error::CowError;
use crate::storage::units::{ChunkIndex, ChunkSize, DEFAULT_CHUNK_SECTORS, SECTOR_BYTES};

/// Areas are read in pieces of this many bytes, whatever the chunk size.
const READ_PIECE: u64 = 64 * 1024;
/// The most entries one commit carries (64 KiB of table, across as many areas as they fill):
/// more than the default copy cap, so one commit takes every copy ready at that moment.
const COMMIT_ENTRIES: usize = 4096;

/// A loaded persistent store.
#[derive(Debug)]
pub struct Persistent {
    name: String,
    kind: StoreKind,
    geo: Geometry,
    cow_sectors: u64,
    /// Committed entries in table order: (old chunk, data index).
    table: ExLog,
    /// Old chunk → data index.
    map: ExMap,
    next_free: u64,
    /// Keeps the COW written past `next_free` (a COW file on a disk file system).
    ahead: Option<ZeroAhead>,
}

/// The result of opening a COW: the store and whether its header says valid.
#[derive(Debug)]
pub struct Loaded {
    pub store: Persistent,
    pub header: Header,
    /// The header was written just now (the COW was blank).
    pub created: bool,
}

fn io_err(name: &str) -> impl Fn(std::io::Error) -> CowError + '_ {
    move |source| CowError::Io {
        cow: name.to_owned(),
        source,
    }
}

impl Persistent {
    /// Opens the store on `dev`. `requested` is the table's chunk size in sectors (0: the one on
    /// disk, or 32 for a blank COW). A blank COW (magic 0) is initialised when `create` is set,
    /// otherwise it is an error.
    pub fn open(
        dev: &dyn BlockDevice,
        name: &str,
        kind: StoreKind,
        requested: u64,
        origin_block: u32,
        create: bool,
    ) -> Result<Loaded, CowError> {
        let cow_sectors = dev.size() / SECTOR_BYTES;
        if cow_sectors == 0 {
            return Err(CowError::CowTooSmall {
                cow: name.to_owned(),
                sectors: 0,
                chunk_size: requested,
            });
        }
        let mut raw = [0u8; 16];
        dev.read_at(&mut raw, 0).map_err(io_err(name))?;
        let header = Header::parse(&raw);
        let block = dev.logical_block_size();
        if header.magic == 0 {
            if !create {
                return Err(CowError::NoHeader {
                    cow: name.to_owned(),
                });
            }
            let sectors = if requested == 0 {
                DEFAULT_CHUNK_SECTORS
            } else {
                requested
            };
            let cs = ChunkSize::for_devices(sectors, name, origin_block, block)?;
            return Persistent::create(dev, name, kind, cs, cow_sectors);
        }
        if header.magic != SNAP_MAGIC {
            return Err(CowError::BadMagic {
                cow: name.to_owned(),
                magic: header.magic,
            });
        }
        let cs = ChunkSize::for_devices(u64::from(header.chunk_size), name, origin_block, block)?;
        if requested != 0 && requested != cs.sectors() {
            warn!(
                "{name}: chunk size {requested} requested, using {} found on disk",
                cs.sectors()
            );
        }
        if header.version != DISK_VERSION {
            return Err(CowError::BadVersion {
                cow: name.to_owned(),
                version: header.version,
            });
        }
        let mut store = Persistent::empty(name, kind, cs, cow_sectors);
        if header.valid {
            store.read_table(dev)?;
        }
        Ok(Loaded {
            store,
            header,
            created: false,
        })
    }

    fn empty(name: &str, kind: StoreKind, cs: ChunkSize, cow_sectors: u64) -> Persistent {
        Persistent {
            name: name.to_owned(),
            kind,
            geo: Geometry { cs },
            cow_sectors,
            table: ExLog::new(),
            map: ExMap::new(),
            next_free: 2,
            ahead: None,
        }
    }

    fn create(
        dev: &dyn BlockDevice,
        name: &str,
        kind: StoreKind,
        cs: ChunkSize,
        cow_sectors: u64,
    ) -> Result<Loaded, CowError> {
        if cow_sectors < 2 * cs.sectors() {
            return Err(CowError::CowTooSmall {
                cow: name.to_owned(),
                sectors: cow_sectors,
                chunk_size: cs.sectors(),
            });
        }
        let header = Header {
            magic: SNAP_MAGIC,
            valid: true,
            version: DISK_VERSION,
            chunk_size: cs.sectors() as u32,
        };
        let e = io_err(name);
        // Zero the header chunk and area 0 before the header makes the store exist.
        dev.write_zeroes(0, 2 * cs.bytes()).map_err(&e)?;
        dev.flush().map_err(&e)?;
        dev.write_at(&header.to_sector(), 0).map_err(&e)?;
        dev.flush().map_err(&e)?;
        Ok(Loaded {
            store: Persistent::empty(name, kind, cs, cow_sectors),
            header,
            created: true,
        })
    }

    /// Starts zero-ahead on `dev`, the COW this store was opened on, where it helps.
    pub fn zero_ahead(mut self, dev: Arc<dyn BlockDevice>) -> Persistent {
        let allocated = self.next_free.saturating_mul(self.geo.cs.bytes());
        self.ahead = ZeroAhead::start(dev, &self.name, allocated);
        self
    }

    /// Tells zero-ahead that the chunks below `next_free` are in use.
    fn allocated(&self) {
        if let Some(z) = &self.ahead {
            z.allocated(self.next_free.saturating_mul(self.geo.cs.bytes()));
        }
    }

    fn cow_chunks(&self) -> u64 {
        self.cow_sectors / self.geo.cs.sectors()
    }

    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The area the next entry goes to, and how many entries it holds.
    pub fn current_area(&self) -> (u64, u64) {
        let l = self.table.len();
        (l / self.geo.epa(), l % self.geo.epa())
    }

    pub fn next_free(&self) -> u64 {
        self.next_free
    }

    /// Committed entries in table order: (old chunk, COW chunk).
    pub fn entries(&self) -> Vec<(u64, u64)> {
        self.table
            .iter()
            .map(|(old, d)| (old, self.geo.data_chunk(d)))
            .collect()
    }

    /// Entry `j` of the table: (old chunk, COW chunk).
    fn entry(&self, j: u64) -> Option<(u64, u64)> {
        self.table
            .get(j)
            .map(|(old, d)| (old, self.geo.data_chunk(d)))
    }

    /// The bytes of the sectors of area `area` holding slots `from..to`, entry values taken from
    /// `slot` (None = zero), and their COW byte offset.
    fn area_sectors(
        &self,
        area: u64,
        from: u64,
        to: u64,
        slot: impl Fn(u64) -> Option<(u64, u64)>,
    ) -> (u64, Vec<u8>) {
        let per_sector = SECTOR_BYTES / ENTRY_BYTES;
        let first = from / per_sector;
        let end = to.div_ceil(per_sector);
        let mut bytes = vec![0u8; ((end - first) * SECTOR_BYTES) as usize];
        for (k, e) in bytes.chunks_exact_mut(ENTRY_BYTES as usize).enumerate() {
            if let Some((old, new)) = slot(first * per_sector + k as u64) {
                e[0..8].copy_from_slice(&old.to_le_bytes());
                e[8..16].copy_from_slice(&new.to_le_bytes());
            }
        }
        let offset =
            self.geo.cs.start(ChunkIndex(self.geo.area_chunk(area))) + first * SECTOR_BYTES;
        (offset, bytes)
    }
}

impl ExceptionStore for Persistent {
    fn kind(&self) -> StoreKind {
        self.kind
    }

    fn chunk_size(&self) -> ChunkSize {
        self.geo.cs
    }

    fn lookup(&self, old: ChunkIndex) -> Option<ChunkIndex> {
        self.map
            .get(old.0)
            .map(|d| ChunkIndex(self.geo.data_chunk(d)))
    }

    fn exception_count(&self) -> u64 {
        self.table.len()
    }

    fn exception_ranges(
        &self,
        from: ChunkIndex,
        to: ChunkIndex,
        out: &mut Vec<std::ops::Range<u64>>,
    ) {
        self.map.old_ranges(from.0, to.0, out);
    }

    fn prepare(&mut self) -> Option<ChunkIndex> {
        let cs = self.geo.cs.sectors();
        if self.cow_sectors < self.next_free.saturating_add(1).saturating_mul(cs) {
            return None;
        }
        let chunk = ChunkIndex(self.next_free);
        self.next_free += 1;
        if self.next_free % self.geo.stride() == 1 {
            self.next_free += 1;
        }
        self.allocated();
        Some(chunk)
    }

    fn prepare_run(&mut self, n: u64) -> Option<ChunkIndex> {
        let first = self.next_free;
        let end = first.checked_add(n)?;
        let stride = self.geo.stride();
        if n == 0
            || self.cow_sectors < end.saturating_mul(self.geo.cs.sectors())
            || (first + 1..end).any(|c| c % stride == 1)
        {
            return None;
        }
        self.next_free = end;
        if self.next_free % stride == 1 {
            self.next_free += 1;
        }
        self.allocated();
        Some(ChunkIndex(first))
    }

    fn commit_room(&self) -> usize {
        COMMIT_ENTRIES
    }

    fn plan_commit(&self, batch: &[(ChunkIndex, ChunkIndex)]) -> MetaIo {
        let epa = self.geo.epa();
        let (mut area, mut pos) = self.current_area();
        let mut io = MetaIo {
            flush_first: true,
            flush_after: true,
            ..MetaIo::default()
        };
        let mut rest = batch;
        while !rest.is_empty() {
            let (here, later) = rest.split_at(rest.len().min((epa - pos) as usize));
            let base = area * epa;
            io.write
                .push(self.area_sectors(area, pos, pos + here.len() as u64, |j| {
                    if j < pos {
                        self.entry(base + j)
                    } else {
                        here.get((j - pos) as usize).map(|(o, n)| (o.0, n.0))
                    }
                }));
            if pos + here.len() as u64 == epa {
                // Filling an area: the next one is zeroed (and flushed) before this entry can
                // make the table run into it.
                let next = self.geo.area_chunk(area + 1);
                io.zero.push((
                    next.saturating_mul(self.geo.cs.bytes()),
                    self.geo.cs.bytes(),
                ));
            }
            area += 1;
            pos = 0;
            rest = later;
        }
        io
    }

    fn complete_commit(&mut self, batch: &[(ChunkIndex, ChunkIndex)]) {
        if let Some(z) = &self.ahead {
            z.committed(batch.len() as u64 * self.geo.cs.bytes());
        }
        for (old, new) in batch {
            let d = self.geo.data_index(new.0);
            self.table.push(old.0, d);
            self.map.insert(old.0, d);
        }
    }

    fn plan_invalidate(&self) -> MetaIo {
        let header = Header {
            magic: SNAP_MAGIC,
            valid: false,
            version: DISK_VERSION,
            chunk_size: self.geo.cs.sectors() as u32,
        };
        MetaIo {
            write: vec![(0, header.to_sector())],
            flush_after: true,
            ..MetaIo::default()
        }
    }

    fn usage(&self) -> Usage {
        let cs = self.geo.cs.sectors();
        let (area, _) = self.current_area();
        Usage {
            allocated_sectors: self.next_free.saturating_mul(cs),
            total_sectors: self.cow_sectors,
            metadata_sectors: (area + 2).saturating_mul(cs),
        }
    }

    fn last_run(&self) -> Option<Run> {
        let l = self.table.len();
        let (old, d) = self.table.get(l.checked_sub(1)?)?;
        let new = self.geo.data_chunk(d);
        let epa = self.geo.epa();
        // Within the table's last area, and within one area of data chunks: consecutive data
        // indices there are consecutive COW chunks.
        let limit = (l - (l - 1) / epa * epa).min(d % epa + 1);
        let mut len = 1;
        while len < limit
            && old.checked_sub(len).zip(d.checked_sub(len)) == self.table.get(l - 1 - len)
        {
            len += 1;
        }
        Some(Run {
            old: ChunkIndex(old - (len - 1)),
            new: ChunkIndex(new - (len - 1)),
            len,
        })
    }

    fn plan_merge_clear(&self, n: u64) -> MetaIo {
        let l = self.table.len();
        let n = n.min(l);
        if n == 0 {
            return MetaIo::default();
        }
        let epa = self.geo.epa();
        let area = (l - 1) / epa;
        let base = area * epa;
        let (from, to) = (l - n - base, l - base);
        let (offset, bytes) = self.area_sectors(area, from, to, |j| {
            if j < from {
                self.entry(base + j)
            } else {
                None
            }
        });
        MetaIo {
            write: vec![(offset, bytes)],
            flush_after: true,
            ..MetaIo::default()
        }
    }

    fn complete_merge_clear(&mut self, n: u64) {
        for _ in 0..n {
            if let Some((old, _)) = self.table.pop() {
                self.map.remove(old);
            }
        }
        let (area, committed) = self.current_area();
        // As Linux: next_free as if the remaining exceptions had been committed in order.
        self.next_free = self.geo.area_chunk(area) + committed + 1;
    }
}

#[path = "persistent_load.rs"]
mod load;

#[cfg(test)]
#[path = "persistent_tests.rs"]
mod tests;
