//! The `BlockDevice` trait (positional, `&self`, shareable between I/O threads) and its plain
//! implementations: `FileDevice` over a file or block device, `MemDevice` in memory for tests.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use super::Mapping;

/// A byte-addressed block device. Every access must lie inside `size()`.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Logical block size in bytes.
    fn logical_block_size(&self) -> u32 {
        512
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
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

fn to_usize(v: u64) -> io::Result<usize> {
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

/// A regular file or block device accessed with pread/pwrite. The size is fixed at creation so
/// that a write past the end fails instead of growing the file.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    size: u64,
    block: u32,
    mapping: Option<Arc<Mapping>>,
    random: Option<File>,
}

impl FileDevice {
    /// Wraps an open file of `size` bytes.
    pub fn new(file: File, size: u64) -> FileDevice {
        FileDevice {
            file,
            size,
            block: 512,
            mapping: None,
            random: None,
        }
    }

    /// Maps the file for readers that copy from memory, when it is memory-backed and fully
    /// allocated (see [`Mapping`]); otherwise unchanged.
    pub fn mapped(mut self) -> FileDevice {
        self.mapping = Mapping::of(&self.file, self.size).map(Arc::new);
        self
    }

    /// Opens the file a second time with readahead off for random reads (see
    /// [`BlockDevice::random_file`]), unless it lives in memory, where readahead costs nothing.
    pub fn random_reads(mut self, readonly: bool) -> FileDevice {
        if !super::memory_backed(self.file.as_raw_fd()) {
            self.random = super::image::open_random(&self.file, readonly);
        }
        self
    }

    /// Wraps an open regular file, taking its current length as the size.
    pub fn from_file(file: File) -> io::Result<FileDevice> {
        let size = file.metadata()?.len();
        Ok(FileDevice::new(file, size))
    }

    pub fn with_block_size(mut self, block: u32) -> FileDevice {
        self.block = block;
        self
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (o, l) = match (i64::try_from(offset), i64::try_from(len)) {
            (Ok(o), Ok(l)) => (o, l),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "range too large",
                ))
            }
        };
        // SAFETY: fallocate takes plain integers and a descriptor this struct owns.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, o, l) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn write_zero_buffer(&self, offset: u64, len: u64) -> io::Result<()> {
        const PIECE: u64 = 1 << 20;
        let zeroes = vec![0u8; PIECE.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = PIECE.min(len - done);
            self.file
                .write_all_at(&zeroes[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn raw_fd(&self) -> Option<std::os::unix::io::RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn mapping(&self) -> Option<&Arc<Mapping>> {
        self.mapping.as_ref()
    }

    fn random_file(&self) -> Option<&File> {
        self.random.as_ref()
    }

    fn logical_block_size(&self) -> u32 {
        self.block
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        if let Some(m) = &self.mapping {
            // A read fault would allocate the hole again.
            m.retire();
        }
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(mode, offset, len) {
            Err(e) if unsupported(&e) => self.write_zero_buffer(offset, len),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(zero, offset, len) {
            Err(e) if unsupported(&e) => {}
            r => return r,
        }
        // tmpfs has no ZERO_RANGE: punch the hole, then allocate the blocks again.
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(punch, offset, len) {
            Ok(()) => match self.fallocate(libc::FALLOC_FL_KEEP_SIZE, offset, len) {
                Err(e) if !unsupported(&e) => Err(e),
                _ => Ok(()),
            },
            Err(e) if unsupported(&e) => self.write_zero_buffer(offset, len),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_on_disk_gets_a_second_descriptor_for_random_reads_a_tmpfs_file_does_not() {
        let disk = tempfile::tempfile_in("/var/tmp").unwrap();
        disk.set_len(1 << 20).unwrap();
        let on_disk = !crate::storage::memory_backed(disk.as_raw_fd());
        let dev = FileDevice::from_file(disk).unwrap().random_reads(false);
        assert_eq!(dev.random_file().is_some(), on_disk);
        if let Some(r) = dev.random_file() {
            dev.write_at(&[9u8; 512], 512).unwrap();
            let mut b = [0u8; 512];
            r.read_exact_at(&mut b, 512).unwrap();
            assert_eq!(b, [9u8; 512], "the same file through either descriptor");
        }
        if let Ok(shm) = tempfile::tempfile_in("/dev/shm") {
            shm.set_len(1 << 20).unwrap();
            let dev = FileDevice::from_file(shm).unwrap().random_reads(false);
            assert!(dev.random_file().is_none());
        }
    }

    fn conformance(dev: &dyn BlockDevice) {
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

    #[test]
    fn file_device_conforms_and_never_grows() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(16384).unwrap();
        let d = FileDevice::from_file(f).unwrap();
        conformance(&d);
        assert_eq!(d.file.metadata().unwrap().len(), 16384);
    }
}
