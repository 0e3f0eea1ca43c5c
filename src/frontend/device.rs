//! The vhost-user handshake: connect, negotiate, read config, share memory, start queues.
//!
//! Message order follows QEMU's: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM, SET_FEATURES, GET_CONFIG, SET_MEM_TABLE, GET/SET_INFLIGHT_FD (when the
//! backend offers inflight tracking; QEMU sends them too), then per queue SET_VRING_NUM,
//! SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE.
//! Every exchange has a deadline ([`Channel`]), so a hung backend yields an error.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserInflight};
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VringConfigData};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_SIZE_MAX};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::blk::BlkQueue;
use super::channel::Channel;
use super::config::{bit, BlkConfig, CONFIG_SIZE, DEFAULT_FEATURES, WRITEBACK_OFFSET};
use super::error::{FrontendError, Result};
use super::memory::GuestMem;
use super::queue::Queue;

/// How often a connect is retried while the socket does not exist or refuses.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

/// Protocol features the frontend uses when offered.
pub fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// Knobs of a frontend session.
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// Virtio features asked for; acked = this & offered. See [`DEFAULT_FEATURES`].
    pub features: u64,
    /// Ring size of each queue started with [`BlkFrontend::queue`].
    pub queue_size: u16,
    /// Bytes of shared guest memory (rings, tables, request buffers).
    pub mem_size: u64,
    /// Limit on every socket reply and every wait for a completion.
    pub timeout: Duration,
    /// How long to keep retrying while the socket is absent or refuses connections.
    pub connect_timeout: Duration,
    /// Ask for inflight tracking (GET/SET_INFLIGHT_FD) when the backend offers it, as QEMU
    /// does; a backend then may complete requests out of order and survive a restart.
    pub inflight: bool,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        Self {
            features: DEFAULT_FEATURES,
            queue_size: 256,
            mem_size: 64 << 20,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            inflight: true,
        }
    }
}

/// A connected, negotiated vhost-user-blk session without a VM.
pub struct BlkFrontend {
    chan: Channel,
    mem: Arc<GuestMem>,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    config: BlkConfig,
    num_queues: u16,
    /// Per queue: how it was started, to start it again on [`BlkFrontend::reconnect`].
    started: Vec<Option<QueueSetup>>,
    opts: FrontendOptions,
    path: PathBuf,
    /// The backend's inflight region (INFLIGHT_SHMFD), kept open as QEMU keeps it.
    inflight: Option<(VhostUserInflight, File)>,
}

impl BlkFrontend {
    /// Connects to the backend's socket (retrying until `connect_timeout` while it is absent
    /// or refusing), negotiates, reads the config and shares guest memory.
    pub fn connect(path: impl AsRef<Path>, opts: FrontendOptions) -> Result<Self> {
        let mem = Arc::new(GuestMem::new(opts.mem_size)?);
        let hs = handshake(path.as_ref(), &opts, &mem, None)?;
        Ok(Self {
            chan: hs.chan,
            mem,
            features: hs.features,
            protocol: hs.protocol,
            config: hs.config,
            num_queues: hs.num_queues,
            started: (0..hs.num_queues).map(|_| None).collect(),
            opts,
            path: path.as_ref().to_owned(),
            inflight: hs.inflight,
        })
    }

    /// Connects again after the backend went away (a restart, `kill -9`), as QEMU with
    /// `reconnect=1` does: the same memory and inflight region, and every started queue
    /// resumes at its ring's used index and gets a kick. A backend that tracked its requests
    /// in the region resubmits those it had in flight. The queues' drivers stay valid.
    pub fn reconnect(&mut self) -> Result<()> {
        let hs = handshake(&self.path, &self.opts, &self.mem, self.inflight.as_ref())?;
        if hs.features != self.features || hs.num_queues != self.num_queues {
            return Err(FrontendError::ReconnectMismatch);
        }
        self.chan = hs.chan;
        self.protocol = hs.protocol;
        self.config = hs.config;
        for (i, setup) in self.started.iter().enumerate() {
            let Some(setup) = setup else { continue };
            let used = u16::from_le(self.mem.load(setup.used_idx, Ordering::Acquire)?);
            start_vring(&mut self.chan, self.features, i, setup, used)?;
            // A fresh kick eventfd starts signalled in QEMU; ours is reused, so kick it.
            let _ = setup.kick.write(1);
        }
        Ok(())
    }

    /// The negotiated (acked) virtio feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether feature number `feature` (e.g. `VIRTIO_BLK_F_FLUSH`) was negotiated.
    pub fn has_feature(&self, feature: u32) -> bool {
        feature < 64 && self.features & bit(feature) != 0
    }

    /// The negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// The inflight region the backend gave (GET_INFLIGHT_FD), if it offered tracking.
    pub fn inflight(&self) -> Option<&(VhostUserInflight, File)> {
        self.inflight.as_ref()
    }

