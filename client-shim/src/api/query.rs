//! Queries the runtime makes on its hot paths: module loading mode, pointer attributes, stream-capture status
//! and peer access answered on the client from facts it holds; occupancy by the server's driver.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;

use vgpu_cuda_sys::driver::{
    CUfunction, CUfunction_attribute, CUgraph, CUgraphEdgeData, CUgraphNode, CUlaunchConfig, CUmemorytype,
    CUmoduleLoadingMode, CUoccupancyB2DSize, CUpointer_attribute, CUstream, CUstreamCaptureMode, CUstreamCaptureStatus,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{need_ctx, ClientHandle};
use crate::{client, ffi, state};

/// What the client knows of an address: device memory it allocated, or host memory it allocated/registered.
enum Pointer {
    /// Device memory; `managed`: cuMemAllocManaged or `__managed__` memory, mapped on the host too.
    Device {
        base: u64,
        len: u64,
        ctx: ContextId,
        device: i32,
        managed: bool,
        /// VMM memory (`cuMemMap`): the handle types its allocation allows, and the access flags the
        /// current device has.
        vmm: Option<(u32, u32)>,
    },
    Host {
        base: usize,
        len: usize,
        flags: u32,
    },
}

/// The context memory of device `device` is taken to belong to: the current one when it is of that device (with
/// one context per device in practice, the primary, it is the one the memory was allocated in), else the
/// device's primary context.
fn context_of(reg: &state::Registry, device: i32) -> ContextId {
    let current = state::current_ctx();
    match reg.contexts.get(&current) {
        Some(c) if c.device == device => current,
        _ => state::primary_ctx_id(device),
    }
}

fn classify(ptr: u64) -> Option<Pointer> {
    if let Some(m) = crate::mirror::find(ptr as usize).filter(|m| m.kind != crate::mirror::Kind::Pinned) {
        let ctx = context_of(&state::read(), m.device);
        return Some(Pointer::Device {
            base: m.data as u64,
            len: m.data_len as u64,
            ctx,
            device: m.device,
            managed: true,
            vmm: None,
        });
    }
    let reg = state::read();
    if let Some((base, len)) = reg.device_range(ptr) {
        // The device the memory is on (unified addressing: its address says so, whichever device is current).
        let device = reg
            .range_devices
            .get(&base)
            .copied()
            .or_else(|| reg.contexts.get(&state::current_ctx()).map(|c| c.device))
            .unwrap_or(0);
        let ctx = context_of(&reg, device);
        let vmm = reg.vmm_mapping(ptr).map(|(_, m)| {
            let handle_types = reg.vmm_handles.get(&m.handle).map_or(0, |h| h.handle_types);
            let access = m.access.iter().find(|&&(d, _)| d == device).map_or(0, |&(_, a)| a);
            (handle_types, access)
        });
        return Some(Pointer::Device {
            base,
            len,
            ctx,
            device,
            managed: false,
            vmm,
        });
    }
    reg.host_range(ptr as usize)
        .map(|(base, len, flags)| Pointer::Host { base, len, flags })
}

/// The value of pointer attribute `attr` for `ptr` (as the bytes to write), or `None` where `ptr` is not one
/// the driver knows. Attributes are 4-byte integers unless they are addresses, sizes or ids (8 bytes).
fn pointer_attribute(attr: CUpointer_attribute, ptr: u64) -> CuResult<Option<Vec<u8>>> {
    use CUpointer_attribute as P;
    let p = classify(ptr);
    let u32v = |v: u32| Some(v.to_ne_bytes().to_vec());
    let u64v = |v: u64| Some(v.to_ne_bytes().to_vec());
    let Some(p) = p else { return Ok(None) };
    let current = state::current_ctx();
    Ok(match (attr, &p) {
        (P::CU_POINTER_ATTRIBUTE_CONTEXT, Pointer::Device { ctx, .. }) => u64v(ctx.get()),
        (P::CU_POINTER_ATTRIBUTE_CONTEXT, Pointer::Host { .. }) => u64v(current.get()),
        (P::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, Pointer::Device { .. }) => u32v(CUmemorytype::CU_MEMORYTYPE_DEVICE.0),
        (P::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, Pointer::Host { .. }) => u32v(CUmemorytype::CU_MEMORYTYPE_HOST.0),
        // Unified addressing: a pointer is the same number on the host and the device (pinned memory's
        // server mirror sits at the same address where it could be placed there).
        (P::CU_POINTER_ATTRIBUTE_DEVICE_POINTER, Pointer::Host { .. }) => match crate::mirror::find(ptr as usize) {
            Some(m) => u64v(m.dptr + (ptr - m.base as u64)),
            None => u64v(ptr),
        },
        (P::CU_POINTER_ATTRIBUTE_DEVICE_POINTER, _) => u64v(ptr),
        (P::CU_POINTER_ATTRIBUTE_HOST_POINTER, Pointer::Device { managed: true, .. }) => u64v(ptr),
        (P::CU_POINTER_ATTRIBUTE_HOST_POINTER, Pointer::Device { .. }) => return Err(CUDA_ERROR_INVALID_VALUE),
        (P::CU_POINTER_ATTRIBUTE_HOST_POINTER, Pointer::Host { .. }) => u64v(ptr),
        (P::CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, _) => u32v(0),
        (P::CU_POINTER_ATTRIBUTE_BUFFER_ID | P::CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID, Pointer::Device { base, .. }) => {
            u64v(*base)
        }
        (P::CU_POINTER_ATTRIBUTE_BUFFER_ID | P::CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID, Pointer::Host { base, .. }) => {
            u64v(*base as u64)
        }
        (P::CU_POINTER_ATTRIBUTE_IS_MANAGED, Pointer::Device { managed, .. }) => u32v(*managed as u32),
        (P::CU_POINTER_ATTRIBUTE_IS_MANAGED, _) => u32v(0),
        (P::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, Pointer::Device { device, .. }) => u32v(*device as u32),
        (P::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, Pointer::Host { .. }) => u32v(0),
        // Only cuMemAlloc memory can be shared with cuIpcGetMemHandle, not VMM memory.
        (P::CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE, Pointer::Device { vmm: Some(_), .. }) => u32v(0),
        (P::CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE, Pointer::Device { .. }) => u32v(1),
        (P::CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE, Pointer::Host { .. }) => u32v(0),
        (
            P::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR | P::CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR,
            Pointer::Device { base, .. },
        ) => u64v(*base),
        (
            P::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR | P::CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR,
            Pointer::Host { base, .. },
        ) => u64v(*base as u64),
        (P::CU_POINTER_ATTRIBUTE_RANGE_SIZE | P::CU_POINTER_ATTRIBUTE_MAPPING_SIZE, Pointer::Device { len, .. }) => {
            u64v(*len)
        }
        (P::CU_POINTER_ATTRIBUTE_RANGE_SIZE | P::CU_POINTER_ATTRIBUTE_MAPPING_SIZE, Pointer::Host { len, .. }) => {
            u64v(*len as u64)
        }
        (P::CU_POINTER_ATTRIBUTE_MAPPED, _) => u32v(1),
        (
            P::CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES,
            Pointer::Device {
                vmm: Some((types, _)), ..
            },
        ) => u64v(*types as u64),
        (P::CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES, _) => u64v(0),
        (P::CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE, Pointer::Device { .. }) => u32v(1),
        (P::CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE, Pointer::Host { .. }) => u32v(0),
        // CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE.
        (
            P::CU_POINTER_ATTRIBUTE_ACCESS_FLAGS,
            Pointer::Device {
                vmm: Some((_, access)), ..
            },
        ) => u32v(*access),
        (P::CU_POINTER_ATTRIBUTE_ACCESS_FLAGS, Pointer::Device { .. }) => u32v(3),
        (P::CU_POINTER_ATTRIBUTE_ACCESS_FLAGS, Pointer::Host { flags, .. }) => {
            u32v(if *flags & 0x8 != 0 { 1 } else { 3 })
        }
        (P::CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, _) => u64v(0),
        (P::CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE, _) => u32v(0),
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    })
}

/// The device of the calling thread's current context.
pub(crate) fn current_device() -> CuResult<&'static vgpu_dataplane::handshake::DeviceFacts> {
    let ctx = need_ctx()?;
    let dev = state::read().contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
    client::session()?
        .devices
        .get(dev as usize)
        .ok_or(CUDA_ERROR_INVALID_CONTEXT)
}

