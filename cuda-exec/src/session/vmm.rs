//! A session's virtual memory management (`cuMemAddressReserve`, `cuMemCreate`, `cuMemMap`, ...): the checks
//! and books that keep a client inside its own reservations, physical memory and memory limit.

use std::collections::{BTreeMap, HashMap};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served};
use super::Session;
use crate::backend::AllocHandle;

/// What the session knows of its VMM objects. Physical memory is named by client-chosen ids (the session maps
/// them to the driver's handles); addresses are the driver's, as for every device pointer.
#[derive(Default)]
pub(super) struct VmmObjects {
    /// Address reservations: base → size as the client asked for it (`cuMemAddressFree` must repeat it).
    reservations: BTreeMap<u64, u64>,
    /// Physical memory (`cuMemCreate`) by client id.
    physical: HashMap<AllocHandleId, Physical>,
    /// Mappings: address → what is mapped there.
    mappings: BTreeMap<u64, Mapping>,
}

/// Physical memory the session created. Natively it lives until its last reference is released and its last
/// mapping unmapped, whichever comes last; its bytes count against the memory limit until then.
struct Physical {
    real: AllocHandle,
    size: u64,
    /// Bytes counted against the session's memory limit: `size` for its own (`cuMemCreate`), 0 for memory
    /// imported from another session (the exporter's limit counts it).
    charged: u64,
    /// References not yet released: cuMemCreate's, and one per cuMemRetainAllocationHandle.
    refs: u32,
    mappings: u32,
}

#[derive(Clone, Copy)]
struct Mapping {
    /// The client id of the physical memory mapped here.
    handle: AllocHandleId,
    size: u64,
}

impl VmmObjects {
    /// The addresses of the mappings that exactly tile [ptr, ptr+size): whole mappings, back to back.
    fn whole_mappings(&self, ptr: u64, size: u64) -> CuResult<Vec<u64>> {
        vgpu_dataplane::ranges::tiling(&self.mappings, |m| m.size, ptr, size)
    }

    /// The mapping holding `addr`: (its address, the mapping).
    fn mapping_at(&self, addr: u64) -> Option<(u64, Mapping)> {
        let (&va, &m) = self.mappings.range(..=addr).next_back()?;
        (addr < va.saturating_add(m.size)).then_some((va, m))
    }
}

