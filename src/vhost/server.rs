//! Serving one export on a unix socket: bind safely (mode 0600), accept one frontend at a time,
//! build a fresh backend per connection, and keep serving after a disconnect until shutdown.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use log::{info, warn};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::BlkBackend;
use super::queue::{Backing, DiskContext};
use super::stats::QueueStats;
use crate::qos::ExportQos;
use crate::virtio_blk::{BlkConfig, DiskGeometry};

/// Errors of the serving loop.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("socket path {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("cannot create socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the backend for {path}")]
    Backend {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("vhost-user daemon error on {path}: {message}")]
    Daemon { path: PathBuf, message: String },
}

/// Process-wide shutdown: an eventfd the accept loops poll, and the live connections to cut.
pub struct Shutdown {
    requested: AtomicBool,
    event: EventFd,
    connections: Mutex<Vec<(ShutdownHandle, BlkBackend)>>,
}

impl Shutdown {
    pub fn new() -> io::Result<Arc<Shutdown>> {
        Ok(Arc::new(Shutdown {
            requested: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK)?,
            connections: Mutex::new(Vec::new()),
        }))
    }

    /// Stops accepting; completes the requests in flight on every connection, then
    /// disconnects its frontend.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.event.write(1);
        let conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        for (h, backend) in conns.iter() {
            backend.quiesce();
            h.shutdown();
        }
    }

    /// Holds the export's I/O back: queues stop popping requests and those in flight finish.
    pub fn pause(&self, disk: &DiskContext) {
        disk.paused.store(true, Ordering::SeqCst);
        let conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        for (_, backend) in conns.iter() {
            backend.drain();
        }
    }

    /// Lets a paused export's queues run again.
    pub fn resume(&self, disk: &DiskContext) {
        disk.paused.store(false, Ordering::SeqCst);
        let conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        for (_, backend) in conns.iter() {
            backend.resume();
        }
    }

    /// Waits up to `timeout` for shutdown; true when it was requested.
    pub fn wait_timeout(&self, timeout: std::time::Duration) -> bool {
        if self.requested() {
            return true;
        }
        let mut fds = [libc::pollfd {
            fd: self.event.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        self.requested()
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn register(&self, h: ShutdownHandle, backend: BlkBackend) {
        let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if self.requested() {
            backend.quiesce();
            h.shutdown();
        }
        conns.push((h, backend));
    }

    fn clear(&self) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// Creates the listening socket at `path` with mode 0600 from the start (bound under a 0177
/// umask, so it is never reachable by others). A stale socket is replaced; a live one or any
/// other file is refused.
/// The group given access to export sockets (`serve --socket-group`), set once at start.
static SOCKET_GROUP: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Export sockets bound from now on belong to group `gid` with mode 0660 (else 0600), so a
/// VMM running as another user in that group (libvirt's `libvirt-qemu`) can connect.
pub fn set_socket_group(gid: u32) {
    let _ = SOCKET_GROUP.set(gid);
}

pub fn bind_socket(path: &Path) -> Result<UnixListener, ServeError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ServeError::SocketInUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ServeError::Bind {
        path: path.to_owned(),
        source,
    };
    // The umask is process-wide: a file created by another thread meanwhile only gets
    // stricter permissions, never looser ones.
    // SAFETY: umask has no memory-safety preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(bind_err)?;
    let mode = match SOCKET_GROUP.get() {
        Some(&gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}

/// One export: what to serve and where.
pub struct Export {
    pub socket: PathBuf,
    pub config: BlkConfig,
    pub disk: Arc<DiskContext>,
    pub default_writeback: bool,
    /// A frontend is connected now.
    pub connected: Arc<AtomicBool>,
}

impl Export {
    /// An export of `backing` on `socket` with the given geometry and queues; `writeback`
    /// is the cache mode each new connection starts in.
    pub fn new(
        socket: PathBuf,
        geometry: DiskGeometry,
        num_queues: u16,
        queue_size: u16,
        backing: Backing,
        writeback: bool,
        qos: Arc<ExportQos>,
    ) -> Export {
        Export {
            socket,
            config: BlkConfig {
                geometry: geometry.clone(),
                num_queues,
                queue_size,
            },
            disk: Arc::new(DiskContext {
                backing,
                geometry,
                writeback: AtomicBool::new(writeback),
                zero_range: AtomicBool::new(true),
                paused: AtomicBool::new(false),
                stats: (0..num_queues)
                    .map(|_| Arc::new(QueueStats::default()))
                    .collect(),
                qos,
            }),
            default_writeback: writeback,
            connected: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Serves `export` until `shutdown` is triggered. Each frontend connection gets a fresh
/// backend; in-flight requests are drained before the next connection is accepted.
pub fn serve(
    export: &Export,
    listener: UnixListener,
    shutdown: &Shutdown,
) -> Result<(), ServeError> {
    let path = export.socket.clone();
    let mut listener = Listener::from(listener);
    loop {
        if !wait_readable(listener.as_raw_fd(), shutdown)? {
            break;
        }
        export
            .disk
            .writeback
            .store(export.default_writeback, Ordering::Relaxed);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let backend = BlkBackend::new(export.config.clone(), export.disk.clone(), mem.clone())
            .map_err(|source| ServeError::Backend {
                path: path.clone(),
                source,
            })?;
        let daemon_err = |e: vhost_user_backend::Error| ServeError::Daemon {
            path: path.clone(),
            message: e.to_string(),
        };
        let mut daemon =
            VhostUserDaemon::new("snapblk".into(), backend.clone(), mem).map_err(daemon_err)?;
        let fds = backend
            .completion_fds()
            .into_iter()
            .zip(backend.timer_fds());
        for (handler, (done, timer)) in daemon.get_epoll_handlers().iter().zip(fds) {
            for (fd, event) in [
                (done, backend.completion_event()),
                (timer, backend.timer_event()),
            ] {
                handler
                    .register_listener(fd, EventSet::IN, event)
                    .map_err(|source| ServeError::Backend {
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        daemon.start(&mut listener).map_err(daemon_err)?;
        info!("{}: frontend connected", path.display());
        export.connected.store(true, Ordering::Relaxed);
        if let Some(h) = daemon.shutdown_handle() {
            backend.set_disconnect(h.clone());
            shutdown.register(h, backend.clone());
        }
        match daemon.wait() {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => info!("{}: frontend disconnected", path.display()),
            Err(e) => warn!("{}: connection ended: {e}", path.display()),
        }
        export.connected.store(false, Ordering::Relaxed);
        shutdown.clear();
        backend.stop_workers();
        backend.drain();
        drop(daemon);
        if shutdown.requested() {
            break;
        }
    }
    Ok(())
}

/// Waits until the listener has a connection (true) or shutdown was requested (false).
fn wait_readable(fd: i32, shutdown: &Shutdown) -> Result<bool, ServeError> {
    loop {
        if shutdown.requested() {
            return Ok(false);
        }
        let mut fds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shutdown.event.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd structures.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ServeError::Daemon {
                path: PathBuf::new(),
                message: e.to_string(),
            });
        }
        if fds[1].revents != 0 || shutdown.requested() {
            return Ok(false);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return Ok(true);
        }
    }
}
