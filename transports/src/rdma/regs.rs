//! One channel's device registrations of listed ranges (`vgpu_dataplane::pinned`: host memory, or a server's device
//! memory): made on first use, kept until the range is unlisted or the byte and count bounds need room (least
//! recently used first), never per copy. A registration the peer may still read (an offer it has not finished) is
//! retired rather than dropped, and goes once the channel learns the offer was read (`taken`).

use std::collections::HashMap;
use std::io;
use std::time::Instant;

use vgpu_dataplane::pinned::{self, Listing};

use crate::rdma_stats::{add, COUNTERS};

/// Most registrations one channel keeps.
const MAX_ENTRIES: usize = 4096;

struct Entry<R> {
    reg: R,
    addr: usize,
    len: usize,
    last_use: u64,
    /// The number of the last offer not waited for that the peer reads from this range (0: none).
    lent_until: u64,
}

/// Registrations by the id of the listed range they cover.
pub(super) struct RegCache<R> {
    entries: HashMap<u64, Entry<R>>,
    /// Ranges the device refused (a memory-lock limit, say): not tried again while listed.
    refused: HashMap<u64, usize>,
    bytes: usize,
    max_bytes: usize,
    clock: u64,
    /// The listing whose ranges this cache registers.
    listing: &'static Listing,
    /// `listing.removals()` when this cache last dropped registrations of unlisted ranges.
    swept_at: u64,
    /// Registrations out of `entries` that offers up to the number beside them still use (their bytes still
    /// counted), and the number of offers the peer has finished so far.
    retired: Vec<(u64, R, usize)>,
    taken: u64,
}

impl<R> RegCache<R> {
    /// A cache of host registrations (`pinned::HOST`).
    pub(super) fn new(max_bytes: usize) -> RegCache<R> {
        Self::of(&pinned::HOST, max_bytes)
    }

    /// A cache of registrations of `listing`'s ranges.
    pub(super) fn of(listing: &'static Listing, max_bytes: usize) -> RegCache<R> {
        RegCache {
            listing,
            entries: HashMap::new(),
            refused: HashMap::new(),
            bytes: 0,
            max_bytes,
            clock: 0,
            swept_at: listing.removals(),
            retired: Vec::new(),
            taken: 0,
        }
    }

    /// The registration that covers `len` bytes at `addr`, registering the listed range holding them with
    /// `register` on first use. `None`: not inside one listed range, larger than the bound, or refused.
    pub(super) fn get(
        &mut self,
        addr: usize,
        len: usize,
        register: impl FnOnce(usize, usize) -> io::Result<R>,
    ) -> Option<&R> {
        if self.max_bytes == 0 {
            return None;
        }
        let range = self.listing.find(addr, len)?;
        self.sweep_if_unlisted();
        self.clock += 1;
        if self.entries.contains_key(&range.id) {
            let e = self.entries.get_mut(&range.id)?;
            e.last_use = self.clock;
            return Some(&e.reg);
        }
        if range.len > self.max_bytes || self.refused.contains_key(&range.id) {
            return None;
        }
        while self.bytes + range.len > self.max_bytes || self.entries.len() >= MAX_ENTRIES {
            let oldest = self.entries.iter().min_by_key(|(_, e)| e.last_use).map(|(&id, _)| id)?;
            self.drop_entry(oldest);
            add(&COUNTERS.evictions, 1);
        }
        let started = Instant::now();
        match register(range.addr, range.len) {
            Ok(reg) => {
                add(&COUNTERS.registrations, 1);
                add(&COUNTERS.registration_ns, started.elapsed().as_nanos() as u64);
                add(&COUNTERS.registered_bytes, range.len as u64);
                self.bytes += range.len;
                let entry = Entry {
                    reg,
                    addr: range.addr,
                    len: range.len,
                    last_use: self.clock,
                    lent_until: 0,
                };
                Some(&self.entries.entry(range.id).or_insert(entry).reg)
            }
            Err(e) => {
                add(&COUNTERS.registration_failures, 1);
                tracing::warn!("RDMA: {e}; copies of that memory go through the rings");
                self.refused.insert(range.id, range.addr);
                None
            }
        }
    }

    /// Drops the registrations of ranges unlisted since the last look (one atomic load when nothing was): called
    /// by `get` and at every send and receive, so freed memory does not stay registered (for device memory: pinned
    /// by the NIC) until the channel's next use of this cache.
    pub(super) fn sweep_if_unlisted(&mut self) {
        let removals = self.listing.removals();
        if removals != self.swept_at {
            self.swept_at = removals;
            self.sweep();
        }
    }

