//! Client-chosen address windows (unified addressing across servers): the client gives each of its devices a
//! virtual address range of its own (`VaWindow`), and this server places the session's `cuMemAlloc`,
//! `cuMemAllocPitch` and `cuMemAllocManaged` memory inside it, through virtual memory management: one
//! reservation of the whole window at its fixed address (made at the first allocation, in a context), then per
//! allocation physical memory created, mapped and made accessible. Allocations of at most half a granule share
//! granules (slabs), so a 256-byte `cuMemAlloc` does not take 2 MiB. Where the driver refuses the fixed address,
//! the window is given up (said once in the log) and the driver places that device's memory itself.

use std::collections::{BTreeMap, HashMap};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{MemAccessDesc, MemAllocProp, MEM_LOCATION_DEVICE};

use crate::backend::Backend;

/// Alignment of allocations inside slabs (the driver's `cuMemAlloc` alignment is at least 256 bytes).
pub(super) const SMALL_ALIGN: u64 = 512;
/// `CU_MEM_ALLOCATION_TYPE_PINNED`.
const PINNED: u32 = 1;
/// `CU_MEM_ACCESS_FLAGS_PROT_READWRITE`.
const READ_WRITE: u32 = 3;
/// Smallest window unit the client may ask for (the granule of every current NVIDIA GPU).
pub(super) const WINDOW_UNIT: u64 = 2 << 20;
/// Largest window one device may have.
pub(super) const MAX_WINDOW: u64 = 16 << 40;

/// The windows of a session's devices, by the server's ordinal.
#[derive(Default)]
pub(super) struct Windows {
    by_device: HashMap<i32, Window>,
}

enum Reservation {
    /// Not reserved yet: the first allocation reserves it (a context is current then).
    Pending,
    Reserved {
        granule: u64,
    },
    /// The driver would not give the fixed address: the driver places this device's memory.
    Refused,
}

struct Window {
    base: u64,
    size: u64,
    reservation: Reservation,
    /// Unused address space: address → length (granule multiples, coalesced).
    free: BTreeMap<u64, u64>,
    /// Allocations with physical memory of their own: address → mapped length.
    large: HashMap<u64, u64>,
    /// Granules shared by small allocations: address → slab.
    slabs: BTreeMap<u64, Slab>,
    /// Small allocations: address → (its slab, its length in the slab).
    small: HashMap<u64, (u64, u64)>,
}

/// One granule carved into small allocations.
struct Slab {
    /// Unused space: address → length (multiples of `SMALL_ALIGN`, coalesced).
    free: BTreeMap<u64, u64>,
    live: usize,
}

/// Takes `len` bytes aligned to `align` out of a free list (first fit); the address.
fn take(free: &mut BTreeMap<u64, u64>, len: u64, align: u64) -> Option<u64> {
    let (start, run, at) = free.iter().find_map(|(&start, &run)| {
        let at = start.checked_next_multiple_of(align)?;
        (at.checked_add(len)? <= start + run).then_some((start, run, at))
    })?;
    free.remove(&start);
    if at > start {
        free.insert(start, at - start);
    }
    let end = at + len;
    if end < start + run {
        free.insert(end, start + run - end);
    }
    Some(at)
}

/// Returns [at, at+len) to a free list, joining its neighbours.
fn give(free: &mut BTreeMap<u64, u64>, at: u64, len: u64) {
    let (mut start, mut end) = (at, at + len);
    if let Some((&s, &l)) = free.range(..at).next_back() {
        if s + l == at {
            free.remove(&s);
            start = s;
        }
    }
    if let Some(l) = free.remove(&end) {
        end += l;
    }
    free.insert(start, end - start);
}

