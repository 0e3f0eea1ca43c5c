//! `direct = true` (O_DIRECT) origins and their COWs work on every path, on a file system that
//! enforces direct-I/O alignment (ext4 on a loop device with 4096-byte sectors, where a
//! 512-byte O_DIRECT write fails with EINVAL): origin writes with copy-outs into P snapshots,
//! partial-chunk snapshot writes, unaligned buffers and offsets, a COW reload, a merge;
//! through the engine and through a served export. Needs root, loop devices and mkfs.ext4
//! (skipped without, outside CI).

#[path = "support/bounded.rs"]
mod bounded;
mod common;
#[path = "support/loopdev.rs"]
mod loopdev;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use common::{pattern, read, write, Daemon, MIB};
use loopdev::AlignedFs;
use snapblk::storage::{
    BlockDevice, DeviceOptions, FileDevice, LockMode, Origin, OriginConfig, SnapshotConfig,
    SnapshotDevice, StoreKind,
};

fn direct(path: &Path) -> FileDevice {
    let options = DeviceOptions {
        write: true,
        direct: true,
        lock: Some(LockMode::Exclusive),
    };
    FileDevice::open(path, options).unwrap()
}

/// Checks that the file system really refuses unaligned direct I/O (else the test proves
/// nothing).
fn assert_enforces_alignment(dir: &Path) {
    let p = dir.join("probe");
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let at = buf.as_mut_ptr().align_offset(4096);
    let e = f.write_at(&buf[at..at + 512], 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    std::fs::remove_file(p).unwrap();
}

/// A buffer holding `data` at an address that is not 512-byte aligned.
fn unaligned(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; data.len() + 4096];
    let at = v.as_ptr().align_offset(4096) + 3;
    v[at..at + data.len()].copy_from_slice(data);
    v.drain(..at);
    v.truncate(data.len());
    v
}

#[test]
fn the_engine_copies_commits_reloads_and_merges_on_o_direct_files() {
    let Some(fs) = AlignedFs::new(64 * MIB) else {
        return;
    };
    let p = &fs.dir;
    assert_enforces_alignment(p);
    let size = 4 * MIB as usize;
    let orig = pattern(1, size);
    std::fs::write(p.join("base.img"), &orig).unwrap();
    std::fs::File::create(p.join("s.cow"))
        .and_then(|f| f.set_len(8 * MIB))
        .unwrap();
    let mut origin_model = orig.clone();
    let mut snap_model = orig.clone();
    {
        let odev = direct(&p.join("base.img"));
        assert!(odev.is_direct());
        assert_eq!(odev.logical_block_size(), 4096);
        let o = Origin::new(Arc::new(odev), "base", OriginConfig::default());
        let cfg = SnapshotConfig::new("s.cow", StoreKind::Persistent, 32);
        let id = o
            .add_snapshot(Arc::new(direct(&p.join("s.cow"))), cfg)
            .unwrap();
        let snap = SnapshotDevice {
            origin: Arc::new(o),
            id,
        };
        let o = &snap.origin;
        // Origin writes: copy-outs of 16 KiB chunks; aligned, unaligned buffers, and offsets
        // and lengths inside blocks.
        for (k, (off, len)) in [
            (0usize, 4096usize),
            (65536, 65536),
            (200_000, 10_000),
            (1_048_576 + 512, 512),
            (3 * 1_048_576 - 7, 100),
        ]
        .into_iter()
        .enumerate()
        {
            let data = pattern(10 + k as u64, len);
            o.write_at(&unaligned(&data), off as u64).unwrap();
            origin_model[off..off + len].copy_from_slice(&data);
        }
        // Snapshot writes: partial chunks (a copy in first), whole chunks, unaligned ones.
        for (k, (off, len)) in [
            (16384usize * 40 + 4096, 4096usize),
            (16384 * 41, 16384),
            (16384 * 50 + 100, 3000),
            (65536 + 8192, 4096),
        ]
        .into_iter()
        .enumerate()
        {
            let data = pattern(20 + k as u64, len);
            snap.write_at(&unaligned(&data), off as u64).unwrap();
            snap_model[off..off + len].copy_from_slice(&data);
        }
        snap.flush().unwrap();
        o.flush().unwrap();
        let mut back = unaligned(&vec![0u8; size]);
        snap.read_at(&mut back, 0).unwrap();
        assert!(back == snap_model, "the snapshot reads its view");
        o.read_at(&mut back, 0).unwrap();
        assert!(back == origin_model, "the origin reads its own");
        assert_eq!(o.status(id).unwrap().split(' ').count(), 2, "still valid");
        // A clone reset on an O_DIRECT COW (it rewrites the header chunk).
        std::fs::File::create(p.join("r.cow"))
            .and_then(|f| f.set_len(4 * MIB))
            .unwrap();
        let cfg = SnapshotConfig::new("r.cow", StoreKind::Persistent, 8);
        let r = o
            .add_snapshot(Arc::new(direct(&p.join("r.cow"))), cfg)
            .unwrap();
        o.snapshot_write(r, &unaligned(&pattern(50, 5000)), 12345)
            .unwrap();
        o.reset_snapshot(r, false).unwrap();
        let mut back = vec![0u8; 65536];
        o.snapshot_read(r, &mut back, 0).unwrap();
        assert!(
            back[..] == origin_model[..65536],
            "reset to the origin's data"
        );
        assert_eq!(o.exception_count(r).unwrap(), 0);
        o.remove_snapshot(r).unwrap();
    }
    assert!(std::fs::read(p.join("base.img")).unwrap() == origin_model);
    // Reload: the COW's table comes back, then the merge makes the origin the snapshot.
    let o = Origin::new(
        Arc::new(direct(&p.join("base.img"))),
        "base",
        OriginConfig::default(),
    );
    let cfg = SnapshotConfig::new("s.cow", StoreKind::Persistent, 0);
    let id = o
        .add_snapshot(Arc::new(direct(&p.join("s.cow"))), cfg)
        .unwrap();
    // Chunks 0, 4..7, 12, 64, 191 and 192 copied out; 40, 41 and 50 written in the snapshot.
    assert_eq!(o.exception_count(id).unwrap(), 12);
    let mut back = vec![0u8; size];
    o.snapshot_read(id, &mut back, 0).unwrap();
    assert!(back == snap_model, "the reloaded snapshot");
    o.start_merge(id).unwrap();
    o.merge_to_completion().unwrap();
    drop(o);
    assert!(
        std::fs::read(p.join("base.img")).unwrap() == snap_model,
        "merged"
    );
}

