//! Merges in the background, crash-safe: the merge is saved in the state directory before its
//! first run and stays there until it is done, so a daemon killed at any point resumes it at the
//! next start, before any export of the origin runs (a guest write to a merged chunk would
//! otherwise become a new exception that the resumed merge copies back over it). A failed merge
//! is saved with its reason and retried at the next start or `merge start`; meanwhile the origin
//! keeps serving the merging snapshot's view, which is what it is becoming. Shutdown stops a
//! merge between copy pieces; the run it abandons is merged again at the next start.
//!
//! The manager's lock is never held while the engine waits (starting a merge waits for the
//! origin's in-flight writes) or while a merge thread is joined.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use log::{error, info, warn};
use serde::{Deserialize, Serialize};

use super::{Manager, ManagerError};
use crate::storage::{MergeProgress, Origin};

/// A merge as the control plane sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MergeStatus {
    pub snapshot: String,
    pub origin: String,
    /// "running" | "done" | "failed" | "stopped"
    pub state: String,
    pub total_exceptions: u64,
    pub remaining_exceptions: u64,
    /// The snapshot's chunk size: each merged exception is one chunk of this many bytes.
    #[serde(default)]
    pub chunk_bytes: u64,
    pub elapsed_s: f64,
    pub message: String,
}

/// The running (or last) merge.
pub(super) struct MergeJob {
    pub status: Arc<Mutex<MergeStatus>>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<()>>,
}

