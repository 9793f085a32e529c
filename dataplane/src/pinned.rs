//! The process's list of long-lived page-locked host ranges (an app's pinned allocations, a server's staging
//! buffers and mirrors), so a transport that moves bytes without copying them (RDMA) registers each once, not per copy.
//!
//! Whoever makes such a range calls [`add`] and, before freeing it, [`remove`]. Each listing gets a fresh id, never
//! reused: a transport caches its device registration by id and asks [`find`] for the id that covers a buffer now,
//! so a registration of a freed range is never used for new memory that happens to get the same address.
//! A second listing, [`DEVICE`], does the same for a server's device allocations (GPUDirect RDMA).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// One listed range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedRange {
    /// Unique for the process's lifetime (across both listings).
    pub id: u64,
    pub addr: usize,
    pub len: usize,
}

/// A list of ranges by start address, with ids never reused and a count of removals.
pub struct Listing {
    ranges: RwLock<BTreeMap<usize, PinnedRange>>,
    /// Bumped by every removal: a cache holding registrations of ranges may drop those no longer listed when it moved.
    removals: AtomicU64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Page-locked host memory (the free functions of this module).
pub static HOST: Listing = Listing::new();
/// Device memory the server allocated for its clients (`cuMemAlloc`), which a transport may reach directly where the
/// GPU and the NIC allow it (GPUDirect RDMA, with [`set_device_exporter`]'s help).
pub static DEVICE: Listing = Listing::new();

impl Listing {
    const fn new() -> Listing {
        Listing {
            ranges: RwLock::new(BTreeMap::new()),
            removals: AtomicU64::new(0),
        }
    }

    /// Lists `len` bytes at `addr` and returns its id; an empty range, or one that overlaps a listed range (which
    /// would make "the range covering this buffer" ambiguous), is not listed (`None`).
    pub fn add(&self, addr: usize, len: usize) -> Option<u64> {
        let end = addr.checked_add(len)?;
        if len == 0 {
            return None;
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|p| p.into_inner());
        let before = ranges.range(..end).next_back();
        if before.is_some_and(|(_, r)| r.addr + r.len > addr) {
            return None;
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        ranges.insert(addr, PinnedRange { id, addr, len });
        Some(id)
    }

    /// Unlists the range that starts at `addr`; returns whether one did.
    pub fn remove(&self, addr: usize) -> bool {
        let removed = self
            .ranges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr)
            .is_some();
        if removed {
            self.removals.fetch_add(1, Ordering::Release);
        }
        removed
    }

    /// The listed range that holds all `len` bytes at `addr`, if one does.
    pub fn find(&self, addr: usize, len: usize) -> Option<PinnedRange> {
        let end = addr.checked_add(len)?;
        let ranges = self.ranges.read().unwrap_or_else(|p| p.into_inner());
        let (_, r) = ranges.range(..=addr).next_back()?;
        (end <= r.addr + r.len).then_some(*r)
    }

    /// Whether the range with this id is still listed.
    pub fn is_listed(&self, id: u64, addr: usize) -> bool {
        self.ranges
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .is_some_and(|r| r.id == id)
    }

    /// How many removals there have been (a cache compares it with what it saw last to know when to sweep).
    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::Acquire)
    }
}

/// [`Listing::add`] on [`HOST`].
pub fn add(addr: usize, len: usize) -> Option<u64> {
    HOST.add(addr, len)
}

/// [`Listing::remove`] on [`HOST`].
pub fn remove(addr: usize) -> bool {
    HOST.remove(addr)
}

/// [`Listing::find`] on [`HOST`].
pub fn find(addr: usize, len: usize) -> Option<PinnedRange> {
    HOST.find(addr, len)
}

/// [`Listing::is_listed`] on [`HOST`].
pub fn is_listed(id: u64, addr: usize) -> bool {
    HOST.is_listed(id, addr)
}

/// [`Listing::removals`] on [`HOST`].
pub fn removals() -> u64 {
    HOST.removals()
}

