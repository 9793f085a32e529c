//! Stalled-client detection in a session's worker: a connection that stops in the middle of a request frame (or
//! stops reading in the middle of a reply) for longer than the stall timeout is shut down, freeing its thread and
//! buffers. Waiting for the next request, and the server's own work between reads (a slow GPU sync), never count.
//!
//! [`Guarded`] follows request frames as the session reads them (the header's `len` says how long each is) and
//! marks the connection "waiting mid-frame" only while a read inside a frame is blocked; one watchdog thread per
//! worker shuts down the socket of a connection that has been waiting longer than the timeout.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vgpu_dataplane::transport::{Transport, TransportError};
use vgpu_dataplane::wire::RequestHeader;

/// Reads inside a frame are split into pieces of this size, so a large tail that keeps arriving (slowly) shows
/// progress: the timeout bounds the time without progress, not the time of a whole transfer (a piece must come
/// within the timeout: 8 MiB in 60 s by default, about 140 KB/s). Sends are split the same way; a direct device
/// transfer, which cannot be, is allowed the timeout once per piece of it. As large as the session's copy chunks, so the
/// transports' large-transfer paths (TLS's two-thread pipeline) see whole chunks.
const PIECE: usize = 8 << 20;
const HEADER: usize = std::mem::size_of::<RequestHeader>();

/// One watched connection: its socket and since when (nanoseconds after `base`, 0 = not) it has been blocked.
struct Watched {
    fd: RawFd,
    blocked_since: AtomicU64,
    cut: AtomicBool,
}

/// The worker's watchdog and the connections it watches.
pub struct StallWatch {
    timeout: Duration,
    base: Instant,
    watched: Mutex<Vec<Arc<Watched>>>,
}

static WATCH: OnceLock<Arc<StallWatch>> = OnceLock::new();

impl StallWatch {
    /// The process's watchdog (started on first use with `timeout`; later calls get the same one).
    pub fn global(timeout: Duration) -> Arc<StallWatch> {
        WATCH
            .get_or_init(|| {
                let watch = Arc::new(StallWatch {
                    timeout,
                    base: Instant::now(),
                    watched: Mutex::new(Vec::new()),
                });
                let w = watch.clone();
                let _ = std::thread::Builder::new()
                    .name("vgpu-stall-watch".into())
                    .spawn(move || w.run());
                watch
            })
            .clone()
    }

    /// A watchdog of its own (tests); `run` must be called on a thread by the caller.
    #[cfg(test)]
    fn new(timeout: Duration) -> Arc<StallWatch> {
        Arc::new(StallWatch {
            timeout,
            base: Instant::now(),
            watched: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    fn run(&self) {
        let tick = (self.timeout / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            std::thread::sleep(tick);
            self.check();
        }
    }

    /// Shuts down every connection blocked mid-frame for longer than the timeout.
    fn check(&self) {
        let now = self.now();
        let limit = self.timeout.as_nanos() as u64;
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for w in watched.iter() {
            let since = w.blocked_since.load(Ordering::Acquire);
            if since != 0 && now.saturating_sub(since) > limit && !w.cut.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    "a client stalled in the middle of a frame for more than {} s: disconnecting it",
                    self.timeout.as_secs_f64()
                );
                // Under the lock: the connection cannot be dropped (and its descriptor reused) meanwhile.
                crate::sys::shutdown_socket(w.fd);
            }
        }
    }

    /// Wraps a connection's transport; `fd` is its socket (for shared memory, the rendezvous socket).
    pub fn guard<T: Transport>(self: &Arc<Self>, inner: T, fd: RawFd) -> Guarded<T> {
        let entry = Arc::new(Watched {
            fd,
            blocked_since: AtomicU64::new(0),
            cut: AtomicBool::new(false),
        });
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.clone());
        Guarded {
            inner,
            watch: self.clone(),
            entry,
            header: [0; HEADER],
            header_got: 0,
            frame_left: 0,
        }
    }

