//! Direct I/O (`O_DIRECT`) with any buffer, offset and length. The kernel takes direct I/O only
//! with buffers, offsets and lengths aligned to the file's direct-I/O alignment (see
//! [`super::probe::DioAlign`]) and fails the rest with `EINVAL`. Aligned I/O goes straight
//! through; an unaligned buffer is copied through an aligned bounce buffer; an offset or
//! length that ends inside a block reads the partial block(s) and writes them back whole
//! (read-modify-write).
//!
//! Read-modify-writes exclude every other write made through the same [`Dio`] (a read-write
//! lock: plain writes share it, a read-modify-write holds it alone), so none is lost to a
//! concurrent write to the same block. Writes that bypass it (the queues' io_uring) are
//! always whole blocks, and never race a read-modify-write, whose only users are the engine's
//! serialized metadata writes.

use std::alloc::{self, Layout};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::RwLock;

use super::probe::DioAlign;

/// Bounce buffers are aligned to this (a page: every direct-I/O memory alignment divides it).
pub const BOUNCE_ALIGN: usize = 4096;
/// Largest bounce buffer one call allocates: longer I/O goes in pieces of this size.
const PIECE: u64 = 1 << 20;

/// A zeroed, page-aligned heap buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (at least one), aligned to [`BOUNCE_ALIGN`].
    pub fn zeroed(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(1), BOUNCE_ALIGN)
            .unwrap_or_else(|_| Layout::new::<u8>());
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the allocation holds `layout.size()` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Positional I/O on an `O_DIRECT` file that accepts any buffer, offset and length inside it.
#[derive(Debug)]
pub struct Dio {
    mem: usize,
    block: u64,
    rmw: RwLock<()>,
}

fn round_down(v: u64, b: u64) -> u64 {
    v - v % b
}

impl Dio {
    pub fn new(align: DioAlign) -> Dio {
        Dio {
            mem: (align.mem as usize).max(1),
            block: u64::from(align.offset.max(512)),
            rmw: RwLock::new(()),
        }
    }

    /// Offsets and lengths are multiples of this.
    pub fn block(&self) -> u64 {
        self.block
    }

    fn aligned(&self, ptr: *const u8, len: usize, offset: u64) -> bool {
        (ptr as usize) % self.mem == 0 && (len as u64) % self.block == 0 && offset % self.block == 0
    }

    /// Reads `buf.len()` bytes at `offset`. The blocks around the range must lie inside the file
    /// (the caller keeps the usable size a multiple of [`Dio::block`]).
    pub fn read_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.aligned(buf.as_ptr(), buf.len(), offset) {
            return file.read_exact_at(buf, offset);
        }
        let end = offset + buf.len() as u64;
        let mut bounce = AlignedBuf::zeroed(self.bounce_len(offset, end));
        let mut pos = offset;
        while pos < end {
            let (a0, a1) = self.span(pos, end);
            let span = &mut bounce.as_mut_slice()[..(a1 - a0) as usize];
            file.read_exact_at(span, a0)?;
            let take = (a1.min(end) - pos) as usize;
            let from = (pos - a0) as usize;
            let to = (pos - offset) as usize;
            buf[to..to + take].copy_from_slice(&span[from..from + take]);
            pos += take as u64;
        }
        Ok(())
    }

    /// Writes `buf` at `offset`, reading and rewriting the blocks it covers only in part.
    pub fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + buf.len() as u64;
        let partial = offset % self.block != 0 || end % self.block != 0;
        if !partial && (buf.as_ptr() as usize) % self.mem == 0 {
            let _shared = self.rmw.read().unwrap_or_else(|p| p.into_inner());
            return file.write_all_at(buf, offset);
        }
        let _guard = match partial {
            true => Guard::Alone(self.rmw.write().unwrap_or_else(|p| p.into_inner())),
            false => Guard::Shared(self.rmw.read().unwrap_or_else(|p| p.into_inner())),
        };
        let b = self.block;
        let mut bounce = AlignedBuf::zeroed(self.bounce_len(offset, end));
        let mut pos = offset;
        while pos < end {
            let (a0, a1) = self.span(pos, end);
            let span = &mut bounce.as_mut_slice()[..(a1 - a0) as usize];
            let take = a1.min(end) - pos;
            if pos > a0 {
                file.read_exact_at(&mut span[..b as usize], a0)?;
            }
            if pos + take < a1 && !(a1 - b == a0 && pos > a0) {
                let at = (a1 - b - a0) as usize;
                file.read_exact_at(&mut span[at..], a1 - b)?;
            }
            let from = (pos - offset) as usize;
            let at = (pos - a0) as usize;
            span[at..at + take as usize].copy_from_slice(&buf[from..from + take as usize]);
            file.write_all_at(span, a0)?;
            pos += take;
        }
        Ok(())
    }

    /// The aligned span of the next piece of `[pos, end)`: from the block holding `pos`, at most
    /// [`PIECE`] bytes, to the end of the block holding `end - 1`.
    fn span(&self, pos: u64, end: u64) -> (u64, u64) {
        let a0 = round_down(pos, self.block);
        let a1 = (round_down(end + self.block - 1, self.block)).min(a0 + PIECE);
        (a0, a1)
    }

    fn bounce_len(&self, offset: u64, end: u64) -> usize {
        let a0 = round_down(offset, self.block);
        let a1 = round_down(end + self.block - 1, self.block);
        (a1 - a0).min(PIECE) as usize
    }
}

