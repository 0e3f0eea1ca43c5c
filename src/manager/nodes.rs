//! Origins and snapshots added and removed while serving, snapshots of several live origins at
//! one consistent point, and clone resets.

use std::sync::Arc;

use super::{Manager, ManagerError};
use crate::model::{OriginSpec, SnapshotSpec, StoreType};
use crate::vhost::{DiskContext, Shutdown};

impl Manager {
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
            self.snapshot_delete(&s, true, false)?;
        }
        self.remove_exports_of(name);
        self.graph.remove_origin(name)?;
        self.lock().state.graph.origins.retain(|o| o.name != name);
        self.save()
    }

    /// Takes snapshots of one or more live origins at one consistent point: every origin is
    /// frozen (in-flight writes finish, new ones wait), flushed, the snapshots attached, then
    /// writes resume. A COW file that already holds a snapshot store is refused unless `adopt`:
    /// adopting loads its exceptions onto this origin, which is right only for a store taken
    /// of this origin as it is now. Returns the pause of each origin in microseconds.
    pub fn snapshot_create(
        &self,
        specs: Vec<SnapshotSpec>,
        adopt: bool,
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
        for s in &specs {
            self.graph.check_new_file("COW file", &s.cow)?;
            if s.resettable {
                self.graph.check_new_file("COW file", &s.anchor().cow)?;
            }
        }
        if !adopt {
            for s in &specs {
                refuse_existing_store(s)?;
                if s.resettable {
                    refuse_existing_store(&s.anchor())?;
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

    /// Deletes a snapshot (and its anchor). Its COW files are kept unless `remove_cow`: a kept
    /// COW still holds the store, so a new snapshot refuses it unless adopted. Returns the COW
    /// files and whether they were removed.
    pub fn snapshot_delete(
        &self,
        name: &str,
        force: bool,
        remove_cow: bool,
    ) -> Result<DeletedCow, ManagerError> {
        let spec = {
            let g = self.lock();
            let Some(spec) = g
                .state
                .graph
                .snapshots
                .iter()
                .find(|s| s.name == name)
                .cloned()
            else {
                return Err(ManagerError::NotFound(format!(
                    "no snapshot named {name:?}"
                )));
            };
            if g.exports.values().any(|e| e.spec.node == name) && !force {
                return Err(ManagerError::Exported(name.into()));
            }
            if g.state.merging.as_deref() == Some(name) {
                let origin = self.origin_of_locked(&g, name);
                return Err(ManagerError::MergeInProgress(origin));
            }
            spec
        };
        self.remove_exports_of(name);
        self.graph.remove_snapshot(name)?;
        let mut g = self.lock();
        g.state.graph.snapshots.retain(|s| s.name != name);
        g.state.origin_written.remove(name);
        drop(g);
        self.save()?;
        let mut files = vec![spec.cow.clone()];
        if spec.resettable {
            files.push(spec.anchor().cow);
        }
        if remove_cow {
            for f in &files {
                match std::fs::remove_file(f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(ManagerError::InvalidArgument(format!(
                            "snapshot {name} is deleted but its COW file {} cannot be removed: {e}",
                            f.display()
                        )))
                    }
                }
            }
        }
        Ok(DeletedCow {
            files,
            removed: remove_cow,
        })
    }

    pub fn snapshot_specs(&self) -> Vec<SnapshotSpec> {
        self.lock().state.graph.snapshots.clone()
    }

    pub fn origin_specs(&self) -> Vec<OriginSpec> {
        self.lock().state.graph.origins.clone()
    }

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
        let message = if anchor.is_some() {
            format!(
                "reset to its creation state ({restored} chunk(s) the origin changed since restored from its anchor)"
            )
        } else {
            "reset to its creation state (its changes dropped; the origin is unchanged since its \
             creation)"
                .to_owned()
        };
        self.events.push("clone-reset", name, message);
        Ok(restored)
    }
}

/// The COW files of a deleted snapshot (its anchor's included) and whether they were removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedCow {
    pub files: Vec<std::path::PathBuf>,
    pub removed: bool,
}

/// Refuses a COW file that already holds a persistent snapshot store (a transient snapshot's
/// old data means nothing, so N never refuses).
fn refuse_existing_store(s: &SnapshotSpec) -> Result<(), ManagerError> {
    if s.store == StoreType::N || !s.cow.exists() {
        return Ok(());
    }
    match crate::cowcmd::inspect_file(&s.cow) {
        Ok(report) => Err(ManagerError::InUse(format!(
            "COW file {} already holds a snapshot store ({} exceptions, status {}): give a new \
             file, or adopt it (--adopt) if it is a snapshot of origin {} as it is now",
            s.cow.display(),
            report.exceptions,
            report.status,
            s.origin
        ))),
        Err(_) => Ok(()),
    }
}
