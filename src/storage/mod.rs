//! Storage: the images and block devices behind exports, and the dm-snapshot compatible
//! copy-on-write engine. Knows nothing of virtio or vhost.

pub mod device;
pub mod error;
pub mod faulty;
pub mod image;
pub mod persistent;
pub mod store;
pub mod units;

pub use device::{BlockDevice, FileDevice, MemDevice};
pub use error::{CowError, IoError};
pub use faulty::{FaultPlan, FaultyDevice};
pub use image::{Image, ImageError, OpenOptions};
pub use persistent::Persistent;
pub use store::{ExceptionStore, StoreKind, Transient, Usage};
pub use units::{ChunkIndex, ChunkSize, Sector};