    /// Drops the registrations (and refusals) of ranges no longer listed under the same id.
    fn sweep(&mut self) {
        let listing = self.listing;
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(&id, e)| !listing.is_listed(id, e.addr))
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.drop_entry(id);
        }
        self.refused.retain(|&id, &mut addr| listing.is_listed(id, addr));
    }

    /// Marks the registration covering `len` bytes at `addr` as read by the peer until offer number `offer` is
    /// finished: it is not deregistered before (an evicted or unlisted one waits in `retired`).
    pub(super) fn lend(&mut self, addr: usize, len: usize, offer: u64) {
        if let Some(e) = self.listing.find(addr, len).and_then(|r| self.entries.get_mut(&r.id)) {
            e.lent_until = offer;
        }
    }

    /// The peer has finished offers up to number `done`: retired registrations they used are dropped now.
    pub(super) fn taken(&mut self, done: u64) {
        self.taken = done;
        if self.retired.iter().any(|(until, ..)| *until <= done) {
            let mut freed = 0;
            self.retired.retain(|(until, _, len)| {
                let keep = *until > done;
                if !keep {
                    freed += len;
                }
                keep
            });
            self.release(freed);
        }
    }

    fn drop_entry(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            if e.lent_until > self.taken {
                self.retired.push((e.lent_until, e.reg, e.len));
            } else {
                self.release(e.len);
            }
        }
    }

    fn release(&mut self, len: usize) {
        self.bytes -= len;
        COUNTERS
            .registered_bytes
            .fetch_sub(len as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Registered bytes now.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl<R> Drop for RegCache<R> {
    fn drop(&mut self) {
        COUNTERS
            .registered_bytes
            .fetch_sub(self.bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Listed ranges are process-wide: these tests use their own address band (no memory is touched).
    const BAND: usize = 0x7200_0000_0000;

    #[test]
    fn a_range_is_registered_once_and_found_for_any_buffer_inside_it() {
        let a = BAND;
        pinned::add(a, 1 << 20).expect("listed");
        let mut cache = RegCache::new(64 << 20);
        let mut calls = 0;
        let mut register = |addr: usize, len: usize| {
            calls += 1;
            Ok((addr, len))
        };
        assert_eq!(cache.get(a + 4096, 100, &mut register).copied(), Some((a, 1 << 20)));
        assert_eq!(cache.get(a, 1 << 20, &mut register).copied(), Some((a, 1 << 20)));
        assert_eq!(cache.get(a + 100, 1 << 20, &mut register), None, "not inside the range");
        assert_eq!(cache.get(BAND - 4096, 10, &mut register), None, "not listed");
        assert_eq!(calls, 1);
        assert_eq!(cache.bytes(), 1 << 20);
        pinned::remove(a);
        // Unlisted: not found, and the registration is dropped at the next lookup.
        assert_eq!(cache.get(a, 10, |_, _| Ok((0, 0))), None);
        pinned::add(BAND + (4 << 20), 4096).expect("listed");
        assert!(cache.get(BAND + (4 << 20), 10, |a, l| Ok((a, l))).is_some());
        assert_eq!(cache.bytes(), 4096, "the unlisted range's registration was dropped");
        pinned::remove(BAND + (4 << 20));
    }

    #[test]
    fn the_bound_evicts_the_least_recently_used_and_refusals_stick() {
        let base = BAND + 0x1000_0000;
        let mb = 1 << 20;
        for i in 0..4 {
            pinned::add(base + i * 2 * mb, mb).expect("listed");
        }
        let mut cache = RegCache::new(3 * mb);
        for i in [0, 1, 2, 0] {
            assert!(cache.get(base + i * 2 * mb, 1, |a, l| Ok((a, l))).is_some());
        }
        let evictions = crate::rdma_stats::counters().evictions;
        // Room for the fourth: range 1 (used least recently) goes.
        assert!(cache.get(base + 6 * mb, 1, |a, l| Ok((a, l))).is_some());
        assert_eq!(cache.bytes(), 3 * mb);
        assert!(crate::rdma_stats::counters().evictions > evictions);
        let mut registered_again = false;
        assert!(cache
            .get(base + 2 * mb, 1, |a, l| {
                registered_again = true;
                Ok((a, l))
            })
            .is_some());
        assert!(registered_again, "range 1 was evicted");
        assert!(cache.get(base, 1, |_, _| panic!("range 0 was evicted")).is_some());
        let mut tried = false;
        // A range larger than the bound is never registered; a refused one is not retried.
        pinned::add(base + 16 * mb, 4 * mb).expect("listed");
        assert!(cache
            .get(base + 16 * mb, 1, |_, _| panic!("too large to register"))
            .is_none());
        pinned::add(base + 32 * mb, mb).expect("listed");
        assert!(cache
            .get(base + 32 * mb, 1, |_, _| {
                tried = true;
                Err(io::Error::other("memlock"))
            })
            .is_none());
        assert!(tried);
        assert!(cache
            .get(base + 32 * mb, 1, |_, _| panic!("retried a refusal"))
            .is_none());
        for i in [0, 2, 4, 6, 16, 32] {
            pinned::remove(base + i * mb);
        }
    }

    #[test]
    fn a_lent_registration_outlives_its_range_until_the_peer_took_the_offer() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Reg(Arc<AtomicUsize>);
        impl Drop for Reg {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (a, b) = (BAND + 0x3000_0000, BAND + 0x3010_0000);
        pinned::add(a, 4096).expect("listed");
        pinned::add(b, 8192).expect("listed");
        let drops = Arc::new(AtomicUsize::new(0));
        let mut cache = RegCache::new(1 << 20);
        assert!(cache.get(a, 10, |_, _| Ok(Reg(drops.clone()))).is_some());
        assert!(cache.get(b, 10, |_, _| Ok(Reg(drops.clone()))).is_some());
        cache.lend(a + 100, 10, 3);
        cache.taken(2);
        pinned::remove(a);
        pinned::remove(b);
        cache.sweep_if_unlisted();
        assert_eq!(
            drops.load(Ordering::SeqCst),
            1,
            "b (never lent) goes at once; a waits for offer 3"
        );
        assert_eq!(cache.bytes(), 4096, "a's bytes stay counted while the peer may read it");
        cache.taken(3);
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn a_zero_bound_registers_nothing() {
        pinned::add(BAND + 0x2000_0000, 4096).expect("listed");
        let mut cache: RegCache<()> = RegCache::new(0);
        assert!(cache.get(BAND + 0x2000_0000, 1, |_, _| panic!("registered")).is_none());
        pinned::remove(BAND + 0x2000_0000);
    }
}
