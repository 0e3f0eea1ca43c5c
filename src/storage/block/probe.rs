//! What an open file or block device is: its identity, size, block sizes and, when it was
//! opened `O_DIRECT`, the alignment its I/O needs. A block device's size and block sizes come
//! from its ioctls (`BLKGETSIZE64`, `BLKSSZGET`, `BLKPBSZGET`), since `st_size` is 0 there;
//! the direct-I/O alignment from `statx(STATX_DIOALIGN)` where the kernel reports it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;

use thiserror::Error;

use super::identity::FileId;

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPBSZGET: libc::c_ulong = 0x127b;
const STATX_DIOALIGN: u32 = 0x2000;
/// The sector every device here is addressed in.
const SECTOR: u32 = 512;
/// Direct-I/O alignment assumed for a regular file whose kernel reports none and whose
/// device's logical block size cannot be read: the page size, which every file system takes.
const FALLBACK_DIO_ALIGN: u32 = 4096;

/// Why an open file could not be probed.
#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("cannot stat it")]
    Stat(#[source] io::Error),
    #[error("it is neither a regular file nor a block device")]
    NotAFileOrDevice,
    #[error("cannot read the block device's size or block sizes")]
    BlockDevice(#[source] io::Error),
}

/// Direct-I/O alignment in bytes: buffers' addresses to `mem`, offsets and lengths to `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DioAlign {
    pub mem: u32,
    pub offset: u32,
}

/// An open file or block device, probed.
#[derive(Debug, Clone, Copy)]
pub struct FileInfo {
    pub id: FileId,
    /// Size in bytes.
    pub size: u64,
    pub block_device: bool,
    /// The logical block size: a block device's (`BLKSSZGET`), 512 for a regular file.
    pub logical_block_size: u32,
    /// The physical block size: a block device's (`BLKPBSZGET`), else the logical one.
    pub physical_block_size: u32,
    /// Set when the descriptor is `O_DIRECT`.
    pub dio: Option<DioAlign>,
}

impl FileInfo {
    pub fn of(file: &File) -> Result<FileInfo, ProbeError> {
        let meta = file.metadata().map_err(ProbeError::Stat)?;
        let ft = meta.file_type();
        let fd = file.as_raw_fd();
        let (size, logical, physical, block_device) = if ft.is_file() {
            (meta.len(), SECTOR, SECTOR, false)
        } else if ft.is_block_device() {
            let size: u64 = ioctl_get(fd, BLKGETSIZE64).map_err(ProbeError::BlockDevice)?;
            let logical: libc::c_int = ioctl_get(fd, BLKSSZGET).map_err(ProbeError::BlockDevice)?;
            let physical: libc::c_uint =
                ioctl_get(fd, BLKPBSZGET).map_err(ProbeError::BlockDevice)?;
            let logical = u32::try_from(logical).unwrap_or(SECTOR).max(SECTOR);
            (size, logical, physical.max(logical), true)
        } else {
            return Err(ProbeError::NotAFileOrDevice);
        };
        let dio = is_direct(fd).then(|| dio_align(fd, &meta, logical, block_device));
        Ok(FileInfo {
            id: FileId::of(&meta),
            size,
            block_device,
            logical_block_size: logical,
            physical_block_size: physical,
            dio,
        })
    }

    /// The smallest block I/O on this descriptor may use: the logical block size, or the
    /// direct-I/O offset alignment when that is larger. An export's logical block size and a
    /// snapshot's chunk size must be multiples of it.
    pub fn block_size(&self) -> u32 {
        match self.dio {
            Some(d) => self.logical_block_size.max(d.offset),
            None => self.logical_block_size,
        }
    }
}

/// Reads one value through a `_IOR`-style ioctl.
fn ioctl_get<T: Default>(fd: libc::c_int, req: libc::c_ulong) -> io::Result<T> {
    let mut v = T::default();
    // SAFETY: each request used here writes one value of type T through the pointer.
    let rc = unsafe { libc::ioctl(fd, req, &mut v as *mut T) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Whether `fd` was opened (or set) `O_DIRECT`.
pub fn is_direct(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFL takes no argument and only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

/// The alignment direct I/O on `fd` needs: `STATX_DIOALIGN` when reported, else the logical
/// block size (block devices) or that of the device holding the file, else the page size.
fn dio_align(fd: libc::c_int, meta: &std::fs::Metadata, logical: u32, bdev: bool) -> DioAlign {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: statx fills the zeroed struct through a valid pointer; the empty path with
    // AT_EMPTY_PATH names `fd` itself.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc == 0 && stx.stx_mask & STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0 {
        return DioAlign {
            mem: stx.stx_dio_mem_align.max(1),
            offset: stx.stx_dio_offset_align.max(SECTOR),
        };
    }
    let offset = if bdev {
        logical
    } else {
        sysfs_logical_block_size(meta.dev()).unwrap_or(FALLBACK_DIO_ALIGN)
    };
    DioAlign {
        mem: offset,
        offset,
    }
}

/// The logical block size of the block device `dev` (or of the disk of a partition), from
/// sysfs.
fn sysfs_logical_block_size(dev: u64) -> Option<u32> {
    let base = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    ["queue", "../queue"].iter().find_map(|q| {
        let s = std::fs::read_to_string(format!("{base}/{q}/logical_block_size")).ok()?;
        s.trim().parse::<u32>().ok().filter(|&b| b >= SECTOR)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_has_its_length_and_512_byte_blocks() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(12345).unwrap();
        let i = FileInfo::of(&f).unwrap();
        assert_eq!(
            (i.size, i.logical_block_size, i.block_device),
            (12345, 512, false)
        );
        assert_eq!((i.dio, i.block_size()), (None, 512));
    }

    #[test]
    fn a_character_device_is_refused() {
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(
            FileInfo::of(&f),
            Err(ProbeError::NotAFileOrDevice)
        ));
    }

    #[test]
    fn an_o_direct_file_reports_an_alignment_of_at_least_a_sector() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let p = dir.path().join("d.img");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
        else {
            crate::testing::require("probe", "O_DIRECT on the crate's file system", false);
            return;
        };
        let i = FileInfo::of(&f).unwrap();
        let d = i.dio.expect("O_DIRECT is seen");
        assert!(d.offset >= 512 && d.offset.is_power_of_two(), "{d:?}");
        assert!(d.mem >= 1 && d.mem.is_power_of_two(), "{d:?}");
        assert_eq!(i.block_size(), d.offset.max(512));
    }
}
