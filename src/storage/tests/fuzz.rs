//! Corrupt COW files: random and mutated headers and exception areas must give clear errors (or
//! load), never a panic, from both `inspect` and opening a snapshot on them.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::storage::snap::persistent::SNAP_MAGIC;
use crate::storage::{inspect, BlockDevice};

const COW: usize = 64 * 1024;

/// A valid cs=1 store with a few exceptions, spanning more than one area.
fn valid_store() -> Vec<u8> {
    let (_, o) = origin(32 * 1024, 1);
    let cow = Arc::new(MemDevice::new(COW));
    let _ = snap(&o, &cow, StoreKind::Persistent, 1);
    for i in 0..40u64 {
        o.write(&[2; 512], (i * 7 % 64) * 512).unwrap();
    }
    cow.contents()
}

fn try_everything(bytes: Vec<u8>) {
    let dev = Arc::new(MemDevice::from_bytes(bytes));
    if let Ok(r) = inspect(&*dev, "fuzz.cow") {
        let _ = r.to_string();
    }
    let (_, o) = origin(32 * 1024, 1);
    if let Ok(id) = o.add_snapshot(
        dev,
        SnapshotConfig::new("fuzz.cow", StoreKind::Persistent, 0),
    ) {
        let _ = o.status(id);
        let _ = o.snapshot_read(id, &mut [0; 4096], 0);
        let _ = o.write(&[3; 4096], 0);
        let _ = o.snapshot_write(id, &[4; 1024], 8192);
        if o.start_merge(id).is_ok() {
            let _ = o.merge_to_completion();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_headers_and_areas_never_panic(
        valid in any::<bool>(),
        version in prop_oneof![Just(1u32), any::<u32>()],
        chunk in prop_oneof![Just(1u32), Just(8), any::<u32>()],
        area in proptest::collection::vec(any::<u64>(), 0..64),
    ) {
        let mut bytes = vec![0u8; COW];
        bytes[0..4].copy_from_slice(&SNAP_MAGIC.to_le_bytes());
        bytes[4..8].copy_from_slice(&u32::from(valid).to_le_bytes());
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        bytes[12..16].copy_from_slice(&chunk.to_le_bytes());
        let cs = (chunk as usize).clamp(1, 64) * 512;
        for (i, v) in area.iter().enumerate() {
            let at = cs + i * 8;
            if at + 8 <= COW {
                // Small numbers, so that some entries point inside the COW.
                let v = if i % 3 == 0 { *v } else { v % 200 };
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        try_everything(bytes);
    }

    #[test]
    fn mutated_valid_stores_never_panic(
        edits in proptest::collection::vec((0..4096usize, any::<u8>()), 1..12),
    ) {
        let mut bytes = valid_store();
        for (at, b) in edits {
            bytes[at] = b;
        }
        try_everything(bytes);
    }
}

#[test]
fn the_fuzz_seed_store_is_valid_and_spans_two_areas() {
    let dev = MemDevice::from_bytes(valid_store());
    let r = inspect(&dev, "seed").unwrap();
    assert_eq!(r.exceptions, 40);
    assert_eq!(r.areas, 2);
    assert!(dev.size() > 0);
}
