//! The daemon's side of the control protocol: each request runs on the [`Manager`] and its
//! outcome becomes a typed response or a stable error code.

use std::sync::Arc;

use super::protocol::{ControlError, ErrorCode, HelloInfo, Request, Response};
use super::response::{
    CreateResult, Done, Event as WireEvent, EventKind, EventList, ExportInfo, ExportList,
    ExportStats, MergeList, MergeState, MergeStatus as WireMerge, NodeKind, NodeState, NodeStatus,
    OriginInfo, SnapshotDeleted, SnapshotInfo, SnapshotList, SnapshotStats, StatsReport,
    StatusReport,
};
use super::ControlHandler;
use crate::manager::{Manager, ManagerError, MergeStatus};
use crate::model::{ByteSize, ExportSpec, OriginSpec, SnapshotSpec};

/// Serves control requests from a running daemon's manager.
pub struct ManagerControl(pub Arc<Manager>);

fn code(e: &ManagerError) -> ErrorCode {
    match e.code() {
        "not_found" => ErrorCode::NotFound,
        "exists" => ErrorCode::Exists,
        "in_use" => ErrorCode::InUse,
        "has_snapshots" => ErrorCode::HasSnapshots,
        "exported" => ErrorCode::Exported,
        "merge_in_progress" => ErrorCode::MergeInProgress,
        "invalid_argument" => ErrorCode::InvalidArgument,
        "io_error" => ErrorCode::IoError,
        _ => ErrorCode::Internal,
    }
}

pub(super) fn err(e: ManagerError) -> ControlError {
    ControlError::from_chain(code(&e), &e)
}

/// Parses a dm status line into (state, used bytes, total bytes).
fn parse_status(line: &str) -> (NodeState, u64, u64) {
    let first = line.split_whitespace().next().unwrap_or("");
    match first {
        "Invalid" => (NodeState::Invalid, 0, 0),
        "Overflow" => (NodeState::Overflow, 0, 0),
        "Merge" => (NodeState::Invalid, 0, 0),
        _ => {
            let mut it = first.split('/');
            let used = it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let total = it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (NodeState::Active, used * 512, total * 512)
        }
    }
}

impl ManagerControl {
    fn snapshot_info(&self, spec: &SnapshotSpec) -> SnapshotInfo {
        let line = self
            .0
            .graph()
            .snapshot_status(&spec.name)
            .unwrap_or_else(|e| e.to_string());
        let (mut state, used, total) = parse_status(&line);
        let merging = self
            .0
            .merge_status()
            .is_some_and(|m| m.snapshot == spec.name && m.state == "running");
        if merging {
            state = NodeState::Merging;
        }
        let engine = self.0.graph().snapshot_engine(&spec.name).ok();
        let reason = engine.as_ref().and_then(|(o, id)| o.invalid_reason(*id));
        let exceptions = engine
            .and_then(|(o, id)| o.exception_count(id).ok())
            .unwrap_or(0);
        SnapshotInfo {
            name: spec.name.clone(),
            origin: spec.origin.clone(),
            cow: spec.cow.clone(),
            store: spec.store.into(),
            chunk_size: self
                .0
                .graph()
                .snapshot_engine(&spec.name)
                .ok()
                .and_then(|(o, id)| o.chunk_bytes(id).ok())
                .unwrap_or(spec.chunk_size.0),
            status_line: line,
            used_bytes: used,
            total_bytes: total,
            exceptions,
            state,
            reason,
            resettable: spec.resettable,
            exports: self
                .0
                .exports()
                .into_iter()
                .filter(|(e, _, _)| e.node == spec.name)
                .map(|(e, _, _)| e.socket)
                .collect(),
        }
    }

    fn merge_wire(m: MergeStatus) -> WireMerge {
        WireMerge {
            state: match m.state.as_str() {
                "running" => MergeState::Running,
                "done" => MergeState::Finished,
                "stopped" => MergeState::Stopped,
                _ => MergeState::Failed,
            },
            merged_bytes: m
                .total_exceptions
                .saturating_sub(m.remaining_exceptions)
                .saturating_mul(m.chunk_bytes),
            snapshot: m.snapshot,
            origin: m.origin,
            remaining_exceptions: m.remaining_exceptions,
            total_exceptions: m.total_exceptions,
            elapsed_s: m.elapsed_s,
        }
    }

