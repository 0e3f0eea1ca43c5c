//! The data path of an origin and its snapshots: read, write, write-zeroes, discard, flush.
//! Each request is cut into chunk pieces only where snapshots need it; each piece is planned
//! under the origin lock (`ReadPlan`, `WritePlan`) and its I/O runs after the lock is dropped.

use std::io;
use std::sync::Arc;

use super::copy::{Gate, GateMode, Target};
use super::engine::{run_invalidation, Health, Origin, SnapshotId};
use super::store::StoreKind;
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
    fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Zeroes(n) | Data::Discard(n) => *n,
        }
    }

    fn slice(&self, from: u64, len: u64) -> Data<'a> {
        match self {
            Data::Bytes(b) => Data::Bytes(&b[from as usize..(from + len) as usize]),
            Data::Zeroes(_) => Data::Zeroes(len),
            Data::Discard(_) => Data::Discard(len),
        }
    }

    fn apply(&self, dev: &dyn BlockDevice, offset: u64) -> io::Result<()> {
        match self {
            Data::Bytes(b) => dev.write_at(b, offset),
            Data::Zeroes(n) => dev.write_zeroes(offset, *n),
            Data::Discard(n) => dev.discard(offset, *n),
        }
    }
}

enum ReadPlan {
    Cow(Arc<dyn BlockDevice>, u64),
    /// Read the origin; the read is tracked on this chunk of the snapshot.
    Origin(u64),
}

enum WritePlan {
    /// Write to an existing exception (tracked in `cow_writes` on this chunk).
    Cow(Arc<dyn BlockDevice>, u64, u64),
    /// A new exception; copy the old chunk first unless the write covers it.
    New(Target, bool),
    Merge,
    Wait,
    /// The snapshot's state changed (full COW): plan again without waiting.
    Retry,
}

fn cow_err(name: &str) -> impl Fn(io::Error) -> IoError + '_ {
    move |source| IoError::Cow {
        cow: name.to_owned(),
        source,
    }
}