/// A function the occupancy questions are about (they need a context, as natively).
fn function_id(f: CUfunction) -> CuResult<FunctionId> {
    need_ctx()?;
    super::module::function(f.id())?;
    Ok(f.id())
}

/// `cuOccupancyMaxActiveBlocksPerMultiprocessor(WithFlags)`, answered by the server's driver (the answer
/// depends on the kernel's registers and shared memory as compiled, and on the driver's allocation rules).
/// The answer is the same until the function's attributes change or its module goes, so it is asked once per
/// question: PyTorch asks before launches of some kernels, a round trip each (27 per GPT training step).
pub(crate) fn active_blocks(f: FunctionId, block_size: c_int, smem: usize, flags: c_uint) -> CuResult<c_int> {
    need_ctx()?;
    super::module::function(f)?;
    let route = super::spread::route_of_function(f, StreamId::NULL)?;
    let key = (client::server_index(route)?, f, block_size, smem as u64, flags);
    if let Some(&known) = occupancy_answers().as_ref().and_then(|m| m.get(&key)) {
        return Ok(known);
    }
    let call = OccupancyActiveBlocks {
        function: f,
        dynamic_smem: smem as u64,
        block_size,
        flags,
    };
    let value = client::call_to(route, 0, &call, &[])?.value as c_int;
    let mut answers = occupancy_answers();
    let answers = answers.get_or_insert_with(HashMap::new);
    if answers.len() >= MAX_OCCUPANCY_ANSWERS {
        answers.clear();
    }
    answers.insert(key, value);
    Ok(value)
}

