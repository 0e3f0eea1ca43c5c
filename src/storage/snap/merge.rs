//! Merging a persistent snapshot back into its origin (dm snapshot-merge), one run at a time.
//! A run is the newest entries of the table, consecutive in old and new chunk within one area.
//! For each run: copy those origin chunks out to every other snapshot (the origin-write gate),
//! wait for in-flight I/O to them, copy COW → origin, flush the origin, then clear the run's
//! entries and write the area durably. Progress is the table shrinking from its end, so a merge
//! interrupted by a crash resumes (`start_merge` again after reopening) by redoing the last run.
//! While merging, the origin reads and writes as the merging snapshot (see datapath.rs).
//! A run is at most `MERGE_RUN_BYTES` long (its newest entries, which are a run too), and a
//! step given a stop flag abandons its run between copy pieces: the run's entries are still in
//! the table, so the origin still reads them from the COW and the next step copies them again.

use std::sync::atomic::{AtomicBool, Ordering};

use super::copy::{Gate, GateMode, COPY_PIECE};
use super::engine::{Health, MergeState, Origin, SnapshotId};
use super::store::{Run, StoreKind};
use crate::storage::error::CowError;

/// Most bytes one merge step copies, so progress is recorded (and a stop honoured) often.
pub const MERGE_RUN_BYTES: u64 = 16 << 20;

/// What one merge step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeProgress {
    /// Merged a run of `chunks` chunks; `remaining` exceptions are left.
    Merged { chunks: u64, remaining: u64 },
    /// The table is empty: the snapshot has been merged and removed from the origin.
    Done,
    /// The stop flag was raised: the run was abandoned and stays in the table.
    Stopped,
}

impl Origin {
    /// Whether snapshot `id` can be merged now: persistent, valid, and no other snapshot of this
    /// origin merging. Changes nothing.
    pub fn check_mergeable(&self, id: SnapshotId) -> Result<(), CowError> {
        let g = self.lock();
        if let Some(m) = g.merging().filter(|&m| m != id) {
            return Err(CowError::MergeBusy(m.0));
        }
        let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
        let cow = s.cfg.name.clone();
        if s.store.kind() != StoreKind::Persistent {
            return Err(CowError::MergeNotPersistent { cow });
        }
        if s.health == Health::Invalid {
            return Err(CowError::MergeInvalid { cow });
        }
        Ok(())
    }

    /// Starts (or resumes) merging snapshot `id`. Waits for in-flight origin writes and for the
    /// snapshot's pending exceptions to commit; from then on the origin shows the snapshot's view.
    /// Starting a merge that failed again clears its failure, so the next step retries it.
    pub fn start_merge(&self, id: SnapshotId) -> Result<(), CowError> {
        let mut g = self.lock();
        match g.merging() {
            Some(m) if m == id => {
                if let Some(m) = g.merge.as_mut() {
                    m.failed = false;
                }
                return Ok(());
            }
            Some(m) => return Err(CowError::MergeBusy(m.0)),
            None => {}
        }
        {
            let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
            let cow = s.cfg.name.clone();
            if s.store.kind() != StoreKind::Persistent {
                return Err(CowError::MergeNotPersistent { cow });
            }
            if s.health == Health::Invalid {
                return Err(CowError::MergeInvalid { cow });
            }
        }
        g.barrier += 1;
        loop {
            let busy = g.snap(id).map(|s| {
                !g.origin_writes.is_empty()
                    || !g.held.is_empty()
                    || !s.pending.is_empty()
                    || s.commit.committing
                    || !s.commit.queue.is_empty()
            });
            match busy {
                Some(true) => g = self.wait(g),
                Some(false) if g.merge.is_none() => break,
                other => {
                    g.barrier -= 1;
                    self.notify();
                    return Err(match other {
                        None => CowError::NoSuchSnapshot(id.0),
                        _ => CowError::MergeBusy(g.merging().map_or(0, |m| m.0)),
                    });
                }
            }
        }
        g.barrier -= 1;
        g.merge = Some(MergeState {
            id,
            run: None,
            failed: false,
        });
        self.notify();
        Ok(())
    }

    /// Merges the newest run. After `Done` the snapshot is gone from the origin and its COW holds
    /// a valid header and an empty area 0.
    pub fn merge_step(&self) -> Result<MergeProgress, CowError> {
        self.merge_step_until(&AtomicBool::new(false))
    }

