//! The README's marked examples (`<!-- test: NAME -->` on the line before a code block) run
//! against the real binary. The daemon is started the way snapblk@.service starts it (its
//! ExecStart, the packaged example config, readiness on $NOTIFY_SOCKET), under a temporary
//! root: /run/snapblk/, /var/lib/snapblk/ and /etc/snapblk/ become directories of it, and the
//! user and group snapblk become ours. QEMU starts paused (`-S`: no guest code runs) and must
//! complete the vhost-user handshake; the libvirt XML is checked with virt-xml-validate;
//! cloud-hypervisor, which Debian 12 does not package, gets a check of its options only.

mod common;
#[path = "support/readme.rs"]
mod readme;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{have, make_image, pattern, read, write, MIB};
use readme::{block, blocks, Root, README};
use snapblk::control::protocol::{Request, Response, StatusArgs};
use snapblk::control::Client;
use snapblk::model::GraphConfig;

const UNIT: &str = include_str!("../packaging/systemd/snapblk@.service");
const EXAMPLE: &str = include_str!("../packaging/etc/example.toml");

/// Every marked block; the last six are run by tests/readme_cli.rs.
const TESTED: [&str; 12] = [
    "qemu",
    "cloud-hypervisor",
    "libvirt",
    "golden-workflow",
    "instant-clone",
    "metrics",
    "serve-image",
    "graph-toml",
    "serve-graph",
    "live-control",
    "cow-files",
    "qos",
];

/// `snapblk@INSTANCE.service` in a [`Root`]: its ExecStart, started like `Type=notify`.
struct Instance {
    child: Option<Child>,
    control: PathBuf,
    log: PathBuf,
}

impl Instance {
    /// Writes /etc/snapblk/INSTANCE.toml (`config`, localized), runs the unit's ExecStart and
    /// waits for READY=1.
    fn start(root: &Root, instance: &str, config: &str) -> Instance {
        std::fs::create_dir_all(root.run_dir(instance)).unwrap();
        std::fs::create_dir_all(root.path().join("lib").join(instance)).unwrap();
        std::fs::write(
            root.path().join(format!("etc/{instance}.toml")),
            root.localize(config),
        )
        .unwrap();
        let exec = UNIT
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit has an ExecStart");
        let exec = root.localize(&exec.replace("%i", instance));
        let mut argv = exec.split_whitespace();
        assert_eq!(argv.next(), Some("/usr/bin/snapblk"));
        let notify_path = root.path().join(format!("notify-{instance}"));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let log = root.path().join(format!("{instance}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_snapblk"))
            .args(argv)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut inst = Instance {
            child: Some(child),
            control: root.run_dir(instance).join("control.sock"),
            log,
        };
        inst.wait_ready(&notify);
        inst
    }

