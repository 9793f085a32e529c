//! Emulated backend: what a launch is checked against (the device's limits, cooperative residency, cluster
//! shapes), occupancy answers computed from the device's per-SM limits, and kernel layouts read from cubins.

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::DeviceFacts;
use vgpu_dataplane::image as fatbin;
use vgpu_dataplane::wire::{FunctionInfo, LaunchShape, FUNC_ATTR_COUNT};

use super::EmulatedBackend;
use crate::backend::*;
use crate::ptx;

/// Resident blocks of a function per multiprocessor, for blocks of `block` threads using `smem` bytes of
/// dynamic shared memory: the tightest of the device's per-SM thread, block, register and shared-memory
/// limits, with registers allocated per warp in units of 256 and 1 KiB of shared memory reserved per block.
pub(super) fn active_blocks(dev: &DeviceFacts, attrs: &[i32; FUNC_ATTR_COUNT], block: i32, smem: u64) -> i32 {
    let a = |i: usize, fallback: i32| dev.attr(i).filter(|&v| v > 0).unwrap_or(fallback) as i64;
    let warp = a(10, 32);
    let block = block as i64;
    if block <= 0 || block > attrs[0].max(1) as i64 {
        return 0;
    }
    let warps = (block + warp - 1) / warp;
    let by_threads = a(39, 2048) / (warps * warp);
    let regs_per_warp = ((attrs[4].max(0) as i64 * warp + 255) / 256) * 256;
    let by_regs = match regs_per_warp * warps {
        0 => i64::MAX,
        per_block => a(82, 65536) / per_block,
    };
    let smem_block = attrs[1].max(0) as i64 + smem.min(i64::MAX as u64) as i64 + a(111, 1024);
    let by_smem = a(81, 233472) / smem_block.max(1);
    by_threads.min(by_regs).min(by_smem).min(a(106, 32)).max(0) as i32
}

/// Kernels (names, parameter layouts) and globals of a cubin, as the emulated backend reports them.
pub(super) type Layouts = (Vec<FunctionInfo>, Vec<(String, u64)>);

pub(super) fn cubin_layouts(elf: &[u8]) -> CuResult<Layouts> {
    let kernels = fatbin::cubin_kernels(elf).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
    let globals = fatbin::cubin_globals(elf).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
    let infos = kernels
        .into_iter()
        .map(|k| FunctionInfo {
            name: k.name,
            params: k.params,
            attrs: ptx::emulated_attrs(),
        })
        .collect();
    Ok((infos, globals.into_iter().map(|g| (g.name, g.size)).collect()))
}

/// `cuOccupancyMaxPotentialBlockSize`: (min grid size, block size) maximising resident threads.
pub(super) fn potential_block_size(
    dev: &DeviceFacts,
    attrs: &[i32; FUNC_ATTR_COUNT],
    dynamic_smem: u64,
    smem_by_block: Option<&[u64]>,
    block_limit: i32,
) -> (i32, i32) {
    let warp = dev.attr(10).unwrap_or(32).max(1);
    let mut cap = attrs[0].max(warp);
    if block_limit > 0 {
        cap = cap.min(block_limit);
    }
    let (mut best_block, mut best) = (0, 0);
    let mut block = cap - cap % warp;
    while block > 0 {
        let smem = match smem_by_block {
            Some(t) => t.get(block as usize - 1).copied().unwrap_or(0),
            None => dynamic_smem,
        };
        let threads = active_blocks(dev, attrs, block, smem) * block;
        if threads > best {
            (best_block, best) = (block, threads);
        }
        block -= warp;
    }
    let per_sm = if best_block > 0 { best / best_block } else { 0 };
    (per_sm * dev.attr(16).unwrap_or(1).max(1), best_block)
}

/// `cuOccupancyAvailableDynamicSMemPerBlock`.
pub(super) fn available_smem(dev: &DeviceFacts, attrs: &[i32; FUNC_ATTR_COUNT], num_blocks: i32) -> CuResult<u64> {
    if num_blocks <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let a = |i: usize| dev.attr(i).unwrap_or(0).max(0) as u64;
    let static_smem = attrs[1].max(0) as u64;
    let share = (a(81) / num_blocks as u64).saturating_sub(a(111) + static_smem);
    Ok(share.min(a(97).saturating_sub(static_smem)))
}

