//! The in-flight table of one queue: a fixed set of slots, each holding one request's iovecs
//! (pointing straight into guest memory), its progress and the mapping that keeps them valid.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

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
    pub failed: bool,
    pub mem: Option<Arc<Mem>>,
    pub ranges: Ranges,
    iov: Vec<IoVec>,
    iov_pos: usize,
    bounce: Option<Bounce>,
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
            failed: false,
            mem: None,
            ranges: Ranges::default(),
            iov: Vec::new(),
            iov_pos: 0,
            bounce: None,
            segs: Vec::new(),
        }
    }

    /// Starts a new request in this slot.
    pub fn begin(&mut self, head: u16, req: Request, mem: Arc<Mem>) {
        self.head = head;
        self.status = req.status;
        self.data_len = req.data_len;
        self.pending = 0;
        self.failed = false;
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
            let mut bounce = Bounce::new(self.data_len as usize);
            if self.op == IoOp::Write {
                let mut off = 0;
                let buf = bounce.as_mut_slice();
                for seg in segs {
                    let end = off + seg.len as usize;
                    mem.read_slice(&mut buf[off..end], seg.addr)
                        .map_err(|_| PrepareError::BounceCopy)?;
                    off = end;
                }
            }
            let base = bounce.as_mut_slice().as_mut_ptr();
            self.iov.clear();
            self.iov.push(IoVec(libc::iovec {
                iov_base: base.cast(),
                iov_len: self.data_len as usize,
            }));
            self.segs.extend_from_slice(segs);
            self.bounce = Some(bounce);
        }
        Ok(())
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
        if self.iov_pos >= self.iov.len() {
            Progress::Done
        } else {
            Progress::More
        }
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

    /// Final status and used length; copies a bounced read back into guest memory.
    pub fn finish(&mut self) -> (Status, u32) {
        if self.failed {
            return (Status::IoErr, 1);
        }
        if let (IoOp::Read, Some(mut bounce), Some(mem)) =
            (self.op, self.bounce.take(), self.mem.as_ref())
        {
            let buf = bounce.as_mut_slice();
            let mut off = 0;
            for seg in &self.segs {
                let end = off + seg.len as usize;
                if mem.write_slice(&buf[off..end], seg.addr).is_err() {
                    return (Status::IoErr, 1);
                }
                off = end;
            }
        }
        match self.op {
            IoOp::Read => (Status::Ok, self.data_len + 1),
            _ => (Status::Ok, 1),
        }
    }
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
