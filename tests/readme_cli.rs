//! The README's command-line examples run as written (under a temporary root, see
//! support/readme.rs): a `snapblk serve` line is started as a daemon by the test (which waits
//! for its sockets), the other lines run in bash against it. And every option the README
//! names for a snapblk command exists in that command's `--help`.

mod common;
#[path = "support/readme.rs"]
mod readme;

use std::path::PathBuf;
use std::process::Command;

use common::{make_image, pattern, read, write, Daemon, MIB};
use readme::{block, Root, README};
use snapblk::model::GraphConfig;

/// A block split into its `snapblk serve` arguments (the first serve line, `&` and comment
/// dropped) and the rest of its lines.
fn split_serve(text: &str) -> (Vec<String>, String) {
    let mut serve = Vec::new();
    let mut rest = String::new();
    for line in text.lines() {
        match line.trim().strip_prefix("snapblk serve ") {
            Some(args) if serve.is_empty() => {
                let args = args.split(" #").next().unwrap_or_default();
                serve = args
                    .split_whitespace()
                    .filter(|w| *w != "&")
                    .map(str::to_owned)
                    .collect();
            }
            _ => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    assert!(!serve.is_empty(), "no snapblk serve line in:\n{text}");
    (serve, rest)
}

/// The value after `flag` in `args`.
fn value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// Starts `snapblk serve` with a README line's arguments (localized) and waits for the sockets
/// it names: `--socket`, `--control`, and a `--config` file's exports.
fn start(root: &Root, args: &[String]) -> Daemon {
    let args: Vec<String> = args.iter().map(|a| root.localize(a)).collect();
    let mut sockets: Vec<PathBuf> = ["--socket", "--control"]
        .iter()
        .filter_map(|f| value(&args, f).map(PathBuf::from))
        .collect();
    if let Some(cfg) = value(&args, "--config") {
        let text = std::fs::read_to_string(cfg).unwrap();
        let graph = GraphConfig::from_toml(&text).unwrap();
        sockets.extend(graph.exports.into_iter().map(|e| e.socket));
    }
    let refs: Vec<&std::path::Path> = sockets.iter().map(PathBuf::as_path).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&argv, &refs, &root.path().join("daemon.log"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_single_image_serve_example_serves_the_image() {
    let root = Root::new();
    let data = pattern(3, 4 * MIB as usize);
    std::fs::write(root.image("vm1.img"), &data).unwrap();
    let (serve, rest) = split_serve(&block("serve-image"));
    root.run_script("serve-image", &rest);
    let d = start(&root, &serve);
    let sock = root.path().join("run/vm1.sock");
    assert_eq!(read(&sock, 8, 4096), data[4096..8192]);
    d.stop();
}

/// The graph file is served as written; then, with the daemon stopped, the offline COW tools
/// inspect the snapshot's COW and merge it into the origin.
#[test]
fn the_graph_example_serves_and_its_cow_merges_offline() {
    let root = Root::new();
    let golden = root.path().join("lib/golden.img");
    make_image(&golden, 8 * MIB);
    std::fs::write(
        root.path().join("etc/graph.toml"),
        root.localize(&block("graph-toml")),
    )
    .unwrap();
    let (serve, _) = split_serve(&block("serve-graph"));
    let d = start(&root, &serve);
    let job = root.path().join("run/job-1.sock");
    let new = pattern(9, 64 << 10);
    write(&job, 2048, &new);
    d.stop();

    let out = root.run_sh("cow-files");
    let text = stdout(&out);
    assert!(text.contains("exceptions:       16"), "{text}");
    assert!(
        text.contains("chunk size:       8 sectors (4.0 KiB)"),
        "{text}"
    );
    let json: serde_json::Value = text
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .expect("a JSON report");
    assert_eq!(json["exceptions"], 16);
    assert_eq!(json["chunk_bytes"], 4096);
    assert_eq!(json["usage"]["total_bytes"], 2u64 << 30);
    assert!(text.contains("1 run(s) merged"), "{text}");
    assert!(text.contains("100% finished 16/16 exceptions"), "{text}");
    let merged = std::fs::read(&golden).unwrap();
    assert!(
        merged[2048 * 512..2048 * 512 + new.len()] == new[..],
        "the clone's writes are in the origin"
    );
}

/// The live-control walk-through, command by command, against the daemon its first line
/// starts; each output ends with a newline and says what a user needs.
#[test]
fn the_live_control_example_runs_as_written() {
    let root = Root::new();
    make_image(&root.image("vm1.img"), 16 * MIB);
    make_image(&root.image("vm2.img"), 16 * MIB);
    let (serve, rest) = split_serve(&block("live-control"));
    let d = start(&root, &serve);
    let out = root.run_script("live-control", &rest);
    let text = stdout(&out);
    for want in [
        "origin vm1 added",
        "created a, b (writes paused: vm1 ",
        "RESETTABLE",
        "16.0 KiB",
        "snapshot ckpt1 reset",
        "100% finished",
        "merge_finished",
        "clone_reset",
        "snapshot a deleted; COW file kept",
        "snapshot b deleted; COW file removed",
        "exceptions:       0",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    assert!(text.ends_with('\n'));
    let lib = root.path().join("lib");
    assert!(lib.join("a.cow").exists() && !lib.join("b.cow").exists());
    // The listed chunk size is the real one, also for a snapshot created without one.
    assert!(
        text.lines()
            .any(|l| l.starts_with("a ") && l.contains("16.0 KiB")),
        "{text}"
    );
    d.stop();
}

/// The QoS walk-through: limits on export, a group, live changes, and what `stats` shows.
#[test]
fn the_qos_example_runs_as_written() {
    let root = Root::new();
    make_image(&root.image("job-1.img"), 16 * MIB);
    make_image(&root.image("job-2.img"), 16 * MIB);
    let (serve, rest) = split_serve(&block("qos"));
    let d = start(&root, &serve);
    let out = root.run_script("qos", &rest);
    let text = stdout(&out);
    for want in [
        "QoS group tenant-a: iops_total=20000 bps_total=1.0 GiB/s",
        "(job-1): iops_total=5000, in QoS group tenant-a",
        "(job-2): bps_write=100.0 MiB/s, in QoS group tenant-a",
        "RATE (LAST 1 S)",
        "(job-2): unlimited\n",
    ] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let list = text
        .lines()
        .find(|l| l.starts_with("tenant-a "))
        .unwrap_or_else(|| panic!("no group row in:\n{text}"));
    assert!(
        list.contains("job-1.sock") && list.contains("job-2.sock"),
        "{list}"
    );
    d.stop();
}

/// The snapblk command words of a README line: `["origin", "add"]` for `snapblk origin add
/// vm1 --image ...`, with the options the line names.
fn command_and_options(line: &str) -> Option<(Vec<String>, Vec<String>)> {
    let line = line.trim().strip_prefix("snapblk ")?;
    let line = line.split(" #").next().unwrap_or_default();
    let words: Vec<&str> = line.split_whitespace().collect();
    let cmd = words
        .iter()
        .take_while(|w| {
            w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
        })
        .map(|w| w.to_string())
        .collect();
    let opts = words
        .iter()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.split('=').next().unwrap_or_default().to_owned())
        .collect();
    Some((cmd, opts))
}

/// `snapblk WORDS... --help`: the help of the deepest subcommand the words name.
fn help(cmd: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(cmd)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "snapblk {cmd:?} --help failed");
    stdout(&out)
}

#[test]
fn every_option_the_readme_names_is_in_the_commands_help() {
    let mut checked = 0;
    let mut in_code = false;
    let mut lines = Vec::new();
    for line in README.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if in_code && line.trim_start().starts_with("snapblk ") {
            lines.push(line.to_owned());
        }
    }
    // The serve option table: `| `--flag ARG` | meaning | default |`.
    for row in README.lines().filter(|l| l.starts_with("| `--")) {
        let flag = row[3..].split(['`', ' ']).next().unwrap_or_default();
        lines.push(format!("snapblk serve {flag}"));
    }
    assert!(lines.len() > 40, "README lines found: {lines:#?}");
    for line in lines {
        let Some((cmd, opts)) = command_and_options(&line) else {
            continue;
        };
        let text = help(&cmd);
        for o in opts {
            assert!(
                text.contains(&format!("{o} ")) || text.contains(&format!("{o}\n")),
                "the README's `{}` uses {o}, which `snapblk {} --help` does not list",
                line.trim(),
                cmd.join(" ")
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} options checked");
}
