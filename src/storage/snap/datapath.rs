//! The data path of an origin: read, write, write-zeroes, discard, flush, and the writes that
//! meet a merge; `SnapshotDevice` and `Origin` as `BlockDevice`s. Each request is cut into chunk
//! pieces only where snapshots need it; each piece is planned under the origin lock and its I/O
//! runs after the lock is dropped. A snapshot's own requests are in snapshot_io.rs.

use std::io;
use std::sync::Arc;

use super::copy::{Gate, GateMode};
use super::engine::{Origin, SnapshotId};
use crate::storage::block::device::{check_range, BlockDevice};
use crate::storage::error::IoError;

/// The payload of a write-like request.
#[derive(Clone, Copy)]
pub(super) enum Data<'a> {
    Bytes(&'a [u8]),
    Zeroes(u64),
    Discard(u64),
}

impl<'a> Data<'a> {
    pub(super) fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Zeroes(n) | Data::Discard(n) => *n,
        }
    }

    pub(super) fn slice(&self, from: u64, len: u64) -> Data<'a> {
        match self {
            Data::Bytes(b) => Data::Bytes(&b[from as usize..(from + len) as usize]),
            Data::Zeroes(_) => Data::Zeroes(len),
            Data::Discard(_) => Data::Discard(len),
        }
    }

    pub(super) fn apply(&self, dev: &dyn BlockDevice, offset: u64) -> io::Result<()> {
        match self {
            Data::Bytes(b) => dev.write_at(b, offset),
            Data::Zeroes(n) => dev.write_zeroes(offset, *n),
            Data::Discard(n) => dev.discard(offset, *n),
        }
    }
}

pub(super) fn cow_err(name: &str) -> impl Fn(io::Error) -> IoError + '_ {
    move |source| IoError::Cow {
        cow: name.to_owned(),
        source,
    }
}

impl Origin {
    pub(super) fn check(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let size = self.size();
        check_range(size, offset, len).map_err(|_| IoError::OutOfRange { offset, len, size })
    }

