//! The running daemon's device graph under control: exports started and stopped at runtime,
//! snapshots taken of live origins (one consistent point across several), merges in the
//! background, events, and the state directory that brings all of it back after a restart.
//!
//! Parts: state.rs (the saved state and config-file edits; saved.rs is its JSON form),
//! nodes.rs (origins, snapshots, resets), exports.rs, qos.rs (limits and groups), merge.rs
//! (crash-safe background merges), events.rs (the event log and health polling).
//!
//! Locks: `inner` (state, running exports, merge job) is taken first and held only for
//! bookkeeping; the graph's own lock and the engine's origin locks are taken under it, never the
//! other way round. Nothing waits under `inner`: no I/O to guest data, no engine wait (freezing
//! an origin, starting a merge), no thread join.

mod events;
mod exports;
mod merge;
mod nodes;
mod qos;
mod saved;
pub mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use log::{error, info, warn};
use thiserror::Error;

use crate::graph::{Graph, GraphError};
use crate::model::GraphConfig;
use crate::vhost::ServeError;

pub use events::Event;
pub use exports::{build_export, GRAPH_THREADS_PER_QUEUE};
pub use merge::MergeStatus;
pub use nodes::DeletedCow;
pub use qos::GroupChange;
pub use state::{Change, State, StateError};

use events::EventLog;
use exports::{stop_export, RunningExport};
use merge::MergeJob;

/// Why a control operation was refused. `code()` is the stable protocol code.
#[derive(Debug, Error)]
pub enum ManagerError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    InUse(String),
    #[error("origin {0:?} still has snapshots: use --force (protocol: \"force\": true) to delete them and its exports too")]
    HasSnapshots(String),
    #[error(
        "node {0:?} is exported: use --force (protocol: \"force\": true) to remove its exports too"
    )]
    Exported(String),
    #[error("a merge is already running on origin {0:?}")]
    MergeInProgress(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("cannot apply the config file's changes to the saved state")]
    Apply(#[source] Box<ManagerError>),
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
}

impl ManagerError {
    /// The stable error code of the control protocol.
    pub fn code(&self) -> &'static str {
        match self {
            ManagerError::Graph(GraphError::NoSuchNode(_)) | ManagerError::NotFound(_) => {
                "not_found"
            }
            ManagerError::Graph(GraphError::Exists(_)) | ManagerError::Exists(_) => "exists",
            ManagerError::Graph(GraphError::HasSnapshots(_)) | ManagerError::HasSnapshots(_) => {
                "has_snapshots"
            }
            ManagerError::Graph(GraphError::NoCow(_)) | ManagerError::InvalidArgument(_) => {
                "invalid_argument"
            }
            ManagerError::Graph(e) if e.in_use() => "in_use",
            ManagerError::Graph(_) | ManagerError::State(_) => "io_error",
            ManagerError::Serve(ServeError::SocketInUse(_) | ServeError::NotASocket(_))
            | ManagerError::InUse(_) => "in_use",
            ManagerError::Serve(_) => "io_error",
            ManagerError::Exported(_) => "exported",
            ManagerError::MergeInProgress(_) => "merge_in_progress",
            ManagerError::Apply(e) => e.code(),
            ManagerError::Thread(_) => "internal",
        }
    }
}

/// How the daemon's graph is set up at start.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// The config file and its graph, if one was given.
    pub config: Option<(PathBuf, GraphConfig)>,
    /// Where the graph is saved on every change and restored from on start.
    pub state_dir: Option<PathBuf>,
    /// Sockets that may not be used for exports (the control socket).
    pub reserved: Vec<PathBuf>,
    /// Apply the config file's edits to the saved state (else the saved state wins and the
    /// edits are reported).
    pub apply_config: bool,
}

struct Inner {
    state: State,
    exports: BTreeMap<PathBuf, RunningExport>,
    merge: Option<MergeJob>,
    /// Origins that are not served, with why: their merge must resume and cannot.
    blocked: BTreeMap<String, String>,
    /// Edits in the config file that the saved state wins over, as `Change` lines.
    pending_config: Vec<String>,
    /// The QoS groups' shared buckets, by name.
    qos_groups: BTreeMap<String, Arc<crate::qos::QosGroup>>,
}

/// The daemon's graph, exports and control operations.
pub struct Manager {
    graph: Graph,
    inner: Mutex<Inner>,
    state_dir: Option<PathBuf>,
    events: EventLog,
    /// Sockets that may not be used for exports (the control socket).
    reserved: Vec<PathBuf>,
    /// Serializes state-file writes (control requests and the merge thread both save).
    save_lock: Mutex<()>,
}

