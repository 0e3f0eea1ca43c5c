//! One fuzz case: a sequence of actions on one connection, from well-behaved vhost-user
//! messages and virtio-blk requests to raw messages, broken rings and truncated memory. Every
//! number is relative to the case's own memory (guest addresses from `GUEST_BASE`, frontend
//! addresses from the mapping's start), so a mutated number lands near something real or far
//! outside, and the same case replays the same way.

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapblk::frontend::wire::{payload, req, RawFrontend, VERSION_1};
use snapblk::frontend::{GuestMem, RingLayout, GUEST_BASE};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory of a case.
pub const MEM: u64 = 4 << 20;
/// Where queue `q`'s rings are, and the data area.
const RING_STRIDE: u64 = 0x1_0000;
const DATA: u64 = 0x10_0000;
/// Most queues a case drives.
pub const QUEUES: usize = 2;
/// Fresh memfds a case creates are at most this large (sparse).
const MAX_FILE: u64 = 256 << 20;
/// How long the case waits on one exchange.
const T: Duration = Duration::from_millis(1500);

/// A file a memory region or inflight region names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FileRef {
    /// The case's guest memory file.
    Guest,
    /// A fresh memfd of this size.
    Memfd(u64),
    /// The inflight region the daemon returned for the last GET_INFLIGHT_FD (else the guest
    /// memory file).
    Inflight,
}

/// One memory region: offsets from `GUEST_BASE` and from the mapping's start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Region {
    pub gpa: u64,
    pub size: u64,
    pub uaddr: u64,
    pub offset: u64,
    pub file: FileRef,
}

/// One descriptor written verbatim (address relative to `GUEST_BASE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Action {
    /// The well-behaved handshake and ring setup, with features masked.
    Setup {
        queues: u8,
        size: u16,
        features: u64,
        protocol: u64,
    },
    /// Ring setup only (NUM, BASE, ADDR, CALL, KICK, ENABLE) for the first `queues`.
    Rings {
        queues: u8,
        size: u16,
    },
    Message {
        request: u32,
        payload: Vec<u8>,
        fds: u8,
    },
    Features(u64),
    Protocol(u64),
    MemTable(Vec<Region>),
    AddMem(Region),
    RemMem(Region),
    VringNum {
        q: u32,
        num: u32,
    },
    VringBase {
        q: u32,
        base: u32,
    },
    VringAddr {
        q: u32,
        desc: u64,
        used: u64,
        avail: u64,
    },
    VringFd {
        request: u32,
        q: u64,
    },
    VringEnable {
        q: u32,
        on: u32,
    },
    GetVringBase(u32),
    GetConfig {
        offset: u32,
        size: u32,
    },
    SetConfig {
        offset: u32,
        data: Vec<u8>,
    },
    GetInflight {
        queues: u16,
        size: u16,
    },
    SetInflight {
        size: u64,
        offset: u64,
        queues: u16,
        qsize: u16,
        file: FileRef,
    },
    /// A virtio-blk request: header, data buffers (offsets from the data area), status.
    Request {
        q: u16,
        ty: u32,
        sector: u64,
        data: Vec<(u64, u32, bool)>,
        indirect: bool,
    },
    /// Descriptors written at `first..`, then `head` made available.
    Chain {
        q: u16,
        first: u16,
        descs: Vec<Desc>,
        head: u16,
    },
    AvailIdx {
        q: u16,
        idx: u16,
    },
    UsedEvent {
        q: u16,
        idx: u16,
    },
    Kick(u16),
    /// Waits up to this many milliseconds for a completion signal.
    Wait(u16),
    /// The guest memory file shrinks to this size (the case touches its memory no more).
    Truncate(u64),
    /// Bytes written into the daemon's inflight region (what a hostile frontend keeps there
    /// for the next daemon to recover from).
    InflightWrite {
        offset: u64,
        data: Vec<u8>,
    },
}

/// The state of a case being run.
pub struct Run {
    fe: RawFrontend,
    mem: GuestMem,
    /// Frontend address of the start of guest memory.
    base: u64,
    kick: Vec<EventFd>,
    call: Vec<EventFd>,
    size: [u16; QUEUES],
    avail: [u16; QUEUES],
    next_desc: [u16; QUEUES],
    truncated: bool,
    /// The connection ended (an exchange failed).
    pub closed: bool,
    offered: u64,
    offered_protocol: u64,
    /// The daemon's inflight region and its size, from GET_INFLIGHT_FD.
    inflight: Option<(File, u64)>,
}

fn memfd(size: u64) -> File {
    // SAFETY: a fresh memfd; the name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: the descriptor was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    let _ = f.set_len(size.min(MAX_FILE));
    f
}