    /// The config space read at connect (or by the last [`BlkFrontend::refresh_config`]).
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    /// Reads the config space again.
    pub fn refresh_config(&mut self) -> Result<BlkConfig> {
        self.config = read_config(&mut self.chan)?;
        Ok(self.config)
    }

    /// Writes the `writeback` byte (CONFIG_WCE) with SET_CONFIG and re-reads the config.
    pub fn set_writeback(&mut self, writeback: bool) -> Result<BlkConfig> {
        // Flags 0 is "frontend write of a writable field" in the vhost-user spec; the crate's
        // `WRITABLE` (1) is the spec's live-migration value, which QEMU rejects.
        let byte = [u8::from(writeback)];
        self.chan.call("SET_CONFIG", |vu| {
            vu.set_config(WRITEBACK_OFFSET, VhostUserConfigFlags::empty(), &byte)
        })?;
        self.refresh_config()
    }

    /// Number of queues the device has (negotiated MQ and the backend's queue count).
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The shared guest memory, for crafting buffers.
    pub fn memory(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// Session options.
    pub fn options(&self) -> &FrontendOptions {
        &self.opts
    }

    /// Starts queue `index` with the default ring size and returns its driver.
    pub fn queue(&mut self, index: u16) -> Result<Queue> {
        self.queue_with_size(index, self.opts.queue_size)
    }

    /// Starts queue `index` with a ring of `size` entries and returns its driver.
    pub fn queue_with_size(&mut self, index: u16, size: u16) -> Result<Queue> {
        let count = self.num_queues;
        let slot = self
            .started
            .get(usize::from(index))
            .ok_or(FrontendError::NoSuchQueue { index, count })?;
        if slot.is_some() {
            return Err(FrontendError::QueueInUse(index));
        }
        let queue = Queue::new(
            index,
            Arc::clone(&self.mem),
            size,
            self.features & bit(VIRTIO_RING_F_EVENT_IDX) != 0,
            self.features & bit(VIRTIO_RING_F_INDIRECT_DESC) != 0,
            self.opts.timeout,
        )?;
        let l = *queue.layout();
        let i = usize::from(index);
        let addrs = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: self.mem.host_addr(l.desc)?,
            used_ring_addr: self.mem.host_addr(l.used)?,
            avail_ring_addr: self.mem.host_addr(l.avail)?,
            log_addr: None,
        };
        let setup = QueueSetup {
            size,
            addrs,
            call: queue.call_fd().try_clone().map_err(FrontendError::Dup)?,
            kick: queue.kick_fd().try_clone().map_err(FrontendError::Dup)?,
            used_idx: l.used_idx(),
        };
        start_vring(&mut self.chan, self.features, i, &setup, 0)?;
        self.started[i] = Some(setup);
        Ok(queue)
    }

    /// Starts queue `index` with `depth` request slots of `data_len` bytes each.
    pub fn blk_queue(&mut self, index: u16, depth: u16, data_len: u32) -> Result<BlkQueue> {
        let queue = self.queue(index)?;
        let mut q = BlkQueue::new(queue, depth, data_len)?;
        if self.has_feature(VIRTIO_BLK_F_SIZE_MAX) {
            q.set_size_max(self.config.size_max);
        }
        Ok(q)
    }

    /// Stops every started queue (GET_VRING_BASE), then closes the socket.
    pub fn disconnect(mut self) -> Result<()> {
        self.stop_queues()
    }