impl Manager {
    /// Builds the graph from the state directory's saved state if there is one, else from
    /// `initial` (an empty `initial` means none); resumes an interrupted merge; starts every
    /// export.
    pub fn start(
        initial: GraphConfig,
        state_dir: Option<PathBuf>,
        reserved: Vec<PathBuf>,
    ) -> Result<Arc<Manager>, ManagerError> {
        let given = initial != GraphConfig::default();
        Manager::start_with(StartOptions {
            config: given.then(|| (PathBuf::from("the config"), initial)),
            state_dir,
            reserved,
            apply_config: false,
        })
    }

    /// Builds the graph (saved state first, else the config file), resumes an interrupted
    /// merge before any export starts, then starts the exports.
    pub fn start_with(opts: StartOptions) -> Result<Arc<Manager>, ManagerError> {
        let saved = match &opts.state_dir {
            Some(dir) => State::load(dir)?,
            None => None,
        };
        let (mut state, mut pending) = match (saved, &opts.config) {
            (None, Some((_, cfg))) => (State::from_config(cfg.clone(), true), Vec::new()),
            (None, None) => (
                State::from_config(GraphConfig::default(), false),
                Vec::new(),
            ),
            (Some(s), None) => (s, Vec::new()),
            (Some(s), Some((path, cfg))) => {
                let base = s.applied_config.clone().unwrap_or_else(|| s.graph.clone());
                let changes = state::changes(&base, cfg, &s.graph);
                if changes.is_empty() || opts.apply_config {
                    info!("restored the device graph from the state directory");
                } else {
                    warn!(
                        "the state directory wins over {}, which has {} change(s) not applied: {}; \
                         start with --apply-config to apply them",
                        path.display(),
                        changes.len(),
                        changes.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("; ")
                    );
                }
                (s, changes)
            }
        };
        let events = EventLog::open(opts.state_dir.as_deref());
        let mut dropped = Vec::new();
        if opts.state_dir.is_some() {
            // Transient snapshots do not survive a restart of the daemon.
            for s in &state.graph.snapshots {
                let used = std::fs::metadata(&s.cow).is_ok_and(|m| m.len() > 0);
                if s.store == crate::model::StoreType::N && used {
                    dropped.push(s.name.clone());
                }
            }
        }
        let graph = Graph::default();
        for o in &state.graph.origins {
            graph.add_origin(o.clone())?;
        }
        for s in &state.graph.snapshots {
            graph.add_snapshot(s.clone())?;
        }
        // A saved merge resumes before any export can write to its origin.
        let mut blocked = BTreeMap::new();
        let mut resume = None;
        if let Some(snap) = state.merging.clone() {
            let origin_name = state
                .graph
                .snapshots
                .iter()
                .find(|s| s.name == snap)
                .map(|s| s.origin.clone())
                .unwrap_or_default();
            let started = graph
                .snapshot_engine(&snap)
                .map_err(|e| e.to_string())
                .and_then(|(o, id)| {
                    o.start_merge(id)
                        .map(|()| (o, id))
                        .map_err(|e| e.to_string())
                });
            match started {
                Ok((o, id)) => {
                    info!("resuming the merge of {snap} into {origin_name}");
                    resume = Some((o, id, snap));
                }
                Err(why) => {
                    error!(
                        "the merge of {snap} cannot resume ({why}): origin {origin_name} is half \
                         merged, so neither it nor its snapshots are served"
                    );
                    state.merge_failed = Some(why.clone());
                    blocked.insert(origin_name, why);
                }
            }
        }
        let applied = opts.apply_config && !pending.is_empty();
        let m = Arc::new(Manager {
            graph,
            inner: Mutex::new(Inner {
                state: state.clone(),
                exports: BTreeMap::new(),
                merge: None,
                blocked,
                pending_config: Vec::new(),
                qos_groups: state
                    .graph
                    .qos_groups
                    .iter()
                    .map(|g| (g.name.clone(), crate::qos::QosGroup::new(&g.name, &g.qos)))
                    .collect(),
            }),
            state_dir: opts.state_dir.clone(),
            events,
            reserved: opts.reserved.clone(),
            save_lock: Mutex::new(()),
        });
        for name in dropped {
            m.events.push(
                "transient-reset",
                &name,
                "transient snapshot starts empty after a restart".into(),
            );
        }
        for (origin, why) in m.lock().blocked.clone() {
            m.events.push("merge-failed", &origin, why);
        }
        for e in &state.graph.exports {
            if let Err(err) = m.start_export(e.clone()) {
                if m.origin_of(&e.node)
                    .is_some_and(|o| m.lock().blocked.contains_key(&o))
                {
                    error!("export {} not started: {err}", e.socket.display());
                    continue;
                }
                return Err(err);
            }
        }
        if let Some((origin, id, snap)) = resume {
            m.resume_merge(origin, id, &snap)?;
        }
        if applied {
            m.apply_changes(std::mem::take(&mut pending))
                .map_err(|e| ManagerError::Apply(Box::new(e)))?;
        }
        {
            let mut g = m.lock();
            match &opts.config {
                Some((_, cfg)) if pending.is_empty() => g.state.applied_config = Some(cfg.clone()),
                _ => {}
            }
            g.pending_config = pending.iter().map(|c| c.to_string()).collect();
        }
        m.save()?;
        Ok(m)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Edits in the config file that the saved state won over at start (not applied).
    pub fn pending_config(&self) -> Vec<String> {
        self.lock().pending_config.clone()
    }

    /// Origins not served because their merge cannot resume, with why.
    pub fn blocked_origins(&self) -> BTreeMap<String, String> {
        self.lock().blocked.clone()
    }

    /// The origin of snapshot `name` (or `name` itself), under the caller's lock.
    fn origin_of_locked(&self, g: &Inner, name: &str) -> String {
        g.state
            .graph
            .snapshots
            .iter()
            .find(|s| s.name == name)
            .map_or_else(|| name.to_owned(), |s| s.origin.clone())
    }

    /// Writes the state atomically (see [`State::save`]).
    fn save(&self) -> Result<(), ManagerError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let _serial = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.lock().state.clone();
        Ok(state.save(dir)?)
    }

