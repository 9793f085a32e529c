//! A shaping TCP relay: listens, connects each accepted connection to an upstream address, and forwards bytes in
//! both directions after the shape's one-way delay, at most at its rate, with bounded buffering.
//!
//! Each direction is a reader and a writer around a timed queue. The reader gives every chunk it reads a departure
//! time from a token bucket of the link's rate (a chunk leaves when the previous one has finished serialising) and a
//! delivery time half a round trip later; the bucket is the link's, one per direction shared by every connection, so
//! several connections together get the link's rate, not each of them; the writer sleeps until the head chunk is due and writes it out. The queue
//! holds at most one bandwidth-delay product plus `queue_cap` bytes: past that the reader stops reading, so the
//! sender's own socket fills and it waits, as behind a full switch buffer. Nothing is dropped or reordered.
//!
//! What it is not: the relay terminates TCP on both sides, so each side's TCP sees a loopback round trip and its
//! window never limits throughput the way a real long link's would (the relay's queue stands in for the window).
//! Round trips and rate are faithful; window effects need a packet-level delay (`tc netem`) where the kernel has it.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::LinkShape;

/// Bytes a relay may queue per direction beyond the bandwidth-delay product (a switch's buffer, roughly).
pub const DEFAULT_QUEUE_CAP: usize = 4 << 20;
/// The most connections one relay carries at once (one per app thread, plus set-up channels).
pub const MAX_CONNECTIONS: usize = 256;
/// The largest single read, and so the coarsest granularity of delivery.
const MAX_CHUNK: usize = 256 << 10;
const MIN_CHUNK: usize = 16 << 10;
/// Chunks of about this much of the link's time: smooth delivery without a wake-up per packet.
const CHUNK_TIME_S: f64 = 50e-6;

/// What a relay measured about itself.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Bytes forwarded client → server and server → client.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Connections accepted so far.
    pub connections: AtomicU64,
    /// Deliveries after the writer had waited for the chunk to be due, and how late they went out in total (the
    /// relay's own cost: wake-up and write). Chunks that queue behind a busy receiver are not counted: that is the
    /// receiver's backpressure, not the relay's lateness.
    pub chunks: AtomicU64,
    pub late_ns_total: AtomicU64,
    pub late_ns_max: AtomicU64,
    /// The most bytes queued in one direction at once.
    pub queued_max: AtomicU64,
}

impl RelayStats {
    /// Mean lateness of a delivery against its due time, in µs.
    pub fn mean_late_us(&self) -> f64 {
        let n = self.chunks.load(Ordering::Relaxed);
        if n == 0 {
            return 0.0;
        }
        self.late_ns_total.load(Ordering::Relaxed) as f64 / n as f64 / 1e3
    }
}

/// A running relay; stops (and cuts its connections) when dropped.
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    live: Arc<Mutex<Vec<LiveConnection>>>,
    stats: Arc<RelayStats>,
    shape: LinkShape,
}

/// When the link is next free to start serialising a chunk, per direction (up, down): the token bucket as a time,
/// shared by every connection of the relay.
type LinkClock = Arc<[Mutex<Instant>; 2]>;

impl Relay {
    /// Listens on `listen` (`host:port`, port 0 for any) and relays every connection to `upstream` through `shape`.
    pub fn start(listen: &str, upstream: &str, shape: &LinkShape) -> io::Result<Relay> {
        Relay::start_with(listen, upstream, shape, DEFAULT_QUEUE_CAP)
    }

