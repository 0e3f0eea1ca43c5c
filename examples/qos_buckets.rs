//! What a QoS check costs a queue thread: nanoseconds per request (check, then charge) for an
//! unlimited export, a limited one, and a group shared by 1, 2 and 4 threads hammering the same
//! buckets at once (the worst case of shared state: every request a compare-and-swap on the
//! same cache lines). The clock is read once per 32 requests, as a queue reads it once per
//! batch the avail ring offers. Run: `cargo run --release --example qos_buckets`.

use std::sync::Arc;
use std::time::Instant;

use snapblk::qos::{now_ns, Class, ExportQos, QosGroup, QosLimits, QueueQos};

const REQUESTS: u64 = 2_000_000;

fn limits(pairs: &[(&str, u64)]) -> QosLimits {
    let mut q = QosLimits::default();
    for (k, v) in pairs {
        q.set(k, *v).unwrap();
    }
    q
}

/// Each of `threads` threads runs `REQUESTS` checks and charges on its own export's queue
/// (exports in `group` if given); returns nanoseconds per request per thread.
fn run(own: &QosLimits, group: Option<Arc<QosGroup>>, threads: usize) -> f64 {
    let exports: Vec<_> = (0..threads)
        .map(|_| ExportQos::new(own, group.clone()))
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for e in &exports {
            s.spawn(move || {
                let mut q = QueueQos::new(e.clone());
                let mut now = now_ns();
                for i in 0..REQUESTS {
                    let class = if i % 4 == 0 {
                        Class::Write
                    } else {
                        Class::Read
                    };
                    if q.active() {
                        if i % 32 == 0 {
                            now = now_ns();
                        }
                        std::hint::black_box(q.wait(now, class));
                        q.charge(now, class, 4096);
                    }
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / REQUESTS as f64
}

fn main() {
    // Limits far above any rate reached here: every request is admitted.
    let high = limits(&[("iops_total", 1_000_000_000), ("bps_total", 1 << 50)]);
    println!("ns per request (check + charge), {REQUESTS} requests per thread:");
    println!(
        "  unlimited export:              {:6.1}",
        run(&QosLimits::default(), None, 1)
    );
    println!(
        "  export with its own limits:    {:6.1}",
        run(&high, None, 1)
    );
    for threads in [1, 2, 4] {
        let g = QosGroup::new("g", &high);
        println!(
            "  group shared by {threads} thread(s):   {:6.1}",
            run(&QosLimits::default(), Some(g), threads)
        );
    }
}
