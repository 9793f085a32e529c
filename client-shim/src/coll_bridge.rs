//! What vGPU's NCCL (`libnccl.so.2`, `client-shim/nccl`) asks of this library: which server and session hold a
//! device (the address its peers' servers dial), and one rank's part of a collective sent to that server as an
//! asynchronous call (`CollRun`) in a stream's order, so the collective's bytes move between servers only.

use std::ffi::c_char;

use vgpu_cuda_sys::driver::CUstream;
use vgpu_dataplane::coll::CollDesc;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_COLL;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{CollRun, MAX_PEER_ENDPOINT};

use crate::client::{self, Route};
use crate::{api, ffi};

/// Version of this bridge's functions and `coll::CollDesc`; the NCCL shim refuses a `libcuda.so.1` with another.
pub const COLL_BRIDGE_VERSION: u32 = 1;

#[no_mangle]
pub extern "C" fn vgpu_coll_bridge_version() -> u32 {
    COLL_BRIDGE_VERSION
}

/// The server of device `device` (the app's ordinal): its endpoint as this process dialled it (NUL-terminated into
/// `endpoint`, `capacity` bytes) and this process's session id there. CUDA_ERROR_NOT_SUPPORTED where that server
/// cannot run collectives.
#[no_mangle]
pub extern "C" fn vgpu_coll_device_server(
    device: i32,
    endpoint: *mut c_char,
    capacity: usize,
    session: *mut u64,
) -> CUresult {
    api::code(device_server(device, endpoint, capacity, session))
}

fn device_server(device: i32, endpoint: *mut c_char, capacity: usize, session: *mut u64) -> CuResult<()> {
    let started = client::init();
    if started != CUDA_SUCCESS {
        return Err(started);
    }
    let s = client::session()?;
    let server = s.servers.get(s.server_of(device)?).ok_or(CUDA_ERROR_INVALID_DEVICE)?;
    if server.capabilities & CAP_COLL == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let text = server.endpoint.to_string();
    let out = ffi::bytes_mut(endpoint.cast(), capacity)?;
    if text.len() >= out.len() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    out[..text.len()].copy_from_slice(text.as_bytes());
    out[text.len()] = 0;
    ffi::write(session, server.session_id)
}

/// Sends `desc`'s part to its device's server, in its stream's order, without waiting; `peer_endpoint`: the
/// server of rank `send_peer` (NULL when nothing is sent). Errors of the collective itself latch, as a kernel's.
/// The NCCL shim's values are the app's: checked here as any driver call's arguments are.
#[no_mangle]
pub extern "C" fn vgpu_coll_run(desc: *const CollDesc, peer_endpoint: *const c_char) -> CUresult {
    api::code(run(desc, peer_endpoint))
}

fn run(desc: *const CollDesc, peer_endpoint: *const c_char) -> CuResult<()> {
    let d = ffi::read(desc)?;
    let tail = if peer_endpoint.is_null() {
        Vec::new()
    } else {
        ffi::cstr(peer_endpoint)?.to_bytes().to_vec()
    };
    if tail.len() > MAX_PEER_ENDPOINT {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let stream = api::stream_id(d.stream as usize as CUstream)?;
    let route = Route::Device(d.device);
    // A created stream must belong to the device's server (as a launch's does).
    if !stream.is_builtin() && client::server_index(api::route_of_stream(stream))? != client::server_index(route)? {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    // The collective would run now, not when the graph is launched: refused, as an unsupported operation in a
    // capture is natively.
    if api::is_capturing(stream) {
        return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    }
    let call = CollRun {
        kind: d.kind,
        dtype: d.dtype,
        op: d.op,
        nranks: d.nranks,
        rank: d.rank,
        root: d.root,
        send_peer: d.send_peer,
        recv_peer: d.recv_peer,
        count: d.count,
        recv_count: d.recv_count,
        src: DevicePtr(d.src),
        dst: DevicePtr(d.dst),
        scratch: DevicePtr(d.scratch),
        scratch_size: d.scratch_size,
        stream,
        send_session: d.send_session,
        seq: d.seq,
        seq2: d.seq2,
        secret: d.secret,
    };
    let flags = if d.flags & vgpu_dataplane::coll::COLL_GROUPED != 0 {
        vgpu_dataplane::wire::FLAG_COLL_LANE
    } else {
        0
    };
    client::post_to(route, flags, &call, &tail)?;
    // The other ranks' servers wait for this one: it goes out now, not at the next flush.
    client::flush_all()
}
