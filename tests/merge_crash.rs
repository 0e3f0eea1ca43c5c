//! Merges survive any crash: a daemon with a state directory merges a snapshot into its origin
//! while a guest writes to the origin, and is killed with SIGKILL at random points of the merge
//! (right after `merge start` answers, and when a random share of the exceptions is left), many
//! times. After every restart the merge resumes before the origin's export serves anything, and
//! the origin reads, at every kill point and at the end (in the image file itself), exactly the
//! snapshot's view at merge start plus every flushed guest write (the one in flight at the kill
//! may or may not have landed). Another snapshot keeps its own view throughout. SIGTERM during a
//! merge stops it promptly and it resumes at the next start.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{connect, pattern, Daemon, MIB};
use snapblk::control::protocol::{MergeState, MergeStatusArgs, Request, Response, SnapshotRef};
use snapblk::control::Client;
use snapblk::frontend::{BlkFrontend, BlkStatus, FrontendOptions};

const SIZE: u64 = 8 * MIB;
const BLOCK: usize = 4096;
const BLOCKS: u64 = SIZE / BLOCK as u64;

struct Setup {
    dir: PathBuf,
    args: Vec<String>,
}

impl Setup {
    fn new(dir: &Path) -> Setup {
        std::fs::write(dir.join("base.img"), pattern(1, SIZE as usize)).unwrap();
        let cfg = format!(
            r#"
[[origin]]
name = "base"
image = "{d}/base.img"

[[snapshot]]
name = "s"
origin = "base"
cow = "{d}/s.cow"
chunk_size = "4K"
create_size = "24M"

[[snapshot]]
name = "keep"
origin = "base"
cow = "{d}/keep.cow"
chunk_size = "8K"
create_size = "24M"

[[export]]
node = "base"
socket = "{d}/base.sock"

[[export]]
node = "s"
socket = "{d}/s.sock"

[[export]]
node = "keep"
socket = "{d}/keep.sock"
"#,
            d = dir.display()
        );
        std::fs::write(dir.join("graph.toml"), cfg).unwrap();
        let s = |p: &str| dir.join(p).to_str().unwrap().to_owned();
        Setup {
            dir: dir.to_owned(),
            args: vec![
                "--config".into(),
                s("graph.toml"),
                "--state-dir".into(),
                s("state"),
                "--control".into(),
                s("control.sock"),
            ],
        }
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts the daemon, waiting only for the origin's export socket: a guest write may come
    /// as soon as it listens (the control socket comes later; `control` waits for it).
    fn start(&self) -> Daemon {
        let args: Vec<&str> = self.args.iter().map(|s| s.as_str()).collect();
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.dir.join(format!("daemon-{n}.log"));
        Daemon::start(&args, &[&self.sock("base.sock")], &log)
    }

    fn control(&self) -> Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Client::connect(&self.sock("control.sock")) {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "no control socket: {e}"),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the state file names a snapshot being merged (read while no daemon runs).
    fn saved_merge(&self) -> bool {
        let text = std::fs::read_to_string(self.dir.join("state/graph.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.get("merging").is_some_and(|m| !m.is_null())
    }

    fn merge(&self) -> Option<(MergeState, u64)> {
        let r = self
            .control()
            .call(&Request::MergeStatus(MergeStatusArgs { snapshot: None }))
            .unwrap();
        let Response::Merges(l) = r else {
            panic!("{r:?}")
        };
        l.merges.first().map(|m| (m.state, m.remaining_exceptions))
    }
}

/// A small deterministic generator (no dependency on a crate's algorithm staying the same).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What each block of a device may read: the flushed value, or one written since the last
/// flush (completed or in flight at a kill); and what happened, to explain a failure.
struct Model {
    blocks: Vec<Vec<u8>>,
    in_flight: HashMap<u64, Vec<Vec<u8>>>,
    /// (block, event); `None`: an event of every block (a kill).
    history: Vec<(Option<u64>, String)>,
}

impl Model {
    fn of(bytes: &[u8]) -> Model {
        Model {
            blocks: bytes.chunks(BLOCK).map(|c| c.to_vec()).collect(),
            in_flight: HashMap::new(),
            history: Vec::new(),
        }
    }

    fn note(&mut self, block: Option<u64>, event: String) {
        self.history.push((block, event));
    }

    /// Checks `bytes` against the model and settles the blocks in flight to what landed.
    fn check(&mut self, bytes: &[u8], what: &str) {
        assert_eq!(bytes.len(), self.blocks.len() * BLOCK);
        for (b, got) in bytes.chunks(BLOCK).enumerate() {
            if got == &self.blocks[b][..] {
                continue;
            }
            let landed = self
                .in_flight
                .get(&(b as u64))
                .and_then(|ws| ws.iter().find(|w| got == &w[..]));
            if let Some(w) = landed {
                self.blocks[b] = w.clone();
                continue;
            }
            let history: Vec<&str> = self
                .history
                .iter()
                .filter(|(h, _)| h.is_none_or(|h| h == b as u64))
                .map(|(_, e)| e.as_str())
                .collect();
            panic!(
                "{what}: block {b} holds neither its flushed data nor a write since (it holds the \
                 base image's: {}); its history: {}",
                got == &pattern(1, SIZE as usize)[b * BLOCK..(b + 1) * BLOCK],
                history.join(", ")
            );
        }
        self.in_flight.clear();
    }
}

fn read_all(sock: &Path) -> Vec<u8> {
    let mut fe = connect(sock);
    let mut q = fe.blk_queue(0, 2, MIB as u32).unwrap();
    let mut out = Vec::with_capacity(SIZE as usize);
    for s in (0..SIZE).step_by(MIB as usize) {
        let (r, data) = q.read(s / 512, MIB as u32).unwrap();
        assert_eq!(r.status, BlkStatus::Ok, "read at byte {s}");
        out.extend_from_slice(&data);
    }
    out
}

/// Writes `n` random blocks of `sock`, with a flush after every `FLUSH_EVERY`, until `stop`
/// says so or the daemon is gone; returns how many were written. Writes not yet flushed stay
/// in the model's `in_flight` as what their blocks may read.
fn guest_writes(
    sock: &Path,
    model: &mut Model,
    rng: &mut Rng,
    n: usize,
    mut stop: impl FnMut(usize) -> bool,
) -> usize {
    const FLUSH_EVERY: usize = 8;
    // The daemon may be gone already (killed under the connection). A kill is noticed when a
    // request times out, so the timeout is short (a merge run never holds a write that long).
    let opts = FrontendOptions {
        timeout: Duration::from_secs(2),
        ..FrontendOptions::default()
    };
    let Ok(mut fe) = BlkFrontend::connect(sock, opts) else {
        return 0;
    };
    let Ok(mut q) = fe.blk_queue(0, 2, BLOCK as u32) else {
        return 0;
    };
    let ok = |r: snapblk::frontend::Result<snapblk::frontend::Reply>| {
        r.is_ok_and(|r| r.status == BlkStatus::Ok)
    };
    // Writes of this call not yet flushed; flushed, they replace whatever the block held
    // (candidates from before a kill included).
    let mut mine: Vec<(u64, Vec<u8>)> = Vec::new();
    for i in 0..n {
        if stop(i) {
            return i;
        }
        let b = rng.below(BLOCKS);
        let data = pattern(rng.next(), BLOCK);
        model.note(Some(b), format!("guest write {i}"));
        model.in_flight.entry(b).or_default().push(data.clone());
        mine.push((b, data.clone()));
        if !ok(q.write(b * (BLOCK as u64 / 512), &data)) {
            // The daemon was killed under this request.
            return i;
        }
        if (i + 1) % FLUSH_EVERY == 0 || i + 1 == n {
            if !ok(q.flush()) {
                return i;
            }
            for (b, data) in mine.drain(..) {
                model.blocks[b as usize] = data;
                model.in_flight.remove(&b);
            }
        }
    }
    n
}

/// Writes `count` scattered blocks of snapshot `s` (scattered: many runs to merge).
fn fill_snapshot(set: &Setup, model: &mut Model, rng: &mut Rng, count: usize) {
    let mut fe = connect(&set.sock("s.sock"));
    let mut q = fe.blk_queue(0, 2, BLOCK as u32).unwrap();
    for _ in 0..count {
        let b = rng.below(BLOCKS);
        let data = pattern(rng.next(), BLOCK);
        assert_eq!(
            q.write(b * (BLOCK as u64 / 512), &data).unwrap().status,
            BlkStatus::Ok
        );
        model.blocks[b as usize] = data;
    }
    assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
}

/// The daemon's log says the merge resumed before any export started (a write to an export
/// started earlier could become an exception the resumed merge copies back over it).
fn assert_resumed_before_exports(d: &Daemon) {
    let log = d.log_text();
    let resumed = log.find("resuming the merge").unwrap_or(usize::MAX);
    let exported = log.find("exporting node").unwrap_or(usize::MAX);
    assert!(
        resumed < exported,
        "the merge must resume before any export starts:\n{log}"
    );
}

fn start_merge(set: &Setup) {
    let r = set
        .control()
        .call(&Request::MergeStart(SnapshotRef {
            snapshot: "s".into(),
        }))
        .unwrap();
    assert!(matches!(r, Response::Merge(_)), "{r:?}");
}

#[test]
fn merges_killed_at_random_points_under_guest_writes_end_with_the_merged_origin() {
    // On a disk (not tmpfs): every merge run waits for device flushes, so the merge lasts long
    // enough to be killed at several points of it.
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let set = Setup::new(dir.path());
    let seed = std::env::var("SNAPBLK_MERGE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026_u64);
    let rounds: usize = std::env::var("SNAPBLK_MERGE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    eprintln!("seed {seed:#x}, {rounds} merges");
    let mut rng = Rng(seed | 1);
    let base = pattern(1, SIZE as usize);
    let keep_view = base.clone();
    let mut origin = Model::of(&base);
    let mut kills = 0;
    let mut daemon = Some(set.start());
    for round in 0..rounds {
        if round > 0 {
            // A fresh snapshot of the merged origin for the next round.
            let mut d = daemon.take().unwrap();
            d.signal_and_wait(libc::SIGTERM);
            drop(d);
            std::fs::remove_dir_all(set.dir.join("state")).unwrap();
            std::fs::remove_file(set.dir.join("s.cow")).unwrap();
            daemon = Some(set.start());
        }
        // The snapshot's view at merge start is what the origin becomes.
        let mut snap_view = Model::of(&read_all(&set.sock("base.sock")));
        fill_snapshot(&set, &mut snap_view, &mut rng, 250);
        let merged: Vec<u8> = snap_view.blocks.concat();
        assert_eq!(
            read_all(&set.sock("s.sock")),
            merged,
            "round {round}: snapshot view"
        );
        origin = Model::of(&merged);
        start_merge(&set);
        // Kill points: right after `merge start` answered, then when random shares of the
        // exceptions are left (in decreasing order; one the merge already passed is skipped).
        let (_, total) = set.merge().expect("a merge is known");
        let mut targets: Vec<u64> = (0..6).map(|_| rng.below(total)).collect();
        targets.sort_unstable_by(|a, b| b.cmp(a));
        let mut first = true;
        loop {
            // None: the merge finished before the last kill, so the restart had none to resume.
            let (state, left) = set.merge().unwrap_or((MergeState::Finished, 0));
            assert_ne!(state, MergeState::Failed, "round {round}");
            let done = state == MergeState::Finished;
            targets.retain(|&t| t <= left);
            let target = if first {
                left + 1
            } else {
                targets.first().copied().unwrap_or(0)
            };
            first = false;
            targets.retain(|&t| t < target);
            let mut d = daemon.take().unwrap();
            if done {
                d.stop();
            } else {
                let pid = d.pid();
                let ctl = Setup {
                    dir: set.dir.clone(),
                    args: Vec::new(),
                };
                let killer = std::thread::spawn(move || {
                    while let Some((MergeState::Running, l)) = ctl.merge() {
                        if l < target {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    // SAFETY: kill on our own child's pid (reaped by the main thread).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                });
                guest_writes(
                    &set.sock("base.sock"),
                    &mut origin,
                    &mut rng,
                    usize::MAX,
                    |_| killer.is_finished(),
                );
                killer.join().unwrap();
                d.signal_and_wait(libc::SIGKILL);
                kills += 1;
                origin.note(None, format!("kill {kills}"));
                drop(d);
            }
            // The merge may have finished between the last poll and the kill: a resume is owed
            // only when the state file still names a merge.
            let owed = !done && set.saved_merge();
            daemon = Some(set.start());
            if owed {
                assert_resumed_before_exports(daemon.as_ref().unwrap());
            }
            // Writes as soon as the origin's socket listens: the merge must have resumed.
            guest_writes(&set.sock("base.sock"), &mut origin, &mut rng, 8, |_| false);
            origin.check(
                &read_all(&set.sock("base.sock")),
                &format!("round {round}, after kill {kills}"),
            );
            assert_eq!(
                read_all(&set.sock("keep.sock")),
                keep_view,
                "round {round}: the other snapshot keeps its view"
            );
            if done {
                break;
            }
        }
        assert!(
            set.merge().is_none_or(|(s, _)| s != MergeState::Running),
            "no merge left after round {round}"
        );
    }
    daemon.take().unwrap().stop();
    let file = std::fs::read(set.dir.join("base.img")).unwrap();
    origin.check(&file, "the origin image after the last merge");
    eprintln!("{kills} kills during {rounds} merges");
    // One kill a round lands right after `merge start`; the others need the merge to still
    // run when their point comes (how many do depends on the disk's speed).
    assert!(kills >= rounds + 2, "only {kills} kills");
}

#[test]
fn sigterm_during_a_merge_stops_it_promptly_and_it_resumes_at_the_next_start() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let set = Setup::new(dir.path());
    let mut rng = Rng(7);
    let mut d = set.start();
    let mut view = Model::of(&pattern(1, SIZE as usize));
    fill_snapshot(&set, &mut view, &mut rng, 1500);
    let merged: Vec<u8> = view.blocks.concat();
    start_merge(&set);
    let t0 = Instant::now();
    let st = d.signal_and_wait(libc::SIGTERM);
    assert!(st.success(), "{st}:\n{}", d.log_text());
    let took = t0.elapsed();
    let log = d.log_text();
    drop(d);
    eprintln!("SIGTERM during the merge: stopped in {took:?}");
    let d = set.start();
    let state = set.merge();
    assert!(
        log.contains("resumes at the next start") || log.contains("event merge-done"),
        "{log}"
    );
    assert!(
        matches!(state, Some((MergeState::Running | MergeState::Finished, _))),
        "{state:?}"
    );
    assert_eq!(read_all(&set.sock("base.sock")), merged);
    let deadline = Instant::now() + Duration::from_secs(120);
    while set.merge().is_some_and(|(s, _)| s == MergeState::Running) {
        assert!(
            Instant::now() < deadline,
            "the resumed merge did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(set.merge().map(|m| m.0), Some(MergeState::Finished));
    d.stop();
    assert_eq!(std::fs::read(set.dir.join("base.img")).unwrap(), merged);
}

#[test]
fn a_merge_that_cannot_be_saved_does_not_start() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let set = Setup::new(dir.path());
    let mut rng = Rng(11);
    let d = set.start();
    let mut view = Model::of(&pattern(1, SIZE as usize));
    fill_snapshot(&set, &mut view, &mut rng, 200);
    let before = read_all(&set.sock("base.sock"));
    // The state file cannot be replaced: its temporary name is taken by a directory.
    std::fs::create_dir(set.dir.join("state/graph.json.tmp")).unwrap();
    let r = set.control().call(&Request::MergeStart(SnapshotRef {
        snapshot: "s".into(),
    }));
    let Err(snapblk::control::ClientError::Remote(e)) = r else {
        panic!("merge start succeeded without saving it: {r:?}")
    };
    assert!(e.message.contains("state directory"), "{e:?}");
    assert!(
        set.merge().is_none_or(|(s, _)| s != MergeState::Running),
        "no merge runs"
    );
    assert!(
        read_all(&set.sock("base.sock")) == before,
        "the origin is untouched"
    );
    assert!(read_all(&set.sock("s.sock")) == view.blocks.concat());
    std::fs::remove_dir(set.dir.join("state/graph.json.tmp")).unwrap();
    start_merge(&set);
    d.stop();
}

#[test]
fn a_failed_merge_is_saved_and_resumes_at_the_next_start() {
    let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let set = Setup::new(dir.path());
    let mut rng = Rng(13);
    let mut d = set.start();
    let mut view = Model::of(&pattern(1, SIZE as usize));
    fill_snapshot(&set, &mut view, &mut rng, 300);
    let merged = view.blocks.concat();
    // The COW loses its tail behind the daemon's back: the merge's first copy fails.
    let cow_path = set.dir.join("s.cow");
    let cow = std::fs::read(&cow_path).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cow_path)
        .unwrap()
        .set_len(16384)
        .unwrap();
    start_merge(&set);
    let deadline = Instant::now() + Duration::from_secs(60);
    while set.merge().is_some_and(|(s, _)| s == MergeState::Running) {
        assert!(
            Instant::now() < deadline,
            "the merge neither failed nor finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(set.merge().map(|m| m.0), Some(MergeState::Failed));
    // Any later change saves the state again: the failed merge stays in it.
    let r = set
        .control()
        .call(&Request::ExportRemove(
            snapblk::control::protocol::ExportRemove {
                node: Some("keep".into()),
                socket: None,
                force: true,
            },
        ))
        .unwrap();
    assert!(matches!(r, Response::Done(_)), "{r:?}");
    let saved = std::fs::read_to_string(set.dir.join("state/graph.json")).unwrap();
    assert!(
        saved.contains("\"merging\": \"s\"") && saved.contains("merge_failed"),
        "{saved}"
    );
    d.signal_and_wait(libc::SIGKILL);
    drop(d);
    // Repaired, the next start resumes the merge before serving the origin, and finishes it.
    std::fs::write(&cow_path, &cow).unwrap();
    let d = set.start();
    assert_resumed_before_exports(&d);
    assert_eq!(read_all(&set.sock("base.sock")), merged);
    while set.merge().is_some_and(|(s, _)| s == MergeState::Running) {
        assert!(
            Instant::now() < deadline,
            "the resumed merge did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(set.merge().map(|m| m.0), Some(MergeState::Finished));
    d.stop();
    assert_eq!(std::fs::read(set.dir.join("base.img")).unwrap(), merged);
}
