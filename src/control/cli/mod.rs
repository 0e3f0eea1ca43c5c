//! The control-client subcommands (`snapblk origin|snapshot|export|status|stats|merge|clone|
//! events`): clap definitions, translation into [`Request`]s, and output (human tables, the
//! result object as one JSON line with `--json`, Prometheus metrics for `stats`).
//!
//! Exit codes: 0 success, 1 the daemon refused or failed the command (`error: <message>
//! (<code>)` on stderr), 2 usage, 3 the daemon cannot be reached.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod args;
mod qos;

pub use args::{
    CloneCmd, Conn, ControlCommand, CreateArgs, ExportAddArgs, ExportCmd, ExportQosArgs, MergeCmd,
    OriginCmd, QosGroupCmd, SnapshotCmd, StatsFormat, CONTROL_ENV,
};
pub use qos::QosArgs;

use super::client::{Client, ClientError};
use super::protocol::{
    EventsArgs, ExportAdd, ExportQos, ExportRemove, MergeState, MergeStatus, MergeStatusArgs,
    NewSnapshot, OriginAdd, QosGroupRef, QosGroupSet, RemoveNode, Request, Response,
    SnapshotCreate, SnapshotDelete, SnapshotRef, StatusArgs,
};
use super::render::{progress_line, render};
use crate::qos::QosLimits;
use crate::storage::RbdSpec;

const EXIT_REMOTE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONNECT: u8 = 3;

/// How often `merge start --wait` polls.
const MERGE_POLL: Duration = Duration::from_millis(250);

/// A path as the daemon needs it: relative ones are taken relative to our working directory.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("cannot make {} absolute: {e}", p.display()))
}

/// What to do once connected (one per process: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Action {
    Call(Request),
    /// merge.start, then poll merge.status until it ends.
    MergeWait(String),
    /// stats, status and merge.status, printed as Prometheus metrics.
    Prometheus,
}

/// Runs one control-client subcommand and returns the process exit code.
pub fn run(cmd: ControlCommand) -> ExitCode {
    let (conn, action) = match plan(cmd) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut client = match Client::connect(&conn.path()) {
        Ok(c) => c,
        Err(e) => return fail(&e, conn.json),
    };
    let outcome = match action {
        Action::Call(req) => client
            .call(&req)
            .map(|resp| print_result(&req, &resp, conn.json)),
        Action::MergeWait(snapshot) => merge_wait(&mut client, &snapshot, conn.json),
        Action::Prometheus => prometheus(&mut client),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => fail(&e, conn.json),
    }
}

