//! Held origin writes: a guest write to origin chunks that still need copy-outs hands its data
//! here and completes once the data landed in the origin (durable too in write-through mode),
//! never while it is only in the daemon's memory, so a `kill -9` keeps every completed write.
//! Two threads per origin form a pipeline and take the held writes in arrival order, in
//! batches. The held thread copies out every chunk a batch needs and commits each snapshot's
//! new exceptions in one group (snapshots in parallel where the COW is on a device); the
//! landing thread (held_land.rs) then writes the batch's data into the origin and completes
//! it, while the held thread copies and commits the next batch; under load one flush commits a
//! batch and makes the next one's copies durable (held_copy.rs). (With every COW in memory a
//! commit is a few copies, and the held thread lands its batches itself.) So a first write
//! costs its queue one memcpy, and a batch of first writes shares one commit.
//!
//! Durability: the origin's new data is written only after the exceptions preserving the old
//! data are committed (durable), so no crash at any point can leave a snapshot reading new
//! data. Until it lands, a held write is visible to nobody: origin reads and writes that touch
//! it wait (reads through the synchronous path), a snapshot creation or a merge start waits for
//! every held write, and `Origin::flush` waits for those held before it.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use log::error;

use super::copy::{check_chunk, take_copies, Check, Target};
use super::engine::{Health, Inner, Origin, SnapshotId};
use super::held_copy::Olds;
use super::held_land::{land_thread, Landing};
use crate::storage::block::image::memory_backed;

/// The longest write that may be held (longer ones take the synchronous path).
pub const MAX_HELD_WRITE: u64 = 1 << 20;
/// Most bytes held at once per origin: past it, writes take the synchronous path (whose gate
/// waits for copy slots), so a guest that writes faster than the copies go is held back.
const MAX_HELD_BYTES: u64 = 32 << 20;
/// Most held writes one batch takes on.
const MAX_BATCH: usize = 4096;
/// Called once a held write landed (or failed).
pub type HeldDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// One held write.
pub(super) struct Held {
    pub seq: u64,
    pub offset: u64,
    pub data: Vec<u8>,
    /// Write-through: make the data durable before `done`.
    pub durable: bool,
    pub done: Option<HeldDone>,
    pub origin: Arc<Origin>,
}

/// The held writes of one origin, under the origin lock.
#[derive(Default)]
pub(super) struct HeldState {
    /// (start byte, seq) → end byte of every held write not landed yet.
    ranges: BTreeMap<(u64, u64), u64>,
    bytes: u64,
    /// The longest held write since the set was last empty (bounds the overlap search).
    max_len: u64,
    next_seq: u64,
    /// Every held write with a lower seq has landed.
    landed: u64,
}

impl HeldState {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Drops a held write that landed (or failed) from the set.
    pub fn landed(&mut self, h: &Held) {
        self.ranges.remove(&(h.offset, h.seq));
        self.bytes -= h.data.len() as u64;
        self.landed = self.landed.max(h.seq + 1);
        if self.ranges.is_empty() {
            self.max_len = 0;
        }
    }

    /// Whether a held write with a seq below `before` overlaps `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64, before: u64) -> bool {
        if self.ranges.is_empty() {
            return false;
        }
        let from = (start.saturating_sub(self.max_len), 0);
        self.ranges
            .range(from..(end, 0))
            .any(|(&(s, seq), &e)| seq < before && s < end && start < e)
    }
}

/// The thread side: the channel held writes go through.
pub(super) struct Holder {
    tx: Mutex<Option<Sender<Held>>>,
}

impl Holder {
    pub fn new() -> Holder {
        Holder {
            tx: Mutex::new(None),
        }
    }
}

/// The first stage: plans each batch, copies its chunks out and commits them, then hands it to
/// the landing stage, so the next batch's copies and commit overlap this one's origin writes.
fn held_thread(rx: Receiver<Held>, name: String) {
    let (tx, landing) = channel();
    let spawned = std::thread::Builder::new()
        .name(name)
        .spawn(move || land_thread(landing));
    if spawned.is_err() {
        error!("held writes: no thread for the landing stage, landing them in this one");
    }
    let mut stages = Stages {
        landing: spawned.is_ok().then_some(tx),
        known: Vec::new(),
        handed: None,
        prev: None,
    };
    loop {
        let first = match rx.try_recv() {
            Ok(h) => h,
            Err(_) => {
                // Nothing to pipeline with: the batch before commits on its own.
                stages.finish();
                match rx.recv() {
                    Ok(h) => h,
                    Err(_) => break,
                }
            }
        };
        let origin = first.origin.clone();
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        origin.write_held(batch, &mut stages);
    }
}

