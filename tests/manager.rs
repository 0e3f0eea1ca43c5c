//! The runtime graph manager: live snapshots of served origins, exports added and removed while
//! serving, the state directory restoring everything, merges in the background, refusals.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, pattern, read, write, MIB};
use snapblk::frontend::BlkStatus;
use snapblk::manager::Manager;
use snapblk::model::{ByteSize, ExportSpec, GraphConfig, OriginSpec, SnapshotSpec, StoreType};

fn origin(p: &Path, name: &str) -> OriginSpec {
    OriginSpec {
        name: name.into(),
        image: p.join(format!("{name}.img")),
        copy_cap: None,
        direct: false,
        ceph: Default::default(),
    }
}

fn snap(p: &Path, origin: &str, name: &str) -> SnapshotSpec {
    SnapshotSpec {
        name: name.into(),
        origin: origin.into(),
        cow: p.join(format!("{name}.cow")),
        store: StoreType::P,
        chunk_size: ByteSize(4096),
        create_size: Some(ByteSize(8 * MIB)),
        discard_zeroes_cow: false,
        discard_passdown_origin: false,
        resettable: false,
        preallocate: false,
    }
}

fn export(p: &Path, node: &str) -> ExportSpec {
    ExportSpec {
        node: node.into(),
        socket: p.join(format!("{node}.sock")),
        readonly: false,
        num_queues: 1,
        queue_size: 256,
        serial: None,
        logical_block_size: 512,
        writethrough: false,
        shared_writable: false,
        qos: Default::default(),
        qos_group: None,
    }
}

#[test]
fn live_snapshots_exports_and_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let state = p.join("state");
    let a0 = pattern(1, 4 * MIB as usize);
    let b0 = pattern(2, 4 * MIB as usize);
    std::fs::write(p.join("a.img"), &a0).unwrap();
    std::fs::write(p.join("b.img"), &b0).unwrap();
    let cfg = GraphConfig {
        origins: vec![origin(p, "a"), origin(p, "b")],
        snapshots: vec![],
        exports: vec![export(p, "a"), export(p, "b")],
        qos_groups: Vec::new(),
    };
    let m = Manager::start(cfg, Some(state.clone()), vec![]).unwrap();
    write(&p.join("a.sock"), 0, &pattern(3, 8192));
    // One consistent point across both disks.
    let pauses = m
        .snapshot_create(vec![snap(p, "a", "a1"), snap(p, "b", "b1")], false)
        .unwrap();
    assert_eq!(pauses.len(), 2);
    m.export_add(export(p, "a1")).unwrap();
    m.export_add(export(p, "b1")).unwrap();
    write(&p.join("a.sock"), 0, &pattern(4, 8192));
    write(&p.join("b.sock"), 8, &pattern(5, 4096));
    assert!(
        read(&p.join("a1.sock"), 0, 8192) == pattern(3, 8192),
        "a1 is a at the snapshot"
    );
    assert!(
        read(&p.join("b1.sock"), 8, 4096)[..] == b0[4096..8192],
        "b1 is b at the snapshot"
    );

    // Refusals change nothing.
    assert_eq!(
        m.origin_remove("a", false).unwrap_err().code(),
        "has_snapshots"
    );
    assert_eq!(
        m.snapshot_delete("a1", false, false).unwrap_err().code(),
        "exported"
    );
    let mut rel = export(p, "a1");
    rel.socket = "rel.sock".into();
    assert_eq!(m.export_add(rel).unwrap_err().code(), "invalid_argument");
    let mut clash = snap(p, "a", "a2");
    clash.cow = p.join("b.img");
    assert_eq!(
        m.snapshot_create(vec![clash], false).unwrap_err().code(),
        "in_use"
    );
    assert_eq!(m.export_add(export(p, "a1")).unwrap_err().code(), "in_use");
    assert_eq!(
        m.snapshot_create(vec![snap(p, "a", "a1")], false)
            .unwrap_err()
            .code(),
        "exists"
    );

    m.stop_all();
    m.graph().flush_all().unwrap();
    drop(m);
    for s in ["a", "b", "a1", "b1"] {
        assert!(
            !p.join(format!("{s}.sock")).exists(),
            "{s}.sock removed at stop"
        );
    }

    // Restart from the state directory alone.
    let m = Manager::start(GraphConfig::default(), Some(state), vec![]).unwrap();
    assert!(read(&p.join("a1.sock"), 0, 8192) == pattern(3, 8192));
    assert!(read(&p.join("a.sock"), 0, 8192) == pattern(4, 8192));
    assert!(read(&p.join("b1.sock"), 8, 4096)[..] == b0[4096..8192]);
    m.export_remove(&p.join("b1.sock")).unwrap();
    m.snapshot_delete("b1", false, false).unwrap();
    m.stop_all();
}

