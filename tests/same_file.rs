//! Files are compared by identity, not by path: a COW that is a link to an origin image, a
//! second origin on an image through a link (or the same path twice), a COW that is another
//! snapshot's or an anchor's, is refused with a message naming both paths, in a config file
//! and over the control plane alike, and neither file is written.

#[path = "support/bounded.rs"]
mod bounded;
mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{pattern, MIB};
use snapblk::graph::Graph;
use snapblk::manager::Manager;
use snapblk::model::{ByteSize, GraphConfig, OriginSpec, SnapshotSpec, StoreType};

/// Runs `snapblk serve --config CFG`, which must fail; returns its stderr.
fn serve_must_fail(cfg: &Path) -> String {
    let ran = bounded::snapblk(&[OsStr::new("serve"), OsStr::new("--config"), cfg.as_os_str()]);
    assert!(!ran.success, "the daemon exited 0");
    ran.stderr
}

/// An origin image whose first 64 KiB are zero (what a blank COW looks like) and the rest a
/// pattern.
fn origin_image(path: &Path) -> Vec<u8> {
    let mut data = pattern(1, 2 * MIB as usize);
    data[..65536].fill(0);
    std::fs::write(path, &data).unwrap();
    data
}

fn origin(name: &str, image: PathBuf) -> OriginSpec {
    OriginSpec {
        name: name.into(),
        image,
        copy_cap: None,
        direct: false,
        ceph: Default::default(),
    }
}

fn snap(name: &str, origin: &str, cow: PathBuf) -> SnapshotSpec {
    SnapshotSpec {
        name: name.into(),
        origin: origin.into(),
        cow,
        store: StoreType::P,
        chunk_size: ByteSize(4096),
        create_size: Some(ByteSize(4 * MIB)),
        discard_zeroes_cow: false,
        discard_passdown_origin: false,
        resettable: false,
        preallocate: false,
    }
}

fn toml(cfg: &GraphConfig) -> String {
    cfg.to_toml()
}

#[test]
fn a_cow_that_links_to_the_origin_image_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let base = p.join("base.img");
    let data = origin_image(&base);
    std::os::unix::fs::symlink(&base, p.join("sym.cow")).unwrap();
    std::fs::hard_link(&base, p.join("hard.cow")).unwrap();
    for cow in ["sym.cow", "hard.cow"] {
        let cfg = GraphConfig {
            origins: vec![origin("base", base.clone())],
            snapshots: vec![snap("s1", "base", p.join(cow))],
            exports: vec![],
            qos_groups: Vec::new(),
        };
        let file = p.join(format!("{cow}.toml"));
        std::fs::write(&file, toml(&cfg)).unwrap();
        let err = serve_must_fail(&file);
        assert!(
            err.contains(&format!("COW file {}", p.join(cow).display()))
                && err.contains(&format!("the same file as {}", base.display()))
                && err.contains("the image of origin \"base\""),
            "{err}"
        );
        assert!(
            std::fs::read(&base).unwrap() == data,
            "the origin is untouched"
        );
    }
}

#[test]
fn two_origins_on_one_image_in_a_config_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let a = p.join("a.img");
    let data = origin_image(&a);
    std::os::unix::fs::symlink(&a, p.join("sym.img")).unwrap();
    std::fs::hard_link(&a, p.join("hard.img")).unwrap();
    for second in ["a.img", "sym.img", "hard.img"] {
        let cfg = GraphConfig {
            origins: vec![origin("a", a.clone()), origin("b", p.join(second))],
            snapshots: vec![],
            exports: vec![],
            qos_groups: Vec::new(),
        };
        let file = p.join(format!("{second}.toml"));
        std::fs::write(&file, toml(&cfg)).unwrap();
        let err = serve_must_fail(&file);
        assert!(
            err.contains(&format!("origin image {}", p.join(second).display()))
                && err.contains(&format!("the same file as {}", a.display()))
                && err.contains("the image of origin \"a\""),
            "{err}"
        );
        assert!(std::fs::read(&a).unwrap() == data);
    }
}

