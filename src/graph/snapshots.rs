//! Adding snapshots: a COW file opened (or created, sparse or written full of zeroes) and its
//! store prepared outside the graph's lock, then one or more snapshots attached at one
//! consistent point across their origins.

use std::fs::OpenOptions as FsOpenOptions;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::info;

use super::files::{open_err, open_rw, Adding};
use super::{Graph, GraphError, Prepared, SnapshotNode};
use crate::model::{SnapshotSpec, StoreType};
use crate::storage::{BlockDevice, Origin, SnapshotConfig, SnapshotDevice, StoreKind};

impl Graph {
    pub fn add_snapshot(&self, spec: SnapshotSpec) -> Result<(), GraphError> {
        self.add_snapshots_consistent(std::slice::from_ref(&spec))
            .map(|_| ())
    }

    /// Opens (creating where asked) a snapshot's COW and its store, without attaching it. The
    /// COW is refused if the graph or `adding` already holds its file; then it joins `adding`.
    fn prepare(&self, spec: &SnapshotSpec, adding: &mut Adding) -> Result<Prepared, GraphError> {
        if self.contains(&spec.name) {
            return Err(GraphError::Exists(spec.name.clone()));
        }
        let (origin, direct) = self
            .lock()
            .origins
            .get(&spec.origin)
            .map(|o| (o.origin.clone(), o.spec.direct))
            .ok_or_else(|| GraphError::NoSuchNode(spec.origin.clone()))?;
        if !spec.cow.exists() {
            let size = spec
                .create_size
                .ok_or_else(|| GraphError::NoCow(spec.cow.clone()))?;
            FsOpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&spec.cow)
                .and_then(|f| create_cow(&f, size.0, spec.preallocate))
                .map_err(open_err("new COW file", &spec.cow))?;
        }
        let cow = open_rw(self, adding, &spec.cow, direct, "COW file")?;
        let file = cow.id();
        let cow_block = cow.logical_block_size();
        adding.push((
            file,
            spec.cow.clone(),
            format!("the COW file of snapshot {:?}", spec.name),
        ));
        let kind = match spec.store {
            StoreType::P => StoreKind::Persistent,
            StoreType::PO => StoreKind::PersistentOverflow,
            StoreType::N => StoreKind::Transient,
        };
        let mut scfg =
            SnapshotConfig::new(&spec.cow.to_string_lossy(), kind, spec.chunk_size.0 / 512);
        scfg.discard_zeroes_cow = spec.discard_zeroes_cow;
        scfg.discard_passdown_origin = spec.discard_passdown_origin;
        let attach_err = |source| GraphError::Attach {
            name: spec.name.clone(),
            cow: spec.cow.clone(),
            source,
        };
        let prepared = origin
            .prepare_snapshot(Arc::new(cow), scfg)
            .map_err(attach_err)?;
        Ok(Prepared {
            origin,
            snapshot: prepared,
            file: (file, spec.cow.clone()),
            cow_block,
        })
    }

    /// Attaches snapshots of several origins (at most one each) at one consistent point:
    /// every origin is frozen (in a fixed order), the snapshots attached, then all resume.
    /// Returns how long each origin's writes were held back.
    pub fn add_snapshots_consistent(
        &self,
        specs: &[SnapshotSpec],
    ) -> Result<Vec<(String, Duration)>, GraphError> {
        let mut prepared = Vec::new();
        let mut adding = Adding::new();
        for spec in specs {
            let p = self.prepare(spec, &mut adding)?;
            let (origin, p, mut files, cow_block) =
                (p.origin, p.snapshot, vec![p.file], p.cow_block);
            let anchor = match spec.resettable {
                true => {
                    let a = self.prepare(&spec.anchor(), &mut adding)?;
                    files.push(a.file);
                    Some(a.snapshot)
                }
                false => None,
            };
            prepared.push((spec, origin, p, anchor, (files, cow_block)));
        }
        prepared.sort_by(|a, b| a.0.origin.cmp(&b.0.origin));
        let origins: Vec<(Arc<Origin>, &SnapshotSpec)> = prepared
            .iter()
            .map(|(s, o, _, _, _)| (o.clone(), *s))
            .collect();
        let mut frozen = Vec::new();
        let mut pauses = Vec::new();
        for (origin, spec) in &origins {
            let t0 = Instant::now();
            let f = origin.freeze().map_err(|source| GraphError::Attach {
                name: spec.name.clone(),
                cow: spec.cow.clone(),
                source,
            })?;
            frozen.push((f, t0, spec.origin.clone()));
        }
        let mut attached = Vec::new();
        let mut result = Ok(());
        for (spec, origin, p, anchor, files) in prepared.into_iter() {
            let f = frozen
                .iter()
                .find(|(f, _, _)| std::ptr::eq(f.origin(), &*origin))
                .map(|(f, _, _)| f);
            let Some(f) = f else { continue };
            let ids = f.attach(p).and_then(|id| match anchor {
                None => Ok((id, None)),
                Some(a) => match f.attach(a) {
                    Ok(a) => Ok((id, Some(a))),
                    Err(e) => {
                        let _ = origin.remove_snapshot(id);
                        Err(e)
                    }
                },
            });
            match ids {
                Ok(ids) => attached.push((spec, origin, ids, files)),
                Err(source) => {
                    result = Err(GraphError::Attach {
                        name: spec.name.clone(),
                        cow: spec.cow.clone(),
                        source,
                    });
                    break;
                }
            }
        }
        for (f, t0, origin) in frozen {
            drop(f);
            pauses.push((origin, t0.elapsed()));
        }
        if let Err(e) = result {
            for (_, origin, (id, anchor), _) in attached {
                let _ = origin.remove_snapshot(id);
                if let Some(a) = anchor {
                    let _ = origin.remove_snapshot(a);
                }
            }
            return Err(e);
        }
        let mut n = self.lock();
        for (spec, origin, (id, anchor), (files, cow_block)) in attached {
            let status = origin.status(id).unwrap_or_default();
            let usage = origin.usage(id).map(|u| u.describe()).unwrap_or_default();
            info!(
                "snapshot {} of {} ({}): {status} ({usage})",
                spec.name,
                spec.origin,
                spec.cow.display()
            );
            let dev = Arc::new(SnapshotDevice {
                origin: origin.clone(),
                id,
            });
            n.snapshots.insert(
                spec.name.clone(),
                SnapshotNode {
                    spec: spec.clone(),
                    id,
                    origin,
                    dev,
                    anchor,
                    files,
                    cow_block,
                },
            );
        }
        Ok(pauses)
    }
}

/// Sizes a new COW file, sparse; with `written` (`preallocate`), writes it full of zeroes and
/// syncs it, unless it is memory-backed, so that commits allocate no blocks. On this project's
/// ext4 test disk sparse COWs commit faster (the README's durability section has the figures).
fn create_cow(f: &std::fs::File, size: u64, written: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    f.set_len(size)?;
    if !written || crate::storage::memory_backed(f.as_raw_fd()) {
        return Ok(());
    }
    let zeroes = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(zeroes.len() as u64) as usize;
        f.write_all_at(&zeroes[..n], pos)?;
        pos += n as u64;
    }
    f.sync_data()
}
