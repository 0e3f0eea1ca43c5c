//! The snapshot engine's shared state: an `Origin` and the snapshots taken of it, with the
//! control operations (add, remove, status, table line). The data path is in datapath.rs, copy
//! jobs and group commit in copy.rs, merging in merge.rs.
//!
//! Lock order and waiting rules:
//! - `Origin::inner` (one `std::sync::Mutex`) guards everything mutable: the snapshot list, each
//!   snapshot's exception store, pending copies, tracked reads, the copy-slot count and the merge
//!   state. It is the only engine lock; nothing is locked while holding it except device-internal
//!   locks, which are never held by the engine (no device I/O runs under `inner`).
//! - Every operation plans under `inner` (a plan enum), drops it, does its I/O, and relocks to
//!   record the outcome. The only wait is `Condvar::wait` on `inner`, which releases it, so
//!   completions (which need `inner`) always make progress. A copier never waits between taking a
//!   copy slot / allocating an exception and handing its entry to the commit queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use log::{error, warn};

use super::held::{HeldState, Holder};
use super::persistent::Persistent;
use super::store::{ExceptionStore, MetaIo, Run, StoreKind, Transient, Usage};
use crate::storage::block::device::BlockDevice;
use crate::storage::error::CowError;
use crate::storage::units::{ChunkIndex, ChunkSize, SECTOR_BYTES};

/// Default cap on in-flight copies (Linux `snapshot_cow_threshold`).
pub const DEFAULT_COPY_CAP: usize = 2048;

/// Identifies a snapshot of an origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub u64);

/// Origin-wide settings.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Most copy jobs in flight at once; 0 = unlimited.
    pub copy_cap: usize,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            copy_cap: DEFAULT_COPY_CAP,
        }
    }
}

/// How to open a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// The COW's name (file path) for messages and the table line.
    pub name: String,
    pub kind: StoreKind,
    /// Chunk size in sectors; 0: on-disk value or 32 for P, an error for N.
    pub chunk_sectors: u64,
    pub discard_zeroes_cow: bool,
    /// Needs `discard_zeroes_cow`.
    pub discard_passdown_origin: bool,
}

