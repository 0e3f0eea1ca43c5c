//! The README's marked examples (`<!-- test: NAME -->` on the line before a code block) and a
//! temporary root standing in for the installed system, shared by the tests that run them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const README: &str = include_str!("../../README.md");

/// The marked code blocks of the README: (name, language, text).
pub fn blocks() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut lines = README.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- test: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        let lang = fence
            .strip_prefix("```")
            .unwrap_or_else(|| panic!("marker {name} is not followed by a code block"));
        let mut text = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        out.push((name.to_owned(), lang.to_owned(), text));
    }
    out
}

pub fn block(name: &str) -> String {
    blocks()
        .into_iter()
        .find(|(n, _, _)| n == name)
        .unwrap_or_else(|| panic!("no README block marked {name}"))
        .2
}

/// A temporary root standing in for the installed system's directories.
pub struct Root {
    dir: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Root {
        let r = Root {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in ["run", "lib/images", "etc"] {
            std::fs::create_dir_all(r.path().join(d)).unwrap();
        }
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `text` with the system paths, user and group moved into this root.
    pub fn localize(&self, text: &str) -> String {
        let t = self.path().display();
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        text.replace("/run/snapblk/", &format!("{t}/run/"))
            .replace("/var/lib/snapblk/", &format!("{t}/lib/"))
            .replace("/etc/snapblk/", &format!("{t}/etc/"))
            .replace("chown snapblk:snapblk ", &format!("chown {uid}:{gid} "))
            .replace("--control-group snapblk", &format!("--control-group {gid}"))
            .replace("--socket-group snapblk", &format!("--socket-group {gid}"))
    }

    /// `/var/lib/snapblk/images/NAME` in this root.
    pub fn image(&self, name: &str) -> PathBuf {
        self.path().join("lib/images").join(name)
    }

    pub fn run_dir(&self, instance: &str) -> PathBuf {
        self.path().join("run").join(instance)
    }

    /// Runs a README shell block with bash (`-e -u -o pipefail`), snapblk first on PATH.
    pub fn run_sh(&self, name: &str) -> Output {
        self.run_script(name, &block(name))
    }

    /// Runs `text` (localized) as [`Root::run_sh`] runs a block.
    pub fn run_script(&self, name: &str, text: &str) -> Output {
        let script = self.path().join(format!("{name}.sh"));
        std::fs::write(&script, self.localize(text)).unwrap();
        let bin = Path::new(env!("CARGO_BIN_EXE_snapblk")).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .args(["-eu", "-o", "pipefail"])
            .arg(&script)
            .current_dir(self.path())
            .env("PATH", path)
            .env_remove("SNAPBLK_CONTROL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "README block {name} failed ({}):\n{}\n--- stdout\n{}--- stderr\n{}",
            out.status,
            std::fs::read_to_string(&script).unwrap(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}
