//! Streams: creation with client-chosen ids (no round trip), synchronization, waits on events, the attributes the
//! client keeps, and host functions and callbacks run in stream order.

use std::ffi::{c_int, c_uint};
use std::mem::{offset_of, size_of};

use vgpu_cuda_sys::driver::{
    CUaccessPolicyWindow, CUdevice_attribute, CUlaunchAttributeID, CUstream, CUstreamAttrValue, CUsynchronizationPolicy,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::event::event_id;
use super::{need_ctx, route_of_object, route_of_stream, ClientHandle};
use crate::client::Route;
use crate::{client, ffi, state};

/// Bytes of a stream attribute value (`CUstreamAttrValue`, a union), as the registry keeps them.
pub(crate) const STREAM_ATTR_LEN: usize = size_of::<CUstreamAttrValue>();

/// The wire id of a stream handle: NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD pass through.
pub(crate) fn stream_id(stream: CUstream) -> CuResult<StreamId> {
    let id = stream.id();
    if id.is_builtin() || state::read().streams.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_HANDLE)
    }
}

/// The stream priority range of every GPU since Volta: 0 (lowest) to -5 (highest), what
/// `cuCtxGetStreamPriorityRange` reports.
pub(crate) const STREAM_PRIORITY_LEAST: c_int = 0;
pub(crate) const STREAM_PRIORITY_GREATEST: c_int = -5;

