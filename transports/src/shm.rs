//! The shared-memory transport for a client and server on one host: two single-producer/single-consumer byte rings
//! in a sealed memfd, with futex doorbells, and the rendezvous Unix socket kept open to notice a dead peer.
//!
//! Layout of the memfd (all integers little-endian, every hot word on its own 128-byte line so the two processes do
//! not false-share): page 0 holds the header, the two "closed" flags and each ring's control words; ring 0 (client to
//! server) data follows at 4096, ring 1 (server to client) data after it. Head and tail are monotonically increasing
//! byte counts; only their difference modulo the capacity locates bytes, and it is checked on every read since the
//! peer can write anything into the mapping.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vgpu_dataplane::transport::{Transport, TransportError};

use crate::sys::{self, SharedMap};
use crate::{fdpass, io_to_transport, send_all};

const MAGIC: u64 = u64::from_le_bytes(*b"VGPUSHM1");
const LAYOUT_VERSION: u32 = 1;
const LINE: usize = 128;
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_CAP: usize = 16;
/// "Closed" flag of side `s` (0 client, 1 server).
const fn off_closed(side: usize) -> usize {
    2 * LINE + side * LINE
}
/// Control block of ring `r` (0: client to server, 1: server to client).
const fn ring_ctl(r: usize) -> usize {
    1024 + r * 1024
}
const CTL_HEAD: usize = 0;
const CTL_TAIL: usize = LINE;
const CTL_DATA_SEQ: usize = 2 * LINE;
const CTL_READER_WAITING: usize = 3 * LINE;
const CTL_SPACE_SEQ: usize = 4 * LINE;
const CTL_WRITER_WAITING: usize = 5 * LINE;
const DATA_OFF: usize = 4096;

const MIN_RING: usize = 4096;
const MAX_RING: usize = 1 << 30;
const DEFAULT_RING_MB: usize = 8;
const DEFAULT_SPIN_US: u64 = 50;
/// Spinning without yielding the core lasts at most this long (see `wait`).
const PURE_SPIN: Duration = Duration::from_micros(4);
/// After this long asleep without news, check whether the peer is still there.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How long the server waits for the memfd after the hello before giving up on the client.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The setup message that carries the memfd: magic and ring capacity.
const SETUP_LEN: usize = 16;

/// Tunables of the shared-memory transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmConfig {
    /// Data bytes per ring (power of two, 4 KiB..1 GiB). Set by the client; the server takes it from the mapping.
    pub ring_bytes: usize,
    /// How long a waiting side spins before sleeping on the futex.
    pub spin: Duration,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_bytes: DEFAULT_RING_MB << 20,
            spin: Duration::from_micros(DEFAULT_SPIN_US),
        }
    }
}

impl ShmConfig {
    /// Reads `VGPU_SHM_RING_MB` (power of two, 1..=1024) and `VGPU_SHM_SPIN_US` (0..=1000000); unset means default.
    pub fn from_env() -> Result<ShmConfig, TransportError> {
        let ring = std::env::var("VGPU_SHM_RING_MB").ok();
        let spin = std::env::var("VGPU_SHM_SPIN_US").ok();
        ShmConfig::from_values(ring.as_deref(), spin.as_deref())
    }

    /// As [`ShmConfig::from_env`], from the two values as text.
    pub fn from_values(ring_mb: Option<&str>, spin_us: Option<&str>) -> Result<ShmConfig, TransportError> {
        let mut c = ShmConfig::default();
        let (ring, spin) = crate::ring_settings(("VGPU_SHM_RING_MB", ring_mb), ("VGPU_SHM_SPIN_US", spin_us))?;
        if let Some(bytes) = ring {
            c.ring_bytes = bytes;
        }
        if let Some(spin) = spin {
            c.spin = spin;
        }
        Ok(c)
    }
}

use crate::protocol;

