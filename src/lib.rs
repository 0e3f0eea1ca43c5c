//! snapblk: a snapshot-aware vhost-user-blk disk daemon.

pub mod bench;
pub mod frontend;