    fn wait_ready(&mut self, notify: &UnixDatagram) {
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if buf[..n].starts_with(b"READY=1") {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("snapblk exited ({st}) before READY=1:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "no READY=1 within 30 s");
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, req: Request) -> Response {
        Client::connect(&self.control).unwrap().call(&req).unwrap()
    }

    /// SIGTERM (systemctl stop); asserts a clean exit.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "snapblk ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(st.success(), "exit {st}:\n{}", self.log_text());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The export of the packaged example the VMM examples attach to.
fn example_export() -> snapblk::model::ExportSpec {
    let cfg = GraphConfig::from_toml(EXAMPLE).unwrap();
    cfg.exports.into_iter().next().unwrap()
}

/// A command line as one list of words (backslash-newlines joined, no quoting used).
fn words(block: &str) -> Vec<String> {
    block
        .replace("\\\n", " ")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `k=v,k=v` into pairs.
fn options(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn option<'a>(opts: &'a [(String, String)], key: &str) -> Option<&'a str> {
    opts.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn every_marked_block_is_tested_and_every_test_has_its_block() {
    let mut names: Vec<String> = blocks().into_iter().map(|(n, _, _)| n).collect();
    names.sort();
    let mut tested: Vec<String> = TESTED.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(names, tested);
}

/// The QEMU line, with KVM swapped for TCG and paused before the first instruction, attaches
/// to the packaged example's export: the export reports a connected frontend.
#[test]
fn qemu_example_connects_to_the_packaged_example_export() {
    if !common::require(
        "qemu_example_connects_to_the_packaged_example_export",
        "qemu-system-x86_64 (scripts/install-deps.sh installs it)",
        have("qemu-system-x86_64"),
    ) {
        return;
    }
    let root = Root::new();
    make_image(&root.image("golden.img"), 64 * MIB);
    let inst = Instance::start(&root, "example", EXAMPLE);
    let line = block("qemu");
    assert!(
        line.contains("accel=kvm") && line.contains("-cpu host") && line.contains("-nographic")
    );
    let line = line
        .replace("accel=kvm", "accel=tcg")
        .replace("-cpu host", "-cpu max")
        .replace(
            "-nographic",
            &format!(
                "-S -display none -serial none -monitor none -nodefaults -qmp unix:{},server=on,wait=off",
                root.path().join("qmp.sock").display()
            ),
        );
    let script = root.path().join("qemu.sh");
    std::fs::write(&script, format!("exec {}", root.localize(&line))).unwrap();
    let qemu_log = root.path().join("qemu.log");
    let mut qemu = KillOnDrop(
        Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&qemu_log).unwrap())
            .stderr(std::fs::File::create(root.path().join("qemu.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let socket = PathBuf::from(root.localize(&example_export().socket.display().to_string()));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let Response::Exports(list) = inst.call(Request::ExportList {}) else {
            panic!("export.list returned another result");
        };
        let e = list.exports.iter().find(|e| e.socket == socket).unwrap();
        if e.connected {
            break;
        }
        if let Some(st) = qemu.0.try_wait().unwrap() {
            panic!(
                "QEMU exited ({st}):\n{}",
                std::fs::read_to_string(root.path().join("qemu.err")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "QEMU did not connect within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Realized (vhost-user-blk read the disk's config from snapblk) and waiting for `cont`.
    let mut qmp = Qmp::connect(&root.path().join("qmp.sock"));
    let status = qmp.execute("query-status");
    assert_eq!(status["return"]["status"], "prelaunch", "{status}");
    qmp.execute("quit");
    let st = qemu.0.wait().unwrap();
    assert!(st.success(), "QEMU exited with {st}");
    inst.stop();
}

/// A child process killed if the test fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A QMP client: one command at a time, events skipped.
struct Qmp(std::io::BufReader<std::os::unix::net::UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut q = Qmp(std::io::BufReader::new(s));
        q.line(); // the greeting
        q.execute("qmp_capabilities");
        q
    }

    fn line(&mut self) -> serde_json::Value {
        use std::io::BufRead;
        let mut l = String::new();
        self.0.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("QMP said {l:?}: {e}"))
    }

    fn execute(&mut self, cmd: &str) -> serde_json::Value {
        use std::io::Write;
        writeln!(self.0.get_mut(), "{{\"execute\":\"{cmd}\"}}").unwrap();
        loop {
            let v = self.line();
            if v.get("return").is_some() || v.get("error").is_some() {
                assert!(v.get("error").is_none(), "QMP {cmd}: {v}");
                return v;
            }
        }
    }
}

/// Debian 12 has no cloud-hypervisor package: only the options are checked against the export.
#[test]
fn cloud_hypervisor_example_names_the_export_and_shares_memory() {
    let w = words(&block("cloud-hypervisor"));
    assert_eq!(w[0], "cloud-hypervisor");
    let arg = |flag: &str| {
        let i = w
            .iter()
            .position(|x| x == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        options(&w[i + 1])
    };
    assert_eq!(option(&arg("--memory"), "shared"), Some("on"));
    let disk = arg("--disk");
    let export = example_export();
    assert_eq!(option(&disk, "vhost_user"), Some("true"));
    assert_eq!(
        option(&disk, "socket"),
        Some(export.socket.to_str().unwrap())
    );
    let queues: u16 = option(&disk, "num_queues").unwrap().parse().unwrap();
    assert!(queues >= 1 && queues <= export.num_queues);
    let size: u16 = option(&disk, "queue_size").unwrap().parse().unwrap();
    assert!(size.is_power_of_two() && size <= export.queue_size);
    if !have("cloud-hypervisor") {
        eprintln!("note: cloud-hypervisor is not installed (not packaged in Debian 12): options checked only");
    }
}

#[test]
fn libvirt_example_is_a_valid_domain_with_shared_memory() {
    let xml = block("libvirt");
    let export = example_export();
    assert!(xml.contains("<access mode='shared'/>"), "{xml}");
    assert!(
        xml.contains("<disk type='vhostuser' device='disk'>"),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("path='{}'", export.socket.display())),
        "{xml}"
    );
    assert!(
        xml.contains(&format!("queues='{}'", export.num_queues)),
        "{xml}"
    );
    if !common::require(
        "libvirt domain XML schema check",
        "virt-xml-validate and xmllint (apt install libvirt-clients libxml2-utils)",
        have("virt-xml-validate") && have("xmllint"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm1.xml");
    std::fs::write(&file, &xml).unwrap();
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virt-xml-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The golden-image workflow leaves the golden origin alone with no clone behind, and the
/// metrics example then reports it; every metric the README names is one snapblk prints.
#[test]
fn golden_workflow_and_metrics_run_against_a_unit_instance() {
    let root = Root::new();
    let inst = Instance::start(&root, "ci", "");
    root.run_sh("golden-workflow");
    let Response::Status(st) = inst.call(Request::Status(StatusArgs { node: None })) else {
        panic!("status returned another result");
    };
    let nodes: Vec<&str> = st.nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(nodes, ["golden"], "the clone is gone");
    assert!(!root.image("job-42.cow").exists(), "and so is its COW file");
    assert_eq!(
        std::fs::metadata(root.image("golden.img")).unwrap().len(),
        4 << 30
    );

    let out = root.run_sh("metrics");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("snapblk_origin_size_bytes{origin=\"golden\"} 4294967296\n"),
        "{text}"
    );
    let sample = README
        .split("<!-- test: metrics -->")
        .nth(1)
        .and_then(|r| r.split("```text\n").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("a text block after the metrics example");
    for name in sample
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("snapblk_"))
    {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "the README names {name}, which snapblk does not print"
        );
    }
    inst.stop();
}

/// The instant clone serves vm1's disk as it was when cloned, while vm1 goes on writing.
#[test]
fn instant_clone_serves_the_running_vms_disk_as_it_was() {
    let root = Root::new();
    let before = pattern(7, 4 * MIB as usize);
    std::fs::write(root.image("vm1.img"), &before).unwrap();
    let inst = Instance::start(&root, "ci", "");
    let out = root.run_sh("instant-clone");
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm2"));
    let vm1 = root.run_dir("ci").join("vm1.sock");
    let vm2 = root.run_dir("ci").join("vm2.sock");
    assert_eq!(read(&vm2, 0, 64 << 10), before[..64 << 10]);
    let after = pattern(8, 64 << 10);
    write(&vm1, 0, &after);
    assert_eq!(read(&vm1, 0, 64 << 10), after);
    assert_eq!(
        read(&vm2, 0, 64 << 10),
        before[..64 << 10],
        "the clone kept vm1's old data"
    );
    inst.stop();
}
