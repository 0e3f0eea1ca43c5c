//! `FileDevice`: a regular file or a block device behind the snapshot engine (graph origins and
//! COW files, the offline COW tools), accessed with positional reads and writes.
//!
//! - Size and block sizes come from [`FileInfo`]: a block device's from its ioctls.
//! - Opened `O_DIRECT`, every read and write goes through [`Dio`], so any buffer, offset and
//!   length works (the engine's metadata writes are 512-byte pieces of exception areas), and
//!   the logical block size reported is the direct-I/O alignment when larger.
//! - Opened with a lock ([`DeviceOptions::lock`]), the lock lives as long as the device.
//! - Discards and write-zeroes use `fallocate` (on block devices too: Linux 4.9 and later),
//!   `BLKZEROOUT` on a block device without it, else written zeroes; ranges that are not
//!   whole blocks where the device needs them (block devices, `O_DIRECT`) get their partial
//!   blocks written with zeroes.

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;

use super::device::{check_range, BlockDevice};
use super::dio::{AlignedBuf, Dio};
use super::identity::FileId;
use super::lock::{FileLock, LockError, LockMode};
use super::probe::{FileInfo, ProbeError};
use crate::storage::Mapping;

const BLKZEROOUT: libc::c_ulong = 0x127f;
/// Zeroes are written in pieces of at most this many bytes.
const ZERO_PIECE: u64 = 1 << 20;

/// How to open a [`FileDevice`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceOptions {
    pub write: bool,
    /// `O_DIRECT`: bypass the host page cache.
    pub direct: bool,
    /// Lock the file (see [`super::lock`]); `None`: no lock.
    pub lock: Option<LockMode>,
}

/// Why a file or block device could not be opened. The caller names the path.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error(transparent)]
    Open(io::Error),
    #[error("the file system does not take O_DIRECT here")]
    NoDirect(#[source] io::Error),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Locked(#[from] LockError),
}

impl From<DeviceError> for io::Error {
    /// The error as an `io::Error` of a fitting kind (`ResourceBusy` for a lock held
    /// elsewhere), its message and sources kept.
    fn from(e: DeviceError) -> io::Error {
        match e {
            DeviceError::Open(e) => e,
            DeviceError::Locked(l @ LockError::Held { .. }) => {
                io::Error::new(io::ErrorKind::ResourceBusy, l)
            }
            e => io::Error::other(e),
        }
    }
}

/// A regular file or block device accessed with pread/pwrite. The size is fixed at creation so
/// that a write past the end fails instead of growing the file.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    info: FileInfo,
    /// The usable size: the file's, rounded down to whole blocks when `O_DIRECT`.
    size: u64,
    /// Set when the file is `O_DIRECT`.
    dio: Option<Dio>,
    mapping: Option<Arc<Mapping>>,
    random: Option<File>,
    lock: Option<FileLock>,
}

impl FileDevice {
    /// Opens `path` (links followed) as `options` say, probes it and locks it.
    pub fn open(path: &Path, options: DeviceOptions) -> Result<FileDevice, DeviceError> {
        let mut oo = FsOpenOptions::new();
        oo.read(true).write(options.write);
        let flags = if options.direct { libc::O_DIRECT } else { 0 };
        let file = crate::storage::open_noatime(&mut oo, path, flags).map_err(|e| {
            if options.direct && e.raw_os_error() == Some(libc::EINVAL) {
                DeviceError::NoDirect(e)
            } else {
                DeviceError::Open(e)
            }
        })?;
        let mut dev = FileDevice::from_file(file)?;
        if let Some(mode) = options.lock {
            dev.take_lock(mode, &path.to_string_lossy())?;
        }
        Ok(dev)
    }

    /// Wraps an open regular file or block device, probing its size, block sizes and whether it
    /// is `O_DIRECT`.
    pub fn from_file(file: File) -> Result<FileDevice, ProbeError> {
        let info = FileInfo::of(&file)?;
        let dio = info.dio.map(Dio::new);
        let size = match &dio {
            Some(d) => info.size - info.size % d.block(),
            None => info.size,
        };
        Ok(FileDevice {
            file,
            info,
            size,
            dio,
            mapping: None,
            random: None,
            lock: None,
        })
    }

    /// Maps the file for readers that copy from memory, when it is memory-backed and fully
    /// allocated (see [`Mapping`]); otherwise unchanged. Never for `O_DIRECT`.
    pub fn mapped(mut self) -> FileDevice {
        if self.dio.is_none() {
            self.mapping = Mapping::of(&self.file, self.size).map(Arc::new);
        }
        self
    }

    /// Opens the file a second time with readahead off for random reads (see
    /// [`BlockDevice::random_file`]), unless it lives in memory, where readahead costs nothing,
    /// or is `O_DIRECT`, which has none.
    pub fn random_reads(mut self, readonly: bool) -> FileDevice {
        if self.dio.is_none() && !crate::storage::memory_backed(self.file.as_raw_fd()) {
            self.random = super::image::open_random(&self.file, readonly);
        }
        self
    }

