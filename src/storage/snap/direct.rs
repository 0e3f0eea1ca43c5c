//! Direct I/O plans for callers that run a request's I/O themselves (the vhost queues, on their
//! io_uring, straight from and into guest memory): under the origin lock, where the whole
//! request lives on one device, and a ticket that holds off conflicting engine work until the
//! caller reports the I/O done. Requests that need copies, span exceptions and origin, or meet
//! a merge get no plan and take the synchronous path.

use std::os::unix::io::RawFd;

use super::commit::CommitMode;
use super::copy::{check_chunk, Check};
use super::engine::{Health, Inner, Origin, SnapshotId};
use crate::storage::units::ChunkIndex;

/// The device a planned request runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectTarget {
    Origin,
    /// The snapshot's COW file.
    Cow,
}

/// What the caller must hand back to [`Origin::finish_direct`] once the I/O completed.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Ticket {
    None,
    /// An origin write past the gate: snapshots and merges wait for it.
    OriginWrite(u64),
    /// A snapshot read served by the origin: origin writes to these chunks wait for it.
    Reads {
        id: SnapshotId,
        first: u64,
        last: u64,
    },
    /// A write into existing exceptions: a merge waits for it.
    CowWrites {
        id: SnapshotId,
        first: u64,
        last: u64,
    },
    /// A write of whole chunks without exceptions into `count` new consecutive COW chunks
    /// from `new`: they are pending until the caller's write is done and they are committed.
    NewExceptions(NewExceptions),
}

/// Exceptions `old..old + count → new..new + count` of snapshot `id`, made by a direct write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewExceptions {
    pub id: SnapshotId,
    pub old: u64,
    pub new: u64,
    pub count: u64,
}

/// Where a whole request runs: `offset` on `target`.
#[derive(Debug)]
pub struct DirectPlan {
    pub target: DirectTarget,
    pub offset: u64,
    pub ticket: Ticket,
}

impl Origin {
    /// The descriptors of the origin (`None`: an RBD image, whose I/O the caller submits
    /// through [`crate::storage::Rbd::submit`]) and of snapshot `id`'s COW. `None` when a
    /// request's I/O cannot run outside the engine.
    pub fn direct_fds(&self, id: Option<SnapshotId>) -> Option<(Option<RawFd>, Option<RawFd>)> {
        let origin = match self.dev.raw_fd() {
            Some(fd) => Some(fd),
            None => {
                self.dev.rbd()?;
                None
            }
        };
        let Some(id) = id else {
            return Some((origin, None));
        };
        let g = self.lock();
        let cow = g.snap(id)?.cow.raw_fd()?;
        Some((origin, Some(cow)))
    }

    /// Plans a read or write of `len` bytes at `offset` of the origin (`id` = None) or of
    /// snapshot `id`, for the caller to run. `None`: use the synchronous data path.
    pub fn plan_direct(
        &self,
        id: Option<SnapshotId>,
        write: bool,
        offset: u64,
        len: u64,
    ) -> Option<DirectPlan> {
        if len == 0 || offset.checked_add(len)? > self.size() {
            return None;
        }
        let mut g = self.lock();
        if g.merge.is_some() {
            return None;
        }
        let plan = |target, offset, ticket| DirectPlan {
            target,
            offset,
            ticket,
        };
        if id.is_none() && g.held.overlaps(offset, offset + len, u64::MAX) {
            // A held write there lands first: the synchronous path waits for it.
            return None;
        }
        match (id, write) {
            (None, false) => Some(plan(DirectTarget::Origin, offset, Ticket::None)),
            (None, true) => {
                let token = origin_write_token(&mut g, offset, offset + len)?;
                Some(plan(
                    DirectTarget::Origin,
                    offset,
                    Ticket::OriginWrite(token),
                ))
            }
            (Some(id), write) => {
                let quiet = g.barrier == 0;
                let s = g.snap_mut(id)?;
                if s.health != Health::Valid {
                    return None;
                }
                let cs = s.cs();
                let first = cs.chunk_of(offset).0;
                let last = cs.chunk_of(offset + len - 1).0;
                let look = |s: &super::engine::Snap, c: u64| s.store.lookup(ChunkIndex(c));
                let mapped = look(s, first);
                let within = offset - cs.start(ChunkIndex(first));
                match mapped {
                    // Every chunk in the COW, consecutively.
                    Some(new)
                        if (first..=last)
                            .all(|c| look(s, c) == Some(ChunkIndex(new.0 + c - first))) =>
                    {
                        let at = cs.start(new) + within;
                        let ticket = if write {
                            for c in first..=last {
                                *s.cow_writes.entry(c).or_default() += 1;
                            }
                            Ticket::CowWrites { id, first, last }
                        } else {
                            Ticket::None
                        };
                        Some(plan(DirectTarget::Cow, at, ticket))
                    }
                    // Every chunk unchanged: a read of the origin, tracked.
                    None if !write && (first..=last).all(|c| look(s, c).is_none()) => {
                        for c in first..=last {
                            *s.reads.entry(c).or_default() += 1;
                        }
                        Some(plan(
                            DirectTarget::Origin,
                            offset,
                            Ticket::Reads { id, first, last },
                        ))
                    }
                    // Not while a merge or a snapshot creation waits for a quiet origin.
                    None if write && quiet => new_exceptions(s, offset, len, self.size())
                        .map(|(at, t)| plan(DirectTarget::Cow, at, Ticket::NewExceptions(t))),
                    _ => None,
                }
            }
        }
    }

