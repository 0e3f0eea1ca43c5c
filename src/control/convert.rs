//! Conversions the daemon's handler needs: its errors to stable control error codes (the
//! message carries the whole source chain), and the `hello` result of this build.

use super::protocol::{ControlError, ErrorCode, HelloInfo, COMMANDS, PROTOCOL_VERSION};
use crate::graph::GraphError;

impl ControlError {
    /// An error with `code` whose message is `e` followed by its sources, `: `-separated.
    pub fn from_chain(code: ErrorCode, e: &dyn std::error::Error) -> ControlError {
        let mut message = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        ControlError::new(code, message)
    }
}

impl From<&GraphError> for ControlError {
    fn from(e: &GraphError) -> ControlError {
        let code = match e {
            GraphError::Open { .. } if e.in_use() => ErrorCode::InUse,
            GraphError::Open { .. } | GraphError::Attach { .. } | GraphError::Detach { .. } => {
                ErrorCode::IoError
            }
            GraphError::NoCow(_) => ErrorCode::InvalidArgument,
            GraphError::Exists(_) => ErrorCode::Exists,
            GraphError::NoSuchNode(_) => ErrorCode::NotFound,
            GraphError::HasSnapshots(_) => ErrorCode::HasSnapshots,
        };
        ControlError::from_chain(code, e)
    }
}

impl From<GraphError> for ControlError {
    fn from(e: GraphError) -> ControlError {
        ControlError::from(&e)
    }
}

impl HelloInfo {
    /// The `hello` result of this build.
    pub fn this_daemon() -> HelloInfo {
        HelloInfo {
            protocol: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commands: COMMANDS.iter().map(|c| (*c).to_owned()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_errors_map_to_stable_codes_with_their_cause() {
        let e = GraphError::Open {
            what: "image",
            path: "/img".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let c = ControlError::from(e);
        assert_eq!(c.code, ErrorCode::IoError);
        assert!(
            c.message.starts_with("cannot open image /img: "),
            "{}",
            c.message
        );
        let c = ControlError::from(GraphError::NoSuchNode("x".into()));
        assert_eq!(c.code, ErrorCode::NotFound);
    }

    #[test]
    fn hello_names_every_command() {
        let h = HelloInfo::this_daemon();
        assert_eq!((h.protocol, h.commands.len()), (1, COMMANDS.len()));
    }
}