    fn status(&self, node: Option<String>) -> Result<Response, ControlError> {
        let mut nodes = Vec::new();
        let blocked = self.0.blocked_origins();
        for o in self.0.origin_specs() {
            if node.as_deref().is_some_and(|n| n != o.name) {
                continue;
            }
            let size = self
                .0
                .graph()
                .node(&o.name)
                .map(|n| n.dev.size())
                .unwrap_or(0);
            nodes.push(NodeStatus {
                node: o.name.clone(),
                kind: NodeKind::Origin,
                origin: None,
                status_line: format!("0 {} snapshot-origin {}", size / 512, o.image.display()),
                used_bytes: size,
                total_bytes: size,
                exceptions: 0,
                state: if blocked.contains_key(&o.name) {
                    NodeState::Blocked
                } else {
                    NodeState::Active
                },
                reason: blocked
                    .get(&o.name)
                    .map(|why| format!("not served: its merge must resume and cannot: {why}")),
                warning: (size % 512 != 0).then(|| {
                    format!(
                        "{} is {size} bytes, not a whole number of 512-byte sectors: guests see \
                         {} bytes, the last {} are not served",
                        o.image.display(),
                        size / 512 * 512,
                        size % 512
                    )
                }),
            });
        }
        for s in self.0.snapshot_specs() {
            if node.as_deref().is_some_and(|n| n != s.name) {
                continue;
            }
            let i = self.snapshot_info(&s);
            nodes.push(NodeStatus {
                node: i.name,
                kind: NodeKind::Snapshot,
                origin: Some(i.origin),
                status_line: i.status_line,
                used_bytes: i.used_bytes,
                total_bytes: i.total_bytes,
                exceptions: i.exceptions,
                state: i.state,
                reason: i.reason,
                warning: None,
            });
        }
        if let Some(n) = node {
            if nodes.is_empty() {
                return Err(ControlError::new(
                    ErrorCode::NotFound,
                    format!("no node named {n:?}"),
                ));
            }
        }
        Ok(Response::Status(StatusReport {
            nodes,
            config_not_applied: self.0.pending_config(),
        }))
    }
}

