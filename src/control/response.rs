//! Control results: one typed struct per command. A response line does not name its command,
//! so a client decodes `result` with [`Response::decode`] given the request it sent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::request::{Request, Store};
use crate::qos::QosLimits;

/// The result of a command. Serialized as the bare result object (no tag).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Response {
    /// `hello`.
    Hello(HelloInfo),
    /// `origin.add`.
    Origin(OriginInfo),
    /// `origin.remove`, `export.remove`: an empty object.
    Done(Done),
    /// `snapshot.delete`.
    Deleted(SnapshotDeleted),
    /// `snapshot.create`.
    Created(CreateResult),
    /// `snapshot.list`.
    Snapshots(SnapshotList),
    /// `clone.reset`: the snapshot after the reset.
    Snapshot(SnapshotInfo),
    /// `export.add`.
    Export(ExportInfo),
    /// `export.list`.
    Exports(ExportList),
    /// `status`.
    Status(StatusReport),
    /// `stats`.
    Stats(StatsReport),
    /// `merge.start`.
    Merge(MergeStatus),
    /// `merge.status`.
    Merges(MergeList),
    /// `events`.
    Events(EventList),
    /// `export.qos`: the exports it changed (or showed).
    QosExports(QosExportList),
    /// `qos_group.set`.
    QosGroup(QosGroupInfo),
    /// `qos_group.list`.
    QosGroups(QosGroupList),
}

/// Which [`Response`] variant answers a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    Origin,
    Done,
    Deleted,
    Created,
    Snapshots,
    Snapshot,
    Export,
    Exports,
    Status,
    Stats,
    Merge,
    Merges,
    Events,
    QosExports,
    QosGroup,
    QosGroups,
}

fn kind_of_cmd(cmd: &str) -> Option<Kind> {
    Some(match cmd {
        "hello" => Kind::Hello,
        "origin.add" => Kind::Origin,
        "origin.remove" | "export.remove" | "qos_group.remove" => Kind::Done,
        "snapshot.delete" => Kind::Deleted,
        "snapshot.create" => Kind::Created,
        "snapshot.list" => Kind::Snapshots,
        "clone.reset" => Kind::Snapshot,
        "export.add" => Kind::Export,
        "export.list" => Kind::Exports,
        "status" => Kind::Status,
        "stats" => Kind::Stats,
        "merge.start" => Kind::Merge,
        "merge.status" => Kind::Merges,
        "events" => Kind::Events,
        "export.qos" => Kind::QosExports,
        "qos_group.set" => Kind::QosGroup,
        "qos_group.list" => Kind::QosGroups,
        _ => return None,
    })
}

impl Response {
    fn kind(&self) -> Kind {
        match self {
            Response::Hello(_) => Kind::Hello,
            Response::Origin(_) => Kind::Origin,
            Response::Done(_) => Kind::Done,
            Response::Deleted(_) => Kind::Deleted,
            Response::Created(_) => Kind::Created,
            Response::Snapshots(_) => Kind::Snapshots,
            Response::Snapshot(_) => Kind::Snapshot,
            Response::Export(_) => Kind::Export,
            Response::Exports(_) => Kind::Exports,
            Response::Status(_) => Kind::Status,
            Response::Stats(_) => Kind::Stats,
            Response::Merge(_) => Kind::Merge,
            Response::Merges(_) => Kind::Merges,
            Response::Events(_) => Kind::Events,
            Response::QosExports(_) => Kind::QosExports,
            Response::QosGroup(_) => Kind::QosGroup,
            Response::QosGroups(_) => Kind::QosGroups,
        }
    }

    /// Whether this is the kind of result `request` expects.
    pub fn answers(&self, request: &Request) -> bool {
        self.answers_cmd(request.cmd())
    }

    /// Whether this is the kind of result a `cmd` request expects.
    pub fn answers_cmd(&self, cmd: &str) -> bool {
        kind_of_cmd(cmd) == Some(self.kind())
    }

    /// Decodes the `result` of a reply to a `cmd` request.
    pub fn decode(cmd: &str, result: Value) -> Result<Response, serde_json::Error> {
        use serde::de::Error;
        let kind = kind_of_cmd(cmd)
            .ok_or_else(|| serde_json::Error::custom(format!("unknown command {cmd:?}")))?;
        let v = result;
        Ok(match kind {
            Kind::Hello => Response::Hello(serde_json::from_value(v)?),
            Kind::Origin => Response::Origin(serde_json::from_value(v)?),
            Kind::Done => Response::Done(serde_json::from_value(v)?),
            Kind::Deleted => Response::Deleted(serde_json::from_value(v)?),
            Kind::Created => Response::Created(serde_json::from_value(v)?),
            Kind::Snapshots => Response::Snapshots(serde_json::from_value(v)?),
            Kind::Snapshot => Response::Snapshot(serde_json::from_value(v)?),
            Kind::Export => Response::Export(serde_json::from_value(v)?),
            Kind::Exports => Response::Exports(serde_json::from_value(v)?),
            Kind::Status => Response::Status(serde_json::from_value(v)?),
            Kind::Stats => Response::Stats(serde_json::from_value(v)?),
            Kind::Merge => Response::Merge(serde_json::from_value(v)?),
            Kind::Merges => Response::Merges(serde_json::from_value(v)?),
            Kind::Events => Response::Events(serde_json::from_value(v)?),
            Kind::QosExports => Response::QosExports(serde_json::from_value(v)?),
            Kind::QosGroup => Response::QosGroup(serde_json::from_value(v)?),
            Kind::QosGroups => Response::QosGroups(serde_json::from_value(v)?),
        })
    }
}

