//! Shared guest memory: one memfd-backed region handed to the backend, with a bump allocator.
//!
//! The backend maps the same memfd (it receives the fd in SET_MEM_TABLE), so what the frontend
//! writes through [`GuestMem`] the backend sees, and vice versa. Rings and request buffers are
//! carved out with [`GuestMem::alloc`]; nothing is ever freed (the memory lives as long as the
//! connection).

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Address, AtomicAccess, ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryBackend,
    GuestMemoryMmap,
};

use super::error::{FrontendError, Result};

/// Guest-physical address at which the memory starts. Not zero, so that a backend confusing
/// guest addresses with offsets fails loudly.
pub const GUEST_BASE: u64 = 0x1_0000_0000;

const PAGE: u64 = 4096;

/// The guest memory of a frontend session.
pub struct GuestMem {
    mem: GuestMemoryMmap,
    size: u64,
    /// Offset of the first unallocated byte.
    next: AtomicU64,
}

impl GuestMem {
    /// Creates `size` bytes (rounded up to a page) of shared memory backed by a fresh memfd.
    pub fn new(size: u64) -> Result<Self> {
        let size = size.max(PAGE).div_ceil(PAGE) * PAGE;
        let file = memfd("snapblk-frontend")?;
        file.set_len(size).map_err(FrontendError::MemFd)?;
        let len = usize::try_from(size)
            .map_err(|_| FrontendError::InvalidGeometry("guest memory size"))?;
        let ranges = [(
            GuestAddress(GUEST_BASE),
            len,
            Some(FileOffset::new(file, 0)),
        )];
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges.iter())
            .map_err(FrontendError::MapMemory)?;
        Ok(Self {
            mem,
            size,
            next: AtomicU64::new(0),
        })
    }

    /// The vm-memory view, for callers that want the full `Bytes` API.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// First guest address of the memory.
    pub fn start(&self) -> GuestAddress {
        GuestAddress(GUEST_BASE)
    }

    /// First guest address past the memory: a handy "outside guest memory" address.
    pub fn end(&self) -> GuestAddress {
        GuestAddress(GUEST_BASE + self.size)
    }

    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes not yet allocated.
    pub fn available(&self) -> u64 {
        self.size - self.next.load(Ordering::Relaxed).min(self.size)
    }

    /// Allocates `len` bytes aligned to `align` (a power of two). Zeroed on first use.
    pub fn alloc(&self, len: u64, align: u64) -> Result<GuestAddress> {
        let align = align.max(1).next_power_of_two();
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = cur.div_ceil(align) * align;
            let end = start.checked_add(len).filter(|&e| e <= self.size).ok_or(
                FrontendError::OutOfMemory {
                    requested: len,
                    available: self.size.saturating_sub(start),
                },
            )?;
            match self
                .next
                .compare_exchange(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(GuestAddress(GUEST_BASE + start)),
                Err(now) => cur = now,
            }
        }
    }

    /// The region description SET_MEM_TABLE needs (fd, guest address, frontend address).
    pub fn regions(&self) -> Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(FrontendError::MemoryRegion)
            })
            .collect()
    }

    /// Frontend virtual address of `addr`, as SET_VRING_ADDR wants it.
    pub fn host_addr(&self, addr: GuestAddress) -> Result<u64> {
        self.mem
            .get_host_address(addr)
            .map(|p| p as u64)
            .map_err(|source| access_err(addr, 1, source))
    }

    /// Copies `data` into guest memory at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, addr)
            .map_err(|source| access_err(addr, data.len(), source))
    }

    /// Copies guest memory at `addr` into `buf`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, addr)
            .map_err(|source| access_err(addr, buf.len(), source))
    }

    /// Fills `len` bytes at `addr` with `byte`.
    pub fn fill(&self, addr: GuestAddress, len: usize, byte: u8) -> Result<()> {
        let chunk = [byte; 512];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(addr.unchecked_add(done as u64), &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    /// Writes a plain-data object.
    pub fn write_obj<T: ByteValued>(&self, addr: GuestAddress, val: T) -> Result<()> {
        self.mem
            .write_obj(val, addr)
            .map_err(|source| access_err(addr, std::mem::size_of::<T>(), source))
    }

    /// Reads a plain-data object.
    pub fn read_obj<T: ByteValued>(&self, addr: GuestAddress) -> Result<T> {
        self.mem
            .read_obj(addr)
            .map_err(|source| access_err(addr, std::mem::size_of::<T>(), source))
    }

    /// Atomic store (ring indexes).
    pub fn store<T: AtomicAccess>(
        &self,
        addr: GuestAddress,
        val: T,
        order: Ordering,
    ) -> Result<()> {
        self.mem
            .store(val, addr, order)
            .map_err(|source| access_err(addr, std::mem::size_of::<T>(), source))
    }

    /// Atomic load (ring indexes).
    pub fn load<T: AtomicAccess>(&self, addr: GuestAddress, order: Ordering) -> Result<T> {
        self.mem
            .load(addr, order)
            .map_err(|source| access_err(addr, std::mem::size_of::<T>(), source))
    }
}

fn access_err(
    addr: GuestAddress,
    len: usize,
    source: vm_memory::GuestMemoryError,
) -> FrontendError {
    FrontendError::MemoryAccess {
        addr: addr.raw_value(),
        len,
        source,
    }
}

fn memfd(name: &str) -> Result<File> {
    let cname =
        std::ffi::CString::new(name).map_err(|e| FrontendError::MemFd(std::io::Error::other(e)))?;
    // SAFETY: `cname` is a valid NUL-terminated string; the call has no other preconditions.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FrontendError::MemFd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Fixed-size buffers carved out of one allocation: slot `i` is at `base + i * stride`.
#[derive(Clone, Copy, Debug)]
pub struct Slab {
    base: GuestAddress,
    stride: u64,
    count: u32,
}

impl Slab {
    /// Allocates `count` slots of `len` bytes, each aligned to `align`.
    pub fn new(mem: &GuestMem, count: u32, len: u64, align: u64) -> Result<Self> {
        let align = align.max(1).next_power_of_two();
        let stride = len.max(1).div_ceil(align) * align;
        let total = stride
            .checked_mul(u64::from(count))
            .ok_or(FrontendError::InvalidGeometry("slab size overflows"))?;
        let base = mem.alloc(total, align)?;
        Ok(Self {
            base,
            stride,
            count,
        })
    }

    /// Address of slot `i` (`i` must be below [`Slab::count`]).
    pub fn slot(&self, i: u32) -> GuestAddress {
        debug_assert!(i < self.count);
        self.base.unchecked_add(u64::from(i) * self.stride)
    }

    /// Number of slots.
    pub fn count(&self) -> u32 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_respects_alignment_and_capacity() {
        let mem = GuestMem::new(3 * PAGE).unwrap();
        let a = mem.alloc(10, 1).unwrap();
        let b = mem.alloc(16, 4096).unwrap();
        assert_eq!(a.raw_value(), GUEST_BASE);
        assert_eq!(b.raw_value(), GUEST_BASE + PAGE);
        assert!(mem.alloc(2 * PAGE, 1).is_err());
        assert!(mem.alloc(PAGE, 1).is_ok());
    }

    #[test]
    fn memory_is_shared_with_the_fd() {
        let mem = GuestMem::new(PAGE).unwrap();
        mem.write(mem.start(), b"hello").unwrap();
        let r = &mem.regions().unwrap()[0];
        assert_eq!(r.guest_phys_addr, GUEST_BASE);
        assert_eq!(r.memory_size, PAGE);
        assert!(r.mmap_handle >= 0);
        let mut buf = [0u8; 5];
        // SAFETY: test only; the fd stays open as long as `mem` lives.
        let n = unsafe { libc::pread(r.mmap_handle, buf.as_mut_ptr().cast(), 5, 0) };
        assert_eq!(n, 5);
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn slab_slots_are_aligned_and_disjoint() {
        let mem = GuestMem::new(16 * PAGE).unwrap();
        let s = Slab::new(&mem, 4, 100, 64).unwrap();
        assert_eq!(s.slot(1).raw_value() - s.slot(0).raw_value(), 128);
        assert_eq!(s.slot(0).raw_value() % 64, 0);
    }
}
