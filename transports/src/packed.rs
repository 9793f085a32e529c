//! LZ4 compression of a channel's bulk data, for links slower than compression (`VGPU_COMPRESS=lz4`, negotiated
//! in the handshake with `CAP_PACKED`): wraps a transport so that every send travels as frames, and a frame of
//! compressible bulk data travels compressed.
//!
//! A frame is `[u32 LE wire_len][u32 LE raw_len]` then `wire_len` bytes: stored as is when the two lengths are
//! equal, LZ4 (block format) otherwise. A frame carries at most `UNIT` bytes of data: small sends are one stored
//! frame, large ones are cut into units. Whether a large send is compressed is decided once per send from a sample
//! (its first `SAMPLE` bytes): data that does not shrink by `WORTH` goes stored, at the cost of one sample. Each
//! unit is compressed on its own (no dictionary across frames), and one that does not shrink is stored. The
//! receiver checks every length before it allocates or decodes, and decodes into a buffer of at most `UNIT`.
//!
//! `Policy::Auto` (`VGPU_COMPRESS=auto`) also weighs the link, by measuring both ways on the channel's own large
//! sends (at least `MEASURE_MIN`): the bytes a compressed send and a stored send each moved per second, compression
//! included (exponentially weighted). A large send that compresses well goes compressed the first time, stored the
//! second, then the faster way, trying the slower way again now and then (the worse it did, the more rarely:
//! every `8 / (its rate ÷ the best)` large sends, at most 128), so the choice follows a link or data that changes.
//! Smaller sends go the faster way known (compressed while nothing is known).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use vgpu_dataplane::{Transport, TransportError};

/// Most data one frame carries.
pub const UNIT: usize = 1 << 20;
/// Sends below this are never sampled (their frames go stored).
const MIN_PACK: usize = 64 << 10;
/// What a large send's sample is.
const SAMPLE: usize = 64 << 10;
/// A sample must shrink at least to this fraction for the send to be compressed.
const WORTH: f64 = 0.85;
const HEADER: usize = 8;
/// Sends at least this large measure what each way achieves for `Policy::Auto` (smaller ones may fit in the socket
/// buffer and return at once).
const MEASURE_MIN: usize = 4 << 20;
/// `Policy::Auto` tries the slower way again after `EXPLORE / (its rate ÷ the faster one's)` large sends, at most
/// `EXPLORE_MAX`.
const EXPLORE: f64 = 8.0;
const EXPLORE_MAX: f64 = 128.0;

/// When a packed channel compresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Whenever the sample shrinks enough (`VGPU_COMPRESS=lz4`).
    Always,
    /// Where it is also measured to be faster on this channel (`VGPU_COMPRESS=auto`).
    Auto,
}

/// What `Policy::Auto` has measured: bytes per second of large sends each way (exponentially weighted), and the
/// large sends since the slower way was last tried.
#[derive(Debug, Default, Clone, Copy)]
struct Rates {
    packed: Option<f64>,
    stored: Option<f64>,
    since_explore: u32,
}

fn blend(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |o| 0.7 * o + 0.3 * new))
}

impl Rates {
    /// Whether a compressible send of `len` bytes goes compressed.
    fn choose(&mut self, len: usize) -> bool {
        let (packed, stored) = match (self.packed, self.stored) {
            (None, _) => return true,
            (Some(_), None) => return len < MEASURE_MIN,
            (Some(p), Some(s)) => (p, s),
        };
        let best = packed >= stored;
        if len < MEASURE_MIN {
            return best;
        }
        let worse = packed.min(stored) / packed.max(stored).max(1.0);
        let every = (EXPLORE / worse.max(EXPLORE / EXPLORE_MAX)).min(EXPLORE_MAX) as u32;
        self.since_explore += 1;
        if self.since_explore >= every {
            self.since_explore = 0;
            return !best;
        }
        best
    }

