//! Peer access: within one server the server's driver answers and enables it (its own peer path, which kernels
//! then use); across servers a kernel cannot reach the other server's memory, so no pair there has access.

use std::ffi::c_int;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_PEER_ACCESS;
use vgpu_dataplane::wire::*;

use super::{need_ctx, ClientHandle};
use crate::client::{self, Route};
use crate::{ffi, state};

/// Checks two device ordinals; the server holding both when it answers peer questions (`None`: different
/// servers, which never have peer access, or an older server).
fn one_server(a: c_int, b: c_int) -> CuResult<Option<usize>> {
    let s = client::session()?;
    let n = s.devices.len() as c_int;
    if a < 0 || a >= n || b < 0 || b >= n {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    let server = s.server_of(a)?;
    let answers = s
        .servers
        .get(server)
        .is_some_and(|x| x.capabilities & CAP_PEER_ACCESS != 0);
    Ok((server == s.server_of(b)? && answers).then_some(server))
}

/// The current context and `peer`'s devices, both live contexts of this process.
fn context_devices(peer: ContextId) -> CuResult<(i32, i32)> {
    let ctx = need_ctx()?;
    let reg = state::read();
    let device = |c: ContextId| reg.contexts.get(&c).map(|i| i.device);
    match (device(ctx), device(peer)) {
        (Some(mine), Some(theirs)) => Ok((mine, theirs)),
        _ => Err(CUDA_ERROR_INVALID_CONTEXT),
    }
}

entry! {
    cuDeviceCanAccessPeer => |f, can, dev, peer| {
        let answer = match one_server(dev, peer)? {
            Some(server) => {
                let call = DeviceCanAccessPeer { dev: dev as u32, peer: peer as u32 };
                client::call_to(Route::Server(server), 0, &call, &[])?.value as c_int
            }
            None => 0,
        };
        ffi::write(can, answer)
    }
    cuDeviceGetP2PAttribute => |f, value, attr, src, dst| {
        if src == dst {
            one_server(src, dst)?;
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        let answer = match one_server(src, dst)? {
            Some(server) => {
                let call = DeviceP2PAttribute { attr: attr.0, src: src as u32, dst: dst as u32, _pad: 0 };
                client::call_to(Route::Server(server), 0, &call, &[])?.value as c_int
            }
            None => 0,
        };
        ffi::write(value, answer)
    }
    // Across servers access is refused as the driver refuses it for a pair without peer access.
    cuCtxEnablePeerAccess => |f, peer, flags| {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (mine, theirs) = context_devices(peer.id())?;
        if one_server(mine, theirs)?.is_none() {
            let s = client::session()?;
            return Err(if s.server_of(mine)? != s.server_of(theirs)? {
                CUDA_ERROR_PEER_ACCESS_UNSUPPORTED
            } else {
                CUDA_ERROR_NOT_SUPPORTED
            });
        }
        let call = CtxEnablePeerAccess { peer: peer.id(), flags, _pad: 0 };
        client::call(0, &call, &[]).map(|_| ())
    }
    // Across servers access was never enabled.
    cuCtxDisablePeerAccess => |f, peer| {
        let (mine, theirs) = context_devices(peer.id())?;
        if one_server(mine, theirs)?.is_none() {
            let s = client::session()?;
            return Err(if s.server_of(mine)? != s.server_of(theirs)? {
                CUDA_ERROR_PEER_ACCESS_NOT_ENABLED
            } else {
                CUDA_ERROR_NOT_SUPPORTED
            });
        }
        client::call(0, &CtxDisablePeerAccess { peer: peer.id() }, &[]).map(|_| ())
    }
}
