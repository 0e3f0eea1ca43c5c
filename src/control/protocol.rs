//! The control protocol's wire format (version 1), shared by the daemon and the CLI client.
//!
//! The control socket is a Unix stream socket. Each side writes one JSON object per line
//! (UTF-8, `\n`-terminated, at most [`MAX_LINE`] bytes); every request gets exactly one
//! response, in order, on the same connection.
//!
//! ```text
//! request:  {"v":1,"id":7,"cmd":"snapshot.delete","args":{"name":"s1","force":false}}
//! success:  {"v":1,"id":7,"ok":true,"result":{}}
//! failure:  {"v":1,"id":7,"ok":false,"error":{"code":"not_found","message":"no node named \"s1\""}}
//! ```
//!
//! * `v` is the protocol version ([`PROTOCOL_VERSION`]); any other value is refused with
//!   `unsupported_version`.
//! * `id` is an unsigned integer chosen by the client and echoed in the response. It is `null`
//!   in a response only when the request's id could not be read (malformed JSON, an overlong
//!   line, a refused connection).
//! * `cmd` names the command ([`COMMANDS`]); `args` holds its arguments and may be omitted when
//!   none are needed. Unknown keys, in the envelope or in `args`, are refused with
//!   `bad_request`.
//! * `error.code` is one of the stable [`ErrorCode`] strings; `error.message` is for people and
//!   may change between releases.
//!
//! The commands, their arguments and results are the [`Request`] and [`Response`] types; sizes
//! are plain byte counts. docs/control-protocol.md has one example per command.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

pub use super::request::*;
pub use super::response::*;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest request line the daemon reads (without its newline).
pub const MAX_LINE: usize = 1 << 20;

/// Where the daemon's control socket lives unless told otherwise.
pub const DEFAULT_CONTROL_PATH: &str = "/run/snapblk/control.sock";

/// Stable error codes; the wire form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, wrong types, missing or unknown fields.
    BadRequest,
    /// `cmd` names no command of this protocol version.
    UnknownCommand,
    /// `v` is not [`PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// The request line is longer than [`MAX_LINE`]; the connection is closed.
    LineTooLong,
    /// The daemon serves too many control clients; the connection is closed.
    Busy,
    /// The named node, export or merge does not exist.
    NotFound,
    /// A node or export of that name or path already exists.
    Exists,
    /// A file or socket path is already in use (a COW path, an origin image, a socket).
    InUse,
    /// An origin still has snapshots (retry with `force`).
    HasSnapshots,
    /// The node is exported (retry with `force`).
    Exported,
    /// A merge already runs on that origin.
    MergeInProgress,
    /// Arguments are well-formed but not acceptable (a relative path, a bad size).
    InvalidArgument,
    /// The daemon's I/O failed.
    IoError,
    /// A bug in the daemon.
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::Busy => "busy",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Exists => "exists",
            ErrorCode::InUse => "in_use",
            ErrorCode::HasSnapshots => "has_snapshots",
            ErrorCode::Exported => "exported",
            ErrorCode::MergeInProgress => "merge_in_progress",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::IoError => "io_error",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused or failed command: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{message} ({code})")]
pub struct ControlError {
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorCode::BadRequest, message)
    }

    pub fn invalid(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorCode::InvalidArgument, message)
    }
}

/// A request as written on the wire (serialization only; the daemon parses with
/// [`parse_request`]).
#[derive(Debug, Serialize)]
pub struct RequestLine<'a> {
    pub v: u32,
    pub id: u64,
    #[serde(flatten)]
    pub request: &'a Request,
}

/// A response as written on the wire. `result` is the command's [`Response`] as JSON; decode
/// it with [`Response::decode`], which needs the command it answers. Unknown fields are
/// ignored, so later daemons may add some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseLine {
    pub v: u32,
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlError>,
}

/// Why a request line was refused, with its id when that much could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub id: Option<u64>,
    pub error: ControlError,
}

const ENVELOPE_KEYS: [&str; 4] = ["v", "id", "cmd", "args"];

/// Parses and validates one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<(u64, Request), Refused> {
    let refuse = |id, error| Refused { id, error };
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        refuse(
            None,
            ControlError::bad_request(format!("malformed JSON: {e}")),
        )
    })?;
    let Value::Object(mut obj) = value else {
        return Err(refuse(
            None,
            ControlError::bad_request("a request must be a JSON object"),
        ));
    };
    let id = match obj.get("id") {
        Some(v) => v.as_u64().ok_or_else(|| {
            refuse(
                None,
                ControlError::bad_request("`id` must be an unsigned integer"),
            )
        })?,
        None => {
            return Err(refuse(
                None,
                ControlError::bad_request("missing field `id`"),
            ))
        }
    };
    let bad = |msg: String| refuse(Some(id), ControlError::bad_request(msg));
    match obj.get("v") {
        None => return Err(bad("missing field `v`".into())),
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) if v.is_u64() => {
            return Err(refuse(
                Some(id),
                ControlError::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                    "protocol version {v} is not supported; this daemon speaks {PROTOCOL_VERSION}"
                ),
                ),
            ))
        }
        Some(_) => return Err(bad("`v` must be an unsigned integer".into())),
    }
    if let Some(k) = obj.keys().find(|k| !ENVELOPE_KEYS.contains(&k.as_str())) {
        return Err(bad(format!("unknown field `{k}` in the request envelope")));
    }
    let cmd = match obj.remove("cmd") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("`cmd` must be a string".into())),
        None => return Err(bad("missing field `cmd`".into())),
    };
    if !COMMANDS.contains(&cmd.as_str()) {
        return Err(refuse(
            Some(id),
            ControlError::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {cmd:?}"),
            ),
        ));
    }
    let args = match obj.remove("args") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(a @ Value::Object(_)) => a,
        Some(_) => return Err(bad(format!("`args` of {cmd} must be an object"))),
    };
    let mut tagged = Map::new();
    tagged.insert("cmd".into(), Value::String(cmd.clone()));
    tagged.insert("args".into(), args);
    let request: Request = serde_json::from_value(Value::Object(tagged))
        .map_err(|e| bad(format!("invalid arguments for {cmd}: {e}")))?;
    request
        .validate()
        .map_err(|error| refuse(Some(id), error))?;
    Ok((id, request))
}

/// Encodes a request line, newline included.
pub fn encode_request(id: u64, request: &Request) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(&RequestLine {
        v: PROTOCOL_VERSION,
        id,
        request,
    })?;
    line.push(b'\n');
    Ok(line)
}

/// Encodes a response line, newline included. Never fails: a result that cannot be encoded
/// becomes an `internal` error.
pub fn encode_response(id: Option<u64>, outcome: &Result<Response, ControlError>) -> Vec<u8> {
    let line = match outcome {
        Ok(r) => match serde_json::to_value(r) {
            Ok(result) => ResponseLine {
                v: PROTOCOL_VERSION,
                id,
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(e) => error_line(
                id,
                ControlError::new(ErrorCode::Internal, format!("cannot encode result: {e}")),
            ),
        },
        Err(e) => error_line(id, e.clone()),
    };
    let mut bytes = serde_json::to_vec(&line).unwrap_or_else(|_| {
        br#"{"v":1,"id":null,"ok":false,"error":{"code":"internal","message":"cannot encode response"}}"#
            .to_vec()
    });
    bytes.push(b'\n');
    bytes
}

fn error_line(id: Option<u64>, error: ControlError) -> ResponseLine {
    ResponseLine {
        v: PROTOCOL_VERSION,
        id,
        ok: false,
        result: None,
        error: Some(error),
    }
}
