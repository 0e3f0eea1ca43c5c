//! Human-readable rendering of control results: aligned tables, binary-unit sizes, UTC times
//! and the merge progress line. Pure functions on the protocol types (no I/O).

use super::protocol::{
    CreateResult, EventList, ExportList, MergeList, MergeStatus, NodeKind, Request, Response,
    SnapshotDeleted, SnapshotList, StatsReport, StatusReport,
};
use super::render_qos;

/// Renders the result of `req` for a person. Ends with a newline unless empty.
pub fn render(req: &Request, resp: &Response) -> String {
    let mut out = match (req, resp) {
        (_, Response::Hello(h)) => format!(
            "snapblk daemon {}, protocol version {}",
            h.version, h.protocol
        ),
        (_, Response::Origin(o)) => format!(
            "origin {} added: {} ({})",
            o.name,
            o.image.display(),
            bytes(o.size_bytes)
        ),
        (Request::OriginRemove(r), Response::Done(_)) => format!("origin {} removed", r.name),
        (Request::QosGroupRemove(r), Response::Done(_)) => format!("QoS group {} removed", r.name),
        (_, Response::Deleted(d)) => deleted(d),
        (Request::ExportRemove(r), Response::Done(_)) => match (&r.socket, &r.node) {
            (Some(s), _) => format!("export {} removed", s.display()),
            (None, Some(n)) => format!("exports of {n} removed"),
            (None, None) => "export removed".into(),
        },
        (_, Response::Done(_)) => "done".into(),
        (_, Response::Created(c)) => created(c),
        (_, Response::Snapshots(l)) => snapshots(l),
        (_, Response::Snapshot(s)) => format!(
            "snapshot {} reset: {} exception(s), {} of {} used, {}",
            s.name,
            s.exceptions,
            bytes(s.used_bytes),
            bytes(s.total_bytes),
            s.state
        ),
        (_, Response::Export(e)) => format!(
            "exported {} on {}{}",
            e.node,
            e.socket.display(),
            if e.readonly { " (read-only)" } else { "" }
        ),
        (_, Response::Exports(l)) => exports(l),
        (_, Response::Status(s)) => status(s),
        (_, Response::Stats(s)) => stats(s),
        (_, Response::Merge(m)) => format!(
            "merge of {} into {} started: {} exception(s)",
            m.snapshot, m.origin, m.total_exceptions
        ),
        (_, Response::Merges(m)) => merges(m),
        (_, Response::Events(e)) => events(e),
        (_, Response::QosExports(l)) => render_qos::qos_exports(l),
        (_, Response::QosGroup(g)) => render_qos::qos_group(g),
        (_, Response::QosGroups(l)) => render_qos::qos_groups(l),
    };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn deleted(d: &SnapshotDeleted) -> String {
    let files: Vec<String> = d
        .cow_files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    if d.cow_removed {
        format!(
            "snapshot {} deleted; COW file removed: {}",
            d.name,
            files.join(", ")
        )
    } else {
        format!(
            "snapshot {} deleted; COW file kept: {} (it still holds the snapshot: remove it, or \
             reuse it with snapshot create --adopt; --remove-cow removes it with the snapshot)",
            d.name,
            files.join(", ")
        )
    }
}

fn created(c: &CreateResult) -> String {
    let mut out = format!("created {}", c.names.join(", "));
    if !c.pause_us.is_empty() {
        let pauses: Vec<String> = c
            .pause_us
            .iter()
            .map(|(o, us)| format!("{o} {us} us"))
            .collect();
        out.push_str(&format!(" (writes paused: {})", pauses.join(", ")));
    }
    out
}

fn snapshots(l: &SnapshotList) -> String {
    if l.snapshots.is_empty() {
        return "no snapshots".into();
    }
    let rows = l
        .snapshots
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.origin.clone(),
                s.store.to_string(),
                bytes(s.chunk_size),
                bytes(s.used_bytes),
                bytes(s.total_bytes),
                percent(s.used_bytes, s.total_bytes),
                s.exceptions.to_string(),
                s.state.to_string(),
                if s.resettable { "yes" } else { "no" }.into(),
                list(&s.exports),
                s.cow.display().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ORIGIN",
            "STORE",
            "CHUNK",
            "USED",
            "TOTAL",
            "USE%",
            "EXCEPTIONS",
            "STATE",
            "RESETTABLE",
            "EXPORTS",
            "COW",
        ],
        rows,
    )
}