    /// A large send of `len` bytes took `secs`, compression included.
    fn record(&mut self, packed: bool, len: usize, secs: f64) {
        if len < MEASURE_MIN || secs <= 0.0 {
            return;
        }
        let rate = len as f64 / secs;
        if packed {
            self.packed = blend(self.packed, rate);
        } else {
            self.stored = blend(self.stored, rate);
        }
    }
}

/// What this process's packed channels moved: bytes before packing and on the wire, each way.
#[derive(Debug, Default)]
pub struct PackTotals {
    pub raw_sent: AtomicU64,
    pub wire_sent: AtomicU64,
    pub raw_received: AtomicU64,
    pub wire_received: AtomicU64,
}

/// The totals of every packed channel of this process.
pub static TOTALS: PackTotals = PackTotals {
    raw_sent: AtomicU64::new(0),
    wire_sent: AtomicU64::new(0),
    raw_received: AtomicU64::new(0),
    wire_received: AtomicU64::new(0),
};

/// The largest wire length a frame of `UNIT` bytes may have (LZ4's bound for incompressible input).
fn max_wire() -> usize {
    lz4_flex::block::get_maximum_output_size(UNIT)
}

/// A transport whose sends and receives are frames, compressed where that pays.
pub struct PackedTransport<T: Transport> {
    inner: T,
    policy: Policy,
    rates: Rates,
    /// Decoded bytes of the current frame not yet handed to `recv_exact`: `rx[rx_pos..rx_end]`.
    rx: Vec<u8>,
    rx_pos: usize,
    rx_end: usize,
    /// Stored bytes of the current frame still in the inner transport (read straight into the caller's buffer).
    rx_stored_left: usize,
    /// Compressed input, and compressed output, reused between frames.
    wire_in: Vec<u8>,
    wire_out: Vec<u8>,
    /// The data of a send gathered when it spans several parts and is to be compressed.
    gather: Vec<u8>,
    /// One output buffer per compressing thread (`pack_threads`), reused between sends.
    parallel_out: Vec<Vec<u8>>,
}

/// `unit` compressed into `out` (resized to fit): the compressed length, or `None` when it does not shrink.
fn compress_unit(unit: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    out.resize(lz4_flex::block::get_maximum_output_size(unit.len()), 0);
    lz4_flex::block::compress_into(unit, out)
        .ok()
        .filter(|&n| n < unit.len())
}

/// Threads that compress the units of one large send side by side (whole units each, at most 4): LZ4 runs well
/// under a fast link's rate on one core (~0.6 GB/s on token ids), so a send of several units uses several cores.
fn pack_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(4))
}

impl<T: Transport> PackedTransport<T> {
    pub fn new(inner: T) -> Self {
        Self::with_policy(inner, Policy::Always)
    }

    pub fn with_policy(inner: T, policy: Policy) -> Self {
        PackedTransport {
            inner,
            policy,
            rates: Rates::default(),
            rx: Vec::new(),
            rx_pos: 0,
            rx_end: 0,
            rx_stored_left: 0,
            wire_in: Vec::new(),
            wire_out: Vec::new(),
            gather: Vec::new(),
            parallel_out: Vec::new(),
        }
    }

    /// Memory the receiving side holds (its decode buffers), for the fuzzing harness's bound.
    pub fn held_bytes(&self) -> usize {
        self.rx.capacity() + self.wire_in.capacity()
    }

