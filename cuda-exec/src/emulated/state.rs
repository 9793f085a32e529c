//! The emulated device's memory and object state: allocations, VMM physical memory, reservations and mappings,
//! and the lookups that find which bytes an address range names (across back-to-back allocations and mappings).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::time::Instant;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::{ArrayShape, MemAllocProp};

use crate::backend::*;

#[derive(Default)]
pub(super) struct State {
    /// base → bytes of each live allocation.
    pub(super) allocations: BTreeMap<u64, Bytes>,
    pub(super) used: u64,
    pub(super) next_addr: u64,
    pub(super) contexts: HashMap<u64, i32>,
    /// (context, peer context) pairs with peer access enabled.
    pub(super) peer_access: std::collections::HashSet<(u64, u64)>,
    pub(super) primary_refs: HashMap<i32, u32>,
    pub(super) streams: HashMap<u64, ()>,
    /// event → time it was last recorded.
    pub(super) events: HashMap<u64, Option<Instant>>,
    pub(super) modules: HashMap<u64, Vec<LoadedFunction>>,
    /// Module-scope variables of each module: name → (address, size).
    pub(super) globals: HashMap<u64, HashMap<String, (u64, u64)>>,
    pub(super) functions: HashMap<u64, usize>,
    pub(super) launches: u64,
    /// Context limits set (`cuCtxSetLimit`), by limit.
    pub(super) limits: HashMap<u32, u64>,
    /// CUDA arrays: handle → (shape, bytes, rows of `width * element` bytes, slice after slice).
    pub(super) arrays: HashMap<u64, (ArrayShape, Vec<u8>)>,
    pub(super) tex_objects: HashMap<u64, bool>,
    /// Memory pools and which pool each stream-ordered allocation came from.
    pub(super) pools: HashMap<u64, Pool>,
    pub(super) pool_allocations: HashMap<u64, (u64, u64)>,
    /// VMM physical memory (`cuMemCreate`) by handle.
    pub(super) physical: HashMap<u64, Physical>,
    /// VMM address reservations: base → size.
    pub(super) reservations: BTreeMap<u64, u64>,
    /// VMM mappings: address → what is mapped there.
    pub(super) mappings: BTreeMap<u64, Mapping>,
    /// Inter-process sharing: this backend's identity, exported and opened memory and events.
    pub(super) ipc: super::ipc::IpcState,
}

/// The bytes of an allocation or of physical memory: this process's own, or — once shared with another process
/// through IPC — a shared-memory file both processes map (its descriptor kept for further exports).
pub(super) enum Bytes {
    Own(Vec<u8>),
    Shared {
        region: crate::sys::SharedRegion,
        fd: OwnedFd,
        /// Which export this is: an open of the same export twice is one mapping with two references.
        serial: u64,
    },
}

impl Bytes {
    pub(super) fn zeroed(len: usize) -> Bytes {
        Bytes::Own(vec![0; len])
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Own(v) => v,
            Bytes::Shared { region, .. } => region.as_slice(),
        }
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self {
            Bytes::Own(v) => v,
            Bytes::Shared { region, .. } => region.as_mut_slice(),
        }
    }
}

/// Physical memory made by `cuMemCreate`. Its bytes live here, not at an address: mappings name them, so that an
/// unmapped handle keeps its contents and one handle may be mapped at several addresses (aliases), as natively.
pub(super) struct Physical {
    pub(super) bytes: Bytes,
    pub(super) prop: MemAllocProp,
    /// References not yet released (cuMemCreate's, and one per cuMemRetainAllocationHandle).
    pub(super) refs: u32,
    /// Mappings of this memory; it is freed once both counts are zero.
    pub(super) mappings: u32,
}

/// A VMM mapping: `size` bytes of `handle`'s memory from `offset`.
pub(super) struct Mapping {
    pub(super) handle: u64,
    pub(super) offset: u64,
    pub(super) size: u64,
    /// `CUmemAccess_flags` the device has (cuMemSetAccess); every mapping starts without access. Copies and
    /// memsets do not check it: what a native copy into memory without access does (a fault? an error code?) is
    /// not documented, so the emulator lets it through rather than guess.
    pub(super) access: u32,
}

/// Where the bytes of one stretch of device memory live: an allocation (by base) or VMM physical memory (by
/// handle), from `offset`, `len` bytes.
#[derive(Clone, Copy)]
pub(super) struct Piece {
    pub(super) in_physical: bool,
    pub(super) key: u64,
    pub(super) offset: usize,
    pub(super) len: usize,
}

