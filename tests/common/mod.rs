//! Shared helpers of the integration tests: start the real `snapblk` binary, wait for its
//! socket (connect polling with a deadline, no fixed sleeps), stop it with a signal.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use snapblk::frontend::{BlkFrontend, BlkStatus, FrontendOptions};

#[path = "skip.rs"]
mod skip;
#[allow(unused_imports)]
pub use skip::{have, require};

pub const MIB: u64 = 1 << 20;

/// A running `snapblk serve`; killed on drop unless stopped.
pub struct Daemon {
    child: Option<Child>,
    pub sockets: Vec<PathBuf>,
    pub log: PathBuf,
}

impl Daemon {
    /// `snapblk serve ARGS`, waiting until every socket in `sockets` accepts connections.
    pub fn start(args: &[&str], sockets: &[&Path], log: &Path) -> Daemon {
        let logf = std::fs::File::create(log).expect("create daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_snapblk"))
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("spawn snapblk");
        let mut d = Daemon {
            child: Some(child),
            sockets: sockets.iter().map(|p| p.to_path_buf()).collect(),
            log: log.to_owned(),
        };
        for s in sockets {
            d.wait_listening(s, Duration::from_secs(20));
        }
        d
    }

    /// Serves `image` on `sock` with extra arguments.
    pub fn image(image: &Path, sock: &Path, extra: &[&str]) -> Daemon {
        let mut args = vec![
            "--socket",
            sock.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let log = sock.with_extension("log");
        Daemon::start(&args, &[sock], &log)
    }

    fn wait_listening(&mut self, sock: &Path, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if sock.exists() && UnixStream::connect(sock).is_ok() {
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                panic!(
                    "snapblk exited ({st}) before listening on {}:\n{}",
                    sock.display(),
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening after {timeout:?}",
                sock.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` and waits for the exit status (bounded).
    pub fn signal_and_wait(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("snapblk ignored signal {sig} for 20 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM; asserts a clean exit.
    pub fn stop(mut self) {
        let st = self.signal_and_wait(libc::SIGTERM);
        assert!(
            st.success(),
            "snapblk exited with {st} after SIGTERM:\n{}",
            self.log_text()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A sparse image of `size` bytes.
pub fn make_image(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
}

pub fn connect(sock: &Path) -> BlkFrontend {
    BlkFrontend::connect(sock, FrontendOptions::default()).expect("connect frontend")
}

/// A deterministic pattern for `len` bytes tagged with `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads `len` bytes at `sector` over a fresh connection; asserts the request succeeded.
pub fn read(sock: &Path, sector: u64, len: u32) -> Vec<u8> {
    let mut fe = connect(sock);
    let mut q = fe.blk_queue(0, 2, len).unwrap();
    let (r, data) = q.read(sector, len).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    data
}

/// Writes and flushes `data` at `sector` over a fresh connection; asserts both succeeded.
pub fn write(sock: &Path, sector: u64, data: &[u8]) {
    let mut fe = connect(sock);
    let mut q = fe.blk_queue(0, 2, data.len() as u32).unwrap();
    assert_eq!(q.write(sector, data).unwrap().status, BlkStatus::Ok);
    assert_eq!(q.flush().unwrap().status, BlkStatus::Ok);
}
