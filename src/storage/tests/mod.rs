//! Engine test suites: scenarios, direct plans, model-based properties, crashes, throttling,
//! corrupt COWs.

mod crash;
mod direct_plans;
pub(crate) mod faulty;
mod fuzz;
mod model;
mod scenarios;
mod throttle;

use std::sync::Arc;

use super::{MemDevice, Origin, OriginConfig, SnapshotConfig, SnapshotId, StoreKind};

/// An origin of `size` bytes filled with `fill`, with the default copy cap.
pub fn origin(size: usize, fill: u8) -> (Arc<MemDevice>, Origin) {
    let dev = Arc::new(MemDevice::from_bytes(vec![fill; size]));
    let o = Origin::new(dev.clone(), "origin", OriginConfig::default());
    (dev, o)
}

pub fn snap(o: &Origin, cow: &Arc<MemDevice>, kind: StoreKind, cs: u64) -> SnapshotId {
    o.add_snapshot(cow.clone(), SnapshotConfig::new("cow", kind, cs))
        .unwrap()
}

pub fn read_snap(o: &Origin, id: SnapshotId, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    o.snapshot_read(id, &mut b, off).unwrap();
    b
}

pub fn read_origin(o: &Origin, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    o.read(&mut b, off).unwrap();
    b
}