/// (server, function, block size, dynamic shared memory, flags) -> blocks per multiprocessor, as answered.
type OccupancyKey = (usize, FunctionId, c_int, u64, c_uint);
static OCCUPANCY_ANSWERS: Mutex<Option<HashMap<OccupancyKey, c_int>>> = Mutex::new(None);
/// Past this many distinct questions the remembered answers start over (a bound, not a size anyone reaches).
const MAX_OCCUPANCY_ANSWERS: usize = 1 << 16;

fn occupancy_answers() -> std::sync::MutexGuard<'static, Option<HashMap<OccupancyKey, c_int>>> {
    OCCUPANCY_ANSWERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forgets remembered occupancy answers: modules went away with a context.
pub(crate) fn forget_occupancy() {
    *occupancy_answers() = None;
}

/// Forgets the answers about one function: its attributes changed (its shared memory size or carveout decide
/// how many blocks fit).
pub(crate) fn forget_occupancy_of(function: FunctionId) {
    if let Some(answers) = occupancy_answers().as_mut() {
        answers.retain(|key, _| key.1 != function);
    }
}

fn max_potential_block_size(
    min_grid: *mut c_int,
    block_out: *mut c_int,
    f: CUfunction,
    b2d: CUoccupancyB2DSize,
    dyn_smem: usize,
    limit: c_int,
    flags: c_uint,
) -> CuResult<()> {
    let function = function_id(f)?;
    if min_grid.is_null() || block_out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // The app's callback cannot run on the server: its answer for every block size the driver may ask about
    // travels instead.
    let mut table = Vec::new();
    let mut block_limit = limit;
    if b2d.is_some() {
        let max = super::module::attributes(function)?
            [CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK.0 as usize]
            .max(1);
        if block_limit <= 0 || block_limit > max {
            block_limit = max;
        }
        table.reserve(block_limit as usize * 8);
        for b in 1..=block_limit {
            table.extend_from_slice(&(ffi::call_block_to_smem(b2d, b) as u64).to_le_bytes());
        }
    }
    let call = OccupancyPotentialBlockSize {
        function,
        dynamic_smem: dyn_smem as u64,
        block_limit,
        flags,
    };
    let r = client::call_to(
        super::spread::route_of_function(function, StreamId::NULL)?,
        0,
        &call,
        &table,
    )?;
    ffi::write(min_grid, r.min_grid)?;
    ffi::write(block_out, r.block)
}

