//! Streams, events, modules, libraries and launches. Creation uses client-chosen ids (no round trip); kernel
//! names, parameter layouts and attributes arrive with the module load, so lookups and launches are local.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use bytes::BufMut;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::image::{image_len, ImageLen, FATBIN_WRAPPER_MAGIC};
use vgpu_dataplane::wire::*;

use super::{need_ctx, Handle};
use crate::state::{self, FunctionEntry, ModuleInfo};
use crate::{client, ffi};

/// The wire id of a stream handle: NULL, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD pass through.
pub(crate) fn stream_id(stream: Handle) -> CuResult<u64> {
    let id = stream as u64;
    if id <= 2 || state::read().streams.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_HANDLE)
    }
}

fn event_id(event: Handle) -> CuResult<u64> {
    let id = event as u64;
    if state::read().events.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_HANDLE)
    }
}

/// The stream priority range of every GPU since Volta: 0 (lowest) to -5 (highest), what
/// `cuCtxGetStreamPriorityRange` reports.
pub(crate) const STREAM_PRIORITY_LEAST: c_int = 0;
pub(crate) const STREAM_PRIORITY_GREATEST: c_int = -5;

/// `CUstreamAttrID` values `cuStreamSetAttribute` accepts (the stream subset of `CUlaunchAttributeID`).
const STREAM_ATTR_ACCESS_POLICY_WINDOW: u32 = 1;
const STREAM_ATTR_SYNCHRONIZATION_POLICY: u32 = 3;
const STREAM_ATTR_PRIORITY: u32 = 8;
const STREAM_ATTR_MEM_SYNC_DOMAIN_MAP: u32 = 9;
const STREAM_ATTR_MEM_SYNC_DOMAIN: u32 = 10;

/// Checks a stream attribute value as the driver does. The values are kept by the client: the access policy
/// window, synchronization policy and memory sync domains are performance hints whose absence on the
/// server's stream costs only speed (as for the same attributes given at launch, `read_launch_config`);
/// the priority is the stream's own, as reported by `cuStreamGetPriority`.
fn check_stream_attr(id: u32, v: &[u8; 64]) -> CuResult<()> {
    let word = |at: usize| u32::from_ne_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]);
    match id {
        STREAM_ATTR_ACCESS_POLICY_WINDOW => {
            // CUaccessPolicyWindow: base_ptr, num_bytes, hitRatio (f32), hitProp, missProp (0..=2).
            let bytes = u64::from_ne_bytes(v[8..16].try_into().unwrap_or_default());
            let ratio = f32::from_bits(word(16));
            let max_window = client::session()?
                .devices
                .first()
                .and_then(|d| d.attr(CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE))
                .unwrap_or(i32::MAX);
            if !(0.0..=1.0).contains(&ratio) || word(20) > 2 || word(24) > 2 || bytes > max_window.max(0) as u64 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            Ok(())
        }
        // CUsynchronizationPolicy: AUTO 1 .. BLOCKING_SYNC 4.
        STREAM_ATTR_SYNCHRONIZATION_POLICY if (1..=4).contains(&word(0)) => Ok(()),
        STREAM_ATTR_PRIORITY | STREAM_ATTR_MEM_SYNC_DOMAIN_MAP => Ok(()),
        // CUlaunchMemSyncDomain: DEFAULT 0, REMOTE 1.
        STREAM_ATTR_MEM_SYNC_DOMAIN if word(0) <= 1 => Ok(()),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// `CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE`.
const CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE: usize = 109;

fn stream_create(out: *mut Handle, flags: c_uint, priority: c_int) -> CuResult<()> {
    need_ctx()?;
    if out.is_null() || flags & !1 != 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    client::sticky_error()?;
    // The driver clamps a priority outside the range cuCtxGetStreamPriorityRange reports.
    let priority = priority.clamp(STREAM_PRIORITY_GREATEST, STREAM_PRIORITY_LEAST);
    let stream = state::new_id();
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
    state::write().streams.insert(stream, (flags, priority));
    ffi::write(out, stream as Handle)
}

/// Reads a module image of unknown length from the caller: PTX up to its NUL, fat binaries and cubins by
/// their headers, the fat-binary wrapper through its data pointer.
fn read_image<'a>(image: *const c_void) -> CuResult<&'a [u8]> {
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

fn load(out: *mut Handle, image: *const c_void, is_library: bool) -> CuResult<()> {
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
                    bound: Default::default(),
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
            bound: Default::default(),
        },
    );
    ffi::write(out, id as Handle)
}

