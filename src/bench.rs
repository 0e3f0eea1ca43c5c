//! `snapblk bench`: a load generator for any vhost-user-blk backend.
//!
//! One thread per queue, each with `iodepth` requests in flight on its own share of the
//! region (contiguous, `region / queues` bytes). Reports IOPS, MiB/s, latency percentiles
//! and errors; with `--verify`, writes carry a per-sector pattern and reads check it: a
//! reads-only run first writes the region, a run with writes reads it all back at the end
//! (neither pass counts in the figures).

mod histogram;
mod pattern;
mod worker;

use std::fmt;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Duration;

use serde::Serialize;
use virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;

use crate::frontend::{BlkFrontend, BlkQueue, FrontendError, FrontendOptions};
pub use histogram::Histogram;
pub use pattern::Rng;

/// Access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    Randread,
    Randwrite,
    Read,
    Write,
    /// 70% random reads, 30% random writes.
    Mixed,
}

impl Rw {
    fn writes(self) -> bool {
        !matches!(self, Rw::Read | Rw::Randread)
    }

    fn name(self) -> &'static str {
        match self {
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Mixed => "mixed",
        }
    }
}

/// `snapblk bench` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// vhost-user socket of the backend to drive.
    #[arg(long)]
    pub socket: PathBuf,
    /// Access pattern (mixed = 70% random reads, 30% random writes).
    #[arg(long, value_enum, default_value_t = Rw::Randread)]
    pub rw: Rw,
    /// Block size: bytes or with a k/M/G suffix (binary), a multiple of 512.
    #[arg(long, value_parser = parse_bs, default_value = "4k")]
    pub bs: u32,
    /// Requests kept in flight per queue.
    #[arg(long, default_value_t = 32)]
    pub iodepth: u16,
    /// Queues to drive, one thread each.
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// Length of the timed phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Write a checkable pattern and verify every read against the last completed write
    /// (reads-only runs fill the region first; runs with writes read it back at the end).
    #[arg(long)]
    pub verify: bool,
    /// Cap on the addressed region (default: the whole disk).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Stop after one pass over the region (--seconds stays a limit): sequential read/write in
    /// order, randwrite every block once in a scrambled order.
    #[arg(long)]
    pub once: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `512`, `4k`, `64K`, `1M`, `2G`, `1T` (binary multiples; `KiB`/`kB` spellings too).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let unit = unit.trim_end_matches(['B', 'b']).trim_end_matches('i');
    let shift = match unit {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return Err(format!("invalid size unit in {s:?}")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

fn parse_bs(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if n == 0 || n % 512 != 0 {
        return Err(format!(
            "block size {s:?} must be a positive multiple of 512"
        ));
    }
    u32::try_from(n).map_err(|_| format!("block size {s:?} is too large"))
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("Invalid benchmark setup: {0}")]
    Setup(String),
    #[error("Frontend setup failed")]
    Frontend(#[source] FrontendError),
    #[error("Queue {queue} failed")]
    Worker {
        queue: u16,
        #[source]
        source: FrontendError,
    },
    #[error("Queue {0} worker panicked")]
    Panic(u16),
    #[error("Verification found {mismatches} mismatched sectors")]
    Verify {
        mismatches: u64,
        report: Box<BenchReport>,
    },
}

/// Latency percentiles, microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// Result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub rw: Rw,
    pub bs: u32,
    pub iodepth: u16,
    pub queues: u16,
    /// Bytes of the disk addressed.
    pub region: u64,
    /// Measured length of the timed phase, seconds.
    pub seconds: f64,
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub latency_us: Latency,
    /// Requests completed with a status other than OK.
    pub errors: u64,
    pub verify: bool,
    pub verified_sectors: u64,
    pub verify_mismatches: u64,
}

impl BenchReport {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_us;
        writeln!(
            f,
            "{} bs={} iodepth={} queues={} region={} MiB: {:.2} s",
            self.rw.name(),
            self.bs,
            self.iodepth,
            self.queues,
            self.region >> 20,
            self.seconds
        )?;
        writeln!(
            f,
            "  IOPS {:.0}  {:.1} MiB/s  ({} reads, {} writes)",
            self.iops, self.mib_per_s, self.reads, self.writes
        )?;
        writeln!(
            f,
            "  latency us: mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.mean, l.p50, l.p90, l.p99, l.p99_9, l.max
        )?;
        write!(f, "  errors {}", self.errors)?;
        if self.verify {
            write!(
                f,
                "  verify: {} sectors checked, {} mismatches",
                self.verified_sectors, self.verify_mismatches
            )?;
        }
        Ok(())
    }
}

/// Prints the report the way `--json` asks.
pub fn render(args: &BenchArgs, report: &BenchReport) -> String {
    if args.json {
        report.to_json()
    } else {
        report.to_string()
    }
}

/// Ring size that fits `iodepth` requests of three descriptors each.
fn ring_size(iodepth: u16) -> Result<u16, BenchError> {
    let need = u32::from(iodepth) * 3;
    if need > 32768 {
        return Err(BenchError::Setup(format!("iodepth {iodepth} is too deep")));
    }
    Ok((need.next_power_of_two().max(256)) as u16)
}