    /// As `start`, with the queue allowance beyond the bandwidth-delay product.
    pub fn start_with(listen: &str, upstream: &str, shape: &LinkShape, queue_cap: usize) -> io::Result<Relay> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let stats = Arc::new(RelayStats::default());
        let upstream = upstream.to_string();
        let lane = LaneConfig::new(shape, queue_cap);
        let clock: LinkClock = Arc::new([Mutex::new(Instant::now()), Mutex::new(Instant::now())]);
        let accept = {
            let (stop, live, stats) = (stop.clone(), live.clone(), stats.clone());
            thread::Builder::new()
                .name("vgpu-relay-accept".into())
                .spawn(move || accept_loop(listener, &upstream, lane, &clock, &stop, &live, &stats))?
        };
        Ok(Relay {
            addr,
            stop,
            accept: Some(accept),
            live,
            stats,
            shape: shape.clone(),
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    pub fn shape(&self) -> &LinkShape {
        &self.shape
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in lock(&self.live).drain(..) {
            for s in &c.streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A relayed connection's two sockets (to cut them when the relay stops) and a token every thread serving it holds:
/// when none does any more, the connection is over and its entry goes.
struct LiveConnection {
    streams: [TcpStream; 2],
    token: Arc<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One direction's shaping, fixed per relay.
#[derive(Clone, Copy)]
struct LaneConfig {
    one_way: Duration,
    /// Bytes per second, `None` for unlimited.
    rate: Option<f64>,
    /// Most bytes queued (read, not yet written) at once.
    limit: usize,
    chunk: usize,
}

impl LaneConfig {
    fn new(shape: &LinkShape, queue_cap: usize) -> LaneConfig {
        let rate = shape.bytes_per_s();
        let bdp = shape.bdp_bytes().unwrap_or(0).min(1 << 30) as usize;
        let chunk = rate.map_or(MAX_CHUNK, |r| ((r * CHUNK_TIME_S) as usize).clamp(MIN_CHUNK, MAX_CHUNK));
        LaneConfig {
            one_way: shape.one_way(),
            rate,
            limit: bdp.saturating_add(queue_cap).max(chunk),
            chunk,
        }
    }

    /// No delay and no rate: chunks can be written by the reader itself, without a hand-off.
    fn passthrough(&self) -> bool {
        self.one_way.is_zero() && self.rate.is_none()
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: &str,
    lane: LaneConfig,
    clock: &LinkClock,
    stop: &AtomicBool,
    live: &Arc<Mutex<Vec<LiveConnection>>>,
    stats: &Arc<RelayStats>,
) {
    use std::os::fd::AsRawFd;
    while !stop.load(Ordering::Relaxed) {
        // Wait for a connection without polling on a timer (a new channel must not pay a tick), waking now and
        // then to notice `stop`.
        if let Err(e) = crate::sys::poll_fds([listener.as_raw_fd()], libc::POLLIN, Duration::from_millis(100)) {
            tracing::warn!("relay: poll failed: {e}");
            thread::sleep(Duration::from_millis(50));
        }
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!("relay: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        {
            let mut l = lock(live);
            l.retain(|c| Arc::strong_count(&c.token) > 1);
            if l.len() >= MAX_CONNECTIONS {
                tracing::warn!("relay: {MAX_CONNECTIONS} connections already; refusing another");
                continue;
            }
        }
        if let Err(e) = connect_pair(client, upstream, lane, clock, live, stats) {
            tracing::warn!("relay: cannot relay a connection to {upstream}: {e}");
        }
    }
}

fn connect_pair(
    client: TcpStream,
    upstream: &str,
    lane: LaneConfig,
    clock: &LinkClock,
    live: &Arc<Mutex<Vec<LiveConnection>>>,
    stats: &Arc<RelayStats>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(upstream)?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
    }
    let token = Arc::new(());
    lock(live).push(LiveConnection {
        streams: [client.try_clone()?, server.try_clone()?],
        token: token.clone(),
    });
    stats.connections.fetch_add(1, Ordering::Relaxed);
    spawn_direction(
        client.try_clone()?,
        server.try_clone()?,
        (lane, clock.clone()),
        stats.clone(),
        true,
        &token,
    )?;
    spawn_direction(server, client, (lane, clock.clone()), stats.clone(), false, &token)?;
    Ok(())
}

/// The timed queue between one direction's reader and writer.
struct Lane {
    state: Mutex<LaneState>,
    /// Signalled when a chunk is queued, the reader ends, or the writer frees space.
    changed: Condvar,
}

#[derive(Default)]
struct LaneState {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    queued: usize,
    /// The reader saw the end of its stream (or failed).
    ended: bool,
    /// The writer failed: the reader must stop.
    broken: bool,
    /// Buffers the writer has emptied, for the reader to fill again.
    spare: Vec<Vec<u8>>,
}

fn spawn_direction(
    from: TcpStream,
    to: TcpStream,
    (cfg, clock): (LaneConfig, LinkClock),
    stats: Arc<RelayStats>,
    up: bool,
    token: &Arc<()>,
) -> io::Result<()> {
    if cfg.passthrough() {
        let token = token.clone();
        thread::Builder::new().name("vgpu-relay-pass".into()).spawn(move || {
            let _serving = token;
            pass_through(from, to, &stats, up)
        })?;
        return Ok(());
    }
    let lane = Arc::new(Lane {
        state: Mutex::new(LaneState::default()),
        changed: Condvar::new(),
    });
    {
        let (lane, stats, to, from) = (lane.clone(), stats.clone(), to.try_clone()?, from.try_clone()?);
        let token = token.clone();
        thread::Builder::new().name("vgpu-relay-write".into()).spawn(move || {
            let _serving = token;
            writer(to, from, &lane, &stats, up)
        })?;
    }
    let token = token.clone();
    thread::Builder::new().name("vgpu-relay-read".into()).spawn(move || {
        let _serving = token;
        reader(from, &lane, cfg, &clock[usize::from(!up)], &stats)
    })?;
    Ok(())
}

/// No shaping: read and write on one thread (the relay's own cost, without hand-offs).
fn pass_through(mut from: TcpStream, mut to: TcpStream, stats: &RelayStats, up: bool) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return;
        }
        if up { &stats.bytes_up } else { &stats.bytes_down }.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn reader(mut from: TcpStream, lane: &Lane, cfg: LaneConfig, link_free: &Mutex<Instant>, stats: &RelayStats) {
    loop {
        {
            let mut st = lock(&lane.state);
            while st.queued + cfg.chunk > cfg.limit && !st.broken {
                st = lane.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.broken {
                return;
            }
        }
        let mut buf = lock(&lane.state).spare.pop().unwrap_or_default();
        buf.resize(cfg.chunk, 0);
        let n = match from.read(&mut buf) {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let mut st = lock(&lane.state);
        if n == 0 {
            st.ended = true;
            lane.changed.notify_all();
            return;
        }
        buf.truncate(n);
        let now = Instant::now();
        let leaves = match cfg.rate {
            Some(rate) => {
                let mut free = lock(link_free);
                *free = (*free).max(now) + Duration::from_secs_f64(n as f64 / rate);
                *free
            }
            None => now,
        };
        st.chunks.push_back((leaves + cfg.one_way, buf));
        st.queued += n;
        stats.queued_max.fetch_max(st.queued as u64, Ordering::Relaxed);
        lane.changed.notify_all();
    }
}

fn writer(mut to: TcpStream, from: TcpStream, lane: &Lane, stats: &RelayStats, up: bool) {
    crate::sys::set_timer_slack_ns(1);
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        {
            let mut st = lock(&lane.state);
            // Whether this writer had to wait for the head chunk: only then is its lateness the relay's own.
            let mut waited = false;
            loop {
                match st.chunks.front() {
                    None if st.ended => {
                        drop(st);
                        let _ = to.shutdown(Shutdown::Write);
                        return;
                    }
                    None => {
                        waited = true;
                        st = lane.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    Some(&(due, _)) => {
                        let now = Instant::now();
                        if due > now {
                            // Sleep outside the lock: the reader keeps queueing meanwhile.
                            waited = true;
                            drop(st);
                            thread::sleep(due - now);
                            st = lock(&lane.state);
                            continue;
                        }
                        break;
                    }
                }
            }
            // Everything already due goes out in one go.
            let now = Instant::now();
            if let (true, Some((due, _))) = (waited, st.chunks.front()) {
                let late = now.saturating_duration_since(*due).as_nanos() as u64;
                stats.late_ns_total.fetch_add(late, Ordering::Relaxed);
                stats.late_ns_max.fetch_max(late, Ordering::Relaxed);
                stats.chunks.fetch_add(1, Ordering::Relaxed);
            }
            while let Some((due, _)) = st.chunks.front() {
                if *due > now {
                    break;
                }
                if let Some((_, data)) = st.chunks.pop_front() {
                    st.queued -= data.len();
                    batch.push(data);
                }
            }
            lane.changed.notify_all();
        }
        let bytes: usize = batch.iter().map(Vec::len).sum();
        if write_all_vectored(&mut to, &batch).is_err() {
            let mut st = lock(&lane.state);
            st.broken = true;
            lane.changed.notify_all();
            drop(st);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
        if up { &stats.bytes_up } else { &stats.bytes_down }.fetch_add(bytes as u64, Ordering::Relaxed);
        let mut st = lock(&lane.state);
        for mut data in batch.drain(..) {
            if st.spare.len() < 64 {
                data.clear();
                st.spare.push(data);
            }
        }
    }
}

/// Writes every buffer, in order, with as few system calls as the socket allows.
fn write_all_vectored(to: &mut TcpStream, bufs: &[Vec<u8>]) -> io::Result<()> {
    let parts: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
    crate::send_all(std::os::fd::AsRawFd::as_raw_fd(to), &parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        echo_server_for(1)
    }

    /// Echoes `connections` connections, each on its own thread; the handle ends when all have.
    fn echo_server_for(connections: usize) -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let t = thread::spawn(move || {
            let echoes: Vec<_> = (0..connections)
                .filter_map(|_| l.accept().ok())
                .map(|(mut s, _)| {
                    thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        loop {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if s.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    })
                })
                .collect();
            for e in echoes {
                let _ = e.join();
            }
        });
        (addr, t)
    }

    fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).expect("write");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).expect("read");
        back
    }

    #[test]
    fn delays_each_round_trip_by_the_rtt() {
        let (addr, echo) = echo_server();
        let shape = LinkShape::parse("inf-4ms").expect("shape");
        let relay = Relay::start("127.0.0.1:0", &addr.to_string(), &shape).expect("relay");
        let mut c = TcpStream::connect(relay.local_addr()).expect("connect");
        c.set_nodelay(true).expect("nodelay");
        assert_eq!(round_trip(&mut c, b"warm"), b"warm");
        let mut times = Vec::new();
        for i in 0..9u8 {
            let t = Instant::now();
            assert_eq!(round_trip(&mut c, &[i; 100]), vec![i; 100]);
            times.push(t.elapsed());
        }
        times.sort();
        // Never faster than the RTT; the median within one more RTT (a loaded machine wakes the relay late).
        assert!(times[0] >= Duration::from_millis(4), "a round trip took {:?}", times[0]);
        assert!(
            times[4] < Duration::from_millis(8),
            "round trips through a 4 ms relay: {times:?}"
        );
        drop(c);
        drop(relay);
        echo.join().expect("echo");
    }

    #[test]
    fn limits_the_rate_and_bounds_the_queue() {
        let (addr, echo) = echo_server();
        // 200 Mb/s = 25 MB/s each way, 2 ms RTT: 8 MiB take ~0.34 s to go out and come back.
        let shape = LinkShape::parse("200m-2ms").expect("shape");
        let cap = 1 << 20;
        let relay = Relay::start_with("127.0.0.1:0", &addr.to_string(), &shape, cap).expect("relay");
        let mut c = TcpStream::connect(relay.local_addr()).expect("connect");
        let total = 8usize << 20;
        let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut reader = c.try_clone().expect("clone");
        let t = Instant::now();
        let back = thread::spawn(move || {
            let mut got = vec![0u8; total];
            reader.read_exact(&mut got).expect("read back");
            got
        });
        c.write_all(&data).expect("write");
        let got = back.join().expect("reader");
        let secs = t.elapsed().as_secs_f64();
        assert!(got == data, "bytes changed on the way");
        let rate = total as f64 / secs;
        assert!(rate < 25e6 * 1.05, "relay let {rate:.0} B/s through a 25 MB/s link");
        // A loaded machine wakes the relay's writers late; past a queue's worth of lateness the link idles.
        assert!(rate > 25e6 * 0.4, "relay reached only {rate:.0} B/s of a 25 MB/s link");
        let bound = shape.bdp_bytes().expect("bdp") as usize + cap + MAX_CHUNK;
        let queued = relay.stats().queued_max.load(Ordering::Relaxed) as usize;
        assert!(queued <= bound, "queued {queued} bytes, more than BDP + cap ({bound})");
        assert_eq!(relay.stats().bytes_up.load(Ordering::Relaxed), total as u64);
        drop(c);
        drop(relay);
        echo.join().expect("echo");
    }

    #[test]
    fn connections_share_the_link_rate() {
        let (addr, echo) = echo_server_for(2);
        // 25 MB/s each way: two connections sending 4 MiB each at once get 25 MB/s together, not each.
        let shape = LinkShape::parse("200m-2ms").expect("shape");
        let relay = Relay::start("127.0.0.1:0", &addr.to_string(), &shape).expect("relay");
        let per = 4usize << 20;
        let t = Instant::now();
        let senders: Vec<_> = (0..2u8)
            .map(|k| {
                let mut c = TcpStream::connect(relay.local_addr()).expect("connect");
                thread::spawn(move || {
                    let data = vec![k; per];
                    let mut reader = c.try_clone().expect("clone");
                    let back = thread::spawn(move || {
                        let mut got = vec![0u8; per];
                        reader.read_exact(&mut got).expect("read back");
                        got
                    });
                    c.write_all(&data).expect("write");
                    assert!(back.join().expect("reader") == data, "bytes changed on the way");
                })
            })
            .collect();
        for s in senders {
            s.join().expect("sender");
        }
        let rate = (2 * per) as f64 / t.elapsed().as_secs_f64();
        assert!(
            rate < 25e6 * 1.05,
            "two connections got {rate:.0} B/s through a 25 MB/s link"
        );
        drop(relay);
        echo.join().expect("echo");
    }

    #[test]
    fn passes_bytes_and_closes_both_ways() {
        let (addr, echo) = echo_server();
        let relay = Relay::start(
            "127.0.0.1:0",
            &addr.to_string(),
            &LinkShape::parse("relay").expect("relay"),
        )
        .expect("relay");
        let mut c = TcpStream::connect(relay.local_addr()).expect("connect");
        let msg: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut r = c.try_clone().expect("clone");
        let n = msg.len();
        let back = thread::spawn(move || {
            let mut got = vec![0u8; n];
            r.read_exact(&mut got).expect("read");
            let mut more = [0u8; 1];
            // After the client's half-close the echo server ends, and the relay closes the client's side.
            let end = r.read(&mut more).expect("eof");
            (got, end)
        });
        c.write_all(&msg).expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        let (got, end) = back.join().expect("reader");
        assert_eq!(got, msg);
        assert_eq!(end, 0, "the relay did not pass the close on");
        echo.join().expect("echo");
    }

    #[test]
    fn forgets_connections_that_ended() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let relay = Relay::start(
            "127.0.0.1:0",
            &addr.to_string(),
            &LinkShape::parse("1g-1ms").expect("s"),
        )
        .expect("relay");
        for _ in 0..3 {
            let c = TcpStream::connect(relay.local_addr()).expect("connect");
            let (s, _) = l.accept().expect("accept");
            drop(c);
            drop(s);
        }
        let live = |r: &Relay| lock(&r.live).iter().filter(|c| Arc::strong_count(&c.token) > 1).count();
        let counted = |r: &Relay| r.stats().connections.load(Ordering::Relaxed);
        // The upstream accept returns as soon as the relay's connect completes, before the relay records the
        // pair: wait for all three to be counted as well as ended, or the check races the relay's thread.
        let t = Instant::now();
        while (live(&relay) > 0 || counted(&relay) < 3) && t.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(live(&relay), 0, "closed connections still held by the relay's threads");
        assert_eq!(counted(&relay), 3);
    }

    #[test]
    fn refuses_nothing_silently_when_upstream_is_down() {
        // The upstream port is closed: the relay accepts, fails to connect, and closes the client.
        let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = dead.local_addr().expect("addr");
        drop(dead);
        let relay = Relay::start(
            "127.0.0.1:0",
            &addr.to_string(),
            &LinkShape::parse("1g-1ms").expect("s"),
        )
        .expect("relay");
        let mut c = TcpStream::connect(relay.local_addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut b = [0u8; 1];
        let r = c.read(&mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "expected a closed connection, got {r:?}");
    }
}
