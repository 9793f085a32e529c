//! Handlers: device memory (allocations, pitch, managed, stream-ordered from pools), memory pools, and the two
//! ways client host memory becomes device-visible here (host mirrors over TCP, shared regions over shm). Every
//! byte held counts against the session's memory limit.

use std::sync::Arc;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};
use super::{window, ChannelEnd};
use crate::backend::*;

/// Largest host mirror one call may map (the client maps pinned allocations one by one).
const MAX_MIRROR: u64 = 64 << 30;

impl Channel {
    fn mem_alloc(&self, size: u64) -> CuResult<DevicePtr> {
        self.s().check_cap(|o| o.allocations.len(), |c| c.allocations)?;
        self.s().reserve(size)?;
        let dptr = self
            .place(size, window::SMALL_ALIGN, |b| b.mem_alloc(size))
            .inspect_err(|_| self.s().unreserve(size))?;
        self.s().objects().add_allocation(dptr, size);
        Ok(dptr)
    }

    /// Device memory of `size` bytes for the current context's device: in the client's window for it where there
    /// is one (`window`), else where the driver places it (`driver`).
    fn place(
        &self,
        size: u64,
        align: u64,
        driver: impl FnOnce(&dyn Backend) -> CuResult<DevicePtr>,
    ) -> CuResult<DevicePtr> {
        if let Some(dev) = self.current_device() {
            if let Some(r) = self.s().windows().alloc(self.b(), dev, size, align) {
                return r;
            }
        }
        driver(self.b())
    }

    /// Frees device memory: the window's, or the driver's.
    fn free_memory(&self, dptr: DevicePtr) -> CuResult<()> {
        let windowed = self.s().windows().free(self.b(), dptr.0);
        match windowed {
            Some(r) => r,
            None => self.b().mem_free(dptr),
        }
    }

    /// A memory pool by client id; a device's default pool is bound to the driver's on first use.
    pub(super) fn pool(&self, id: PoolId) -> CuResult<MemPool> {
        if let Some(&real) = self.s().objects().pools.get(&id) {
            return Ok(real);
        }
        let dev = id.default_device().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let real = self.b().default_mem_pool(self.s().real_device(dev)?)?;
        self.s().objects().pools.insert(id, real);
        Ok(real)
    }

