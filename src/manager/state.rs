//! The state directory's `graph.json`: what survives a restart, read and validated like any
//! other input (a bad file is a clear error naming it, never a panic later), written atomically,
//! and compared with the config file so that edits to the file are reported, not silently lost.
//!
//! Compatibility: files of release 0.1.0 (no `version`) load unchanged; this release writes
//! `version` 2, or 3 when a QoS limit or group is set (a release that ignored them would serve
//! the disks unlimited, so older releases must refuse such a file). The JSON schema is manager/saved.rs, apart from the in-memory [`State`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::saved::SavedState;
use crate::model::{ExportSpec, GraphConfig, OriginSpec, QosGroupSpec, SnapshotSpec, StoreType};

/// The file in the state directory.
pub const STATE_FILE: &str = "graph.json";
/// The newest state version this release reads (0.1.0's files have none: version 1).
pub const STATE_VERSION: u32 = 3;
/// The version written when no QoS is set.
const PLAIN_STATE_VERSION: u32 = 2;

fn uses_qos(g: &GraphConfig) -> bool {
    !g.qos_groups.is_empty()
        || g.exports
            .iter()
            .any(|e| !e.qos.is_empty() || e.qos_group.is_some())
}

/// The version a state with `graph` and `applied` is written as.
fn written_version(graph: &GraphConfig, applied: Option<&GraphConfig>) -> u32 {
    if uses_qos(graph) || applied.is_some_and(uses_qos) {
        STATE_VERSION
    } else {
        PLAIN_STATE_VERSION
    }
}

/// Why a state file cannot be used.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot read the state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the state file {path} is not valid (truncated or edited?); move it away to start from the config file")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the state file {path} is invalid: {reason}; move it away to start from the config file"
    )]
    Invalid { path: PathBuf, reason: String },
    #[error("the state file {path} was written by a newer snapblk (state version {version}, this one reads up to {STATE_VERSION})")]
    TooNew { path: PathBuf, version: u32 },
    #[error("cannot write the state directory {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What survives a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The state version of the file it came from (1: release 0.1.0).
    pub version: u32,
    pub graph: GraphConfig,
    /// The snapshot being merged into its origin: saved before the merge's first run and kept
    /// until the merge is done (or failed: then retried), so that a restart resumes the merge
    /// before any export starts.
    pub merging: Option<String>,
    /// Why the merge in `merging` last failed.
    pub merge_failed: Option<String>,
    /// Snapshots whose origin was written since they were created (copy-outs happened): they
    /// can no longer be reset to their creation state.
    pub origin_written: BTreeSet<String>,
    /// The config file's graph as it was last applied, which tells edits made to the file from
    /// nodes created or removed over the control socket.
    pub applied_config: Option<GraphConfig>,
}

impl From<SavedState> for State {
    fn from(s: SavedState) -> State {
        State {
            version: s.version,
            graph: s.graph.into(),
            merging: s.merging,
            merge_failed: s.merge_failed,
            origin_written: s.origin_written,
            applied_config: s.applied_config.map(GraphConfig::from),
        }
    }
}

impl From<&State> for SavedState {
    fn from(s: &State) -> SavedState {
        SavedState {
            version: written_version(&s.graph, s.applied_config.as_ref()),
            graph: (&s.graph).into(),
            merging: s.merging.clone(),
            merge_failed: s.merge_failed.clone(),
            origin_written: s.origin_written.clone(),
            applied_config: s.applied_config.as_ref().map(Into::into),
        }
    }
}

impl State {
    /// A fresh state from a config file's graph.
    pub fn from_config(graph: GraphConfig, applied: bool) -> State {
        State {
            version: written_version(&graph, None),
            applied_config: applied.then(|| graph.clone()),
            graph,
            ..State::default()
        }
    }

    /// Reads and validates `<dir>/graph.json`; `None` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<State>, StateError> {
        let path = dir.join(STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let mut state: State = serde_json::from_slice::<SavedState>(&bytes)
            .map_err(|source| StateError::Parse {
                path: path.clone(),
                source,
            })?
            .into();
        if state.version > STATE_VERSION {
            return Err(StateError::TooNew {
                path,
                version: state.version,
            });
        }
        state
            .validate()
            .map_err(|reason| StateError::Invalid { path, reason })?;
        Ok(Some(state))
    }

    /// Checks the graph like a config file, and that the merge names a persistent snapshot.
    /// Drops what no longer refers to anything (names in `origin_written`, a stale failure).
    fn validate(&mut self) -> Result<(), String> {
        self.graph.validate()?;
        if let Some(m) = &self.merging {
            match self.graph.snapshots.iter().find(|s| &s.name == m) {
                None => return Err(format!("the merging snapshot {m:?} is not in the graph")),
                Some(s) if s.store == StoreType::N => {
                    return Err(format!(
                        "the merging snapshot {m:?} is transient (N), which cannot be merged"
                    ))
                }
                Some(_) => {}
            }
        } else {
            self.merge_failed = None;
        }
        let names: BTreeSet<&str> = self.graph.snapshots.iter().map(|s| &*s.name).collect();
        self.origin_written.retain(|n| names.contains(n.as_str()));
        if self
            .applied_config
            .as_ref()
            .is_some_and(|c| c.validate().is_err())
        {
            self.applied_config = None;
        }
        Ok(())
    }