    /// Ends a planned request, whose I/O succeeded or not (`ok`). `Some`: the request made new
    /// exceptions, and may complete only once [`Origin::settled`] says they are committed.
    pub fn finish_direct(&self, ticket: Ticket, ok: bool) -> Option<NewExceptions> {
        let mut g = self.lock();
        match ticket {
            Ticket::None => return None,
            Ticket::NewExceptions(t) => {
                let written = (0..t.count).map(|k| {
                    let (old, new) = (ChunkIndex(t.old + k), ChunkIndex(t.new + k));
                    let r = if ok {
                        Ok(())
                    } else {
                        Err(format!(
                            "writing a guest write into new COW chunk {new} (origin chunk {old}) \
                             failed with an I/O error"
                        ))
                    };
                    (t.id, old, new, r)
                });
                self.hand_to_commit(g, written, false);
                return ok.then_some(t);
            }
            Ticket::OriginWrite(token) => {
                g.origin_writes.remove(&token);
            }
            Ticket::Reads { id, first, last } => {
                if let Some(s) = g.snap_mut(id) {
                    for c in first..=last {
                        release(&mut s.reads, c);
                    }
                }
            }
            Ticket::CowWrites { id, first, last } => {
                if let Some(s) = g.snap_mut(id) {
                    for c in first..=last {
                        release(&mut s.cow_writes, c);
                    }
                }
            }
        }
        self.notify();
        None
    }

    /// Commits (or waits for the commits of) the exceptions of `waits`, all of one snapshot:
    /// blocks, so a helper thread calls it.
    pub fn commit_direct(&self, id: SnapshotId, waits: &[NewExceptions], light: bool) {
        self.commit_until(id, CommitMode::Eager, light, |s| {
            let pending = waits
                .iter()
                .any(|t| (t.old..t.old + t.count).any(|c| s.pending.contains_key(&c)));
            (!pending).then_some(())
        })
    }

    /// Commits what is ready of snapshot `id`'s new exceptions, unless another thread is
    /// committing: never waits for other threads (the commit's own I/O aside).
    pub fn try_commit(&self, id: SnapshotId) {
        self.commit_until(id, CommitMode::Try, false, |_| None::<()>)
    }

    /// Whether the exceptions of `t` are committed: `None` while still pending, then true
    /// when they are in the table (false: the snapshot went invalid or away).
    pub fn settled(&self, t: &NewExceptions) -> Option<bool> {
        let g = self.lock();
        let Some(s) = g.snap(t.id) else {
            return Some(false);
        };
        if (t.old..t.old + t.count).any(|c| s.pending.contains_key(&c)) {
            return None;
        }
        Some(
            s.health != Health::Invalid
                && (0..t.count)
                    .all(|k| s.store.lookup(ChunkIndex(t.old + k)) == Some(ChunkIndex(t.new + k))),
        )
    }
}

