//! Human-readable rendering of the QoS results: exports' limits, groups, and the QoS table of
//! `stats` (limit, current rate, time throttled).

use super::render::{bytes, table};
use super::response::{QosExportList, QosGroupInfo, QosGroupList, StatsReport};

pub(super) fn qos_exports(l: &QosExportList) -> String {
    l.exports
        .iter()
        .map(|e| {
            format!(
                "export {} ({}): {}{}",
                e.socket.display(),
                e.node,
                e.qos.describe(),
                e.qos_group
                    .as_ref()
                    .map(|g| format!(", in QoS group {g}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn members(g: &QosGroupInfo) -> String {
    if g.members.is_empty() {
        return "-".into();
    }
    g.members
        .iter()
        .map(|m| m.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn qos_group(g: &QosGroupInfo) -> String {
    format!(
        "QoS group {}: {} (exports: {})",
        g.name,
        g.qos.describe(),
        members(g)
    )
}

pub(super) fn qos_groups(l: &QosGroupList) -> String {
    let rows = l
        .groups
        .iter()
        .map(|g| vec![g.name.clone(), g.qos.describe(), members(g)])
        .collect();
    table(&["GROUP", "LIMITS", "EXPORTS"], rows)
}

/// The QoS table of `stats`: only exports with a limit or a group.
pub(super) fn qos_stats(s: &StatsReport) -> Option<String> {
    let rows: Vec<Vec<String>> = s
        .exports
        .iter()
        .filter(|e| !e.qos.limits.is_empty() || e.qos.group.is_some())
        .map(|e| {
            let q = &e.qos;
            let group = match &q.group {
                Some(g) => format!("{g} ({})", q.group_limits.describe()),
                None => "-".into(),
            };
            vec![
                e.socket.display().to_string(),
                q.limits.describe(),
                group,
                format!("{} IOPS, {}/s", q.iops, bytes(q.bytes_per_sec)),
                format!(
                    "{} req, {:.3} s",
                    q.throttled_requests,
                    q.throttled_us as f64 / 1e6
                ),
            ]
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    Some(table(
        &["EXPORT", "LIMITS", "GROUP", "RATE (LAST 1 S)", "THROTTLED"],
        rows,
    ))
}