    /// The inner transport back.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn header(wire_len: usize, raw_len: usize) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..4].copy_from_slice(&(wire_len as u32).to_le_bytes());
        h[4..].copy_from_slice(&(raw_len as u32).to_le_bytes());
        h
    }

    /// Sends `parts` (at most `UNIT` bytes together) as one stored frame.
    fn send_stored(&mut self, parts: &[&[u8]], len: usize) -> Result<(), TransportError> {
        let header = Self::header(len, len);
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&header);
        all.extend_from_slice(parts);
        TOTALS.raw_sent.fetch_add(len as u64, Relaxed);
        TOTALS.wire_sent.fetch_add((len + HEADER) as u64, Relaxed);
        self.inner.send(&all)
    }

    /// Sends one compressed frame: `wire`, which decodes to `raw_len` bytes.
    fn send_packed(inner: &mut T, wire: &[u8], raw_len: usize) -> Result<(), TransportError> {
        TOTALS.raw_sent.fetch_add(raw_len as u64, Relaxed);
        TOTALS.wire_sent.fetch_add((wire.len() + HEADER) as u64, Relaxed);
        inner.send(&[&Self::header(wire.len(), raw_len), wire])
    }

    /// Sends one unit of data, compressed when `pack` and it shrinks, else stored.
    fn send_unit(&mut self, unit: &[u8], pack: bool) -> Result<(), TransportError> {
        if pack {
            if let Some(n) = compress_unit(unit, &mut self.wire_out) {
                return Self::send_packed(&mut self.inner, &self.wire_out[..n], unit.len());
            }
        }
        self.send_stored(&[unit], unit.len())
    }

    /// Sends whole units, compressing them on several threads at once when `pack` (each frame stands alone, so
    /// they are compressed independently and sent in order).
    fn send_units(&mut self, units: &[&[u8]], pack: bool) -> Result<(), TransportError> {
        if !pack || units.len() < 2 {
            return units.iter().try_for_each(|u| self.send_unit(u, pack));
        }
        let mut outs = std::mem::take(&mut self.parallel_out);
        outs.resize_with(units.len(), Vec::new);
        let sizes: Vec<Option<usize>> = std::thread::scope(|scope| {
            let work: Vec<_> = units
                .iter()
                .zip(outs.iter_mut())
                .map(|(unit, out)| scope.spawn(move || compress_unit(unit, out)))
                .collect();
            work.into_iter().map(|w| w.join().ok().flatten()).collect()
        });
        let mut result = Ok(());
        for ((unit, out), size) in units.iter().zip(&outs).zip(sizes) {
            result = match size {
                Some(n) => Self::send_packed(&mut self.inner, &out[..n], unit.len()),
                None => self.send_stored(&[unit], unit.len()),
            };
            if result.is_err() {
                break;
            }
        }
        self.parallel_out = outs;
        result
    }

    /// Whether a send of `len` bytes whose bulk starts with `head` is worth compressing: its first `SAMPLE` bytes
    /// shrink enough and, under `Policy::Auto`, compressing is the faster way on this channel.
    fn worth_packing(&mut self, head: &[u8], len: usize) -> bool {
        let sample = &head[..head.len().min(SAMPLE)];
        self.wire_out
            .resize(lz4_flex::block::get_maximum_output_size(sample.len()), 0);
        let shrinks = lz4_flex::block::compress_into(sample, &mut self.wire_out)
            .is_ok_and(|n| (n as f64) < sample.len() as f64 * WORTH);
        match self.policy {
            Policy::Always => shrinks,
            Policy::Auto => shrinks && self.rates.choose(len),
        }
    }

    /// Reads the next frame's header and makes its data available (decoded into `rx`, or left in the inner
    /// transport when stored).
    fn next_frame(&mut self) -> Result<(), TransportError> {
        let mut h = [0u8; HEADER];
        self.inner.recv_exact(&mut h)?;
        let wire_len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let raw_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        if raw_len > UNIT || wire_len > max_wire() || wire_len == 0 && raw_len != 0 {
            return Err(TransportError::Protocol(format!(
                "packed frame of {wire_len} bytes for {raw_len} (at most {UNIT})"
            )));
        }
        TOTALS.wire_received.fetch_add((wire_len + HEADER) as u64, Relaxed);
        TOTALS.raw_received.fetch_add(raw_len as u64, Relaxed);
        if wire_len == raw_len {
            self.rx_stored_left = raw_len;
            return Ok(());
        }
        self.wire_in.resize(wire_len, 0);
        self.inner.recv_exact(&mut self.wire_in)?;
        self.rx.resize(raw_len, 0);
        let n = lz4_flex::block::decompress_into(&self.wire_in, &mut self.rx)
            .map_err(|e| TransportError::Protocol(format!("packed frame does not decode: {e}")))?;
        if n != raw_len {
            return Err(TransportError::Protocol(format!(
                "packed frame decodes to {n} bytes, announced {raw_len}"
            )));
        }
        self.rx_pos = 0;
        self.rx_end = raw_len;
        Ok(())
    }
}

