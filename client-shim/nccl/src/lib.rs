//! vGPU's `libnccl.so.2`: NCCL's API for programs whose GPUs are remote (PyTorch's `ProcessGroupNCCL`, anything
//! linked against NCCL). Each collective becomes one asynchronous call to the rank's GPU server (`CollRun`), which
//! runs it with the other ranks' servers in the stream's order: the bytes move server to server, never through
//! a client (NCCL's own transports cannot work under remoting: bench/NOTES.md §19).
//!
//! `vgpu run` preloads it (`LD_PRELOAD`: PyTorch's libraries find NVIDIA's NCCL through their RPATH, which
//! `LD_LIBRARY_PATH` does not override). What is not implemented answers `ncclInvalidUsage` with a message
//! (`ncclGetLastError`); the README lists it.

#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

pub mod bootstrap;
mod ffi;

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Mutex;

use bootstrap::{Id, Member, ID_LEN, MAX_RANKS};
use vgpu_dataplane::coll::{self, CollDesc};

pub type ncclResult_t = c_int;
pub const ncclSuccess: ncclResult_t = 0;
pub const ncclUnhandledCudaError: ncclResult_t = 1;
pub const ncclSystemError: ncclResult_t = 2;
pub const ncclInternalError: ncclResult_t = 3;
pub const ncclInvalidArgument: ncclResult_t = 4;
pub const ncclInvalidUsage: ncclResult_t = 5;
pub const ncclRemoteError: ncclResult_t = 6;

/// The NCCL version this library answers with (`ncclGetVersion`): the API level it implements.
pub const NCCL_VERSION_CODE: c_int = 22803;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ncclUniqueId {
    pub internal: [u8; ID_LEN],
}

/// One rank's communicator.
pub struct Comm {
    nranks: u32,
    rank: u32,
    device: i32,
    secret: [u8; 16],
    members: Vec<Member>,
    endpoints: Vec<CString>,
    /// Collectives issued so far (each one's number in the group's message tokens).
    seq: AtomicU64,
    /// Point-to-point messages sent to and received from each rank so far.
    p2p: Mutex<(Vec<u64>, Vec<u64>)>,
    /// Device memory for plans that need it; outgrown buffers are kept until the communicator goes (a collective
    /// queued earlier may still use them).
    scratch: Mutex<Vec<(u64, u64)>>,
    async_error: AtomicI32,
    /// Splits made from this communicator so far (each new one's secret derives from the number).
    splits: AtomicU64,
}

impl Comm {
    /// A communicator of `members` (rank order) on `device`, fresh series.
    fn new(rank: u32, device: i32, secret: [u8; 16], members: Vec<Member>) -> Result<Comm, ncclResult_t> {
        let endpoints = members
            .iter()
            .map(|m| CString::new(m.endpoint.clone()).map_err(|_| fail(ncclRemoteError, "an endpoint with a NUL byte")))
            .collect::<Result<Vec<_>, _>>()?;
        let n = members.len();
        Ok(Comm {
            nranks: n as u32,
            rank,
            device,
            secret,
            members,
            endpoints,
            seq: AtomicU64::new(0),
            p2p: Mutex::new((vec![0; n], vec![0; n])),
            scratch: Mutex::new(Vec::new()),
            async_error: AtomicI32::new(ncclSuccess),
            splits: AtomicU64::new(0),
        })
    }
}

pub type ncclComm_t = *mut Comm;

static LAST_ERROR: Mutex<Option<CString>> = Mutex::new(None);

/// Records `why` for `ncclGetLastError` (and stderr, as NCCL's warnings go) and returns `code`.
fn fail(code: ncclResult_t, why: impl Into<String>) -> ncclResult_t {
    let why = why.into();
    if std::env::var("VGPU_NCCL_QUIET").is_err() {
        eprintln!("vGPU NCCL: {why}");
    }
    let text = CString::new(why.replace('\0', " ")).unwrap_or_default();
    *LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner()) = Some(text);
    code
}

fn cuda() -> Result<&'static ffi::Cuda, ncclResult_t> {
    ffi::cuda().map_err(|why| fail(ncclSystemError, why))
}

fn cu(what: &str, r: ffi::CuResult) -> Result<(), ncclResult_t> {
    if r == 0 {
        Ok(())
    } else {
        Err(fail(ncclUnhandledCudaError, format!("{what}: CUDA error {r}")))
    }
}

fn code(r: Result<(), ncclResult_t>) -> ncclResult_t {
    r.err().unwrap_or(ncclSuccess)
}