impl MergeJob {
    pub fn running(&self) -> bool {
        lock(&self.status).state == "running"
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a merge thread ended.
enum Outcome {
    Done,
    Failed(String),
    Stopped,
}

impl Manager {
    /// Starts merging `snapshot` into its origin (or retries its failed merge) in the background.
    pub fn merge_start(self: &Arc<Self>, snapshot: &str) -> Result<MergeStatus, ManagerError> {
        let spec = self
            .snapshot_specs()
            .into_iter()
            .find(|s| s.name == snapshot)
            .ok_or_else(|| ManagerError::NotFound(format!("no snapshot named {snapshot:?}")))?;
        let (origin, id) = self.graph.snapshot_engine(snapshot)?;
        origin
            .check_mergeable(id)
            .map_err(|e| ManagerError::InvalidArgument(format!("cannot merge {snapshot}: {e}")))?;
        let total = origin.exception_count(id).unwrap_or(0);
        let status = Arc::new(Mutex::new(MergeStatus {
            snapshot: snapshot.to_owned(),
            origin: spec.origin.clone(),
            state: "running".into(),
            total_exceptions: total,
            remaining_exceptions: total,
            chunk_bytes: origin.chunk_bytes(id).unwrap_or(0),
            elapsed_s: 0.0,
            message: String::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        // Reserve the merge slot and save the merge before the engine can run any of it.
        let previous = {
            let mut g = self.lock();
            if let Some(m) = g.merge.as_ref().filter(|m| m.running()) {
                return Err(ManagerError::MergeInProgress(
                    lock(&m.status).origin.clone(),
                ));
            }
            if let Some(other) = g.state.merging.clone().filter(|m| m != snapshot) {
                let origin = self.origin_of_locked(&g, &other);
                return Err(ManagerError::MergeInProgress(origin));
            }
            let previous = (g.state.merging.clone(), g.state.merge_failed.take());
            g.state.merging = Some(snapshot.to_owned());
            g.merge = Some(MergeJob {
                status: status.clone(),
                stop: stop.clone(),
                thread: None,
            });
            previous
        };
        let started = self.save().and_then(|()| {
            origin
                .start_merge(id)
                .map_err(|e| ManagerError::InvalidArgument(format!("cannot merge {snapshot}: {e}")))
        });
        if let Err(e) = started {
            let mut g = self.lock();
            (g.state.merging, g.state.merge_failed) = previous;
            g.merge = None;
            drop(g);
            if let Err(s) = self.save() {
                error!("{s}");
            }
            return Err(e);
        }
        self.events.push(
            "merge-started",
            snapshot,
            format!("{total} exceptions to merge"),
        );
        self.spawn_merge(origin, snapshot, status.clone(), stop)?;
        let s = lock(&status).clone();
        Ok(s)
    }

    /// Runs an engine merge that has started to its end on a thread of its own.
    pub(super) fn spawn_merge(
        self: &Arc<Self>,
        origin: Arc<Origin>,
        snapshot: &str,
        status: Arc<Mutex<MergeStatus>>,
        stop: Arc<AtomicBool>,
    ) -> Result<(), ManagerError> {
        let me = Arc::downgrade(self);
        let name = snapshot.to_owned();
        let (st, halt) = (status.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("merge-{snapshot}"))
            .spawn(move || merge_thread(me, &origin, &name, &st, &halt))
            .map_err(ManagerError::Thread)?;
        let mut g = self.lock();
        match g.merge.as_mut() {
            Some(m) if Arc::ptr_eq(&m.status, &status) => m.thread = Some(thread),
            _ => {
                g.merge = Some(MergeJob {
                    status,
                    stop,
                    thread: Some(thread),
                })
            }
        }
        Ok(())
    }

    /// A finished merge: the snapshot is gone from the origin; drop it and its exports.
    fn merged(&self, name: &str) {
        self.remove_exports_of(name);
        let _ = self.graph.forget_snapshot(name);
        {
            let mut g = self.lock();
            g.state.graph.snapshots.retain(|s| s.name != name);
            g.state.origin_written.remove(name);
            g.state.merging = None;
            g.state.merge_failed = None;
        }
        if let Err(e) = self.save() {
            error!("{e}: {}", source_text(&e));
        }
    }

    /// A failed merge: saved with its reason; the origin stays in merge mode.
    fn merge_failed(&self, message: &str) {
        self.lock().state.merge_failed = Some(message.to_owned());
        if let Err(e) = self.save() {
            error!("{e}: {}", source_text(&e));
        }
    }

    pub fn merge_status(&self) -> Option<MergeStatus> {
        let g = self.lock();
        g.merge.as_ref().map(|m| lock(&m.status).clone())
    }

    /// Stops a running merge at its next copy piece and waits for its thread (shutdown).
    pub(super) fn stop_merge(&self) {
        let job = self.lock().merge.as_mut().map(|m| {
            m.stop.store(true, Ordering::SeqCst);
            m.thread.take()
        });
        if let Some(Some(t)) = job {
            if t.join().is_err() {
                error!("the merge thread panicked");
            }
        }
    }
}

fn source_text(e: &dyn std::error::Error) -> String {
    e.source().map(|s| s.to_string()).unwrap_or_default()
}

fn merge_thread(
    me: Weak<Manager>,
    origin: &Origin,
    name: &str,
    status: &Mutex<MergeStatus>,
    stop: &AtomicBool,
) {
    let t0 = Instant::now();
    let outcome = loop {
        if stop.load(Ordering::SeqCst) {
            break Outcome::Stopped;
        }
        match origin.merge_step_until(stop) {
            Ok(MergeProgress::Merged { remaining, .. }) => {
                let mut s = lock(status);
                s.remaining_exceptions = remaining;
                s.elapsed_s = t0.elapsed().as_secs_f64();
            }
            Ok(MergeProgress::Done) => break Outcome::Done,
            Ok(MergeProgress::Stopped) => break Outcome::Stopped,
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                break Outcome::Failed(msg);
            }
        }
    };
    let mut s = lock(status);
    s.elapsed_s = t0.elapsed().as_secs_f64();
    let Some(m) = me.upgrade() else { return };
    match outcome {
        Outcome::Done => {
            s.state = "done".into();
            s.remaining_exceptions = 0;
            m.events.push(
                "merge-done",
                name,
                format!("merged in {:.2} s", s.elapsed_s),
            );
            drop(s);
            m.merged(name);
        }
        Outcome::Failed(msg) => {
            s.state = "failed".into();
            s.message = msg.clone();
            drop(s);
            warn!("merge of {name} failed: {msg}; the origin keeps serving the merged view, and the merge is retried at the next start or `merge start`");
            m.events.push("merge-failed", name, msg.clone());
            m.merge_failed(&msg);
        }
        Outcome::Stopped => {
            s.state = "stopped".into();
            s.message = "stopped by shutdown; resumes at the next start".into();
            info!(
                "merge of {name} stopped with {} exceptions left; it resumes at the next start",
                s.remaining_exceptions
            );
        }
    }
}