fn layout(q: usize, size: u16) -> RingLayout {
    RingLayout::at(GuestAddress(GUEST_BASE + q as u64 * RING_STRIDE), size)
}

impl Run {
    pub fn connect(sock: &Path) -> std::io::Result<Run> {
        let fe = RawFrontend::connect(sock)?;
        let mem = GuestMem::new(MEM).expect("guest memory");
        let base = mem.host_addr(mem.start()).expect("mapped");
        let efd = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
        Ok(Run {
            fe,
            base,
            mem,
            kick: (0..QUEUES).map(|_| efd()).collect(),
            call: (0..QUEUES).map(|_| efd()).collect(),
            size: [256; QUEUES],
            avail: [0; QUEUES],
            next_desc: [0; QUEUES],
            truncated: false,
            closed: false,
            offered: 0,
            offered_protocol: 0,
            inflight: None,
        })
    }

    fn guest_file(&self) -> &File {
        let region = self.mem.memory().iter().next().expect("one region");
        region.file_offset().expect("memfd backed").file()
    }

    /// Sends a message, then drops whatever replies came meanwhile.
    fn send(&mut self, request: u32, body: &[u8], fds: &[RawFd]) {
        if self.closed {
            return;
        }
        if self.fe.send(request, VERSION_1, body, fds, T).is_err() {
            self.closed = true;
            return;
        }
        while let Ok(Some(_)) = self.fe.recv(Duration::ZERO) {}
    }

    /// Sends a message that has a reply, returns its payload as u64 when it has one.
    fn get(&mut self, request: u32, body: &[u8]) -> Option<u64> {
        if self.closed {
            return None;
        }
        match self.fe.call(request, VERSION_1, body, &[], T) {
            Ok(r) => r.u64(),
            Err(_) => {
                self.closed = true;
                None
            }
        }
    }

    fn file_of(&self, f: &FileRef) -> (Option<File>, RawFd) {
        match f {
            FileRef::Guest => (None, self.guest_file().as_raw_fd()),
            FileRef::Inflight => match &self.inflight {
                Some((f, _)) => (None, f.as_raw_fd()),
                None => (None, self.guest_file().as_raw_fd()),
            },
            FileRef::Memfd(size) => {
                let file = memfd(*size);
                let fd = file.as_raw_fd();
                (Some(file), fd)
            }
        }
    }

    fn region(&self, r: &Region) -> (Vec<u8>, Option<File>, RawFd) {
        let body = payload::region(
            GUEST_BASE.wrapping_add(r.gpa),
            r.size,
            self.base.wrapping_add(r.uaddr),
            r.offset,
        );
        let (file, fd) = self.file_of(&r.file);
        (body, file, fd)
    }

    fn set_ring(&mut self, q: usize) {
        let l = layout(q, self.size[q]);
        let base = self.base;
        let host = |a: GuestAddress| base + (a.0 - GUEST_BASE);
        let idx = q as u32;
        self.send(
            req::SET_VRING_NUM,
            &payload::vring_state(idx, self.size[q].into()),
            &[],
        );
        self.send(req::SET_VRING_BASE, &payload::vring_state(idx, 0), &[]);
        let addr = payload::vring_addr(idx, host(l.desc), host(l.used), host(l.avail));
        self.send(req::SET_VRING_ADDR, &addr, &[]);
        let call = self.call[q].as_raw_fd();
        let kick = self.kick[q].as_raw_fd();
        self.send(req::SET_VRING_CALL, &payload::u64(q as u64), &[call]);
        self.send(req::SET_VRING_KICK, &payload::u64(q as u64), &[kick]);
        self.send(req::SET_VRING_ENABLE, &payload::vring_state(idx, 1), &[]);
    }

    /// Writes guest memory unless it was truncated (the frontend must not fault itself).
    fn write(&self, at: u64, bytes: &[u8]) {
        if !self.truncated {
            let _ = self
                .mem
                .write(GuestAddress(GUEST_BASE.wrapping_add(at)), bytes);
        }
    }

    fn store16(&self, addr: GuestAddress, v: u16) {
        if !self.truncated {
            let _ = self.mem.store(addr, v.to_le(), Ordering::Release);
        }
    }

    fn publish(&mut self, q: usize, head: u16) {
        let l = layout(q, self.size[q]);
        if l.size == 0 {
            return;
        }
        self.store16(l.avail_slot(self.avail[q]), head);
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.store16(l.avail_idx(), self.avail[q]);
    }

    fn write_desc(&self, q: usize, i: u16, d: &Desc) {
        let l = layout(q, self.size[q]);
        let mut b = GUEST_BASE.wrapping_add(d.addr).to_le_bytes().to_vec();
        b.extend_from_slice(&d.len.to_le_bytes());
        b.extend_from_slice(&d.flags.to_le_bytes());
        b.extend_from_slice(&d.next.to_le_bytes());
        self.write(l.desc_addr(i).0 - GUEST_BASE, &b);
    }

