//! Compressed channels (`transports::packed`) both ways: a hostile peer's byte stream read through a packed
//! transport in arbitrary pieces, and arbitrary sends written through one and read back through another.
//!
//! Asserts: reading never holds more than one frame's worth of memory (`UNIT` decoded, LZ4's bound for `UNIT` on the
//! wire), whatever the announced lengths; a read either fills its buffer or fails, and after a failure nothing more
//! is read; every send comes back byte for byte, in order, whichever policy packed it.

use arbitrary::{Arbitrary, Unstructured};
use vgpu_dataplane::Transport;
use vgpu_transports::packed::{PackedTransport, Policy, UNIT};

use crate::Pipe;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Bytes a hostile peer sends, and the sizes in which they are read.
    stream: Vec<u8>,
    reads: Vec<u16>,
    /// Sends for the round trip: each a byte to repeat, how often (in KiB), and noise after it.
    sends: Vec<(u8, u8, Vec<u8>)>,
    auto: bool,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    hostile_stream(&input.stream, &input.reads);
    round_trip(&input.sends, input.auto);
}

fn hostile_stream(stream: &[u8], reads: &[u16]) {
    let mut t = PackedTransport::new(Pipe(stream.iter().copied().collect()));
    for &n in reads.iter().take(64) {
        let mut buf = vec![0u8; usize::from(n)];
        let r = t.recv_exact(&mut buf);
        assert!(
            t.held_bytes() <= UNIT + lz4_bound(),
            "a packed reader holds {} bytes",
            t.held_bytes()
        );
        if r.is_err() {
            return;
        }
    }
}

fn lz4_bound() -> usize {
    // LZ4's worst case for UNIT bytes: a little more than the input.
    UNIT + UNIT / 255 + 16
}

fn round_trip(sends: &[(u8, u8, Vec<u8>)], auto: bool) {
    let policy = if auto { Policy::Auto } else { Policy::Always };
    let mut writer = PackedTransport::with_policy(Pipe::default(), policy);
    let mut want = Vec::new();
    // At most 1 MiB in all, so that an input stays fast (multi-unit sends are the unit tests' part).
    let mut total = 0usize;
    for (byte, repeat, noise) in sends.iter().take(16) {
        let mut send = vec![*byte; usize::from(*repeat) * 1024];
        send.extend_from_slice(noise);
        total += send.len();
        if total > 1 << 20 {
            break;
        }
        writer
            .send(&[&send[..send.len() / 2], &send[send.len() / 2..]])
            .expect("a pipe takes every send");
        want.extend_from_slice(&send);
    }
    let wire = writer.into_inner();
    let mut reader = PackedTransport::new(wire);
    let mut got = vec![0u8; want.len()];
    reader.recv_exact(&mut got).expect("every byte sent comes back");
    assert!(got == want, "a packed round trip changed the data");
}