/// Client side: connects to the Unix socket at `path`, writes `hello`, creates and initialises the rings, and sends
/// the memfd. Does not wait for the server, which may accept the memfd much later (after handing the socket on).
pub fn connect_with(path: &Path, hello: &[u8], config: &ShmConfig) -> Result<ShmTransport, TransportError> {
    let cap = config.ring_bytes;
    if !cap.is_power_of_two() || !(MIN_RING..=MAX_RING).contains(&cap) {
        return Err(TransportError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ring size {cap} must be a power of two from {MIN_RING} to {MAX_RING}"),
        )));
    }
    let sock = UnixStream::connect(path)?;
    send_all(sock.as_raw_fd(), &[hello]).map_err(io_to_transport)?;

    let name = CString::new(format!("vgpu-shm-{}", std::process::id())).map_err(|e| protocol(e.to_string()))?;
    let file = sys::memfd_create(&name)?;
    let total = DATA_OFF + 2 * cap;
    file.set_len(total as u64)?;
    // Sealing the size lets the server map it without fear of SIGBUS from a later truncation.
    sys::add_seals(&file, sys::SEAL_SHRINK | sys::SEAL_GROW | sys::SEAL_SEAL)?;
    let map = SharedMap::new(&file, total)?;
    // A fresh memfd is zero-filled, so indices, sequences and flags already start at 0.
    map.u64_at(OFF_CAP).store(cap as u64, Ordering::Relaxed);
    map.u32_at(OFF_VERSION).store(LAYOUT_VERSION, Ordering::Relaxed);
    map.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Release);

    let mut setup = [0u8; SETUP_LEN];
    setup[..8].copy_from_slice(&MAGIC.to_le_bytes());
    setup[8..].copy_from_slice(&(cap as u64).to_le_bytes());
    fdpass::send_with_fds(&sock, &setup, &[file.as_raw_fd()]).map_err(io_to_transport)?;
    // The mapping keeps the memory alive; the descriptor itself is no longer needed here.
    drop(file);
    tracing::debug!(path = %path.display(), ring_bytes = cap, "shared-memory transport set up (client)");
    Ok(ShmTransport::new(map, sock, cap, Side::Client, config.spin))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client = 0,
    Server = 1,
}

/// One end of a shared-memory channel.
pub struct ShmTransport {
    map: SharedMap,
    sock: UnixStream,
    cap: usize,
    side: Side,
    spin: Duration,
    /// Bytes a side moves before publishing its index, so the peer can work on the first part of a large transfer.
    chunk: usize,
    tx_ctl: usize,
    tx_data: usize,
    /// Our producer index (authoritative; the shared copy is only ever written from it).
    tx_head: u64,
    tx_published: u64,
    /// Last consumer index seen from the peer.
    tx_tail_seen: u64,
    rx_ctl: usize,
    rx_data: usize,
    rx_tail: u64,
    rx_published: u64,
    rx_head_seen: u64,
    /// Whether dropping this end raises its "closed" flag; cleared only to imitate a crashed peer in tests.
    notify_on_drop: bool,
}

impl ShmTransport {
    /// Server side, after the raw hello was read from this Unix stream: receives the client's memfd (SCM_RIGHTS),
    /// checks it and maps it. The spin time comes from `VGPU_SHM_SPIN_US`.
    pub fn accept(s: UnixStream) -> Result<Self, TransportError> {
        let spin = ShmConfig::from_env()?.spin;
        Self::accept_with(s, spin)
    }

    /// As [`ShmTransport::accept`], with an explicit spin time.
    pub fn accept_with(sock: UnixStream, spin: Duration) -> Result<Self, TransportError> {
        sock.set_read_timeout(Some(SETUP_TIMEOUT))?;
        let mut setup = [0u8; SETUP_LEN];
        let (n, mut fds) = fdpass::recv_with_fds(&sock, &mut setup, 1).map_err(io_to_transport)?;
        if n == 0 {
            return Err(TransportError::Closed);
        }
        let fd = fds
            .pop()
            .ok_or_else(|| protocol("shared-memory setup arrived without a memfd"))?;
        (&sock).read_exact(&mut setup[n..]).map_err(io_to_transport)?;
        sock.set_read_timeout(None)?;

        let magic = u64::from_le_bytes(setup[..8].try_into().map_err(|_| protocol("short setup"))?);
        let cap64 = u64::from_le_bytes(setup[8..].try_into().map_err(|_| protocol("short setup"))?);
        if magic != MAGIC {
            return Err(protocol("shared-memory setup has a wrong magic number"));
        }
        let cap = usize::try_from(cap64).map_err(|_| protocol("ring size out of range"))?;
        if !cap.is_power_of_two() || !(MIN_RING..=MAX_RING).contains(&cap) {
            return Err(protocol(format!(
                "ring size {cap64} is not a power of two within {MIN_RING}..={MAX_RING}"
            )));
        }
        let file = std::fs::File::from(fd);
        let seals = sys::get_seals(&file).map_err(|e| protocol(format!("the descriptor is not a memfd: {e}")))?;
        if seals & sys::SEAL_SHRINK == 0 {
            return Err(protocol("the memfd is not sealed against shrinking"));
        }
        let total = DATA_OFF + 2 * cap;
        if file.metadata()?.len() < total as u64 {
            return Err(protocol("the memfd is smaller than its rings"));
        }
        let map = SharedMap::new(&file, total)?;
        if map.u64_at(OFF_MAGIC).load(Ordering::Acquire) != MAGIC
            || map.u32_at(OFF_VERSION).load(Ordering::Relaxed) != LAYOUT_VERSION
            || map.u64_at(OFF_CAP).load(Ordering::Relaxed) != cap64
        {
            return Err(protocol("the shared-memory header does not match the setup message"));
        }
        tracing::debug!(ring_bytes = cap, "shared-memory transport set up (server)");
        Ok(ShmTransport::new(map, sock, cap, Side::Server, spin))
    }

