//! QoS under control: groups created, changed and removed, exports' limits and group changed
//! live (the running queues see it at their next request), every change saved like any
//! other, and each export's rate sampled once a second for `stats`.

use std::path::PathBuf;
use std::sync::Arc;

use log::info;

use super::{Inner, Manager, ManagerError};
use crate::model::{ExportSpec, QosGroupSpec, QosLimits};
use crate::qos::QosGroup;
use crate::vhost::stats::StatsSnapshot;

/// How an export's group changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    Keep,
    Leave,
    Join(String),
}

impl Manager {
    /// The running group `name`, under the caller's lock.
    pub(super) fn group_locked(
        g: &Inner,
        name: Option<&str>,
    ) -> Result<Option<Arc<QosGroup>>, ManagerError> {
        let Some(name) = name else {
            return Ok(None);
        };
        g.qos_groups
            .get(name)
            .cloned()
            .map(Some)
            .ok_or_else(|| ManagerError::NotFound(format!("no QoS group {name:?}")))
    }

    /// Changes the QoS of the exports on `socket`, or of every export of `node`: `limits`
    /// replaces their own limits (`None`: kept), `group` their group. Returns the new specs.
    pub fn export_qos(
        &self,
        node: Option<&str>,
        socket: Option<&PathBuf>,
        limits: Option<QosLimits>,
        group: GroupChange,
    ) -> Result<Vec<ExportSpec>, ManagerError> {
        if let Some(l) = &limits {
            l.validate().map_err(ManagerError::InvalidArgument)?;
        }
        // Nothing to change: only the settings are asked for (the buckets are left alone).
        let show = limits.is_none() && group == GroupChange::Keep;
        let changed = {
            let mut g = self.lock();
            let new_group = match &group {
                GroupChange::Join(name) => Self::group_locked(&g, Some(name))?,
                _ => None,
            };
            let targets: Vec<PathBuf> = g
                .exports
                .values()
                .filter(|e| {
                    socket.is_some_and(|s| s == &e.spec.socket)
                        || node.is_some_and(|n| n == e.spec.node)
                })
                .map(|e| e.spec.socket.clone())
                .collect();
            if targets.is_empty() {
                return Err(ManagerError::NotFound(match (node, socket) {
                    (_, Some(s)) => format!("no export on {}", s.display()),
                    (Some(n), None) => format!("node {n:?} has no export"),
                    (None, None) => "give a node or --socket".into(),
                }));
            }
            let mut changed = Vec::new();
            let inner = &mut *g;
            for t in targets {
                let Some(running) = inner.exports.get_mut(&t) else {
                    continue;
                };
                let spec = &mut running.spec;
                if let Some(l) = limits {
                    spec.qos = l;
                }
                match &group {
                    GroupChange::Keep => {}
                    GroupChange::Leave => spec.qos_group = None,
                    GroupChange::Join(name) => spec.qos_group = Some(name.clone()),
                }
                let grp = match (&group, &spec.qos_group) {
                    (GroupChange::Join(_), _) => new_group.clone(),
                    (_, None) => None,
                    (_, Some(name)) => inner.qos_groups.get(name).cloned(),
                };
                let spec = running.spec.clone();
                if !show {
                    running.disk.qos.set(&spec.qos, grp);
                }
                changed.push(spec);
            }
            for spec in &changed {
                if let Some(e) = g
                    .state
                    .graph
                    .exports
                    .iter_mut()
                    .find(|e| e.socket == spec.socket)
                {
                    *e = spec.clone();
                }
            }
            changed
        };
        if show {
            return Ok(changed);
        }
        for spec in &changed {
            info!(
                "export {}: QoS {}{}",
                spec.socket.display(),
                spec.qos.describe(),
                spec.qos_group
                    .as_ref()
                    .map(|n| format!(", group {n}"))
                    .unwrap_or_default()
            );
        }
        self.save()?;
        Ok(changed)
    }

    /// Creates group `name`, or gives it new limits (its members see them at once).
    pub fn qos_group_set(&self, name: &str, limits: QosLimits) -> Result<(), ManagerError> {
        limits.validate().map_err(ManagerError::InvalidArgument)?;
        if name.is_empty()
            || name.len() > 128
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ManagerError::InvalidArgument(format!(
                "QoS group name {name:?} must be 1-128 characters without spaces"
            )));
        }
        {
            let mut g = self.lock();
            match g.qos_groups.get(name) {
                Some(group) => group.update(&limits),
                None => {
                    g.qos_groups
                        .insert(name.to_owned(), QosGroup::new(name, &limits));
                }
            }
            let spec = QosGroupSpec {
                name: name.to_owned(),
                qos: limits,
            };
            let groups = &mut g.state.graph.qos_groups;
            match groups.iter_mut().find(|x| x.name == name) {
                Some(x) => *x = spec,
                None => groups.push(spec),
            }
        }
        info!("QoS group {name}: {}", limits.describe());
        self.save()
    }

    /// Removes group `name`; refused while an export is in it.
    pub fn qos_group_remove(&self, name: &str) -> Result<(), ManagerError> {
        {
            let mut g = self.lock();
            if !g.qos_groups.contains_key(name) {
                return Err(ManagerError::NotFound(format!("no QoS group {name:?}")));
            }
            let members: Vec<String> = g
                .state
                .graph
                .exports
                .iter()
                .filter(|e| e.qos_group.as_deref() == Some(name))
                .map(|e| e.socket.display().to_string())
                .collect();
            if !members.is_empty() {
                return Err(ManagerError::InUse(format!(
                    "QoS group {name:?} is used by the export(s) on {}: move them out first \
                     (snapblk export qos NODE --no-group)",
                    members.join(", ")
                )));
            }
            g.qos_groups.remove(name);
            g.state.graph.qos_groups.retain(|x| x.name != name);
        }
        info!("QoS group {name} removed");
        self.save()
    }

    /// Every group with the sockets of its exports.
    pub fn qos_groups(&self) -> Vec<(QosGroupSpec, Vec<PathBuf>)> {
        let g = self.lock();
        g.state
            .graph
            .qos_groups
            .iter()
            .map(|grp| {
                let members = g
                    .state
                    .graph
                    .exports
                    .iter()
                    .filter(|e| e.qos_group.as_deref() == Some(grp.name.as_str()))
                    .map(|e| e.socket.clone())
                    .collect();
                (grp.clone(), members)
            })
            .collect()
    }

    /// Records each export's totals: the rate since the previous call is its current rate.
    pub fn sample_rates(&self) {
        let g = self.lock();
        for e in g.exports.values() {
            let s = StatsSnapshot::sum(e.stats.iter().map(|s| &**s));
            e.disk.qos.sample(s.requests, s.read_bytes + s.write_bytes);
        }
    }
}

impl Manager {
    /// Each export's current rate and its group's limits, by socket.
    pub fn qos_figures(
        &self,
    ) -> std::collections::BTreeMap<PathBuf, (crate::qos::Rate, QosLimits)> {
        self.lock()
            .exports
            .iter()
            .map(|(socket, e)| {
                let (_, group) = e.disk.qos.limits();
                let group_limits = group.map(|g| g.limits()).unwrap_or_default();
                (socket.clone(), (e.disk.qos.rate(), group_limits))
            })
            .collect()
    }
}