impl SnapshotConfig {
    pub fn new(name: &str, kind: StoreKind, chunk_sectors: u64) -> SnapshotConfig {
        SnapshotConfig {
            name: name.to_owned(),
            kind,
            chunk_sectors,
            discard_zeroes_cow: false,
            discard_passdown_origin: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    Valid,
    Invalid,
    Overflow,
}

/// Group-commit bookkeeping of one snapshot.
#[derive(Debug, Default)]
pub(super) struct CommitState {
    /// Exceptions allocated whose copy has not reached `queue` yet.
    pub outstanding: usize,
    /// Copied exceptions waiting for a metadata commit.
    pub queue: Vec<(ChunkIndex, ChunkIndex)>,
    /// Copied exceptions a flush made durable, in allocation order, ahead of `queue`: their
    /// metadata is the next commit's (a pipelined commit left it for the next cycle).
    pub synced: Vec<(ChunkIndex, ChunkIndex)>,
    /// COW chunks allocated and not yet committed, in allocation order: commits take only the
    /// in-order prefix of copied entries, so the table stays in allocation order (as Linux
    /// keeps it) whatever order the copies finish in.
    pub order: std::collections::VecDeque<u64>,
    /// A thread is writing a commit now.
    pub committing: bool,
    /// Old chunks in `queue` copied out for an origin write: their commit is always durable
    /// (the origin's new data follows it). The others (a snapshot's own first writes) may be
    /// committed light in write-back mode, the metadata left for the next flush's sync.
    pub sync: std::collections::HashSet<u64>,
    /// Counters for `stats`: origin chunks copied in, requests parked on the copy cap,
    /// metadata commits written.
    pub copies: u64,
    pub parked: u64,
    pub commits: u64,
}

pub(super) struct Snap {
    pub id: SnapshotId,
    pub cfg: SnapshotConfig,
    pub cow: Arc<dyn BlockDevice>,
    pub store: Box<dyn ExceptionStore>,
    pub health: Health,
    /// Origin chunk → COW chunk of exceptions being copied or committed.
    pub pending: HashMap<u64, u64>,
    /// Snapshot reads in flight that read the origin, per chunk.
    pub reads: HashMap<u64, u32>,
    /// Writes in flight to existing exceptions, per chunk (a merge waits for them).
    pub cow_writes: HashMap<u64, u32>,
    pub commit: CommitState,
    /// Why the snapshot went invalid: the operation, where, and the error.
    pub invalid_reason: Option<String>,
}

impl Snap {
    pub fn cs(&self) -> ChunkSize {
        self.store.chunk_size()
    }

    /// Marks the snapshot invalid because of `why` (the operation, where, and the error);
    /// returns the header write to run outside the lock.
    pub fn invalidate(&mut self, why: String) -> Option<(Arc<dyn BlockDevice>, MetaIo, String)> {
        if self.health == Health::Invalid {
            return None;
        }
        warn!("{}: snapshot invalidated: {why}", self.cfg.name);
        self.health = Health::Invalid;
        self.invalid_reason = Some(why);
        let io = self.store.plan_invalidate();
        (!io.is_empty()).then(|| (self.cow.clone(), io, self.cfg.name.clone()))
    }
}

/// An invalidation header write to run outside the lock: the COW, the write, its name.
pub(super) type Invalidation = (Arc<dyn BlockDevice>, MetaIo, String);

/// Runs an invalidation header write planned by `Snap::invalidate`.
pub(super) fn run_invalidation(plan: Option<(Arc<dyn BlockDevice>, MetaIo, String)>) {
    if let Some((cow, io, name)) = plan {
        if let Err(e) = io.run(&*cow) {
            error!("{name}: cannot mark the snapshot invalid on disk: {e}");
        }
    }
}

#[derive(Debug)]
pub(super) struct MergeState {
    pub id: SnapshotId,
    pub run: Option<Run>,
    pub failed: bool,
}

#[derive(Default)]
pub(super) struct Inner {
    pub snaps: Vec<Snap>,
    pub next_id: u64,
    pub copies: usize,
    pub peak_copies: usize,
    /// Origin writes past their gate, by token: byte range.
    pub origin_writes: HashMap<u64, (u64, u64)>,
    pub next_token: u64,
    /// Threads adding a snapshot or starting a merge: new origin writes wait.
    pub barrier: usize,
    pub merge: Option<MergeState>,
    /// Snapshots merged into the origin: they read and write as the origin now.
    pub merged: Vec<SnapshotId>,
    /// Invalidation header writes planned by the gate, run by `finish_copies`.
    pub deferred: Vec<(Arc<dyn BlockDevice>, MetaIo, String)>,
    /// Origin writes held until their copy-outs are committed (held.rs).
    pub held: HeldState,
}

impl Inner {
    pub fn snap(&self, id: SnapshotId) -> Option<&Snap> {
        self.snaps.iter().find(|s| s.id == id)
    }

    pub fn snap_mut(&mut self, id: SnapshotId) -> Option<&mut Snap> {
        self.snaps.iter_mut().find(|s| s.id == id)
    }

    pub fn merging(&self) -> Option<SnapshotId> {
        self.merge.as_ref().map(|m| m.id)
    }
}

/// A snapshot whose store is open, ready to attach to a frozen origin.
pub struct PreparedSnapshot {
    cfg: SnapshotConfig,
    cow: Arc<dyn BlockDevice>,
    pub(super) store: Box<dyn ExceptionStore>,
    pub(super) valid: bool,
}

/// An origin with writes held back (see [`Origin::freeze`]); dropping it resumes them.
pub struct Frozen<'a> {
    origin: &'a Origin,
}

impl Frozen<'_> {
    /// The frozen origin.
    pub fn origin(&self) -> &Origin {
        self.origin
    }

