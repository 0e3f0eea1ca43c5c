//! `snapblk serve` as systemd runs it: READY=1 on $NOTIFY_SOCKET (a path or an abstract name)
//! only once every socket listens, STOPPING=1 on SIGTERM, and journald log lines (`<N>`
//! priorities, no timestamps) when stderr is the stream $JOURNAL_STREAM names.

mod common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{make_image, MIB};

/// Starts `snapblk serve ARGS` with `env`, stderr into `log`.
fn spawn(args: &[&str], env: &[(&str, String)], log: &Path) -> Child {
    let logf = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .arg("serve")
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap()
}

/// The next notification, within 20 s.
fn next_message(sock: &UnixDatagram, child: &mut Child, log: &Path) -> String {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8(buf[..n].to_vec()).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("recv: {e}"),
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "snapblk exited ({st}) without notifying:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no notification within 20 s");
    }
}

/// SIGTERM, then the exit status (bounded).
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "snapblk ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ready_is_sent_once_the_socket_listens_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let img = p.join("disk.img");
    make_image(&img, 4 * MIB);
    let sock = p.join("disk.sock");
    let notify_path = p.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = p.join("log");
    let mut child = spawn(
        &[
            "--socket",
            sock.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", notify_path.display().to_string())],
        &log,
    );
    let ready = next_message(&notify, &mut child, &log);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains("STATUS=serving"), "{ready:?}");
    UnixStream::connect(&sock).expect("the socket listens when READY=1 arrives");
    let st = terminate(&mut child);
    assert_eq!(
        next_message(&notify, &mut child, &log),
        "STOPPING=1",
        "after SIGTERM"
    );
    assert!(st.success(), "{st}");
}

#[test]
fn a_graph_daemon_notifies_an_abstract_socket_after_exports_and_control_listen() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    make_image(&p.join("base.img"), 4 * MIB);
    let export = p.join("base.sock");
    let control = p.join("control.sock");
    let cfg = p.join("graph.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[origin]]\nname = \"base\"\nimage = \"{}\"\n\n[[export]]\nnode = \"base\"\nsocket = \"{}\"\n",
            p.join("base.img").display(),
            export.display()
        ),
    )
    .unwrap();
    let name = format!("snapblk-test-notify-{}", std::process::id());
    let notify =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let log = p.join("log");
    let mut child = spawn(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", format!("@{name}"))],
        &log,
    );
    let ready = next_message(&notify, &mut child, &log);
    assert_eq!(ready, "READY=1\nSTATUS=serving 1 export(s)");
    UnixStream::connect(&export).expect("the export listens");
    UnixStream::connect(&control).expect("the control socket listens");
    assert!(terminate(&mut child).success());
}

/// Runs a daemon until READY=1 and stops it; returns its log.
fn log_of_a_run(journal_stream: impl Fn(&Path) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let img = p.join("disk.img");
    make_image(&img, 4 * MIB);
    let sock = p.join("disk.sock");
    let notify_path = p.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = p.join("log");
    std::fs::File::create(&log).unwrap();
    let mut child = spawn(
        &[
            "--socket",
            sock.to_str().unwrap(),
            "--image",
            img.to_str().unwrap(),
        ],
        &[
            ("NOTIFY_SOCKET", notify_path.display().to_string()),
            ("JOURNAL_STREAM", journal_stream(&log)),
        ],
        &log,
    );
    next_message(&notify, &mut child, &log);
    assert!(terminate(&mut child).success());
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn log_lines_carry_priorities_when_stderr_is_the_journal_stream() {
    let text = log_of_a_run(|log| {
        // `spawn` re-creates the file: same inode, the stream the daemon's stderr is.
        let m = std::fs::metadata(log).unwrap();
        format!("{}:{}", m.dev(), m.ino())
    });
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    for l in &lines {
        assert!(l.starts_with("<6>") || l.starts_with("<4>"), "{l:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>snapblk::daemon: serving")),
        "{text}"
    );
}

#[test]
fn another_journal_stream_gets_plain_lines_without_timestamps() {
    let text = log_of_a_run(|_| "1:1".into());
    let first = text.lines().next().unwrap_or_default();
    assert!(first.starts_with("[INFO "), "{first:?}");
}
