//! `snapblk stats --format prometheus`: the results of `stats`, `status` and `merge.status` as
//! counters and gauges in Prometheus' text exposition format (version 0.0.4). Pure functions.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::protocol::{MergeList, MergeState, NodeKind, NodeState, StatsReport, StatusReport};

const NODE_STATES: [NodeState; 5] = [
    NodeState::Active,
    NodeState::Invalid,
    NodeState::Overflow,
    NodeState::Merging,
    NodeState::Blocked,
];
const MERGE_STATES: [MergeState; 4] = [
    MergeState::Running,
    MergeState::Finished,
    MergeState::Failed,
    MergeState::Stopped,
];

/// One metric family: its samples are `(labels, value)` with labels already rendered.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: "counter",
            help,
            samples: Vec::new(),
        }
    }

    fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: "gauge",
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: impl ToString) {
        self.samples
            .push((render_labels(labels), value.to_string()));
    }

    /// HELP and TYPE once, then every sample; a family without samples still has both lines.
    fn write(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            let _ = writeln!(out, "{}{labels} {value}", self.name);
        }
    }
}

/// `{a="x",b="y"}`, or nothing without labels.
fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A label value: backslash, double quote and newline escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A HELP text: backslash and newline escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

/// Renders the daemon's metrics. Snapshots get their origin, COW usage and state from
/// `status`; merges (running, and the last finished or failed one) from `merge.status`.
pub fn render(stats: &StatsReport, status: &StatusReport, merges: &MergeList) -> String {
    let mut requests = Family::counter(
        "snapblk_export_requests_total",
        "Requests received from the frontend, refused ones included.",
    );
    let mut read = Family::counter(
        "snapblk_export_read_bytes_total",
        "Bytes read by completed requests.",
    );
    let mut written = Family::counter(
        "snapblk_export_write_bytes_total",
        "Bytes written by completed requests.",
    );
    let mut errors = Family::counter(
        "snapblk_export_errors_total",
        "Requests refused or completed with an error status.",
    );
    let mut in_flight = Family::gauge(
        "snapblk_export_in_flight_requests",
        "Requests started and not yet completed.",
    );
    let mut connected = Family::gauge(
        "snapblk_export_connected",
        "1 while a vhost-user frontend is connected.",
    );
    for e in &stats.exports {
        let socket = e.socket.display().to_string();
        let l = [("export", socket.as_str()), ("node", e.node.as_str())];
        requests.add(&l, e.requests);
        read.add(&l, e.read_bytes);
        written.add(&l, e.write_bytes);
        errors.add(&l, e.errors);
        in_flight.add(&l, e.in_flight);
        connected.add(&l, flag(e.connected));
    }

    let mut origin_size = Family::gauge("snapblk_origin_size_bytes", "Size of the origin.");
    let mut cow_used = Family::gauge(
        "snapblk_snapshot_cow_used_bytes",
        "COW space used (dm-snapshot status: allocated sectors).",
    );
    let mut cow_size = Family::gauge(
        "snapblk_snapshot_cow_size_bytes",
        "COW space in all (dm-snapshot status: total sectors).",
    );
    let mut exceptions = Family::gauge(
        "snapblk_snapshot_exceptions",
        "Chunks held in the COW (exceptions).",
    );
    let mut state = Family::gauge(
        "snapblk_snapshot_state",
        "1 for the snapshot's current state, 0 for the others.",
    );
    let mut origin_of: BTreeMap<&str, &str> = BTreeMap::new();
    for n in &status.nodes {
        match n.kind {
            NodeKind::Origin => origin_size.add(&[("origin", n.node.as_str())], n.total_bytes),
            NodeKind::Snapshot => {
                let origin = n.origin.as_deref().unwrap_or("");
                origin_of.insert(n.node.as_str(), origin);
                let l = [("snapshot", n.node.as_str()), ("origin", origin)];
                cow_used.add(&l, n.used_bytes);
                cow_size.add(&l, n.total_bytes);
                exceptions.add(&l, n.exceptions);
                for s in NODE_STATES {
                    let name = s.to_string();
                    let l = [
                        ("snapshot", n.node.as_str()),
                        ("origin", origin),
                        ("state", name.as_str()),
                    ];
                    state.add(&l, flag(s == n.state));
                }
            }
        }
    }

    let mut copies = Family::counter(
        "snapblk_snapshot_copies_total",
        "Chunks copied out of the origin into the COW before an origin write.",
    );
    let mut parked = Family::gauge(
        "snapblk_snapshot_parked_requests",
        "Requests waiting for a chunk copy to finish.",
    );
    let mut commits = Family::counter("snapblk_snapshot_commits_total", "COW metadata commits.");
    for s in &stats.snapshots {
        let origin = origin_of.get(s.name.as_str()).copied().unwrap_or("");
        let l = [("snapshot", s.name.as_str()), ("origin", origin)];
        copies.add(&l, s.copies);
        parked.add(&l, s.parked);
        commits.add(&l, s.commits);
    }

    let mut m_state = Family::gauge(
        "snapblk_merge_state",
        "1 for the merge's current state, 0 for the others.",
    );
    let mut m_total = Family::gauge(
        "snapblk_merge_exceptions",
        "Exceptions the snapshot held when its merge started.",
    );
    let mut m_left = Family::gauge(
        "snapblk_merge_remaining_exceptions",
        "Exceptions not merged yet.",
    );
    let mut m_ratio = Family::gauge(
        "snapblk_merge_progress_ratio",
        "Share of the exceptions merged, 0 to 1.",
    );
    let mut m_bytes = Family::counter(
        "snapblk_merge_merged_bytes_total",
        "Bytes written back into the origin by the merge.",
    );
    let mut m_elapsed = Family::gauge(
        "snapblk_merge_elapsed_seconds",
        "Time since the merge started (until it ended).",
    );
    for m in &merges.merges {
        let l = [
            ("snapshot", m.snapshot.as_str()),
            ("origin", m.origin.as_str()),
        ];
        for s in MERGE_STATES {
            let name = s.to_string();
            let ls = [l[0], l[1], ("state", name.as_str())];
            m_state.add(&ls, flag(s == m.state));
        }
        m_total.add(&l, m.total_exceptions);
        m_left.add(&l, m.remaining_exceptions);
        let ratio = if m.total_exceptions == 0 {
            1.0
        } else {
            m.total_exceptions.saturating_sub(m.remaining_exceptions) as f64
                / m.total_exceptions as f64
        };
        m_ratio.add(&l, ratio);
        m_bytes.add(&l, m.merged_bytes);
        m_elapsed.add(&l, m.elapsed_s);
    }

    let mut out = String::new();
    for f in [
        requests,
        read,
        written,
        errors,
        in_flight,
        connected,
        origin_size,
        cow_used,
        cow_size,
        exceptions,
        state,
        copies,
        parked,
        commits,
        m_state,
        m_total,
        m_left,
        m_ratio,
        m_bytes,
        m_elapsed,
    ] {
        f.write(&mut out);
    }
    for f in qos_families(stats) {
        f.write(&mut out);
    }
    out
}