/// How a listed device range can be registered with an RDMA device.
#[derive(Debug)]
pub enum DeviceExportKind {
    /// A dma-buf of the GPU memory (`cuMemGetHandleForAddressRange`): registered with `ibv_reg_dmabuf_mr`.
    DmaBuf,
    /// A file whose mapping holds the bytes (the emulated backend's device memory): the transport maps it and
    /// registers the mapping. It stands in for GPUDirect where no GPU exists, so the path is tested end to end.
    HostFile,
}

/// A listed device range exported for registration: `len` bytes from `offset` of `fd`.
#[derive(Debug)]
pub struct DeviceExport {
    pub kind: DeviceExportKind,
    pub fd: std::os::fd::OwnedFd,
    pub offset: u64,
    pub len: usize,
}

/// Exports the listed device range (`addr`, `len`: a whole range of [`DEVICE`]) for registration.
pub type DeviceExporter = dyn Fn(usize, usize) -> Result<DeviceExport, String> + Send + Sync;

static EXPORTER: std::sync::OnceLock<Box<DeviceExporter>> = std::sync::OnceLock::new();

/// Lets transports reach listed device memory directly, exported by `exporter` (set once per process, by a server
/// whose backend can export its memory and which decided to use it). Returns false if one was set already.
pub fn set_device_exporter(exporter: Box<DeviceExporter>) -> bool {
    EXPORTER.set(exporter).is_ok()
}

/// The exporter, when this process moves device memory directly.
pub fn device_exporter() -> Option<&'static DeviceExporter> {
    EXPORTER.get().map(|b| &**b)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The registry is process-wide and tests run in parallel: each test uses its own address band.
    const BAND: usize = 0x7100_0000_0000;

    #[test]
    fn buffers_are_found_only_inside_one_listed_range() {
        let a = BAND;
        let id = add(a, 4096).expect("listed");
        assert_eq!(find(a, 4096), Some(PinnedRange { id, addr: a, len: 4096 }));
        assert_eq!(find(a + 100, 10).map(|r| r.id), Some(id));
        assert_eq!(find(a + 4000, 97), None, "crosses the end");
        assert_eq!(find(a - 1, 2), None, "starts before");
        assert_eq!(find(a + 4096, 1), None);
        assert_eq!(find(usize::MAX - 1, 5), None, "overflowing request");
        assert!(remove(a));
        assert!(!remove(a));
        assert_eq!(find(a, 1), None);
    }

    #[test]
    fn overlaps_and_empty_ranges_are_refused_and_ids_are_never_reused() {
        let a = BAND + 0x1000_0000;
        let first = add(a, 8192).expect("listed");
        assert_eq!(add(a + 4096, 8192), None, "overlaps the end");
        assert_eq!(add(a - 4096, 8192), None, "overlaps the start");
        assert_eq!(add(a + 100, 0), None, "empty");
        assert_eq!(add(usize::MAX - 10, 100), None, "wraps");
        let seen = removals();
        assert!(remove(a));
        assert!(removals() > seen);
        assert!(!is_listed(first, a));
        let second = add(a, 8192).expect("listed again");
        assert_ne!(first, second, "a new listing at the same address is a new range");
        assert!(is_listed(second, a));
        assert!(add(a + 8192, 10).is_some(), "adjacent is fine");
        assert!(remove(a) && remove(a + 8192));
    }

    #[test]
    fn device_ranges_are_a_listing_of_their_own() {
        // The same addresses may be host memory in one listing and device memory in the other (device addresses
        // are not host pointers): each is found only in its own, and ids stay unique across both.
        let a = BAND + 0x2000_0000;
        let host = add(a, 4096).expect("host");
        let dev = DEVICE.add(a, 1 << 20).expect("device");
        assert_ne!(host, dev);
        assert_eq!(
            DEVICE.find(a + 8192, 16).map(|r| r.id),
            Some(dev),
            "inside the device range only"
        );
        assert_eq!(find(a + 8192, 16), None);
        let dev_removals = DEVICE.removals();
        assert!(DEVICE.remove(a));
        assert!(DEVICE.removals() > dev_removals);
        assert!(is_listed(host, a) && !DEVICE.is_listed(dev, a));
        assert!(remove(a));
    }
}
