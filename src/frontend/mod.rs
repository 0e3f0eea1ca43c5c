//! Host-side vhost-user-blk frontend used by tests and `snapblk bench`.
//!
//! Drives any vhost-user-blk backend without a VM: [`BlkFrontend::connect`] performs the
//! handshake and shares a memfd-backed [`GuestMem`]; [`Queue`] is a split-ring driver;
//! [`BlkQueue`] builds typed virtio-blk requests (and lets tests send malformed raw chains).
//!
//! ```no_run
//! # fn main() -> Result<(), snapblk::frontend::FrontendError> {
//! use snapblk::frontend::{BlkFrontend, FrontendOptions};
//! let mut dev = BlkFrontend::connect("/run/disk.sock", FrontendOptions::default())?;
//! let mut q = dev.blk_queue(0, 1, 4096)?;
//! let (reply, data) = q.read(0, 4096)?;
//! # Ok(()) }
//! ```

mod blk;
mod channel;
mod config;
mod device;
mod error;
mod memory;
mod queue;
mod ring;
pub mod wire;

pub use blk::{
    header, range_segment, BlkCompletion, BlkQueue, BlkStatus, Reply, Request, HEADER_SIZE,
    SECTOR_SIZE, STATUS_UNSET,
};
pub use config::{bit, BlkConfig, CONFIG_SIZE, DEFAULT_FEATURES, WRITEBACK_OFFSET};
pub use device::{wanted_protocol_features, BlkFrontend, FrontendOptions};
pub use error::{FrontendError, Result};
pub use memory::{GuestMem, Slab, GUEST_BASE};
pub use queue::{Completion, Queue, RawDesc, RawNext, Segment, MAX_INDIRECT};
pub use ring::{valid_queue_size, vring_need_event, RingLayout, DESC_SIZE, USED_ELEM_SIZE};
