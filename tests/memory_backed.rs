//! Images on tmpfs: reads and writes run inline in the queue thread, and a fully allocated
//! image is read and written through a shared mapping. The mapping is retired by a discard
//! (reading the hole must not allocate it again) and survives the image being truncated
//! underneath.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{connect, make_image, pattern, Daemon, MIB};
use snapblk::frontend::BlkStatus;

/// A directory on /dev/shm, or None (the test skips, outside CI) where there is none.
fn shm_dir() -> Option<tempfile::TempDir> {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => Some(d),
        Err(e) => {
            common::require("memory_backed", &format!("/dev/shm ({e})"), false);
            None
        }
    }
}

/// Serves `data` as a dense image in `dir` with default options.
fn serve(dir: &tempfile::TempDir, data: &[u8]) -> (PathBuf, PathBuf, Daemon) {
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    std::fs::write(&img, data).unwrap();
    let d = Daemon::image(&img, &sock, &[]);
    (img, sock, d)
}

/// Cuts the served image to `len` bytes behind the daemon's back.
fn truncate(img: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(img)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn verify_under_load(sock: &Path) {
    for rw in [snapblk::bench::Rw::Mixed, snapblk::bench::Rw::Randwrite] {
        let args = snapblk::bench::BenchArgs {
            socket: sock.to_owned(),
            rw,
            bs: 8192,
            iodepth: 16,
            queues: 2,
            seconds: 1,
            verify: true,
            size: None,
            once: false,
            json: false,
        };
        let r = snapblk::bench::run(&args).expect("verified bench run");
        assert_eq!(r.errors, 0);
        assert!(r.verified_sectors > 0);
    }
}

#[test]
fn sparse_memory_backed_image_runs_inline_and_verifies_under_load() {
    let Some(dir) = shm_dir() else { return };
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    make_image(&img, 32 * MIB);
    let d = Daemon::image(&img, &sock, &["--num-queues", "2"]);
    assert!(!d.log_text().contains("shared mapping"), "{}", d.log_text());
    verify_under_load(&sock);
    d.stop();
}

#[test]
fn dense_memory_backed_image_is_served_through_a_mapping_and_verifies_under_load() {
    let Some(dir) = shm_dir() else { return };
    let img = dir.path().join("d.img");
    let sock = dir.path().join("d.sock");
    let data = pattern(11, 32 * MIB as usize);
    std::fs::write(&img, &data).unwrap();
    let d = Daemon::image(&img, &sock, &["--num-queues", "2"]);
    assert!(
        d.log_text()
            .contains("reads and writes through a shared mapping"),
        "{}",
        d.log_text()
    );
    // The image's own bytes come back, a write reaches the file itself, then writes and
    // reads agree under load on two queues.
    assert!(common::read(&sock, 12345, 65536)[..] == data[12345 * 512..12345 * 512 + 65536]);
    let new = pattern(99, 8192);
    common::write(&sock, 777, &new);
    let file = std::fs::read(&img).unwrap();
    assert!(
        file[777 * 512..777 * 512 + 8192] == new[..],
        "the write is in the file"
    );
    assert!(
        file[..777 * 512] == data[..777 * 512],
        "and nothing before it changed"
    );
    verify_under_load(&sock);
    d.stop();
}

#[test]
fn a_discard_retires_the_mapping_so_reading_the_hole_does_not_allocate_it() {
    let Some(dir) = shm_dir() else { return };
    let (img, sock, d) = serve(&dir, &pattern(12, 16 * MIB as usize));
    let mut fe = connect(&sock);
    let mut q = fe.blk_queue(0, 4, 1 << 20).unwrap();
    assert_eq!(q.discard(0, 8 * 2048).unwrap().status, BlkStatus::Ok);
    let after_discard = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert!(after_discard <= 8 * MIB, "allocated {after_discard}");
    for i in 0..8u64 {
        let (r, z) = q.read(i * 2048, 1 << 20).unwrap();
        assert_eq!(r.status, BlkStatus::Ok);
        assert!(z.iter().all(|&b| b == 0), "MiB {i} reads zeroes");
    }
    let after_reads = std::fs::metadata(&img).unwrap().blocks() * 512;
    assert_eq!(
        after_reads, after_discard,
        "reading the discarded range allocated it again"
    );
    let (_, keep) = q.read(8 * 2048, 1 << 20).unwrap();
    assert!(keep[..] == pattern(12, 16 * MIB as usize)[8 << 20..9 << 20]);
    drop(q);
    drop(fe);
    d.stop();
}

#[test]
fn truncating_a_mapped_image_fails_reads_past_the_new_end_and_the_daemon_lives_on() {
    let Some(dir) = shm_dir() else { return };
    let data = pattern(13, 8 * MIB as usize);
    let (img, sock, d) = serve(&dir, &data);
    assert!(d.log_text().contains("through a shared mapping"));
    let mut fe = connect(&sock);
    let mut q = fe.blk_queue(0, 4, 1 << 20).unwrap();
    let (r, got) = q.read(6 * 2048, 1 << 20).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(got[..] == data[6 << 20..7 << 20]);

    // Someone else cuts the image to 4 MiB while it is served: a mapped read of the lost
    // range faults (SIGBUS). The daemon must answer it with an error, not die.
    truncate(&img, 4 * MIB);
    let (r, _) = q.read(6 * 2048, 4096).unwrap();
    assert_eq!(r.status, BlkStatus::IoErr, "a read past the new end fails");
    let (r, got) = q.read(2048, 4096).unwrap();
    assert_eq!(r.status, BlkStatus::Ok, "the rest of the image still reads");
    assert!(got[..] == data[MIB as usize..MIB as usize + 4096]);
    drop(q);
    drop(fe);
    assert!(
        d.log_text().contains("shrank while mapped"),
        "{}",
        d.log_text()
    );
    d.stop();
}

#[test]
fn a_write_past_the_end_of_a_truncated_mapped_image_lands_in_the_file() {
    let Some(dir) = shm_dir() else { return };
    let (img, sock, d) = serve(&dir, &pattern(14, 8 * MIB as usize));
    let mut fe = connect(&sock);
    let mut q = fe.blk_queue(0, 4, 1 << 20).unwrap();
    truncate(&img, 4 * MIB);
    // The mapped copy faults (SIGBUS) on the lost range; the daemon catches it and writes
    // again with pwritev, which extends the file as a write past its end does.
    let new = pattern(15, 8192);
    assert_eq!(q.write(6 * 2048, &new).unwrap().status, BlkStatus::Ok);
    let file = std::fs::read(&img).unwrap();
    assert_eq!(file.len(), 6 * MIB as usize + 8192);
    assert!(file[6 << 20..] == new[..], "the write is in the file");
    let (r, got) = q.read(6 * 2048, 8192).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(got == new);
    drop(q);
    drop(fe);
    assert!(
        d.log_text().contains("shrank while mapped"),
        "{}",
        d.log_text()
    );
    d.stop();
}