/// Per export: its limits (own and group's), its rate over the last second, and the time its
/// requests spent waiting for their budget.
fn qos_families(stats: &StatsReport) -> [Family; 6] {
    let mut limit = Family::gauge(
        "snapblk_export_qos_limit",
        "The export's own QoS limit (iops_total, bps_write_max, ...; requests or bytes per second).",
    );
    let mut group_limit = Family::gauge(
        "snapblk_export_qos_group_limit",
        "A limit of the export's QoS group, shared with the group's other exports.",
    );
    let mut iops = Family::gauge(
        "snapblk_export_rate_iops",
        "Requests per second over the last second.",
    );
    let mut bps = Family::gauge(
        "snapblk_export_rate_bytes_per_second",
        "Bytes read and written per second over the last second.",
    );
    let mut throttled = Family::counter(
        "snapblk_export_throttled_requests_total",
        "Requests that waited for their QoS budget.",
    );
    let mut throttled_s = Family::counter(
        "snapblk_export_throttled_seconds_total",
        "Time requests spent waiting for their QoS budget.",
    );
    for e in &stats.exports {
        let socket = e.socket.display().to_string();
        let l = [("export", socket.as_str()), ("node", e.node.as_str())];
        for (key, v) in e.qos.limits.pairs() {
            limit.add(&[l[0], l[1], ("limit", key.as_str())], v);
        }
        let group = e.qos.group.as_deref().unwrap_or("");
        for (key, v) in e.qos.group_limits.pairs() {
            group_limit.add(&[l[0], l[1], ("group", group), ("limit", key.as_str())], v);
        }
        iops.add(&l, e.qos.iops);
        bps.add(&l, e.qos.bytes_per_sec);
        throttled.add(&l, e.qos.throttled_requests);
        throttled_s.add(&l, format!("{:.6}", e.qos.throttled_us as f64 / 1e6));
    }
    [limit, group_limit, iops, bps, throttled, throttled_s]
}

#[cfg(test)]
mod tests {
    use super::super::protocol::{ExportStats, MergeStatus, NodeStatus, SnapshotStats};
    use super::*;

