//! One virtqueue's worker: pops chains, parses them, keeps their I/O in flight on its own
//! io_uring and completes them into the used ring. Owned by one thread; nothing here is shared
//! with other queues except the image handle and relaxed atomics.
//!
//! Parts: `ring.rs` reads the available ring (checked: a broken ring stops the queue),
//! `uring.rs` is the queue's one io_uring (and what an SQE's user_data says), `files.rs` the
//! files it reaches and how (inline copies for tmpfs, random reads without readahead),
//! `start.rs` starts a parsed request, `throttle.rs` holds one back for its QoS budget,
//! `sqe.rs` builds the SQEs, `reap.rs` reaps completions and drains, `publish.rs` fills the used
//! ring (and recovers from an inflight region), `graph.rs` runs graph-node requests, `rbd.rs`
//! those of an RBD origin.

use std::collections::VecDeque;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::types;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::inflight::{IoOp, Slots};
use super::memguard::MemoryGuard;
use super::pool::Pool;
use super::stats::QueueStats;
use crate::logging::RateLimiter;
use crate::qos::{ExportQos, QueueQos};
use crate::storage::{BlockDevice, DirectNode, Image, NewExceptions};
use crate::virtio_blk::config::RequestLimits;
use crate::virtio_blk::request::{parse, Segment};
use crate::virtio_blk::DiskGeometry;

type Mem = GuestMemoryMmap<()>;
type Vring = VringRwLock<GuestMemoryAtomic<Mem>>;

/// What an export's requests run against.
pub enum Backing {
    /// A raw image: zero-copy io_uring straight from and into guest memory.
    Image(Arc<Image>),
    /// A device-graph node (origin, snapshot): reads and writes the engine can place on one
    /// file run on the queue's io_uring like an image's (`direct`); the rest (copy-outs, new
    /// exceptions, merges, flush, discard) are synchronous calls on the queue's helper threads.
    Device {
        dev: Arc<dyn BlockDevice>,
        threads: usize,
        direct: Option<DirectNode>,
    },
}

/// Shared, read-mostly settings of one export, given to every queue.
pub struct DiskContext {
    pub backing: Backing,
    pub geometry: DiskGeometry,
    /// Guest-visible write cache mode: false = writethrough (every write is O_DSYNC).
    pub writeback: AtomicBool,
    /// Cleared when the filesystem refuses FALLOC_FL_ZERO_RANGE (tmpfs).
    pub zero_range: AtomicBool,
    /// Set while the control plane holds the export's I/O back (clone reset): queues pop no
    /// new requests; the guest's requests wait in the ring.
    pub paused: AtomicBool,
    pub stats: Vec<Arc<QueueStats>>,
    /// The export's IOPS and bandwidth limits (and its group's), changed live.
    pub qos: Arc<ExportQos>,
}

/// Per-queue state: the in-flight table and the io_uring.
pub struct QueueWorker {
    index: usize,
    disk: Arc<DiskContext>,
    mem: GuestMemoryAtomic<Mem>,
    uring: Uring,
    event: EventFd,
    slots: Slots,
    parse_buf: Vec<Segment>,
    /// The `seg_max` and `size_max` the device advertises, enforced on every request.
    limits: RequestLimits,
    vring: Option<Vring>,
    log: RateLimiter,
    stats: Arc<QueueStats>,
    /// Used entries were added since the guest was last signalled.
    pending_signal: bool,
    pool: Option<Pool>,
    /// Completions not from the io_uring: pool threads' and inline transfers'.
    pool_done: Vec<(usize, i32)>,
    /// Wakes the queue when a held write-through origin write landed (graph origins).
    held_notify: Option<Arc<EventFd>>,
    /// Where librbd completes this queue's requests to an RBD origin (see rbd.rs).
    rbd_sink: Option<Arc<dyn crate::storage::AioDone>>,
    stopping: Arc<AtomicBool>,
    /// The files requests reach, and how (see files.rs).
    files: Files,
    /// A graph node whose reads and writes may run on the io_uring.
    direct: Option<DirectNode>,
    /// Inflight tracking, when the frontend gave a region: completions are then published as
    /// they finish (see `add_used`).
    tracking: Tracking,
    /// Buffers of a chain resubmitted after a restart.
    chain_buf: Vec<(GuestAddress, u32, bool)>,
    /// Without tracking: heads in the order they were popped, and the used length of those
    /// completed ahead of an earlier one: used entries are published in pop order.
    order: VecDeque<u16>,
    done: Vec<Option<u32>>,
    popped: Vec<bool>,
    /// Direct writes that made new exceptions, waiting for their commit; whether a commit task
    /// is running on the pool for them; requests that task's end completed.
    committing: Vec<(usize, NewExceptions)>,
    commit_task: bool,
    settled: Vec<(u16, u32)>,
    /// Set when the frontend's ring is found broken (see `ring.rs`): nothing more is popped.
    broken: Option<RingFault>,
    /// The connection's guest memory guard (see `memguard.rs`).
    guard: Arc<MemoryGuard>,
    /// Requests handed to the helper threads and not completed yet.
    pool_jobs: usize,
    /// When a drain that has not finished first logs what it waits for.
    drain_report_after: std::time::Duration,
    /// QoS: the buckets this queue's requests take from, the request waiting for them (see
    /// throttle.rs), the timer that wakes the queue when it may start, and a spare segment
    /// vector that parking swaps with `parse_buf`.
    qos: QueueQos,
    parked: Option<throttle::Parked>,
    /// The QoS clock of this round of popping (see `throttle.rs`).
    qos_now: Option<u64>,
    timer: TimerFd,
    spare_segs: Vec<Segment>,
}

