//! `snapblk serve`: builds the exports (one image, or a device graph from a config file), binds
//! every socket, tells systemd it is ready once all of them listen, serves each on its own
//! thread until SIGTERM/SIGINT, then drains, flushes and exits cleanly.

use std::path::PathBuf;
use std::sync::Arc;

use log::{error, info, warn};
use thiserror::Error;

use crate::config::ConfigError;
use crate::control::server::ControlServerError;
use crate::control::{bind_control, serve_control, ControlStop, ManagerControl};
use crate::graph::GraphError;
use crate::manager::{Manager, ManagerError, StartOptions};
use crate::model::GraphConfig;
use crate::notify;
use crate::qos::{ExportQos, QosLimits};
use crate::storage::{CephOptions, Image, ImageError, OpenOptions, RbdError, RbdSpec};
use crate::vhost::{bind_socket, serve, Backing, Export, ServeError, Shutdown};
use crate::virtio_blk::DiskGeometry;

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
    /// IOPS and bandwidth limits of the one disk (empty: unlimited).
    pub qos: QosLimits,
    /// How to reach the cluster when `image` is `rbd:POOL/IMAGE[@SNAP]`.
    pub ceph: CephOptions,
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
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error(transparent)]
    Control(#[from] ControlServerError),
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
    #[error("cannot open {image}")]
    Rbd {
        image: String,
        #[source]
        source: RbdError,
    },
    #[error("RBD image {image} is {size} bytes, less than one {block}-byte block")]
    RbdTooSmall {
        image: String,
        size: u64,
        block: u32,
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
                notify::tell("STOPPING=1");
                shutdown.trigger();
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok(())
}

mod rbd;

/// Runs `snapblk serve` for one image until a signal stops it.
pub fn run(opts: ServeOptions) -> Result<(), DaemonError> {
    let shutdown = Shutdown::new().map_err(DaemonError::Signals)?;
    install_signal_thread(shutdown.clone())?;
    if let Ok(Some(spec)) = RbdSpec::parse(&opts.image) {
        return rbd::run(opts, &spec, &shutdown);
    }
    let image = Arc::new(Image::open(
        &opts.image,
        OpenOptions {
            readonly: opts.readonly,
            direct: opts.direct,
        },
    )?);
    let capacity_sectors = image.capacity_sectors(opts.logical_block_size)?;
    if capacity_sectors * 512 < image.size() {
        warn!(
            "image {} is {} bytes, not a whole number of {}-byte blocks: the guest sees {} \
             bytes, the last {} are not served",
            opts.image.display(),
            image.size(),
            opts.logical_block_size,
            capacity_sectors * 512,
            image.size() - capacity_sectors * 512
        );
    }
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
    let export = Export::new(
        opts.socket.clone(),
        geometry,
        opts.num_queues,
        opts.queue_size,
        Backing::Image(image.clone()),
        !opts.writethrough,
        ExportQos::new(&opts.qos, None),
    );
    // Logged before the socket listens: whoever connects first can rely on the line.
    info!(
        "serving {} ({} bytes, serial {serial}, {} queue(s){}{}{}) on {}",
        opts.image.display(),
        capacity_sectors * 512,
        opts.num_queues,
        if opts.readonly { ", read-only" } else { "" },
        if opts.qos.is_empty() {
            String::new()
        } else {
            format!(", QoS {}", opts.qos.describe())
        },
        if image.mapping().is_some() {
            crate::storage::block::mapped::LOG_NOTE
        } else {
            ""
        },
        opts.socket.display()
    );
    let listener = bind_socket(&opts.socket)?;
    notify::tell(&format!(
        "READY=1\nSTATUS=serving {}",
        opts.socket.display()
    ));
    let result = serve_all(vec![(export, listener)], &shutdown);
    image.sync().map_err(|source| DaemonError::Flush {
        what: opts.image.display().to_string(),
        source,
    })?;
    result?;
    info!("stopped cleanly");
    Ok(())
}

/// Where `serve` gets its device graph from.
#[derive(Debug, Clone, Default)]
pub struct GraphOptions {
    /// Initial graph (the state directory's saved one wins; its edits are then reported).
    pub config: Option<PathBuf>,
    /// Apply the config file's edits to the saved state at start.
    pub apply_config: bool,
    /// Where the graph is saved on every change and restored from on start.
    pub state_dir: Option<PathBuf>,
    /// Control socket, and the group that may use it (mode 0660 then, else 0600).
    pub control: Option<PathBuf>,
    pub control_group: Option<String>,
}

/// Runs `snapblk serve` on a device graph (config file and/or state directory) until a
/// signal stops it; then every export drains, the graph is flushed, and it exits cleanly.
pub fn run_graph(opts: GraphOptions) -> Result<(), DaemonError> {
    let stop = Shutdown::new().map_err(DaemonError::Signals)?;
    install_signal_thread(stop.clone())?;
    let config = match &opts.config {
        Some(p) => Some((p.clone(), GraphConfig::load(p)?)),
        None => None,
    };
    let manager = Manager::start_with(StartOptions {
        config,
        state_dir: opts.state_dir.clone(),
        reserved: opts.control.iter().cloned().collect(),
        apply_config: opts.apply_config,
    })?;
    let control = match &opts.control {
        Some(path) => {
            let listener = bind_control(path, opts.control_group.as_deref())?;
            let cstop = ControlStop::new().map_err(DaemonError::Signals)?;
            let handler = Arc::new(ManagerControl(manager.clone()));
            let c = cstop.clone();
            let t = std::thread::Builder::new()
                .name("control".into())
                .spawn(move || {
                    if let Err(e) = serve_control(listener, handler, c) {
                        error!("control socket: {e}");
                    }
                })
                .map_err(DaemonError::Signals)?;
            info!("control socket on {}", path.display());
            Some((cstop, t, path.clone()))
        }
        None => None,
    };
    notify::tell(&format!(
        "READY=1\nSTATUS=serving {} export(s)",
        manager.exports().len()
    ));
    let mut health = std::collections::BTreeMap::new();
    while !stop.wait_timeout(std::time::Duration::from_secs(1)) {
        manager.poll_health(&mut health);
        manager.sample_rates();
    }
    if let Some((cstop, t, path)) = control {
        cstop.trigger();
        let _ = t.join();
        let _ = std::fs::remove_file(path);
    }
    manager.stop_all();
    manager
        .graph()
        .flush_all()
        .map_err(|source| DaemonError::Flush {
            what: "the device graph".into(),
            source,
        })?;
    info!("stopped cleanly");
    Ok(())
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
