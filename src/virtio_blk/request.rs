//! Parse-then-act: validates a whole virtio-blk descriptor chain before any I/O.
//!
//! Framing is not assumed: the 16-byte header is the first 16 bytes of the chain (the first
//! descriptor must hold it), the status is the last byte of the last descriptor, and everything
//! in between is data. Every address range is checked against guest memory here, so the I/O
//! layer only ever touches memory inside the guest's regions.

use thiserror::Error;
use virtio_bindings::virtio_blk::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::config::{DiskGeometry, RequestLimits, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};

/// Most descriptors one chain may have (the kernel's IOV_MAX).
pub const MAX_DESCRIPTORS: usize = 1024;
/// Bytes of serial a GET_ID request returns at most.
pub const ID_BYTES: usize = 20;

/// Status byte values from the virtio specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Ok = VIRTIO_BLK_S_OK as u8,
    IoErr = VIRTIO_BLK_S_IOERR as u8,
    Unsupp = VIRTIO_BLK_S_UNSUPP as u8,
}

/// One guest buffer, already checked to lie inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
    /// Device-writable (the guest reads it back).
    pub writable: bool,
}

/// One discard or write-zeroes range, validated against the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Range {
    pub sector: u64,
    pub sectors: u32,
}

/// The ranges of a discard or write-zeroes request (no allocation per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    items: [Range; MAX_DISCARD_SEG as usize],
    len: usize,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges {
            items: [Range::default(); MAX_DISCARD_SEG as usize],
            len: 0,
        }
    }
}

impl Ranges {
    pub fn as_slice(&self) -> &[Range] {
        &self.items[..self.len]
    }
}

/// What a valid request asks for. Data buffers are in the `data` vector given to [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read { sector: u64 },
    Write { sector: u64 },
    Flush,
    GetId,
    Discard(Ranges),
    WriteZeroes { ranges: Ranges, unmap: bool },
}

/// A validated request: what to do, where to write the status, total data bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub status: GuestAddress,
    pub data_len: u32,
}

/// Why a chain was refused. `status()` maps each to the byte the specification asks for.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain is empty")]
    EmptyChain,
    #[error("descriptor chain has more than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("last descriptor is not a device-writable status byte")]
    MissingStatus,
    #[error("descriptor at {addr:#x} (+{len}) lies outside guest memory")]
    OutsideGuestMemory { addr: u64, len: u32 },
    #[error("request header is shorter than 16 bytes or not device-readable")]
    BadHeader,
    #[error("data buffer has the wrong direction for request type {0}")]
    WrongDirection(u32),
    #[error("data length {0} is not a multiple of the logical block size")]
    UnalignedLength(u32),
    #[error("sector {0} is not aligned to the logical block size")]
    UnalignedSector(u64),
    #[error("sectors {sector}+{sectors} are past the capacity of {capacity} sectors")]
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("discard or write-zeroes segment list of {0} bytes is malformed")]
    BadSegmentList(u32),
    #[error("discard or write-zeroes flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    #[error("request has {count} data segments, more than seg_max {max}")]
    TooManySegments { count: usize, max: u32 },
    #[error("data segment of {len} bytes is larger than size_max {max}")]
    SegmentTooLarge { len: u32, max: u32 },
}

impl RequestError {
    /// The status byte this error completes the request with.
    pub fn status(&self) -> Status {
        match self {
            RequestError::EmptyChain
            | RequestError::TooManyDescriptors
            | RequestError::MissingStatus
            | RequestError::OutsideGuestMemory { .. }
            | RequestError::BadHeader
            | RequestError::WrongDirection(_)
            | RequestError::UnalignedLength(_)
            | RequestError::UnalignedSector(_)
            | RequestError::OutOfRange { .. }
            | RequestError::ReadOnly
            | RequestError::BadSegmentList(_)
            | RequestError::TooManySegments { .. }
            | RequestError::SegmentTooLarge { .. } => Status::IoErr,
            RequestError::UnsupportedFlags(_) | RequestError::UnsupportedType(_) => Status::Unsupp,
        }
    }
}

