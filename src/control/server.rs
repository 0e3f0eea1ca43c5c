//! The control socket's server side: binding the socket safely, accepting clients (one thread
//! each, bounded), reading capped lines, dispatching to the [`ControlHandler`] and writing one
//! response line per request.
//!
//! Every wait polls the client's (or the listener's) fd together with the [`ControlStop`]
//! eventfd, so a stop request ends every thread promptly; a client that sends nothing or
//! stops reading only ever holds its own thread (writes time out).

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, error, warn};
use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::protocol::{encode_response, parse_request, ControlError, ErrorCode, MAX_LINE};
use super::ControlHandler;

/// Errors setting up or running the control socket.
#[derive(Debug, Error)]
pub enum ControlServerError {
    #[error("control socket path {0} is relative; give an absolute path")]
    Relative(PathBuf),
    #[error("control socket path {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("control socket {0} is in use by a running daemon")]
    InUse(PathBuf),
    #[error("no group named {0:?}")]
    NoSuchGroup(String),
    #[error("cannot look up group {group:?}")]
    GroupLookup {
        group: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the owner or mode of control socket {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the control socket's event loop")]
    Setup(#[source] io::Error),
}

/// Asks [`serve_control`] and all its client threads to stop. Pollable: an eventfd that
/// becomes (and stays) readable on [`ControlStop::trigger`].
pub struct ControlStop {
    requested: AtomicBool,
    event: EventFd,
}

impl ControlStop {
    pub fn new() -> io::Result<Arc<ControlStop>> {
        Ok(Arc::new(ControlStop {
            requested: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK)?,
        }))
    }

    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // Only fails if the counter would overflow, which a never-read eventfd written once
        // per trigger cannot reach in practice; it is readable either way.
        let _ = self.event.write(1);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

impl AsRawFd for ControlStop {
    fn as_raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

/// Limits of one control server.
#[derive(Debug, Clone)]
pub struct ControlLimits {
    /// Clients served at once; further ones get a `busy` error line and are closed.
    pub max_clients: usize,
    /// Longest request line; a longer one gets `line_too_long` and the connection is closed.
    pub max_line: usize,
    /// How long writing one response may block on a client that does not read.
    pub write_timeout: Duration,
    /// A client silent this long is disconnected (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl Default for ControlLimits {
    fn default() -> ControlLimits {
        ControlLimits {
            max_clients: 64,
            max_line: MAX_LINE,
            write_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// Creates the control socket at the absolute `path`: mode 0600, or 0660 with group `group`
/// (a name or a numeric gid). A stale socket is replaced; a live one or any other file is
/// refused. The caller removes the path when done.
pub fn bind_control(path: &Path, group: Option<&str>) -> Result<UnixListener, ControlServerError> {
    if !path.is_absolute() {
        return Err(ControlServerError::Relative(path.to_owned()));
    }
    let gid = group.map(lookup_group).transpose()?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ControlServerError::NotASocket(path.to_owned()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ControlServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|source| ControlServerError::Bind {
            path: path.to_owned(),
            source,
        })?;
    }
    // Bound under a 0177 umask, so the socket is never reachable by others, even briefly. The
    // umask is process-wide: a file another thread creates meanwhile only gets stricter modes.
    // SAFETY: umask has no memory-safety preconditions.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(|source| ControlServerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    let perm_err = |source| ControlServerError::Permissions {
        path: path.to_owned(),
        source,
    };
    let mode = match gid {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(perm_err)?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(perm_err)?;
    Ok(listener)
}

/// Resolves a group name (or a numeric gid) to a gid.
pub fn lookup_group(group: &str) -> Result<u32, ControlServerError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| ControlServerError::NoSuchGroup(group.to_owned()))?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: a zeroed `group` is a valid out-parameter (all pointers null).
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call; `buf` is writable for
        // its whole length, which is what is passed.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 24) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(ControlServerError::GroupLookup {
                group: group.to_owned(),
                source: io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            return Err(ControlServerError::NoSuchGroup(group.to_owned()));
        }
        return Ok(grp.gr_gid);
    }
}

/// Serves the control socket with the default [`ControlLimits`] until `stop` is triggered.
pub fn serve_control(
    listener: UnixListener,
    handler: Arc<dyn ControlHandler>,
    stop: Arc<ControlStop>,
) -> Result<(), ControlServerError> {
    serve_control_with(listener, handler, stop, ControlLimits::default())
}

/// Serves the control socket until `stop` is triggered, then waits for the client threads.
pub fn serve_control_with(
    listener: UnixListener,
    handler: Arc<dyn ControlHandler>,
    stop: Arc<ControlStop>,
    limits: ControlLimits,
) -> Result<(), ControlServerError> {
    listener
        .set_nonblocking(true)
        .map_err(ControlServerError::Setup)?;
    let active = Arc::new(AtomicUsize::new(0));
    let limits = Arc::new(limits);
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    while !stop.requested() {
        match wait_readable(listener.as_raw_fd(), &stop, None) {
            Ok(Wake::Ready) => {}
            Ok(Wake::Stop) => break,
            Ok(Wake::Timeout) => continue,
            Err(e) => return Err(ControlServerError::Setup(e)),
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                // Out of fds or memory: back off rather than spin; clients retry.
                warn!("control socket: cannot accept a client: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        threads.retain(|t| !t.is_finished());
        if active.load(Ordering::SeqCst) >= limits.max_clients {
            refuse(
                stream,
                ControlError::new(ErrorCode::Busy, "too many control clients; try again"),
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let guard = ActiveGuard(active.clone());
        let (handler, stop, limits) = (handler.clone(), stop.clone(), limits.clone());
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                let _guard = guard;
                if let Err(e) = session(stream, &*handler, &stop, &limits) {
                    debug!("control client dropped: {e}");
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => warn!("control socket: cannot start a client thread: {e}"),
        }
    }
    for t in threads {
        if t.join().is_err() {
            error!("a control client thread panicked");
        }
    }
    Ok(())
}

/// Decrements the active-client count when a client thread ends (or fails to start).
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Best-effort error line to a client that is about to be closed.
fn refuse(mut stream: UnixStream, error: ControlError) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(&encode_response(None, &Err(error)));
}

enum Wake {
    Ready,
    Stop,
    Timeout,
}

/// Waits until `fd` is readable (or hung up), `stop` fires, or `timeout` passes.
fn wait_readable(fd: RawFd, stop: &ControlStop, timeout: Option<Duration>) -> io::Result<Wake> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two initialized pollfd structs.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 || stop.requested() {
            return Ok(Wake::Stop);
        }
        if rc == 0 {
            return Ok(Wake::Timeout);
        }
        return Ok(Wake::Ready);
    }
}

/// Serves one client until it disconnects, misbehaves, or the server stops.
fn session(
    mut stream: UnixStream,
    handler: &dyn ControlHandler,
    stop: &ControlStop,
    limits: &ControlLimits,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(pos) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let end = scanned + pos;
            if end > limits.max_line {
                return too_long(&mut stream, limits);
            }
            let line: Vec<u8> = buf.drain(..=end).collect();
            scanned = 0;
            reply(&mut stream, handler, &line[..end])?;
        }
        scanned = buf.len();
        if buf.len() > limits.max_line {
            return too_long(&mut stream, limits);
        }
        match wait_readable(stream.as_raw_fd(), stop, limits.idle_timeout)? {
            Wake::Ready => {}
            Wake::Stop => return Ok(()),
            Wake::Timeout => {
                debug!("control client idle too long: disconnecting");
                return Ok(());
            }
        }
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // A last request without its newline still gets an answer.
            if !buf.is_empty() {
                let line = std::mem::take(&mut buf);
                reply(&mut stream, handler, &line)?;
            }
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn too_long(stream: &mut UnixStream, limits: &ControlLimits) -> io::Result<()> {
    let e = ControlError::new(
        ErrorCode::LineTooLong,
        format!(
            "request line is longer than {} bytes; closing the connection",
            limits.max_line
        ),
    );
    stream.write_all(&encode_response(None, &Err(e)))?;
    // Tell the client we are done writing, so it can read the error before it sees the close.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

/// Handles one line and writes its response. Blank lines are ignored.
fn reply(stream: &mut UnixStream, handler: &dyn ControlHandler, line: &[u8]) -> io::Result<()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let bytes = match parse_request(line) {
        Err(refused) => {
            debug!("control request refused: {}", refused.error);
            encode_response(refused.id, &Err(refused.error))
        }
        Ok((id, request)) => encode_response(Some(id), &dispatch(handler, request)),
    };
    stream.write_all(&bytes)
}

/// Runs the handler, turning a panic or a mismatched result into an `internal` error.
fn dispatch(
    handler: &dyn ControlHandler,
    request: super::Request,
) -> Result<super::Response, ControlError> {
    let cmd = request.cmd();
    match catch_unwind(AssertUnwindSafe(|| handler.handle(request))) {
        Ok(Ok(resp)) if resp.answers_cmd(cmd) => Ok(resp),
        Ok(Ok(_)) => {
            error!("control handler returned the wrong result kind for {cmd}");
            Err(ControlError::new(
                ErrorCode::Internal,
                format!("the daemon returned a malformed result for {cmd}"),
            ))
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            error!("control handler panicked on {cmd}");
            Err(ControlError::new(
                ErrorCode::Internal,
                format!("the daemon failed while running {cmd}"),
            ))
        }
    }
}
