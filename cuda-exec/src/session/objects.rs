//! A session's books: every object its client created, by client id, with the backend's handle behind it, and
//! the device ranges the client may name. Lookups that fail mean the client named something that is not its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::ArrayShape;

use super::graph::GraphObjects;
use super::vmm::VmmObjects;
use crate::backend::*;

/// A loaded module or library with its functions by name.
pub(super) struct LoadedImage {
    pub image: Image,
    pub functions: HashMap<String, LoadedFunction>,
}

impl LoadedImage {
    pub fn is_library(&self) -> bool {
        matches!(self.image, Image::Library(_))
    }
}

/// A function or kernel bound to a client id, with what a launch through it needs.
#[derive(Clone)]
pub(super) struct BoundFunction {
    pub callable: Callable,
    pub params: Arc<[(u32, u32)]>,
    pub args_size: usize,
}

#[derive(Default)]
pub(super) struct Objects {
    pub contexts: HashMap<ContextId, Context>,
    /// Each device's primary context (the server's ordinal → the real context), once retained.
    pub primary: HashMap<i32, Context>,
    /// Each context's device (the server's ordinal).
    pub context_device: HashMap<ContextId, i32>,
    pub streams: HashMap<StreamId, Stream>,
    pub events: HashMap<EventId, Event>,
    pub modules: HashMap<ModuleId, LoadedImage>,
    pub functions: HashMap<FunctionId, BoundFunction>,
    /// base → length of every device range the client may name: allocations, module globals, mirrors, mappings.
    pub ranges: BTreeMap<u64, u64>,
    /// Subset of `ranges` that `cuMemFree` may release: base → size.
    pub allocations: HashMap<u64, u64>,
    pub allocated_bytes: u64,
    /// Memory pools (device default pools bound on first use).
    pub pools: HashMap<PoolId, MemPool>,
    /// Host mirrors (`HostMirrorMap`): client address → (device address, length).
    pub mirrors: HashMap<HostAddr, (DevicePtr, u64)>,
    /// CUDA arrays with their shapes.
    pub arrays: HashMap<ArrayId, (Array, ArrayShape)>,
    /// Texture and surface objects the session made (real values: kernels get them by value) → is a surface.
    pub tex_objects: HashMap<u64, bool>,
    /// Client host memory shared with this process and registered with the driver (shared-memory sessions).
    pub regions: HashMap<RegionId, Arc<crate::sys::SharedRegion>>,
    /// Devices (server ordinals) the session has had a context on: NVML lists the client process there.
    pub context_devices: BTreeSet<i32>,
    /// Virtual memory management: reservations, physical memory and mappings (see `vmm`).
    pub vmm: VmmObjects,
    /// CUDA graphs, their nodes, executable graphs and conditional handles (see `graph`).
    pub graphs: GraphObjects,
}

impl Objects {
    /// Records device memory the client may name and free.
    pub fn add_allocation(&mut self, dptr: DevicePtr, size: u64) {
        self.ranges.insert(dptr.0, size);
        self.allocations.insert(dptr.0, size);
        // A transport that reaches device memory directly (GPUDirect RDMA) registers it by this listing.
        if let (Ok(addr), Ok(len)) = (usize::try_from(dptr.0), usize::try_from(size)) {
            vgpu_dataplane::pinned::DEVICE.add(addr, len);
        }
    }

    /// Forgets an allocation `add_allocation` recorded (the driver freed it); returns its size if it was one.
    pub fn remove_allocation(&mut self, dptr: DevicePtr) -> Option<u64> {
        let size = self.allocations.remove(&dptr.0)?;
        self.ranges.remove(&dptr.0);
        if let Ok(addr) = usize::try_from(dptr.0) {
            vgpu_dataplane::pinned::DEVICE.remove(addr);
        }
        Some(size)
    }
}
