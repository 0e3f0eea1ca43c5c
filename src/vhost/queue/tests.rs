//! Unit tests of a queue worker on plain guest memory: a ring the tests write by hand, a
//! backing device that panics or blocks on demand, io_uring submits that fail on demand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::{Backing, DiskContext, QueueWorker, RingFault};
use crate::storage::{BlockDevice, Image, MemDevice, OpenOptions};
use crate::vhost::stats::QueueStats;
use crate::virtio_blk::DiskGeometry;

const SIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const MEM: usize = 4 << 20;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A device whose reads of byte 0 panic and whose reads of byte 4096 wait for `open`.
struct Device {
    inner: MemDevice,
    gate: Mutex<bool>,
    opened: Condvar,
}

impl Device {
    fn open(&self) {
        *self.gate.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl BlockDevice for Device {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        assert!(offset != 0, "injected fault: read of byte 0");
        if offset == 4096 {
            let mut open = self.gate.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
}

/// A queue worker with its ring at `DESC`/`AVAIL`/`USED` of 4 MiB of guest memory.
struct Harness {
    mem: GuestMemoryAtomic<GuestMemoryMmap<()>>,
    vring: VringRwLock<GuestMemoryAtomic<GuestMemoryMmap<()>>>,
    worker: QueueWorker,
    avail: u16,
    next_desc: u16,
    _dir: Option<tempfile::TempDir>,
}

fn geometry() -> DiskGeometry {
    DiskGeometry {
        capacity_sectors: 2048,
        logical_block_size: 512,
        readonly: false,
        discard: true,
        serial: b"t".to_vec(),
    }
}

impl Harness {
    fn new(backing: Backing, dir: Option<tempfile::TempDir>) -> Harness {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
        );
        let disk = Arc::new(DiskContext {
            backing,
            geometry: geometry(),
            writeback: AtomicBool::new(true),
            zero_range: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            stats: vec![Arc::new(QueueStats::default())],
            qos: crate::qos::ExportQos::new(&Default::default(), None),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let guard = crate::vhost::memguard::MemoryGuard::new();
        let worker = QueueWorker::new(0, SIZE, disk, mem.clone(), stopping, guard).unwrap();
        let vring = VringRwLock::new(mem.clone(), SIZE).unwrap();
        vring.set_queue_size(SIZE);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        Harness {
            mem,
            vring,
            worker,
            avail: 0,
            next_desc: 0,
            _dir: dir,
        }
    }

    fn device(dev: Arc<dyn BlockDevice>) -> Harness {
        let backing = Backing::Device {
            dev,
            threads: 1,
            direct: None,
        };
        Harness::new(backing, None)
    }

    fn image() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let options = OpenOptions {
            readonly: false,
            direct: false,
        };
        let image = Image::open(&path, options).unwrap();
        Harness::new(Backing::Image(Arc::new(image)), Some(dir))
    }

    fn mem(&self) -> Arc<GuestMemoryMmap<()>> {
        self.mem.memory().into_inner()
    }

    /// Writes a chain of `(addr, len, device-writable)` buffers and makes it available.
    fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let mem = self.mem();
        let head = self.next_desc;
        for (k, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = self.next_desc;
            self.next_desc = (self.next_desc + 1) % SIZE;
            let mut flags = if writable { WRITE } else { 0 };
            if k + 1 < bufs.len() {
                flags |= NEXT;
            }
            let d = Descriptor::new(addr, len, flags, self.next_desc);
            mem.write_obj(d, GuestAddress(DESC + 16 * u64::from(i)))
                .unwrap();
        }
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring and moves the index.
    fn publish(&mut self, head: u16) {
        let mem = self.mem();
        let slot = AVAIL + 4 + 2 * u64::from(self.avail % SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.store(self.avail, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
    }

    /// A request of type `ty` at `sector` with its header at `at`, data after it, status
    /// at `at + 0x800`.
    fn request(&mut self, ty: u32, sector: u64, at: u64, data: &[(u64, u32)]) -> u16 {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&ty.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem().write_slice(&hdr, GuestAddress(at)).unwrap();
        self.mem()
            .write_obj(0xaau8, GuestAddress(at + 0x800))
            .unwrap();
        let writable = ty == VIRTIO_BLK_T_IN;
        let mut bufs = vec![(at, 16, false)];
        bufs.extend(data.iter().map(|&(a, l)| (a, l, writable)));
        bufs.push((at + 0x800, 1, true));
        self.add_chain(&bufs)
    }

    fn status(&self, at: u64) -> u8 {
        self.mem().read_obj(GuestAddress(at + 0x800)).unwrap()
    }

    fn used_idx(&self) -> u16 {
        self.mem()
            .load(GuestAddress(USED + 2), Ordering::Acquire)
            .unwrap()
    }

    fn kick(&mut self) {
        self.worker.handle_kick(&self.vring);
    }

    /// Handles completions until the used index reaches `n` (bounded).
    fn run_until_used(&mut self, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.used_idx() != n {
            assert!(
                Instant::now() < deadline,
                "used index stuck at {}",
                self.used_idx()
            );
            let mut fds = [libc::pollfd {
                fd: self.worker.completion_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
            self.worker.handle_completions(&self.vring);
        }
    }
}

fn gate_device() -> Arc<Device> {
    Arc::new(Device {
        inner: MemDevice::new(1 << 20),
        gate: Mutex::new(false),
        opened: Condvar::new(),
    })
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn well_formed_requests_complete() {
    let mut h = Harness::image();
    h.request(VIRTIO_BLK_T_OUT, 8, 0x10000, &[(0x20000, 4096)]);
    h.request(VIRTIO_BLK_T_IN, 8, 0x11000, &[(0x30000, 4096)]);
    h.kick();
    h.run_until_used(2);
    assert_eq!((h.status(0x10000), h.status(0x11000)), (OK, OK));
    assert!(!h.worker.broken());
}

#[test]
fn an_avail_index_far_ahead_breaks_the_queue_once_and_a_restart_clears_it() {
    let mut h = Harness::image();
    // With EVENT_IDX the worker polls the ring before sleeping: that is where it used to spin.
    h.vring.set_queue_event_idx(true);
    // The driver claims 100 chains in a ring of 16.
    h.mem()
        .store(100u16, GuestAddress(AVAIL + 2), Ordering::Release)
        .unwrap();
    h.kick(); // returns: it used to spin here forever
    assert!(h.worker.broken());
    assert!(matches!(
        h.worker.broken,
        Some(RingFault::AvailAhead {
            avail: 100,
            next: 0,
            size: SIZE
        })
    ));
    assert_eq!(h.worker.stats.errors.load(Ordering::Relaxed), 1);
    h.kick();
    assert_eq!(
        h.worker.stats.errors.load(Ordering::Relaxed),
        1,
        "logged once"
    );
    // The frontend restarts the ring (GET_VRING_BASE, then a sane ring).
    h.worker.drain();
    h.worker.stopped();
    h.mem()
        .store(0u16, GuestAddress(AVAIL + 2), Ordering::Release)
        .unwrap();
    h.request(VIRTIO_BLK_T_IN, 0, 0x10000, &[(0x20000, 512)]);
    h.kick();
    h.run_until_used(1);
    assert_eq!(h.status(0x10000), OK);
}

#[test]
fn a_ring_stopped_with_requests_available_does_not_spin() {
    // GET_VRING_BASE marks the ring not ready, then waits for the queue (stop_vring): the
    // queue thread must not spin on the requests still in the available ring. Found by the
    // fuzzer (tests/fuzz_vhost).
    let mut h = Harness::image();
    h.vring.set_queue_event_idx(true);
    h.request(VIRTIO_BLK_T_IN, 0, 0x10000, &[(0x20000, 512)]);
    h.vring.set_queue_ready(false);
    h.kick(); // returns
    assert_eq!(h.used_idx(), 0, "a stopped ring is not processed");
    assert!(!h.worker.broken());
}

#[test]
fn a_head_past_the_queue_size_breaks_the_queue() {
    let mut h = Harness::image();
    h.publish(SIZE + 3);
    h.kick();
    assert_eq!(
        h.worker.broken,
        Some(RingFault::HeadOutOfRange {
            head: SIZE + 3,
            size: SIZE
        })
    );
    assert_eq!(h.used_idx(), 0);
}

#[test]
fn rings_outside_guest_memory_break_the_queue() {
    let end = MEM as u64;
    // Available ring past the end of memory.
    let mut h = Harness::image();
    h.vring.set_queue_info(DESC, end, USED).unwrap();
    h.kick();
    assert_eq!(h.worker.broken, Some(RingFault::AvailOutside(end)));

    // Descriptor table straddling the end of memory: descriptor 0 readable, 1 not.
    let mut h = Harness::image();
    let table = end - 16;
    h.vring.set_queue_info(table, AVAIL, USED).unwrap();
    h.mem()
        .write_obj(Descriptor::new(0x10000, 16, NEXT, 1), GuestAddress(table))
        .unwrap();
    h.publish(0);
    h.kick();
    assert!(matches!(h.worker.broken, Some(RingFault::DescTable(_))));

    // Used ring past the end of memory: the request runs, its completion cannot be published.
    let mut h = Harness::image();
    h.vring.set_queue_info(DESC, AVAIL, end - 4).unwrap();
    h.request(VIRTIO_BLK_T_IN, 0, 0x10000, &[(0x20000, 512)]);
    h.kick();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.worker.broken() {
        assert!(Instant::now() < deadline);
        h.worker.handle_completions(&h.vring);
    }
    assert_eq!(h.worker.broken, Some(RingFault::UsedOutside(end - 4)));
    assert_eq!(
        h.worker.slots.in_flight(),
        0,
        "the request completed all the same"
    );
}

#[test]
fn a_panicking_helper_job_completes_its_request_with_ioerr() {
    let mut h = Harness::device(gate_device());
    h.request(VIRTIO_BLK_T_IN, 0, 0x10000, &[(0x20000, 512)]);
    h.kick();
    h.run_until_used(1);
    assert_eq!(h.status(0x10000), IOERR);
    // The queue and its (single) helper thread go on.
    h.request(VIRTIO_BLK_T_OUT, 16, 0x11000, &[(0x21000, 512)]);
    h.request(VIRTIO_BLK_T_IN, 16, 0x12000, &[(0x22000, 512)]);
    h.kick();
    h.run_until_used(3);
    assert_eq!((h.status(0x11000), h.status(0x12000)), (OK, OK));
}

#[test]
fn an_sqe_that_cannot_be_queued_fails_its_request_instead_of_stranding_it() {
    let mut h = Harness::image();
    // Two discards of 32 ranges each: 64 SQEs for a submission ring of 32, so the second
    // request's first push finds the ring full, and that submit fails.
    let ranges: Vec<u8> = (0..32u64)
        .flat_map(|i| {
            let mut r = [0u8; 16];
            r[0..8].copy_from_slice(&(i * 8).to_le_bytes());
            r[8..12].copy_from_slice(&8u32.to_le_bytes());
            r
        })
        .collect();
    h.mem().write_slice(&ranges, GuestAddress(0x20000)).unwrap();
    h.request(VIRTIO_BLK_T_DISCARD, 0, 0x10000, &[(0x20000, 512)]);
    h.request(VIRTIO_BLK_T_DISCARD, 0, 0x11000, &[(0x20000, 512)]);
    h.worker.uring.inject_submit_errors = 1;
    h.kick();
    h.run_until_used(2);
    assert_eq!(
        h.worker.uring.inject_submit_errors, 0,
        "the injected failure was hit"
    );
    assert_eq!((h.status(0x10000), h.status(0x11000)), (OK, IOERR));
    assert_eq!(h.worker.slots.in_flight(), 0);
    // The queue goes on.
    h.request(VIRTIO_BLK_T_IN, 0, 0x12000, &[(0x30000, 512)]);
    h.kick();
    h.run_until_used(3);
    assert_eq!(h.status(0x12000), OK);
}

/// Log lines, for the test that checks what a drain reports.
static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            LOGS.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture;

#[test]
fn a_drain_that_does_not_finish_says_what_it_waits_for() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Warn);
    let dev = gate_device();
    let mut h = Harness::device(dev.clone());
    h.worker.drain_report_after = Duration::from_millis(50);
    // A read the device holds until the gate opens.
    h.request(VIRTIO_BLK_T_IN, 8, 0x10000, &[(0x20000, 4096)]);
    h.kick();
    let reported = Arc::new(AtomicU64::new(0));
    let opener = {
        let (dev, reported) = (dev.clone(), reported.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if LOGS
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.contains("draining for"))
                {
                    reported.store(1, Ordering::SeqCst);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            dev.open();
        })
    };
    h.worker.drain();
    opener.join().unwrap();
    assert_eq!(
        reported.load(Ordering::SeqCst),
        1,
        "no drain report was logged"
    );
    let logs = LOGS.lock().unwrap();
    let line = logs.iter().find(|l| l.contains("draining for")).unwrap();
    assert!(line.contains("1 requests"), "{line}");
    assert!(line.contains("1 helper-thread jobs"), "{line}");
    assert!(
        line.contains("head 0: Read of 4096 bytes at byte 4096"),
        "{line}"
    );
    assert_eq!(h.used_idx(), 1);
    assert_eq!(h.status(0x10000), OK);
}
