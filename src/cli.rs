//! Command-line definitions (clap derive only) and their validation into typed options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use snapblk::daemon::ServeOptions;

#[derive(Debug, Parser)]
#[command(
    name = "snapblk",
    version,
    about = "Snapshot-aware vhost-user-blk disk daemon"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a raw image file or block device over a vhost-user-blk socket.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Unix socket path to listen on (created with mode 0600).
    #[arg(long)]
    pub socket: PathBuf,
    /// Raw image file or block device to serve.
    #[arg(long)]
    pub image: PathBuf,
    /// Export read-only (the guest sees VIRTIO_BLK_F_RO; writes fail).
    #[arg(long)]
    pub readonly: bool,
    /// Number of virtqueues, each served by its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub num_queues: u16,
    /// Virtqueue size (a power of two, 2 to 32768).
    #[arg(long, default_value_t = 256)]
    pub queue_size: u16,
    /// Disk serial (up to 20 bytes); default: derived from the image's identity.
    #[arg(long)]
    pub serial: Option<String>,
    /// Logical block size reported to the guest.
    #[arg(long, default_value_t = 512, value_parser = parse_lbs)]
    pub logical_block_size: u32,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[arg(long)]
    pub direct: bool,
    /// Start in writethrough mode (every write is durable before it completes).
    #[arg(long)]
    pub writethrough: bool,
}

fn parse_lbs(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        other => Err(format!(
            "logical block size must be 512 or 4096, not {other}"
        )),
    }
}

impl TryFrom<ServeArgs> for ServeOptions {
    type Error = String;

    fn try_from(a: ServeArgs) -> Result<Self, String> {
        if !a.queue_size.is_power_of_two() || a.queue_size < 2 {
            return Err(format!(
                "queue size must be a power of two of at least 2, not {}",
                a.queue_size
            ));
        }
        if let Some(s) = &a.serial {
            if s.len() > 20 {
                return Err(format!("serial {s:?} is longer than 20 bytes"));
            }
        }
        Ok(ServeOptions {
            socket: a.socket,
            image: a.image,
            readonly: a.readonly,
            num_queues: a.num_queues,
            queue_size: a.queue_size,
            serial: a.serial,
            logical_block_size: a.logical_block_size,
            direct: a.direct,
            writethrough: a.writethrough,
        })
    }
}
