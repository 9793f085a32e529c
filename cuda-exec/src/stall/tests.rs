//! The stall rules on a real loopback TCP connection: idle waits and the server's own work are never cut; a
//! frame that starts and stops is, within the timeout and a watchdog tick.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use vgpu_transports::tcp::TcpTransport;

const TIMEOUT: Duration = Duration::from_millis(300);

/// (raw client socket, guarded server transport, the watchdog).
fn pair() -> (TcpStream, Guarded<TcpTransport>, Arc<StallWatch>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let fd = server.as_raw_fd();
    let watch = StallWatch::new(TIMEOUT);
    let w = watch.clone();
    std::thread::spawn(move || w.run());
    let t = TcpTransport::from_stream(server).expect("transport");
    let guarded = watch.guard(t, fd);
    (client, guarded, watch)
}

fn header(len: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h
}

#[test]
fn an_idle_client_between_frames_is_never_cut() {
    let (mut c, mut s, _w) = pair();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(TIMEOUT * 4);
        c.write_all(&header(0)).expect("write");
        c
    });
    let mut h = [0u8; HEADER];
    s.recv_exact(&mut h).expect("a late frame is still served");
    assert_eq!(h, header(0));
    drop(sender.join().expect("sender"));
}

#[test]
fn a_frame_that_stops_in_its_header_or_its_tail_is_cut() {
    for sent in [5usize, HEADER + 10] {
        let (mut c, mut s, _w) = pair();
        let mut bytes = header(1000).to_vec();
        bytes.extend_from_slice(&[7u8; 1000]);
        c.write_all(&bytes[..sent]).expect("write");
        let t0 = Instant::now();
        let mut h = [0u8; HEADER];
        let r = s.recv_exact(&mut h).and_then(|()| {
            let mut body = [0u8; 1000];
            s.recv_exact(&mut body)
        });
        let err = r.expect_err("a stalled frame must end the channel");
        let took = t0.elapsed();
        assert!(err.to_string().contains("stalled"), "{err}");
        assert!(took >= TIMEOUT && took < TIMEOUT * 3, "cut after {took:?}");
        drop(c);
    }
}

#[test]
fn a_slow_transfer_that_keeps_moving_is_not_cut() {
    let (mut c, mut s, _w) = pair();
    let len = 3 * PIECE as u32;
    let sender = std::thread::spawn(move || {
        c.write_all(&header(len)).expect("header");
        for i in 0..3u8 {
            for _ in 0..4 {
                std::thread::sleep(TIMEOUT / 8);
                c.write_all(&vec![i; PIECE / 4]).expect("quarter piece");
            }
        }
        c
    });
    let mut h = [0u8; HEADER];
    s.recv_exact(&mut h).expect("header");
    let mut tail = vec![0u8; len as usize];
    s.recv_exact(&mut tail).expect("slow but steady is fine");
    assert!(tail[..PIECE].iter().all(|&b| b == 0) && tail[2 * PIECE..].iter().all(|&b| b == 2));
    drop(sender.join().expect("sender"));
}

#[test]
fn a_slow_reader_of_a_large_reply_that_keeps_reading_is_not_cut() {
    // A 3-piece reply read a quarter piece every eighth of the timeout: 1.5 timeouts in all, but every piece within
    // one (a send timed as a whole would be cut).
    let (mut c, mut s, _w) = pair();
    let reply: Vec<u8> = (0..3 * PIECE).map(|i| (i / PIECE) as u8).collect();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; 3 * PIECE];
        for quarter in got.chunks_mut(PIECE / 4) {
            std::thread::sleep(TIMEOUT / 8);
            c.read_exact(quarter).expect("quarter piece");
        }
        got
    });
    s.send(&[&reply[..10], &reply[10..]]).expect("slow but steady is fine");
    let got = reader.join().expect("reader");
    assert!(got == reply, "the reply arrived changed");
    assert!(!s.entry.cut.load(Ordering::Acquire));
}

#[test]
fn the_servers_own_work_between_reads_does_not_count() {
    let (mut c, mut s, watch) = pair();
    let mut frame = header(8).to_vec();
    frame.extend_from_slice(&[1u8; 8]);
    c.write_all(&frame).expect("write");
    let mut h = [0u8; HEADER];
    s.recv_exact(&mut h).expect("header");
    // A long synchronize on the GPU between the header and the body: the client is not waiting on anything.
    std::thread::sleep(TIMEOUT * 3);
    let mut body = [0u8; 8];
    s.recv_exact(&mut body).expect("body");
    assert_eq!(body, [1u8; 8]);
    assert_eq!(watch.watching(), 1);
    drop(s);
    assert_eq!(watch.watching(), 0, "a closed connection leaves the watch");
}

/// A transport whose direct device transfers take `0` each (nothing else is used).
struct SlowDevice(Duration);

impl Transport for SlowDevice {
    fn send(&mut self, _: &[&[u8]]) -> Result<(), TransportError> {
        Ok(())
    }
    fn recv_exact(&mut self, _: &mut [u8]) -> Result<(), TransportError> {
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "slow-device"
    }
    fn moves_device_memory(&self) -> bool {
        true
    }
    fn recv_device(&mut self, _: u64, _: usize, _: &mut dyn FnMut(usize, &[u8])) -> Result<bool, TransportError> {
        std::thread::sleep(self.0);
        Ok(true)
    }
}

#[test]
fn a_direct_transfer_is_allowed_the_timeout_once_per_piece() {
    // 3 pieces moved by one call lasting twice the timeout: within its allowance, not cut; one piece taking as
    // long: cut (the watchdog marks the connection, whose socket it shuts down).
    for (pieces, cut) in [(3usize, false), (1, true)] {
        let (_c, s, watch) = pair();
        let fd = s.entry.fd;
        let mut g = watch.guard(SlowDevice(TIMEOUT * 2), fd);
        g.frame_left = (pieces * PIECE) as u64;
        let moved = g.recv_device(0, pieces * PIECE, &mut |_, _| {});
        assert!(matches!(moved, Ok(true)), "{moved:?}");
        assert_eq!(g.entry.cut.load(Ordering::Acquire), cut, "{pieces} piece(s)");
        assert_eq!(g.frame_left, 0);
    }
}
