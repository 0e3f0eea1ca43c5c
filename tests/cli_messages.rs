//! What the command line tells a user where a silent answer would mislead: an image whose size
//! is not a whole number of sectors, a second writable export of one node, and refusals that
//! name the flag to use.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{make_image, Daemon, MIB};

fn snapblk(control: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .expect("run snapblk")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn an_image_that_is_not_whole_sectors_is_served_rounded_down_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("odd.img"), vec![7u8; 1000]).unwrap();
    let d = Daemon::image(&p.join("odd.img"), &p.join("odd.sock"), &[]);
    let log = d.log_text();
    assert!(
        log.contains("is 1000 bytes, not a whole number of 512-byte blocks")
            && log.contains("the guest sees 512 bytes, the last 488 are not served"),
        "{log}"
    );
    d.stop();

    let control = p.join("control.sock");
    let d = Daemon::start(
        &["--control", control.to_str().unwrap()],
        &[&control],
        &p.join("graph.log"),
    );
    let image = p.join("odd.img");
    let out = snapblk(
        &control,
        &["origin", "add", "odd", "--image", image.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = snapblk(&control, &["status"]);
    let shown = text(&out.stdout);
    assert!(
        shown.contains("warning: odd:") && shown.contains("the last 488 are not served"),
        "{shown}"
    );
    let out = snapblk(&control, &["status", "odd", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["nodes"][0]["warning"]
        .as_str()
        .unwrap()
        .contains("1000 bytes"));
    d.stop();
}

#[test]
fn a_node_with_a_writable_export_is_exported_twice_only_when_every_export_says_shared() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    make_image(&p.join("a.img"), 4 * MIB);
    let control = p.join("control.sock");
    let d = Daemon::start(
        &["--control", control.to_str().unwrap()],
        &[&control],
        &p.join("log"),
    );
    let sock = |n: &str| p.join(n).to_str().unwrap().to_owned();
    let img = sock("a.img");
    let ok = |args: &[&str]| {
        let out = snapblk(&control, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    };
    ok(&["origin", "add", "a", "--image", &img]);
    ok(&["export", "add", "a", "--socket", &sock("1.sock")]);
    let second = sock("2.sock");
    for extra in [&[][..], &["--readonly"], &["--shared-writable"]] {
        let mut args = vec!["export", "add", "a", "--socket", &second];
        args.extend_from_slice(extra);
        let out = snapblk(&control, &args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(
            err.contains("already exported") && err.contains("--shared-writable"),
            "{extra:?}: {err}"
        );
    }
    // Several read-only exports need no flag; shared-writable ones all say so.
    ok(&["export", "remove", "a"]);
    ok(&[
        "export",
        "add",
        "a",
        "--socket",
        &sock("1.sock"),
        "--readonly",
    ]);
    ok(&[
        "export",
        "add",
        "a",
        "--socket",
        &sock("2.sock"),
        "--readonly",
    ]);
    ok(&["export", "remove", "a"]);
    ok(&[
        "export",
        "add",
        "a",
        "--socket",
        &sock("1.sock"),
        "--shared-writable",
    ]);
    ok(&[
        "export",
        "add",
        "a",
        "--socket",
        &sock("2.sock"),
        "--shared-writable",
    ]);

    // Refusals name the flag that overrides them.
    ok(&[
        "snapshot",
        "create",
        "a",
        "s",
        "--cow",
        &sock("s.cow"),
        "--size",
        "1M",
    ]);
    let out = snapblk(&control, &["origin", "remove", "a"]);
    assert!(
        text(&out.stderr).contains("use --force"),
        "{}",
        text(&out.stderr)
    );
    let out = snapblk(&control, &["export", "remove"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("a node") && text(&out.stderr).contains("--socket"));
    d.stop();

    // The same rule holds in a config file.
    std::fs::write(
        p.join("twice.toml"),
        format!(
            "[[origin]]\nname = \"a\"\nimage = \"{img}\"\n\n[[export]]\nnode = \"a\"\nsocket = \"{}\"\n\n[[export]]\nnode = \"a\"\nsocket = \"{}\"\nreadonly = true\n",
            sock("3.sock"),
            sock("4.sock")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["serve", "--config"])
        .arg(p.join("twice.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("shared_writable = true"),
        "{}",
        text(&out.stderr)
    );
}
