//! `snapblk serve` refuses what it would otherwise ignore or trip over: single-image flags given
//! with a device graph, and a state directory whose saved graph is damaged (a clear error naming
//! the file, exit status 1, never a panic).

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn serve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .arg("serve")
        .args(args)
        .output()
        .expect("run snapblk")
}

fn graph(dir: &Path) -> String {
    std::fs::write(dir.join("a.img"), vec![0u8; 1 << 20]).unwrap();
    let cfg = format!(
        "[[origin]]\nname = \"a\"\nimage = \"{d}/a.img\"\n\n[[export]]\nnode = \"a\"\nsocket = \"{d}/a.sock\"\n",
        d = dir.display()
    );
    let file = dir.join("graph.toml");
    std::fs::write(&file, cfg).unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn single_image_flags_with_a_device_graph_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = graph(dir.path());
    for flag in [
        &["--readonly"][..],
        &["--num-queues", "4"],
        &["--queue-size", "64"],
        &["--serial", "x"],
        &["--logical-block-size", "4096"],
        &["--direct"],
        &["--writethrough"],
    ] {
        let mut args = vec!["--config", &cfg];
        args.extend_from_slice(flag);
        let out = serve(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag:?}: {err}");
        assert!(
            err.contains(flag[0]) && err.contains("cannot be used with"),
            "{flag:?}: {err}"
        );
    }
    let out = serve(&["--config", &cfg, "--apply-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--state-dir"), "{err}");
}

#[test]
fn a_damaged_state_file_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = graph(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let good = format!(
        r#"{{"graph": {{"origin": [{{"name": "a", "image": "{d}/a.img"}}],
            "export": [{{"node": "a", "socket": "{d}/a.sock", "logical_block_size": 512}}]}}}}"#,
        d = dir.path().display()
    );
    for (text, why) in [
        (
            good.replace("512", "0"),
            "logical_block_size 0 is not 512 or 4096",
        ),
        (
            good.replace("512", "256"),
            "logical_block_size 256 is not 512 or 4096",
        ),
        (
            good.replace("\"node\": \"a\"", "\"node\": \"b\""),
            "unknown node \"b\"",
        ),
        (good[..good.len() / 2].to_owned(), "is not valid"),
        (
            good.replace("{\"graph\"", "{\"merging\": \"s\", \"graph\""),
            "merging snapshot \"s\"",
        ),
    ] {
        std::fs::write(state.join("graph.json"), &text).unwrap();
        let out = serve(&["--config", &cfg, "--state-dir", state.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(
            err.contains("graph.json") && err.contains(why) && !err.contains("panicked"),
            "{text}: {err}"
        );
        assert!(!dir.path().join("a.sock").exists());
    }
}
