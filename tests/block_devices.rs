//! Block devices work everywhere images do: graph origins and COW stores on loop devices,
//! served and written through the frontend and reloaded after a restart; `cow inspect` and
//! `cow merge` on loop devices; a 4096-byte-sector device reports 4096-byte blocks, which
//! snapshot chunks and exports must respect; discards and write-zeroes on block devices, in
//! part-blocks too. Needs root and loop devices (skipped without, outside CI).

#[path = "support/bounded.rs"]
mod bounded;
mod common;
#[path = "support/loopdev.rs"]
mod loopdev;

use std::os::unix::io::AsRawFd;
use std::path::Path;

use common::{connect, pattern, read, write, Daemon, MIB};
use loopdev::{loop_devices_available, require, LoopDev};
use snapblk::frontend::BlkStatus;
use snapblk::graph::Graph;
use snapblk::model::GraphConfig;
use snapblk::storage::{BlockDevice, DeviceOptions, FileDevice};

fn graph_toml(p: &Path, origin: &str, cow: &str, block: u32) -> String {
    let d = p.display();
    format!(
        r#"
[[origin]]
name = "base"
image = "{origin}"

[[snapshot]]
name = "s1"
origin = "base"
cow = "{cow}"
store = "P"
chunk_size = "4K"

[[export]]
node = "base"
socket = "{d}/base.sock"
logical_block_size = {block}

[[export]]
node = "s1"
socket = "{d}/s1.sock"
logical_block_size = {block}
"#
    )
}

fn start(p: &Path) -> Daemon {
    Daemon::start(
        &["--config", p.join("graph.toml").to_str().unwrap()],
        &[&p.join("base.sock"), &p.join("s1.sock")],
        &p.join("daemon.log"),
    )
}

/// Reads a whole block device (or file).
fn contents(path: &Path, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, 0).unwrap();
    b
}