fn exports(l: &ExportList) -> String {
    if l.exports.is_empty() {
        return "no exports".into();
    }
    let rows = l
        .exports
        .iter()
        .map(|e| {
            vec![
                e.socket.display().to_string(),
                e.node.clone(),
                if e.readonly { "ro" } else { "rw" }.into(),
                e.num_queues.to_string(),
                if e.connected { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(&["SOCKET", "NODE", "MODE", "QUEUES", "CONNECTED"], rows)
}

fn status(s: &StatusReport) -> String {
    let mut notes = String::new();
    for n in s.nodes.iter().filter(|n| n.reason.is_some()) {
        let why = n.reason.as_deref().unwrap_or_default();
        notes.push_str(&format!("\n{} is {}: {why}", n.node, n.state));
    }
    for n in &s.nodes {
        if let Some(w) = &n.warning {
            notes.push_str(&format!("\nwarning: {}: {w}", n.node));
        }
    }
    if !s.config_not_applied.is_empty() {
        notes.push_str(&format!(
            "\nthe state directory won over the config file at start; not applied (start with --apply-config to apply): {}",
            s.config_not_applied.join("; ")
        ));
    }
    if s.nodes.is_empty() {
        return format!("no nodes{notes}");
    }
    let rows = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node.clone(),
                n.kind.to_string(),
                n.state.to_string(),
                bytes(n.used_bytes),
                bytes(n.total_bytes),
                match n.kind {
                    NodeKind::Origin => "-".into(),
                    NodeKind::Snapshot => percent(n.used_bytes, n.total_bytes),
                },
                n.exceptions.to_string(),
                n.status_line.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "KIND",
            "STATE",
            "USED",
            "TOTAL",
            "USE%",
            "EXCEPTIONS",
            "STATUS",
        ],
        rows,
    ) + &notes
}

fn stats(s: &StatsReport) -> String {
    let exports = s
        .exports
        .iter()
        .map(|e| {
            vec![
                e.socket.display().to_string(),
                e.node.clone(),
                e.requests.to_string(),
                bytes(e.read_bytes),
                bytes(e.write_bytes),
                e.errors.to_string(),
                e.in_flight.to_string(),
            ]
        })
        .collect();
    let snaps = s
        .snapshots
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.copies.to_string(),
                n.parked.to_string(),
                n.commits.to_string(),
            ]
        })
        .collect();
    let qos = render_qos::qos_stats(s)
        .map(|t| format!("\n{t}"))
        .unwrap_or_default();
    format!(
        "{}\n{}{qos}",
        table(
            &[
                "EXPORT",
                "NODE",
                "REQUESTS",
                "READ",
                "WRITTEN",
                "ERRORS",
                "IN-FLIGHT"
            ],
            exports
        ),
        table(&["SNAPSHOT", "COPIES", "PARKED", "COMMITS"], snaps)
    )
}

fn merges(m: &MergeList) -> String {
    if m.merges.is_empty() {
        return "no merges".into();
    }
    let rows = m
        .merges
        .iter()
        .map(|m| {
            vec![
                m.snapshot.clone(),
                m.origin.clone(),
                m.state.to_string(),
                percent(done(m), m.total_exceptions),
                m.remaining_exceptions.to_string(),
                bytes(m.merged_bytes),
                format!("{:.1}s", m.elapsed_s),
            ]
        })
        .collect();
    table(
        &[
            "SNAPSHOT",
            "ORIGIN",
            "STATE",
            "DONE",
            "REMAINING",
            "MERGED",
            "ELAPSED",
        ],
        rows,
    )
}

fn events(e: &EventList) -> String {
    if e.events.is_empty() {
        return "no events".into();
    }
    let rows = e
        .events
        .iter()
        .map(|ev| {
            vec![
                ev.seq.to_string(),
                utc(ev.time),
                ev.kind.to_string(),
                ev.node.clone(),
                ev.message.clone(),
            ]
        })
        .collect();
    table(&["SEQ", "TIME", "KIND", "NODE", "MESSAGE"], rows)
}

fn done(m: &MergeStatus) -> u64 {
    m.total_exceptions.saturating_sub(m.remaining_exceptions)
}

/// One line of merge progress; with `bar_width > 0`, a `[####....]` bar in front.
pub fn progress_line(m: &MergeStatus, bar_width: usize) -> String {
    let total = m.total_exceptions.max(1);
    let frac = (done(m) as f64 / total as f64).clamp(0.0, 1.0);
    let frac = if m.total_exceptions == 0 { 1.0 } else { frac };
    let mut out = String::new();
    if bar_width > 0 {
        let filled = ((frac * bar_width as f64).round() as usize).min(bar_width);
        out.push('[');
        out.push_str(&"#".repeat(filled));
        out.push_str(&".".repeat(bar_width - filled));
        out.push_str("] ");
    }
    out.push_str(&format!(
        "{:3.0}% {} {}/{} exceptions, {} merged, {:.1}s",
        frac * 100.0,
        m.state,
        done(m),
        m.total_exceptions,
        bytes(m.merged_bytes),
        m.elapsed_s
    ));
    out
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A byte count in binary units: `512 B`, `1.5 KiB`, `16.0 GiB`.
pub fn bytes(n: u64) -> String {
    crate::storage::binary_units(n)
}

/// Paths joined by commas, `-` for none.
fn list(paths: &[std::path::PathBuf]) -> String {
    if paths.is_empty() {
        return "-".into();
    }
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(",")
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(16 << 30), "16.0 GiB");
    }

    #[test]
    fn progress_line_draws_a_bar_of_merged_exceptions() {
        let m = MergeStatus {
            snapshot: "s".into(),
            origin: "o".into(),
            state: super::super::protocol::MergeState::Running,
            remaining_exceptions: 3,
            total_exceptions: 4,
            merged_bytes: 4096,
            elapsed_s: 2.0,
        };
        assert_eq!(
            progress_line(&m, 8),
            "[##......]  25% running 1/4 exceptions, 4.0 KiB merged, 2.0s"
        );
        assert!(progress_line(&m, 0).starts_with(" 25% running"));
    }

    #[test]
    fn table_aligns_columns_and_leaves_last_unpadded() {
        let t = table(
            &["A", "BB"],
            vec![vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]],
        );
        assert_eq!(t, "A    BB\nxxx  y\nz    w\n");
    }
}
