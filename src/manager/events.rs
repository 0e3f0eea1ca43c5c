//! The event log (snapshots going invalid or overflowing, merges, resets) and the periodic
//! health poll that feeds it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{error, info, warn};
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

/// The log file in the state directory: one JSON event per line, appended.
pub const EVENTS_FILE: &str = "events.jsonl";

/// Most events kept (in memory and in the file); the oldest thousand go when it is reached.
const KEEP: usize = 10_000;
const DROP: usize = 1_000;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The event log: bounded, and kept in the state directory (when there is one) so that
/// sequence numbers go on across restarts and `events --since N` stays meaningful.
pub struct EventLog {
    events: Mutex<Vec<Event>>,
    file: Option<PathBuf>,
}

impl EventLog {
    /// Loads the saved log of `state_dir` (a torn last line from a crash is skipped).
    pub fn open(state_dir: Option<&Path>) -> EventLog {
        let file = state_dir.map(|d| d.join(EVENTS_FILE));
        let mut events: Vec<Event> = Vec::new();
        if let Some(f) = &file {
            match std::fs::read_to_string(f) {
                Ok(text) => {
                    events = text
                        .lines()
                        .filter_map(|l| serde_json::from_str(l).ok())
                        .collect()
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(
                    "cannot read the event log {}: {e}; it starts empty",
                    f.display()
                ),
            }
        }
        if events.len() > KEEP {
            events.drain(..events.len() - KEEP);
        }
        EventLog {
            events: Mutex::new(events),
            file,
        }
    }

    /// Appends an event (and logs it). The file is written best effort: an event that cannot
    /// be saved is still logged and kept in memory.
    pub fn push(&self, kind: &str, node: &str, message: String) {
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let seq = ev.last().map_or(1, |e| e.seq + 1);
        info!("event {kind} {node}: {message}");
        let event = Event {
            seq,
            time: now(),
            kind: kind.to_owned(),
            node: node.to_owned(),
            message,
        };
        ev.push(event);
        let compact = ev.len() > KEEP;
        if compact {
            ev.drain(..DROP);
        }
        if let Some(f) = &self.file {
            let saved = if compact {
                rewrite(f, &ev)
            } else {
                append(f, ev.last().into_iter())
            };
            if let Err(e) = saved {
                warn!("cannot save event {seq} in {}: {e}", f.display());
            }
        }
    }

    /// Events with sequence number `since` or later.
    pub fn since(&self, since: u64) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|e| e.seq >= since)
            .cloned()
            .collect()
    }
}

fn lines<'a>(events: impl Iterator<Item = &'a Event>) -> String {
    let mut text = String::new();
    for e in events {
        if let Ok(l) = serde_json::to_string(e) {
            text.push_str(&l);
            text.push('\n');
        }
    }
    text
}

fn append<'a>(f: &Path, events: impl Iterator<Item = &'a Event>) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(f)?;
    file.write_all(lines(events).as_bytes())
}

/// Replaces the file by the kept events (write, fsync, rename).
fn rewrite(f: &Path, events: &[Event]) -> std::io::Result<()> {
    let tmp = f.with_extension("jsonl.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(lines(events.iter()).as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, f)
}

impl Manager {
    /// Logged events with sequence number `since` or later.
    pub fn events(&self, since: u64) -> Vec<Event> {
        self.events.since(since)
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
                    self.events
                        .push(&state.to_ascii_lowercase(), &s.name, message);
                }
                last.insert(s.name.clone(), state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_go_on_after_a_reopen_and_a_torn_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let log = EventLog::open(Some(d.path()));
        log.push("clone-reset", "a", "one".into());
        log.push("merge-done", "b", "two".into());
        drop(log);
        // A crash in the middle of an append leaves half a line.
        let f = d.path().join(EVENTS_FILE);
        let mut text = std::fs::read_to_string(&f).unwrap();
        text.push_str("{\"seq\":3,\"ti");
        std::fs::write(&f, text).unwrap();
        let log = EventLog::open(Some(d.path()));
        assert_eq!(log.since(0).len(), 2);
        log.push("merge-failed", "c", "three".into());
        let seqs: Vec<u64> = log.since(2).iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3]);
        assert_eq!(log.since(3)[0].message, "three");
    }

    #[test]
    fn the_log_stays_bounded_in_memory_and_in_its_file() {
        let d = tempfile::tempdir().unwrap();
        let log = EventLog::open(Some(d.path()));
        for i in 0..KEEP + 5 {
            log.push("clone-reset", "a", format!("{i}"));
        }
        let kept = log.since(0);
        assert_eq!(kept.len(), KEEP + 5 - DROP);
        assert_eq!(kept.last().unwrap().seq, (KEEP + 5) as u64);
        drop(log);
        let reopened = EventLog::open(Some(d.path())).since(0);
        assert_eq!(reopened, kept);
    }
}
