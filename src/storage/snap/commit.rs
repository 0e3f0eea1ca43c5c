//! Group commit: copied exceptions join their snapshot's commit queue, and one committer at a
//! time writes every entry ready (in allocation order) to the store's metadata, so concurrent
//! copies share one metadata write and flush. A commit makes the copies durable before the
//! metadata that points at them; the held thread pipelines the two (its batch's data shares the
//! flush that commits the batch before). Dependent I/O is released only after the commit.

use std::sync::MutexGuard;

use log::error;

use super::engine::{run_invalidation, Health, Inner, Origin, SnapshotId};
use super::store::{MetaIo, StoreKind};
use crate::storage::units::ChunkIndex;

/// How `commit_until` picks its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommitMode {
    /// A batch waits for the copies still outstanding, so copies in flight together share one
    /// commit (their threads wait anyway).
    Batched,
    /// Whatever is ready is committed at once: for callers whose requests keep no thread
    /// waiting (the queues' direct writes), the next batch forms during this commit.
    Eager,
    /// As `Eager`, but returns instead of waiting for another thread's commit.
    Try,
    /// As `Eager`, but one flush serves two batches: a cycle writes the metadata of the entries
    /// whose copies an earlier flush made durable (`synced`), then flushes, which makes that
    /// metadata durable and the ready copies too; those become the next cycle's `synced`. For
    /// the held thread, whose next batch's copies are ready while this one's commit runs.
    Pipelined,
}

/// Sorts the commit queue by COW chunk and returns how many of its first entries are the next
/// allocations in order (entries whose earlier allocations are still copying wait).
fn in_order_prefix(c: &mut super::engine::CommitState) -> usize {
    c.queue.sort_unstable_by_key(|(_, new)| new.0);
    c.queue
        .iter()
        .zip(c.order.iter())
        .take_while(|((_, new), want)| new.0 == **want)
        .count()
}

impl Origin {
    /// Written exceptions `(snapshot, old, new, outcome)` join their snapshots' commit queues;
    /// a failed one (`Err(what)`) leaves `pending` and invalidates its snapshot. Invalidation
    /// headers are written after the lock is released.
    pub(super) fn hand_to_commit(
        &self,
        mut g: MutexGuard<'_, Inner>,
        written: impl Iterator<Item = (SnapshotId, ChunkIndex, ChunkIndex, Result<(), String>)>,
        sync: bool,
    ) {
        let mut invalidations = Vec::new();
        for (id, old, new, r) in written {
            let Some(s) = g.snap_mut(id) else { continue };
            s.commit.outstanding = s.commit.outstanding.saturating_sub(1);
            match r {
                Ok(()) => {
                    s.commit.queue.push((old, new));
                    if sync {
                        s.commit.sync.insert(old.0);
                    }
                }
                Err(what) => {
                    error!("{}: {what}", s.cfg.name);
                    s.pending.remove(&old.0);
                    invalidations.push(s.invalidate(what));
                }
            }
        }
        invalidations.extend(g.deferred.drain(..).map(Some));
        self.notify();
        drop(g);
        invalidations.into_iter().for_each(run_invalidation);
    }

    /// Waits until the exception `old → new` of snapshot `id` is committed, committing a batch
    /// itself when it is its turn. False when the commit failed or the snapshot went away.
    pub(super) fn wait_commit(&self, id: SnapshotId, old: ChunkIndex, new: ChunkIndex) -> bool {
        self.commit_until(id, CommitMode::Batched, false, |s| {
            (!s.pending.contains_key(&old.0))
                .then(|| s.health != Health::Invalid && s.store.lookup(old) == Some(new))
        })
    }

