//! The SQEs of a queue's requests: reads and writes (routed by files.rs: inline for
//! memory-backed files), flushes, and fallocate ranges for discards and write-zeroes (punch +
//! allocate pairs where the filesystem has no ZERO_RANGE).

use std::sync::atomic::Ordering;

use io_uring::{opcode, squeue, types};

use super::files::Route;
use super::{IoOp, QueueWorker, Tag, FIXED_IMAGE, READ_BATCH};
use crate::storage::AioOp;

impl QueueWorker {
    /// Pushes the SQEs of one slot (one per range for discards).
    pub(super) fn queue_sqes(&mut self, idx: usize) {
        let writeback = self.disk.writeback.load(Ordering::Relaxed);
        let zero_range = self.disk.zero_range.load(Ordering::Relaxed);
        let slot = self.slots.get_mut(idx);
        let mut tag = Tag::slot(idx);
        match slot.op {
            IoOp::Read | IoOp::Write => {
                let write = slot.op == IoOp::Write;
                let (ptr, n) = slot.iov_remaining();
                let at = slot.offset.wrapping_add(slot.file_delta);
                match self
                    .files
                    .route(slot.file, write, slot.offset, slot.data_len)
                {
                    Route::Inline => {
                        // SAFETY: the iovecs name guest memory kept mapped by the slot (checked
                        // at parse time) or the slot's bounce buffer; `n` is their count.
                        // Neither overlaps the file's mapping.
                        let res =
                            unsafe { self.files.transfer(slot.file, write, ptr, n, at, writeback) };
                        slot.pending = 1;
                        self.pool_done.push((idx, res));
                    }
                    Route::Rbd => {
                        let len = slot.remaining_len();
                        let op = if write {
                            AioOp::Writev {
                                iov: ptr,
                                n,
                                offset: at,
                                len,
                            }
                        } else {
                            AioOp::Readv {
                                iov: ptr,
                                n,
                                offset: at,
                                len,
                            }
                        };
                        slot.pending = 1;
                        self.submit_rbd(op, tag);
                    }
                    Route::Ring { file, random } => {
                        if !write {
                            if random {
                                self.uring.random_reads_queued += 1;
                                tag = tag.device_read();
                            } else {
                                self.uring.seq_reads_queued += 1;
                            }
                        }
                        let file = types::Fixed(file);
                        let e = if write {
                            let flags = if writeback { 0 } else { libc::RWF_DSYNC };
                            opcode::Writev::new(file, ptr, n)
                                .offset(at)
                                .rw_flags(flags)
                                .build()
                        } else {
                            opcode::Readv::new(file, ptr, n).offset(at).build()
                        };
                        slot.pending = 1;
                        self.push(e.user_data(tag.0));
                        if self.uring.random_reads_queued >= READ_BATCH {
                            self.submit();
                        }
                    }
                }
            }
            IoOp::Flush => {
                slot.pending = 1;
                let e = opcode::Fsync::new(FIXED_IMAGE)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                self.push(e.user_data(tag.0));
            }
            IoOp::Discard | IoOp::WriteZeroes { .. } => {
                let ranges = slot.ranges;
                let mode = slot.fallocate_mode(zero_range);
                let pair = matches!(slot.op, IoOp::WriteZeroes { unmap: false }) && !zero_range;
                if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !pair {
                    if let Some(m) = &self.files.mapping {
                        // The range becomes a hole, which a read fault would allocate again.
                        m.retire();
                    }
                }
                slot.pending = ranges.as_slice().len() as u32 * if pair { 2 } else { 1 };
                for (i, _) in ranges.as_slice().iter().enumerate() {
                    let tag = tag.range(i);
                    if pair {
                        self.push_zero_pair(tag, idx, i);
                    } else {
                        let e = self.fallocate(idx, i, mode);
                        self.push(e.user_data(tag.0));
                    }
                }
            }
        }
    }

    fn fallocate(&mut self, idx: usize, range: usize, mode: i32) -> squeue::Entry {
        let r = self.slots.get_mut(idx).ranges.as_slice()[range];
        opcode::Fallocate::new(FIXED_IMAGE, u64::from(r.sectors) * 512)
            .offset(r.sector * 512)
            .mode(mode)
            .build()
    }

    /// Zeroes a range without FALLOC_FL_ZERO_RANGE: punch a hole, then allocate it again.
    pub(super) fn push_zero_pair(&mut self, tag: Tag, idx: usize, range: usize) {
        let punch = self
            .fallocate(
                idx,
                range,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            )
            .flags(squeue::Flags::IO_LINK)
            .user_data(tag.zero_pair().0);
        let alloc = self
            .fallocate(idx, range, libc::FALLOC_FL_KEEP_SIZE)
            .user_data(tag.zero_pair().0);
        self.push(punch);
        self.push(alloc);
    }
}