impl Origin {
    fn check(&self, offset: u64, len: u64) -> Result<(), IoError> {
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
    fn merged(&self, id: SnapshotId) -> bool {
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

    fn origin_data(&self, data: Data<'_>, offset: u64) -> Result<(), IoError> {
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

    /// Reads a snapshot: COW where it has an exception, else the origin. Never held.
    pub fn snapshot_read(
        &self,
        id: SnapshotId,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), IoError> {
        self.check(offset, buf.len() as u64)?;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (plan, n, name) = {
                let mut g = self.lock();
                if g.merged.contains(&id) {
                    drop(g);
                    return self.read(&mut buf[done..], pos);
                }
                let s = g.snap_mut(id).ok_or(IoError::NoSuchSnapshot(id.0))?;
                if s.health == Health::Invalid {
                    return Err(IoError::Invalid {
                        cow: s.cfg.name.clone(),
                    });
                }
                let cs = s.cs();
                let c = cs.chunk_of(pos);
                let within = pos - cs.start(c);
                let n = (cs.bytes() - within).min((buf.len() - done) as u64) as usize;
                let plan = match s.store.lookup(c) {
                    Some(new) => ReadPlan::Cow(s.cow.clone(), cs.start(new) + within),
                    None => {
                        *s.reads.entry(c.0).or_default() += 1;
                        ReadPlan::Origin(c.0)
                    }
                };
                (plan, n, s.cfg.name.clone())
            };
            let piece = &mut buf[done..done + n];
            let r = match &plan {
                ReadPlan::Cow(cow, at) => cow.read_at(piece, *at).map_err(cow_err(&name)),
                ReadPlan::Origin(_) => self.dev.read_at(piece, pos).map_err(IoError::Origin),
            };
            if let ReadPlan::Origin(c) = plan {
                let mut g = self.lock();
                if let Some(s) = g.snap_mut(id) {
                    if let Some(k) = s.reads.get_mut(&c) {
                        *k -= 1;
                        if *k == 0 {
                            s.reads.remove(&c);
                            self.notify();
                        }
                    }
                }
            }
            r?;
            done += n;
        }
        Ok(())
    }

    pub fn snapshot_write(&self, id: SnapshotId, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.snapshot_data(id, Data::Bytes(buf), offset)
    }

    pub fn snapshot_write_zeroes(
        &self,
        id: SnapshotId,
        offset: u64,
        len: u64,
    ) -> Result<(), IoError> {
        self.snapshot_data(id, Data::Zeroes(len), offset)
    }

    /// Flushes the snapshot's COW only.
    pub fn snapshot_flush(&self, id: SnapshotId) -> Result<(), IoError> {
        if self.merged(id) {
            return self.flush();
        }
        let (cow, name) = {
            let g = self.lock();
            let s = g.snap(id).ok_or(IoError::NoSuchSnapshot(id.0))?;
            (s.cow.clone(), s.cfg.name.clone())
        };
        cow.flush().map_err(cow_err(&name))
    }

    fn snapshot_data(&self, id: SnapshotId, data: Data<'_>, offset: u64) -> Result<(), IoError> {
        let len = data.len();
        self.check(offset, len)?;
        let size = self.size();
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let mut g = self.lock();
            if g.merged.contains(&id) {
                drop(g);
                return self.origin_data(data.slice(done, len - done), pos);
            }
            let (plan, n) = loop {
                let merging = g.merging() == Some(id);
                let s = g.snap_mut(id).ok_or(IoError::NoSuchSnapshot(id.0))?;
                let cs = s.cs();
                let c = cs.chunk_of(pos);
                let cstart = cs.start(c);
                let n = (cstart + cs.bytes() - pos).min(len - done);
                let plan = match s.health {
                    _ if merging => WritePlan::Merge,
                    Health::Invalid => {
                        let cow = s.cfg.name.clone();
                        let deferred: Vec<_> = g.deferred.drain(..).collect();
                        drop(g);
                        deferred.into_iter().map(Some).for_each(run_invalidation);
                        return Err(IoError::Invalid { cow });
                    }
                    Health::Overflow => {
                        return Err(IoError::Overflow {
                            cow: s.cfg.name.clone(),
                        })
                    }
                    Health::Valid => self.plan_snapshot_write(&mut g, id, pos, n, size),
                };
                match plan {
                    WritePlan::Wait => g = self.wait(g),
                    WritePlan::Retry => {}
                    p => break (p, n),
                }
            };
            drop(g);
            match plan {
                WritePlan::Wait | WritePlan::Retry => {}
                WritePlan::Merge => done += self.merge_write(data.slice(done, len - done), pos)?,
                WritePlan::Cow(cow, at, c) => {
                    let r = data.slice(done, n).apply(&*cow, at);
                    self.end_cow_write(id, c);
                    r.map_err(|source| IoError::Cow {
                        cow: self.cow_name(id),
                        source,
                    })?;
                    done += n;
                }
                WritePlan::New(t, copy) => {
                    self.new_exception_write(t, copy, data.slice(done, n), pos)?;
                    done += n;
                }
            }
        }
        Ok(())
    }

    fn cow_name(&self, id: SnapshotId) -> String {
        self.lock()
            .snap(id)
            .map(|s| s.cfg.name.clone())
            .unwrap_or_default()
    }

    /// Plans a write of `n` bytes at `pos` into a valid snapshot.
    fn plan_snapshot_write(
        &self,
        g: &mut super::engine::Inner,
        id: SnapshotId,
        pos: u64,
        n: u64,
        size: u64,
    ) -> WritePlan {
        let copies = g.copies;
        let Some(s) = g.snap_mut(id) else {
            return WritePlan::Wait;
        };
        let cs = s.cs();
        let c = cs.chunk_of(pos);
        let cstart = cs.start(c);
        if let Some(new) = s.store.lookup(c) {
            *s.cow_writes.entry(c.0).or_default() += 1;
            return WritePlan::Cow(s.cow.clone(), cs.start(new) + (pos - cstart), c.0);
        }
        if s.pending.contains_key(&c.0) {
            return WritePlan::Wait;
        }
        let whole = pos == cstart && pos + n >= (cstart + cs.bytes()).min(size);
        if !whole && self.cfg.copy_cap != 0 && copies >= self.cfg.copy_cap {
            return WritePlan::Wait;
        }
        let Some(new) = s.store.prepare() else {
            let invalidation = if s.store.kind() == StoreKind::PersistentOverflow {
                s.health = Health::Overflow;
                None
            } else {
                s.invalidate(format!(
                    "COW full: no room for a new exception for chunk {c} (snapshot write at byte {pos})"
                ))
            };
            g.deferred.extend(invalidation);
            self.notify();
            return WritePlan::Retry;
        };
        s.pending.insert(c.0, new.0);
        s.commit.order.push_back(new.0);
        s.commit.outstanding += 1;
        let t = Target {
            id,
            cow: s.cow.clone(),
            cs,
            old: c,
            new,
        };
        if !whole {
            g.copies += 1;
            g.peak_copies = g.peak_copies.max(g.copies);
        }
        WritePlan::New(t, !whole)
    }

    fn end_cow_write(&self, id: SnapshotId, c: u64) {
        let mut g = self.lock();
        if let Some(s) = g.snap_mut(id) {
            if let Some(k) = s.cow_writes.get_mut(&c) {
                *k -= 1;
                if *k == 0 {
                    s.cow_writes.remove(&c);
                    self.notify();
                }
            }
        }
    }

    /// Copies the old chunk (when `copy`), writes the data into the new exception, commits it.
    fn new_exception_write(
        &self,
        t: Target,
        copy: bool,
        data: Data<'_>,
        pos: u64,
    ) -> Result<(), IoError> {
        let mut r = if copy {
            self.copy_chunks(std::slice::from_ref(&t))
                .into_iter()
                .next()
                .unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let copied = r.is_ok();
        if copied {
            let within = pos - t.cs.start(t.old);
            r = data.apply(&*t.cow, t.cs.start(t.new) + within);
        }
        let err = r
            .as_ref()
            .err()
            .map(|e| io::Error::new(e.kind(), e.to_string()));
        let what = if copy && !copied {
            "copying"
        } else {
            "writing a snapshot write for"
        };
        let committed =
            self.finish_copies(std::slice::from_ref(&t), vec![r], usize::from(copy), what);
        if committed.first().copied().unwrap_or(false) {
            return Ok(());
        }
        let cow = self.cow_name(t.id);
        Err(match err {
            Some(source) => IoError::Cow { cow, source },
            None => IoError::Invalid { cow },
        })
    }

    /// Discards on a snapshot (`discard_zeroes_cow`): whole chunks with an exception are zeroed
    /// in the COW, partial ones discarded there, chunks without one are left alone; with
    /// `discard_passdown_origin` the origin range is discarded too, without copy-out.
    pub fn snapshot_discard(&self, id: SnapshotId, offset: u64, len: u64) -> Result<(), IoError> {
        self.check(offset, len)?;
        if self.merged(id) {
            return self.origin_data(Data::Discard(len), offset);
        }
        let (passdown, name) = {
            let g = self.lock();
            let s = g.snap(id).ok_or(IoError::NoSuchSnapshot(id.0))?;
            if !s.cfg.discard_zeroes_cow {
                return Err(IoError::DiscardNotEnabled);
            }
            if g.merging() == Some(id) {
                drop(g);
                return self.origin_data(Data::Discard(len), offset);
            }
            (s.cfg.discard_passdown_origin, s.cfg.name.clone())
        };
        let mut done = 0;
        while done < len {
            let pos = offset + done;
            let plan = {
                let mut g = self.lock();
                let s = g.snap_mut(id).ok_or(IoError::NoSuchSnapshot(id.0))?;
                match s.health {
                    Health::Invalid => return Err(IoError::Invalid { cow: name }),
                    Health::Overflow => return Err(IoError::Overflow { cow: name }),
                    Health::Valid => {}
                }
                let cs = s.cs();
                let c = cs.chunk_of(pos);
                let within = pos - cs.start(c);
                let n = (cs.bytes() - within).min(len - done);
                let whole = within == 0 && n == cs.bytes();
                let target = s.store.lookup(c).map(|new| {
                    *s.cow_writes.entry(c.0).or_default() += 1;
                    (s.cow.clone(), cs.start(new) + within, c.0)
                });
                (target, n, whole)
            };
            if let (Some((cow, at, c)), n, whole) = plan {
                let r = if whole {
                    cow.write_zeroes(at, n)
                } else {
                    cow.discard(at, n)
                };
                self.end_cow_write(id, c);
                r.map_err(cow_err(&name))?;
            }
            done += plan.1;
        }
        if passdown {
            self.dev.discard(offset, len).map_err(IoError::Origin)?;
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
