//! QoS limits as the user writes them: QEMU's throttle names (`iops-total`, `bps-write`,
//! `iops-total-max`, `iops-total-max-length`, `iops-size` ...) with `_` for `-` in the TOML, the
//! state file and the control protocol, one checked set ([`QosLimits`]) for all of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::ByteSize;

/// The largest rate or burst accepted (QEMU's `THROTTLE_VALUE_MAX`).
pub const VALUE_MAX: u64 = 1_000_000_000_000_000;
/// The longest burst, in seconds (a day).
pub const MAX_LENGTH_MAX: u64 = 86_400;

/// What one limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    IopsTotal,
    IopsRead,
    IopsWrite,
    BpsTotal,
    BpsRead,
    BpsWrite,
}

impl LimitKind {
    pub const ALL: [LimitKind; 6] = [
        LimitKind::IopsTotal,
        LimitKind::IopsRead,
        LimitKind::IopsWrite,
        LimitKind::BpsTotal,
        LimitKind::BpsRead,
        LimitKind::BpsWrite,
    ];

    /// The key in the TOML, the state file and the protocol (the CLI flag with `-`).
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::IopsTotal => "iops_total",
            LimitKind::IopsRead => "iops_read",
            LimitKind::IopsWrite => "iops_write",
            LimitKind::BpsTotal => "bps_total",
            LimitKind::BpsRead => "bps_read",
            LimitKind::BpsWrite => "bps_write",
        }
    }

    /// Bytes per second (bps) rather than requests per second (iops).
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            LimitKind::BpsTotal | LimitKind::BpsRead | LimitKind::BpsWrite
        )
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One limit: an average rate, and optionally a burst: up to `max` per second for
/// `max_length` seconds (default 1) after the disk was idle. 0: not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limit {
    pub avg: u64,
    pub max: u64,
    pub max_length: u64,
}

impl Limit {
    /// The burst length in seconds that applies (1 when not given).
    pub fn burst_seconds(&self) -> u64 {
        self.max_length.max(1)
    }
}

/// Every limit of one export or group. Empty: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosLimits {
    pub limits: [Limit; 6],
    /// Requests larger than this count as `bytes / iops_size` requests against the iops
    /// limits (QEMU's `iops-size`); 0: every request counts once.
    pub iops_size: u64,
}

/// Which field of a [`Limit`] a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Avg,
    Max,
    MaxLength,
}

fn parse_key(key: &str) -> Option<(LimitKind, Field)> {
    let key = key.replace('-', "_");
    LimitKind::ALL.into_iter().find_map(|k| {
        let rest = key.strip_prefix(k.name())?;
        match rest {
            "" => Some((k, Field::Avg)),
            "_max" => Some((k, Field::Max)),
            "_max_length" => Some((k, Field::MaxLength)),
            _ => None,
        }
    })
}

/// Every key a QoS table accepts, for error messages and `--help`.
pub fn key_names() -> Vec<String> {
    let mut v = Vec::new();
    for k in LimitKind::ALL {
        v.push(k.name().to_string());
        v.push(format!("{}_max", k.name()));
        v.push(format!("{}_max_length", k.name()));
    }
    v.push("iops_size".into());
    v
}

impl QosLimits {
    pub fn is_empty(&self) -> bool {
        *self == QosLimits::default()
    }

    pub fn get(&self, k: LimitKind) -> &Limit {
        &self.limits[k.index()]
    }

    /// Sets one key (`iops_total`, `bps_write_max`, `iops-size` ...); 0 unsets it.
    pub fn set(&mut self, key: &str, value: u64) -> Result<(), String> {
        if key.replace('-', "_") == "iops_size" {
            self.iops_size = value;
            return Ok(());
        }
        let (kind, field) = parse_key(key).ok_or_else(|| {
            format!(
                "unknown QoS limit {key:?} (known: {})",
                key_names().join(", ")
            )
        })?;
        let l = &mut self.limits[kind.index()];
        match field {
            Field::Avg => l.avg = value,
            Field::Max => l.max = value,
            Field::MaxLength => l.max_length = value,
        }
        Ok(())
    }