fn plan(cmd: ControlCommand) -> Result<(Conn, Action), String> {
    use ControlCommand as C;
    let call = |conn, req| Ok((conn, Action::Call(req)));
    match cmd {
        C::Origin(OriginCmd::Add {
            name,
            image,
            copy_cap,
            ceph_conf,
            ceph_id,
            ceph_keyring,
            conn,
        }) => call(
            conn,
            Request::OriginAdd(OriginAdd {
                name,
                image: if RbdSpec::is_rbd(&image) {
                    image
                } else {
                    absolute(&image)?
                },
                copy_cap,
                ceph_conf: ceph_conf.map(|p| absolute(&p)).transpose()?,
                ceph_id,
                ceph_keyring: ceph_keyring.map(|p| absolute(&p)).transpose()?,
            }),
        ),
        C::Origin(OriginCmd::Remove { name, force, conn }) => {
            call(conn, Request::OriginRemove(RemoveNode { name, force }))
        }
        C::Snapshot(SnapshotCmd::Create(a)) => create(a),
        C::Snapshot(SnapshotCmd::Delete {
            name,
            force,
            remove_cow,
            conn,
        }) => call(
            conn,
            Request::SnapshotDelete(SnapshotDelete {
                name,
                force,
                remove_cow,
            }),
        ),
        C::Snapshot(SnapshotCmd::List { conn }) => call(conn, Request::SnapshotList {}),
        C::Export(ExportCmd::Add(a)) => call(
            a.conn,
            Request::ExportAdd(ExportAdd {
                node: a.node,
                socket: absolute(&a.socket)?,
                readonly: a.readonly,
                num_queues: a.num_queues,
                queue_size: a.queue_size,
                serial: a.serial,
                logical_block_size: a.logical_block_size,
                writethrough: a.writethrough,
                shared_writable: a.shared_writable,
                qos: a.qos.limits()?,
                qos_group: a.qos_group,
            }),
        ),
        C::Export(ExportCmd::Qos(a)) => export_qos(a),
        C::QosGroup(QosGroupCmd::Set { name, qos, conn }) => call(
            conn,
            Request::QosGroupSet(QosGroupSet {
                name,
                qos: qos.limits()?,
            }),
        ),
        C::QosGroup(QosGroupCmd::Remove { name, conn }) => {
            call(conn, Request::QosGroupRemove(QosGroupRef { name }))
        }
        C::QosGroup(QosGroupCmd::List { conn }) => call(conn, Request::QosGroupList {}),
        C::Export(ExportCmd::Remove {
            node: None,
            socket: None,
            ..
        }) => Err(
            "export remove takes a node (to remove all its exports) or --socket PATH (one export)"
                .into(),
        ),
        C::Export(ExportCmd::Remove {
            node,
            socket,
            force,
            conn,
        }) => call(
            conn,
            Request::ExportRemove(ExportRemove {
                socket: socket.as_deref().map(absolute).transpose()?,
                node,
                force,
            }),
        ),
        C::Export(ExportCmd::List { conn }) => call(conn, Request::ExportList {}),
        C::Status { node, conn } => call(conn, Request::Status(StatusArgs { node })),
        C::Stats { format, mut conn } => match format {
            StatsFormat::Human => call(conn, Request::Stats {}),
            StatsFormat::Json => {
                conn.json = true;
                call(conn, Request::Stats {})
            }
            StatsFormat::Prometheus => Ok((conn, Action::Prometheus)),
        },
        C::Merge(MergeCmd::Start {
            snapshot,
            wait,
            conn,
        }) => {
            if wait {
                Ok((conn, Action::MergeWait(snapshot)))
            } else {
                call(conn, Request::MergeStart(SnapshotRef { snapshot }))
            }
        }
        C::Merge(MergeCmd::Status { snapshot, conn }) => {
            call(conn, Request::MergeStatus(MergeStatusArgs { snapshot }))
        }
        C::Clones(CloneCmd::Reset { snapshot, conn }) => {
            call(conn, Request::CloneReset(SnapshotRef { snapshot }))
        }
        C::Events { since, conn } => call(conn, Request::Events(EventsArgs { since })),
    }
}

fn export_qos(a: ExportQosArgs) -> Result<(Conn, Action), String> {
    let qos = if a.clear {
        if a.qos.any() {
            return Err("--clear removes every limit: give it without limits".into());
        }
        Some(QosLimits::default())
    } else if a.qos.any() {
        Some(a.qos.limits()?)
    } else {
        None
    };
    let qos_group = match (a.clear || a.no_group, a.group) {
        (true, _) => Some(String::new()),
        (false, g) => g,
    };
    let req = Request::ExportQos(ExportQos {
        node: a.node,
        socket: a.socket.as_deref().map(absolute).transpose()?,
        qos,
        qos_group,
    });
    Ok((a.conn, Action::Call(req)))
}

fn create(a: CreateArgs) -> Result<(Conn, Action), String> {
    let one = |origin, name, cow: &Path| -> Result<NewSnapshot, String> {
        Ok(NewSnapshot {
            origin,
            name,
            cow: absolute(cow)?,
            store: a.store,
            chunk_size: a.chunk_size,
            size: a.size,
            discard_zeroes_cow: a.discard_zeroes_cow,
            discard_passdown_origin: a.discard_passdown_origin,
            resettable: a.resettable,
            preallocate: a.preallocate,
        })
    };
    let mut snapshots = vec![one(a.origin.clone(), a.name.clone(), &a.cow)?];
    for (o, n, c) in &a.with {
        snapshots.push(one(o.clone(), n.clone(), c)?);
    }
    let req = Request::SnapshotCreate(SnapshotCreate {
        snapshots,
        adopt: a.adopt,
    });
    Ok((a.conn, Action::Call(req)))
}

