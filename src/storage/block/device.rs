//! The `BlockDevice` trait (positional, `&self`, shareable between I/O threads) and its plain
//! implementations: `MemDevice` in memory for tests here, `FileDevice` over a file or block
//! device in filedev.rs.

use std::fs::File;
use std::io;
use std::sync::{Arc, Mutex};

use crate::storage::Mapping;

pub use super::filedev::{DeviceError, DeviceOptions, FileDevice};

/// A byte-addressed block device. Every access must lie inside `size()`.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Logical block size in bytes: the smallest unit I/O to the device should use.
    fn logical_block_size(&self) -> u32 {
        512
    }
    /// Physical block size in bytes (writes of less may cost the device a read-modify-write).
    fn physical_block_size(&self) -> u32 {
        self.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `bufs` one after another from `offset` (one `pwritev` where the device can).
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for b in bufs {
            self.write_at(b, at)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Makes every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Drops a range; it reads back as zeroes on the devices here.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The file descriptor behind the device, for callers that run their own I/O on it
    /// (see [`super::direct`]); `None` when there is none.
    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        None
    }
    /// A shared mapping of the device that reads and writes may copy through (see [`Mapping`]).
    fn mapping(&self) -> Option<&Arc<Mapping>> {
        None
    }
    /// A second descriptor with readahead off, for reads that do not continue the previous one
    /// (see [`super::Image::random_file`]).
    fn random_file(&self) -> Option<&File> {
        None
    }
    /// The RBD image behind the device, for callers that submit its I/O asynchronously.
    fn rbd(&self) -> Option<&super::rbd::Rbd> {
        None
    }
}

/// Checks that `len` bytes at `offset` fit in `size` bytes.
pub fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes at offset {offset} do not fit a device of {size} bytes"),
        )),
    }
}

pub(super) fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "range too large"))
}

/// An in-memory device.
#[derive(Debug)]
pub struct MemDevice {
    data: Mutex<Vec<u8>>,
    block: u32,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: usize) -> MemDevice {
        MemDevice::from_bytes(vec![0; size])
    }

    pub fn from_bytes(data: Vec<u8>) -> MemDevice {
        MemDevice {
            data: Mutex::new(data),
            block: 512,
        }
    }

    /// Reports another logical block size (bytes).
    pub fn with_block_size(mut self, block: u32) -> MemDevice {
        self.block = block;
        self
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A poisoned lock only means another thread panicked mid-copy; the bytes are still bytes.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fill(&self, offset: u64, len: u64, byte: u8) -> io::Result<()> {
        let mut d = self.lock();
        check_range(d.len() as u64, offset, len)?;
        let (o, l) = (to_usize(offset)?, to_usize(len)?);
        d[o..o + l].fill(byte);
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }

    fn logical_block_size(&self) -> u32 {
        self.block
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.lock();
        check_range(d.len() as u64, offset, buf.len() as u64)?;
        let o = to_usize(offset)?;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.lock();
        check_range(d.len() as u64, offset, buf.len() as u64)?;
        let o = to_usize(offset)?;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fill(offset, len, 0)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fill(offset, len, 0)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// What every device kind must do.
    pub(crate) fn conformance(dev: &dyn BlockDevice) {
        let size = dev.size();
        assert!(size >= 16384);
        dev.write_at(&[7u8; 4096], 4096).unwrap();
        let mut b = [0u8; 4096];
        dev.read_at(&mut b, 4096).unwrap();
        assert_eq!(b, [7u8; 4096]);
        dev.write_zeroes(4096, 1024).unwrap();
        dev.read_at(&mut b, 4096).unwrap();
        assert!(b[..1024].iter().all(|&x| x == 0) && b[1024..].iter().all(|&x| x == 7));
        dev.discard(4096, 4096).unwrap();
        dev.read_at(&mut b, 4096).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        dev.flush().unwrap();
        assert!(dev.write_at(&[1], size).is_err());
        assert!(dev.read_at(&mut [0u8; 2], size - 1).is_err());
        assert!(dev.write_zeroes(u64::MAX, 2).is_err());
    }

    #[test]
    fn mem_device_conforms() {
        conformance(&MemDevice::new(16384));
    }
}
