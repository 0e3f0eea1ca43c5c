//! A queue's helper threads for devices served through synchronous calls (origins with
//! snapshots, snapshots): they run requests against a `BlockDevice`, copying between guest
//! memory and a buffer, and post completions back to the queue thread through its eventfd.
//! Each queue has its own pool, so no lock is shared between queues.
//!
//! A read or write moves through a buffer of at most `CHUNK` bytes, whatever the request's
//! length (up to `seg_max * size_max`, hundreds of MiB, which a small guest can describe with
//! aliased descriptors): one request costs a helper thread at most `CHUNK` bytes. Buffers are
//! reused: a finished job's buffer goes back to its pool's free list for the next job, so a
//! pool holds at most one buffer per job that was in flight at once (one per thread at worst)
//! instead of leaving freed buffers in the allocator's per-thread arenas.
//!
//! A job or task that panics completes with EIO (its request with an I/O error), and its
//! thread goes on with the next one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::logging::RateLimiter;
use crate::storage::BlockDevice;
use crate::virtio_blk::request::{Ranges, Segment};

type Mem = GuestMemoryMmap<()>;

/// What a job does.
#[derive(Debug, Clone, Copy)]
pub enum JobOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes,
}

/// One request for a pool thread.
pub struct Job {
    pub slot: usize,
    pub op: JobOp,
    pub offset: u64,
    pub len: u32,
    pub segs: Vec<Segment>,
    pub ranges: Ranges,
    pub mem: Arc<Mem>,
    /// Write-through: a write, discard or write-zeroes is made durable before it completes.
    pub durable: bool,
}

/// Work for a pool thread: a request, or a task that only reports it ran (under `slot`).
/// (A job is moved once, through the channel; boxing it would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
enum Work {
    Io(Job),
    Task {
        slot: usize,
        run: Box<dyn FnOnce() + Send>,
    },
}

/// Completed jobs: (slot, result) with result = bytes done or -errno, as io_uring reports.
pub type Done = Arc<Mutex<Vec<(usize, i32)>>>;

/// Most bytes one job moves between the device and guest memory at a time (and so the most
/// buffer memory one request costs).
pub const CHUNK: usize = 1 << 20;

/// A pool's free buffers.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// A buffer of `len` bytes (contents unspecified: callers fill all of it).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut b = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        b.resize(len, 0);
        b
    }

    fn give(&self, b: Vec<u8>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(b);
    }
}

/// Every thread of the pool has exited.
#[derive(Debug)]
pub struct PoolGone;

/// The pool of one queue.
pub struct Pool {
    tx: Option<Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
    pub done: Done,
}

impl Pool {
    pub fn new(
        dev: Arc<dyn BlockDevice>,
        threads: usize,
        notify: &EventFd,
        name: &str,
    ) -> std::io::Result<Pool> {
        let (tx, rx) = channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let done: Done = Arc::new(Mutex::new(Vec::new()));
        let buffers = Arc::new(Buffers::default());
        let panics = Arc::new(Mutex::new(RateLimiter::new(10)));
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let done = done.clone();
            let buffers = buffers.clone();
            let dev = dev.clone();
            let notify = notify.try_clone()?;
            let panics = panics.clone();
            let thread = format!("{name}-io{i}");
            handles.push(std::thread::Builder::new().name(thread).spawn(move || {
                let shared = Shared {
                    rx: &rx,
                    done: &done,
                    notify: &notify,
                    buffers: &buffers,
                    panics: &panics,
                };
                worker(&*dev, &shared)
            })?);
        }
        Ok(Pool {
            tx: Some(tx),
            threads: handles,
            done,
        })
    }

    /// Queues a job. Fails only if every pool thread has exited.
    pub fn submit(&self, job: Job) -> Result<(), PoolGone> {
        match &self.tx {
            Some(tx) => tx.send(Work::Io(job)).map_err(|_| PoolGone),
            None => Err(PoolGone),
        }
    }

    /// Queues a task; its completion is posted as `(slot, 0)` once `run` returned.
    pub fn submit_task(&self, slot: usize, run: Box<dyn FnOnce() + Send>) -> Result<(), PoolGone> {
        match &self.tx {
            Some(tx) => tx.send(Work::Task { slot, run }).map_err(|_| PoolGone),
            None => Err(PoolGone),
        }
    }

    /// Takes the completions posted so far. Call it after reading the eventfd: a thread posts
    /// a wake-up only when it finds no completion waiting.
    pub fn take_done(&self, out: &mut Vec<(usize, i32)>) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut d);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a pool's threads share.
