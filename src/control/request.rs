//! Control requests: one variant per command, with typed arguments. The checks every request
//! passes before it reaches the daemon are validate.rs.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::StoreType;
use crate::qos::QosLimits;

/// Every command of protocol version 1, as written in `cmd`.
pub const COMMANDS: &[&str] = &[
    "hello",
    "origin.add",
    "origin.remove",
    "snapshot.create",
    "snapshot.delete",
    "snapshot.list",
    "export.add",
    "export.remove",
    "export.list",
    "status",
    "stats",
    "merge.start",
    "merge.status",
    "clone.reset",
    "events",
    "export.qos",
    "qos_group.set",
    "qos_group.remove",
    "qos_group.list",
];

/// A control request. On the wire `cmd` carries the tag and `args` the fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "args", deny_unknown_fields)]
pub enum Request {
    /// Protocol and daemon versions.
    #[serde(rename = "hello")]
    Hello {},
    #[serde(rename = "origin.add")]
    OriginAdd(OriginAdd),
    #[serde(rename = "origin.remove")]
    OriginRemove(RemoveNode),
    /// One or more snapshots taken at one consistent point (all origins paused together).
    #[serde(rename = "snapshot.create")]
    SnapshotCreate(SnapshotCreate),
    #[serde(rename = "snapshot.delete")]
    SnapshotDelete(SnapshotDelete),
    #[serde(rename = "snapshot.list")]
    SnapshotList {},
    #[serde(rename = "export.add")]
    ExportAdd(ExportAdd),
    #[serde(rename = "export.remove")]
    ExportRemove(ExportRemove),
    #[serde(rename = "export.list")]
    ExportList {},
    #[serde(rename = "status")]
    Status(StatusArgs),
    #[serde(rename = "stats")]
    Stats {},
    #[serde(rename = "merge.start")]
    MergeStart(SnapshotRef),
    #[serde(rename = "merge.status")]
    MergeStatus(MergeStatusArgs),
    /// Drops every exception of a snapshot: it reads as its origin again.
    #[serde(rename = "clone.reset")]
    CloneReset(SnapshotRef),
    /// Logged events (snapshot invalid/overflow, merge finished/failed) from `since` on.
    #[serde(rename = "events")]
    Events(EventsArgs),
    /// Changes (or shows) the QoS limits and group of exports.
    #[serde(rename = "export.qos")]
    ExportQos(ExportQos),
    #[serde(rename = "qos_group.set")]
    QosGroupSet(QosGroupSet),
    /// Removes a QoS group no export uses.
    #[serde(rename = "qos_group.remove")]
    QosGroupRemove(QosGroupRef),
    #[serde(rename = "qos_group.list")]
    QosGroupList {},
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosGroupRef {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginAdd {
    pub name: String,
    /// Absolute path of the image file or block device, or `rbd:POOL/IMAGE[@SNAP]`.
    pub image: PathBuf,
    /// Most copy-outs in flight (absent: the daemon's default; 0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_cap: Option<usize>,
    /// For an `rbd:` image: the cluster's conf file, client id (without `client.`) and keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_conf: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceph_keyring: Option<PathBuf>,
}

/// `origin.remove` and `snapshot.delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveNode {
    pub name: String,
    /// Also remove what depends on it (snapshots of an origin, exports of the node).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDelete {
    pub name: String,
    /// Also remove its exports.
    #[serde(default)]
    pub force: bool,
    /// Also remove its COW file (and its anchor's); default: kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_cow: bool,
}

/// Snapshot store type, as in the dm-snapshot table line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Store {
    /// Persistent.
    #[default]
    P,
    /// Persistent, overflow-capable.
    PO,
    /// Transient (not kept across restarts).
    N,
}

impl std::str::FromStr for Store {
    type Err = String;

    fn from_str(s: &str) -> Result<Store, String> {
        match s.to_ascii_uppercase().as_str() {
            "P" => Ok(Store::P),
            "PO" => Ok(Store::PO),
            "N" => Ok(Store::N),
            _ => Err(format!("store type {s:?} is not P, PO or N")),
        }
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::P => "P",
            Store::PO => "PO",
            Store::N => "N",
        })
    }
}

