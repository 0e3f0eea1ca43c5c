//! The frontend's error type: every backend misbehaviour ends up here, never in a panic.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the host-side vhost-user-blk frontend.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("Cannot create the guest memory file")]
    MemFd(#[source] io::Error),
    #[error("Cannot map guest memory")]
    MapMemory(#[source] vm_memory::mmap::FromRangesError),
    #[error("Guest memory exhausted: {requested} bytes requested, {available} available")]
    OutOfMemory { requested: u64, available: u64 },
    #[error("Guest memory access of {len} bytes at {addr:#x} failed")]
    MemoryAccess {
        addr: u64,
        len: usize,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("Cannot describe guest memory to the backend")]
    MemoryRegion(#[source] vhost::Error),
    #[error("Cannot connect to {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot configure the vhost-user socket")]
    Socket(#[source] io::Error),
    #[error("Backend did not answer {op} within {timeout:?}")]
    SocketTimeout { op: &'static str, timeout: Duration },
    #[error("vhost-user {op} failed")]
    Vhost {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("Backend does not offer {0}")]
    MissingFeature(&'static str),
    #[error("Queue {index} does not exist: the device has {count} queues")]
    NoSuchQueue { index: u16, count: u16 },
    #[error("Queue {0} is already set up")]
    QueueInUse(u16),
    #[error("Invalid queue size {0}: must be a power of two from 2 to 32768")]
    InvalidQueueSize(u16),
    #[error("Invalid request geometry: {0}")]
    InvalidGeometry(&'static str),
    #[error("Cannot duplicate a descriptor kept for reconnecting")]
    Dup(#[source] io::Error),
    #[error("Backend changed its features or queue count across a reconnect")]
    ReconnectMismatch,
    #[error("Cannot create an eventfd")]
    EventFd(#[source] io::Error),
    #[error("Kick of queue {queue} failed")]
    Kick {
        queue: u16,
        #[source]
        source: io::Error,
    },
    #[error("Waiting on the call eventfd of queue {queue} failed")]
    Wait {
        queue: u16,
        #[source]
        source: io::Error,
    },
    #[error("No completion on queue {queue} within {timeout:?}")]
    Timeout { queue: u16, timeout: Duration },
    #[error("A descriptor chain needs at least one descriptor")]
    EmptyChain,
    #[error("A chain of {needed} descriptors does not fit: {free} free")]
    RingFull { needed: usize, free: usize },
    #[error("An indirect chain of {len} descriptors exceeds the table size {max}")]
    IndirectTooLong { len: usize, max: usize },
    #[error("Indirect descriptors were not negotiated on queue {0}")]
    IndirectUnavailable(u16),
    #[error("Backend completed id {id} on queue {queue}, which is not in flight")]
    BadUsedId { queue: u16, id: u32 },
    #[error(
        "Backend advanced the used index of queue {queue} by {advanced} with {in_flight} in flight"
    )]
    UsedOverrun {
        queue: u16,
        advanced: u16,
        in_flight: u16,
    },
    #[error("Request slot {slot} is out of range or busy")]
    SlotBusy { slot: u16 },
    #[error("Request of {len} bytes exceeds the slot capacity of {cap} bytes")]
    TooLarge { len: u64, cap: u32 },
    #[error("Queue has {0} requests in flight; synchronous requests need an idle queue")]
    Busy(u16),
}

/// Result alias of the frontend.
pub type Result<T> = std::result::Result<T, FrontendError>;
