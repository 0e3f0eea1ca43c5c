//! Behaviour scenarios of the engine, one spec rule per test.

use std::sync::Arc;

use super::faulty::{FaultPlan, FaultyDevice};
use super::*;
use crate::storage::{inspect, BlockDevice, CowError, IoError, MergeProgress};

#[test]
fn snapshot_keeps_the_origin_view_at_creation() {
    let (_, o) = origin(65536, 1);
    let cow = Arc::new(MemDevice::new(1 << 20));
    let s = snap(&o, &cow, StoreKind::Persistent, 8);
    o.write(&[2; 1000], 5000).unwrap();
    assert_eq!(read_origin(&o, 5000, 1000), vec![2; 1000]);
    assert_eq!(read_snap(&o, s, 4096, 4096), vec![1; 4096]);
    o.snapshot_write(s, &[3; 10], 100).unwrap();
    assert_eq!(read_origin(&o, 100, 10), vec![1; 10]);
    assert_eq!(read_snap(&o, s, 96, 16)[4..14], [3; 10]);
    assert_eq!(o.status(s).unwrap(), "32/2048 16");
    assert_eq!(o.table_line(s).unwrap(), "snapshot origin cow P 8");
}

#[test]
fn transient_status_after_one_4k_exception() {
    let (_, o) = origin(65536, 0);
    let cow = Arc::new(MemDevice::new(2048 * 512));
    let s = snap(&o, &cow, StoreKind::Transient, 8);
    o.write(&[1; 4096], 0).unwrap();
    assert_eq!(o.status(s).unwrap(), "8/2048 0");
    assert_eq!(o.table_line(s).unwrap(), "snapshot origin cow N 8");
}

#[test]
fn chunk_size_zero_is_an_error_for_n_and_32_for_p() {
    let (_, o) = origin(65536, 0);
    let cow = Arc::new(MemDevice::new(1 << 20));
    let e = o
        .add_snapshot(
            cow.clone(),
            SnapshotConfig::new("n.cow", StoreKind::Transient, 0),
        )
        .unwrap_err();
    assert!(matches!(e, CowError::ChunkNotSet { .. }));
    assert_eq!(e.to_string(), "n.cow: Chunk size not set");
    let s = snap(&o, &cow, StoreKind::Persistent, 0);
    assert!(o.table_line(s).unwrap().ends_with(" P 32"));
    let e = o
        .add_snapshot(
            Arc::new(MemDevice::new(1 << 20)),
            SnapshotConfig::new("x", StoreKind::Transient, 1 << 22),
        )
        .unwrap_err();
    assert!(e.to_string().contains("Chunk size is too high"));
}

#[test]
fn full_cow_on_the_origin_path_invalidates_only_that_snapshot() {
    let (_, o) = origin(65536, 7);
    let small = Arc::new(MemDevice::new(4 * 4096));
    let big = Arc::new(MemDevice::new(1 << 20));
    let a = snap(&o, &small, StoreKind::Persistent, 8);
    let b = snap(&o, &big, StoreKind::Persistent, 8);
    for i in 0..4 {
        o.write(&[9; 4096], i * 4096).unwrap();
    }
    assert_eq!(o.status(a).unwrap(), "Invalid");
    assert!(matches!(
        o.snapshot_read(a, &mut [0; 512], 0),
        Err(IoError::Invalid { .. })
    ));
    assert_eq!(read_snap(&o, b, 0, 16384), vec![7; 16384]);
    assert_eq!(read_origin(&o, 0, 16384), vec![9; 16384]);
    assert_eq!(small.contents()[4], 0, "valid = 0 on disk");
    let r = inspect(&*small, "small").unwrap();
    assert_eq!(r.status, "Invalid");
}

#[test]
fn overflow_fails_writes_keeps_reads_and_origin_path_still_invalidates() {
    let (_, o) = origin(65536, 7);
    let cow = Arc::new(MemDevice::new(4 * 4096));
    let s = snap(&o, &cow, StoreKind::PersistentOverflow, 8);
    o.snapshot_write(s, &[1; 4096], 0).unwrap();
    o.snapshot_write(s, &[2; 4096], 4096).unwrap();
    let e = o.snapshot_write(s, &[3; 4096], 8192).unwrap_err();
    assert!(matches!(e, IoError::Overflow { .. }));
    assert_eq!(o.status(s).unwrap(), "Overflow");
    assert_eq!(read_snap(&o, s, 0, 4096), vec![1; 4096]);
    assert_eq!(cow.contents()[4], 1, "overflow is not written to disk");
    assert!(o.snapshot_write(s, &[1; 4096], 0).is_err());
    o.write(&[5; 4096], 8192).unwrap();
    assert_eq!(o.status(s).unwrap(), "Invalid");
}

