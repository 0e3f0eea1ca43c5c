//! The in-flight table of one queue: a fixed set of slots, each holding one request's iovecs
//! (pointing straight into guest memory), its progress and the mapping that keeps them valid.
//!
//! A request the kernel cannot take from guest memory directly (O_DIRECT, unaligned buffers)
//! moves through an aligned bounce buffer of at most `BOUNCE_MAX` bytes, a piece at a time, so
//! one request costs at most that much memory whatever its length.

use std::sync::Arc;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::storage::{Image, Ticket};
use crate::virtio_blk::request::{Ranges, Request, RequestKind, Segment, Status};
use crate::virtio_blk::DiskGeometry;

type Mem = GuestMemoryMmap<()>;

/// What a slot's I/O is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    Flush,
    Discard,
    WriteZeroes { unmap: bool },
}

/// An iovec into guest memory or a bounce buffer.
#[derive(Clone, Copy)]
struct IoVec(libc::iovec);

// SAFETY: an IoVec is only an address and a length; the memory it names is kept mapped by the
// slot's `mem` Arc (or bounce buffer) and only the owning queue thread dereferences it (through
// the kernel).
unsafe impl Send for IoVec {}

/// A heap buffer aligned for O_DIRECT, used when guest buffers are not aligned.
struct Bounce {
    buf: Vec<u8>,
    off: usize,
    len: usize,
}

const DIRECT_ALIGN: usize = 4096;
/// Largest bounce buffer of one request (a multiple of every logical block size).
pub const BOUNCE_MAX: usize = 256 << 10;

impl Bounce {
    fn new(len: usize) -> Bounce {
        let buf = vec![0u8; len + DIRECT_ALIGN];
        let off = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Bounce { buf, off, len }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// Why a request could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("guest buffer at {0:#x} is not mapped")]
    Unmapped(u64),
    #[error("cannot copy guest data for an unaligned direct request")]
    BounceCopy,
}

/// What a completed transfer left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Done,
    /// A short transfer: resubmit the rest.
    More,
    /// No progress at all (EOF: the image shrank under us).
    Stuck,
}

