//! The held thread's copy-outs: one batch's old origin chunks read once (adjacent chunks in one
//! read), written into every snapshot's COW in runs of consecutive new chunks, then each
//! snapshot's new exceptions committed in one group, or (pipelined) made durable in the flush
//! that commits the batch before (see held.rs for the batches around it).

use std::collections::{BTreeMap, HashSet};

use log::error;

use super::commit::CommitMode;
use super::copy::Target;
use super::engine::{Origin, SnapshotId};
use super::held::MAX_HELD_WRITE;
use crate::storage::units::ChunkIndex;

/// Chunk bytes one copy group reads into memory at once.
const COPY_GROUP_BYTES: u64 = 16 << 20;

/// A copied exception and how its copy went: (snapshot, old, new, outcome).
type Written = (SnapshotId, ChunkIndex, ChunkIndex, Result<(), String>);
/// A batch's copied old chunks, per snapshot.
pub(super) type Olds = BTreeMap<SnapshotId, Vec<u64>>;

impl Origin {
    /// Copies out every planned write's chunks (each origin span read once, each snapshot's new
    /// chunks written in runs, one vectored write per run) and hands them to their commit
    /// queues (a failed copy invalidates its snapshot). Then, without `prev`, commits them;
    /// with `prev` (the batch before, copies durable, pipelined: some commit waits for a
    /// device), makes them durable in the flush that commits `prev`, snapshots in parallel. Returns the batch's old chunks per snapshot.
    pub(super) fn copy_and_commit(
        &self,
        planned: Vec<(Vec<Target>, usize)>,
        prev: Option<&Olds>,
    ) -> Olds {
        let slots: usize = planned.iter().map(|p| p.1).sum();
        let targets: Vec<Target> = planned.into_iter().flat_map(|p| p.0).collect();
        let mut written = Vec::with_capacity(targets.len());
        let mut group = Vec::new();
        let mut bytes = 0;
        for t in targets {
            bytes += t.cs.bytes();
            group.push(t);
            if bytes >= COPY_GROUP_BYTES {
                self.copy_group(&group, &mut written);
                group.clear();
                bytes = 0;
            }
        }
        self.copy_group(&group, &mut written);
        let mut olds = Olds::new();
        for w in &written {
            olds.entry(w.0).or_default().push(w.1 .0);
        }
        let mut g = self.lock();
        g.copies -= slots;
        self.hand_to_commit(g, written.into_iter(), true);
        let Some(prev) = prev else {
            self.commit_olds(&olds, false);
            return olds;
        };
        let none = Vec::new();
        let ids: Vec<SnapshotId> = olds.keys().chain(prev.keys()).copied().collect();
        self.each_snapshot(&ids, true, |id| {
            let (now, before) = (
                olds.get(&id).unwrap_or(&none),
                prev.get(&id).unwrap_or(&none),
            );
            self.commit_until(id, CommitMode::Pipelined, false, |s| {
                let queued: HashSet<u64> = s.commit.queue.iter().map(|q| q.0 .0).collect();
                let durable = now.iter().all(|o| !queued.contains(o));
                let committed = before.iter().all(|o| !s.pending.contains_key(o));
                (durable && committed).then_some(())
            })
        });
        olds
    }

    /// Commits every exception of `olds` (or waits for other threads' commits of them), the
    /// snapshots in parallel when `parallel`.
    pub(super) fn commit_olds(&self, olds: &Olds, parallel: bool) {
        let ids: Vec<SnapshotId> = olds.keys().copied().collect();
        self.each_snapshot(&ids, parallel, |id| {
            self.commit_until(id, CommitMode::Eager, false, |s| {
                olds[&id]
                    .iter()
                    .all(|o| !s.pending.contains_key(o))
                    .then_some(())
            })
        });
    }

    /// Runs `commit` for each snapshot of `ids` (duplicates once), in parallel when `parallel`:
    /// the held thread's pipeline runs where commits wait for a device, and on tmpfs and
    /// ramfs, where a commit is a few copies, a thread per snapshot would only slow it down.
    fn each_snapshot(
        &self,
        ids: &[SnapshotId],
        parallel: bool,
        commit: impl Fn(SnapshotId) + Sync,
    ) {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() < 2 || !parallel {
            ids.into_iter().for_each(commit);
            return;
        }
        let commit = &commit;
        std::thread::scope(|sc| {
            for &other in &ids[1..] {
                sc.spawn(move || commit(other));
            }
            commit(ids[0]);
        });
    }

    /// Copies one group of targets: reads the origin spans they cover (adjacent chunks in one
    /// read), then writes each snapshot's runs of consecutive new chunks.
    fn copy_group(&self, targets: &[Target], out: &mut Vec<Written>) {
        if targets.is_empty() {
            return;
        }
        let size = self.dev.size();
        let range = |t: &Target| {
            let a = t.cs.start(t.old);
            (a, (a + t.cs.bytes()).min(size))
        };
        // Origin spans: the distinct chunk ranges, adjacent ones merged.
        let mut ranges: Vec<(u64, u64)> = targets.iter().map(range).collect();
        ranges.sort_unstable();
        ranges.dedup();
        let mut spans: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        for (a, b) in ranges {
            match spans.last_mut() {
                Some(s) if s.1 == a && b - s.0 <= MAX_HELD_WRITE => s.1 = b,
                Some(s) if a < s.1 => s.1 = s.1.max(b),
                _ => spans.push((a, b, Vec::new())),
            }
        }
        let mut failed: Option<String> = None;
        for s in spans.iter_mut() {
            s.2 = vec![0u8; (s.1 - s.0) as usize];
            if let Err(e) = self.dev.read_at(&mut s.2, s.0) {
                error!("{}: reading origin for a copy: {e}", self.name);
                failed = Some(format!("reading the origin at byte {}: {e}", s.0));
                break;
            }
        }
        let data = |t: &Target| -> &[u8] {
            let (a, b) = range(t);
            let i = spans.partition_point(|s| s.1 <= a);
            let s = &spans[i];
            &s.2[(a - s.0) as usize..(b - s.0) as usize]
        };
        let mut order: Vec<&Target> = targets.iter().collect();
        order.sort_unstable_by_key(|t| (t.id, t.new.0));
        let mut i = 0;
        while i < order.len() {
            let first = order[i];
            let mut j = i + 1;
            while j < order.len()
                && order[j].id == first.id
                && order[j].new.0 == order[j - 1].new.0 + 1
                && j - i < 1024
            {
                j += 1;
            }
            let run = &order[i..j];
            let r = match &failed {
                Some(why) => Err(why.clone()),
                None => {
                    let bufs: Vec<&[u8]> = run.iter().map(|t| data(t)).collect();
                    first
                        .cow
                        .write_vectored_at(&bufs, first.cs.start(first.new))
                        .map_err(|e| {
                            format!(
                                "copying origin chunks to COW chunks {}..={}: {e}",
                                first.new,
                                run[run.len() - 1].new
                            )
                        })
                }
            };
            out.extend(run.iter().map(|t| (t.id, t.old, t.new, r.clone())));
            i = j;
        }
    }
}