/// Plans a write of whole chunks none of which has an exception or a pending one: allocates
/// consecutive COW chunks for them (no copy: the write replaces every byte). The COW offset
/// and the ticket; `None` (nothing allocated) when the synchronous path must do it.
fn new_exceptions(
    s: &mut super::engine::Snap,
    offset: u64,
    len: u64,
    size: u64,
) -> Option<(u64, NewExceptions)> {
    let cs = s.cs();
    let first = cs.chunk_of(offset);
    let count = len / cs.bytes();
    let whole = offset == cs.start(first) && len % cs.bytes() == 0 && count > 0;
    if !whole || offset + len > size {
        return None;
    }
    let olds = first.0..first.0 + count;
    if olds
        .clone()
        .any(|c| s.pending.contains_key(&c) || s.store.lookup(ChunkIndex(c)).is_some())
    {
        return None;
    }
    let new = s.store.prepare_run(count)?;
    for (k, c) in olds.enumerate() {
        s.pending.insert(c, new.0 + k as u64);
        s.commit.order.push_back(new.0 + k as u64);
    }
    s.commit.outstanding += count as usize;
    let t = NewExceptions {
        id: s.id,
        old: first.0,
        new: new.0,
        count,
    };
    Some((cs.start(new), t))
}

fn release(map: &mut std::collections::HashMap<u64, u32>, c: u64) {
    if let Some(k) = map.get_mut(&c) {
        *k -= 1;
        if *k == 0 {
            map.remove(&c);
        }
    }
}

/// An origin write may run directly when every snapshot already holds every chunk it touches
/// (or there are none) and nothing waits to freeze the origin: it gets a gate token.
fn origin_write_token(g: &mut Inner, start: u64, limit: u64) -> Option<u64> {
    if g.barrier > 0 {
        return None;
    }
    let mut pos = start;
    while pos < limit {
        let (end, check) = check_chunk(g, pos, limit, None);
        if check != Check::Safe {
            return None;
        }
        pos = end;
    }
    let token = g.next_token;
    g.next_token += 1;
    g.origin_writes.insert(token, (start, limit));
    Some(token)
}

/// A graph node (an origin, or one of its snapshots) as a direct-I/O caller sees it.
#[derive(Clone)]
pub struct DirectNode {
    pub origin: std::sync::Arc<Origin>,
    pub snapshot: Option<SnapshotId>,
    /// The origin's file is opened O_DIRECT (buffers must be aligned).
    pub o_direct: bool,
}

impl DirectNode {
    /// The origin's descriptor (none for RBD) and the snapshot's COW descriptor (if a
    /// snapshot); see [`Origin::direct_fds`].
    pub fn fds(&self) -> Option<(Option<RawFd>, Option<RawFd>)> {
        self.origin.direct_fds(self.snapshot)
    }

    /// The origin's RBD image, when it is one.
    pub fn origin_rbd(&self) -> Option<&crate::storage::Rbd> {
        self.origin.dev.rbd()
    }

    /// The origin's descriptor with readahead off, for random reads.
    pub fn origin_random_fd(&self) -> Option<RawFd> {
        use std::os::unix::io::AsRawFd;
        self.origin.dev.random_file().map(|f| f.as_raw_fd())
    }

    /// The origin's shared mapping, when reads may copy from it.
    pub fn origin_mapping(&self) -> Option<std::sync::Arc<crate::storage::Mapping>> {
        self.origin.dev.mapping().cloned()
    }

    pub fn plan(&self, write: bool, offset: u64, len: u64) -> Option<DirectPlan> {
        self.origin.plan_direct(self.snapshot, write, offset, len)
    }

    pub fn finish(&self, ticket: Ticket, ok: bool) -> Option<NewExceptions> {
        self.origin.finish_direct(ticket, ok)
    }

    /// See [`Origin::commit_direct`] (blocks).
    pub fn commit(&self, waits: &[NewExceptions], light: bool) {
        if let (Some(id), Some(first)) = (self.snapshot, waits.first()) {
            debug_assert_eq!(id, first.id);
            self.origin.commit_direct(id, waits, light);
        }
    }

    pub fn settled(&self, t: &NewExceptions) -> Option<bool> {
        self.origin.settled(t)
    }

    /// See [`Origin::try_commit`].
    pub fn try_commit(&self) {
        if let Some(id) = self.snapshot {
            self.origin.try_commit(id);
        }
    }
}