    /// Writes the state atomically: temporary file, fsync, rename, fsync the directory.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: dir.to_owned(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&SavedState::from(self))
            .map_err(|e| err(std::io::Error::other(e)))?;
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let f = std::fs::File::create(&tmp).map_err(err)?;
        use std::io::Write;
        (&f).write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

/// One edit a config file holds that the saved graph does not have.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    AddOrigin(OriginSpec),
    ChangeOrigin(OriginSpec),
    RemoveOrigin(String),
    AddSnapshot(SnapshotSpec),
    ChangeSnapshot(SnapshotSpec),
    RemoveSnapshot(String),
    AddExport(ExportSpec),
    ChangeExport(ExportSpec),
    RemoveExport(PathBuf),
    SetQosGroup(QosGroupSpec),
    RemoveQosGroup(String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::AddOrigin(o) => write!(f, "add origin {} ({})", o.name, o.image.display()),
            Change::ChangeOrigin(o) => write!(f, "change origin {}", o.name),
            Change::RemoveOrigin(n) => write!(f, "remove origin {n}"),
            Change::AddSnapshot(s) => write!(f, "add snapshot {} of {}", s.name, s.origin),
            Change::ChangeSnapshot(s) => write!(f, "change snapshot {}", s.name),
            Change::RemoveSnapshot(n) => write!(f, "remove snapshot {n}"),
            Change::AddExport(e) => {
                write!(f, "add export of {} on {}", e.node, e.socket.display())
            }
            Change::ChangeExport(e) => write!(f, "change export {}", e.socket.display()),
            Change::RemoveExport(s) => write!(f, "remove export {}", s.display()),
            Change::SetQosGroup(g) => write!(f, "set QoS group {} ({})", g.name, g.qos.describe()),
            Change::RemoveQosGroup(n) => write!(f, "remove QoS group {n}"),
        }
    }
}

