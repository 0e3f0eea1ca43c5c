//! Malformed descriptor chains sent to the real daemon: each completes with the status the
//! virtio specification asks for (or, without a status byte, with used length 0), nothing is
//! written to the image, and the daemon keeps serving correct I/O afterwards.

mod common;

use common::{connect, pattern, Daemon, MIB};
use snapblk::frontend::{header, range_segment, BlkQueue, BlkStatus, Segment};
use virtio_bindings::virtio_blk::*;
use vm_memory::GuestAddress;

const UNSET: u8 = 0xaa;

/// Sends a chain whose header is at slot 0's meta area and status at meta+32.
struct Raw<'a> {
    q: &'a mut BlkQueue,
}

impl Raw<'_> {
    fn hdr(&self) -> GuestAddress {
        self.q.meta_addr(0)
    }
    fn status(&self) -> GuestAddress {
        GuestAddress(self.q.meta_addr(0).0 + 32)
    }
    fn data(&self) -> GuestAddress {
        self.q.data_addr(0)
    }

    /// Writes header `ty`/`sector`, sends `chain`, returns (status byte, used length).
    fn send(&mut self, ty: u32, sector: u64, chain: &[Segment]) -> (u8, u32) {
        let mem = self.q.memory();
        mem.write(self.hdr(), &header(ty, sector)).unwrap();
        mem.write(self.status(), &[UNSET]).unwrap();
        let c = self.q.raw_chain(chain, false).unwrap();
        let mut st = [0u8];
        self.q.memory().read(self.status(), &mut st).unwrap();
        (st[0], c.len)
    }

    fn std(&mut self, ty: u32, sector: u64, data: Segment) -> u8 {
        let (h, s) = (self.hdr(), self.status());
        self.send(
            ty,
            sector,
            &[Segment::to_device(h, 16), data, Segment::from_device(s, 1)],
        )
        .0
    }
}

const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn malformed_chains_get_the_right_status_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    let orig = pattern(5, 4 * MIB as usize);
    std::fs::write(&img, &orig).unwrap();
    let d = Daemon::image(&img, &sock, &[]);
    let mut fe = connect(&sock);
    let mut q = fe.blk_queue(0, 4, 64 * 1024).unwrap();
    let cap = 4 * MIB / 512;
    let mut r = Raw { q: &mut q };
    let (h, s, data) = (r.hdr(), r.status(), r.data());

    // No status byte at all: last descriptor device-readable. Completed with used length 0.
    let (st, used) = r.send(
        VIRTIO_BLK_T_IN,
        0,
        &[Segment::to_device(h, 16), Segment::to_device(data, 512)],
    );
    assert_eq!((st, used), (UNSET, 0), "chain without a status byte");
    // Header shorter than 16 bytes.
    let (st, _) = r.send(
        VIRTIO_BLK_T_IN,
        0,
        &[Segment::to_device(h, 8), Segment::from_device(s, 1)],
    );
    assert_eq!(st, IOERR, "short header");
    // Header device-writable (wrong direction).
    let (st, _) = r.send(
        VIRTIO_BLK_T_IN,
        0,
        &[
            Segment::from_device(h, 16),
            Segment::from_device(data, 512),
            Segment::from_device(s, 1),
        ],
    );
    assert_eq!(st, IOERR, "writable header");
    // Read into a device-readable buffer; write from a device-writable one.
    assert_eq!(
        r.std(VIRTIO_BLK_T_IN, 0, Segment::to_device(data, 512)),
        IOERR,
        "read, wrong direction"
    );
    assert_eq!(
        r.std(VIRTIO_BLK_T_OUT, 0, Segment::from_device(data, 512)),
        IOERR,
        "write, wrong direction"
    );
    // Data not a multiple of 512.
    assert_eq!(
        r.std(VIRTIO_BLK_T_OUT, 0, Segment::to_device(data, 100)),
        IOERR,
        "odd length"
    );
    // Past capacity, and overflowing sector + length.
    assert_eq!(
        r.std(VIRTIO_BLK_T_OUT, cap - 1, Segment::to_device(data, 1024)),
        IOERR,
        "past capacity"
    );
    assert_eq!(
        r.std(VIRTIO_BLK_T_IN, u64::MAX, Segment::from_device(data, 512)),
        IOERR,
        "overflow"
    );
    // Unknown type.
    assert_eq!(
        r.std(0x7777, 0, Segment::from_device(data, 512)),
        UNSUPP,
        "unknown type"
    );
    // Data descriptor outside guest memory.
    let outside = Segment {
        addr: 1 << 60,
        len: 512,
        writable: true,
    };
    assert_eq!(
        r.std(VIRTIO_BLK_T_IN, 0, outside),
        IOERR,
        "outside guest memory"
    );
    let straddle = Segment {
        addr: r.q.memory().end().0 - 256,
        len: 4096,
        writable: false,
    };
    assert_eq!(
        r.std(VIRTIO_BLK_T_OUT, 0, straddle),
        IOERR,
        "straddling the end of memory"
    );
    // Discard: out of range, bad flags, partial segment.
    r.q.memory()
        .write(data, &range_segment(cap - 8, 16, 0))
        .unwrap();
    assert_eq!(
        r.std(VIRTIO_BLK_T_DISCARD, 0, Segment::to_device(data, 16)),
        IOERR,
        "discard past end"
    );
    r.q.memory()
        .write(
            data,
            &range_segment(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
        )
        .unwrap();
    assert_eq!(
        r.std(VIRTIO_BLK_T_DISCARD, 0, Segment::to_device(data, 16)),
        UNSUPP,
        "discard with unmap flag"
    );
    r.q.memory()
        .write(data, &range_segment(0, 8, 0x40))
        .unwrap();
    assert_eq!(
        r.std(VIRTIO_BLK_T_WRITE_ZEROES, 0, Segment::to_device(data, 16)),
        UNSUPP,
        "write zeroes bad flag"
    );
    assert_eq!(
        r.std(VIRTIO_BLK_T_DISCARD, 0, Segment::to_device(data, 12)),
        IOERR,
        "partial segment"
    );
    // The same bad chains as one indirect descriptor.
    r.q.memory()
        .write(h, &header(VIRTIO_BLK_T_IN, cap))
        .unwrap();
    r.q.memory().write(s, &[UNSET]).unwrap();
    let c = r.q.raw_chain(
        &[
            Segment::to_device(h, 16),
            Segment::from_device(data, 512),
            Segment::from_device(s, 1),
        ],
        true,
    );
    if let Ok(c) = c {
        let mut st = [0u8];
        r.q.memory().read(s, &mut st).unwrap();
        assert_eq!(st[0], IOERR, "indirect past capacity (used {})", c.len);
    }

    // The daemon still serves, and nothing was written.
    let (rep, got) = q.read(0, 65536).unwrap();
    assert_eq!(rep.status, BlkStatus::Ok);
    assert!(got[..] == orig[..65536]);
    assert_eq!(q.write(8, &pattern(6, 4096)).unwrap().status, BlkStatus::Ok);
    drop(q);
    drop(fe);
    d.stop();
    let now = std::fs::read(&img).unwrap();
    assert!(now[..4096] == orig[..4096] && now[8192..] == orig[8192..]);
    let log = std::fs::read_to_string(d_log(&sock)).unwrap_or_default();
    assert!(log.contains("refused"), "bad requests are logged");
}

fn d_log(sock: &std::path::Path) -> std::path::PathBuf {
    sock.with_extension("log")
}
