//! A structure-aware fuzzer of the vhost-user boundary, run against the real `snapblk serve`
//! (an image export and a device-graph origin with a snapshot) over its unix sockets. Stable
//! Rust only: no cargo-fuzz.
//!
//! A case is a JSON list of [`case::Action`]s: vhost-user messages (well-formed, or raw with any
//! code, payload and descriptors) and ring contents (virtio-blk requests, verbatim descriptors,
//! available indexes, kicks, guest memory truncation). Cases start from the checked-in corpus
//! (`tests/fuzz-corpus/*.json`) and are mutated through their JSON form: a number replaced by
//! an interesting value, an element duplicated, dropped or taken from another case; what no
//! longer parses as a case is mutated again. After every case the fuzzer checks that the
//! daemon is alive, did not flood its log, and serves a well-behaved frontend correct data;
//! at the end, that it exits cleanly on SIGTERM.
//!
//! `SNAPBLK_FUZZ_SECS` (default 10) sets the duration, `SNAPBLK_FUZZ_SEED` the seed (default
//! fixed, so a plain test run is reproducible); `SNAPBLK_FUZZ_REPLAY=FILE` runs one case. A
//! failing case is saved under `target/fuzz-failures/` and named in the failure message;
//! with `SNAPBLK_FUZZ_HOLD=1` the fuzzer then waits two minutes, the daemon still running, for
//! a debugger (`gdb -p PID`, the pid is printed).

mod case;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use case::{Action, Run};
use serde_json::Value;
use snapblk::bench::Rng;
use snapblk::frontend::{BlkFrontend, BlkStatus, FrontendOptions};

/// Log bytes one case may add (a flood shows up as megabytes).
const LOG_PER_CASE: u64 = 64 << 10;
const IMAGE: u64 = 64 << 20;

struct Target {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
    name: &'static str,
}

