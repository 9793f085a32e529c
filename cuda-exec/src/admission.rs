//! Admission control around authentication: a bound on connections awaiting it (each holds a thread), back-off
//! for addresses that fail it, a bound on a tenant's concurrent sessions, and a lingering close for refusals.
//! Everything here is bounded in memory, whatever clients send.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server's pre-authentication and per-tenant bounds (`vgpu server` flags).
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionLimits {
    /// The whole hello (TLS handshake included) must arrive within this, however the bytes trickle in.
    pub hello_timeout: Duration,
    /// Connections awaiting authentication at once; more are refused at once (each of these holds a thread).
    pub max_pending: usize,
    /// Concurrent sessions per tenant (per static key in standalone mode) when the credential names no limit.
    pub max_sessions_per_tenant: u32,
    /// A client that stops in the middle of a request frame for this long is disconnected.
    pub stall_timeout: Duration,
    /// A server-to-server copy's connection waits this long at the listener for its grant, and the receiving
    /// session as long for the connection.
    pub peer_wait: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            hello_timeout: Duration::from_secs(10),
            max_pending: 64,
            max_sessions_per_tenant: 32,
            stall_timeout: Duration::from_secs(60),
            peer_wait: Duration::from_secs(30),
        }
    }
}

/// Who a connection comes from, as back-off counts it: an IPv4 address, an IPv6 /64 (one host usually has a
/// whole one), or a local user (shared-memory clients, by uid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4(u32),
    V6Net(u64),
    LocalUser(u32),
    Unknown,
}

impl Source {
    pub fn of_ip(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Net((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            Source::V6Net(n) => write!(f, "{}/64", std::net::Ipv6Addr::from((*n as u128) << 64)),
            Source::LocalUser(uid) => write!(f, "local uid {uid}"),
            Source::Unknown => f.write_str("an unknown source"),
        }
    }
}

/// Counts connections awaiting authentication; a permit is held until the connection is handed on or dropped.
pub struct PendingGate {
    count: AtomicUsize,
    max: usize,
}

pub struct PendingPermit {
    gate: Arc<PendingGate>,
}

impl PendingGate {
    pub fn new(max: usize) -> Arc<PendingGate> {
        Arc::new(PendingGate {
            count: AtomicUsize::new(0),
            max: max.max(1),
        })
    }

