//! Counters of how the RDMA transport moved this process's bytes: through its rings (a CPU copy on each side), or
//! read in place by the receiver (no copy), and what it registered with the device. Shown by `vgpu_stat` and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the process's RDMA counters (all zero in a build without the `rdma` feature).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RdmaCounters {
    /// Bytes a sender copied into its ring (every byte not offered in place).
    pub ring_copied_in: u64,
    /// Bytes a receiver copied out of its ring or its read bounce buffer.
    pub ring_copied_out: u64,
    /// Bytes read by RDMA READ straight into the receiver's destination (registered memory): no copy here.
    pub pulled_in_place: u64,
    /// Bytes read by RDMA READ into the bounce buffer (the destination was not registered), then copied.
    pub pulled_bounced: u64,
    /// Bytes a sender offered from registered memory for the peer to read in place: no copy there.
    pub offered_in_place: u64,
    /// Of those, bytes offered without waiting for the peer's read (the caller keeps them unchanged until then).
    pub offered_unwaited: u64,
    /// GPUDirect RDMA (a server's device memory registered with the NIC): bytes read straight into device memory,
    /// and bytes of device memory offered for the peer to read, neither staged in host memory.
    pub device_read_in_place: u64,
    pub device_offered: u64,
    /// Registrations of listed memory made, refused by the device, and dropped to stay within the bound.
    pub registrations: u64,
    pub registration_failures: u64,
    pub evictions: u64,
    /// Bytes registered now, and the time all registrations took.
    pub registered_bytes: u64,
    pub registration_ns: u64,
}

pub(crate) struct Counters {
    pub(crate) ring_copied_in: AtomicU64,
    pub(crate) ring_copied_out: AtomicU64,
    pub(crate) pulled_in_place: AtomicU64,
    pub(crate) pulled_bounced: AtomicU64,
    pub(crate) offered_in_place: AtomicU64,
    pub(crate) offered_unwaited: AtomicU64,
    pub(crate) device_read_in_place: AtomicU64,
    pub(crate) device_offered: AtomicU64,
    pub(crate) registrations: AtomicU64,
    pub(crate) registration_failures: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) registered_bytes: AtomicU64,
    pub(crate) registration_ns: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    ring_copied_in: AtomicU64::new(0),
    ring_copied_out: AtomicU64::new(0),
    pulled_in_place: AtomicU64::new(0),
    pulled_bounced: AtomicU64::new(0),
    offered_in_place: AtomicU64::new(0),
    offered_unwaited: AtomicU64::new(0),
    device_read_in_place: AtomicU64::new(0),
    device_offered: AtomicU64::new(0),
    registrations: AtomicU64::new(0),
    registration_failures: AtomicU64::new(0),
    evictions: AtomicU64::new(0),
    registered_bytes: AtomicU64::new(0),
    registration_ns: AtomicU64::new(0),
};

/// Adds `n` to one counter.
#[cfg_attr(not(feature = "rdma"), allow(dead_code))]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The counters now.
pub fn counters() -> RdmaCounters {
    let c = &COUNTERS;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    RdmaCounters {
        ring_copied_in: get(&c.ring_copied_in),
        ring_copied_out: get(&c.ring_copied_out),
        pulled_in_place: get(&c.pulled_in_place),
        pulled_bounced: get(&c.pulled_bounced),
        offered_in_place: get(&c.offered_in_place),
        offered_unwaited: get(&c.offered_unwaited),
        device_read_in_place: get(&c.device_read_in_place),
        device_offered: get(&c.device_offered),
        registrations: get(&c.registrations),
        registration_failures: get(&c.registration_failures),
        evictions: get(&c.evictions),
        registered_bytes: get(&c.registered_bytes),
        registration_ns: get(&c.registration_ns),
    }
}