    /// Commits batches of snapshot `id`'s copied exceptions (or waits for other threads'
    /// commits) until `settled` gives an answer for the snapshot; `T::default()` when it went
    /// away, or in `CommitMode::Try` when nothing more can be committed now.
    pub(super) fn commit_until<T: Default>(
        &self,
        id: SnapshotId,
        mode: CommitMode,
        light: bool,
        settled: impl Fn(&super::engine::Snap) -> Option<T>,
    ) -> T {
        let mut g = self.lock();
        loop {
            let Some(s) = g.snap_mut(id) else {
                return T::default();
            };
            if let Some(answer) = settled(s) {
                return answer;
            }
            let invalid = s.health == Health::Invalid;
            let room = s.store.commit_room();
            let transient = s.store.kind() == StoreKind::Transient;
            let c = &mut s.commit;
            if invalid && !c.committing && !(c.synced.is_empty() && c.queue.is_empty()) {
                let dropped: Vec<_> = c.synced.drain(..).chain(c.queue.drain(..)).collect();
                c.order.clear();
                for (o, _) in &dropped {
                    s.pending.remove(&o.0);
                    s.commit.sync.remove(&o.0);
                }
                self.notify();
                continue;
            }
            let ready = in_order_prefix(c);
            let synced = c.synced.len();
            let turn = !c.committing
                && ready + synced > 0
                && (mode != CommitMode::Batched
                    || c.outstanding == 0
                    || ready + synced >= room
                    || transient);
            if !turn {
                if mode == CommitMode::Try {
                    return T::default();
                }
                g = self.wait(g);
                continue;
            }
            let pipelined = mode == CommitMode::Pipelined && !transient;
            // `meta`: the entries this cycle commits; `copied`: the copies it only makes durable.
            let (meta, copied, fresh): (Vec<_>, Vec<_>, usize) = if pipelined {
                let n = ready.min(room);
                c.order.drain(..n);
                (
                    c.synced.drain(..).collect(),
                    c.queue.drain(..n).collect(),
                    0,
                )
            } else {
                let n = ready.min(room.saturating_sub(synced));
                c.order.drain(..n);
                let meta = c.synced.drain(..).chain(c.queue.drain(..n)).collect();
                (meta, Vec::new(), n)
            };
            let mut io = if meta.is_empty() {
                MetaIo::default()
            } else {
                s.store.plan_commit(&meta)
            };
            if fresh == 0 {
                // The metadata's copies are durable already; a zeroed area still is flushed
                // before the entries that run into it.
                io.flush_first = !io.zero.is_empty();
            }
            if pipelined {
                io.flush_after = true;
            } else if light && !meta.iter().any(|(o, _)| s.commit.sync.contains(&o.0)) {
                // Light (write-back, no copy-out in the batch): the data is durable before the
                // metadata write (the commit's first flush), so the entries may reach the disk
                // in any order; the next flush makes them durable. A `kill -9` keeps them
                // either way.
                io.flush_after = false;
            }
            s.commit.committing = true;
            // A pipelined cycle with no metadata to write only flushes copies: no commit.
            s.commit.commits += u64::from(!meta.is_empty());
            let cow = s.cow.clone();
            drop(g);
            let r = io.run(&*cow);
            g = self.lock();
            let mut invalidation = None;
            if let Some(s) = g.snap_mut(id) {
                s.commit.committing = false;
                let ok = r.is_ok();
                match r {
                    Ok(()) => {
                        s.store.complete_commit(&meta);
                        s.commit.synced.extend(copied.iter().copied());
                    }
                    Err(e) => {
                        let all = || meta.iter().chain(&copied);
                        let why = format!(
                            "committing {} exception(s) (origin chunks {}..={}): {e}",
                            all().count(),
                            all().map(|b| b.0 .0).min().unwrap_or(0),
                            all().map(|b| b.0 .0).max().unwrap_or(0),
                        );
                        error!("{}: {why}", s.cfg.name);
                        invalidation = s.invalidate(why);
                    }
                }
                // Committed, or failed (a copy this cycle only flushed fails with it).
                let gone = if ok { &[][..] } else { &copied[..] };
                for (o, _) in meta.iter().chain(gone) {
                    s.pending.remove(&o.0);
                    s.commit.sync.remove(&o.0);
                }
            }
            self.notify();
            if invalidation.is_some() {
                drop(g);
                run_invalidation(invalidation);
                g = self.lock();
            }
        }
    }
}