#[no_mangle]
pub extern "C" fn ncclGetVersion(version: *mut c_int) -> ncclResult_t {
    if ffi::write(version, NCCL_VERSION_CODE) {
        ncclSuccess
    } else {
        ncclInvalidArgument
    }
}

#[no_mangle]
pub extern "C" fn ncclGetUniqueId(out: *mut ncclUniqueId) -> ncclResult_t {
    match bootstrap::new_id() {
        Ok(id) => {
            let value = ncclUniqueId { internal: id.encode() };
            if ffi::write(out, value) {
                ncclSuccess
            } else {
                ncclInvalidArgument
            }
        }
        Err(why) => fail(ncclSystemError, why),
    }
}

#[no_mangle]
pub extern "C" fn ncclCommInitRank(
    comm: *mut ncclComm_t,
    nranks: c_int,
    id: ncclUniqueId,
    rank: c_int,
) -> ncclResult_t {
    code(init_rank(comm, nranks, &id, rank))
}

#[no_mangle]
pub extern "C" fn ncclCommInitRankConfig(
    comm: *mut ncclComm_t,
    nranks: c_int,
    id: ncclUniqueId,
    rank: c_int,
    _config: *mut c_void,
) -> ncclResult_t {
    // The configuration's hints (blocking, CTAs, network name) have no meaning here: a communicator is ready when
    // this returns, and the servers move the bytes.
    code(init_rank(comm, nranks, &id, rank))
}

#[no_mangle]
pub extern "C" fn ncclCommInitRankScalable(
    comm: *mut ncclComm_t,
    nranks: c_int,
    rank: c_int,
    n_ids: c_int,
    ids: *const ncclUniqueId,
    _config: *mut c_void,
) -> ncclResult_t {
    if n_ids < 1 {
        return fail(ncclInvalidArgument, "ncclCommInitRankScalable without a unique id");
    }
    // Every rank holds the first id; one bootstrap listener serves all ranks here.
    match ffi::read(ids) {
        Some(id) => code(init_rank(comm, nranks, &id, rank)),
        None => fail(ncclInvalidArgument, "ncclCommInitRankScalable: NULL ids"),
    }
}

fn init_rank(out: *mut ncclComm_t, nranks: c_int, id: &ncclUniqueId, rank: c_int) -> Result<(), ncclResult_t> {
    let cuda = cuda()?;
    let (Ok(n), Ok(r)) = (u32::try_from(nranks), u32::try_from(rank)) else {
        return Err(fail(ncclInvalidArgument, format!("rank {rank} of {nranks}")));
    };
    if n == 0 || n > MAX_RANKS || r >= n {
        return Err(fail(ncclInvalidArgument, format!("rank {rank} of {nranks}")));
    }
    let id = Id::decode(&id.internal).map_err(|why| fail(ncclInvalidArgument, why))?;
    let device = cuda.ctx_get_device().map_err(|r| {
        fail(
            ncclUnhandledCudaError,
            format!("cuCtxGetDevice: CUDA error {r} (set the rank's device before ncclCommInitRank)"),
        )
    })?;
    let (endpoint, session) = cuda.device_server(device).map_err(|r| {
        fail(
            ncclInvalidUsage,
            format!("device {device}'s GPU server cannot run collectives (CUDA error {r}): update it"),
        )
    })?;
    let me = Member { endpoint, session };
    let members = bootstrap::join(&id, n, r, &me).map_err(|why| fail(ncclRemoteError, why))?;
    let comm = Comm::new(r, device, id.secret, members)?;
    if !ffi::write(out, Box::into_raw(Box::new(comm))) {
        return Err(fail(ncclInvalidArgument, "ncclCommInitRank: NULL comm"));
    }
    Ok(())
}

/// One process driving several GPUs (`torch.cuda.nccl`, `DataParallel`'s broadcasts): a communicator per device,
/// ranks in `devlist` order (NULL: devices 0 .. ndev − 1), whose members are already known here (no bootstrap).
#[no_mangle]
pub extern "C" fn ncclCommInitAll(comms: *mut ncclComm_t, ndev: c_int, devlist: *const c_int) -> ncclResult_t {
    code(init_all(comms, ndev, devlist))
}

