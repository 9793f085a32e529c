//! A packet-level link on this host, for kernels without `tc netem`: two TUN devices, one in a private network
//! namespace, joined by a forwarder that delays every IP packet by half the RTT and paces it at the rate.
//!
//! Unlike the relay, TCP runs end to end between the two namespaces: the sender's window, slow start and congestion
//! control meet the real round-trip time, so a single stream's limit on a long fat link (the bandwidth-delay
//! product against the kernel's socket buffers) shows up as it would between two hosts. The forwarder queues at most
//! one bandwidth-delay product plus a cap per direction and drops what arrives beyond it (a switch's tail drop).
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces), `/dev/net/tun` and the `ip` command.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::LinkShape;

/// Jumbo frames: fewer packets per byte for the user-space forwarder, as on data-centre links.
pub const DEFAULT_MTU: u32 = 9000;
/// Bytes queued per direction beyond the bandwidth-delay product before packets are dropped.
pub const DEFAULT_QUEUE_CAP: usize = 2 << 20;

/// What the forwarder counted.
#[derive(Debug, Default)]
pub struct WireStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// A running wire; tears the namespace and devices down when dropped.
pub struct Wire {
    shape: LinkShape,
    netns: String,
    near: Ipv4Addr,
    far: Ipv4Addr,
    stop: Arc<AtomicBool>,
    lanes: Vec<Arc<Lane>>,
    threads: Vec<JoinHandle<()>>,
    stats: Arc<WireStats>,
}

impl Wire {
    /// Creates namespace and devices and starts forwarding through `shape`. The near end (this namespace) is
    /// `near_addr()`, the far end (inside `netns_name()`) `far_addr()`.
    pub fn start(shape: &LinkShape) -> io::Result<Wire> {
        Wire::start_with(shape, DEFAULT_MTU, DEFAULT_QUEUE_CAP)
    }

