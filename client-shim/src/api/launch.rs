//! Kernel launches: checked here against the function's and device's limits (so a launch the driver refuses fails
//! at the call), their arguments packed by the parameter layout the module load reported, and queued without a
//! reply. Plain launches travel as `LaunchKernel`, cooperative and cluster launches as `LaunchKernelEx`.

use std::ffi::{c_uint, c_void};
use std::mem::{offset_of, size_of};

use bytes::BufMut;
use vgpu_cuda_sys::driver::{
    CUdevice_attribute, CUevent, CUfunction, CUfunction_attribute, CUlaunchAttribute, CUlaunchAttributeID,
    CUlaunchAttributeValue_union__bindgen_ty_1 as ClusterDim, CUlaunchConfig, CUstream,
    CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT, CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT, CU_LAUNCH_PARAM_END_AS_INT,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::event::event_id;
use super::module::{attributes, function, known_attributes};
use super::stream::stream_id;
use super::{need_ctx, ClientHandle};
use crate::{client, ffi, state};

/// The keys of a launch's `extra` array (cuda.h's `CU_LAUNCH_PARAM_*`, which are pointers: these are their values).
const PARAM_END: usize = CU_LAUNCH_PARAM_END_AS_INT as usize;
const PARAM_BUFFER_POINTER: usize = CU_LAUNCH_PARAM_BUFFER_POINTER_AS_INT as usize;
const PARAM_BUFFER_SIZE: usize = CU_LAUNCH_PARAM_BUFFER_SIZE_AS_INT as usize;

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
        // A bound on a caller's array that lacks its end marker.
        if i > 64 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
    }
    Ok((ptr, size))
}

/// The shape of a launch given as separate grid, block and shared-memory arguments (no cluster).
fn plain_shape(grid: [c_uint; 3], block: [c_uint; 3], shared_mem: c_uint, cooperative: bool) -> LaunchShape {
    LaunchShape {
        grid,
        block,
        shared_mem,
        cooperative,
        cluster: [1, 1, 1],
    }
}

