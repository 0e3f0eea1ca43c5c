//! Images, origins and COW files are locked while served: a second daemon, or an offline
//! `cow merge` against a served origin, is refused with a message naming the file and the
//! process holding it, and the first daemon keeps serving; `cow inspect` of a served COW reads
//! a live view and says so.

#[path = "support/bounded.rs"]
mod bounded;
mod common;

use std::path::Path;

use bounded::snapblk;
use common::{pattern, read, write, Daemon, MIB};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_second_serve_of_an_image_is_refused_naming_the_holder_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let img = p.join("vm.img");
    std::fs::write(&img, pattern(1, MIB as usize)).unwrap();
    let first = Daemon::image(&img, &p.join("a.sock"), &[]);
    let second = p.join("b.sock");
    for extra in [&[][..], &["--readonly"][..]] {
        let mut args = vec!["serve", "--socket", s(&second), "--image"];
        args.push(s(&img));
        args.extend_from_slice(extra);
        let out = snapblk(&args);
        assert!(!out.success, "a second daemon started");
        let err = &out.stderr;
        let holder = format!("locked for writing by pid {}", first.pid());
        assert!(
            err.contains(s(&img)) && err.contains("in use") && err.contains(&holder),
            "{err}"
        );
        assert!(err.contains("snapblk serve"), "the holder's command: {err}");
        assert!(
            !p.join("b.sock").exists(),
            "no socket for the refused daemon"
        );
    }
    // A graph origin on the same image through a link is refused too.
    std::os::unix::fs::symlink(&img, p.join("link.img")).unwrap();
    let toml = format!(
        "[[origin]]\nname = \"o\"\nimage = \"{}\"\n",
        p.join("link.img").display()
    );
    std::fs::write(p.join("g.toml"), toml).unwrap();
    let out = snapblk(&["serve", "--config", s(&p.join("g.toml"))]);
    assert!(!out.success);
    let err = &out.stderr;
    assert!(
        err.contains("link.img") && err.contains(&format!("by pid {}", first.pid())),
        "{err}"
    );
    // The first daemon serves on.
    write(&p.join("a.sock"), 8, &pattern(2, 4096));
    assert!(read(&p.join("a.sock"), 8, 4096) == pattern(2, 4096));
    first.stop();
    // Once it is gone the image is free.
    let again = Daemon::image(&img, &p.join("b.sock"), &["--readonly"]);
    again.stop();
}

fn graph(p: &Path) -> Daemon {
    let d = p.display();
    let toml = format!(
        r#"
[[origin]]
name = "base"
image = "{d}/base.img"

[[snapshot]]
name = "s1"
origin = "base"
cow = "{d}/s1.cow"
store = "P"
chunk_size = "4K"
create_size = "4M"

[[export]]
node = "base"
socket = "{d}/base.sock"

[[export]]
node = "s1"
socket = "{d}/s1.sock"
"#
    );
    std::fs::write(p.join("graph.toml"), toml).unwrap();
    Daemon::start(
        &["--config", s(&p.join("graph.toml"))],
        &[&p.join("base.sock"), &p.join("s1.sock")],
        &p.join("daemon.log"),
    )
}

#[test]
fn cow_merge_against_a_served_origin_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("base.img"), pattern(3, 2 * MIB as usize)).unwrap();
    let d = graph(p);
    // Exceptions a merge would copy into the origin.
    write(&p.join("s1.sock"), 0, &pattern(4, 65536));
    let before = (
        std::fs::read(p.join("base.img")).unwrap(),
        std::fs::read(p.join("s1.cow")).unwrap(),
    );
    let out = snapblk(&[
        "cow",
        "merge",
        "--origin",
        s(&p.join("base.img")),
        s(&p.join("s1.cow")),
    ]);
    assert!(!out.success, "merged a served origin");
    let err = &out.stderr;
    assert!(
        err.contains("base.img") && err.contains(&format!("locked for writing by pid {}", d.pid())),
        "{err}"
    );
    let after = (
        std::fs::read(p.join("base.img")).unwrap(),
        std::fs::read(p.join("s1.cow")).unwrap(),
    );
    assert!(before == after, "neither file changed");
    // The daemon still serves both views.
    assert!(read(&p.join("s1.sock"), 0, 65536) == pattern(4, 65536));
    assert!(read(&p.join("base.sock"), 0, 4096)[..] == pattern(3, 4096)[..]);
    d.stop();
    // Offline, the merge runs.
    let out = snapblk(&[
        "cow",
        "merge",
        "--origin",
        s(&p.join("base.img")),
        s(&p.join("s1.cow")),
    ]);
    assert!(out.success, "{}", &out.stderr);
    let merged = std::fs::read(p.join("base.img")).unwrap();
    assert!(merged[..65536] == pattern(4, 65536)[..]);
}

