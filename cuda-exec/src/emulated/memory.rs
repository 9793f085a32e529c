//! Emulated backend: memory beyond plain allocations — memsets, structured copies, stream memory operations,
//! memory pools, host mirrors, managed memory, CUDA arrays (and copies between them).

use std::ffi::CStr;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::{
    ArrayBox, ArrayShape, MemOp, MEM_OP_BARRIER, MEM_OP_FLUSH_REMOTE_WRITES, MEM_OP_WAIT_VALUE_32,
    MEM_OP_WAIT_VALUE_64, MEM_OP_WRITE_VALUE_32, MEM_OP_WRITE_VALUE_64,
};

use super::{EmulatedBackend, EMULATED_TOTAL_MEM};
use crate::backend::*;

impl EmulatedBackend {
    /// A global of a loaded image: (address, size).
    pub(super) fn global(&self, image: u64, name: &CStr) -> CuResult<(DevicePtr, u64)> {
        let st = self.state();
        let functions = st.modules.get(&image).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let name = name.to_str().map_err(|_| CUDA_ERROR_NOT_FOUND)?;
        if let Some(&(addr, size)) = st.globals.get(&image).and_then(|g| g.get(name)) {
            return Ok((DevicePtr(addr), size));
        }
        // A kernel's name is not a variable: the driver answers INVALID_VALUE rather than NOT_FOUND.
        if functions.iter().any(|f| f.info.name == name) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Err(CUDA_ERROR_NOT_FOUND)
    }