/// Loads a module from an image of any kind (a fat-binary wrapper included), for the runtime's private
/// `CUDART_INTERFACE` loaders.
/// `cuModuleLoad` / `cuLibraryLoadFromFile`: the file is read here, on the app's machine, where its path
/// means something, and loaded as an in-memory image (a NUL after it ends a PTX text).
fn load_file(out: *mut Handle, path: *const c_char, is_library: bool) -> CuResult<()> {
    let path = ffi::cstr(path)?;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.to_bytes()));
    let mut image = std::fs::read(path).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    if image.is_empty() {
        return Err(CUDA_ERROR_INVALID_IMAGE);
    }
    image.push(0);
    load(out, image.as_ptr() as *const c_void, is_library)
}

pub(crate) fn load_module_image(out: *mut Handle, image: *const c_void) -> CuResult<()> {
    load(out, image, false)
}

fn unload(module: Handle, is_library: bool) -> CuResult<()> {
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

fn get_function(out: *mut Handle, module: Handle, name: *const c_char, is_library: bool) -> CuResult<()> {
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
    let fid = bind_function(id, is_library, info)?;
    ffi::write(out, fid as Handle)
}

/// The handle of a function of a loaded module (or a kernel of a library): the one given out before, or a new
/// one bound on both sides.
fn bind_function(id: u64, is_library: bool, info: Arc<FunctionInfo>) -> CuResult<u64> {
    let bound = |reg: &state::Registry| reg.modules.get(&id).and_then(|m| m.bound.get(&info.name).copied());
    if let Some(fid) = bound(&state::read()) {
        return Ok(fid);
    }
    let fid = state::new_id();
    let name = info.name.as_bytes();
    // Sent at once, and before the handle is published to other threads: the runtime binds a kernel on
    // whichever thread launches it first and then launches it from every thread.
    if is_library {
        client::post_now(
            0,
            &LibraryGetKernel {
                library: id,
                kernel: fid,
            },
            name,
        )?;
    } else {
        client::post_now(
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
fn listed_functions(module: Handle, is_library: bool) -> CuResult<Vec<Arc<FunctionInfo>>> {
    let reg = state::read();
    let m = reg
        .modules
        .get(&(module as u64))
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
fn enumerate(out: *mut Handle, n: c_uint, module: Handle, is_library: bool) -> CuResult<()> {
    let all = listed_functions(module, is_library)?;
    if out.is_null() || (n as usize) < all.len() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for (i, info) in all.into_iter().enumerate() {
        let fid = bind_function(module as u64, is_library, info)?;
        ffi::write(out.wrapping_add(i), fid as Handle)?;
    }
    Ok(())
}

/// Every function of a loaded module with its handle and name, for the private module walk
/// (`dark::module_walk_functions`).
pub(crate) fn module_functions(module: Handle) -> CuResult<Vec<(Handle, *const c_char)>> {
    listed_functions(module, false)?
        .into_iter()
        .map(|info| {
            let name = c_name(&info.name)?;
            Ok((bind_function(module as u64, false, info)? as Handle, name))
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

fn get_global(
    out: *mut u64,
    bytes: *mut usize,
    module: Handle,
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
    let r = match (is_library, managed) {
        (true, false) => client::call(0, &LibraryGetGlobal { library: id }, name)?,
        (true, true) => client::call(0, &LibraryGetManaged { library: id }, name)?,
        _ => client::call(0, &ModuleGetGlobal { module: id }, name)?,
    };
    if managed {
        // The host reaches a `__managed__` variable through this address, as natively.
        crate::mirror::adopt_managed_global(r.dptr, r.size as usize)?;
    } else {
        state::write().device_ranges.insert(r.dptr, r.size);
    }
    if !out.is_null() {
        ffi::write(out, r.dptr)?;
    }
    if !bytes.is_null() {
        ffi::write(bytes, r.size as usize)?;
    }
    Ok(())
}

/// The function or library kernel behind a handle.
pub(crate) fn function_entry(f: Handle) -> CuResult<FunctionEntry> {
    function(f)
}

fn function(f: Handle) -> CuResult<FunctionEntry> {
    state::read()
        .functions
        .get(&(f as u64))
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)
}

/// A function's attributes: from the load reply, from the cache, or fetched once from the server.
pub(crate) fn attributes(f: Handle) -> CuResult<[i32; FUNC_ATTR_COUNT]> {
    let entry = function(f)?;
    if let Some(a) = known_attributes(&entry, f as u64) {
        return Ok(a);
    }
    let r = client::call(0, &FuncGetAttributes { function: f as u64 }, &[])?;
    state::write().func_attrs.insert(f as u64, r.attrs);
    Ok(r.attrs)
}

/// Attributes already known without a round trip (for launch checks): what was set or fetched since the
/// load, else what the load reported.
fn known_attributes(f: &FunctionEntry, id: u64) -> Option<[i32; FUNC_ATTR_COUNT]> {
    if let Some(a) = state::read().func_attrs.get(&id) {
        return Some(*a);
    }
    (f.info.attrs != ATTRS_UNKNOWN).then_some(f.info.attrs)
}

/// CU_LAUNCH_PARAM_END, CU_LAUNCH_PARAM_BUFFER_POINTER, CU_LAUNCH_PARAM_BUFFER_SIZE.
const PARAM_END: usize = 0x00;
const PARAM_BUFFER_POINTER: usize = 0x01;
const PARAM_BUFFER_SIZE: usize = 0x02;

/// The packed-buffer form of `extra`: returns the buffer (pointer and size), either possibly absent.
fn extra_buffer(extra: *mut *mut c_void) -> CuResult<(Option<*mut c_void>, Option<usize>)> {
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
) -> CuResult<()> {
    launch_as(
        flags,
        f,
        grid,
        block,
        shared_mem,
        stream,
        params,
        extra,
        false,
        [1, 1, 1],
    )
}

/// A launch, plain or with the cooperative/cluster attributes (which travel as `LaunchKernelEx`).
#[allow(clippy::too_many_arguments)]
fn launch_as(
    flags: u16,
    f: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem: c_uint,
    stream: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
    cooperative: bool,
    cluster: [c_uint; 3],
) -> CuResult<()> {
    let ctx = need_ctx()?;
    let entry = function(f)?;
    let stream = stream_id(stream)?;
    client::sticky_error()?;
    // The function's own limits (threads per block, dynamic shared memory without or with opt-in) decide
    // whether the launch is refused at the call, as natively. A function of a lazily loaded module has
    // none yet: they are fetched once (one round trip per function), so that a launch the driver refuses
    // fails here instead of latching an error that a later, unrelated call would report.
    let attrs = known_attributes(&entry, f as u64).or_else(|| attributes(f).ok());
    check_launch_shape(ctx, attrs, grid, block, shared_mem)?;
    let key = super::graph::key(flags, stream);
    if super::graph::is_capturing(key) {
        if cooperative || cluster.iter().any(|&c| c > 1) {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let node = super::graph::Node::Kernel {
            function: f as u64,
            grid,
            block,
            shared: shared_mem,
            args: pack_args(f, params, extra)?,
        };
        if let Some(r) = super::graph::capture(key, node) {
            return r;
        }
    }
    if cooperative || cluster.iter().any(|&c| c > 1) {
        check_launch_attributes(f, grid, block, shared_mem, cooperative, cluster)?;
        let call = LaunchKernelEx {
            function: f as u64,
            stream,
            grid_x: grid[0],
            grid_y: grid[1],
            grid_z: grid[2],
            block_x: block[0],
            block_y: block[1],
            block_z: block[2],
            shared_mem,
            cooperative: cooperative as u32,
            cluster_x: cluster[0].max(1),
            cluster_y: cluster[1].max(1),
            cluster_z: cluster[2].max(1),
            _pad: 0,
        };
        return send_launch(flags, &call, stream, &entry.info, params, extra);
    }
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
    send_launch(flags, &call, stream, &entry.info, params, extra)
}

/// The driver's synchronous checks of a cooperative or cluster launch: every block of a cooperative grid
/// must be resident at once (by the same occupancy rules `cuOccupancy*` answer with), and a grid must tile
/// by its cluster, of at most 8 blocks (16 with the non-portable opt-in).
fn check_launch_attributes(
    f: Handle,
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared_mem: c_uint,
    cooperative: bool,
    cluster: [c_uint; 3],
) -> CuResult<()> {
    let attrs = attributes(f)?;
    if cluster.iter().any(|&c| c > 1) {
        if cluster.contains(&0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A grid that is not a whole number of clusters: the driver names the cluster size.
        if grid.iter().zip(cluster).any(|(&g, c)| g % c != 0) {
            return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
        }
        let size: u64 = cluster.iter().map(|&c| c as u64).product();
        let max = if attrs[14] > 0 { 16 } else { 8 };
        if size > max {
            return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
        }
    }
    if cooperative {
        let threads = block.iter().map(|&b| b as i64).product::<i64>().min(i32::MAX as i64) as i32;
        let per_sm = super::query::active_blocks(f, threads, shared_mem as usize, 0)?.max(0) as u64;
        let sms = super::query::current_device()?.attr(16).unwrap_or(1).max(1) as u64;
        let blocks: u64 = grid.iter().map(|&g| g as u64).product();
        if blocks > per_sm * sms {
            return Err(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        }
    }
    Ok(())
}

/// The packed argument buffer of a launch of `f` (for graph kernel nodes, which keep their arguments).
pub(crate) fn pack_args(f: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) -> CuResult<Vec<u8>> {
    let info = function(f)?.info;
    let size = info.args_size();
    let mut buf = vec![0u8; size];
    match (params.is_null(), extra.is_null()) {
        (false, true) => {
            for (i, &(offset, len)) in info.params.iter().enumerate() {
                let arg = ffi::array_item(params as *const *mut c_void, i) as *const u8;
                if arg.is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
                buf[offset as usize..(offset + len) as usize].copy_from_slice(ffi::bytes(arg, len as usize)?);
            }
        }
        (true, false) => match extra_buffer(extra)? {
            (Some(p), Some(n)) if n <= size => buf[..n].copy_from_slice(ffi::bytes(p as *const u8, n)?),
            (None, None) if size == 0 => {}
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        },
        (true, true) if size == 0 => {}
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    }
    Ok(buf)
}

/// Launches `function` with an argument buffer packed already (a graph kernel node's).
pub(crate) fn launch_packed(
    flags: u16,
    function: u64,
    grid: [u32; 3],
    block: [u32; 3],
    shared_mem: u32,
    stream: Handle,
    args: &[u8],
) -> CuResult<()> {
    let ctx = need_ctx()?;
    let entry = function_entry(function as Handle)?;
    let stream = stream_id(stream)?;
    check_launch_shape(ctx, known_attributes(&entry, function), grid, block, shared_mem)?;
    if args.len() != entry.info.args_size() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let node = super::graph::Node::Kernel {
        function,
        grid,
        block,
        shared: shared_mem,
        args: args.to_vec(),
    };
    if let Some(r) = super::graph::capture(super::graph::key(flags, stream), node) {
        return r;
    }
    crate::mirror::before_launch(flags, stream, args)?;
    let call = LaunchKernel {
        function,
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
    client::post(flags, &call, args)
}

/// Queues a launch call with the arguments packed at the offsets of the function's parameter layout, from
/// `kernelParams` or from the packed buffer of `extra`.
fn send_launch<C: Call>(
    flags: u16,
    call: &C,
    stream: u64,
    info: &FunctionInfo,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<()> {
    let size = info.args_size();
    match (params.is_null(), extra.is_null()) {
        (false, true) => {
            // Check every argument pointer before queueing, so a bad one fails this call, not a later one.
            for i in 0..info.params.len() {
                if ffi::array_item(params as *const *mut c_void, i).is_null() {
                    return Err(CUDA_ERROR_INVALID_VALUE);
                }
            }
            // Pinned host memory the arguments point into goes to the server's mirror first.
            let mut words = Vec::new();
            for (i, &(_, len)) in info.params.iter().enumerate() {
                if len >= 8 {
                    let arg = ffi::array_item(params as *const *mut c_void, i) as *const u8;
                    words.extend_from_slice(ffi::bytes(arg, len as usize & !7)?);
                }
            }
            crate::mirror::before_launch(flags, stream, &words)?;
            client::post_with(flags, call, size, |buf| {
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
                (None, None) if size == 0 => client::post(flags, call, &[]),
                (Some(p), Some(n)) => {
                    if n > size {
                        return Err(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
                    }
                    if n == 0 && size > 0 {
                        return Err(CUDA_ERROR_INVALID_VALUE);
                    }
                    let packed = ffi::bytes(p as *const u8, n)?;
                    crate::mirror::before_launch(flags, stream, packed)?;
                    client::post_with(flags, call, size, |buf| {
                        buf.put_slice(packed);
                        buf.put_bytes(0, size - n);
                    })
                }
                _ => Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        (true, true) if size == 0 => client::post(flags, call, &[]),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// `CUlaunchConfig` from cuda.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawLaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    shared: c_uint,
    stream: Handle,
    attrs: *const RawLaunchAttribute,
    num_attrs: c_uint,
}

/// `CUlaunchAttribute`: an id, padding to 8 bytes, and a 64-byte value union.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawLaunchAttribute {
    id: u32,
    _pad: u32,
    value: [u8; 64],
}

/// A `cuLaunchKernelEx` configuration with the attributes vGPU acts on.
pub(crate) struct LaunchConfig {
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub shared: c_uint,
    pub stream: Handle,
    pub cluster: [c_uint; 3],
    /// The cluster dimension exactly as given ([0, 0, 0] when the attribute is absent).
    pub cluster_given: [c_uint; 3],
    pub cooperative: bool,
    /// Events to record once the kernel is queued (PROGRAMMATIC_EVENT, LAUNCH_COMPLETION_EVENT): recording
    /// them after the kernel is later than natively, never earlier, so waiting on them stays correct.
    pub events: Vec<Handle>,
}

pub(crate) fn read_launch_config(config: *const c_void) -> CuResult<LaunchConfig> {
    let raw: RawLaunchConfig = ffi::read(config as *const RawLaunchConfig)?;
    let mut cfg = LaunchConfig {
        grid: raw.grid,
        block: raw.block,
        shared: raw.shared,
        stream: raw.stream,
        cluster: [1, 1, 1],
        cluster_given: [0, 0, 0],
        cooperative: false,
        events: Vec::new(),
    };
    if raw.num_attrs > 0 && raw.attrs.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    for i in 0..raw.num_attrs as usize {
        let a: RawLaunchAttribute = ffi::read(raw.attrs.wrapping_add(i))?;
        let word = |at: usize| u32::from_ne_bytes([a.value[at], a.value[at + 1], a.value[at + 2], a.value[at + 3]]);
        let ptr = || u64::from_ne_bytes(a.value[..8].try_into().unwrap_or_default()) as Handle;
        match a.id {
            // IGNORE, and hints whose absence only costs speed: access policy window, synchronization policy,
            // cluster scheduling preference, programmatic serialization, priority, memory sync domains,
            // preferred cluster dimension, shared memory carveout, NVLink-centric scheduling.
            0 | 1 | 3 | 5 | 6 | 8 | 9 | 10 | 11 | 14 | 16 => {}
            2 => cfg.cooperative = word(0) != 0,
            4 => {
                cfg.cluster = [word(0), word(4), word(8)];
                cfg.cluster_given = cfg.cluster;
            }
            7 | 12 => cfg.events.push(ptr()),
            // Graph-only.
            13 => return Err(CUDA_ERROR_INVALID_VALUE),
            _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
        }
    }
    Ok(cfg)
}

fn launch_ex(
    flags: u16,
    config: *const c_void,
    f: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<()> {
    need_ctx()?;
    let cfg = read_launch_config(config)?;
    if cfg.cluster.contains(&0) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    launch_as(
        flags,
        f,
        cfg.grid,
        cfg.block,
        cfg.shared,
        cfg.stream,
        params,
        extra,
        cfg.cooperative,
        cfg.cluster,
    )?;
    let stream = stream_id(cfg.stream)?;
    for e in cfg.events {
        client::post(
            flags,
            &EventRecord {
                event: event_id(e)?,
                stream,
            },
            &[],
        )?;
    }
    Ok(())
}

/// Runs a host function in stream order: once the work queued before it on `stream` has finished. The app
/// thread waits for that here, so work queued after the call is queued after the function has run.
pub(crate) fn host_callback(flags: u16, stream: Handle, run: impl FnOnce(CUresult)) -> CuResult<()> {
    need_ctx()?;
    let id = stream_id(stream)?;
    let status = match client::call(flags, &StreamSynchronize { stream: id }, &[]) {
        // The function may read what kernels before it wrote into pinned memory.
        Ok(_) => crate::mirror::after_sync().err().unwrap_or(CUDA_SUCCESS),
        Err(e) => e,
    };
    run(status);
    match status {
        CUDA_SUCCESS => Ok(()),
        e => Err(e),
    }
}

fn set_attribute(func: Handle, attrib: c_int, value: c_int, is_kernel: bool) -> CuResult<()> {
    let entry = function(func)?;
    if is_kernel && !entry.is_kernel {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    // Settable: MAX_DYNAMIC_SHARED_SIZE_BYTES (8), PREFERRED_SHARED_MEMORY_CARVEOUT (9), the cluster and
    // scheduling attributes (11..=15). The others are read-only.
    if !matches!(attrib, 8 | 9 | 11..=15) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let valid = match attrib {
        8 => {
            let optin = client::session()?
                .devices
                .first()
                .and_then(|d| d.attr(97))
                .unwrap_or(i32::MAX);
            let static_smem = attributes(func)?[1].max(0);
            value >= 0 && value.saturating_add(static_smem) <= optin
        }
        // A percentage of the maximum shared memory, or CU_SHAREDMEM_CARVEOUT_DEFAULT (-1).
        9 => (-1..=100).contains(&value),
        // NON_PORTABLE_CLUSTER_SIZE_ALLOWED: a boolean.
        14 => value == 0 || value == 1,
        // CLUSTER_SCHEDULING_POLICY_PREFERENCE: DEFAULT, SPREAD, LOAD_BALANCING.
        15 => (0..=2).contains(&value),
        _ => value >= 0,
    };
    // Refused at the call, as natively (the request itself is posted without waiting for the server).
    if !valid {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    client::post(
        0,
        &FuncSetAttribute {
            function: func as u64,
            attrib,
            value,
        },
        &[],
    )?;
    // Later queries see the new value.
    let mut attrs = known_attributes(&entry, func as u64).unwrap_or(ATTRS_UNKNOWN);
    if attrs != ATTRS_UNKNOWN {
        attrs[attrib as usize] = value;
        state::write().func_attrs.insert(func as u64, attrs);
    }
    Ok(())
}

/// The checks the driver makes before queueing a launch, done here so their errors come back at once.
fn check_launch_shape(
    ctx: u64,
    attrs: Option<[i32; FUNC_ATTR_COUNT]>,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
) -> CuResult<()> {
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
    // Dynamic shared memory beyond 48 KiB needs the function's MAX_DYNAMIC_SHARED_SIZE_BYTES raised first.
    let dyn_max = attrs
        .map(|a| a[8])
        .filter(|&v| v >= 0)
        .map(|v| v as u64)
        .unwrap_or(u64::MAX);
    if shared as u64 > limit(97) || shared as u64 > dyn_max {
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
        let mut reg = state::write();
        if id <= 2 || reg.streams.remove(&id).is_none() {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        reg.stream_attrs.retain(|&(s, _), _| s != id);
        drop(reg);
        client::post(0, &StreamDestroy { stream: id }, &[])
    }
    [cuStreamSynchronize] [cuStreamSynchronize_ptsz] (stream: Handle) |f| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        super::graph::refuse_sync(super::graph::key(f, stream))?;
        client::call(f, &StreamSynchronize { stream }, &[])?;
        crate::mirror::after_sync()
    }
    [cuStreamQuery] [cuStreamQuery_ptsz] (stream: Handle) |f| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        super::graph::refuse_sync(super::graph::key(f, stream))?;
        client::call(f, &StreamQuery { stream }, &[]).map(|_| ())
    }
    [cuStreamWaitEvent] [cuStreamWaitEvent_ptsz] (stream: Handle, event: Handle, flags: c_uint) |f| {
        need_ctx()?;
        let (stream, event) = (stream_id(stream)?, event_id(event)?);
        if super::graph::wait_event(super::graph::key(f, stream), event) {
            return Ok(());
        }
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
    [cuStreamSetAttribute] [cuStreamSetAttribute_ptsz] (stream: Handle, attr: c_uint, value: *const [u8; 64]) |f| {
        need_ctx()?;
        let id = stream_id(stream)?;
        let v = ffi::read(value)?;
        check_stream_attr(attr, &v)?;
        let mut reg = state::write();
        if attr == STREAM_ATTR_PRIORITY {
            let p = i32::from_ne_bytes([v[0], v[1], v[2], v[3]]).clamp(STREAM_PRIORITY_GREATEST, STREAM_PRIORITY_LEAST);
            if let Some(s) = reg.streams.get_mut(&id) {
                s.1 = p;
            }
            return Ok(());
        }
        reg.stream_attrs.insert((id, attr), v);
        Ok(())
    }
    [cuStreamGetAttribute] [cuStreamGetAttribute_ptsz] (stream: Handle, attr: c_uint, out: *mut [u8; 64]) |f| {
        need_ctx()?;
        let id = stream_id(stream)?;
        let reg = state::read();
        let v = match attr {
            STREAM_ATTR_PRIORITY => {
                let mut v = [0u8; 64];
                let p = reg.streams.get(&id).map(|s| s.1).unwrap_or(0);
                v[..4].copy_from_slice(&p.to_ne_bytes());
                v
            }
            STREAM_ATTR_ACCESS_POLICY_WINDOW | STREAM_ATTR_MEM_SYNC_DOMAIN_MAP | STREAM_ATTR_MEM_SYNC_DOMAIN => {
                reg.stream_attrs.get(&(id, attr)).copied().unwrap_or([0; 64])
            }
            STREAM_ATTR_SYNCHRONIZATION_POLICY => reg.stream_attrs.get(&(id, attr)).copied().unwrap_or_else(|| {
                // CU_SYNC_POLICY_AUTO until set.
                let mut v = [0u8; 64];
                v[0] = 1;
                v
            }),
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        drop(reg);
        ffi::write(out, v)
    }
    [cuEventCreate] [] (out: *mut Handle, flags: c_uint) |f| {
        need_ctx()?;
        if out.is_null() || flags & !0xf != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        client::sticky_error()?;
        let event = state::new_id();
        client::post_now(0, &EventCreate { event, flags, _pad: 0 }, &[])?;
        state::write().events.insert(event, flags);
        ffi::write(out, event as Handle)
    }
    [cuEventRecord] [cuEventRecord_ptsz] (event: Handle, stream: Handle) |f| {
        let (event, stream) = (event_id(event)?, stream_id(stream)?);
        if super::graph::record_event(super::graph::key(f, stream), event) {
            return Ok(());
        }
        client::post(f, &EventRecord { event, stream }, &[])
    }
    [cuEventSynchronize] [] (event: Handle) |f| {
        let event = event_id(event)?;
        client::call(0, &EventSynchronize { event }, &[])?;
        crate::mirror::after_sync()
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
    [cuModuleLoadDataEx] [] (
        out: *mut Handle, image: *const c_void,
        _num_options: c_uint, _options: *mut c_void, _option_values: *mut c_void
    ) |f| {
        // JIT options tune the server's compilation of PTX (log buffers stay empty here).
        load(out, image, false)
    }
    [cuModuleLoad] [] (out: *mut Handle, path: *const c_char) |f| {
        need_ctx()?;
        load_file(out, path, false)
    }
    [cuLibraryLoadFromFile] [] (
        out: *mut Handle, path: *const c_char,
        _jit_options: *mut c_void, _jit_values: *mut c_void, _num_jit: c_uint,
        _lib_options: *mut c_void, _lib_values: *mut c_void, _num_lib: c_uint
    ) |f| {
        client::session()?;
        load_file(out, path, true)
    }
    [cuModuleUnload] [] (module: Handle) |f| {
        unload(module, false)
    }
    [cuModuleGetFunction] [] (out: *mut Handle, module: Handle, name: *const c_char) |f| {
        get_function(out, module, name, false)
    }
    [cuModuleGetGlobal_v2] [] (out: *mut u64, bytes: *mut usize, module: Handle, name: *const c_char) |f| {
        get_global(out, bytes, module, name, false, false)
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
        get_global(out, bytes, library, name, true, false)
    }
    [cuLibraryGetManaged] [] (out: *mut u64, bytes: *mut usize, library: Handle, name: *const c_char) |f| {
        get_global(out, bytes, library, name, true, true)
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
    [cuLaunchKernelEx] [cuLaunchKernelEx_ptsz] (config: *const c_void, func: Handle, params: *mut *mut c_void, extra: *mut *mut c_void) |f| {
        launch_ex(f, config, func, params, extra)
    }
    [cuLaunchHostFunc] [cuLaunchHostFunc_ptsz] (stream: Handle, func: usize, user: usize) |f| {
        if func == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let key = super::graph::key(f, stream_id(stream)?);
        if let Some(r) = super::graph::capture(key, super::graph::Node::Host { function: func, user }) {
            return r;
        }
        // Natively a host function is skipped once the stream has failed; so it is here.
        host_callback(f, stream, |status| if status == CUDA_SUCCESS { ffi::call_host_fn(func, user) })
    }
    [cuStreamAddCallback] [cuStreamAddCallback_ptsz] (stream: Handle, callback: usize, user: usize, flags: c_uint) |f| {
        if callback == 0 || flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A stream callback runs even after an error, and is told the stream's status.
        host_callback(f, stream, |status| ffi::call_stream_callback(callback, stream as usize, status, user))
    }
    [cuFuncSetAttribute] [] (func: Handle, attrib: c_int, value: c_int) |f| {
        set_attribute(func, attrib, value, false)
    }
    [cuKernelSetAttribute] [] (attrib: c_int, value: c_int, kernel: Handle, _dev: c_int) |f| {
        set_attribute(kernel, attrib, value, true)
    }
    [cuFuncSetCacheConfig] [] (func: Handle, config: c_uint) |f| {
        function(func)?;
        // A preference the hardware may ignore (and since Volta sizes per launch); accepted as natively.
        if config > 3 { Err(CUDA_ERROR_INVALID_VALUE) } else { Ok(()) }
    }
    [cuKernelSetCacheConfig] [] (kernel: Handle, config: c_uint, _dev: c_int) |f| {
        function(kernel)?;
        if config > 3 { Err(CUDA_ERROR_INVALID_VALUE) } else { Ok(()) }
    }
    [cuFuncSetSharedMemConfig] [] (func: Handle, config: c_uint) |f| {
        function(func)?;
        if config > 2 { Err(CUDA_ERROR_INVALID_VALUE) } else { Ok(()) }
    }
    [cuEventRecordWithFlags] [cuEventRecordWithFlags_ptsz] (event: Handle, stream: Handle, flags: c_uint) |f| {
        // CU_EVENT_RECORD_EXTERNAL (1) only matters inside graph capture, which is not remoted.
        if flags & !1 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (event, stream) = (event_id(event)?, stream_id(stream)?);
        if super::graph::record_event(super::graph::key(f, stream), event) {
            return Ok(());
        }
        client::post(f, &EventRecord { event, stream }, &[])
    }
    [cuStreamGetId] [cuStreamGetId_ptsz] (stream: Handle, out: *mut u64) |f| {
        ffi::write(out, stream_id(stream)?)
    }
    [cuStreamGetCtx] [cuStreamGetCtx_ptsz] (stream: Handle, out: *mut Handle) |f| {
        stream_id(stream)?;
        ffi::write(out, need_ctx()? as Handle)
    }
    [cuStreamGetDevice] [cuStreamGetDevice_ptsz] (stream: Handle, out: *mut c_int) |f| {
        stream_id(stream)?;
        let ctx = need_ctx()?;
        let dev = state::read().contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
        ffi::write(out, dev)
    }
    [cuModuleGetFunctionCount] [] (count: *mut c_uint, module: Handle) |f| {
        ffi::write(count, listed_functions(module, false)?.len() as c_uint)
    }
    [cuLibraryGetKernelCount] [] (count: *mut c_uint, library: Handle) |f| {
        ffi::write(count, listed_functions(library, true)?.len() as c_uint)
    }
    [cuModuleEnumerateFunctions] [] (out: *mut Handle, n: c_uint, module: Handle) |f| {
        enumerate(out, n, module, false)
    }
    [cuLibraryEnumerateKernels] [] (out: *mut Handle, n: c_uint, library: Handle) |f| {
        enumerate(out, n, library, true)
    }
    [cuFuncGetName] [] (name: *mut *const c_char, func: Handle) |f| {
        let entry = function(func)?;
        ffi::write(name, c_name(&entry.info.name)?)
    }
    [cuKernelGetName] [] (name: *mut *const c_char, kernel: Handle) |f| {
        let entry = function(kernel)?;
        if !entry.is_kernel {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        ffi::write(name, c_name(&entry.info.name)?)
    }
    [cuFuncGetModule] [] (out: *mut Handle, func: Handle) |f| {
        let entry = function(func)?;
        ffi::write(out, entry.module as Handle)
    }
    [cuKernelGetLibrary] [] (out: *mut Handle, kernel: Handle) |f| {
        let entry = function(kernel)?;
        if !entry.is_kernel {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        ffi::write(out, entry.module as Handle)
    }
    [cuLaunchCooperativeKernel] [cuLaunchCooperativeKernel_ptsz] (
        func: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
        shared: c_uint, stream: Handle, params: *mut *mut c_void
    ) |f| {
        launch_as(f, func, [gx, gy, gz], [bx, by, bz], shared, stream, params, std::ptr::null_mut(), true, [1, 1, 1])
    }
    [cuLaunchKernel] [cuLaunchKernel_ptsz] (
        func: Handle, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint,
        shared: c_uint, stream: Handle, params: *mut *mut c_void, extra: *mut *mut c_void
    ) |f| {
        launch(f, func, [gx, gy, gz], [bx, by, bz], shared, stream, params, extra)
    }
}