    pub fn start_with(shape: &LinkShape, mtu: u32, queue_cap: usize) -> io::Result<Wire> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns = format!("vgpu-wire-{pid}-{n}");
        let tag = (pid as u64 * 7 + n) % 250 + 1;
        let near = Ipv4Addr::new(10, 214, tag as u8, 1);
        let far = Ipv4Addr::new(10, 214, tag as u8, 2);
        let (near_dev, far_dev) = (
            format!("vgw{}{n:02}a", pid % 10_000_000),
            format!("vgw{}{n:02}b", pid % 10_000_000),
        );
        let near_tun = crate::sys::tun_open(&near_dev)?;
        let far_tun = crate::sys::tun_open(&far_dev)?;
        let mut wire = Wire {
            shape: shape.clone(),
            netns: netns.clone(),
            near,
            far,
            stop: Arc::new(AtomicBool::new(false)),
            lanes: Vec::new(),
            threads: Vec::new(),
            stats: Arc::new(WireStats::default()),
        };
        ip(&["netns", "add", &netns])?;
        let mtu = mtu.clamp(1280, 65_000).to_string();
        let (near_s, far_s) = (near.to_string(), far.to_string());
        ip(&["link", "set", &far_dev, "netns", &netns])?;
        ip(&["addr", "add", &near_s, "peer", &far_s, "dev", &near_dev])?;
        ip(&["link", "set", &near_dev, "mtu", &mtu, "up"])?;
        ip(&["-n", &netns, "addr", "add", &far_s, "peer", &near_s, "dev", &far_dev])?;
        ip(&["-n", &netns, "link", "set", &far_dev, "mtu", &mtu, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        let near_tun = Arc::new(near_tun);
        let far_tun = Arc::new(far_tun);
        for (from, to) in [(near_tun.clone(), far_tun.clone()), (far_tun, near_tun)] {
            wire.spawn_direction(from, to, queue_cap)?;
        }
        Ok(wire)
    }

    /// The address of this namespace's end.
    pub fn near_addr(&self) -> Ipv4Addr {
        self.near
    }

    /// The address of the far end, inside the namespace.
    pub fn far_addr(&self) -> Ipv4Addr {
        self.far
    }

    /// The far end's namespace (for `ip netns exec NAME ...`).
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    pub fn shape(&self) -> &LinkShape {
        &self.shape
    }

    pub fn stats(&self) -> &WireStats {
        &self.stats
    }

    /// Moves the calling thread into the far end's namespace (only this thread).
    pub fn enter_far(&self) -> io::Result<()> {
        let ns = File::open(format!("/run/netns/{}", self.netns))?;
        crate::sys::enter_netns(&ns)
    }

    fn spawn_direction(&mut self, from: Arc<File>, to: Arc<File>, queue_cap: usize) -> io::Result<()> {
        let bdp = self.shape.bdp_bytes().unwrap_or(0).min(1 << 30) as usize;
        let lane = Arc::new(Lane {
            state: Mutex::new(LaneState::default()),
            changed: Condvar::new(),
            limit: bdp.saturating_add(queue_cap),
            one_way: self.shape.one_way(),
            rate: self.shape.bytes_per_s(),
        });
        self.lanes.push(lane.clone());
        let (stop, stats) = (self.stop.clone(), self.stats.clone());
        {
            let lane = lane.clone();
            self.threads.push(
                thread::Builder::new()
                    .name("vgpu-wire-read".into())
                    .spawn(move || read_packets(&from, &lane, &stop, &stats))?,
            );
        }
        let (stop, stats) = (self.stop.clone(), self.stats.clone());
        self.threads.push(
            thread::Builder::new()
                .name("vgpu-wire-write".into())
                .spawn(move || write_packets(&to, &lane, &stop, &stats))?,
        );
        Ok(())
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for lane in &self.lanes {
            lane.changed.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// Runs `ip ARGS`, turning a failure into an error that says what failed.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Lane {
    state: Mutex<LaneState>,
    changed: Condvar,
    limit: usize,
    one_way: Duration,
    rate: Option<f64>,
}

#[derive(Default)]
struct LaneState {
    packets: VecDeque<(Instant, Vec<u8>)>,
    queued: usize,
    spare: Vec<Vec<u8>>,
}

fn read_packets(from: &File, lane: &Lane, stop: &AtomicBool, stats: &WireStats) {
    let mut link_free = Instant::now();
    let mut from = from;
    while !stop.load(Ordering::Relaxed) {
        match crate::sys::poll_fds([from.as_raw_fd()], libc::POLLIN, Duration::from_millis(100)) {
            Ok([0]) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let mut buf = lock(&lane.state).spare.pop().unwrap_or_default();
        buf.resize(65_536, 0);
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        buf.truncate(n);
        let now = Instant::now();
        let mut st = lock(&lane.state);
        if st.queued + n > lane.limit {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            buf.clear();
            st.spare.push(buf);
            continue;
        }
        let leaves = match lane.rate {
            Some(rate) => {
                link_free = link_free.max(now) + Duration::from_secs_f64(n as f64 / rate);
                link_free
            }
            None => now,
        };
        st.packets.push_back((leaves + lane.one_way, buf));
        st.queued += n;
        lane.changed.notify_all();
    }
}

fn write_packets(to: &File, lane: &Lane, stop: &AtomicBool, stats: &WireStats) {
    crate::sys::set_timer_slack_ns(1);
    let mut to = to;
    let mut due_now = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        {
            let mut st = lock(&lane.state);
            match st.packets.front() {
                None => {
                    let _ = lane.changed.wait_timeout(st, Duration::from_millis(100));
                    continue;
                }
                Some(&(due, _)) => {
                    let now = Instant::now();
                    if due > now {
                        drop(st);
                        thread::sleep(due - now);
                        continue;
                    }
                }
            }
            let now = Instant::now();
            while st.packets.front().is_some_and(|(due, _)| *due <= now) {
                if let Some((_, p)) = st.packets.pop_front() {
                    st.queued -= p.len();
                    due_now.push(p);
                }
            }
        }
        for p in due_now.drain(..) {
            // A TUN device takes one whole packet per write; a failed write is a lost packet, as on a wire.
            if to.write(&p).is_ok() {
                stats.packets.fetch_add(1, Ordering::Relaxed);
                stats.bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
            }
            let mut st = lock(&lane.state);
            if st.spare.len() < 256 {
                let mut p = p;
                p.clear();
                st.spare.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A wire; a host that cannot have one fails the test with the reason, unless VGPU_TEST_NO_WIRE=1 says so
    /// on purpose (a machine without root or TUN), which is printed.
    fn wire_or_why(shape: &str) -> Option<Wire> {
        match Wire::start(&LinkShape::parse(shape).expect("shape")) {
            Ok(w) => Some(w),
            Err(e) if std::env::var("VGPU_TEST_NO_WIRE").is_ok_and(|v| v == "1") => {
                println!("NOT RUN (VGPU_TEST_NO_WIRE=1): no packet-level wire on this host: {e}");
                None
            }
            Err(e) => panic!(
                "no packet-level wire on this host ({e}): it needs root, network namespaces, TUN and the ip command; \
                 set VGPU_TEST_NO_WIRE=1 where that is expected"
            ),
        }
    }

    #[test]
    fn tcp_runs_end_to_end_with_the_round_trip_and_rate() {
        let Some(wire) = wire_or_why("200m-4ms") else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let far = wire.far_addr();
        let ns = format!("/run/netns/{}", wire.netns_name());
        let server = thread::spawn(move || {
            crate::sys::enter_netns(&File::open(&ns).expect("netns")).expect("setns");
            let l = TcpListener::bind((far, 0)).expect("bind in the far namespace");
            tx.send(l.local_addr().expect("addr").port()).expect("port");
            let (mut s, peer) = l.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if buf[..n].contains(&b'!') {
                            s.write_all(b"!").expect("echo");
                        }
                        total += n;
                    }
                }
            }
            (total, peer)
        });
        let port = rx.recv().expect("port");
        let mut c = TcpStream::connect((far, port)).expect("connect across the wire");
        c.set_nodelay(true).expect("nodelay");
        // Round trips: each at least the 4 ms RTT, the median within one more.
        let mut times = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            c.write_all(b"!").expect("ping");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).expect("pong");
            times.push(t.elapsed());
        }
        times.sort();
        assert!(times[0] >= Duration::from_millis(4), "a round trip took {:?}", times[0]);
        assert!(
            times[3] < Duration::from_millis(8),
            "round trips across a 4 ms wire: {times:?}"
        );
        // Bulk: 25 MB/s each way; 16 MiB take ~0.67 s, one TCP stream with the kernel's own windows.
        let data = vec![7u8; 16 << 20];
        let t = Instant::now();
        c.write_all(&data).expect("bulk");
        c.shutdown(std::net::Shutdown::Write).expect("close");
        let (total, peer) = server.join().expect("server");
        let rate = total as f64 / t.elapsed().as_secs_f64();
        assert_eq!(total, data.len() + 7);
        assert_eq!(
            peer.ip(),
            wire.near_addr(),
            "the client's packets came from the near end"
        );
        assert!(rate < 25e6 * 1.05, "{rate:.0} B/s through a 25 MB/s wire");
        // A loaded machine wakes the forwarder late (packets then queue and some drop): a floor, not the rate.
        assert!(rate > 25e6 * 0.4, "only {rate:.0} B/s through a 25 MB/s wire");
        assert!(wire.stats().packets.load(Ordering::Relaxed) > 100);
    }
}
