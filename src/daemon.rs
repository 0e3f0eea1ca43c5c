//! `snapblk serve`: opens the image, binds the socket, serves until SIGTERM/SIGINT, then drains,
//! flushes and exits cleanly.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use log::{info, warn};
use thiserror::Error;

use crate::storage::{Image, ImageError, OpenOptions};
use crate::vhost::stats::QueueStats;
use crate::vhost::{bind_socket, serve, DiskContext, Export, ServeError, Shutdown};
use crate::virtio_blk::{BlkConfig, DiskGeometry};

/// Validated settings of `snapblk serve` with one image.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub socket: PathBuf,
    pub image: PathBuf,
    pub readonly: bool,
    pub num_queues: u16,
    pub queue_size: u16,
    pub serial: Option<String>,
    pub logical_block_size: u32,
    pub direct: bool,
    pub writethrough: bool,
}

/// Why `serve` failed.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot flush image {path} at shutdown")]
    Flush {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Blocks SIGTERM and SIGINT in every thread and triggers `shutdown` when one arrives.
/// Must run before any other thread is spawned.
pub fn install_signal_thread(shutdown: Arc<Shutdown>) -> Result<(), DaemonError> {
    // SAFETY: plain libc signal-set manipulation on a local, initialized sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(DaemonError::Signals(std::io::Error::from_raw_os_error(rc)));
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set; sig is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                info!("signal {sig} received: shutting down");
                shutdown.trigger();
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok(())
}

/// Runs `snapblk serve` for one image until a signal stops it.
pub fn run(opts: ServeOptions) -> Result<(), DaemonError> {
    let shutdown = Shutdown::new().map_err(DaemonError::Signals)?;
    install_signal_thread(shutdown.clone())?;
    let image = Arc::new(Image::open(
        &opts.image,
        OpenOptions {
            readonly: opts.readonly,
            direct: opts.direct,
        },
    )?);
    let capacity_sectors = image.capacity_sectors(opts.logical_block_size)?;
    let serial = opts
        .serial
        .clone()
        .unwrap_or_else(|| image.derived_serial());
    let geometry = DiskGeometry {
        capacity_sectors,
        logical_block_size: opts.logical_block_size,
        readonly: opts.readonly,
        discard: true,
        serial: serial.as_bytes().iter().copied().take(20).collect(),
    };
    let disk = Arc::new(DiskContext {
        image: image.clone(),
        geometry: geometry.clone(),
        writeback: AtomicBool::new(!opts.writethrough),
        zero_range: AtomicBool::new(true),
        stats: (0..opts.num_queues)
            .map(|_| Arc::new(QueueStats::default()))
            .collect(),
    });
    let export = Export {
        socket: opts.socket.clone(),
        config: BlkConfig {
            geometry,
            num_queues: opts.num_queues,
            queue_size: opts.queue_size,
        },
        disk,
        default_writeback: !opts.writethrough,
    };
    let listener = bind_socket(&opts.socket)?;
    info!(
        "serving {} ({} bytes, serial {serial}, {} queue(s){}) on {}",
        opts.image.display(),
        capacity_sectors * 512,
        opts.num_queues,
        if opts.readonly { ", read-only" } else { "" },
        opts.socket.display()
    );
    let result = serve(&export, listener, &shutdown);
    if let Err(e) = std::fs::remove_file(&opts.socket) {
        warn!("cannot remove socket {}: {e}", opts.socket.display());
    }
    image.sync().map_err(|source| DaemonError::Flush {
        path: opts.image.clone(),
        source,
    })?;
    result?;
    info!("stopped cleanly");
    Ok(())
}
