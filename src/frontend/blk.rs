//! Typed virtio-blk requests on top of a [`Queue`]: request slots, sync helpers, raw chains.
//!
//! Each slot owns a 64-byte metadata block (header at 0, discard/write-zeroes segment at 16,
//! status byte at 32) and a data buffer of `data_len` bytes. A typed request is the chain
//! `header (out) [, data (in/out)...] , status (in)`, the data split into descriptors of at
//! most the device's `size_max` bytes, as a driver must. Slots are picked by the caller, so a
//! load generator can keep `depth` requests in flight without any allocation.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::GuestAddress;

use super::error::{FrontendError, Result};
use super::memory::{GuestMem, Slab};
use super::queue::{Completion, Queue, RawDesc, Segment, MAX_INDIRECT};
use super::ring::{RingLayout, DESC_SIZE};

/// Bytes per virtio-blk sector, whatever the device's blk_size.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header.
pub const HEADER_SIZE: u32 = 16;
/// Value written to the status byte before submission: a backend that never writes the
/// status leaves it visible.
pub const STATUS_UNSET: u8 = 0xff;

const META_STRIDE: u64 = 64;
const META_PAYLOAD: u64 = 16;
const META_STATUS: u64 = 32;
const NO_SLOT: u16 = u16::MAX;

/// The request header: type, reserved, sector; little-endian.
pub fn header(ty: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    h
}

/// A discard / write-zeroes segment: sector, num_sectors, flags; little-endian.
pub fn range_segment(sector: u64, nsectors: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&nsectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

/// The status byte of a completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkStatus {
    Ok,
    IoErr,
    Unsupp,
    /// Anything else, including [`STATUS_UNSET`] when the backend did not write it.
    Other(u8),
}

impl From<u8> for BlkStatus {
    fn from(b: u8) -> Self {
        match u32::from(b) {
            VIRTIO_BLK_S_OK => Self::Ok,
            VIRTIO_BLK_S_IOERR => Self::IoErr,
            VIRTIO_BLK_S_UNSUPP => Self::Unsupp,
            _ => Self::Other(b),
        }
    }
}

/// A typed request on one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes into the slot's data buffer.
    Read {
        sector: u64,
        len: u32,
    },
    /// Write the first `len` bytes of the slot's data buffer.
    Write {
        sector: u64,
        len: u32,
    },
    Flush,
    /// Read the 20-byte serial into the slot's data buffer.
    GetId,
    Discard {
        sector: u64,
        nsectors: u32,
    },
    WriteZeroes {
        sector: u64,
        nsectors: u32,
        unmap: bool,
    },
}

/// The outcome of a synchronous request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: BlkStatus,
    /// Bytes the backend reported written into the chain (data + 1 status byte).
    pub used_len: u32,
}

/// A completion reaped from a [`BlkQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkCompletion {
    pub head: u16,
    /// The slot of a typed request; `None` for a raw chain.
    pub slot: Option<u16>,
    pub used_len: u32,
    /// The slot's status byte; `None` for a raw chain (its status lives where the caller put it).
    pub status: Option<BlkStatus>,
}

/// Typed virtio-blk requests on one queue.
pub struct BlkQueue {
    q: Queue,
    meta: Slab,
    data: Slab,
    data_len: u32,
    slot_of_head: Vec<u16>,
    busy: Vec<bool>,
    indirect: bool,
    /// Largest data descriptor (the device's `size_max`); 0: no limit.
    size_max: u32,
    /// The chain being built (reused).
    chain: Vec<Segment>,
}

impl BlkQueue {
    /// Guest memory one queue needs, to size [`super::FrontendOptions::mem_size`].
    pub fn memory_needed(queue_size: u16, depth: u16, data_len: u32) -> u64 {
        let ring = RingLayout::bytes(queue_size).div_ceil(4096) * 4096;
        let indirect = u64::from(queue_size) * MAX_INDIRECT as u64 * DESC_SIZE;
        let data = u64::from(data_len).max(1).div_ceil(4096) * 4096;
        ring + indirect + u64::from(depth) * (META_STRIDE + data) + 3 * 4096
    }

