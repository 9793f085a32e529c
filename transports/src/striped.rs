//! Striped channels: one channel's byte stream carried by its main transport plus extra connections ("lanes") of the
//! same kind (TCP, or TLS with its own encryption per lane), so that a bulk transfer uses several streams, and cores,
//! at once (one TCP stream tops out below a fat link's rate, one TLS stream at one core's cipher rate; issue 21).
//!
//! Every `send` becomes segments, each announced on the main transport by a 4-byte word: bit 31 clear, an inline
//! segment whose `len` bytes follow on the main transport; bit 31 set, a striped segment whose bytes are cut into
//! pieces of `STRIPE_CHUNK` (or, with fine pieces agreed at the join, `len / streams` rounded up to 64 KiB when that
//! is smaller, so a short segment still uses every stream), piece `i` going to stream `i % streams` (stream 0 is the
//! main transport, stream `k` lane `k - 1`). Sends below `stripe_min()` are one inline segment; a part at least that long is striped, the small parts
//! around it inline. The receiver knows from the word where each byte is, so it reads any range of a striped
//! segment straight into the caller's buffer from all streams at once, whatever sizes it asks for.
//!
//! Both ends switch to this framing at one agreed point (after the reply that joined the lanes); the lanes carry
//! nothing but segment bytes. A lane that fails fails the channel, as the main transport would.

use std::io;

use vgpu_dataplane::transport::{Transport, TransportError};

use crate::protocol;

/// By default a send at least this long has its large parts striped over the lanes (`VGPU_STRIPE_MIN_KB` changes it).
pub const STRIPE_MIN: usize = 2 << 20;
/// The smallest and largest `VGPU_STRIPE_MIN_KB` accepted: below one piece striping only adds framing.
const STRIPE_MIN_RANGE_KB: std::ops::RangeInclusive<usize> = (STRIPE_CHUNK >> 10)..=(1 << 20);

/// The striping threshold this process uses: `VGPU_STRIPE_MIN_KB` (512..=1048576) where set and valid, else
/// `STRIPE_MIN`. Each end decides for its own sends; a receiver reads any framing, so the two may differ.
pub fn stripe_min() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MIN.get_or_init(|| {
        parse_stripe_min(std::env::var("VGPU_STRIPE_MIN_KB").ok().as_deref()).unwrap_or_else(|why| {
            tracing::warn!("{why}; striping sends from {} KiB", STRIPE_MIN >> 10);
            STRIPE_MIN
        })
    })
}

/// `VGPU_STRIPE_MIN_KB`'s value in bytes (unset: `STRIPE_MIN`), or why it is refused.
pub fn parse_stripe_min(value: Option<&str>) -> Result<usize, String> {
    let Some(text) = value else { return Ok(STRIPE_MIN) };
    match text.trim().parse::<usize>() {
        Ok(kb) if STRIPE_MIN_RANGE_KB.contains(&kb) => Ok(kb << 10),
        _ => Err(format!(
            "VGPU_STRIPE_MIN_KB={text:?} is not a whole number of KiB from {} to {}",
            STRIPE_MIN_RANGE_KB.start(),
            STRIPE_MIN_RANGE_KB.end()
        )),
    }
}
/// The piece of a striped segment each stream carries in turn.
pub const STRIPE_CHUNK: usize = 512 << 10;
/// With fine pieces, the smallest piece (and the unit pieces are rounded up to).
const FINE_UNIT: usize = 64 << 10;
/// The largest segment (its length must fit the header's 31 bits); longer parts are several segments.
const MAX_SEGMENT: usize = 1 << 30;
/// Most lanes one channel may have besides its main transport.
pub const MAX_LANES: usize = 15;
const STRIPED: u32 = 1 << 31;

/// The segment being received: how much of it is left, where the next byte is in it, and whether it is striped.
#[derive(Default)]
struct Incoming {
    striped: bool,
    len: usize,
    at: usize,
}

/// One lane: a connection of the channel's own kind, set up (and welcomed) like a channel.
pub type Lane = Box<dyn Transport>;

/// A channel striped over its main transport and `lanes`.
pub struct Striped<M> {
    main: M,
    lanes: Vec<Lane>,
    incoming: Incoming,
    /// Segments shorter than `STRIPE_CHUNK` per stream are cut into one piece per stream (both ends agree).
    fine: bool,
}