#[test]
fn merge_runs_in_the_background_and_the_origin_takes_the_snapshot_view() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let a0 = pattern(11, 4 * MIB as usize);
    std::fs::write(p.join("a.img"), &a0).unwrap();
    let cfg = GraphConfig {
        origins: vec![origin(p, "a")],
        snapshots: vec![snap(p, "a", "s")],
        exports: vec![export(p, "a"), export(p, "s")],
        qos_groups: Vec::new(),
    };
    let m: Arc<Manager> = Manager::start(cfg, None, vec![]).unwrap();
    // The snapshot diverges: its own writes, and origin writes it does not see.
    write(&p.join("s.sock"), 0, &pattern(12, 65536));
    write(&p.join("a.sock"), 1024, &pattern(13, 65536));
    let want: Vec<u8> = read(&p.join("s.sock"), 0, (MIB) as u32);
    let st = m.merge_start("s").unwrap();
    assert_eq!(st.state, "running");
    assert_eq!(m.merge_start("s").unwrap_err().code(), "merge_in_progress");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = m.merge_status().unwrap();
        if st.state == "done" {
            break;
        }
        assert_ne!(st.state, "failed", "{}", st.message);
        assert!(Instant::now() < deadline, "merge did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        read(&p.join("a.sock"), 0, MIB as u32) == want,
        "origin == snapshot view"
    );
    assert!(m.snapshot_specs().is_empty(), "merged snapshot removed");
    assert!(m.events(0).iter().any(|e| e.kind == "merge-done"));
    m.stop_all();
}

#[test]
fn clone_reset_drops_changes_while_connected_and_is_refused_once_the_origin_changed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let a0 = pattern(21, 4 * MIB as usize);
    std::fs::write(p.join("a.img"), &a0).unwrap();
    let cfg = GraphConfig {
        origins: vec![origin(p, "a")],
        snapshots: vec![snap(p, "a", "c")],
        exports: vec![export(p, "a"), export(p, "c")],
        qos_groups: Vec::new(),
    };
    let m = Manager::start(cfg, Some(p.join("state")), vec![]).unwrap();
    // The clone's guest stays connected across the reset.
    let mut fe = connect(&p.join("c.sock"));
    let mut q = fe.blk_queue(0, 2, 65536).unwrap();
    assert_eq!(
        q.write(0, &pattern(22, 65536)).unwrap().status,
        BlkStatus::Ok
    );
    assert!(q.read(0, 65536).unwrap().1 == pattern(22, 65536));
    m.clone_reset("c").unwrap();
    let said = m.events(0).last().unwrap().message.clone();
    assert!(!said.contains("anchor"), "no anchor was involved: {said}");
    let (r, after) = q.read(0, 65536).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(
        after[..] == a0[..65536],
        "the clone is back at its creation state"
    );
    assert_eq!(
        q.write(128, &pattern(23, 4096)).unwrap().status,
        BlkStatus::Ok
    );
    assert!(
        q.read(128, 4096).unwrap().1 == pattern(23, 4096),
        "and still writable"
    );
    drop(q);
    drop(fe);
    // Once the origin has been written (a copy-out into the clone), a reset is refused.
    write(&p.join("a.sock"), 1024, &pattern(24, 4096));
    m.poll_health(&mut Default::default());
    assert_eq!(m.clone_reset("c").unwrap_err().code(), "invalid_argument");
    assert_eq!(m.clone_reset("nope").unwrap_err().code(), "not_found");
    m.stop_all();
}

