//! Block devices: the files and devices behind exports, with no snapshot knowledge.
//!
//! `Image` (image.rs) is what a plain export serves: opened, probed (probe.rs: size, block sizes,
//! direct-I/O alignment), identified (identity.rs: the same file under any name) and locked
//! (lock.rs). `BlockDevice` (device.rs) is the positional read/write/flush/discard interface the
//! snapshot engine runs its data and metadata I/O on: `FileDevice` (filedev.rs) over a file or
//! block device, buffered or `O_DIRECT` through dio.rs, and `MemDevice` for unit tests. Files on
//! tmpfs and ramfs are also mapped (mapped.rs), so a read or write there is one memcpy.
//! `rbd/` opens Ceph RBD images (`rbd:POOL/IMAGE[@SNAP]`) through librbd loaded at run time.

pub mod device;
pub mod dio;
mod filedev;
pub mod identity;
pub mod image;
pub mod lock;
pub mod mapped;
pub mod probe;
pub mod rbd;