#[test]
fn a_copy_error_invalidates_the_snapshot_and_the_origin_write_proceeds() {
    let (_, o) = origin(65536, 7);
    let cow = Arc::new(FaultyDevice::new(1 << 20));
    let s = o
        .add_snapshot(
            cow.clone(),
            SnapshotConfig::new("f", StoreKind::Persistent, 8),
        )
        .unwrap();
    cow.set_faults(FaultPlan {
        fail_write: Some(1),
        ..FaultPlan::default()
    });
    o.write(&[1; 512], 0).unwrap();
    assert_eq!(o.status(s).unwrap(), "Invalid");
    assert_eq!(read_origin(&o, 0, 512), vec![1; 512]);
    // Why, with the operation, where, and the error (a real one carries its errno).
    let why = o.invalid_reason(s).expect("a reason");
    assert_eq!(
        why,
        "copying origin chunk 0 (byte 0) to COW chunk 2: injected write error"
    );
}

#[test]
fn a_full_cow_and_a_failed_commit_say_why_the_snapshot_went_invalid() {
    let (_, o) = origin(65536, 7);
    // Room for the header, one area and one data chunk (cs = 8): the second exception fails.
    let small = Arc::new(MemDevice::new(3 * 4096));
    let s = snap(&o, &small, StoreKind::Persistent, 8);
    o.write(&[1; 4096], 0).unwrap();
    assert_eq!(o.invalid_reason(s), None);
    o.write(&[1; 4096], 8192).unwrap();
    let why = o.invalid_reason(s).expect("a reason");
    assert!(
        why.contains("COW full") && why.contains("origin chunk 2") && why.contains("byte 8192"),
        "{why}"
    );

    let cow = Arc::new(FaultyDevice::new(1 << 20));
    let t = o
        .add_snapshot(
            cow.clone(),
            SnapshotConfig::new("f", StoreKind::Persistent, 8),
        )
        .unwrap();
    cow.set_faults(FaultPlan {
        fail_flush: Some(1),
        ..FaultPlan::default()
    });
    o.write(&[2; 4096], 4096 * 4).unwrap();
    let why = o.invalid_reason(t).expect("a reason");
    assert!(
        why.contains("committing 1 exception(s) (origin chunks 4..=4)")
            && why.contains("injected flush error"),
        "{why}"
    );
}

/// A COW whose first read by the thread named "reader" waits until the test lets it go.
struct GatedCow {
    inner: MemDevice,
    gate: std::sync::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    entered: std::sync::mpsc::SyncSender<()>,
}

impl BlockDevice for GatedCow {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let r = self.inner.read_at(buf, offset);
        if std::thread::current().name() == Some("reader") {
            let gate = self.gate.lock().unwrap().take();
            if let Some(g) = gate {
                let _ = self.entered.send(());
                let _ = g.recv();
            }
        }
        r
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
}

#[test]
fn an_origin_read_spanning_a_merge_that_finishes_meanwhile_reads_the_merged_view() {
    let (_, o) = origin(65536, 1);
    let (go, gate) = std::sync::mpsc::channel();
    let (entered, inside) = std::sync::mpsc::sync_channel(1);
    let cow = Arc::new(GatedCow {
        inner: MemDevice::new(1 << 20),
        gate: std::sync::Mutex::new(Some(gate)),
        entered,
    });
    let s = o
        .add_snapshot(cow, SnapshotConfig::new("g", StoreKind::Persistent, 8))
        .unwrap();
    o.snapshot_write(s, &[9; 4096], 0).unwrap();
    o.start_merge(s).unwrap();
    let o = Arc::new(o);
    let reader = {
        let o = o.clone();
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                // Chunk 0 comes from the COW (held at the gate), chunk 1 from the origin.
                let mut b = vec![0u8; 8192];
                o.read(&mut b, 0).map(|()| b)
            })
            .unwrap()
    };
    inside.recv().unwrap();
    // The merge finishes while the read is between its two chunks.
    assert_eq!(o.merge_to_completion().unwrap(), 1);
    go.send(()).unwrap();
    let b = reader.join().unwrap().expect("the read succeeds");
    assert_eq!(&b[..4096], &[9; 4096][..]);
    assert_eq!(&b[4096..], &[1; 4096][..]);
    // The merged snapshot reads and writes as the origin from now on.
    assert_eq!(read_snap(&o, s, 0, 4096), vec![9; 4096]);
    o.snapshot_write(s, &[4; 512], 512).unwrap();
    assert_eq!(read_origin(&o, 512, 512), vec![4; 512]);
}