fn clusters(out: *mut c_int, f: CUfunction, config: *const CUlaunchConfig, potential_size: bool) -> CuResult<()> {
    let function = function_id(f)?;
    let cfg = super::launch::read_launch_config(config)?;
    let call = OccupancyClusters {
        function,
        grid_x: cfg.shape.grid[0],
        grid_y: cfg.shape.grid[1],
        grid_z: cfg.shape.grid[2],
        block_x: cfg.shape.block[0],
        block_y: cfg.shape.block[1],
        block_z: cfg.shape.block[2],
        shared_mem: cfg.shape.shared_mem,
        potential_size: potential_size as u32,
        cluster_x: cfg.cluster_given[0],
        cluster_y: cfg.cluster_given[1],
        cluster_z: cfg.cluster_given[2],
        _pad: 0,
    };
    let r = client::call_to(
        super::spread::route_of_function(function, StreamId::NULL)?,
        0,
        &call,
        &[],
    )?;
    ffi::write(out, r.value as c_int)
}

/// `cuStreamGetCaptureInfo` in all its forms: status, id, graph, and (`_v2`/`_v3`) the nodes the stream's next
/// operation will follow, with default edge data (`_v3`).
#[allow(clippy::too_many_arguments)]
fn capture_info(
    flags: u16,
    stream: CUstream,
    status: *mut CUstreamCaptureStatus,
    id: *mut u64,
    graph: *mut CUgraph,
    deps: *mut *const CUgraphNode,
    edges: *mut *const CUgraphEdgeData,
    count: *mut usize,
) -> CuResult<()> {
    let s = super::stream::stream_id(stream)?;
    let (st, capture, g, list) = super::graph::capture_info(super::graph::key(flags, s));
    ffi::write(status, st)?;
    if !id.is_null() {
        ffi::write(id, capture)?;
    }
    if !graph.is_null() {
        ffi::write(graph, g)?;
    }
    let (nodes, data, n) = list.unwrap_or((std::ptr::null(), std::ptr::null(), 0));
    if !deps.is_null() {
        ffi::write(deps, nodes)?;
    }
    if !edges.is_null() {
        ffi::write(edges, data)?;
    }
    if !count.is_null() {
        ffi::write(count, n)?;
    }
    Ok(())
}

/// Width of a pointer attribute's value: 4-byte integers, except addresses, sizes and ids (8 bytes).
fn attribute_width(attr: CUpointer_attribute) -> usize {
    use CUpointer_attribute as P;
    match attr {
        P::CU_POINTER_ATTRIBUTE_MEMORY_TYPE
        | P::CU_POINTER_ATTRIBUTE_SYNC_MEMOPS
        | P::CU_POINTER_ATTRIBUTE_IS_MANAGED
        | P::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        | P::CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE
        | P::CU_POINTER_ATTRIBUTE_MAPPED
        | P::CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE
        | P::CU_POINTER_ATTRIBUTE_ACCESS_FLAGS
        | P::CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE => 4,
        _ => 8,
    }
}

thread_local! {
    /// `cuThreadExchangeStreamCaptureMode`'s per-thread mode.
    static CAPTURE_MODE: Cell<CUstreamCaptureMode> = const { Cell::new(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL) };
}

