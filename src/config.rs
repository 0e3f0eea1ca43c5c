//! The TOML device-graph file of `snapblk serve --config`: its schema (strict: an unknown key is
//! an error, so a typo never goes unnoticed), parsed into the model ([`GraphConfig`]) with the
//! defaults filled in and validated (names unique, references resolve, sizes and enums
//! well-formed) before use.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{
    ByteSize, CephOptions, ExportSpec, GraphConfig, OriginSpec, QosGroupSpec, QosLimits,
    SnapshotSpec, StoreType,
};

/// Errors reading or validating a config file. Each names the file and the offending entry.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The file: `[[origin]]`, `[[snapshot]]` and `[[export]]` tables.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "origin", skip_serializing_if = "Vec::is_empty")]
    origins: Vec<Origin>,
    #[serde(default, rename = "snapshot", skip_serializing_if = "Vec::is_empty")]
    snapshots: Vec<Snapshot>,
    #[serde(default, rename = "export", skip_serializing_if = "Vec::is_empty")]
    exports: Vec<Export>,
    #[serde(default, rename = "qos_group", skip_serializing_if = "Vec::is_empty")]
    qos_groups: Vec<QosGroup>,
}

/// `[[qos_group]]`: a budget that the exports naming it share.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct QosGroup {
    name: String,
    #[serde(default)]
    qos: QosLimits,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Origin {
    name: String,
    image: PathBuf,
    /// Most copy-outs in flight (default 2048, 0 = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copy_cap: Option<usize>,
    #[serde(default, skip_serializing_if = "is_false")]
    direct: bool,
    /// For an `rbd:` image: the cluster's conf file, client id and keyring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceph_conf: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceph_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ceph_keyring: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    name: String,
    origin: String,
    cow: PathBuf,
    #[serde(default = "default_store")]
    store: StoreType,
    /// Bytes, or with a unit ("4K", "8s"); 0 or absent: the on-disk value or 16 KiB.
    #[serde(default)]
    chunk_size: ByteSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    create_size: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "is_false")]
    discard_zeroes_cow: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    discard_passdown_origin: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    resettable: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    preallocate: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Export {
    node: String,
    socket: PathBuf,
    #[serde(default, skip_serializing_if = "is_false")]
    readonly: bool,
    #[serde(default = "crate::model::default_num_queues")]
    num_queues: u16,
    #[serde(default = "crate::model::default_queue_size")]
    queue_size: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serial: Option<String>,
    #[serde(default = "crate::model::default_logical_block_size")]
    logical_block_size: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    writethrough: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    shared_writable: bool,
    /// `qos = { iops_total = 5000, bps_total = "200M" }`: QEMU's throttle names with `_`.
    #[serde(default, skip_serializing_if = "QosLimits::is_empty")]
    qos: QosLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qos_group: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !b
}
fn default_store() -> StoreType {
    StoreType::P
}

impl From<File> for GraphConfig {
    fn from(f: File) -> GraphConfig {
        GraphConfig {
            origins: f
                .origins
                .into_iter()
                .map(|o| OriginSpec {
                    name: o.name,
                    image: o.image,
                    copy_cap: o.copy_cap,
                    direct: o.direct,
                    ceph: CephOptions {
                        conf: o.ceph_conf,
                        id: o.ceph_id,
                        keyring: o.ceph_keyring,
                    },
                })
                .collect(),
            snapshots: f
                .snapshots
                .into_iter()
                .map(|s| SnapshotSpec {
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
                })
                .collect(),
            exports: f
                .exports
                .into_iter()
                .map(|e| ExportSpec {
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
                })
                .collect(),
            qos_groups: f
                .qos_groups
                .into_iter()
                .map(|g| QosGroupSpec {
                    name: g.name,
                    qos: g.qos,
                })
                .collect(),
        }
    }
}

impl From<&GraphConfig> for File {
    fn from(g: &GraphConfig) -> File {
        File {
            origins: g
                .origins
                .iter()
                .map(|o| Origin {
                    name: o.name.clone(),
                    image: o.image.clone(),
                    copy_cap: o.copy_cap,
                    direct: o.direct,
                    ceph_conf: o.ceph.conf.clone(),
                    ceph_id: o.ceph.id.clone(),
                    ceph_keyring: o.ceph.keyring.clone(),
                })
                .collect(),
            snapshots: g
                .snapshots
                .iter()
                .map(|s| Snapshot {
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
                })
                .collect(),
            exports: g
                .exports
                .iter()
                .map(|e| Export {
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
                })
                .collect(),
            qos_groups: g
                .qos_groups
                .iter()
                .map(|g| QosGroup {
                    name: g.name.clone(),
                    qos: g.qos,
                })
                .collect(),
        }
    }
}

