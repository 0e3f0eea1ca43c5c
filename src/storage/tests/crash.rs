//! Crash tests: random origin writes (half of them held, as the queues hand write-back first
//! writes to the engine, landing on the engine's own thread), snapshot writes, flushes and
//! snapshot creations over fault-injecting devices, then a crash at a random write or flush
//! (possibly inside a copy, a commit or a held batch): a power loss that drops or tears a seeded
//! random subset of the writes not yet flushed at that instant, or a `kill -9` that keeps every
//! write made before it. After reopening, every sector must hold a value it may legally hold:
//! for the origin and for sectors a snapshot wrote, the value at the last flush or a later
//! write; for every other snapshot sector, exactly the origin's value when the snapshot was
//! created.

use std::sync::Arc;

use super::faulty::{CrashClock, FaultyDevice};
use crate::bench::Rng;
use crate::storage::{
    BlockDevice, DirectTarget, Origin, OriginConfig, SnapshotConfig, SnapshotId, StoreKind,
};

const SECTORS: usize = 128;
const SIZE: usize = SECTORS * 512;

/// Per sector: the values it may hold after a crash.
#[derive(Clone)]
struct Allowed(Vec<Vec<u8>>);

impl Allowed {
    fn new(values: &[u8]) -> Allowed {
        Allowed(values.iter().map(|&v| vec![v]).collect())
    }

    fn write(&mut self, first: usize, n: usize, v: u8) {
        self.0[first..first + n].iter_mut().for_each(|a| a.push(v));
    }

    fn flushed(&mut self, current: &[u8]) {
        for (a, &v) in self.0.iter_mut().zip(current) {
            *a = vec![v];
        }
    }
}

struct Snap {
    cow: Arc<FaultyDevice>,
    cfg: SnapshotConfig,
    id: SnapshotId,
    current: Vec<u8>,
    allowed: Allowed,
}

fn sectors_of(dev: &dyn BlockDevice, read: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut buf = vec![0; dev.size() as usize];
    read(&mut buf);
    buf.chunks(512).map(|s| s[0]).collect()
}