impl State {
    /// The piece of memory holding address `at`, up to the end of its allocation or mapping.
    pub(super) fn piece_at(&self, at: u64) -> Option<Piece> {
        if let Some((&base, bytes)) = self.allocations.range(..=at).next_back() {
            let len = bytes.len() as u64;
            if at < base + len {
                return Some(Piece {
                    in_physical: false,
                    key: base,
                    offset: (at - base) as usize,
                    len: (base + len - at) as usize,
                });
            }
        }
        let (&va, m) = self.mappings.range(..=at).next_back()?;
        (at < va + m.size).then(|| Piece {
            in_physical: true,
            key: m.handle,
            offset: (m.offset + at - va) as usize,
            len: (va + m.size - at) as usize,
        })
    }

    /// The pieces [addr, addr+len) covers, in order: one, or several where allocations or mappings lie back to
    /// back (PyTorch maps handles next to each other and copies across the seams). A gap is an invalid range.
    pub(super) fn pieces(&self, addr: u64, len: u64) -> CuResult<Vec<Piece>> {
        let end = addr.checked_add(len).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if len == 0 {
            // An empty range must still start inside memory, or at its very end.
            let known =
                self.piece_at(addr).is_some() || addr.checked_sub(1).is_some_and(|a| self.piece_at(a).is_some());
            return if known {
                Ok(Vec::new())
            } else {
                Err(CUDA_ERROR_INVALID_VALUE)
            };
        }
        let mut out = Vec::new();
        let mut at = addr;
        while at < end {
            let mut p = self.piece_at(at).ok_or(CUDA_ERROR_INVALID_VALUE)?;
            p.len = p.len.min((end - at) as usize);
            at += p.len as u64;
            out.push(p);
        }
        Ok(out)
    }

    pub(super) fn piece_bytes(&mut self, p: &Piece) -> CuResult<&mut [u8]> {
        let bytes = if p.in_physical {
            self.physical.get_mut(&p.key).map(|m| &mut m.bytes)
        } else {
            self.allocations.get_mut(&p.key)
        };
        bytes
            .and_then(|b| b.get_mut(p.offset..p.offset + p.len))
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// The mappings that exactly tile [ptr, ptr+size), by address: whole mappings, back to back, no gap.
    pub(super) fn whole_mappings(&self, ptr: u64, size: u64) -> CuResult<Vec<u64>> {
        vgpu_dataplane::ranges::tiling(&self.mappings, |m| m.size, ptr, size)
    }

    /// Frees physical memory nothing refers to any more (no reference left, no mapping).
    pub(super) fn free_if_unused(&mut self, handle: u64) {
        if self
            .physical
            .get(&handle)
            .is_some_and(|m| m.refs == 0 && m.mappings == 0)
        {
            if let Some(m) = self.physical.remove(&handle) {
                // Memory imported from another process is that process's device memory, not counted here.
                if !self.ipc.imported.remove(&handle) {
                    self.used = self.used.saturating_sub(m.bytes.len() as u64);
                }
            }
        }
    }

    /// Whether an allocation (or a host mirror, placed at the client's addresses) overlaps [addr, end).
    pub(super) fn overlaps_allocation(&self, addr: u64, end: u64) -> bool {
        self.allocations
            .range(..end)
            .next_back()
            .is_some_and(|(&b, v)| b + v.len() as u64 > addr)
    }

    pub(super) fn overlaps_reservation(&self, addr: u64, end: u64) -> bool {
        self.reservations
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &s)| b + s > addr)
    }
}

/// A memory pool's bookkeeping: what `cuMemPoolGetAttribute` reports.
#[derive(Default)]
pub(super) struct Pool {
    pub(super) max_size: u64,
    /// REUSE_FOLLOW_EVENT_DEPENDENCIES, REUSE_ALLOW_OPPORTUNISTIC, REUSE_ALLOW_INTERNAL_DEPENDENCIES.
    pub(super) reuse: [u64; 3],
    pub(super) release_threshold: u64,
    pub(super) reserved: u64,
    pub(super) reserved_high: u64,
    pub(super) used: u64,
    pub(super) used_high: u64,
}

impl Pool {
    pub(super) fn new(max_size: u64) -> Pool {
        Pool {
            max_size,
            reuse: [1, 1, 1],
            ..Default::default()
        }
    }
}
