//! The device graph as the daemon knows it: origins, snapshots and exports, every default filled
//! in, checked as a whole ([`GraphConfig::validate`]). Its serialized forms live apart and convert
//! to and from it: the TOML file the user writes (config.rs: strict, an unknown key is an error)
//! and the state directory's JSON (manager/saved.rs: versioned, tolerant of fields a newer
//! release adds), so the three can evolve separately.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::qos::QosLimits;
pub use crate::storage::CephOptions;

/// Exports' queues when not given.
pub const DEFAULT_NUM_QUEUES: u16 = 1;
/// Exports' queue size when not given.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Exports' logical block size when not given.
pub const DEFAULT_LOGICAL_BLOCK_SIZE: u32 = 512;

/// The defaults above as functions, for the serialized forms' `#[serde(default = ...)]`.
pub fn default_num_queues() -> u16 {
    DEFAULT_NUM_QUEUES
}
pub fn default_queue_size() -> u16 {
    DEFAULT_QUEUE_SIZE
}
pub fn default_logical_block_size() -> u32 {
    DEFAULT_LOGICAL_BLOCK_SIZE
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

#[derive(Debug, Clone, PartialEq)]
pub struct OriginSpec {
    pub name: String,
    pub image: PathBuf,
    /// Most copy-outs in flight (default 2048, 0 = unlimited).
    pub copy_cap: Option<usize>,
    pub direct: bool,
    /// How to reach the Ceph cluster of an `rbd:POOL/IMAGE[@SNAP]` image.
    pub ceph: CephOptions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSpec {
    pub name: String,
    pub origin: String,
    pub cow: PathBuf,
    pub store: StoreType,
    /// Chunk size in bytes; 0: the on-disk value or 16 KiB for P/PO, an error for N.
    pub chunk_size: ByteSize,
    /// Create the COW file with this size if it does not exist.
    pub create_size: Option<ByteSize>,
    pub discard_zeroes_cow: bool,
    pub discard_passdown_origin: bool,
    /// Keep a hidden anchor (a read-only snapshot taken at the same point, COW `<cow>.anchor`)
    /// so `clone reset` works even after the origin was written. Costs a second copy-out per
    /// changed origin chunk.
    pub resettable: bool,
    /// Write a COW file created from `create_size` full of zeroes up front instead of leaving
    /// it sparse (never on tmpfs or ramfs). Measured slower on this project's ext4 test disk
    /// (see the README's durability section); for file systems where first writes cost more.
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

#[derive(Debug, Clone, PartialEq)]
pub struct ExportSpec {
    /// An origin or snapshot name.
    pub node: String,
    pub socket: PathBuf,
    pub readonly: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    pub serial: Option<String>,
    pub logical_block_size: u32,
    pub writethrough: bool,
    /// The user knows several guests write this node at once (a cluster file system): without
    /// it, a node with a writable export cannot be exported a second time.
    pub shared_writable: bool,
    /// The export's own IOPS and bandwidth limits (empty: unlimited).
    pub qos: QosLimits,
    /// The QoS group whose budget it shares with the group's other exports.
    pub qos_group: Option<String>,
}

impl ExportSpec {
    /// Why `self` cannot join `others` (the exports a node already has), if it cannot: two
    /// guests writing one disk corrupt their file systems, so a node with more than one export,
    /// any of them writable, needs every one of them marked shared-writable.
    pub fn shares_badly(&self, others: &[&ExportSpec]) -> Option<String> {
        let first = others.first()?;
        let writable = !self.readonly || others.iter().any(|e| !e.readonly);
        if !writable || (self.shared_writable && others.iter().all(|e| e.shared_writable)) {
            return None;
        }
        Some(format!(
            "node {:?} is already exported on {}, and one of the two exports is read-write: two \
             guests writing one disk corrupt their file systems. Give the other guest a snapshot \
             of it, or, if the guests coordinate their writes (a cluster file system), mark every \
             export of it shared-writable (--shared-writable; shared_writable = true in the config)",
            self.node,
            first.socket.display()
        ))
    }
}

/// A QoS group: exports that name it share its limits (on top of their own).
#[derive(Debug, Clone, PartialEq)]
pub struct QosGroupSpec {
    pub name: String,
    pub qos: QosLimits,
}

/// The whole graph: what a config file describes and the state directory keeps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphConfig {
    pub origins: Vec<OriginSpec>,
    pub snapshots: Vec<SnapshotSpec>,
    pub exports: Vec<ExportSpec>,
    pub qos_groups: Vec<QosGroupSpec>,
}

impl GraphConfig {
    /// Checks names are unique, references resolve and values are in range.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        for o in &self.origins {
            if !names.insert(o.name.as_str()) {
                return Err(format!("node name {:?} is used twice", o.name));
            }
            let rbd = crate::storage::RbdSpec::parse(&o.image)
                .map_err(|e| format!("origin {:?}: {e}", o.name))?;
            if rbd.is_none() && o.ceph != CephOptions::default() {
                return Err(format!(
                    "origin {:?}: ceph_conf, ceph_id and ceph_keyring apply only to an rbd: image",
                    o.name
                ));
            }
            if rbd.is_some() && o.direct {
                return Err(format!(
                    "origin {:?}: direct applies to files, not to an rbd: image",
                    o.name
                ));
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
            if crate::storage::RbdSpec::is_rbd(&s.cow) {
                return Err(format!(
                    "snapshot {:?}: a COW store is a local file; only origins may be rbd: images",
                    s.name
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
        let mut groups = HashSet::new();
        for g in &self.qos_groups {
            if g.name.is_empty() || !groups.insert(g.name.as_str()) {
                return Err(format!(
                    "QoS group name {:?} is empty or used twice",
                    g.name
                ));
            }
            g.qos
                .validate()
                .map_err(|e| format!("QoS group {:?}: {e}", g.name))?;
        }
        let mut sockets = HashSet::new();
        for e in &self.exports {
            if let Some(g) = &e.qos_group {
                if !groups.contains(g.as_str()) {
                    return Err(format!(
                        "export {} names unknown QoS group {g:?}",
                        e.socket.display()
                    ));
                }
            }
            e.qos
                .validate()
                .map_err(|err| format!("export {}: {err}", e.socket.display()))?;
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
            let before: Vec<&ExportSpec> = self
                .exports
                .iter()
                .take_while(|o| !std::ptr::eq(*o, e))
                .filter(|o| o.node == e.node)
                .collect();
            if let Some(why) = e.shares_badly(&before) {
                return Err(why);
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
