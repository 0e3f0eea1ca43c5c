//! Tests of the helper-thread pool: jobs, completions and shutdown.

use super::*;
use crate::storage::MemDevice;
use std::sync::atomic::{AtomicUsize, Ordering};
use vm_memory::GuestAddress;

/// A device that panics on reads of byte 0 and records the largest transfer it saw.
struct Hostile {
    inner: MemDevice,
    largest: AtomicUsize,
    flushes: AtomicUsize,
}

impl BlockDevice for Hostile {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        assert!(offset != 0, "injected fault: read of byte 0");
        self.largest.fetch_max(buf.len(), Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.largest.fetch_max(buf.len(), Ordering::Relaxed);
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.write_zeroes(offset, len)
    }
}

fn setup() -> (Arc<Hostile>, Pool, EventFd, Arc<Mem>) {
    let dev = Arc::new(Hostile {
        inner: MemDevice::new(16 << 20),
        largest: AtomicUsize::new(0),
        flushes: AtomicUsize::new(0),
    });
    let event = EventFd::new(0).unwrap();
    let pool = Pool::new(dev.clone(), 1, &event, "test").unwrap();
    let mem = Arc::new(Mem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    (dev, pool, event, mem)
}

fn job(slot: usize, op: JobOp, offset: u64, segs: Vec<Segment>, mem: &Arc<Mem>) -> Job {
    Job {
        slot,
        op,
        offset,
        len: segs.iter().map(|s| s.len).sum(),
        segs,
        ranges: Ranges::default(),
        mem: mem.clone(),
        durable: false,
    }
}

/// Waits for the next completion.
fn next(pool: &Pool, event: &EventFd) -> (usize, i32) {
    loop {
        let mut out = Vec::new();
        pool.take_done(&mut out);
        if let Some(&d) = out.first() {
            assert_eq!(out.len(), 1);
            return d;
        }
        event.read().unwrap();
    }
}

#[test]
fn write_through_jobs_are_flushed_before_they_complete() {
    let (dev, pool, event, mem) = setup();
    let seg = Segment {
        addr: GuestAddress(0x1000),
        len: 4096,
        writable: false,
    };
    let flushes = || dev.flushes.load(Ordering::Relaxed);
    pool.submit(job(1, JobOp::Write, 4096, vec![seg], &mem))
        .unwrap();
    assert_eq!(next(&pool, &event), (1, 4096));
    assert_eq!(flushes(), 0, "write-back: no flush");
    for (slot, op) in [(2, JobOp::Write), (3, JobOp::WriteZeroes), (4, JobOp::Read)] {
        let mut j = job(slot, op, 4096, vec![seg], &mem);
        j.durable = true;
        pool.submit(j).unwrap();
        assert_eq!(next(&pool, &event).0, slot);
    }
    assert_eq!(
        flushes(),
        2,
        "write-through: the write and write-zeroes, not the read"
    );
}

#[test]
fn a_panicking_job_fails_with_eio_and_the_thread_goes_on() {
    let (_dev, pool, event, mem) = setup();
    let seg = |len| Segment {
        addr: GuestAddress(0x1000),
        len,
        writable: true,
    };
    pool.submit(job(3, JobOp::Read, 0, vec![seg(512)], &mem))
        .unwrap();
    assert_eq!(next(&pool, &event), (3, -libc::EIO));
    // The same (only) thread serves the next job.
    pool.submit(job(4, JobOp::Read, 4096, vec![seg(512)], &mem))
        .unwrap();
    assert_eq!(next(&pool, &event), (4, 512));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    pool.submit_task(5, Box::new(|| panic!("injected task fault")))
        .unwrap();
    assert_eq!(next(&pool, &event), (5, -libc::EIO));
    pool.submit_task(
        6,
        Box::new(move || {
            r.fetch_add(1, Ordering::Relaxed);
        }),
    )
    .unwrap();
    assert_eq!(next(&pool, &event), (6, 0));
    assert_eq!(ran.load(Ordering::Relaxed), 1);
}

#[test]
fn an_aliased_request_moves_through_a_bounded_buffer() {
    let (dev, pool, event, mem) = setup();
    // 8 MiB described by 128 descriptors naming the same 64 KiB of guest memory.
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i * 31 % 251) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(0x10000)).unwrap();
    let aliased = |writable| {
        vec![
            Segment {
                addr: GuestAddress(0x10000),
                len: 65536,
                writable,
            };
            128
        ]
    };
    pool.submit(job(1, JobOp::Write, 4096, aliased(false), &mem))
        .unwrap();
    assert_eq!(next(&pool, &event), (1, 8 << 20));
    let disk = dev.inner.contents();
    for k in 0..128 {
        let at = 4096 + k * 65536;
        assert!(disk[at..at + 65536] == pattern[..], "copy {k}");
    }
    assert!(dev.largest.load(Ordering::Relaxed) <= CHUNK);
    // A read scattered over segments of odd sizes gets the bytes in order.
    let segs = [(0x20000u64, 4096u32), (0x30000, 3 << 18), (0x40000, 8192)]
        .map(|(a, l)| Segment {
            addr: GuestAddress(a),
            len: l,
            writable: true,
        })
        .to_vec();
    let total: usize = segs.iter().map(|s| s.len as usize).sum();
    pool.submit(job(2, JobOp::Read, 4096, segs.clone(), &mem))
        .unwrap();
    assert_eq!(next(&pool, &event), (2, total as i32));
    let mut off = 4096;
    for s in &segs {
        let mut got = vec![0u8; s.len as usize];
        mem.read_slice(&mut got, s.addr).unwrap();
        assert!(got[..] == disk[off..off + got.len()]);
        off += got.len();
    }
    assert!(dev.largest.load(Ordering::Relaxed) <= CHUNK);
}