impl Windows {
    /// Records device `dev`'s window (the client's choice); reserved at its first allocation.
    pub fn configure(&mut self, dev: i32, base: u64, size: u64) -> CuResult<()> {
        let end = base.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let aligned = base.is_multiple_of(WINDOW_UNIT) && size.is_multiple_of(WINDOW_UNIT);
        let overlaps = self
            .by_device
            .iter()
            .any(|(&d, w)| d != dev && w.base < end && base < w.base + w.size);
        if !aligned || size == 0 || size > MAX_WINDOW || overlaps || self.by_device.contains_key(&dev) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.by_device.insert(
            dev,
            Window {
                base,
                size,
                reservation: Reservation::Pending,
                free: BTreeMap::from([(base, size)]),
                large: HashMap::new(),
                slabs: BTreeMap::new(),
                small: HashMap::new(),
            },
        );
        Ok(())
    }

    /// Memory of `size` bytes for device `dev` in its window, aligned to `align` (a power of two up to a page:
    /// managed memory takes whole pages); `None` when the device has no window (or the driver refused it), and
    /// the driver places the memory itself.
    pub fn alloc(&mut self, b: &dyn Backend, dev: i32, size: u64, align: u64) -> Option<CuResult<DevicePtr>> {
        let w = self.by_device.get_mut(&dev)?;
        let granule = w.reserve(b, dev)?;
        let align = align.clamp(SMALL_ALIGN, 4096);
        Some(if size <= granule / 2 {
            w.alloc_small(b, dev, granule, size.max(1), align)
        } else {
            w.alloc_large(b, dev, granule, size)
        })
    }

    /// Frees `addr` if it is window memory (`None`: it is not; the driver's `cuMemFree` frees it).
    pub fn free(&mut self, b: &dyn Backend, addr: u64) -> Option<CuResult<()>> {
        let w = self
            .by_device
            .values_mut()
            .find(|w| addr >= w.base && addr < w.base + w.size)?;
        if !w.large.contains_key(&addr) && !w.small.contains_key(&addr) {
            return None;
        }
        Some(w.free(b, addr))
    }

    /// Frees every allocation of every window (a primary-context reset takes the session's memory with it).
    pub fn release_all(&mut self, b: &dyn Backend) {
        for w in self.by_device.values_mut() {
            let all: Vec<u64> = w.large.keys().chain(w.small.keys()).copied().collect();
            for addr in all {
                let _ = w.free(b, addr);
            }
        }
    }

    /// Where device `dev`'s window is: (base, size), if it has one that holds memory.
    #[cfg(test)]
    pub fn span(&self, dev: i32) -> Option<(u64, u64)> {
        self.by_device
            .get(&dev)
            .filter(|w| matches!(w.reservation, Reservation::Reserved { .. }))
            .map(|w| (w.base, w.size))
    }
}