struct Shared<'a> {
    rx: &'a Mutex<Receiver<Work>>,
    done: &'a Mutex<Vec<(usize, i32)>>,
    notify: &'a EventFd,
    buffers: &'a Buffers,
    /// Limits the log lines of panicking jobs.
    panics: &'a Mutex<RateLimiter>,
}

fn worker(dev: &dyn BlockDevice, sh: &Shared) {
    loop {
        let work = {
            let rx = sh.rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            }
        };
        let slot = match &work {
            Work::Io(job) => job.slot,
            Work::Task { slot, .. } => *slot,
        };
        let res = catch_unwind(AssertUnwindSafe(|| match work {
            Work::Io(job) => match run(dev, &job, sh.buffers) {
                Ok(()) => i32::try_from(job.len).unwrap_or(i32::MAX),
                Err(e) => {
                    log::debug!("{:?} at byte {} failed: {e}", job.op, job.offset);
                    -e.raw_os_error().unwrap_or(libc::EIO)
                }
            },
            Work::Task { run, .. } => {
                run();
                0
            }
        }))
        .unwrap_or_else(|_| {
            let mut limit = sh.panics.lock().unwrap_or_else(|p| p.into_inner());
            if limit.allow() {
                log::error!("a helper thread's job panicked; its request fails with EIO");
            }
            -libc::EIO
        });
        let mut done = sh.done.lock().unwrap_or_else(|p| p.into_inner());
        done.push((slot, res));
        // Only a completion the queue has nothing else waiting beside wakes it: the queue
        // reads the eventfd before it takes every completion posted.
        let wake = done.len() == 1;
        drop(done);
        if wake {
            let _ = sh.notify.write(1);
        }
    }
}

fn run(dev: &dyn BlockDevice, job: &Job, buffers: &Buffers) -> std::io::Result<()> {
    run_op(dev, job, buffers)?;
    if job.durable && !matches!(job.op, JobOp::Read | JobOp::Flush) {
        dev.flush()?;
    }
    Ok(())
}

fn run_op(dev: &dyn BlockDevice, job: &Job, buffers: &Buffers) -> std::io::Result<()> {
    match job.op {
        JobOp::Read | JobOp::Write => {
            let mut buf = buffers.take(CHUNK.min(job.len as usize));
            let r = transfer(dev, job, &mut buf);
            buffers.give(buf);
            r
        }
        JobOp::Flush => dev.flush(),
        JobOp::Discard => {
            for r in job.ranges.as_slice() {
                dev.discard(r.sector * 512, u64::from(r.sectors) * 512)?;
            }
            Ok(())
        }
        JobOp::WriteZeroes => {
            for r in job.ranges.as_slice() {
                dev.write_zeroes(r.sector * 512, u64::from(r.sectors) * 512)?;
            }
            Ok(())
        }
    }
}

/// A read or write of `job.len` bytes, `buf.len()` bytes at a time.
fn transfer(dev: &dyn BlockDevice, job: &Job, buf: &mut [u8]) -> std::io::Result<()> {
    let total = job.len as usize;
    let mut guest = Cursor {
        segs: &job.segs,
        seg: 0,
        within: 0,
    };
    let mut done = 0;
    while done < total {
        let n = buf.len().min(total - done);
        let chunk = &mut buf[..n];
        let at = job.offset + done as u64;
        if let JobOp::Read = job.op {
            dev.read_at(chunk, at)?;
            guest.copy(&job.mem, chunk, true)?;
        } else {
            guest.copy(&job.mem, chunk, false)?;
            dev.write_at(chunk, at)?;
        }
        done += chunk.len();
    }
    Ok(())
}

/// A position in a request's guest segments.
struct Cursor<'a> {
    segs: &'a [Segment],
    seg: usize,
    within: usize,
}

impl Cursor<'_> {
    /// Copies `buf` to the guest (`to_guest`) or fills it from the guest, from the cursor on,
    /// and moves the cursor past it.
    fn copy(&mut self, mem: &Mem, buf: &mut [u8], to_guest: bool) -> std::io::Result<()> {
        let fault = || std::io::Error::from_raw_os_error(libc::EFAULT);
        let mut off = 0;
        while off < buf.len() {
            let s = self.segs.get(self.seg).ok_or_else(fault)?;
            if self.within >= s.len as usize {
                self.seg += 1;
                self.within = 0;
                continue;
            }
            let n = (s.len as usize - self.within).min(buf.len() - off);
            let addr = s.addr.checked_add(self.within as u64).ok_or_else(fault)?;
            if to_guest {
                mem.write_slice(&buf[off..off + n], addr)
                    .map_err(|_| fault())?;
            } else {
                mem.read_slice(&mut buf[off..off + n], addr)
                    .map_err(|_| fault())?;
            }
            off += n;
            self.within += n;
            if self.within == s.len as usize {
                self.seg += 1;
                self.within = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
