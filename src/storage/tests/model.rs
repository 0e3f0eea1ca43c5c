//! Model-based property test: random origin/snapshot writes, reads, discards, snapshot
//! creation and deletion, merges (some interrupted by a close/reopen) and close/reopen, checked
//! against a model holding the origin bytes and each snapshot's bytes.

use std::collections::HashSet;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const SIZE: usize = 64 * 1024;
const COW: usize = 128 * 1024;

#[derive(Debug, Clone)]
enum Op {
    OriginWrite(u64, u64, u8),
    OriginDiscard(u64, u64),
    SnapWrite(usize, u64, u64, u8),
    SnapDiscard(usize, u64, u64),
    Read(usize, u64, u64),
    Create(u8, u8, bool),
    Delete(usize),
    Merge(usize, Option<u8>),
    Reopen,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    (0..SIZE as u64 / 512, 1..24u64).prop_map(|(s, n)| {
        let start = s * 512;
        (start, (n * 512).min(SIZE as u64 - start))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((o, l), b)| Op::OriginWrite(o, l, b)),
        1 => range().prop_map(|(o, l)| Op::OriginDiscard(o, l)),
        4 => (0..4usize, range(), any::<u8>()).prop_map(|(i, (o, l), b)| Op::SnapWrite(i, o, l, b)),
        1 => (0..4usize, range()).prop_map(|(i, (o, l))| Op::SnapDiscard(i, o, l)),
        3 => (0..5usize, range()).prop_map(|(i, (o, l))| Op::Read(i, o, l)),
        2 => (0..3u8, 0..3u8, any::<bool>()).prop_map(|(k, c, d)| Op::Create(k, c, d)),
        1 => (0..4usize).prop_map(Op::Delete),
        1 => (0..4usize, proptest::option::of(0..3u8)).prop_map(|(i, k)| Op::Merge(i, k)),
        1 => Just(Op::Reopen),
    ]
}

struct ModelSnap {
    id: SnapshotId,
    cfg: SnapshotConfig,
    cow: Arc<MemDevice>,
    cs: u64,
    view: Vec<u8>,
    exceptions: HashSet<u64>,
}

impl ModelSnap {
    fn chunks(&self, off: u64, len: u64) -> std::ops::Range<u64> {
        off / self.cs..(off + len).div_ceil(self.cs)
    }
}

struct World {
    dev: Arc<MemDevice>,
    o: Origin,
    origin: Vec<u8>,
    snaps: Vec<ModelSnap>,
}

impl World {
    fn origin_changes(&mut self, off: u64, len: u64) {
        for s in &mut self.snaps {
            let r = s.chunks(off, len);
            s.exceptions.extend(r);
        }
    }

