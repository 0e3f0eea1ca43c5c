//! The data path of a snapshot: read, write, write-zeroes, discard, flush. Each request is cut
//! into chunk pieces; each piece is planned under the origin lock (`ReadPlan`, `WritePlan`:
//! the COW, the origin, a new exception, a merge in the way) and its I/O runs after the lock is
//! dropped. A new exception's data is written before it is queued for the group commit.

use std::io;
use std::sync::Arc;

use super::copy::Target;
use super::datapath::{cow_err, Data};
use super::engine::{run_invalidation, Health, Origin, SnapshotId};
use super::store::StoreKind;
use crate::storage::block::device::BlockDevice;
use crate::storage::error::IoError;

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

impl Origin {
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

    pub(super) fn end_cow_write(&self, id: SnapshotId, c: u64) {
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
}
