//! Storage: the images and block devices behind exports, and the dm-snapshot compatible
//! copy-on-write engine. Knows nothing of virtio or vhost.

mod copy;
pub mod datapath;
pub mod device;
pub mod dio;
pub mod direct;
pub mod engine;
pub mod error;
pub mod exlog;
pub mod exmap;
pub mod faulty;
mod filedev;
mod held;
pub mod identity;
pub mod image;
pub mod inspect;
pub mod lock;
pub mod mapped;
pub mod merge;
pub mod persistent;
pub mod probe;
mod reset;
pub mod store;
pub mod units;

pub use datapath::SnapshotDevice;
pub use device::{BlockDevice, DeviceError, DeviceOptions, FileDevice, MemDevice};
pub use direct::{DirectNode, DirectPlan, DirectTarget, NewExceptions, Ticket};
pub use engine::{
    Frozen, Origin, OriginConfig, PreparedSnapshot, SnapshotConfig, SnapshotId, DEFAULT_COPY_CAP,
};
pub use error::{CowError, IoError};
pub use faulty::{FaultPlan, FaultyDevice};
pub use held::{HeldDone, MAX_HELD_WRITE};
pub use identity::FileId;
pub use image::{derive_serial, memory_backed, open_noatime, Image, ImageError, OpenOptions};
pub use inspect::{inspect, CowReport};
pub use lock::{FileLock, LockError, LockMode};
pub use mapped::Mapping;
pub use merge::MergeProgress;
pub use persistent::Persistent;
pub use store::{ExceptionStore, StoreKind, Transient, Usage};
pub use units::{ChunkIndex, ChunkSize, Sector};

#[cfg(test)]
mod tests;
