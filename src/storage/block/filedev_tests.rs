//! Tests of the file device: descriptors, O_DIRECT buffers, locks, conformance.

use super::*;
use crate::storage::block::device::tests::conformance;

#[test]
fn a_file_on_disk_gets_a_second_descriptor_for_random_reads_a_tmpfs_file_does_not() {
    let disk = tempfile::tempfile_in("/var/tmp").unwrap();
    disk.set_len(1 << 20).unwrap();
    let on_disk = !crate::storage::memory_backed(disk.as_raw_fd());
    let dev = FileDevice::from_file(disk).unwrap().random_reads(false);
    assert_eq!(dev.random_file().is_some(), on_disk);
    if let Some(r) = dev.random_file() {
        dev.write_at(&[9u8; 512], 512).unwrap();
        let mut b = [0u8; 512];
        r.read_exact_at(&mut b, 512).unwrap();
        assert_eq!(b, [9u8; 512], "the same file through either descriptor");
    }
    if let Ok(shm) = tempfile::tempfile_in("/dev/shm") {
        shm.set_len(1 << 20).unwrap();
        let dev = FileDevice::from_file(shm).unwrap().random_reads(false);
        assert!(dev.random_file().is_none());
    }
}

#[test]
fn file_device_conforms_and_never_grows() {
    let f = tempfile::tempfile().unwrap();
    f.set_len(16384).unwrap();
    let d = FileDevice::from_file(f).unwrap();
    conformance(&d);
    assert_eq!(d.file.metadata().unwrap().len(), 16384);
}

#[test]
fn an_o_direct_file_takes_any_buffer_and_keeps_whole_blocks() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let p = dir.path().join("d.img");
    std::fs::write(&p, vec![0u8; 65536 + 100]).unwrap();
    let options = DeviceOptions {
        write: true,
        direct: true,
        lock: Some(LockMode::Exclusive),
    };
    let d = match FileDevice::open(&p, options) {
        Err(DeviceError::NoDirect(_)) => {
            crate::testing::require("filedev", "O_DIRECT on the crate's file system", false);
            return;
        }
        r => r.unwrap(),
    };
    assert!(d.is_direct());
    assert_eq!(d.size() % u64::from(d.logical_block_size()), 0);
    conformance(&d);
    let mut raw = vec![0u8; 5000];
    d.write_at(&raw[1..17], 4090).unwrap();
    raw[3..19].copy_from_slice(&[5u8; 16]);
    d.write_at(&raw[3..19], 8000).unwrap();
    let mut back = [1u8; 17];
    d.read_at(&mut back[1..], 8000).unwrap();
    assert_eq!(&back[1..], &[5u8; 16]);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 65536 + 100);
}

#[test]
fn a_locked_device_refuses_a_second_writer_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.img");
    std::fs::write(&p, vec![0u8; 8192]).unwrap();
    let rw = DeviceOptions {
        write: true,
        direct: false,
        lock: Some(LockMode::Exclusive),
    };
    let a = FileDevice::open(&p, rw).unwrap();
    let e = FileDevice::open(&p, rw).unwrap_err();
    assert!(matches!(e, DeviceError::Locked(_)), "{e:?}");
    let io: io::Error = e.into();
    assert_eq!(io.kind(), io::ErrorKind::ResourceBusy);
    drop(a);
    assert!(FileDevice::open(&p, rw).is_ok());
}