#[test]
fn a_persistent_snapshot_reloads_from_its_cow_alone() {
    let (dev, o) = origin(65536, 7);
    let cow = Arc::new(MemDevice::new(1 << 20));
    let s = snap(&o, &cow, StoreKind::Persistent, 8);
    o.write(&[1; 6000], 1000).unwrap();
    o.snapshot_write(s, &[2; 100], 30000).unwrap();
    let status = o.status(s).unwrap();
    drop(o);
    let o = Origin::new(dev, "origin", OriginConfig::default());
    let s = snap(&o, &cow, StoreKind::Persistent, 0);
    assert_eq!(o.status(s).unwrap(), status);
    assert_eq!(read_snap(&o, s, 0, 8192), vec![7; 8192]);
    assert_eq!(read_snap(&o, s, 30000, 100), vec![2; 100]);
    assert_eq!(read_origin(&o, 1000, 6000), vec![1; 6000]);
}

#[test]
fn merge_makes_the_origin_the_snapshot_view_and_others_keep_theirs() {
    let (_, o) = origin(65536, 7);
    let (mcow, ocow) = (
        Arc::new(MemDevice::new(1 << 22)),
        Arc::new(MemDevice::new(1 << 20)),
    );
    let m = snap(&o, &mcow, StoreKind::Persistent, 8);
    o.write(&[1; 8192], 0).unwrap();
    let other = snap(&o, &ocow, StoreKind::Persistent, 8);
    o.snapshot_write(m, &[2; 4096], 40960).unwrap();
    o.snapshot_write(m, &[3; 4096], 45056).unwrap();
    let want = read_snap(&o, m, 0, 65536);
    let other_view = read_snap(&o, other, 0, 65536);
    o.start_merge(m).unwrap();
    assert_eq!(
        read_origin(&o, 0, 65536),
        want,
        "the origin shows the merged view"
    );
    assert_eq!(
        o.merge_step().unwrap(),
        MergeProgress::Merged {
            chunks: 2,
            remaining: 2
        }
    );
    o.write(&[4; 512], 512).unwrap();
    assert_eq!(o.merge_to_completion().unwrap(), 1);
    assert_eq!(o.snapshots(), vec![other]);
    let mut want = want;
    want[512..1024].fill(4);
    assert_eq!(read_origin(&o, 0, 65536), want);
    assert_eq!(read_snap(&o, other, 0, 65536), other_view);
    assert_eq!(inspect(&*mcow, "m").unwrap().status, "16/8192 16");
}

#[test]
fn a_merge_io_error_reports_merge_failed_and_io_continues() {
    let odev = Arc::new(FaultyDevice::new(65536));
    let o = Origin::new(odev.clone(), "origin", OriginConfig::default());
    let cow = Arc::new(MemDevice::new(1 << 20));
    let m = snap(&o, &cow, StoreKind::Persistent, 8);
    o.write(&[1; 4096], 0).unwrap();
    o.start_merge(m).unwrap();
    odev.set_faults(FaultPlan {
        fail_write: Some(1),
        ..FaultPlan::default()
    });
    assert!(matches!(o.merge_step(), Err(CowError::MergeFailed { .. })));
    assert_eq!(o.status(m).unwrap(), "Merge failed");
    assert_eq!(read_origin(&o, 0, 4096), vec![0; 4096]);
    o.write(&[5; 512], 8192).unwrap();
    assert_eq!(read_origin(&o, 8192, 512), vec![5; 512]);
}

