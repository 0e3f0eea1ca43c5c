//! Ceph RBD images as block devices, through librbd loaded at run time (ffi.rs): `rbd:POOL/IMAGE`
//! opens an image read-write, `rbd:POOL/IMAGE@SNAP` an RBD snapshot read-only.
//!
//! An [`Rbd`] is a [`BlockDevice`] (synchronous calls, for the snapshot engine's helper threads)
//! and also takes asynchronous requests (aio.rs): many in flight, each completion handed to an
//! [`AioDone`] on librbd's completion thread, which the queues turn into an eventfd wakeup.
//! Connecting is bounded (`client_mount_timeout`, default 10 s) and so are operations
//! (`rados_osd_op_timeout`, default 30 s), so an unreachable or vanished cluster is an error,
//! not a hang; the cluster's `ceph.conf` may set either.

mod aio;
mod ffi;

use std::ffi::{c_char, CString};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use aio::{AioDone, AioOp};

use super::device::{check_range, BlockDevice};

/// The prefix that names an RBD image where a path is expected.
pub const PREFIX: &str = "rbd:";
/// Seconds `rados_connect` waits for the monitors, unless the cluster's conf says otherwise.
const CONNECT_TIMEOUT: &str = "10";
/// Seconds an OSD or monitor operation may take before it fails, likewise.
const OP_TIMEOUT: &str = "30";

/// Which image: `POOL/IMAGE[@SNAP]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdSpec {
    pub pool: String,
    pub image: String,
    pub snap: Option<String>,
}

impl RbdSpec {
    /// `Some` when `path` is written `rbd:POOL/IMAGE[@SNAP]`; an error when it starts `rbd:`
    /// but is not well formed.
    pub fn parse(path: &Path) -> Result<Option<RbdSpec>, String> {
        let Some(rest) = path.to_str().and_then(|s| s.strip_prefix(PREFIX)) else {
            return Ok(None);
        };
        let bad =
            || format!("{rest:?} is not an RBD image: write rbd:POOL/IMAGE or rbd:POOL/IMAGE@SNAP");
        let (pool, image) = rest.split_once('/').ok_or_else(bad)?;
        let (image, snap) = match image.split_once('@') {
            Some((i, s)) => (i, Some(s.to_owned())),
            None => (image, None),
        };
        let ok = |s: &str| !s.is_empty() && !s.contains(['/', '@', '\0']);
        if !ok(pool) || !ok(image) || snap.as_deref().is_some_and(|s| !ok(s)) {
            return Err(bad());
        }
        Ok(Some(RbdSpec {
            pool: pool.to_owned(),
            image: image.to_owned(),
            snap,
        }))
    }

    /// Whether `path` names an RBD image (well formed or not).
    pub fn is_rbd(path: &Path) -> bool {
        path.to_str().is_some_and(|s| s.starts_with(PREFIX))
    }
}

impl std::fmt::Display for RbdSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}/{}", self.pool, self.image)?;
        match &self.snap {
            Some(s) => write!(f, "@{s}"),
            None => Ok(()),
        }
    }
}

/// How to reach the cluster: all optional, as for the `rbd` command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CephOptions {
    /// The cluster's configuration file (default: `$CEPH_CONF`, then /etc/ceph/ceph.conf).
    pub conf: Option<PathBuf>,
    /// The client's name without `client.` (default `admin`).
    pub id: Option<String>,
    /// The keyring (default: from the conf, or /etc/ceph/ceph.client.ID.keyring).
    pub keyring: Option<PathBuf>,
}