#[test]
fn a_graph_on_loop_devices_serves_reloads_inspects_and_merges() {
    if !require("root and loop devices", loop_devices_available()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let size = 8 * MIB as usize;
    let orig = pattern(1, size);
    std::fs::write(p.join("origin.bin"), &orig).unwrap();
    let o = LoopDev::attach(&p.join("origin.bin"), None);
    let c = LoopDev::new_in(p, "cow.bin", 8 * MIB, None);
    std::fs::write(
        p.join("graph.toml"),
        graph_toml(p, o.as_str(), c.as_str(), 512),
    )
    .unwrap();
    let d = start(p);
    let log = d.log_text();
    assert!(log.contains(&format!("{size} bytes")), "{log}");
    // Origin write (copies out into s1), snapshot write.
    write(&p.join("base.sock"), 2048, &pattern(2, 65536));
    write(&p.join("s1.sock"), 4096, &pattern(3, 8192));
    let check = || {
        assert!(read(&p.join("base.sock"), 2048, 65536) == pattern(2, 65536));
        assert!(read(&p.join("s1.sock"), 2048, 65536)[..] == orig[MIB as usize..][..65536]);
        assert!(read(&p.join("s1.sock"), 4096, 8192) == pattern(3, 8192));
        assert!(read(&p.join("base.sock"), 4096, 8192)[..] == orig[2 * MIB as usize..][..8192]);
    };
    check();
    // Discard and write-zeroes reach the origin device.
    let mut fe = connect(&p.join("base.sock"));
    let mut q = fe.blk_queue(0, 2, 65536).unwrap();
    assert_eq!(
        q.write_zeroes(8192, 16, false).unwrap().status,
        BlkStatus::Ok
    );
    assert_eq!(q.discard(8192 + 16, 16).unwrap().status, BlkStatus::Ok);
    drop(q);
    drop(fe);
    assert!(read(&p.join("base.sock"), 8192, 16384)
        .iter()
        .all(|&b| b == 0));
    assert!(read(&p.join("s1.sock"), 8192, 16384)[..] == orig[4 * MIB as usize..][..16384]);
    d.stop();
    // The persistent snapshot comes back from the COW device.
    let d = start(p);
    check();
    d.stop();

    let ran = bounded::snapblk(&["cow", "inspect", c.as_str()]);
    assert!(ran.success, "{}", ran.stderr);
    // 16 + 4 copied chunks and 2 written ones, after the header and area 0.
    assert!(
        ran.stdout.contains("exceptions:       22"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("16384"),
        "the COW's size: {}",
        ran.stdout
    );

    let ran = bounded::snapblk(&["cow", "merge", "--origin", o.as_str(), c.as_str()]);
    assert!(ran.success, "{}", ran.stderr);
    let mut expect = orig.clone();
    expect[2 * MIB as usize..][..8192].copy_from_slice(&pattern(3, 8192));
    assert!(
        contents(&o.path, size) == expect,
        "the origin holds the snapshot's view"
    );
}

#[test]
fn a_4096_byte_sector_loop_device_reports_4096_byte_blocks() {
    if !require("root and loop devices", loop_devices_available()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let o = LoopDev::new_in(p, "origin.bin", 4 * MIB, Some(4096));
    let c = LoopDev::new_in(p, "cow.bin", 4 * MIB, Some(4096));
    {
        let rw = DeviceOptions {
            write: true,
            ..DeviceOptions::default()
        };
        let dev = FileDevice::open(&o.path, rw).unwrap();
        assert_eq!(dev.size(), 4 * MIB);
        assert_eq!(dev.logical_block_size(), 4096);
        assert!(dev.physical_block_size() >= 4096);
        assert!(dev.is_block_device());
        let file = std::fs::File::open(&o.path).unwrap();
        assert!(
            !snapblk::storage::memory_backed(file.as_raw_fd()),
            "a device node on devtmpfs is not memory"
        );
        // Write-zeroes and discards of whole and partial blocks.
        dev.write_at(&[7u8; 16384], 0).unwrap();
        dev.write_zeroes(512, 1024).unwrap();
        dev.discard(4096, 4096 + 100).unwrap();
        let mut b = [0u8; 16384];
        dev.read_at(&mut b, 0).unwrap();
        let mut expect = [7u8; 16384];
        expect[512..1536].fill(0);
        expect[4096..8292].fill(0);
        assert!(b == expect);
    }
    // serve --image refuses 512-byte blocks and shows 4096.
    let sock = p.join("img.sock");
    let ran = bounded::snapblk(&[
        "serve",
        "--socket",
        sock.to_str().unwrap(),
        "--image",
        o.as_str(),
    ]);
    assert!(!ran.success);
    assert!(
        ran.stderr.contains("logical block size 512")
            && ran.stderr.contains("4096-byte blocks")
            && ran.stderr.contains(o.as_str()),
        "{}",
        ran.stderr
    );
    let d = Daemon::image(&o.path, &sock, &["--logical-block-size", "4096"]);
    let fe = connect(&sock);
    assert_eq!(fe.config().blk_size, 4096);
    drop(fe);
    d.stop();

    // In a graph: a chunk smaller than a block is refused, and so is an export of 512-byte
    // blocks.
    let mut cfg = GraphConfig::from_toml(&graph_toml(p, o.as_str(), c.as_str(), 512)).unwrap();
    cfg.snapshots[0].chunk_size = snapblk::model::ByteSize(512);
    let e = Graph::build(&cfg)
        .err()
        .expect("a 512-byte chunk on 4096-byte blocks");
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(chain.contains("4096"), "{chain}");
    cfg.snapshots[0].chunk_size = snapblk::model::ByteSize(4096);
    let g = Graph::build(&cfg).unwrap();
    for node in ["base", "s1"] {
        let h = g.node(node).unwrap();
        assert_eq!(h.block.0, 4096);
        let e = h.check_block_size(node, 512).unwrap_err();
        assert!(e.to_string().contains("4096-byte blocks"), "{e}");
        assert!(h.check_block_size(node, 4096).is_ok());
    }
}
