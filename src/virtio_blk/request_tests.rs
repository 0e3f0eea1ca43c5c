//! Unit and property tests for the request parser on plain guest memory.

use super::*;
use proptest::prelude::*;
use vm_memory::GuestMemoryMmap;

const MEM: u64 = 0x10_0000;

fn mem() -> GuestMemoryMmap<()> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn geo() -> DiskGeometry {
    DiskGeometry {
        capacity_sectors: 2048,
        logical_block_size: 512,
        readonly: false,
        discard: true,
        serial: b"test".to_vec(),
    }
}

/// The limits of a 256-entry queue, as `snapblk serve` advertises them by default.
const LIMITS: RequestLimits = RequestLimits {
    seg_max: 254,
    size_max: crate::virtio_blk::config::SIZE_MAX,
};

fn header(m: &GuestMemoryMmap<()>, at: u64, rtype: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&rtype.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(at)).unwrap();
}

fn run(
    m: &GuestMemoryMmap<()>,
    g: &DiskGeometry,
    descs: &[(u64, u32, bool)],
) -> Result<Request, Rejected> {
    let mut data = Vec::new();
    parse(
        descs.iter().map(|&(a, l, w)| (GuestAddress(a), l, w)),
        m,
        g,
        &LIMITS,
        &mut data,
    )
}

fn err(r: Result<Request, Rejected>) -> (Option<GuestAddress>, Status) {
    let e = r.unwrap_err();
    (e.status, e.error.status())
}

#[test]
fn read_request_parses_sector_and_length() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_IN, 8);
    let r = run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 4096, true), (0x2000, 1, true)],
    )
    .unwrap();
    assert_eq!(r.kind, RequestKind::Read { sector: 8 });
    assert_eq!(r.data_len, 4096);
    assert_eq!(r.status, GuestAddress(0x2000));
}

#[test]
fn segments_beyond_seg_max_or_size_max_return_ioerr() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_IN, 0);
    let g = DiskGeometry {
        capacity_sectors: 1 << 30,
        ..geo()
    };
    let limits = RequestLimits {
        seg_max: 4,
        size_max: 4096,
    };
    let chain = |n: usize, len: u32| {
        let mut d = vec![(0u64, 16u32, false)];
        // Aliased: every data descriptor names the same guest buffer.
        d.extend(std::iter::repeat_n((0x1000u64, len, true), n));
        d.push((0x2000, 1, true));
        d
    };
    let parse_with = |descs: &[(u64, u32, bool)]| {
        let mut data = Vec::new();
        parse(
            descs.iter().map(|&(a, l, w)| (GuestAddress(a), l, w)),
            &m,
            &g,
            &limits,
            &mut data,
        )
    };
    assert!(parse_with(&chain(4, 4096)).is_ok());
    let e = parse_with(&chain(5, 4096)).unwrap_err();
    assert_eq!(e.error, RequestError::TooManySegments { count: 5, max: 4 });
    assert_eq!(e.error.status(), Status::IoErr);
    assert_eq!(e.status, Some(GuestAddress(0x2000)));
    let e = parse_with(&chain(1, 8192)).unwrap_err();
    assert_eq!(
        e.error,
        RequestError::SegmentTooLarge {
            len: 8192,
            max: 4096
        }
    );
    assert_eq!(e.error.status(), Status::IoErr);
}

#[test]
fn status_shared_with_data_uses_last_byte() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_IN, 0);
    let mut data = Vec::new();
    let r = parse(
        [
            (GuestAddress(0), 16, false),
            (GuestAddress(0x1000), 513, true),
        ],
        &m,
        &geo(),
        &LIMITS,
        &mut data,
    )
    .unwrap();
    assert_eq!(r.status, GuestAddress(0x1000 + 512));
    assert_eq!(
        data,
        vec![Segment {
            addr: GuestAddress(0x1000),
            len: 512,
            writable: true
        }]
    );
}

#[test]
fn missing_status_byte_has_no_status_address() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_IN, 0);
    let (st, _) = err(run(&m, &geo(), &[(0, 16, false), (0x1000, 512, false)]));
    assert_eq!(st, None);
    let (st, _) = err(run(&m, &geo(), &[]));
    assert_eq!(st, None);
}

#[test]
fn short_header_returns_ioerr() {
    let m = mem();
    let (st, s) = err(run(&m, &geo(), &[(0, 8, false), (0x2000, 1, true)]));
    assert_eq!((st, s), (Some(GuestAddress(0x2000)), Status::IoErr));
}

#[test]
fn wrong_direction_returns_ioerr() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_IN, 0);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 512, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
    header(&m, 0, VIRTIO_BLK_T_OUT, 0);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 512, true), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
}

#[test]
fn read_past_capacity_returns_ioerr() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_IN, 2047);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 1024, true), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
    header(&m, 0, VIRTIO_BLK_T_IN, u64::MAX);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 512, true), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
}

#[test]
fn data_not_multiple_of_512_returns_ioerr() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_OUT, 0);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 100, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
}

#[test]
fn unknown_type_returns_unsupp() {
    let m = mem();
    header(&m, 0, 77, 0);
    let (_, s) = err(run(&m, &geo(), &[(0, 16, false), (0x2000, 1, true)]));
    assert_eq!(s, Status::Unsupp);
}

