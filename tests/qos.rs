//! QoS through the project's own frontend against the real daemon: a limit holds requests back
//! (each of a fixed count completes, none fails, and the count cannot finish sooner than the
//! limit allows), a group's exports share one budget, limits change live and survive a restart,
//! and a request held back is completed, not dropped, when the daemon stops. The achieved rates
//! are printed as figures; the assertions are lower bounds on time that no machine can beat.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{connect, make_image, pattern, Daemon, MIB};
#[path = "support/region.rs"]
mod region;
use region::RegionView;
use snapblk::frontend::{
    BlkCompletion, BlkFrontend, BlkQueue, BlkStatus, FrontendOptions, Request,
};

/// Runs exactly `n` requests of `len` bytes at queue depth `depth` (reads, or writes); every
/// one must complete with OK. Returns how long they took.
fn drive(sock: &Path, n: u32, depth: u16, len: u32, write: bool) -> Duration {
    let mut fe = connect(sock);
    let mut q = fe.blk_queue(0, depth, len).unwrap();
    let sectors = u64::from(len / 512);
    let start = Instant::now();
    let (mut issued, mut done) = (0u32, 0u32);
    let mut out = Vec::new();
    let mut free: Vec<u16> = (0..depth).collect();
    while done < n {
        while issued < n {
            let Some(slot) = free.pop() else { break };
            let sector = (u64::from(issued) * sectors) % (16 * MIB / 512 - sectors);
            let req = if write {
                Request::Write { sector, len }
            } else {
                Request::Read { sector, len }
            };
            q.submit(slot, req).unwrap();
            issued += 1;
        }
        q.kick().unwrap();
        out.clear();
        if q.reap(&mut out).unwrap() == 0 {
            q.wait().unwrap();
        }
        for c in &out {
            assert_eq!(c.status, Some(BlkStatus::Ok), "request {c:?}");
            free.push(c.slot.unwrap());
            done += 1;
        }
    }
    start.elapsed()
}

fn cli(control: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The `qos` object of the export on `sock` in `stats --json`.
fn qos_stats(control: &Path, sock: &Path) -> serde_json::Value {
    let (ok, text) = cli(control, &["stats", "--json"]);
    assert!(ok, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["socket"] == sock.to_str().unwrap())
        .unwrap_or_else(|| panic!("no export {} in {text}", sock.display()))["qos"]
        .clone()
}

/// The shortest time `n` requests of `units` each can take under `rate` units per second: the
/// bucket starts with a tenth of a second's worth, and the request that finds it not yet empty
/// overdraws it. Less 2% for the clocks of two processes and queues that check the same
/// group's bucket at the same moment.
fn floor(n: u32, units: f64, rate: f64) -> Duration {
    let free = rate / 10.0 + units;
    Duration::from_secs_f64(((f64::from(n) * units - free) / rate).max(0.0) * 0.98)
}

/// A temporary directory with a 16 MiB image and where its socket goes.
fn image_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    make_image(&img, 16 * MIB);
    let sock = dir.path().join("d.sock");
    (dir, img, sock)
}

/// Submits two 64 KiB writes (slot `i` at sector `128 * i`, pattern `128 * i + seed`) and
/// waits for the first completion; returns the completions so far.
fn two_writes_one_done(q: &mut BlkQueue, seed: u64) -> Vec<BlkCompletion> {
    for slot in 0..2u16 {
        let sector = u64::from(slot) * 128;
        q.write_data(slot, &pattern(sector + seed, 65536)).unwrap();
        q.submit(slot, Request::Write { sector, len: 65536 })
            .unwrap();
    }
    q.kick().unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        if q.reap(&mut done).unwrap() == 0 {
            q.wait().unwrap();
        }
    }
    done
}

/// Both writes of [`two_writes_one_done`] are in the image.
fn assert_two_written(img: &Path, seed: u64) {
    let bytes = std::fs::read(img).unwrap();
    for slot in 0..2u64 {
        let off = slot as usize * 65536;
        assert!(bytes[off..off + 65536] == pattern(slot * 128 + seed, 65536)[..]);
    }
}