impl Target {
    fn start(name: &'static str, args: &[&str], sock: PathBuf, log: PathBuf) -> Target {
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_snapblk"))
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let t = Target {
            child,
            sock,
            log,
            name,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&t.sock).is_err() {
            assert!(Instant::now() < deadline, "{name} never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        t
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    fn log_tail(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = bytes.len().saturating_sub(4000);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A well-behaved frontend writes a pattern and reads it back. `Err`: what went wrong.
    fn check(&mut self, n: u64) -> Result<(), String> {
        if !self.alive() {
            return Err("the daemon died".into());
        }
        let opts = FrontendOptions {
            mem_size: 4 << 20,
            timeout: Duration::from_secs(15),
            ..FrontendOptions::default()
        };
        let mut fe = BlkFrontend::connect(&self.sock, opts).map_err(|e| format!("connect: {e}"))?;
        let mut q = fe
            .blk_queue(0, 1, 4096)
            .map_err(|e| format!("queue: {e}"))?;
        let sector = (n * 8) % (IMAGE / 512 - 8);
        let data: Vec<u8> = (0..4096u64).map(|i| (i * 7 + n) as u8).collect();
        let w = q.write(sector, &data).map_err(|e| format!("write: {e}"))?;
        let (r, got) = q.read(sector, 4096).map_err(|e| format!("read: {e}"))?;
        if w.status != BlkStatus::Ok || r.status != BlkStatus::Ok || got != data {
            return Err(format!(
                "wrong I/O: write {:?}, read {:?}",
                w.status, r.status
            ));
        }
        drop(q);
        fe.disconnect().map_err(|e| format!("disconnect: {e}"))?;
        Ok(())
    }

    /// SIGTERM: the daemon must exit cleanly and soon.
    fn stop(mut self) {
        // SAFETY: kill on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(
                    st.success(),
                    "{} exited with {st}:\n{}",
                    self.name,
                    self.log_tail()
                );
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} ignored SIGTERM:\n{}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn targets(dir: &Path) -> Vec<Target> {
    let img = dir.join("d.img");
    std::fs::File::create(&img).unwrap().set_len(IMAGE).unwrap();
    let sock = dir.join("image.sock");
    let sock_arg = sock.to_str().unwrap().to_string();
    let image = Target::start(
        "image export",
        &[
            "--socket",
            &sock_arg,
            "--image",
            img.to_str().unwrap(),
            "--num-queues",
            "2",
        ],
        sock,
        dir.join("image.log"),
    );
    std::fs::File::create(dir.join("base.img"))
        .unwrap()
        .set_len(IMAGE)
        .unwrap();
    let d = dir.display();
    let cfg = format!(
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
create_size = "96M"

[[export]]
node = "base"
socket = "{d}/base.sock"
num_queues = 2
"#
    );
    std::fs::write(dir.join("graph.toml"), cfg).unwrap();
    let graph = Target::start(
        "graph origin export",
        &["--config", dir.join("graph.toml").to_str().unwrap()],
        dir.join("base.sock"),
        dir.join("graph.log"),
    );
    vec![image, graph]
}

/// Numbers a mutation likes: edges of u8/u16/u32/u64, queue and page sizes, memory sizes.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    15,
    16,
    17,
    63,
    64,
    127,
    128,
    255,
    256,
    257,
    511,
    512,
    4095,
    4096,
    65535,
    65536,
    1 << 20,
    (1 << 20) + 1,
    4 << 20,
    (4 << 20) - 16,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    u64::MAX - 4095,
    u64::MAX,
];

/// Every number in `v`, as mutable references.
fn numbers<'a>(v: &'a mut Value, out: &mut Vec<&'a mut Value>) {
    match v {
        Value::Number(_) => out.push(v),
        Value::Array(a) => a.iter_mut().for_each(|x| numbers(x, out)),
        Value::Object(o) => o.values_mut().for_each(|x| numbers(x, out)),
        _ => {}
    }
}

/// How many arrays `v` holds (itself included).
fn count_arrays(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(count_arrays).sum::<usize>(),
        Value::Object(o) => o.values().map(count_arrays).sum(),
        _ => 0,
    }
}

/// Runs `f` on the `k`-th array of `v` (in the order `count_arrays` counts them); returns how
/// many arrays were passed while looking.
fn with_array(v: &mut Value, k: usize, f: &mut dyn FnMut(&mut Vec<Value>)) -> usize {
    match v {
        Value::Array(a) => {
            if k == 0 {
                f(a);
                return usize::MAX;
            }
            let mut seen = 1;
            for x in a.iter_mut() {
                let n = with_array(x, k - seen, f);
                if n == usize::MAX {
                    return n;
                }
                seen += n;
            }
            seen
        }
        Value::Object(o) => {
            let mut seen = 0;
            for x in o.values_mut() {
                let n = with_array(x, k - seen, f);
                if n == usize::MAX {
                    return n;
                }
                seen += n;
            }
            seen
        }
        _ => 0,
    }
}

fn mutate(case: &mut Value, corpus: &[Value], rng: &mut Rng) {
    let pick = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    match rng.next_u64() % 6 {
        0 | 1 => {
            let mut nums = Vec::new();
            numbers(case, &mut nums);
            if nums.is_empty() {
                return;
            }
            let i = pick(rng, nums.len());
            let old = nums[i].as_u64().unwrap_or(0);
            let new = match rng.next_u64() % 4 {
                0 => INTERESTING[pick(rng, INTERESTING.len())],
                1 => old.wrapping_add(1 + rng.next_u64() % 16),
                2 => old.wrapping_sub(1 + rng.next_u64() % 16),
                _ => rng.next_u64() >> (rng.next_u64() % 64),
            };
            *nums[i] = Value::from(new);
        }
        2 | 3 => {
            // An element of some array dropped or duplicated.
            let dup = rng.next_u64() % 2 == 0;
            let (r1, r2) = (rng.next_u64(), rng.next_u64());
            let k = pick(rng, count_arrays(case));
            with_array(case, k, &mut |a| {
                if a.is_empty() {
                    return;
                }
                let j = (r1 % a.len() as u64) as usize;
                if dup && a.len() < 64 {
                    let x = a[j].clone();
                    a.insert((r2 % (a.len() as u64 + 1)) as usize, x);
                } else if !dup {
                    a.remove(j);
                }
            });
        }
        _ => {
            // An action from another case, at a random place.
            let other = &corpus[pick(rng, corpus.len())];
            if let (Some(src), Some(dst)) = (other.as_array(), case.as_array_mut()) {
                if !src.is_empty() && dst.len() < 64 {
                    let x = src[pick(rng, src.len())].clone();
                    dst.insert(pick(rng, dst.len() + 1), x);
                }
            }
        }
    }
}

fn corpus() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let cases: Vec<Value> = files
        .iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            serde_json::from_value::<Vec<Action>>(v.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            v
        })
        .collect();
    assert!(!cases.is_empty(), "no corpus in {}", dir.display());
    cases
}

