//! vhost-user-blk serving: the backend trait impl, per-queue workers, the accept loop.

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
