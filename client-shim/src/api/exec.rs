//! Streams, events, modules, libraries and launches. Creation uses client-chosen ids (no round trip); kernel
//! names, parameter layouts and attributes arrive with the module load, so lookups and launches are local.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::Arc;

use bytes::BufMut;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::image::{image_len, ImageLen, FATBIN_WRAPPER_MAGIC};
use vgpu_dataplane::wire::*;

use super::{need_ctx, Handle};
use crate::state::{self, FunctionEntry, ModuleInfo};
use crate::{client, ffi};

/// The wire id of a stream handle: NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD pass through.
pub(crate) fn stream_id(stream: Handle) -> Result<u64, u32> {
    let id = stream as u64;
    if id <= 2 || state::read().streams.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_HANDLE)
    }
}

fn event_id(event: Handle) -> Result<u64, u32> {
    let id = event as u64;
    if state::read().events.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_HANDLE)
    }
}

fn stream_create(out: *mut Handle, flags: c_uint, priority: c_int) -> Result<(), u32> {
    need_ctx()?;
    if out.is_null() || flags & !1 != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let stream = state::new_id();
    client::post(
        0,
        &StreamCreate {
            stream,
            flags,
            priority,
        },
        &[],
    )?;
    state::write().streams.insert(stream, (flags, priority));
    ffi::write(out, stream as Handle)
}

/// Reads a module image of unknown length from the caller: PTX up to its NUL, fat binaries and cubins by
/// their headers, the fat-binary wrapper through its data pointer.
fn read_image<'a>(image: *const c_void) -> Result<&'a [u8], u32> {
    if image.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut ptr = image as *const u8;
    for _ in 0..2 {
        let magic = ffi::bytes(ptr, 4)?;
        let head_len = match u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]) {
            FATBIN_WRAPPER_MAGIC => 16,
            vgpu_dataplane::image::FATBIN_MAGIC => 16,
            0x464c_457f => 64,
            _ => 4,
        };
        let head = ffi::bytes(ptr, head_len)?;
        match image_len(head).map_err(|_| CUDA_ERROR_INVALID_IMAGE)? {
            ImageLen::Exact(n) => return ffi::bytes(ptr, n as usize),
            ImageLen::NulTerminated => return ffi::bytes(ptr, ffi::strlen_with_nul(ptr)),
            ImageLen::Wrapper => {
                // struct { u32 magic; u32 version; const void* data; void* filename_or_fatbins; }
                let data = u64::from_le_bytes(head[8..16].try_into().map_err(|_| CUDA_ERROR_INVALID_IMAGE)?);
                ptr = data as *const u8;
            }
        }
    }
    Err(CUDA_ERROR_INVALID_IMAGE)
}

fn load(out: *mut Handle, image: *const c_void, is_library: bool) -> Result<(), u32> {
    need_ctx()?;
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let bytes = read_image(image)?;
    let id = state::new_id();
    let mut table = Vec::new();
    if is_library {
        match client::call_with_tail(0, &LibraryLoad { library: id }, bytes, &mut table) {
            Ok(_) => {}
            Err(e @ (CUDA_ERROR_INVALID_IMAGE | CUDA_ERROR_INVALID_PTX)) => {
                let info = ModuleInfo {
                    is_library,
                    deferred_error: Some(e),
                    functions: Default::default(),
                };
                state::write().modules.insert(id, info);
                return ffi::write(out, id as Handle);
            }
            Err(e) => return Err(e),
        }
    } else {
        client::call_with_tail(0, &ModuleLoad { module: id }, bytes, &mut table)?;
    }
    let functions = decode_function_table(&table).map_err(|_| CUDA_ERROR_UNKNOWN)?;
    let functions = functions.into_iter().map(|f| (f.name.clone(), Arc::new(f))).collect();
    state::write().modules.insert(
        id,
        ModuleInfo {
            is_library,
            deferred_error: None,
            functions,
        },
    );
    ffi::write(out, id as Handle)
}

