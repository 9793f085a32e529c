//! Traffic counters of the whole process (all channels), read through `vgpu_stat` and written at exit to
//! `VGPU_STATS`: what a program pays the link for, so its time on a longer link can be predicted (issue 21).
//! Bytes count before compression; the `packed_*` figures of `json` show what compressed channels put on the wire.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use vgpu_dataplane::wire::Op;
use vgpu_dataplane::{Transport, TransportError};

/// Synchronous requests that waited for their reply: each costs one round trip of the link.
pub const ROUND_TRIPS: usize = 0;
/// Writes of queued asynchronous calls that did not ride on a synchronous request (a full batch, the TCP
/// flusher, a large async tail): each costs the link's latency once but nobody waits for it.
pub const BATCH_FLUSHES: usize = 1;
/// Asynchronous calls queued (launches, async copies, memsets, handle creation, ...).
pub const ASYNC_CALLS: usize = 2;
/// Bytes written to and read from the transport, framing included.
pub const BYTES_SENT: usize = 3;
pub const BYTES_RECEIVED: usize = 4;
/// Time app threads spent waiting for replies, in ns.
pub const REPLY_WAIT_NS: usize = 5;
/// Channels striped over extra TCP connections (`client::lanes`).
pub const STRIPED_CHANNELS: usize = 6;

/// The first index past the counters kept here: the RDMA transport's byte counters follow (`rdma_stats`).
const OWN: usize = 7;

/// Names by index (the order of `vgpu_stat`).
pub const NAMES: [&CStr; 13] = [
    c"round_trips",
    c"batch_flushes",
    c"async_calls",
    c"bytes_sent",
    c"bytes_received",
    c"reply_wait_ns",
    c"striped_channels",
    // How RDMA channels moved bulk bytes: copied through a ring on this side, or read in place (no copy).
    c"rdma_ring_copied_in",
    c"rdma_ring_copied_out",
    c"rdma_pulled_in_place",
    c"rdma_pulled_bounced",
    c"rdma_offered_in_place",
    c"rdma_offered_unwaited",
];
static COUNTERS: [AtomicU64; OWN] = [const { AtomicU64::new(0) }; OWN];
/// Synchronous requests by call: which calls a program's round trips are.
static SYNC_BY_CALL: Mutex<Option<HashMap<Op, u64>>> = Mutex::new(None);

/// Counts one synchronous request of `op`.
pub fn note_sync(op: Op) {
    let mut m = SYNC_BY_CALL.lock().unwrap_or_else(|p| p.into_inner());
    *m.get_or_insert_with(HashMap::new).entry(op).or_insert(0) += 1;
}

pub fn add(index: usize, n: u64) {
    COUNTERS[index].fetch_add(n, Ordering::Relaxed);
}

/// Counter `index`, `None` past the last.
pub fn get(index: usize) -> Option<u64> {
    if let Some(c) = COUNTERS.get(index) {
        return Some(c.load(Ordering::Relaxed));
    }
    let r = vgpu_transports::rdma::counters();
    [
        r.ring_copied_in,
        r.ring_copied_out,
        r.pulled_in_place,
        r.pulled_bounced,
        r.offered_in_place,
        r.offered_unwaited,
    ]
    .get(index - OWN)
    .copied()
}

/// One JSON object with every counter, the synchronous requests by call, and this process's id.
pub fn json() -> String {
    let mut out = format!("{{\"pid\":{}", std::process::id());
    for (i, name) in NAMES.iter().enumerate() {
        out += &format!(",\"{}\":{}", name.to_string_lossy(), get(i).unwrap_or(0));
    }
    let mut calls: Vec<(String, u64)> = SYNC_BY_CALL
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .flatten()
        .map(|(op, n)| (format!("{op:?}"), *n))
        .collect();
    calls.sort();
    let calls: Vec<String> = calls.iter().map(|(op, n)| format!("\"{op}\":{n}")).collect();
    // Compressed channels (VGPU_COMPRESS=lz4): the bytes above count before packing; these are both sides of it.
    let t = &vgpu_transports::packed::TOTALS;
    for (name, c) in [
        ("packed_raw_sent", &t.raw_sent),
        ("packed_wire_sent", &t.wire_sent),
        ("packed_raw_received", &t.raw_received),
        ("packed_wire_received", &t.wire_received),
    ] {
        out += &format!(",\"{name}\":{}", c.load(Ordering::Relaxed));
    }
    out + ",\"sync_by_call\":{" + &calls.join(",") + "}}"
}

/// Counts one wait for a reply (a round trip) and its duration.
pub struct ReplyWait(Instant);

impl ReplyWait {
    pub fn start() -> ReplyWait {
        add(ROUND_TRIPS, 1);
        ReplyWait(Instant::now())
    }
}

impl Drop for ReplyWait {
    fn drop(&mut self) {
        add(REPLY_WAIT_NS, self.0.elapsed().as_nanos() as u64);
    }
}

/// A channel's transport, counting the bytes that cross it (for the process, and in `.1` for the channel).
pub struct Counted(pub Box<dyn Transport>, pub u64);

impl Counted {
    fn count_sent(&mut self, parts: &[&[u8]]) {
        let n = parts.iter().map(|p| p.len() as u64).sum();
        add(BYTES_SENT, n);
        self.1 += n;
    }
}

impl Transport for Counted {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.count_sent(parts);
        self.0.send(parts)
    }
    fn send_stable(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.count_sent(parts);
        self.0.send_stable(parts)
    }
    fn stable_in_place_min(&self) -> Option<usize> {
        self.0.stable_in_place_min()
    }
    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        add(BYTES_RECEIVED, buf.len() as u64);
        self.1 += buf.len() as u64;
        self.0.recv_exact(buf)
    }
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn send_fd(&mut self, fd: std::os::fd::BorrowedFd<'_>, tag: u64) -> Result<(), TransportError> {
        self.0.send_fd(fd, tag)
    }
    fn recv_fd(&mut self, tag: u64) -> Result<std::os::fd::OwnedFd, TransportError> {
        self.0.recv_fd(tag)
    }
}
