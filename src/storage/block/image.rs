//! An image: a raw file or a block device opened for serving (`serve --image`), with its size,
//! block size and identity, locked against a second user (exclusive for read-write, shared for
//! read-only; see [`super::lock`]).

use std::fs::{File, OpenOptions as FsOpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::lock::{FileLock, LockError, LockMode};
use super::probe::{FileInfo, ProbeError};
use crate::storage::Mapping;

/// Errors opening or using an image.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot open image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot use image {path}")]
    Probe {
        path: PathBuf,
        #[source]
        source: ProbeError,
    },
    #[error("image {path} is in use")]
    Locked {
        path: PathBuf,
        #[source]
        source: LockError,
    },
    #[error(
        "logical block size {requested} is smaller than the {block}-byte blocks of image {path}"
    )]
    BlockTooSmall {
        path: PathBuf,
        requested: u32,
        block: u32,
    },
    #[error("image {path} is {size} bytes, smaller than one {block}-byte logical block")]
    TooSmall {
        path: PathBuf,
        size: u64,
        block: u32,
    },
}

/// How to open an image.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub readonly: bool,
    /// O_DIRECT: bypass the host page cache.
    pub direct: bool,
}

/// An open image. The file handle is shared by every queue (positional I/O only).
#[derive(Debug)]
pub struct Image {
    file: File,
    path: PathBuf,
    size: u64,
    block_device: bool,
    /// The smallest logical block an export may show (see [`FileInfo::block_size`]).
    block: u32,
    options: OpenOptions,
    ino: u64,
    /// Held as long as the image is open.
    _lock: FileLock,
    /// Set for fully allocated memory-backed images (see [`Mapping`]).
    mapping: Option<Arc<Mapping>>,
    /// A second open of the image with readahead off (POSIX_FADV_RANDOM), for reads that do not
    /// continue the previous one; see [`Image::random_file`].
    random: Option<File>,
}

/// A serial for a disk backed by `path`: "sb-" and 16 hex digits of a hash of the canonical
/// path mixed with `salt` (the inode identity where known).
pub fn derive_serial(path: &Path, salt: u64) -> String {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canon.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("sb-{:016x}", h ^ salt)
}

/// Opens `path` with `flags` and O_NOATIME (no access-time update on every read, a cost seen
/// on the read path), or without O_NOATIME where the file is not ours (EPERM).
pub fn open_noatime(oo: &mut FsOpenOptions, path: &Path, flags: i32) -> io::Result<std::fs::File> {
    match oo.custom_flags(flags | libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => oo.custom_flags(flags).open(path),
        r => r,
    }
}

const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