fn print_result(req: &Request, resp: &Response, json: bool) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let text = if json {
        match serde_json::to_string(resp) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("error: cannot encode the result: {e}");
                return ExitCode::from(EXIT_REMOTE);
            }
        }
    } else {
        render(req, resp)
    };
    // A closed stdout (e.g. `| head`) is not worth an error.
    let _ = out.write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// `stats --format prometheus`: three calls on one connection, one text to stdout.
fn prometheus(client: &mut Client) -> Result<ExitCode, ClientError> {
    let wrong = |cmd: &str| ClientError::Protocol(format!("{cmd} returned another result"));
    let Response::Stats(stats) = client.call(&Request::Stats {})? else {
        return Err(wrong("stats"));
    };
    let Response::Status(status) = client.call(&Request::Status(StatusArgs { node: None }))? else {
        return Err(wrong("status"));
    };
    let Response::Merges(merges) =
        client.call(&Request::MergeStatus(MergeStatusArgs { snapshot: None }))?
    else {
        return Err(wrong("merge.status"));
    };
    let text = super::prometheus::render(&stats, &status, &merges);
    // A closed stdout (e.g. `| head`) is not worth an error.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// Reports a failed call; the exit code says whether the daemon refused or was unreachable.
fn fail(e: &ClientError, json: bool) -> ExitCode {
    match e {
        ClientError::Remote(err) => {
            if json {
                if let Ok(s) = serde_json::to_string(err) {
                    crate::output::line(s);
                }
            }
            eprintln!("error: {err}");
            ExitCode::from(EXIT_REMOTE)
        }
        other => {
            let mut msg = format!("error: {other}");
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(if other.is_connection() {
                EXIT_CONNECT
            } else {
                EXIT_REMOTE
            })
        }
    }
}

/// `merge start --wait`: starts the merge, then polls until it finishes or fails. On a
/// terminal a progress bar is redrawn in place; otherwise a plain line is printed every
/// couple of seconds. With `--json`, each status is printed as a JSON line.
fn merge_wait(client: &mut Client, snapshot: &str, json: bool) -> Result<ExitCode, ClientError> {
    let start = Request::MergeStart(SnapshotRef {
        snapshot: snapshot.to_owned(),
    });
    let mut last = match client.call(&start)? {
        Response::Merge(m) => m,
        _ => {
            return Err(ClientError::Protocol(
                "merge.start returned no status".into(),
            ))
        }
    };
    let tty = !json && std::io::stdout().is_terminal();
    let poll = Request::MergeStatus(MergeStatusArgs {
        snapshot: Some(snapshot.to_owned()),
    });
    let mut polls: u64 = 0;
    loop {
        show_progress(&last, tty, json, polls);
        if last.state != MergeState::Running {
            break;
        }
        std::thread::sleep(MERGE_POLL);
        polls += 1;
        let Response::Merges(list) = client.call(&poll)? else {
            return Err(ClientError::Protocol(
                "merge.status returned no list".into(),
            ));
        };
        match list.merges.into_iter().find(|m| m.snapshot == snapshot) {
            Some(m) => last = m,
            None => {
                return Err(ClientError::Protocol(format!(
                    "the daemon no longer reports the merge of {snapshot}"
                )))
            }
        }
    }
    if tty {
        crate::output::line("");
    } else if !json {
        crate::output::line(progress_line(&last, 0));
    }
    if last.state == MergeState::Failed {
        eprintln!("error: merge of {snapshot} failed; see `snapblk events`");
        return Ok(ExitCode::from(EXIT_REMOTE));
    }
    if last.state == MergeState::Stopped {
        eprintln!(
            "error: merge of {snapshot} stopped (the daemon is shutting down); it resumes when the daemon starts again"
        );
        return Ok(ExitCode::from(EXIT_REMOTE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows one merge status: as a JSON line (`json`), a progress bar redrawn in place (`tty`),
/// or else a plain line every eighth call while running.
pub fn show_progress(m: &MergeStatus, tty: bool, json: bool, polls: u64) {
    let mut out = std::io::stdout().lock();
    if json {
        if let Ok(s) = serde_json::to_string(m) {
            let _ = writeln!(out, "{s}");
        }
    } else if tty {
        let _ = write!(out, "\r\x1b[K{}", progress_line(m, 30));
        let _ = out.flush();
    } else if polls % 8 == 0 && m.state == MergeState::Running {
        let _ = writeln!(out, "{}", progress_line(m, 0));
    }
}