    pub fn act(&mut self, a: &Action) {
        let q_of = |q: u16| usize::from(q) % QUEUES;
        match a {
            Action::Setup {
                queues,
                size,
                features,
                protocol,
            } => {
                self.send(req::SET_OWNER, &[], &[]);
                self.offered = self.get(req::GET_FEATURES, &[]).unwrap_or(0);
                self.send(
                    req::SET_FEATURES,
                    &payload::u64(self.offered & features),
                    &[],
                );
                self.offered_protocol = self.get(req::GET_PROTOCOL_FEATURES, &[]).unwrap_or(0);
                let p = payload::u64(self.offered_protocol & protocol);
                self.send(req::SET_PROTOCOL_FEATURES, &p, &[]);
                let table = payload::mem_table(&[payload::region(GUEST_BASE, MEM, self.base, 0)]);
                let fd = self.guest_file().as_raw_fd();
                self.send(req::SET_MEM_TABLE, &table, &[fd]);
                for q in 0..usize::from(*queues).min(QUEUES) {
                    self.size[q] = (*size).clamp(1, 256);
                    self.set_ring(q);
                }
            }
            Action::Rings { queues, size } => {
                for q in 0..usize::from(*queues).min(QUEUES) {
                    self.size[q] = (*size).clamp(1, 256);
                    self.set_ring(q);
                }
            }
            Action::Message {
                request,
                payload,
                fds,
            } => {
                let files: Vec<EventFd> = (0..(*fds).min(4))
                    .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
                    .collect();
                let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
                self.send(*request % req::END, payload, &raw);
            }
            Action::Features(f) => self.send(req::SET_FEATURES, &payload::u64(*f), &[]),
            Action::Protocol(p) => self.send(req::SET_PROTOCOL_FEATURES, &payload::u64(*p), &[]),
            Action::MemTable(regions) => {
                let mut bodies = Vec::new();
                let mut files = Vec::new();
                let mut fds = Vec::new();
                for r in regions.iter().take(8) {
                    let (b, f, fd) = self.region(r);
                    bodies.push(b);
                    files.push(f);
                    fds.push(fd);
                }
                self.send(req::SET_MEM_TABLE, &payload::mem_table(&bodies), &fds);
            }
            Action::AddMem(r) => {
                let (b, _f, fd) = self.region(r);
                self.send(req::ADD_MEM_REG, &payload::single_region(&b), &[fd]);
            }
            Action::RemMem(r) => {
                let (b, _f, _) = self.region(r);
                self.send(req::REM_MEM_REG, &payload::single_region(&b), &[]);
            }
            Action::VringNum { q, num } => {
                if let Some(s) = self.size.get_mut(*q as usize) {
                    *s = u16::try_from(*num).unwrap_or(0);
                }
                self.send(req::SET_VRING_NUM, &payload::vring_state(*q, *num), &[]);
            }
            Action::VringBase { q, base } => {
                if let Some(a) = self.avail.get_mut(*q as usize) {
                    *a = *base as u16;
                }
                self.send(req::SET_VRING_BASE, &payload::vring_state(*q, *base), &[]);
            }
            Action::VringAddr {
                q,
                desc,
                used,
                avail,
            } => {
                let h = |o: u64| self.base.wrapping_add(o);
                let body = payload::vring_addr(*q, h(*desc), h(*used), h(*avail));
                self.send(req::SET_VRING_ADDR, &body, &[]);
            }
            Action::VringFd { request, q } => {
                let request = [req::SET_VRING_KICK, req::SET_VRING_CALL, req::SET_VRING_ERR]
                    [*request as usize % 3];
                let fd = self.kick[(*q as usize) % QUEUES].as_raw_fd();
                self.send(request, &payload::u64(*q), &[fd]);
            }
            Action::VringEnable { q, on } => {
                self.send(req::SET_VRING_ENABLE, &payload::vring_state(*q, *on), &[])
            }
            Action::GetVringBase(q) => {
                let _ = self.get(req::GET_VRING_BASE, &payload::vring_state(*q, 0));
            }
            Action::GetConfig { offset, size } => {
                let data = vec![0u8; (*size as usize).min(256)];
                let _ = self.get(req::GET_CONFIG, &payload::config(*offset, *size, &data));
            }
            Action::SetConfig { offset, data } => {
                let body = payload::config(*offset, data.len() as u32, data);
                self.send(req::SET_CONFIG, &body, &[]);
            }
            Action::GetInflight { queues, size } => {
                let body = payload::inflight(0, 0, *queues, *size);
                if !self.closed {
                    match self.fe.call(req::GET_INFLIGHT_FD, VERSION_1, &body, &[], T) {
                        Ok(mut r) => {
                            let size = r.u64().unwrap_or(0);
                            self.inflight = r.files.pop().map(|f| (f, size));
                        }
                        Err(_) => self.closed = true,
                    }
                }
            }
            Action::SetInflight {
                size,
                offset,
                queues,
                qsize,
                file,
            } => {
                let (_f, fd) = self.file_of(file);
                // Size 0: the size the daemon gave.
                let size = match (&self.inflight, *size) {
                    (Some((_, given)), 0) => *given,
                    (_, s) => s,
                };
                let body = payload::inflight(size, *offset, *queues, *qsize);
                self.send(req::SET_INFLIGHT_FD, &body, &[fd]);
            }
            Action::Request {
                q,
                ty,
                sector,
                data,
                indirect,
            } => self.request(q_of(*q), *ty, *sector, data, *indirect),
            Action::Chain {
                q,
                first,
                descs,
                head,
            } => {
                let q = q_of(*q);
                let size = self.size[q].max(1);
                for (k, d) in descs.iter().take(64).enumerate() {
                    self.write_desc(q, first.wrapping_add(k as u16) % size, d);
                }
                self.publish(q, *head);
            }
            Action::AvailIdx { q, idx } => {
                let q = q_of(*q);
                self.avail[q] = *idx;
                self.store16(layout(q, self.size[q]).avail_idx(), *idx);
            }
            Action::UsedEvent { q, idx } => {
                let q = q_of(*q);
                self.store16(layout(q, self.size[q]).used_event(), *idx);
            }
            Action::Kick(q) => {
                let _ = self.kick[q_of(*q)].write(1);
            }
            Action::Wait(ms) => {
                let mut fds: Vec<libc::pollfd> = self
                    .call
                    .iter()
                    .map(|c| libc::pollfd {
                        fd: c.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    })
                    .collect();
                let ms = i32::from(*ms % 200);
                // SAFETY: valid pollfds for the call eventfds.
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
                for c in &self.call {
                    let _ = c.read();
                }
            }
            Action::InflightWrite { offset, data } => {
                use std::os::unix::fs::FileExt;
                if let Some((f, _)) = &self.inflight {
                    let _ = f.write_all_at(&data[..data.len().min(4096)], *offset);
                }
            }
            Action::Truncate(size) => {
                self.truncated = true;
                let _ = self.guest_file().set_len(*size % (MEM + 1));
            }
        }
    }