/// A launch, plain or with the cooperative/cluster attributes: plain launches travel as `LaunchKernel`,
/// cooperative and cluster ones as `LaunchKernelEx`.
fn launch(
    flags: u16,
    function_id: FunctionId,
    shape: LaunchShape,
    stream: CUstream,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<()> {
    let ctx = need_ctx()?;
    let entry = function(function_id)?;
    let stream = stream_id(stream)?;
    client::sticky_error()?;
    let route = launch_route(function_id, stream)?;
    // The function's own limits (threads per block, dynamic shared memory without or with opt-in) decide
    // whether the launch is refused at the call, as natively. A function of a lazily loaded module has
    // none yet: they are fetched once (one round trip per function), so that a launch the driver refuses
    // fails here instead of latching an error that a later, unrelated call would report.
    let attrs = known_attributes(&entry, function_id).or_else(|| attributes(function_id).ok());
    check_launch_shape(ctx, attrs, &shape)?;
    let special = shape.cooperative || shape.has_cluster();
    let key = super::graph::key(flags, stream);
    if super::graph::is_capturing(key) {
        if special {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let node = super::graph::Node::Kernel {
            function: function_id,
            shape,
            args: pack_args(function_id, params, extra)?,
        };
        if let Some(r) = super::graph::capture(key, node) {
            return r;
        }
    }
    if special {
        check_launch_attributes(function_id, &shape)?;
        let call = LaunchKernelEx {
            function: function_id,
            stream,
            dims: shape.dims(),
            cluster: shape.cluster.map(|c| c.max(1)),
            _pad: 0,
        };
        return send_launch(flags, route, &call, stream, &entry.info, params, extra);
    }
    let call = LaunchKernel {
        function: function_id,
        stream,
        dims: shape.dims(),
    };
    send_launch(flags, route, &call, stream, &entry.info, params, extra)
}

/// The server a launch of `f` on `stream` goes to (`spread::route_of_function`). A created stream of another
/// server than the function's cannot run it: natively a function and a stream of different contexts are
/// refused alike.
fn launch_route(f: FunctionId, stream: StreamId) -> CuResult<client::Route> {
    let route = super::spread::route_of_function(f, stream)?;
    if !stream.is_builtin() {
        let s = client::session()?;
        let server = |r| match r {
            client::Route::Device(d) => s.server_of(d).ok(),
            _ => Some(client::current_server()),
        };
        if server(route) != server(super::route_of_stream(stream)) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
    }
    Ok(route)
}

/// The driver's synchronous checks of a cooperative or cluster launch: every block of a cooperative grid
/// must be resident at once (by the same occupancy rules `cuOccupancy*` answer with), and a grid must tile
/// by its cluster, of at most 8 blocks (16 with the non-portable opt-in).
fn check_launch_attributes(f: FunctionId, shape: &LaunchShape) -> CuResult<()> {
    let attrs = attributes(f)?;
    let cluster = shape.cluster;
    if shape.has_cluster() {
        if cluster.contains(&0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // A grid that is not a whole number of clusters: the driver names the cluster size.
        if shape.grid.iter().zip(cluster).any(|(&g, c)| g % c != 0) {
            return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
        }
        let size: u64 = cluster.iter().map(|&c| c as u64).product();
        let non_portable = attrs[CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED.0 as usize];
        let max = if non_portable > 0 { 16 } else { 8 };
        if size > max {
            return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
        }
    }
    if shape.cooperative {
        let threads = shape
            .block
            .iter()
            .map(|&b| b as i64)
            .product::<i64>()
            .min(i32::MAX as i64) as i32;
        let per_sm = super::query::active_blocks(f, threads, shape.shared_mem as usize, 0)?.max(0) as u64;
        let sms = super::device::attribute(
            super::query::current_device()?,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .unwrap_or(1)
        .max(1) as u64;
        let blocks: u64 = shape.grid.iter().map(|&g| g as u64).product();
        if blocks > per_sm * sms {
            return Err(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        }
    }
    Ok(())
}

/// The packed argument buffer of a launch of `f` (for graph kernel nodes, which keep their arguments).
pub(crate) fn pack_args(f: FunctionId, params: *mut *mut c_void, extra: *mut *mut c_void) -> CuResult<Vec<u8>> {
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

/// Launches `function` with an argument buffer packed already (a graph kernel node's: always a plain launch).
pub(crate) fn launch_packed(
    flags: u16,
    function_id: FunctionId,
    shape: LaunchShape,
    stream: CUstream,
    args: &[u8],
) -> CuResult<()> {
    let ctx = need_ctx()?;
    let entry = function(function_id)?;
    let stream = stream_id(stream)?;
    check_launch_shape(ctx, known_attributes(&entry, function_id), &shape)?;
    if args.len() != entry.info.args_size() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let node = super::graph::Node::Kernel {
        function: function_id,
        shape,
        args: args.to_vec(),
    };
    if let Some(r) = super::graph::capture(super::graph::key(flags, stream), node) {
        return r;
    }
    let route = launch_route(function_id, stream)?;
    crate::mirror::before_launch(flags, route, stream, args)?;
    let call = LaunchKernel {
        function: function_id,
        stream,
        dims: shape.dims(),
    };
    client::post_to(route, flags, &call, args)
}

/// Queues a launch call with the arguments packed at the offsets of the function's parameter layout, from
/// `kernelParams` or from the packed buffer of `extra`.
fn send_launch<C: AsyncCall>(
    flags: u16,
    route: client::Route,
    call: &C,
    stream: StreamId,
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
            crate::mirror::before_launch(flags, route, stream, &words)?;
            client::post_with(route, flags, call, size, |buf| {
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
                (None, None) if size == 0 => client::post_to(route, flags, call, &[]),
                (Some(p), Some(n)) => {
                    if n > size {
                        return Err(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
                    }
                    if n == 0 && size > 0 {
                        return Err(CUDA_ERROR_INVALID_VALUE);
                    }
                    let packed = ffi::bytes(p as *const u8, n)?;
                    crate::mirror::before_launch(flags, route, stream, packed)?;
                    client::post_with(route, flags, call, size, |buf| {
                        buf.put_slice(packed);
                        buf.put_bytes(0, size - n);
                    })
                }
                _ => Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        (true, true) if size == 0 => client::post_to(route, flags, call, &[]),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

/// A `cuLaunchKernelEx` configuration with the attributes vGPU acts on.
pub(crate) struct LaunchConfig {
    /// Grid, block, shared memory, the cooperative attribute, and the cluster dimension (1x1x1 when the
    /// attribute is absent).
    pub shape: LaunchShape,
    pub stream: CUstream,
    /// The cluster dimension exactly as given ([0, 0, 0] when the attribute is absent).
    pub cluster_given: [c_uint; 3],
    /// Events to record once the kernel is queued (PROGRAMMATIC_EVENT, LAUNCH_COMPLETION_EVENT): recording
    /// them after the kernel is later than natively, never earlier, so waiting on them stays correct.
    pub events: Vec<CUevent>,
}

/// Most launch attributes one configuration may carry (the driver has 16 kinds).
const MAX_LAUNCH_ATTRS: usize = 64;

/// Reads a `CUlaunchConfig` and its attributes. An attribute's value is a union whose live member its id names:
/// it is read from the attribute's bytes at the member's offsets in cuda.h's layout.
pub(crate) fn read_launch_config(config: *const CUlaunchConfig) -> CuResult<LaunchConfig> {
    use CUlaunchAttributeID as Id;
    let raw: CUlaunchConfig = ffi::read(config)?;
    let mut cfg = LaunchConfig {
        shape: plain_shape(
            [raw.gridDimX, raw.gridDimY, raw.gridDimZ],
            [raw.blockDimX, raw.blockDimY, raw.blockDimZ],
            raw.sharedMemBytes,
            false,
        ),
        stream: raw.hStream,
        cluster_given: [0, 0, 0],
        events: Vec::new(),
    };
    let count = raw.numAttrs as usize;
    if count > MAX_LAUNCH_ATTRS || (count > 0 && raw.attrs.is_null()) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let record = size_of::<CUlaunchAttribute>();
    let attrs = ffi::bytes(raw.attrs as *const u8, count * record)?;
    let value = offset_of!(CUlaunchAttribute, value);
    for a in attrs.chunks_exact(record) {
        let word = |at: usize| ffi::field::<u32>(a, value + at);
        match Id(ffi::field::<u32>(a, offset_of!(CUlaunchAttribute, id))?) {
            // Hints whose absence only costs speed.
            Id::CU_LAUNCH_ATTRIBUTE_IGNORE
            | Id::CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW
            | Id::CU_LAUNCH_ATTRIBUTE_SYNCHRONIZATION_POLICY
            | Id::CU_LAUNCH_ATTRIBUTE_CLUSTER_SCHEDULING_POLICY_PREFERENCE
            | Id::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
            | Id::CU_LAUNCH_ATTRIBUTE_PRIORITY
            | Id::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN_MAP
            | Id::CU_LAUNCH_ATTRIBUTE_MEM_SYNC_DOMAIN
            | Id::CU_LAUNCH_ATTRIBUTE_PREFERRED_CLUSTER_DIMENSION
            | Id::CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT
            | Id::CU_LAUNCH_ATTRIBUTE_NVLINK_UTIL_CENTRIC_SCHEDULING => {}
            Id::CU_LAUNCH_ATTRIBUTE_COOPERATIVE => cfg.shape.cooperative = word(0)? != 0,
            Id::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION => {
                cfg.shape.cluster = [
                    word(offset_of!(ClusterDim, x))?,
                    word(offset_of!(ClusterDim, y))?,
                    word(offset_of!(ClusterDim, z))?,
                ];
                cfg.cluster_given = cfg.shape.cluster;
            }
            // Both members start with the event handle.
            Id::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT | Id::CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT => {
                cfg.events.push(ffi::field::<u64>(a, value)? as CUevent)
            }
            // Graph-only.
            Id::CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE => return Err(CUDA_ERROR_INVALID_VALUE),
            _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
        }
    }
    Ok(cfg)
}

fn launch_ex(
    flags: u16,
    config: *const CUlaunchConfig,
    f: CUfunction,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<()> {
    need_ctx()?;
    let cfg = read_launch_config(config)?;
    if cfg.shape.cluster.contains(&0) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    launch(flags, f.id(), cfg.shape, cfg.stream, params, extra)?;
    let stream = stream_id(cfg.stream)?;
    for e in cfg.events {
        client::post_to(
            super::route_of_stream(stream),
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

/// The checks the driver makes before queueing a launch, done here so their errors come back at once.
fn check_launch_shape(ctx: ContextId, attrs: Option<[i32; FUNC_ATTR_COUNT]>, shape: &LaunchShape) -> CuResult<()> {
    use CUdevice_attribute as D;
    use CUfunction_attribute as F;
    let (grid, block, shared) = (shape.grid, shape.block, shape.shared_mem);
    let s = client::session()?;
    let device = state::read().contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
    let dev = s.devices.get(device as usize).ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    let limit = |a: D| super::device::attribute(dev, a).map(|v| v as u64).unwrap_or(u64::MAX);
    let threads: u64 = block.iter().map(|&b| b as u64).product();
    let func_max = match attrs.map(|a| a[F::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK.0 as usize]) {
        Some(v) if v > 0 => v as u64,
        _ => u64::MAX,
    };
    if grid.contains(&0) || block.contains(&0) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let max_block = [
        limit(D::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X),
        limit(D::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y),
        limit(D::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z),
    ];
    let max_grid = [
        limit(D::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X),
        limit(D::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y),
        limit(D::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z),
    ];
    if block.iter().zip(max_block).any(|(&b, m)| b as u64 > m) || grid.iter().zip(max_grid).any(|(&g, m)| g as u64 > m)
    {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if threads > limit(D::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK) || threads > func_max {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // Dynamic shared memory beyond 48 KiB needs the function's MAX_DYNAMIC_SHARED_SIZE_BYTES raised first.
    let dyn_max = attrs
        .map(|a| a[F::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.0 as usize])
        .filter(|&v| v >= 0)
        .map(|v| v as u64)
        .unwrap_or(u64::MAX);
    if shared as u64 > limit(D::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN) || shared as u64 > dyn_max {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

entry! {
    cuLaunchKernel, cuLaunchKernel_ptsz => |f, func, gx, gy, gz, bx, by, bz, shared, stream, params, extra| {
        launch(f, func.id(), plain_shape([gx, gy, gz], [bx, by, bz], shared, false), stream, params, extra)
    }
    cuLaunchCooperativeKernel, cuLaunchCooperativeKernel_ptsz => |f, func, gx, gy, gz, bx, by, bz, shared, stream, params| {
        let shape = plain_shape([gx, gy, gz], [bx, by, bz], shared, true);
        launch(f, func.id(), shape, stream, params, std::ptr::null_mut())
    }
    cuLaunchKernelEx, cuLaunchKernelEx_ptsz => |f, config, func, params, extra| {
        launch_ex(f, config, func, params, extra)
    }
}
