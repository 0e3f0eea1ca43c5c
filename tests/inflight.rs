//! Inflight tracking across `kill -9`: origin writes (slow: copy-outs into a persistent
//! snapshot) are in flight when the daemon is killed; a new daemon, reached by the same frontend
//! reconnecting with the same inflight region (as QEMU's reconnect=1 does), resubmits exactly
//! those, each completes once, and the origin and the snapshot hold what they must.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{pattern, read, Daemon, MIB};
#[path = "support/region.rs"]
mod region;
use region::RegionView;
use snapblk::frontend::{BlkFrontend, BlkStatus, FrontendOptions, Request};

const SLOTS: u16 = 16;
const WRITE: u32 = 1 << 20;

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
[[origin]]
name = "base"
image = "{d}/base.img"

[[snapshot]]
name = "s1"
origin = "base"
cow = "{d}/s1.cow"
store = "P"
chunk_size = "4K"
create_size = "64M"

[[export]]
node = "base"
socket = "{d}/base.sock"

[[export]]
node = "s1"
socket = "{d}/s1.sock"
readonly = true
"#
    )
}

fn start(dir: &Path, log: &str) -> Daemon {
    let cfg = dir.join("graph.toml");
    let (base, s1) = (dir.join("base.sock"), dir.join("s1.sock"));
    Daemon::start(
        &["--config", cfg.to_str().unwrap()],
        &[&base, &s1],
        &dir.join(log),
    )
}

#[test]
fn requests_in_flight_at_kill_9_are_resubmitted_once_after_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let orig = pattern(1, 32 * MIB as usize);
    std::fs::write(p.join("base.img"), &orig).unwrap();
    std::fs::write(p.join("graph.toml"), config(p)).unwrap();
    let mut d = start(p, "first.log");

    let mut fe = BlkFrontend::connect(p.join("base.sock"), FrontendOptions::default()).unwrap();
    let (info, file) = fe.inflight().expect("snapblk offers inflight tracking");
    let region = RegionView::new(file, info.mmap_size, info.queue_size);
    let mut q = fe.blk_queue(0, SLOTS, WRITE).unwrap();
    let mut expect = orig.clone();
    for slot in 0..SLOTS {
        let data = pattern(100 + u64::from(slot), WRITE as usize);
        let off = usize::from(slot) * 2 * WRITE as usize;
        expect[off..off + WRITE as usize].copy_from_slice(&data);
        q.write_data(slot, &data).unwrap();
        let sector = off as u64 / 512;
        q.submit(slot, Request::Write { sector, len: WRITE })
            .unwrap();
    }
    q.kick().unwrap();
    // Wait (bounded) until the daemon has popped requests and not finished them all.
    let deadline = Instant::now() + Duration::from_secs(20);
    while region.in_flight() == 0 {
        assert!(Instant::now() < deadline, "no request ever in flight");
        std::thread::yield_now();
    }
    assert!(!d.signal_and_wait(libc::SIGKILL).success());
    let at_kill = region.in_flight();
    assert!(at_kill > 0);

    let d2 = start(p, "second.log");
    fe.reconnect().unwrap();
    let mut seen = vec![0u32; usize::from(SLOTS)];
    let mut done = Vec::new();
    while q.in_flight() > 0 {
        done.clear();
        if q.reap(&mut done).unwrap() == 0 {
            q.wait().unwrap();
        }
        for c in &done {
            assert_eq!(c.status, Some(BlkStatus::Ok));
            seen[usize::from(c.slot.unwrap())] += 1;
        }
    }
    assert_eq!(region.in_flight(), 0, "every resubmitted head was cleared");
    // Every head flagged at the kill is resubmitted, except one whose used entry was already
    // published when the kill landed (between the ring's used index and the region's).
    let log = d2.log_text();
    let resubmitted: usize = log
        .split("resubmitting ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resubmission logged; log: {log}"));
    assert!(
        resubmitted <= at_kill && at_kill - resubmitted <= 1 && resubmitted > 0,
        "{resubmitted} resubmitted, {at_kill} flagged at the kill"
    );
    // Each request completed once (before the kill or after the resubmission).
    assert!(seen.iter().all(|&n| n <= 1), "{seen:?}");
    drop(q);
    drop(fe);

    let whole = |sock: &str| -> Vec<u8> {
        let sock = p.join(sock);
        (0..4u64)
            .flat_map(|i| read(&sock, i * 16384, 8 * MIB as u32))
            .collect()
    };
    assert!(whole("base.sock") == expect, "the origin holds every write");
    assert!(
        whole("s1.sock") == orig,
        "the snapshot still holds the original data"
    );
    d2.stop();
}
