//! Held origin writes: a guest write to origin chunks that still need copy-outs hands its data
//! here and completes at once (write-back) or when the data landed (write-through). One thread
//! per origin takes the held writes in arrival order, in batches: it copies out every chunk the
//! batch needs, commits each snapshot's new exceptions in one group (snapshots in parallel),
//! then writes the held data into the origin. So a first write costs its queue one memcpy, and
//! hundreds of first writes share one commit.
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

use super::copy::{check_chunk, Check, CommitMode, GateMode, Target};
use super::datapath::Data;
use super::engine::{Health, Inner, Origin, SnapshotId};

/// The longest write that may be held (longer ones take the synchronous path).
pub const MAX_HELD_WRITE: u64 = 1 << 20;
/// Most bytes held at once per origin: past it, writes take the synchronous path (whose gate
/// waits for copy slots), so a guest that writes faster than the copies go is held back.
const MAX_HELD_BYTES: u64 = 64 << 20;
/// Most held writes one batch takes on.
const MAX_BATCH: usize = 4096;

/// Called once a held write landed (or failed).
pub type HeldDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// One held write.
pub(super) struct Held {
    seq: u64,
    offset: u64,
    data: Vec<u8>,
    /// Write-through: make the data durable before `done`.
    durable: bool,
    done: Option<HeldDone>,
    origin: Arc<Origin>,
}

/// The held writes of one origin, under the origin lock.
#[derive(Default)]
pub(super) struct HeldState {
    /// (start byte, seq) → end byte of every held write not landed yet.
    ranges: BTreeMap<(u64, u64), u64>,
    bytes: u64,
    next_seq: u64,
    /// Every held write with a lower seq has landed.
    landed: u64,
}

impl HeldState {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether a held write with a seq below `before` overlaps `[start, end)`.
    pub fn overlaps(&self, start: u64, end: u64, before: u64) -> bool {
        if self.ranges.is_empty() {
            return false;
        }
        let from = (start.saturating_sub(MAX_HELD_WRITE), 0);
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

fn held_thread(rx: Receiver<Held>) {
    while let Ok(first) = rx.recv() {
        let origin = first.origin.clone();
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        origin.write_held(batch);
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
            let name = format!("held-{}", self.name);
            let name: String = name.chars().take(15).collect();
            if std::thread::Builder::new()
                .name(name)
                .spawn(move || held_thread(rx))
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
        for &pos in &copies {
            for s in g.snaps.iter_mut() {
                if s.health == Health::Invalid {
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
                        let why = format!(
                            "COW full: no room to copy out origin chunk {old} (origin write at \
                             byte {pos})"
                        );
                        if let Some(io) = s.invalidate(why) {
                            g.deferred.push(io);
                        }
                    }
                }
            }
        }
        g.copies += copies.len();
        g.peak_copies = g.peak_copies.max(g.copies);
        HeldPlan::Ready(targets, copies.len())
    }

    /// Lands a batch of held writes, in order.
    fn write_held(&self, mut batch: Vec<Held>) {
        let mut i = 0;
        while i < batch.len() {
            let mut planned = Vec::new();
            {
                let mut g = self.lock();
                for h in &batch[i..] {
                    match self.plan_held(&mut g, h) {
                        HeldPlan::Ready(targets, slots) => planned.push((targets, slots)),
                        HeldPlan::Stuck => break,
                    }
                }
            }
            if planned.is_empty() {
                // The first one waits for something: the synchronous path waits with it.
                let h = &batch[i];
                let r = self.origin_data_as(Data::Bytes(&h.data), h.offset, GateMode::Held(h.seq));
                let r = r.map_err(io::Error::from);
                self.land(&mut batch[i..=i], vec![r]);
                i += 1;
                continue;
            }
            let n = planned.len();
            self.copy_and_commit(planned);
            // Every chunk is safe now (the gate still waits for snapshot reads of the origin
            // that were in flight when the exceptions were made). A snapshot whose copy failed
            // went invalid; the write goes on for the others.
            let outcomes = batch[i..i + n]
                .iter()
                .map(|h| {
                    self.origin_data_as(Data::Bytes(&h.data), h.offset, GateMode::Held(h.seq))
                        .map_err(io::Error::from)
                })
                .collect();
            self.land(&mut batch[i..i + n], outcomes);
            i += n;
        }
    }

    /// Copies out every planned write's chunks, hands them to their commit queues and commits
    /// every snapshot that got any, in parallel (a failed copy invalidates its snapshot).
    fn copy_and_commit(&self, planned: Vec<(Vec<Target>, usize)>) {
        let mut slots = 0;
        let mut written = Vec::new();
        let mut olds: BTreeMap<SnapshotId, Vec<u64>> = BTreeMap::new();
        for (targets, n) in &planned {
            slots += n;
            let results = self.copy_chunks(targets);
            for (t, r) in targets.iter().zip(results) {
                let r = r.map_err(|e| {
                    format!(
                        "copying origin chunk {} (byte {}) to COW chunk {}: {e}",
                        t.old,
                        t.cs.start(t.old),
                        t.new
                    )
                });
                olds.entry(t.id).or_default().push(t.old.0);
                written.push((t.id, t.old, t.new, r));
            }
        }
        let mut g = self.lock();
        g.copies -= slots;
        self.hand_to_commit(g, written.into_iter());
        let commit = |(id, olds): (&SnapshotId, &Vec<u64>)| {
            self.commit_until(*id, CommitMode::Eager, |s| {
                olds.iter()
                    .all(|o| !s.pending.contains_key(o))
                    .then_some(())
            })
        };
        let mut each = olds.iter();
        let Some(first) = each.next() else { return };
        std::thread::scope(|sc| {
            for other in each {
                sc.spawn(move || commit(other));
            }
            commit(first);
        });
    }

    /// Ends held writes with their outcomes: makes the durable ones durable, drops them from
    /// the held set and calls their `done`.
    fn land(&self, hs: &mut [Held], mut outcomes: Vec<io::Result<()>>) {
        if hs.iter().any(|h| h.durable) {
            if let Err(e) = self.dev.flush() {
                error!("{}: flushing held writes: {e}", self.name);
                for (h, r) in hs.iter().zip(outcomes.iter_mut()) {
                    if h.durable && r.is_ok() {
                        *r = Err(io::Error::new(e.kind(), e.to_string()));
                    }
                }
            }
        }
        {
            let mut g = self.lock();
            for h in hs.iter() {
                let len = h.data.len() as u64;
                g.held.ranges.remove(&(h.offset, h.seq));
                g.held.bytes -= len;
                g.held.landed = g.held.landed.max(h.seq + 1);
            }
            self.notify();
        }
        for (h, r) in hs.iter_mut().zip(outcomes) {
            if let Err(e) = &r {
                error!("{}: held write at byte {} failed: {e}", self.name, h.offset);
            }
            if let Some(done) = h.done.take() {
                done(r);
            }
        }
    }
}
