//! `snapblk generate man|completions`: the packaging inputs come from the clap definition, and
//! the subcommand stays out of the user-facing help.

use std::process::Command;

fn snapblk(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_snapblk"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snapblk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn man_pages_cover_every_subcommand_and_the_main_page_has_its_extra_sections() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    snapblk(&["generate", "man", "--out", out.to_str().unwrap()]);
    for page in [
        "snapblk.1",
        "snapblk-serve.1",
        "snapblk-snapshot-create.1",
        "snapblk-stats.1",
    ] {
        assert!(out.join(page).exists(), "no {page}");
    }
    assert!(
        !out.join("snapblk-generate.1").exists(),
        "hidden commands get no page"
    );
    let main = std::fs::read_to_string(out.join("snapblk.1")).unwrap();
    for section in [
        ".TH snapblk 1",
        ".SH SUBCOMMANDS",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH EXIT STATUS",
    ] {
        assert!(main.contains(section), "snapblk.1 lacks {section}");
    }
    let stats = std::fs::read_to_string(out.join("snapblk-stats.1")).unwrap();
    assert!(stats.contains("prometheus"), "{stats}");
}

#[test]
fn completions_are_written_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    snapblk(&["generate", "completions", "--out", out.to_str().unwrap()]);
    for f in ["snapblk.bash", "_snapblk", "snapblk.fish"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(text.contains("snapshot"), "{f} lacks the subcommands");
    }
    let bash = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p snapblk",
            out.join("snapblk.bash").display()
        ))
        .output()
        .unwrap();
    assert!(
        bash.status.success(),
        "{}",
        String::from_utf8_lossy(&bash.stderr)
    );
}

#[test]
fn generate_is_hidden_from_help() {
    let help = String::from_utf8(snapblk(&["--help"]).stdout).unwrap();
    assert!(
        help.contains("serve") && !help.contains("generate"),
        "{help}"
    );
}
