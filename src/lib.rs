//! snapblk: a snapshot-aware vhost-user-blk disk daemon.

pub mod bench;
pub mod config;
pub mod control;
pub mod cowcmd;
pub mod daemon;
pub mod frontend;
pub mod graph;
pub mod logging;
pub mod manager;
pub mod model;
pub mod notify;
pub mod output;
pub mod qos;
pub mod storage;
pub mod vhost;
pub mod virtio_blk;

#[cfg(test)]
#[path = "../tests/common/skip.rs"]
#[allow(dead_code)]
mod testing;