    fn map_region(&self, id: RegionId, size: u64, addr: HostAddr, fd: &std::os::fd::OwnedFd) -> CuResult<()> {
        let len = usize::try_from(size).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let at = usize::try_from(addr.0).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        if self.s().objects().regions.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.s()
            .check_cap(|o| o.mirrors.len() + o.regions.len(), |c| c.host_regions)?;
        // Registered (page-locked) in this process: counted against the session's host budget while mapped.
        if !self.s().hold_host(size) {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let mapped = crate::sys::SharedRegion::map(fd, len, at)
            .map_err(|e| {
                tracing::warn!("cannot map the client's host region {id}: {e}");
                CUDA_ERROR_INVALID_VALUE
            })
            .and_then(|region| self.b().host_register(region.ptr, region.len).map(|_| region));
        match mapped {
            Ok(region) => {
                self.s().objects().regions.insert(id, Arc::new(region));
                Ok(())
            }
            Err(e) => {
                self.s().release_host(size);
                Err(e)
            }
        }
    }
}

impl Channel {
    /// `cuMemAllocPitch`: in the window, rows padded to 512 bytes (what the driver's pitch rounds to at most);
    /// else the driver's own choice. (base, pitch).
    fn alloc_pitch(&self, width: u64, height: u64, elem_size: u32) -> CuResult<(DevicePtr, u64)> {
        if !matches!(elem_size, 4 | 8 | 16) || width == 0 || height == 0 {
            return self.b().mem_alloc_pitch(width, height, elem_size);
        }
        let pitch = width.checked_next_multiple_of(512).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let size = pitch.checked_mul(height).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut driver_pitch = None;
        let dptr = self.place(size, window::SMALL_ALIGN, |b| {
            b.mem_alloc_pitch(width, height, elem_size).map(|(d, p)| {
                driver_pitch = Some(p);
                d
            })
        })?;
        Ok((dptr, driver_pitch.unwrap_or(pitch)))
    }
}

impl Serve<MemAlloc> for Channel {
    fn serve(&mut self, c: MemAlloc, _cx: &mut Cx<'_>) -> Served<MemAllocReply> {
        Ok(self.mem_alloc(c.size).map(|dptr| MemAllocReply { dptr }))
    }
}

impl Serve<MemAllocPitch> for Channel {
    fn serve(&mut self, c: MemAllocPitch, _cx: &mut Cx<'_>) -> Served<MemAllocPitchReply> {
        // The driver picks the pitch; reserve the widest it may choose (rows rounded up to 512 bytes) and settle
        // the difference once it has answered.
        let bound = c
            .width
            .checked_next_multiple_of(512)
            .and_then(|w| w.checked_mul(c.height))
            .ok_or(CUDA_ERROR_INVALID_VALUE);
        let r = bound.and_then(|bound| {
            self.s().check_cap(|o| o.allocations.len(), |c| c.allocations)?;
            self.s().reserve(bound)?;
            let (dptr, pitch) = self
                .alloc_pitch(c.width, c.height, c.elem_size)
                .inspect_err(|_| self.s().unreserve(bound))?;
            let size = pitch.saturating_mul(c.height);
            let mut objs = self.s().objects();
            objs.add_allocation(dptr, size);
            objs.allocated_bytes = objs.allocated_bytes.saturating_sub(bound).saturating_add(size);
            Ok(MemAllocPitchReply { dptr, pitch })
        });
        Ok(r)
    }
}

impl Serve<MemFree> for Channel {
    fn serve(&mut self, c: MemFree, _cx: &mut Cx<'_>) -> Served<Empty> {
        if c.dptr.is_null() {
            return Ok(Ok(Empty {}));
        }
        if !self.s().objects().allocations.contains_key(&c.dptr.0) {
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        }
        let r = self.free_memory(c.dptr);
        if r.is_ok() {
            self.s().free_allocation(c.dptr);
        }
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<MemGetInfo> for Channel {
    fn serve(&mut self, _c: MemGetInfo, _cx: &mut Cx<'_>) -> Served<MemGetInfoReply> {
        let r = self
            .b()
            .mem_get_info()
            .map(|(free, total)| match self.s().limits.memory_bytes {
                Some(limit) => {
                    let used = self.s().objects().allocated_bytes;
                    MemGetInfoReply {
                        free: free.min(limit.saturating_sub(used)),
                        total: total.min(limit),
                    }
                }
                None => MemGetInfoReply { free, total },
            });
        Ok(r)
    }
}

impl Serve<MemAllocManaged> for Channel {
    fn serve(&mut self, c: MemAllocManaged, _cx: &mut Cx<'_>) -> Served<MemAllocReply> {
        let capped = self.s().check_cap(|o| o.allocations.len(), |c| c.allocations);
        let r = capped.and_then(|_| self.s().reserve(c.size)).and_then(|_| {
            // In a window: device memory, which the client keeps in step with its host copy as it does managed
            // memory (whole pages, as managed memory is mapped on the client's side).
            let dptr = self
                .place(c.size.next_multiple_of(4096), 4096, |b| {
                    b.mem_alloc_managed(c.size, c.flags)
                })
                .inspect_err(|_| self.s().unreserve(c.size))?;
            self.s().objects().add_allocation(dptr, c.size);
            Ok(MemAllocReply { dptr })
        });
        Ok(r)
    }
}

impl Serve<MemPoolCreate> for Channel {
    fn serve(&mut self, c: MemPoolCreate, _cx: &mut Cx<'_>) -> Served<Empty> {
        let r = self.s().real_device(c.device).and_then(|d| {
            self.s().check_cap(|o| o.pools.len(), |c| c.pools)?;
            let real = self.b().mem_pool_create(d, c.max_size)?;
            self.s().objects().pools.insert(c.pool, real);
            Ok(Empty {})
        });
        Ok(r)
    }
}

impl Serve<MemPoolDestroy> for Channel {
    fn serve(&mut self, c: MemPoolDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        if c.pool.default_device().is_some() {
            // A device's default pool cannot be destroyed.
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        }
        let real = self.s().objects().pools.remove(&c.pool);
        Ok(match real {
            Some(r) => self.b().mem_pool_destroy(r).map(|_| Empty {}),
            None => Err(CUDA_ERROR_INVALID_VALUE),
        })
    }
}

impl Serve<MemAllocAsync> for Channel {
    /// Stream-ordered allocation, accounted against the session's memory limit like any other.
    fn serve(&mut self, c: MemAllocAsync, cx: &mut Cx<'_>) -> Served<MemAllocReply> {
        let r = (|| {
            let pool = self.pool(c.pool)?;
            let stream = self.stream(c.stream, cx.per_thread)?;
            self.s().check_cap(|o| o.allocations.len(), |c| c.allocations)?;
            self.s().reserve(c.size)?;
            let dptr = self
                .b()
                .mem_alloc_async(c.size, pool, stream)
                .inspect_err(|_| self.s().unreserve(c.size))?;
            self.s().objects().add_allocation(dptr, c.size);
            Ok(MemAllocReply { dptr })
        })();
        Ok(r)
    }
}

impl Serve<MemFreeAsync> for Channel {
    fn serve(&mut self, c: MemFreeAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        let r = (|| {
            let stream = self.stream(c.stream, cx.per_thread)?;
            if !self.s().objects().allocations.contains_key(&c.dptr.0) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            self.b().mem_free_async(c.dptr, stream)?;
            self.s().free_allocation(c.dptr);
            Ok(Empty {})
        })();
        Ok(r)
    }
}

impl Serve<MemPoolGetAttribute> for Channel {
    fn serve(&mut self, c: MemPoolGetAttribute, _cx: &mut Cx<'_>) -> Served<MemPoolAttrReply> {
        Ok(self
            .pool(c.pool)
            .and_then(|p| self.b().mem_pool_get_attribute(p, c.attr))
            .map(|value| MemPoolAttrReply { value }))
    }
}

impl Serve<MemPoolSetAttribute> for Channel {
    fn serve(&mut self, c: MemPoolSetAttribute, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .pool(c.pool)
            .and_then(|p| self.b().mem_pool_set_attribute(p, c.attr, c.value))
            .map(|_| Empty {}))
    }
}

impl Serve<MemPoolTrimTo> for Channel {
    fn serve(&mut self, c: MemPoolTrimTo, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .pool(c.pool)
            .and_then(|p| self.b().mem_pool_trim_to(p, c.min_bytes))
            .map(|_| Empty {}))
    }
}

impl Serve<HostMirrorMap> for Channel {
    fn serve(&mut self, c: HostMirrorMap, _cx: &mut Cx<'_>) -> Served<MemAllocReply> {
        if c.size == 0 || c.size > MAX_MIRROR || !c.addr.0.is_multiple_of(4096) || !c.size.is_multiple_of(4096) {
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        }
        // Pinned host memory of the server: counted against the session's host budget while mapped.
        let capped = self
            .s()
            .check_cap(|o| o.mirrors.len() + o.regions.len(), |c| c.host_regions);
        if let Err(e) = capped {
            return Ok(Err(e));
        }
        if !self.s().hold_host(c.size) {
            return Ok(Err(CUDA_ERROR_OUT_OF_MEMORY));
        }
        let r = self.b().host_mirror_map(c.addr.0, c.size).map(|dptr| {
            let mut objs = self.s().objects();
            objs.mirrors.insert(c.addr, (dptr, c.size));
            // Copies may name it like device memory.
            objs.ranges.insert(dptr.0, c.size);
            MemAllocReply { dptr }
        });
        if r.is_err() {
            self.s().release_host(c.size);
        }
        Ok(r)
    }
}

impl Serve<MirrorDigest> for Channel {
    /// Hashes a stretch of memory the session owns (a host mirror, or managed memory the client mirrors the same
    /// way), read through the staging buffers in stream order on the default stream (the client asks after a
    /// synchronizing call, so kernels' writes are in).
    fn serve(&mut self, c: MirrorDigest, cx: &mut Cx<'_>) -> Served<Empty> {
        use vgpu_dataplane::digest;
        if c.size == 0 {
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        }
        if let Err(e) = self.check_range(c.dptr, c.size) {
            return Ok(Err(e));
        }
        if let Err(e) = self.ensure_staging() {
            return Ok(Err(e));
        }
        let stream = cx.default_stream();
        let len = c.size as usize;
        let mut hashes = Vec::with_capacity(len.div_ceil(digest::CHUNK) * 8);
        let mut offset = 0usize;
        while offset < len {
            // A multiple of digest::CHUNK, so chunks never straddle two reads.
            let n = (len - offset).min(super::channel::CHUNK);
            let read = self
                .b()
                .memcpy_dtoh_async(&self.staging[0], c.dptr.offset(offset as u64), n, stream)
                .and_then(|_| self.b().stream_synchronize(stream));
            if let Err(e) = read {
                return Ok(Err(e));
            }
            for piece in self.staging[0].as_slice()[..n].chunks(digest::CHUNK) {
                hashes.extend_from_slice(&digest::chunk_hash(piece).to_le_bytes());
            }
            offset += n;
        }
        cx.reply_tail = hashes;
        Ok(Ok(Empty {}))
    }
}

impl Serve<HostMirrorUnmap> for Channel {
    fn serve(&mut self, c: HostMirrorUnmap, _cx: &mut Cx<'_>) -> Served<Empty> {
        let m = self.s().objects().mirrors.remove(&c.addr);
        Ok(match m {
            Some((dptr, size)) => {
                self.s().objects().ranges.remove(&dptr.0);
                self.s().release_host(size);
                self.b().host_mirror_unmap(c.addr.0, size).map(|_| Empty {})
            }
            None => Err(CUDA_ERROR_INVALID_VALUE),
        })
    }
}

impl Serve<HostRegionMap> for Channel {
    fn serve(&mut self, c: HostRegionMap, cx: &mut Cx<'_>) -> Served<Empty> {
        // The descriptor was sent just before this request; without it the client broke the protocol.
        let fd = cx.t.recv_fd(c.id.0).map_err(ChannelEnd::from)?;
        Ok(self.map_region(c.id, c.size, c.addr, &fd).map(|_| Empty {}))
    }
}

impl Serve<HostRegionUnmap> for Channel {
    fn serve(&mut self, c: HostRegionUnmap, _cx: &mut Cx<'_>) -> Served<Empty> {
        let region = self.s().objects().regions.remove(&c.id);
        let Some(region) = region else {
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        };
        // Copies still queued on it must finish before the memory goes (the driver's cuMemFreeHost waits too).
        let _ = self.b().ctx_synchronize();
        self.s().release_host(region.len as u64);
        Ok(self.b().host_unregister(region.ptr).map(|_| Empty {}))
    }
}