impl Session {
    /// `prop` with its device location turned into the server's ordinal. Only device memory is remoted: host
    /// (NUMA) memory would be the server's, which the client's CPU cannot reach.
    fn real_prop(&self, mut prop: MemAllocProp) -> CuResult<MemAllocProp> {
        if prop.location_type != MEM_LOCATION_DEVICE {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let dev = u32::try_from(prop.location_id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
        prop.location_id = self.real_device(dev)?;
        Ok(prop)
    }

    fn mem_granularity(&self, prop: MemAllocProp, option: u32) -> CuResult<u64> {
        let prop = self.real_prop(prop)?;
        self.backend.mem_granularity(&prop, option)
    }

    fn mem_address_reserve(&self, c: MemAddressReserve) -> CuResult<DevicePtr> {
        self.check_cap(|o| o.vmm.reservations.len(), |c| c.vmm_objects)?;
        // The hint only guides the driver's choice: the range it returns is new, whatever the hint named.
        let ptr = self.backend.mem_address_reserve(c.size, c.alignment, c.addr, c.flags)?;
        self.objects().vmm.reservations.insert(ptr.0, c.size);
        Ok(ptr)
    }

    /// `cuMemAddressFree` of one of the session's reservations, as it was reserved. A reservation that still
    /// holds mappings is refused before the driver sees it (the documented order is unmap, then free), so the
    /// session's books never name mappings outside a reservation.
    fn mem_address_free(&self, ptr: DevicePtr, size: u64) -> CuResult<()> {
        let (dptr, ptr) = (ptr, ptr.0);
        {
            let mut objs = self.objects();
            let vmm = &mut objs.vmm;
            if vmm.reservations.get(&ptr) != Some(&size) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            if vmm.mappings.range(ptr..ptr.saturating_add(size)).next().is_some() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            // Taken out first, so that no other thread maps into it meanwhile.
            vmm.reservations.remove(&ptr);
        }
        self.backend.mem_address_free(dptr, size).inspect_err(|_| {
            self.objects().vmm.reservations.insert(ptr, size);
        })
    }

    /// `cuMemCreate`, synchronous: its size counts against the memory limit before the driver allocates.
    fn mem_create(&self, c: MemCreate) -> CuResult<()> {
        self.check_cap(|o| o.vmm.physical.len(), |c| c.vmm_objects)?;
        let prop = self.real_prop(c.prop)?;
        if self.objects().vmm.physical.contains_key(&c.handle) {
            // Ids are the client's to choose, once each.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.reserve(c.size)?;
        let real = self
            .backend
            .mem_create(c.size, &prop, c.flags)
            .inspect_err(|_| self.unreserve(c.size))?;
        self.objects().vmm.physical.insert(
            c.handle,
            Physical {
                real,
                size: c.size,
                charged: c.size,
                refs: 1,
                mappings: 0,
            },
        );
        Ok(())
    }

    /// The driver's handle and size of physical memory `id` the session holds a reference to.
    pub(super) fn physical_memory(&self, id: AllocHandleId) -> Option<(AllocHandle, u64)> {
        self.objects()
            .vmm
            .physical
            .get(&id)
            .filter(|p| p.refs > 0)
            .map(|p| (p.real, p.size))
    }

    /// Records physical memory imported from another session under client id `id`, with one reference.
    pub(super) fn add_imported_physical(&self, id: AllocHandleId, real: AllocHandle, size: u64) -> CuResult<()> {
        self.check_cap(|o| o.vmm.physical.len(), |c| c.vmm_objects)?;
        let mut objs = self.objects();
        if objs.vmm.physical.contains_key(&id) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        objs.vmm.physical.insert(
            id,
            Physical {
                real,
                size,
                charged: 0,
                refs: 1,
                mappings: 0,
            },
        );
        Ok(())
    }

    /// Forgets physical memory with no reference and no mapping left, returning its bytes to the limit (the
    /// driver freed it at the same moment).
    fn drop_if_unused(&self, handle: AllocHandleId) {
        let mut objs = self.objects();
        let unused = objs
            .vmm
            .physical
            .get(&handle)
            .is_some_and(|p| p.refs == 0 && p.mappings == 0);
        let gone = unused.then(|| objs.vmm.physical.remove(&handle)).flatten();
        drop(objs);
        if let Some(p) = gone {
            // Its export (if any) withdrawn, its import (if any) closed; its bytes return to the limit unless another
            // session still has them open.
            if !self.ipc_physical_gone(handle, p.charged) {
                self.unreserve(p.charged);
            }
        }
    }

    fn mem_release(&self, handle: AllocHandleId) -> CuResult<()> {
        let real = {
            let mut objs = self.objects();
            let p = objs
                .vmm
                .physical
                .get_mut(&handle)
                .filter(|p| p.refs > 0)
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            p.refs -= 1;
            p.real
        };
        match self.backend.mem_release(real) {
            Ok(()) => {
                self.drop_if_unused(handle);
                Ok(())
            }
            Err(e) => {
                if let Some(p) = self.objects().vmm.physical.get_mut(&handle) {
                    p.refs += 1;
                }
                Err(e)
            }
        }
    }

    /// `cuMemMap`: the range must lie inside one reservation of the session, unmapped, and the memory must be the
    /// session's (with a reference left) and hold `offset + size` bytes. The driver checks the granularity.
    fn mem_map(&self, c: MemMap) -> CuResult<()> {
        self.check_cap(|o| o.vmm.mappings.len(), |c| c.vmm_objects)?;
        let end = c
            .ptr
            .0
            .checked_add(c.size)
            .filter(|_| c.size > 0)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let real = {
            let mut objs = self.objects();
            let vmm = &mut objs.vmm;
            let p = vmm
                .physical
                .get(&c.handle)
                .filter(|p| p.refs > 0)
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if c.offset.checked_add(c.size).is_none_or(|last| last > p.size) {
                // The driver's answer (H200, driver 580): a range past the handle's end is "not supported".
                return Err(CUDA_ERROR_NOT_SUPPORTED);
            }
            let real = p.real;
            let reserved = vmm
                .reservations
                .range(..=c.ptr.0)
                .next_back()
                .is_some_and(|(&base, &size)| end <= base.saturating_add(size));
            let mapped = vmm
                .mappings
                .range(..end)
                .next_back()
                .is_some_and(|(&va, m)| va.saturating_add(m.size) > c.ptr.0);
            if !reserved || mapped {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            // Claimed before the driver maps, so that two threads cannot map the same addresses.
            vmm.mappings.insert(
                c.ptr.0,
                Mapping {
                    handle: c.handle,
                    size: c.size,
                },
            );
            if let Some(p) = vmm.physical.get_mut(&c.handle) {
                p.mappings += 1;
            }
            real
        };
        match self.backend.mem_map(c.ptr, c.size, c.offset, real, c.flags) {
            Ok(()) => {
                // Now copies, memsets and kernels may name it.
                self.objects().ranges.insert(c.ptr.0, c.size);
                Ok(())
            }
            Err(e) => {
                let mut objs = self.objects();
                objs.vmm.mappings.remove(&c.ptr.0);
                if let Some(p) = objs.vmm.physical.get_mut(&c.handle) {
                    p.mappings = p.mappings.saturating_sub(1);
                }
                Err(e)
            }
        }
    }

    /// `cuMemUnmap` of whole mappings of the session: one, or several back to back in one call.
    fn mem_unmap(&self, ptr: DevicePtr, size: u64) -> CuResult<()> {
        let taken: Vec<(u64, Mapping)> = {
            let mut objs = self.objects();
            let vas = objs.vmm.whole_mappings(ptr.0, size)?;
            // Taken out first: from here on no copy may name them.
            vas.into_iter()
                .filter_map(|va| {
                    objs.ranges.remove(&va);
                    objs.vmm.mappings.remove(&va).map(|m| (va, m))
                })
                .collect()
        };
        match self.backend.mem_unmap(ptr, size) {
            Ok(()) => {
                for (_, m) in &taken {
                    if let Some(p) = self.objects().vmm.physical.get_mut(&m.handle) {
                        p.mappings = p.mappings.saturating_sub(1);
                    }
                    self.drop_if_unused(m.handle);
                }
                Ok(())
            }
            Err(e) => {
                let mut objs = self.objects();
                for (va, m) in taken {
                    objs.ranges.insert(va, m.size);
                    objs.vmm.mappings.insert(va, m);
                }
                Err(e)
            }
        }
    }

    /// `cuMemSetAccess` over whole mappings of the session, for devices the client may name.
    fn mem_set_access(&self, ptr: DevicePtr, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        let mut real = Vec::with_capacity(descs.len());
        for d in descs {
            if d.location_type != MEM_LOCATION_DEVICE {
                // Host access to device memory would be the server's host.
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let dev = u32::try_from(d.location_id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
            real.push(MemAccessDesc {
                location_id: self.real_device(dev)?,
                ..*d
            });
        }
        self.objects().vmm.whole_mappings(ptr.0, size)?;
        self.backend.mem_set_access(ptr, size, &real)
    }

    fn mem_get_access(&self, location_type: u32, location_id: i32, ptr: DevicePtr) -> CuResult<u64> {
        if location_type != MEM_LOCATION_DEVICE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dev = u32::try_from(location_id).map_err(|_| CUDA_ERROR_INVALID_DEVICE)?;
        let real = self.real_device(dev)?;
        if self.objects().vmm.mapping_at(ptr.0).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.backend.mem_get_access(location_type, real, ptr)
    }

    /// `cuMemGetAllocationPropertiesFromHandle`, its device given back in the client's numbering.
    fn mem_allocation_properties(&self, handle: AllocHandleId) -> CuResult<MemAllocProp> {
        let real = self
            .objects()
            .vmm
            .physical
            .get(&handle)
            .map(|p| p.real)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut prop = self.backend.mem_allocation_properties(real)?;
        if prop.location_type == MEM_LOCATION_DEVICE {
            prop.location_id = self.client_device(prop.location_id).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        }
        Ok(prop)
    }

    /// `cuMemRetainAllocationHandle`: the id the client mapped at `addr`, with one more reference.
    fn mem_retain_allocation_handle(&self, addr: DevicePtr) -> CuResult<AllocHandleId> {
        let (_, m) = self.objects().vmm.mapping_at(addr.0).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let real = self.backend.mem_retain_allocation_handle(addr)?;
        let mut objs = self.objects();
        match objs.vmm.physical.get_mut(&m.handle) {
            Some(p) if p.real == real => {
                p.refs += 1;
                Ok(m.handle)
            }
            _ => {
                // The driver named other memory than the session's books: keep the books, undo the retain.
                drop(objs);
                tracing::warn!(
                    addr = addr.0,
                    "cuMemRetainAllocationHandle: the driver's handle differs from the session's"
                );
                let _ = self.backend.mem_release(real);
                Err(CUDA_ERROR_UNKNOWN)
            }
        }
    }

    /// Unmaps, releases and frees every VMM object the session still holds. A worker process ends with its
    /// session and the driver frees everything then; this returns them where a session ends inside a process
    /// that goes on.
    pub(super) fn release_vmm(&mut self) {
        let vmm = std::mem::take(&mut self.objects.get_mut().unwrap_or_else(|p| p.into_inner()).vmm);
        for (va, m) in &vmm.mappings {
            let _ = self.backend.mem_unmap(DevicePtr(*va), m.size);
        }
        for p in vmm.physical.values() {
            for _ in 0..p.refs {
                let _ = self.backend.mem_release(p.real);
            }
        }
        for (&base, &size) in &vmm.reservations {
            let _ = self.backend.mem_address_free(DevicePtr(base), size);
        }
    }
}

impl Serve<MemGetAllocationGranularity> for Channel {
    fn serve(&mut self, c: MemGetAllocationGranularity, _cx: &mut Cx<'_>) -> Served<GranularityReply> {
        Ok(self
            .s()
            .mem_granularity(c.prop, c.option)
            .map(|granularity| GranularityReply { granularity }))
    }
}

impl Serve<MemAddressReserve> for Channel {
    fn serve(&mut self, c: MemAddressReserve, _cx: &mut Cx<'_>) -> Served<MemAllocReply> {
        Ok(self.s().mem_address_reserve(c).map(|dptr| MemAllocReply { dptr }))
    }
}

impl Serve<MemAddressFree> for Channel {
    fn serve(&mut self, c: MemAddressFree, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.s().mem_address_free(c.ptr, c.size).map(|_| Empty {}))
    }
}

impl Serve<MemCreate> for Channel {
    fn serve(&mut self, c: MemCreate, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.s().mem_create(c).map(|_| Empty {}))
    }
}

impl Serve<MemRelease> for Channel {
    fn serve(&mut self, c: MemRelease, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.s().mem_release(c.handle).map(|_| Empty {}))
    }
}

impl Serve<MemMap> for Channel {
    fn serve(&mut self, c: MemMap, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.s().mem_map(c).map(|_| Empty {}))
    }
}

impl Serve<MemUnmap> for Channel {
    fn serve(&mut self, c: MemUnmap, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.s().mem_unmap(c.ptr, c.size).map(|_| Empty {}))
    }
}

impl Serve<MemSetAccess> for Channel {
    fn serve(&mut self, c: MemSetAccess, _cx: &mut Cx<'_>) -> Served<Empty> {
        let record = std::mem::size_of::<MemAccessDesc>();
        if self.tail.len() != c.count as usize * record {
            return Err(super::ChannelEnd::Malformed(format!(
                "cuMemSetAccess of {} descriptors carries {} bytes",
                c.count,
                self.tail.len()
            )));
        }
        let descs: Vec<MemAccessDesc> = self
            .tail
            .chunks_exact(record)
            .filter_map(|r| zerocopy::FromBytes::read_from_bytes(r).ok())
            .collect();
        Ok(self.s().mem_set_access(c.ptr, c.size, &descs).map(|_| Empty {}))
    }
}

impl Serve<MemGetAccess> for Channel {
    fn serve(&mut self, c: MemGetAccess, _cx: &mut Cx<'_>) -> Served<MemAccessReply> {
        Ok(self
            .s()
            .mem_get_access(c.location_type, c.location_id, c.ptr)
            .map(|flags| MemAccessReply { flags }))
    }
}

impl Serve<MemGetAllocationProperties> for Channel {
    fn serve(&mut self, c: MemGetAllocationProperties, _cx: &mut Cx<'_>) -> Served<MemAllocPropReply> {
        Ok(self
            .s()
            .mem_allocation_properties(c.handle)
            .map(|prop| MemAllocPropReply { prop }))
    }
}

impl Serve<MemRetainAllocationHandle> for Channel {
    fn serve(&mut self, c: MemRetainAllocationHandle, _cx: &mut Cx<'_>) -> Served<MemHandleReply> {
        Ok(self
            .s()
            .mem_retain_allocation_handle(c.addr)
            .map(|handle| MemHandleReply { handle }))
    }
}