/// A refused chain. `status` is where to write the error byte, if the chain has one.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// Parses one descriptor chain. `descs` yields `(addr, len, device_writable)`; `data` is
/// cleared and filled with the data segments (reused between requests to avoid allocation).
/// Requests beyond the advertised `limits` are refused.
pub fn parse<M, I>(
    descs: I,
    mem: &M,
    geo: &DiskGeometry,
    limits: &RequestLimits,
    data: &mut Vec<Segment>,
) -> Result<Request, Rejected>
where
    M: GuestMemoryBackend + Bytes<GuestAddress>,
    I: IntoIterator<Item = (GuestAddress, u32, bool)>,
{
    data.clear();
    let no_status = |error| Rejected {
        status: None,
        error,
    };
    for (addr, len, writable) in descs {
        if data.len() == MAX_DESCRIPTORS + 2 {
            return Err(no_status(RequestError::TooManyDescriptors));
        }
        data.push(Segment {
            addr,
            len,
            writable,
        });
    }
    let last = data.pop().ok_or(no_status(RequestError::EmptyChain))?;
    if !last.writable || last.len == 0 {
        return Err(no_status(RequestError::MissingStatus));
    }
    if !mem.check_range(last.addr, last.len as usize) {
        return Err(no_status(RequestError::OutsideGuestMemory {
            addr: last.addr.0,
            len: last.len,
        }));
    }
    // Checked above: the whole descriptor is inside guest memory, so its last byte is too.
    let status = GuestAddress(last.addr.0 + u64::from(last.len) - 1);
    if last.len > 1 {
        data.push(Segment {
            len: last.len - 1,
            ..last
        });
    }
    let with_status = |error| Rejected {
        status: Some(status),
        error,
    };
    if let Some(bad) = data
        .iter()
        .find(|s| !mem.check_range(s.addr, s.len as usize))
    {
        return Err(with_status(RequestError::OutsideGuestMemory {
            addr: bad.addr.0,
            len: bad.len,
        }));
    }
    match parse_body(mem, geo, limits, data) {
        Ok((kind, data_len)) => Ok(Request {
            kind,
            status,
            data_len,
        }),
        Err(e) => Err(with_status(e)),
    }
}

fn parse_body<M>(
    mem: &M,
    geo: &DiskGeometry,
    limits: &RequestLimits,
    data: &mut Vec<Segment>,
) -> Result<(RequestKind, u32), RequestError>
where
    M: GuestMemoryBackend + Bytes<GuestAddress>,
{
    let head = match data.first() {
        Some(h) if !h.writable && h.len >= 16 => *h,
        _ => return Err(RequestError::BadHeader),
    };
    let mut hdr = [0u8; 16];
    mem.read_slice(&mut hdr, head.addr)
        .map_err(|_| RequestError::BadHeader)?;
    if head.len == 16 {
        data.remove(0);
    } else {
        data[0] = Segment {
            addr: GuestAddress(head.addr.0 + 16),
            len: head.len - 16,
            writable: false,
        };
    }
    let rtype = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    data.retain(|s| s.len > 0);
    if data.len() > limits.seg_max as usize {
        return Err(RequestError::TooManySegments {
            count: data.len(),
            max: limits.seg_max,
        });
    }
    if let Some(s) = data.iter().find(|s| s.len > limits.size_max) {
        return Err(RequestError::SegmentTooLarge {
            len: s.len,
            max: limits.size_max,
        });
    }
    let mut total: u64 = 0;
    for s in data.iter() {
        total += u64::from(s.len);
    }
    // Chains are limited to 2^32 bytes by the descriptor chain iterator; be defensive anyway.
    let data_len = u32::try_from(total).map_err(|_| RequestError::UnalignedLength(u32::MAX))?;
    let dir_ok = |writable: bool| data.iter().all(|s| s.writable == writable);

    let kind = match rtype {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let write = rtype == VIRTIO_BLK_T_OUT;
            if !dir_ok(!write) {
                return Err(RequestError::WrongDirection(rtype));
            }
            if write && geo.readonly {
                return Err(RequestError::ReadOnly);
            }
            if data_len % geo.logical_block_size != 0 {
                return Err(RequestError::UnalignedLength(data_len));
            }
            check_range(geo, sector, u64::from(data_len / 512))?;
            if write {
                RequestKind::Write { sector }
            } else {
                RequestKind::Read { sector }
            }
        }
        VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
        VIRTIO_BLK_T_GET_ID => {
            if !dir_ok(true) {
                return Err(RequestError::WrongDirection(rtype));
            }
            RequestKind::GetId
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            if !geo.discard && !geo.readonly {
                return Err(RequestError::UnsupportedType(rtype));
            }
            if geo.readonly {
                return Err(RequestError::ReadOnly);
            }
            if !dir_ok(false) {
                return Err(RequestError::WrongDirection(rtype));
            }
            let zeroes = rtype == VIRTIO_BLK_T_WRITE_ZEROES;
            let (ranges, unmap) = parse_ranges(mem, geo, data, data_len, zeroes)?;
            if zeroes {
                RequestKind::WriteZeroes { ranges, unmap }
            } else {
                RequestKind::Discard(ranges)
            }
        }
        other => return Err(RequestError::UnsupportedType(other)),
    };
    Ok((kind, data_len))
}