    /// Reads the origin (during a merge: the merging snapshot's view, which it becomes; a
    /// merge that finishes meanwhile only changes where the rest is read from).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        let end = offset + buf.len() as u64;
        self.check(offset, buf.len() as u64)?;
        let merging = {
            // A held write is the origin's data once landed: wait for it.
            let mut g = self.lock();
            while g.held.overlaps(offset, end, u64::MAX) {
                g = self.wait(g);
            }
            g.merging()
        };
        match merging {
            None => self.dev.read_at(buf, offset).map_err(IoError::Origin),
            Some(id) => self.snapshot_read(id, buf, offset),
        }
    }

    /// Whether `id` is a snapshot merged into the origin: it reads and writes as the origin.
    pub(super) fn merged(&self, id: SnapshotId) -> bool {
        self.lock().merged.contains(&id)
    }

    pub fn write(&self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.origin_data(Data::Bytes(buf), offset)
    }

    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.origin_data(Data::Zeroes(len), offset)
    }

    /// Discards origin blocks, copying them out to the snapshots first, like a write.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), IoError> {
        self.origin_data(Data::Discard(len), offset)
    }

    /// Flushes the origin (and the merging snapshot's COW during a merge).
    pub fn flush(&self) -> Result<(), IoError> {
        // Writes held before the flush land first (they completed to the guest).
        self.wait_held();
        self.dev.flush().map_err(IoError::Origin)?;
        let merging = {
            let g = self.lock();
            g.merging()
                .and_then(|id| g.snap(id).map(|s| (s.cow.clone(), s.cfg.name.clone())))
        };
        if let Some((cow, name)) = merging {
            cow.flush().map_err(cow_err(&name))?;
        }
        Ok(())
    }

    pub(super) fn origin_data(&self, data: Data<'_>, offset: u64) -> Result<(), IoError> {
        self.origin_data_as(data, offset, GateMode::Origin)
    }

    /// An origin write through the gate as `mode` asks.
    pub(super) fn origin_data_as(
        &self,
        data: Data<'_>,
        offset: u64,
        mode: GateMode,
    ) -> Result<(), IoError> {
        let len = data.len();
        self.check(offset, len)?;
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            match self.gate(pos, offset + len, mode) {
                Gate::Go { token, end } => {
                    let r = data.slice(done, end - pos).apply(&*self.dev, pos);
                    self.release(token);
                    r.map_err(IoError::Origin)?;
                    done = end - offset;
                }
                Gate::Merging => done += self.merge_write(data.slice(done, len - done), pos)?,
            }
        }
        Ok(())
    }

    /// A write while merging (to the origin or the merging snapshot), up to the end of one chunk
    /// of the merging snapshot: to the COW where an exception remains outside the current run,
    /// waiting while the chunk is in the run, else through the origin path. Returns bytes done.
    pub(super) fn merge_write(&self, data: Data<'_>, pos: u64) -> Result<u64, IoError> {
        let len = data.len();
        let mut g = self.lock();
        let (cow, at, c, n, name, id) = loop {
            let Some(m) = g.merge.as_ref() else {
                drop(g);
                return self.origin_piece(data, pos, GateMode::Origin);
            };
            let (id, run) = (m.id, m.run);
            let Some(s) = g.snap_mut(id) else {
                return Err(IoError::NoSuchSnapshot(id.0));
            };
            let cs = s.cs();
            let c = cs.chunk_of(pos);
            let n = (cs.start(c) + cs.bytes() - pos).min(len);
            if run.is_some_and(|r| c.0 >= r.old.0 && c.0 - r.old.0 < r.len) {
                g = self.wait(g);
                continue;
            }
            match s.store.lookup(c) {
                Some(new) => {
                    *s.cow_writes.entry(c.0).or_default() += 1;
                    let at = cs.start(new) + (pos - cs.start(c));
                    break (s.cow.clone(), at, c.0, n, s.cfg.name.clone(), id);
                }
                None => {
                    drop(g);
                    return self.origin_piece(data.slice(0, n), pos, GateMode::ForMerge);
                }
            }
        };
        drop(g);
        let r = data.slice(0, n).apply(&*cow, at);
        self.end_cow_write(id, c);
        r.map_err(cow_err(&name))?;
        Ok(n)
    }

    /// One gated origin piece; returns the bytes written.
    fn origin_piece(&self, data: Data<'_>, pos: u64, mode: GateMode) -> Result<u64, IoError> {
        match self.gate(pos, pos + data.len(), mode) {
            Gate::Go { token, end } => {
                let r = data.slice(0, end - pos).apply(&*self.dev, pos);
                self.release(token);
                r.map_err(IoError::Origin)?;
                Ok(end - pos)
            }
            Gate::Merging => Ok(0),
        }
    }
}

/// A snapshot as a block device, for a server that exports it.
pub struct SnapshotDevice {
    pub origin: Arc<Origin>,
    pub id: SnapshotId,
}

impl BlockDevice for SnapshotDevice {
    fn size(&self) -> u64 {
        self.origin.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Ok(self.origin.snapshot_read(self.id, buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Ok(self.origin.snapshot_write(self.id, buf, offset)?)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(self.origin.snapshot_flush(self.id)?)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(self.origin.snapshot_discard(self.id, offset, len)?)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(self.origin.snapshot_write_zeroes(self.id, offset, len)?)
    }
}

impl BlockDevice for Origin {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn logical_block_size(&self) -> u32 {
        self.dev.logical_block_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        Ok(self.read(buf, offset)?)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        Ok(self.write(buf, offset)?)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(Origin::flush(self)?)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(Origin::discard(self, offset, len)?)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        Ok(Origin::write_zeroes(self, offset, len)?)
    }
}
