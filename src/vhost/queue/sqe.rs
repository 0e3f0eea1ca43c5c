//! The SQEs of a queue's requests: reads and writes (inline for memory-backed files, through
//! the shared mapping when there is one), flushes, and fallocate ranges for discards and
//! write-zeroes (punch + allocate pairs where the filesystem has no ZERO_RANGE).

use std::sync::atomic::Ordering;

use io_uring::{opcode, squeue, types};

use super::{IoOp, QueueWorker, DEVICE_READ, FIXED_IMAGE, RANGE_SHIFT, READ_BATCH, ZERO_PAIR};

impl QueueWorker {
    /// Pushes the SQEs of one slot (one per range for discards).
    pub(super) fn queue_sqes(&mut self, idx: usize) {
        let writeback = self.disk.writeback.load(Ordering::Relaxed);
        let zero_range = self.disk.zero_range.load(Ordering::Relaxed);
        let slot = self.slots.get_mut(idx);
        let mut ud = idx as u64;
        match slot.op {
            IoOp::Read | IoOp::Write if self.inline_fd[slot.file as usize].is_some() => {
                // Memory-backed file (tmpfs): the copy never waits for a device, and io_uring
                // would hand it to a worker thread; doing it here is cheaper.
                let (ptr, n) = slot.iov_remaining();
                let fd = self.inline_fd[slot.file as usize].unwrap_or(-1);
                let off = slot.offset.wrapping_add(slot.file_delta);
                let mapping = self.mapping.as_ref().filter(|_| slot.file == 0);
                // SAFETY: the iovecs name guest memory kept mapped by the slot (checked at
                // parse time) or the slot's bounce buffer; `n` is their count. Neither
                // overlaps the image's mapping.
                let copied = mapping.and_then(|m| {
                    let iov = unsafe { std::slice::from_raw_parts(ptr, n as usize) };
                    if slot.op == IoOp::Read {
                        unsafe { m.read(iov, off) }
                    } else {
                        unsafe { m.write(iov, off) }
                    }
                });
                let off = off as libc::off_t;
                let res = match copied {
                    Some(done) => done as isize,
                    // SAFETY: as above.
                    None if slot.op == IoOp::Read => unsafe {
                        libc::preadv(fd, ptr, n as i32, off)
                    },
                    None => {
                        let flags = if writeback { 0 } else { libc::RWF_DSYNC };
                        // SAFETY: as above.
                        unsafe { libc::pwritev2(fd, ptr, n as i32, off, flags) }
                    }
                };
                let res = if res < 0 {
                    -std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO)
                } else {
                    i32::try_from(res).unwrap_or(i32::MAX)
                };
                slot.pending = 1;
                self.pool_done.push((idx, res));
            }
            IoOp::Read | IoOp::Write => {
                let (ptr, n) = slot.iov_remaining();
                let mut file = slot.file;
                // A read that does not continue the previous read of file 0 is random: it goes
                // to the descriptor without readahead.
                if slot.op == IoOp::Read {
                    let continues = file == 0 && slot.offset == self.next_read;
                    if file == 0 {
                        self.next_read = slot.offset.saturating_add(u64::from(slot.data_len));
                        if let (Some(random), false) = (self.random_file, continues) {
                            file = random;
                        }
                    }
                    if continues {
                        self.seq_reads_queued += 1;
                    } else {
                        self.random_reads_queued += 1;
                        self.device_reads += 1;
                        ud |= DEVICE_READ;
                    }
                }
                let file = types::Fixed(file);
                let at = slot.offset.wrapping_add(slot.file_delta);
                let e = if slot.op == IoOp::Read {
                    opcode::Readv::new(file, ptr, n).offset(at).build()
                } else {
                    let flags = if writeback { 0 } else { libc::RWF_DSYNC };
                    opcode::Writev::new(file, ptr, n)
                        .offset(at)
                        .rw_flags(flags)
                        .build()
                };
                slot.pending = 1;
                self.push(e.user_data(ud));
                if self.random_reads_queued >= READ_BATCH {
                    self.submit();
                }
            }
            IoOp::Flush => {
                slot.pending = 1;
                let e = opcode::Fsync::new(FIXED_IMAGE)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build();
                self.push(e.user_data(ud));
            }
            IoOp::Discard | IoOp::WriteZeroes { .. } => {
                let ranges = slot.ranges;
                let mode = slot.fallocate_mode(zero_range);
                let pair = matches!(slot.op, IoOp::WriteZeroes { unmap: false }) && !zero_range;
                if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !pair {
                    if let Some(m) = &self.mapping {
                        // The range becomes a hole, which a read fault would allocate again.
                        m.retire();
                    }
                }
                slot.pending = ranges.as_slice().len() as u32 * if pair { 2 } else { 1 };
                for (i, _) in ranges.as_slice().iter().enumerate() {
                    let ud = ud | (i as u64) << RANGE_SHIFT;
                    if pair {
                        self.push_zero_pair(ud, idx, i);
                    } else {
                        let e = self.fallocate(idx, i, mode);
                        self.push(e.user_data(ud));
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
    pub(super) fn push_zero_pair(&mut self, ud: u64, idx: usize, range: usize) {
        let punch = self
            .fallocate(
                idx,
                range,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            )
            .flags(squeue::Flags::IO_LINK)
            .user_data(ud | ZERO_PAIR);
        let alloc = self
            .fallocate(idx, range, libc::FALLOC_FL_KEEP_SIZE)
            .user_data(ud | ZERO_PAIR);
        self.push(punch);
        self.push(alloc);
    }
}
