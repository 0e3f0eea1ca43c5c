//! The control-client command line (clap derive only): every subcommand, option and argument
//! with its help text.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::super::protocol::{Store, DEFAULT_CONTROL_PATH};
use super::qos::QosArgs;
use crate::model::ByteSize;

/// Environment variable naming the control socket (below `--control`, above the default).
pub const CONTROL_ENV: &str = "SNAPBLK_CONTROL";

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
    /// Status of every node (or one): state, COW used/total in bytes and percent, exceptions,
    /// and the dm-style status line (`<used>/<total> <metadata>` in sectors).
    Status {
        /// Only this origin or snapshot.
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
    /// IOPS and bandwidth limits shared by several exports (a tenant's disks).
    #[command(name = "qos-group", subcommand)]
    QosGroup(QosGroupCmd),
    /// Logged events: snapshots gone invalid or overflowed, merges, resets. Kept in the state
    /// directory (the last 10,000), so sequence numbers go on across restarts.
    Events {
        /// Only events with this sequence number or later (a result's `next_seq`).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Output formats of `snapblk stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    /// Tables.
    Human,
    /// The result object as one JSON line (as --json).
    Json,
    /// Prometheus text exposition format.
    Prometheus,
}

#[derive(Debug, Subcommand)]
pub enum OriginCmd {
    /// Open an image or block device as a new origin.
    Add {
        /// Name of the new origin (used by snapshots and exports).
        name: String,
        /// Raw image file or block device (a relative path is taken from here), or a Ceph RBD
        /// image: rbd:POOL/IMAGE, or rbd:POOL/IMAGE@SNAP (read-only).
        #[arg(long, value_name = "PATH")]
        image: PathBuf,
        /// Most copy-outs in flight (0: unlimited) [default: 2048].
        #[arg(long, value_name = "N")]
        copy_cap: Option<usize>,
        /// RBD: the Ceph cluster's conf file [default: $CEPH_CONF, /etc/ceph/ceph.conf].
        #[arg(long, value_name = "PATH")]
        ceph_conf: Option<PathBuf>,
        /// RBD: the client id, without "client." [default: admin].
        #[arg(long, value_name = "ID")]
        ceph_id: Option<String>,
        /// RBD: the keyring file [default: from the conf].
        #[arg(long, value_name = "PATH")]
        ceph_keyring: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Close an origin (refused while it has snapshots or exports, unless --force).
    Remove {
        /// The origin.
        name: String,
        /// Also delete its snapshots (their COW files are kept) and remove its exports.
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
    /// Delete a snapshot (refused while exported, unless --force); its COW file is kept unless
    /// --remove-cow.
    Delete {
        /// The snapshot.
        name: String,
        /// Also remove its exports (connected guests are disconnected).
        #[arg(long)]
        force: bool,
        /// Also remove its COW file (and its anchor's, for a resettable snapshot).
        #[arg(long)]
        remove_cow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// List snapshots: origin, store, chunk size, COW use, state, resettable, exports.
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
    #[arg(long, value_name = "PATH")]
    pub cow: PathBuf,
    /// Store type: P (persistent), PO (persistent, overflow) or N (transient).
    #[arg(long, default_value = "P", value_parser = parse_store)]
    pub store: Store,
    /// Chunk size (bytes or with a K/M unit, a power of two); default: the COW's on-disk
    /// value, else 16K.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Size of the COW file to create (bytes or with a K/M/G/T unit).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
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

#[derive(Debug, Args)]
pub struct ExportAddArgs {
    /// The origin or snapshot to serve.
    pub node: String,
    /// Unix socket to create for the VMM (mode 0600; a relative path is taken from here).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Export read-only (the guest sees VIRTIO_BLK_F_RO; writes fail).
    #[arg(long)]
    pub readonly: bool,
    /// Number of virtqueues, each served by its own thread (1-64).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_queues: u16,
    /// Virtqueue size (a power of two, 2 to 32768) [default: 256].
    #[arg(long, value_name = "N")]
    pub queue_size: Option<u16>,
    /// Disk serial (up to 20 bytes); default: derived from the node's identity.
    #[arg(long, value_name = "STR")]
    pub serial: Option<String>,
    /// Logical block size shown to the guest: 512 or 4096 [default: 512].
    #[arg(long, value_name = "BYTES")]
    pub logical_block_size: Option<u32>,
    /// Start in writethrough mode (every write durable before it completes); the guest can
    /// switch with CONFIG_WCE.
    #[arg(long)]
    pub writethrough: bool,
    /// Allow this node to be exported more than once with a read-write export among them
    /// (every export of it must say so): only for guests that coordinate their writes, such
    /// as a cluster file system.
    #[arg(long)]
    pub shared_writable: bool,
    /// Share the budget of this QoS group (see `snapblk qos-group set`).
    #[arg(long, value_name = "GROUP")]
    pub qos_group: Option<String>,
    #[command(flatten)]
    pub qos: QosArgs,
    #[command(flatten)]
    pub conn: Conn,
}

/// `export qos`: which exports, and what to change.
#[derive(Debug, Args)]
pub struct ExportQosArgs {
    /// The node whose exports to change (or give --socket).
    #[arg(conflicts_with = "socket", required_unless_present = "socket")]
    pub node: Option<String>,
    /// The one export listening on this socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Join this QoS group: its budget is shared with the group's other exports, on top of
    /// the export's own limits.
    #[arg(long, value_name = "GROUP", conflicts_with = "no_group")]
    pub group: Option<String>,
    /// Leave the export's QoS group.
    #[arg(long)]
    pub no_group: bool,
    /// Remove every limit and leave the group: the export runs unlimited.
    #[arg(long, conflicts_with_all = ["group", "no_group"])]
    pub clear: bool,
    /// The new limits: they replace all of the export's own limits. With no limit, --group,
    /// --no-group or --clear, the current settings are shown.
    #[command(flatten)]
    pub qos: QosArgs,
    #[command(flatten)]
    pub conn: Conn,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum QosGroupCmd {
    /// Create a group, or give it new limits (its exports follow at once).
    Set {
        /// The group's name.
        name: String,
        #[command(flatten)]
        qos: QosArgs,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a group (refused while an export is in it).
    Remove {
        /// The group's name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List groups with their limits and exports.
    List {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCmd {
    /// Serve a node over vhost-user-blk on a new socket.
    Add(ExportAddArgs),
    /// Stop serving an export: give a node (all its exports) or --socket (one export); refused
    /// while a frontend is connected, unless --force.
    Remove {
        /// The node whose exports to remove (or give --socket).
        #[arg(conflicts_with = "socket")]
        node: Option<String>,
        /// The one export listening on this socket.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Remove it even while a frontend is connected (the guest loses its disk).
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
    /// Set, change or show the IOPS and bandwidth limits of a node's exports (or one, with
    /// --socket); saved in the state directory; the guest's requests wait, none fail.
    Qos(ExportQosArgs),
}

#[derive(Debug, Subcommand)]
pub enum MergeCmd {
    /// Start merging a snapshot into its origin.
    Start {
        /// The snapshot to merge (it is deleted when the merge finishes).
        snapshot: String,
        /// Wait for the merge to end, showing progress.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Progress of merges.
    Status {
        /// Only the merge of this snapshot.
        snapshot: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Debug, Subcommand)]
pub enum CloneCmd {
    /// Drop every exception of a snapshot: it reads as its origin again.
    Reset {
        /// The snapshot (clone) to reset.
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
