//! The token buckets, lock-free: each limit is a GCRA cell (the "virtual scheduling" form of a
//! token bucket): one atomic holds the time at which the bucket would be empty again (TAT). A
//! request may start when `TAT - tolerance <= now`; starting it moves TAT on by its cost. Queues
//! that share a budget (an export's queues, a group's exports) share only these atomics: one
//! load to check, one compare-and-swap to charge. Rates and bursts are atomics too, so limits
//! change live without a lock on the data path.
//!
//! A request is checked before it starts and charged after, whatever its size: a large one
//! may overdraw the bucket, and the next ones wait until the debt is paid back, so the average
//! holds (QEMU's throttling does the same).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::limits::{LimitKind, QosLimits};
use super::Class;

/// Fixed-point fraction bits of a cell's cost per unit (nanoseconds).
const FRAC: u32 = 16;
const NANOS_PER_SEC: u128 = 1_000_000_000;
/// The burst a limit without `_max` allows after idling: a tenth of a second's worth, as
/// QEMU's buckets hold.
const DEFAULT_TOLERANCE_NS: u64 = 100_000_000;

/// One rate: TAT, cost of one unit (ns, 16.16 fixed point; 0: off) and tolerance (ns).
#[derive(Debug, Default)]
struct Cell {
    tat: AtomicU64,
    unit_cost: AtomicU64,
    tolerance: AtomicU64,
}

impl Cell {
    /// `rate` units per second (0: off), with a burst of `tolerance_ns` worth of them. The
    /// bucket starts full: a change of limits also forgives any debt.
    fn configure(&self, rate: u64, tolerance_ns: u64) {
        let cost = if rate == 0 {
            0
        } else {
            ((NANOS_PER_SEC << FRAC) / u128::from(rate)).clamp(1, u128::from(u64::MAX)) as u64
        };
        self.unit_cost.store(cost, Ordering::Relaxed);
        self.tolerance.store(tolerance_ns, Ordering::Relaxed);
        self.tat.store(0, Ordering::Relaxed);
    }

    /// How long from `now` until a request may start (0: now).
    fn wait(&self, now: u64) -> u64 {
        if self.unit_cost.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let tat = self.tat.load(Ordering::Relaxed);
        tat.saturating_sub(self.tolerance.load(Ordering::Relaxed))
            .saturating_sub(now)
    }

    /// Takes `units` (16.16 fixed point) out of the bucket at `now`.
    fn charge(&self, now: u64, units: u64) {
        let unit_cost = self.unit_cost.load(Ordering::Relaxed);
        if unit_cost == 0 {
            return;
        }
        let cost = ((u128::from(units) * u128::from(unit_cost)) >> (2 * FRAC)) as u64;
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }
}

/// The cells of one [`QosLimits`]: per limit, the average rate and (with `_max`) the burst
/// rate. Shared by every queue the limits apply to.
#[derive(Debug, Default)]
pub struct LimitSet {
    avg: [Cell; 6],
    peak: [Cell; 6],
    iops_size: AtomicU64,
    /// Bit `k` set: limit kind `k` is set (its cells are on); 0: unlimited.
    kinds_on: AtomicUsize,
}

impl LimitSet {
    pub fn new(limits: &QosLimits) -> LimitSet {
        let s = LimitSet::default();
        s.update(limits);
        s
    }

    /// Applies new limits: every bucket starts full again.
    pub fn update(&self, limits: &QosLimits) {
        for k in LimitKind::ALL {
            let l = limits.get(k);
            let i = k.index();
            if l.max == 0 {
                self.avg[i].configure(l.avg, DEFAULT_TOLERANCE_NS);
                self.peak[i].configure(0, 0);
            } else {
                // QEMU: the bucket holds `max * length` units, drained at `avg`; the burst
                // itself runs at most at `max`, with a tenth of a second of slack.
                let units = u128::from(l.max) * u128::from(l.burst_seconds());
                let tol = (units * NANOS_PER_SEC / u128::from(l.avg.max(1))).min(u64::MAX.into());
                self.avg[i].configure(l.avg, tol as u64);
                self.peak[i].configure(l.max, DEFAULT_TOLERANCE_NS);
            }
        }
        self.iops_size.store(limits.iops_size, Ordering::Relaxed);
        let on = LimitKind::ALL
            .into_iter()
            .filter(|k| limits.get(*k).avg != 0)
            .fold(0, |m, k| m | 1 << k.index());
        self.kinds_on.store(on, Ordering::Release);
    }

    /// Any limit set.
    pub fn active(&self) -> bool {
        self.kinds_on.load(Ordering::Relaxed) != 0
    }

    /// The limits a request of `class` counts against that are set.
    fn kinds(&self, class: Class) -> impl Iterator<Item = LimitKind> {
        let on = self.kinds_on.load(Ordering::Relaxed);
        let of_class = match class {
            Class::Read => [
                LimitKind::IopsTotal,
                LimitKind::IopsRead,
                LimitKind::BpsTotal,
                LimitKind::BpsRead,
            ],
            Class::Write => [
                LimitKind::IopsTotal,
                LimitKind::IopsWrite,
                LimitKind::BpsTotal,
                LimitKind::BpsWrite,
            ],
        };
        of_class
            .into_iter()
            .filter(move |k| on & 1 << k.index() != 0)
    }