fn run_case(t: &Target, actions: &[Action]) {
    let Ok(mut run) = Run::connect(&t.sock) else {
        return;
    };
    for a in actions {
        run.act(a);
        if run.closed {
            break;
        }
    }
    run.act(&Action::Wait(20));
}

fn save(case: &Value, seed: u64, n: u64) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{seed}-{n}.json"));
    let _ = std::fs::write(&path, serde_json::to_string_pretty(case).unwrap());
    path
}

#[test]
fn fuzz_vhost_messages_and_rings() {
    let secs: u64 = std::env::var("SNAPBLK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("SNAPBLK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14);
    let corpus = corpus();
    let dir = tempfile::tempdir().unwrap();
    let mut targets = targets(dir.path());
    let replay = std::env::var_os("SNAPBLK_FUZZ_REPLAY").map(PathBuf::from);
    let mut rng = Rng::new(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut n, mut invalid) = (0u64, 0u64);
    let started = Instant::now();
    loop {
        let case = match &replay {
            Some(p) => serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap(),
            None => {
                let mut c = corpus[(rng.next_u64() % corpus.len() as u64) as usize].clone();
                // Corpus cases run as they are first, then mutated 1 to 8 times.
                if n >= corpus.len() as u64 {
                    for _ in 0..1 + rng.next_u64() % 8 {
                        mutate(&mut c, &corpus, &mut rng);
                    }
                }
                c
            }
        };
        let Ok(actions) = serde_json::from_value::<Vec<Action>>(case.clone()) else {
            invalid += 1;
            continue;
        };
        let t = &mut targets[(n % 2) as usize];
        let log_before = t.log_len();
        run_case(t, &actions);
        let health = t.check(n);
        let grew = t.log_len().saturating_sub(log_before);
        let problem = match health {
            Err(e) => Some(e),
            Ok(()) if grew > LOG_PER_CASE => Some(format!("{grew} log bytes from one case")),
            Ok(()) => None,
        };
        if let Some(problem) = problem {
            let path = save(&case, seed, n);
            if std::env::var_os("SNAPBLK_FUZZ_HOLD").is_some() {
                eprintln!("HOLD: pid {} {problem}", t.child.id());
                std::thread::sleep(Duration::from_secs(120));
            }
            panic!(
                "case {n} (seed {seed}) against the {}: {problem}; case saved to {}\n{}",
                t.name,
                path.display(),
                t.log_tail()
            );
        }
        n += 1;
        if replay.is_some() {
            eprintln!("replayed against the {}:\n{}", t.name, t.log_tail());
        }
        if replay.is_some() || Instant::now() >= deadline {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // What the cases provoked, from the daemons' logs.
    let logs: String = targets
        .iter()
        .map(|t| std::fs::read_to_string(&t.log).unwrap_or_default())
        .collect();
    let count = |what: &str| logs.matches(what).count();
    let summary = format!(
        "fuzz: {n} cases in {secs:.0} s (seed {seed}; {invalid} mutants did not parse); \
         daemon logs: {} broken rings, {} refused requests, {} connections ended by an error, \
         {} shrunk guest memories, {} inflight recoveries that resubmitted",
        count("ring is broken"),
        count("refused"),
        count("connection ended"),
        count("guest memory shrank"),
        count("resubmitting"),
    );
    eprintln!("{summary}");
    println!("{summary}");
    for t in targets {
        t.stop();
    }
}
