//! Throttle and lock-order tests: tiny copy caps, many snapshots, many concurrent origin
//! writers and snapshot readers/writers, plus a thread adding and removing snapshots and reading
//! status. A watchdog fails the test instead of hanging if the rules break (deadlock), and the
//! peak number of in-flight copies must never exceed the cap.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::bench::Rng;

const SIZE: usize = 256 * 1024;

fn storm(cap: usize, snapshots: usize, writers: usize) -> (usize, usize) {
    let dev = Arc::new(MemDevice::new(SIZE));
    let o = Arc::new(Origin::new(dev, "origin", OriginConfig { copy_cap: cap }));
    let mut ids = Vec::new();
    for i in 0..snapshots {
        let kind = if i % 2 == 0 {
            StoreKind::Persistent
        } else {
            StoreKind::Transient
        };
        let cs = [1, 2, 8][i % 3];
        let cow = Arc::new(MemDevice::new(SIZE * 2));
        ids.push(snap(&o, &cow, kind, cs));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Control cycles completed: writers keep going until a few have overlapped them, so the
    // storm is concurrent however the threads are scheduled.
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for t in 0..writers {
        let (o, ids, done) = (o.clone(), ids.clone(), done.clone());
        handles.push(thread::spawn(move || {
            let mut rng = Rng::new(t as u64);
            let mut i = 0;
            while i < 150 || done.load(Ordering::Relaxed) < 3 {
                i += 1;
                let off = rng.next_u64() % (SIZE as u64 / 512 - 16) * 512;
                let len = (1 + rng.next_u64() % 16) as usize * 512;
                match rng.next_u64() % 4 {
                    0 | 1 => o.write(&vec![t as u8; len], off).unwrap(),
                    2 => {
                        let id = ids[rng.next_u64() as usize % ids.len()];
                        let _ = o.snapshot_write(id, &vec![t as u8; len], off);
                    }
                    _ => {
                        let id = ids[rng.next_u64() as usize % ids.len()];
                        let _ = o.snapshot_read(id, &mut vec![0; len], off);
                    }
                }
            }
        }));
    }
    let control = {
        let (o, stop, done) = (o.clone(), stop.clone(), done.clone());
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let cow = Arc::new(MemDevice::new(SIZE * 2));
                let id = snap(&o, &cow, StoreKind::Persistent, 1);
                for s in o.snapshots() {
                    let _ = o.status(s);
                }
                o.remove_snapshot(id).unwrap();
                n += 1;
                done.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    for h in handles {
        h.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let cycles = control.join().unwrap();
    assert!(cycles > 0);
    for id in ids {
        assert_ne!(o.status(id).unwrap(), "Invalid");
    }
    let (now, peak) = o.copies_in_flight();
    (now, peak)
}

/// Runs `f` on a thread and fails if it does not finish in time (a deadlock).
fn with_watchdog<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("deadlock: the storm did not finish in 120 s")
}

#[test]
fn cap_1_with_8_snapshots_and_8_writers_neither_deadlocks_nor_exceeds_the_cap() {
    let (now, peak) = with_watchdog(|| storm(1, 8, 8));
    assert_eq!(now, 0);
    assert_eq!(peak, 1);
}

#[test]
fn cap_2_with_6_snapshots_and_6_writers_neither_deadlocks_nor_exceeds_the_cap() {
    let (now, peak) = with_watchdog(|| storm(2, 6, 6));
    assert_eq!(now, 0);
    assert!((1..=2).contains(&peak), "peak {peak}");
}

#[test]
fn unlimited_cap_completes() {
    let (now, peak) = with_watchdog(|| storm(0, 4, 4));
    assert_eq!(now, 0);
    assert!(peak >= 1);
}
