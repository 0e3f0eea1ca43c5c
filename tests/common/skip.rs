//! When a test may skip: a missing prerequisite (a tool, /dev/shm, loop devices) skips the test
//! only outside CI. `test.sh` installs every tool and sets `SNAPBLK_CI=1`, so there a missing
//! prerequisite fails the test; elsewhere the skip is printed and, when `SNAPBLK_SKIP_LOG`
//! names a file, appended to it, so the run's summary counts skips separately from passes.
//! Shared by the integration tests (tests/common) and the unit tests (src/lib.rs).

use std::io::Write;

/// True when `ok`; otherwise fails the calling test in CI, or records a skip of `test` for want
/// of `what` and returns false (the caller returns at once).
pub fn require(test: &str, what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var_os("SNAPBLK_CI").is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test}: {what} is required in CI (SNAPBLK_CI=1), where test.sh installs it");
    }
    let line = format!("SKIP {test}: {what}");
    // Straight to stderr: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(log) = std::env::var_os("SNAPBLK_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    false
}

/// Whether `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
