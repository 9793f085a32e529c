//! Queries the runtime makes on its hot paths: module loading mode, pointer attributes, stream-capture status
//! and peer access answered on the client from facts it holds; occupancy by the server's driver.

use std::cell::Cell;
use std::ffi::{c_int, c_uint, c_void};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{need_ctx, Handle};
use crate::{client, ffi, state};

/// `CUmemorytype`.
const MEMORYTYPE_HOST: u32 = 1;
const MEMORYTYPE_DEVICE: u32 = 2;

/// What the client knows of an address: device memory it allocated, or host memory it allocated/registered.
enum Pointer {
    /// Device memory; `managed`: cuMemAllocManaged or `__managed__` memory, mapped on the host too.
    Device {
        base: u64,
        len: u64,
        ctx: u64,
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

fn classify(ptr: u64) -> Option<Pointer> {
    if let Some(m) = crate::mirror::find(ptr as usize).filter(|m| m.kind != crate::mirror::Kind::Pinned) {
        return Some(Pointer::Device {
            base: m.data as u64,
            len: m.data_len as u64,
            ctx: state::current_ctx(),
            device: 0,
            managed: true,
            vmm: None,
        });
    }
    let reg = state::read();
    if let Some((base, len)) = reg.device_range(ptr) {
        // Allocations belong to the context current when they were made; with one context per device in
        // practice (the primary), the current one stands in.
        let ctx = state::current_ctx();
        let device = reg.contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
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
fn pointer_attribute(attr: c_uint, ptr: u64) -> CuResult<Option<Vec<u8>>> {
    let p = classify(ptr);
    let u32v = |v: u32| Some(v.to_ne_bytes().to_vec());
    let u64v = |v: u64| Some(v.to_ne_bytes().to_vec());
    let Some(p) = p else { return Ok(None) };
    let current = state::current_ctx();
    Ok(match (attr, &p) {
        (1, Pointer::Device { ctx, .. }) => u64v(*ctx),
        (1, Pointer::Host { .. }) => u64v(current),
        (2, Pointer::Device { .. }) => u32v(MEMORYTYPE_DEVICE),
        (2, Pointer::Host { .. }) => u32v(MEMORYTYPE_HOST),
        // Unified addressing: a pointer is the same number on the host and the device (pinned memory's
        // server mirror sits at the same address where it could be placed there).
        (3, Pointer::Host { .. }) => match crate::mirror::find(ptr as usize) {
            Some(m) => u64v(m.dptr + (ptr - m.base as u64)),
            None => u64v(ptr),
        },
        (3, _) => u64v(ptr),
        (4, Pointer::Device { managed: true, .. }) => u64v(ptr),
        (4, Pointer::Device { .. }) => return Err(CUDA_ERROR_INVALID_VALUE),
        (4, Pointer::Host { .. }) => u64v(ptr),
        (6, _) => u32v(0),
        (7 | 20, Pointer::Device { base, .. }) => u64v(*base),
        (7 | 20, Pointer::Host { base, .. }) => u64v(*base as u64),
        (8, Pointer::Device { managed, .. }) => u32v(*managed as u32),
        (8, _) => u32v(0),
        (9, Pointer::Device { device, .. }) => u32v(*device as u32),
        (9, Pointer::Host { .. }) => u32v(0),
        // Only cuMemAlloc memory can be shared with cuIpcGetMemHandle, not VMM memory.
        (10, Pointer::Device { vmm: Some(_), .. }) => u32v(0),
        (10, Pointer::Device { .. }) => u32v(1),
        (10, Pointer::Host { .. }) => u32v(0),
        (11 | 19, Pointer::Device { base, .. }) => u64v(*base),
        (11 | 19, Pointer::Host { base, .. }) => u64v(*base as u64),
        (12 | 18, Pointer::Device { len, .. }) => u64v(*len),
        (12 | 18, Pointer::Host { len, .. }) => u64v(*len as u64),
        (13, _) => u32v(1),
        (
            14,
            Pointer::Device {
                vmm: Some((types, _)), ..
            },
        ) => u64v(*types as u64),
        (14, _) => u64v(0),
        (15, Pointer::Device { .. }) => u32v(1),
        (15, Pointer::Host { .. }) => u32v(0),
        // CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE.
        (
            16,
            Pointer::Device {
                vmm: Some((_, access)), ..
            },
        ) => u32v(*access),
        (16, Pointer::Device { .. }) => u32v(3),
        (16, Pointer::Host { flags, .. }) => u32v(if *flags & 0x8 != 0 { 1 } else { 3 }),
        (17, _) => u64v(0),
        (21, _) => u32v(0),
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

fn function_id(f: Handle) -> CuResult<u64> {
    need_ctx()?;
    super::exec::function_entry(f)?;
    Ok(f as u64)
}

/// `cuOccupancyMaxActiveBlocksPerMultiprocessor(WithFlags)`, answered by the server's driver (the answer
/// depends on the kernel's registers and shared memory as compiled, and on the driver's allocation rules).
pub(crate) fn active_blocks(f: Handle, block_size: c_int, smem: usize, flags: c_uint) -> CuResult<c_int> {
    let call = OccupancyActiveBlocks {
        function: function_id(f)?,
        dynamic_smem: smem as u64,
        block_size,
        flags,
    };
    Ok(client::call(0, &call, &[])?.value as c_int)
}

fn max_potential_block_size(
    min_grid: *mut c_int,
    block_out: *mut c_int,
    f: Handle,
    b2d: usize,
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
    if b2d != 0 {
        let max = super::exec::attributes(f)?[0].max(1);
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
    let r = client::call(0, &call, &table)?;
    ffi::write(min_grid, r.min_grid)?;
    ffi::write(block_out, r.block)
}

fn clusters(out: *mut c_int, f: Handle, config: *const c_void, potential_size: bool) -> CuResult<()> {
    let function = function_id(f)?;
    let cfg = super::exec::read_launch_config(config)?;
    let call = OccupancyClusters {
        function,
        grid_x: cfg.grid[0],
        grid_y: cfg.grid[1],
        grid_z: cfg.grid[2],
        block_x: cfg.block[0],
        block_y: cfg.block[1],
        block_z: cfg.block[2],
        shared_mem: cfg.shared,
        potential_size: potential_size as u32,
        cluster_x: cfg.cluster_given[0],
        cluster_y: cfg.cluster_given[1],
        cluster_z: cfg.cluster_given[2],
        _pad: 0,
    };
    let r = client::call(0, &call, &[])?;
    ffi::write(out, r.value as c_int)
}

thread_local! {
    /// `cuThreadExchangeStreamCaptureMode`'s per-thread mode (CU_STREAM_CAPTURE_MODE_GLOBAL = 0).
    static CAPTURE_MODE: Cell<c_uint> = const { Cell::new(0) };
}

entry! {
    [cuModuleGetLoadingMode] [] (mode: *mut c_uint) |f| {
        client::session()?;
        // CU_MODULE_LAZY_LOADING (2), the driver's default since CUDA 12.2, unless the app asked for eager
        // loading through the variable the driver reads. Loading happens on the server, which honours it too
        // when `vgpu run` passes the environment on.
        let eager = std::env::var("CUDA_MODULE_LOADING").is_ok_and(|v| v.eq_ignore_ascii_case("EAGER"));
        ffi::write(mode, if eager { 1 } else { 2 })
    }
    [cuPointerGetAttribute] [] (data: *mut c_void, attr: c_uint, ptr: u64) |f| {
        client::session()?;
        if data.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = pointer_attribute(attr, ptr)?.ok_or(CUDA_ERROR_INVALID_VALUE)?;
        ffi::bytes_mut(data as *mut u8, bytes.len())?.copy_from_slice(&bytes);
        Ok(())
    }
    [cuPointerGetAttributes] [] (n: c_uint, attrs: *const c_uint, data: *mut *mut c_void, ptr: u64) |f| {
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
                Ok(_) | Err(_) => {
                    let width = if matches!(attr, 2 | 6 | 8 | 9 | 10 | 13 | 15 | 16 | 21) { 4 } else { 8 };
                    vec![0; width]
                }
            };
            ffi::bytes_mut(out as *mut u8, bytes.len())?.copy_from_slice(&bytes);
        }
        Ok(())
    }
    [cuOccupancyMaxActiveBlocksPerMultiprocessor] [] (out: *mut c_int, func: Handle, block: c_int, smem: usize) |f| {
        ffi::write(out, active_blocks(func, block, smem, 0)?)
    }
    [cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags] [] (out: *mut c_int, func: Handle, block: c_int, smem: usize, flags: c_uint) |f| {
        ffi::write(out, active_blocks(func, block, smem, flags)?)
    }
    [cuOccupancyMaxPotentialBlockSize] [] (min_grid: *mut c_int, block: *mut c_int, func: Handle, b2d: usize, smem: usize, limit: c_int) |f| {
        max_potential_block_size(min_grid, block, func, b2d, smem, limit, 0)
    }
    [cuOccupancyMaxPotentialBlockSizeWithFlags] [] (min_grid: *mut c_int, block: *mut c_int, func: Handle, b2d: usize, smem: usize, limit: c_int, flags: c_uint) |f| {
        max_potential_block_size(min_grid, block, func, b2d, smem, limit, flags)
    }
    [cuOccupancyAvailableDynamicSMemPerBlock] [] (out: *mut usize, func: Handle, blocks: c_int, block: c_int) |f| {
        let call = OccupancyAvailableSmem { function: function_id(func)?, num_blocks: blocks, block_size: block };
        ffi::write(out, client::call(0, &call, &[])?.value as usize)
    }
    [cuOccupancyMaxActiveClusters] [] (out: *mut c_int, func: Handle, config: *const c_void) |f| {
        clusters(out, func, config, false)
    }
    [cuOccupancyMaxPotentialClusterSize] [] (out: *mut c_int, func: Handle, config: *const c_void) |f| {
        clusters(out, func, config, true)
    }
    [cuStreamIsCapturing] [cuStreamIsCapturing_ptsz] (stream: Handle, status: *mut c_uint) |f| {
        let id = super::exec::stream_id(stream)?;
        ffi::write(status, super::graph::capture_status(super::graph::key(f, id)).0)
    }
    [cuStreamGetCaptureInfo] [cuStreamGetCaptureInfo_ptsz] (stream: Handle, status: *mut c_uint, id: *mut u64) |f| {
        let s = super::exec::stream_id(stream)?;
        let (st, capture) = super::graph::capture_status(super::graph::key(f, s));
        ffi::write(status, st)?;
        if !id.is_null() {
            ffi::write(id, capture)?;
        }
        Ok(())
    }
    [cuStreamGetCaptureInfo_v2, cuStreamGetCaptureInfo_v3] [cuStreamGetCaptureInfo_v2_ptsz, cuStreamGetCaptureInfo_v3_ptsz] (stream: Handle, status: *mut c_uint, id: *mut u64, graph: *mut Handle) |f| {
        // The dependency outputs after `graph` are left alone: the runtime reads them only to add nodes by
        // hand to a capture, which is not supported here.
        let s = super::exec::stream_id(stream)?;
        let (st, capture) = super::graph::capture_status(super::graph::key(f, s));
        ffi::write(status, st)?;
        if !id.is_null() {
            ffi::write(id, capture)?;
        }
        if !graph.is_null() {
            ffi::write(graph, if st == 0 { std::ptr::null_mut() } else { capture as Handle })?;
        }
        Ok(())
    }
    [cuThreadExchangeStreamCaptureMode] [] (mode: *mut c_uint) |f| {
        let new = ffi::read(mode)?;
        if new > 2 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let old = CAPTURE_MODE.with(|m| m.replace(new));
        ffi::write(mode, old)
    }
    [cuDeviceCanAccessPeer] [] (can: *mut c_int, dev: c_int, peer: c_int) |f| {
        let n = client::session()?.devices.len() as c_int;
        if dev < 0 || dev >= n || peer < 0 || peer >= n {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        // Peer access between remoted GPUs is not offered yet.
        ffi::write(can, 0)
    }
    [cuDeviceGetP2PAttribute] [] (value: *mut c_int, attr: c_uint, src: c_int, dst: c_int) |f| {
        let n = client::session()?.devices.len() as c_int;
        if src < 0 || src >= n || dst < 0 || dst >= n || src == dst {
            return Err(CUDA_ERROR_INVALID_DEVICE);
        }
        let _ = attr;
        ffi::write(value, 0)
    }
}