    /// Publishes a prepared snapshot: it sees exactly the origin as frozen.
    pub fn attach(&self, p: PreparedSnapshot) -> Result<SnapshotId, CowError> {
        let mut g = self.origin.lock();
        if g.merge.is_some() {
            return Err(CowError::Merging);
        }
        let id = SnapshotId(g.next_id);
        g.next_id += 1;
        g.snaps.push(Snap {
            id,
            cfg: p.cfg,
            cow: p.cow,
            store: p.store,
            health: if p.valid {
                Health::Valid
            } else {
                Health::Invalid
            },
            invalid_reason: (!p.valid)
                .then(|| "the COW's header says invalid (valid = 0) when it was opened".into()),
            pending: HashMap::new(),
            reads: HashMap::new(),
            cow_writes: HashMap::new(),
            commit: CommitState::default(),
        });
        Ok(id)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let mut g = self.origin.lock();
        g.barrier -= 1;
        self.origin.notify();
    }
}

/// An origin device and its snapshots. Every method takes `&self` and may be called from many
/// threads at once.
pub struct Origin {
    pub(super) dev: Arc<dyn BlockDevice>,
    pub(super) name: String,
    pub(super) cfg: OriginConfig,
    pub(super) inner: Mutex<Inner>,
    pub(super) cv: Condvar,
    /// Threads in `cv.wait` (counted under the lock): `notify` skips the futex syscall, which
    /// std's condvar makes on every notify, when nobody waits (the direct path's common case).
    waiters: AtomicUsize,
    pub(super) holder: Holder,
}