fn init_all(comms: *mut ncclComm_t, ndev: c_int, devlist: *const c_int) -> Result<(), ncclResult_t> {
    let cuda = cuda()?;
    let n = match u32::try_from(ndev) {
        Ok(n) if (1..=MAX_RANKS).contains(&n) => n as usize,
        _ => return Err(fail(ncclInvalidArgument, format!("ncclCommInitAll of {ndev} devices"))),
    };
    let devices: Vec<c_int> = if devlist.is_null() {
        (0..n as c_int).collect()
    } else {
        ffi::read_array(devlist, n).ok_or_else(|| fail(ncclInvalidArgument, "ncclCommInitAll: a bad device list"))?
    };
    let members = devices
        .iter()
        .map(|&d| {
            cuda.device_server(d)
                .map(|(endpoint, session)| Member { endpoint, session })
                .map_err(|r| {
                    fail(
                        ncclInvalidUsage,
                        format!("device {d}'s server cannot run collectives (CUDA error {r})"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secret: [u8; 16] = rand::random();
    let made = devices
        .iter()
        .enumerate()
        .map(|(rank, &d)| Comm::new(rank as u32, d, secret, members.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, comm) in made.into_iter().enumerate() {
        if !ffi::write_at(comms, i, Box::into_raw(Box::new(comm))) {
            return Err(fail(ncclInvalidArgument, "ncclCommInitAll: NULL comms"));
        }
    }
    Ok(())
}

fn release(comm: &Comm) {
    if let Ok(cuda) = ffi::cuda() {
        for (ptr, _) in comm.scratch.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = cuda.mem_free(ptr);
        }
    }
}

#[no_mangle]
pub extern "C" fn ncclCommFinalize(comm: ncclComm_t) -> ncclResult_t {
    if ffi::comm(comm).is_none() {
        return ncclInvalidArgument;
    }
    ncclSuccess
}

#[no_mangle]
pub extern "C" fn ncclCommDestroy(comm: ncclComm_t) -> ncclResult_t {
    match ffi::take(comm) {
        Some(c) => {
            release(&c);
            ncclSuccess
        }
        None => ncclInvalidArgument,
    }
}

#[no_mangle]
pub extern "C" fn ncclCommAbort(comm: ncclComm_t) -> ncclResult_t {
    ncclCommDestroy(comm)
}

#[no_mangle]
pub extern "C" fn ncclCommSplit(
    comm: ncclComm_t,
    color: c_int,
    key: c_int,
    newcomm: *mut ncclComm_t,
    _config: *mut c_void,
) -> ncclResult_t {
    ffi::write(newcomm, std::ptr::null_mut());
    let Some(parent) = ffi::comm(comm) else {
        return fail(ncclInvalidArgument, "ncclCommSplit: a NULL communicator");
    };
    match calls::split(parent, color, key) {
        Ok(Some(child)) => {
            if ffi::write(newcomm, Box::into_raw(Box::new(child))) {
                ncclSuccess
            } else {
                fail(ncclInvalidArgument, "ncclCommSplit: NULL newcomm")
            }
        }
        // NCCL_SPLIT_NOCOLOR: this rank joins no new communicator.
        Ok(None) => ncclSuccess,
        Err(code) => code,
    }
}

#[no_mangle]
pub extern "C" fn ncclCommShrink(
    _comm: ncclComm_t,
    _exclude: *mut c_int,
    _exclude_count: c_int,
    newcomm: *mut ncclComm_t,
    _config: *mut c_void,
    _flags: c_int,
) -> ncclResult_t {
    ffi::write(newcomm, std::ptr::null_mut());
    fail(ncclInvalidUsage, "ncclCommShrink is not supported by vGPU's NCCL yet")
}

#[no_mangle]
pub extern "C" fn ncclGetErrorString(result: ncclResult_t) -> *const c_char {
    let text: &'static std::ffi::CStr = match result {
        ncclSuccess => c"no error",
        ncclUnhandledCudaError => c"unhandled cuda error (run with NCCL_DEBUG=INFO for details)",
        ncclSystemError => c"unhandled system error (run with NCCL_DEBUG=INFO for details)",
        ncclInternalError => c"internal error - please report this issue to the NCCL developers",
        ncclInvalidArgument => c"invalid argument (run with NCCL_DEBUG=WARN for details)",
        ncclInvalidUsage => c"invalid usage (run with NCCL_DEBUG=WARN for details)",
        ncclRemoteError => c"remote process exited or there was a network error",
        7 => c"NCCL operation in progress",
        _ => c"unknown result code",
    };
    text.as_ptr()
}

#[no_mangle]
pub extern "C" fn ncclGetLastError(_comm: ncclComm_t) -> *const c_char {
    let last = LAST_ERROR.lock().unwrap_or_else(|p| p.into_inner());
    // The text lives in a static until the next error replaces it, as NCCL's does.
    last.as_ref().map_or(c"".as_ptr(), |t| t.as_ptr())
}

#[no_mangle]
pub extern "C" fn ncclCommGetAsyncError(comm: ncclComm_t, error: *mut ncclResult_t) -> ncclResult_t {
    let Some(c) = ffi::comm(comm) else {
        return ncclInvalidArgument;
    };
    // A collective's failure latches on its stream (the app's next synchronisation reports it), as a kernel's.
    ffi::write(error, c.async_error.load(Ordering::Acquire));
    ncclSuccess
}

#[no_mangle]
pub extern "C" fn ncclCommCount(comm: ncclComm_t, count: *mut c_int) -> ncclResult_t {
    match ffi::comm(comm) {
        Some(c) if ffi::write(count, c.nranks as c_int) => ncclSuccess,
        _ => ncclInvalidArgument,
    }
}

#[no_mangle]
pub extern "C" fn ncclCommCuDevice(comm: ncclComm_t, device: *mut c_int) -> ncclResult_t {
    match ffi::comm(comm) {
        Some(c) if ffi::write(device, c.device) => ncclSuccess,
        _ => ncclInvalidArgument,
    }
}

#[no_mangle]
pub extern "C" fn ncclCommUserRank(comm: ncclComm_t, rank: *mut c_int) -> ncclResult_t {
    match ffi::comm(comm) {
        Some(c) if ffi::write(rank, c.rank as c_int) => ncclSuccess,
        _ => ncclInvalidArgument,
    }
}

/// Buffer registration is an optimisation of NCCL's own transports; here every buffer works unregistered.
#[no_mangle]
pub extern "C" fn ncclCommRegister(
    _comm: ncclComm_t,
    _buff: *mut c_void,
    _size: usize,
    handle: *mut *mut c_void,
) -> ncclResult_t {
    ffi::write(handle, std::ptr::null_mut());
    ncclSuccess
}

#[no_mangle]
pub extern "C" fn ncclCommDeregister(_comm: ncclComm_t, _handle: *mut c_void) -> ncclResult_t {
    ncclSuccess
}

#[no_mangle]
pub extern "C" fn ncclCommWindowRegister(
    _comm: ncclComm_t,
    _buff: *mut c_void,
    _size: usize,
    win: *mut *mut c_void,
    _flags: c_int,
) -> ncclResult_t {
    ffi::write(win, std::ptr::null_mut());
    fail(
        ncclInvalidUsage,
        "symmetric memory windows are not supported by vGPU's NCCL",
    )
}

#[no_mangle]
pub extern "C" fn ncclCommWindowDeregister(_comm: ncclComm_t, _win: *mut c_void) -> ncclResult_t {
    ncclSuccess
}

#[no_mangle]
pub extern "C" fn ncclDevCommCreate(_comm: ncclComm_t, _reqs: *const c_void, _out: *mut c_void) -> ncclResult_t {
    fail(
        ncclInvalidUsage,
        "device communicators are not supported by vGPU's NCCL",
    )
}

#[no_mangle]
pub extern "C" fn ncclDevCommDestroy(_comm: ncclComm_t, _dev: *const c_void) -> ncclResult_t {
    ncclSuccess
}

#[no_mangle]
pub extern "C" fn ncclMemAlloc(ptr: *mut *mut c_void, size: usize) -> ncclResult_t {
    code((|| {
        let cuda = cuda()?;
        let dptr = cuda
            .mem_alloc(size.max(1))
            .map_err(|r| fail(ncclUnhandledCudaError, format!("cuMemAlloc: CUDA error {r}")))?;
        if !ffi::write(ptr, dptr as usize as *mut c_void) {
            let _ = cuda.mem_free(dptr);
            return Err(ncclInvalidArgument);
        }
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn ncclMemFree(ptr: *mut c_void) -> ncclResult_t {
    code(cuda().and_then(|c| cu("cuMemFree", c.mem_free(ptr as usize as u64))))
}

#[no_mangle]
pub extern "C" fn ncclRedOpCreatePreMulSum(
    _op: *mut c_int,
    _scalar: *mut c_void,
    _dtype: c_int,
    _residence: c_int,
    _comm: ncclComm_t,
) -> ncclResult_t {
    fail(
        ncclInvalidUsage,
        "ncclRedOpCreatePreMulSum is not supported by vGPU's NCCL yet",
    )
}

#[no_mangle]
pub extern "C" fn ncclRedOpDestroy(_op: c_int, _comm: ncclComm_t) -> ncclResult_t {
    ncclInvalidArgument
}

mod calls;
pub use calls::*;

thread_local! {
    /// `ncclGroupStart` depth and the point-to-point operations queued until the outermost `ncclGroupEnd`.
    static GROUP: RefCell<(u32, Vec<calls::P2p>)> = const { RefCell::new((0, Vec::new())) };
}