    pub(super) fn free(&self, dptr: u64) -> CuResult<()> {
        let mut st = self.state();
        if st.globals.values().any(|g| g.values().any(|&(a, _)| a == dptr)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if st.ipc.opened.contains_key(&dptr) {
            // Memory opened from another process is closed with cuIpcCloseMemHandle, not freed.
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = st.allocations.remove(&dptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        st.used -= bytes.len() as u64;
        Ok(())
    }

    pub(super) fn memset(&self, dst: u64, fill: Fill) -> CuResult<()> {
        let pattern = fill.value.to_le_bytes();
        let elem = fill.elem_size as usize;
        if !matches!(elem, 1 | 2 | 4) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let row_bytes = fill.width * fill.elem_size as u64;
        for row in 0..fill.height {
            self.with_range(dst + row * fill.pitch, row_bytes, |d| {
                fill_repeated(d, &pattern[..elem])
            })?;
        }
        Ok(())
    }

    pub(super) fn copy_2d(&self, src: Place<'_>, dst: Place<'_>, width: u64, height: u64) -> CuResult<()> {
        for row in 0..height {
            let data = match src {
                Place::Host(buf, pitch) => {
                    let at = (row * pitch) as usize;
                    buf.as_slice()
                        .get(at..at + width as usize)
                        .ok_or(CUDA_ERROR_INVALID_VALUE)?
                        .to_vec()
                }
                Place::Device(a, pitch) => self.with_range(a.0 + row * pitch, width, |s| s.to_vec())?,
            };
            match dst {
                Place::Host(buf, pitch) => {
                    if !buf.write_at((row * pitch) as usize, &data) {
                        return Err(CUDA_ERROR_INVALID_VALUE);
                    }
                }
                Place::Device(a, pitch) => self.with_range(a.0 + row * pitch, width, |d| d.copy_from_slice(&data))?,
            }
        }
        Ok(())
    }

    /// Writes land at once; a wait whose condition does not hold would block the stream for good natively (no
    /// other work runs concurrently here to satisfy it), so it is refused with CUDA_ERROR_NOT_SUPPORTED.
    pub(super) fn mem_ops(&self, ops: &[MemOp]) -> CuResult<()> {
        for op in ops {
            let len = op.operand_len().ok_or(CUDA_ERROR_INVALID_VALUE)?;
            let wide = len == 8;
            let addr = op.address.0;
            match op.operation {
                MEM_OP_WRITE_VALUE_32 | MEM_OP_WRITE_VALUE_64 => self.with_range(addr, len, |b| {
                    b.copy_from_slice(&op.value.to_le_bytes()[..len as usize])
                })?,
                MEM_OP_WAIT_VALUE_32 | MEM_OP_WAIT_VALUE_64 => {
                    let mut word = [0u8; 8];
                    self.with_range(addr, len, |b| word[..len as usize].copy_from_slice(b))?;
                    let now = u64::from_le_bytes(word);
                    if !wait_condition_holds(now, op.value, op.flags, wide)? {
                        return Err(CUDA_ERROR_NOT_SUPPORTED);
                    }
                }
                MEM_OP_BARRIER | MEM_OP_FLUSH_REMOTE_WRITES => {}
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        Ok(())
    }

    pub(super) fn pool_destroy(&self, pool: u64) -> CuResult<()> {
        let mut st = self.state();
        st.pools.remove(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        // Natively, memory still allocated from a destroyed pool is freed when it is freed; here at once.
        let owned: Vec<u64> = st
            .pool_allocations
            .iter()
            .filter(|(_, &(p, _))| p == pool)
            .map(|(&d, _)| d)
            .collect();
        for d in owned {
            st.pool_allocations.remove(&d);
        }
        Ok(())
    }

    pub(super) fn pool_alloc(&self, size: u64, pool: u64) -> CuResult<DevicePtr> {
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        {
            let st = self.state();
            let p = st.pools.get(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            if p.max_size != 0 && p.used.saturating_add(size) > p.max_size {
                return Err(CUDA_ERROR_OUT_OF_MEMORY);
            }
        }
        let dptr = self.mem_alloc(size)?;
        let mut st = self.state();
        st.pool_allocations.insert(dptr.0, (pool, size));
        if let Some(p) = st.pools.get_mut(&pool) {
            p.used += size;
            p.used_high = p.used_high.max(p.used);
            // Pools reserve in 2 MiB granules and keep what they reserved until trimmed.
            let granule = 2 << 20;
            p.reserved = p.reserved.max(p.used.div_ceil(granule) * granule);
            p.reserved_high = p.reserved_high.max(p.reserved);
        }
        Ok(dptr)
    }

    pub(super) fn pool_attribute(&self, pool: u64, attr: u32) -> CuResult<u64> {
        let st = self.state();
        let p = st.pools.get(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        Ok(match attr {
            1..=3 => p.reuse[attr as usize - 1],
            4 => p.release_threshold,
            5 => p.reserved,
            6 => p.reserved_high,
            7 => p.used,
            8 => p.used_high,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        })
    }

    pub(super) fn set_pool_attribute(&self, pool: u64, attr: u32, value: u64) -> CuResult<()> {
        let mut st = self.state();
        let p = st.pools.get_mut(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match attr {
            1..=3 => p.reuse[attr as usize - 1] = value,
            4 => p.release_threshold = value,
            // The high watermarks can only be reset, to the current value.
            6 if value == 0 => p.reserved_high = p.reserved,
            8 if value == 0 => p.used_high = p.used,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        Ok(())
    }

    pub(super) fn pool_trim(&self, pool: u64, min_bytes: u64) -> CuResult<()> {
        let mut st = self.state();
        let p = st.pools.get_mut(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let granule = 2 << 20;
        p.reserved = p.used.max(min_bytes).div_ceil(granule) * granule;
        p.reserved = p.reserved.min(p.reserved_high.max(p.used));
        Ok(())
    }

    /// A device range at the client's address, so copies to and from it behave as with the real driver.
    pub(super) fn mirror_map(&self, addr: u64, size: u64) -> CuResult<DevicePtr> {
        let mut st = self.state();
        let end = addr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if st.overlaps_allocation(addr, end) || st.overlaps_reservation(addr, end) {
            return Err(CUDA_ERROR_ALREADY_MAPPED);
        }
        st.allocations.insert(addr, super::state::Bytes::zeroed(size as usize));
        Ok(DevicePtr(addr))
    }

    /// Managed memory is mapped in whole pages (the client maps the same pages on its side): page-aligned,
    /// sharing no page with other memory, as the driver's managed allocations do not.
    pub(super) fn managed_alloc(&self, size: u64) -> CuResult<DevicePtr> {
        const PAGE: u64 = 4096;
        {
            let mut st = self.state();
            st.next_addr = st.next_addr.div_ceil(PAGE) * PAGE;
        }
        let dptr = self.mem_alloc(size.div_ceil(PAGE) * PAGE)?;
        let mut st = self.state();
        st.next_addr = st.next_addr.div_ceil(PAGE) * PAGE + PAGE;
        Ok(dptr)
    }

    pub(super) fn create_array(&self, shape: ArrayShape) -> CuResult<u64> {
        let elem = shape.element_bytes().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if shape.width == 0 || (shape.height == 0 && shape.depth != 0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = shape
            .width
            .checked_mul(elem)
            .and_then(|v| v.checked_mul(shape.height.max(1)))
            .and_then(|v| v.checked_mul(shape.depth.max(1)))
            .filter(|&b| b <= EMULATED_TOTAL_MEM)
            .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        let handle = self.handle();
        self.state().arrays.insert(handle, (shape, vec![0; bytes as usize]));
        Ok(handle)
    }

    pub(super) fn copy_array(&self, array: u64, region: ArrayBox, mut other: ArrayTransfer<'_>) -> CuResult<()> {
        let mut st = self.state();
        let (shape, mut data) = st.arrays.remove(&array).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let elem = shape.element_bytes().unwrap_or(1);
        let row_bytes = (shape.width * elem) as usize;
        let rows = shape.height.max(1) as usize;
        let w = region.width_bytes as usize;
        drop(st);
        let mut result = Ok(());
        'copy: for z in 0..region.depth as usize {
            for y in 0..region.height as usize {
                let at = ((region.z as usize + z) * rows + region.y as usize + y) * row_bytes + region.x_bytes as usize;
                let packed = (z * region.height as usize + y) * w;
                let device_row = |ptr: DevicePtr, pitch: u64, rows_per_slice: u64| {
                    ptr.0 + (z as u64 * rows_per_slice.max(region.height) + y as u64) * pitch
                };
                let r = match &mut other {
                    ArrayTransfer::FromHost(host) => {
                        data[at..at + w].copy_from_slice(&host[packed..packed + w]);
                        Ok(())
                    }
                    ArrayTransfer::ToHost(host) => {
                        host[packed..packed + w].copy_from_slice(&data[at..at + w]);
                        Ok(())
                    }
                    ArrayTransfer::FromDevice {
                        ptr,
                        pitch,
                        rows_per_slice,
                    } => self.with_range(device_row(*ptr, *pitch, *rows_per_slice), w as u64, |src| {
                        data[at..at + w].copy_from_slice(src)
                    }),
                    ArrayTransfer::ToDevice {
                        ptr,
                        pitch,
                        rows_per_slice,
                    } => self.with_range(device_row(*ptr, *pitch, *rows_per_slice), w as u64, |dst| {
                        dst.copy_from_slice(&data[at..at + w])
                    }),
                };
                if r.is_err() {
                    result = r;
                    break 'copy;
                }
            }
        }
        self.state().arrays.insert(array, (shape, data));
        result
    }

    /// `cuMemcpyAtoA`: bytes of the first row of two arrays (their whole data for 1D arrays). Offsets and size
    /// are in bytes and must stay inside both arrays' rows; the elements must be of one size and the count a
    /// whole number of them, as the driver documents.
    pub(super) fn array_to_array(
        &self,
        dst: u64,
        dst_offset: u64,
        src: u64,
        src_offset: u64,
        size: u64,
    ) -> CuResult<()> {
        let mut st = self.state();
        let row = |shape: &ArrayShape| shape.element_bytes().map(|e| shape.width * e);
        let elem = |id: u64, st: &super::State| {
            st.arrays
                .get(&id)
                .map(|(shape, _)| shape.element_bytes())
                .ok_or(CUDA_ERROR_INVALID_HANDLE)
        };
        let (src_elem, dst_elem) = (elem(src, &st)?, elem(dst, &st)?);
        match (src_elem, dst_elem) {
            (Some(a), Some(b)) if a == b && size.is_multiple_of(a) => {}
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        let (src_shape, src_data) = st.arrays.get(&src).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let src_row = row(src_shape).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let inside = |off: u64, row: u64| off.checked_add(size).is_some_and(|end| end <= row);
        if !inside(src_offset, src_row) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let bytes = src_data[src_offset as usize..(src_offset + size) as usize].to_vec();
        let (dst_shape, dst_data) = st.arrays.get_mut(&dst).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let dst_row = row(dst_shape).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if !inside(dst_offset, dst_row) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        dst_data[dst_offset as usize..(dst_offset + size) as usize].copy_from_slice(&bytes);
        Ok(())
    }
}

/// Fills `d` (a whole number of `elem`s long) with copies of `elem`: one element, then doubling memmoves. A loop per
/// element made a 64 MiB cuMemsetD32 cost seconds in debug builds, which the RDMA VM's e2e run (TCG) multiplied.
pub(super) fn fill_repeated(d: &mut [u8], elem: &[u8]) {
    if d.len() < elem.len() {
        return;
    }
    d[..elem.len()].copy_from_slice(elem);
    let mut filled = elem.len();
    while filled < d.len() {
        let n = filled.min(d.len() - filled);
        d.copy_within(..n, filled);
        filled += n;
    }
}

/// `CUstreamWaitValue_flags` (low bits; FLUSH is 1 << 30): GEQ compares as a wrapping difference, as the driver
/// documents for 32-bit values.
pub(super) fn wait_condition_holds(now: u64, value: u64, flags: u32, wide: bool) -> CuResult<bool> {
    let mask = if wide { u64::MAX } else { u32::MAX as u64 };
    let (now, value) = (now & mask, value & mask);
    Ok(match flags & !(1 << 30) {
        0 if wide => (now.wrapping_sub(value) as i64) >= 0,
        0 => (now.wrapping_sub(value) as u32 as i32) >= 0,
        1 => now == value,
        2 => now & value != 0,
        3 => !(now | value) & mask != 0,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    })
}
