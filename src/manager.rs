//! The running daemon's device graph under control: exports started and stopped at runtime,
//! snapshots taken of live origins (one consistent point across several), merges in the
//! background, events, and the state directory that brings all of it back after a restart.
//!
//! Locks: `inner` (specs, running exports, merge job) is taken first and held only for
//! bookkeeping; the graph's own lock and the engine's origin locks are taken under it, never the
//! other way round. No I/O to guest data runs under `inner` (freezing origins waits for their
//! in-flight writes, which never need `inner`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{error, info, warn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{ExportSpec, GraphConfig, OriginSpec, SnapshotSpec, StoreType};
use crate::graph::{Graph, GraphError};
use crate::storage::{derive_serial, MergeProgress};
use crate::vhost::stats::{QueueStats, StatsSnapshot};
use crate::vhost::{bind_socket, serve, Backing, DiskContext, Export, ServeError, Shutdown};
use crate::virtio_blk::DiskGeometry;

/// Helper threads per queue for device-graph exports.
pub const GRAPH_THREADS_PER_QUEUE: usize = 32;

/// Why a control operation was refused. `code()` is the stable protocol code.
#[derive(Debug, Error)]
pub enum ManagerError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    InUse(String),
    #[error("origin {0:?} still has snapshots (use force to delete them too)")]
    HasSnapshots(String),
    #[error("node {0:?} is exported (use force to remove its exports too)")]
    Exported(String),
    #[error("a merge is already running on origin {0:?}")]
    MergeInProgress(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("cannot write the state directory {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
            ManagerError::Graph(_) | ManagerError::State { .. } => "io_error",
            ManagerError::Serve(ServeError::SocketInUse(_) | ServeError::NotASocket(_))
            | ManagerError::InUse(_) => "in_use",
            ManagerError::Serve(_) => "io_error",
            ManagerError::Exported(_) => "exported",
            ManagerError::MergeInProgress(_) => "merge_in_progress",
            ManagerError::Thread(_) => "internal",
        }
    }
}

/// One logged event (snapshot invalidated/overflowed, merge finished or failed, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub kind: String,
    pub node: String,
    pub message: String,
}

/// A merge as the control plane sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MergeStatus {
    pub snapshot: String,
    pub origin: String,
    /// "running" | "done" | "failed"
    pub state: String,
    pub total_exceptions: u64,
    pub remaining_exceptions: u64,
    pub elapsed_s: f64,
    pub message: String,
}

/// What survives a restart (written atomically to `<state-dir>/graph.json`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    pub graph: GraphConfig,
    /// The snapshot being merged, resumed on start.
    #[serde(default)]
    pub merging: Option<String>,
    /// Snapshots whose origin was written since they were created (copy-outs happened): they
    /// can no longer be reset to their creation state.
    #[serde(default)]
    pub origin_written: std::collections::BTreeSet<String>,
}

struct RunningExport {
    spec: ExportSpec,
    stop: Arc<Shutdown>,
    thread: Option<JoinHandle<()>>,
    stats: Vec<Arc<QueueStats>>,
    connected: Arc<std::sync::atomic::AtomicBool>,
    disk: Arc<DiskContext>,
}

struct MergeJob {
    status: Arc<Mutex<MergeStatus>>,
    thread: Option<JoinHandle<()>>,
}

struct Inner {
    state: State,
    exports: BTreeMap<PathBuf, RunningExport>,
    merge: Option<MergeJob>,
}