#[test]
fn a_resettable_clone_resets_after_origin_writes_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let state = p.join("state");
    let a0 = pattern(31, 4 * MIB as usize);
    std::fs::write(p.join("a.img"), &a0).unwrap();
    let cfg = GraphConfig {
        origins: vec![origin(p, "a")],
        snapshots: vec![],
        exports: vec![export(p, "a")],
        qos_groups: Vec::new(),
    };
    let m = Manager::start(cfg.clone(), Some(state.clone()), vec![]).unwrap();
    let c = SnapshotSpec {
        resettable: true,
        ..snap(p, "a", "c")
    };
    m.snapshot_create(vec![c], false).unwrap();
    assert!(
        p.join("c.cow.anchor").exists(),
        "the anchor's COW is created"
    );
    m.export_add(export(p, "c")).unwrap();
    let mut fe = connect(&p.join("c.sock"));
    let mut q = fe.blk_queue(0, 2, 65536).unwrap();
    assert_eq!(
        q.write(0, &pattern(32, 65536)).unwrap().status,
        BlkStatus::Ok
    );
    // The origin changes chunks the clone wrote (no copy-out into the clone) and others.
    write(&p.join("a.sock"), 64, &pattern(33, 32768));
    write(&p.join("a.sock"), 4096, &pattern(34, 8192));
    m.poll_health(&mut Default::default());
    assert_eq!(
        m.clone_reset("c").unwrap(),
        10,
        "8 + 2 changed chunks restored"
    );
    let (r, after) = q.read(0, 65536).unwrap();
    assert_eq!(r.status, BlkStatus::Ok);
    assert!(after[..] == a0[..65536], "the clone's own writes are gone");
    assert_eq!(
        q.write(8, &pattern(35, 4096)).unwrap().status,
        BlkStatus::Ok
    );
    drop(q);
    drop(fe);
    let mut want = a0.clone();
    want[4096..8192].copy_from_slice(&pattern(35, 4096));
    assert!(
        read(&p.join("c.sock"), 0, 4 * MIB as u32) == want,
        "the clone is back at its creation state, then written"
    );
    assert!(m
        .events(0)
        .iter()
        .any(|e| e.kind == "clone-reset" && e.node == "c"));
    m.stop_all();
    drop(m);
    // After a restart the anchor is loaded again from its COW.
    let m = Manager::start(cfg, Some(state), vec![]).unwrap();
    write(&p.join("a.sock"), 2048, &pattern(36, 4096));
    m.clone_reset("c").unwrap();
    assert!(read(&p.join("c.sock"), 0, 4 * MIB as u32) == a0);
    m.snapshot_delete("c", true, false).unwrap();
    m.stop_all();
}

#[test]
fn a_cow_that_holds_a_store_is_refused_unless_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("a.img"), pattern(21, 4 * MIB as usize)).unwrap();
    let cfg = GraphConfig {
        origins: vec![origin(p, "a")],
        snapshots: vec![],
        exports: vec![export(p, "a")],
        qos_groups: Vec::new(),
    };
    let m = Manager::start(cfg, None, vec![]).unwrap();
    m.snapshot_create(vec![snap(p, "a", "s")], false).unwrap();
    write(&p.join("a.sock"), 0, &pattern(22, 8192));
    m.snapshot_delete("s", false, false).unwrap();
    let cow = std::fs::read(p.join("s.cow")).unwrap();
    // The COW file stays, with its table: taken again, it is refused, and left as it was.
    let e = m
        .snapshot_create(vec![snap(p, "a", "s")], false)
        .unwrap_err();
    assert_eq!(e.code(), "in_use");
    let msg = e.to_string();
    assert!(
        msg.contains("already holds a snapshot store (2 exceptions") && msg.contains("--adopt"),
        "{msg}"
    );
    assert!(std::fs::read(p.join("s.cow")).unwrap() == cow);
    assert!(!m.graph().contains("s"));
    // Adopted, its exceptions apply: the snapshot reads the origin as it was.
    m.snapshot_create(vec![snap(p, "a", "s")], true).unwrap();
    m.export_add(export(p, "s")).unwrap();
    assert!(read(&p.join("s.sock"), 0, 8192) == pattern(21, 4 * MIB as usize)[..8192]);
    m.stop_all();
}