fn check_range(geo: &DiskGeometry, sector: u64, sectors: u64) -> Result<(), RequestError> {
    let out = || RequestError::OutOfRange {
        sector,
        sectors,
        capacity: geo.capacity_sectors,
    };
    let end = sector.checked_add(sectors).ok_or_else(out)?;
    if end > geo.capacity_sectors {
        return Err(out());
    }
    if sector % geo.block_sectors() != 0 {
        return Err(RequestError::UnalignedSector(sector));
    }
    Ok(())
}

fn parse_ranges<M>(
    mem: &M,
    geo: &DiskGeometry,
    data: &[Segment],
    data_len: u32,
    zeroes: bool,
) -> Result<(Ranges, bool), RequestError>
where
    M: GuestMemoryBackend + Bytes<GuestAddress>,
{
    let count = data_len / 16;
    if data_len == 0 || data_len % 16 != 0 || count > MAX_DISCARD_SEG {
        return Err(RequestError::BadSegmentList(data_len));
    }
    // Gather the segment list (at most 512 bytes) from however many buffers hold it.
    let mut raw = [0u8; 16 * MAX_DISCARD_SEG as usize];
    let mut off = 0usize;
    for s in data {
        let dst = &mut raw[off..off + s.len as usize];
        mem.read_slice(dst, s.addr)
            .map_err(|_| RequestError::BadSegmentList(data_len))?;
        off += s.len as usize;
    }
    let mut ranges = Ranges::default();
    let mut unmap = true;
    for chunk in raw[..off].chunks_exact(16) {
        let sector = u64::from_le_bytes(chunk[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(chunk[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(chunk[12..16].try_into().unwrap_or_default());
        let allowed = if zeroes {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        } else {
            0
        };
        if flags & !allowed != 0 {
            return Err(RequestError::UnsupportedFlags(flags));
        }
        unmap &= flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        if sectors > MAX_DISCARD_SECTORS {
            return Err(RequestError::OutOfRange {
                sector,
                sectors: u64::from(sectors),
                capacity: geo.capacity_sectors,
            });
        }
        if u64::from(sectors) % geo.block_sectors() != 0 {
            return Err(RequestError::UnalignedLength(sectors.saturating_mul(512)));
        }
        check_range(geo, sector, u64::from(sectors))?;
        ranges.items[ranges.len] = Range { sector, sectors };
        ranges.len += 1;
    }
    Ok((ranges, zeroes && unmap))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
