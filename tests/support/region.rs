//! The frontend's side of a vhost-user inflight region in tests: which heads the backend has
//! flagged in flight.

use std::fs::File;
use std::os::unix::io::AsRawFd;

/// The frontend's view of the backend's inflight region: queue 0's in-flight flags.
pub struct RegionView {
    base: *const u8,
    len: usize,
    queue_size: u16,
}

impl RegionView {
    pub fn new(file: &File, len: u64, queue_size: u16) -> RegionView {
        let len = len as usize;
        // SAFETY: a fresh read-only shared mapping of the whole region file; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        RegionView {
            base: base.cast(),
            len,
            queue_size,
        }
    }

    /// Heads of queue 0 flagged in flight.
    pub fn in_flight(&self) -> usize {
        (0..usize::from(self.queue_size))
            // SAFETY: 16 + 16 * head < the region's size (checked by the backend's layout).
            .filter(|h| unsafe { std::ptr::read_volatile(self.base.add(16 + 16 * h)) } == 1)
            .count()
    }
}

impl Drop for RegionView {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base as *mut _, self.len) };
    }
}