    /// Resumes a saved merge whose engine merge has started.
    fn resume_merge(
        self: &Arc<Self>,
        origin: Arc<crate::storage::Origin>,
        id: crate::storage::SnapshotId,
        snap: &str,
    ) -> Result<(), ManagerError> {
        let total = origin.exception_count(id).unwrap_or(0);
        let origin_name = self.origin_of(snap).unwrap_or_default();
        let status = Arc::new(Mutex::new(MergeStatus {
            snapshot: snap.to_owned(),
            origin: origin_name,
            state: "running".into(),
            total_exceptions: total,
            remaining_exceptions: total,
            chunk_bytes: origin.chunk_bytes(id).unwrap_or(0),
            elapsed_s: 0.0,
            message: String::new(),
        }));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.spawn_merge(origin, snap, status, stop)
    }

    /// Applies config-file edits through the ordinary operations (removals first).
    fn apply_changes(&self, changes: Vec<Change>) -> Result<(), ManagerError> {
        for c in changes {
            info!("applying the config file: {c}");
            match c {
                Change::RemoveExport(socket) => self.export_remove(&socket)?,
                Change::RemoveSnapshot(name) => {
                    self.snapshot_delete(&name, true, false)?;
                }
                Change::RemoveOrigin(name) => self.origin_remove(&name, true)?,
                Change::AddOrigin(o) => self.origin_add(o)?,
                Change::AddSnapshot(s) => {
                    self.snapshot_create(vec![s], true)?;
                }
                Change::AddExport(e) => self.export_add(e)?,
                Change::SetQosGroup(q) => self.qos_group_set(&q.name, q.qos)?,
                Change::RemoveQosGroup(name) => self.qos_group_remove(&name)?,
                Change::ChangeExport(e) => {
                    self.export_remove(&e.socket)?;
                    self.export_add(e)?;
                }
                Change::ChangeOrigin(o) => {
                    return Err(ManagerError::InvalidArgument(format!(
                        "origin {} changed in the config file; an origin cannot change in place (remove it from the file, apply, then add it back)",
                        o.name
                    )))
                }
                Change::ChangeSnapshot(s) => {
                    return Err(ManagerError::InvalidArgument(format!(
                        "snapshot {} changed in the config file; a snapshot cannot change in place (remove it from the file, apply, then add it back)",
                        s.name
                    )))
                }
            }
        }
        Ok(())
    }

    /// Stops the merge (between copy pieces; it resumes at the next start) and every export
    /// (daemon shutdown): in-flight requests complete first. Holds no lock while waiting.
    pub fn stop_all(&self) {
        let all: Vec<RunningExport> = {
            let mut g = self.lock();
            if let Some(m) = g.merge.as_ref() {
                m.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            std::mem::take(&mut g.exports).into_values().collect()
        };
        for e in &all {
            e.stop.trigger();
        }
        for e in all {
            stop_export(e);
        }
        self.stop_merge();
    }
}
