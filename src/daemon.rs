//! `snapblk serve`: builds the exports (one image, or a device graph from a config file), binds
//! every socket, serves each on its own thread until SIGTERM/SIGINT, then drains, flushes and
//! exits cleanly.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use log::{error, info, warn};
use thiserror::Error;

use crate::config::{ConfigError, ExportSpec, GraphConfig};
use crate::graph::{Graph, GraphError};
use crate::storage::{derive_serial, Image, ImageError, OpenOptions};
use crate::vhost::stats::QueueStats;
use crate::vhost::{bind_socket, serve, Backing, DiskContext, Export, ServeError, Shutdown};
use crate::virtio_blk::{BlkConfig, DiskGeometry};

/// Helper threads per queue for device-graph exports.
const GRAPH_THREADS_PER_QUEUE: usize = 4;

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
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("node {node} is {size} bytes, smaller than one {block}-byte logical block")]
    TooSmall { node: String, size: u64, block: u32 },
    #[error("cannot set up signal handling or threads")]
    Signals(#[source] std::io::Error),
    #[error("cannot flush {what} at shutdown")]
    Flush {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("an export thread failed")]
    ExportThread,
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

fn capacity(node: &str, size: u64, block: u32) -> Result<u64, DaemonError> {
    let blocks = size / u64::from(block);
    if blocks == 0 {
        return Err(DaemonError::TooSmall {
            node: node.to_owned(),
            size,
            block,
        });
    }
    Ok(blocks * u64::from(block) / 512)
}

fn stats(queues: u16) -> Vec<Arc<QueueStats>> {
    (0..queues)
        .map(|_| Arc::new(QueueStats::default()))
        .collect()
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
    let export = Export {
        socket: opts.socket.clone(),
        config: BlkConfig {
            geometry: geometry.clone(),
            num_queues: opts.num_queues,
            queue_size: opts.queue_size,
        },
        disk: Arc::new(DiskContext {
            backing: Backing::Image(image.clone()),
            geometry,
            writeback: AtomicBool::new(!opts.writethrough),
            zero_range: AtomicBool::new(true),
            stats: stats(opts.num_queues),
        }),
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
    let result = serve_all(vec![(export, listener)], &shutdown);
    image.sync().map_err(|source| DaemonError::Flush {
        what: opts.image.display().to_string(),
        source,
    })?;
    result?;
    info!("stopped cleanly");
    Ok(())
}

/// Runs `snapblk serve --config FILE`: every origin, snapshot and export of the file.
pub fn run_config(path: &Path) -> Result<(), DaemonError> {
    let shutdown = Shutdown::new().map_err(DaemonError::Signals)?;
    install_signal_thread(shutdown.clone())?;
    let cfg = GraphConfig::load(path)?;
    let graph = Graph::build(&cfg)?;
    let mut exports = Vec::new();
    for spec in &cfg.exports {
        let export = graph_export(&graph, spec)?;
        let listener = bind_socket(&spec.socket)?;
        info!(
            "serving node {} ({} bytes, {} queue(s){}) on {}",
            spec.node,
            export.config.geometry.capacity_sectors * 512,
            spec.num_queues,
            if spec.readonly { ", read-only" } else { "" },
            spec.socket.display()
        );
        exports.push((export, listener));
    }
    let result = serve_all(exports, &shutdown);
    graph.flush_all().map_err(|source| DaemonError::Flush {
        what: "the device graph".into(),
        source,
    })?;
    result?;
    info!("stopped cleanly");
    Ok(())
}

/// Builds the export of one graph node.
pub fn graph_export(graph: &Graph, spec: &ExportSpec) -> Result<Export, DaemonError> {
    let node = graph.node(&spec.node)?;
    let capacity_sectors = capacity(&spec.node, node.dev.size(), spec.logical_block_size)?;
    let serial = spec
        .serial
        .clone()
        .unwrap_or_else(|| derive_serial(&node.identity, 0));
    let geometry = DiskGeometry {
        capacity_sectors,
        logical_block_size: spec.logical_block_size,
        readonly: spec.readonly,
        discard: node.discard,
        serial: serial.as_bytes().iter().copied().take(20).collect(),
    };
    Ok(Export {
        socket: spec.socket.clone(),
        config: BlkConfig {
            geometry: geometry.clone(),
            num_queues: spec.num_queues,
            queue_size: spec.queue_size,
        },
        disk: Arc::new(DiskContext {
            backing: Backing::Device {
                dev: node.dev,
                threads: GRAPH_THREADS_PER_QUEUE,
            },
            geometry,
            writeback: AtomicBool::new(!spec.writethrough),
            zero_range: AtomicBool::new(true),
            stats: stats(spec.num_queues),
        }),
        default_writeback: !spec.writethrough,
    })
}

/// Serves every export on its own thread until shutdown; removes the sockets afterwards.
fn serve_all(
    exports: Vec<(Export, std::os::unix::net::UnixListener)>,
    shutdown: &Arc<Shutdown>,
) -> Result<(), DaemonError> {
    let mut threads = Vec::new();
    for (export, listener) in exports {
        let shutdown = shutdown.clone();
        let name = format!("export-{}", threads.len());
        let t = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let r = serve(&export, listener, &shutdown);
                if let Err(e) = std::fs::remove_file(&export.socket) {
                    warn!("cannot remove socket {}: {e}", export.socket.display());
                }
                if let Err(e) = &r {
                    error!("{e}");
                    // One export failing stops the daemon rather than leaving it half up.
                    shutdown.trigger();
                }
                r
            })
            .map_err(DaemonError::Signals)?;
        threads.push(t);
    }
    let mut result = Ok(());
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(DaemonError::Serve(e)),
            Err(_) => result = Err(DaemonError::ExportThread),
        }
    }
    result
}
