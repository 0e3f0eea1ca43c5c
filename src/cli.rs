//! Command-line definitions (clap derive only) and their validation into typed options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;
use snapblk::daemon::{GraphOptions, ServeOptions};

#[derive(Debug, Parser)]
#[command(
    name = "snapblk",
    version,
    about = "Snapshot-aware vhost-user-blk disk daemon",
    long_about = "Snapshot-aware vhost-user-blk disk daemon: serves raw images and block devices to \
        VMs (QEMU, cloud-hypervisor, libvirt) over vhost-user-blk sockets, with a device graph of \
        origins and copy-on-write snapshots (Linux dm-snapshot semantics and on-disk format), \
        live snapshots, clones and merges driven over a control socket."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a raw image (--socket, --image) or a device graph (--config) over vhost-user-blk.
    Serve(ServeArgs),
    /// Copy-on-write file tools.
    #[command(subcommand)]
    Cow(CowCommand),
    /// Drive any vhost-user-blk socket from the host (no VM) and report IOPS and latency.
    Bench(snapblk::bench::BenchArgs),
    /// Control-socket client commands (origin, snapshot, export, status, stats, merge, ...).
    #[command(flatten)]
    Control(snapblk::control::cli::ControlCommand),
    /// Write the man pages or shell completions generated from this command line (packaging).
    #[command(subcommand, hide = true)]
    Generate(GenerateCommand),
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Man pages: snapblk.1 and one page per subcommand (snapblk-serve.1, ...).
    Man {
        /// Directory to write them to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Shell completion scripts (snapblk.bash, _snapblk, snapblk.fish, ...).
    Completions {
        /// Shells to write completions for [default: bash, zsh, fish].
        #[arg(value_enum)]
        shells: Vec<Shell>,
        /// Directory to write them to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CowCommand {
    /// Print and validate a persistent COW file: header, chunk size, exceptions, areas, status.
    Inspect {
        /// The COW file (or device).
        file: PathBuf,
        /// Print the report as one JSON object (sizes in sectors and in bytes).
        #[arg(long)]
        json: bool,
    },
    /// Merge a persistent COW back into its origin, offline (nothing may use either file).
    Merge {
        /// The origin image the snapshot was taken of.
        #[arg(long)]
        origin: PathBuf,
        /// The persistent COW file.
        cow: PathBuf,
        /// Stop after this many runs, leaving a partial merge that a later `cow merge` goes on
        /// with. A run is one merge step: consecutive exceptions (at most 16 MiB) copied back
        /// into the origin and then dropped from the COW with one commit.
        #[arg(long, value_name = "N")]
        runs: Option<u64>,
        /// Print progress and the result as JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// The options that make `serve` serve a device graph: the single-image options conflict with
/// them (a device graph's exports take those settings from the graph).
const GRAPH_MODE: [&str; 3] = ["config", "state_dir", "control"];

/// What `serve` was asked to do.
pub enum ServeMode {
    Image(Box<ServeOptions>),
    Graph(GraphOptions),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Device-graph file (TOML: origins, snapshots, exports); replaces --socket/--image.
    #[arg(long, conflicts_with_all = ["socket", "image"])]
    pub config: Option<PathBuf>,
    /// State directory: the graph is saved there on every change and restored on start (it
    /// wins over --config, whose edits are then reported: see --apply-config).
    #[arg(long, conflicts_with_all = ["socket", "image"])]
    pub state_dir: Option<PathBuf>,
    /// Apply the edits made to the --config file since it was last applied (nodes added,
    /// removed or changed there) to the state directory's saved graph at start.
    #[arg(long, requires_all = ["config", "state_dir"])]
    pub apply_config: bool,
    /// Control socket for live changes (`snapblk snapshot create`, ...); mode 0600.
    #[arg(long, conflicts_with_all = ["socket", "image"])]
    pub control: Option<PathBuf>,
    /// Group allowed to use the control socket (mode 0660 then).
    #[arg(long, requires = "control")]
    pub control_group: Option<String>,
    /// Group allowed to connect to the export sockets (mode 0660 then, else 0600): the group
    /// of a VMM running as another user, e.g. libvirt-qemu or kvm.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Unix socket path to listen on (created with mode 0600).
    #[arg(long, required_unless_present_any = ["config", "state_dir", "control"], requires = "image")]
    pub socket: Option<PathBuf>,
    /// Raw image file or block device to serve, or a Ceph RBD image: rbd:POOL/IMAGE, or
    /// rbd:POOL/IMAGE@SNAP (read-only).
    #[arg(long, required_unless_present_any = ["config", "state_dir", "control"], requires = "socket")]
    pub image: Option<PathBuf>,
    /// RBD: the Ceph cluster's conf file [default: $CEPH_CONF, /etc/ceph/ceph.conf].
    #[arg(long, value_name = "PATH", conflicts_with_all = GRAPH_MODE)]
    pub ceph_conf: Option<PathBuf>,
    /// RBD: the client id, without "client." [default: admin].
    #[arg(long, value_name = "ID", conflicts_with_all = GRAPH_MODE)]
    pub ceph_id: Option<String>,
    /// RBD: the keyring file [default: from the conf].
    #[arg(long, value_name = "PATH", conflicts_with_all = GRAPH_MODE)]
    pub ceph_keyring: Option<PathBuf>,
    /// Export read-only (the guest sees VIRTIO_BLK_F_RO; writes fail).
    #[arg(long, conflicts_with_all = GRAPH_MODE)]
    pub readonly: bool,
    /// Number of virtqueues, each served by its own thread.
    #[arg(long, conflicts_with_all = GRAPH_MODE, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub num_queues: u16,
    /// Virtqueue size (a power of two, 2 to 32768).
    #[arg(long, conflicts_with_all = GRAPH_MODE, default_value_t = 256)]
    pub queue_size: u16,
    /// Disk serial (up to 20 bytes); default: derived from the image's identity.
    #[arg(long, conflicts_with_all = GRAPH_MODE)]
    pub serial: Option<String>,
    /// Logical block size reported to the guest.
    #[arg(long, conflicts_with_all = GRAPH_MODE, default_value_t = 512, value_parser = parse_lbs)]
    pub logical_block_size: u32,
    /// Open the image with O_DIRECT (bypass the host page cache).
    #[arg(long, conflicts_with_all = GRAPH_MODE)]
    pub direct: bool,
    /// Start in writethrough mode (every write is durable before it completes).
    #[arg(long, conflicts_with_all = GRAPH_MODE)]
    pub writethrough: bool,
    /// The disk's IOPS and bandwidth limits (a device graph sets them per export: `qos` in
    /// the config file, or `snapblk export qos`).
    #[command(flatten)]
    pub qos: snapblk::control::cli::QosArgs,
}

fn parse_lbs(s: &str) -> Result<u32, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        other => Err(format!(
            "logical block size must be 512 or 4096, not {other}"
        )),
    }
}

impl TryFrom<ServeArgs> for ServeMode {
    type Error = String;

    fn try_from(a: ServeArgs) -> Result<Self, String> {
        if a.config.is_some() || a.state_dir.is_some() || a.control.is_some() {
            if a.qos.any() {
                return Err(
                    "QoS flags on serve apply to a single image (--socket, --image); in \
                     a device graph, give an export `qos = { ... }` in the config file or use \
                     `snapblk export qos`"
                        .into(),
                );
            }
            return Ok(ServeMode::Graph(GraphOptions {
                config: a.config,
                apply_config: a.apply_config,
                state_dir: a.state_dir,
                control: a.control,
                control_group: a.control_group,
            }));
        }
        let (Some(socket), Some(image)) = (a.socket, a.image) else {
            return Err("serve needs --config FILE, or --socket and --image".into());
        };
        if !a.queue_size.is_power_of_two() || a.queue_size < 2 {
            return Err(format!(
                "queue size must be a power of two of at least 2, not {}",
                a.queue_size
            ));
        }
        let ceph = snapblk::storage::CephOptions {
            conf: a.ceph_conf,
            id: a.ceph_id,
            keyring: a.ceph_keyring,
        };
        match snapblk::storage::RbdSpec::parse(&image)? {
            Some(_) if a.direct => {
                return Err("--direct applies to files, not to an rbd: image".into())
            }
            None if ceph != Default::default() => {
                return Err(
                    "--ceph-conf, --ceph-id and --ceph-keyring apply only to an rbd: image".into(),
                )
            }
            _ => {}
        }
        if let Some(s) = &a.serial {
            if s.len() > 20 {
                return Err(format!("serial {s:?} is longer than 20 bytes"));
            }
        }
        Ok(ServeMode::Image(Box::new(ServeOptions {
            socket,
            image,
            readonly: a.readonly,
            num_queues: a.num_queues,
            queue_size: a.queue_size,
            serial: a.serial,
            logical_block_size: a.logical_block_size,
            direct: a.direct,
            writethrough: a.writethrough,
            qos: a.qos.limits()?,
            ceph,
        })))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every argument of every subcommand, positional ones included, says what it is for.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let empty = arg
                    .get_help()
                    .is_none_or(|h| h.to_string().trim().is_empty());
                if empty {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "snapblk", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }
}
