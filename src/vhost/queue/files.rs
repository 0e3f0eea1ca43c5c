//! The files a queue's requests reach, registered with its io_uring, and what each needs:
//! memory-backed files (tmpfs, ramfs) are copied inline, through the shared mapping when there
//! is one, since the copy never waits for a device and io_uring would hand it to a worker
//! thread; reads of file 0 that do not continue the previous one are random and go to its
//! descriptor without readahead, if it has one. File 0 is the image or the origin, file 1 the
//! snapshot's COW. An RBD origin is no file: its I/O goes to librbd (rbd.rs).

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use super::uring::Uring;
use super::Backing;
use crate::storage::{memory_backed, DirectNode, Mapping};

/// How a read or write of one of the queue's files runs.
pub(super) enum Route {
    /// Copied by the queue thread itself (memory-backed file).
    Inline,
    /// An SQE on the registered file `file`; `random`: a read that does not continue the
    /// previous one of file 0 (it may wait for the disk).
    Ring { file: u32, random: bool },
    /// Submitted to librbd (file 0 is an RBD image).
    Rbd,
}

#[derive(Default)]
pub(super) struct Files {
    /// Per file: its descriptor when memory-backed.
    inline_fd: [Option<RawFd>; 2],
    /// The shared mapping of file 0, if any.
    pub mapping: Option<Arc<Mapping>>,
    /// The registered index of file 0 opened with readahead off (see `Image::random_file`).
    random_file: Option<u32>,
    /// Where the last read of file 0 ended.
    next_read: u64,
    /// File 0 is an RBD image: its reads and writes go to librbd.
    pub rbd: bool,
}

impl Files {
    /// Registers the files of `backing` with `uring`; also returns the graph node whose reads
    /// and writes may run on the ring.
    pub fn register(
        backing: &Backing,
        uring: &Uring,
    ) -> std::io::Result<(Files, Option<DirectNode>)> {
        let mut files = Files::default();
        match backing {
            Backing::Image(image) => {
                let mut fds = vec![image.file().as_raw_fd()];
                if let Some(f) = image.random_file() {
                    fds.push(f.as_raw_fd());
                    files.random_file = Some(1);
                }
                uring.register_files(&fds)?;
                if image.memory_backed() && !image.direct() {
                    files.inline_fd[0] = Some(image.file().as_raw_fd());
                    files.mapping = image.mapping().cloned();
                }
                Ok((files, None))
            }
            Backing::Device { direct: node, .. } => {
                let Some((node, (origin, cow))) =
                    node.as_ref().and_then(|n| n.fds().map(|f| (n, f)))
                else {
                    return Ok((files, None));
                };
                let Some(origin) = origin else {
                    // An RBD origin: file 0's I/O goes to librbd (see rbd.rs).
                    files.rbd = true;
                    if let Some(cow) = cow {
                        uring.register_files(&[cow, cow])?;
                        files.inline_fd[1] = memory_backed(cow).then_some(cow);
                    }
                    return Ok((files, Some(node.clone())));
                };
                let mut fds = vec![origin, cow.unwrap_or(origin)];
                if let (Some(r), false) = (node.origin_random_fd(), memory_backed(origin)) {
                    fds.push(r);
                    files.random_file = Some(2);
                }
                uring.register_files(&fds)?;
                for (i, fd) in fds.into_iter().take(2).enumerate() {
                    if memory_backed(fd) && !(i == 0 && node.o_direct) {
                        files.inline_fd[i] = Some(fd);
                    }
                }
                if files.inline_fd[0].is_some() {
                    files.mapping = node.origin_mapping();
                }
                Ok((files, Some(node.clone())))
            }
        }
    }

    /// Where a read (`write` false) or write of `len` bytes at `offset` of `file` goes.
    pub fn route(&mut self, file: u32, write: bool, offset: u64, len: u32) -> Route {
        if file == 0 && self.rbd {
            return Route::Rbd;
        }
        if self.inline_fd[file as usize].is_some() {
            return Route::Inline;
        }
        if write || file != 0 {
            return Route::Ring {
                file,
                random: !write,
            };
        }
        let continues = offset == self.next_read;
        self.next_read = offset.saturating_add(u64::from(len));
        match (self.random_file, continues) {
            (_, true) => Route::Ring {
                file: 0,
                random: false,
            },
            (Some(random), false) => Route::Ring {
                file: random,
                random: true,
            },
            (None, false) => Route::Ring {
                file: 0,
                random: true,
            },
        }
    }

    /// Whether `file` is memory-backed (its I/O runs inline).
    pub fn is_inline(&self, file: u32) -> bool {
        self.inline_fd[file as usize].is_some()
    }

    /// Runs a read or write of a memory-backed file on this thread: through the mapping for
    /// file 0 when there is one, else preadv/pwritev2 (RWF_DSYNC unless `writeback`).
    /// Returns the byte count or a negative errno, as a CQE would.
    ///
    /// # Safety
    /// `iov` must point to `n` iovecs naming memory that stays valid for the call and does not
    /// overlap the file's mapping.
    pub unsafe fn transfer(
        &self,
        file: u32,
        write: bool,
        iov: *const libc::iovec,
        n: u32,
        offset: u64,
        writeback: bool,
    ) -> i32 {
        let fd = self.inline_fd[file as usize].unwrap_or(-1);
        let mapping = self.mapping.as_ref().filter(|_| file == 0);
        // SAFETY: the caller's promise.
        let copied = mapping.and_then(|m| {
            let iov = unsafe { std::slice::from_raw_parts(iov, n as usize) };
            if write {
                unsafe { m.write(iov, offset) }
            } else {
                unsafe { m.read(iov, offset) }
            }
        });
        let off = offset as libc::off_t;
        let res = match copied {
            Some(done) => done as isize,
            // SAFETY: as above.
            None if !write => unsafe { libc::preadv(fd, iov, n as i32, off) },
            None => {
                let flags = if writeback { 0 } else { libc::RWF_DSYNC };
                // SAFETY: as above.
                unsafe { libc::pwritev2(fd, iov, n as i32, off, flags) }
            }
        };
        if res < 0 {
            -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            i32::try_from(res).unwrap_or(i32::MAX)
        }
    }
}
