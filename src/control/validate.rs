//! The checks every control request passes before it reaches the daemon: names, absolute
//! paths, ranges. Checks that need the daemon's state (does the node exist, is the path in
//! use) belong to the handler.

use crate::storage::RbdSpec;
use std::collections::HashSet;
use std::path::Path;

use super::protocol::ControlError;
use super::request::*;

impl Request {
    /// Checks what can be checked without the daemon's state: names, absolute paths, ranges.
    pub fn validate(&self) -> Result<(), ControlError> {
        match self {
            Request::Hello {}
            | Request::SnapshotList {}
            | Request::ExportList {}
            | Request::Stats {}
            | Request::QosGroupList {}
            | Request::Events(_) => Ok(()),
            Request::QosGroupSet(QosGroupSet { name, .. })
            | Request::QosGroupRemove(QosGroupRef { name }) => check_name("QoS group", name),
            Request::ExportQos(q) => {
                match (&q.socket, &q.node) {
                    (Some(s), None) => check_absolute("socket", s)?,
                    (None, Some(n)) => check_name("node", n)?,
                    _ => {
                        return Err(ControlError::invalid(
                            "export.qos needs exactly one of `socket` and `node`",
                        ))
                    }
                }
                match q.qos_group.as_deref() {
                    None | Some("") => Ok(()),
                    Some(g) => check_name("QoS group", g),
                }
            }
            Request::OriginAdd(a) => {
                check_name("origin", &a.name)?;
                for p in [&a.ceph_conf, &a.ceph_keyring].into_iter().flatten() {
                    check_absolute("Ceph", p)?;
                }
                match RbdSpec::parse(&a.image) {
                    Ok(Some(_)) => Ok(()),
                    Ok(None)
                        if a.ceph_conf.is_some()
                            || a.ceph_id.is_some()
                            || a.ceph_keyring.is_some() =>
                    {
                        Err(ControlError::invalid(
                            "ceph_conf, ceph_id and ceph_keyring apply only to an rbd: image",
                        ))
                    }
                    Ok(None) => check_absolute("image", &a.image),
                    Err(e) => Err(ControlError::invalid(e)),
                }
            }
            Request::OriginRemove(a) => check_name("node", &a.name),
            Request::SnapshotDelete(a) => check_name("node", &a.name),
            Request::SnapshotCreate(c) => validate_create(c),
            Request::ExportAdd(a) => validate_export(a),
            Request::ExportRemove(r) => match (&r.socket, &r.node) {
                (Some(s), None) => check_absolute("socket", s),
                (None, Some(n)) => check_name("node", n),
                _ => Err(ControlError::invalid(
                    "export.remove needs exactly one of `socket` and `node`",
                )),
            },
            Request::Status(s) => s.node.as_deref().map_or(Ok(()), |n| check_name("node", n)),
            Request::MergeStart(s) | Request::CloneReset(s) => check_name("snapshot", &s.snapshot),
            Request::MergeStatus(s) => s
                .snapshot
                .as_deref()
                .map_or(Ok(()), |n| check_name("snapshot", n)),
        }
    }
}

fn check_name(what: &str, name: &str) -> Result<(), ControlError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ControlError::invalid(format!(
            "{what} name must be 1 to {MAX_NAME} bytes long"
        )));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ControlError::invalid(format!(
            "{what} name {name:?} contains whitespace or control characters"
        )));
    }
    Ok(())
}

fn check_absolute(what: &str, path: &Path) -> Result<(), ControlError> {
    if !path.is_absolute() {
        return Err(ControlError::invalid(format!(
            "{what} path {} is relative; the daemon needs an absolute path",
            path.display()
        )));
    }
    Ok(())
}

fn check_size(what: &str, name: &str, size: Option<u64>) -> Result<(), ControlError> {
    if size == Some(0) {
        return Err(ControlError::invalid(format!(
            "{what} of snapshot {name} must not be zero"
        )));
    }
    Ok(())
}

fn validate_create(c: &SnapshotCreate) -> Result<(), ControlError> {
    if c.snapshots.is_empty() {
        return Err(ControlError::invalid(
            "snapshot.create needs at least one snapshot",
        ));
    }
    let mut names = HashSet::new();
    let mut cows = HashSet::new();
    for s in &c.snapshots {
        check_name("origin", &s.origin)?;
        check_name("snapshot", &s.name)?;
        check_absolute("COW", &s.cow)?;
        check_size("chunk size", &s.name, s.chunk_size)?;
        check_size("size", &s.name, s.size)?;
        if let Some(cs) = s.chunk_size {
            if !cs.is_power_of_two() || cs < 512 {
                return Err(ControlError::invalid(format!(
                    "chunk size {cs} of snapshot {} is not a power of two of at least 512",
                    s.name
                )));
            }
        } else if s.store == Store::N {
            return Err(ControlError::invalid(format!(
                "transient snapshot {} needs a chunk size",
                s.name
            )));
        }
        if s.discard_passdown_origin && !s.discard_zeroes_cow {
            return Err(ControlError::invalid(format!(
                "snapshot {}: discard_passdown_origin needs discard_zeroes_cow",
                s.name
            )));
        }
        if !names.insert(s.name.as_str()) {
            return Err(ControlError::invalid(format!(
                "snapshot name {:?} is used twice in one request",
                s.name
            )));
        }
        if !cows.insert(s.cow.as_path()) {
            return Err(ControlError::invalid(format!(
                "COW path {} is used twice in one request",
                s.cow.display()
            )));
        }
    }
    if let Some(s) = c
        .snapshots
        .iter()
        .find(|s| names.contains(s.origin.as_str()))
    {
        return Err(ControlError::invalid(format!(
            "{:?} is both an origin and a new snapshot",
            s.origin
        )));
    }
    Ok(())
}

fn validate_export(a: &ExportAdd) -> Result<(), ControlError> {
    check_name("node", &a.node)?;
    check_absolute("socket", &a.socket)?;
    if !(1..=64).contains(&a.num_queues) {
        return Err(ControlError::invalid(format!(
            "number of queues must be 1 to 64, not {}",
            a.num_queues
        )));
    }
    if let Some(q) = a.queue_size {
        if !q.is_power_of_two() || q < 2 {
            return Err(ControlError::invalid(format!(
                "queue size must be a power of two of at least 2, not {q}"
            )));
        }
    }
    if let Some(s) = &a.serial {
        if s.len() > 20 {
            return Err(ControlError::invalid(format!(
                "serial {s:?} is longer than 20 bytes"
            )));
        }
    }
    if let Some(b) = a.logical_block_size {
        if b != 512 && b != 4096 {
            return Err(ControlError::invalid(format!(
                "logical block size must be 512 or 4096, not {b}"
            )));
        }
    }
    Ok(())
}
