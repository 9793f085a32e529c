//! Contexts: primary-context reference counts, creation and destruction (one round trip each), and the
//! per-thread current-context stack, which lives in the client and is mirrored to the thread's server thread.

use std::ffi::{c_int, c_uint};

use vgpu_cuda_sys::driver::{CUcontext, CUctx_flags, CUdevice, CUfunc_cache, CUsharedconfig};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::ClientHandle;
use crate::client::Route;
use crate::state::{self, ContextInfo, NO_CONTEXT};
use crate::{client, ffi};

/// `CU_CTX_MAP_HOST`.
const CU_CTX_MAP_HOST: c_uint = CUctx_flags::CU_CTX_MAP_HOST.0;

fn check_device(dev: CUdevice) -> CuResult<()> {
    let s = client::session()?;
    if dev < 0 || dev as usize >= s.devices.len() {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

fn ctx_id(ctx: CUcontext) -> ContextId {
    ctx.id()
}

fn ctx_handle(ctx: ContextId) -> CUcontext {
    CUcontext::of(ctx)
}

fn known_ctx(ctx: ContextId) -> CuResult<ContextInfo> {
    state::read()
        .contexts
        .get(&ctx)
        .copied()
        .ok_or(CUDA_ERROR_INVALID_CONTEXT)
}

/// Makes `ctx` current on this thread and on its server thread. A primary context nobody has retained yet
/// (the runtime gets it through its private table and makes it current before retaining it) does not exist
/// on the server until the retain, which mirrors it then.
fn mirror_current(ctx: ContextId) -> CuResult<()> {
    let unretained = {
        let reg = state::read();
        match reg.contexts.get(&ctx) {
            Some(c) if c.primary => reg.primary_refs.get(&c.device).copied().unwrap_or(0) == 0,
            _ => false,
        }
    };
    if unretained {
        return Ok(());
    }
    // Mirrored on the server of the context's device; making none current tells the server of the context
    // current until now.
    let server = match ctx {
        NO_CONTEXT => client::current_server(),
        _ => state::server_of_ctx(ctx),
    };
    client::set_current_on(server, ctx)?;
    if ctx != NO_CONTEXT {
        // `__managed__` variables the runtime looked up before this context existed get their values now.
        // Not an error of this call if it cannot: the next launch tries again.
        let _ = crate::mirror::fetch_deferred();
    }
    Ok(())
}

fn create(out: *mut CUcontext, flags: c_uint, dev: CUdevice) -> CuResult<()> {
    check_device(dev)?;
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let ctx = ContextId(state::new_id());
    let server = client::session()?.server_of(dev)?;
    client::call_to(
        Route::Server(server),
        0,
        &CtxCreate {
            ctx,
            flags,
            dev: dev as u32,
        },
        &[],
    )?;
    {
        let mut reg = state::write();
        reg.contexts.insert(
            ctx,
            ContextInfo {
                device: dev,
                primary: false,
            },
        );
        reg.ctx_flags.insert(ctx, flags);
    }
    // The server's driver made it current on this thread's server thread, as cuCtxCreate does.
    client::note_current_on(server, ctx);
    state::push_ctx(ctx);
    ffi::write(out, ctx_handle(ctx))
}

fn destroy(ctx: CUcontext) -> CuResult<()> {
    client::session()?;
    if ctx.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let id = ctx_id(ctx);
    let info = known_ctx(id)?;
    if info.primary {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    client::call_to(Route::Server(state::server_of_ctx(id)), 0, &CtxDestroy { ctx: id }, &[])?;
    super::module::forget_context_functions(id);
    client::forget_current(id);
    state::write().contexts.remove(&id);
    let was_current = state::current_ctx() == id;
    state::forget_ctx(id);
    if was_current {
        // The driver pops a destroyed current context; say which one is current now on both sides.
        mirror_current(state::current_ctx())?;
    }
    Ok(())
}

fn release_primary(dev: CUdevice) -> CuResult<()> {
    check_device(dev)?;
    let last = {
        let mut reg = state::write();
        let refs = reg.primary_refs.entry(dev).or_insert(0);
        if *refs == 0 {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        *refs -= 1;
        *refs == 0
    };
    if last {
        client::call_to(
            Route::Server(client::session()?.server_of(dev)?),
            0,
            &PrimaryCtxRelease {
                dev: dev as u32,
                _pad: 0,
            },
            &[],
        )?;
    }
    Ok(())
}

fn synchronize() -> CuResult<()> {
    super::need_ctx()?;
    client::call(0, &CtxSynchronize {}, &[])?;
    super::staging::waited(client::current_server(), None);
    crate::mirror::after_sync_of(crate::mirror::Covered::Server(client::current_server()))
}

entry! {
    cuDevicePrimaryCtxRetain => |f, out, dev| {
        check_device(dev)?;
        if out.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let ctx = state::primary_ctx_id(dev);
        // The first retain, or the first since a reset (which destroyed the server's context without
        // releasing it): the server's driver (re-)creates the context.
        let first = {
            let reg = state::read();
            reg.primary_refs.get(&dev).copied().unwrap_or(0) == 0 || reg.primary_reset.contains(&dev)
        };
        if first {
            let server = Route::Server(client::session()?.server_of(dev)?);
            client::call_to(server, 0, &PrimaryCtxRetain { ctx, dev: dev as u32, _pad: 0 }, &[])?;
        }
        {
            let mut reg = state::write();
            reg.contexts.insert(ctx, ContextInfo { device: dev, primary: true });
            reg.primary_reset.remove(&dev);
            *reg.primary_refs.entry(dev).or_insert(0) += 1;
        }
        if first && state::current_ctx() == ctx {
            // Made current before it was retained: the server learns of it only now.
            mirror_current(ctx)?;
        }
        ffi::write(out, ctx_handle(ctx))
    }
    cuDevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2 => |f, dev| {
        release_primary(dev)
    }
    cuDevicePrimaryCtxReset, cuDevicePrimaryCtxReset_v2 => |f, dev| {
        check_device(dev)?;
        // The runtime's context-local storage destructors are due when the primary context goes away.
        crate::dark::context_reset(state::primary_ctx_id(dev));
        // Copies the app queued into its host memory land before the context goes: the reset frees the server's
        // buffers holding their bytes. A sticky error from that work is the reset's to clear, not to report.
        let server = Route::Server(client::session()?.server_of(dev)?);
        let _ = client::call_to(Route::Device(dev), 0, &CtxSynchronize {}, &[]);
        let _ = crate::mirror::after_sync_of(crate::mirror::Covered::Server(client::server_index(server)?));
        client::call_to(server, 0, &PrimaryCtxReset { dev: dev as u32, _pad: 0 }, &[])?;
        super::module::forget_context_functions(state::primary_ctx_id(dev));
        client::forget_current(state::primary_ctx_id(dev));
        client::pending_clear();
        client::clear_sticky();
        state::write().primary_reset.insert(dev);
        Ok(())
    }
    cuDevicePrimaryCtxGetState => |f, dev, flags, active| {
        check_device(dev)?;
        let (refs, pflags) = {
            let reg = state::read();
            (reg.primary_refs.get(&dev).copied().unwrap_or(0), reg.primary_flags.get(&dev).copied().unwrap_or(0))
        };
        ffi::write(flags, pflags)?;
        ffi::write(active, (refs > 0) as c_int)
    }
    cuDevicePrimaryCtxSetFlags, cuDevicePrimaryCtxSetFlags_v2 => |f, dev, flags| {
        check_device(dev)?;
        // Scheduling (0x7), MAP_HOST (0x8), LMEM_RESIZE_TO_MAX (0x10), COREDUMP (0x20), USER_COREDUMP (0x40),
        // SYNC_MEMOPS (0x80). They shape how the server's driver waits, which the client does not see;
        // they are kept for the queries.
        if flags & !0xff != 0 || flags & 0x7 > 4 || flags & 0x7 == 3 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        state::write().primary_flags.insert(dev, flags);
        Ok(())
    }
    cuCtxGetFlags => |f, flags| {
        let ctx = super::need_ctx()?;
        let reg = state::read();
        let v = match reg.contexts.get(&ctx) {
            Some(c) if c.primary => reg.primary_flags.get(&c.device).copied().unwrap_or(0),
            _ => reg.ctx_flags.get(&ctx).copied().unwrap_or(0),
        };
        // CU_CTX_MAP_HOST has no effect since CUDA 11: every context behaves as though it were set, and the
        // driver reports it so (cudaGetDeviceFlags includes cudaDeviceMapHost natively).
        ffi::write(flags, v | CU_CTX_MAP_HOST)
    }
    cuCtxSetFlags => |f, flags| {
        let ctx = super::need_ctx()?;
        if flags & !0xff != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut reg = state::write();
        match reg.contexts.get(&ctx).copied() {
            Some(c) if c.primary => reg.primary_flags.insert(c.device, flags),
            _ => reg.ctx_flags.insert(ctx, flags),
        };
        Ok(())
    }
    cuCtxGetApiVersion => |f, ctx, version| {
        let id = if ctx.is_null() { super::need_ctx()? } else { ctx_id(ctx) };
        known_ctx(id)?;
        // Every context made through the v2 API (all of them since CUDA 3.2) reports 3020.
        ffi::write(version, 3020)
    }
    cuCtxGetId => |f, ctx, id| {
        let c = if ctx.is_null() { super::need_ctx()? } else { ctx_id(ctx) };
        known_ctx(c)?;
        ffi::write(id, c.get())
    }
    cuCtxGetLimit => |f, value, limit| {
        super::need_ctx()?;
        if value.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // The server's driver knows its defaults and what the app set: both shape what kernels can do there.
        let r = client::call(0, &CtxGetLimit { limit: limit.0, _pad: 0 }, &[])?;
        ffi::write(value, r.value as usize)
    }
    cuCtxSetLimit => |f, limit, value| {
        super::need_ctx()?;
        client::call(0, &CtxSetLimit { value: value as u64, limit: limit.0, _pad: 0 }, &[]).map(|_| ())
    }
    cuCtxGetStreamPriorityRange => |f, least, greatest| {
        super::need_ctx()?;
        // Every GPU since Volta: priorities 0 (lowest) to -5 (highest). NULL outputs are allowed.
        if !least.is_null() {
            ffi::write(least, super::stream::STREAM_PRIORITY_LEAST)?;
        }
        if !greatest.is_null() {
            ffi::write(greatest, super::stream::STREAM_PRIORITY_GREATEST)?;
        }
        Ok(())
    }
    cuCtxGetCacheConfig => |f, config| {
        let ctx = super::need_ctx()?;
        let v = state::read().cache_config.get(&ctx).copied().unwrap_or(0);
        ffi::write(config, CUfunc_cache(v))
    }
    cuCtxSetCacheConfig => |f, config| {
        let ctx = super::need_ctx()?;
        if config.0 > CUfunc_cache::CU_FUNC_CACHE_PREFER_EQUAL.0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A preference only: the hardware since Volta sizes L1/shared memory per launch.
        state::write().cache_config.insert(ctx, config.0);
        Ok(())
    }
    cuCtxGetSharedMemConfig => |f, config| {
        super::need_ctx()?;
        // The only bank size since Maxwell.
        ffi::write(config, CUsharedconfig::CU_SHARED_MEM_CONFIG_FOUR_BYTE_BANK_SIZE)
    }
    cuCtxSetSharedMemConfig => |f, config| {
        super::need_ctx()?;
        if config.0 > CUsharedconfig::CU_SHARED_MEM_CONFIG_EIGHT_BYTE_BANK_SIZE.0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(())
    }
    cuCtxResetPersistingL2Cache => |f| {
        super::need_ctx()?;
        Ok(())
    }
    cuCtxCreate, cuCtxCreate_v2 => |f, out, flags, dev| {
        create(out, flags, dev)
    }
    cuCtxCreate_v4 => |f, out, params, flags, dev| {
        if !params.is_null() {
            // Execution-affinity and CIG parameters are not remoted yet.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        create(out, flags, dev)
    }
    cuCtxDestroy, cuCtxDestroy_v2 => |f, ctx| {
        destroy(ctx)
    }
    cuCtxGetCurrent => |f, out| {
        client::session()?;
        ffi::write(out, ctx_handle(state::current_ctx()))
    }
    cuCtxSetCurrent => |f, ctx| {
        let id = ctx_id(ctx);
        if id != NO_CONTEXT {
            known_ctx(id)?;
        } else {
            client::session()?;
        }
        if state::current_ctx() != id {
            mirror_current(id)?;
            state::set_current_ctx(id);
        }
        Ok(())
    }
    cuCtxPushCurrent, cuCtxPushCurrent_v2 => |f, ctx| {
        let id = ctx_id(ctx);
        known_ctx(id)?;
        mirror_current(id)?;
        state::push_ctx(id);
        Ok(())
    }
    cuCtxPopCurrent, cuCtxPopCurrent_v2 => |f, out| {
        client::session()?;
        let (popped, now) = state::pop_ctx().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        mirror_current(now)?;
        if !out.is_null() {
            ffi::write(out, ctx_handle(popped))?;
        }
        Ok(())
    }
    cuCtxGetDevice => |f, dev| {
        let ctx = super::need_ctx()?;
        ffi::write(dev, known_ctx(ctx)?.device)
    }
    cuCtxGetDevice_v2 => |f, dev, ctx| {
        let id = if ctx.is_null() { super::need_ctx()? } else { ctx_id(ctx) };
        ffi::write(dev, known_ctx(id)?.device)
    }
    cuCtxSynchronize => |f| {
        synchronize()
    }
    cuCtxSynchronize_v2 => |f, ctx| {
        if !ctx.is_null() && ctx_id(ctx) != state::current_ctx() {
            // Synchronizing another context than the current one needs a context switch on the server.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        synchronize()
    }
}
