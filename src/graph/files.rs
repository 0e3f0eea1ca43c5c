//! The graph's files: opening origin images and COW files (identity checked against every
//! file in the graph, then locked), the errors that name a file already in use, and the check
//! of an export's logical block size against its node's files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::{Graph, GraphError, NodeHandle, Nodes};
use crate::model::OriginSpec;
use crate::storage::{
    BlockDevice, DeviceError, DeviceOptions, FileDevice, FileId, LockError, LockMode, Rbd,
    RbdError, RbdSpec,
};

impl GraphError {
    /// Whether the error is a file in use: locked by another process, or already in the graph
    /// under another name. (The control plane's `in_use`.)
    pub fn in_use(&self) -> bool {
        let GraphError::Open { source, .. } = self else {
            return false;
        };
        source
            .get_ref()
            .is_some_and(|e| e.is::<SameFile>() || e.is::<LockError>())
    }
}

/// A file that is already in the graph under another name: the source of a
/// [`GraphError::Open`] (inside its `io::Error`, of kind `AlreadyExists`).
#[derive(Debug, Clone, Error)]
#[error("it is the same file as {other}, {role}")]
pub struct SameFile {
    /// The path the graph already holds the file by.
    pub other: PathBuf,
    /// What the file is there, e.g. `the image of origin "base"`.
    pub role: String,
}

/// An export's logical block size is smaller than a block its node's files need.
#[derive(Debug, Clone, Error)]
#[error(
    "logical block size {requested} is too small for node {node}: {path} takes {block}-byte blocks"
)]
pub struct BlockSizeError {
    pub node: String,
    pub requested: u32,
    pub block: u32,
    pub path: PathBuf,
}

impl NodeHandle {
    /// Refuses an export of node `name` whose logical block size is smaller than the node's
    /// files' (see [`NodeHandle::block`]): its requests could not reach them whole.
    pub fn check_block_size(
        &self,
        name: &str,
        logical_block_size: u32,
    ) -> Result<(), BlockSizeError> {
        let (block, path) = &self.block;
        if logical_block_size >= *block {
            return Ok(());
        }
        Err(BlockSizeError {
            node: name.to_owned(),
            requested: logical_block_size,
            block: *block,
            path: path.clone(),
        })
    }
}

pub(super) fn open_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl Fn(std::io::Error) -> GraphError + 'a {
    move |source| GraphError::Open {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Files being added that are not in the graph yet: (identity, path, role).
pub(super) type Adding = Vec<(FileId, PathBuf, String)>;

/// Opens an origin image or COW file read-write, refuses it if the graph (or `adding`) already
/// holds it under another name, then locks it exclusively. Nothing is written.
pub(super) fn open_rw(
    graph: &Graph,
    adding: &Adding,
    path: &Path,
    direct: bool,
    what: &'static str,
) -> Result<FileDevice, GraphError> {
    let options = DeviceOptions {
        write: true,
        direct,
        lock: None,
    };
    let err = open_err(what, path);
    let mut dev = FileDevice::open(path, options).map_err(|e| err(e.into()))?;
    graph
        .check_file(dev.id(), adding)
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, e)))?;
    dev.take_lock(LockMode::Exclusive, &path.to_string_lossy())
        .map_err(|e| err(DeviceError::from(e).into()))?;
    Ok(dev)
}

/// Opens an origin's image: a file or block device as [`open_rw`] does (mapped on tmpfs unless
/// `direct`), or an RBD image (`rbd:POOL/IMAGE[@SNAP]`), refused if the graph holds it already.
pub(super) fn open_origin(
    graph: &Graph,
    spec: &OriginSpec,
) -> Result<(Arc<dyn BlockDevice>, FileId), GraphError> {
    let err = open_err("origin image", &spec.image);
    let rbd = RbdSpec::parse(&spec.image)
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let Some(rbd) = rbd else {
        let dev = open_rw(graph, &Vec::new(), &spec.image, spec.direct, "origin image")?;
        let file = dev.id();
        let dev = if spec.direct {
            dev
        } else {
            dev.mapped().random_reads(false)
        };
        return Ok((Arc::new(dev), file));
    };
    let file = FileId::of_rbd(&rbd.to_string());
    graph
        .check_file(file, &Vec::new())
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, e)))?;
    let dev = Rbd::open(&rbd, &spec.ceph).map_err(|e| {
        let kind = match e {
            RbdError::NoImage(_) | RbdError::NoPool(_) => std::io::ErrorKind::NotFound,
            RbdError::Permission { .. } => std::io::ErrorKind::PermissionDenied,
            _ => std::io::ErrorKind::Other,
        };
        err(std::io::Error::new(kind, e))
    })?;
    Ok((Arc::new(dev), file))
}

/// The first file of the graph (or of `adding`) that is `id`.
pub(super) fn check_nodes(n: &Nodes, id: FileId, adding: &Adding) -> Result<(), SameFile> {
    let origins = n.origins.iter().map(|(name, o)| {
        (
            o.file,
            &o.spec.image,
            format!("the image of origin {name:?}"),
        )
    });
    let cows = n.snapshots.iter().flat_map(|(name, s)| {
        s.files.iter().enumerate().map(move |(k, (f, p))| {
            let role = match k {
                0 => format!("the COW file of snapshot {name:?}"),
                _ => format!("the COW file of the anchor of snapshot {name:?}"),
            };
            (*f, p, role)
        })
    });
    let adding = adding.iter().map(|(f, p, r)| (*f, p, r.clone()));
    match origins.chain(cows).chain(adding).find(|(f, _, _)| *f == id) {
        Some((_, path, role)) => Err(SameFile {
            other: path.clone(),
            role,
        }),
        None => Ok(()),
    }
}
