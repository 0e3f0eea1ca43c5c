//! Raw vhost-user messages, for tests and the fuzzer: any request code, flags, payload and
//! file descriptors, including what no well-behaved frontend sends (regions larger than their
//! files, ring addresses outside guest memory, truncated payloads). Replies are read back
//! with a deadline, so a backend that stops answering is seen, not waited on forever.
//!
//! Wire format (vhost-user specification): a 12-byte header `request: u32, flags: u32,
//! size: u32` (little-endian), then `size` bytes of payload; file descriptors travel as
//! SCM_RIGHTS ancillary data with the header.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Request codes (vhost-user "front-end message types").
pub mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const RESET_DEVICE: u32 = 34;
    pub const VRING_KICK: u32 = 35;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    /// One past the highest code this module names.
    pub const END: u32 = 45;
}

/// Header flags: protocol version 1, and "reply wanted" (with REPLY_ACK).
pub const VERSION_1: u32 = 0x1;
pub const NEED_REPLY: u32 = 0x8;
/// Most descriptors one message may carry (the specification's limit).
pub const MAX_FDS: usize = 32;
const HEADER: usize = 12;
/// Payloads this module reads back at most (replies are small; a larger size is a broken
/// backend, read no further).
const MAX_REPLY: usize = 4096;

/// A reply: its request code, flags, payload and the files sent along (GET_INFLIGHT_FD).
#[derive(Debug)]
pub struct RawReply {
    pub request: u32,
    pub flags: u32,
    pub payload: Vec<u8>,
    pub files: Vec<File>,
}

impl RawReply {
    /// The payload as a little-endian u64 (GET_FEATURES, REPLY_ACK, ...), if it is one.
    pub fn u64(&self) -> Option<u64> {
        let b: [u8; 8] = self.payload.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// One raw vhost-user connection.
pub struct RawFrontend {
    sock: UnixStream,
}

impl RawFrontend {
    /// Connects to a backend's socket (no handshake).
    pub fn connect(path: impl AsRef<Path>) -> io::Result<RawFrontend> {
        let sock = UnixStream::connect(path)?;
        Ok(RawFrontend { sock })
    }

    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Sends one message; gives up (an error) when the backend does not take it in `timeout`.
    pub fn send(
        &mut self,
        request: u32,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
        timeout: Duration,
    ) -> io::Result<()> {
        let mut msg = Vec::with_capacity(HEADER + payload.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        msg.extend_from_slice(payload);
        let fds = &fds[..fds.len().min(MAX_FDS)];
        let deadline = Instant::now() + timeout;
        let mut sent = 0;
        while sent < msg.len() {
            wait_for(&self.sock, libc::POLLOUT, deadline)?;
            let n = if sent == 0 {
                send_with_fds(self.sock.as_raw_fd(), &msg, fds)?
            } else {
                send_with_fds(self.sock.as_raw_fd(), &msg[sent..], &[])?
            };
            sent += n;
        }
        Ok(())
    }

    /// Reads the next reply, waiting at most `timeout`. `Ok(None)`: nothing came; an error:
    /// the connection is closed or the reply is malformed.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<Option<RawReply>> {
        let deadline = Instant::now() + timeout;
        match wait_for(&self.sock, libc::POLLIN, deadline) {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
            r => r?,
        }
        let mut hdr = [0u8; HEADER];
        let files = recv_with_fds(self.sock.as_raw_fd(), &mut hdr)?;
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8) as usize);
        if size > MAX_REPLY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("reply of {size} bytes"),
            ));
        }
        let mut payload = vec![0u8; size];
        let mut got = 0;
        while got < size {
            wait_for(&self.sock, libc::POLLIN, deadline)?;
            let n = (&self.sock).read(&mut payload[got..])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            got += n;
        }
        Ok(Some(RawReply {
            request,
            flags,
            payload,
            files,
        }))
    }

    /// Sends a request and waits for its reply.
    pub fn call(
        &mut self,
        request: u32,
        flags: u32,
        payload: &[u8],
        fds: &[RawFd],
        timeout: Duration,
    ) -> io::Result<RawReply> {
        self.send(request, flags, payload, fds, timeout)?;
        self.recv(timeout)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no reply"))
    }

    /// Whether the backend has closed the connection (reads end of file), waiting at most
    /// `timeout`; replies that arrive meanwhile are discarded.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(Some(_)) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }
}

/// poll() for `events` until `deadline`; TimedOut when it passes.
fn wait_for(sock: &UnixStream, events: i16, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc > 0 {
            return Ok(());
        }
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
    }
}

/// sendmsg() of `buf` with `fds` as SCM_RIGHTS (non-blocking: poll first).
fn send_with_fds(sock: RawFd, buf: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one header of `space` bytes, as CMSG_FIRSTHDR and
        // CMSG_DATA expect; the descriptors are copied into it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(c),
                fd_bytes as usize,
            );
        }
    }
    // SAFETY: a valid msghdr on a socket this process holds.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// recvmsg() of exactly `buf.len()` bytes (the header), and the descriptors that come along.
fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<Vec<File>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let fd_bytes = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: a valid msghdr on a socket this process holds.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_WAITALL | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut files = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into `control`; each descriptor
    // received is new to this process and owned by the `File` made of it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    files.push(File::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if (n as usize) < buf.len() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(files)
}

/// Little-endian encoders for message payloads.
pub mod payload {
    /// A u64 (features, protocol features, ...).
    pub fn u64(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// A vring state: index, num (SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ENABLE, ...).
    pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&num.to_le_bytes());
        b
    }

    /// A vring address message: index, flags, then frontend addresses of the descriptor
    /// table, used ring and available ring, and the log address.
    pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [desc, used, avail, 0u64] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// One memory region: guest address, size, frontend address, offset in its file.
    pub fn region(gpa: u64, size: u64, uaddr: u64, offset: u64) -> Vec<u8> {
        [gpa, size, uaddr, offset]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// A SET_MEM_TABLE payload of `regions` (each from [`region`]).
    pub fn mem_table(regions: &[Vec<u8>]) -> Vec<u8> {
        let mut b = (regions.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for r in regions {
            b.extend_from_slice(r);
        }
        b
    }

    /// An ADD_MEM_REG / REM_MEM_REG payload (padding, then one region).
    pub fn single_region(region: &[u8]) -> Vec<u8> {
        let mut b = 0u64.to_le_bytes().to_vec();
        b.extend_from_slice(region);
        b
    }

    /// A GET_CONFIG / SET_CONFIG payload: offset, size, flags, then `data`.
    pub fn config(offset: u32, size: u32, data: &[u8]) -> Vec<u8> {
        let mut b = offset.to_le_bytes().to_vec();
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    /// An inflight description: mmap size, mmap offset, queues, queue size (padded to the
    /// C struct's 24 bytes).
    pub fn inflight(size: u64, offset: u64, queues: u16, queue_size: u16) -> Vec<u8> {
        let mut b = size.to_le_bytes().to_vec();
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(&queues.to_le_bytes());
        b.extend_from_slice(&queue_size.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        b
    }
}
