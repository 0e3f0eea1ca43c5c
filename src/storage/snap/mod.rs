//! The dm-snapshot engine: an origin, the snapshots taken of it and their exception stores.
//!
//! State lives in engine.rs (`Origin`: one mutex over the snapshot list and every store's
//! bookkeeping). A request enters through datapath.rs and snapshot_io.rs (the blocking path: plan
//! under the lock, I/O after it), direct.rs (plans for callers that run the I/O on their own io_uring) or
//! held.rs (origin writes that wait for copy-outs, batched on the origin's held thread, which
//! copies them out through held_copy.rs, and landed by its landing thread, held_land.rs). Origin
//! writes first copy the old chunk into every snapshot that lacks it and commit the exceptions in
//! groups (copy.rs, commit.rs); only then does the new data reach the origin. Stores keep the table:
//! store.rs (the trait, transient `N`), persistent.rs (`P`/`PO`, in Linux's on-disk layout, which
//! format.rs describes; persistent_load.rs reads and checks a table; zero_ahead.rs keeps a COW file
//! written just past its last chunk so commits stay cheap on disk file systems), with
//! exmap.rs and exlog.rs as their compact in-memory maps. merge.rs merges a snapshot back into its
//! origin, reset.rs empties a clone back to its creation state, inspect.rs reads a COW offline.

mod commit;
mod copy;
pub mod datapath;
pub mod direct;
pub mod engine;
pub mod exlog;
pub mod exmap;
mod format;
pub(crate) mod held;
mod held_copy;
mod held_land;
pub mod inspect;
pub mod merge;
pub mod persistent;
mod reset;
mod snapshot_io;
pub mod store;
mod zero_ahead;