    /// Reports another logical block size (bytes).
    pub fn with_block_size(mut self, block: u32) -> FileDevice {
        self.info.logical_block_size = block;
        self
    }

    /// Which file or device this is, whatever path opened it.
    pub fn id(&self) -> FileId {
        self.info.id
    }

    pub fn is_block_device(&self) -> bool {
        self.info.block_device
    }

    /// Whether the file is `O_DIRECT`.
    pub fn is_direct(&self) -> bool {
        self.dio.is_some()
    }

    /// The lock held on the file, if one was asked for.
    pub fn lock(&self) -> Option<&FileLock> {
        self.lock.as_ref()
    }

    /// Locks the file now (for callers that check something first); `what` names it in the
    /// warning logged where the file system takes no locks.
    pub fn take_lock(&mut self, mode: LockMode, what: &str) -> Result<(), LockError> {
        self.lock = Some(super::lock::lock(&self.file, mode, what)?);
        Ok(())
    }

    /// Blocks fallocate and direct I/O need whole; 1 where any range will do.
    fn granule(&self) -> u64 {
        match (&self.dio, self.info.block_device) {
            (Some(d), _) => d.block(),
            (None, true) => u64::from(self.info.logical_block_size),
            (None, false) => 1,
        }
    }

    fn pread(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.dio {
            Some(d) => d.read_at(&self.file, buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn pwrite(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match &self.dio {
            Some(d) => d.write_at(&self.file, buf, offset),
            None => self.file.write_all_at(buf, offset),
        }
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

    fn blkzeroout(&self, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKZEROOUT reads two u64 values through the pointer, which is valid.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn write_zero_buffer(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let zeroes = AlignedBuf::zeroed(ZERO_PIECE.min(len) as usize);
        let mut done = 0;
        while done < len {
            let n = ZERO_PIECE.min(len - done);
            self.pwrite(&zeroes.as_slice()[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// Runs `whole` on the part of `[offset, offset + len)` made of whole granules and writes
    /// zeroes over the partial granules at either end.
    fn by_granule(
        &self,
        offset: u64,
        len: u64,
        whole: impl FnOnce(u64, u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let g = self.granule();
        let end = offset + len;
        let a = offset.div_ceil(g) * g;
        let b = end - end % g;
        if a >= b {
            return self.write_zero_buffer(offset, len);
        }
        self.write_zero_buffer(offset, a - offset)?;
        whole(a, b - a)?;
        self.write_zero_buffer(b, end - b)
    }

    /// Zeroes whole granules: `FALLOC_FL_ZERO_RANGE`, else (block devices) `BLKZEROOUT` or
    /// (files: tmpfs has no ZERO_RANGE) a punched hole allocated again, else written zeroes.
    fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(zero, offset, len) {
            Err(e) if unsupported(&e) => {}
            r => return r,
        }
        if self.info.block_device {
            return match self.blkzeroout(offset, len) {
                Err(e) if unsupported(&e) => self.write_zero_buffer(offset, len),
                r => r,
            };
        }
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

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::ENODEV) | Some(libc::ENOTTY)
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
        self.info.block_size()
    }

    fn physical_block_size(&self) -> u32 {
        self.info.physical_block_size.max(self.info.block_size())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.pread(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        self.pwrite(buf, offset)
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        check_range(self.size, offset, len)?;
        if self.dio.is_some() {
            let mut at = offset;
            for b in bufs {
                self.pwrite(b, at)?;
                at += b.len() as u64;
            }
            return Ok(());
        }
        let mut iov: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let (mut first, mut at) = (0, offset);
        while first < iov.len() {
            let n = (iov.len() - first).min(1024);
            // SAFETY: the iovecs name the caller's live buffers, read only by pwritev.
            let done = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    iov[first..].as_ptr(),
                    n as libc::c_int,
                    at as libc::off_t,
                )
            };
            if done < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if done == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            // Skip what was written (a short write resumes inside an iovec).
            let mut left = done as usize;
            at += left as u64;
            while left > 0 {
                let v = &mut iov[first];
                if left >= v.iov_len {
                    left -= v.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing inside the same buffer.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                    v.iov_len -= left;
                    left = 0;
                }
            }
            while first < iov.len() && iov[first].iov_len == 0 {
                first += 1;
            }
        }
        Ok(())
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
        self.by_granule(offset, len, |o, l| {
            // On a block device this unmaps and reads back zeroes, or is unsupported.
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match self.fallocate(mode, o, l) {
                Err(e) if unsupported(&e) && self.info.block_device => self.zero_range(o, l),
                Err(e) if unsupported(&e) => self.write_zero_buffer(o, l),
                r => r,
            }
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(self.size, offset, len)?;
        self.by_granule(offset, len, |o, l| self.zero_range(o, l))
    }
}

#[cfg(test)]
#[path = "filedev_tests.rs"]
mod tests;