mod files;
mod graph;
mod publish;
mod rbd;
mod reap;
mod ring;
mod sqe;
mod start;
#[cfg(test)]
mod tests;
mod throttle;
mod uring;

use files::Files;
use publish::Tracking;
pub use ring::RingFault;
use uring::{Tag, Uring};

/// The pool completion slot of the commit task.
const COMMIT_TASK: usize = usize::MAX;

pub(super) const FIXED_IMAGE: types::Fixed = types::Fixed(0);
/// Reads are handed to the kernel at most this many at a time. Random reads: a disk serves
/// reads that reach it as they come much sooner than the same reads in bursts (on this
/// project's test VM, cold 4 KiB random reads at QD32 took the device 0.22-0.29 ms each when
/// submitted one or two at a time and 0.43-0.48 ms when submitted 15-20 per call; fio
/// submitting and reaping 32 at a time shows the same). Sequential reads, which the page cache
/// serves inside the submit call, also have what they completed published before the next
/// chain is popped, so the guest refills the ring while the next ones are copied (64 KiB
/// sequential reads at QD8 from a cached ext4 file: 74-77k IOPS batched, 94-98k in pairs in
/// two runs of three).
/// Writes, which mostly land in the page cache, stay batched.
const READ_BATCH: usize = 2;
/// How long a queue polls for more work before sleeping (see `QueueWorker::poll`), and how
/// long while its io_uring has I/O in flight (other than a lone disk read): writes an io_uring
/// worker copies into the page cache finish within tens of microseconds, and sleeping through
/// them adds a wakeup to their latency.
const POLL_TIME: std::time::Duration = std::time::Duration::from_micros(50);
const POLL_IN_FLIGHT: std::time::Duration = std::time::Duration::from_micros(300);
/// How long a drain runs before it logs what it waits for.
const DRAIN_REPORT_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl QueueWorker {
    pub fn new(
        index: usize,
        queue_size: u16,
        disk: Arc<DiskContext>,
        mem: GuestMemoryAtomic<Mem>,
        stopping: Arc<AtomicBool>,
        guard: Arc<MemoryGuard>,
    ) -> std::io::Result<QueueWorker> {
        let entries = (u32::from(queue_size) * 2).next_power_of_two();
        let event = EventFd::new(EFD_NONBLOCK)?;
        let uring = Uring::new(entries, event.as_raw_fd())?;
        let held_notify = Some(Arc::new(event.try_clone()?));
        let (files, direct) = Files::register(&disk.backing, &uring)?;
        let pool = match &disk.backing {
            Backing::Image(_) => None,
            Backing::Device { dev, threads, .. } => Some(Pool::new(
                dev.clone(),
                *threads,
                &event,
                &format!("q{index}"),
            )?),
        };
        let rbd_sink: Option<Arc<dyn crate::storage::AioDone>> =
            match (&pool, &held_notify, files.rbd) {
                (Some(pool), Some(notify), true) => Some(Arc::new(rbd::RbdSink {
                    done: pool.done.clone(),
                    notify: notify.clone(),
                })),
                _ => None,
            };
        let stats = disk.stats[index].clone();
        let qos = QueueQos::new(disk.qos.clone());
        Ok(QueueWorker {
            index,
            disk,
            mem,
            uring,
            event,
            slots: Slots::new(queue_size as usize),
            parse_buf: Vec::with_capacity(queue_size as usize),
            limits: RequestLimits::for_queue_size(queue_size),
            vring: None,
            log: RateLimiter::new(10),
            stats,
            pending_signal: false,
            pool,
            pool_done: Vec::with_capacity(queue_size as usize),
            held_notify,
            rbd_sink,
            stopping,
            files,
            direct,
            tracking: Tracking::Off,
            chain_buf: Vec::with_capacity(queue_size as usize),
            order: VecDeque::with_capacity(queue_size as usize),
            done: vec![None; queue_size as usize],
            popped: vec![false; queue_size as usize],
            committing: Vec::with_capacity(queue_size as usize),
            commit_task: false,
            settled: Vec::with_capacity(queue_size as usize),
            broken: None,
            guard,
            pool_jobs: 0,
            drain_report_after: DRAIN_REPORT_AFTER,
            qos,
            parked: None,
            qos_now: None,
            timer: throttle::new_timer()?,
            spare_segs: Vec::with_capacity(queue_size as usize),
        })
    }

    /// The eventfd the io_uring signals on completions.
    pub fn completion_fd(&self) -> i32 {
        self.event.as_raw_fd()
    }

    /// The QoS timer's descriptor (readable when a throttled request may start).
    pub fn timer_fd(&self) -> i32 {
        self.timer.as_raw_fd()
    }

    /// Handles a kick: pops every available chain, submits its I/O, completes what finished.
    pub fn handle_kick(&mut self, vring: &Vring) {
        if self.vring.is_none() {
            self.vring = Some(vring.clone());
        }
        if self.stopping.load(Ordering::Relaxed) || self.disk.paused.load(Ordering::SeqCst) {
            return;
        }
        loop {
            if self.broken.is_some() || self.stopping.load(Ordering::Relaxed) {
                break;
            }
            let mem = self.mem.memory().into_inner();
            let mut state = vring.get_mut();
            let event_idx = state.get_queue().event_idx_enabled();
            if event_idx {
                let _ = state.disable_notification();
            }
            if matches!(self.tracking, Tracking::Pending(_)) {
                self.recover(&mem, &mut state);
            }
            let mut stalled = false;
            let mut left = 0u16;
            loop {
                if self.slots.is_full() {
                    stalled = true;
                    break;
                }
                if self.throttled() && !self.unpark(false, &mem, &mut state) {
                    break;
                }
                if left == 0 {
                    self.qos_now = None;
                    left = match self.available(&state, &mem) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(fault) => {
                            self.break_ring(fault);
                            break;
                        }
                    };
                }
                let head = match self.pop_chain(&mut state, &mem) {
                    Ok(head) => head,
                    Err(fault) => {
                        self.break_ring(fault);
                        break;
                    }
                };
                left -= 1;
                if let Tracking::On(log) = &mut self.tracking {
                    log.begin(head);
                } else if let Some(p) = self.popped.get_mut(usize::from(head)) {
                    *p = true;
                    self.order.push_back(head);
                }
                let descs = self.chain_buf.iter().copied();
                match parse(
                    descs,
                    &*mem,
                    &self.disk.geometry,
                    &self.limits,
                    &mut self.parse_buf,
                ) {
                    Ok(req) => self.admit(head, req, &mem, &mut state),
                    Err(rej) => self.reject(head, rej, &mem, &mut state),
                }
                if self.uring.seq_reads_queued >= READ_BATCH {
                    drop(state);
                    self.submit();
                    self.reap(vring);
                    self.signal(vring);
                    state = vring.get_mut();
                }
            }
            drop(state);
            self.submit();
            self.reap(vring);
            if stalled || !event_idx || self.broken.is_some() || self.throttled() {
                // Stalled: every slot is busy and completions call back into handle_kick.
                // Throttled: the QoS timer calls back (the guest need not kick meanwhile).
                break;
            }
            if self.poll(vring) {
                continue;
            }
            // virtio-queue's answer (avail index != next_avail) also holds for a ring that
            // GET_VRING_BASE has just stopped, which then spun here while GET_VRING_BASE waited
            // for this queue: ask `available`, which counts nothing on a stopped ring.
            let _ = vring.enable_notification();
            match self.available(&vring.get_ref(), &self.mem.memory()) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(fault) => {
                    self.break_ring(fault);
                    break;
                }
            }
        }
        self.check_memory();
        self.signal(vring);
    }

    /// Before going back to sleep, polls the ring (and reaps completions) for a short while
    /// with notifications still off: waking an idle thread costs tens of microseconds on a
    /// virtual CPU, more than a request at queue depth 1 takes. True: new requests arrived.
    fn poll(&mut self, vring: &Vring) -> bool {
        let start = std::time::Instant::now();
        loop {
            self.reap(vring);
            self.signal(vring);
            let mem = self.mem.memory();
            // A fault is found (and logged) by the pop that follows.
            if !matches!(self.available(&vring.get_ref(), &mem), Ok(0)) {
                return true;
            }
            // A lone read waiting for the disk takes a full device latency: polling through
            // it made the read slower on the test VM (cold 4 KiB reads at QD1, p50 93-122 us
            // polling, 79-87 us sleeping), while with more in flight the next completion is
            // near and polling for it pays (QD32: 84-98k IOPS polling, 69-80k sleeping).
            let lone_disk_read = self.uring.in_flight == 1 && self.uring.device_reads == 1;
            // An RBD origin's requests take a network round trip (milliseconds): polling for
            // them or for the guest's next request only burns the CPU librbd's threads need.
            let limit = if lone_disk_read || self.files.rbd {
                std::time::Duration::ZERO
            } else if self.uring.in_flight > 0 {
                POLL_IN_FLIGHT
            } else {
                POLL_TIME
            };
            if start.elapsed() >= limit
                || self.stopping.load(Ordering::Relaxed)
                || self.disk.paused.load(Ordering::Relaxed)
            {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Picks up requests that arrived while the export was paused.
    pub fn resume(&mut self) {
        if let Some(v) = self.vring.clone() {
            self.handle_kick(&v);
        }
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        self.vring = None;
        self.drain();
    }
}