/// The first stage's side of the landing stage.
struct Stages {
    landing: Option<Sender<Landing>>,
    /// Per snapshot: whether its commits wait for a device.
    known: Vec<(SnapshotId, bool)>,
    /// The seq after the last held write handed to the landing stage, until the first stage
    /// has seen it land.
    handed: Option<u64>,
    /// The batch whose copies are durable and whose exceptions are not committed yet: the
    /// next batch's flush commits them (pipelined, while batches land on the landing stage).
    prev: Option<(Vec<Held>, Olds)>,
}

impl Stages {
    /// Lands `item`: on the landing stage when `staged`, else on this thread, after everything
    /// the landing stage still has.
    fn send(&mut self, origin: &Origin, item: Landing, staged: bool) {
        if let Some(tx) = self.landing.as_ref().filter(|_| staged) {
            self.handed = Some(item.last_seq() + 1);
            if let Err(e) = tx.send(item) {
                e.0.run(false);
            }
            return;
        }
        if let Some(seq) = self.handed.take() {
            origin.wait_landed(seq);
        }
        item.run(false);
    }

    /// Commits the pipelined batch, if there is one, and hands it to the landing stage.
    fn finish(&mut self) {
        let Some((hs, olds)) = self.prev.take() else {
            return;
        };
        let Some(origin) = hs.first().map(|h| h.origin.clone()) else {
            return;
        };
        origin.commit_olds(&olds, true);
        self.send(&origin, Landing::Committed(hs), true);
    }
}

/// What planning found for one held write.
enum HeldPlan {
    /// Its copies (slots taken); the chunks need nothing else.
    Ready(Vec<Target>, usize),
    /// It waits for something (a copy in flight, an earlier write of this batch, the cap).
    Stuck,
}

impl Origin {
    /// Holds a write of `data` at `offset` of the origin: `true` when taken, and `done` will be
    /// called once it landed (durable too when `durable`). `false`: not taken (a snapshot being
    /// created or merged, too much held already), use the synchronous path.
    pub fn hold_write(
        self: &Arc<Self>,
        offset: u64,
        data: Vec<u8>,
        durable: bool,
        done: HeldDone,
    ) -> bool {
        let len = data.len() as u64;
        if len == 0 || len > MAX_HELD_WRITE || offset.checked_add(len) > Some(self.size()) {
            return false;
        }
        let mut g = self.lock();
        if g.barrier > 0 || g.merge.is_some() || g.held.bytes + len > MAX_HELD_BYTES {
            return false;
        }
        let mut tx = self.holder.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.is_none() {
            let (t, rx) = channel();
            let name =
                |stage| -> String { format!("{stage}-{}", self.name).chars().take(15).collect() };
            let landing = name("land");
            if std::thread::Builder::new()
                .name(name("held"))
                .spawn(move || held_thread(rx, landing))
                .is_err()
            {
                return false;
            }
            *tx = Some(t);
        }
        let seq = g.held.next_seq;
        let held = Held {
            seq,
            offset,
            data,
            durable,
            done: Some(done),
            origin: self.clone(),
        };
        // Sent under the origin lock: the channel's order is the seq order.
        if tx.as_ref().is_some_and(|t| t.send(held).is_ok()) {
            g.held.next_seq += 1;
            g.held.ranges.insert((offset, seq), offset + len);
            g.held.bytes += len;
            g.held.max_len = g.held.max_len.max(len);
            true
        } else {
            *tx = None;
            false
        }
    }

    /// Waits until every write held before this call has landed.
    pub(super) fn wait_held(&self) {
        let mut g = self.lock();
        let target = g.held.next_seq;
        while g.held.landed < target {
            g = self.wait(g);
        }
    }

    /// Waits until every held write before `seq` has landed.
    fn wait_landed(&self, seq: u64) {
        let mut g = self.lock();
        while g.held.landed < seq {
            g = self.wait(g);
        }
    }

