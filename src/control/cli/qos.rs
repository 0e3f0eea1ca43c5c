//! The QoS flags (QEMU's throttle names) shared by `serve`, `export qos`, `export add` and
//! `qos-group set`, and their conversion into [`QosLimits`].

use clap::Args;

use crate::qos::QosLimits;

/// IOPS and bandwidth limits; bandwidth takes a unit (`200M` = 200 MiB/s).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "QoS limits (0 or absent: none)")]
pub struct QosArgs {
    /// Requests per second, reads and writes together.
    #[arg(long, value_name = "N")]
    pub iops_total: Option<String>,
    /// Read requests per second.
    #[arg(long, value_name = "N")]
    pub iops_read: Option<String>,
    /// Write requests per second (discards and write-zeroes count as writes).
    #[arg(long, value_name = "N")]
    pub iops_write: Option<String>,
    /// Bytes per second, reads and writes together (units: K, M, G).
    #[arg(long, value_name = "BYTES")]
    pub bps_total: Option<String>,
    /// Bytes read per second.
    #[arg(long, value_name = "BYTES")]
    pub bps_read: Option<String>,
    /// Bytes written per second.
    #[arg(long, value_name = "BYTES")]
    pub bps_write: Option<String>,
    /// Burst: up to this many requests per second after idling (with --iops-total).
    #[arg(long, value_name = "N")]
    pub iops_total_max: Option<String>,
    /// Burst of --iops-read.
    #[arg(long, value_name = "N")]
    pub iops_read_max: Option<String>,
    /// Burst of --iops-write.
    #[arg(long, value_name = "N")]
    pub iops_write_max: Option<String>,
    /// Burst of --bps-total, in bytes per second.
    #[arg(long, value_name = "BYTES")]
    pub bps_total_max: Option<String>,
    /// Burst of --bps-read.
    #[arg(long, value_name = "BYTES")]
    pub bps_read_max: Option<String>,
    /// Burst of --bps-write.
    #[arg(long, value_name = "BYTES")]
    pub bps_write_max: Option<String>,
    /// How many seconds the --iops-total-max burst may last [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub iops_total_max_length: Option<String>,
    /// How many seconds the --iops-read-max burst may last [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub iops_read_max_length: Option<String>,
    /// How many seconds the --iops-write-max burst may last [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub iops_write_max_length: Option<String>,
    /// How many seconds the --bps-total-max burst may last [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub bps_total_max_length: Option<String>,
    /// How many seconds the --bps-read-max burst may last [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub bps_read_max_length: Option<String>,
    /// How many seconds the --bps-write-max burst may last [default: 1].
    #[arg(long, value_name = "SECONDS")]
    pub bps_write_max_length: Option<String>,
    /// Requests larger than this count as several against the iops limits (e.g. 4K).
    #[arg(long, value_name = "BYTES")]
    pub iops_size: Option<String>,
}

impl QosArgs {
    fn given(&self) -> [(&'static str, &Option<String>); 19] {
        [
            ("iops_total", &self.iops_total),
            ("iops_read", &self.iops_read),
            ("iops_write", &self.iops_write),
            ("bps_total", &self.bps_total),
            ("bps_read", &self.bps_read),
            ("bps_write", &self.bps_write),
            ("iops_total_max", &self.iops_total_max),
            ("iops_read_max", &self.iops_read_max),
            ("iops_write_max", &self.iops_write_max),
            ("bps_total_max", &self.bps_total_max),
            ("bps_read_max", &self.bps_read_max),
            ("bps_write_max", &self.bps_write_max),
            ("iops_total_max_length", &self.iops_total_max_length),
            ("iops_read_max_length", &self.iops_read_max_length),
            ("iops_write_max_length", &self.iops_write_max_length),
            ("bps_total_max_length", &self.bps_total_max_length),
            ("bps_read_max_length", &self.bps_read_max_length),
            ("bps_write_max_length", &self.bps_write_max_length),
            ("iops_size", &self.iops_size),
        ]
    }

    /// Whether any limit flag was given.
    pub fn any(&self) -> bool {
        self.given().iter().any(|(_, v)| v.is_some())
    }

    /// The limits the flags give, checked (empty when none was given).
    pub fn limits(&self) -> Result<QosLimits, String> {
        let mut q = QosLimits::default();
        for (key, v) in self.given() {
            if let Some(v) = v {
                q.set_text(key, v)?;
            }
        }
        q.validate()?;
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        qos: QosArgs,
    }

    #[test]
    fn flags_become_checked_limits() {
        let t = T::parse_from(["t", "--iops-total", "5000", "--bps-total", "200M"]);
        let q = t.qos.limits().unwrap();
        assert_eq!(q.describe(), "iops_total=5000 bps_total=200.0 MiB/s");
        let t = T::parse_from(["t", "--iops-read-max", "10"]);
        assert!(t.qos.limits().unwrap_err().contains("needs iops_read"));
        assert!(!T::parse_from(["t"]).qos.any());
    }
}