    /// Wraps a started queue with `depth` slots of `data_len` bytes each.
    pub fn new(q: Queue, depth: u16, data_len: u32) -> Result<Self> {
        if depth == 0 || depth == NO_SLOT {
            return Err(FrontendError::InvalidGeometry("queue depth"));
        }
        let mem = q.memory();
        let meta = Slab::new(mem, u32::from(depth), META_STRIDE, META_STRIDE)?;
        let align = if data_len >= 4096 { 4096 } else { 512 };
        let data = Slab::new(mem, u32::from(depth), u64::from(data_len), align)?;
        let size = usize::from(q.size());
        Ok(Self {
            q,
            meta,
            data,
            data_len,
            slot_of_head: vec![NO_SLOT; size],
            busy: vec![false; usize::from(depth)],
            indirect: false,
            size_max: 0,
            chain: Vec::new(),
        })
    }

    /// Data descriptors of typed requests carry at most `size_max` bytes (0: no limit), the
    /// limit the device advertises (`VIRTIO_BLK_F_SIZE_MAX`).
    pub fn set_size_max(&mut self, size_max: u32) {
        self.size_max = size_max;
    }

    /// The underlying ring driver (raw submissions, kick, custom waits).
    pub fn queue(&mut self) -> &mut Queue {
        &mut self.q
    }

    pub fn memory(&self) -> &GuestMem {
        self.q.memory()
    }

    /// Number of request slots.
    pub fn depth(&self) -> u16 {
        self.busy.len() as u16
    }

    /// Capacity of each slot's data buffer.
    pub fn data_len(&self) -> u32 {
        self.data_len
    }

    /// Typed requests go out as one indirect descriptor when `on` and the feature was negotiated.
    pub fn set_indirect(&mut self, on: bool) -> Result<()> {
        if on && !self.q.has_indirect() {
            return Err(FrontendError::IndirectUnavailable(self.q.index()));
        }
        self.indirect = on;
        Ok(())
    }

    /// Guest address of `slot`'s data buffer.
    pub fn data_addr(&self, slot: u16) -> GuestAddress {
        self.data.slot(u32::from(slot))
    }

    /// Guest address of `slot`'s header; the status byte is at +32.
    pub fn meta_addr(&self, slot: u16) -> GuestAddress {
        self.meta.slot(u32::from(slot))
    }

    /// Copies `bytes` into the start of `slot`'s data buffer.
    pub fn write_data(&self, slot: u16, bytes: &[u8]) -> Result<()> {
        self.check_len(bytes.len() as u64)?;
        self.memory().write(self.data_addr(slot), bytes)
    }

    /// Copies the start of `slot`'s data buffer into `buf`.
    pub fn read_data(&self, slot: u16, buf: &mut [u8]) -> Result<()> {
        self.check_len(buf.len() as u64)?;
        self.memory().read(self.data_addr(slot), buf)
    }

    pub fn in_flight(&self) -> u16 {
        self.q.in_flight()
    }

    fn check_len(&self, len: u64) -> Result<()> {
        if len > u64::from(self.data_len) {
            return Err(FrontendError::TooLarge {
                len,
                cap: self.data_len,
            });
        }
        Ok(())
    }

