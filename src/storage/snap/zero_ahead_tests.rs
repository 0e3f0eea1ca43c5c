//! Tests of zero-ahead: it never writes over an allocated chunk, keeps its lead written, and
//! starts only where it helps.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use super::*;
use crate::storage::FileDevice;

const CHUNK: u64 = 4096;

fn device(dir: &str, len: u64) -> Arc<dyn BlockDevice> {
    let f = tempfile::tempfile_in(dir).unwrap();
    f.set_len(len).unwrap();
    Arc::new(FileDevice::from_file(f).unwrap())
}

/// Waits (on the thread's condvar) until the lead is written through `end`, or the thread
/// stopped.
fn wait_written(z: &ZeroAhead, end: u64) -> u64 {
    let sh = &z.shared;
    let mut s = sh.lock();
    while s.written < end && !s.stop {
        s = sh.wait(s);
    }
    s.written
}

#[test]
fn no_zero_lands_on_a_chunk_allocated_before_it_and_written_after() {
    let dev = device(env!("CARGO_MANIFEST_DIR"), 4 << 20);
    // A small lead and piece, so the allocator keeps running into pieces being written.
    let z = ZeroAhead::spawn(dev.clone(), "t", 0, 0, 16 * CHUNK, 2 * CHUNK).unwrap();
    let chunks = (4 << 20) / CHUNK;
    for c in 0..chunks {
        z.allocated((c + 1) * CHUNK);
        dev.write_at(&[(c % 251 + 1) as u8; CHUNK as usize], c * CHUNK)
            .unwrap();
    }
    drop(z);
    let mut buf = vec![0u8; CHUNK as usize];
    for c in 0..chunks {
        dev.read_at(&mut buf, c * CHUNK).unwrap();
        let want = (c % 251 + 1) as u8;
        assert!(buf.iter().all(|&b| b == want), "chunk {c} was overwritten");
    }
}

#[test]
fn the_lead_is_written_with_zeroes_past_the_allocation_and_no_further() {
    let dev = device(env!("CARGO_MANIFEST_DIR"), 1 << 20);
    let z = ZeroAhead::spawn(
        dev.clone(),
        "t",
        8 * CHUNK,
        8 * CHUNK,
        32 * CHUNK,
        8 * CHUNK,
    )
    .unwrap();
    // Nothing before the first allocation (a snapshot's creation, inside a checkpoint's
    // pause, shares the disk with no zeroes): the thread waits for it.
    assert_eq!(z.shared.lock().written, 8 * CHUNK);
    let fd = dev.raw_fd().unwrap();
    // SAFETY: lseek on a descriptor the device keeps open.
    let data = unsafe { libc::lseek(fd, 0, libc::SEEK_DATA) };
    assert_eq!(data, -1, "nothing written before the first allocation");
    // Then written up to the full lead, once chunk 8 is allocated (and written).
    dev.write_at(&[7u8; 4096], 7 * CHUNK).unwrap();
    dev.write_at(&[8u8; 4096], 8 * CHUNK).unwrap();
    z.allocated(9 * CHUNK);
    assert_eq!(wait_written(&z, 41 * CHUNK), 41 * CHUNK);
    z.allocated(30 * CHUNK);
    assert_eq!(wait_written(&z, 62 * CHUNK), 62 * CHUNK);
    // SAFETY: lseek on a descriptor the device keeps open.
    let hole = unsafe { libc::lseek(fd, 7 * CHUNK as libc::off_t, libc::SEEK_HOLE) };
    assert_eq!(
        hole as u64,
        62 * CHUNK,
        "allocated through the lead, sparse after it"
    );
    let mut b = [0u8; 4096];
    dev.read_at(&mut b, 7 * CHUNK).unwrap();
    assert_eq!(b, [7u8; 4096], "an allocated chunk: untouched");
    // Near the COW's end the lead stops at the end.
    z.allocated((1 << 20) - 4 * CHUNK);
    assert_eq!(wait_written(&z, 1 << 20), 1 << 20);
}

#[test]
fn starts_on_a_disk_file_system_only_and_skips_what_is_written() {
    let disk = tempfile::tempfile_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    disk.set_len(1 << 20).unwrap();
    let on_disk = on_disk_file_system(disk.as_raw_fd());
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::from_file(disk).unwrap());
    let z = ZeroAhead::start(dev.clone(), "t", 2 * CHUNK);
    assert_eq!(z.is_some(), on_disk);
    drop(z);
    // A COW written in full (preallocated): nothing to do, nothing rewritten.
    dev.write_at(&vec![5u8; 1 << 20], 0).unwrap();
    if let Some(z) = ZeroAhead::start(dev.clone(), "t", 2 * CHUNK) {
        assert_eq!(wait_written(&z, 1 << 20), 1 << 20);
    }
    let mut b = vec![0u8; 1 << 20];
    dev.read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 5));
    if let Ok(shm) = tempfile::tempfile_in("/dev/shm") {
        shm.set_len(1 << 20).unwrap();
        let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::from_file(shm).unwrap());
        assert!(
            ZeroAhead::start(dev, "t", 0).is_none(),
            "tmpfs: no zero-ahead"
        );
    }
}

#[test]
fn large_commits_pause_it_and_small_ones_resume_it() {
    let dev = device(env!("CARGO_MANIFEST_DIR"), 4 << 20);
    let z = ZeroAhead::spawn(
        dev.clone(),
        "t",
        2 * CHUNK,
        2 * CHUNK,
        32 * CHUNK,
        8 * CHUNK,
    )
    .unwrap();
    z.allocated(3 * CHUNK);
    assert_eq!(wait_written(&z, 35 * CHUNK), 35 * CHUNK);
    for _ in 0..32 {
        z.committed(1 << 20);
    }
    assert!(z.shared.lock().paused());
    z.allocated(200 * CHUNK);
    for _ in 0..64 {
        z.committed(CHUNK);
    }
    assert!(!z.shared.lock().paused());
    z.allocated(201 * CHUNK);
    assert_eq!(wait_written(&z, 233 * CHUNK), 233 * CHUNK);
    let fd = dev.raw_fd().unwrap();
    // SAFETY: lseek on a descriptor the device keeps open.
    let (hole, data) = unsafe {
        (
            libc::lseek(fd, 3 * CHUNK as libc::off_t, libc::SEEK_HOLE),
            libc::lseek(fd, 35 * CHUNK as libc::off_t, libc::SEEK_DATA),
        )
    };
    assert_eq!(hole as u64, 35 * CHUNK, "the lead written before the pause");
    assert_eq!(data as u64, 201 * CHUNK, "nothing written while paused");
}