/// Why an RBD image could not be opened.
#[derive(Debug, Error)]
pub enum RbdError {
    #[error("{0}")]
    Library(String),
    #[error("{what}")]
    Cluster {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot reach the Ceph cluster{conf}: no monitor answered within the connect timeout (client_mount_timeout: {CONNECT_TIMEOUT} s unless the conf sets it)")]
    Unreachable { conf: String },
    #[error("no Ceph monitor address: no conf file (ceph_conf, $CEPH_CONF or /etc/ceph/ceph.conf) sets mon_host")]
    NoMonitors,
    #[error("RBD pool {0:?} does not exist")]
    NoPool(String),
    #[error("RBD image {0} does not exist")]
    NoImage(String),
    #[error("permission denied opening RBD image {image} as client.{id}")]
    Permission { image: String, id: String },
}

/// An open RBD image.
pub struct Rbd {
    lib: &'static ffi::Lib,
    cluster: ffi::Rados,
    ioctx: ffi::IoCtx,
    image: ffi::Image,
    size: u64,
    read_only: bool,
    spec: RbdSpec,
}

// SAFETY: librados and librbd handles may be used from any thread, concurrently (their
// documentation: "the image handle is thread-safe"); the pointers are only freed in Drop.
unsafe impl Send for Rbd {}
// SAFETY: as above.
unsafe impl Sync for Rbd {}

fn cstr(what: &str, s: &str) -> Result<CString, RbdError> {
    CString::new(s).map_err(|_| RbdError::Cluster {
        what: format!("{what} {s:?}"),
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
    })
}

fn errno(r: isize) -> io::Error {
    io::Error::from_raw_os_error(i32::try_from(-r).unwrap_or(libc::EIO))
}

impl Rbd {
    /// Connects to the cluster and opens the image (read-only for `@SNAP`).
    pub fn open(spec: &RbdSpec, opts: &CephOptions) -> Result<Rbd, RbdError> {
        let lib = ffi::lib().map_err(RbdError::Library)?;
        let id = opts.id.clone().unwrap_or_else(|| "admin".into());
        let id_c = cstr("client id", &id)?;
        let mut cluster: ffi::Rados = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; the id outlives the call.
        let r = unsafe { (lib.rados_create)(&mut cluster, id_c.as_ptr()) };
        check(r as isize, "creating a RADOS client")?;
        // From here on, Drop releases what was made.
        let mut rbd = Rbd {
            lib,
            cluster,
            ioctx: std::ptr::null_mut(),
            image: std::ptr::null_mut(),
            size: 0,
            read_only: spec.snap.is_some(),
            spec: spec.clone(),
        };
        let conf = match &opts.conf {
            Some(p) => Some(cstr("conf file", &p.to_string_lossy())?),
            None => None,
        };
        let conf_ptr = conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: a live handle; null reads the default search path.
        let r = unsafe { (lib.rados_conf_read_file)(cluster, conf_ptr) };
        if let (true, Some(p)) = (r < 0, &opts.conf) {
            check(r as isize, &format!("reading Ceph conf {}", p.display()))?;
        }
        // SAFETY: a live handle; null means CEPH_ARGS.
        unsafe { (lib.rados_conf_parse_env)(cluster, std::ptr::null()) };
        // Bounded waits, where the conf left Ceph's defaults (5 minutes to connect, operations
        // that wait forever).
        for (key, ceph_default, ours) in [
            ("client_mount_timeout", "300", CONNECT_TIMEOUT),
            ("rados_osd_op_timeout", "0", OP_TIMEOUT),
            ("rados_mon_op_timeout", "0", OP_TIMEOUT),
        ] {
            if rbd
                .get(key)
                .as_deref()
                .is_none_or(|v| v.trim_end_matches(".000000") == ceph_default)
            {
                rbd.set(key, ours)?;
            }
        }
        if let Some(k) = &opts.keyring {
            rbd.set("keyring", &k.to_string_lossy())?;
        }
        // SAFETY: a live, configured handle.
        let r = unsafe { (lib.rados_connect)(cluster) };
        if r == -libc::ENOENT {
            return Err(RbdError::NoMonitors);
        }
        if r == -libc::ETIMEDOUT {
            let conf = opts
                .conf
                .as_ref()
                .map(|p| format!(" of {}", p.display()))
                .unwrap_or_default();
            return Err(RbdError::Unreachable { conf });
        }
        if r == -libc::EACCES || r == -libc::EPERM {
            return Err(RbdError::Permission {
                image: spec.to_string(),
                id,
            });
        }
        check(r as isize, "connecting to the Ceph cluster")?;
        let pool = cstr("pool", &spec.pool)?;
        // SAFETY: a connected handle, an out-pointer into `rbd`.
        let r = unsafe { (lib.rados_ioctx_create)(cluster, pool.as_ptr(), &mut rbd.ioctx) };
        if r == -libc::ENOENT {
            return Err(RbdError::NoPool(spec.pool.clone()));
        }
        check(r as isize, &format!("opening pool {:?}", spec.pool))?;
        let name = cstr("image", &spec.image)?;
        let snap = match &spec.snap {
            Some(s) => Some(cstr("snapshot", s)?),
            None => None,
        };
        let open = if rbd.read_only {
            lib.rbd_open_read_only
        } else {
            lib.rbd_open
        };
        let snap_ptr = snap.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: a live ioctx, NUL-terminated names, an out-pointer into `rbd`.
        let r = unsafe { open(rbd.ioctx, name.as_ptr(), &mut rbd.image, snap_ptr) };
        match r {
            0 => {}
            r if r == -libc::ENOENT => return Err(RbdError::NoImage(spec.to_string())),
            r if r == -libc::EACCES || r == -libc::EPERM => {
                return Err(RbdError::Permission {
                    image: spec.to_string(),
                    id,
                })
            }
            r => check(r as isize, &format!("opening RBD image {spec}"))?,
        }
        // SAFETY: an open image, an out-pointer to a field.
        let r = unsafe { (lib.rbd_get_size)(rbd.image, &mut rbd.size) };
        check(r as isize, &format!("reading the size of RBD image {spec}"))?;
        Ok(rbd)
    }

