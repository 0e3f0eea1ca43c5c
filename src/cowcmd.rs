//! `snapblk cow ...`: offline tools on COW files (inspect, merge into an origin), on regular
//! files and block devices alike.
//!
//! `cow merge` locks the origin and the COW exclusively, so it is refused while a daemon
//! serves either (or anything else holds a lock on them). `cow inspect` takes a shared lock,
//! which keeps a merge from starting meanwhile; when a daemon holds the COW exclusively it reads
//! anyway, without a lock, and says so: that is a live view, which may show a commit or a merge
//! step half written (and then even an error), never a change to the file.

use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::storage::{
    inspect, CowError, CowReport, DeviceError, DeviceOptions, FileDevice, LockError, LockMode,
    MergeProgress, Origin, OriginConfig, SnapshotConfig, StoreKind,
};

/// Errors of the offline COW tools.
#[derive(Debug, Error)]
pub enum CowToolError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: DeviceError,
    },
    #[error("COW file {cow} is the same file as origin {origin}")]
    SameFile { cow: String, origin: String },
    #[error(transparent)]
    Cow(#[from] CowError),
}

fn open(path: &Path, options: DeviceOptions) -> Result<FileDevice, CowToolError> {
    FileDevice::open(path, options).map_err(|source| CowToolError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Reads and validates a COW file. Never writes.
pub fn inspect_file(path: &Path) -> Result<CowReport, CowToolError> {
    let shared = DeviceOptions {
        write: false,
        direct: false,
        lock: Some(LockMode::Shared),
    };
    let (dev, live) = match open(path, shared) {
        Err(CowToolError::Open {
            source: DeviceError::Locked(held @ LockError::Held { .. }),
            ..
        }) => {
            let dev = open(
                path,
                DeviceOptions {
                    lock: None,
                    ..shared
                },
            )?;
            (dev, Some(held.to_string()))
        }
        r => (r?, None),
    };
    let mut report = inspect(&dev, &path.to_string_lossy())?;
    report.live =
        live.map(|held| format!("{held}: a live view, which may show a commit in progress"));
    Ok(report)
}

/// Merges a persistent COW into its origin offline: at most `max_runs` runs (all if None).
/// Both files are locked exclusively first. Returns (runs merged, exceptions left).
pub fn merge_offline(
    origin: &Path,
    cow: &Path,
    max_runs: Option<u64>,
) -> Result<(u64, u64), CowToolError> {
    let rw = DeviceOptions {
        write: true,
        direct: false,
        lock: None,
    };
    let mut o_dev = open(origin, rw)?;
    let mut c_dev = open(cow, rw)?;
    if o_dev.id() == c_dev.id() {
        return Err(CowToolError::SameFile {
            cow: cow.display().to_string(),
            origin: origin.display().to_string(),
        });
    }
    for (dev, path) in [(&mut o_dev, origin), (&mut c_dev, cow)] {
        dev.take_lock(LockMode::Exclusive, &path.to_string_lossy())
            .map_err(|e| CowToolError::Open {
                path: path.display().to_string(),
                source: e.into(),
            })?;
    }
    let o = Origin::new(
        Arc::new(o_dev),
        &origin.to_string_lossy(),
        OriginConfig::default(),
    );
    let id = o.add_snapshot(
        Arc::new(c_dev),
        SnapshotConfig::new(&cow.to_string_lossy(), StoreKind::Persistent, 0),
    )?;
    o.start_merge(id)?;
    let mut runs = 0;
    let mut left = o.exception_count(id).unwrap_or(0);
    while max_runs.is_none_or(|m| runs < m) {
        match o.merge_step()? {
            MergeProgress::Merged { remaining, .. } => {
                runs += 1;
                left = remaining;
            }
            MergeProgress::Stopped => break,
            MergeProgress::Done => {
                left = 0;
                break;
            }
        }
    }
    Ok((runs, left))
}