    #[cfg(test)]
    fn watching(&self) -> usize {
        self.watched.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A transport whose blocked reads inside a request frame (and blocked sends) are timed by the watchdog.
pub struct Guarded<T: Transport> {
    inner: T,
    watch: Arc<StallWatch>,
    entry: Arc<Watched>,
    /// The current frame's header bytes received so far.
    header: [u8; HEADER],
    header_got: usize,
    /// Bytes of the current frame's body and tail still to come.
    frame_left: u64,
}

impl<T: Transport> Guarded<T> {
    /// Runs a blocking call with the connection marked as waiting (the watchdog times it).
    fn timed<R>(&mut self, f: impl FnOnce(&mut T) -> Result<R, TransportError>) -> Result<R, TransportError> {
        self.timed_bytes(0, f)
    }

    /// `timed` for one blocking call that moves `len` bytes at once (a direct device transfer):
    /// allowed the timeout once per `PIECE` of it, as reads split into pieces are, so a large transfer over a slow
    /// link that keeps moving is not cut for lasting longer than one timeout.
    fn timed_bytes<R>(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut T) -> Result<R, TransportError>,
    ) -> Result<R, TransportError> {
        let extra_pieces = (len.saturating_sub(1) / PIECE) as u64;
        let grace = (self.watch.timeout.as_nanos() as u64).saturating_mul(extra_pieces);
        // A start in the future: the watchdog measures from there.
        self.entry
            .blocked_since
            .store(self.watch.now().saturating_add(grace), Ordering::Release);
        let r = f(&mut self.inner);
        self.entry.blocked_since.store(0, Ordering::Release);
        r.map_err(|e| self.cut_error(e))
    }

    /// Sends `parts` as consecutive sends of at most `PIECE` bytes, each timed: the timeout bounds the time without
    /// progress of a large reply, as of a large request (a stream transport's bytes are the same either way).
    fn send_in_pieces(
        &mut self,
        parts: &[&[u8]],
        send: impl Fn(&mut T, &[&[u8]]) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        // Most sends (every small reply) are one piece: sent as they are, with no grouping to build.
        if parts.iter().map(|p| p.len()).sum::<usize>() <= PIECE {
            return self.timed(|t| send(t, parts));
        }
        let mut group: Vec<&[u8]> = Vec::with_capacity(parts.len());
        let mut group_len = 0;
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let take = rest.len().min(PIECE - group_len);
                group.push(&rest[..take]);
                group_len += take;
                rest = &rest[take..];
                if group_len == PIECE {
                    self.timed(|t| send(t, &group))?;
                    group.clear();
                    group_len = 0;
                }
            }
        }
        if group.is_empty() {
            return Ok(());
        }
        self.timed(|t| send(t, &group))
    }

    /// Follows the frames through bytes the session has just received.
    fn account(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.frame_left > 0 {
                let n = (self.frame_left.min(bytes.len() as u64)) as usize;
                self.frame_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER - self.header_got).min(bytes.len());
            self.header[self.header_got..self.header_got + n].copy_from_slice(&bytes[..n]);
            self.header_got += n;
            bytes = &bytes[n..];
            if self.header_got == HEADER {
                self.header_got = 0;
                // `len` (body and tail) is the header's first field, little-endian.
                self.frame_left =
                    u32::from_le_bytes([self.header[0], self.header[1], self.header[2], self.header[3]]) as u64;
            }
        }
    }

    fn cut_error(&self, e: TransportError) -> TransportError {
        if self.entry.cut.load(Ordering::Acquire) {
            TransportError::Protocol(format!(
                "the client stalled in the middle of a frame for more than {} s",
                self.watch.timeout.as_secs_f64()
            ))
        } else {
            e
        }
    }
}

impl<T: Transport> Transport for Guarded<T> {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        // A reply the client does not read blocks here once the socket's buffers are full: timed too.
        self.send_in_pieces(parts, |t, p| t.send(p))
    }

    fn send_stable(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.send_in_pieces(parts, |t, p| t.send_stable(p))
    }

    fn send_awaited(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.send_in_pieces(parts, |t, p| t.send_awaited(p))
    }

    fn stable_in_place_min(&self) -> Option<usize> {
        self.inner.stable_in_place_min()
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let mut done = 0;
        while done < buf.len() {
            let at_boundary = self.header_got == 0 && self.frame_left == 0;
            // Between frames the client may stay silent as long as it likes: wait for the first byte untimed.
            let n = if at_boundary { 1 } else { (buf.len() - done).min(PIECE) };
            let piece = &mut buf[done..done + n];
            if at_boundary {
                self.inner.recv_exact(piece).map_err(|e| self.cut_error(e))?;
            } else {
                self.timed(|t| t.recv_exact(piece))?;
            }
            self.account(&buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn send_fd(&mut self, fd: std::os::fd::BorrowedFd<'_>, tag: u64) -> Result<(), TransportError> {
        self.inner.send_fd(fd, tag)
    }

    fn recv_fd(&mut self, tag: u64) -> Result<std::os::fd::OwnedFd, TransportError> {
        self.timed(|t| t.recv_fd(tag))
    }

    fn moves_device_memory(&self) -> bool {
        self.inner.moves_device_memory()
    }

    fn send_device(&mut self, addr: u64, len: usize) -> Result<bool, TransportError> {
        self.timed_bytes(len, |t| t.send_device(addr, len))
    }

    fn recv_device(
        &mut self,
        addr: u64,
        len: usize,
        inline: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<bool, TransportError> {
        // Device bytes are always a frame's tail: the frame's header was read through `recv_exact`.
        if self.header_got != 0 || (len as u64) > self.frame_left {
            return Ok(false);
        }
        let received = self.timed_bytes(len, |t| t.recv_device(addr, len, inline))?;
        if received {
            self.frame_left -= len as u64;
        }
        Ok(received)
    }
}

impl<T: Transport> Drop for Guarded<T> {
    fn drop(&mut self) {
        // Leave the watch before the transport (and its descriptor) goes away.
        let mut watched = self.watch.watched.lock().unwrap_or_else(|p| p.into_inner());
        watched.retain(|w| !Arc::ptr_eq(w, &self.entry));
    }
}

#[cfg(test)]
mod tests;
