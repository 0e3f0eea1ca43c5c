//! The queue's io_uring: SQEs in, CQEs out, and the counts the polling heuristics read. A
//! submission that fails leaves its SQEs queued for the next submit; an SQE that cannot be
//! queued at all is the caller's to fail. What an SQE's user_data says is [`Tag`].

use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

use io_uring::{squeue, types, IoUring};

/// An SQE's user_data: slot index | range index << 32 | `DEVICE_READ` | `ZERO_PAIR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tag(pub u64);

const RANGE_SHIFT: u32 = 32;
/// One SQE of a punch + allocate pair (write-zeroes without ZERO_RANGE).
const ZERO_PAIR: u64 = 1 << 63;
/// A random read: unless the page cache holds it, it waits for the disk (see `QueueWorker::poll`).
const DEVICE_READ: u64 = 1 << 62;

impl Tag {
    pub fn slot(idx: usize) -> Tag {
        Tag(idx as u64)
    }
    pub fn range(self, i: usize) -> Tag {
        Tag(self.0 | (i as u64) << RANGE_SHIFT)
    }
    pub fn device_read(self) -> Tag {
        Tag(self.0 | DEVICE_READ)
    }
    pub fn zero_pair(self) -> Tag {
        Tag(self.0 | ZERO_PAIR)
    }
    pub fn slot_index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    pub fn range_index(self) -> usize {
        ((self.0 & !(ZERO_PAIR | DEVICE_READ)) >> RANGE_SHIFT) as usize
    }
    pub fn is_device_read(self) -> bool {
        self.0 & DEVICE_READ != 0
    }
    pub fn is_zero_pair(self) -> bool {
        self.0 & ZERO_PAIR != 0
    }
}

pub(super) struct Uring {
    ring: IoUring,
    /// SQEs submitted whose CQE is not reaped yet.
    pub in_flight: usize,
    /// Of those, random reads (`Tag::device_read`).
    pub device_reads: usize,
    /// Sequential and random reads queued since the last submit (see `READ_BATCH`).
    pub seq_reads_queued: usize,
    pub random_reads_queued: usize,
    /// Unit tests: this many submits fail with EAGAIN.
    #[cfg(test)]
    pub inject_submit_errors: u32,
}

impl Uring {
    /// A ring of `entries` that signals `event` on completions. Completions that need this
    /// thread (copying a buffered read, finishing a write an io_uring worker did) wait for its
    /// next system call instead of interrupting it with an inter-processor interrupt, which
    /// costs a VM exit; `enter_for_task_work` enters the kernel when the ring flags some
    /// waiting. Kernels before 5.19 get a plain ring.
    pub fn new(entries: u32, event: RawFd) -> io::Result<Uring> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
            .or_else(|_| IoUring::builder().build(entries))?;
        ring.submitter().register_eventfd(event)?;
        Ok(Uring {
            ring,
            in_flight: 0,
            device_reads: 0,
            seq_reads_queued: 0,
            random_reads_queued: 0,
            #[cfg(test)]
            inject_submit_errors: 0,
        })
    }

    /// Registers the files SQEs name by index (`types::Fixed`).
    pub fn register_files(&self, fds: &[RawFd]) -> io::Result<()> {
        self.ring.submitter().register_files(fds)
    }

    /// Queues one SQE, submitting what is queued to make room. An error: it could not be
    /// queued (the submission ring is full and io_uring_enter fails).
    ///
    /// # Safety
    /// Every pointer in the entry (iovecs and the buffers they name) must stay valid until its
    /// completion is reaped.
    pub unsafe fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller's promise.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                self.in_flight += 1;
                if Tag(e.get_user_data()).is_device_read() {
                    self.device_reads += 1;
                }
                return Ok(());
            }
            self.enter()?;
        }
    }

    /// Submits the queued SQEs; on failure they stay queued for the next submit.
    pub fn submit(&mut self) -> io::Result<()> {
        self.seq_reads_queued = 0;
        self.random_reads_queued = 0;
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enter().map(|_| ())
    }

    /// io_uring_enter, with faults injected by unit tests.
    fn enter(&mut self) -> io::Result<usize> {
        #[cfg(test)]
        if self.inject_submit_errors > 0 {
            self.inject_submit_errors -= 1;
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        self.ring.submit()
    }

    /// Runs the task work a cooperative ring flags as waiting for this thread.
    pub fn enter_for_task_work(&mut self) -> io::Result<()> {
        if self.ring.submission().taskrun() {
            self.ring.submit()?;
        }
        Ok(())
    }

    /// Reaps up to `batch.len()` completions as (tag, result); returns how many.
    pub fn reap(&mut self, batch: &mut [(u64, i32)]) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            batch[n] = (cqe.user_data(), cqe.result());
            n += 1;
            if n == batch.len() {
                break;
            }
        }
        self.count_reaped(&batch[..n]);
        n
    }

    /// Takes reaped CQEs off the in-flight counts.
    pub fn count_reaped(&mut self, cqes: &[(u64, i32)]) {
        self.in_flight = self.in_flight.saturating_sub(cqes.len());
        let device = cqes.iter().filter(|c| Tag(c.0).is_device_read()).count();
        self.device_reads = self.device_reads.saturating_sub(device);
    }

    /// SQEs queued and not submitted yet.
    pub fn unsubmitted(&mut self) -> usize {
        self.ring.submission().len()
    }

    /// Submits and waits for one completion for at most `timeout` (Linux 5.11; also runs the
    /// task work cooperative rings leave for this thread). False: not supported here.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => true,
            Err(e) => matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)),
        }
    }
}
