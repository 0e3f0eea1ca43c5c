//! Copy-out. The origin-write gate plans under the lock which snapshots need the old origin
//! chunk copied, takes a copy slot (parking on the condvar when the cap is reached), then reads
//! the origin chunk once and writes it to every such COW outside the lock. Each copied
//! exception joins its snapshot's commit queue (commit.rs); dependent I/O is released only
//! after the commit.

use std::io;
use std::sync::Arc;

use log::{debug, error};

use super::engine::{Health, Inner, Origin, SnapshotId};
use crate::storage::block::device::BlockDevice;
use crate::storage::units::{ChunkIndex, ChunkSize};

/// Copies move through a buffer of at most this many bytes, whatever the chunk size.
pub(super) const COPY_PIECE: u64 = 256 * 1024;

/// One exception being copied: old chunk `old` of snapshot `id` goes to COW chunk `new`.
pub(super) struct Target {
    pub id: SnapshotId,
    pub cow: Arc<dyn BlockDevice>,
    pub cs: ChunkSize,
    pub old: ChunkIndex,
    pub new: ChunkIndex,
}

/// What the origin-write gate decided.
pub(super) enum Gate {
    /// Every snapshot is safe for `[start, end)`: write it, then `release(token)`.
    Go { token: u64, end: u64 },
    /// A merge is running: route the write through the merge rules.
    Merging,
}

/// Who is asking the gate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum GateMode {
    /// A plain origin write.
    Origin,
    /// The merge path: the merging snapshot takes no copies.
    ForMerge,
    /// The held-write thread landing held write `seq`: it passes a snapshot creation waiting
    /// for it, and waits only for held writes before it.
    Held(u64),
}

/// The plan made under the lock for one gate round.
enum Plan {
    Go {
        token: u64,
        end: u64,
    },
    Merging,
    Wait,
    /// Copy these exceptions, holding this many copy slots.
    Copy(Vec<Target>, usize),
}

/// Most chunk positions one copy job takes on.
const MAX_BATCH: usize = 256;

/// What one chunk position needs before the origin may be written there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    Safe,
    /// A copy or a tracked read is in flight: wait for it.
    Wait,
    /// Some snapshot lacks an exception: copy it out.
    Copy,
}

/// Checks the chunk position at `pos` in every snapshot; returns where the position ends (the
/// nearest chunk boundary of any snapshot, or `limit`) and what it needs.
pub(super) fn check_chunk(
    g: &super::engine::Inner,
    pos: u64,
    limit: u64,
    exclude: Option<SnapshotId>,
) -> (u64, Check) {
    let mut end = limit;
    let mut check = Check::Safe;
    for s in g.snaps.iter() {
        let cs = s.cs();
        let c = cs.chunk_of(pos);
        end = end.min(cs.start(c).saturating_add(cs.bytes()));
        if Some(s.id) == exclude || s.health == Health::Invalid {
            continue;
        }
        if s.store.lookup(c).is_some() {
            if s.reads.contains_key(&c.0) {
                check = Check::Wait;
            }
        } else if s.pending.contains_key(&c.0) {
            check = Check::Wait;
        } else if check == Check::Safe {
            check = Check::Copy;
        }
    }
    (end, check)
}

/// Allocates, in every valid snapshot (but `exclude`) lacking one, the exception that the
/// origin chunk position at byte `pos` needs copied out; a full COW invalidates its snapshot
/// (the header write to run outside the lock goes to `invalidations`).
pub(super) fn take_copies(
    g: &mut Inner,
    pos: u64,
    exclude: Option<SnapshotId>,
    targets: &mut Vec<Target>,
    invalidations: &mut Vec<Option<super::engine::Invalidation>>,
) {
    for s in g.snaps.iter_mut() {
        if Some(s.id) == exclude || s.health == Health::Invalid {
            continue;
        }
        let old = s.cs().chunk_of(pos);
        if s.store.lookup(old).is_some() || s.pending.contains_key(&old.0) {
            continue;
        }
        match s.store.prepare() {
            Some(new) => {
                s.pending.insert(old.0, new.0);
                s.commit.order.push_back(new.0);
                s.commit.outstanding += 1;
                s.commit.copies += 1;
                targets.push(Target {
                    id: s.id,
                    cow: s.cow.clone(),
                    cs: s.cs(),
                    old,
                    new,
                });
            }
            None => {
                debug!("{}: COW full on the origin path", s.cfg.name);
                invalidations.push(s.invalidate(format!(
                    "COW full: no room to copy out origin chunk {old} (origin write at byte {pos})"
                )));
            }
        }
    }
}

impl Origin {
    /// Makes `[start, ...)` safe to overwrite in the origin: copies the old chunk to every valid
    /// snapshot lacking an exception, waits for those commits and for tracked reads to drain.
    /// The returned range ends at the first chunk boundary of any snapshot (or `limit`).
    pub(super) fn gate(&self, start: u64, limit: u64, mode: GateMode) -> Gate {
        loop {
            let plan = {
                let mut g = self.lock();
                loop {
                    match self.plan_gate(&mut g, start, limit, mode) {
                        Plan::Wait => g = self.wait(g),
                        p => break p,
                    }
                }
            };
            match plan {
                Plan::Go { token, end } => return Gate::Go { token, end },
                Plan::Merging => return Gate::Merging,
                Plan::Wait => {}
                Plan::Copy(targets, slots) => {
                    let results = self.copy_chunks(&targets);
                    self.finish_copies(&targets, results, slots, "copying");
                }
            }
        }
    }

