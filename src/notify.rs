//! systemd's readiness protocol (`sd_notify`, `Type=notify` units): one datagram such as
//! `READY=1` to the socket named by `$NOTIFY_SOCKET`, a path or an abstract name written `@name`.
//! Outside systemd (no `$NOTIFY_SOCKET`) nothing is sent.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// The environment variable systemd sets to its notification socket.
pub const NOTIFY_ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=value` assignments) to `$NOTIFY_SOCKET`. Returns
/// whether there was a socket to send to.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_ENV) {
        Some(socket) if !socket.is_empty() => notify_to(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket `socket` (an absolute path, or `@name` for an
/// abstract socket).
pub fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(Path::new(socket))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{NOTIFY_ENV}={socket:?} is neither an absolute path nor @name"),
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to the notification socket",
        ));
    }
    Ok(())
}

/// [`notify`], logging a failure instead of returning it: systemd not hearing from the daemon
/// is systemd's to report (a start timeout), not a reason to stop serving.
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        log::warn!("cannot notify systemd ({}): {e}", state.replace('\n', " "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn a_path_socket_receives_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn an_abstract_socket_is_written_with_a_leading_at() {
        let name = format!("snapblk-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn relative_or_missing_sockets_are_errors() {
        let e = notify_to(OsStr::new("relative/notify"), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let dir = tempfile::tempdir().unwrap();
        assert!(notify_to(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}