    /// Nanoseconds from `now` until a request of `class` may start (0: now).
    pub fn wait(&self, now: u64, class: Class) -> u64 {
        self.kinds(class)
            .map(|k| {
                self.avg[k.index()]
                    .wait(now)
                    .max(self.peak[k.index()].wait(now))
            })
            .max()
            .unwrap_or(0)
    }

    /// Charges a request of `class` moving `bytes` that started at `now`.
    pub fn charge(&self, now: u64, class: Class, bytes: u64) {
        let iops_size = self.iops_size.load(Ordering::Relaxed);
        let ops = if iops_size != 0 && bytes > iops_size {
            ((u128::from(bytes) << FRAC) / u128::from(iops_size)).min(u64::MAX.into()) as u64
        } else {
            1 << FRAC
        };
        let bytes = bytes.saturating_mul(1 << FRAC);
        for k in self.kinds(class) {
            let units = if k.is_bytes() { bytes } else { ops };
            self.avg[k.index()].charge(now, units);
            self.peak[k.index()].charge(now, units);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    fn limits(pairs: &[(&str, u64)]) -> LimitSet {
        let mut q = QosLimits::default();
        for (k, v) in pairs {
            q.set(k, *v).unwrap();
        }
        q.validate().unwrap();
        LimitSet::new(&q)
    }

    /// Runs a greedy client for `secs` of fake time: it starts a request whenever the
    /// buckets allow, jumping the clock to the next allowed instant. Returns the count.
    fn greedy(set: &LimitSet, class: Class, bytes: u64, start: u64, secs: u64) -> u64 {
        let (mut now, end, mut n) = (start, start + secs * SEC, 0);
        while now < end {
            let w = set.wait(now, class);
            if w > 0 {
                now += w;
                continue;
            }
            set.charge(now, class, bytes);
            n += 1;
        }
        n
    }

    #[test]
    fn no_limits_never_wait() {
        let set = limits(&[]);
        assert!(!set.active());
        set.charge(0, Class::Write, 1 << 30);
        assert_eq!(set.wait(0, Class::Write), 0);
    }

    #[test]
    fn an_iops_limit_holds_its_average_over_ten_seconds() {
        for rate in [500u64, 5000, 100_000] {
            let set = limits(&[("iops_total", rate)]);
            let n = greedy(&set, Class::Read, 4096, 10 * SEC, 10);
            // Ten seconds at the rate plus the initial burst (a tenth of a second).
            let expect = rate * 10 + rate / 10;
            assert!(
                n.abs_diff(expect) <= 2,
                "rate {rate}: {n} requests, expected {expect}"
            );
        }
    }

    #[test]
    fn a_bandwidth_limit_counts_bytes_and_large_requests_overdraw() {
        let set = limits(&[("bps_write", 10 << 20)]);
        let n = greedy(&set, Class::Write, 1 << 20, SEC, 10);
        // 10 MiB/s in 1 MiB requests: 100 in 10 s, plus the burst, plus one overdraw.
        assert!((100..=103).contains(&n), "{n}");
        // Reads are not limited by a write limit.
        assert_eq!(set.wait(11 * SEC, Class::Read), 0);
    }

    #[test]
    fn a_burst_runs_at_the_peak_for_its_length_then_falls_to_the_average() {
        let set = limits(&[
            ("iops_write", 100),
            ("iops_write_max", 1000),
            ("iops_write_max_length", 2),
        ]);
        // From idle the bucket holds 2 s of the peak (2000), spent at 1000/s at most while it
        // drains at 100/s; once empty, the average holds.
        let first = greedy(&set, Class::Write, 512, SEC, 1);
        assert!((1000..=1200).contains(&first), "first second: {first}");
        let rest = greedy(&set, Class::Write, 512, 2 * SEC, 4);
        assert!((1200..=1600).contains(&rest), "seconds 2-5: {rest}");
        let later = greedy(&set, Class::Write, 512, 6 * SEC, 5);
        assert!(later.abs_diff(500) <= 2, "after the burst: {later}");
    }

    #[test]
    fn iops_size_counts_a_large_request_as_several() {
        let set = limits(&[("iops_total", 1000), ("iops_size", 4096)]);
        let small = greedy(&set, Class::Read, 4096, SEC, 1);
        let set = limits(&[("iops_total", 1000), ("iops_size", 4096)]);
        let large = greedy(&set, Class::Read, 65536, SEC, 1);
        assert!(small > 1000 && large < 80, "small {small}, large {large}");
    }

    #[test]
    fn new_limits_apply_at_once_and_forgive_the_debt() {
        let set = limits(&[("iops_total", 10)]);
        set.charge(SEC, Class::Read, 0);
        for _ in 0..100 {
            set.charge(SEC, Class::Read, 0);
        }
        assert!(set.wait(SEC, Class::Read) > 5 * SEC);
        let mut q = QosLimits::default();
        q.set("iops_total", 1_000_000).unwrap();
        set.update(&q);
        assert_eq!(set.wait(SEC, Class::Read), 0);
        set.update(&QosLimits::default());
        assert!(!set.active());
        assert_eq!(set.wait(SEC + MS, Class::Read), 0);
    }
}