    /// Builds `req` in `slot` and publishes it (no kick). The slot must be idle.
    pub fn submit(&mut self, slot: u16, req: Request) -> Result<u16> {
        if self.busy.get(usize::from(slot)) != Some(&false) {
            return Err(FrontendError::SlotBusy { slot });
        }
        let meta = self.meta_addr(slot);
        let data = self.data_addr(slot);
        let (ty, sector, data_seg) = match req {
            Request::Read { sector, len } => {
                self.check_len(u64::from(len))?;
                (
                    VIRTIO_BLK_T_IN,
                    sector,
                    Some(Segment::from_device(data, len)),
                )
            }
            Request::Write { sector, len } => {
                self.check_len(u64::from(len))?;
                (
                    VIRTIO_BLK_T_OUT,
                    sector,
                    Some(Segment::to_device(data, len)),
                )
            }
            Request::Flush => (VIRTIO_BLK_T_FLUSH, 0, None),
            Request::GetId => {
                self.check_len(u64::from(VIRTIO_BLK_ID_BYTES))?;
                let seg = Segment::from_device(data, VIRTIO_BLK_ID_BYTES);
                (VIRTIO_BLK_T_GET_ID, 0, Some(seg))
            }
            Request::Discard { sector, nsectors } => {
                self.put_range(meta, sector, nsectors, 0)?;
                (VIRTIO_BLK_T_DISCARD, 0, Some(self.range_seg(meta)))
            }
            Request::WriteZeroes {
                sector,
                nsectors,
                unmap,
            } => {
                let flags = if unmap {
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
                } else {
                    0
                };
                self.put_range(meta, sector, nsectors, flags)?;
                (VIRTIO_BLK_T_WRITE_ZEROES, 0, Some(self.range_seg(meta)))
            }
        };
        let mem = self.q.memory();
        mem.write(meta, &header(ty, sector))?;
        let status = GuestAddress(meta.0 + META_STATUS);
        mem.store(status, STATUS_UNSET, Ordering::Relaxed)?;
        self.chain.clear();
        self.chain.push(Segment::to_device(meta, HEADER_SIZE));
        if let Some(d) = data_seg {
            let step = if self.size_max == 0 {
                u32::MAX
            } else {
                self.size_max
            };
            let mut off = 0;
            while off < d.len {
                let len = (d.len - off).min(step);
                self.chain.push(Segment {
                    addr: d.addr + u64::from(off),
                    len,
                    writable: d.writable,
                });
                off += len;
            }
        }
        self.chain.push(Segment::from_device(status, 1));
        let head = self.q.submit(&self.chain, self.indirect)?;
        self.slot_of_head[usize::from(head)] = slot;
        self.busy[usize::from(slot)] = true;
        Ok(head)
    }

    fn put_range(&self, meta: GuestAddress, sector: u64, n: u32, flags: u32) -> Result<()> {
        let at = GuestAddress(meta.0 + META_PAYLOAD);
        self.memory().write(at, &range_segment(sector, n, flags))
    }

    fn range_seg(&self, meta: GuestAddress) -> Segment {
        Segment::to_device(GuestAddress(meta.0 + META_PAYLOAD), 16)
    }

    /// Publishes a raw chain (no slot, no kick). Its completion comes back with `slot: None`.
    pub fn submit_raw(&mut self, chain: &[Segment], indirect: bool) -> Result<u16> {
        let head = self.q.submit(chain, indirect)?;
        self.slot_of_head[usize::from(head)] = NO_SLOT;
        Ok(head)
    }

    /// Kicks the backend if it wants to be kicked.
    pub fn kick(&mut self) -> Result<bool> {
        self.q.kick()
    }

    /// Blocks until at least one completion is available (or the queue's timeout).
    pub fn wait(&mut self) -> Result<()> {
        self.q.wait()
    }

    /// Pops one completion, freeing its slot.
    pub fn pop(&mut self) -> Result<Option<BlkCompletion>> {
        let Some(Completion { head, len }) = self.q.pop_used()? else {
            return Ok(None);
        };
        let slot = std::mem::replace(&mut self.slot_of_head[usize::from(head)], NO_SLOT);
        if slot == NO_SLOT {
            return Ok(Some(BlkCompletion {
                head,
                slot: None,
                used_len: len,
                status: None,
            }));
        }
        self.busy[usize::from(slot)] = false;
        let at = GuestAddress(self.meta_addr(slot).0 + META_STATUS);
        let status: u8 = self.memory().load(at, Ordering::Acquire)?;
        Ok(Some(BlkCompletion {
            head,
            slot: Some(slot),
            used_len: len,
            status: Some(status.into()),
        }))
    }

