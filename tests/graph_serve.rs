//! `snapblk serve --config`: an origin and snapshots served on their own sockets. Origin writes
//! copy out to the snapshots, snapshot writes stay in their COW, persistent snapshots come back
//! after a restart, and a bad config is refused with a clear error.

mod common;

use std::path::Path;
use std::process::Command;

use common::{connect, pattern, read, write, Daemon, MIB};
use snapblk::frontend::{BlkFrontend, BlkStatus, FrontendOptions};

fn config(dir: &Path, store: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[[origin]]
name = "base"
image = "{d}/base.img"

[[snapshot]]
name = "s1"
origin = "base"
cow = "{d}/s1.cow"
store = "{store}"
chunk_size = "4K"
create_size = "8M"

[[snapshot]]
name = "s2"
origin = "base"
cow = "{d}/s2.cow"
store = "{store}"
chunk_size = "16K"
create_size = "8M"

[[export]]
node = "base"
socket = "{d}/base.sock"
num_queues = 2

[[export]]
node = "s1"
socket = "{d}/s1.sock"

[[export]]
node = "s2"
socket = "{d}/s2.sock"
readonly = true
"#
    )
}

fn start(dir: &Path) -> Daemon {
    let cfg = dir.join("graph.toml");
    let socks: Vec<_> = ["base", "s1", "s2"]
        .iter()
        .map(|n| dir.join(format!("{n}.sock")))
        .collect();
    let refs: Vec<&Path> = socks.iter().map(|p| p.as_path()).collect();
    Daemon::start(
        &["--config", cfg.to_str().unwrap()],
        &refs,
        &dir.join("daemon.log"),
    )
}

#[test]
fn origin_writes_copy_out_and_persistent_snapshots_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    copy_out_and_restart(dir.path());
}

#[test]
fn the_same_on_tmpfs_where_origin_and_snapshot_reads_copy_from_a_mapping() {
    let dir = tempfile::tempdir_in("/dev/shm");
    if !common::require("the_same_on_tmpfs", "/dev/shm", dir.is_ok()) {
        return;
    }
    let dir = dir.unwrap();
    let log = copy_out_and_restart(dir.path());
    assert!(
        log.contains("origin base") && log.contains("through a shared mapping"),
        "{log}"
    );
}

/// Returns the first daemon's log.
fn copy_out_and_restart(p: &Path) -> String {
    let orig = pattern(1, 4 * MIB as usize);
    std::fs::write(p.join("base.img"), &orig).unwrap();
    std::fs::write(p.join("graph.toml"), config(p, "P")).unwrap();
    let d = start(p);
    // Origin write of 64 KiB at 1 MiB; snapshot write of 4 KiB at 2 MiB.
    write(&p.join("base.sock"), 2048, &pattern(2, 65536));
    write(&p.join("s1.sock"), 4096, &pattern(3, 4096));
    let check = |d: &Daemon| {
        let _ = d;
        assert!(
            read(&p.join("base.sock"), 2048, 65536) == pattern(2, 65536),
            "origin has the new data"
        );
        assert!(
            read(&p.join("s1.sock"), 2048, 65536)[..] == orig[MIB as usize..MIB as usize + 65536],
            "s1 keeps the old data"
        );
        assert!(
            read(&p.join("s2.sock"), 2048, 65536)[..] == orig[MIB as usize..MIB as usize + 65536],
            "s2 keeps the old data"
        );
        assert!(
            read(&p.join("s1.sock"), 4096, 4096) == pattern(3, 4096),
            "s1 has its own write"
        );
        assert!(
            read(&p.join("base.sock"), 4096, 4096)[..]
                == orig[2 * MIB as usize..2 * MIB as usize + 4096],
            "origin does not see s1's write"
        );
    };
    check(&d);
    // A read-only snapshot export refuses writes.
    let mut fe = connect(&p.join("s2.sock"));
    let mut q = fe.blk_queue(0, 2, 4096).unwrap();
    assert_eq!(q.write(0, &[1u8; 4096]).unwrap().status, BlkStatus::IoErr);
    drop(q);
    drop(fe);
    let log = d.log_text();
    d.stop();

    // Restart: both persistent snapshots are reloaded from their COW files.
    let d = start(p);
    check(&d);
    d.stop();

    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["cow", "inspect"])
        .arg(p.join("s1.cow"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // 16 copied chunks + 1 snapshot write: (2 + 17) * 8 sectors allocated of 16384.
    assert!(text.contains("152/16384 16"), "{text}");
    log
}

#[test]
fn transient_snapshots_work_and_bad_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let orig = pattern(7, 2 * MIB as usize);
    std::fs::write(p.join("base.img"), &orig).unwrap();
    std::fs::write(p.join("graph.toml"), config(p, "N")).unwrap();
    let d = start(p);
    write(&p.join("base.sock"), 0, &pattern(8, 8192));
    assert!(read(&p.join("s1.sock"), 0, 8192)[..] == orig[..8192]);
    d.stop();

    std::fs::write(
        p.join("bad.toml"),
        config(p, "N").replace("origin = \"base\"", "origin = \"nope\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["serve", "--config"])
        .arg(p.join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown origin") && err.contains("bad.toml"),
        "{err}"
    );

    // Chunk size 0 for a transient store is a clear error naming the COW.
    let zero = config(p, "N").replace("chunk_size = \"4K\"", "chunk_size = 0");
    std::fs::write(p.join("zero.toml"), zero).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["serve", "--config"])
        .arg(p.join("zero.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Chunk size not set") && err.contains("s1.cow"),
        "{err}"
    );
}

/// A slow origin write (copy-outs into two snapshots, group commits) followed by 15 fast reads
/// the queue serves directly; returns the order the 16 requests completed in.
fn slow_write_then_fast_reads(inflight: bool) -> Vec<u16> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("base.img"), pattern(7, 4 * MIB as usize)).unwrap();
    std::fs::write(p.join("graph.toml"), config(p, "P")).unwrap();
    let d = start(p);
    let opts = FrontendOptions {
        inflight,
        ..FrontendOptions::default()
    };
    let mut fe = BlkFrontend::connect(p.join("base.sock"), opts).unwrap();
    assert_eq!(fe.inflight().is_some(), inflight);
    // Write-through: the write (which copies 256 chunks out first) completes only once it
    // landed, not when the engine took it.
    fe.set_writeback(false).unwrap();
    let mut q = fe.blk_queue(0, 16, 1 << 20).unwrap();
    q.write_data(0, &pattern(8, 1 << 20)).unwrap();
    q.submit(
        0,
        snapblk::frontend::Request::Write {
            sector: 0,
            len: 1 << 20,
        },
    )
    .unwrap();
    for slot in 1..16u16 {
        let sector = 4096 + u64::from(slot) * 8;
        let req = snapblk::frontend::Request::Read { sector, len: 4096 };
        q.submit(slot, req).unwrap();
    }
    q.kick().unwrap();
    let mut order = Vec::new();
    let mut done = Vec::new();
    while q.in_flight() > 0 {
        done.clear();
        if q.reap(&mut done).unwrap() == 0 {
            q.wait().unwrap();
        }
        for c in &done {
            assert_eq!(c.status, Some(BlkStatus::Ok));
            order.push(c.slot.unwrap());
        }
    }
    drop(q);
    drop(fe);
    drop(d);
    order
}