/// Runs the benchmark. Returns an error on a frontend failure or any verify mismatch.
pub fn run(args: &BenchArgs) -> Result<BenchReport, BenchError> {
    if args.iodepth == 0 || args.queues == 0 || args.seconds == 0 {
        return Err(BenchError::Setup(
            "iodepth, queues and seconds must be positive".into(),
        ));
    }
    if args.bs == 0 || args.bs % 512 != 0 {
        return Err(BenchError::Setup("bs must be a multiple of 512".into()));
    }
    let ring = ring_size(args.iodepth)?;
    let per_queue = BlkQueue::memory_needed(ring, args.iodepth, args.bs);
    let opts = FrontendOptions {
        queue_size: ring,
        mem_size: per_queue * u64::from(args.queues) + (1 << 20),
        ..FrontendOptions::default()
    };
    let mut dev = BlkFrontend::connect(&args.socket, opts).map_err(BenchError::Frontend)?;
    if args.queues > dev.num_queues() {
        return Err(BenchError::Setup(format!(
            "{} queues asked, the device has {}",
            args.queues,
            dev.num_queues()
        )));
    }
    if args.rw.writes() && dev.has_feature(VIRTIO_BLK_F_RO) {
        return Err(BenchError::Setup("the device is read-only".into()));
    }
    let capacity = dev.config().capacity_bytes();
    let region = args.size.map_or(capacity, |s| s.min(capacity));
    let per_worker = region / u64::from(args.bs) / u64::from(args.queues);
    let min_blocks = if args.verify {
        u64::from(args.iodepth)
    } else {
        1
    };
    if per_worker < min_blocks {
        return Err(BenchError::Setup(format!(
            "a region of {region} bytes is too small for {} queues of {} blocks",
            args.queues, min_blocks
        )));
    }
    let queues = (0..args.queues)
        .map(|i| dev.blk_queue(i, args.iodepth, args.bs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(BenchError::Frontend)?;
    let stats = run_workers(args, queues, per_worker)?;
    dev.disconnect().map_err(BenchError::Frontend)?;
    let report = summarize(
        args,
        per_worker * u64::from(args.bs) * u64::from(args.queues),
        stats,
    );
    if report.verify_mismatches > 0 {
        return Err(BenchError::Verify {
            mismatches: report.verify_mismatches,
            report: Box::new(report),
        });
    }
    Ok(report)
}

fn run_workers(
    args: &BenchArgs,
    queues: Vec<BlkQueue>,
    per_worker: u64,
) -> Result<Vec<worker::Stats>, BenchError> {
    let start = Barrier::new(queues.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let plan = worker::Plan {
                    rw: args.rw,
                    bs: args.bs,
                    first_block: i as u64 * per_worker,
                    nblocks: per_worker,
                    verify: args.verify,
                    fill_first: args.verify && !args.rw.writes(),
                    check_after: args.verify && args.rw.writes(),
                    seconds: Duration::from_secs(args.seconds),
                    once: args.once,
                    seed: 0x5eed_0000 + i as u64,
                };
                let start = &start;
                s.spawn(move || worker::run(q, plan, start))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let queue = i as u16;
                match h.join() {
                    Ok(r) => r.map_err(|source| BenchError::Worker { queue, source }),
                    Err(_) => Err(BenchError::Panic(queue)),
                }
            })
            .collect()
    })
}

fn summarize(args: &BenchArgs, region: u64, stats: Vec<worker::Stats>) -> BenchReport {
    let mut hist = Histogram::new();
    let (mut reads, mut writes, mut errors, mut mismatches, mut verified) = (0, 0, 0, 0, 0);
    let mut elapsed = Duration::ZERO;
    for s in &stats {
        hist.merge(&s.hist);
        reads += s.reads;
        writes += s.writes;
        errors += s.errors;
        mismatches += s.mismatches;
        verified += s.verified_sectors;
        elapsed = elapsed.max(s.elapsed);
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    let ops = reads + writes;
    let us = |ns: u64| ns as f64 / 1000.0;
    BenchReport {
        rw: args.rw,
        bs: args.bs,
        iodepth: args.iodepth,
        queues: args.queues,
        region,
        seconds: elapsed.as_secs_f64(),
        ops,
        reads,
        writes,
        iops: ops as f64 / secs,
        mib_per_s: (ops * u64::from(args.bs)) as f64 / secs / f64::from(1 << 20),
        latency_us: Latency {
            mean: hist.mean() / 1000.0,
            p50: us(hist.percentile(50.0)),
            p90: us(hist.percentile(90.0)),
            p99: us(hist.percentile(99.0)),
            p99_9: us(hist.percentile(99.9)),
            max: us(hist.max()),
        },
        errors,
        verify: args.verify,
        verified_sectors: verified,
        verify_mismatches: mismatches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_bs("1000").is_err());
        assert!(parse_bs("0").is_err());
        assert_eq!(parse_bs("4k"), Ok(4096));
    }

    #[test]
    fn ring_fits_three_descriptors_per_request() {
        assert_eq!(ring_size(32).unwrap(), 256);
        assert_eq!(ring_size(100).unwrap(), 512);
        assert!(ring_size(20000).is_err());
    }

    #[test]
    fn args_parse_with_defaults() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = Cli::parse_from(["x", "--socket", "/s", "--bs", "64K", "--rw", "mixed"]);
        assert_eq!(cli.bench.bs, 65536);
        assert_eq!(cli.bench.rw, Rw::Mixed);
        assert_eq!(
            (cli.bench.iodepth, cli.bench.queues, cli.bench.seconds),
            (32, 1, 10)
        );
        assert!(!cli.bench.verify && cli.bench.size.is_none());
    }
}