    fn new(map: SharedMap, sock: UnixStream, cap: usize, side: Side, spin: Duration) -> Self {
        let (tx, rx) = match side {
            Side::Client => (0, 1),
            Side::Server => (1, 0),
        };
        ShmTransport {
            map,
            sock,
            cap,
            side,
            spin,
            chunk: (cap / 8).clamp(MIN_RING / 2, 256 * 1024),
            tx_ctl: ring_ctl(tx),
            tx_data: DATA_OFF + tx * cap,
            tx_head: 0,
            tx_published: 0,
            tx_tail_seen: 0,
            rx_ctl: ring_ctl(rx),
            rx_data: DATA_OFF + rx * cap,
            rx_tail: 0,
            rx_published: 0,
            rx_head_seen: 0,
            notify_on_drop: true,
        }
    }

    /// Data bytes per ring.
    pub fn ring_bytes(&self) -> usize {
        self.cap
    }

    /// Test hook: overwrites the peer-owned indices this side reads (the head of the incoming ring, the tail of the
    /// outgoing one), as a misbehaving peer could.
    #[doc(hidden)]
    pub fn debug_set_peer_indices(&self, incoming_head: Option<u64>, outgoing_tail: Option<u64>) {
        if let Some(h) = incoming_head {
            self.map.u64_at(self.rx_ctl + CTL_HEAD).store(h, Ordering::SeqCst);
        }
        if let Some(t) = outgoing_tail {
            self.map.u64_at(self.tx_ctl + CTL_TAIL).store(t, Ordering::SeqCst);
        }
    }

    /// Test hook: goes away like a crashed process would, closing the socket without raising the "closed" flag.
    #[doc(hidden)]
    pub fn debug_vanish(mut self) {
        self.notify_on_drop = false;
    }

    fn peer_closed(&self) -> bool {
        let peer = 1 - self.side as usize;
        self.map.u32_at(off_closed(peer)).load(Ordering::SeqCst) != 0
    }

    fn sock_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Free bytes in the outgoing ring; reloads the peer's tail only when the cached one shows too little room.
    fn tx_free(&mut self, want: usize) -> Result<usize, TransportError> {
        let used = self.tx_head - self.tx_tail_seen;
        let free = self.cap - used as usize;
        if free >= want {
            return Ok(free);
        }
        self.reload_tx_tail()
    }

    fn reload_tx_tail(&mut self) -> Result<usize, TransportError> {
        let tail = self.map.u64_at(self.tx_ctl + CTL_TAIL).load(Ordering::Acquire);
        let used = self.tx_head.wrapping_sub(tail);
        if used > self.cap as u64 || tail < self.tx_tail_seen {
            return Err(protocol(format!(
                "peer's consumer index {tail} is inconsistent with producer index {} (ring of {})",
                self.tx_head, self.cap
            )));
        }
        self.tx_tail_seen = tail;
        Ok(self.cap - used as usize)
    }

    /// Bytes available in the incoming ring; reloads the peer's head only when the cached one has none.
    fn rx_avail(&mut self) -> Result<usize, TransportError> {
        let avail = (self.rx_head_seen - self.rx_tail) as usize;
        if avail > 0 {
            return Ok(avail);
        }
        self.reload_rx_head()
    }

