//! File identity: which file or device a path or descriptor really is, whatever name reached
//! it. Two paths that are links (symbolic or hard) to one file, or two nodes of one block
//! device, have the same `FileId`; the device graph compares these, never paths.

use std::fmt;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// A file by device and inode, or a block device by device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileId {
    /// A regular file (or anything but a block device): `st_dev` and `st_ino`.
    Inode { dev: u64, ino: u64 },
    /// A block device: `st_rdev`, the same through every device node that names it.
    BlockDevice { rdev: u64 },
    /// A Ceph RBD image: a hash of its `rbd:POOL/IMAGE[@SNAP]` name.
    Rbd { key: u64 },
}

impl FileId {
    /// The identity of the file `meta` describes (from `stat` or `fstat`).
    pub fn of(meta: &Metadata) -> FileId {
        if meta.file_type().is_block_device() {
            FileId::BlockDevice { rdev: meta.rdev() }
        } else {
            FileId::Inode {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    /// The identity of an RBD image, by its name.
    pub fn of_rbd(name: &str) -> FileId {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        FileId::Rbd { key: h }
    }

    /// The identity of the file `path` names, links followed; `None` when nothing is there.
    pub fn of_path(path: &Path) -> io::Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileId::of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FileId::Inode { dev, ino } => write!(
                f,
                "inode {ino} on device {}:{}",
                libc::major(dev),
                libc::minor(dev)
            ),
            FileId::Rbd { key } => write!(f, "RBD image {key:016x}"),
            FileId::BlockDevice { rdev } => {
                write!(
                    f,
                    "block device {}:{}",
                    libc::major(rdev),
                    libc::minor(rdev)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_share_an_identity_and_copies_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        std::fs::write(&a, [1u8; 512]).unwrap();
        std::os::unix::fs::symlink(&a, dir.path().join("sym")).unwrap();
        std::fs::hard_link(&a, dir.path().join("hard")).unwrap();
        std::fs::write(dir.path().join("copy"), [1u8; 512]).unwrap();
        let id = |n: &str| FileId::of_path(&dir.path().join(n)).unwrap().unwrap();
        assert_eq!(id("a.img"), id("sym"));
        assert_eq!(id("a.img"), id("hard"));
        assert_ne!(id("a.img"), id("copy"));
        assert_eq!(FileId::of_path(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn a_block_device_is_known_by_its_device_number() {
        let null = std::fs::metadata("/dev/null").unwrap();
        // /dev/null is a character device: known by its inode like a file.
        assert!(matches!(FileId::of(&null), FileId::Inode { .. }));
        let Some(bdev) = std::fs::read_dir("/dev")
            .unwrap()
            .flatten()
            .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
        else {
            return;
        };
        let m = bdev.metadata().unwrap();
        assert_eq!(FileId::of(&m), FileId::BlockDevice { rdev: m.rdev() });
    }
}