impl Window {
    /// The granule, once the window is reserved (reserving it now if it is pending); `None` if refused.
    fn reserve(&mut self, b: &dyn Backend, dev: i32) -> Option<u64> {
        match self.reservation {
            Reservation::Reserved { granule } => return Some(granule),
            Reservation::Refused => return None,
            Reservation::Pending => {}
        }
        let outcome = b.mem_granularity(&device_prop(dev), 0).and_then(|granule| {
            if !self.base.is_multiple_of(granule) || !self.size.is_multiple_of(granule) {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let got = b.mem_address_reserve(self.size, granule, DevicePtr(self.base), 0)?;
            if got.0 != self.base {
                let _ = b.mem_address_free(got, self.size);
                return Err(CUDA_ERROR_ALREADY_MAPPED);
            }
            Ok(granule)
        });
        match outcome {
            Ok(granule) => {
                self.reservation = Reservation::Reserved { granule };
                Some(granule)
            }
            Err(e) => {
                tracing::warn!(
                    "device {dev}: the driver would not reserve the client's address window at {:#x} (+{:#x}): {e}; \
                     its memory goes where the driver places it (addresses may clash with another server's)",
                    self.base,
                    self.size
                );
                self.reservation = Reservation::Refused;
                None
            }
        }
    }

    /// Physical memory of `len` bytes mapped at `at`, readable and writable by device `dev`.
    fn back(b: &dyn Backend, dev: i32, at: u64, len: u64) -> CuResult<()> {
        let handle = b.mem_create(len, &device_prop(dev), 0)?;
        let mapped = b.mem_map(DevicePtr(at), len, 0, handle, 0).and_then(|_| {
            let access = MemAccessDesc {
                location_type: MEM_LOCATION_DEVICE,
                location_id: dev,
                flags: READ_WRITE,
            };
            b.mem_set_access(DevicePtr(at), len, &[access]).inspect_err(|_| {
                let _ = b.mem_unmap(DevicePtr(at), len);
            })
        });
        // The mapping keeps the memory; it goes with the unmap.
        let released = b.mem_release(handle);
        mapped.and(released)
    }

    fn alloc_large(&mut self, b: &dyn Backend, dev: i32, granule: u64, size: u64) -> CuResult<DevicePtr> {
        let len = size.checked_next_multiple_of(granule).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        let at = take(&mut self.free, len, granule).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        if let Err(e) = Self::back(b, dev, at, len) {
            give(&mut self.free, at, len);
            return Err(e);
        }
        self.large.insert(at, len);
        Ok(DevicePtr(at))
    }

    fn alloc_small(&mut self, b: &dyn Backend, dev: i32, granule: u64, size: u64, align: u64) -> CuResult<DevicePtr> {
        let len = size.next_multiple_of(align);
        let found = self
            .slabs
            .iter_mut()
            .find_map(|(&slab, s)| take(&mut s.free, len, align).map(|at| (slab, at)));
        let (slab, at) = match found {
            Some(x) => x,
            None => {
                let slab = take(&mut self.free, granule, granule).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
                if let Err(e) = Self::back(b, dev, slab, granule) {
                    give(&mut self.free, slab, granule);
                    return Err(e);
                }
                let mut s = Slab {
                    free: BTreeMap::from([(slab, granule)]),
                    live: 0,
                };
                let at = take(&mut s.free, len, align).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
                self.slabs.insert(slab, s);
                (slab, at)
            }
        };
        if let Some(s) = self.slabs.get_mut(&slab) {
            s.live += 1;
        }
        self.small.insert(at, (slab, len));
        Ok(DevicePtr(at))
    }

    fn free(&mut self, b: &dyn Backend, addr: u64) -> CuResult<()> {
        if let Some(len) = self.large.remove(&addr) {
            b.mem_unmap(DevicePtr(addr), len)?;
            give(&mut self.free, addr, len);
            return Ok(());
        }
        let Some((slab, len)) = self.small.remove(&addr) else {
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        let slabs = self.slabs.len();
        let Some(s) = self.slabs.get_mut(&slab) else {
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        give(&mut s.free, addr, len);
        s.live = s.live.saturating_sub(1);
        // An empty slab is unmapped unless it is the only one (kept, so that allocating and freeing one small
        // buffer in a loop does not create and map a granule each time).
        if s.live == 0 && slabs > 1 {
            let granule = s.free.values().sum::<u64>();
            self.slabs.remove(&slab);
            b.mem_unmap(DevicePtr(slab), granule)?;
            give(&mut self.free, slab, granule);
        }
        Ok(())
    }
}

/// Pinned device memory on the server's device `dev`.
fn device_prop(dev: i32) -> MemAllocProp {
    MemAllocProp {
        alloc_type: PINNED,
        location_type: MEM_LOCATION_DEVICE,
        location_id: dev,
        // Where this process moves device memory to and from RDMA devices directly, its memory must allow it.
        gpu_direct_rdma: u8::from(vgpu_dataplane::pinned::device_exporter().is_some()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_lists_take_first_fits_and_join_neighbours() {
        let mut free = BTreeMap::from([(0u64, 100u64)]);
        assert_eq!(take(&mut free, 10, 8), Some(0));
        assert_eq!(take(&mut free, 10, 8), Some(16), "aligned past the first piece");
        assert_eq!(free, BTreeMap::from([(10, 6), (26, 74)]));
        give(&mut free, 0, 10);
        give(&mut free, 16, 10);
        assert_eq!(free, BTreeMap::from([(0, 100)]), "everything joined again");
        assert_eq!(take(&mut free, 101, 1), None);
    }
}
