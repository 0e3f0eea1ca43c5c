//! Whole-file locks on images, origins and COW files, so that a second daemon or an offline
//! merge cannot write a file a daemon serves (as cloud-hypervisor's block crate does): an
//! open file description (OFD) lock, exclusive for read-write use, shared for read-only use,
//! taken without waiting (`F_OFD_SETLK`).
//!
//! The lock is taken on a description of its own (the file reopened through `/proc/self/fd`),
//! not on the one the I/O uses: the I/O descriptors (the main one, the second one for random
//! reads, the shared mapping, the queues' io_uring registrations) take no lock, so none of
//! them conflicts with it, and the lock goes when the [`FileLock`] is dropped, whatever still
//! holds an I/O descriptor (an io_uring ring tears its registered files down asynchronously).
//!
//! On a conflict the error names the holder where it can be found: the process whose
//! `/proc/PID/fdinfo/FD` lists a `lock:` line on the same inode (best effort: another user's
//! processes cannot be read without privileges). File systems without lock support (some
//! network and FUSE file systems) are used unlocked, with a warning.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;

use log::warn;
use thiserror::Error;

/// How a file is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Read-only use: other readers may share the file, no writer may take it.
    Shared,
    /// Read-write use: nobody else may lock the file.
    Exclusive,
}

impl LockMode {
    fn describe(self) -> &'static str {
        match self {
            LockMode::Shared => "for reading",
            LockMode::Exclusive => "for writing",
        }
    }
}

/// The process holding a conflicting lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line (`/proc/PID/cmdline`, shortened), or its command name.
    pub command: String,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pid == std::process::id() {
            write!(f, "this process (pid {}, {})", self.pid, self.command)
        } else {
            write!(f, "pid {} ({})", self.pid, self.command)
        }
    }
}

/// Why a file could not be locked.
#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "locked {} by {}",
        .mode.describe(),
        .holder.as_ref().map_or_else(|| "another process".to_owned(), |h| h.to_string())
    )]
    Held {
        /// How the holder locked it.
        mode: LockMode,
        holder: Option<Holder>,
    },
    #[error("cannot lock it")]
    Lock(#[source] io::Error),
}

/// A whole-file lock, held until dropped.
#[derive(Debug)]
pub struct FileLock {
    /// The description holding the lock; `None` when the lock sits on the caller's own
    /// description (the reopen failed) or the file system takes no locks.
    _file: Option<File>,
    mode: LockMode,
    held: bool,
}

impl FileLock {
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// False when the file system does not support locks and the file is used unlocked.
    pub fn held(&self) -> bool {
        self.held
    }
}

fn flock(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain old data; zero is a valid value of every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

fn kind_of(mode: LockMode) -> libc::c_short {
    match mode {
        LockMode::Shared => libc::F_RDLCK as libc::c_short,
        LockMode::Exclusive => libc::F_WRLCK as libc::c_short,
    }
}

/// Locks the whole of `file` (`mode`: exclusive needs `file` open for writing). `what` names
/// the file in the warning logged where locks are not supported.
pub fn lock(file: &File, mode: LockMode, what: &str) -> Result<FileLock, LockError> {
    let own = OpenOptions::new()
        .read(true)
        .write(mode == LockMode::Exclusive)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok();
    let fd = own.as_ref().map_or(file.as_raw_fd(), |f| f.as_raw_fd());
    let fl = flock(kind_of(mode));
    // SAFETY: F_OFD_SETLK reads the flock struct through a valid pointer.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &fl) } == 0 {
        return Ok(FileLock {
            _file: own,
            mode,
            held: true,
        });
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(LockError::Held {
            mode: holder_mode(fd, mode),
            holder: find_holder(file, mode),
        }),
        Some(libc::ENOLCK) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => {
            warn!("{what}: the file system does not support locks ({e}); using it unlocked");
            Ok(FileLock {
                _file: None,
                mode,
                held: false,
            })
        }
        _ => Err(LockError::Lock(e)),
    }
}