    fn reload_rx_head(&mut self) -> Result<usize, TransportError> {
        let head = self.map.u64_at(self.rx_ctl + CTL_HEAD).load(Ordering::Acquire);
        let avail = head.wrapping_sub(self.rx_tail);
        if avail > self.cap as u64 || head < self.rx_head_seen {
            return Err(protocol(format!(
                "peer's producer index {head} is inconsistent with consumer index {} (ring of {})",
                self.rx_tail, self.cap
            )));
        }
        self.rx_head_seen = head;
        Ok(avail as usize)
    }

    /// Makes written bytes visible and rings the reader's doorbell if it sleeps.
    fn publish_tx(&mut self) {
        if self.tx_published == self.tx_head {
            return;
        }
        self.map
            .u64_at(self.tx_ctl + CTL_HEAD)
            .store(self.tx_head, Ordering::Release);
        self.tx_published = self.tx_head;
        // Dekker with the reader: our head store, then its flag; its flag store, then our head. One sees the other.
        fence(Ordering::SeqCst);
        if self
            .map
            .u32_at(self.tx_ctl + CTL_READER_WAITING)
            .load(Ordering::Relaxed)
            != 0
        {
            ring(self.map.u32_at(self.tx_ctl + CTL_DATA_SEQ));
        }
    }

    /// Returns consumed space to the writer and rings its doorbell if it sleeps.
    fn release_rx(&mut self) {
        if self.rx_published == self.rx_tail {
            return;
        }
        self.map
            .u64_at(self.rx_ctl + CTL_TAIL)
            .store(self.rx_tail, Ordering::Release);
        self.rx_published = self.rx_tail;
        fence(Ordering::SeqCst);
        if self
            .map
            .u32_at(self.rx_ctl + CTL_WRITER_WAITING)
            .load(Ordering::Relaxed)
            != 0
        {
            ring(self.map.u32_at(self.rx_ctl + CTL_SPACE_SEQ));
        }
    }

    /// Waits until `ready` says so: spins for `self.spin`, then sleeps on the doorbell `seq_off` with `flag_off`
    /// raised, waking every `WAIT_SLICE` to see whether the peer is still alive.
    fn wait(
        &mut self,
        seq_off: usize,
        flag_off: usize,
        mut ready: impl FnMut(&mut Self) -> Result<bool, TransportError>,
    ) -> Result<(), TransportError> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if ready(self)? {
                return Ok(());
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins & 15 == 0 {
                if start.elapsed() >= self.spin {
                    break;
                }
                // With more runnable threads than cores the peer may be waiting for this very core; a pure spin
                // would then cost the whole spin time per message (measured on 2 cores: 108 µs round trips instead
                // of 0.2-6). The first microseconds stay a pure spin: a yield costs a syscall when cores are free.
                if start.elapsed() >= PURE_SPIN {
                    std::thread::yield_now();
                }
            }
        }
        loop {
            let seq = self.map.u32_at(seq_off).load(Ordering::SeqCst);
            self.map.u32_at(flag_off).store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let outcome = if ready(self)? {
                Some(Ok(()))
            } else if self.peer_closed() {
                Some(Err(TransportError::Closed))
            } else {
                None
            };
            if let Some(outcome) = outcome {
                self.map.u32_at(flag_off).store(0, Ordering::Relaxed);
                return outcome;
            }
            let woke = sys::futex_wait(self.map.u32_at(seq_off), seq, WAIT_SLICE);
            self.map.u32_at(flag_off).store(0, Ordering::Relaxed);
            if woke == sys::Wake::TimedOut && sys::peer_hung_up(self.sock_fd()) {
                return if ready(self)? {
                    Ok(())
                } else {
                    Err(TransportError::Closed)
                };
            }
        }
    }
}

/// Bumps a doorbell sequence and wakes its sleeper (one per doorbell: each ring end has one owner).
fn ring(seq: &AtomicU32) {
    seq.fetch_add(1, Ordering::SeqCst);
    sys::futex_wake(seq, 1);
}

