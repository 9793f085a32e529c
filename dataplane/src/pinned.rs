//! The process's list of long-lived page-locked host ranges (an app's pinned allocations, a server's staging
//! buffers and mirrors), so a transport that moves bytes without copying them (RDMA) registers each once, not per copy.
//!
//! Whoever makes such a range calls [`add`] and, before freeing it, [`remove`]. Each listing gets a fresh id, never
//! reused: a transport caches its device registration by id and asks [`find`] for the id that covers a buffer now,
//! so a registration of a freed range is never used for new memory that happens to get the same address.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

/// One listed range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedRange {
    /// Unique for the process's lifetime.
    pub id: u64,
    pub addr: usize,
    pub len: usize,
}

/// Listed ranges by start address.
static RANGES: RwLock<BTreeMap<usize, PinnedRange>> = RwLock::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Bumped by every removal: a cache holding registrations of ranges may drop those no longer listed when it moved.
static REMOVALS: AtomicU64 = AtomicU64::new(0);

/// Lists `len` bytes at `addr` and returns its id; an empty range, or one that overlaps a listed range (which would
/// make "the range covering this buffer" ambiguous), is not listed (`None`).
pub fn add(addr: usize, len: usize) -> Option<u64> {
    let end = addr.checked_add(len)?;
    if len == 0 {
        return None;
    }
    let mut ranges = RANGES.write().unwrap_or_else(|p| p.into_inner());
    let before = ranges.range(..end).next_back();
    if before.is_some_and(|(_, r)| r.addr + r.len > addr) {
        return None;
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    ranges.insert(addr, PinnedRange { id, addr, len });
    Some(id)
}

/// Unlists the range that starts at `addr`; returns whether one did.
pub fn remove(addr: usize) -> bool {
    let removed = RANGES
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&addr)
        .is_some();
    if removed {
        REMOVALS.fetch_add(1, Ordering::Release);
    }
    removed
}

/// The listed range that holds all `len` bytes at `addr`, if one does.
pub fn find(addr: usize, len: usize) -> Option<PinnedRange> {
    let end = addr.checked_add(len)?;
    let ranges = RANGES.read().unwrap_or_else(|p| p.into_inner());
    let (_, r) = ranges.range(..=addr).next_back()?;
    (end <= r.addr + r.len).then_some(*r)
}

/// Whether the range with this id is still listed.
pub fn is_listed(id: u64, addr: usize) -> bool {
    RANGES
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&addr)
        .is_some_and(|r| r.id == id)
}

/// How many removals there have been (a cache compares it with what it saw last to know when to sweep).
pub fn removals() -> u64 {
    REMOVALS.load(Ordering::Acquire)
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
}
