//! A hostile frontend against the real daemon (issue 14): memory regions larger than their
//! files, guest memory truncated under the daemon, a broken available ring, requests beyond the
//! advertised limits. Each time the daemon must stay up, keep serving its other queues and new
//! frontends, log a bounded number of lines, and exit cleanly on SIGTERM.

mod common;

use std::fs::File;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{connect, pattern, read, write, Daemon, MIB};
use snapblk::frontend::wire::{payload, req, RawFrontend, NEED_REPLY, VERSION_1};
use snapblk::frontend::{BlkFrontend, BlkStatus, FrontendOptions, Request, Segment};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

const T: Duration = Duration::from_secs(10);
/// VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1.
const PROTOCOL_FEATURES: u64 = 1 << 30;
const VERSION: u64 = 1 << 32;
/// CONFIG, MQ, REPLY_ACK, CONFIGURE_MEM_SLOTS.
const PROTOCOL: u64 = (1 << 9) | (1 << 0) | (1 << 3) | (1 << 15);
const UADDR: u64 = 0x7f00_0000_0000;
const GPA: u64 = 0x1_0000_0000;

/// Whether process `pid` is running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.trim().chars().next());
    matches!(state, Some(c) if c != 'Z' && c != 'X')
}

fn memfd(size: u64) -> File {
    // SAFETY: a fresh memfd; the name is a valid C string.
    let fd = unsafe { libc::memfd_create(c"hostile".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: the descriptor was just created and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

/// The handshake up to the memory table, raw: owner, features, protocol features.
fn raw_handshake(sock: &Path) -> RawFrontend {
    let mut fe = RawFrontend::connect(sock).unwrap();
    fe.send(req::SET_OWNER, VERSION_1, &[], &[], T).unwrap();
    let offered = fe
        .call(req::GET_FEATURES, VERSION_1, &[], &[], T)
        .unwrap()
        .u64()
        .unwrap();
    let features = offered & (VERSION | PROTOCOL_FEATURES);
    let f = payload::u64(features);
    fe.send(req::SET_FEATURES, VERSION_1, &f, &[], T).unwrap();
    let offered = fe
        .call(req::GET_PROTOCOL_FEATURES, VERSION_1, &[], &[], T)
        .unwrap()
        .u64()
        .unwrap();
    let p = payload::u64(offered & PROTOCOL);
    fe.send(req::SET_PROTOCOL_FEATURES, VERSION_1, &p, &[], T)
        .unwrap();
    fe
}

/// Starts ring 0 with its rings at frontend address `at` (inside a region past its file's
/// end, if the daemon accepted one) and kicks it. Errors are ignored: a daemon that refused
/// the region has closed the connection.
fn start_ring_at(fe: &mut RawFrontend, at: u64, kick: &EventFd) {
    let flags = VERSION_1;
    let _ = fe.send(
        req::SET_VRING_NUM,
        flags,
        &payload::vring_state(0, 256),
        &[],
        T,
    );
    let addr = payload::vring_addr(0, at, at + 0x10000, at + 0x20000);
    let _ = fe.send(req::SET_VRING_ADDR, flags, &addr, &[], T);
    let _ = fe.send(
        req::SET_VRING_BASE,
        flags,
        &payload::vring_state(0, 0),
        &[],
        T,
    );
    let idx = payload::u64(0);
    let _ = fe.send(req::SET_VRING_CALL, flags, &idx, &[kick.as_raw_fd()], T);
    let _ = fe.send(req::SET_VRING_KICK, flags, &idx, &[kick.as_raw_fd()], T);
    let on = payload::vring_state(0, 1);
    let _ = fe.send(req::SET_VRING_ENABLE, flags, &on, &[], T);
    let _ = kick.write(1);
}

fn image_daemon(dir: &Path, extra: &[&str]) -> (Daemon, std::path::PathBuf) {
    let img = dir.join("d.img");
    let sock = dir.join("d.sock");
    std::fs::write(&img, pattern(1, 4 * MIB as usize)).unwrap();
    (Daemon::image(&img, &sock, extra), sock)
}

/// The daemon still serves a well-behaved frontend: a write and a read back.
fn serves(sock: &Path, seed: u64) {
    let data = pattern(seed, 8192);
    write(sock, 64, &data);
    assert!(read(sock, 64, 8192) == data);
}

#[test]
fn a_memory_region_larger_than_its_file_is_refused_and_the_daemon_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = image_daemon(dir.path(), &[]);
    let small = memfd(4096);
    let kick = EventFd::new(0).unwrap();

    // SET_MEM_TABLE: 64 MiB declared, 4 KiB behind it; the rings lie in the missing part.
    let mut fe = raw_handshake(&sock);
    let region = payload::region(GPA, 64 * MIB, UADDR, 0);
    let table = payload::mem_table(&[region]);
    let reply = fe.call(
        req::SET_MEM_TABLE,
        VERSION_1 | NEED_REPLY,
        &table,
        &[small.as_raw_fd()],
        T,
    );
    start_ring_at(&mut fe, UADDR + 32 * MIB, &kick);
    assert!(fe.closed_within(T), "the connection is dropped");
    assert!(alive(d.pid()), "the daemon died:\n{}", d.log_text());
    assert!(
        reply.map_or(true, |r| r.u64() != Some(0)),
        "the region was accepted"
    );
    serves(&sock, 2);

    // ADD_MEM_REG of such a region after a good table.
    let good = memfd(MIB);
    let mut fe = raw_handshake(&sock);
    let table = payload::mem_table(&[payload::region(GPA, MIB, UADDR, 0)]);
    let r = fe
        .call(
            req::SET_MEM_TABLE,
            VERSION_1 | NEED_REPLY,
            &table,
            &[good.as_raw_fd()],
            T,
        )
        .unwrap();
    assert_eq!(r.u64(), Some(0), "a region that fits its file is accepted");
    let added = payload::single_region(&payload::region(
        GPA + 16 * MIB,
        64 * MIB,
        UADDR + 16 * MIB,
        0,
    ));
    let reply = fe.call(
        req::ADD_MEM_REG,
        VERSION_1 | NEED_REPLY,
        &added,
        &[small.as_raw_fd()],
        T,
    );
    start_ring_at(&mut fe, UADDR + 48 * MIB, &kick);
    assert!(fe.closed_within(T));
    assert!(alive(d.pid()), "the daemon died:\n{}", d.log_text());
    assert!(reply.map_or(true, |r| r.u64() != Some(0)));
    serves(&sock, 3);
    d.stop();
}

#[test]
fn guest_memory_truncated_under_the_daemon_breaks_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = image_daemon(dir.path(), &[]);
    let mut fe = connect(&sock);
    let mut q = fe.blk_queue(0, 1, 4096).unwrap();
    // A request is made available, then the guest memory file loses everything: the daemon
    // faults on its first look at the ring. The frontend must not touch its memory again.
    q.submit(
        0,
        Request::Read {
            sector: 0,
            len: 4096,
        },
    )
    .unwrap();
    let file = fe
        .memory()
        .memory()
        .iter()
        .next()
        .unwrap()
        .file_offset()
        .unwrap()
        .file();
    file.set_len(0).unwrap();
    q.queue().force_kick().unwrap();
    // The daemon drops the connection: the next exchange fails.
    let deadline = Instant::now() + T;
    while fe.refresh_config().is_ok() {
        assert!(Instant::now() < deadline, "the connection survived");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(alive(d.pid()), "the daemon died:\n{}", d.log_text());
    std::mem::forget(q); // its memory is gone: no drop code may read it
    std::mem::forget(fe);
    serves(&sock, 4);
    let log = d.log_text();
    assert!(log.contains("guest memory shrank"), "{log}");
    d.stop();
}

#[test]
fn an_avail_index_far_ahead_stops_only_its_queue() {
    let dir = tempfile::tempdir().unwrap();
    let (mut d, sock) = image_daemon(dir.path(), &["--num-queues", "2"]);
    let mut fe = connect(&sock);
    assert_eq!(fe.num_queues(), 2);
    let mut q0 = fe.blk_queue(0, 1, 4096).unwrap();
    let mut q1 = fe.blk_queue(1, 1, 4096).unwrap();
    // Queue 0's driver claims 300 chains in a ring of 256.
    let layout = *q0.queue().layout();
    fe.memory()
        .store(layout.avail_idx(), 300u16.to_le(), Ordering::Release)
        .unwrap();
    let lines_before = d.log_text().lines().count();
    q0.queue().force_kick().unwrap();
    // Queue 1 serves on, and so does the daemon.
    for i in 0..50u64 {
        let data = pattern(i, 4096);
        assert_eq!(q1.write(i * 8, &data).unwrap().status, BlkStatus::Ok);
        let (r, got) = q1.read(i * 8, 4096).unwrap();
        assert_eq!(r.status, BlkStatus::Ok);
        assert!(got == data);
    }
    // A few lines (the fault, the requests), not one per spin.
    let lines = d.log_text().lines().count() - lines_before;
    assert!(lines < 300, "{lines} log lines since the ring broke");
    let about_queue_0 = d
        .log_text()
        .lines()
        .filter(|l| l.contains("queue 0"))
        .count();
    assert!(
        about_queue_0 <= 3,
        "{about_queue_0} log lines about queue 0"
    );
    assert!(d.log_text().contains("ring is broken"));
    drop((q0, q1));
    drop(fe);
    serves(&sock, 5);
    // Broken again, and SIGTERM while that frontend is still connected.
    let mut fe = connect(&sock);
    let mut q0 = fe.blk_queue(0, 1, 4096).unwrap();
    let layout = *q0.queue().layout();
    fe.memory()
        .store(layout.avail_idx(), 300u16.to_le(), Ordering::Release)
        .unwrap();
    q0.queue().force_kick().unwrap();
    let deadline = Instant::now() + T;
    while d.log_text().matches("ring is broken").count() < 2 {
        assert!(Instant::now() < deadline, "the second fault was not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = d.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "exit after SIGTERM: {st}\n{}", d.log_text());
}

/// Peak resident memory of `pid` in bytes (VmHWM).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn requests_beyond_seg_max_or_size_max_get_ioerr() {
    let dir = tempfile::tempdir().unwrap();
    let (d, sock) = image_daemon(dir.path(), &["--queue-size", "16"]);
    let opts = FrontendOptions {
        queue_size: 16,
        ..FrontendOptions::default()
    };
    let mut fe = BlkFrontend::connect(&sock, opts).unwrap();
    let (seg_max, size_max) = (fe.config().seg_max, fe.config().size_max);
    assert_eq!((seg_max, size_max), (14, MIB as u32));
    let mut q = fe.blk_queue(0, 1, 2 * MIB as u32).unwrap();
    let (hdr, data) = (q.meta_addr(0), q.data_addr(0));
    let status = vm_memory::GuestAddress(hdr.0 + 32);
    let mem = q.memory();
    mem.write(hdr, &snapblk::frontend::header(VIRTIO_BLK_T_IN, 0))
        .unwrap();
    let run = |q: &mut snapblk::frontend::BlkQueue, segs: &[Segment]| {
        q.memory().write(status, &[0xaa]).unwrap();
        let mut chain = vec![Segment::to_device(hdr, 16)];
        chain.extend_from_slice(segs);
        chain.push(Segment::from_device(status, 1));
        q.raw_chain(&chain, true).unwrap();
        let mut st = [0u8];
        q.memory().read(status, &mut st).unwrap();
        st[0]
    };
    let aliased = |n: usize, len: u32| vec![Segment::from_device(data, len); n];
    let (ok, ioerr) = (VIRTIO_BLK_S_OK as u8, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(run(&mut q, &aliased(seg_max as usize, 512)), ok);
    assert_eq!(run(&mut q, &aliased(seg_max as usize + 1, 512)), ioerr);
    assert_eq!(run(&mut q, &aliased(1, size_max)), ok);
    assert_eq!(run(&mut q, &aliased(1, size_max + 512)), ioerr);
    // The project's frontend splits a larger request at size_max, as a driver must.
    let (r, got) = q.read(0, 2 * MIB as u32).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(got == pattern(1, 4 * MIB as usize)[..2 * MIB as usize]);
    drop(q);
    drop(fe);
    d.stop();
}

#[test]
fn an_aliased_request_costs_a_graph_export_a_bounded_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let origin = p.join("base.img");
    std::fs::File::create(&origin)
        .unwrap()
        .set_len(256 * MIB)
        .unwrap();
    let cfg = p.join("graph.toml");
    let d_ = p.display();
    std::fs::write(
        &cfg,
        format!(
            r#"
[[origin]]
name = "base"
image = "{d_}/base.img"

[[snapshot]]
name = "s1"
origin = "base"
cow = "{d_}/s1.cow"
store = "P"
chunk_size = "64K"
create_size = "160M"

[[export]]
node = "base"
socket = "{d_}/base.sock"
"#
        ),
    )
    .unwrap();
    let sock = p.join("base.sock");
    let d = Daemon::start(
        &["--config", cfg.to_str().unwrap()],
        &[&sock],
        &p.join("d.log"),
    );
    let opts = FrontendOptions {
        mem_size: 16 * MIB,
        ..FrontendOptions::default()
    };
    let mut fe = BlkFrontend::connect(&sock, opts).unwrap();
    let mut q = fe.blk_queue(0, 1, MIB as u32).unwrap();
    let one = pattern(7, MIB as usize);
    q.write_data(0, &one).unwrap();
    let before = peak_rss(d.pid());
    // 62 MiB described by 62 descriptors naming the same 1 MiB: a write to the origin that
    // needs copy-outs into the snapshot, which runs on a helper thread.
    let (hdr, data) = (q.meta_addr(0), q.data_addr(0));
    let status = vm_memory::GuestAddress(hdr.0 + 32);
    q.memory()
        .write(hdr, &snapblk::frontend::header(1, 0))
        .unwrap();
    q.memory().write(status, &[0xaa]).unwrap();
    let mut chain = vec![Segment::to_device(hdr, 16)];
    chain.extend(std::iter::repeat_n(
        Segment::to_device(data, MIB as u32),
        62,
    ));
    chain.push(Segment::from_device(status, 1));
    q.raw_chain(&chain, true).unwrap();
    let mut st = [0u8];
    q.memory().read(status, &mut st).unwrap();
    assert_eq!(st[0], VIRTIO_BLK_S_OK as u8);
    let grew = peak_rss(d.pid()).saturating_sub(before);
    assert!(
        grew < 24 * MIB,
        "the daemon's peak memory grew by {} MiB",
        grew / MIB
    );
    // Every MiB of the 62 holds the pattern.
    for k in [0u64, 31, 61] {
        let (r, got) = q.read(k * 2048, MIB as u32).unwrap();
        assert_eq!(r.status, BlkStatus::Ok);
        assert!(got == one, "MiB {k}");
    }
    drop(q);
    drop(fe);
    d.stop();
}