    fn reopen(&mut self) {
        let o = Origin::new(self.dev.clone(), "origin", OriginConfig { copy_cap: 3 });
        self.snaps.retain(|s| s.cfg.kind != StoreKind::Transient);
        for s in &mut self.snaps {
            s.id = o.add_snapshot(s.cow.clone(), s.cfg.clone()).unwrap();
        }
        self.o = o;
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::OriginWrite(off, len, b) => {
                self.o.write(&vec![b; len as usize], off).unwrap();
                self.origin_changes(off, len);
                self.origin[off as usize..(off + len) as usize].fill(b);
            }
            Op::OriginDiscard(off, len) => {
                self.o.discard(off, len).unwrap();
                self.origin_changes(off, len);
                self.origin[off as usize..(off + len) as usize].fill(0);
            }
            Op::SnapWrite(i, off, len, b) if i < self.snaps.len() => {
                let s = &mut self.snaps[i];
                self.o
                    .snapshot_write(s.id, &vec![b; len as usize], off)
                    .unwrap();
                let r = s.chunks(off, len);
                s.exceptions.extend(r);
                s.view[off as usize..(off + len) as usize].fill(b);
            }
            Op::SnapDiscard(i, off, len) if i < self.snaps.len() => {
                let s = &mut self.snaps[i];
                let r = self.o.snapshot_discard(s.id, off, len);
                if !s.cfg.discard_zeroes_cow {
                    assert!(r.is_err());
                    return;
                }
                r.unwrap();
                for c in s.chunks(off, len) {
                    if s.exceptions.contains(&c) {
                        let a = (c * s.cs).max(off) as usize;
                        let b = ((c + 1) * s.cs).min(off + len) as usize;
                        s.view[a..b].fill(0);
                    }
                }
            }
            Op::Read(i, off, len) => {
                let mut buf = vec![0; len as usize];
                let (o, l) = (off as usize, (off + len) as usize);
                if let Some(s) = self.snaps.get(i) {
                    self.o.snapshot_read(s.id, &mut buf, off).unwrap();
                    assert_eq!(buf, s.view[o..l], "snapshot {i} at {off}+{len}");
                } else {
                    self.o.read(&mut buf, off).unwrap();
                    assert_eq!(buf, self.origin[o..l], "origin at {off}+{len}");
                }
            }
            Op::Create(kind, cs, discard) if self.snaps.len() < 3 => {
                let kind = [
                    StoreKind::Persistent,
                    StoreKind::Transient,
                    StoreKind::PersistentOverflow,
                ][kind as usize];
                let sectors = [1u64, 2, 8][cs as usize];
                let mut cfg = SnapshotConfig::new("cow", kind, sectors);
                cfg.discard_zeroes_cow = discard;
                let cow = Arc::new(MemDevice::new(COW));
                let id = self.o.add_snapshot(cow.clone(), cfg.clone()).unwrap();
                self.snaps.push(ModelSnap {
                    id,
                    cfg,
                    cow,
                    cs: sectors * 512,
                    view: self.origin.clone(),
                    exceptions: HashSet::new(),
                });
            }
            Op::Delete(i) if i < self.snaps.len() => {
                self.o.remove_snapshot(self.snaps.remove(i).id).unwrap();
            }
            Op::Merge(i, interrupt) if i < self.snaps.len() => {
                if self.snaps[i].cfg.kind != StoreKind::Persistent {
                    assert!(self.o.start_merge(self.snaps[i].id).is_err());
                    return;
                }
                let m = self.snaps.remove(i);
                self.o.start_merge(m.id).unwrap();
                if let Some(k) = interrupt {
                    for _ in 0..k {
                        if self.o.merge_step().unwrap() == crate::storage::MergeProgress::Done {
                            break;
                        }
                    }
                    // Close and reopen mid-merge, then resume.
                    let o = Origin::new(self.dev.clone(), "origin", OriginConfig::default());
                    for s in self
                        .snaps
                        .iter_mut()
                        .filter(|s| s.cfg.kind != StoreKind::Transient)
                    {
                        s.id = o.add_snapshot(s.cow.clone(), s.cfg.clone()).unwrap();
                    }
                    self.snaps.retain(|s| s.cfg.kind != StoreKind::Transient);
                    let id = o.add_snapshot(m.cow.clone(), m.cfg.clone()).unwrap();
                    o.start_merge(id).unwrap();
                    self.o = o;
                }
                self.o.merge_to_completion().unwrap();
                for c in &m.exceptions {
                    for s in &mut self.snaps {
                        let r = s.chunks(c * m.cs, m.cs.min(SIZE as u64 - c * m.cs));
                        s.exceptions.extend(r);
                    }
                }
                self.origin = m.view;
            }
            Op::Reopen => self.reopen(),
            _ => {}
        }
    }

    fn check_all(&self) {
        let mut buf = vec![0; SIZE];
        self.o.read(&mut buf, 0).unwrap();
        assert!(buf == self.origin, "origin differs");
        for (i, s) in self.snaps.iter().enumerate() {
            self.o.snapshot_read(s.id, &mut buf, 0).unwrap();
            assert!(buf == s.view, "snapshot {i} differs");
            assert!(!self.o.status(s.id).unwrap().starts_with('I'));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let (dev, o) = origin(SIZE, 0x5a);
        let mut w = World { dev, o, origin: vec![0x5a; SIZE], snaps: Vec::new() };
        for op in ops {
            w.apply(op);
        }
        w.check_all();
        w.reopen();
        w.check_all();
    }
}