#[test]
fn the_control_plane_refuses_linked_origins_cows_and_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let base = p.join("base.img");
    let data = origin_image(&base);
    let cfg = GraphConfig {
        origins: vec![origin("base", base.clone())],
        snapshots: vec![snap("s1", "base", p.join("s1.cow"))],
        exports: vec![],
        qos_groups: Vec::new(),
    };
    let m = Manager::start(cfg, Some(p.join("state")), vec![]).unwrap();
    let s1 = std::fs::read(p.join("s1.cow")).unwrap();

    std::fs::hard_link(&base, p.join("hard.img")).unwrap();
    let e = m
        .origin_add(origin("again", p.join("hard.img")))
        .unwrap_err();
    assert!(
        e.to_string().contains("hard.img") && format!("{e:?}").contains("base.img"),
        "{e:?}"
    );

    // A new snapshot's COW: a link to the origin image, or to another snapshot's COW.
    std::os::unix::fs::symlink(&base, p.join("sym.cow")).unwrap();
    std::os::unix::fs::symlink(p.join("s1.cow"), p.join("s1-link.cow")).unwrap();
    for (cow, other) in [("sym.cow", "base.img"), ("s1-link.cow", "s1.cow")] {
        let e = m
            .snapshot_create(vec![snap("s2", "base", p.join(cow))], false)
            .unwrap_err();
        let chain = format!("{e}: {:?}", std::error::Error::source(&e));
        assert!(chain.contains(cow) && chain.contains(other), "{chain}");
    }
    // A resettable snapshot whose anchor would be the origin image.
    std::os::unix::fs::symlink(&base, p.join("s3.cow.anchor")).unwrap();
    let mut s3 = snap("s3", "base", p.join("s3.cow"));
    s3.resettable = true;
    let e = m.snapshot_create(vec![s3], false).unwrap_err();
    let chain = format!("{e}: {:?}", std::error::Error::source(&e));
    assert!(chain.contains("s3.cow.anchor"), "{chain}");
    // Two snapshots in one request on one COW file.
    std::fs::write(p.join("pair.cow"), vec![0u8; 4 * MIB as usize]).unwrap();
    std::fs::hard_link(p.join("pair.cow"), p.join("pair-link.cow")).unwrap();
    std::fs::write(p.join("other.img"), vec![0u8; 2 * MIB as usize]).unwrap();
    m.origin_add(origin("other", p.join("other.img"))).unwrap();
    let e = m
        .snapshot_create(
            vec![
                snap("x", "base", p.join("pair.cow")),
                snap("y", "other", p.join("pair-link.cow")),
            ],
            false,
        )
        .unwrap_err();
    let chain = format!("{e}: {:?}", std::error::Error::source(&e));
    assert!(chain.contains("pair"), "{chain}");

    assert!(
        std::fs::read(&base).unwrap() == data,
        "the origin is untouched"
    );
    assert!(
        std::fs::read(p.join("s1.cow")).unwrap() == s1,
        "s1's COW is untouched"
    );
    assert_eq!(m.snapshot_specs().len(), 1, "no snapshot was added");
    m.stop_all();
}

#[test]
fn check_new_file_names_the_file_the_graph_holds() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let base = p.join("base.img");
    origin_image(&base);
    let g = Graph::build(&GraphConfig {
        origins: vec![origin("base", base.clone())],
        snapshots: vec![snap("s1", "base", p.join("s1.cow"))],
        exports: vec![],
        qos_groups: Vec::new(),
    })
    .unwrap();
    std::os::unix::fs::symlink(p.join("s1.cow"), p.join("link")).unwrap();
    let e = g.check_new_file("COW file", &p.join("link")).unwrap_err();
    assert!(e.in_use(), "{e:?}");
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        chain.contains("link") && chain.contains("the COW file of snapshot \"s1\""),
        "{chain}"
    );
    assert!(g.check_new_file("COW file", &p.join("new.cow")).is_ok());
    std::fs::write(p.join("other.img"), [0u8; 512]).unwrap();
    assert!(g.check_new_file("image", &p.join("other.img")).is_ok());
}