/// The edits in `file` relative to `base` (the file as last applied; without one, the saved
/// graph itself, whose extra nodes then count as created live), that `saved` does not already
/// have. Removals come first, then additions, each in dependency order.
pub fn changes(base: &GraphConfig, file: &GraphConfig, saved: &GraphConfig) -> Vec<Change> {
    let mut out = Vec::new();
    // Removed from the file since it was applied, and still in the saved graph.
    for e in &base.exports {
        let gone = !file.exports.iter().any(|x| x.socket == e.socket);
        if gone && saved.exports.iter().any(|x| x.socket == e.socket) {
            out.push(Change::RemoveExport(e.socket.clone()));
        }
    }
    for s in &base.snapshots {
        let gone = !file.snapshots.iter().any(|x| x.name == s.name);
        if gone && saved.snapshots.iter().any(|x| x.name == s.name) {
            out.push(Change::RemoveSnapshot(s.name.clone()));
        }
    }
    for o in &base.origins {
        let gone = !file.origins.iter().any(|x| x.name == o.name);
        if gone && saved.origins.iter().any(|x| x.name == o.name) {
            out.push(Change::RemoveOrigin(o.name.clone()));
        }
    }
    // Added to or changed in the file, where the saved graph differs.
    for q in &file.qos_groups {
        if saved.qos_groups.iter().find(|x| x.name == q.name) != Some(q) {
            out.push(Change::SetQosGroup(q.clone()));
        }
    }
    for o in &file.origins {
        match saved.origins.iter().find(|x| x.name == o.name) {
            None => out.push(Change::AddOrigin(o.clone())),
            Some(x) if x != o => out.push(Change::ChangeOrigin(o.clone())),
            Some(_) => {}
        }
    }
    for s in &file.snapshots {
        match saved.snapshots.iter().find(|x| x.name == s.name) {
            None => out.push(Change::AddSnapshot(s.clone())),
            Some(x) if x != s => out.push(Change::ChangeSnapshot(s.clone())),
            Some(_) => {}
        }
    }
    for e in &file.exports {
        match saved.exports.iter().find(|x| x.socket == e.socket) {
            None => out.push(Change::AddExport(e.clone())),
            Some(x) if x != e => out.push(Change::ChangeExport(e.clone())),
            Some(_) => {}
        }
    }
    // Groups go once their exports have left them.
    for q in &base.qos_groups {
        let gone = !file.qos_groups.iter().any(|x| x.name == q.name);
        if gone && saved.qos_groups.iter().any(|x| x.name == q.name) {
            out.push(Change::RemoveQosGroup(q.name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ByteSize;

    fn graph() -> GraphConfig {
        GraphConfig::from_toml(
            r#"
[[origin]]
name = "base"
image = "/i/base.img"
[[snapshot]]
name = "ci-1"
origin = "base"
cow = "/i/ci-1.cow"
[[export]]
node = "ci-1"
socket = "/run/ci-1.sock"
"#,
        )
        .unwrap()
    }

    #[test]
    fn a_file_edit_is_a_change_and_a_node_created_live_is_not() {
        let applied = graph();
        let mut saved = graph();
        // Created over the control socket: not in the file, not a change.
        saved.snapshots.push(SnapshotSpec {
            name: "live".into(),
            cow: "/i/live.cow".into(),
            ..saved.snapshots[0].clone()
        });
        let mut file = graph();
        file.exports[0].readonly = true;
        file.exports.push(ExportSpec {
            socket: "/run/base.sock".into(),
            node: "base".into(),
            ..file.exports[0].clone()
        });
        let c = changes(&applied, &file, &saved);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(matches!(&c[0], Change::ChangeExport(e) if e.readonly));
        assert!(matches!(&c[1], Change::AddExport(e) if e.node == "base"));
        // Removing the snapshot from the file removes it (and nothing created live).
        let mut file = graph();
        file.exports.clear();
        file.snapshots.clear();
        let c: Vec<String> = changes(&applied, &file, &saved)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(c, ["remove export /run/ci-1.sock", "remove snapshot ci-1"]);
        assert!(changes(&applied, &applied, &saved).is_empty());
    }

    fn write(dir: &Path, text: &str) {
        std::fs::write(dir.join(STATE_FILE), text).unwrap();
    }

    #[test]
    fn bad_state_files_are_clear_errors_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let mut s = State::from_config(graph(), true);
        s.save(d.path()).unwrap();
        let text = std::fs::read_to_string(d.path().join(STATE_FILE)).unwrap();
        assert_eq!(State::load(d.path()).unwrap(), Some(s.clone()));

        write(d.path(), &text[..text.len() / 2]);
        let e = State::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("graph.json") && e.contains("not valid"), "{e}");

        for (from, to, why) in [
            (
                "\"logical_block_size\": 512",
                "\"logical_block_size\": 0",
                "512 or 4096",
            ),
            (
                "\"logical_block_size\": 512",
                "\"logical_block_size\": 256",
                "512 or 4096",
            ),
            ("\"node\": \"ci-1\"", "\"node\": \"ghost\"", "unknown node"),
            (
                "\"origin\": \"base\"",
                "\"origin\": \"nope\"",
                "unknown origin",
            ),
            ("\"queue_size\": 256", "\"queue_size\": 0", "power of two"),
        ] {
            assert!(text.contains(from), "{from}");
            write(d.path(), &text.replacen(from, to, 1));
            let e = State::load(d.path()).unwrap_err().to_string();
            assert!(e.contains("graph.json") && e.contains(why), "{e}");
        }

        s.merging = Some("nope".into());
        s.save(d.path()).unwrap();
        let e = State::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("merging snapshot \"nope\""), "{e}");
        s.merging = None;
        s.graph.snapshots[0].store = StoreType::N;
        s.graph.snapshots[0].chunk_size = ByteSize(4096);
        s.merging = Some("ci-1".into());
        s.save(d.path()).unwrap();
        let e = State::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("transient"), "{e}");

        write(
            d.path(),
            &text.replacen("\"version\": 2", "\"version\": 9", 1),
        );
        let e = State::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("newer snapblk"), "{e}");
    }

    #[test]
    fn state_files_of_release_0_1_0_load() {
        let d = tempfile::tempdir().unwrap();
        for (file, merging) in [
            ("state-0.1.0.json", None),
            ("state-0.1.0-merging.json", Some("ci-1")),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(file);
            let text = std::fs::read_to_string(path).unwrap();
            write(d.path(), &text.replace("@DIR@", "/i"));
            let s = State::load(d.path()).unwrap().unwrap();
            assert_eq!(s.version, 1);
            assert_eq!(s.merging.as_deref(), merging);
            assert_eq!(
                (
                    s.graph.origins.len(),
                    s.graph.snapshots.len(),
                    s.graph.exports.len()
                ),
                (1, 2, 2)
            );
            assert!(s.graph.snapshots[0].resettable);
            assert_eq!(s.applied_config, None);
            assert_eq!(s.origin_written.len(), usize::from(merging.is_some()));
        }
    }
    #[test]
    fn a_file_round_trips_and_fields_a_newer_release_adds_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut state = State::from_config(graph(), true);
        state.merging = Some("ci-1".into());
        state.origin_written.insert("ci-1".into());
        state.save(d.path()).unwrap();
        assert_eq!(State::load(d.path()).unwrap(), Some(state.clone()));
        // The same version with a field at every level this release does not know.
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join(STATE_FILE)).unwrap()).unwrap();
        json["future"] = 1.into();
        json["graph"]["future"] = 1.into();
        for table in ["origin", "snapshot", "export"] {
            json["graph"][table][0]["future"] = 1.into();
        }
        write(d.path(), &json.to_string());
        assert_eq!(State::load(d.path()).unwrap(), Some(state));
        // A config file stays strict: an unknown key there is a typo.
        let toml = graph()
            .to_toml()
            .replace("[[origin]]", "[[origin]]\nfuture = 1");
        assert!(GraphConfig::from_toml(&toml).is_err());
    }
}