    /// The value of Ceph option `key`, as text.
    fn get(&self, key: &str) -> Option<String> {
        let k = CString::new(key).ok()?;
        let mut buf = [0u8; 128];
        // SAFETY: a live handle; the buffer's length is passed.
        let r = unsafe {
            (self.lib.rados_conf_get)(self.cluster, k.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if r < 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    fn set(&self, key: &str, value: &str) -> Result<(), RbdError> {
        let (k, v) = (cstr("option", key)?, cstr("value", value)?);
        // SAFETY: a live handle and NUL-terminated strings.
        let r = unsafe { (self.lib.rados_conf_set)(self.cluster, k.as_ptr(), v.as_ptr()) };
        check(r as isize, &format!("setting Ceph option {key}"))
    }

    pub fn spec(&self) -> &RbdSpec {
        &self.spec
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        Ok(())
    }
}

fn check(r: isize, what: &str) -> Result<(), RbdError> {
    if r >= 0 {
        return Ok(());
    }
    Err(RbdError::Cluster {
        what: what.to_owned(),
        source: errno(r),
    })
}

fn io_result(r: isize) -> io::Result<()> {
    if r < 0 {
        return Err(errno(r));
    }
    Ok(())
}

impl Drop for Rbd {
    fn drop(&mut self) {
        // SAFETY: each handle was made by this value and is released once, image first.
        unsafe {
            if !self.image.is_null() {
                (self.lib.rbd_close)(self.image);
            }
            if !self.ioctx.is_null() {
                (self.lib.rados_ioctx_destroy)(self.ioctx);
            }
            (self.lib.rados_shutdown)(self.cluster);
        }
    }
}

impl BlockDevice for Rbd {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len() as u64)?;
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: an open image; the buffer is valid for its length.
            let r = unsafe {
                (self.lib.rbd_read)(
                    self.image,
                    offset + done as u64,
                    rest.len(),
                    rest.as_mut_ptr() as *mut c_char,
                )
            };
            io_result(r)?;
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "short RBD read",
                ));
            }
            done += r as usize;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        check_range(self.size, offset, buf.len() as u64)?;
        // SAFETY: an open image; the buffer is valid for its length.
        let r = unsafe {
            (self.lib.rbd_write)(self.image, offset, buf.len(), buf.as_ptr() as *const c_char)
        };
        io_result(r)?;
        if r as usize != buf.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short RBD write"));
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        // SAFETY: an open image.
        io_result(unsafe { (self.lib.rbd_flush)(self.image) } as isize)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?;
        check_range(self.size, offset, len)?;
        // SAFETY: an open image.
        io_result(unsafe { (self.lib.rbd_discard)(self.image, offset, len) } as isize)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writable()?;
        check_range(self.size, offset, len)?;
        let len = super::device::to_usize(len)?;
        // SAFETY: an open image.
        io_result(unsafe { (self.lib.rbd_write_zeroes)(self.image, offset, len, 0, 0) })
    }

    fn rbd(&self) -> Option<&Rbd> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let p = |s: &str| RbdSpec::parse(Path::new(s));
        assert_eq!(p("/var/lib/img.raw"), Ok(None));
        let s = p("rbd:ci/golden").unwrap().unwrap();
        assert_eq!(
            (s.pool.as_str(), s.image.as_str(), s.snap),
            ("ci", "golden", None)
        );
        let s = p("rbd:ci/golden@base").unwrap().unwrap();
        assert_eq!(s.snap.as_deref(), Some("base"));
        assert_eq!(s.to_string(), "rbd:ci/golden@base");
        for bad in [
            "rbd:",
            "rbd:ci",
            "rbd:/x",
            "rbd:ci/",
            "rbd:ci/a/b",
            "rbd:ci/a@",
            "rbd:ci/@s",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("rbd:POOL/IMAGE"), "{bad}: {e}");
        }
    }
}
