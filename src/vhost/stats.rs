//! Per-queue counters: written by one queue thread, read by whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one queue (relaxed atomics: no ordering, no cross-queue sharing on write).
#[derive(Debug, Default)]
pub struct QueueStats {
    pub requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Requests started and not yet completed (a gauge, stored by the queue thread).
    pub in_flight: AtomicU64,
    /// Requests that waited for their QoS budget, and how long they waited in all (ns).
    pub throttled: AtomicU64,
    pub throttled_ns: AtomicU64,
}

/// A point-in-time sum over queues.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
    pub in_flight: u64,
    pub throttled: u64,
    pub throttled_ns: u64,
}

impl StatsSnapshot {
    pub fn sum<'a>(queues: impl IntoIterator<Item = &'a QueueStats>) -> StatsSnapshot {
        let mut s = StatsSnapshot::default();
        for q in queues {
            s.requests += q.requests.load(Ordering::Relaxed);
            s.read_bytes += q.read_bytes.load(Ordering::Relaxed);
            s.write_bytes += q.write_bytes.load(Ordering::Relaxed);
            s.errors += q.errors.load(Ordering::Relaxed);
            s.in_flight += q.in_flight.load(Ordering::Relaxed);
            s.throttled += q.throttled.load(Ordering::Relaxed);
            s.throttled_ns += q.throttled_ns.load(Ordering::Relaxed);
        }
        s
    }
}
