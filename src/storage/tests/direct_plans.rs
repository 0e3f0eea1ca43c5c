//! Scenarios of the engine's direct plans (requests the queue runs on its own io_uring): whole
//! requests placed on one file, tickets that hold off conflicts, snapshots' new exceptions
//! committed before they complete, and runs that never cross a metadata area.

use std::sync::Arc;

use super::*;
use crate::storage::BlockDevice;

#[test]
fn direct_plans_place_whole_requests_and_tickets_hold_off_conflicts() {
    use crate::storage::{DirectTarget, Ticket};
    let (_, o) = origin(64 * 4096, 1);
    // No snapshots: every origin read and write runs directly, writes under a gate token.
    let p = o.plan_direct(None, true, 4096, 8192).unwrap();
    assert_eq!((p.target, p.offset), (DirectTarget::Origin, 4096));
    assert!(matches!(p.ticket, Ticket::OriginWrite(_)));
    assert!(o.finish_direct(p.ticket, true).is_none());
    assert!(
        o.plan_direct(None, true, 63 * 4096, 8192).is_none(),
        "past the end"
    );
    let cow = Arc::new(MemDevice::new(1 << 20));
    let s = snap(&o, &cow, StoreKind::Persistent, 8);
    // A write needing copy-outs takes the synchronous path.
    assert!(o.plan_direct(None, true, 0, 4096).is_none());
    // A snapshot read of unchanged chunks reads the origin, tracked: origin writes there wait.
    let r = o.plan_direct(Some(s), false, 0, 8192).unwrap();
    assert_eq!((r.target, r.offset), (DirectTarget::Origin, 0));
    o.write(&[2; 4096], 8 * 4096).unwrap(); // another chunk: not held
    assert!(o.finish_direct(r.ticket, true).is_none());
    // Once the chunk has an exception, snapshot reads and writes go to the COW, origin writes
    // to it run directly.
    o.write(&[3; 4096], 0).unwrap();
    let w = o.plan_direct(Some(s), true, 512, 1024).unwrap();
    assert_eq!(w.target, DirectTarget::Cow);
    assert!(o.finish_direct(w.ticket, true).is_none());
    let ow = o.plan_direct(None, true, 0, 4096).unwrap();
    assert!(o.finish_direct(ow.ticket, true).is_none());
    // Spanning an exception and an unchanged chunk: synchronous path.
    assert!(o.plan_direct(Some(s), false, 0, 8192 + 4096).is_none());
    // The mapped offset is where the synchronous path reads the same bytes.
    let rc = o.plan_direct(Some(s), false, 512, 512).unwrap();
    let mut via_cow = vec![0; 512];
    cow.read_at(&mut via_cow, rc.offset).unwrap();
    assert!(o.finish_direct(rc.ticket, true).is_none());
    assert_eq!(via_cow, read_snap(&o, s, 512, 512));
    assert_eq!(via_cow, vec![1; 512]);
}