fn unload(module: Handle, is_library: bool) -> Result<(), u32> {
    let id = module as u64;
    let deferred = match state::read().modules.get(&id) {
        Some(m) if m.is_library == is_library => m.deferred_error.is_some(),
        _ => return Err(CUDA_ERROR_INVALID_HANDLE),
    };
    if is_library && !deferred {
        client::call(0, &LibraryUnload { library: id }, &[])?;
    } else if !is_library {
        client::call(0, &ModuleUnload { module: id }, &[])?;
    }
    let mut reg = state::write();
    reg.modules.remove(&id);
    reg.functions.retain(|_, f| f.module != id);
    if is_library {
        reg.unloaded_libraries.insert(id);
    }
    Ok(())
}

fn get_function(out: *mut Handle, module: Handle, name: *const c_char, is_library: bool) -> Result<(), u32> {
    let id = module as u64;
    let name = ffi::cstr(name)?;
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if name.is_empty() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let info = {
        let reg = state::read();
        if is_library && reg.unloaded_libraries.contains(&id) {
            return Err(CUDA_ERROR_NOT_FOUND);
        }
        let m = reg
            .modules
            .get(&id)
            .filter(|m| m.is_library == is_library)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if let Some(e) = m.deferred_error {
            return Err(e);
        }
        name.to_str().ok().and_then(|n| m.functions.get(n).cloned())
    };
    let Some(info) = info else {
        // Not in the load reply: let the driver say why (NOT_FOUND, or a lazily reported image error).
        client::call(
            0,
            &LookupName {
                module: id,
                is_library: is_library as u32,
                _pad: 0,
            },
            name.to_bytes(),
        )?;
        return Err(CUDA_ERROR_NOT_FOUND);
    };
    let fid = state::new_id();
    let name = name.to_bytes();
    if is_library {
        client::post(
            0,
            &LibraryGetKernel {
                library: id,
                kernel: fid,
            },
            name,
        )?;
    } else {
        client::post(
            0,
            &ModuleGetFunction {
                module: id,
                function: fid,
            },
            name,
        )?;
    }
    state::write().functions.insert(
        fid,
        FunctionEntry {
            info,
            is_kernel: is_library,
            module: id,
        },
    );
    ffi::write(out, fid as Handle)
}

fn get_global(
    out: *mut u64,
    bytes: *mut usize,
    module: Handle,
    name: *const c_char,
    is_library: bool,
) -> Result<(), u32> {
    need_ctx()?;
    let id = module as u64;
    match state::read().modules.get(&id) {
        Some(m) if m.is_library == is_library => {
            if let Some(e) = m.deferred_error {
                return Err(e);
            }
        }
        _ => return Err(CUDA_ERROR_INVALID_HANDLE),
    }
    let name = ffi::cstr(name)?.to_bytes();
    let r = if is_library {
        client::call(0, &LibraryGetGlobal { library: id }, name)?
    } else {
        client::call(0, &ModuleGetGlobal { module: id }, name)?
    };
    state::write().device_ranges.insert(r.dptr, r.size);
    if !out.is_null() {
        ffi::write(out, r.dptr)?;
    }
    if !bytes.is_null() {
        ffi::write(bytes, r.size as usize)?;
    }
    Ok(())
}