impl<M: Transport> Striped<M> {
    /// Stripes `main` over `lanes` (at most `MAX_LANES`), each already connected to the peer's side of the same
    /// channel, in lane order, and of `main`'s kind. A lane's socket read timeout, if the caller set one, bounds how
    /// long a read waits for bytes its segment announced (a server's guard against a client that stops
    /// mid-transfer).
    pub fn new(main: M, lanes: Vec<Lane>) -> io::Result<Striped<M>> {
        if lanes.is_empty() || lanes.len() > MAX_LANES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a striped channel has 1 to {MAX_LANES} lanes, not {}", lanes.len()),
            ));
        }
        if let Some(odd) = lanes.iter().find(|l| l.kind() != main.kind()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a {} lane beside a {} channel", odd.kind(), main.kind()),
            ));
        }
        Ok(Striped {
            main,
            lanes,
            incoming: Incoming::default(),
            fine: false,
        })
    }

    /// Cuts short segments into one piece per stream (`LANES_FINE`, agreed by both ends at the join) when `fine`.
    pub fn fine_pieces(mut self, fine: bool) -> Striped<M> {
        self.fine = fine;
        self
    }

    /// The piece a striped segment of `len` bytes is cut into.
    fn piece(&self, len: usize) -> usize {
        if !self.fine {
            return STRIPE_CHUNK;
        }
        len.div_ceil(self.streams())
            .next_multiple_of(FINE_UNIT)
            .clamp(FINE_UNIT, STRIPE_CHUNK)
    }

    /// Streams the bytes move on: the main transport and the lanes.
    fn streams(&self) -> usize {
        self.lanes.len() + 1
    }

    fn send_inline(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let word = (len as u32).to_le_bytes();
        let mut all = Vec::with_capacity(parts.len() + 1);
        all.push(&word[..]);
        all.extend_from_slice(parts);
        self.main.send(&all)
    }

    fn send_striped(&mut self, data: &[u8]) -> Result<(), TransportError> {
        for segment in data.chunks(MAX_SEGMENT) {
            let word = (segment.len() as u32 | STRIPED).to_le_bytes();
            self.main.send(&[&word])?;
            let streams = self.streams();
            let piece = self.piece(segment.len());
            let pieces = segment.len().div_ceil(piece);
            let mut first_error = None;
            std::thread::scope(|scope| {
                // Only lanes with a piece of this segment get a writer (a 1 MiB segment is two pieces: one lane).
                let lanes: Vec<_> = self
                    .lanes
                    .iter_mut()
                    .enumerate()
                    .take(pieces.saturating_sub(1))
                    .map(|(k, lane)| {
                        scope.spawn(move || -> Result<(), TransportError> {
                            for part in segment.chunks(piece).skip(k + 1).step_by(streams) {
                                lane.send(&[part])?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for part in segment.chunks(piece).step_by(streams) {
                    if let Err(e) = self.main.send(&[part]) {
                        first_error = Some(e);
                        break;
                    }
                }
                for lane in lanes {
                    let r = lane.join().unwrap_or_else(|_| Err(protocol("lane writer panicked")));
                    if let (Err(e), None) = (r, &first_error) {
                        first_error = Some(e);
                    }
                }
            });
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of the current striped segment from offset `at`, every stream at once.
    fn recv_striped(&mut self, buf: &mut [u8], at: usize) -> Result<(), TransportError> {
        let streams = self.streams();
        let chunk_len = self.piece(self.incoming.len);
        let mut pieces: Vec<Vec<&mut [u8]>> = (0..streams).map(|_| Vec::new()).collect();
        let mut rest = buf;
        let mut pos = at;
        while !rest.is_empty() {
            let chunk = pos / chunk_len;
            let take = ((chunk + 1) * chunk_len - pos).min(rest.len());
            let (piece, tail) = rest.split_at_mut(take);
            pieces[chunk % streams].push(piece);
            rest = tail;
            pos += take;
        }
        let mut on_main = std::mem::take(&mut pieces[0]);
        let busy_lanes = pieces.iter().skip(1).filter(|p| !p.is_empty()).count();
        if busy_lanes == 0 {
            return on_main.iter_mut().try_for_each(|p| self.main.recv_exact(p));
        }
        let mut result = Ok(());
        std::thread::scope(|scope| {
            let readers: Vec<_> = self
                .lanes
                .iter_mut()
                .zip(pieces.into_iter().skip(1))
                .filter(|(_, p)| !p.is_empty())
                .map(|(lane, mut mine)| {
                    scope.spawn(move || -> Result<(), TransportError> {
                        mine.iter_mut().try_for_each(|p| lane.recv_exact(p))
                    })
                })
                .collect();
            result = on_main.iter_mut().try_for_each(|p| self.main.recv_exact(p));
            for reader in readers {
                let r = reader.join().unwrap_or_else(|_| Err(protocol("lane reader panicked")));
                if let (Err(e), Ok(())) = (r, &result) {
                    result = Err(lane_error(e));
                }
            }
        });
        result
    }
}

/// A lane read that timed out is a peer that stopped mid-transfer; anything else as the lane reported it.
fn lane_error(e: TransportError) -> TransportError {
    match e {
        TransportError::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            protocol("a lane stopped in the middle of a striped transfer")
        }
        other => other,
    }
}

impl<M: Transport> Transport for Striped<M> {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let stripe_min = stripe_min();
        if total < stripe_min {
            return self.send_inline(parts);
        }
        let mut small_from = 0;
        for (i, part) in parts.iter().enumerate() {
            if part.len() >= stripe_min {
                if small_from < i {
                    self.send_inline(&parts[small_from..i])?;
                }
                self.send_striped(part)?;
                small_from = i + 1;
            }
        }
        if small_from < parts.len() {
            self.send_inline(&parts[small_from..])?;
        }
        Ok(())
    }

    fn recv_exact(&mut self, mut buf: &mut [u8]) -> Result<(), TransportError> {
        while !buf.is_empty() {
            if self.incoming.at == self.incoming.len {
                let mut word = [0u8; 4];
                self.main.recv_exact(&mut word)?;
                let word = u32::from_le_bytes(word);
                let len = (word & !STRIPED) as usize;
                if len > MAX_SEGMENT {
                    return Err(protocol(format!("striped channel: segment of {len} bytes announced")));
                }
                self.incoming = Incoming {
                    striped: word & STRIPED != 0,
                    len,
                    at: 0,
                };
                continue;
            }
            let take = (self.incoming.len - self.incoming.at).min(buf.len());
            let (now, later) = std::mem::take(&mut buf).split_at_mut(take);
            if self.incoming.striped {
                self.recv_striped(now, self.incoming.at)?;
            } else {
                self.main.recv_exact(now)?;
            }
            self.incoming.at += take;
            buf = later;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.main.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp::TcpTransport;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn the_stripe_threshold_setting_is_checked() {
        assert_eq!(parse_stripe_min(None), Ok(STRIPE_MIN));
        assert_eq!(parse_stripe_min(Some("1024")), Ok(1 << 20));
        assert_eq!(parse_stripe_min(Some(" 512 ")), Ok(STRIPE_CHUNK));
        for bad in ["511", "0", "1048577", "1M", "", "-4"] {
            let why = parse_stripe_min(Some(bad)).expect_err(bad);
            assert!(why.contains("VGPU_STRIPE_MIN_KB"), "{why}");
        }
    }

    fn lane(s: TcpStream) -> Lane {
        Box::new(TcpTransport::from_stream(s).expect("tcp"))
    }

    /// `n` connected pairs over loopback: (client ends, server ends).
    fn sockets(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        (0..n)
            .map(|_| {
                let c = TcpStream::connect(addr).expect("connect");
                (c, listener.accept().expect("accept").0)
            })
            .unzip()
    }

    /// A striped pair over loopback: the client's and the server's end, each with `lanes` lanes, and a clone of each
    /// of the server's lane sockets.
    fn pair(lanes: usize) -> (Striped<TcpTransport>, Striped<TcpTransport>, Vec<TcpStream>) {
        let (mut client, mut server) = sockets(lanes + 1);
        let main_c = TcpTransport::from_stream(client.remove(0)).expect("tcp");
        let main_s = TcpTransport::from_stream(server.remove(0)).expect("tcp");
        let clones = server.iter().map(|s| s.try_clone().expect("clone")).collect();
        for s in &server {
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        }
        (
            Striped::new(main_c, client.into_iter().map(lane).collect()).expect("striped"),
            Striped::new(main_s, server.into_iter().map(lane).collect()).expect("striped"),
            clones,
        )
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 13) as u8))
            .collect()
    }

    #[test]
    fn small_and_large_sends_arrive_whole_and_in_order_whatever_the_read_sizes() {
        let (mut a, mut b, _) = pair(3);
        let big = pattern(STRIPE_CHUNK * 9 + 12345, 7);
        let header = pattern(16, 1);
        let body = pattern(40, 2);
        let small = pattern(1000, 3);
        let expect: Vec<u8> = [&header[..], &body[..], &big[..], &small[..], &small[..100]].concat();
        let sender = std::thread::spawn(move || {
            a.send(&[&header, &body, &big, &small]).expect("send");
            a.send(&[&small[..100]]).expect("send");
            a
        });
        // Reads of odd sizes straddle segment and chunk boundaries.
        let mut got = vec![0u8; expect.len()];
        let mut at = 0;
        for (i, size) in [16usize, 40, 3, 700_001, 1 << 20, 77, 3 << 20]
            .iter()
            .cycle()
            .enumerate()
        {
            if at == got.len() || i > 10_000 {
                break;
            }
            let end = (at + size).min(got.len());
            b.recv_exact(&mut got[at..end]).expect("recv");
            at = end;
        }
        sender.join().expect("sender");
        assert_eq!(at, expect.len());
        assert!(got == expect, "bytes differ");
    }

    #[test]
    fn segments_of_fewer_pieces_than_streams_leave_the_last_lanes_idle() {
        // 8 streams, segments of 4 and 5 pieces: lanes 4..7 (and 5..7) carry nothing and get no writer.
        let (mut a, mut b, _) = pair(7);
        let four = pattern(4 * STRIPE_CHUNK, 11);
        let five = pattern(4 * STRIPE_CHUNK + 1, 12);
        let expect: Vec<u8> = [&four[..], &five[..], &four[..]].concat();
        let sender = std::thread::spawn(move || {
            a.send(&[&four]).expect("send");
            a.send(&[&five]).expect("send");
            a.send(&[&four]).expect("send");
            a
        });
        let mut got = vec![0u8; expect.len()];
        for piece in got.chunks_mut(333_333) {
            b.recv_exact(piece).expect("recv");
        }
        sender.join().expect("sender");
        assert!(got == expect, "bytes differ");
    }

    #[test]
    fn a_striped_segment_uses_every_lane() {
        let (mut a, b, lanes) = pair(2);
        let data = pattern(STRIPE_CHUNK * 6, 9);
        let sender = std::thread::spawn(move || a.send(&[&data]).map(|_| a));
        // Each lane carries its own chunks: lane 0 chunks 1 and 4, lane 1 chunks 2 and 5.
        let expect = pattern(STRIPE_CHUNK * 6, 9);
        for (k, mut lane) in lanes.into_iter().enumerate() {
            let mut got = vec![0u8; 2 * STRIPE_CHUNK];
            lane.read_exact(&mut got).expect("lane read");
            let first = (k + 1) * STRIPE_CHUNK;
            let second = (k + 4) * STRIPE_CHUNK;
            assert!(got[..STRIPE_CHUNK] == expect[first..first + STRIPE_CHUNK]);
            assert!(got[STRIPE_CHUNK..] == expect[second..second + STRIPE_CHUNK]);
        }
        drop(b);
        let _ = sender.join();
    }

    #[test]
    fn fine_pieces_spread_a_short_segment_over_every_stream_and_read_back_whole() {
        // 4 streams, a 1 MiB segment: 256 KiB a stream with fine pieces (two 512 KiB pieces, two streams, without).
        let (a, b, lanes) = pair(3);
        let (mut a, b) = (a.fine_pieces(true), b.fine_pieces(true));
        assert_eq!(
            (a.piece(1 << 20), a.piece(100), a.piece(64 << 20)),
            (256 << 10, FINE_UNIT, STRIPE_CHUNK)
        );
        assert_eq!(
            a.piece(5 * FINE_UNIT),
            2 * FINE_UNIT,
            "320 KiB over 4 streams: rounded up to 128 KiB"
        );
        let data = pattern(1 << 20, 21);
        // Striped as a send of at least the threshold would be (this one is below the default 2 MiB).
        let sender = std::thread::spawn(move || a.send_striped(&data).map(|_| a));
        let expect = pattern(1 << 20, 21);
        for (k, mut lane) in lanes.into_iter().enumerate() {
            let mut got = vec![0u8; 256 << 10];
            lane.read_exact(&mut got).expect("each lane carries one piece");
            let at = (k + 1) * (256 << 10);
            assert!(got == expect[at..at + (256 << 10)], "lane {k}");
        }
        drop(b);
        let _ = sender.join();
        // End to end, sizes around the piece boundaries, read in odd pieces.
        let (a, b, _) = pair(3);
        let (mut a, mut b) = (a.fine_pieces(true), b.fine_pieces(true));
        let sizes = [
            STRIPE_MIN / 2,
            5 * FINE_UNIT + 1,
            4 * STRIPE_CHUNK - 1,
            4 * STRIPE_CHUNK + 7,
        ];
        let parts: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(n, 30 + i as u8))
            .collect();
        let expect = parts.concat();
        let sender = std::thread::spawn(move || {
            for p in &parts {
                a.send_striped(p).expect("send");
            }
            a
        });
        let mut got = vec![0u8; expect.len()];
        for piece in got.chunks_mut(99_999) {
            b.recv_exact(piece).expect("recv");
        }
        sender.join().expect("sender");
        assert!(got == expect, "bytes differ");
    }

    #[test]
    fn a_lane_that_stops_mid_segment_fails_the_read_in_time() {
        let (mut client, mut server) = sockets(2);
        let mut main_c = client.remove(0);
        let main_s = server.remove(0);
        server[0]
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let lanes = server.into_iter().map(lane).collect();
        let mut b = Striped::new(TcpTransport::from_stream(main_s).expect("tcp"), lanes).expect("striped");
        // A striped segment of two chunks announced; only the main transport's chunk ever comes.
        main_c
            .write_all(&((2 * STRIPE_CHUNK) as u32 | STRIPED).to_le_bytes())
            .expect("write");
        main_c.write_all(&vec![1u8; STRIPE_CHUNK]).expect("write");
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 2 * STRIPE_CHUNK];
        let err = b.recv_exact(&mut buf).expect_err("a silent lane must fail the read");
        assert!(matches!(err, TransportError::Protocol(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn an_oversized_segment_word_is_refused() {
        let (mut client, mut server) = sockets(2);
        let mut main_c = client.remove(0);
        let main_s = server.remove(0);
        let lanes = server.into_iter().map(lane).collect();
        let mut b = Striped::new(TcpTransport::from_stream(main_s).expect("tcp"), lanes).expect("s");
        main_c.write_all(&(STRIPED | 0x7fff_ffff).to_le_bytes()).expect("write");
        let mut buf = [0u8; 8];
        assert!(matches!(b.recv_exact(&mut buf), Err(TransportError::Protocol(_))));
    }

    /// A transport of another kind, for the kind rule.
    struct Other;
    impl Transport for Other {
        fn send(&mut self, _: &[&[u8]]) -> Result<(), TransportError> {
            Ok(())
        }
        fn recv_exact(&mut self, _: &mut [u8]) -> Result<(), TransportError> {
            Err(TransportError::Closed)
        }
        fn kind(&self) -> &'static str {
            "tls"
        }
    }

    #[test]
    fn lane_counts_outside_the_bounds_and_lanes_of_another_kind_are_refused() {
        let (a, _b, _) = pair(1);
        let Striped { main, .. } = a;
        assert!(Striped::new(main, Vec::new()).is_err());
        let (client, _server) = sockets(1);
        let main = TcpTransport::from_stream(client.into_iter().next().expect("one")).expect("tcp");
        let err = Striped::new(main, vec![Box::new(Other) as Lane])
            .err()
            .expect("a tls lane beside tcp");
        assert!(err.to_string().contains("a tls lane beside a tcp channel"), "{err}");
    }
}
