//! Crash tests: random origin and snapshot writes and flushes over fault-injecting devices, then
//! a power loss at a random write or flush (possibly inside a copy or a commit) that drops or
//! tears a seeded random subset of the writes not yet flushed at that instant. After
//! reopening, every sector must hold a value it may legally hold: for the origin and for sectors
//! a snapshot wrote, the value at the last flush or a later write; for every other snapshot
//! sector, exactly the origin's value when the snapshot was created.

use std::sync::Arc;

use crate::storage::faulty::{CrashClock, SplitMix};
use crate::storage::{
    BlockDevice, FaultyDevice, Origin, OriginConfig, SnapshotConfig, SnapshotId, StoreKind,
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

fn run(seed: u64) {
    let mut rng = SplitMix(seed);
    let clock = CrashClock::new(1 + rng.next_u64() % 300);
    let odev = Arc::new(FaultyDevice::from_bytes(vec![0xee; SIZE]).with_clock(clock.clone()));
    let o = Origin::new(odev.clone(), "origin", OriginConfig::default());
    let mut origin = vec![0xeeu8; SECTORS];
    let mut origin_allowed = Allowed::new(&origin);
    let mut snaps: Vec<Snap> = Vec::new();
    let ops = 20 + rng.next_u64() % 60;
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
                o.snapshot_write(s.id, &vec![v; n * 512], first as u64 * 512)
                    .unwrap();
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
            _ => {
                origin_allowed.write(first, n, v);
                o.write(&vec![v; n * 512], first as u64 * 512).unwrap();
                origin[first..first + n].fill(v);
            }
        }
    }
    // Power loss.
    let crash_seed = rng.next_u64();
    let odev = Arc::new(odev.crash(crash_seed));
    let o = Origin::new(odev.clone(), "origin", OriginConfig::default());
    let got = sectors_of(&*odev, |b| o.read(b, 0).unwrap());
    check("origin", seed, &got, &origin_allowed);
    for (i, s) in snaps.iter().enumerate() {
        let cow = Arc::new(s.cow.crash(crash_seed ^ i as u64));
        let id = o.add_snapshot(cow, s.cfg.clone()).unwrap();
        assert_ne!(o.status(id).unwrap(), "Invalid", "seed {seed}");
        let got = sectors_of(&*odev, |b| o.snapshot_read(id, b, 0).unwrap());
        check(&format!("snapshot {i}"), seed, &got, &s.allowed);
    }
}

fn check(what: &str, seed: u64, got: &[u8], allowed: &Allowed) {
    for (sector, (v, a)) in got.iter().zip(&allowed.0).enumerate() {
        assert!(
            a.contains(v),
            "seed {seed}: {what} sector {sector} holds {v}, allowed {a:?}"
        );
    }
}

#[test]
fn acknowledged_and_flushed_data_survives_random_power_loss() {
    for seed in 0..300 {
        run(seed);
    }
}
