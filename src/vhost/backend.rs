//! The `VhostUserBackend` of one export connection: one worker thread per queue, each queue's
//! state behind its own mutex (never shared between queues), config space and features.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, error, info};
use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_CONFIG_WCE, VIRTIO_BLK_F_FLUSH};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::memguard::MemoryGuard;
use super::queue::{DiskContext, QueueWorker};
use super::tracker;
use crate::virtio_blk::config::{BlkConfig, WCE_OFFSET};

type Mem = GuestMemoryMmap<()>;

/// One connection's backend. Cheap to clone (the framework clones it per worker thread).
#[derive(Clone)]
pub struct BlkBackend(Arc<Inner>);

struct Inner {
    config: BlkConfig,
    disk: Arc<DiskContext>,
    queues: Vec<Mutex<QueueWorker>>,
    acked: AtomicU64,
    exit: Mutex<Vec<EventNotifier>>,
    /// Set when the daemon stops: queues pop no new requests.
    stopping: Arc<AtomicBool>,
    guard: Arc<MemoryGuard>,
}

impl BlkBackend {
    pub fn new(
        config: BlkConfig,
        disk: Arc<DiskContext>,
        mem: GuestMemoryAtomic<Mem>,
    ) -> std::io::Result<BlkBackend> {
        let stopping = Arc::new(AtomicBool::new(false));
        let guard = MemoryGuard::new();
        let queues = (0..config.num_queues as usize)
            .map(|i| {
                let (d, m, st, g) = (disk.clone(), mem.clone(), stopping.clone(), guard.clone());
                QueueWorker::new(i, config.queue_size, d, m, st, g).map(Mutex::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BlkBackend(Arc::new(Inner {
            config,
            disk,
            queues,
            acked: AtomicU64::new(0),
            exit: Mutex::new(Vec::new()),
            stopping,
            guard,
        })))
    }

    /// Event data used for queue `q`'s completion eventfd on its worker's epoll.
    pub fn completion_event(&self) -> u64 {
        self.0.config.num_queues as u64 + 1
    }

    /// The completion eventfd of each queue, to register with that queue's worker.
    pub fn completion_fds(&self) -> Vec<i32> {
        (0..self.0.queues.len())
            .map(|q| self.queue(q).completion_fd())
            .collect()
    }

    /// Event data used for a queue's QoS timer on its worker's epoll.
    pub fn timer_event(&self) -> u64 {
        self.completion_event() + 1
    }

    /// The QoS timer of each queue, to register with that queue's worker.
    pub fn timer_fds(&self) -> Vec<i32> {
        (0..self.0.queues.len())
            .map(|q| self.queue(q).timer_fd())
            .collect()
    }

    /// How to disconnect the frontend if its guest memory shrinks under the daemon.
    pub fn set_disconnect(&self, handle: vhost_user_backend::ShutdownHandle) {
        self.0.guard.set_disconnect(handle);
    }

    /// Tells every worker thread to exit.
    pub fn stop_workers(&self) {
        for n in lock(&self.0.exit).drain(..) {
            let _ = n.notify();
        }
    }

    /// Stops popping new requests and completes every request in flight into the used rings,
    /// while the frontend is still connected: a frontend that reconnects later resumes at
    /// exactly the used index, losing and repeating nothing.
    pub fn quiesce(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.drain();
    }

    /// Processes what the guest queued while the export was paused.
    pub fn resume(&self) {
        for q in 0..self.0.queues.len() {
            self.queue(q).resume();
        }
    }

    /// Waits for all in-flight requests of every queue to finish.
    pub fn drain(&self) {
        for q in 0..self.0.queues.len() {
            self.queue(q).drain();
        }
    }

    fn queue(&self, q: usize) -> MutexGuard<'_, QueueWorker> {
        lock(&self.0.queues[q])
    }
}

/// Locks a mutex, recovering from poisoning (a panicked holder leaves consistent state here).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMemoryAtomic<Mem>>;

    fn num_queues(&self) -> usize {
        self.0.config.num_queues as usize
    }

    fn max_queue_size(&self) -> usize {
        self.0.config.queue_size as usize
    }

    fn features(&self) -> u64 {
        self.0.config.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        self.0.acked.store(features, Ordering::Relaxed);
        if features & (1 << VIRTIO_BLK_F_CONFIG_WCE) == 0 {
            // Without CONFIG_WCE the cache mode follows FLUSH (virtio 1.2, 5.2.5.1).
            let wb = features & (1 << VIRTIO_BLK_F_FLUSH) != 0;
            if !wb {
                self.0.disk.writeback.store(false, Ordering::Relaxed);
            }
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn get_inflight_fd(
        &self,
        inflight: &VhostUserInflight,
    ) -> std::io::Result<(VhostUserInflight, File)> {
        let (queues, size) = (inflight.num_queues, inflight.queue_size);
        if queues == 0 || queues > self.0.config.num_queues || size == 0 || size > 32768 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("inflight region for {queues} queues of {size} entries refused"),
            ));
        }
        let file = tracker::create(queues, size)?;
        let reply = VhostUserInflight::new(tracker::region_size(queues, size), 0, queues, size);
        Ok((reply, file))
    }

    fn set_inflight_fd(&self, inflight: &VhostUserInflight, file: File) -> std::io::Result<()> {
        let region = tracker::Region::map(
            &file,
            inflight.mmap_offset,
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        )?;
        info!(
            "frontend keeps an inflight region ({} queues of {} entries): requests complete \
             as they finish and survive a daemon restart",
            inflight.num_queues, inflight.queue_size
        );
        for q in 0..self.0.queues.len() {
            self.queue(q).track_inflight(region.clone());
        }
        Ok(())
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let wb = self.0.disk.writeback.load(Ordering::Relaxed);
        self.0.config.read(wb, offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        let acked = self.0.acked.load(Ordering::Relaxed);
        if offset == WCE_OFFSET && buf.len() == 1 && acked & (1 << VIRTIO_BLK_F_CONFIG_WCE) != 0 {
            let wb = buf[0] != 0;
            debug!(
                "guest set write cache to {}",
                if wb { "writeback" } else { "writethrough" }
            );
            self.0.disk.writeback.store(wb, Ordering::Relaxed);
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "config write of {} bytes at offset {offset} refused",
                buf.len()
            ),
        ))
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Mem>) -> std::io::Result<()> {
        // Queues hold the same GuestMemoryAtomic, which the framework updates in place.
        self.0.guard.cover(&mem.memory());
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.0.config.num_queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        let ours = notifier.try_clone().ok()?;
        lock(&self.0.exit).push(ours);
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> std::io::Result<()> {
        if let Some(q) = self.0.queues.get(queue_index as usize) {
            let mut q = lock(q);
            q.drain();
            q.stopped();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> std::io::Result<()> {
        if evset != EventSet::IN {
            error!("queue {thread_id}: unexpected event set {evset:?}");
            return Ok(());
        }
        let Some(vring) = vrings.first() else {
            return Ok(());
        };
        let mut q = self.queue(thread_id);
        if u64::from(device_event) == self.completion_event() {
            q.handle_completions(vring);
        } else if u64::from(device_event) == self.timer_event() {
            q.handle_timer(vring);
        } else {
            q.handle_kick(vring);
        }
        Ok(())
    }
}
