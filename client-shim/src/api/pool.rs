//! Stream-ordered allocation and memory pools: `cuMemAllocAsync`/`cuMemFreeAsync`, device pools the app creates
//! (client-chosen ids) and each device's default and current pool. Allocation is synchronous: the pointer is the
//! server's.

use vgpu_cuda_sys::driver::{
    CUdevice, CUdeviceptr, CUmemAllocationHandleType, CUmemAllocationType, CUmemLocationType, CUmemPoolProps,
    CUmemPool_attribute, CUmemoryPool, CUstream,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::graph;
use super::stream::stream_id;
use super::{need_ctx, record_range, route_of_ptr, route_of_stream, ClientHandle};
use crate::client::Route;
use crate::{client, ffi, state};

fn check_device(dev: CUdevice) -> CuResult<()> {
    let n = client::session()?.devices.len();
    if dev < 0 || dev as usize >= n {
        return Err(CUDA_ERROR_INVALID_DEVICE);
    }
    Ok(())
}

/// A pool id the app may name: one it created, or a device's default pool.
fn known_pool(pool: CUmemoryPool) -> CuResult<PoolId> {
    let id = pool.id();
    let n = client::session()?.devices.len() as u32;
    let is_default = id.default_device().is_some_and(|d| d < n);
    if is_default || state::read().mem_pools.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

/// The device a pool belongs to: its creator's, or the one whose default pool it is.
fn pool_device(pool: PoolId) -> CuResult<i32> {
    if let Some(d) = pool.default_device() {
        return i32::try_from(d).map_err(|_| CUDA_ERROR_INVALID_VALUE);
    }
    state::read()
        .mem_pools
        .get(&pool)
        .copied()
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

fn current_pool(dev: CUdevice) -> PoolId {
    state::read()
        .current_pools
        .get(&dev)
        .copied()
        .unwrap_or(PoolId::default_of(dev as u32))
}

fn alloc_async(flags: u16, out: *mut CUdeviceptr, size: usize, pool: PoolId, stream: CUstream) -> CuResult<()> {
    need_ctx()?;
    let stream = stream_id(stream)?;
    if out.is_null() || size == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let device = pool_device(pool)?;
    let route = route_of_stream(stream);
    // The pool's memory is allocated in the stream's order: both on one server (no peer pools across servers).
    if !super::stream::same_server(route, Route::Device(device))? {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let r = client::call_to(
        route,
        flags,
        &MemAllocAsync {
            size: size as u64,
            stream,
            pool,
        },
        &[],
    )?;
    let dptr = r.dptr.get();
    if let Err(e) = record_range(dptr, size as u64, device) {
        let _ = client::post_to(route, flags, &MemFreeAsync { dptr: r.dptr, stream }, &[]);
        return Err(e);
    }
    graph::capture_alloc(graph::key(flags, stream), dptr);
    ffi::write(out, dptr)
}

/// Which pool attributes are ints (the reuse policies); the others are 64-bit sizes.
fn pool_attr_is_int(attr: CUmemPool_attribute) -> bool {
    matches!(
        attr,
        CUmemPool_attribute::CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
            | CUmemPool_attribute::CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC
            | CUmemPool_attribute::CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES
    )
}

/// `cuMemPoolCreate` of a pinned device pool (host-located NUMA pools and exportable handles are not remoted yet).
fn pool_create(out: *mut CUmemoryPool, props: *const CUmemPoolProps) -> CuResult<()> {
    client::session()?;
    let p: CUmemPoolProps = ffi::read(props)?;
    if p.allocType != CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED || out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if p.location.type_ != CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE
        || p.handleTypes != CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE
    {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let device = p.location.id;
    check_device(device).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let pool = PoolId(state::new_id());
    let call = MemPoolCreate {
        pool,
        max_size: p.maxSize as u64,
        device: device as u32,
        _pad: 0,
    };
    client::call_to(Route::Device(device), 0, &call, &[])?;
    state::write().mem_pools.insert(pool, device);
    ffi::write(out, CUmemoryPool::of(pool))
}

entry! {
    cuDeviceGetDefaultMemPool => |f, out, dev| {
        check_device(dev)?;
        ffi::write(out, CUmemoryPool::of(PoolId::default_of(dev as u32)))
    }
    cuDeviceGetMemPool => |f, out, dev| {
        check_device(dev)?;
        ffi::write(out, CUmemoryPool::of(current_pool(dev)))
    }
    cuDeviceSetMemPool => |f, dev, pool| {
        check_device(dev)?;
        let id = known_pool(pool)?;
        let mut reg = state::write();
        match reg.mem_pools.get(&id) {
            Some(&d) if d != dev => return Err(CUDA_ERROR_INVALID_DEVICE),
            _ => {}
        }
        reg.current_pools.insert(dev, id);
        Ok(())
    }
    cuMemPoolCreate => |f, out, props| {
        pool_create(out, props)
    }
    cuMemPoolDestroy => |f, pool| {
        let id = pool.id();
        if !state::read().mem_pools.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        client::call_to(Route::Device(pool_device(id)?), 0, &MemPoolDestroy { pool: id }, &[])?;
        let mut reg = state::write();
        reg.mem_pools.remove(&id);
        // A destroyed current pool leaves its device with the default one.
        reg.current_pools.retain(|_, p| *p != id);
        Ok(())
    }
    cuMemAllocAsync, cuMemAllocAsync_ptsz => |f, out, size, stream| {
        let ctx = need_ctx()?;
        let dev = state::read().contexts.get(&ctx).map(|c| c.device).unwrap_or(0);
        alloc_async(f, out, size, current_pool(dev), stream)
    }
    cuMemAllocFromPoolAsync, cuMemAllocFromPoolAsync_ptsz => |f, out, size, pool, stream| {
        let pool = known_pool(pool)?;
        alloc_async(f, out, size, pool, stream)
    }
    cuMemFreeAsync, cuMemFreeAsync_ptsz => |f, dptr, stream| {
        need_ctx()?;
        let stream = stream_id(stream)?;
        if let Some(r) = graph::capture_free(graph::key(f, stream), dptr) {
            return r;
        }
        let route = route_of_ptr(dptr);
        let mut reg = state::write();
        // A VMM mapping is no allocation to free (cuMemUnmap undoes it).
        if reg.vmm_mappings.contains_key(&dptr) || reg.remove_device_range(dptr).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        drop(reg);
        if !super::stream::same_server(route, route_of_stream(stream))? {
            // Freed in the order of a stream of another server: after that stream's work.
            client::flush_all()?;
            client::call_to(route_of_stream(stream), f, &StreamSynchronize { stream }, &[])?;
            return client::call_to(route, 0, &MemFree { dptr: DevicePtr(dptr) }, &[]).map(|_| ());
        }
        client::post_to(route, f, &MemFreeAsync { dptr: DevicePtr(dptr), stream }, &[])
    }
    cuMemPoolGetAttribute => |f, pool, attr, value| {
        let pool = known_pool(pool)?;
        let route = Route::Device(pool_device(pool)?);
        let r = client::call_to(route, 0, &MemPoolGetAttribute { pool, attr: attr.0, _pad: 0 }, &[])?;
        if pool_attr_is_int(attr) {
            ffi::write(value as *mut i32, r.value as i32)
        } else {
            ffi::write(value as *mut u64, r.value)
        }
    }
    cuMemPoolSetAttribute => |f, pool, attr, value| {
        let pool = known_pool(pool)?;
        let v = if pool_attr_is_int(attr) {
            ffi::read(value as *const i32)? as u32 as u64
        } else {
            ffi::read(value as *const u64)?
        };
        let route = Route::Device(pool_device(pool)?);
        client::call_to(route, 0, &MemPoolSetAttribute { pool, value: v, attr: attr.0, _pad: 0 }, &[]).map(|_| ())
    }
    cuMemPoolTrimTo => |f, pool, min_bytes| {
        let pool = known_pool(pool)?;
        let route = Route::Device(pool_device(pool)?);
        client::call_to(route, 0, &MemPoolTrimTo { pool, min_bytes: min_bytes as u64 }, &[]).map(|_| ())
    }
}