#[test]
fn direct_whole_chunk_snapshot_writes_make_exceptions_committed_before_they_complete() {
    use crate::storage::{DirectTarget, Ticket};
    let (dev, o) = origin(64 * 4096, 1);
    let cow = Arc::new(MemDevice::new(1 << 20));
    let s = snap(&o, &cow, StoreKind::Persistent, 8);
    // Part of an unchanged chunk needs its old data copied in: synchronous path.
    assert!(o.plan_direct(Some(s), true, 16 * 4096 + 512, 512).is_none());
    // Two whole chunks: two new consecutive COW chunks, pending until committed.
    let w = o.plan_direct(Some(s), true, 16 * 4096, 8192).unwrap();
    assert_eq!(w.target, DirectTarget::Cow);
    let Ticket::NewExceptions(t) = w.ticket else {
        panic!("expected new exceptions, got {:?}", w.ticket);
    };
    assert_eq!((t.old, t.count), (16, 2));
    assert_eq!(w.offset % 4096, 0);
    // While pending, an origin write there cannot run directly, nor a second snapshot write.
    assert!(o.plan_direct(None, true, 17 * 4096, 4096).is_none());
    assert!(o.plan_direct(Some(s), true, 16 * 4096, 4096).is_none());
    cow.write_at(&[9; 8192], w.offset).unwrap();
    let parked = o.finish_direct(Ticket::NewExceptions(t), true).unwrap();
    assert_eq!(o.settled(&parked), None, "written but not committed yet");
    o.commit_direct(s, &[parked], false);
    assert_eq!(o.settled(&parked), Some(true));
    assert_eq!(read_snap(&o, s, 16 * 4096, 8192), vec![9; 8192]);
    assert_eq!(read_origin(&o, 16 * 4096, 8192), vec![1; 8192]);
    // The origin now writes there without copy-out; the snapshot keeps its data.
    o.write(&[4; 8192], 16 * 4096).unwrap();
    assert_eq!(read_snap(&o, s, 16 * 4096, 8192), vec![9; 8192]);
    // try_commit commits what is ready, without waiting.
    let w2 = o.plan_direct(Some(s), true, 30 * 4096, 4096).unwrap();
    cow.write_at(&[8; 4096], w2.offset).unwrap();
    let p2 = o.finish_direct(w2.ticket, true).unwrap();
    o.try_commit(s);
    assert_eq!(o.settled(&p2), Some(true));
    // The exceptions are on disk: a reopened origin sees them.
    let o2 = Origin::new(dev.clone(), "origin", OriginConfig::default());
    let s2 = o2
        .add_snapshot(
            cow.clone(),
            SnapshotConfig::new("cow", StoreKind::Persistent, 8),
        )
        .unwrap();
    assert_eq!(read_snap(&o2, s2, 16 * 4096, 8192), vec![9; 8192]);
    assert_eq!(read_snap(&o2, s2, 30 * 4096, 4096), vec![8; 4096]);
    assert_eq!(read_snap(&o2, s2, 31 * 4096, 4096), vec![1; 4096]);
}

#[test]
fn a_failed_direct_new_exception_write_invalidates_the_snapshot_and_fails() {
    use crate::storage::IoError;
    let (_, o) = origin(64 * 4096, 1);
    let cow = Arc::new(MemDevice::new(1 << 20));
    let s = snap(&o, &cow, StoreKind::Persistent, 8);
    let w = o.plan_direct(Some(s), true, 0, 4096).unwrap();
    assert!(o.finish_direct(w.ticket, false).is_none());
    let mut b = vec![0; 4096];
    assert!(matches!(
        o.snapshot_read(s, &mut b, 0),
        Err(IoError::Invalid { .. })
    ));
    // The origin goes on working.
    o.write(&[2; 4096], 0).unwrap();
    assert_eq!(read_origin(&o, 0, 4096), vec![2; 4096]);
}

#[test]
fn direct_runs_never_cross_a_metadata_area() {
    let (_, o) = origin(4096 * 4096, 1);
    // 4 KiB chunks: 256 exceptions per area, so data chunk runs break every 257 chunks.
    let cow = Arc::new(MemDevice::new(400 * 4096));
    let s = snap(&o, &cow, StoreKind::Persistent, 8);
    let mut made = Vec::new();
    let mut old = 0;
    while let Some(w) = o.plan_direct(Some(s), true, old * 4096, 48 * 4096) {
        let crate::storage::Ticket::NewExceptions(t) = w.ticket else {
            panic!("expected new exceptions");
        };
        made.push((t.new, t.count));
        cow.write_at(&vec![3; 48 * 4096], w.offset).unwrap();
        let p = o.finish_direct(w.ticket, true).unwrap();
        o.commit_direct(s, &[p], false);
        old += 48;
    }
    // Chunk 0 is the header, 1 the first area, 2..=257 its data, 258 the next area.
    assert_eq!(
        made,
        vec![(2, 48), (50, 48), (98, 48), (146, 48), (194, 48)]
    );
    // The next run would cross the area: the synchronous path allocates around it.
    o.snapshot_write(s, &vec![5; 48 * 4096], old * 4096)
        .unwrap();
    assert_eq!(read_snap(&o, s, old * 4096, 48 * 4096), vec![5; 48 * 4096]);
    assert_eq!(read_snap(&o, s, 0, 4096), vec![3; 4096]);
}
