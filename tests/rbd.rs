//! RBD origins against a real one-node Ceph cluster (scripts/ceph-cluster.sh, in a temporary
//! directory), through the project's frontend: what the guest writes lands in the RBD image
//! (read back with the `rbd` tool), discards and write-zeroes read back as zeroes, a clone of
//! an RBD snapshot added live reads the golden data and keeps its writes in its COW file, the
//! clear errors (no image, no pool, no permission, no cluster, a writable export of a read-only
//! RBD snapshot), and the cluster going away: requests fail with an I/O error after the op
//! timeout, the daemon stays up, and I/O works again once the cluster is back; a writable RBD
//! origin copies a chunk into its local snapshot before an origin write lands, and a restart
//! from the state directory brings it all back. One cluster serves every step, so it is one
//! test.
//!
//! `unreachable_cluster_is_a_clear_error_within_the_timeout` needs only librbd, no cluster.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, pattern, read, require, write, Daemon, MIB};
use snapblk::frontend::BlkStatus;

const SNAPBLK: &str = env!("CARGO_BIN_EXE_snapblk");

fn have_librbd() -> bool {
    Command::new("sh")
        .args(["-c", "ldconfig -p | grep -q librbd.so.1"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A running cluster; destroyed on drop.
struct Cluster {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Cluster {
    fn start() -> Cluster {
        // Short: the daemons' admin sockets live under it (107-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("rbt")
            .tempdir_in("/tmp")
            .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ceph-cluster.sh");
        let c = Cluster { dir, script };
        c.script("start");
        c
    }

    fn script(&self, cmd: &str) {
        let st = Command::new("bash")
            .arg(&self.script)
            .arg(cmd)
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "ceph-cluster.sh {cmd} failed");
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("ceph.conf")
    }

    /// Runs `rbd ARGS` against the cluster; returns stdout.
    fn rbd(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new("rbd")
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rbd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A copy of the conf with `extra` lines in its [global] section.
    fn conf_with(&self, name: &str, extra: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.conf()).unwrap();
        let text = text.replacen("[global]", &format!("[global]\n{extra}"), 1);
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// `snapblk serve ARGS` that must fail; returns its error output.
fn serve_fails(args: &[&str]) -> String {
    let out = Command::new(SNAPBLK)
        .arg("serve")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `snapblk ARGS --control CONTROL`: whether it succeeded, and its output.
fn try_cli(control: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(SNAPBLK)
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn cli(control: &Path, args: &[&str]) -> String {
    let (ok, text) = try_cli(control, args);
    assert!(ok, "snapblk {args:?}: {text}");
    text
}

#[test]
fn unreachable_cluster_is_a_clear_error_within_the_timeout() {
    if !require("rbd", "librbd1", have_librbd()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens, so every connect is refused and retried.
    let conf = dir.path().join("dead.conf");
    std::fs::write(
        &conf,
        "[global]\nmon_host = 127.0.0.1:1\nauth_client_required = none\nclient_mount_timeout = 2\n",
    )
    .unwrap();
    let sock = dir.path().join("d.sock");
    let start = Instant::now();
    let err = serve_fails(&[
        "--socket",
        sock.to_str().unwrap(),
        "--image",
        "rbd:rbd/golden",
        "--ceph-conf",
        conf.to_str().unwrap(),
    ]);
    let took = start.elapsed();
    println!("unreachable cluster refused in {took:?}: {err}");
    assert!(err.contains("cannot reach the Ceph cluster"), "{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(!sock.exists());
    // A conf that names no monitor.
    let empty = dir.path().join("empty.conf");
    std::fs::write(&empty, "[global]\nauth_client_required = none\n").unwrap();
    let err = serve_fails(&[
        "--socket",
        sock.to_str().unwrap(),
        "--image",
        "rbd:rbd/golden",
        "--ceph-conf",
        empty.to_str().unwrap(),
    ]);
    assert!(err.contains("no Ceph monitor address"), "{err}");
    // A malformed name never reaches librbd.
    let err = serve_fails(&["--socket", sock.to_str().unwrap(), "--image", "rbd:golden"]);
    assert!(err.contains("rbd:POOL/IMAGE"), "{err}");
}

#[test]
fn rbd_origin_serves_clones_and_survives_the_cluster_going_away() {
    let ok = have_librbd() && common::have("ceph-mon") && common::have("rbd");
    if !require(
        "rbd",
        "Ceph (ceph-mon, ceph-osd, ceph-mgr, rbd, librbd1)",
        ok,
    ) {
        return;
    }
    let cluster = Cluster::start();
    let conf = cluster.conf();
    let conf_s = conf.to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    cluster.rbd(&["create", "--size", "64M", "rbd/vol"]);

    // 1. One image: writes land in RBD, discard and write-zeroes read back as zeroes.
    let sock = work.path().join("vol.sock");
    let d = Daemon::image(
        Path::new("rbd:rbd/vol"),
        &sock,
        &["--ceph-conf", conf_s, "--num-queues", "2"],
    );
    let data = pattern(1, (4 * MIB) as usize);
    write(&sock, 2048, &data);
    assert!(read(&sock, 2048, 4 * MIB as u32) == data);
    {
        let mut fe = connect(&sock);
        let mut q = fe.blk_queue(0, 4, 131072).unwrap();
        assert_eq!(q.discard(2048, 128).unwrap().status, BlkStatus::Ok);
        assert_eq!(
            q.write_zeroes(2048 + 128, 128, false).unwrap().status,
            BlkStatus::Ok
        );
        let (r, back) = q.read(2048, 131072).unwrap();
        assert_eq!(r.status, BlkStatus::Ok);
        assert!(
            back.iter().all(|&b| b == 0),
            "discarded and zeroed range reads zeroes"
        );
        assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
        // Out of range: an error for the guest, nothing for the image.
        let (r, _) = q.read(64 * MIB / 512, 512).unwrap();
        assert_ne!(r.status, BlkStatus::Ok);
    }
    d.stop();
    let exported = cluster.rbd(&["export", "rbd/vol", "-"]);
    assert_eq!(exported.len() as u64, 64 * MIB);
    let at = 2048 * 512;
    assert!(exported[at..at + 131072].iter().all(|&b| b == 0));
    assert!(exported[at + 131072..at + data.len()] == data[131072..]);

    // 2. Errors: a clear message each, no socket left behind.
    let s = sock.to_str().unwrap();
    let err = serve_fails(&[
        "--socket",
        s,
        "--image",
        "rbd:rbd/nope",
        "--ceph-conf",
        conf_s,
    ]);
    assert!(
        err.contains("RBD image rbd:rbd/nope does not exist"),
        "{err}"
    );
    let err = serve_fails(&[
        "--socket",
        s,
        "--image",
        "rbd:nopool/vol",
        "--ceph-conf",
        conf_s,
    ]);
    assert!(err.contains("RBD pool \"nopool\" does not exist"), "{err}");
    let out = Command::new("ceph")
        .args([
            "-c",
            conf_s,
            "auth",
            "get-or-create",
            "client.weak",
            "mon",
            "allow r",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let keyring = work.path().join("weak.keyring");
    std::fs::write(&keyring, &out.stdout).unwrap();
    let err = serve_fails(&[
        "--socket",
        s,
        "--image",
        "rbd:rbd/vol",
        "--ceph-conf",
        conf_s,
        "--ceph-id",
        "weak",
        "--ceph-keyring",
        keyring.to_str().unwrap(),
    ]);
    assert!(
        err.contains("permission denied opening RBD image rbd:rbd/vol as client.weak"),
        "{err}"
    );

    // 3. A clone of an RBD snapshot, added live: reads the golden data, keeps its writes.
    cluster.rbd(&["snap", "create", "rbd/vol@gold"]);
    let state = work.path().join("state");
    let control = work.path().join("control.sock");
    let graph = Daemon::start(
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &[&control],
        &work.path().join("graph.log"),
    );
    cli(
        &control,
        &[
            "origin",
            "add",
            "golden",
            "--image",
            "rbd:rbd/vol@gold",
            "--ceph-conf",
            conf_s,
        ],
    );
    // An RBD snapshot is read-only: a writable export of it is refused, with the reason.
    let gsock = work.path().join("golden.sock");
    let (ok, text) = try_cli(
        &control,
        &[
            "export",
            "add",
            "golden",
            "--socket",
            gsock.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && text.contains("read-only RBD snapshot rbd:rbd/vol@gold"),
        "{text}"
    );
    cli(
        &control,
        &[
            "export",
            "add",
            "golden",
            "--socket",
            gsock.to_str().unwrap(),
            "--readonly",
        ],
    );
    assert!(read(&gsock, 2048 + 256, 65536) == data[131072..131072 + 65536]);
    let cow = work.path().join("vm1.cow");
    cli(
        &control,
        &[
            "snapshot",
            "create",
            "golden",
            "vm1",
            "--cow",
            cow.to_str().unwrap(),
            "--chunk-size",
            "4K",
            "--size",
            "64M",
        ],
    );
    let vm1 = work.path().join("vm1.sock");
    cli(
        &control,
        &["export", "add", "vm1", "--socket", vm1.to_str().unwrap()],
    );
    assert!(read(&vm1, 2048 + 256, 65536) == data[131072..131072 + 65536]);
    let mine = pattern(7, 65536);
    write(&vm1, 2048 + 256, &mine);
    assert!(read(&vm1, 2048 + 256, 65536) == mine);
    let gold = cluster.rbd(&["export", "rbd/vol@gold", "-"]);
    assert!(gold == exported, "the golden snapshot is unchanged");

    // A writable RBD origin with a local snapshot: an origin write first copies the old
    // chunk into the snapshot's COW (read from RBD), then lands in RBD.
    cluster.rbd(&["create", "--size", "16M", "rbd/live"]);
    let before = pattern(21, 65536);
    cli(
        &control,
        &[
            "origin",
            "add",
            "live",
            "--image",
            "rbd:rbd/live",
            "--ceph-conf",
            conf_s,
        ],
    );
    let live = work.path().join("live.sock");
    cli(
        &control,
        &["export", "add", "live", "--socket", live.to_str().unwrap()],
    );
    write(&live, 64, &before);
    let cow2 = work.path().join("s2.cow");
    cli(
        &control,
        &[
            "snapshot",
            "create",
            "live",
            "s2",
            "--cow",
            cow2.to_str().unwrap(),
            "--chunk-size",
            "4K",
            "--size",
            "16M",
        ],
    );
    let s2 = work.path().join("s2.sock");
    cli(
        &control,
        &[
            "export",
            "add",
            "s2",
            "--socket",
            s2.to_str().unwrap(),
            "--readonly",
        ],
    );
    let after = pattern(22, 65536);
    write(&live, 64, &after);
    assert!(read(&live, 64, 65536) == after);
    assert!(
        read(&s2, 64, 65536) == before,
        "the snapshot keeps the old data"
    );
    let in_rbd = cluster.rbd(&["export", "rbd/live", "-"]);
    assert!(in_rbd[64 * 512..64 * 512 + 65536] == after[..]);

    // 4. The cluster goes away under a plain export: errors after the op timeout, the daemon
    //    stays up, I/O works again once the cluster is back.
    let short = cluster.conf_with("short.conf", "rados_osd_op_timeout = 3");
    let sock2 = work.path().join("vol2.sock");
    let d = Daemon::image(
        Path::new("rbd:rbd/vol"),
        &sock2,
        &["--ceph-conf", short.to_str().unwrap()],
    );
    cluster.script("stop-osd");
    let start = Instant::now();
    let mut fe = connect(&sock2);
    let mut q = fe.blk_queue(0, 2, 4096).unwrap();
    let (r, _) = q.read(0, 4096).unwrap();
    let failed_after = start.elapsed();
    println!(
        "with the OSD down a read failed ({:?}) after {failed_after:?}",
        r.status
    );
    assert_eq!(r.status, BlkStatus::IoErr);
    cluster.script("start-osd");
    let again = Instant::now();
    let (r, back) = q.read(4096, 4096).unwrap();
    println!(
        "with the OSD back: {:?} after {:?}",
        r.status,
        again.elapsed()
    );
    assert_eq!(r.status, BlkStatus::Ok);
    let at = (4096 - 2048) * 512;
    assert!(back[..] == data[at..at + 4096]);
    drop(q);
    drop(fe);
    write(&sock2, 8, &mine);
    assert!(read(&sock2, 8, 65536) == mine);
    d.stop();

    // The state directory brings the RBD origins, their snapshots and exports back.
    graph.stop();
    let graph = Daemon::start(
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &[&control, &vm1, &live, &s2, &gsock],
        &work.path().join("graph2.log"),
    );
    assert!(read(&vm1, 2048 + 256, 65536) == mine);
    assert!(read(&s2, 64, 65536) == before);
    assert!(read(&live, 64, 65536) == after);
    graph.stop();
}