#[test]
fn without_inflight_tracking_used_entries_are_published_in_pop_order() {
    // The reads finish first, but their used entries wait for the write's, so the used index
    // always counts a prefix of the available ring (what a frontend restarting the ring after
    // `kill -9` without an inflight region relies on).
    assert_eq!(
        slow_write_then_fast_reads(false),
        (0..16).collect::<Vec<u16>>()
    );
}

#[test]
fn with_inflight_tracking_fast_reads_complete_before_a_slow_write() {
    let order = slow_write_then_fast_reads(true);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..16).collect::<Vec<u16>>(),
        "each once: {order:?}"
    );
    assert_ne!(order[0], 0, "a read waited for the write: {order:?}");
}

#[test]
fn snapshot_cow_breaks_flushed_in_write_back_mode_survive_kill_9() {
    cow_breaks_survive_kill_9(true);
}

#[test]
fn snapshot_cow_breaks_completed_in_write_through_mode_survive_kill_9() {
    cow_breaks_survive_kill_9(false);
}

/// 32 writes into a fresh snapshot at once, whole 4 KiB chunks (the queue writes them into new
/// COW chunks; write-back: they complete at once and a FLUSH commits them; write-through: they
/// complete once their exceptions are committed), two-chunk writes, and partial-chunk writes
/// (which copy the old chunk in first); then `kill -9`.
fn cow_breaks_survive_kill_9(writeback: bool) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let orig = pattern(5, 4 * MIB as usize);
    std::fs::write(p.join("base.img"), &orig).unwrap();
    std::fs::write(p.join("graph.toml"), config(p, "P")).unwrap();
    let mut d = start(p);
    let mut fe = connect(&p.join("s1.sock"));
    fe.set_writeback(writeback).unwrap();
    let mut q = fe.blk_queue(0, 32, 8192).unwrap();
    let mut expect = orig.clone();
    for round in 0..4u64 {
        for slot in 0..32u16 {
            let i = round * 32 + u64::from(slot);
            let (off, len) = match slot % 4 {
                3 => (i * 16384 + 1024, 2048),
                2 => (i * 16384, 8192),
                _ => (i * 16384, 4096),
            };
            let data = pattern(100 + i, len);
            expect[off as usize..off as usize + len].copy_from_slice(&data);
            q.write_data(slot, &data).unwrap();
            let req = snapblk::frontend::Request::Write {
                sector: off / 512,
                len: len as u32,
            };
            q.submit(slot, req).unwrap();
        }
        q.kick().unwrap();
        let mut done = Vec::new();
        while q.in_flight() > 0 {
            done.clear();
            if q.reap(&mut done).unwrap() == 0 {
                q.wait().unwrap();
            }
            for c in &done {
                assert_eq!(c.status, Some(BlkStatus::Ok));
            }
        }
    }
    if writeback {
        assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
    }
    drop(q);
    drop(fe);
    assert!(!d.signal_and_wait(libc::SIGKILL).success());

    let d = start(p);
    let snap = read(&p.join("s1.sock"), 0, 4 * MIB as u32);
    assert!(
        snap == expect,
        "the snapshot has every write completed (before the flush)"
    );
    assert!(
        read(&p.join("base.sock"), 0, 4 * MIB as u32) == orig,
        "the origin has none"
    );
    d.stop();
}
