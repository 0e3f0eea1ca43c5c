//! The daemon's data path through the project's vhost-user frontend: reads and writes on
//! several queues, flush, discard holes, serial and geometry, reconnects, clean shutdown.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::{connect, make_image, pattern, Daemon, MIB};
use snapblk::frontend::BlkStatus;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO};

#[test]
fn writes_on_two_queues_read_back_and_reach_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, 16 * MIB);
    let d = Daemon::image(&img, &sock, &["--num-queues", "2"]);
    let mut fe = connect(&sock);
    assert!(fe.has_feature(VIRTIO_BLK_F_MQ));
    assert_eq!(fe.num_queues(), 2);
    let q0 = fe.blk_queue(0, 8, 64 * 1024).unwrap();
    let q1 = fe.blk_queue(1, 8, 64 * 1024).unwrap();
    // Both queues at once, on different threads, disjoint halves of the disk.
    let workers: Vec<_> = [(q0, 0u64), (q1, 1u64)]
        .into_iter()
        .map(|(mut q, half)| {
            std::thread::spawn(move || {
                for i in 0..64u64 {
                    let sector = half * 16384 + i * 128;
                    let data = pattern(half * 1000 + i, 64 * 1024);
                    assert_eq!(q.write(sector, &data).unwrap().status, BlkStatus::Ok);
                }
                for i in 0..64u64 {
                    let sector = half * 16384 + i * 128;
                    let (r, got) = q.read(sector, 64 * 1024).unwrap();
                    assert_eq!(r.status, BlkStatus::Ok);
                    assert_eq!(r.used_len, 64 * 1024 + 1);
                    assert!(
                        got == pattern(half * 1000 + i, 64 * 1024),
                        "queue {half} block {i}"
                    );
                }
                assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    drop(fe);
    d.stop();
    let bytes = std::fs::read(&img).unwrap();
    for half in 0..2u64 {
        for i in 0..64u64 {
            let off = ((half * 16384 + i * 128) * 512) as usize;
            assert!(bytes[off..off + 65536] == pattern(half * 1000 + i, 65536)[..]);
        }
    }
}

#[test]
fn serial_capacity_and_socket_mode() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, 8 * MIB + 4096);
    let d = Daemon::image(
        &img,
        &sock,
        &["--serial", "disk-42", "--logical-block-size", "4096"],
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut fe = connect(&sock);
    assert_eq!(fe.config().capacity_bytes(), 8 * MIB + 4096);
    assert_eq!(fe.config().blk_size, 4096);
    let mut q = fe.blk_queue(0, 4, 8192).unwrap();
    let (r, id) = q.get_id().unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert_eq!(&id[..7], b"disk-42");
    assert!(id[7..].iter().all(|&b| b == 0));
    // 4096-byte logical blocks: a 512-byte read and an unaligned sector are refused.
    assert_eq!(q.read(0, 512).unwrap().0.status, BlkStatus::IoErr);
    assert_eq!(q.read(1, 4096).unwrap().0.status, BlkStatus::IoErr);
    assert_eq!(q.read(8, 4096).unwrap().0.status, BlkStatus::Ok);
    drop(q);
    drop(fe);
    d.stop();
}

#[test]
fn derived_serials_differ_between_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    for n in ["a", "b"] {
        let img = dir.path().join(format!("{n}.img"));
        let sock = dir.path().join(format!("{n}.sock"));
        make_image(&img, MIB);
        let d = Daemon::image(&img, &sock, &[]);
        let mut fe = connect(&sock);
        let mut q = fe.blk_queue(0, 2, 4096).unwrap();
        let (r, id) = q.get_id().unwrap();
        assert_eq!(r.status, BlkStatus::Ok);
        assert!(id[0] != 0, "derived serial is empty");
        ids.push(id);
        drop(q);
        drop(fe);
        d.stop();
    }
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn discard_and_write_zeroes_punch_holes_in_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, 16 * MIB);
    let d = Daemon::image(&img, &sock, &[]);
    let mut fe = connect(&sock);
    assert!(fe.has_feature(VIRTIO_BLK_F_DISCARD));
    let mut q = fe.blk_queue(0, 4, 1 << 20).unwrap();
    for i in 0..8u64 {
        assert_eq!(
            q.write(i * 2048, &pattern(i, 1 << 20)).unwrap().status,
            BlkStatus::Ok
        );
    }
    assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
    let full = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(full >= 8 * MIB, "allocated {full}");
    assert_eq!(q.discard(0, 4 * 2048).unwrap().status, BlkStatus::Ok);
    assert_eq!(
        q.write_zeroes(4 * 2048, 2 * 2048, true).unwrap().status,
        BlkStatus::Ok
    );
    assert_eq!(
        q.write_zeroes(6 * 2048, 2048, false).unwrap().status,
        BlkStatus::Ok
    );
    let after = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(
        after <= full - 6 * MIB,
        "allocated {after} of {full} after discarding 6 MiB"
    );
    let (r, z) = q.read(0, 1 << 20).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(z.iter().all(|&b| b == 0));
    let (_, z) = q.read(6 * 2048, 1 << 20).unwrap();
    assert!(
        z.iter().all(|&b| b == 0),
        "write zeroes without unmap reads zeroes"
    );
    let (_, keep) = q.read(7 * 2048, 1 << 20).unwrap();
    assert!(keep == pattern(7, 1 << 20));
    drop(q);
    drop(fe);
    d.stop();
}

