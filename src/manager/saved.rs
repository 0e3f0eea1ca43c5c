//! The state file's JSON form (`graph.json`): a schema of its own, apart from the model and the
//! TOML file. Every field is written; on reading, absent fields take their defaults (files of
//! release 0.1.0 lack `version`, `resettable`, `preallocate`) and unknown fields are ignored, so a
//! release may add a field older ones can do without and keep the state version; a field whose
//! loss would change behaviour comes with a new version, which older releases refuse.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::{
    ByteSize, CephOptions, ExportSpec, GraphConfig, OriginSpec, QosGroupSpec, QosLimits,
    SnapshotSpec, StoreType,
};

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SavedState {
    /// Absent (1) in 0.1.0's files.
    #[serde(default = "version_one")]
    pub version: u32,
    pub graph: SavedGraph,
    #[serde(default)]
    pub merging: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_failed: Option<String>,
    #[serde(default)]
    pub origin_written: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_config: Option<SavedGraph>,
}

fn version_one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SavedGraph {
    #[serde(default, rename = "origin")]
    origins: Vec<SavedOrigin>,
    #[serde(default, rename = "snapshot")]
    snapshots: Vec<SavedSnapshot>,
    #[serde(default, rename = "export")]
    exports: Vec<SavedExport>,
    #[serde(default, rename = "qos_group", skip_serializing_if = "Vec::is_empty")]
    qos_groups: Vec<SavedQosGroup>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedQosGroup {
    name: String,
    #[serde(default)]
    qos: QosLimits,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedOrigin {
    name: String,
    image: PathBuf,
    #[serde(default)]
    copy_cap: Option<usize>,
    #[serde(default)]
    direct: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceph_conf: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceph_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceph_keyring: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedSnapshot {
    name: String,
    origin: String,
    cow: PathBuf,
    store: StoreType,
    #[serde(default)]
    chunk_size: ByteSize,
    #[serde(default)]
    create_size: Option<ByteSize>,
    #[serde(default)]
    discard_zeroes_cow: bool,
    #[serde(default)]
    discard_passdown_origin: bool,
    #[serde(default)]
    resettable: bool,
    #[serde(default)]
    preallocate: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedExport {
    node: String,
    socket: PathBuf,
    #[serde(default)]
    readonly: bool,
    #[serde(default = "crate::model::default_num_queues")]
    num_queues: u16,
    #[serde(default = "crate::model::default_queue_size")]
    queue_size: u16,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default = "crate::model::default_logical_block_size")]
    logical_block_size: u32,
    #[serde(default)]
    writethrough: bool,
    #[serde(default)]
    shared_writable: bool,
    #[serde(default, skip_serializing_if = "QosLimits::is_empty")]
    qos: QosLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qos_group: Option<String>,
}

impl From<SavedGraph> for GraphConfig {
    fn from(g: SavedGraph) -> GraphConfig {
        let origin = |o: SavedOrigin| OriginSpec {
            name: o.name,
            image: o.image,
            copy_cap: o.copy_cap,
            direct: o.direct,
            ceph: CephOptions {
                conf: o.ceph_conf,
                id: o.ceph_id,
                keyring: o.ceph_keyring,
            },
        };
        let snapshot = |s: SavedSnapshot| SnapshotSpec {
            name: s.name,
            origin: s.origin,
            cow: s.cow,
            store: s.store,
            chunk_size: s.chunk_size,
            create_size: s.create_size,
            discard_zeroes_cow: s.discard_zeroes_cow,
            discard_passdown_origin: s.discard_passdown_origin,
            resettable: s.resettable,
            preallocate: s.preallocate,
        };
        let export = |e: SavedExport| ExportSpec {
            node: e.node,
            socket: e.socket,
            readonly: e.readonly,
            num_queues: e.num_queues,
            queue_size: e.queue_size,
            serial: e.serial,
            logical_block_size: e.logical_block_size,
            writethrough: e.writethrough,
            shared_writable: e.shared_writable,
            qos: e.qos,
            qos_group: e.qos_group,
        };
        let group = |g: SavedQosGroup| QosGroupSpec {
            name: g.name,
            qos: g.qos,
        };
        GraphConfig {
            origins: g.origins.into_iter().map(origin).collect(),
            snapshots: g.snapshots.into_iter().map(snapshot).collect(),
            exports: g.exports.into_iter().map(export).collect(),
            qos_groups: g.qos_groups.into_iter().map(group).collect(),
        }
    }
}

impl From<&GraphConfig> for SavedGraph {
    fn from(g: &GraphConfig) -> SavedGraph {
        let origin = |o: &OriginSpec| SavedOrigin {
            name: o.name.clone(),
            image: o.image.clone(),
            copy_cap: o.copy_cap,
            direct: o.direct,
            ceph_conf: o.ceph.conf.clone(),
            ceph_id: o.ceph.id.clone(),
            ceph_keyring: o.ceph.keyring.clone(),
        };
        let snapshot = |s: &SnapshotSpec| SavedSnapshot {
            name: s.name.clone(),
            origin: s.origin.clone(),
            cow: s.cow.clone(),
            store: s.store,
            chunk_size: s.chunk_size,
            create_size: s.create_size,
            discard_zeroes_cow: s.discard_zeroes_cow,
            discard_passdown_origin: s.discard_passdown_origin,
            resettable: s.resettable,
            preallocate: s.preallocate,
        };
        let export = |e: &ExportSpec| SavedExport {
            node: e.node.clone(),
            socket: e.socket.clone(),
            readonly: e.readonly,
            num_queues: e.num_queues,
            queue_size: e.queue_size,
            serial: e.serial.clone(),
            logical_block_size: e.logical_block_size,
            writethrough: e.writethrough,
            shared_writable: e.shared_writable,
            qos: e.qos,
            qos_group: e.qos_group.clone(),
        };
        let group = |g: &QosGroupSpec| SavedQosGroup {
            name: g.name.clone(),
            qos: g.qos,
        };
        SavedGraph {
            origins: g.origins.iter().map(origin).collect(),
            snapshots: g.snapshots.iter().map(snapshot).collect(),
            exports: g.exports.iter().map(export).collect(),
            qos_groups: g.qos_groups.iter().map(group).collect(),
        }
    }
}
