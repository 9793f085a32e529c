//! Peer access: within one server the server's driver answers and enables it (its own peer path, which kernels
//! then use); across servers a kernel cannot reach the other server's memory, so no pair there has access.

use std::ffi::c_int;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_PEER_ACCESS;
use vgpu_dataplane::wire::*;

use super::{need_ctx, ClientHandle};
use crate::client::{self, Route};
use crate::{ffi, state};

/// Where two devices are, as peer access sees them.
enum Pair {
    /// On this server, which answers peer questions.
    OneServer(usize),
    /// On different servers: a kernel on one cannot reach the other's memory.
    TwoServers,
    /// On one server older than peer access (`CAP_PEER_ACCESS`).
    OlderServer,
}

/// Checks two device ordinals and says where they are.
fn pair(a: c_int, b: c_int) -> CuResult<Pair> {
    let s = client::session()?;
    let n = s.devices.len() as c_int;
    if a < 0 || a >= n || b < 0 || b >= n {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    let server = s.server_of(a)?;
    if server != s.server_of(b)? {
        return Ok(Pair::TwoServers);
    }
    let answers = s
        .servers
        .get(server)
        .is_some_and(|x| x.capabilities & CAP_PEER_ACCESS != 0);
    Ok(if answers {
        Pair::OneServer(server)
    } else {
        Pair::OlderServer
    })
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
        let answer = match pair(dev, peer)? {
            Pair::OneServer(server) => {
                let call = DeviceCanAccessPeer { dev: dev as u32, peer: peer as u32 };
                client::call_to(Route::Server(server), 0, &call, &[])?.value as c_int
            }
            Pair::TwoServers | Pair::OlderServer => 0,
        };
        ffi::write(can, answer)
    }
    cuDeviceGetP2PAttribute => |f, value, attr, src, dst| {
        let place = pair(src, dst)?;
        if src == dst {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        let answer = match place {
            Pair::OneServer(server) => {
                let call = DeviceP2PAttribute { attr: attr.0, src: src as u32, dst: dst as u32, _pad: 0 };
                client::call_to(Route::Server(server), 0, &call, &[])?.value as c_int
            }
            Pair::TwoServers | Pair::OlderServer => 0,
        };
        ffi::write(value, answer)
    }
    // Across servers access is refused as the driver refuses it for a pair without peer access.
    cuCtxEnablePeerAccess => |f, peer, flags| {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (mine, theirs) = context_devices(peer.id())?;
        match pair(mine, theirs)? {
            Pair::OneServer(_) => {
                let call = CtxEnablePeerAccess { peer: peer.id(), flags, _pad: 0 };
                client::call(0, &call, &[]).map(|_| ())
            }
            Pair::TwoServers => Err(CUDA_ERROR_PEER_ACCESS_UNSUPPORTED),
            Pair::OlderServer => Err(CUDA_ERROR_NOT_SUPPORTED),
        }
    }
    // Across servers access was never enabled.
    cuCtxDisablePeerAccess => |f, peer| {
        let (mine, theirs) = context_devices(peer.id())?;
        match pair(mine, theirs)? {
            Pair::OneServer(_) => client::call(0, &CtxDisablePeerAccess { peer: peer.id() }, &[]).map(|_| ()),
            Pair::TwoServers => Err(CUDA_ERROR_PEER_ACCESS_NOT_ENABLED),
            Pair::OlderServer => Err(CUDA_ERROR_NOT_SUPPORTED),
        }
    }
}