    /// As `merge_step`, abandoning the run (`Stopped`) once `stop` is raised.
    pub fn merge_step_until(&self, stop: &AtomicBool) -> Result<MergeProgress, CowError> {
        let (id, run, name) = {
            let mut g = self.lock();
            let Some(m) = g.merge.as_ref() else {
                return Err(CowError::NoMerge);
            };
            let id = m.id;
            if m.run.is_some() {
                return Err(CowError::MergeBusy(id.0));
            }
            let Some(s) = g.snap(id) else {
                g.merge = None;
                return Err(CowError::NoSuchSnapshot(id.0));
            };
            let name = s.cfg.name.clone();
            if g.merge.as_ref().is_some_and(|m| m.failed) {
                return Err(CowError::MergeFailed {
                    cow: name,
                    source: None,
                });
            }
            match s.store.last_run() {
                None => {
                    g.snaps.retain(|s| s.id != id);
                    g.merge = None;
                    g.merged.push(id);
                    self.notify();
                    return Ok(MergeProgress::Done);
                }
                Some(run) => {
                    let run = capped(run, s.cs().bytes());
                    if let Some(m) = g.merge.as_mut() {
                        m.run = Some(run);
                    }
                    (id, run, name)
                }
            }
        };
        let r = self.merge_run(id, run, stop);
        let mut g = self.lock();
        if let Some(m) = g.merge.as_mut() {
            m.run = None;
            m.failed |= r.is_err();
        }
        self.notify();
        match r {
            Ok(false) => Ok(MergeProgress::Stopped),
            Ok(true) => Ok(MergeProgress::Merged {
                chunks: run.len,
                remaining: g.snap(id).map_or(0, |s| s.store.exception_count()),
            }),
            Err(source) => {
                log::error!("{name}: merge failed: {source}");
                Err(CowError::MergeFailed {
                    cow: name,
                    source: Some(source),
                })
            }
        }
    }

    /// Runs `merge_step` until the merge is done; returns the number of runs merged.
    pub fn merge_to_completion(&self) -> Result<u64, CowError> {
        let mut runs = 0;
        while let MergeProgress::Merged { .. } = self.merge_step()? {
            runs += 1;
        }
        Ok(runs)
    }

    /// Merges one run; false when `stop` was raised before its entries were cleared.
    fn merge_run(&self, id: SnapshotId, run: Run, stop: &AtomicBool) -> std::io::Result<bool> {
        let (cow, cs) = {
            let g = self.lock();
            let s = g
                .snap(id)
                .ok_or_else(|| std::io::Error::other("merging snapshot removed"))?;
            (s.cow.clone(), s.cs())
        };
        let start = cs.start(run.old);
        let end = cs
            .start(run.old)
            .saturating_add(run.len.saturating_mul(cs.bytes()))
            .min(self.size());
        // 1. Other snapshots keep their view: copy these origin chunks out to them.
        let mut pos = start;
        while pos < end {
            match self.gate(pos, end, GateMode::ForMerge) {
                Gate::Go { token, end: e } => {
                    self.release(token);
                    pos = e;
                }
                Gate::Merging => return Err(std::io::Error::other("merge state lost")),
            }
        }
        // 2. Wait for origin writes and COW writes in flight to these chunks.
        {
            let mut g = self.lock();
            loop {
                let origin_busy = g.origin_writes.values().any(|&(a, b)| a < end && start < b);
                let cow_busy = g.snap(id).is_some_and(|s| {
                    s.cow_writes
                        .keys()
                        .any(|&c| c >= run.old.0 && c - run.old.0 < run.len)
                });
                if !origin_busy && !cow_busy {
                    break;
                }
                g = self.wait(g);
            }
        }
        // 3. Copy COW → origin, then make the origin durable.
        let cow_start = cs.start(run.new);
        let mut buf = vec![0u8; COPY_PIECE.min(end.saturating_sub(start)) as usize];
        let mut p = start;
        while p < end {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let n = COPY_PIECE.min(end - p);
            let piece = &mut buf[..n as usize];
            cow.read_at(piece, cow_start + (p - start))?;
            self.dev.write_at(piece, p)?;
            p += n;
        }
        self.dev.flush()?;
        // 4. Clear the run's entries durably.
        let io = {
            let g = self.lock();
            let s = g
                .snap(id)
                .ok_or_else(|| std::io::Error::other("merging snapshot removed"))?;
            s.store.plan_merge_clear(run.len)
        };
        io.run(&*cow)?;
        let mut g = self.lock();
        if let Some(s) = g.snap_mut(id) {
            s.store.complete_merge_clear(run.len);
        }
        Ok(true)
    }
}

/// The newest `MERGE_RUN_BYTES` of `run` (at least one chunk): the table's last entries, so a
/// run too.
fn capped(run: Run, chunk_bytes: u64) -> Run {
    let most = (MERGE_RUN_BYTES / chunk_bytes.max(1)).max(1);
    if run.len <= most {
        return run;
    }
    let skip = run.len - most;
    Run {
        old: crate::storage::units::ChunkIndex(run.old.0 + skip),
        new: crate::storage::units::ChunkIndex(run.new.0 + skip),
        len: most,
    }
}
