//! Transport floors that `vgpu bench` prints beside its ratios: what a bare round trip and a bare bulk stream cost
//! on this host, so remoting overhead can be told apart from the transport's own.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use vgpu_dataplane::transport::{Transport, TransportError};

use crate::link::relay::Relay;
use crate::link::wire::Wire;
use crate::link::LinkShape;
use crate::shm::{self, ShmConfig, ShmTransport};
use crate::tcp::TcpTransport;
use crate::tls::pki_types::{CertificateDer, PrivateKeyDer};
use crate::tls::{self, ClientSettings, ServerCheck, TlsAcceptor, TlsTransport};

const PING: usize = 64;
/// Bulk data goes out in sends of this size, as the pipelined copy path does.
const BULK_PIECE: usize = 4 << 20;

fn to_io(e: TransportError) -> io::Error {
    match e {
        TransportError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// A connected TCP pair over loopback: (client, server).
pub(crate) fn tcp_pair() -> io::Result<(TcpTransport, TcpTransport)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let client = TcpStream::connect(addr)?;
    let (server, _) = listener.accept()?;
    Ok((TcpTransport::from_stream(client)?, TcpTransport::from_stream(server)?))
}

/// A connected TLS pair over loopback with the given server certificate and key: (client, server).
pub(crate) fn tls_pair(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<(TlsTransport, TlsTransport)> {
    let acceptor = TlsAcceptor::new(chain, key, None).map_err(io::Error::other)?;
    let pin = tls::parse_fingerprint(acceptor.fingerprint()).map_err(io::Error::other)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let server = thread::spawn(move || -> io::Result<TlsTransport> {
        let (s, _) = listener.accept()?;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut t = acceptor.accept(s, deadline).map_err(to_io)?;
        t.recv_hello(64).map_err(to_io)?;
        t.set_deadline(None)?;
        t.set_read_ahead(true);
        Ok(t)
    });
    let settings = ClientSettings::new(ServerCheck::Pin(pin), None).map_err(to_io)?;
    let client = tls::connect_with(&addr, &settings, &0u32.to_le_bytes()).map_err(to_io);
    let server = server
        .join()
        .map_err(|_| io::Error::other("tls floor server thread panicked"))?;
    Ok((client?, server?))
}

/// A connected TCP pair whose client side goes through a shaping relay (none for `loopback`): (client, server,
/// the relay, which must outlive the pair).
pub(crate) fn tcp_pair_via(shape: &LinkShape) -> io::Result<(TcpTransport, TcpTransport, Option<Relay>)> {
    if shape.direct {
        let (a, b) = tcp_pair()?;
        return Ok((a, b, None));
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let relay = Relay::start("127.0.0.1:0", &listener.local_addr()?.to_string(), shape)?;
    let client = TcpStream::connect(relay.local_addr())?;
    let (server, _) = listener.accept()?;
    Ok((
        TcpTransport::from_stream(client)?,
        TcpTransport::from_stream(server)?,
        Some(relay),
    ))
}

/// A connected TCP pair across a packet-level wire: the server side accepted inside the wire's namespace, the client
/// side in this one; (client, server). TCP runs end to end, with the kernel's own windows.
pub(crate) fn tcp_pair_across(wire: &Wire) -> io::Result<(TcpTransport, TcpTransport)> {
    let far = wire.far_addr();
    let ns = std::fs::File::open(format!("/run/netns/{}", wire.netns_name()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let server = thread::spawn(move || -> io::Result<TcpStream> {
        crate::sys::enter_netns(&ns)?;
        let listener = TcpListener::bind((far, 0))?;
        let _ = tx.send(listener.local_addr()?.port());
        Ok(listener.accept()?.0)
    });
    let port = rx
        .recv()
        .map_err(|_| io::Error::other("the far end could not listen"))?;
    let client = TcpStream::connect((far, port))?;
    let server = server
        .join()
        .map_err(|_| io::Error::other("far end thread panicked"))??;
    Ok((TcpTransport::from_stream(client)?, TcpTransport::from_stream(server)?))
}

/// Round trips of a 64-byte request/response across a packet-level wire of `shape`, median µs.
pub fn wire_pingpong_us(shape: &LinkShape, iters: usize) -> io::Result<f64> {
    let wire = Wire::start(shape)?;
    let (a, b) = tcp_pair_across(&wire)?;
    pingpong(a, b, iters)
}

/// One-way bulk throughput of one TCP connection across a packet-level wire of `shape` (the kernel's windows and
/// congestion control at the shape's RTT), GB/s (1e9).
pub fn wire_bulk_gbps(shape: &LinkShape, total_bytes: usize) -> io::Result<f64> {
    let wire = Wire::start(shape)?;
    let (a, b) = tcp_pair_across(&wire)?;
    bulk(a, b, total_bytes)
}

/// Aggregate one-way throughput of `streams` TCP connections sending `total_bytes` between them across a wire of
/// `shape`, GB/s: how far several connections get where one is held back by its window (long fat links).
pub fn wire_bulk_parallel_gbps(shape: &LinkShape, total_bytes: usize, streams: usize) -> io::Result<f64> {
    let wire = Wire::start(shape)?;
    let streams = streams.clamp(1, 64);
    let mut pairs = Vec::new();
    for _ in 0..streams {
        pairs.push(tcp_pair_across(&wire)?);
    }
    let each = total_bytes.div_ceil(streams);
    let t0 = Instant::now();
    let runs: Vec<_> = pairs
        .into_iter()
        .map(|(a, b)| thread::spawn(move || bulk(a, b, each)))
        .collect();
    for r in runs {
        r.join().map_err(|_| io::Error::other("stream thread panicked"))??;
    }
    Ok((each * streams) as f64 / t0.elapsed().as_secs_f64() / 1e9)
}

/// A connected shared-memory pair through a private rendezvous socket: (client, server).
pub(crate) fn shm_pair(config: &ShmConfig) -> io::Result<(ShmTransport, ShmTransport)> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path: PathBuf = std::env::temp_dir().join(format!(
        "vgpu-floor-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let server = thread::spawn(move || -> io::Result<ShmTransport> {
        let (mut s, _) = listener.accept()?;
        crate::read_raw_hello(&mut s, 64)?;
        ShmTransport::accept_with(s, config_spin()).map_err(to_io)
    });
    let client = shm::connect_with(&path, &0u32.to_le_bytes(), config).map_err(to_io);
    let server = server
        .join()
        .map_err(|_| io::Error::other("shm floor server thread panicked"))?;
    let _ = std::fs::remove_file(&path);
    Ok((client?, server?))
}

fn config_spin() -> std::time::Duration {
    ShmConfig::from_env().unwrap_or_default().spin
}

fn pingpong<T: Transport + 'static>(mut a: T, mut b: T, iters: usize) -> io::Result<f64> {
    let iters = iters.max(1);
    let warmup = (iters / 10).clamp(1, 1000);
    let echo = thread::spawn(move || -> Result<(), TransportError> {
        let mut buf = [0u8; PING];
        for _ in 0..iters + warmup {
            b.recv_exact(&mut buf)?;
            b.send(&[&buf])?;
        }
        Ok(())
    });
    let msg = [0x5au8; PING];
    let mut back = [0u8; PING];
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters + warmup {
        let t0 = Instant::now();
        a.send(&[&msg]).map_err(to_io)?;
        a.recv_exact(&mut back).map_err(to_io)?;
        if i >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    echo.join()
        .map_err(|_| io::Error::other("echo thread panicked"))?
        .map_err(to_io)?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn bulk<T: Transport + 'static>(mut a: T, mut b: T, total: usize) -> io::Result<f64> {
    let total = total.max(1);
    let sink = thread::spawn(move || -> Result<(), TransportError> {
        let mut buf = vec![0u8; BULK_PIECE];
        let mut left = total;
        while left > 0 {
            let n = left.min(BULK_PIECE);
            b.recv_exact(&mut buf[..n])?;
            left -= n;
        }
        b.send(&[&[1u8]])
    });
    let data = vec![0xa5u8; BULK_PIECE.min(total)];
    let t0 = Instant::now();
    let mut left = total;
    while left > 0 {
        let n = left.min(data.len());
        a.send(&[&data[..n]]).map_err(to_io)?;
        left -= n;
    }
    let mut ack = [0u8; 1];
    a.recv_exact(&mut ack).map_err(to_io)?;
    let secs = t0.elapsed().as_secs_f64();
    sink.join()
        .map_err(|_| io::Error::other("sink thread panicked"))?
        .map_err(to_io)?;
    Ok(total as f64 / secs / 1e9)
}

/// Round trips of a 64-byte request/response over loopback TCP with TCP_NODELAY, median µs.
pub fn tcp_pingpong_us(iters: usize) -> io::Result<f64> {
    let (a, b) = tcp_pair()?;
    pingpong(a, b, iters)
}

/// One-way bulk throughput over one loopback TCP connection, GB/s (1e9).
pub fn tcp_bulk_gbps(total_bytes: usize) -> io::Result<f64> {
    let (a, b) = tcp_pair()?;
    bulk(a, b, total_bytes)
}

/// A TLS connection's set-up over loopback (connect, handshake, first bytes both ways), median µs of `n`.
pub fn tls_connect_us(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, n: usize) -> io::Result<f64> {
    let acceptor = std::sync::Arc::new(TlsAcceptor::new(chain, key, None).map_err(io::Error::other)?);
    let pin = tls::parse_fingerprint(acceptor.fingerprint()).map_err(io::Error::other)?;
    let settings = ClientSettings::new(ServerCheck::Pin(pin), None).map_err(to_io)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let n = n.max(1);
    let server = thread::spawn(move || -> io::Result<()> {
        for _ in 0..n {
            let (s, _) = listener.accept()?;
            let mut t = acceptor
                .accept(s, Instant::now() + std::time::Duration::from_secs(10))
                .map_err(to_io)?;
            t.recv_hello(64).map_err(to_io)?;
            t.set_deadline(None)?;
            t.send(&[&[1u8]]).map_err(to_io)?;
        }
        Ok(())
    });
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut c = tls::connect_with(&addr, &settings, &0u32.to_le_bytes()).map_err(to_io)?;
        let mut one = [0u8; 1];
        c.recv_exact(&mut one).map_err(to_io)?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    server
        .join()
        .map_err(|_| io::Error::other("tls connect server thread panicked"))??;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Round trips of a 64-byte request/response over loopback TLS (the server presents `chain`/`key`), median µs.
pub fn tls_pingpong_us(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    iters: usize,
) -> io::Result<f64> {
    let (a, b) = tls_pair(chain, key)?;
    pingpong(a, b, iters)
}

/// One-way bulk throughput over one loopback TLS connection, GB/s (1e9).
pub fn tls_bulk_gbps(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    total_bytes: usize,
) -> io::Result<f64> {
    let (a, b) = tls_pair(chain, key)?;
    bulk(a, b, total_bytes)
}

/// Round trips of a 64-byte request/response through a link shape (the relay on loopback), median µs.
pub fn link_pingpong_us(shape: &LinkShape, iters: usize) -> io::Result<f64> {
    let (a, b, _relay) = tcp_pair_via(shape)?;
    pingpong(a, b, iters)
}

/// One-way bulk throughput of one TCP connection through a link shape, GB/s (1e9).
pub fn link_bulk_gbps(shape: &LinkShape, total_bytes: usize) -> io::Result<f64> {
    let (a, b, _relay) = tcp_pair_via(shape)?;
    bulk(a, b, total_bytes)
}

/// Round trips of a 64-byte request/response over the shared-memory transport (two threads), median µs.
pub fn shm_pingpong_us(iters: usize) -> io::Result<f64> {
    let (a, b) = shm_pair(&ShmConfig::from_env().map_err(to_io)?)?;
    pingpong(a, b, iters)
}

/// One-way bulk throughput over the shared-memory transport (two threads), GB/s (1e9).
pub fn shm_bulk_gbps(total_bytes: usize) -> io::Result<f64> {
    let (a, b) = shm_pair(&ShmConfig::from_env().map_err(to_io)?)?;
    bulk(a, b, total_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_floors_follow_the_shape() {
        let shape = LinkShape::parse("400m-2ms").expect("shape");
        let us = link_pingpong_us(&shape, 20).expect("pingpong");
        assert!((2000.0..6000.0).contains(&us), "2 ms link: pingpong {us} µs");
        // 50 MB/s: 8 MiB in ~0.17 s; never above the rate, and not far below it even on a loaded machine.
        let g = link_bulk_gbps(&shape, 8 << 20).expect("bulk");
        assert!((0.020..=0.0525).contains(&g), "400 Mb/s link: bulk {g} GB/s");
    }

    #[test]
    fn floors_give_plausible_numbers() {
        for (name, us) in [("tcp", tcp_pingpong_us(200)), ("shm", shm_pingpong_us(200))] {
            let us = us.expect(name);
            assert!(us > 0.0 && us < 50_000.0, "{name} pingpong {us} µs");
        }
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("rcgen");
        let key = || PrivateKeyDer::try_from(ck.key_pair.serialize_der()).expect("key");
        let chain = || vec![ck.cert.der().clone()];
        let us = tls_pingpong_us(chain(), key(), 200).expect("tls");
        assert!(us > 0.0 && us < 50_000.0, "tls pingpong {us} µs");
        for (name, g) in [
            ("tcp", tcp_bulk_gbps(32 << 20)),
            ("shm", shm_bulk_gbps(32 << 20)),
            ("tls", tls_bulk_gbps(chain(), key(), 32 << 20)),
        ] {
            let g = g.expect(name);
            assert!(g > 0.0 && g < 1000.0, "{name} bulk {g} GB/s");
        }
    }
}
