//! QoS on the queue: before a request starts, its export's and group's buckets say whether it
//! may; one that must wait is parked here (popped and tracked in flight, not started) and the
//! ring behind it is not popped, so requests stay in order and in the ring. The queue's timer
//! wakes it when the budget allows; a drain (shutdown, reconnect, GET_VRING_BASE) starts a
//! parked request at once, so none is ever stranded or failed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::io::AsRawFd;

use vhost_user_backend::{VringState, VringT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::timerfd::TimerFd;

use super::{Mem, QueueWorker};
use crate::qos::{now_ns, Class};
use crate::virtio_blk::request::{Request, RequestKind, Segment};

/// The shortest sleep of a throttled queue: the buckets hold a tenth of a second of slack, so
/// waking at most every quarter millisecond costs no accuracy and lets a fast limit admit
/// requests in small batches instead of one per wakeup.
const MIN_SLEEP: Duration = Duration::from_micros(250);

/// A request that waits for its budget.
pub(super) struct Parked {
    head: u16,
    req: Request,
    segs: Vec<Segment>,
    class: Class,
    bytes: u64,
    since: u64,
}

/// What a request counts against, and how many bytes; `None`: not limited (flush, get-id).
fn class_of(req: &Request) -> Option<(Class, u64)> {
    match req.kind {
        RequestKind::Read { .. } => Some((Class::Read, u64::from(req.data_len))),
        RequestKind::Write { .. } => Some((Class::Write, u64::from(req.data_len))),
        RequestKind::Discard(_) | RequestKind::WriteZeroes { .. } => Some((Class::Write, 0)),
        RequestKind::Flush | RequestKind::GetId => None,
    }
}

impl QueueWorker {
    /// Starts a parsed request now, or parks it until its budget allows.
    pub(super) fn admit(
        &mut self,
        head: u16,
        req: Request,
        mem: &Arc<Mem>,
        state: &mut VringState<GuestMemoryAtomic<Mem>>,
    ) {
        if let Some((class, bytes)) = class_of(&req) {
            if self.qos.active() {
                let now = self.qos_clock();
                let wait = self.qos.wait(now, class);
                if wait > 0 {
                    let segs = std::mem::replace(
                        &mut self.parse_buf,
                        std::mem::take(&mut self.spare_segs),
                    );
                    self.parked = Some(Parked {
                        head,
                        req,
                        segs,
                        class,
                        bytes,
                        since: now,
                    });
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                    self.arm_timer(wait);
                    return;
                }
                self.qos.charge(now, class, bytes);
            }
        }
        self.start(head, req, mem, state);
    }

    /// Starts the parked request if its budget allows now (or `force`: a drain). False: it
    /// still waits, and the timer is set for when it may start.
    pub(super) fn unpark(
        &mut self,
        force: bool,
        mem: &Arc<Mem>,
        state: &mut VringState<GuestMemoryAtomic<Mem>>,
    ) -> bool {
        let Some(p) = &self.parked else {
            return true;
        };
        let now = now_ns();
        self.qos_now = Some(now);
        let wait = self.qos.wait(now, p.class);
        if wait > 0 && !force {
            self.arm_timer(wait);
            return false;
        }
        let Some(p) = self.parked.take() else {
            return true;
        };
        self.qos.charge(now, p.class, p.bytes);
        self.stats
            .throttled_ns
            .fetch_add(now.saturating_sub(p.since), Ordering::Relaxed);
        self.spare_segs = std::mem::replace(&mut self.parse_buf, p.segs);
        self.start(p.head, p.req, mem, state);
        true
    }

    /// The QoS clock, read once per batch of chains the avail ring offered (`handle_kick` clears
    /// it when it reads the ring's index): a clock read per request cost 4-5% of the 4 KiB
    /// randread rate on tmpfs, and a time a few microseconds old only makes the buckets a
    /// little stricter.
    fn qos_clock(&mut self) -> u64 {
        *self.qos_now.get_or_insert_with(now_ns)
    }

    /// Whether a request waits for its budget.
    pub(super) fn throttled(&self) -> bool {
        self.parked.is_some()
    }

    fn arm_timer(&mut self, wait_ns: u64) {
        let d = Duration::from_nanos(wait_ns).max(MIN_SLEEP);
        if let Err(e) = self.timer.reset(d, None) {
            // Without a timer the request would wait for the next kick or completion.
            if self.log.allow() {
                log::error!("queue {}: cannot set the QoS timer: {e}", self.index);
            }
        }
    }

    /// The QoS timer fired: start what the budget allows now.
    pub fn handle_timer(&mut self, vring: &super::Vring) {
        let _ = self.timer.wait();
        self.handle_kick(vring);
    }

    /// A drain starts the parked request at once: nothing popped is left unstarted.
    pub(super) fn release_parked(&mut self) {
        if self.parked.is_none() {
            return;
        }
        let Some(vring) = self.vring.clone() else {
            // No ring to complete it into (the backend is going away): the frontend's
            // inflight region, if it keeps one, still holds it for the next daemon.
            self.parked = None;
            return;
        };
        let mem = self.mem.memory().into_inner();
        let mut state = vring.get_mut();
        self.unpark(true, &mem, &mut state);
    }
}

/// The queue's QoS timer: non-blocking, so a read after a re-arm never waits.
pub(super) fn new_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}
