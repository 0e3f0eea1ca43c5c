//! librados and librbd, loaded at run time with `dlopen` (as QEMU's block-rbd module is): the
//! default build needs no Ceph headers or libraries, and RBD works wherever Debian's `librbd1`
//! is installed. Only the C functions snapblk calls are looked up.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub type Rados = *mut c_void;
pub type IoCtx = *mut c_void;
pub type Image = *mut c_void;
pub type Completion = *mut c_void;
pub type Callback = unsafe extern "C" fn(Completion, *mut c_void);

/// The libraries' file names (Debian's librbd1 and librados2).
const LIBRBD: &CStr = c"librbd.so.1";
const LIBRADOS: &CStr = c"librados.so.2";

/// The functions snapblk calls, resolved once per process.
pub struct Lib {
    pub rados_create: unsafe extern "C" fn(*mut Rados, *const c_char) -> c_int,
    pub rados_conf_read_file: unsafe extern "C" fn(Rados, *const c_char) -> c_int,
    pub rados_conf_set: unsafe extern "C" fn(Rados, *const c_char, *const c_char) -> c_int,
    pub rados_conf_get: unsafe extern "C" fn(Rados, *const c_char, *mut c_char, usize) -> c_int,
    pub rados_conf_parse_env: unsafe extern "C" fn(Rados, *const c_char) -> c_int,
    pub rados_connect: unsafe extern "C" fn(Rados) -> c_int,
    pub rados_shutdown: unsafe extern "C" fn(Rados),
    pub rados_ioctx_create: unsafe extern "C" fn(Rados, *const c_char, *mut IoCtx) -> c_int,
    pub rados_ioctx_destroy: unsafe extern "C" fn(IoCtx),
    pub rbd_open: unsafe extern "C" fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int,
    pub rbd_open_read_only:
        unsafe extern "C" fn(IoCtx, *const c_char, *mut Image, *const c_char) -> c_int,
    pub rbd_close: unsafe extern "C" fn(Image) -> c_int,
    pub rbd_get_size: unsafe extern "C" fn(Image, *mut u64) -> c_int,
    pub rbd_read: unsafe extern "C" fn(Image, u64, usize, *mut c_char) -> isize,
    pub rbd_write: unsafe extern "C" fn(Image, u64, usize, *const c_char) -> isize,
    pub rbd_flush: unsafe extern "C" fn(Image) -> c_int,
    pub rbd_discard: unsafe extern "C" fn(Image, u64, u64) -> c_int,
    pub rbd_write_zeroes: unsafe extern "C" fn(Image, u64, usize, c_int, c_int) -> isize,
    pub rbd_aio_create_completion:
        unsafe extern "C" fn(*mut c_void, Callback, *mut Completion) -> c_int,
    pub rbd_aio_readv:
        unsafe extern "C" fn(Image, *const libc::iovec, c_int, u64, Completion) -> c_int,
    pub rbd_aio_writev:
        unsafe extern "C" fn(Image, *const libc::iovec, c_int, u64, Completion) -> c_int,
    pub rbd_aio_flush: unsafe extern "C" fn(Image, Completion) -> c_int,
    pub rbd_aio_discard: unsafe extern "C" fn(Image, u64, u64, Completion) -> c_int,
    pub rbd_aio_write_zeroes:
        unsafe extern "C" fn(Image, u64, usize, Completion, c_int, c_int) -> c_int,
    pub rbd_aio_get_return_value: unsafe extern "C" fn(Completion) -> isize,
    pub rbd_aio_release: unsafe extern "C" fn(Completion),
}

/// The loaded libraries, or why they could not be loaded (said in every RBD open error).
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by the loader.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

fn open(name: &CStr) -> Result<*mut c_void, String> {
    // SAFETY: a NUL-terminated name; the handle is never closed (the functions stay loaded
    // for the life of the process).
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return Err(format!(
            "RBD support needs librbd (Debian: apt install librbd1): {}",
            dl_error()
        ));
    }
    Ok(h)
}

/// The function `name` of library `h`, as the function pointer type `F`.
fn sym<F: Copy>(h: *mut c_void, name: &CStr) -> Result<F, String> {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    // SAFETY: a NUL-terminated symbol name on a live handle.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) };
    if p.is_null() {
        return Err(format!(
            "the installed librbd/librados lacks {} (Ceph 15 or newer is needed): {}",
            name.to_string_lossy(),
            dl_error()
        ));
    }
    // SAFETY: the symbol is the C function of that name, whose prototype (from librados.h and
    // librbd.h) the caller's field type `F` states; both are pointer-sized.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

fn load() -> Result<Lib, String> {
    let rbd = open(LIBRBD)?;
    let rados = open(LIBRADOS)?;
    Ok(Lib {
        rados_create: sym(rados, c"rados_create")?,
        rados_conf_read_file: sym(rados, c"rados_conf_read_file")?,
        rados_conf_set: sym(rados, c"rados_conf_set")?,
        rados_conf_get: sym(rados, c"rados_conf_get")?,
        rados_conf_parse_env: sym(rados, c"rados_conf_parse_env")?,
        rados_connect: sym(rados, c"rados_connect")?,
        rados_shutdown: sym(rados, c"rados_shutdown")?,
        rados_ioctx_create: sym(rados, c"rados_ioctx_create")?,
        rados_ioctx_destroy: sym(rados, c"rados_ioctx_destroy")?,
        rbd_open: sym(rbd, c"rbd_open")?,
        rbd_open_read_only: sym(rbd, c"rbd_open_read_only")?,
        rbd_close: sym(rbd, c"rbd_close")?,
        rbd_get_size: sym(rbd, c"rbd_get_size")?,
        rbd_read: sym(rbd, c"rbd_read")?,
        rbd_write: sym(rbd, c"rbd_write")?,
        rbd_flush: sym(rbd, c"rbd_flush")?,
        rbd_discard: sym(rbd, c"rbd_discard")?,
        rbd_write_zeroes: sym(rbd, c"rbd_write_zeroes")?,
        rbd_aio_create_completion: sym(rbd, c"rbd_aio_create_completion")?,
        rbd_aio_readv: sym(rbd, c"rbd_aio_readv")?,
        rbd_aio_writev: sym(rbd, c"rbd_aio_writev")?,
        rbd_aio_flush: sym(rbd, c"rbd_aio_flush")?,
        rbd_aio_discard: sym(rbd, c"rbd_aio_discard")?,
        rbd_aio_write_zeroes: sym(rbd, c"rbd_aio_write_zeroes")?,
        rbd_aio_get_return_value: sym(rbd, c"rbd_aio_get_return_value")?,
        rbd_aio_release: sym(rbd, c"rbd_aio_release")?,
    })
}
