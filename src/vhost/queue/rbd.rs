//! A queue's requests to an RBD origin: submitted to librbd from the queue thread, many in
//! flight; librbd's completion thread puts each result on the helper pool's completion list
//! and wakes the queue through its eventfd, as the helper threads do. Write-through writes are
//! followed by an RBD flush before they complete.

use std::sync::{Arc, Mutex};

use log::error;
use vmm_sys_util::eventfd::EventFd;

use super::{QueueWorker, Tag};
use crate::storage::{AioDone, AioOp};

/// Where librbd's completions go: the pool's list, and the queue's eventfd.
pub(super) struct RbdSink {
    pub done: Arc<Mutex<Vec<(usize, i32)>>>,
    pub notify: Arc<EventFd>,
}

impl AioDone for RbdSink {
    fn done(&self, tag: usize, res: i32) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        d.push((tag, res));
        // The queue empties the list at every wakeup: only the first entry needs one.
        if d.len() == 1 {
            let _ = self.notify.write(1);
        }
    }
}

impl QueueWorker {
    /// Submits `op` on the origin's RBD image for the request `tag` names; a refusal
    /// completes it with the error at the next reap.
    pub(super) fn submit_rbd(&mut self, op: AioOp, tag: Tag) {
        let node = self.direct.as_ref();
        let (Some(rbd), Some(sink)) = (node.and_then(|n| n.origin_rbd()), &self.rbd_sink) else {
            self.pool_done.push((tag.0 as usize, -libc::EIO));
            return;
        };
        // SAFETY: the iovecs live in the slot, and the guest memory they name is kept mapped
        // by it, until this completion is reaped (a drain waits for every one).
        if let Err(e) = unsafe { rbd.submit(op, sink, tag.0 as usize) } {
            if self.log.allow() {
                let err = std::io::Error::from_raw_os_error(-e);
                error!("queue {}: RBD submit failed: {err}", self.index);
            }
            self.pool_done.push((tag.0 as usize, e));
            let _ = self.event.write(1);
        }
    }
}