    /// Pops every available completion into `out` (not cleared first). Returns how many.
    pub fn reap(&mut self, out: &mut Vec<BlkCompletion>) -> Result<usize> {
        let before = out.len();
        while let Some(c) = self.pop()? {
            out.push(c);
        }
        Ok(out.len() - before)
    }

    /// Submits, kicks and waits for one request on an otherwise idle queue.
    fn run_one(&mut self, req: Request) -> Result<Reply> {
        self.ensure_idle()?;
        self.submit(0, req)?;
        let c = self.finish_one()?;
        Ok(Reply {
            status: c.status.unwrap_or(BlkStatus::Other(STATUS_UNSET)),
            used_len: c.used_len,
        })
    }

    fn ensure_idle(&self) -> Result<()> {
        match self.q.in_flight() {
            0 => Ok(()),
            n => Err(FrontendError::Busy(n)),
        }
    }

    fn finish_one(&mut self) -> Result<BlkCompletion> {
        self.q.kick()?;
        loop {
            if let Some(c) = self.pop()? {
                return Ok(c);
            }
            self.q.wait()?;
        }
    }

    /// Reads `len` bytes at `sector`.
    pub fn read(&mut self, sector: u64, len: u32) -> Result<(Reply, Vec<u8>)> {
        let reply = self.run_one(Request::Read { sector, len })?;
        let mut buf = vec![0u8; len as usize];
        self.read_data(0, &mut buf)?;
        Ok((reply, buf))
    }

    /// Writes `data` at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<Reply> {
        self.ensure_idle()?;
        self.write_data(0, data)?;
        let len = data.len() as u32;
        self.run_one(Request::Write { sector, len })
    }

    pub fn flush(&mut self) -> Result<Reply> {
        self.run_one(Request::Flush)
    }

    /// Reads the device serial (20 bytes, NUL-padded when shorter).
    pub fn get_id(&mut self) -> Result<(Reply, Vec<u8>)> {
        self.ensure_idle()?;
        self.memory()
            .fill(self.data_addr(0), VIRTIO_BLK_ID_BYTES as usize, 0)?;
        let reply = self.run_one(Request::GetId)?;
        let mut id = vec![0u8; VIRTIO_BLK_ID_BYTES as usize];
        self.read_data(0, &mut id)?;
        Ok((reply, id))
    }

    pub fn discard(&mut self, sector: u64, nsectors: u32) -> Result<Reply> {
        self.run_one(Request::Discard { sector, nsectors })
    }

    pub fn write_zeroes(&mut self, sector: u64, nsectors: u32, unmap: bool) -> Result<Reply> {
        self.run_one(Request::WriteZeroes {
            sector,
            nsectors,
            unmap,
        })
    }

    /// Submits a verbatim descriptor table (see [`Queue::submit_table`]), kicks, and waits for
    /// its completion. The queue must be idle.
    pub fn raw_table(&mut self, descs: &[RawDesc]) -> Result<Completion> {
        self.ensure_idle()?;
        self.q.submit_table(descs)?;
        let c = self.finish_one()?;
        Ok(Completion {
            head: c.head,
            len: c.used_len,
        })
    }

    /// Submits an arbitrary (possibly malformed) chain, kicks, and waits for its completion.
    /// The queue must be idle. The caller reads the status wherever it placed it.
    pub fn raw_chain(&mut self, chain: &[Segment], indirect: bool) -> Result<Completion> {
        self.ensure_idle()?;
        self.submit_raw(chain, indirect)?;
        let c = self.finish_one()?;
        Ok(Completion {
            head: c.head,
            len: c.used_len,
        })
    }
}