    /// Header at the data area, data buffers after it, status last; direct or indirect.
    fn request(&mut self, q: usize, ty: u32, sector: u64, data: &[(u64, u32, bool)], ind: bool) {
        let slot = u64::from(self.next_desc[q] % 64) * 64;
        let (hdr, status) = (DATA + slot, DATA + slot + 32);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.write(hdr, &h);
        self.write(status, &[0xaa]);
        let mut descs = vec![(hdr, 16u32, false)];
        descs.extend(
            data.iter()
                .take(60)
                .map(|&(off, len, w)| (DATA + 0x1_0000 + off, len, w)),
        );
        descs.push((status, 1, true));
        let size = self.size[q].max(1);
        let n = descs.len() as u16;
        let chain = |i: usize, &(addr, len, w): &(u64, u32, bool), next: u16| Desc {
            addr,
            len,
            flags: (u16::from(w) * 2) | u16::from(i + 1 < usize::from(n)),
            next,
        };
        let head = self.next_desc[q] % size;
        if ind {
            let table = DATA + 0x8000 + u64::from(head) * 64 * 16;
            for (i, d) in descs.iter().enumerate() {
                let d = chain(i, d, i as u16 + 1);
                let mut b = GUEST_BASE.wrapping_add(d.addr).to_le_bytes().to_vec();
                b.extend_from_slice(&d.len.to_le_bytes());
                b.extend_from_slice(&d.flags.to_le_bytes());
                b.extend_from_slice(&d.next.to_le_bytes());
                self.write(table + i as u64 * 16, &b);
            }
            let d = Desc {
                addr: table,
                len: u32::from(n) * 16,
                flags: 4,
                next: 0,
            };
            self.write_desc(q, head, &d);
            self.next_desc[q] = self.next_desc[q].wrapping_add(1);
        } else {
            for (i, d) in descs.iter().enumerate() {
                let at = self.next_desc[q].wrapping_add(i as u16) % size;
                let d = chain(i, d, (at + 1) % size);
                self.write_desc(q, at, &d);
            }
            self.next_desc[q] = self.next_desc[q].wrapping_add(n);
        }
        self.publish(q, head);
        let _ = self.kick[q].write(1);
    }
}