impl ControlHandler for ManagerControl {
    fn handle(&self, req: Request) -> Result<Response, ControlError> {
        let m = &self.0;
        match req {
            Request::Hello {} => Ok(Response::Hello(HelloInfo::this_daemon())),
            Request::OriginAdd(a) => {
                m.origin_add(OriginSpec {
                    name: a.name.clone(),
                    image: a.image.clone(),
                    copy_cap: a.copy_cap,
                    direct: false,
                    ceph: crate::model::CephOptions {
                        conf: a.ceph_conf.clone(),
                        id: a.ceph_id.clone(),
                        keyring: a.ceph_keyring.clone(),
                    },
                })
                .map_err(err)?;
                let size = m.graph().node(&a.name).map(|n| n.dev.size()).unwrap_or(0);
                Ok(Response::Origin(OriginInfo {
                    name: a.name,
                    image: a.image,
                    size_bytes: size,
                    snapshots: Vec::new(),
                }))
            }
            Request::OriginRemove(r) => {
                m.origin_remove(&r.name, r.force).map_err(err)?;
                Ok(Response::Done(Done {}))
            }
            Request::SnapshotCreate(c) => {
                let specs: Vec<SnapshotSpec> = c
                    .snapshots
                    .iter()
                    .map(|n| SnapshotSpec {
                        name: n.name.clone(),
                        origin: n.origin.clone(),
                        cow: n.cow.clone(),
                        store: n.store.into(),
                        chunk_size: ByteSize(n.chunk_size.unwrap_or(0)),
                        create_size: n.size.map(ByteSize),
                        discard_zeroes_cow: n.discard_zeroes_cow,
                        discard_passdown_origin: n.discard_passdown_origin,
                        resettable: n.resettable,
                        preallocate: n.preallocate,
                    })
                    .collect();
                let pauses = m.snapshot_create(specs, c.adopt).map_err(err)?;
                Ok(Response::Created(CreateResult {
                    names: c.snapshots.iter().map(|n| n.name.clone()).collect(),
                    pause_us: pauses.into_iter().collect(),
                }))
            }
            Request::SnapshotDelete(r) => {
                let cow = m
                    .snapshot_delete(&r.name, r.force, r.remove_cow)
                    .map_err(err)?;
                Ok(Response::Deleted(SnapshotDeleted {
                    name: r.name,
                    cow_files: cow.files,
                    cow_removed: cow.removed,
                }))
            }
            Request::SnapshotList {} => Ok(Response::Snapshots(SnapshotList {
                snapshots: m
                    .snapshot_specs()
                    .iter()
                    .map(|s| self.snapshot_info(s))
                    .collect(),
            })),
            Request::ExportAdd(a) => {
                let spec = ExportSpec {
                    node: a.node.clone(),
                    socket: a.socket.clone(),
                    readonly: a.readonly,
                    num_queues: a.num_queues,
                    queue_size: a.queue_size.unwrap_or(256),
                    serial: a.serial.clone(),
                    logical_block_size: a.logical_block_size.unwrap_or(512),
                    writethrough: a.writethrough,
                    shared_writable: a.shared_writable,
                    qos: a.qos,
                    qos_group: a.qos_group.clone(),
                };
                m.export_add(spec).map_err(err)?;
                Ok(Response::Export(ExportInfo {
                    node: a.node,
                    socket: a.socket,
                    readonly: a.readonly,
                    num_queues: a.num_queues,
                    connected: false,
                }))
            }
            Request::ExportRemove(r) => {
                let exports = m.exports();
                let targets: Vec<_> = exports
                    .iter()
                    .filter(|(s, _, _)| {
                        r.socket.as_ref().is_some_and(|p| p == &s.socket)
                            || r.node.as_ref().is_some_and(|n| n == &s.node)
                    })
                    .collect();
                if targets.is_empty() {
                    return Err(ControlError::new(ErrorCode::NotFound, "no such export"));
                }
                if let Some((s, _, _)) = targets.iter().find(|(_, _, c)| *c) {
                    if !r.force {
                        return Err(ControlError::new(
                            ErrorCode::InUse,
                            format!(
                                "a frontend is connected to {}: use --force (protocol: \"force\": true) to disconnect it",
                                s.socket.display()
                            ),
                        ));
                    }
                }
                for (s, _, _) in targets {
                    m.export_remove(&s.socket).map_err(err)?;
                }
                Ok(Response::Done(Done {}))
            }
            Request::ExportList {} => Ok(Response::Exports(ExportList {
                exports: m
                    .exports()
                    .into_iter()
                    .map(|(s, _, connected)| ExportInfo {
                        node: s.node,
                        socket: s.socket,
                        readonly: s.readonly,
                        num_queues: s.num_queues,
                        connected,
                    })
                    .collect(),
            })),
            Request::Status(a) => self.status(a.node),
            Request::Stats {} => {
                let figures = m.qos_figures();
                Ok(Response::Stats(StatsReport {
                    exports: m
                        .exports()
                        .into_iter()
                        .map(|(s, st, connected)| ExportStats {
                            qos: Self::qos_stats(&s, &st, &figures),
                            socket: s.socket,
                            node: s.node,
                            requests: st.requests,
                            read_bytes: st.read_bytes,
                            write_bytes: st.write_bytes,
                            errors: st.errors,
                            in_flight: st.in_flight,
                            connected,
                        })
                        .collect(),
                    snapshots: m
                        .snapshot_specs()
                        .into_iter()
                        .map(|s| {
                            let (copies, parked, commits) = m
                                .graph()
                                .snapshot_engine(&s.name)
                                .ok()
                                .and_then(|(o, id)| o.snapshot_counters(id))
                                .unwrap_or_default();
                            SnapshotStats {
                                name: s.name,
                                copies,
                                parked,
                                commits,
                            }
                        })
                        .collect(),
                }))
            }
            Request::MergeStart(r) => {
                let st = m.merge_start(&r.snapshot).map_err(err)?;
                Ok(Response::Merge(Self::merge_wire(st)))
            }
            Request::MergeStatus(a) => Ok(Response::Merges(MergeList {
                merges: m
                    .merge_status()
                    .filter(|s| a.snapshot.as_ref().is_none_or(|n| n == &s.snapshot))
                    .map(Self::merge_wire)
                    .into_iter()
                    .collect(),
            })),
            Request::CloneReset(r) => {
                m.clone_reset(&r.snapshot).map_err(err)?;
                let spec = m
                    .snapshot_specs()
                    .into_iter()
                    .find(|s| s.name == r.snapshot)
                    .ok_or_else(|| ControlError::new(ErrorCode::NotFound, "snapshot vanished"))?;
                Ok(Response::Snapshot(self.snapshot_info(&spec)))
            }
            Request::ExportQos(q) => self.export_qos(q),
            Request::QosGroupSet(q) => self.qos_group_set(q),
            Request::QosGroupRemove(q) => self.qos_group_remove(&q.name),
            Request::QosGroupList {} => Ok(Response::QosGroups(self.qos_group_list())),
            Request::Events(a) => {
                let events: Vec<WireEvent> = m
                    .events(a.since.unwrap_or(0))
                    .into_iter()
                    .filter_map(|e| {
                        let kind = match e.kind.as_str() {
                            "invalid" => EventKind::SnapshotInvalid,
                            "overflow" => EventKind::SnapshotOverflow,
                            "merge-done" => EventKind::MergeFinished,
                            "merge-failed" => EventKind::MergeFailed,
                            "merge-started" => EventKind::MergeStarted,
                            "clone-reset" => EventKind::CloneReset,
                            "transient-reset" => EventKind::TransientReset,
                            _ => return None,
                        };
                        Some(WireEvent {
                            seq: e.seq,
                            time: e.time,
                            kind,
                            node: e.node,
                            message: e.message,
                        })
                    })
                    .collect();
                let next_seq = events.last().map_or(a.since.unwrap_or(0), |e| e.seq) + 1;
                Ok(Response::Events(EventList { events, next_seq }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse_into_state_and_bytes() {
        assert_eq!(
            parse_status("16/8192 16"),
            (NodeState::Active, 8192, 8192 * 512)
        );
        assert_eq!(parse_status("Invalid").0, NodeState::Invalid);
        assert_eq!(parse_status("Overflow").0, NodeState::Overflow);
    }
}