entry! {
    cuModuleGetLoadingMode => |f, mode| {
        client::session()?;
        // Lazy loading, the driver's default since CUDA 12.2, unless the app asked for eager loading through the
        // variable the driver reads. Loading happens on the server, which honours it too when `vgpu run` passes
        // the environment on.
        let eager = std::env::var("CUDA_MODULE_LOADING").is_ok_and(|v| v.eq_ignore_ascii_case("EAGER"));
        ffi::write(mode, if eager { CUmoduleLoadingMode::CU_MODULE_EAGER_LOADING } else { CUmoduleLoadingMode::CU_MODULE_LAZY_LOADING })
    }
    cuPointerGetAttribute => |f, data, attr, ptr| {
        client::session()?;
        if data.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = pointer_attribute(attr, ptr)?.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        ffi::bytes_mut(data as *mut u8, bytes.len())?.copy_from_slice(&bytes);
        Ok(())
    }
    cuPointerGetAttributes => |f, n, attrs, data, ptr| {
        client::session()?;
        if attrs.is_null() || data.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // Unlike cuPointerGetAttribute, an unknown pointer is no error: every attribute reads as zero.
        let known = classify(ptr).is_some();
        for i in 0..n as usize {
            let attr = ffi::read(attrs.wrapping_add(i))?;
            let out = ffi::array_item(data as *const *mut c_void, i);
            if out.is_null() {
                continue;
            }
            let bytes = match pointer_attribute(attr, ptr) {
                Ok(Some(b)) if known => b,
                Ok(_) | Err(_) => vec![0; attribute_width(attr)],
            };
            ffi::bytes_mut(out as *mut u8, bytes.len())?.copy_from_slice(&bytes);
        }
        Ok(())
    }
    cuOccupancyMaxActiveBlocksPerMultiprocessor => |f, out, func, block, smem| {
        ffi::write(out, active_blocks(function_id(func)?, block, smem, 0)?)
    }
    cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags => |f, out, func, block, smem, flags| {
        ffi::write(out, active_blocks(function_id(func)?, block, smem, flags)?)
    }
    cuOccupancyMaxPotentialBlockSize => |f, min_grid, block, func, b2d, smem, limit| {
        max_potential_block_size(min_grid, block, func, b2d, smem, limit, 0)
    }
    cuOccupancyMaxPotentialBlockSizeWithFlags => |f, min_grid, block, func, b2d, smem, limit, flags| {
        max_potential_block_size(min_grid, block, func, b2d, smem, limit, flags)
    }
    cuOccupancyAvailableDynamicSMemPerBlock => |f, out, func, blocks, block| {
        let function = function_id(func)?;
        let call = OccupancyAvailableSmem { function, num_blocks: blocks, block_size: block };
        let route = super::spread::route_of_function(function, StreamId::NULL)?;
        ffi::write(out, client::call_to(route, 0, &call, &[])?.value as usize)
    }
    cuOccupancyMaxActiveClusters => |f, out, func, config| {
        clusters(out, func, config, false)
    }
    cuOccupancyMaxPotentialClusterSize => |f, out, func, config| {
        clusters(out, func, config, true)
    }
    cuStreamIsCapturing, cuStreamIsCapturing_ptsz => |f, stream, status| {
        let id = super::stream::stream_id(stream)?;
        ffi::write(status, super::graph::capture_status(super::graph::key(f, id)).0)
    }
    cuStreamGetCaptureInfo, cuStreamGetCaptureInfo_ptsz => |f, stream, status, id| {
        use std::ptr::null_mut as null;
        capture_info(f, stream, status, id, null(), null(), null(), null())
    }
    cuStreamGetCaptureInfo_v2, cuStreamGetCaptureInfo_v2_ptsz => |f, stream, status, id, graph, deps, count| {
        capture_info(f, stream, status, id, graph, deps, std::ptr::null_mut(), count)
    }
    cuStreamGetCaptureInfo_v3, cuStreamGetCaptureInfo_v3_ptsz => |f, stream, status, id, graph, deps, edges, count| {
        capture_info(f, stream, status, id, graph, deps, edges, count)
    }
    cuThreadExchangeStreamCaptureMode => |f, mode| {
        let new = ffi::read(mode)?;
        if new.0 > CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED.0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let old = CAPTURE_MODE.with(|m| m.replace(new));
        ffi::write(mode, old)
    }
}