    /// A permit, or `None` when `max` connections are already pending.
    pub fn try_enter(self: &Arc<Self>) -> Option<PendingPermit> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1))
            .ok()
            .map(|_| PendingPermit { gate: self.clone() })
    }

    pub fn pending(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        self.gate.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Failures a source may have before it is locked out.
const FREE_FAILURES: u32 = 5;
/// The first lockout; each further failure doubles it, up to `MAX_LOCKOUT`.
const FIRST_LOCKOUT: Duration = Duration::from_secs(1);
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// A source without failures for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most sources tracked at once; past it the stalest are forgotten first.
const MAX_TRACKED: usize = 10_000;

struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Back-off per source for failed authentication (and connections that never sent a valid hello): after
/// `FREE_FAILURES`, a source is refused without its credential being looked at, for 1 s, then 2, 4, … 300 s.
#[derive(Default)]
pub struct Backoff {
    entries: Mutex<HashMap<Source, Failures>>,
}

impl Backoff {
    /// How long `src` is still locked out, if it is.
    pub fn locked_out(&self, src: Source) -> Option<Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let until = entries.get(&src)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure; returns the lockout it starts, if any.
    pub fn failed(&self, src: Source) -> Option<Duration> {
        if src == Source::Unknown {
            return None;
        }
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.contains_key(&src) && entries.len() >= MAX_TRACKED {
            evict(&mut entries, now);
        }
        let e = entries.entry(src).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.duration_since(e.last) > FORGET_AFTER {
            e.count = 0;
        }
        e.count = e.count.saturating_add(1);
        e.last = now;
        if e.count <= FREE_FAILURES {
            return None;
        }
        let doublings = (e.count - FREE_FAILURES - 1).min(16);
        let lockout = (FIRST_LOCKOUT * (1u32 << doublings)).min(MAX_LOCKOUT);
        e.locked_until = Some(now + lockout);
        Some(lockout)
    }

    /// A successful authentication clears the source's record.
    pub fn succeeded(&self, src: Source) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(&src);
    }

    pub fn tracked(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Makes room for one more source: forgets stale unlocked ones, else the one whose last failure is oldest.
fn evict(entries: &mut HashMap<Source, Failures>, now: Instant) {
    entries.retain(|_, e| now.duration_since(e.last) <= FORGET_AFTER || e.locked_until.is_some_and(|t| t > now));
    if entries.len() >= MAX_TRACKED {
        if let Some(oldest) = entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
            entries.remove(&oldest);
        }
    }
}

/// Live sessions per tenant on this server.
#[derive(Default)]
pub struct TenantSessions {
    counts: Mutex<HashMap<String, u32>>,
}

/// One open session of a tenant; dropping it (when the session's worker is reaped) frees the place.
pub struct SessionSlot {
    owner: Arc<TenantSessions>,
    tenant: String,
}

impl TenantSessions {
    /// A place for one more session of `tenant`, or the number it already has when that reaches `limit`.
    pub fn try_open(self: &Arc<Self>, tenant: &str, limit: u32) -> Result<SessionSlot, u32> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.get(tenant).copied().unwrap_or(0);
        if n >= limit {
            return Err(n);
        }
        counts.insert(tenant.to_string(), n + 1);
        Ok(SessionSlot {
            owner: self.clone(),
            tenant: tenant.to_string(),
        })
    }

    pub fn open(&self, tenant: &str) -> u32 {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

/// Sockets refused before their request was read are drained for a moment before closing, so the refusal
/// written to them reaches the client instead of being destroyed by a reset (closing a socket with unread input
/// resets the connection). At most `HELD` at once, each at most `LINGER`; beyond that they close at once.
pub struct Closer {
    tx: SyncSender<Box<dyn Read + Send>>,
}

const HELD: usize = 256;
const LINGER: Duration = Duration::from_secs(1);

impl Closer {
    pub fn start() -> Closer {
        let (tx, rx) = sync_channel(HELD);
        std::thread::Builder::new()
            .name("vgpu-closer".into())
            .spawn(move || linger(rx))
            .map(|_| ())
            .unwrap_or_else(|e| tracing::warn!("no lingering close ({e}): refusals may arrive as resets"));
        Closer { tx }
    }

    /// Closes a socket whose refusal has been written (and its write side shut down); it must be non-blocking.
    pub fn close<S: Read + Send + 'static>(&self, socket: S) {
        let _ = self.tx.try_send(Box::new(socket));
    }
}

fn linger(rx: Receiver<Box<dyn Read + Send>>) {
    let mut held: Vec<(Box<dyn Read + Send>, Instant)> = Vec::new();
    let mut scratch = [0u8; 4096];
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(s) => held.push((s, Instant::now())),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(s) if held.len() < HELD => held.push((s, Instant::now())),
                Ok(s) => drop(s),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        held.retain_mut(|(s, since)| {
            if since.elapsed() > LINGER {
                return false;
            }
            loop {
                match s.read(&mut scratch) {
                    Ok(0) => return false,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_gate_bounds_and_releases() {
        let gate = PendingGate::new(2);
        let a = gate.try_enter().expect("first");
        let _b = gate.try_enter().expect("second");
        assert!(gate.try_enter().is_none(), "third must be refused");
        drop(a);
        assert!(gate.try_enter().is_some(), "a released place is reusable");
        assert_eq!(gate.pending(), 1);
    }

    #[test]
    fn backoff_locks_out_after_free_failures_doubling_and_clears_on_success() {
        let b = Backoff::default();
        let src = Source::of_ip("10.0.0.9".parse().expect("ip"));
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.failed(src), None);
            assert_eq!(b.locked_out(src), None);
        }
        assert_eq!(b.failed(src), Some(Duration::from_secs(1)));
        assert!(b.locked_out(src).is_some());
        assert_eq!(b.failed(src), Some(Duration::from_secs(2)));
        assert_eq!(b.failed(src), Some(Duration::from_secs(4)));
        for _ in 0..40 {
            b.failed(src);
        }
        assert_eq!(b.failed(src), Some(MAX_LOCKOUT));
        let other = Source::of_ip("10.0.0.10".parse().expect("ip"));
        assert_eq!(b.locked_out(other), None, "other addresses are not affected");
        b.succeeded(src);
        assert_eq!(b.locked_out(src), None);
        assert_eq!(b.failed(Source::Unknown), None);
    }

    #[test]
    fn backoff_memory_is_bounded_whatever_the_number_of_sources() {
        let b = Backoff::default();
        for i in 0..(MAX_TRACKED as u32 + 5000) {
            b.failed(Source::V4(i));
        }
        assert!(b.tracked() <= MAX_TRACKED, "{} tracked", b.tracked());
    }

    #[test]
    fn ipv6_sources_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let a = Source::of_ip("2001:db8:1:2::1".parse().expect("ip"));
        let b = Source::of_ip("2001:db8:1:2:ffff::9".parse().expect("ip"));
        let c = Source::of_ip("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            Source::of_ip("::ffff:10.1.2.3".parse().expect("ip")),
            Source::of_ip("10.1.2.3".parse().expect("ip"))
        );
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn tenant_sessions_are_bounded_and_freed_on_drop() {
        let t = Arc::new(TenantSessions::default());
        let s1 = t.try_open("alice", 2).expect("1");
        let _s2 = t.try_open("alice", 2).expect("2");
        assert_eq!(t.try_open("alice", 2).err(), Some(2));
        let _b = t.try_open("bob", 2).expect("another tenant is not affected");
        drop(s1);
        assert_eq!(t.open("alice"), 1);
        assert!(t.try_open("alice", 2).is_ok());
    }
}