#[test]
fn cow_inspect_of_a_served_cow_reads_a_live_view_and_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("base.img"), pattern(5, 2 * MIB as usize)).unwrap();
    let d = graph(p);
    write(&p.join("s1.sock"), 0, &pattern(6, 3 * 4096));
    let before = std::fs::read(p.join("s1.cow")).unwrap();
    let out = snapblk(&["cow", "inspect", s(&p.join("s1.cow"))]);
    assert!(out.success, "{}", &out.stderr);
    let text = &out.stdout;
    assert!(text.contains("exceptions:       3"), "{text}");
    assert!(
        text.contains(&format!("locked for writing by pid {}", d.pid()))
            && text.contains("a live view"),
        "{text}"
    );
    assert!(std::fs::read(p.join("s1.cow")).unwrap() == before);
    d.stop();
    // Unserved, the report has no note.
    let out = snapblk(&["cow", "inspect", s(&p.join("s1.cow"))]);
    let text = &out.stdout;
    assert!(out.success && !text.contains("note:"), "{text}");
}

#[test]
fn a_files_lock_goes_with_its_node_so_it_can_be_added_again_at_once() {
    use snapblk::manager::Manager;
    use snapblk::model::{ByteSize, ExportSpec, GraphConfig, OriginSpec, SnapshotSpec, StoreType};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("base.img"), pattern(7, 2 * MIB as usize)).unwrap();
    let origin = OriginSpec {
        name: "base".into(),
        image: p.join("base.img"),
        copy_cap: None,
        direct: false,
        ceph: Default::default(),
    };
    let snap = SnapshotSpec {
        name: "s".into(),
        origin: "base".into(),
        cow: p.join("s.cow"),
        store: StoreType::P,
        chunk_size: ByteSize(4096),
        create_size: Some(ByteSize(4 * MIB)),
        discard_zeroes_cow: false,
        discard_passdown_origin: false,
        resettable: true,
        preallocate: false,
    };
    let export = |node: &str| ExportSpec {
        node: node.into(),
        socket: p.join(format!("{node}.sock")),
        readonly: false,
        num_queues: 2,
        queue_size: 256,
        serial: None,
        logical_block_size: 512,
        writethrough: false,
        shared_writable: false,
        qos: Default::default(),
        qos_group: None,
    };
    let cfg = GraphConfig {
        origins: vec![origin.clone()],
        snapshots: vec![],
        exports: vec![],
        qos_groups: Vec::new(),
    };
    let m = Manager::start(cfg, None, vec![]).unwrap();
    for round in 0..3u64 {
        m.snapshot_create(vec![snap.clone()], true).unwrap();
        m.export_add(export("s")).unwrap();
        // Whole-chunk writes run on the queue's io_uring, which registers the COW's descriptor.
        write(&p.join("s.sock"), 0, &pattern(10 + round, 65536));
        m.export_remove(&p.join("s.sock")).unwrap();
        // The COW files stay: the next round opens (and locks) the same files again.
        m.snapshot_delete("s", false, false).unwrap();
    }
    m.origin_remove("base", false).unwrap();
    m.origin_add(origin).unwrap();
    m.stop_all();
}
