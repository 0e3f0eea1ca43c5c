//! The vhost-user socket with a deadline on every exchange.
//!
//! The vhost crate retries EAGAIN forever, so SO_RCVTIMEO would turn a hung backend into a
//! busy loop. Instead each exchange runs under a watchdog thread that shuts the socket down
//! when the deadline passes: the blocked send or receive then fails, and the session is over.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::Frontend;

use super::error::{FrontendError, Result};

/// A vhost-user frontend endpoint whose every exchange has a deadline.
pub(crate) struct Channel {
    vu: Frontend,
    /// A second handle on the socket, for the watchdog to shut down.
    sock: UnixStream,
    timeout: Duration,
}

impl Channel {
    pub(crate) fn new(stream: UnixStream, timeout: Duration) -> Result<Self> {
        let sock = stream.try_clone().map_err(FrontendError::Socket)?;
        Ok(Self {
            vu: Frontend::from_stream(stream, 1),
            sock,
            timeout,
        })
    }

    /// Sets NEED_REPLY on every later request (after REPLY_ACK was negotiated), so requests
    /// without a reply of their own are acknowledged and their failures seen.
    pub(crate) fn request_acks(&self) {
        self.vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }

    /// Runs one exchange (`op` names it in errors) under the deadline.
    pub(crate) fn call<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let (done, wait) = mpsc::channel::<()>();
        let (sock, timeout, vu) = (&self.sock, self.timeout, &mut self.vu);
        let (res, fired) = std::thread::scope(|s| {
            let watchdog = s.spawn(move || {
                let fired = matches!(wait.recv_timeout(timeout), Err(RecvTimeoutError::Timeout));
                if fired {
                    let _ = sock.shutdown(Shutdown::Both);
                }
                fired
            });
            let res = f(vu);
            drop(done);
            (res, watchdog.join().unwrap_or(true))
        });
        match res {
            Ok(v) => Ok(v),
            Err(_) if fired => Err(FrontendError::SocketTimeout { op, timeout }),
            Err(source) => Err(FrontendError::Vhost { op, source }),
        }
    }
}
