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

/// Where an offline merge stands, after each run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeProgressReport {
    /// Runs merged so far (a run: consecutive exceptions, at most 16 MiB, copied back and
    /// committed together).
    pub runs: u64,
    pub total_exceptions: u64,
    pub remaining_exceptions: u64,
    pub chunk_bytes: u64,
}

impl MergeProgressReport {
    pub fn merged_bytes(&self) -> u64 {
        (self.total_exceptions - self.remaining_exceptions) * self.chunk_bytes
    }
}

/// Merges a persistent COW into its origin offline: at most `max_runs` runs (all if None),
/// calling `progress` before the first run and after each. Both files are locked exclusively
/// first. Returns where it stopped.
pub fn merge_offline(
    origin: &Path,
    cow: &Path,
    max_runs: Option<u64>,
    progress: &mut dyn FnMut(&MergeProgressReport),
) -> Result<MergeProgressReport, CowToolError> {
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
    let total = o.exception_count(id).unwrap_or(0);
    let mut at = MergeProgressReport {
        runs: 0,
        total_exceptions: total,
        remaining_exceptions: total,
        chunk_bytes: o.chunk_bytes(id)?,
    };
    progress(&at);
    while max_runs.is_none_or(|m| at.runs < m) {
        match o.merge_step()? {
            MergeProgress::Merged { remaining, .. } => {
                at.runs += 1;
                at.remaining_exceptions = remaining;
                progress(&at);
            }
            MergeProgress::Stopped => break,
            MergeProgress::Done => {
                at.remaining_exceptions = 0;
                break;
            }
        }
    }
    Ok(at)
}

/// The report of `cow inspect --json`: every figure of the text form, sizes also in bytes.
pub fn report_json(r: &CowReport) -> serde_json::Value {
    let sector = 512;
    let usage = r.usage.map(|u| {
        serde_json::json!({
            "used_bytes": u.allocated_sectors * sector,
            "total_bytes": u.total_sectors * sector,
            "metadata_bytes": u.metadata_sectors * sector,
        })
    });
    serde_json::json!({
        "cow": r.name,
        "magic": r.header.magic,
        "valid": r.header.valid,
        "version": r.header.version,
        "chunk_sectors": r.chunk_sectors,
        "chunk_bytes": r.chunk_sectors * sector,
        "cow_sectors": r.cow_sectors,
        "cow_bytes": r.cow_sectors * sector,
        "exceptions_per_area": r.exceptions_per_area,
        "exceptions": r.exceptions,
        "areas": r.areas,
        "next_free_chunk": r.next_free,
        "status_line": r.status,
        "usage": usage,
        "live": r.live,
    })
}

/// `snapblk cow inspect [--json]`: prints the report (text, or one JSON object).
pub fn inspect_command(file: &Path, json: bool) -> Result<(), CowToolError> {
    let r = inspect_file(file)?;
    if json {
        crate::output::line(report_json(&r));
    } else {
        crate::output::line(r);
    }
    Ok(())
}

/// `snapblk cow merge [--runs N] [--json]`: merges with the progress display of
/// `merge start --wait`, then a summary line (or a last JSON object).
pub fn merge_command(
    origin: &Path,
    cow: &Path,
    runs: Option<u64>,
    json: bool,
) -> Result<(), CowToolError> {
    use crate::control::protocol::{MergeState, MergeStatus};
    let t0 = std::time::Instant::now();
    let status = |p: &MergeProgressReport, state| MergeStatus {
        snapshot: cow.display().to_string(),
        origin: origin.display().to_string(),
        state,
        remaining_exceptions: p.remaining_exceptions,
        total_exceptions: p.total_exceptions,
        merged_bytes: p.merged_bytes(),
        elapsed_s: t0.elapsed().as_secs_f64(),
    };
    let tty = !json && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut calls = 0;
    let end = merge_offline(origin, cow, runs, &mut |p| {
        crate::control::cli::show_progress(&status(p, MergeState::Running), tty, json, calls);
        calls += 1;
    })?;
    let state = if end.remaining_exceptions == 0 {
        MergeState::Finished
    } else {
        MergeState::Stopped
    };
    let last = status(&end, state);
    if json {
        let mut v = serde_json::to_value(&last).unwrap_or_default();
        v["runs"] = end.runs.into();
        crate::output::line(v);
        return Ok(());
    }
    if tty {
        crate::output::line("");
    }
    crate::output::line(crate::control::render::progress_line(&last, 0));
    let left = if end.remaining_exceptions == 0 {
        "the origin now holds the snapshot's data; the COW is empty".to_owned()
    } else {
        format!(
            "{} exception(s) left: run it again to go on",
            end.remaining_exceptions
        )
    };
    crate::output::line(format!(
        "{} run(s) merged (a run: consecutive exceptions, at most 16 MiB, copied back and \
         committed together); {left}",
        end.runs
    ));
    Ok(())
}
