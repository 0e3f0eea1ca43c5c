//! Clone reset: emptying a writable snapshot and rebuilding its creation state from an anchor
//! (a hidden read-only snapshot taken at the same point, which keeps the origin's old data).

use std::ops::Range;

use super::engine::{CommitState, Health, Origin, SnapshotId};
use crate::storage::error::{CowError, IoError};
use crate::storage::units::ChunkIndex;

/// Largest copy of one restore step.
const RESTORE_STEP_BYTES: u64 = 1 << 20;
/// Copier threads of one restore.
const RESTORE_COPIERS: usize = 16;

impl Origin {
    /// Empties a writable snapshot: every exception is dropped and the COW starts afresh (its
    /// data is discarded). Alone this returns it to its creation state only while the origin
    /// has not been written since (no copy-outs), because the creation state of changed origin
    /// chunks lived only in the COW; `anchored` says the caller restores those chunks next
    /// (see [`Origin::restore_from_anchor`]). The caller pauses the snapshot's own I/O first.
    pub fn reset_snapshot(&self, id: SnapshotId, anchored: bool) -> Result<(), CowError> {
        let frozen = self.freeze()?;
        // Copies and commits started before the freeze finish on their own; the snapshot's own
        // I/O drains once its exports are paused. Wait for both (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut g = self.lock();
        let (cow, mut cfg, cs) = loop {
            if g.merging() == Some(id) {
                return Err(CowError::Merging);
            }
            let s = g.snap(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
            if s.commit.copies > 0 && !anchored {
                return Err(CowError::ResetOriginChanged {
                    cow: s.cfg.name.clone(),
                    copies: s.commit.copies,
                });
            }
            let busy = !s.pending.is_empty()
                || !s.reads.is_empty()
                || !s.cow_writes.is_empty()
                || s.commit.committing
                || !s.commit.queue.is_empty()
                || s.commit.outstanding > 0;
            if !busy {
                break (s.cow.clone(), s.cfg.clone(), s.cs());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(CowError::ResetBusy {
                    cow: s.cfg.name.clone(),
                });
            }
            g = self.wait_timeout(g, Some(left.min(std::time::Duration::from_millis(100))));
        };
        drop(g);
        let io = |source| CowError::Io {
            cow: cfg.name.clone(),
            source,
        };
        // Forget the old table: discard the data where the device can, and zero the header
        // chunk so the store is created afresh (same chunk size).
        let _ = cow.discard(0, cow.size());
        cow.write_at(&vec![0u8; cs.bytes() as usize], 0)
            .map_err(io)?;
        cow.flush().map_err(io)?;
        cfg.chunk_sectors = cs.sectors();
        let fresh = self.prepare_snapshot(cow, cfg)?;
        let mut g = self.lock();
        let s = g.snap_mut(id).ok_or(CowError::NoSuchSnapshot(id.0))?;
        s.store = fresh.store;
        s.health = if fresh.valid {
            Health::Valid
        } else {
            Health::Invalid
        };
        s.pending.clear();
        s.commit = CommitState::default();
        drop(g);
        drop(frozen);
        Ok(())
    }

    /// The chunks `anchor` holds exceptions for (those the origin changed since it was taken),
    /// as ranges in order.
    pub fn changed_chunks(&self, anchor: SnapshotId) -> Result<Vec<Range<u64>>, IoError> {
        let chunk_bytes = {
            let g = self.lock();
            g.snap(anchor)
                .ok_or(IoError::NoSuchSnapshot(anchor.0))?
                .cs()
                .bytes()
        };
        let chunks = self.size().div_ceil(chunk_bytes);
        let mut out = Vec::new();
        // Scan in slices so origin I/O is never held back for long.
        for start in (0..chunks).step_by(1 << 16) {
            let g = self.lock();
            let s = g.snap(anchor).ok_or(IoError::NoSuchSnapshot(anchor.0))?;
            let end = (start + (1 << 16)).min(chunks);
            s.store
                .exception_ranges(ChunkIndex(start), ChunkIndex(end), &mut out);
        }
        Ok(out)
    }

    /// Rebuilds snapshot `id` (just emptied by [`Origin::reset_snapshot`]) to its creation
    /// state: every chunk the origin changed since then is copied from `anchor` into it. Origin
    /// writes may run meanwhile: a chunk changed after the scan was unchanged at the scan, so its
    /// copy-out into `id` carries the creation data. Returns the chunks restored.
    pub fn restore_from_anchor(&self, id: SnapshotId, anchor: SnapshotId) -> Result<u64, IoError> {
        let ranges = self.changed_chunks(anchor)?;
        let chunk_bytes = {
            let g = self.lock();
            let s = g.snap(anchor).ok_or(IoError::NoSuchSnapshot(anchor.0))?;
            s.cs().bytes()
        };
        let per_step = (RESTORE_STEP_BYTES / chunk_bytes).max(1);
        // Pieces of consecutive chunks, at most one step each.
        let mut pieces = Vec::new();
        let mut restored = 0;
        for r in ranges {
            let mut c = r.start;
            while c < r.end {
                let n = (r.end - c).min(per_step);
                let offset = c * chunk_bytes;
                pieces.push((offset, (n * chunk_bytes).min(self.size() - offset) as usize));
                c += n;
            }
            restored += r.end - r.start;
        }
        // Several copiers at once, so their new exceptions share group commits.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let copier = || -> Result<(), IoError> {
            let mut buf = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(offset, len)) = pieces.get(i) else {
                    return Ok(());
                };
                buf.resize(len, 0);
                self.snapshot_read(anchor, &mut buf, offset)?;
                self.snapshot_write(id, &buf, offset)?;
            }
        };
        std::thread::scope(|sc| {
            let workers: Vec<_> = (0..RESTORE_COPIERS.min(pieces.len()))
                .map(|_| sc.spawn(copier))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<()>, IoError>>()
        })?;
        self.snapshot_flush(id)?;
        Ok(restored)
    }
}
