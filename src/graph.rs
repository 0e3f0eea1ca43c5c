//! The device graph: origins (engine + image) and their snapshots, by name, built from a config
//! and able to gain and lose nodes while serving. Exports look nodes up here.
//!
//! Files are known by identity ([`FileId`]: device and inode, or a block device's number), not
//! by path: an origin image or COW file that is already in the graph under another name (a
//! symbolic or hard link, another device node) is refused before anything is written, and
//! every file is locked exclusively while in the graph (see [`crate::storage::block::lock`]). A
//! direct (`O_DIRECT`) origin's COW files are opened `O_DIRECT` too.
//!
//! Parts: `files.rs` (file identity, locks, opening), `snapshots.rs` (adding snapshots: COW
//! files and stores prepared outside the lock, attached at one consistent point).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use log::info;
use thiserror::Error;

use crate::model::{GraphConfig, OriginSpec, SnapshotSpec};
use crate::storage::{
    BlockDevice, CowError, DirectNode, FileId, Origin, OriginConfig, PreparedSnapshot,
    SnapshotDevice, SnapshotId, DEFAULT_COPY_CAP,
};

mod files;
mod snapshots;

use files::{check_nodes, open_err, open_origin, Adding};
pub use files::{BlockSizeError, SameFile};

/// Errors building or changing the graph. Each names the node and file concerned.
#[derive(Debug, Error)]
pub enum GraphError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("COW file {0} does not exist and no create_size was given")]
    NoCow(PathBuf),
    #[error("cannot attach snapshot {name} (COW {cow})")]
    Attach {
        name: String,
        cow: PathBuf,
        #[source]
        source: CowError,
    },
    #[error("node {0:?} already exists")]
    Exists(String),
    #[error("no node named {0:?}")]
    NoSuchNode(String),
    #[error("origin {0:?} still has snapshots")]
    HasSnapshots(String),
    #[error("cannot remove snapshot {name}")]
    Detach {
        name: String,
        #[source]
        source: CowError,
    },
}

/// An origin node.
pub struct OriginNode {
    pub spec: OriginSpec,
    pub origin: Arc<Origin>,
    /// The image's identity.
    pub file: FileId,
}

/// A snapshot node.
pub struct SnapshotNode {
    pub spec: SnapshotSpec,
    pub id: SnapshotId,
    pub origin: Arc<Origin>,
    pub dev: Arc<SnapshotDevice>,
    /// The hidden anchor of a resettable snapshot (see [`SnapshotSpec::anchor`]).
    pub anchor: Option<SnapshotId>,
    /// The identities of the COW file and of the anchor's.
    pub files: Vec<(FileId, PathBuf)>,
    /// The COW's logical block size.
    pub cow_block: u32,
}

/// A node as an export sees it.
pub struct NodeHandle {
    pub dev: Arc<dyn BlockDevice>,
    /// A stable identity for deriving a serial (the image or COW path).
    pub identity: PathBuf,
    /// Discard/write-zeroes make sense on this node.
    pub discard: bool,
    /// For queues that run reads and writes on their own io_uring where the engine allows.
    pub direct: DirectNode,
    /// The smallest logical block size an export may show, and the file that needs it: the
    /// largest logical block size (direct-I/O alignment for `O_DIRECT`) of the files the
    /// export's requests reach directly (the origin, and a snapshot's COW).
    pub block: (u32, PathBuf),
}

#[derive(Default)]
struct Nodes {
    origins: BTreeMap<String, OriginNode>,
    snapshots: BTreeMap<String, SnapshotNode>,
}

/// The graph. One mutex guards the name maps (control path only; never held during I/O).
#[derive(Default)]
pub struct Graph {
    nodes: Mutex<Nodes>,
}

/// A snapshot opened by `Graph::prepare`, with its COW's identity and block size.
struct Prepared {
    origin: Arc<Origin>,
    snapshot: PreparedSnapshot,
    file: (FileId, PathBuf),
    cow_block: u32,
}

impl Graph {
    /// Builds every origin and snapshot of `cfg`, loading existing persistent COWs.
    pub fn build(cfg: &GraphConfig) -> Result<Graph, GraphError> {
        let g = Graph::default();
        for o in &cfg.origins {
            g.add_origin(o.clone())?;
        }
        for s in &cfg.snapshots {
            g.add_snapshot(s.clone())?;
        }
        Ok(g)
    }

