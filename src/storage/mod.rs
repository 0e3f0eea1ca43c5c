//! Storage: the images and block devices behind exports (block/), and the dm-snapshot
//! compatible copy-on-write engine that runs on them (snap/). Knows nothing of virtio or vhost.
//!
//! A plain export serves an `Image` directly; a graph node is an `Origin` or a
//! `SnapshotDevice`, whose requests the engine turns into I/O on `BlockDevice`s (the origin
//! image and the COW files). units.rs holds the engine's unit types, error.rs its errors.

pub mod block;
pub mod error;
pub mod snap;
pub mod units;

pub use units::binary_units;

pub use block::device::{BlockDevice, DeviceError, DeviceOptions, FileDevice, MemDevice};
pub use block::identity::FileId;
pub use block::image::{
    derive_serial, memory_backed, on_disk_file_system, open_noatime, Image, ImageError, OpenOptions,
};
pub use block::lock::{FileLock, LockError, LockMode};
pub use block::mapped::Mapping;
pub use block::rbd::{AioDone, AioOp, CephOptions, Rbd, RbdError, RbdSpec};
pub use error::{CowError, IoError};
pub use snap::datapath::SnapshotDevice;
pub use snap::direct::{DirectNode, DirectPlan, DirectTarget, NewExceptions, Ticket};
pub use snap::engine::{
    Frozen, Origin, OriginConfig, PreparedSnapshot, SnapshotConfig, SnapshotId, DEFAULT_COPY_CAP,
};
pub use snap::held::{HeldDone, MAX_HELD_WRITE};
pub use snap::inspect::{inspect, CowReport};
pub use snap::merge::MergeProgress;
pub use snap::persistent::Persistent;
pub use snap::store::{ExceptionStore, StoreKind, Transient, Usage};
pub use units::{ChunkIndex, ChunkSize, Sector};

#[cfg(test)]
mod tests;
