//! Loop devices and file systems for the integration tests that need real block devices:
//! attached with `losetup` (as root), detached and unmounted on drop. Where the machine lacks
//! them the test skips, except in CI (`SNAPBLK_CI` set), where it fails.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Skips the calling test (returns false) when `ok` is false, outside CI; fails it in CI
/// (see tests/common/skip.rs; the including crate declares `mod common`).
pub fn require(what: &str, ok: bool) -> bool {
    crate::common::require("loop-device test", what, ok)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether loop devices can be attached here (root, losetup, /dev/loop-control).
pub fn loop_devices_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/loop-control").exists()
        && run(Command::new("losetup").arg("--version")).is_ok()
}

/// A loop device over a backing file; detached on drop.
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    /// Attaches a loop device to `backing` (a file of the wanted size), with logical sectors of
    /// `sector_size` bytes when given.
    pub fn attach(backing: &Path, sector_size: Option<u32>) -> LoopDev {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if let Some(s) = sector_size {
            cmd.args(["--sector-size", &s.to_string()]);
        }
        cmd.arg(backing);
        let dev = run(&mut cmd).expect("attach a loop device");
        LoopDev {
            path: PathBuf::from(dev),
        }
    }

    /// A loop device over a new sparse file `name` of `size` bytes in `dir`.
    pub fn new_in(dir: &Path, name: &str, size: u64, sector_size: Option<u32>) -> LoopDev {
        let backing = dir.join(name);
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size))
            .expect("create backing file");
        LoopDev::attach(&backing, sector_size)
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("loop device path")
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// An ext4 file system on a loop device with 4096-byte sectors, mounted on a temporary
/// directory: there, O_DIRECT I/O must be 4096-byte aligned (a 512-byte pwrite fails with
/// EINVAL). Unmounted and detached on drop.
pub struct AlignedFs {
    pub dir: PathBuf,
    dev: Option<LoopDev>,
    _parent: tempfile::TempDir,
}

impl AlignedFs {
    /// `None` (the test skips, or fails in CI) where loop devices, mkfs.ext4 or mount are
    /// missing.
    pub fn new(size: u64) -> Option<AlignedFs> {
        let tools = run(Command::new("mkfs.ext4").arg("-V")).is_ok();
        if !require(
            "root, loop devices and mkfs.ext4",
            loop_devices_available() && tools,
        ) {
            return None;
        }
        let parent = tempfile::tempdir().expect("tempdir");
        let dev = LoopDev::new_in(parent.path(), "fs.img", size, Some(4096));
        run(Command::new("mkfs.ext4").args(["-q", "-b", "4096", dev.as_str()])).expect("mkfs");
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        run(Command::new("mount").arg(&dev.path).arg(&dir)).expect("mount");
        Some(AlignedFs {
            dir,
            dev: Some(dev),
            _parent: parent,
        })
    }
}

impl Drop for AlignedFs {
    fn drop(&mut self) {
        // A daemon that just exited may still hold files here for a moment (an io_uring ring
        // puts its registered files after the process is gone): then detach the mount lazily,
        // and the loop device goes once the last file does (losetup -d sets autoclear).
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        drop(self.dev.take());
    }
}
