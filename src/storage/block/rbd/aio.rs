//! Asynchronous RBD requests: submitted by the caller's thread, completed on librbd's
//! completion thread, which hands `(tag, result)` to an [`AioDone`] (the queues push it on a
//! list and wake their epoll through an eventfd). No thread per request.

use std::ffi::c_void;
use std::sync::Arc;

use super::{ffi, Rbd};

/// Where completions go. Called on a librbd thread; must not block for long.
pub trait AioDone: Send + Sync {
    /// `res`: the request's byte count (reads, writes) or 0, or a negative errno.
    fn done(&self, tag: usize, res: i32);
}

/// One asynchronous request.
#[derive(Debug, Clone, Copy)]
pub enum AioOp {
    /// Into `n` iovecs at `iov` from `offset`; `len` is their total length.
    Readv {
        iov: *const libc::iovec,
        n: u32,
        offset: u64,
        len: u32,
    },
    /// From `n` iovecs at `iov` to `offset`; `len` is their total length.
    Writev {
        iov: *const libc::iovec,
        n: u32,
        offset: u64,
        len: u32,
    },
    Flush,
    Discard {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
    },
}

struct Pending {
    lib: &'static ffi::Lib,
    sink: Arc<dyn AioDone>,
    tag: usize,
    /// What a successful read or write reports.
    len: u32,
}

unsafe extern "C" fn on_complete(c: ffi::Completion, arg: *mut c_void) {
    // SAFETY: `arg` is the Box leaked by `submit` for this completion, taken back once.
    let p = unsafe { Box::from_raw(arg.cast::<Pending>()) };
    // SAFETY: a completion librbd hands its own callback, released here once.
    let r = unsafe { (p.lib.rbd_aio_get_return_value)(c) };
    unsafe { (p.lib.rbd_aio_release)(c) };
    let res = if r < 0 {
        i32::try_from(r).unwrap_or(-libc::EIO)
    } else {
        p.len as i32
    };
    p.sink.done(p.tag, res);
}

impl Rbd {
    /// Starts `op`; its result reaches `sink` with `tag`. `Err(errno)`: not started (and
    /// nothing will reach `sink`).
    ///
    /// # Safety
    /// The iovecs of a read or write, and the memory they name, must stay valid until the
    /// completion reached `sink`.
    pub unsafe fn submit(&self, op: AioOp, sink: &Arc<dyn AioDone>, tag: usize) -> Result<(), i32> {
        let write = !matches!(op, AioOp::Readv { .. } | AioOp::Flush);
        if write && self.read_only {
            return Err(-libc::EROFS);
        }
        let len = match op {
            AioOp::Readv { len, .. } | AioOp::Writev { len, .. } => len,
            _ => 0,
        };
        let lib = self.lib;
        let arg = Box::into_raw(Box::new(Pending {
            lib,
            sink: sink.clone(),
            tag,
            len,
        }));
        let mut c: ffi::Completion = std::ptr::null_mut();
        // SAFETY: the callback and its argument stay valid until the callback runs.
        let r = unsafe { (lib.rbd_aio_create_completion)(arg.cast(), on_complete, &mut c) };
        if r < 0 {
            // SAFETY: not handed to librbd.
            drop(unsafe { Box::from_raw(arg) });
            return Err(r);
        }
        let img = self.image;
        // SAFETY: an open image and a fresh completion; the caller keeps the buffers valid.
        let r = unsafe {
            match op {
                AioOp::Readv { iov, n, offset, .. } => {
                    (lib.rbd_aio_readv)(img, iov, n as i32, offset, c)
                }
                AioOp::Writev { iov, n, offset, .. } => {
                    (lib.rbd_aio_writev)(img, iov, n as i32, offset, c)
                }
                AioOp::Flush => (lib.rbd_aio_flush)(img, c),
                AioOp::Discard { offset, len } => (lib.rbd_aio_discard)(img, offset, len, c),
                AioOp::WriteZeroes { offset, len } => {
                    (lib.rbd_aio_write_zeroes)(img, offset, len as usize, c, 0, 0)
                }
            }
        };
        if r < 0 {
            // SAFETY: librbd refused the request, so the callback will not run.
            unsafe { (lib.rbd_aio_release)(c) };
            drop(unsafe { Box::from_raw(arg) });
            return Err(r);
        }
        Ok(())
    }
}