/// An empty result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// What `snapshot.delete` did with the snapshot's COW files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDeleted {
    pub name: String,
    /// Its COW file, and its anchor's for a resettable snapshot.
    pub cow_files: Vec<PathBuf>,
    /// Whether they were removed (`remove_cow`) or kept.
    pub cow_removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloInfo {
    /// The protocol version the daemon speaks.
    pub protocol: u32,
    /// The daemon's version (its Cargo package version).
    pub version: String,
    /// The commands it accepts.
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginInfo {
    pub name: String,
    pub image: PathBuf,
    pub size_bytes: u64,
    /// Names of its snapshots.
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResult {
    /// The snapshots created, in request order.
    pub names: Vec<String>,
    /// How long each origin's writes were held for the consistent point, in microseconds.
    pub pause_us: BTreeMap<String, u64>,
}

/// State of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Active,
    /// The snapshot failed (an I/O error or a full COW): reads and writes fail.
    Invalid,
    /// A PO snapshot ran out of space.
    Overflow,
    /// Being merged into its origin.
    Merging,
    /// Not served: a merge into this origin must resume and cannot (see `reason`).
    Blocked,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Active => "active",
            NodeState::Invalid => "invalid",
            NodeState::Overflow => "overflow",
            NodeState::Merging => "merging",
            NodeState::Blocked => "blocked",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub origin: String,
    pub cow: PathBuf,
    pub store: Store,
    pub chunk_size: u64,
    /// The dm-snapshot status line, e.g. `"16/2097152 16"` or `"Invalid"`.
    pub status_line: String,
    /// COW bytes used and available.
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub exceptions: u64,
    pub state: NodeState,
    /// Why the snapshot is invalid (the operation, where, and the error), when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Has a hidden anchor: `clone_reset` works after origin writes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resettable: bool,
    /// The sockets it is exported on.
    #[serde(default)]
    pub exports: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportInfo {
    pub node: String,
    pub socket: PathBuf,
    pub readonly: bool,
    pub num_queues: u16,
    /// A frontend is connected.
    pub connected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportList {
    pub exports: Vec<ExportInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Origin,
    Snapshot,
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeKind::Origin => "origin",
            NodeKind::Snapshot => "snapshot",
        })
    }
}

/// One node's status. For an origin, used and total are its size and exceptions is 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub kind: NodeKind,
    /// A snapshot's origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The dm-style status line.
    pub status_line: String,
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub exceptions: u64,
    pub state: NodeState,
    /// Why the node is invalid or not served, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Something the user should know that does not stop the node (an image whose size is
    /// not a whole number of sectors, so its tail is not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub nodes: Vec<NodeStatus>,
    /// Edits in the config file that the state directory won over at start (start with
    /// `--apply-config` to apply them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_not_applied: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportStats {
    pub socket: PathBuf,
    pub node: String,
    pub requests: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
    /// Requests started and not yet completed, now (0 from daemons that predate the field).
    #[serde(default)]
    pub in_flight: u64,
    /// A frontend is connected now (false from daemons that predate the field).
    #[serde(default)]
    pub connected: bool,
    /// Its QoS: limits, group, current rate, time throttled (absent from older daemons).
    #[serde(default)]
    pub qos: QosStats,
}

/// One export's QoS figures in `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosStats {
    /// The export's own limits (`{}`: none).
    pub limits: QosLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The group's limits, shared with its other exports.
    #[serde(default, skip_serializing_if = "QosLimits::is_empty")]
    pub group_limits: QosLimits,
    /// Requests and bytes per second over the last second.
    pub iops: u64,
    pub bytes_per_sec: u64,
    /// Requests that waited for their budget, and their total wait in microseconds.
    pub throttled_requests: u64,
    pub throttled_us: u64,
}

/// One export's QoS settings (`export.qos`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosExport {
    pub socket: PathBuf,
    pub node: String,
    pub qos: QosLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosExportList {
    pub exports: Vec<QosExport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosGroupInfo {
    pub name: String,
    pub qos: QosLimits,
    /// The sockets of the exports in it.
    pub members: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosGroupList {
    pub groups: Vec<QosGroupInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub name: String,
    /// Chunks copied out of the origin.
    pub copies: u64,
    /// Requests waiting for a copy right now.
    pub parked: u64,
    /// Metadata commits.
    pub commits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub exports: Vec<ExportStats>,
    pub snapshots: Vec<SnapshotStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeState {
    Running,
    Finished,
    Failed,
    /// Stopped by a shutdown; it resumes when the daemon starts again.
    Stopped,
}

impl std::fmt::Display for MergeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MergeState::Running => "running",
            MergeState::Finished => "finished",
            MergeState::Failed => "failed",
            MergeState::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeStatus {
    pub snapshot: String,
    pub origin: String,
    pub state: MergeState,
    pub remaining_exceptions: u64,
    pub total_exceptions: u64,
    pub merged_bytes: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeList {
    /// Running merges, and the last state of finished or failed ones.
    pub merges: Vec<MergeStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    SnapshotInvalid,
    SnapshotOverflow,
    MergeStarted,
    MergeFinished,
    MergeFailed,
    /// A writable snapshot was reset to its creation state.
    CloneReset,
    /// A transient snapshot started empty after a restart of the daemon.
    TransientReset,
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EventKind::SnapshotInvalid => "snapshot_invalid",
            EventKind::SnapshotOverflow => "snapshot_overflow",
            EventKind::MergeStarted => "merge_started",
            EventKind::MergeFinished => "merge_finished",
            EventKind::MergeFailed => "merge_failed",
            EventKind::CloneReset => "clone_reset",
            EventKind::TransientReset => "transient_reset",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event, from 1.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub kind: EventKind,
    pub node: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<Event>,
    /// The `since` to ask for next to see only newer events.
    pub next_seq: u64,
}
