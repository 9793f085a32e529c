//! Emulated backend: virtual memory management as the driver documents it — 2 MiB granules, reservations in
//! their own address region, physical memory that owns its bytes (so aliases and contents across unmap behave
//! natively), reference and mapping counts, access flags, and the native error codes.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::{MemAccessDesc, MemAllocProp, MEM_LOCATION_DEVICE};

use super::{
    EmulatedBackend, Mapping, Physical, State, EMULATED_TOTAL_MEM, HANDLE_TYPE_FABRIC, HANDLE_TYPE_POSIX_FD,
    HINT_FLOOR, HOST_PAGE, VMM_GRANULARITY,
};

impl EmulatedBackend {
    pub(super) fn granularity(&self, prop: &MemAllocProp, option: u32) -> CuResult<u64> {
        self.check_prop(prop)?;
        match option {
            0 | 1 => Ok(VMM_GRANULARITY),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    pub(super) fn reserve(&self, size: u64, alignment: u64, addr: u64, flags: u64) -> CuResult<u64> {
        if size == 0
            || !size.is_multiple_of(HOST_PAGE)
            || !addr.is_multiple_of(HOST_PAGE)
            || flags != 0
            || (alignment != 0 && !alignment.is_power_of_two())
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let align = alignment.max(VMM_GRANULARITY);
        let (region_start, region_end) = self.vmm_region;
        let mut st = self.state();
        let fits = |st: &State, base: u64, floor: u64| {
            base.is_multiple_of(align)
                && base >= floor
                && base.checked_add(size).is_some_and(|end| {
                    end <= region_end && !st.overlaps_reservation(base, end) && !st.overlaps_allocation(base, end)
                })
        };
        // The hint is taken where it is free (anywhere below the device's own memory, as the driver takes a
        // fixed address it can give); otherwise, as natively, another place is chosen.
        let base = if addr != 0 && fits(&st, addr, HINT_FLOOR) {
            addr
        } else {
            // First fit, so that freed reservations are reused.
            let mut cursor = region_start;
            let mut found = None;
            for (&b, &s) in &st.reservations {
                let candidate = cursor.next_multiple_of(align);
                if candidate.checked_add(size).is_some_and(|end| end <= b) {
                    found = Some(candidate);
                    break;
                }
                cursor = cursor.max(b + s);
            }
            let base = match found {
                Some(b) => b,
                None => cursor.next_multiple_of(align),
            };
            if !fits(&st, base, region_start) {
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
            base
        };
        st.reservations.insert(base, size);
        Ok(base)
    }

    pub(super) fn free_reservation(&self, ptr: u64, size: u64) -> CuResult<()> {
        let mut st = self.state();
        if st.reservations.get(&ptr) != Some(&size) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // The range must be unmapped first (the driver's documented order).
        if st.mappings.range(ptr..ptr + size).next().is_some() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        st.reservations.remove(&ptr);
        Ok(())
    }

    pub(super) fn create_physical(&self, size: u64, prop: &MemAllocProp, flags: u64) -> CuResult<u64> {
        self.check_prop(prop)?;
        if flags != 0 || size == 0 || !size.is_multiple_of(VMM_GRANULARITY) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if prop.handle_types & !(HANDLE_TYPE_POSIX_FD | HANDLE_TYPE_FABRIC) != 0 {
            // Win32 handle types on a Linux host.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if prop.handle_types & HANDLE_TYPE_FABRIC != 0 {
            // No IMEX fabric here (device attribute 128 is 0): PyTorch tries fabric first and falls back.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let mut st = self.state();
        if st.used.saturating_add(size) > EMULATED_TOTAL_MEM {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        st.used += size;
        let handle = self.handle();
        st.physical.insert(
            handle,
            Physical {
                bytes: super::state::Bytes::zeroed(size as usize),
                prop: *prop,
                refs: 1,
                mappings: 0,
            },
        );
        Ok(handle)
    }

    pub(super) fn release_physical(&self, handle: u64) -> CuResult<()> {
        let mut st = self.state();
        let m = st
            .physical
            .get_mut(&handle)
            .filter(|m| m.refs > 0)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        m.refs -= 1;
        st.free_if_unused(handle);
        Ok(())
    }

    pub(super) fn map(&self, ptr: u64, size: u64, offset: u64, handle: u64, flags: u64) -> CuResult<()> {
        let aligned = |v: u64| v.is_multiple_of(VMM_GRANULARITY);
        if flags != 0 || size == 0 || !aligned(ptr) || !aligned(size) || !aligned(offset) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let end = ptr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let mut st = self.state();
        let m = st
            .physical
            .get(&handle)
            .filter(|m| m.refs > 0)
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if offset.checked_add(size).is_none_or(|last| last > m.bytes.len() as u64) {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let reserved = st
            .reservations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&b, &s)| end <= b + s);
        let mapped = st
            .mappings
            .range(..end)
            .next_back()
            .is_some_and(|(&va, m)| va + m.size > ptr);
        if !reserved || mapped {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if let Some(m) = st.physical.get_mut(&handle) {
            m.mappings += 1;
        }
        st.mappings.insert(
            ptr,
            Mapping {
                handle,
                offset,
                size,
                access: 0,
            },
        );
        Ok(())
    }

    pub(super) fn unmap(&self, ptr: u64, size: u64) -> CuResult<()> {
        let mut st = self.state();
        for va in st.whole_mappings(ptr, size)? {
            if let Some(m) = st.mappings.remove(&va) {
                if let Some(p) = st.physical.get_mut(&m.handle) {
                    p.mappings -= 1;
                }
                st.free_if_unused(m.handle);
            }
        }
        Ok(())
    }

    pub(super) fn set_access(&self, ptr: u64, size: u64, descs: &[MemAccessDesc]) -> CuResult<()> {
        let mut st = self.state();
        let covered = st.whole_mappings(ptr, size)?;
        if descs.is_empty() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut access = None;
        for d in descs {
            if d.location_type != MEM_LOCATION_DEVICE || !matches!(d.flags, 0 | 1 | 3) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            self.check_device(d.location_id)?;
            access = Some(d.flags);
        }
        if let Some(flags) = access {
            for va in covered {
                if let Some(m) = st.mappings.get_mut(&va) {
                    m.access = flags;
                }
            }
        }
        Ok(())
    }

    pub(super) fn get_access(&self, location_type: u32, location_id: i32, ptr: u64) -> CuResult<u64> {
        if location_type != MEM_LOCATION_DEVICE {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.check_device(location_id)?;
        let st = self.state();
        let (&va, m) = st.mappings.range(..=ptr).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if ptr >= va + m.size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(m.access as u64)
    }

    pub(super) fn retain_physical(&self, addr: u64) -> CuResult<u64> {
        let mut st = self.state();
        let (&va, m) = st.mappings.range(..=addr).next_back().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if addr >= va + m.size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let handle = m.handle;
        if let Some(p) = st.physical.get_mut(&handle) {
            p.refs += 1;
        }
        Ok(handle)
    }
}
