//! `snapblk stats --format prometheus` against a real daemon: export counters and gauges after
//! known I/O, a snapshot's copy-outs and COW usage after origin writes, merge progress after a
//! merge; the output parses as exposition text.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::{connect, pattern, read, write, Daemon, MIB};

/// Runs the client and parses its samples: `name{labels}` -> value.
fn metrics(control: &Path) -> BTreeMap<String, f64> {
    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["stats", "--format", "prometheus", "--control"])
        .arg(control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse::<f64>().unwrap())
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

#[test]
fn prometheus_metrics_follow_io_copy_outs_and_a_merge() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("base.img"), pattern(1, 4 * MIB as usize)).unwrap();
    let base = p.join("base.sock");
    let s1 = p.join("s1.sock");
    let control = p.join("control.sock");
    std::fs::write(
        p.join("graph.toml"),
        format!(
            r#"
[[origin]]
name = "base"
image = "{img}"

[[snapshot]]
name = "s1"
origin = "base"
cow = "{cow}"
chunk_size = "4K"
create_size = "8M"

[[export]]
node = "base"
socket = "{base}"
qos = {{ iops_total = 100000 }}

[[export]]
node = "s1"
socket = "{s1}"
"#,
            img = p.join("base.img").display(),
            cow = p.join("s1.cow").display(),
            base = base.display(),
            s1 = s1.display(),
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &[
            "--config",
            p.join("graph.toml").to_str().unwrap(),
            "--control",
            control.to_str().unwrap(),
        ],
        &[&base, &s1, &control],
        &p.join("log"),
    );

    // 64 KiB over the origin: 16 chunks copied out into s1's COW first.
    write(&base, 0, &pattern(2, 64 << 10));
    let old = read(&s1, 0, 4096);
    assert_eq!(old, pattern(1, 4096));
    let attached = connect(&s1);

    let m = metrics(&control);
    let eb = format!("{{export=\"{}\",node=\"base\"}}", base.display());
    let es = format!("{{export=\"{}\",node=\"s1\"}}", s1.display());
    assert!(get(&m, &format!("snapblk_export_requests_total{eb}")) >= 2.0);
    assert_eq!(
        get(&m, &format!("snapblk_export_write_bytes_total{eb}")),
        65536.0
    );
    assert_eq!(get(&m, &format!("snapblk_export_errors_total{eb}")), 0.0);
    // QoS: the limit, and no request held back far below it.
    let limit = format!(
        "snapblk_export_qos_limit{{export=\"{}\",node=\"base\",limit=\"iops_total\"}}",
        base.display()
    );
    assert_eq!(get(&m, &limit), 100000.0);
    assert_eq!(
        get(&m, &format!("snapblk_export_throttled_requests_total{eb}")),
        0.0
    );
    assert_eq!(
        get(&m, &format!("snapblk_export_throttled_seconds_total{eb}")),
        0.0
    );
    assert_eq!(
        get(&m, &format!("snapblk_export_in_flight_requests{eb}")),
        0.0
    );
    assert_eq!(
        get(&m, &format!("snapblk_export_read_bytes_total{es}")),
        4096.0
    );
    assert_eq!(get(&m, &format!("snapblk_export_connected{es}")), 1.0);
    let snap = "{snapshot=\"s1\",origin=\"base\"}";
    assert_eq!(
        get(&m, &format!("snapblk_snapshot_copies_total{snap}")),
        16.0
    );
    assert_eq!(get(&m, &format!("snapblk_snapshot_exceptions{snap}")), 16.0);
    assert_eq!(
        get(&m, &format!("snapblk_snapshot_parked_requests{snap}")),
        0.0
    );
    assert!(get(&m, &format!("snapblk_snapshot_cow_used_bytes{snap}")) >= 16.0 * 4096.0);
    assert_eq!(
        get(&m, &format!("snapblk_snapshot_cow_size_bytes{snap}")),
        8.0 * MIB as f64
    );
    assert_eq!(
        get(
            &m,
            "snapblk_snapshot_state{snapshot=\"s1\",origin=\"base\",state=\"active\"}"
        ),
        1.0
    );
    assert_eq!(
        get(&m, "snapblk_origin_size_bytes{origin=\"base\"}"),
        4.0 * MIB as f64
    );
    drop(attached);

    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(["merge", "start", "s1", "--wait", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("16/16 exceptions, 64.0 KiB merged"),
        "{printed}"
    );
    let m = metrics(&control);
    assert_eq!(
        get(&m, &format!("snapblk_merge_merged_bytes_total{snap}")),
        16.0 * 4096.0
    );
    assert_eq!(
        get(
            &m,
            "snapblk_merge_state{snapshot=\"s1\",origin=\"base\",state=\"finished\"}"
        ),
        1.0
    );
    assert_eq!(get(&m, &format!("snapblk_merge_progress_ratio{snap}")), 1.0);
    assert_eq!(
        get(&m, &format!("snapblk_merge_remaining_exceptions{snap}")),
        0.0
    );
    assert_eq!(get(&m, &format!("snapblk_merge_exceptions{snap}")), 16.0);
    assert!(
        !m.keys().any(|k| k.starts_with("snapblk_snapshot_")),
        "the merged snapshot is gone: {m:#?}"
    );
    d.stop();
}
