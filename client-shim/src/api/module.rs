//! Modules and libraries, their functions and kernels: a load is one round trip whose reply lists every kernel with
//! its parameter layout and attributes, so lookups, names, parameter queries and most attributes are local.

use std::ffi::{c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use vgpu_cuda_sys::driver::{
    CUdevice_attribute, CUdeviceptr, CUfunc_cache, CUfunction, CUfunction_attribute, CUkernel, CUlibrary, CUmodule,
    CUsharedconfig,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::image::{image_len, ImageLen, FATBIN_MAGIC, FATBIN_WRAPPER_MAGIC};
use vgpu_dataplane::wire::*;

use super::spread::{ensure_library, placement_of_load, route_of_function, servers_of};
use super::{need_ctx, ClientHandle};
use crate::client::Route;
use crate::state::{self, FunctionEntry, ModuleInfo};
use crate::{client, ffi};

/// `\x7fELF`: a cubin.
const ELF_MAGIC: u32 = 0x464c_457f;

/// Reads a module image of unknown length from the caller: PTX up to its NUL, fat binaries and cubins by
/// their headers, the fat-binary wrapper through its data pointer.
fn read_image<'a>(image: *const c_void) -> CuResult<&'a [u8]> {
    if image.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut ptr = image as *const u8;
    for _ in 0..2 {
        let head_len = match ffi::field::<u32>(ffi::bytes(ptr, 4)?, 0)? {
            FATBIN_WRAPPER_MAGIC | FATBIN_MAGIC => 16,
            ELF_MAGIC => 64,
            _ => 4,
        };
        let head = ffi::bytes(ptr, head_len)?;
        match image_len(head).map_err(|_| CUDA_ERROR_INVALID_IMAGE)? {
            ImageLen::Exact(n) => return ffi::bytes(ptr, n as usize),
            ImageLen::NulTerminated => return ffi::bytes(ptr, ffi::strlen_with_nul(ptr)),
            ImageLen::Wrapper => {
                // struct { u32 magic; u32 version; const void* data; void* filename_or_fatbins; }
                let data = ffi::field::<u64>(head, 8).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
                ptr = data as *const u8;
            }
        }
    }
    Err(CUDA_ERROR_INVALID_IMAGE)
}

/// Loads a module (`is_library` false) or a library from an image and hands its handle out through `out`.
fn load<H: ClientHandle<Id = ModuleId>>(out: *mut H, image: *const c_void, is_library: bool) -> CuResult<()> {
    // Libraries belong to no context: the runtime loads them before it makes one current (programs with
    // `__managed__` variables do). Modules load into the current context.
    if is_library {
        client::session()?;
    } else {
        need_ctx()?;
    }
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let bytes = read_image(image)?;
    let id = ModuleId(state::new_id());
    let (device, loaded_on, kept) = placement_of_load(is_library, bytes)?;
    let mut table = Vec::new();
    if is_library {
        match client::call_with_tail(0, &LibraryLoad { library: id }, bytes, &mut table) {
            Ok(_) => {}
            Err(e @ (CUDA_ERROR_INVALID_IMAGE | CUDA_ERROR_INVALID_PTX)) => {
                let info = ModuleInfo {
                    is_library,
                    deferred_error: Some(e),
                    functions: Default::default(),
                    bound: Default::default(),
                    device,
                    loaded_on,
                    image: None,
                };
                state::write().modules.insert(id, info);
                return ffi::write(out, H::of(id));
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
            bound: Default::default(),
            device,
            loaded_on,
            image: kept,
        },
    );
    ffi::write(out, H::of(id))
}

/// `cuModuleLoad` / `cuLibraryLoadFromFile`: the file is read here, on the app's machine, where its path
/// means something, and loaded as an in-memory image (a NUL after it ends a PTX text).
fn load_file<H: ClientHandle<Id = ModuleId>>(out: *mut H, path: *const c_char, is_library: bool) -> CuResult<()> {
    let path = ffi::cstr(path)?;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let mut image = std::fs::read(path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    if image.is_empty() {
        return Err(CUDA_ERROR_INVALID_IMAGE);
    }
    image.push(0);
    load(out, image.as_ptr() as *const c_void, is_library)
}

/// Loads a module from an image of any kind (a fat-binary wrapper included), for the runtime's private
/// `CUDART_INTERFACE` loaders.
pub(crate) fn load_module_image(out: *mut CUmodule, image: *const c_void) -> CuResult<()> {
    load(out, image, false)
}

fn unload(id: ModuleId, is_library: bool) -> CuResult<()> {
    let deferred = match state::read().modules.get(&id) {
        Some(m) if m.is_library == is_library => m.deferred_error.is_some(),
        _ => return Err(CUDA_ERROR_INVALID_HANDLE),
    };
    if is_library && !deferred {
        for server in servers_of(id) {
            client::call_to(Route::Server(server), 0, &LibraryUnload { library: id }, &[])?;
        }
    } else if !is_library {
        client::call_to(module_route(id), 0, &ModuleUnload { module: id }, &[])?;
    }
    super::query::forget_occupancy();
    let mut reg = state::write();
    reg.modules.remove(&id);
    reg.functions.retain(|_, f| f.module != id);
    let state::Registry {
        functions,
        kernel_functions,
        ..
    } = &mut *reg;
    kernel_functions.retain(|_, fid| functions.contains_key(fid));
    if is_library {
        reg.unloaded_libraries.insert(id);
    }
    Ok(())
}

/// `cuModuleGetFunction` / `cuLibraryGetKernel`: the handle of a function the load reply listed.
fn get_function<H: ClientHandle<Id = FunctionId>>(
    out: *mut H,
    id: ModuleId,
    name: *const c_char,
    is_library: bool,
) -> CuResult<()> {
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
        client::call_to(
            module_route(id),
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
    let fid = bind_function(id, is_library, info)?;
    ffi::write(out, H::of(fid))
}

/// The handle of a function of a loaded module (or a kernel of a library): the one given out before, or a new
/// one bound on both sides.
fn bind_function(id: ModuleId, is_library: bool, info: Arc<FunctionInfo>) -> CuResult<FunctionId> {
    let bound = |reg: &state::Registry| reg.modules.get(&id).and_then(|m| m.bound.get(&info.name).copied());
    if let Some(fid) = bound(&state::read()) {
        return Ok(fid);
    }
    let fid = FunctionId(state::new_id());
    let name = info.name.as_bytes();
    // Sent at once, and before the handle is published to other threads: the runtime binds a kernel on
    // whichever thread launches it first and then launches it from every thread. A library's kernel is bound
    // on every server holding the library (a server that loads it later binds it then).
    if is_library {
        for server in servers_of(id) {
            let call = LibraryGetKernel {
                library: id,
                kernel: fid,
            };
            client::post_now_to(Route::Server(server), 0, &call, name)?;
        }
    } else {
        client::post_now_to(
            module_route(id),
            0,
            &ModuleGetFunction {
                module: id,
                function: fid,
            },
            name,
        )?;
    }
    let mut reg = state::write();
    // Two threads may have bound the same name at once: both handles work, the first one stays the name's.
    if let Some(m) = reg.modules.get_mut(&id) {
        m.bound.entry(info.name.clone()).or_insert(fid);
    }
    reg.functions.insert(
        fid,
        FunctionEntry {
            info,
            is_kernel: is_library,
            module: id,
        },
    );
    Ok(fid)
}

/// The functions of a module or the kernels of a library, by name (the load reply's list).
fn listed_functions(id: ModuleId, is_library: bool) -> CuResult<Vec<Arc<FunctionInfo>>> {
    let reg = state::read();
    let m = reg
        .modules
        .get(&id)
        .filter(|m| m.is_library == is_library)
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    if let Some(e) = m.deferred_error {
        return Err(e);
    }
    let mut all: Vec<_> = m.functions.values().cloned().collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all)
}

/// `cuModuleEnumerateFunctions`/`cuLibraryEnumerateKernels`: handles for the first `n` functions.
fn enumerate<H: ClientHandle<Id = FunctionId>>(out: *mut H, n: u32, id: ModuleId, is_library: bool) -> CuResult<()> {
    let all = listed_functions(id, is_library)?;
    if out.is_null() || (n as usize) < all.len() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for (i, info) in all.into_iter().enumerate() {
        let fid = bind_function(id, is_library, info)?;
        ffi::write(out.wrapping_add(i), H::of(fid))?;
    }
    Ok(())
}

/// Every function of a loaded module with its handle and name, for the private module walk
/// (`dark::module_walk_functions`).
pub(crate) fn module_functions(module: CUmodule) -> CuResult<Vec<(CUfunction, *const c_char)>> {
    let id = module.id();
    listed_functions(id, false)?
        .into_iter()
        .map(|info| {
            let name = c_name(&info.name)?;
            Ok((CUfunction::of(bind_function(id, false, info)?), name))
        })
        .collect()
}

/// A function's name as a C string that lives as long as the process (the driver's does too).
fn c_name(name: &str) -> CuResult<*const c_char> {
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(&p) = names.get(name) {
        return Ok(p as *const c_char);
    }
    let c = std::ffi::CString::new(name).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let p = Box::leak(c.into_boxed_c_str()).as_ptr() as usize;
    names.insert(name.to_string(), p);
    Ok(p as *const c_char)
}

/// `cuModuleGetGlobal`, `cuLibraryGetGlobal` and (`managed`) `cuLibraryGetManaged`.
fn get_global(
    out: *mut CUdeviceptr,
    bytes: *mut usize,
    id: ModuleId,
    name: *const c_char,
    is_library: bool,
    managed: bool,
) -> CuResult<()> {
    // A library's `__managed__` variables are the runtime's to look up before any context exists.
    if managed {
        client::session()?;
    } else {
        need_ctx()?;
    }
    match state::read().modules.get(&id) {
        Some(m) if m.is_library == is_library => {
            if let Some(e) = m.deferred_error {
                return Err(e);
            }
        }
        _ => return Err(CUDA_ERROR_INVALID_HANDLE),
    }
    let name = ffi::cstr(name)?.to_bytes();
    // A library's globals are per device: the current context's (the library is loaded there first).
    if is_library {
        ensure_library(id, Route::Current)?;
    }
    let route = if is_library { Route::Current } else { module_route(id) };
    let r = match (is_library, managed) {
        (true, false) => client::call_to(route, 0, &LibraryGetGlobal { library: id }, name)?,
        (true, true) => client::call_to(route, 0, &LibraryGetManaged { library: id }, name)?,
        _ => client::call_to(route, 0, &ModuleGetGlobal { module: id }, name)?,
    };
    let dptr = r.dptr.get();
    let device = super::route_device(route).unwrap_or(0);
    if managed {
        // The host reaches a `__managed__` variable through this address, as natively.
        crate::mirror::adopt_managed_global(dptr, r.size as usize, device)?;
    } else {
        super::record_range(dptr, r.size, device)?;
    }
    if !out.is_null() {
        ffi::write(out, dptr)?;
    }
    if !bytes.is_null() {
        ffi::write(bytes, r.size as usize)?;
    }
    Ok(())
}

/// Where calls about module `id` go: its device's server (the current context's for a library).
fn module_route(id: ModuleId) -> Route {
    match state::read().modules.get(&id).and_then(|m| m.device) {
        Some(dev) => Route::Device(dev),
        None => Route::Current,
    }
}

/// The function or library kernel behind an id.
pub(crate) fn function(id: FunctionId) -> CuResult<FunctionEntry> {
    state::read()
        .functions
        .get(&id)
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

/// A library kernel (not a function made from one).
fn library_kernel(kernel: CUkernel) -> CuResult<FunctionEntry> {
    let entry = function(kernel.id())?;
    if !entry.is_kernel {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    Ok(entry)
}

/// A function's attributes: from the load reply, from the cache, or fetched once from the server.
pub(crate) fn attributes(id: FunctionId) -> CuResult<[i32; FUNC_ATTR_COUNT]> {
    let entry = function(id)?;
    if let Some(a) = known_attributes(&entry, id) {
        return Ok(a);
    }
    let route = route_of_function(id, StreamId::NULL)?;
    let r = client::call_to(route, 0, &FuncGetAttributes { function: id }, &[])?;
    state::write().func_attrs.insert(id, r.attrs);
    Ok(r.attrs)
}

/// Attributes already known without a round trip (for launch checks): what was set or fetched since the
/// load, else what the load reported.
pub(crate) fn known_attributes(f: &FunctionEntry, id: FunctionId) -> Option<[i32; FUNC_ATTR_COUNT]> {
    if let Some(a) = state::read().func_attrs.get(&id) {
        return Some(*a);
    }
    (f.info.attrs != ATTRS_UNKNOWN).then_some(f.info.attrs)
}

/// Forgets what the shim remembers of functions in a context that is gone (destroyed or reset): the functions
/// `cuKernelGetFunction` gave there, and the occupancy answers.
pub(crate) fn forget_context_functions(ctx: ContextId) {
    super::query::forget_occupancy();
    state::write().kernel_functions.retain(|&(_, c), _| c != ctx);
}

/// `cuFuncGetAttribute`/`cuKernelGetAttribute`.
fn get_attribute(out: *mut i32, attrib: CUfunction_attribute, id: FunctionId) -> CuResult<()> {
    let attrs = attributes(id)?;
    let v = attrs.get(attrib.0 as usize).copied().ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if v == i32::MIN {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    ffi::write(out, v)
}

/// `cuFuncSetAttribute`/`cuKernelSetAttribute`: checked here, applied by the server's driver.
fn set_attribute(id: FunctionId, attrib: CUfunction_attribute, value: i32) -> CuResult<()> {
    use CUfunction_attribute as A;
    let entry = function(id)?;
    // Settable: the dynamic shared memory size, the carveout, the cluster and scheduling attributes. The
    // others are read-only.
    let valid = match attrib {
        A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => {
            let optin = client::session()?
                .devices
                .first()
                .and_then(|d| {
                    super::device::attribute(
                        d,
                        CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                    )
                })
                .unwrap_or(i32::MAX);
            let static_smem = attributes(id)?[A::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES.0 as usize].max(0);
            value >= 0 && value.saturating_add(static_smem) <= optin
        }
        // A percentage of the maximum shared memory, or CU_SHAREDMEM_CARVEOUT_DEFAULT (-1).
        A::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => (-1..=100).contains(&value),
        A::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED => value == 0 || value == 1,
        // CUclusterSchedulingPolicy: DEFAULT, SPREAD, LOAD_BALANCING.
        A::CU_FUNC_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE => (0..=2).contains(&value),
        A::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_WIDTH
        | A::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_HEIGHT
        | A::CU_FUNC_ATTRIBUTE_REQUIRED_CLUSTER_DEPTH => value >= 0,
        _ => false,
    };
    // Refused at the call, as natively (the request itself is posted without waiting for the server).
    if !valid {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let call = FuncSetAttribute {
        function: id,
        attrib: attrib.0 as i32,
        value,
    };
    let owned = state::read().owners.contains_key(&id.get());
    if entry.is_kernel && !owned {
        // A library kernel: set on every server holding its library, and again on those that load it later.
        for server in servers_of(entry.module) {
            client::post_to(Route::Server(server), 0, &call, &[])?;
        }
        state::write()
            .kernel_attrs_set
            .entry(id)
            .or_default()
            .push((attrib.0 as i32, value));
    } else {
        client::post_to(route_of_function(id, StreamId::NULL)?, 0, &call, &[])?;
    }
    // Later queries see the new value. Frameworks set the same value before every launch of some kernels: the
    // occupancy answers stay unless it changed.
    let mut attrs = known_attributes(&entry, id).unwrap_or(ATTRS_UNKNOWN);
    if attrs == ATTRS_UNKNOWN || attrs[attrib.0 as usize] != value {
        super::query::forget_occupancy_of(id);
    }
    if attrs != ATTRS_UNKNOWN {
        attrs[attrib.0 as usize] = value;
        state::write().func_attrs.insert(id, attrs);
    }
    Ok(())
}

/// `cuFuncGetParamInfo`/`cuKernelGetParamInfo`: a parameter's offset and size in the packed argument buffer.
fn param_info(id: FunctionId, index: usize, offset: *mut usize, size: *mut usize) -> CuResult<()> {
    let entry = function(id)?;
    let &(o, s) = entry.info.params.get(index).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    ffi::write(offset, o as usize)?;
    ffi::write(size, s as usize)
}

/// A cache preference: accepted as natively (the hardware since Volta sizes L1/shared memory per launch).
fn check_cache_config(config: CUfunc_cache) -> CuResult<()> {
    if config.0 > CUfunc_cache::CU_FUNC_CACHE_PREFER_EQUAL.0 {
        Err(CUDA_ERROR_INVALID_VALUE)
    } else {
        Ok(())
    }
}

entry! {
    cuModuleLoadData, cuModuleLoadFatBinary => |f, out, image| {
        load(out, image, false)
    }
    cuModuleLoadDataEx => |f, out, image, _num_options, _options, _option_values| {
        // JIT options tune the server's compilation of PTX (log buffers stay empty here).
        load(out, image, false)
    }
    cuModuleLoad => |f, out, path| {
        need_ctx()?;
        load_file(out, path, false)
    }
    cuLibraryLoadData => |f, out, code, _jit_options, _jit_values, _num_jit, _lib_options, _lib_values, _num_lib| {
        load(out, code, true)
    }
    cuLibraryLoadFromFile => |f, out, path, _jit_options, _jit_values, _num_jit, _lib_options, _lib_values, _num_lib| {
        client::session()?;
        load_file(out, path, true)
    }
    cuModuleUnload => |f, module| {
        unload(module.id(), false)
    }
    cuLibraryUnload => |f, library| {
        unload(library.id(), true)
    }
    cuModuleGetFunction => |f, out, module, name| {
        get_function(out, module.id(), name, false)
    }
    cuLibraryGetKernel => |f, out, library, name| {
        get_function(out, library.id(), name, true)
    }
    cuModuleGetGlobal_v2 => |f, out, bytes, module, name| {
        get_global(out, bytes, module.id(), name, false, false)
    }
    cuLibraryGetGlobal => |f, out, bytes, library, name| {
        get_global(out, bytes, library.id(), name, true, false)
    }
    cuLibraryGetManaged => |f, out, bytes, library, name| {
        get_global(out, bytes, library.id(), name, true, true)
    }
    cuModuleGetFunctionCount => |f, count, module| {
        ffi::write(count, listed_functions(module.id(), false)?.len() as u32)
    }
    cuLibraryGetKernelCount => |f, count, library| {
        ffi::write(count, listed_functions(library.id(), true)?.len() as u32)
    }
    cuModuleEnumerateFunctions => |f, out, n, module| {
        enumerate(out, n, module.id(), false)
    }
    cuLibraryEnumerateKernels => |f, out, n, library| {
        enumerate(out, n, library.id(), true)
    }
    cuKernelGetFunction => |f, out, kernel| {
        let dev = super::current_device()?;
        let k = function(kernel.id())?;
        if !k.is_kernel || out.is_null() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        ensure_library(k.module, Route::Current)?;
        let key = (kernel.id(), state::current_ctx());
        if let Some(&fid) = state::read().kernel_functions.get(&key) {
            return ffi::write(out, CUfunction::of(fid));
        }
        let fid = FunctionId(state::new_id());
        client::post_now(0, &KernelGetFunction { kernel: kernel.id(), function: fid }, &[])?;
        let mut reg = state::write();
        reg.kernel_functions.insert(key, fid);
        reg.functions.insert(fid, FunctionEntry { is_kernel: false, ..k });
        // The function of the kernel in the current context: it lives on that device.
        reg.owners.insert(fid.get(), dev);
        drop(reg);
        ffi::write(out, CUfunction::of(fid))
    }
    cuFuncGetAttribute => |f, out, attrib, func| {
        get_attribute(out, attrib, func.id())
    }
    cuKernelGetAttribute => |f, out, attrib, kernel, _dev| {
        get_attribute(out, attrib, kernel.id())
    }
    cuFuncSetAttribute => |f, func, attrib, value| {
        set_attribute(func.id(), attrib, value)
    }
    cuKernelSetAttribute => |f, attrib, value, kernel, _dev| {
        library_kernel(kernel)?;
        set_attribute(kernel.id(), attrib, value)
    }
    cuFuncGetParamInfo => |f, func, index, offset, size| {
        param_info(func.id(), index, offset, size)
    }
    cuKernelGetParamInfo => |f, kernel, index, offset, size| {
        param_info(kernel.id(), index, offset, size)
    }
    cuFuncSetCacheConfig => |f, func, config| {
        function(func.id())?;
        check_cache_config(config)
    }
    cuKernelSetCacheConfig => |f, kernel, config, _dev| {
        function(kernel.id())?;
        check_cache_config(config)
    }
    cuFuncSetSharedMemConfig => |f, func, config| {
        function(func.id())?;
        if config.0 > CUsharedconfig::CU_SHARED_MEM_CONFIG_EIGHT_BYTE_BANK_SIZE.0 { Err(CUDA_ERROR_INVALID_VALUE) } else { Ok(()) }
    }
    cuFuncGetName => |f, name, func| {
        let entry = function(func.id())?;
        ffi::write(name, c_name(&entry.info.name)?)
    }
    cuKernelGetName => |f, name, kernel| {
        let entry = library_kernel(kernel)?;
        ffi::write(name, c_name(&entry.info.name)?)
    }
    cuFuncGetModule => |f, out, func| {
        let entry = function(func.id())?;
        ffi::write(out, CUmodule::of(entry.module))
    }
    cuKernelGetLibrary => |f, out, kernel| {
        let entry = library_kernel(kernel)?;
        ffi::write(out, CUlibrary::of(entry.module))
    }
}
