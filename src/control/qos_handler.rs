//! The QoS commands of the control protocol (`export.qos`, `qos_group.*`) and the QoS figures
//! of `stats`, run on the [`Manager`].

use super::handler::{err, ManagerControl};
use super::protocol::{ControlError, Response};
use super::request::{ExportQos, QosGroupSet};
use super::response::{Done, QosExport, QosExportList, QosGroupInfo, QosGroupList, QosStats};
use crate::manager::GroupChange;
use crate::model::ExportSpec;
use crate::vhost::stats::StatsSnapshot;

impl ManagerControl {
    pub(super) fn export_qos(&self, q: ExportQos) -> Result<Response, ControlError> {
        let group = match q.qos_group {
            None => GroupChange::Keep,
            Some(g) if g.is_empty() => GroupChange::Leave,
            Some(g) => GroupChange::Join(g),
        };
        let specs = self
            .0
            .export_qos(q.node.as_deref(), q.socket.as_ref(), q.qos, group)
            .map_err(err)?;
        Ok(Response::QosExports(QosExportList {
            exports: specs
                .into_iter()
                .map(|s| QosExport {
                    socket: s.socket,
                    node: s.node,
                    qos: s.qos,
                    qos_group: s.qos_group,
                })
                .collect(),
        }))
    }

    pub(super) fn qos_group_set(&self, q: QosGroupSet) -> Result<Response, ControlError> {
        self.0.qos_group_set(&q.name, q.qos).map_err(err)?;
        let groups = self.qos_group_list();
        let info = groups.groups.into_iter().find(|g| g.name == q.name);
        Ok(Response::QosGroup(info.unwrap_or(QosGroupInfo {
            name: q.name,
            qos: q.qos,
            members: Vec::new(),
        })))
    }

    pub(super) fn qos_group_remove(&self, name: &str) -> Result<Response, ControlError> {
        self.0.qos_group_remove(name).map_err(err)?;
        Ok(Response::Done(Done {}))
    }

    pub(super) fn qos_group_list(&self) -> QosGroupList {
        QosGroupList {
            groups: self
                .0
                .qos_groups()
                .into_iter()
                .map(|(g, members)| QosGroupInfo {
                    name: g.name,
                    qos: g.qos,
                    members,
                })
                .collect(),
        }
    }

    /// The QoS part of one export's `stats` entry.
    pub(super) fn qos_stats(
        spec: &ExportSpec,
        st: &StatsSnapshot,
        figures: &std::collections::BTreeMap<
            std::path::PathBuf,
            (crate::qos::Rate, crate::qos::QosLimits),
        >,
    ) -> QosStats {
        let (rate, group_limits) = figures.get(&spec.socket).copied().unwrap_or_default();
        QosStats {
            limits: spec.qos,
            group: spec.qos_group.clone(),
            group_limits,
            iops: rate.iops.round() as u64,
            bytes_per_sec: rate.bytes_per_sec.round() as u64,
            throttled_requests: st.throttled,
            throttled_us: st.throttled_ns / 1000,
        }
    }
}