    fn plan_gate(
        &self,
        g: &mut super::engine::Inner,
        start: u64,
        limit: u64,
        mode: GateMode,
    ) -> Plan {
        let held_before = match mode {
            GateMode::Held(seq) => seq,
            _ if g.barrier > 0 => return Plan::Wait,
            _ => u64::MAX,
        };
        if g.held.overlaps(start, limit, held_before) {
            return Plan::Wait;
        }
        let exclude = match (g.merging(), mode) {
            (Some(_), GateMode::Origin | GateMode::Held(_)) => return Plan::Merging,
            (m, _) => m,
        };
        // The longest prefix of [start, limit) that is safe in every snapshot: one gate round
        // (and one origin write) covers it, however many chunks it spans.
        let mut pos = start;
        let mut first = Check::Safe;
        while pos < limit {
            let (step_end, check) = check_chunk(g, pos, limit, exclude);
            if check != Check::Safe {
                if pos == start {
                    first = check;
                }
                break;
            }
            pos = step_end;
        }
        if pos > start {
            let token = g.next_token;
            g.next_token += 1;
            g.origin_writes.insert(token, (start, pos));
            return Plan::Go { token, end: pos };
        }
        if first == Check::Wait {
            return Plan::Wait;
        }
        // The first chunk needs copies. Take them, and those of the following chunks of this
        // request, in one job (one origin read, one commit per snapshot), as far as the cap
        // allows: each chunk position takes one copy slot.
        let cap = if self.cfg.copy_cap == 0 {
            usize::MAX
        } else {
            self.cfg.copy_cap
        };
        if g.copies >= cap {
            for s in g.snaps.iter_mut() {
                s.commit.parked += 1;
            }
            return Plan::Wait;
        }
        let mut targets = Vec::new();
        let mut invalidations = Vec::new();
        let mut slots = 0usize;
        let mut pos = start;
        while pos < limit && g.copies + slots < cap && slots < MAX_BATCH {
            let (step_end, check) = check_chunk(g, pos, limit, exclude);
            if check == Check::Copy {
                slots += 1;
                take_copies(g, pos, exclude, &mut targets, &mut invalidations);
            }
            pos = step_end;
        }
        g.copies += slots;
        g.peak_copies = g.peak_copies.max(g.copies);
        // Header writes never run under the lock: finish_copies runs them.
        g.deferred.extend(invalidations.into_iter().flatten());
        Plan::Copy(targets, slots)
    }

    /// Drops a gate token once the origin write is done.
    pub(super) fn release(&self, token: u64) {
        let mut g = self.lock();
        g.origin_writes.remove(&token);
        self.notify();
    }

    /// Reads the origin span covering every target's chunk once, piece by piece, and writes each
    /// piece to every COW whose chunk it overlaps. Returns each target's outcome.
    pub(super) fn copy_chunks(&self, targets: &[Target]) -> Vec<io::Result<()>> {
        let mut results: Vec<io::Result<()>> = targets.iter().map(|_| Ok(())).collect();
        let size = self.dev.size();
        let lo = targets.iter().map(|t| t.cs.start(t.old)).min().unwrap_or(0);
        let hi = targets
            .iter()
            .map(|t| t.cs.start(t.old).saturating_add(t.cs.bytes()))
            .max()
            .unwrap_or(0)
            .min(size);
        let mut buf = vec![0u8; COPY_PIECE.min(hi.saturating_sub(lo)) as usize];
        let mut p = lo;
        while p < hi {
            let n = COPY_PIECE.min(hi - p);
            let piece = &mut buf[..n as usize];
            if let Err(e) = self.dev.read_at(piece, p) {
                error!("{}: reading origin for a copy: {e}", self.name);
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(io::Error::new(e.kind(), e.to_string()));
                }
                break;
            }
            for (t, r) in targets.iter().zip(results.iter_mut()) {
                let cstart = t.cs.start(t.old);
                let (a, b) = (p.max(cstart), (p + n).min(cstart + t.cs.bytes()));
                if r.is_err() || a >= b {
                    continue;
                }
                let slice = &piece[(a - p) as usize..(b - p) as usize];
                *r = t.cow.write_at(slice, t.cs.start(t.new) + (a - cstart));
            }
            p += n;
        }
        results
    }

    /// Hands copied exceptions to their commit queues (or invalidates the snapshots whose copy
    /// failed, saying `what` failed: "copying", "writing"), frees the copy slot, then waits for
    /// the commits.
    pub(super) fn finish_copies(
        &self,
        targets: &[Target],
        results: Vec<io::Result<()>>,
        slots: usize,
        what: &str,
    ) -> Vec<bool> {
        let mut g = self.lock();
        g.copies -= slots;
        let written = targets.iter().zip(&results).map(|(t, r)| {
            let r = r.as_ref().map(|_| ());
            (
                t.id,
                t.old,
                t.new,
                r.map_err(|e| {
                    format!(
                        "{what} origin chunk {} (byte {}) to COW chunk {}: {e}",
                        t.old,
                        t.cs.start(t.old),
                        t.new
                    )
                }),
            )
        });
        self.hand_to_commit(g, written, true);
        targets
            .iter()
            .zip(&results)
            .map(|(t, r)| r.is_ok() && self.wait_commit(t.id, t.old, t.new))
            .collect()
    }
}