/// The daemon's graph, exports and control operations.
pub struct Manager {
    graph: Graph,
    inner: Mutex<Inner>,
    state_dir: Option<PathBuf>,
    events: Arc<Mutex<Vec<Event>>>,
    /// Sockets that may not be used for exports (the control socket).
    reserved: Vec<PathBuf>,
    /// Serializes state-file writes (control requests and the merge thread both save).
    save_lock: Mutex<()>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn push_event(events: &Mutex<Vec<Event>>, kind: &str, node: &str, message: String) {
    let mut ev = events.lock().unwrap_or_else(|p| p.into_inner());
    let seq = ev.last().map_or(1, |e| e.seq + 1);
    info!("event {kind} {node}: {message}");
    ev.push(Event {
        seq,
        time: now(),
        kind: kind.to_owned(),
        node: node.to_owned(),
        message,
    });
    if ev.len() > 10_000 {
        ev.drain(..1_000);
    }
}

impl Manager {
    /// Builds the graph from the state directory's saved state if there is one, else from
    /// `initial`; starts every export; resumes an interrupted merge.
    pub fn start(
        initial: GraphConfig,
        state_dir: Option<PathBuf>,
        reserved: Vec<PathBuf>,
    ) -> Result<Arc<Manager>, ManagerError> {
        let mut state = State {
            graph: initial,
            ..State::default()
        };
        if let Some(dir) = &state_dir {
            let file = dir.join("graph.json");
            match std::fs::read(&file) {
                Ok(bytes) => {
                    state = serde_json::from_slice(&bytes).map_err(|e| {
                        ManagerError::InvalidArgument(format!(
                            "state file {} is corrupt: {e}",
                            file.display()
                        ))
                    })?;
                    info!("restored the device graph from {}", file.display());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(ManagerError::State { path: file, source }),
            }
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        // Transient snapshots do not survive a restart of the daemon.
        let dropped: Vec<String> = state
            .graph
            .snapshots
            .iter()
            .filter(|s| s.store == StoreType::N && state_dir.is_some())
            .filter(|s| {
                s.cow.exists()
                    && std::fs::metadata(&s.cow)
                        .map(|m| m.len() > 0)
                        .unwrap_or(false)
            })
            .map(|s| s.name.clone())
            .collect();
        let graph = Graph::default();
        for o in &state.graph.origins {
            graph.add_origin(o.clone())?;
        }
        for s in &state.graph.snapshots {
            graph.add_snapshot(s.clone())?;
        }
        let m = Arc::new(Manager {
            graph,
            inner: Mutex::new(Inner {
                state: state.clone(),
                exports: BTreeMap::new(),
                merge: None,
            }),
            state_dir,
            events,
            reserved,
            save_lock: Mutex::new(()),
        });
        for name in dropped {
            push_event(
                &m.events,
                "transient-reset",
                &name,
                "transient snapshot starts empty after a restart".into(),
            );
        }
        for e in &state.graph.exports {
            m.start_export(e.clone())?;
        }
        if let Some(snap) = state.merging {
            info!("resuming the merge of {snap}");
            m.merge_start(&snap)?;
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

    /// Writes the state atomically: temporary file, fsync, rename, fsync the directory.
    fn save(&self) -> Result<(), ManagerError> {
        let Some(dir) = &self.state_dir else {
            return Ok(());
        };
        let _serial = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let state = {
            let g = self.lock();
            let mut s = g.state.clone();
            s.merging = g.merge.as_ref().and_then(|m| {
                let st = m.status.lock().unwrap_or_else(|p| p.into_inner());
                (st.state == "running").then(|| st.snapshot.clone())
            });
            s
        };
        let err = |source| ManagerError::State {
            path: dir.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| err(std::io::Error::other(e)))?;
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join("graph.json.tmp");
        let f = std::fs::File::create(&tmp).map_err(err)?;
        use std::io::Write;
        (&f).write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, dir.join("graph.json")).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    // ---- origins -------------------------------------------------------------------------

    pub fn origin_add(&self, spec: OriginSpec) -> Result<(), ManagerError> {
        {
            let g = self.lock();
            if g.state.graph.snapshots.iter().any(|s| s.cow == spec.image) {
                return Err(ManagerError::InUse(format!(
                    "image {} is the COW file of a snapshot",
                    spec.image.display()
                )));
            }
            if g.state.graph.origins.iter().any(|o| o.image == spec.image) {
                return Err(ManagerError::InUse(format!(
                    "image {} is already an origin",
                    spec.image.display()
                )));
            }
        }
        self.graph.add_origin(spec.clone())?;
        self.lock().state.graph.origins.push(spec);
        self.save()
    }

    pub fn origin_remove(&self, name: &str, force: bool) -> Result<(), ManagerError> {
        let (snaps, exported): (Vec<String>, bool) = {
            let g = self.lock();
            if !g.state.graph.origins.iter().any(|o| o.name == name) {
                return Err(ManagerError::NotFound(format!("no origin named {name:?}")));
            }
            (
                g.state
                    .graph
                    .snapshots
                    .iter()
                    .filter(|s| s.origin == name)
                    .map(|s| s.name.clone())
                    .collect(),
                g.exports.values().any(|e| e.spec.node == name),
            )
        };
        if !snaps.is_empty() && !force {
            return Err(ManagerError::HasSnapshots(name.into()));
        }
        if exported && !force {
            return Err(ManagerError::Exported(name.into()));
        }
        for s in snaps {
            self.snapshot_delete(&s, true)?;
        }
        self.remove_exports_of(name);
        self.graph.remove_origin(name)?;
        self.lock().state.graph.origins.retain(|o| o.name != name);
        self.save()
    }

    // ---- snapshots -----------------------------------------------------------------------

    /// Takes snapshots of one or more live origins at one consistent point: every origin is
    /// frozen (in-flight writes finish, new ones wait), flushed, the snapshots attached, then
    /// writes resume. Returns the pause of each origin in microseconds.
    pub fn snapshot_create(
        &self,
        specs: Vec<SnapshotSpec>,
    ) -> Result<Vec<(String, u64)>, ManagerError> {
        if specs.is_empty() {
            return Err(ManagerError::InvalidArgument("no snapshot given".into()));
        }
        {
            let g = self.lock();
            let mut seen = std::collections::HashSet::new();
            for s in &specs {
                if !seen.insert(&s.origin) {
                    return Err(ManagerError::InvalidArgument(format!(
                        "two snapshots of origin {:?} in one request",
                        s.origin
                    )));
                }
                if self.graph.contains(&s.name)
                    || specs.iter().filter(|x| x.name == s.name).count() > 1
                {
                    return Err(ManagerError::Exists(format!(
                        "node {:?} already exists",
                        s.name
                    )));
                }
                if g.state.graph.snapshots.iter().any(|x| x.cow == s.cow) {
                    return Err(ManagerError::InUse(format!(
                        "COW file {} is in use",
                        s.cow.display()
                    )));
                }
                if g.state.graph.origins.iter().any(|o| o.image == s.cow) {
                    return Err(ManagerError::InUse(format!(
                        "COW file {} is an origin image",
                        s.cow.display()
                    )));
                }
                if s.discard_passdown_origin && !s.discard_zeroes_cow {
                    return Err(ManagerError::InvalidArgument(
                        "discard_passdown_origin needs discard_zeroes_cow".into(),
                    ));
                }
            }
        }
        let pauses = self.graph.add_snapshots_consistent(&specs)?;
        {
            let mut g = self.lock();
            g.state.graph.snapshots.extend(specs.iter().cloned());
        }
        self.save()?;
        Ok(pauses
            .into_iter()
            .map(|(o, d)| (o, d.as_micros() as u64))
            .collect())
    }

    pub fn snapshot_delete(&self, name: &str, force: bool) -> Result<(), ManagerError> {
        {
            let g = self.lock();
            if !g.state.graph.snapshots.iter().any(|s| s.name == name) {
                return Err(ManagerError::NotFound(format!(
                    "no snapshot named {name:?}"
                )));
            }
            if g.exports.values().any(|e| e.spec.node == name) && !force {
                return Err(ManagerError::Exported(name.into()));
            }
            if let Some(m) = &g.merge {
                let st = m.status.lock().unwrap_or_else(|p| p.into_inner());
                if st.snapshot == name && st.state == "running" {
                    return Err(ManagerError::MergeInProgress(st.origin.clone()));
                }
            }
        }
        self.remove_exports_of(name);
        self.graph.remove_snapshot(name)?;
        let mut g = self.lock();
        g.state.graph.snapshots.retain(|s| s.name != name);
        g.state.origin_written.remove(name);
        drop(g);
        self.save()
    }

    pub fn snapshot_specs(&self) -> Vec<SnapshotSpec> {
        self.lock().state.graph.snapshots.clone()
    }

    pub fn origin_specs(&self) -> Vec<OriginSpec> {
        self.lock().state.graph.origins.clone()
    }

    // ---- exports -------------------------------------------------------------------------

    pub fn export_add(&self, spec: ExportSpec) -> Result<(), ManagerError> {
        if !spec.socket.is_absolute() {
            return Err(ManagerError::InvalidArgument(format!(
                "socket path {} must be absolute",
                spec.socket.display()
            )));
        }
        if self.reserved.iter().any(|r| r == &spec.socket) {
            return Err(ManagerError::InUse(format!(
                "{} is the control socket",
                spec.socket.display()
            )));
        }
        {
            let g = self.lock();
            if g.exports.contains_key(&spec.socket) {
                return Err(ManagerError::InUse(format!(
                    "socket {} is already exported",
                    spec.socket.display()
                )));
            }
            let files = g
                .state
                .graph
                .origins
                .iter()
                .map(|o| &o.image)
                .chain(g.state.graph.snapshots.iter().map(|s| &s.cow));
            for f in files {
                if f == &spec.socket {
                    return Err(ManagerError::InUse(format!(
                        "{} is an image or COW file",
                        spec.socket.display()
                    )));
                }
            }
        }
        self.start_export(spec.clone())?;
        self.lock().state.graph.exports.push(spec);
        self.save()
    }

    fn start_export(&self, spec: ExportSpec) -> Result<(), ManagerError> {
        let export = build_export(&self.graph, &spec)?;
        let listener = bind_socket(&spec.socket)?;
        let stop = Shutdown::new().map_err(ManagerError::Thread)?;
        let stats = export.disk.stats.clone();
        let connected = export.connected.clone();
        let disk = export.disk.clone();
        let t_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("export-{}", spec.node))
            .spawn(move || {
                if let Err(e) = serve(&export, listener, &t_stop) {
                    error!("export {}: {e}", export.socket.display());
                }
                let _ = std::fs::remove_file(&export.socket);
            })
            .map_err(ManagerError::Thread)?;
        info!("exporting node {} on {}", spec.node, spec.socket.display());
        self.lock().exports.insert(
            spec.socket.clone(),
            RunningExport {
                spec,
                stop,
                thread: Some(thread),
                stats,
                connected,
                disk,
            },
        );
        Ok(())
    }

    pub fn export_remove(&self, socket: &Path) -> Result<(), ManagerError> {
        let running =
            self.lock().exports.remove(socket).ok_or_else(|| {
                ManagerError::NotFound(format!("no export on {}", socket.display()))
            })?;
        stop_export(running);
        self.lock()
            .state
            .graph
            .exports
            .retain(|e| e.socket != socket);
        self.save()
    }

    fn remove_exports_of(&self, node: &str) {
        let sockets: Vec<PathBuf> = self
            .lock()
            .exports
            .values()
            .filter(|e| e.spec.node == node)
            .map(|e| e.spec.socket.clone())
            .collect();
        for s in sockets {
            if let Err(e) = self.export_remove(&s) {
                warn!("cannot remove export {}: {e}", s.display());
            }
        }
    }

    /// Export specs with their statistics and whether a frontend is connected.
    pub fn exports(&self) -> Vec<(ExportSpec, StatsSnapshot, bool)> {
        self.lock()
            .exports
            .values()
            .map(|e| {
                let stats = StatsSnapshot::sum(e.stats.iter().map(|s| &**s));
                let connected = e.connected.load(std::sync::atomic::Ordering::Relaxed);
                (e.spec.clone(), stats, connected)
            })
            .collect()
    }

    /// Stops every export (daemon shutdown): in-flight requests complete first.
    pub fn stop_all(&self) {
        let all: Vec<RunningExport> = std::mem::take(&mut self.lock().exports)
            .into_values()
            .collect();
        for e in &all {
            e.stop.trigger();
        }
        for e in all {
            stop_export(e);
        }
        if let Some(mut m) = self.lock().merge.take() {
            if let Some(t) = m.thread.take() {
                let _ = t.join();
            }
        }
    }

    // ---- merge ---------------------------------------------------------------------------

    pub fn merge_start(self: &Arc<Self>, snapshot: &str) -> Result<MergeStatus, ManagerError> {
        let spec = self
            .snapshot_specs()
            .into_iter()
            .find(|s| s.name == snapshot)
            .ok_or_else(|| ManagerError::NotFound(format!("no snapshot named {snapshot:?}")))?;
        let mut g = self.lock();
        if let Some(m) = &g.merge {
            let st = m.status.lock().unwrap_or_else(|p| p.into_inner());
            if st.state == "running" {
                return Err(ManagerError::MergeInProgress(st.origin.clone()));
            }
        }
        let (origin, id) = self.graph.snapshot_engine(snapshot)?;
        let total = origin.exception_count(id).unwrap_or(0);
        origin
            .start_merge(id)
            .map_err(|e| ManagerError::InvalidArgument(format!("cannot merge {snapshot}: {e}")))?;
        let status = Arc::new(Mutex::new(MergeStatus {
            snapshot: snapshot.to_owned(),
            origin: spec.origin.clone(),
            state: "running".into(),
            total_exceptions: total,
            remaining_exceptions: total,
            elapsed_s: 0.0,
            message: String::new(),
        }));
        let (st, me) = (status.clone(), Arc::downgrade(self));
        let events = self.events.clone();
        let name = snapshot.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("merge-{snapshot}"))
            .spawn(move || {
                let t0 = Instant::now();
                let outcome = loop {
                    match origin.merge_step() {
                        Ok(MergeProgress::Merged { remaining, .. }) => {
                            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                            s.remaining_exceptions = remaining;
                            s.elapsed_s = t0.elapsed().as_secs_f64();
                        }
                        Ok(MergeProgress::Done) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                s.elapsed_s = t0.elapsed().as_secs_f64();
                match outcome {
                    Ok(()) => {
                        s.state = "done".into();
                        s.remaining_exceptions = 0;
                        push_event(
                            &events,
                            "merge-done",
                            &name,
                            format!("merged in {:.2} s", s.elapsed_s),
                        );
                        drop(s);
                        if let Some(m) = me.upgrade() {
                            m.merged(&name);
                        }
                    }
                    Err(e) => {
                        s.state = "failed".into();
                        s.message = e.to_string();
                        push_event(&events, "merge-failed", &name, e.to_string());
                    }
                }
            })
            .map_err(ManagerError::Thread)?;
        g.merge = Some(MergeJob {
            status: status.clone(),
            thread: Some(thread),
        });
        drop(g);
        self.save()?;
        let s = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(s)
    }

    /// A finished merge: the snapshot is gone from the origin; drop it and its exports.
    fn merged(&self, name: &str) {
        self.remove_exports_of(name);
        let _ = self.graph.forget_snapshot(name);
        self.lock().state.graph.snapshots.retain(|s| s.name != name);
        if let Err(e) = self.save() {
            error!(
                "{e}: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            );
        }
    }

    pub fn merge_status(&self) -> Option<MergeStatus> {
        let g = self.lock();
        g.merge
            .as_ref()
            .map(|m| m.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    // ---- clones --------------------------------------------------------------------------

    /// Drops a writable snapshot's changes while its exports stay connected: their I/O is
    /// held back, the COW is emptied (and, for a resettable snapshot, the chunks the origin
    /// changed since are restored from its anchor), then their queues run again. Guests see the
    /// creation data on their next read (they must drop their caches or reboot for a
    /// consistent view). Returns the chunks restored from the anchor.
    pub fn clone_reset(&self, name: &str) -> Result<u64, ManagerError> {
        let (exports, written) = {
            let g = self.lock();
            if !g.state.graph.snapshots.iter().any(|s| s.name == name) {
                return Err(ManagerError::NotFound(format!(
                    "no snapshot named {name:?}"
                )));
            }
            let exports: Vec<(Arc<Shutdown>, Arc<DiskContext>)> = g
                .exports
                .values()
                .filter(|e| e.spec.node == name)
                .map(|e| (e.stop.clone(), e.disk.clone()))
                .collect();
            (exports, g.state.origin_written.contains(name))
        };
        let (origin, id) = self.graph.snapshot_engine(name)?;
        let anchor = self.graph.snapshot_anchor(name)?;
        if written && anchor.is_none() {
            return Err(ManagerError::InvalidArgument(format!(
                "the origin of {name:?} was written since it was created: its creation state cannot be rebuilt (create snapshots with --resettable to keep it); delete it and create it again"
            )));
        }
        for (stop, disk) in &exports {
            stop.pause(disk);
        }
        let r = origin
            .reset_snapshot(id, anchor.is_some())
            .map_err(|e| e.to_string())
            .and_then(|()| match anchor {
                Some(a) => origin.restore_from_anchor(id, a).map_err(|e| e.to_string()),
                None => Ok(0),
            });
        for (stop, disk) in &exports {
            stop.resume(disk);
        }
        let restored =
            r.map_err(|e| ManagerError::InvalidArgument(format!("cannot reset {name}: {e}")))?;
        if anchor.is_some() {
            // The snapshot's own copy-out counter restarted; keep the saved flag off.
            self.lock().state.origin_written.remove(name);
        }
        push_event(
            &self.events,
            "clone-reset",
            name,
            format!(
                "reset to its creation state ({restored} changed chunks restored from its anchor)"
            ),
        );
        Ok(restored)
    }

    // ---- status and events ----------------------------------------------------------------

    pub fn events(&self, since: u64) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.seq >= since)
            .cloned()
            .collect()
    }

    /// Records state changes of snapshots (Invalid, Overflow) as events, and which snapshots
    /// received copy-outs (saved, so a reset stays refused after a restart); call periodically.
    pub fn poll_health(&self, last: &mut BTreeMap<String, String>) {
        let mut newly_written = false;
        for s in self.snapshot_specs() {
            let copies = self
                .graph
                .snapshot_engine(&s.name)
                .ok()
                .and_then(|(o, id)| o.snapshot_counters(id))
                .map_or(0, |c| c.0);
            if copies > 0 {
                newly_written |= self.lock().state.origin_written.insert(s.name.clone());
            }
        }
        if newly_written {
            if let Err(e) = self.save() {
                error!("{e}");
            }
        }
        for s in self.snapshot_specs() {
            let Ok(status) = self.graph.snapshot_status(&s.name) else {
                continue;
            };
            let word = status.split_whitespace().next().unwrap_or("").to_owned();
            let state = if word.contains('/') {
                "valid".to_owned()
            } else {
                word
            };
            if last.get(&s.name) != Some(&state) {
                if state != "valid" {
                    push_event(
                        &self.events,
                        &state.to_ascii_lowercase(),
                        &s.name,
                        format!("snapshot status: {status}"),
                    );
                }
                last.insert(s.name.clone(), state);
            }
        }
    }
}

fn stop_export(mut e: RunningExport) {
    e.stop.trigger();
    if let Some(t) = e.thread.take() {
        let _ = t.join();
    }
    info!(
        "stopped export of {} on {}",
        e.spec.node,
        e.spec.socket.display()
    );
}

/// Builds the export of one graph node.
pub fn build_export(graph: &Graph, spec: &ExportSpec) -> Result<Export, ManagerError> {
    let node = graph.node(&spec.node)?;
    let block = u64::from(spec.logical_block_size);
    let blocks = node.dev.size() / block;
    if blocks == 0 {
        return Err(ManagerError::InvalidArgument(format!(
            "node {} is smaller than one {block}-byte block",
            spec.node
        )));
    }
    let serial = spec
        .serial
        .clone()
        .unwrap_or_else(|| derive_serial(&node.identity, 0));
    let geometry = DiskGeometry {
        capacity_sectors: blocks * block / 512,
        logical_block_size: spec.logical_block_size,
        readonly: spec.readonly,
        discard: node.discard,
        serial: serial.as_bytes().iter().copied().take(20).collect(),
    };
    Ok(Export::new(
        spec.socket.clone(),
        geometry,
        spec.num_queues,
        spec.queue_size,
        Backing::Device {
            dev: node.dev,
            threads: GRAPH_THREADS_PER_QUEUE,
            direct: Some(node.direct),
        },
        !spec.writethrough,
    ))
}