fn function(f: Handle) -> Result<FunctionEntry, u32> {
    state::read()
        .functions
        .get(&(f as u64))
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

/// A function's attributes: from the load reply, from the cache, or fetched once from the server.
fn attributes(f: Handle) -> Result<[i32; FUNC_ATTR_COUNT], u32> {
    let entry = function(f)?;
    if entry.info.attrs != ATTRS_UNKNOWN {
        return Ok(entry.info.attrs);
    }
    if let Some(a) = state::read().func_attrs.get(&(f as u64)) {
        return Ok(*a);
    }
    let r = client::call(0, &FuncGetAttributes { function: f as u64 }, &[])?;
    state::write().func_attrs.insert(f as u64, r.attrs);
    Ok(r.attrs)
}

/// Attributes already known without a round trip (for launch checks).
fn known_attributes(f: &FunctionEntry, id: u64) -> Option<[i32; FUNC_ATTR_COUNT]> {
    if f.info.attrs != ATTRS_UNKNOWN {
        return Some(f.info.attrs);
    }
    state::read().func_attrs.get(&id).copied()
}

/// CU_LAUNCH_PARAM_END, CU_LAUNCH_PARAM_BUFFER_POINTER, CU_LAUNCH_PARAM_BUFFER_SIZE.
const PARAM_END: usize = 0x00;
const PARAM_BUFFER_POINTER: usize = 0x01;
const PARAM_BUFFER_SIZE: usize = 0x02;

/// The packed-buffer form of `extra`: returns the buffer (pointer and size), either possibly absent.
fn extra_buffer(extra: *mut *mut c_void) -> Result<(Option<*mut c_void>, Option<usize>), u32> {
    let (mut ptr, mut size) = (None, None);
    let mut i = 0;
    loop {
        let key = ffi::array_item(extra as *const *mut c_void, i) as usize;
        match key {
            PARAM_END => break,
            PARAM_BUFFER_POINTER => ptr = Some(ffi::array_item(extra as *const *mut c_void, i + 1)),
            PARAM_BUFFER_SIZE => {
                size = Some(ffi::read(
                    ffi::array_item(extra as *const *mut c_void, i + 1) as *const usize
                )?)
            }
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        i += 2;
        if i > 64 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    Ok((ptr, size))
}

#[allow(clippy::too_many_arguments)]
fn launch(
    flags: u16,
    f: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> Result<(), u32> {
    let ctx = need_ctx()?;
    let entry = function(f)?;
    let stream = stream_id(stream)?;
    let attrs = known_attributes(&entry, f as u64);
    check_launch_shape(ctx, attrs, grid, block, shared_mem)?;
    let info = &entry.info;
    let size = info.args_size();
    let call = LaunchKernel {
        function: f as u64,
        stream,
        grid_x: grid[0],
        grid_y: grid[1],
        grid_z: grid[2],
        block_x: block[0],
        block_y: block[1],
        block_z: block[2],
        shared_mem,
        _pad: 0,
    };
    match (params.is_null(), extra.is_null()) {
        (false, true) => {
            // Check every argument pointer before queueing, so a bad one fails this call, not a later one.
            for i in 0..info.params.len() {
                if ffi::array_item(params as *const *mut c_void, i).is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
            }
            client::post_with(flags, &call, size, |buf| {
                let start = buf.len();
                buf.put_bytes(0, size);
                for (i, &(offset, len)) in info.params.iter().enumerate() {
                    let arg = ffi::array_item(params as *const *mut c_void, i) as *const u8;
                    if let Ok(src) = ffi::bytes(arg, len as usize) {
                        let at = start + offset as usize;
                        buf[at..at + len as usize].copy_from_slice(src);
                    }
                }
            })
        }
        (true, false) => {
            // The driver's answers, measured on driver 580: no buffer at all is fine for a kernel without
            // parameters; a size of 0 for one with parameters, or a missing pointer or size, is INVALID_VALUE;
            // a short buffer is accepted (the rest of the parameters is undefined; we send zeros); a longer
            // one than the parameters is LAUNCH_OUT_OF_RESOURCES.
            match extra_buffer(extra)? {
                (None, None) if size == 0 => client::post(flags, &call, &[]),
                (Some(p), Some(n)) => {
                    if n > size {
                        return Err(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
                    }
                    if n == 0 && size > 0 {
                        return Err(CUDA_ERROR_INVALID_VALUE);
                    }
                    let packed = ffi::bytes(p as *const u8, n)?;
                    client::post_with(flags, &call, size, |buf| {
                        buf.put_slice(packed);
                        buf.put_bytes(0, size - n);
                    })
                }
                _ => Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        (true, true) if size == 0 => client::post(flags, &call, &[]),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// The checks the driver makes before queueing a launch, done here so their errors come back at once.
fn check_launch_shape(
    ctx: u64,
    attrs: Option<[i32; FUNC_ATTR_COUNT]>,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
) -> Result<(), u32> {
    let s = client::session()?;
    let device = state::read().contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
    let dev = s.devices.get(device as usize).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    let limit = |a: usize| dev.attr(a).map(|v| v as u64).unwrap_or(u64::MAX);
    let threads: u64 = block.iter().map(|&b| b as u64).product();
    let func_max = match attrs.map(|a| a[0]) {
        Some(v) if v > 0 => v as u64,
        _ => u64::MAX,
    };
    if grid.contains(&0) || block.contains(&0) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if block[0] as u64 > limit(2) || block[1] as u64 > limit(3) || block[2] as u64 > limit(4) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if grid[0] as u64 > limit(5) || grid[1] as u64 > limit(6) || grid[2] as u64 > limit(7) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if threads > limit(1) || threads > func_max {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if shared as u64 > limit(97) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

entry! {
    [cuStreamCreate] [] (out: *mut Handle, flags: c_uint) |f| {
        stream_create(out, flags, 0)
    }
    [cuStreamCreateWithPriority] [] (out: *mut Handle, flags: c_uint, priority: c_int) |f| {
        stream_create(out, flags, priority)
    }
    [cuStreamDestroy, cuStreamDestroy_v2] [] (stream: Handle) |f| {
        let id = stream as u64;
        if id <= 2 || state::write().streams.remove(&id).is_none() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        client::post(0, &StreamDestroy { stream: id }, &[])
    }
    [cuStreamSynchronize] [cuStreamSynchronize_ptsz] (stream: Handle) |f| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        client::call(f, &StreamSynchronize { stream }, &[]).map(|_| ())
    }
    [cuStreamQuery] [cuStreamQuery_ptsz] (stream: Handle) |f| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        client::call(f, &StreamQuery { stream }, &[]).map(|_| ())
    }
    [cuStreamWaitEvent] [cuStreamWaitEvent_ptsz] (stream: Handle, event: Handle, flags: c_uint) |f| {
        need_ctx()?;
        let (stream, event) = (stream_id(stream)?, event_id(event)?);
        client::post(f, &StreamWaitEvent { stream, event, flags, _pad: 0 }, &[])
    }
    [cuStreamGetFlags] [cuStreamGetFlags_ptsz] (stream: Handle, out: *mut c_uint) |f| {
        let id = stream_id(stream)?;
        let flags = state::read().streams.get(&id).map(|s| s.0).unwrap_or(0);
        ffi::write(out, flags)
    }
    [cuStreamGetPriority] [cuStreamGetPriority_ptsz] (stream: Handle, out: *mut c_int) |f| {
        let id = stream_id(stream)?;
        let priority = state::read().streams.get(&id).map(|s| s.1).unwrap_or(0);
        ffi::write(out, priority)
    }
    [cuEventCreate] [] (out: *mut Handle, flags: c_uint) |f| {
        need_ctx()?;
        if out.is_null() || flags & !0xf != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let event = state::new_id();
        client::post_now(0, &EventCreate { event, flags, _pad: 0 }, &[])?;
        state::write().events.insert(event, flags);
        ffi::write(out, event as Handle)
    }
    [cuEventRecord] [cuEventRecord_ptsz] (event: Handle, stream: Handle) |f| {
        let (event, stream) = (event_id(event)?, stream_id(stream)?);
        client::post(f, &EventRecord { event, stream }, &[])
    }
    [cuEventSynchronize] [] (event: Handle) |f| {
        let event = event_id(event)?;
        client::call(0, &EventSynchronize { event }, &[]).map(|_| ())
    }
    [cuEventQuery] [] (event: Handle) |f| {
        let event = event_id(event)?;
        client::call(0, &EventQuery { event }, &[]).map(|_| ())
    }
    [cuEventElapsedTime, cuEventElapsedTime_v2] [] (ms: *mut f32, start: Handle, end: Handle) |f| {
        if ms.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (start, end) = (event_id(start)?, event_id(end)?);
        {
            // CU_EVENT_DISABLE_TIMING on either event.
            let reg = state::read();
            if [start, end].iter().any(|e| reg.events.get(e).is_some_and(|f| f & 2 != 0)) {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
        }
        let r = client::call(0, &EventElapsedTime { start, end }, &[])?;
        ffi::write(ms, r.ms)
    }
    [cuEventDestroy, cuEventDestroy_v2] [] (event: Handle) |f| {
        let id = event as u64;
        if state::write().events.remove(&id).is_none() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        client::post(0, &EventDestroy { event: id }, &[])
    }
    [cuModuleLoadData] [] (out: *mut Handle, image: *const c_void) |f| {
        load(out, image, false)
    }
    [cuModuleLoadFatBinary] [] (out: *mut Handle, image: *const c_void) |f| {
        load(out, image, false)
    }
    [cuModuleUnload] [] (module: Handle) |f| {
        unload(module, false)
    }
    [cuModuleGetFunction] [] (out: *mut Handle, module: Handle, name: *const c_char) |f| {
        get_function(out, module, name, false)
    }
    [cuModuleGetGlobal_v2] [] (out: *mut u64, bytes: *mut usize, module: Handle, name: *const c_char) |f| {
        get_global(out, bytes, module, name, false)
    }
    [cuLibraryLoadData] [] (
        out: *mut Handle, code: *const c_void,
        _jit_options: *mut c_void, _jit_values: *mut c_void, _num_jit: c_uint,
        _lib_options: *mut c_void, _lib_values: *mut c_void, _num_lib: c_uint
    ) |f| {
        load(out, code, true)
    }
    [cuLibraryUnload] [] (library: Handle) |f| {
        unload(library, true)
    }
    [cuLibraryGetKernel] [] (out: *mut Handle, library: Handle, name: *const c_char) |f| {
        get_function(out, library, name, true)
    }
    [cuLibraryGetGlobal] [] (out: *mut u64, bytes: *mut usize, library: Handle, name: *const c_char) |f| {
        get_global(out, bytes, library, name, true)
    }
    [cuKernelGetFunction] [] (out: *mut Handle, kernel: Handle) |f| {
        need_ctx()?;
        let k = function(kernel)?;
        if !k.is_kernel || out.is_null() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let fid = state::new_id();
        client::post_now(0, &KernelGetFunction { kernel: kernel as u64, function: fid }, &[])?;
        state::write().functions.insert(fid, FunctionEntry { is_kernel: false, ..k });
        ffi::write(out, fid as Handle)
    }
    [cuFuncGetAttribute] [] (out: *mut c_int, attrib: c_int, func: Handle) |f| {
        let attrs = attributes(func)?;
        let v = usize::try_from(attrib).ok().and_then(|a| attrs.get(a).copied()).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if v == i32::MIN {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        ffi::write(out, v)
    }
    [cuKernelGetAttribute] [] (out: *mut c_int, attrib: c_int, kernel: Handle, _dev: c_int) |f| {
        let attrs = attributes(kernel)?;
        let v = usize::try_from(attrib).ok().and_then(|a| attrs.get(a).copied()).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if v == i32::MIN {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        ffi::write(out, v)
    }
    [cuFuncGetParamInfo] [] (func: Handle, index: usize, offset: *mut usize, size: *mut usize) |f| {
        let entry = function(func)?;
        let &(o, s) = entry.info.params.get(index).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        ffi::write(offset, o as usize)?;
        ffi::write(size, s as usize)
    }
    [cuKernelGetParamInfo] [] (kernel: Handle, index: usize, offset: *mut usize, size: *mut usize) |f| {
        let entry = function(kernel)?;
        let &(o, s) = entry.info.params.get(index).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        ffi::write(offset, o as usize)?;
        ffi::write(size, s as usize)
    }
    [cuLaunchKernel] [cuLaunchKernel_ptsz] (
        func: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
        shared: c_uint, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void
    ) |f| {
        launch(f, func, [gx, gy, gz], [bx, by, bz], shared, stream, params, extra)
    }
}
