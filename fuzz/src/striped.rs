//! Striped channels (`transports::striped`, with or without fine pieces) read from a hostile peer: arbitrary bytes
//! on the main connection and on each lane, read through a striped transport in arbitrary pieces.
//!
//! Asserts: nothing panics or allocates beyond the caller's buffers whatever the segment words announce (up to 1 GiB
//! striped over lanes that bring a few bytes); a read either fills its buffer or fails, and after a failure nothing
//! more is read; bytes that a well-formed inline segment announced come back as sent.

use std::collections::VecDeque;

use arbitrary::{Arbitrary, Unstructured};
use vgpu_dataplane::Transport;
use vgpu_transports::striped::{Lane, Striped};

use crate::Pipe;

#[derive(Debug, Arbitrary)]
struct Input {
    /// What the peer sends on the main connection and on each lane (one to three: `lane_count % 3 + 1`, missing ones
    /// silent).
    main: Vec<u8>,
    lane_count: u8,
    lanes: Vec<Vec<u8>>,
    /// Read sizes.
    reads: Vec<u16>,
    /// An inline segment put first on the main connection, which must come back whole.
    inline: Vec<u8>,
    /// Fine pieces (`LANES_FINE`): short striped segments cut into one piece a stream.
    fine: bool,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let mut main: VecDeque<u8> = VecDeque::new();
    let inline = &input.inline[..input.inline.len().min(1 << 16)];
    main.extend((inline.len() as u32).to_le_bytes());
    main.extend(inline.iter());
    main.extend(input.main.iter());
    let lanes: Vec<Lane> = (0..usize::from(input.lane_count % 3) + 1)
        .map(|k| Box::new(Pipe(input.lanes.get(k).into_iter().flatten().copied().collect())) as Lane)
        .collect();
    let mut t = Striped::new(Pipe(main), lanes)
        .expect("one to three lanes of the channel's kind")
        .fine_pieces(input.fine);
    let mut first = vec![0u8; inline.len()];
    t.recv_exact(&mut first)
        .expect("a well-formed inline segment reads back");
    assert!(first == inline, "an inline segment changed on the way");
    for &n in input.reads.iter().take(16) {
        let mut buf = vec![0u8; usize::from(n)];
        if t.recv_exact(&mut buf).is_err() {
            return;
        }
    }
}