impl Origin {
    pub fn new(dev: Arc<dyn BlockDevice>, name: &str, cfg: OriginConfig) -> Origin {
        Origin {
            dev,
            name: name.to_owned(),
            cfg,
            inner: Mutex::new(Inner::default()),
            cv: Condvar::new(),
            waiters: AtomicUsize::new(0),
            holder: Holder::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the bookkeeping half-updated in a way that matters more
        // than refusing all further I/O would, so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn wait<'a>(&self, g: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.wait_timeout(g, None)
    }

    /// Waits for a `notify` (or `timeout`), with the lock released meanwhile.
    pub(super) fn wait_timeout<'a>(
        &self,
        g: MutexGuard<'a, Inner>,
        timeout: Option<std::time::Duration>,
    ) -> MutexGuard<'a, Inner> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let g = match timeout {
            None => self.cv.wait(g).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.cv
                    .wait_timeout(g, t)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        g
    }

    /// Wakes every waiter, after a change to the bookkeeping made under the lock.
    pub(super) fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }

    /// Counters of a snapshot: (copies, parked requests, metadata commits).
    pub fn snapshot_counters(&self, id: SnapshotId) -> Option<(u64, u64, u64)> {
        let g = self.lock();
        g.snap(id)
            .map(|s| (s.commit.copies, s.commit.parked, s.commit.commits))
    }

    /// Size of the origin (and of every snapshot) in bytes.
    pub fn size(&self) -> u64 {
        self.dev.size()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens the COW (loading or initialising a persistent store) and adds the snapshot. The
    /// snapshot sees every origin write completed before this returns and none started after.
    pub fn add_snapshot(
        &self,
        cow: Arc<dyn BlockDevice>,
        cfg: SnapshotConfig,
    ) -> Result<SnapshotId, CowError> {
        let prepared = self.prepare_snapshot(cow, cfg)?;
        self.freeze()?.attach(prepared)
    }

    /// Opens a snapshot's exception store (all of its I/O), without attaching it yet.
    pub fn prepare_snapshot(
        &self,
        cow: Arc<dyn BlockDevice>,
        cfg: SnapshotConfig,
    ) -> Result<PreparedSnapshot, CowError> {
        let origin_block = self.dev.logical_block_size();
        let cow_sectors = cow.size() / SECTOR_BYTES;
        let (store, valid): (Box<dyn ExceptionStore>, bool) = match cfg.kind {
            StoreKind::Transient => {
                if cfg.chunk_sectors == 0 {
                    return Err(CowError::ChunkNotSet { cow: cfg.name });
                }
                let cs = ChunkSize::for_devices(
                    cfg.chunk_sectors,
                    &cfg.name,
                    origin_block,
                    cow.logical_block_size(),
                )?;
                (Box::new(Transient::new(cs, cow_sectors)), true)
            }
            kind => {
                let l = Persistent::open(
                    &*cow,
                    &cfg.name,
                    kind,
                    cfg.chunk_sectors,
                    origin_block,
                    true,
                )?;
                (Box::new(l.store.zero_ahead(cow.clone())), l.header.valid)
            }
        };
        Ok(PreparedSnapshot {
            cfg,
            cow,
            store,
            valid,
        })
    }

    /// Holds new origin writes back, waits for those in flight and flushes the origin: a
    /// consistent point. Writes resume when the returned guard is dropped. Freezing several
    /// origins (in one fixed order) gives one consistent point across disks.
    pub fn freeze(&self) -> Result<Frozen<'_>, CowError> {
        let mut g = self.lock();
        if g.merge.is_some() {
            return Err(CowError::Merging);
        }
        g.barrier += 1;
        while !g.origin_writes.is_empty() || !g.held.is_empty() {
            g = self.wait(g);
        }
        // No origin write is in flight and none can start: make the view durable (outside the
        // lock).
        drop(g);
        let frozen = Frozen { origin: self };
        self.dev.flush().map_err(|source| CowError::Io {
            cow: self.name.clone(),
            source,
        })?;
        Ok(frozen)
    }

    /// Drops a snapshot. I/O already in flight to it completes or fails on its own.
    pub fn remove_snapshot(&self, id: SnapshotId) -> Result<(), CowError> {
        let mut g = self.lock();
        if g.merging() == Some(id) {
            return Err(CowError::Merging);
        }
        let before = g.snaps.len();
        g.snaps.retain(|s| s.id != id);
        if g.snaps.len() == before {
            return Err(CowError::NoSuchSnapshot(id.0));
        }
        self.notify();
        Ok(())
    }

    pub fn snapshots(&self) -> Vec<SnapshotId> {
        self.lock().snaps.iter().map(|s| s.id).collect()
    }

    /// The `dmsetup status` text of a snapshot after its target name.
    pub fn status(&self, id: SnapshotId) -> Result<String, CowError> {
        let g = self.lock();
        let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
        let merge_failed = g.merge.as_ref().is_some_and(|m| m.id == id && m.failed);
        Ok(match s.health {
            Health::Invalid => "Invalid".to_owned(),
            _ if merge_failed => "Merge failed".to_owned(),
            Health::Overflow => "Overflow".to_owned(),
            Health::Valid => s.store.usage().to_string(),
        })
    }

    /// The table line: `snapshot <origin> <cow> P|PO|N <cs> [<#feat> <features>]`.
    pub fn table_line(&self, id: SnapshotId) -> Result<String, CowError> {
        let g = self.lock();
        let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
        let mut line = format!(
            "snapshot {} {} {} {}",
            self.name,
            s.cfg.name,
            s.store.kind(),
            s.cs()
        );
        if s.cfg.discard_zeroes_cow {
            if s.cfg.discard_passdown_origin {
                line.push_str(" 2 discard_zeroes_cow discard_passdown_origin");
            } else {
                line.push_str(" 1 discard_zeroes_cow");
            }
        }
        Ok(line)
    }

    /// Copy jobs in flight now, and the most there ever were at once.
    pub fn copies_in_flight(&self) -> (usize, usize) {
        let g = self.lock();
        (g.copies, g.peak_copies)
    }

    /// Why a snapshot went invalid (the operation, where, and the error), if it did.
    pub fn invalid_reason(&self, id: SnapshotId) -> Option<String> {
        let g = self.lock();
        g.snap(id).and_then(|s| s.invalid_reason.clone())
    }

    /// A snapshot's COW usage (the numbers of its status line while it is valid).
    pub fn usage(&self, id: SnapshotId) -> Result<Usage, CowError> {
        let g = self.lock();
        let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
        Ok(s.store.usage())
    }

    /// A snapshot's chunk size in bytes (the on-disk or default value when it was opened
    /// without one).
    pub fn chunk_bytes(&self, id: SnapshotId) -> Result<u64, CowError> {
        let g = self.lock();
        let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
        Ok(s.cs().bytes())
    }

    /// The number of exceptions a snapshot holds.
    pub fn exception_count(&self, id: SnapshotId) -> Result<u64, CowError> {
        let g = self.lock();
        let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
        Ok(s.store.exception_count())
    }
}