impl Image {
    pub fn open(path: &Path, options: OpenOptions) -> Result<Image, ImageError> {
        let mut oo = FsOpenOptions::new();
        oo.read(true).write(!options.readonly);
        let open_err = |source| ImageError::Open {
            path: path.to_owned(),
            source,
        };
        let flags = if options.direct { libc::O_DIRECT } else { 0 };
        let file = open_noatime(&mut oo, path, flags).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let info = FileInfo::of(&file).map_err(|source| ImageError::Probe {
            path: path.to_owned(),
            source,
        })?;
        let mode = match options.readonly {
            true => LockMode::Shared,
            false => LockMode::Exclusive,
        };
        let lock = super::lock::lock(&file, mode, &path.to_string_lossy()).map_err(|source| {
            ImageError::Locked {
                path: path.to_owned(),
                source,
            }
        })?;
        let (size, block_device) = (info.size, info.block_device);
        let mapping = if options.direct || block_device {
            None
        } else {
            Mapping::of(&file, size).map(Arc::new)
        };
        let random = if options.direct || (!block_device && memory_backed(file.as_raw_fd())) {
            None
        } else {
            open_random(&file, options.readonly)
        };
        Ok(Image {
            file,
            path: path.to_owned(),
            size,
            block_device,
            block: info.block_size(),
            options,
            ino: meta.ino() ^ meta.dev().rotate_left(32),
            _lock: lock,
            mapping,
            random,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The image opened a second time with readahead off, for random reads: a 4 KiB read that
    /// misses the page cache then costs the device 4 KiB, where the shared readahead state of
    /// one descriptor would sometimes read ahead for it. Sequential reads keep [`Image::file`]
    /// and its readahead. `None` for O_DIRECT and memory-backed images, which have none.
    pub fn random_file(&self) -> Option<&File> {
        self.random.as_ref()
    }

    /// The shared mapping reads and writes may copy through (memory-backed, fully allocated).
    pub fn mapping(&self) -> Option<&Arc<Mapping>> {
        self.mapping.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Whether the image lives in memory (tmpfs, ramfs): its I/O never waits for a device.
    pub fn memory_backed(&self) -> bool {
        !self.block_device && memory_backed(self.file.as_raw_fd())
    }

    pub fn readonly(&self) -> bool {
        self.options.readonly
    }

    pub fn direct(&self) -> bool {
        self.options.direct
    }

    /// The smallest logical block size an export of the image may show: a block device's
    /// logical block size, or the direct-I/O alignment of an `O_DIRECT` image; 512 otherwise.
    pub fn block_size(&self) -> u32 {
        self.block
    }

    /// Capacity in 512-byte sectors, rounded down to whole logical blocks. Refuses a logical
    /// block size smaller than [`Image::block_size`].
    pub fn capacity_sectors(&self, logical_block_size: u32) -> Result<u64, ImageError> {
        if logical_block_size < self.block {
            return Err(ImageError::BlockTooSmall {
                path: self.path.clone(),
                requested: logical_block_size,
                block: self.block,
            });
        }
        let blocks = self.size / u64::from(logical_block_size);
        if blocks == 0 {
            return Err(ImageError::TooSmall {
                path: self.path.clone(),
                size: self.size,
                block: logical_block_size,
            });
        }
        Ok(blocks * u64::from(logical_block_size) / 512)
    }

    /// A serial derived from the image's identity (device and inode, and its canonical path),
    /// stable across restarts and different for every image: 20 bytes at most.
    pub fn derived_serial(&self) -> String {
        derive_serial(&self.path, self.ino)
    }

    /// Discards a byte range of a block device (BLKDISCARD).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.range_ioctl(BLKDISCARD, offset, len)
    }

    /// Zeroes a byte range of a block device (BLKZEROOUT).
    pub fn zero_out(&self, offset: u64, len: u64) -> io::Result<()> {
        self.range_ioctl(BLKZEROOUT, offset, len)
    }

    fn range_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: both ioctls read two u64 values through the pointer, which is valid.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req, range.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes written data durable (fdatasync).
    pub fn sync(&self) -> io::Result<()> {
        if self.options.readonly {
            return Ok(());
        }
        self.file.sync_data()
    }
}

/// Opens `file` again (a new open file description, with its own readahead state) and turns
/// readahead off on it; `None` when that fails (the caller then reads through `file` alone).
pub(crate) fn open_random(file: &File, readonly: bool) -> Option<File> {
    let mut oo = FsOpenOptions::new();
    oo.read(true).write(!readonly);
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let f = open_noatime(&mut oo, Path::new(&path), 0).ok()?;
    // SAFETY: posix_fadvise takes plain integers and a descriptor owned here.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    (rc == 0).then_some(f)
}

/// Whether the file behind `fd` lives in memory (tmpfs, ramfs). Only regular files count: a
/// block device node on devtmpfs lives on a disk, whatever the node's file system says.
pub fn memory_backed(fd: std::os::unix::io::RawFd) -> bool {
    regular_file_fs(fd).is_some_and(|t| t == TMPFS_MAGIC || t == RAMFS_MAGIC)
}

/// Whether `fd` is a regular file on a file system that is not memory (tmpfs, ramfs).
pub fn on_disk_file_system(fd: std::os::unix::io::RawFd) -> bool {
    regular_file_fs(fd).is_some_and(|t| t != TMPFS_MAGIC && t != RAMFS_MAGIC)
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The file system type (`statfs` magic) of a regular file; `None` for anything else.
fn regular_file_fs(fd: std::os::unix::io::RawFd) -> Option<i64> {
    // SAFETY: fstat fills the zeroed struct through a valid pointer.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    // SAFETY: fstatfs fills the zeroed struct through a valid pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 {
        return None;
    }
    Some(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `f` in the page cache among the first `pages`.
    fn cached_pages(f: &File, pages: usize) -> usize {
        // SAFETY: a read-only shared mapping of an open file, only passed to mincore.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * 4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mut vec = vec![0u8; pages];
        // SAFETY: `vec` has one byte per page of the mapping.
        assert_eq!(
            unsafe { libc::mincore(p, pages * 4096, vec.as_mut_ptr()) },
            0
        );
        // SAFETY: unmaps the mapping created above.
        unsafe { libc::munmap(p, pages * 4096) };
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn the_random_descriptor_reads_the_same_bytes_without_reading_ahead() {
        use std::os::unix::fs::FileExt;
        // On disk (the crate's directory), where readahead exists: tmpfs has none.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("r.img");
        let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let img = Image::open(&path, OpenOptions::default()).unwrap();
        let Some(random) = img.random_file() else {
            assert!(
                img.memory_backed(),
                "a regular file on disk gets a random descriptor"
            );
            return;
        };
        let drop_cache = || {
            img.file().sync_all().unwrap();
            // SAFETY: plain integers and a descriptor owned by `img`.
            unsafe { libc::posix_fadvise(img.file().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        };
        // Sequential 4 KiB reads through the random descriptor bring in only what they read.
        drop_cache();
        let mut b = vec![0u8; 4096];
        for page in 0..8u64 {
            random.read_exact_at(&mut b, page * 4096).unwrap();
            assert!(b[..] == data[page as usize * 4096..(page as usize + 1) * 4096]);
        }
        let without = cached_pages(img.file(), 2048);
        assert!(
            without <= 8,
            "{without} pages cached after 8 reads without readahead"
        );
        // The same reads through the main descriptor read ahead.
        drop_cache();
        for page in 0..8u64 {
            img.file().read_exact_at(&mut b, page * 4096).unwrap();
        }
        let with = cached_pages(img.file(), 2048);
        assert!(with > 8, "{with} pages cached after 8 reads with readahead");
        drop(img);
        let direct = Image::open(
            &path,
            OpenOptions {
                direct: true,
                ..OpenOptions::default()
            },
        );
        if let Ok(direct) = direct {
            assert!(direct.random_file().is_none(), "O_DIRECT has no readahead");
        }
    }

    #[test]
    fn serial_differs_between_images_and_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        std::fs::write(&a, vec![0u8; 4096]).unwrap();
        std::fs::write(&b, vec![0u8; 4096]).unwrap();
        let ia = Image::open(&a, OpenOptions::default()).unwrap();
        let ib = Image::open(&b, OpenOptions::default()).unwrap();
        assert_ne!(ia.derived_serial(), ib.derived_serial());
        assert!(ia.derived_serial().len() <= 20);
        let serial = ia.derived_serial();
        drop(ia);
        let ia2 = Image::open(&a, OpenOptions::default()).unwrap();
        assert_eq!(serial, ia2.derived_serial());
    }

    #[test]
    fn capacity_rounds_down_to_logical_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, vec![0u8; 4096 * 3 + 1000]).unwrap();
        let i = Image::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(i.capacity_sectors(512).unwrap(), 24 + 1);
        assert_eq!(i.capacity_sectors(4096).unwrap(), 24);
        drop(i);
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        let i = Image::open(&p, OpenOptions::default()).unwrap();
        assert!(matches!(
            i.capacity_sectors(512),
            Err(ImageError::TooSmall { .. })
        ));
    }

    #[test]
    fn a_second_read_write_open_is_refused_naming_the_path_and_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let ro = OpenOptions {
            readonly: true,
            ..OpenOptions::default()
        };
        let first = Image::open(&p, OpenOptions::default()).unwrap();
        for options in [OpenOptions::default(), ro.clone()] {
            let e = Image::open(&p, options).unwrap_err();
            let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
            assert!(text.contains(&*p.to_string_lossy()), "{text}");
            assert!(
                text.contains("locked for writing by this process"),
                "{text}"
            );
        }
        drop(first);
        // Readers share the image; a writer waits for them to go.
        let r1 = Image::open(&p, ro.clone()).unwrap();
        let _r2 = Image::open(&p, ro).unwrap();
        assert!(Image::open(&p, OpenOptions::default()).is_err());
        drop(r1);
    }

    #[test]
    fn an_export_block_smaller_than_the_devices_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, vec![0u8; 16384]).unwrap();
        let mut i = Image::open(&p, OpenOptions::default()).unwrap();
        i.block = 4096;
        let e = i.capacity_sectors(512).unwrap_err();
        assert!(
            matches!(e, ImageError::BlockTooSmall { block: 4096, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("4096-byte blocks"), "{e}");
        assert_eq!(i.capacity_sectors(4096).unwrap(), 32);
    }

    #[test]
    fn missing_image_names_the_path() {
        let e = Image::open(Path::new("/nonexistent/x.img"), OpenOptions::default()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/x.img"));
    }
}
