//! `snapblk generate man|completions`: man pages and shell completions generated from the clap
//! definition in `cli.rs`, so the packaged documentation always matches the binary.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use thiserror::Error;

use crate::cli::{Cli, GenerateCommand};

/// Sections of snapblk(1) after the generated ones (roff).
const MAN_EXTRA: &str = r#".SH ENVIRONMENT
.TP
.B RUST_LOG
Log filter, e.g.\& \fBdebug\fR or \fBsnapblk::control=debug\fR (default: \fBinfo\fR).
.TP
.B SNAPBLK_CONTROL
Control socket of the client subcommands, used when \fB\-\-control\fR is not given
(default: \fI/run/snapblk/control.sock\fR).
.TP
.B NOTIFY_SOCKET
Set by systemd for \fBType=notify\fR units: \fBsnapblk serve\fR sends \fBREADY=1\fR once every
socket listens, and \fBSTOPPING=1\fR when a signal stops it.
.TP
.B JOURNAL_STREAM
Set by systemd when stderr is the journal: log lines then carry \fB<N>\fR syslog priority
prefixes and no timestamps.
.SH FILES
.TP
.I /etc/snapblk/NAME.toml
Device graph (origins, snapshots, exports) of the instance \fBsnapblk@NAME.service\fR.
.TP
.I /var/lib/snapblk/NAME/
Its state directory: the graph as changed over the control socket, restored on start.
.TP
.I /run/snapblk/NAME/control.sock
Its control socket, usable by members of the group \fBsnapblk\fR.
.TP
.I /var/lib/snapblk/images/
Images and COW files, writable by the daemon.
.TP
.I /usr/share/doc/snapblk/
README (VMM examples, workflows, metrics) and the control protocol.
.SH EXIT STATUS
0 on success; 1 on failure (for client subcommands: the daemon refused or failed the
command); 2 on a usage error; 3 when the control socket cannot be reached.
.SH SEE ALSO
.BR systemd.service (5),
.BR qemu-system-x86_64 (1),
.BR dmsetup (8)
"#;

/// The shells completions are written for when none is named.
const DEFAULT_SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

#[derive(Debug, Error)]
#[error("cannot write {what} to {}", dir.display())]
pub struct GenerateError {
    what: &'static str,
    dir: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Writes what `cmd` asks for; prints each file written.
pub fn run(cmd: GenerateCommand) -> Result<(), GenerateError> {
    match cmd {
        GenerateCommand::Man { out } => {
            let err = |source| GenerateError {
                what: "man pages",
                dir: out.clone(),
                source,
            };
            std::fs::create_dir_all(&out).map_err(err)?;
            clap_mangen::generate_to(Cli::command(), &out).map_err(err)?;
            main_page(&out.join("snapblk.1")).map_err(err)?;
            list(&out, ".1");
            Ok(())
        }
        GenerateCommand::Completions { shells, out } => {
            let err = |source| GenerateError {
                what: "shell completions",
                dir: out.clone(),
                source,
            };
            std::fs::create_dir_all(&out).map_err(err)?;
            let shells = if shells.is_empty() {
                DEFAULT_SHELLS.to_vec()
            } else {
                shells
            };
            let mut cli = Cli::command();
            for shell in shells {
                let path =
                    clap_complete::generate_to(shell, &mut cli, "snapblk", &out).map_err(err)?;
                snapblk::output::line(path.display());
            }
            Ok(())
        }
    }
}

/// Rewrites snapblk(1): the generated sections, then environment, files, exit status.
fn main_page(path: &Path) -> std::io::Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(path, page)
}

/// Prints the files in `dir` ending in `suffix`, sorted.
fn list(dir: &Path, suffix: &str) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    names.sort();
    for n in names {
        snapblk::output::line(n.display());
    }
}