    fn report() -> (StatsReport, StatusReport, MergeList) {
        let stats = StatsReport {
            exports: vec![ExportStats {
                socket: "/run/snapblk/a \"b\"\\c.sock".into(),
                node: "job-1".into(),
                requests: 12,
                read_bytes: 4096,
                write_bytes: 8192,
                errors: 1,
                in_flight: 3,
                connected: true,
                qos: Default::default(),
            }],
            snapshots: vec![SnapshotStats {
                name: "job-1".into(),
                copies: 5,
                parked: 2,
                commits: 7,
            }],
        };
        let status = StatusReport {
            nodes: vec![
                NodeStatus {
                    node: "golden".into(),
                    kind: NodeKind::Origin,
                    origin: None,
                    status_line: "0 2048 snapshot-origin /img".into(),
                    used_bytes: 1 << 20,
                    total_bytes: 1 << 20,
                    exceptions: 0,
                    state: NodeState::Active,
                    reason: None,
                    warning: None,
                },
                NodeStatus {
                    node: "job-1".into(),
                    kind: NodeKind::Snapshot,
                    origin: Some("golden".into()),
                    status_line: "48/16384 16".into(),
                    used_bytes: 48 * 512,
                    total_bytes: 16384 * 512,
                    exceptions: 5,
                    state: NodeState::Merging,
                    reason: None,
                    warning: None,
                },
            ],
            config_not_applied: vec![],
        };
        let merges = MergeList {
            merges: vec![MergeStatus {
                snapshot: "job-1".into(),
                origin: "golden".into(),
                state: MergeState::Running,
                remaining_exceptions: 1,
                total_exceptions: 4,
                merged_bytes: 12288,
                elapsed_s: 1.5,
            }],
        };
        (stats, status, merges)
    }

    fn sample<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(
            render_labels(&[("export", "/x\"y"), ("node", "n")]),
            "{export=\"/x\\\"y\",node=\"n\"}"
        );
        assert_eq!(render_labels(&[]), "");
    }

    #[test]
    fn exports_snapshots_and_merges_become_labelled_samples() {
        let (stats, status, merges) = report();
        let text = render(&stats, &status, &merges);
        let export = r#"{export="/run/snapblk/a \"b\"\\c.sock",node="job-1"}"#;
        assert_eq!(
            sample(&text, "snapblk_export_requests_total{"),
            format!("snapblk_export_requests_total{export} 12")
        );
        assert!(text.contains(&format!("snapblk_export_in_flight_requests{export} 3\n")));
        assert!(text.contains(&format!("snapblk_export_connected{export} 1\n")));
        assert!(text.contains("snapblk_origin_size_bytes{origin=\"golden\"} 1048576\n"));
        let snap = r#"{snapshot="job-1",origin="golden"}"#;
        assert!(text.contains(&format!("snapblk_snapshot_copies_total{snap} 5\n")));
        assert!(text.contains(&format!("snapblk_snapshot_parked_requests{snap} 2\n")));
        assert!(text.contains(&format!("snapblk_snapshot_cow_used_bytes{snap} 24576\n")));
        assert!(text.contains(&format!("snapblk_snapshot_cow_size_bytes{snap} 8388608\n")));
        assert!(text.contains(
            "snapblk_snapshot_state{snapshot=\"job-1\",origin=\"golden\",state=\"merging\"} 1\n"
        ));
        assert!(text.contains(
            "snapblk_snapshot_state{snapshot=\"job-1\",origin=\"golden\",state=\"active\"} 0\n"
        ));
        assert!(text.contains(&format!("snapblk_merge_progress_ratio{snap} 0.75\n")));
        assert!(text.contains(&format!("snapblk_merge_elapsed_seconds{snap} 1.5\n")));
        assert!(text.contains(
            "snapblk_merge_state{snapshot=\"job-1\",origin=\"golden\",state=\"running\"} 1\n"
        ));
    }

    /// Every family has one HELP and one TYPE line before its samples, no sample line
    /// appears outside its family, and every sample line is `name[{labels}] value`.
    #[test]
    fn output_is_well_formed_exposition_text() {
        let (stats, status, merges) = report();
        for text in [
            render(&stats, &status, &merges),
            render(
                &StatsReport {
                    exports: vec![],
                    snapshots: vec![],
                },
                &StatusReport {
                    nodes: vec![],
                    config_not_applied: vec![],
                },
                &MergeList { merges: vec![] },
            ),
        ] {
            let mut current: Option<String> = None;
            let mut seen = std::collections::HashSet::new();
            let mut lines = text.lines().peekable();
            while let Some(line) = lines.next() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let name = rest.split(' ').next().unwrap().to_owned();
                    assert!(seen.insert(name.clone()), "{name} twice");
                    let ty = lines.next().unwrap();
                    assert!(
                        ty == format!("# TYPE {name} counter")
                            || ty == format!("# TYPE {name} gauge"),
                        "{ty}"
                    );
                    assert!(name.starts_with("snapblk_"));
                    if ty.ends_with("counter") {
                        assert!(name.ends_with("_total"), "{name}");
                    }
                    current = Some(name);
                    continue;
                }
                let name = current.as_deref().expect("sample before any HELP");
                let rest = line.strip_prefix(name).expect("sample of another family");
                let (labels, value) = rest.rsplit_once(' ').unwrap();
                assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')));
                value.parse::<f64>().unwrap();
            }
            assert_eq!(seen.len(), 26);
            assert!(text.ends_with('\n'));
        }
    }
}