impl<T: Transport> Transport for PackedTransport<T> {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len < MIN_PACK {
            return self.send_stored(parts, len);
        }
        // The bulk of a send is its largest part (a call's header and body come first, its data after).
        let bulk = parts.iter().max_by_key(|p| p.len()).copied().unwrap_or(&[]);
        let started = std::time::Instant::now();
        let pack = self.worth_packing(bulk, len);
        if !pack && len <= UNIT {
            return self.send_stored(parts, len);
        }
        // Cut into units. A part larger than a unit is cut in place; small parts are gathered up to a unit.
        let mut gather = std::mem::take(&mut self.gather);
        gather.clear();
        let mut result = Ok(());
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() && result.is_ok() {
                if gather.is_empty() && rest.len() >= UNIT {
                    let whole = (rest.len() / UNIT).min(pack_threads());
                    let (units, tail) = rest.split_at(whole * UNIT);
                    let units: Vec<&[u8]> = units.chunks(UNIT).collect();
                    result = self.send_units(&units, pack);
                    rest = tail;
                    continue;
                }
                let take = (UNIT - gather.len()).min(rest.len());
                gather.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if gather.len() == UNIT {
                    result = self.send_unit(&gather, pack);
                    gather.clear();
                }
            }
        }
        if result.is_ok() && !gather.is_empty() {
            result = self.send_unit(&gather, pack);
        }
        self.gather = gather;
        if self.policy == Policy::Auto && result.is_ok() {
            self.rates.record(pack, len, started.elapsed().as_secs_f64());
        }
        result
    }

    fn recv_exact(&mut self, mut out: &mut [u8]) -> Result<(), TransportError> {
        while !out.is_empty() {
            if self.rx_pos < self.rx_end {
                let n = (self.rx_end - self.rx_pos).min(out.len());
                out[..n].copy_from_slice(&self.rx[self.rx_pos..self.rx_pos + n]);
                self.rx_pos += n;
                out = &mut out[n..];
            } else if self.rx_stored_left > 0 {
                let n = self.rx_stored_left.min(out.len());
                self.inner.recv_exact(&mut out[..n])?;
                self.rx_stored_left -= n;
                out = &mut out[n..];
            } else {
                self.next_frame()?;
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A transport that keeps what was sent, for the other end to receive, and counts the bytes that crossed.
    #[derive(Default)]
    struct Pipe {
        bytes: VecDeque<u8>,
        sent: usize,
    }

    impl Transport for Pipe {
        fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
            for p in parts {
                self.sent += p.len();
                self.bytes.extend(p.iter());
            }
            Ok(())
        }
        fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
            if self.bytes.len() < buf.len() {
                return Err(TransportError::Closed);
            }
            for b in buf.iter_mut() {
                *b = self.bytes.pop_front().unwrap_or(0);
            }
            Ok(())
        }
        fn kind(&self) -> &'static str {
            "pipe"
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Sends `sends` through a packed pipe and reads them back in `reads`-sized pieces: what came out, and the
    /// bytes on the wire.
    fn round_trip(sends: &[Vec<u8>], read: usize) -> (Vec<u8>, usize) {
        let mut t = PackedTransport::new(Pipe::default());
        for s in sends {
            let (a, b) = s.split_at(s.len() / 3);
            t.send(&[a, b]).expect("send");
        }
        let total: usize = sends.iter().map(Vec::len).sum();
        let mut out = vec![0u8; total];
        for piece in out.chunks_mut(read) {
            t.recv_exact(piece).expect("recv");
        }
        (out, t.inner.sent)
    }

    #[test]
    fn every_byte_comes_back_in_order_whatever_the_mix_and_the_reads() {
        let zeros = vec![0u8; 3 * UNIT + 123];
        let ids: Vec<u8> = (0..(2 * UNIT) as u64 / 8)
            .flat_map(|i| (i % 50_000).to_le_bytes())
            .collect();
        let sends = vec![
            b"small".to_vec(),
            zeros,
            noise(UNIT + 7, 3),
            ids,
            noise(100, 9),
            Vec::new(),
        ];
        let want: Vec<u8> = sends.concat();
        for read in [1, 4096, UNIT - 1, UNIT + 1, 7 << 20] {
            let (got, _) = round_trip(&sends, read);
            assert!(got == want, "reads of {read} bytes");
        }
    }

    #[test]
    fn compressible_data_shrinks_and_noise_costs_only_headers() {
        let (_, wire) = round_trip(&[vec![0u8; 8 << 20]], 1 << 20);
        assert!(wire < 100 << 10, "8 MiB of zeros took {wire} bytes");
        // Random int64 token ids below 50,257: six of eight bytes are zero.
        let ids: Vec<u8> = noise(8 << 20, 11)
            .chunks(8)
            .flat_map(|c| (u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) % 50_257).to_le_bytes())
            .collect();
        let (_, wire) = round_trip(std::slice::from_ref(&ids), 1 << 20);
        assert!(wire * 10 < ids.len() * 6, "int64 ids: {wire} of {}", ids.len());
        let n = 8 << 20;
        let (_, wire) = round_trip(&[noise(n, 5)], 1 << 20);
        assert!(wire <= n + 8 * HEADER + 8, "noise: {wire} for {n}");
    }

    #[test]
    fn units_compressed_side_by_side_keep_their_order_and_each_its_own_verdict() {
        // One send whose units alternate zeros and noise: the sample says compress; the units are compressed on
        // several threads, zeros shrink, noise goes stored, and everything comes back in order.
        let send: Vec<u8> = (0..6u64)
            .flat_map(|i| {
                if i % 2 == 0 {
                    vec![i as u8; UNIT]
                } else {
                    noise(UNIT, i)
                }
            })
            .chain(noise(77, 1))
            .collect();
        let mut t = PackedTransport::new(Pipe::default());
        t.send(&[&send]).expect("send");
        let mut got = vec![0u8; send.len()];
        t.recv_exact(&mut got).expect("recv");
        assert!(got == send, "bytes differ");
        let wire = t.inner.sent;
        assert!(
            wire > 3 * UNIT && wire < 3 * UNIT + (64 << 10),
            "three noise units stored, three constant ones packed: {wire} bytes"
        );
    }

    /// A sink that takes `secs_per_mib` for every MiB sent, like a link of that rate behind a full socket buffer;
    /// it only counts what crossed.
    struct SlowSink {
        sent: usize,
        secs_per_mib: f64,
    }

    impl Transport for SlowSink {
        fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
            let n: usize = parts.iter().map(|p| p.len()).sum();
            std::thread::sleep(std::time::Duration::from_secs_f64(
                self.secs_per_mib * n as f64 / (1 << 20) as f64,
            ));
            self.sent += n;
            Ok(())
        }
        fn recv_exact(&mut self, _buf: &mut [u8]) -> Result<(), TransportError> {
            Err(TransportError::Closed)
        }
        fn kind(&self) -> &'static str {
            "sink"
        }
    }

    #[test]
    fn auto_compresses_only_where_it_beats_the_link() {
        let ids: Vec<u8> = noise(MEASURE_MIN, 13)
            .chunks(8)
            .flat_map(|c| (u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) % 50_257).to_le_bytes())
            .collect();
        // Per link: the bytes on the wire for the third of three sends of the same 4 MiB of ids (the first went
        // compressed, the second stored; the third goes the faster way).
        let third = |secs_per_mib: f64| {
            let sink = SlowSink { sent: 0, secs_per_mib };
            let mut t = PackedTransport::with_policy(sink, Policy::Auto);
            for _ in 0..2 {
                t.send(&[&ids]).expect("send");
            }
            let before = t.inner.sent;
            t.send(&[&ids]).expect("send");
            t.inner.sent - before
        };
        // 4 MB/s: compressing (to about half) is faster, even at a debug build's compression rate on a loaded
        // machine (about 30 MB/s here alone, 800 MB/s in a release build).
        let slow = third(0.25);
        assert!(slow * 10 < ids.len() * 8, "slow link: {slow} of {}", ids.len());
        // A link faster than compression (a MiB in no time): the third goes stored.
        let fast = third(0.0);
        assert!(fast >= ids.len(), "fast link: {fast} of {}", ids.len());
    }

    #[test]
    fn auto_tries_the_slower_way_again_the_more_rarely_the_worse_it_did() {
        // Sends between two tries of the slower way, once both ways are measured.
        let cadence = |packed: f64, stored: f64| {
            let mut r = Rates {
                packed: Some(packed),
                stored: Some(stored),
                since_explore: 0,
            };
            let best = packed >= stored;
            let tries: Vec<usize> = (0..300).filter(|_| r.choose(MEASURE_MIN) != best).collect();
            tries.len()
        };
        assert_eq!(cadence(100.0, 50.0), 300 / 16, "half as fast: every 16th");
        assert_eq!(cadence(50.0, 100.0), 300 / 16, "either way round");
        assert_eq!(cadence(100.0, 90.0), 300 / 8, "close: every 8th");
        assert_eq!(cadence(1000.0, 1.0), 300 / 128, "far worse: every 128th at most");
        // Smaller sends never try: they go the faster way, compressed while nothing is known.
        let mut r = Rates::default();
        assert!(r.choose(MEASURE_MIN - 1));
        r.record(true, MEASURE_MIN, 1.0);
        assert!(!r.choose(MEASURE_MIN), "the second large send measures the stored way");
        r.record(false, MEASURE_MIN, 0.5);
        assert!(
            !r.choose(MEASURE_MIN - 1),
            "then smaller sends follow the faster (stored) way"
        );
    }

    #[test]
    fn hostile_frames_are_refused_before_anything_is_allocated() {
        let frame = |wire: u32, raw: u32, body: &[u8]| {
            let mut p = Pipe::default();
            let mut bytes = wire.to_le_bytes().to_vec();
            bytes.extend_from_slice(&raw.to_le_bytes());
            bytes.extend_from_slice(body);
            p.bytes.extend(bytes);
            let mut t = PackedTransport::new(p);
            let mut out = [0u8; 16];
            t.recv_exact(&mut out)
        };
        assert!(
            matches!(frame(u32::MAX, 16, &[]), Err(TransportError::Protocol(_))),
            "huge wire length"
        );
        assert!(
            matches!(frame(8, u32::MAX, &[0; 8]), Err(TransportError::Protocol(_))),
            "huge raw length"
        );
        assert!(
            matches!(frame(4, 16, &[0xff; 4]), Err(TransportError::Protocol(_))),
            "garbage LZ4"
        );
        assert!(
            matches!(frame(0, 16, &[]), Err(TransportError::Protocol(_))),
            "empty frame for data"
        );
        // A valid LZ4 block that decodes to fewer bytes than announced.
        let block = lz4_flex::block::compress(&[7u8; 10]);
        assert!(matches!(
            frame(block.len() as u32, 16, &block),
            Err(TransportError::Protocol(_))
        ));
    }
}
