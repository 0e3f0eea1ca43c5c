//! A queue's helper threads for devices served through synchronous calls (origins with
//! snapshots, snapshots): they run requests against a `BlockDevice`, copying between guest
//! memory and a buffer, and post completions back to the queue thread through its eventfd.
//! Each queue has its own pool, so no lock is shared between queues.
//!
//! Buffers are reused: a finished job's buffer goes back to its pool's free list for the next
//! job, so a pool holds at most one buffer per job that was in flight at once (one per thread at
//! worst) instead of leaving freed buffers in the allocator's per-thread arenas.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

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

/// Buffers of finished jobs larger than this are freed, not kept.
const KEEP_MAX: usize = 4 << 20;

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
        if b.capacity() <= KEEP_MAX {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(b);
        }
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
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let done = done.clone();
            let buffers = buffers.clone();
            let dev = dev.clone();
            let notify = notify.try_clone()?;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-io{i}"))
                    .spawn(move || worker(&*dev, &rx, &done, &notify, &buffers))?,
            );
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

    /// Takes the completions posted so far.
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

fn worker(
    dev: &dyn BlockDevice,
    rx: &Mutex<Receiver<Work>>,
    done: &Mutex<Vec<(usize, i32)>>,
    notify: &EventFd,
    buffers: &Buffers,
) {
    loop {
        let work = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            }
        };
        let (slot, res) = match work {
            Work::Io(job) => match run(dev, &job, buffers) {
                Ok(()) => (job.slot, i32::try_from(job.len).unwrap_or(i32::MAX)),
                Err(e) => {
                    log::debug!("{:?} at byte {} failed: {e}", job.op, job.offset);
                    (job.slot, -e.raw_os_error().unwrap_or(libc::EIO))
                }
            },
            Work::Task { slot, run } => {
                run();
                (slot, 0)
            }
        };
        done.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((slot, res));
        let _ = notify.write(1);
    }
}

fn run(dev: &dyn BlockDevice, job: &Job, buffers: &Buffers) -> std::io::Result<()> {
    match job.op {
        JobOp::Read | JobOp::Write => {
            let mut buf = buffers.take(job.len as usize);
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

/// A read or write through `buf` (`job.len` bytes).
fn transfer(dev: &dyn BlockDevice, job: &Job, buf: &mut [u8]) -> std::io::Result<()> {
    let guest = |_| std::io::Error::from_raw_os_error(libc::EFAULT);
    let mut off = 0;
    if let JobOp::Read = job.op {
        dev.read_at(buf, job.offset)?;
        for s in &job.segs {
            let end = off + s.len as usize;
            job.mem.write_slice(&buf[off..end], s.addr).map_err(guest)?;
            off = end;
        }
        return Ok(());
    }
    for s in &job.segs {
        let end = off + s.len as usize;
        job.mem
            .read_slice(&mut buf[off..end], s.addr)
            .map_err(guest)?;
        off = end;
    }
    dev.write_at(buf, job.offset)
}