impl From<Store> for StoreType {
    fn from(s: Store) -> StoreType {
        match s {
            Store::P => StoreType::P,
            Store::PO => StoreType::PO,
            Store::N => StoreType::N,
        }
    }
}

impl From<StoreType> for Store {
    fn from(s: StoreType) -> Store {
        match s {
            StoreType::P => Store::P,
            StoreType::PO => Store::PO,
            StoreType::N => Store::N,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// One entry per snapshot; all are taken at the same point.
    pub snapshots: Vec<NewSnapshot>,
    /// Load COW files that already hold a snapshot store (refused otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshot {
    pub origin: String,
    pub name: String,
    /// Absolute path of the COW file; created when `size` is given and it does not exist.
    pub cow: PathBuf,
    #[serde(default)]
    pub store: Store,
    /// Chunk size in bytes (a power of two, at least 512); absent: the on-disk value or the
    /// daemon's default for P/PO, required for N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// Size in bytes of the COW file to create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_zeroes_cow: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_passdown_origin: bool,
    /// Keep a hidden anchor so `clone_reset` works after the origin was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resettable: bool,
    /// Write a COW file created from `size` full of zeroes first (default: sparse).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preallocate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportAdd {
    /// An origin or snapshot name.
    pub node: String,
    /// Absolute path of the vhost-user socket to create.
    pub socket: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default = "one")]
    pub num_queues: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
    /// Disk serial, up to 20 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// 512 or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub writethrough: bool,
    /// Allow a second export of a node when any of its exports is writable (every export
    /// of the node must say so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_writable: bool,
    /// IOPS and bandwidth limits (QEMU's throttle names with `_`: `iops_total`, `bps_write`,
    /// `iops_total_max` ...).
    #[serde(default, skip_serializing_if = "QosLimits::is_empty")]
    pub qos: QosLimits,
    /// A QoS group whose budget the export shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_group: Option<String>,
}

/// `export.qos`: the QoS of one export (`socket`) or of every export of `node`. `qos` replaces
/// the export's own limits (absent: kept; `{}`: none); `qos_group` joins a group, `""` leaves
/// it, absent keeps it. With neither, nothing changes and the current settings are returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQos {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<QosLimits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_group: Option<String>,
}

/// `qos_group.set`: creates a group or replaces its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosGroupSet {
    pub name: String,
    #[serde(default)]
    pub qos: QosLimits,
}

fn one() -> u16 {
    1
}

/// `export.remove`: exactly one of `socket` and `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRemove {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Disconnect a connected frontend.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {
    /// One node; absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    pub snapshot: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeStatusArgs {
    /// One snapshot; absent: every merge the daemon knows of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsArgs {
    /// Only events with `seq >= since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// Longest node name accepted.
pub const MAX_NAME: usize = 128;

impl Request {
    /// The command name, as written in `cmd`.
    pub fn cmd(&self) -> &'static str {
        match self {
            Request::Hello {} => "hello",
            Request::OriginAdd(_) => "origin.add",
            Request::OriginRemove(_) => "origin.remove",
            Request::SnapshotCreate(_) => "snapshot.create",
            Request::SnapshotDelete(_) => "snapshot.delete",
            Request::SnapshotList {} => "snapshot.list",
            Request::ExportAdd(_) => "export.add",
            Request::ExportRemove(_) => "export.remove",
            Request::ExportList {} => "export.list",
            Request::Status(_) => "status",
            Request::Stats {} => "stats",
            Request::MergeStart(_) => "merge.start",
            Request::MergeStatus(_) => "merge.status",
            Request::CloneReset(_) => "clone.reset",
            Request::Events(_) => "events",
            Request::ExportQos(_) => "export.qos",
            Request::QosGroupSet(_) => "qos_group.set",
            Request::QosGroupRemove(_) => "qos_group.remove",
            Request::QosGroupList {} => "qos_group.list",
        }
    }
}