#[test]
fn discard_is_off_by_default_and_zeroes_cow_chunks_when_enabled() {
    let (dev, o) = origin(65536, 7);
    let cow = Arc::new(MemDevice::new(1 << 20));
    let plain = snap(
        &o,
        &Arc::new(MemDevice::new(1 << 20)),
        StoreKind::Persistent,
        8,
    );
    let mut cfg = SnapshotConfig::new("d", StoreKind::Persistent, 8);
    cfg.discard_zeroes_cow = true;
    let s = o.add_snapshot(cow, cfg.clone()).unwrap();
    assert!(matches!(
        o.snapshot_discard(plain, 0, 4096),
        Err(IoError::DiscardNotEnabled)
    ));
    o.snapshot_write(s, &[1; 4096], 0).unwrap();
    o.snapshot_discard(s, 0, 8192).unwrap();
    assert_eq!(
        read_snap(&o, s, 0, 8192),
        [vec![0; 4096], vec![7; 4096]].concat()
    );
    assert_eq!(
        o.table_line(s).unwrap(),
        "snapshot origin d P 8 1 discard_zeroes_cow"
    );
    cfg.name = "p".into();
    cfg.discard_passdown_origin = true;
    let p = o
        .add_snapshot(Arc::new(MemDevice::new(1 << 20)), cfg)
        .unwrap();
    o.snapshot_discard(p, 8192, 4096).unwrap();
    assert_eq!(dev.contents()[8192..12288], [0; 4096]);
    assert_eq!(
        read_snap(&o, plain, 8192, 4096),
        vec![0; 4096],
        "others see zeroes too"
    );
    assert!(o
        .table_line(p)
        .unwrap()
        .ends_with("2 discard_zeroes_cow discard_passdown_origin"));
}

#[test]
fn an_origin_without_snapshots_never_splits_writes() {
    let (dev, o) = origin(1 << 20, 0);
    let big = vec![3u8; 1 << 19];
    o.write(&big, 4096).unwrap();
    assert_eq!(dev.contents()[4096..4096 + (1 << 19)], big[..]);
    assert!(matches!(
        o.write(&[1], 1 << 20),
        Err(IoError::OutOfRange { .. })
    ));
}

#[test]
fn snapshot_devices_work_through_the_block_device_trait() {
    let (_, o) = origin(65536, 7);
    let o = Arc::new(o);
    let cow = Arc::new(MemDevice::new(1 << 20));
    let id = snap(&o, &cow, StoreKind::Transient, 8);
    let d = crate::storage::SnapshotDevice {
        origin: o.clone(),
        id,
    };
    d.write_at(&[1; 512], 0).unwrap();
    let mut b = [0u8; 512];
    d.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [1; 512]);
    o.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [7; 512]);
}

#[test]
fn plain_reset_is_refused_after_copy_outs_and_anchored_reset_rebuilds_the_creation_state() {
    let (_, o) = origin(256 * 4096, 1);
    let o = Arc::new(o);
    let cow = Arc::new(MemDevice::new(4 << 20));
    let anchor_cow = Arc::new(MemDevice::new(4 << 20));
    // The clone and its anchor, taken at one point (nothing written in between).
    let c = snap(&o, &cow, StoreKind::Persistent, 8);
    let a = snap(&o, &anchor_cow, StoreKind::Persistent, 8);
    o.snapshot_write(c, &[2; 8 * 4096], 0).unwrap(); // the clone's own changes: chunks 0-7
    o.write(&[3; 4 * 4096], 4 * 4096).unwrap(); // origin over clone-written chunks 4-7
    o.write(&[4; 4096], 100 * 4096).unwrap(); // and over an untouched one
    assert!(matches!(
        o.reset_snapshot(c, false),
        Err(CowError::ResetOriginChanged { .. })
    ));
    // Meanwhile a writer keeps changing the origin: each new chunk is copied out with its
    // creation data, or restored from the anchor.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let writer = {
        let (o, stop, count) = (o.clone(), stop.clone(), count.clone());
        std::thread::spawn(move || {
            let mut chunk = 0u64;
            while !stop.load(Ordering::Relaxed) {
                o.write(&[5; 4096], (chunk * 37 % 256) * 4096).unwrap();
                chunk += 1;
                count.store(chunk, Ordering::Relaxed);
            }
            chunk
        })
    };
    while count.load(Ordering::Relaxed) < 3 {
        std::thread::yield_now();
    }
    o.reset_snapshot(c, true).unwrap();
    let restored = o.restore_from_anchor(c, a).unwrap();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(
        restored >= 5,
        "at least chunks 4-7 and 100 restored, got {restored}"
    );
    assert!(written > 0);
    assert_eq!(read_snap(&o, c, 0, 256 * 4096), vec![1; 256 * 4096]);
    // Still a working clone afterwards.
    o.snapshot_write(c, &[6; 4096], 0).unwrap();
    o.write(&[7; 4096], 200 * 4096).unwrap();
    assert_eq!(read_snap(&o, c, 0, 4096), vec![6; 4096]);
    assert_eq!(read_snap(&o, c, 200 * 4096, 4096), vec![1; 4096]);
}