#[test]
fn write_to_readonly_returns_ioerr() {
    let m = mem();
    let g = DiskGeometry {
        readonly: true,
        ..geo()
    };
    header(&m, 0, VIRTIO_BLK_T_OUT, 0);
    let (_, s) = err(run(
        &m,
        &g,
        &[(0, 16, false), (0x1000, 512, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
    header(&m, 0, VIRTIO_BLK_T_DISCARD, 0);
    let (_, s) = err(run(
        &m,
        &g,
        &[(0, 16, false), (0x1000, 16, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
}

#[test]
fn descriptor_outside_guest_memory_is_refused() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_IN, 0);
    let r = run(
        &m,
        &geo(),
        &[(0, 16, false), (MEM - 256, 512, true), (0x2000, 1, true)],
    );
    assert!(matches!(
        r.unwrap_err().error,
        RequestError::OutsideGuestMemory { .. }
    ));
    let r = run(
        &m,
        &geo(),
        &[
            (0, 16, false),
            (u64::MAX - 10, 512, true),
            (0x2000, 1, true),
        ],
    );
    assert!(r.is_err());
}

fn segment(m: &GuestMemoryMmap<()>, at: u64, sector: u64, sectors: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    m.write_slice(&s, GuestAddress(at)).unwrap();
}

#[test]
fn discard_segments_are_checked() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_DISCARD, 0);
    segment(&m, 0x1000, 8, 16, 0);
    segment(&m, 0x1010, 100, 8, 0);
    let r = run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 32, false), (0x2000, 1, true)],
    )
    .unwrap();
    match r.kind {
        RequestKind::Discard(rs) => assert_eq!(
            rs.as_slice(),
            &[
                Range {
                    sector: 8,
                    sectors: 16
                },
                Range {
                    sector: 100,
                    sectors: 8
                }
            ]
        ),
        k => panic!("unexpected {k:?}"),
    }
    segment(&m, 0x1000, 2040, 16, 0);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 16, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
    segment(&m, 0x1000, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 16, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::Unsupp, "unmap flag on discard");
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 12, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr, "partial segment");
}

#[test]
fn write_zeroes_flags() {
    let m = mem();
    header(&m, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    segment(&m, 0x1000, 0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
    let r = run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 16, false), (0x2000, 1, true)],
    )
    .unwrap();
    assert!(matches!(
        r.kind,
        RequestKind::WriteZeroes { unmap: true, .. }
    ));
    segment(&m, 0x1000, 0, 8, 0x80);
    let (_, s) = err(run(
        &m,
        &geo(),
        &[(0, 16, false), (0x1000, 16, false), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::Unsupp);
}

#[test]
fn logical_block_size_4k_requires_alignment() {
    let m = mem();
    let g = DiskGeometry {
        logical_block_size: 4096,
        ..geo()
    };
    header(&m, 0, VIRTIO_BLK_T_IN, 1);
    let (_, s) = err(run(
        &m,
        &g,
        &[(0, 16, false), (0x1000, 4096, true), (0x2000, 1, true)],
    ));
    assert_eq!(s, Status::IoErr);
    header(&m, 0, VIRTIO_BLK_T_IN, 8);
    assert!(run(
        &m,
        &g,
        &[(0, 16, false), (0x1000, 4096, true), (0x2000, 1, true)]
    )
    .is_ok());
}

proptest! {
    /// Any chain at all: the parser never panics, and what it accepts stays inside guest
    /// memory and inside the disk.
    #[test]
    fn parser_never_panics_and_accepts_only_safe_chains(
        rtype in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), Just(11), Just(13), any::<u32>()],
        sector in prop_oneof![0u64..4096, any::<u64>()],
        descs in proptest::collection::vec(
            (prop_oneof![0u64..MEM, any::<u64>()], prop_oneof![0u32..8192, any::<u32>()], any::<bool>()),
            0..8),
        readonly in any::<bool>(),
        seg in any::<[u8; 16]>(),
    ) {
        let m = mem();
        header(&m, 0, rtype, sector);
        m.write_slice(&seg, GuestAddress(16)).unwrap();
        let g = DiskGeometry { readonly, ..geo() };
        let mut data = Vec::new();
        let r = parse(descs.iter().map(|&(a, l, w)| (GuestAddress(a), l, w)), &m, &g, &LIMITS, &mut data);
        if let Ok(req) = r {
            prop_assert!(m.check_range(req.status, 1));
            let mut total = 0u64;
            for s in &data {
                prop_assert!(m.check_range(s.addr, s.len as usize));
                total += u64::from(s.len);
            }
            prop_assert_eq!(total, u64::from(req.data_len));
            match req.kind {
                RequestKind::Read { sector } | RequestKind::Write { sector } => {
                    prop_assert!(sector + total / 512 <= g.capacity_sectors);
                    prop_assert_eq!(total % 512, 0);
                    let is_read = matches!(req.kind, RequestKind::Read { .. });
                    prop_assert!(!readonly || is_read);
                }
                RequestKind::Discard(rs) | RequestKind::WriteZeroes { ranges: rs, .. } => {
                    prop_assert!(!readonly);
                    for r in rs.as_slice() {
                        prop_assert!(r.sector + u64::from(r.sectors) <= g.capacity_sectors);
                    }
                }
                RequestKind::Flush | RequestKind::GetId => {}
            }
        } else if let Err(Rejected { status: Some(st), .. }) = r {
            prop_assert!(m.check_range(st, 1));
        }
    }
}
