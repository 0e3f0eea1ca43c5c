//! The event log (snapshots going invalid or overflowing, merges, resets) and the periodic
//! health poll that feeds it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{error, info};
use serde::{Deserialize, Serialize};

use super::Manager;

/// One logged event (snapshot invalidated/overflowed, merge finished or failed, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub kind: String,
    pub node: String,
    pub message: String,
}

/// Most events kept; the oldest thousand go when it is reached.
const KEEP: usize = 10_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends an event (and logs it).
pub(super) fn push_event(events: &Mutex<Vec<Event>>, kind: &str, node: &str, message: String) {
    let mut ev = events.lock().unwrap_or_else(|p| p.into_inner());
    let seq = ev.last().map_or(1, |e| e.seq + 1);
    info!("event {kind} {node}: {message}");
    ev.push(Event {
        seq,
        time: now(),
        kind: kind.to_owned(),
        node: node.to_owned(),
        message,
    });
    if ev.len() > KEEP {
        ev.drain(..1_000);
    }
}

impl Manager {
    pub fn events(&self, since: u64) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.seq >= since)
            .cloned()
            .collect()
    }

    /// Records state changes of snapshots (Invalid, with the reason; Overflow) as events, and
    /// which snapshots received copy-outs (saved, so a reset stays refused after a restart);
    /// call periodically.
    pub fn poll_health(&self, last: &mut BTreeMap<String, String>) {
        let mut newly_written = false;
        for s in self.snapshot_specs() {
            let copies = self
                .graph
                .snapshot_engine(&s.name)
                .ok()
                .and_then(|(o, id)| o.snapshot_counters(id))
                .map_or(0, |c| c.0);
            if copies > 0 {
                newly_written |= self.lock().state.origin_written.insert(s.name.clone());
            }
        }
        if newly_written {
            if let Err(e) = self.save() {
                error!("{e}");
            }
        }
        for s in self.snapshot_specs() {
            let Ok(status) = self.graph.snapshot_status(&s.name) else {
                continue;
            };
            let word = status.split_whitespace().next().unwrap_or("").to_owned();
            let state = if word.contains('/') {
                "valid".to_owned()
            } else {
                word
            };
            if last.get(&s.name) != Some(&state) {
                if state != "valid" {
                    let reason = self
                        .graph
                        .snapshot_engine(&s.name)
                        .ok()
                        .and_then(|(o, id)| o.invalid_reason(id));
                    let message = match reason {
                        Some(why) if state == "Invalid" => {
                            format!("snapshot status: {status}: {why}")
                        }
                        _ => format!("snapshot status: {status}"),
                    };
                    push_event(&self.events, &state.to_ascii_lowercase(), &s.name, message);
                }
                last.insert(s.name.clone(), state);
            }
        }
    }
}
