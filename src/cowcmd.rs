//! `snapblk cow ...`: offline tools on COW files (inspect, merge into an origin).

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use crate::storage::{
    inspect, CowError, CowReport, FileDevice, MergeProgress, Origin, OriginConfig, SnapshotConfig,
    StoreKind,
};

/// Errors of the offline COW tools.
#[derive(Debug, Error)]
pub enum CowToolError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cow(#[from] CowError),
}

fn open(path: &Path, write: bool) -> Result<FileDevice, CowToolError> {
    let err = |source| CowToolError::Open {
        path: path.display().to_string(),
        source,
    };
    let f: File = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(err)?;
    FileDevice::from_file(f).map_err(err)
}

/// Reads and validates a COW file.
pub fn inspect_file(path: &Path) -> Result<CowReport, CowToolError> {
    let dev = open(path, false)?;
    Ok(inspect(&dev, &path.to_string_lossy())?)
}

/// Merges a persistent COW into its origin offline: at most `max_runs` runs (all if None).
/// Returns (runs merged, exceptions left).
pub fn merge_offline(
    origin: &Path,
    cow: &Path,
    max_runs: Option<u64>,
) -> Result<(u64, u64), CowToolError> {
    let o = Origin::new(
        Arc::new(open(origin, true)?),
        &origin.to_string_lossy(),
        OriginConfig::default(),
    );
    let id = o.add_snapshot(
        Arc::new(open(cow, true)?),
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
