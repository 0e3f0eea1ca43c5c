//! vhost-user-blk serving: the backend trait impl, per-queue workers, the accept loop.
//!
//! server.rs binds an export's socket and accepts one frontend at a time; backend.rs answers the
//! vhost-user protocol and runs one worker thread per virtqueue (queue.rs, queue/), each with its
//! own io_uring, in-flight table (inflight.rs) and, for graph nodes, helper threads (pool.rs).
//! A request goes ring → chain.rs → `virtio_blk::parse` → a slot → the io_uring or the engine →
//! the used ring (recorded in the frontend's inflight region by tracker.rs when it keeps one).
//! memguard.rs keeps guest memory safe from a frontend that shrinks it; stats.rs counts.

pub mod backend;
pub mod chain;
pub mod inflight;
pub mod memguard;
pub mod pool;
pub mod queue;
pub mod server;
pub mod stats;
pub mod tracker;

pub use backend::BlkBackend;
pub use queue::{Backing, DiskContext};
pub use server::{bind_socket, serve, Export, ServeError, Shutdown};
