//! Tests of the shared-mapping device: reads, writes, holes, truncation and retirement.

use super::*;
use std::io::Write;

/// A file on /dev/shm holding `bytes`; None (the test skips, outside CI) without one.
fn shm_file(bytes: &[u8]) -> Option<(tempfile::TempDir, File)> {
    let dir = tempfile::tempdir_in("/dev/shm");
    if !crate::testing::require("mapped", "/dev/shm", dir.is_ok()) {
        return None;
    }
    let dir = dir.ok()?;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("m.img"))
        .ok()?;
    f.write_all(bytes).ok()?;
    Some((dir, f))
}

fn iov(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

#[test]
fn reads_of_a_dense_tmpfs_file_match_its_bytes_across_buffers() {
    let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    let Some((_d, f)) = shm_file(&data) else {
        return;
    };
    let m = Mapping::of(&f, data.len() as u64).expect("dense tmpfs file is mapped");
    let (mut a, mut b) = (vec![0u8; 512], vec![0u8; 3584]);
    let n = unsafe { m.read(&[iov(&mut a), iov(&mut b)], 8192) };
    assert_eq!(n, Some(4096));
    assert_eq!(a[..], data[8192..8704]);
    assert_eq!(b[..], data[8704..12288]);
    // A write through the file is seen through the mapping (one page cache).
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xee; 512], 8192).unwrap();
    assert_eq!(unsafe { m.read(&[iov(&mut a)], 8192) }, Some(512));
    assert!(a.iter().all(|&x| x == 0xee));
}

#[test]
fn out_of_range_and_retired_reads_fall_back() {
    let Some((_d, f)) = shm_file(&[5u8; 8192]) else {
        return;
    };
    let m = Mapping::of(&f, 8192).unwrap();
    let mut b = vec![0u8; 4096];
    assert_eq!(unsafe { m.read(&[iov(&mut b)], 4097) }, None);
    assert_eq!(unsafe { m.read(&[iov(&mut b)], u64::MAX) }, None);
    assert_eq!(unsafe { m.read(&[iov(&mut b)], 4096) }, Some(4096));
    m.retire();
    assert!(m.retired());
    assert_eq!(unsafe { m.read(&[iov(&mut b)], 0) }, None);
}

#[test]
fn writes_reach_the_file_and_a_read_only_file_is_never_written() {
    let data = vec![3u8; 16384];
    let Some((dir, f)) = shm_file(&data) else {
        return;
    };
    let m = Mapping::of(&f, 16384).unwrap();
    let (mut a, mut b) = (vec![0xa1u8; 512], vec![0xb2u8; 3584]);
    assert_eq!(
        unsafe { m.write(&[iov(&mut a), iov(&mut b)], 4096) },
        Some(4096)
    );
    use std::os::unix::fs::FileExt;
    let mut back = vec![0u8; 16384];
    f.read_exact_at(&mut back, 0).unwrap();
    assert!(back[..4096].iter().all(|&x| x == 3));
    assert!(back[4096..4608].iter().all(|&x| x == 0xa1));
    assert!(back[4608..8192].iter().all(|&x| x == 0xb2));
    assert!(back[8192..].iter().all(|&x| x == 3));
    assert_eq!(unsafe { m.write(&[iov(&mut a)], 16384 - 511) }, None);
    m.retire();
    assert_eq!(unsafe { m.write(&[iov(&mut a)], 0) }, None);

    let ro = File::open(dir.path().join("m.img")).unwrap();
    let m = Mapping::of(&ro, 16384).expect("a read-only file is mapped for reads");
    assert_eq!(unsafe { m.write(&[iov(&mut a)], 0) }, None);
    assert_eq!(unsafe { m.read(&[iov(&mut b)], 4608) }, Some(3584));
    assert!(b.iter().all(|&x| x == 0xb2));
}

#[test]
fn a_truncated_foreign_mapping_reads_zeroes_and_flags_its_guard() {
    let f = tempfile::tempfile().unwrap();
    (&f).write_all(&[7u8; 8192]).unwrap();
    // SAFETY: a fresh shared mapping of a file this test owns.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let guard = ForeignGuard::new(base as usize, 8192).expect("a free slot");
    let before = foreign_faults();
    f.set_len(4096).unwrap();
    // SAFETY: inside the mapping; the second page is past the end of the file now.
    let (kept, lost) = unsafe {
        (
            std::ptr::read_volatile(base.cast::<u8>()),
            std::ptr::read_volatile(base.cast::<u8>().add(4096)),
        )
    };
    assert_eq!((kept, lost), (7, 0), "the lost page reads as zeroes");
    assert!(guard.faulted());
    assert_eq!(foreign_faults(), before + 1);
    assert_eq!(
        FAULTS.load(Ordering::SeqCst),
        0,
        "image mappings are not retired"
    );
    drop(guard);
    // SAFETY: unmaps the mapping created above.
    unsafe { libc::munmap(base, 8192) };
}

#[test]
fn sparse_disk_and_empty_files_are_not_mapped() {
    if let Some((_d, f)) = shm_file(&[1u8; 4096]) {
        f.set_len(1 << 20).unwrap(); // a hole after the first page
        assert!(Mapping::of(&f, 1 << 20).is_none());
        assert!(Mapping::of(&f, 0).is_none());
    }
    let disk = tempfile::tempfile().unwrap();
    (&disk).write_all(&[1u8; 8192]).unwrap();
    if !memory_backed(disk.as_raw_fd()) {
        assert!(Mapping::of(&disk, 8192).is_none());
    }
}
