//! Tests of the in-flight slots: requests prepared against guest memory, bounces, completion.

use super::*;
use crate::virtio_blk::request::Request;

fn geometry() -> DiskGeometry {
    DiskGeometry {
        capacity_sectors: 1 << 20,
        logical_block_size: 512,
        readonly: false,
        discard: false,
        serial: Vec::new(),
    }
}

/// Unaligned guest buffers, 600 KiB in all.
fn segments(writable: bool) -> Vec<Segment> {
    [
        (0x1001u64, 200u32 << 10),
        (0x10_0001, 300 << 10),
        (0x30_0001, 100 << 10),
    ]
    .map(|(a, len)| Segment {
        addr: GuestAddress(a),
        len,
        writable,
    })
    .to_vec()
}

fn slot(kind: RequestKind, segs: &[Segment], mem: &Arc<Mem>) -> Slot {
    let mut slot = Slot::new();
    let data_len = segs.iter().map(|s| s.len).sum();
    let req = Request {
        kind,
        status: GuestAddress(0x10),
        data_len,
    };
    slot.begin(0, req, mem.clone());
    slot.prepare(segs, mem, &geometry(), true).unwrap();
    slot
}

/// The current piece as the kernel sees it: one iovec.
fn piece(slot: &mut Slot) -> &mut [u8] {
    let (iov, n) = slot.iov_remaining();
    assert_eq!(n, 1);
    // SAFETY: the slot's bounce buffer, alive while the slot is.
    unsafe {
        let v = *iov;
        assert_eq!(v.iov_base as usize % DIRECT_ALIGN, 0);
        std::slice::from_raw_parts_mut(v.iov_base.cast(), v.iov_len)
    }
}

#[test]
fn an_unaligned_direct_request_is_bounced_a_bounded_piece_at_a_time() {
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap());
    let pattern: Vec<u8> = (0..600u32 << 10).map(|i| (i * 13 % 251) as u8).collect();
    // A write: the pieces, in order, carry the guest's bytes.
    let segs = segments(false);
    let mut at = 0;
    for s in &segs {
        mem.write_slice(&pattern[at..at + s.len as usize], s.addr)
            .unwrap();
        at += s.len as usize;
    }
    let mut w = slot(RequestKind::Write { sector: 0 }, &segs, &mem);
    let mut written = Vec::new();
    loop {
        let p = piece(&mut w);
        assert!(p.len() <= BOUNCE_MAX);
        written.extend_from_slice(p);
        let n = p.len() as u32;
        match w.advance(n) {
            Progress::More => {}
            Progress::Done => break,
            Progress::Stuck => panic!("stuck"),
        }
    }
    assert!(
        written == pattern,
        "the write's pieces carry the guest data"
    );
    assert_eq!(w.finish(), (Status::Ok, 1));

    // A read: each piece, once done, lands in the guest's buffers, short transfers too.
    let segs = segments(true);
    let mut r = slot(RequestKind::Read { sector: 0 }, &segs, &mem);
    let mut done = 0;
    loop {
        let p = piece(&mut r);
        assert!(p.len() <= BOUNCE_MAX);
        let n = p.len().min(100 << 10);
        p[..n].copy_from_slice(&pattern[done..done + n]);
        done += n;
        match r.advance(n as u32) {
            Progress::More => {}
            Progress::Done => break,
            Progress::Stuck => panic!("stuck"),
        }
    }
    assert_eq!(done, pattern.len());
    assert_eq!(r.finish(), (Status::Ok, (600 << 10) + 1));
    let mut at = 0;
    for s in &segs {
        let mut got = vec![0u8; s.len as usize];
        mem.read_slice(&mut got, s.addr).unwrap();
        assert!(got[..] == pattern[at..at + got.len()]);
        at += got.len();
    }
}