/// One request in flight.
pub struct Slot {
    pub head: u16,
    pub status: GuestAddress,
    pub op: IoOp,
    pub data_len: u32,
    /// Byte offset of the next transfer in the image.
    pub offset: u64,
    /// Which registered file the transfers go to, and what to add to `offset` there (a
    /// snapshot's chunk mapped into its COW).
    pub file: u32,
    pub file_delta: u64,
    /// A direct graph request's engine ticket, handed back when it completes.
    pub ticket: Option<Ticket>,
    /// SQEs submitted and not yet completed.
    pub pending: u32,
    /// A helper thread has (or will run) this request.
    pub helper: bool,
    pub failed: bool,
    /// A write-through discard or write-zeroes has had its `fdatasync` queued.
    pub synced: bool,
    pub mem: Option<Arc<Mem>>,
    pub ranges: Ranges,
    iov: Vec<IoVec>,
    iov_pos: usize,
    bounce: Option<Bounce>,
    /// Bytes of a bounced request done in earlier pieces, and the length of the current one.
    bounced: u32,
    piece: u32,
    segs: Vec<Segment>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            head: 0,
            status: GuestAddress(0),
            op: IoOp::Flush,
            data_len: 0,
            offset: 0,
            file: 0,
            file_delta: 0,
            ticket: None,
            pending: 0,
            helper: false,
            failed: false,
            synced: false,
            mem: None,
            ranges: Ranges::default(),
            iov: Vec::new(),
            iov_pos: 0,
            bounce: None,
            bounced: 0,
            piece: 0,
            segs: Vec::new(),
        }
    }

    /// Starts a new request in this slot.
    pub fn begin(&mut self, head: u16, req: Request, mem: Arc<Mem>) {
        self.head = head;
        self.status = req.status;
        self.data_len = req.data_len;
        self.pending = 0;
        self.helper = false;
        self.failed = false;
        self.synced = false;
        self.mem = Some(mem);
        self.iov.clear();
        self.iov_pos = 0;
        self.bounce = None;
        self.segs.clear();
        self.ranges = Ranges::default();
        self.offset = 0;
        self.file = 0;
        self.file_delta = 0;
        self.ticket = None;
        self.op = match req.kind {
            RequestKind::Read { sector } => {
                self.offset = sector * 512;
                IoOp::Read
            }
            RequestKind::Write { sector } => {
                self.offset = sector * 512;
                IoOp::Write
            }
            RequestKind::Flush | RequestKind::GetId => IoOp::Flush,
            RequestKind::Discard(r) => {
                self.ranges = r;
                IoOp::Discard
            }
            RequestKind::WriteZeroes { ranges, unmap } => {
                self.ranges = ranges;
                IoOp::WriteZeroes { unmap }
            }
        };
    }

    /// Builds the iovecs of a read or write: guest memory directly, or an aligned bounce
    /// buffer when the image is opened O_DIRECT and a guest buffer is not aligned.
    pub fn prepare(
        &mut self,
        segs: &[Segment],
        mem: &Mem,
        geometry: &DiskGeometry,
        direct: bool,
    ) -> Result<(), PrepareError> {
        if !matches!(self.op, IoOp::Read | IoOp::Write) {
            return Ok(());
        }
        for seg in segs {
            for slice in mem.get_slices(seg.addr, seg.len as usize) {
                let slice = slice.map_err(|_| PrepareError::Unmapped(seg.addr.0))?;
                self.iov.push(IoVec(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                }));
            }
        }
        let align = (geometry.logical_block_size as usize).max(512);
        let aligned = self
            .iov
            .iter()
            .all(|v| (v.0.iov_base as usize) % align == 0 && v.0.iov_len % align == 0);
        if direct && !aligned {
            self.bounce = Some(Bounce::new((self.data_len as usize).min(BOUNCE_MAX)));
            self.segs.extend_from_slice(segs);
            self.bounced = 0;
            if !self.load_piece(mem) {
                return Err(PrepareError::BounceCopy);
            }
        }
        Ok(())
    }

    /// Points the iovecs at the bounce buffer for the next piece (filled from guest memory
    /// for a write). False: the guest data could not be read.
    fn load_piece(&mut self, mem: &Mem) -> bool {
        let Some(bounce) = self.bounce.as_mut() else {
            return false;
        };
        let piece = (self.data_len - self.bounced).min(bounce.len as u32);
        let buf = &mut bounce.as_mut_slice()[..piece as usize];
        if self.op == IoOp::Write && !copy_guest(&self.segs, mem, self.bounced, buf, false) {
            return false;
        }
        self.iov.clear();
        self.iov_pos = 0;
        self.iov.push(IoVec(libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }));
        self.piece = piece;
        true
    }

    /// A bounced piece is done: a read's bytes go to the guest, and the next piece is
    /// loaded. `None`: the request is done.
    fn next_piece(&mut self) -> Option<Progress> {
        let (Some(bounce), Some(mem)) = (self.bounce.as_mut(), self.mem.clone()) else {
            return None;
        };
        if self.op == IoOp::Read {
            let buf = &mut bounce.as_mut_slice()[..self.piece as usize];
            if !copy_guest(&self.segs, &mem, self.bounced, buf, true) {
                return Some(Progress::Stuck);
            }
        }
        self.bounced += self.piece;
        if self.bounced >= self.data_len {
            return None;
        }
        Some(if self.load_piece(&mem) {
            Progress::More
        } else {
            Progress::Stuck
        })
    }

    /// Drops what `prepare` built (the request takes another path).
    pub fn reset_buffers(&mut self) {
        self.iov.clear();
        self.iov_pos = 0;
        self.bounce = None;
        self.segs.clear();
    }

    /// The iovecs not yet transferred.
    pub fn iov_remaining(&self) -> (*const libc::iovec, u32) {
        let rest = &self.iov[self.iov_pos..];
        (rest.as_ptr().cast(), rest.len() as u32)
    }

    /// The bytes the iovecs not yet transferred name.
    pub fn remaining_len(&self) -> u32 {
        let n: usize = self.iov[self.iov_pos..].iter().map(|v| v.0.iov_len).sum();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Accounts `n` bytes transferred.
    pub fn advance(&mut self, mut n: u32) -> Progress {
        let had_rest = self.iov_pos < self.iov.len();
        if n == 0 && had_rest && self.iov[self.iov_pos..].iter().any(|v| v.0.iov_len > 0) {
            return Progress::Stuck;
        }
        self.offset += u64::from(n);
        while n > 0 && self.iov_pos < self.iov.len() {
            let v = &mut self.iov[self.iov_pos].0;
            if (n as usize) < v.iov_len {
                // SAFETY: stays inside the same buffer; only advances the start.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n as usize) }.cast();
                v.iov_len -= n as usize;
                n = 0;
            } else {
                n -= v.iov_len as u32;
                self.iov_pos += 1;
            }
        }
        if self.iov_pos < self.iov.len() {
            return Progress::More;
        }
        self.next_piece().unwrap_or(Progress::Done)
    }

    /// fallocate(2) mode for this slot's discard / write-zeroes ranges.
    pub fn fallocate_mode(&self, zero_range_supported: bool) -> i32 {
        match self.op {
            IoOp::WriteZeroes { unmap: false } if zero_range_supported => {
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
            }
            _ => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }

    /// Discard / write-zeroes on a block device, synchronously, through ioctls.
    pub fn block_device_ranges(&self, image: &Image) -> std::io::Result<()> {
        for r in self.ranges.as_slice() {
            match self.op {
                IoOp::Discard => image.discard(r.sector * 512, u64::from(r.sectors) * 512)?,
                _ => image.zero_out(r.sector * 512, u64::from(r.sectors) * 512)?,
            }
        }
        Ok(())
    }

    /// Final status and used length (a bounced read reached the guest piece by piece).
    pub fn finish(&mut self) -> (Status, u32) {
        self.bounce = None;
        if self.failed {
            return (Status::IoErr, 1);
        }
        match self.op {
            IoOp::Read => (Status::Ok, self.data_len + 1),
            _ => (Status::Ok, 1),
        }
    }
}

/// Copies between `buf` and the bytes of `segs` (taken as one run) from `start` on: into the
/// guest (`to_guest`) or out of it. False: a segment is outside guest memory.
pub fn copy_guest(segs: &[Segment], mem: &Mem, start: u32, buf: &mut [u8], to_guest: bool) -> bool {
    let (mut skip, mut off) = (start as usize, 0usize);
    for seg in segs {
        let len = seg.len as usize;
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(buf.len() - off);
        let Some(addr) = seg.addr.checked_add(skip as u64) else {
            return false;
        };
        let ok = if to_guest {
            mem.write_slice(&buf[off..off + n], addr).is_ok()
        } else {
            mem.read_slice(&mut buf[off..off + n], addr).is_ok()
        };
        if !ok {
            return false;
        }
        skip = 0;
        off += n;
        if off == buf.len() {
            break;
        }
    }
    off == buf.len()
}

/// The slot table: fixed size (the queue size), a free list, no allocation per request.
pub struct Slots {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots {
            slots: (0..n).map(|_| Slot::new()).collect(),
            free: (0..n).rev().collect(),
        }
    }

    pub fn alloc(&mut self) -> Option<usize> {
        self.free.pop()
    }

    pub fn free(&mut self, idx: usize) {
        let slot = &mut self.slots[idx];
        slot.mem = None;
        slot.bounce = None;
        slot.pending = 0;
        self.free.push(idx);
    }

    pub fn get_mut(&mut self, idx: usize) -> &mut Slot {
        &mut self.slots[idx]
    }

    pub fn get(&self, idx: usize) -> &Slot {
        &self.slots[idx]
    }

    /// The slots in use.
    pub fn busy(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&i| self.in_use(i))
    }

    /// Whether `idx` names a slot that is in use (guards against stale completions).
    pub fn in_use(&self, idx: usize) -> bool {
        idx < self.slots.len() && self.slots[idx].mem.is_some()
    }

    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

#[cfg(test)]
#[path = "inflight_tests.rs"]
mod tests;
