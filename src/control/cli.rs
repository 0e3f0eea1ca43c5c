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

use clap::{Args, Subcommand, ValueEnum};

use super::client::{Client, ClientError};
use super::protocol::{
    EventsArgs, ExportAdd, ExportRemove, MergeState, MergeStatus, MergeStatusArgs, NewSnapshot,
    OriginAdd, RemoveNode, Request, Response, SnapshotCreate, SnapshotRef, StatusArgs, Store,
    DEFAULT_CONTROL_PATH,
};
use super::render::{progress_line, render};
use crate::model::ByteSize;

/// Environment variable naming the control socket (below `--control`, above the default).
pub const CONTROL_ENV: &str = "SNAPBLK_CONTROL";

const EXIT_REMOTE: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONNECT: u8 = 3;

/// How often `merge start --wait` polls.
const MERGE_POLL: Duration = Duration::from_millis(250);

/// Options every client subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Control socket of the daemon [default: $SNAPBLK_CONTROL, else /run/snapblk/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Print the result as one JSON object per line, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl Conn {
    /// The socket path: `--control`, else `$SNAPBLK_CONTROL`, else the default.
    pub fn path(&self) -> PathBuf {
        self.control
            .clone()
            .or_else(|| {
                std::env::var_os(CONTROL_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_PATH))
    }
}