impl GraphConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<GraphConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg = GraphConfig::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()
            .map_err(|e| ConfigError::Invalid(format!("config file {}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Parses the TOML form (not validated: see [`GraphConfig::validate`]).
    pub fn from_toml(text: &str) -> Result<GraphConfig, toml::de::Error> {
        toml::from_str::<File>(text).map(GraphConfig::from)
    }

    /// The TOML form, as a config file would hold it.
    pub fn to_toml(&self) -> String {
        toml::to_string(&File::from(self)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[origin]]
name = "base"
image = "/var/lib/snapblk/base.img"

[[snapshot]]
name = "ci-1"
origin = "base"
cow = "/var/lib/snapblk/ci-1.cow"
store = "P"
chunk_size = "4K"
create_size = "1G"

[[export]]
node = "ci-1"
socket = "/run/snapblk/ci-1.sock"
num_queues = 2
"#;

    #[test]
    fn example_parses_and_validates() {
        let c = GraphConfig::from_toml(EXAMPLE).unwrap();
        c.validate().unwrap();
        assert_eq!(c.snapshots[0].chunk_size, ByteSize(4096));
        assert_eq!(c.snapshots[0].store, StoreType::P);
        assert_eq!(c.exports[0].num_queues, 2);
        assert_eq!(c.exports[0].queue_size, 256);
    }

    /// The file installed as /etc/snapblk/example.toml loads, and every file it names is where
    /// snapblk@example.service may write (images dir, its runtime directory).
    #[test]
    fn packaged_example_loads_and_fits_the_unit() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/packaging/etc/example.toml"
        ));
        let c = GraphConfig::load(path).unwrap();
        assert_eq!(
            (c.origins.len(), c.snapshots.len(), c.exports.len()),
            (1, 1, 1)
        );
        let images = Path::new("/var/lib/snapblk/images");
        assert!(c.origins[0].image.starts_with(images));
        assert!(c.snapshots[0].cow.starts_with(images));
        assert_eq!(c.snapshots[0].create_size, Some(ByteSize(8 << 30)));
        assert!(c.exports[0].socket.starts_with("/run/snapblk/example/"));
        assert_eq!(c.exports[0].num_queues, 2);
    }

    #[test]
    fn byte_sizes_parse_with_units() {
        assert_eq!("16K".parse::<ByteSize>(), Ok(ByteSize(16384)));
        assert_eq!("8s".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!("1GiB".parse::<ByteSize>(), Ok(ByteSize(1 << 30)));
        assert_eq!("512".parse::<ByteSize>(), Ok(ByteSize(512)));
        assert!("12Q".parse::<ByteSize>().is_err());
        assert!("x".parse::<ByteSize>().is_err());
    }

    #[test]
    fn dangling_references_are_refused() {
        let bad = EXAMPLE.replace("origin = \"base\"", "origin = \"nope\"");
        let c = GraphConfig::from_toml(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("unknown origin"));
        let bad = EXAMPLE.replace("node = \"ci-1\"", "node = \"ghost\"");
        let c = GraphConfig::from_toml(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("unknown node"));
    }

    #[test]
    fn unknown_fields_and_bad_store_are_parse_errors() {
        assert!(
            GraphConfig::from_toml(&EXAMPLE.replace("store = \"P\"", "store = \"Q\"")).is_err()
        );
        assert!(GraphConfig::from_toml(&format!("{EXAMPLE}\nbogus = 1\n")).is_err());
    }

    #[test]
    fn relative_socket_and_cow_as_origin_are_refused() {
        let bad = EXAMPLE.replace("/run/snapblk/ci-1.sock", "ci-1.sock");
        let c = GraphConfig::from_toml(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("absolute"));
        let bad = EXAMPLE.replace("/var/lib/snapblk/ci-1.cow", "/var/lib/snapblk/base.img");
        let c = GraphConfig::from_toml(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("is an origin image"));
    }

    #[test]
    fn qos_tables_parse_round_trip_and_are_checked() {
        let with = format!(
            "{EXAMPLE}\n[[qos_group]]\nname = \"tenant\"\nqos = {{ iops_total = 20000, bps_total = \"1G\" }}\n"
        )
        .replace(
            "node = \"ci-1\"",
            "node = \"ci-1\"\nqos = { iops_write = 500, bps_write_max = \"100M\", bps_write = \"10M\" }\nqos_group = \"tenant\"",
        );
        let c = GraphConfig::from_toml(&with).unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.qos_groups[0].qos.describe(),
            "iops_total=20000 bps_total=1.0 GiB/s"
        );
        assert_eq!(c.exports[0].qos_group.as_deref(), Some("tenant"));
        assert_eq!(GraphConfig::from_toml(&c.to_toml()).unwrap(), c);
        // An unknown key is a parse error that names the known ones.
        let e = GraphConfig::from_toml(&with.replace("iops_write", "iops_wirte")).unwrap_err();
        assert!(e.to_string().contains("iops_write_max"), "{e}");
        // A burst below its average, an unknown group.
        let e = GraphConfig::from_toml(&with.replace("\"100M\"", "\"1M\"")).unwrap_err();
        assert!(e.to_string().contains("below"), "{e}");
        let c =
            GraphConfig::from_toml(&with.replace("qos_group = \"tenant\"", "qos_group = \"x\""))
                .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("unknown QoS group \"x\""));
    }
}