/// One run: returns how many origin writes were held and snapshot writes ran direct.
fn run(seed: u64) -> (usize, usize) {
    let mut rng = Rng::new(seed);
    let clock = CrashClock::new(1 + rng.next_u64() % 300);
    let odev = Arc::new(FaultyDevice::from_bytes(vec![0xee; SIZE]).with_clock(clock.clone()));
    let o = Arc::new(Origin::new(odev.clone(), "origin", OriginConfig::default()));
    let mut origin = vec![0xeeu8; SECTORS];
    let mut origin_allowed = Allowed::new(&origin);
    let mut snaps: Vec<Snap> = Vec::new();
    let ops = 20 + rng.next_u64() % 60;
    let (mut held, mut direct) = (0, 0);
    for step in 0..ops {
        if clock.passed() {
            break;
        }
        let first = (rng.next_u64() % (SECTORS as u64 - 8)) as usize;
        let n = 1 + (rng.next_u64() % 8) as usize;
        let v = step as u8;
        match rng.next_u64() % 10 {
            0 if snaps.len() < 3 => {
                let cs = [1, 2, 8][snaps.len()];
                let cfg = SnapshotConfig::new("cow", StoreKind::Persistent, cs);
                let cow = Arc::new(FaultyDevice::new(SIZE * 3).with_clock(clock.clone()));
                let id = o.add_snapshot(cow.clone(), cfg.clone()).unwrap();
                if clock.passed() {
                    break;
                }
                origin_allowed.flushed(&origin);
                snaps.push(Snap {
                    cow,
                    cfg,
                    id,
                    current: origin.clone(),
                    allowed: Allowed::new(&origin),
                });
            }
            1 => {
                o.flush().unwrap();
                if !clock.passed() {
                    origin_allowed.flushed(&origin);
                }
            }
            2 | 3 if !snaps.is_empty() => {
                let k = rng.next_u64() as usize % snaps.len();
                let s = &mut snaps[k];
                s.allowed.write(first, n, v);
                let (data, at) = (vec![v; n * 512], first as u64 * 512);
                // The queues' path (a plan, the write, a light write-back commit) where the
                // engine gives one, else the synchronous path.
                if snapshot_write_direct(&o, s, &data, at) {
                    direct += 1;
                } else {
                    o.snapshot_write(s.id, &data, at).unwrap();
                }
                s.current[first..first + n].fill(v);
            }
            4 if !snaps.is_empty() => {
                let k = rng.next_u64() as usize % snaps.len();
                let s = &mut snaps[k];
                o.snapshot_flush(s.id).unwrap();
                if !clock.passed() {
                    s.allowed.flushed(&s.current);
                }
            }
            k => {
                origin_allowed.write(first, n, v);
                let (data, at) = (vec![v; n * 512], first as u64 * 512);
                // Held: completes now, lands on the engine's thread (the write-back path).
                if k % 2 == 1 && o.hold_write(at, data.clone(), false, Box::new(|_| {})) {
                    held += 1;
                } else {
                    o.write(&data, at).unwrap();
                }
                origin[first..first + n].fill(v);
            }
        }
    }
    // Let held writes land (or fail past the crash instant), then crash.
    let _ = o.flush();
    let crash_seed = rng.next_u64();
    let killed = crash_seed % 2 == 0;
    let after = |d: &FaultyDevice, seed: u64| if killed { d.killed() } else { d.crash(seed) };
    let odev = Arc::new(after(&odev, crash_seed));
    let o = Origin::new(odev.clone(), "origin", OriginConfig::default());
    let got = sectors_of(&*odev, |b| o.read(b, 0).unwrap());
    check("origin", seed, &got, &origin_allowed);
    for (i, s) in snaps.iter().enumerate() {
        let cow = Arc::new(after(&s.cow, crash_seed ^ i as u64));
        let id = o.add_snapshot(cow, s.cfg.clone()).unwrap();
        assert_ne!(o.status(id).unwrap(), "Invalid", "seed {seed}");
        let got = sectors_of(&*odev, |b| o.snapshot_read(id, b, 0).unwrap());
        check(&format!("snapshot {i}"), seed, &got, &s.allowed);
    }
    (held, direct)
}

/// A snapshot write as a queue runs it: planned, written to the file the plan names, finished,
/// and (new exceptions) committed light, as in write-back mode. False: no plan.
fn snapshot_write_direct(o: &Origin, s: &Snap, data: &[u8], at: u64) -> bool {
    let Some(plan) = o.plan_direct(Some(s.id), true, at, data.len() as u64) else {
        return false;
    };
    assert_eq!(plan.target, DirectTarget::Cow);
    let ok = s.cow.write_at(data, plan.offset).is_ok();
    if let Some(t) = o.finish_direct(plan.ticket, ok) {
        o.commit_direct(s.id, &[t], true);
    }
    true
}

fn check(what: &str, seed: u64, got: &[u8], allowed: &Allowed) {
    for (sector, (v, a)) in got.iter().zip(&allowed.0).enumerate() {
        assert!(
            a.contains(v),
            "seed {seed}: {what} sector {sector} holds {v}, allowed {a:?}"
        );
    }
}

/// Crash points per run of the suite (each seed crashes once, at a random write or flush).
const CRASH_POINTS: u64 = 1500;

#[test]
fn acknowledged_and_flushed_data_survives_random_power_loss_and_kill_9() {
    let (held, direct) = (0..CRASH_POINTS)
        .map(run)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    eprintln!(
        "{CRASH_POINTS} crash points (half power loss, half kill -9), {held} held origin \
         writes, {direct} direct snapshot writes"
    );
    assert!(held > CRASH_POINTS as usize, "the held path ran: {held}");
    assert!(
        direct > CRASH_POINTS as usize,
        "the direct path ran: {direct}"
    );
}
