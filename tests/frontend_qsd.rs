//! The frontend and `snapblk bench` against QEMU's storage daemon exporting a raw image.
//!
//! Each test starts its own qemu-storage-daemon on a fresh sparse image and waits for its
//! socket (polling with a deadline). Without qemu-storage-daemon the tests skip, except in CI
//! (see tests/common/skip.rs), where test.sh has installed it and they fail instead.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use snapblk::bench::{self, BenchArgs, Rw};
use snapblk::frontend::{
    BlkFrontend, BlkStatus, FrontendError, FrontendOptions, Segment, SECTOR_SIZE,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_T_IN,
};

#[path = "common/skip.rs"]
#[allow(dead_code)]
mod skip;

const QSD: &str = "qemu-storage-daemon";
const IMAGE_SIZE: u64 = 64 << 20;

/// A running qemu-storage-daemon; killed on drop.
struct Qsd {
    child: Child,
    sock: PathBuf,
    img: PathBuf,
    _dir: tempfile::TempDir,
}

impl Qsd {
    /// Starts qsd on a fresh sparse image, or returns None (the test skips) when qsd is not
    /// installed outside CI.
    fn start(test: &str) -> Option<Self> {
        match Command::new(QSD).arg("--version").output() {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                skip::require(test, &format!("{QSD} (apt install qemu-system-x86)"), false);
                return None;
            }
            other => {
                other.expect("qemu-storage-daemon --version");
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.raw");
        let sock = dir.path().join("vhost.sock");
        File::create(&img)
            .and_then(|f| f.set_len(IMAGE_SIZE))
            .expect("create image");
        let child = Command::new(QSD)
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=d,filename={},aio=io_uring,discard=unmap",
                img.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,addr.type=unix,addr.path={},node-name=d,writable=on,num-queues=2",
                sock.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn qemu-storage-daemon");
        let mut qsd = Qsd {
            child,
            sock,
            img,
            _dir: dir,
        };
        qsd.wait_for_socket(Duration::from_secs(10));
        Some(qsd)
    }

    /// Polls until the socket exists, failing early if qsd exits.
    fn wait_for_socket(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.sock.exists() {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("{QSD} exited before creating its socket: {status}");
            }
            assert!(Instant::now() < deadline, "no socket after {timeout:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn connect(&self) -> BlkFrontend {
        BlkFrontend::connect(&self.sock, FrontendOptions::default()).expect("connect to qsd")
    }

    fn path(&self) -> &Path {
        &self.sock
    }

    fn image(&self) -> &Path {
        &self.img
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn config_reports_the_image_capacity_and_two_queues() {
    let Some(qsd) = Qsd::start("config") else {
        return;
    };
    let dev = qsd.connect();
    assert_eq!(dev.config().capacity, IMAGE_SIZE / SECTOR_SIZE);
    assert_eq!(dev.config().capacity_bytes(), IMAGE_SIZE);
    assert_eq!(dev.num_queues(), 2);
    assert!(dev.has_feature(VIRTIO_BLK_F_FLUSH));
    dev.disconnect().expect("disconnect");
}

#[test]
fn writeback_byte_can_be_switched_with_set_config() {
    let Some(qsd) = Qsd::start("writeback") else {
        return;
    };
    let mut dev = qsd.connect();
    assert!(dev.has_feature(VIRTIO_BLK_F_CONFIG_WCE));
    assert_eq!(dev.set_writeback(false).expect("writethrough").writeback, 0);
    assert_eq!(dev.set_writeback(true).expect("writeback").writeback, 1);
    // The session still serves I/O afterwards.
    let mut q = dev.blk_queue(0, 1, 4096).expect("queue 0");
    assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
}

#[test]
fn write_read_flush_and_get_id_round_trip() {
    let Some(qsd) = Qsd::start("write_read") else {
        return;
    };
    let mut dev = qsd.connect();
    let mut q = dev.blk_queue(0, 4, 64 << 10).expect("queue 0");
    let data = pattern(7, 64 << 10);
    let w = q.write(100, &data).expect("write");
    assert_eq!(w.status, BlkStatus::Ok);
    assert_eq!(w.used_len, 1, "a write's used length is the status byte");
    let (r, back) = q.read(100, data.len() as u32).expect("read");
    assert_eq!(r.status, BlkStatus::Ok);
    assert_eq!(r.used_len, data.len() as u32 + 1);
    assert!(back == data, "read data differs from written data");
    assert_eq!(q.flush().expect("flush").status, BlkStatus::Ok);
    let (id, _serial) = q.get_id().expect("get_id");
    assert!(
        matches!(id.status, BlkStatus::Ok | BlkStatus::Unsupp),
        "get_id status {:?}",
        id.status
    );
    // The same request as one indirect descriptor.
    q.set_indirect(true).expect("indirect negotiated");
    let (r, back) = q.read(100, 4096).expect("indirect read");
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(back[..] == data[..4096]);
}

#[test]
fn discard_and_write_zeroes_read_back_as_zeroes() {
    let Some(qsd) = Qsd::start("discard") else {
        return;
    };
    let mut dev = qsd.connect();
    assert!(dev.has_feature(VIRTIO_BLK_F_DISCARD));
    let mut q = dev.blk_queue(0, 1, 1 << 20).expect("queue 0");
    let data = pattern(3, 1 << 20);
    assert_eq!(q.write(2048, &data).unwrap().status, BlkStatus::Ok);
    // The file driver with discard=unmap punches a hole, which reads back as zeroes.
    assert_eq!(q.discard(2048, 1024).unwrap().status, BlkStatus::Ok);
    let (r, back) = q.read(2048, 1 << 19).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(back.iter().all(|&b| b == 0), "discarded range is not zero");
    assert_eq!(q.write(4096, &data).unwrap().status, BlkStatus::Ok);
    assert_eq!(
        q.write_zeroes(4096, 8, false).unwrap().status,
        BlkStatus::Ok
    );
    let (_, back) = q.read(4096, 8192).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0));
    assert!(back[4096..] == data[4096..8192]);
}

#[test]
fn raw_chain_read_completes_like_a_typed_read() {
    let Some(qsd) = Qsd::start("raw") else {
        return;
    };
    let mut dev = qsd.connect();
    let mut q = dev.blk_queue(0, 1, 4096).expect("queue 0");
    // A well-formed raw read, to check raw_chain itself.
    let mem = q.memory();
    let hdr = mem.alloc(16, 16).unwrap();
    let buf = mem.alloc(4096, 4096).unwrap();
    let status = mem.alloc(1, 1).unwrap();
    mem.write(hdr, &snapblk::frontend::header(VIRTIO_BLK_T_IN, 0))
        .unwrap();
    let chain = [
        Segment::to_device(hdr, 16),
        Segment::from_device(buf, 4096),
        Segment::from_device(status, 1),
    ];
    let c = q.raw_chain(&chain, false).expect("raw read");
    assert_eq!(c.len, 4097);
    let mut st = [0xffu8];
    q.memory().read(status, &mut st).unwrap();
    assert_eq!(st[0], 0);
}

#[test]
fn stopped_backend_gives_a_timeout_not_a_hang() {
    let Some(qsd) = Qsd::start("timeout") else {
        return;
    };
    let mut dev = qsd.connect();
    let mut q = dev.blk_queue(0, 1, 4096).expect("queue 0");
    q.queue().set_timeout(Duration::from_millis(300));
    assert_eq!(q.read(0, 4096).unwrap().0.status, BlkStatus::Ok);
    let pid = qsd.child.id() as libc::pid_t;
    // SAFETY: signals our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let res = q.read(0, 4096);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert!(
        matches!(res, Err(FrontendError::Timeout { .. })),
        "got {res:?}"
    );
}

#[test]
fn two_queues_serve_concurrent_writers() {
    let Some(qsd) = Qsd::start("two_queues") else {
        return;
    };
    let mut dev = qsd.connect();
    let queues: Vec<_> = (0..2)
        .map(|i| dev.blk_queue(i, 1, 4096).expect("queue"))
        .collect();
    let handles: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, mut q)| {
            std::thread::spawn(move || {
                for n in 0..200u64 {
                    let sector = (i as u64 * 10_000) + n * 8;
                    let data = pattern((n as u8) ^ (i as u8 * 101), 4096);
                    assert_eq!(q.write(sector, &data).unwrap().status, BlkStatus::Ok);
                    let (r, back) = q.read(sector, 4096).unwrap();
                    assert_eq!(r.status, BlkStatus::Ok);
                    assert!(back == data, "queue {i} sector {sector} mismatch");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("queue thread");
    }
}

#[test]
fn bench_with_verify_runs_one_second_without_errors() {
    let Some(qsd) = Qsd::start("bench") else {
        return;
    };
    for rw in [Rw::Mixed, Rw::Randread, Rw::Randwrite] {
        let args = BenchArgs {
            socket: qsd.path().to_owned(),
            rw,
            bs: 4096,
            iodepth: 16,
            queues: 2,
            seconds: 1,
            verify: true,
            size: Some(8 << 20),
            once: false,
            json: false,
        };
        let report = bench::run(&args).expect("bench run");
        println!("{report}");
        assert_eq!(report.errors, 0);
        assert_eq!(report.verify_mismatches, 0);
        assert!(report.ops > 0);
        assert!(report.verified_sectors > 0, "verify checked nothing");
    }
}

#[test]
fn bench_verify_detects_corruption_behind_its_back() {
    let Some(qsd) = Qsd::start("bench_corruption") else {
        return;
    };
    let args = BenchArgs {
        socket: qsd.path().to_owned(),
        rw: Rw::Mixed,
        bs: 4096,
        iodepth: 4,
        queues: 1,
        seconds: 1,
        verify: true,
        size: Some(64 << 10),
        once: false,
        json: false,
    };
    // Overwrite the region through the host file (qsd shares its page cache) until the run
    // ends: reads of blocks the bench wrote earlier must then fail verification.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::unix::fs::FileExt;
            let img = File::options()
                .write(true)
                .open(qsd.image())
                .expect("open image");
            let junk = vec![0xa5u8; 64 << 10];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                img.write_all_at(&junk, 0).expect("corrupt image");
            }
        });
        let result = bench::run(&args);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    });
    match result {
        Err(bench::BenchError::Verify { mismatches, report }) => {
            assert!(mismatches > 0);
            assert_eq!(report.verify_mismatches, mismatches);
        }
        other => panic!("corruption went unnoticed: {other:?}"),
    }
}