#[test]
fn config_edits_the_state_wins_over_are_reported_and_applied_on_request() {
    use snapblk::manager::StartOptions;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let state = p.join("state");
    std::fs::write(p.join("a.img"), pattern(31, 4 * MIB as usize)).unwrap();
    let file = p.join("graph.toml");
    let cfg = GraphConfig {
        origins: vec![origin(p, "a")],
        snapshots: vec![snap(p, "a", "s")],
        exports: vec![export(p, "a")],
        qos_groups: Vec::new(),
    };
    let start = |cfg: &GraphConfig, apply: bool| {
        Manager::start_with(StartOptions {
            config: Some((file.clone(), cfg.clone())),
            state_dir: Some(state.clone()),
            reserved: vec![],
            apply_config: apply,
        })
        .unwrap()
    };
    let m = start(&cfg, false);
    assert!(m.pending_config().is_empty());
    // Made live: not an edit of the file.
    m.export_add(export(p, "s")).unwrap();
    m.stop_all();
    drop(m);

    // The file gains an export and loses the snapshot's... nothing: only the origin export
    // becomes read-only.
    let mut edited = cfg.clone();
    edited.exports[0].readonly = true;
    let m = start(&edited, false);
    assert_eq!(
        m.pending_config(),
        ["change export ".to_owned() + &p.join("a.sock").display().to_string()]
    );
    assert!(
        m.exports().iter().all(|(e, _, _)| !e.readonly),
        "the state wins"
    );
    assert!(
        m.exports().iter().any(|(e, _, _)| e.node == "s"),
        "live export kept"
    );
    m.stop_all();
    drop(m);

    let m = start(&edited, true);
    assert!(m.pending_config().is_empty());
    let exports = m.exports();
    assert!(exports.iter().any(|(e, _, _)| e.node == "a" && e.readonly));
    assert!(
        exports.iter().any(|(e, _, _)| e.node == "s"),
        "live export kept"
    );
    m.stop_all();
    drop(m);
    // Applied: the same file has nothing left to report.
    let m = start(&edited, false);
    assert!(m.pending_config().is_empty());
    m.stop_all();
}

#[test]
fn why_a_snapshot_went_invalid_is_in_its_status_and_events() {
    use snapblk::control::protocol::{Request, Response, StatusArgs};
    use snapblk::control::{ControlHandler, ManagerControl};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("a.img"), pattern(41, 4 * MIB as usize)).unwrap();
    let mut tiny = snap(p, "a", "t");
    tiny.create_size = Some(ByteSize(3 * 4096));
    let cfg = GraphConfig {
        origins: vec![origin(p, "a")],
        snapshots: vec![tiny],
        exports: vec![export(p, "a")],
        qos_groups: Vec::new(),
    };
    let m = Manager::start(cfg, None, vec![]).unwrap();
    write(&p.join("a.sock"), 0, &pattern(42, 3 * 4096));
    let mut health = std::collections::BTreeMap::new();
    m.poll_health(&mut health);
    let control = ManagerControl(m.clone());
    let Ok(Response::Status(st)) = control.handle(Request::Status(StatusArgs {
        node: Some("t".into()),
    })) else {
        panic!("status")
    };
    let reason = st.nodes[0].reason.clone().expect("a reason");
    assert!(
        reason.contains("COW full") && reason.contains("origin chunk 1"),
        "{reason}"
    );
    let ev = m.events(0);
    assert!(
        ev.iter()
            .any(|e| e.kind == "invalid" && e.message.contains("COW full")),
        "{ev:?}"
    );
    m.stop_all();
}