#[test]
fn readonly_export_refuses_writes_and_keeps_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    std::fs::write(&img, pattern(9, MIB as usize)).unwrap();
    let d = Daemon::image(&img, &sock, &["--readonly"]);
    let mut fe = connect(&sock);
    assert!(fe.has_feature(VIRTIO_BLK_F_RO));
    let mut q = fe.blk_queue(0, 4, 4096).unwrap();
    assert_eq!(q.write(0, &[0u8; 4096]).unwrap().status, BlkStatus::IoErr);
    assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
    let (r, got) = q.read(0, 4096).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(got[..] == pattern(9, MIB as usize)[..4096]);
    drop(q);
    drop(fe);
    d.stop();
    assert!(std::fs::read(&img).unwrap() == pattern(9, MIB as usize));
}

#[test]
fn a_new_frontend_can_attach_after_a_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, 4 * MIB);
    let d = Daemon::image(&img, &sock, &["--num-queues", "2"]);
    for round in 0..3u64 {
        let mut fe = connect(&sock);
        let mut q = fe.blk_queue((round % 2) as u16, 4, 4096).unwrap();
        if round > 0 {
            let (_, got) = q.read((round - 1) * 8, 4096).unwrap();
            assert!(
                got == pattern(round - 1, 4096),
                "round {round} sees the last write"
            );
        }
        assert_eq!(
            q.write(round * 8, &pattern(round, 4096)).unwrap().status,
            BlkStatus::Ok
        );
        drop(q);
        drop(fe);
    }
    d.stop();
}

#[test]
fn sigterm_with_requests_in_flight_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, 16 * MIB);
    let d = Daemon::image(&img, &sock, &[]);
    let mut fe = connect(&sock);
    let mut q = fe.blk_queue(0, 32, 64 * 1024).unwrap();
    let mut acked = Vec::new();
    let mut done = Vec::new();
    for round in 0..4u16 {
        for slot in 0..32u16 {
            let sector = u64::from(round * 32 + slot) * 128;
            q.write_data(slot, &pattern(sector, 65536)).unwrap();
            q.submit(
                slot,
                snapblk::frontend::Request::Write { sector, len: 65536 },
            )
            .unwrap();
        }
        q.kick().unwrap();
        while q.in_flight() > 0 {
            done.clear();
            if q.reap(&mut done).unwrap() == 0 {
                q.wait().unwrap();
            }
            for c in &done {
                assert_eq!(c.status, Some(BlkStatus::Ok));
                acked.push(u64::from(round * 32 + c.slot.unwrap()) * 128);
            }
        }
    }
    // Leave a last batch in flight and stop the daemon under it.
    for slot in 0..32u16 {
        let sector = u64::from(128 + slot) * 128;
        q.write_data(slot, &pattern(sector, 65536)).unwrap();
        q.submit(
            slot,
            snapblk::frontend::Request::Write { sector, len: 65536 },
        )
        .unwrap();
    }
    q.kick().unwrap();
    d.stop();
    let bytes = std::fs::read(&img).unwrap();
    for s in acked {
        let off = (s * 512) as usize;
        assert!(
            bytes[off..off + 65536] == pattern(s, 65536)[..],
            "acknowledged write at {s}"
        );
    }
}

#[test]
fn socket_group_gives_the_group_access_and_an_unknown_group_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, MIB);
    // A group this process may give files to: one of its own (numeric).
    let gid = std::fs::metadata(dir.path()).unwrap().gid().to_string();
    let d = Daemon::image(&img, &sock, &["--socket-group", &gid]);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid().to_string(), gid);
    drop(d);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["serve", "--socket-group", "no-such-group-x"])
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-group-x"), "{err}");
}

#[test]
fn bench_into_a_closed_pipe_exits_quietly_instead_of_panicking() {
    // `snapblk bench ... | head -1` after head exited: stdout is a pipe nobody reads.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, 4 * MIB);
    let d = Daemon::image(&img, &sock, &[]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["bench", "--seconds", "1", "--iodepth", "1", "--socket"])
        .arg(&sock)
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    drop(d);
}