#[test]
fn single_image_limits_hold_requests_back_and_fail_none() {
    let (_dir, img, sock) = image_dir();

    let d = Daemon::image(&img, &sock, &["--iops-total", "1000"]);
    let took = drive(&sock, 600, 16, 4096, false);
    println!(
        "iops_total=1000: 600 reads in {:.3} s = {:.0} IOPS",
        took.as_secs_f64(),
        600.0 / took.as_secs_f64()
    );
    assert!(took >= floor(600, 1.0, 1000.0), "600 reads in {took:?}");
    d.stop();

    // 8 MiB/s of reads: 200 reads of 64 KiB (12.5 MiB) take about 1.5 s.
    let d = Daemon::image(&img, &sock, &["--bps-read", "8M", "--iops-write", "50"]);
    let took = drive(&sock, 200, 8, 65536, false);
    println!(
        "bps_read=8 MiB/s: {:.1} MiB/s",
        200.0 * 65536.0 / took.as_secs_f64() / MIB as f64
    );
    let bytes_floor = floor(200, 16.0, 8.0 * 256.0);
    assert!(took >= bytes_floor, "200 reads of 64 KiB in {took:?}");
    // Writes have their own limit: 60 take at least (60 - 6) / 50 s.
    let took = drive(&sock, 60, 8, 4096, true);
    assert!(took >= floor(60, 1.0, 50.0), "60 writes in {took:?}");
    d.stop();

    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["serve", "--socket", "/tmp/x.sock", "--image"])
        .arg(&img)
        .args(["--iops-read-max", "10"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("iops_read_max needs iops_read"), "{err}");
}

