//! The TOML device-graph file of `snapblk serve --config`: origins, snapshots, exports, parsed
//! and validated (names unique, references resolve, sizes and enums well-formed) before use.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

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

/// Store type of a snapshot, as in the dm-snapshot table line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum StoreType {
    P,
    PO,
    N,
}

/// A byte size written as an integer or with a K/M/G/T suffix (binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
            Some((i, _)) => {
                let unit = t[i..]
                    .trim_end_matches(['B', 'b', 'i'])
                    .to_ascii_uppercase();
                let mult: u64 = match unit.as_str() {
                    "" => 1,
                    "K" => 1 << 10,
                    "M" => 1 << 20,
                    "G" => 1 << 30,
                    "T" => 1 << 40,
                    "S" => 512,
                    _ => return Err(format!("size {s:?} has an unknown unit")),
                };
                (&t[..i], mult)
            }
            None => (t, 1),
        };
        let n: u64 = num
            .trim()
            .parse()
            .map_err(|_| format!("size {s:?} is not a number with an optional K/M/G/T/s unit"))?;
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSpec {
    pub name: String,
    pub image: PathBuf,
    /// Most copy-outs in flight (default 2048, 0 = unlimited).
    #[serde(default)]
    pub copy_cap: Option<usize>,
    #[serde(default)]
    pub direct: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSpec {
    pub name: String,
    pub origin: String,
    pub cow: PathBuf,
    #[serde(default = "default_store")]
    pub store: StoreType,
    /// Chunk size (bytes, or with a unit: "4K", "8s"); 0 or absent: on-disk value or 16 KiB
    /// for P/PO, an error for N.
    #[serde(default)]
    pub chunk_size: ByteSize,
    /// Create the COW file with this size if it does not exist.
    #[serde(default)]
    pub create_size: Option<ByteSize>,
    #[serde(default)]
    pub discard_zeroes_cow: bool,
    #[serde(default)]
    pub discard_passdown_origin: bool,
    /// Keep a hidden anchor (a read-only snapshot taken at the same point, COW `<cow>.anchor`)
    /// so `clone reset` works even after the origin was written. Costs a second copy-out per
    /// changed origin chunk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resettable: bool,
    /// Write a COW file created from `create_size` full of zeroes up front instead of leaving
    /// it sparse (never on tmpfs or ramfs). Measured slower on this project's ext4 test disk
    /// (see the README's durability section); for file systems where first writes cost more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preallocate: bool,
}

impl SnapshotSpec {
    /// The hidden anchor of a resettable snapshot: same origin, store and chunk size, its own
    /// COW next to the snapshot's.
    pub fn anchor(&self) -> SnapshotSpec {
        let mut cow = self.cow.clone().into_os_string();
        cow.push(".anchor");
        SnapshotSpec {
            name: format!("{}.anchor", self.name),
            cow: cow.into(),
            store: match self.store {
                StoreType::N => StoreType::N,
                _ => StoreType::P,
            },
            discard_zeroes_cow: false,
            discard_passdown_origin: false,
            resettable: false,
            ..self.clone()
        }
    }
}

fn default_store() -> StoreType {
    StoreType::P
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// An origin or snapshot name.
    pub node: String,
    pub socket: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default = "default_queues")]
    pub num_queues: u16,
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default = "default_lbs")]
    pub logical_block_size: u32,
    #[serde(default)]
    pub writethrough: bool,
}

fn default_queues() -> u16 {
    1
}
fn default_queue_size() -> u16 {
    256
}
fn default_lbs() -> u32 {
    512
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    #[serde(default, rename = "origin")]
    pub origins: Vec<OriginSpec>,
    #[serde(default, rename = "snapshot")]
    pub snapshots: Vec<SnapshotSpec>,
    #[serde(default, rename = "export")]
    pub exports: Vec<ExportSpec>,
}