enum Guard<'a> {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'a, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'a, ()>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Dio over a plain (buffered) file: the same arithmetic, checked against a model.
    fn check(block: u32, ops: &[(bool, u64, usize, usize)]) {
        let f = tempfile::tempfile().unwrap();
        let size = 64 * 1024u64;
        f.set_len(size).unwrap();
        let dio = Dio::new(DioAlign {
            mem: 512,
            offset: block,
        });
        let mut model = vec![0u8; size as usize];
        let mut seed = 1u8;
        for &(write, offset, len, misalign) in ops {
            let mut raw = vec![0u8; len + misalign];
            let buf = &mut raw[misalign..];
            if write {
                for b in buf.iter_mut() {
                    seed = seed.wrapping_mul(31).wrapping_add(7);
                    *b = seed;
                }
                dio.write_at(&f, buf, offset).unwrap();
                model[offset as usize..offset as usize + len].copy_from_slice(buf);
            } else {
                dio.read_at(&f, buf, offset).unwrap();
                assert!(
                    buf[..] == model[offset as usize..offset as usize + len],
                    "read {len} at {offset}"
                );
            }
        }
        let mut all = vec![0u8; size as usize];
        f.read_exact_at(&mut all, 0).unwrap();
        assert!(all == model);
    }

    #[test]
    fn unaligned_reads_and_writes_match_a_model() {
        for block in [512, 4096] {
            check(
                block,
                &[
                    (true, 0, 16, 0),
                    (true, 4080, 40, 3),
                    (true, 8192, 4096, 1),
                    (true, 512, 512, 0),
                    (true, 100, 3 * 4096 + 7, 5),
                    (true, 1 << 15, 1 << 14, 0),
                    (false, 0, 65536, 1),
                    (false, 4090, 10, 0),
                    (false, 1, 1, 7),
                ],
            );
        }
    }

    #[test]
    fn long_unaligned_writes_go_in_pieces() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(3 << 20).unwrap();
        let dio = Dio::new(DioAlign {
            mem: 4096,
            offset: 4096,
        });
        let data: Vec<u8> = (0..(2 << 20) + 100).map(|i| (i % 251) as u8).collect();
        dio.write_at(&f, &data, 300).unwrap();
        let mut back = vec![0u8; data.len()];
        dio.read_at(&f, &mut back, 300).unwrap();
        assert!(back == data);
        let mut head = [9u8; 300];
        f.read_exact_at(&mut head, 0).unwrap();
        assert_eq!(head, [0u8; 300], "bytes before the write are kept");
    }

    #[test]
    fn aligned_buffers_are_page_aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(10000);
        assert_eq!(b.as_slice().as_ptr() as usize % BOUNCE_ALIGN, 0);
        assert!(b.as_slice().len() == 10000 && b.as_slice().iter().all(|&x| x == 0));
    }
}