/// `cuOccupancyMaxActiveClusters` / `cuOccupancyMaxPotentialClusterSize`.
pub(super) fn clusters(dev: &DeviceFacts, shape: LaunchShape, potential_size: bool) -> i32 {
    if potential_size {
        // The portable maximum.
        return 8;
    }
    let size: u32 = shape.cluster.iter().map(|&c| c.max(1)).product();
    // As a conservative estimate, one cluster per `size` SMs.
    let sms = dev.attr(16).unwrap_or(1).max(1);
    (sms / size.max(1) as i32).max(1)
}

/// The checks a launch passes before it is counted: the device's grid, block and shared-memory limits; for a
/// cooperative launch, every block resident at once; for a cluster launch, a grid tiled by a portable cluster.
pub(super) fn check_shape(dev: &DeviceFacts, shape: &LaunchShape) -> CuResult<()> {
    let (grid, block) = (shape.grid, shape.block);
    let blocks: u64 = grid.iter().map(|&g| g as u64).product();
    let threads: u64 = block.iter().map(|&b| b as u64).product::<u64>().max(1);
    if shape.cooperative {
        // All blocks must be resident at once: at most what the SMs hold by threads and block slots.
        let sms = dev.attr(16).unwrap_or(1).max(1) as u64;
        let per_sm = (dev.attr(39).unwrap_or(2048) as u64 / threads).min(dev.attr(106).unwrap_or(32) as u64);
        if blocks > sms * per_sm {
            return Err(CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE);
        }
    }
    if shape.has_cluster() {
        let cluster = shape.cluster;
        // The grid must tile by the cluster; 8 blocks is the portable cluster size limit.
        if cluster.contains(&0) || grid.iter().zip(cluster).any(|(&g, c)| g % c != 0) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if cluster.iter().map(|&c| c as u64).product::<u64>() > 8 {
            return Err(CUDA_ERROR_INVALID_CLUSTER_SIZE);
        }
    }
    let limit = |a: usize| dev.attr(a).unwrap_or(i32::MAX) as u64;
    let per_block = block.iter().map(|&b| b as u64).product::<u64>();
    if grid.contains(&0)
        || block.contains(&0)
        || per_block > limit(1)
        || block[0] as u64 > limit(2)
        || block[1] as u64 > limit(3)
        || block[2] as u64 > limit(4)
        || grid[0] as u64 > limit(5)
        || grid[1] as u64 > limit(6)
        || grid[2] as u64 > limit(7)
        || shape.shared_mem as u64 > limit(97)
    {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    Ok(())
}

impl EmulatedBackend {
    /// `cuFuncSetAttribute`: settable are MAX_DYNAMIC_SHARED_SIZE_BYTES (8), PREFERRED_SHARED_MEMORY_CARVEOUT (9),
    /// and the cluster and scheduling attributes (11..=15); the rest are read-only, as natively.
    pub(super) fn set_attribute(&self, function: Callable, attrib: i32, value: i32) -> CuResult<()> {
        let mut st = self.state();
        let f = st
            .modules
            .values_mut()
            .flatten()
            .find(|f| f.handle.raw() == function.raw())
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        match attrib {
            8 if value < 0 => Err(CUDA_ERROR_INVALID_VALUE),
            8 | 9 | 11..=15 => {
                if let Some(slot) = f.info.attrs.get_mut(attrib as usize) {
                    *slot = value;
                }
                Ok(())
            }
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }
}

impl EmulatedBackend {
    /// The attributes the load gave function `f` (module function or library kernel alike).
    pub(super) fn attributes_of(&self, f: Callable) -> CuResult<[i32; FUNC_ATTR_COUNT]> {
        let st = self.state();
        st.modules
            .values()
            .flatten()
            .find(|g| g.handle.raw() == f.raw())
            .map(|g| g.info.attrs)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }
}