impl Transport for ShmTransport {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        for part in parts {
            let mut off = 0;
            while off < part.len() {
                let want = (part.len() - off).min(self.chunk);
                let mut free = self.tx_free(want)?;
                if free == 0 {
                    // The reader may be waiting for exactly what we hold back.
                    self.publish_tx();
                    let (seq, flag) = (self.tx_ctl + CTL_SPACE_SEQ, self.tx_ctl + CTL_WRITER_WAITING);
                    self.wait(seq, flag, |t| Ok(t.reload_tx_tail()? > 0))?;
                    free = self.tx_free(want)?;
                }
                let pos = (self.tx_head as usize) & (self.cap - 1);
                let n = want.min(free).min(self.cap - pos);
                self.map.write(self.tx_data + pos, &part[off..off + n]);
                self.tx_head += n as u64;
                off += n;
                if self.tx_head - self.tx_published >= self.chunk as u64 {
                    self.publish_tx();
                }
            }
        }
        self.publish_tx();
        Ok(())
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let mut off = 0;
        while off < buf.len() {
            let mut avail = self.rx_avail()?;
            if avail == 0 {
                self.release_rx();
                let (seq, flag) = (self.rx_ctl + CTL_DATA_SEQ, self.rx_ctl + CTL_READER_WAITING);
                self.wait(seq, flag, |t| Ok(t.reload_rx_head()? > 0))?;
                avail = self.rx_avail()?;
            }
            let pos = (self.rx_tail as usize) & (self.cap - 1);
            let n = (buf.len() - off).min(avail).min(self.cap - pos).min(self.chunk);
            self.map.read(self.rx_data + pos, &mut buf[off..off + n]);
            self.rx_tail += n as u64;
            off += n;
            if self.rx_tail - self.rx_published >= self.chunk as u64 {
                self.release_rx();
            }
        }
        self.release_rx();
        Ok(())
    }

    fn send_fd(&mut self, fd: std::os::fd::BorrowedFd<'_>, tag: u64) -> Result<(), TransportError> {
        fdpass::send_with_fds(&self.sock, &tag.to_le_bytes(), &[fd.as_raw_fd()]).map_err(io_to_transport)
    }

    fn recv_fd(&mut self, tag: u64) -> Result<std::os::fd::OwnedFd, TransportError> {
        // The client sends the descriptor before the request that names it, so it is already here or close.
        self.sock.set_read_timeout(Some(SETUP_TIMEOUT))?;
        let mut got = [0u8; 8];
        let received = fdpass::recv_with_fds(&self.sock, &mut got, 1).map_err(io_to_transport);
        self.sock.set_read_timeout(None)?;
        let (n, mut fds) = received?;
        if n == 0 {
            return Err(TransportError::Closed);
        }
        if n < got.len() {
            (&self.sock).read_exact(&mut got[n..]).map_err(io_to_transport)?;
        }
        let fd = fds
            .pop()
            .ok_or_else(|| protocol("a descriptor message arrived without a descriptor"))?;
        if u64::from_le_bytes(got) != tag {
            return Err(protocol(format!(
                "descriptor tagged {} arrived where {tag} was expected",
                u64::from_le_bytes(got)
            )));
        }
        Ok(fd)
    }

    fn kind(&self) -> &'static str {
        "shm"
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        if !self.notify_on_drop {
            return;
        }
        // Tell the peer at once instead of letting it find out at its next liveness check.
        self.map
            .u32_at(off_closed(self.side as usize))
            .store(1, Ordering::SeqCst);
        ring(self.map.u32_at(self.tx_ctl + CTL_DATA_SEQ));
        ring(self.map.u32_at(self.rx_ctl + CTL_SPACE_SEQ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_are_validated() {
        assert_eq!(
            ShmConfig::from_values(None, None).expect("defaults"),
            ShmConfig::default()
        );
        let c = ShmConfig::from_values(Some("16"), Some(" 0 ")).expect("valid");
        assert_eq!((c.ring_bytes, c.spin), (16 << 20, Duration::ZERO));
        for bad in ["0", "3", "2048", "-1", "lots", ""] {
            assert!(
                ShmConfig::from_values(Some(bad), None).is_err(),
                "ring {bad:?} accepted"
            );
        }
        for bad in ["1000001", "-5", "x"] {
            assert!(
                ShmConfig::from_values(None, Some(bad)).is_err(),
                "spin {bad:?} accepted"
            );
        }
    }
}
