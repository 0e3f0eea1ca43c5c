//! virtio-blk protocol: feature bits, the config space and request parsing (no I/O here).

pub mod config;
pub mod request;

pub use config::{BlkConfig, DiskGeometry};
pub use request::{parse, Request, RequestError, RequestKind, Segment, Status};