/// Checks a stream attribute value (its bytes) as the driver does. The values are kept by the client: the access
/// policy window, synchronization policy and memory sync domains are performance hints whose absence on the
/// server's stream costs only speed (as for the same attributes given at launch, `launch::read_launch_config`);
/// the priority is the stream's own, as reported by `cuStreamGetPriority`.
fn check_stream_attr(id: CUlaunchAttributeID, v: &[u8]) -> CuResult<()> {
    let word = |at: usize| ffi::field::<u32>(v, at);
    match id {
        CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW => {
            let bytes = ffi::field::<u64>(v, offset_of!(CUaccessPolicyWindow, num_bytes))?;
            let ratio = ffi::field::<f32>(v, offset_of!(CUaccessPolicyWindow, hitRatio))?;
            let hit = word(offset_of!(CUaccessPolicyWindow, hitProp))?;
            let miss = word(offset_of!(CUaccessPolicyWindow, missProp))?;
            let max_window = client::session()?
                .devices
                .first()
                .and_then(|d| {
                    super::device::attribute(d, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE)
                })
                .unwrap_or(i32::MAX);
            // CUaccessProperty: NORMAL 0, STREAMING 1, PERSISTING 2.
            if !(0.0..=1.0).contains(&ratio) || hit > 2 || miss > 2 || bytes > max_window.max(0) as u64 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            Ok(())
        }
        CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY => {
            let policy = word(0)?;
            let valid = CUsynchronizationPolicy::CU_SYNC_POLICY_AUTO.0
                ..=CUsynchronizationPolicy::CU_SYNC_POLICY_BLOCKING_SYNC.0;
            if valid.contains(&policy) {
                Ok(())
            } else {
                Err(CUDA_ERROR_INVALID_VALUE)
            }
        }
        CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PRIORITY
        | CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP => Ok(()),
        // CUlaunchMemSyncDomain: DEFAULT 0, REMOTE 1.
        CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN if word(0)? <= 1 => Ok(()),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

fn stream_create(out: *mut CUstream, flags: c_uint, priority: c_int) -> CuResult<()> {
    let dev = super::current_device()?;
    if out.is_null() || flags & !1 != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    client::sticky_error()?;
    // The driver clamps a priority outside the range cuCtxGetStreamPriorityRange reports.
    let priority = priority.clamp(STREAM_PRIORITY_GREATEST, STREAM_PRIORITY_LEAST);
    let stream = StreamId(state::new_id());
    // Sent at once, as streams made on one thread are often used on another.
    client::post_now(
        0,
        &StreamCreate {
            stream,
            flags,
            priority,
        },
        &[],
    )?;
    let mut reg = state::write();
    reg.streams.insert(stream, (flags, priority));
    reg.owners.insert(stream.get(), dev);
    drop(reg);
    ffi::write(out, CUstream::of(stream))
}

/// Whether two routes lead to the same server.
pub(crate) fn same_server(a: Route, b: Route) -> CuResult<bool> {
    Ok(client::server_index(a)? == client::server_index(b)?)
}

/// Waits for all the work queued on `stream` (of a call with `flags`), then brings back what it wrote into pinned
/// memory. No round trip when this thread has just seen the stream idle and nothing was sent to its server since.
pub(crate) fn wait_for_stream(flags: u16, stream: StreamId) -> CuResult<()> {
    let route = route_of_stream(stream);
    let server = client::server_index(route)?;
    let key = crate::mirror::stream_key(flags, stream);
    if client::stream_known_idle(server, key.as_u64()) {
        client::sticky_error()?;
    } else {
        client::wait_noting_idle(server, key.as_u64(), || {
            client::call_to(route, flags, &StreamSynchronize { stream }, &[])
        })?;
    }
    super::staging::waited(server, Some(key));
    crate::mirror::after_sync_of(crate::mirror::Covered::Stream { server, stream: key })
}

/// What a wait for `stream` (of a call with `flags`, made by this thread; `route`: the stream's) waits for, as
/// mirrors name it.
pub(crate) fn stream_covered(route: Route, flags: u16, stream: StreamId) -> CuResult<crate::mirror::Covered> {
    Ok(crate::mirror::Covered::Stream {
        server: client::server_index(route)?,
        stream: crate::mirror::stream_key(flags, stream),
    })
}

/// Runs a host function in stream order: once the work queued before it on `stream` has finished. The app
/// thread waits for that here, so work queued after the call is queued after the function has run.
pub(crate) fn host_callback(flags: u16, stream: CUstream, run: impl FnOnce(CUresult)) -> CuResult<()> {
    need_ctx()?;
    // The function may read what kernels before it wrote into pinned memory.
    let status = wait_for_stream(flags, stream_id(stream)?).err().unwrap_or(CUDA_SUCCESS);
    run(status);
    match status {
        CUDA_SUCCESS => Ok(()),
        e => Err(e),
    }
}

/// The value of a stream attribute the app never set: zero, except CU_SYNC_POLICY_AUTO for the synchronization
/// policy.
fn default_stream_attr(attr: CUlaunchAttributeID) -> [u8; STREAM_ATTR_LEN] {
    let mut v = [0u8; STREAM_ATTR_LEN];
    if attr == CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY {
        v[..4].copy_from_slice(&CUsynchronizationPolicy::CU_SYNC_POLICY_AUTO.0.to_ne_bytes());
    }
    v
}

entry! {
    cuStreamCreate => |f, out, flags| {
        stream_create(out, flags, 0)
    }
    cuStreamCreateWithPriority => |f, out, flags, priority| {
        stream_create(out, flags, priority)
    }
    cuStreamDestroy, cuStreamDestroy_v2 => |f, stream| {
        let id = stream.id();
        let route = route_of_stream(id);
        let mut reg = state::write();
        if id.is_builtin() || reg.streams.remove(&id).is_none() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        reg.stream_attrs.retain(|&(s, _), _| s != id);
        reg.owners.remove(&id.get());
        drop(reg);
        client::post_to(route, 0, &StreamDestroy { stream: id }, &[])
    }
    cuStreamSynchronize, cuStreamSynchronize_ptsz => |f, stream| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        super::graph::refuse_sync(super::graph::key(f, stream))?;
        wait_for_stream(f, stream)
    }
    cuStreamQuery, cuStreamQuery_ptsz => |f, stream| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        super::graph::refuse_sync(super::graph::key(f, stream))?;
        let route = route_of_stream(stream);
        client::call_to(route, f, &StreamQuery { stream }, &[])?;
        // Complete: a poller reads what the stream's work wrote into pinned memory, as after a wait.
        crate::mirror::after_sync_of(stream_covered(route, f, stream)?)
    }
    cuStreamWaitEvent, cuStreamWaitEvent_ptsz => |f, stream, event, flags| {
        need_ctx()?;
        let (stream, event) = (stream_id(stream)?, event_id(event)?);
        if super::graph::wait_event(super::graph::key(f, stream), event) {
            return Ok(());
        }
        let (on_stream, on_event) = (route_of_stream(stream), route_of_object(event.get()));
        if !same_server(on_stream, on_event)? {
            // An event of another server: no stream there can wait for it, so the wait happens here, now. Work
            // the app queues on the stream after this call reaches its server after the event has completed,
            // as natively; only the host waits too (the wait is a synchronization here, not a queued one).
            client::flush_all()?;
            client::call_to(on_event, 0, &EventSynchronize { event }, &[])?;
            return Ok(());
        }
        client::post_to(on_stream, f, &StreamWaitEvent { stream, event, flags, _pad: 0 }, &[])
    }
    cuStreamGetFlags, cuStreamGetFlags_ptsz => |f, stream, out| {
        let id = stream_id(stream)?;
        let flags = state::read().streams.get(&id).map(|s| s.0).unwrap_or(0);
        ffi::write(out, flags)
    }
    cuStreamGetPriority, cuStreamGetPriority_ptsz => |f, stream, out| {
        let id = stream_id(stream)?;
        let priority = state::read().streams.get(&id).map(|s| s.1).unwrap_or(0);
        ffi::write(out, priority)
    }
    cuStreamSetAttribute, cuStreamSetAttribute_ptsz => |f, stream, attr, value| {
        need_ctx()?;
        let id = stream_id(stream)?;
        let mut v = [0u8; STREAM_ATTR_LEN];
        v.copy_from_slice(ffi::bytes(value as *const u8, STREAM_ATTR_LEN)?);
        check_stream_attr(attr, &v)?;
        let mut reg = state::write();
        if attr == CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PRIORITY {
            let p = ffi::field::<i32>(&v, 0)?.clamp(STREAM_PRIORITY_GREATEST, STREAM_PRIORITY_LEAST);
            if let Some(s) = reg.streams.get_mut(&id) {
                s.1 = p;
            }
            return Ok(());
        }
        reg.stream_attrs.insert((id, attr.0), v);
        Ok(())
    }
    cuStreamGetAttribute, cuStreamGetAttribute_ptsz => |f, stream, attr, out| {
        need_ctx()?;
        let id = stream_id(stream)?;
        let reg = state::read();
        let v = match attr {
            CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PRIORITY => {
                let mut v = [0u8; STREAM_ATTR_LEN];
                let p = reg.streams.get(&id).map(|s| s.1).unwrap_or(0);
                v[..4].copy_from_slice(&p.to_ne_bytes());
                v
            }
            CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW
            | CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP
            | CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN
            | CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY => {
                reg.stream_attrs.get(&(id, attr.0)).copied().unwrap_or_else(|| default_stream_attr(attr))
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        drop(reg);
        ffi::bytes_mut(out as *mut u8, STREAM_ATTR_LEN)?.copy_from_slice(&v);
        Ok(())
    }
    cuStreamGetId, cuStreamGetId_ptsz => |f, stream, out| {
        ffi::write(out, stream_id(stream)?.get())
    }
    cuStreamGetCtx, cuStreamGetCtx_ptsz => |f, stream, out| {
        let id = stream_id(stream)?;
        let ctx = need_ctx()?;
        // A created stream of another device than the current context's belongs to that device's context.
        let ctx = match super::route_device(route_of_stream(id)) {
            Some(dev) if state::current_device() != Some(dev) => state::primary_ctx_id(dev),
            _ => ctx,
        };
        ffi::write(out, ClientHandle::of(ctx))
    }
    cuStreamGetCtx_v2, cuStreamGetCtx_v2_ptsz => |f, stream, ctx, green| {
        stream_id(stream)?;
        if ctx.is_null() || green.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // vGPU makes no green contexts: every stream belongs to a regular one.
        ffi::write(ctx, ClientHandle::of(need_ctx()?))?;
        ffi::write(green, std::ptr::null_mut())
    }
    cuStreamGetGreenCtx => |f, stream, out| {
        // The stream's green context: NULL for a stream of a regular context (vGPU makes no green contexts;
        // cuGreenCtxCreate answers CUDA_ERROR_NOT_SUPPORTED), CUDA_ERROR_INVALID_HANDLE for an unknown stream.
        let id = stream_id(stream)?;
        if id.is_builtin() {
            need_ctx()?;
        }
        ffi::write(out, std::ptr::null_mut())
    }
    cuStreamGetDevice, cuStreamGetDevice_ptsz => |f, stream, out| {
        let id = stream_id(stream)?;
        need_ctx()?;
        let dev = super::route_device(route_of_stream(id)).unwrap_or(0);
        ffi::write(out, dev)
    }
    cuLaunchHostFunc, cuLaunchHostFunc_ptsz => |f, stream, func, user| {
        if func.is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let key = super::graph::key(f, stream_id(stream)?);
        let node = super::graph::Node::Host { function: func, user: user as usize };
        if let Some(r) = super::graph::capture(key, node) {
            return r;
        }
        // Natively a host function is skipped once the stream has failed; so it is here.
        host_callback(f, stream, |status| if status == CUDA_SUCCESS { ffi::call_host_fn(func, user as usize) })
    }
    cuStreamAddCallback, cuStreamAddCallback_ptsz => |f, stream, callback, user, flags| {
        if callback.is_none() || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A stream callback runs even after an error, and is told the stream's status.
        host_callback(f, stream, |status| ffi::call_stream_callback(callback, stream, status, user))
    }
}
