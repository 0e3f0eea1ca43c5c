//! Per-disk QoS: IOPS and bandwidth limits with bursts, per export and per group of exports.
//!
//! `limits.rs` is what the user writes (QEMU's throttle names); `bucket.rs` the lock-free token
//! buckets those become. An export's [`ExportQos`] holds its own buckets and the group it is in;
//! each queue thread holds a [`QueueQos`] that asks, before a request starts, how long it must
//! wait, and charges it once it starts. A request that must wait stays with its queue (the ring
//! behind it is not popped) until a timer wakes the queue; nothing is failed. Shared state on
//! the data path: the buckets' atomics and one version counter, never a lock.

mod bucket;
mod limits;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

pub use bucket::LimitSet;
pub use limits::{key_names, Limit, LimitKind, QosLimits};

/// What a request counts against: reads, or writes (discards and write-zeroes count as
/// writes of no bytes; flushes are not limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
}

/// Nanoseconds on the QoS clock (monotonic, from the first call in this process).
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A group: exports that share one budget (a tenant's disks).
#[derive(Debug)]
pub struct QosGroup {
    name: String,
    limits: LimitSet,
    spec: Mutex<QosLimits>,
}

impl QosGroup {
    pub fn new(name: &str, limits: &QosLimits) -> Arc<QosGroup> {
        Arc::new(QosGroup {
            name: name.to_string(),
            limits: LimitSet::new(limits),
            spec: Mutex::new(*limits),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn limits(&self) -> QosLimits {
        *lock(&self.spec)
    }

    /// New limits for every member, at once.
    pub fn update(&self, limits: &QosLimits) {
        *lock(&self.spec) = *limits;
        self.limits.update(limits);
    }
}

/// The rate an export ran at over the last sampling interval.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Rate {
    pub iops: f64,
    pub bytes_per_sec: f64,
}

#[derive(Debug, Default)]
struct Sample {
    at: Option<Instant>,
    requests: u64,
    bytes: u64,
    rate: Rate,
}

/// One export's QoS: its own limits and its group, changed live by the control plane.
#[derive(Debug, Default)]
pub struct ExportQos {
    own: LimitSet,
    spec: Mutex<(QosLimits, Option<Arc<QosGroup>>)>,
    /// Bumped when the group changes: queues then fetch it again.
    version: AtomicU64,
    sample: Mutex<Sample>,
}

impl ExportQos {
    pub fn new(limits: &QosLimits, group: Option<Arc<QosGroup>>) -> Arc<ExportQos> {
        let q = ExportQos::default();
        q.set(limits, group);
        Arc::new(q)
    }

    /// Replaces the export's own limits and its group.
    pub fn set(&self, limits: &QosLimits, group: Option<Arc<QosGroup>>) {
        let mut spec = lock(&self.spec);
        self.own.update(limits);
        *spec = (*limits, group);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The export's own limits and its group's name.
    pub fn limits(&self) -> (QosLimits, Option<Arc<QosGroup>>) {
        let spec = lock(&self.spec);
        (spec.0, spec.1.clone())
    }

    /// Records the export's request and byte totals now; the rate since the previous sample
    /// (the daemon samples once a second) is what [`ExportQos::rate`] reports.
    pub fn sample(&self, requests: u64, bytes: u64) {
        let mut s = lock(&self.sample);
        let now = Instant::now();
        if let Some(at) = s.at {
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                s.rate = Rate {
                    iops: requests.saturating_sub(s.requests) as f64 / secs,
                    bytes_per_sec: bytes.saturating_sub(s.bytes) as f64 / secs,
                };
            }
        }
        s.at = Some(now);
        s.requests = requests;
        s.bytes = bytes;
    }

    pub fn rate(&self) -> Rate {
        lock(&self.sample).rate
    }
}

/// A queue thread's view of its export's QoS: the export's buckets and the group's, with the
/// group cached until the export's version changes.
#[derive(Debug)]
pub struct QueueQos {
    export: Arc<ExportQos>,
    group: Option<Arc<QosGroup>>,
    version: u64,
}

impl QueueQos {
    pub fn new(export: Arc<ExportQos>) -> QueueQos {
        let mut q = QueueQos {
            export,
            group: None,
            version: u64::MAX,
        };
        q.refresh();
        q
    }

    fn refresh(&mut self) {
        let version = self.export.version.load(Ordering::Acquire);
        if version != self.version {
            self.group = lock(&self.export.spec).1.clone();
            self.version = version;
        }
    }

    /// Whether any limit applies now (cheap: a few relaxed loads).
    pub fn active(&mut self) -> bool {
        self.refresh();
        self.export.own.active() || self.group.as_ref().is_some_and(|g| g.limits.active())
    }

    /// How long (ns) a request of `class` must wait from `now`; 0: it may start.
    pub fn wait(&mut self, now: u64, class: Class) -> u64 {
        self.refresh();
        let own = self.export.own.wait(now, class);
        let group = self.group.as_ref().map_or(0, |g| g.limits.wait(now, class));
        own.max(group)
    }

    /// Charges a request that starts at `now`.
    pub fn charge(&mut self, now: u64, class: Class, bytes: u64) {
        self.export.own.charge(now, class, bytes);
        if let Some(g) = &self.group {
            g.limits.charge(now, class, bytes);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(key: &str, v: u64) -> QosLimits {
        let mut q = QosLimits::default();
        q.set(key, v).unwrap();
        q
    }

    #[test]
    fn the_rate_is_what_was_done_between_two_samples() {
        let q = ExportQos::new(&QosLimits::default(), None);
        assert_eq!(q.rate(), Rate::default());
        q.sample(10, 40960);
        q.sample(110, 40960 + 409600);
        let r = q.rate();
        assert!(r.iops > 0.0, "{r:?}");
        assert!((r.bytes_per_sec / r.iops - 4096.0).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn exports_in_a_group_share_its_budget_and_keep_their_own() {
        let group = QosGroup::new("tenant", &limits("iops_total", 1000));
        let a = ExportQos::new(&QosLimits::default(), Some(group.clone()));
        let b = ExportQos::new(&limits("iops_read", 100), Some(group.clone()));
        let (mut qa, mut qb) = (QueueQos::new(a.clone()), QueueQos::new(b));
        assert!(qa.active() && qb.active());
        let t = 1_000_000_000;
        // A spends the group's burst (100) and more: B must wait for the group too.
        for _ in 0..200 {
            qa.charge(t, Class::Write, 4096);
        }
        assert!(qb.wait(t, Class::Write) > 0);
        // Out of the group, A is unlimited at once.
        a.set(&QosLimits::default(), None);
        assert!(!qa.active());
        assert_eq!(qa.wait(t, Class::Write), 0);
        // B's own read limit applies beside the group's.
        group.update(&QosLimits::default());
        for _ in 0..20 {
            qb.charge(t, Class::Read, 512);
        }
        assert!(qb.wait(t, Class::Read) > 0);
        assert_eq!(qb.wait(t, Class::Write), 0);
    }
}