/// The control-client subcommands, flattened into the top-level command list.
#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Add or remove origins of a running daemon.
    #[command(subcommand)]
    Origin(OriginCmd),
    /// Create, delete and list snapshots of a running daemon.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Add, remove and list vhost-user exports of a running daemon.
    #[command(subcommand)]
    Export(ExportCmd),
    /// Status of every node (or one): dm-style status line, used/total bytes, exceptions, state.
    Status {
        node: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Counters per export (requests, bytes, errors, in flight) and per snapshot (copies,
    /// parked, commits); `--format prometheus` adds COW usage and merge progress.
    Stats {
        /// Output: a table, the result as JSON (as --json), or Prometheus text exposition
        /// format (export, snapshot and merge metrics, from `stats`, `status` and `merge.status`).
        #[arg(long, value_enum, default_value_t = StatsFormat::Human, conflicts_with = "json")]
        format: StatsFormat,
        #[command(flatten)]
        conn: Conn,
    },
    /// Merge a snapshot back into its origin, online.
    #[command(subcommand)]
    Merge(MergeCmd),
    /// Clone operations.
    #[command(name = "clone", subcommand)]
    Clones(CloneCmd),
    /// Logged events: snapshots gone invalid or overflowed, merges finished or failed.
    Events {
        /// Only events with this sequence number or later.
        #[arg(long)]
        since: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Output formats of `snapblk stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    Human,
    Json,
    Prometheus,
}

#[derive(Debug, Subcommand)]
pub enum OriginCmd {
    /// Open an image or block device as a new origin.
    Add {
        name: String,
        #[arg(long)]
        image: PathBuf,
        /// Most copy-outs in flight (0: unlimited).
        #[arg(long)]
        copy_cap: Option<usize>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Close an origin (refused while it has snapshots or exports, unless --force).
    Remove {
        name: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot (with --with, several at one consistent point across origins).
    Create(CreateArgs),
    /// Delete a snapshot (refused while exported, unless --force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List snapshots.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The origin to snapshot.
    pub origin: String,
    /// Name of the new snapshot.
    pub name: String,
    /// COW file (created when --size is given and it does not exist).
    #[arg(long)]
    pub cow: PathBuf,
    /// Store type: P (persistent), PO (persistent, overflow) or N (transient).
    #[arg(long, default_value = "P", value_parser = parse_store)]
    pub store: Store,
    /// Chunk size (bytes or with a K/M unit); default: on-disk value or the daemon's default.
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Size of the COW file to create (bytes or with a K/M/G/T unit).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// A discard covering whole chunks zeroes their exceptions in the COW (dm-snapshot feature).
    #[arg(long)]
    pub discard_zeroes_cow: bool,
    /// Discards are also passed down to the origin's device (needs --discard-zeroes-cow).
    #[arg(long)]
    pub discard_passdown_origin: bool,
    /// Keep a hidden anchor (COW `<cow>.anchor`, same store) so `clone reset` can rebuild the
    /// creation state even after the origin was written; costs a second copy-out per chunk.
    #[arg(long)]
    pub resettable: bool,
    /// Write a COW file created from --size full of zeroes first instead of leaving it sparse
    /// (slower to create; see the README's durability section for when it pays).
    #[arg(long)]
    pub preallocate: bool,
    /// Load a COW file that already holds a snapshot store (its exceptions apply to the origin
    /// as it is now: right only for a store taken of this origin unchanged since); without
    /// this, such a COW file is refused.
    #[arg(long)]
    pub adopt: bool,
    /// Another snapshot taken at the same point, ORIGIN:NAME:COW (same store and sizes).
    #[arg(long = "with", value_name = "ORIGIN:NAME:COW", value_parser = parse_with)]
    pub with: Vec<(String, String, PathBuf)>,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Debug, Subcommand)]
pub enum ExportCmd {
    /// Serve a node over vhost-user-blk on a new socket.
    Add {
        node: String,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        readonly: bool,
        #[arg(long, default_value_t = 1)]
        num_queues: u16,
        #[arg(long)]
        queue_size: Option<u16>,
        #[arg(long)]
        serial: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Stop serving an export, by socket or by node (refused while connected, unless --force).
    Remove {
        #[arg(required_unless_present = "socket", conflicts_with = "socket")]
        node: Option<String>,
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List exports.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum MergeCmd {
    /// Start merging a snapshot into its origin.
    Start {
        snapshot: String,
        /// Wait for the merge to end, showing progress.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Progress of merges.
    Status {
        snapshot: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum CloneCmd {
    /// Drop every exception of a snapshot: it reads as its origin again.
    Reset {
        snapshot: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<ByteSize>().map(|b| b.0)
}

fn parse_store(s: &str) -> Result<Store, String> {
    s.parse()
}

fn parse_with(s: &str) -> Result<(String, String, PathBuf), String> {
    let mut parts = s.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(o), Some(n), Some(c)) if !o.is_empty() && !n.is_empty() && !c.is_empty() => {
            Ok((o.into(), n.into(), PathBuf::from(c)))
        }
        _ => Err(format!("{s:?} is not ORIGIN:NAME:COW")),
    }
}

/// A path as the daemon needs it: relative ones are taken relative to our working directory.
fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("cannot make {} absolute: {e}", p.display()))
}

/// What to do once connected.
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
            conn,
        }) => call(
            conn,
            Request::OriginAdd(OriginAdd {
                name,
                image: absolute(&image)?,
                copy_cap,
            }),
        ),
        C::Origin(OriginCmd::Remove { name, force, conn }) => {
            call(conn, Request::OriginRemove(RemoveNode { name, force }))
        }
        C::Snapshot(SnapshotCmd::Create(a)) => create(a),
        C::Snapshot(SnapshotCmd::Delete { name, force, conn }) => {
            call(conn, Request::SnapshotDelete(RemoveNode { name, force }))
        }
        C::Snapshot(SnapshotCmd::List { conn }) => call(conn, Request::SnapshotList {}),
        C::Export(ExportCmd::Add {
            node,
            socket,
            readonly,
            num_queues,
            queue_size,
            serial,
            conn,
        }) => call(
            conn,
            Request::ExportAdd(ExportAdd {
                node,
                socket: absolute(&socket)?,
                readonly,
                num_queues,
                queue_size,
                serial,
                logical_block_size: None,
                writethrough: false,
            }),
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

fn show_progress(m: &MergeStatus, tty: bool, json: bool, polls: u64) {
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