#[test]
fn a_direct_graph_is_served_copies_out_reloads_and_merges_on_a_file_system_that_enforces_alignment()
{
    let Some(fs) = AlignedFs::new(64 * MIB) else {
        return;
    };
    let p = &fs.dir;
    assert_enforces_alignment(p);
    let orig = pattern(2, 4 * MIB as usize);
    std::fs::write(p.join("base.img"), &orig).unwrap();
    let d = p.display();
    let toml = format!(
        r#"
[[origin]]
name = "base"
image = "{d}/base.img"
direct = true

[[snapshot]]
name = "s1"
origin = "base"
cow = "{d}/s1.cow"
store = "P"
chunk_size = "16K"
create_size = "8M"

[[export]]
node = "base"
socket = "{d}/base.sock"
logical_block_size = 4096
num_queues = 2

[[export]]
node = "s1"
socket = "{d}/s1.sock"
logical_block_size = 4096
"#
    );
    std::fs::write(p.join("graph.toml"), toml).unwrap();
    let (base, s1, control) = (p.join("base.sock"), p.join("s1.sock"), p.join("ctl.sock"));
    let start = || {
        Daemon::start(
            &[
                "--config",
                p.join("graph.toml").to_str().unwrap(),
                "--state-dir",
                p.join("state").to_str().unwrap(),
                "--control",
                control.to_str().unwrap(),
            ],
            &[&base, &s1, &control],
            &p.join("daemon.log"),
        )
    };
    let d = start();
    let mut origin_model = orig.clone();
    let mut snap_model = orig.clone();
    // Origin writes (copy-outs), snapshot writes of part of a chunk (a copy in first, on a
    // helper thread) and of whole chunks (straight into the COW from the queue).
    for (k, (sector, len)) in [(0u64, 4096usize), (128, 65536), (2048 + 8, 8192)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(30 + k as u64, len);
        write(&base, sector, &data);
        origin_model[sector as usize * 512..][..len].copy_from_slice(&data);
    }
    for (k, (sector, len)) in [(4096u64 + 8, 4096usize), (4096 + 64, 32768), (160, 4096)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(40 + k as u64, len);
        write(&s1, sector, &data);
        snap_model[sector as usize * 512..][..len].copy_from_slice(&data);
    }
    let check = || {
        assert!(read(&base, 0, 4 * MIB as u32) == origin_model, "origin");
        assert!(read(&s1, 0, 4 * MIB as u32) == snap_model, "snapshot");
    };
    check();
    d.stop();
    let d = start();
    check();
    let ran = bounded::snapblk(&[
        "merge",
        "start",
        "s1",
        "--wait",
        "--control",
        control.to_str().unwrap(),
    ]);
    assert!(ran.success, "{}{}", ran.stdout, ran.stderr);
    assert!(read(&base, 0, 4 * MIB as u32) == snap_model, "merged");
    let log = d.log_text();
    d.stop();
    assert!(
        !log.contains("invalidated") && !log.contains("ERROR"),
        "{log}"
    );
}
