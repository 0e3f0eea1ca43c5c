//! The control socket: a versioned, line-oriented JSON protocol for changing and inspecting a
//! running daemon (origins, snapshots, exports, merges, status, events).
//!
//! * [`protocol`] (with `request` and `response`): the wire types, shared by both sides.
//! * [`server`]: binds the socket and runs one thread per client; each request goes to a
//!   [`ControlHandler`], which the daemon implements.
//! * [`client`]: a blocking client, used by the CLI and by tests.
//! * [`cli`], `render` and `prometheus`: the `snapblk origin|snapshot|export|status|...`
//!   subcommands and their output.

pub mod cli;
pub mod client;
mod convert;
mod handler;
mod prometheus;
pub mod protocol;
mod qos_handler;
pub(crate) mod render;
mod render_qos;
mod request;
mod response;
pub mod server;
mod validate;

pub use client::{Client, ClientError};
pub use handler::ManagerControl;
pub use protocol::{ControlError, ErrorCode, Request, Response};
pub use server::{bind_control, serve_control, serve_control_with, ControlLimits, ControlStop};

/// What the daemon does with a parsed, validated request. Called concurrently from one
/// thread per client; a call may block (the client waits), but should not for long.
pub trait ControlHandler: Send + Sync {
    /// Runs `req`; the response must be the variant that answers `req.cmd()` (see
    /// [`Response::answers`]), or the client gets an `internal` error instead.
    fn handle(&self, req: Request) -> Result<Response, ControlError>;
}

#[cfg(test)]
mod tests;