    fn lock(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_origin(&self, spec: OriginSpec) -> Result<(), GraphError> {
        if self.contains(&spec.name) {
            return Err(GraphError::Exists(spec.name));
        }
        let (dev, file) = open_origin(self, &spec)?;
        let mapped = dev.mapping().is_some();
        let cfg = OriginConfig {
            copy_cap: spec.copy_cap.unwrap_or(DEFAULT_COPY_CAP),
        };
        let origin = Arc::new(Origin::new(dev, &spec.image.to_string_lossy(), cfg));
        info!(
            "origin {} ({}): {} bytes{}",
            spec.name,
            spec.image.display(),
            origin.size(),
            if mapped {
                crate::storage::block::mapped::LOG_NOTE
            } else {
                ""
            }
        );
        let mut n = self.lock();
        if n.origins.contains_key(&spec.name) || n.snapshots.contains_key(&spec.name) {
            return Err(GraphError::Exists(spec.name));
        }
        // Checked again under the lock: another thread may have added the file meanwhile.
        if let Err(e) = check_nodes(&n, file, &Vec::new()) {
            let err = open_err("origin image", &spec.image);
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                e,
            )));
        }
        n.origins
            .insert(spec.name.clone(), OriginNode { spec, origin, file });
        Ok(())
    }

    /// Refuses a file the graph already holds (as an origin image or a COW file, anchors'
    /// included) or that is in `adding`: the same identity under any name.
    fn check_file(&self, id: FileId, adding: &Adding) -> Result<(), SameFile> {
        check_nodes(&self.lock(), id, adding)
    }

    /// Refuses `path` if it names (through any link) a file the graph already holds, as an
    /// origin image or a COW file: for callers that check a request before acting on it. A
    /// path where nothing exists passes. The error names the file as `what` (e.g. "COW file"),
    /// and [`GraphError::in_use`] is true of it.
    pub fn check_new_file(&self, what: &'static str, path: &Path) -> Result<(), GraphError> {
        let err = open_err(what, path);
        let Some(id) = FileId::of_path(path).map_err(&err)? else {
            return Ok(());
        };
        self.check_file(id, &Vec::new())
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, e)))
    }

    /// The engine and id behind a snapshot name.
    pub fn snapshot_engine(&self, name: &str) -> Result<(Arc<Origin>, SnapshotId), GraphError> {
        let n = self.lock();
        let s = n
            .snapshots
            .get(name)
            .ok_or_else(|| GraphError::NoSuchNode(name.to_owned()))?;
        Ok((s.origin.clone(), s.id))
    }

    /// The anchor of a resettable snapshot, if it has one.
    pub fn snapshot_anchor(&self, name: &str) -> Result<Option<SnapshotId>, GraphError> {
        let n = self.lock();
        let s = n
            .snapshots
            .get(name)
            .ok_or_else(|| GraphError::NoSuchNode(name.to_owned()))?;
        Ok(s.anchor)
    }

    /// Drops a snapshot the engine already removed (a finished merge), and its anchor.
    pub fn forget_snapshot(&self, name: &str) -> bool {
        let Some(s) = self.lock().snapshots.remove(name) else {
            return false;
        };
        if let Some(a) = s.anchor {
            let _ = s.origin.remove_snapshot(a);
        }
        true
    }

    /// Detaches a snapshot (its COW file stays).
    pub fn remove_snapshot(&self, name: &str) -> Result<(), GraphError> {
        let mut n = self.lock();
        let s = n
            .snapshots
            .get(name)
            .ok_or_else(|| GraphError::NoSuchNode(name.to_owned()))?;
        s.origin
            .remove_snapshot(s.id)
            .map_err(|source| GraphError::Detach {
                name: name.to_owned(),
                source,
            })?;
        if let Some(a) = s.anchor {
            let _ = s.origin.remove_snapshot(a);
        }
        n.snapshots.remove(name);
        Ok(())
    }

    /// Removes an origin that has no snapshots.
    pub fn remove_origin(&self, name: &str) -> Result<(), GraphError> {
        let mut n = self.lock();
        if !n.origins.contains_key(name) {
            return Err(GraphError::NoSuchNode(name.to_owned()));
        }
        if n.snapshots.values().any(|s| s.spec.origin == name) {
            return Err(GraphError::HasSnapshots(name.to_owned()));
        }
        n.origins.remove(name);
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        let n = self.lock();
        n.origins.contains_key(name) || n.snapshots.contains_key(name)
    }

    /// The device behind a node name.
    pub fn node(&self, name: &str) -> Result<NodeHandle, GraphError> {
        let n = self.lock();
        if let Some(o) = n.origins.get(name) {
            return Ok(NodeHandle {
                dev: o.origin.clone(),
                identity: o.spec.image.clone(),
                discard: true,
                direct: DirectNode {
                    origin: o.origin.clone(),
                    snapshot: None,
                    o_direct: o.spec.direct,
                },
                block: (o.origin.logical_block_size(), o.spec.image.clone()),
            });
        }
        if let Some(s) = n.snapshots.get(name) {
            return Ok(NodeHandle {
                dev: s.dev.clone(),
                identity: s.spec.cow.clone(),
                discard: s.spec.discard_zeroes_cow,
                direct: DirectNode {
                    origin: s.origin.clone(),
                    snapshot: Some(s.id),
                    o_direct: n.origins.get(&s.spec.origin).is_some_and(|o| o.spec.direct),
                },
                block: match s.origin.logical_block_size() {
                    b if b >= s.cow_block => (b, s.origin.name().into()),
                    _ => (s.cow_block, s.spec.cow.clone()),
                },
            });
        }
        Err(GraphError::NoSuchNode(name.to_owned()))
    }

    /// `dmsetup status`-style line of a snapshot.
    pub fn snapshot_status(&self, name: &str) -> Result<String, GraphError> {
        let n = self.lock();
        let s = n
            .snapshots
            .get(name)
            .ok_or_else(|| GraphError::NoSuchNode(name.to_owned()))?;
        s.origin.status(s.id).map_err(|source| GraphError::Detach {
            name: name.to_owned(),
            source,
        })
    }

    /// Snapshot names, sorted.
    pub fn snapshot_names(&self) -> Vec<String> {
        self.lock().snapshots.keys().cloned().collect()
    }

    /// Flushes every origin and snapshot (shutdown).
    pub fn flush_all(&self) -> std::io::Result<()> {
        let n = self.lock();
        for o in n.origins.values() {
            o.origin.flush().map_err(std::io::Error::from)?;
        }
        for s in n.snapshots.values() {
            s.dev.flush()?;
        }
        Ok(())
    }
}