/// How the conflicting lock is held (`F_OFD_GETLK`); a guess from `wanted` if that fails.
fn holder_mode(fd: libc::c_int, wanted: LockMode) -> LockMode {
    let mut fl = flock(kind_of(wanted));
    // SAFETY: F_OFD_GETLK reads and writes the flock struct through a valid pointer.
    if unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) } == 0
        && fl.l_type == libc::F_RDLCK as libc::c_short
    {
        return LockMode::Shared;
    }
    LockMode::Exclusive
}

/// The first process with a lock on `file`'s inode that conflicts with `wanted`, from the
/// `lock:` lines of `/proc/*/fdinfo/*` (`... POSIX|OFDLCK ADVISORY READ|WRITE PID MAJ:MIN:INO
/// START END`; the PID field is -1 for OFD locks, hence the scan).
pub fn find_holder(file: &File, wanted: LockMode) -> Option<Holder> {
    let meta = file.metadata().ok()?;
    let key = format!(
        " {:02x}:{:02x}:{} ",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let conflicts = |line: &str| {
        line.starts_with("lock:")
            && line.contains(&key)
            && (line.contains("OFDLCK") || line.contains("POSIX"))
            && (wanted == LockMode::Exclusive || line.contains("WRITE"))
    };
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if info.lines().any(conflicts) {
                let command = command_line(&proc_entry.path());
                return Some(Holder { pid, command });
            }
        }
    }
    None
}

/// The command line of the process at `/proc/PID` (at most [`COMMAND_CHARS`] characters), or
/// its command name where the line cannot be read.
fn command_line(proc_dir: &std::path::Path) -> String {
    let line = std::fs::read(proc_dir.join("cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    if line.is_empty() {
        return std::fs::read_to_string(proc_dir.join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned());
    }
    match line.char_indices().nth(COMMAND_CHARS) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

/// The longest command line an error quotes.
const COMMAND_CHARS: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &std::path::Path, write: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn an_exclusive_lock_refuses_every_other_lock_and_names_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let a = file(&p, true);
        let held = lock(&a, LockMode::Exclusive, "x").unwrap();
        assert!(held.held());
        for mode in [LockMode::Shared, LockMode::Exclusive] {
            let b = file(&p, true);
            let e = lock(&b, mode, "x").unwrap_err();
            let LockError::Held { mode: m, holder } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(*m, LockMode::Exclusive);
            assert_eq!(holder.as_ref().map(|h| h.pid), Some(std::process::id()));
            let text = e.to_string();
            assert!(
                text.contains("locked for writing by this process"),
                "{text}"
            );
        }
        // The description that did the I/O is free to go on; dropping the lock frees the file.
        drop(held);
        let b = file(&p, true);
        assert!(lock(&b, LockMode::Exclusive, "x").is_ok());
    }

    #[test]
    fn shared_locks_share_and_keep_writers_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let (a, b, c) = (file(&p, false), file(&p, false), file(&p, true));
        let _la = lock(&a, LockMode::Shared, "x").unwrap();
        let _lb = lock(&b, LockMode::Shared, "x").unwrap();
        let e = lock(&c, LockMode::Exclusive, "x").unwrap_err();
        assert!(
            e.to_string().contains("locked for reading by this process"),
            "{e}"
        );
    }

    #[test]
    fn the_locking_descriptor_is_not_the_callers() {
        // A lock held on the caller's descriptor would conflict with the caller's own later
        // locks on it; the lock lives on a reopened description instead.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, [0u8; 4096]).unwrap();
        let a = file(&p, true);
        let _l = lock(&a, LockMode::Exclusive, "x").unwrap();
        let fl = flock(libc::F_WRLCK as libc::c_short);
        // SAFETY: F_OFD_SETLK reads the flock struct through a valid pointer.
        let rc = unsafe { libc::fcntl(a.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        assert_eq!(rc, -1, "the caller's description is not the lock's");
    }
}