    /// Whether some valid snapshot's commit waits for a device: its COW is no file in memory
    /// (tmpfs, ramfs), and a device whose kind is unknown counts as one that waits. Without
    /// one, a commit is a few copies and a second stage would only add a hand-off per batch.
    /// `known` caches the answer per snapshot.
    fn commits_wait(&self, known: &mut Vec<(SnapshotId, bool)>) -> bool {
        let cows: Vec<_> = {
            let g = self.lock();
            g.snaps
                .iter()
                .filter(|s| s.health != Health::Invalid)
                .map(|s| {
                    (
                        s.id,
                        known.iter().find(|k| k.0 == s.id).map(|k| k.1),
                        s.cow.clone(),
                    )
                })
                .collect()
        };
        known.retain(|k| cows.iter().any(|c| c.0 == k.0));
        cows.into_iter().any(|(id, wait, cow)| {
            wait.unwrap_or_else(|| {
                let wait = cow.raw_fd().is_none_or(|fd| !memory_backed(fd));
                known.push((id, wait));
                wait
            })
        })
    }

    /// Plans one held write: its chunks must not wait for anything, and no earlier held write
    /// may overlap it; then takes copy slots and allocates the exceptions it needs.
    fn plan_held(&self, g: &mut Inner, h: &Held) -> HeldPlan {
        let end = h.offset + h.data.len() as u64;
        if g.merge.is_some() || g.held.overlaps(h.offset, end, h.seq) {
            return HeldPlan::Stuck;
        }
        let mut copies = Vec::new();
        let mut pos = h.offset;
        while pos < end {
            let (step_end, check) = check_chunk(g, pos, end, None);
            match check {
                Check::Wait => return HeldPlan::Stuck,
                Check::Copy => copies.push(pos),
                Check::Safe => {}
            }
            pos = step_end;
        }
        let cap = if self.cfg.copy_cap == 0 {
            usize::MAX
        } else {
            self.cfg.copy_cap
        };
        if g.copies + copies.len() > cap {
            return HeldPlan::Stuck;
        }
        let mut targets = Vec::new();
        let mut invalidations = Vec::new();
        for &pos in &copies {
            take_copies(g, pos, None, &mut targets, &mut invalidations);
        }
        g.deferred.extend(invalidations.into_iter().flatten());
        g.copies += copies.len();
        g.peak_copies = g.peak_copies.max(g.copies);
        HeldPlan::Ready(targets, copies.len())
    }

    /// Copies out and commits a batch of held writes, in order, and lands them: on the landing
    /// stage when some commit waits for a device (each group's commit then shares its flush
    /// with the next group's copies), else on this thread (after every write the landing stage
    /// still has).
    fn write_held(&self, batch: Vec<Held>, stages: &mut Stages) {
        let staged = stages.landing.is_some() && self.commits_wait(&mut stages.known);
        if !staged {
            stages.finish();
        }
        let mut rest = batch.into_iter().peekable();
        while rest.peek().is_some() {
            let mut planned = Vec::new();
            let mut ready = Vec::new();
            {
                let mut g = self.lock();
                while let Some(h) = rest.peek() {
                    match self.plan_held(&mut g, h) {
                        HeldPlan::Ready(targets, slots) => planned.push((targets, slots)),
                        HeldPlan::Stuck => break,
                    }
                    ready.extend(rest.next());
                }
            }
            if ready.is_empty() {
                // The first one waits for something (an earlier held write there, a copy in
                // flight, the cap): it lands after the earlier ones, through the gate.
                if let Some(h) = rest.next() {
                    stages.finish();
                    stages.send(self, Landing::Gated(h), staged);
                }
                continue;
            }
            if !staged {
                self.copy_and_commit(planned, None);
                stages.send(self, Landing::Committed(ready), false);
                continue;
            }
            let prev = stages.prev.take();
            let empty = Olds::new();
            let before = prev.as_ref().map_or(&empty, |p| &p.1);
            let olds = self.copy_and_commit(planned, Some(before));
            if let Some((hs, _)) = prev {
                stages.send(self, Landing::Committed(hs), true);
            }
            stages.prev = Some((ready, olds));
        }
    }
}
