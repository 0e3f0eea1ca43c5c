//! A blocking control-socket client: one connection, requests in sequence, ids assigned and
//! checked, replies decoded into typed [`Response`]s. Used by the CLI and the tests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::protocol::{encode_request, ControlError, Request, Response, ResponseLine};

/// Longest reply line the client accepts (lists can be long).
pub const MAX_REPLY: usize = 64 << 20;

/// How long [`Client::call`] waits for a reply by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to control socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket I/O failed")]
    Io(#[source] io::Error),
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("the daemon's reply is longer than {MAX_REPLY} bytes")]
    ReplyTooLong,
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    #[error("the daemon's reply is not valid")]
    BadReply(#[source] serde_json::Error),
    #[error("the daemon's reply is not valid: {0}")]
    Protocol(String),
    /// The daemon refused or failed the command.
    #[error(transparent)]
    Remote(ControlError),
}

impl ClientError {
    /// The connection could not be made or was lost (as opposed to a refused command or a
    /// malformed reply).
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Io(_)
                | ClientError::Timeout(_)
                | ClientError::Closed
        )
    }
}

/// One connection to the daemon's control socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    timeout: Duration,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        let writer = stream.try_clone().map_err(connect_err)?;
        let mut client = Client {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
        };
        client.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(client)
    }

    /// Sets how long a call waits for its reply (and for its request to be sent).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), ClientError> {
        self.timeout = timeout;
        self.writer
            .set_read_timeout(Some(timeout))
            .and_then(|()| self.writer.set_write_timeout(Some(timeout)))
            .map_err(ClientError::Io)
    }

    /// Sends `request` and waits for its reply. An error reply is [`ClientError::Remote`].
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = encode_request(id, request).map_err(ClientError::Encode)?;
        self.writer.write_all(&line).map_err(|e| self.io_error(e))?;
        let reply = self.read_reply()?;
        match (reply.ok, reply.id, reply.result, reply.error) {
            // The daemon could not read our request (or refused the connection).
            (false, None, None, Some(e)) => Err(ClientError::Remote(e)),
            (_, got, _, _) if got != Some(id) => Err(ClientError::Protocol(format!(
                "reply id {got:?} does not match request id {id}"
            ))),
            (false, _, None, Some(e)) => Err(ClientError::Remote(e)),
            (true, _, Some(result), None) => {
                Response::decode(request.cmd(), result).map_err(ClientError::BadReply)
            }
            _ => Err(ClientError::Protocol(
                "a reply must carry either `result` (ok) or `error` (not ok)".into(),
            )),
        }
    }

    fn read_reply(&mut self) -> Result<ResponseLine, ClientError> {
        let mut line = Vec::new();
        let limit = (MAX_REPLY + 1) as u64;
        let n = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        if line.last() != Some(&b'\n') {
            return Err(if n as u64 >= limit {
                ClientError::ReplyTooLong
            } else {
                ClientError::Closed
            });
        }
        serde_json::from_slice(&line).map_err(ClientError::BadReply)
    }

    fn io_error(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.timeout)
            }
            _ => ClientError::Io(e),
        }
    }
}