#[test]
fn a_group_shares_its_budget_limits_change_live_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (a, b, c) = (p.join("a.sock"), p.join("b.sock"), p.join("c.sock"));
    let control = p.join("control.sock");
    let state = p.join("state");
    for n in ["a", "b", "c"] {
        make_image(&p.join(format!("{n}.img")), 16 * MIB);
    }
    std::fs::write(
        p.join("graph.toml"),
        format!(
            r#"
[[qos_group]]
name = "tenant"
qos = {{ iops_total = 1000 }}

[[origin]]
name = "a"
image = "{d}/a.img"
[[origin]]
name = "b"
image = "{d}/b.img"
[[origin]]
name = "c"
image = "{d}/c.img"

[[export]]
node = "a"
socket = "{a}"
qos_group = "tenant"
[[export]]
node = "b"
socket = "{b}"
qos_group = "tenant"
[[export]]
node = "c"
socket = "{c}"
qos = {{ bps_total = "1G" }}
"#,
            d = p.display(),
            a = a.display(),
            b = b.display(),
            c = c.display(),
        ),
    )
    .unwrap();
    let args = |config: bool| {
        let mut v = vec![
            "--state-dir".to_owned(),
            state.to_str().unwrap().to_owned(),
            "--control".to_owned(),
            control.to_str().unwrap().to_owned(),
        ];
        if config {
            v.extend([
                "--config".to_owned(),
                p.join("graph.toml").to_str().unwrap().to_owned(),
            ]);
        }
        v
    };
    let start = |config: bool| {
        let v = args(config);
        let v: Vec<&str> = v.iter().map(String::as_str).collect();
        Daemon::start(&v, &[&a, &b, &c, &control], &p.join("log"))
    };
    let mut d = start(true);

    // A and B together get the group's 1000 IOPS: 800 requests take at least 0.7 s.
    let t = Instant::now();
    let (ta, tb) = std::thread::scope(|s| {
        let ja = s.spawn(|| drive(&a, 400, 16, 4096, false));
        let jb = s.spawn(|| drive(&b, 400, 16, 4096, true));
        (ja.join().unwrap(), jb.join().unwrap())
    });
    let both = t.elapsed();
    println!(
        "group iops_total=1000: a {:.3} s, b {:.3} s, together {:.0} IOPS",
        ta.as_secs_f64(),
        tb.as_secs_f64(),
        800.0 / both.as_secs_f64()
    );
    assert!(
        both >= floor(800, 1.0, 1000.0),
        "a {ta:?}, b {tb:?}, both {both:?}"
    );
    let qa = qos_stats(&control, &a);
    assert_eq!(qa["group"], "tenant", "{qa}");
    assert_eq!(qa["group_limits"]["iops_total"], 1000, "{qa}");
    assert!(qa["throttled_requests"].as_u64().unwrap() > 0, "{qa}");
    assert!(
        qos_stats(&control, &b)["throttled_requests"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The rate over the last second, while 2500 requests run at the group's 1000 IOPS (at
    // least 2.4 s: the daemon samples every second meanwhile): above 0, within the limit and
    // its burst.
    let rate = std::thread::scope(|s| {
        let run = s.spawn(|| drive(&a, 2500, 16, 4096, false));
        loop {
            let iops = qos_stats(&control, &a)["iops"].as_u64().unwrap();
            if iops > 0 || run.is_finished() {
                run.join().unwrap();
                break iops;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    println!("rate in stats while limited to 1000 IOPS: {rate}");
    assert!(rate > 0 && rate <= 1150, "{rate} IOPS over the last second");
    // C is not in the group and far below its own limit: nothing of it waited.
    drive(&c, 400, 16, 4096, false);
    let qc = qos_stats(&control, &c);
    assert_eq!(qc["throttled_requests"], 0, "{qc}");
    assert_eq!(qc["limits"]["bps_total"], 1u64 << 30, "{qc}");

    // Live: A out of every limit, B gets its own read limit beside the group.
    let (ok, text) = cli(&control, &["export", "qos", "a", "--clear"]);
    assert!(ok && text.contains("unlimited"), "{text}");
    let before = qos_stats(&control, &a)["throttled_requests"]
        .as_u64()
        .unwrap();
    drive(&a, 400, 16, 4096, false);
    assert_eq!(
        qos_stats(&control, &a)["throttled_requests"]
            .as_u64()
            .unwrap(),
        before
    );
    let (ok, text) = cli(&control, &["export", "qos", "b", "--iops-read", "200"]);
    assert!(
        ok && text.contains("iops_read=200") && text.contains("group tenant"),
        "{text}"
    );
    let took = drive(&b, 100, 8, 4096, false);
    assert!(
        took >= floor(100, 1.0, 200.0),
        "100 reads at 200 IOPS in {took:?}"
    );
    // The group cannot go while B is in it.
    let (ok, text) = cli(&control, &["qos-group", "remove", "tenant"]);
    assert!(
        !ok && text.contains("in_use") && text.contains("--no-group"),
        "{text}"
    );
    let (ok, text) = cli(
        &control,
        &["qos-group", "set", "tenant", "--iops-total", "2000"],
    );
    assert!(ok && text.contains("iops_total=2000"), "{text}");

    // Everything is saved: a restart without the config file brings it back.
    d.signal_and_wait(libc::SIGTERM);
    let saved = std::fs::read_to_string(state.join("graph.json")).unwrap();
    assert!(saved.contains("\"version\": 3"), "{saved}");
    d = start(false);
    let (ok, text) = cli(&control, &["export", "qos", "b"]);
    assert!(
        ok && text.contains("iops_read=200") && text.contains("group tenant"),
        "{text}"
    );
    let (ok, text) = cli(&control, &["qos-group", "list"]);
    assert!(
        ok && text.contains("iops_total=2000") && text.contains("b.sock"),
        "{text}"
    );
    assert!(!text.contains("a.sock"), "a left the group: {text}");
    let (ok, text) = cli(&control, &["export", "qos", "b", "--no-group", "--json"]);
    assert!(ok && !text.contains("tenant"), "{text}");
    let (ok, text) = cli(&control, &["qos-group", "remove", "tenant"]);
    assert!(ok, "{text}");
    let (ok, text) = cli(&control, &["export", "qos", "c", "--group", "nobody"]);
    assert!(!ok && text.contains("no QoS group \"nobody\""), "{text}");
    d.stop();
}

#[test]
fn a_request_held_back_is_completed_when_the_daemon_stops() {
    let (_dir, img, sock) = image_dir();
    // 4 KiB/s: the first 64 KiB write overdraws the bucket, the second waits about 16 s.
    let d = Daemon::image(&img, &sock, &["--bps-write", "4K"]);
    let mut fe = connect(&sock);
    let mut q = fe.blk_queue(0, 2, 65536).unwrap();
    let mut done = two_writes_one_done(&mut q, 0);
    let stopping = Instant::now();
    d.stop();
    println!("stopped in {:.3} s", stopping.elapsed().as_secs_f64());
    q.reap(&mut done).unwrap();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter().all(|c| c.status == Some(BlkStatus::Ok)),
        "{done:?}"
    );
    assert_two_written(&img, 0);
}

#[test]
fn a_request_held_back_at_kill_9_is_resubmitted_after_the_reconnect() {
    let (_dir, img, sock) = image_dir();
    let limit = ["--bps-write", "4K"];
    let mut d = Daemon::image(&img, &sock, &limit);
    let mut fe = BlkFrontend::connect(&sock, FrontendOptions::default()).unwrap();
    let (info, file) = fe.inflight().expect("snapblk offers inflight tracking");
    let region = RegionView::new(file, info.mmap_size, info.queue_size);
    let mut q = fe.blk_queue(0, 2, 65536).unwrap();
    let mut done = two_writes_one_done(&mut q, 7);
    // The second write waits for its budget (about 16 s): popped, flagged in flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    while region.in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the held request is not flagged in flight"
        );
        std::thread::yield_now();
    }
    assert!(!d.signal_and_wait(libc::SIGKILL).success());
    // The next daemon starts with a full bucket: the resubmitted write goes through at once.
    let d2 = Daemon::image(&img, &sock, &limit);
    fe.reconnect().unwrap();
    while q.in_flight() > 0 {
        if q.reap(&mut done).unwrap() == 0 {
            q.wait().unwrap();
        }
    }
    assert!(
        done.iter().all(|c| c.status == Some(BlkStatus::Ok)),
        "{done:?}"
    );
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(region.in_flight(), 0);
    assert_two_written(&img, 7);
    drop(q);
    drop(fe);
    d2.stop();
}