    fn stop_queues(&mut self) -> Result<()> {
        let mut first_err = None;
        for (i, started) in self.started.iter_mut().enumerate() {
            if started.take().is_some() {
                if let Err(e) = self.chan.call("GET_VRING_BASE", |vu| vu.get_vring_base(i)) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for BlkFrontend {
    fn drop(&mut self) {
        if let Err(e) = self.stop_queues() {
            log::debug!("vhost-user disconnect: {e}");
        }
    }
}

/// What [`BlkFrontend::reconnect`] needs to start a queue again.
struct QueueSetup {
    size: u16,
    addrs: VringConfigData,
    call: EventFd,
    kick: EventFd,
    used_idx: GuestAddress,
}

/// The outcome of connecting and negotiating.
struct Handshake {
    chan: Channel,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    config: BlkConfig,
    num_queues: u16,
    inflight: Option<(VhostUserInflight, File)>,
}

/// Connects, negotiates, reads the config, shares `mem` and sets up the inflight region (the
/// given one on a reconnect, a new one from the backend otherwise).
fn handshake(
    path: &Path,
    opts: &FrontendOptions,
    mem: &GuestMem,
    inflight: Option<&(VhostUserInflight, File)>,
) -> Result<Handshake> {
    let stream = connect_with_retry(path, opts.connect_timeout)?;
    let mut chan = Channel::new(stream, opts.timeout)?;
    chan.call("SET_OWNER", |vu| vu.set_owner())?;
    let offered = chan.call("GET_FEATURES", |vu| vu.get_features())?;
    if offered & bit(VIRTIO_F_VERSION_1) == 0 {
        return Err(FrontendError::MissingFeature("VIRTIO_F_VERSION_1"));
    }
    let features = offered & opts.features;
    let mut wanted = wanted_protocol_features();
    if !opts.inflight {
        wanted.remove(VhostUserProtocolFeatures::INFLIGHT_SHMFD);
    }
    let protocol = negotiate_protocol(&mut chan, features, wanted)?;
    let max_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
        chan.call("GET_QUEUE_NUM", |vu| vu.get_queue_num())?
    } else {
        1
    };
    chan.call("SET_FEATURES", |vu| vu.set_features(features))?;
    let config = read_config(&mut chan)?;
    let num_queues = if features & bit(VIRTIO_BLK_F_MQ) != 0 {
        config.num_queues.max(1)
    } else {
        1
    };
    let num_queues = num_queues.min(u16::try_from(max_queues).unwrap_or(u16::MAX));
    let regions = mem.regions()?;
    chan.call("SET_MEM_TABLE", |vu| vu.set_mem_table(&regions))?;
    let inflight = match (
        protocol.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        inflight,
    ) {
        (false, _) => None,
        (true, Some((info, file))) => {
            let file = file.try_clone().map_err(FrontendError::Dup)?;
            Some((*info, file))
        }
        (true, None) => {
            let ask = VhostUserInflight::new(0, 0, num_queues, opts.queue_size);
            Some(chan.call("GET_INFLIGHT_FD", |vu| vu.get_inflight_fd(&ask))?)
        }
    };
    if let Some((info, file)) = &inflight {
        chan.call("SET_INFLIGHT_FD", |vu| {
            vu.set_inflight_fd(info, file.as_raw_fd())
        })?;
    }
    Ok(Handshake {
        chan,
        features,
        protocol,
        config,
        num_queues,
        inflight,
    })
}

/// Sends one queue's ring setup, starting at available index `base`.
fn start_vring(
    chan: &mut Channel,
    features: u64,
    i: usize,
    setup: &QueueSetup,
    base: u16,
) -> Result<()> {
    chan.call("SET_VRING_NUM", |vu| vu.set_vring_num(i, setup.size))?;
    chan.call("SET_VRING_BASE", |vu| vu.set_vring_base(i, base))?;
    chan.call("SET_VRING_ADDR", |vu| vu.set_vring_addr(i, &setup.addrs))?;
    chan.call("SET_VRING_CALL", |vu| vu.set_vring_call(i, &setup.call))?;
    chan.call("SET_VRING_KICK", |vu| vu.set_vring_kick(i, &setup.kick))?;
    if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        chan.call("SET_VRING_ENABLE", |vu| vu.set_vring_enable(i, true))?;
    }
    Ok(())
}

fn connect_with_retry(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(source) => {
                return Err(FrontendError::Connect {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

fn negotiate_protocol(
    chan: &mut Channel,
    features: u64,
    wanted: VhostUserProtocolFeatures,
) -> Result<VhostUserProtocolFeatures> {
    let pf = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if features & pf == 0 {
        return Err(FrontendError::MissingFeature(
            "VHOST_USER_F_PROTOCOL_FEATURES (needed for config space)",
        ));
    }
    let offered = chan.call("GET_PROTOCOL_FEATURES", |vu| vu.get_protocol_features())?;
    let acked = offered & wanted;
    chan.call("SET_PROTOCOL_FEATURES", |vu| {
        vu.set_protocol_features(acked)
    })?;
    if !acked.contains(VhostUserProtocolFeatures::CONFIG) {
        return Err(FrontendError::MissingFeature("the CONFIG protocol feature"));
    }
    if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        chan.request_acks();
    }
    Ok(acked)
}

fn read_config(chan: &mut Channel) -> Result<BlkConfig> {
    let zero = [0u8; CONFIG_SIZE];
    let (_, payload) = chan.call("GET_CONFIG", |vu| {
        vu.get_config(0, CONFIG_SIZE as u32, VhostUserConfigFlags::empty(), &zero)
    })?;
    Ok(BlkConfig::parse(&payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn silent_backend_fails_the_handshake_instead_of_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let conn = listener.accept();
            let _ = rx.recv();
            drop(conn);
        });
        let opts = FrontendOptions {
            timeout: Duration::from_millis(200),
            ..FrontendOptions::default()
        };
        let started = Instant::now();
        let res = BlkFrontend::connect(&path, opts);
        assert!(
            matches!(res, Err(FrontendError::SocketTimeout { .. })),
            "{:?}",
            res.err()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        tx.send(()).unwrap();
        holder.join().unwrap();
    }

    #[test]
    fn missing_socket_is_retried_until_the_connect_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FrontendOptions {
            connect_timeout: Duration::from_millis(50),
            ..FrontendOptions::default()
        };
        let res = BlkFrontend::connect(dir.path().join("absent.sock"), opts);
        assert!(matches!(res, Err(FrontendError::Connect { .. })));
    }
}