impl GraphConfig {
    pub fn load(path: &Path) -> Result<GraphConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: GraphConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()
            .map_err(|e| ConfigError::Invalid(format!("config file {}: {e}", path.display())))?;
        Ok(cfg)
    }

    /// Checks names are unique, references resolve and values are in range.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for o in &self.origins {
            if !names.insert(o.name.as_str()) {
                return Err(format!("node name {:?} is used twice", o.name));
            }
        }
        let origins: HashSet<&str> = self.origins.iter().map(|o| o.name.as_str()).collect();
        let mut cows = HashSet::new();
        for s in &self.snapshots {
            if !names.insert(s.name.as_str()) {
                return Err(format!("node name {:?} is used twice", s.name));
            }
            if !origins.contains(s.origin.as_str()) {
                return Err(format!(
                    "snapshot {:?} names unknown origin {:?}",
                    s.name, s.origin
                ));
            }
            if !cows.insert(&s.cow) {
                return Err(format!(
                    "COW file {} is used by two snapshots",
                    s.cow.display()
                ));
            }
            if self.origins.iter().any(|o| o.image == s.cow) {
                return Err(format!(
                    "COW file {} of snapshot {:?} is an origin image",
                    s.cow.display(),
                    s.name
                ));
            }
            if s.chunk_size.0 % 512 != 0 {
                return Err(format!(
                    "snapshot {:?}: chunk size {} bytes is not a whole number of 512-byte sectors",
                    s.name, s.chunk_size.0
                ));
            }
            if s.discard_passdown_origin && !s.discard_zeroes_cow {
                return Err(format!(
                    "snapshot {:?}: discard_passdown_origin needs discard_zeroes_cow",
                    s.name
                ));
            }
        }
        let mut sockets = HashSet::new();
        for e in &self.exports {
            if !names.contains(e.node.as_str()) {
                return Err(format!(
                    "export {} names unknown node {:?}",
                    e.socket.display(),
                    e.node
                ));
            }
            if !e.socket.is_absolute() {
                return Err(format!(
                    "export socket {} must be an absolute path",
                    e.socket.display()
                ));
            }
            if !sockets.insert(&e.socket) {
                return Err(format!(
                    "socket {} is used by two exports",
                    e.socket.display()
                ));
            }
            if e.num_queues == 0 || e.num_queues > 64 {
                return Err(format!(
                    "export {}: num_queues {} is not in 1..=64",
                    e.socket.display(),
                    e.num_queues
                ));
            }
            if !e.queue_size.is_power_of_two() || e.queue_size < 2 {
                return Err(format!(
                    "export {}: queue_size {} is not a power of two >= 2",
                    e.socket.display(),
                    e.queue_size
                ));
            }
            if e.logical_block_size != 512 && e.logical_block_size != 4096 {
                return Err(format!(
                    "export {}: logical_block_size {} is not 512 or 4096",
                    e.socket.display(),
                    e.logical_block_size
                ));
            }
        }
        Ok(())
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
        let c: GraphConfig = toml::from_str(EXAMPLE).unwrap();
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
        let c: GraphConfig = toml::from_str(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("unknown origin"));
        let bad = EXAMPLE.replace("node = \"ci-1\"", "node = \"ghost\"");
        let c: GraphConfig = toml::from_str(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("unknown node"));
    }

    #[test]
    fn unknown_fields_and_bad_store_are_parse_errors() {
        assert!(
            toml::from_str::<GraphConfig>(&EXAMPLE.replace("store = \"P\"", "store = \"Q\""))
                .is_err()
        );
        assert!(toml::from_str::<GraphConfig>(&format!("{EXAMPLE}\nbogus = 1\n")).is_err());
    }

    #[test]
    fn relative_socket_and_cow_as_origin_are_refused() {
        let bad = EXAMPLE.replace("/run/snapblk/ci-1.sock", "ci-1.sock");
        let c: GraphConfig = toml::from_str(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("absolute"));
        let bad = EXAMPLE.replace("/var/lib/snapblk/ci-1.cow", "/var/lib/snapblk/base.img");
        let c: GraphConfig = toml::from_str(&bad).unwrap();
        assert!(c.validate().unwrap_err().contains("is an origin image"));
    }
}