    /// Sets one key from text: bytes keys take a unit (`200M`, `4K`), the others a plain count.
    pub fn set_text(&mut self, key: &str, value: &str) -> Result<(), String> {
        let bytes = key.replace('-', "_") == "iops_size"
            || parse_key(key).is_some_and(|(k, f)| k.is_bytes() && f != Field::MaxLength);
        let n = if bytes {
            value
                .parse::<ByteSize>()
                .map_err(|e| format!("QoS limit {key}: {e}"))?
                .0
        } else {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("QoS limit {key}: {value:?} is not a whole number"))?
        };
        self.set(key, n)
    }

    /// The keys that are set, with their values, in a fixed order.
    pub fn pairs(&self) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        for k in LimitKind::ALL {
            let l = self.get(k);
            for (suffix, n) in [("", l.avg), ("_max", l.max), ("_max_length", l.max_length)] {
                if n != 0 {
                    v.push((format!("{}{suffix}", k.name()), n));
                }
            }
        }
        if self.iops_size != 0 {
            v.push(("iops_size".into(), self.iops_size));
        }
        v
    }

    /// Checks the set as QEMU does: a burst needs its average and is at least it, a burst
    /// length needs its burst, values stay in range.
    pub fn validate(&self) -> Result<(), String> {
        for k in LimitKind::ALL {
            let l = self.get(k);
            let n = k.name();
            if l.avg > VALUE_MAX || l.max > VALUE_MAX {
                return Err(format!(
                    "QoS limit {n}: values above {VALUE_MAX} are refused"
                ));
            }
            if l.max != 0 && l.avg == 0 {
                return Err(format!("QoS limit {n}_max needs {n} (the average rate)"));
            }
            if l.max != 0 && l.max < l.avg {
                return Err(format!(
                    "QoS limit {n}_max ({}) is below {n} ({}): a burst is at least the average",
                    l.max, l.avg
                ));
            }
            if l.max_length != 0 && l.max == 0 {
                return Err(format!("QoS limit {n}_max_length needs {n}_max"));
            }
            if l.max_length > MAX_LENGTH_MAX {
                return Err(format!(
                    "QoS limit {n}_max_length: at most {MAX_LENGTH_MAX} seconds"
                ));
            }
        }
        if self.iops_size > VALUE_MAX {
            return Err(format!(
                "QoS iops_size: values above {VALUE_MAX} are refused"
            ));
        }
        Ok(())
    }

    /// For people: `iops_total=5000 bps_total=200 MiB/s`, or `unlimited`.
    pub fn describe(&self) -> String {
        let pairs = self.pairs();
        if pairs.is_empty() {
            return "unlimited".into();
        }
        pairs
            .into_iter()
            .map(|(k, v)| {
                let bytes = k.starts_with("bps") && !k.ends_with("_length");
                if k == "iops_size" {
                    format!("{k}={}", crate::storage::binary_units(v))
                } else if bytes {
                    format!("{k}={}/s", crate::storage::binary_units(v))
                } else if k.ends_with("_length") {
                    format!("{k}={v}s")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Serialize for QosLimits {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<String, u64> = self.pairs().into_iter().collect();
        map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for QosLimits {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<QosLimits, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        let map = BTreeMap::<String, Raw>::deserialize(d)?;
        let mut q = QosLimits::default();
        for (k, v) in map {
            match v {
                Raw::Int(n) => q.set(&k, n),
                Raw::Str(s) => q.set_text(&k, &s),
            }
            .map_err(serde::de::Error::custom)?;
        }
        q.validate().map_err(serde::de::Error::custom)?;
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_qemu_names_with_either_separator_and_units_on_byte_limits() {
        let mut q = QosLimits::default();
        q.set_text("iops-total", "5000").unwrap();
        q.set_text("bps_write", "200M").unwrap();
        q.set_text("bps_write_max", "1G").unwrap();
        q.set_text("bps-write-max-length", "10").unwrap();
        q.set_text("iops_size", "4K").unwrap();
        assert_eq!(q.get(LimitKind::IopsTotal).avg, 5000);
        assert_eq!(q.get(LimitKind::BpsWrite).avg, 200 << 20);
        assert_eq!(q.get(LimitKind::BpsWrite).max, 1 << 30);
        assert_eq!(q.get(LimitKind::BpsWrite).max_length, 10);
        assert_eq!(q.iops_size, 4096);
        q.validate().unwrap();
        assert!(q.set_text("iops_read", "5K").is_err());
        assert!(q
            .set("iops_everything", 1)
            .unwrap_err()
            .contains("iops_total_max"));
    }

    #[test]
    fn bursts_are_checked_as_qemu_does() {
        let mut q = QosLimits::default();
        q.set("iops_read_max", 100).unwrap();
        assert!(q.validate().unwrap_err().contains("needs iops_read"));
        q.set("iops_read", 200).unwrap();
        assert!(q.validate().unwrap_err().contains("below"));
        q.set("iops_read", 50).unwrap();
        q.validate().unwrap();
        q.set("bps_total_max_length", 5).unwrap();
        assert!(q.validate().unwrap_err().contains("needs bps_total_max"));
    }

    #[test]
    fn the_serialized_form_is_a_table_of_the_set_keys() {
        let mut q = QosLimits::default();
        q.set("iops_total", 5000).unwrap();
        q.set("bps_total", 1 << 20).unwrap();
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(json, r#"{"bps_total":1048576,"iops_total":5000}"#);
        let back: QosLimits = serde_json::from_str(&json).unwrap();
        assert_eq!(back, q);
        let text: QosLimits =
            serde_json::from_str(r#"{"bps_total":"1M","iops_total":5000}"#).unwrap();
        assert_eq!(text, q);
        assert_eq!(q.describe(), "iops_total=5000 bps_total=1.0 MiB/s");
        assert!(serde_json::from_str::<QosLimits>(r#"{"iops_totl":1}"#).is_err());
    }
}
