//! The held thread's copy-outs: one batch's old origin chunks read once (adjacent chunks in one
//! read), written into every snapshot's COW in runs of consecutive new chunks, then each
//! snapshot's new exceptions committed in one group (see held.rs for the batches around it).

use std::collections::BTreeMap;

use log::error;

use super::copy::{CommitMode, Target};
use super::engine::{Origin, SnapshotId};
use super::held::MAX_HELD_WRITE;
use crate::storage::block::image::memory_backed;
use crate::storage::units::ChunkIndex;

/// Chunk bytes one copy group reads into memory at once.
const COPY_GROUP_BYTES: u64 = 16 << 20;

/// A copied exception and how its copy went: (snapshot, old, new, outcome).
type Written = (SnapshotId, ChunkIndex, ChunkIndex, Result<(), String>);

impl Origin {
    /// Copies out every planned write's chunks (each origin span read once, each snapshot's new
    /// chunks written in runs, one vectored write per run), hands them to their commit queues
    /// and commits every snapshot that got any, in parallel (a failed copy invalidates its
    /// snapshot).
    pub(super) fn copy_and_commit(&self, planned: Vec<(Vec<Target>, usize)>) {
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
        let mut olds: BTreeMap<SnapshotId, Vec<u64>> = BTreeMap::new();
        for w in &written {
            olds.entry(w.0).or_default().push(w.1 .0);
        }
        let mut g = self.lock();
        g.copies -= slots;
        self.hand_to_commit(g, written.into_iter(), true);
        let commit = |(id, olds): (&SnapshotId, &Vec<u64>)| {
            self.commit_until(*id, CommitMode::Eager, false, |s| {
                olds.iter()
                    .all(|o| !s.pending.contains_key(o))
                    .then_some(())
            })
        };
        // In parallel where a commit waits for a device; on tmpfs and ramfs a commit is a few
        // copies, which a thread per snapshot would only slow down.
        let slow = |id: &SnapshotId| {
            let g = self.lock();
            g.snap(*id)
                .and_then(|s| s.cow.raw_fd())
                .is_some_and(|fd| !memory_backed(fd))
        };
        if olds.len() < 2 || !olds.keys().any(slow) {
            olds.iter().for_each(commit);
            return;
        }
        let mut each = olds.iter();
        let Some(first) = each.next() else { return };
        std::thread::scope(|sc| {
            for other in each {
                sc.spawn(move || commit(other));
            }
            commit(first);
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
