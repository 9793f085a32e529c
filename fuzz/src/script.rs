//! In-memory transports that play the other side of a channel from fuzz input: a client's byte stream fed to a
//! server's session, or a server's reply frames fed to the client's channel.

use std::collections::VecDeque;

use vgpu_dataplane::wire::{ReplyHeader, RequestHeader};
use vgpu_dataplane::{Transport, TransportError};
use zerocopy::{FromBytes, IntoBytes};

/// Receives a fixed byte stream, then reports the peer closed; discards what is sent (counting it).
pub struct ByteScript {
    input: Vec<u8>,
    pos: usize,
    pub sent: u64,
}

impl ByteScript {
    pub fn new(input: Vec<u8>) -> Self {
        ByteScript { input, pos: 0, sent: 0 }
    }
}

impl Transport for ByteScript {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.sent += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        Ok(())
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        let end = self.pos.checked_add(buf.len()).ok_or(TransportError::Closed)?;
        let bytes = self.input.get(self.pos..end).ok_or(TransportError::Closed)?;
        buf.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "fuzz"
    }
}

/// One frame a hostile server sends: its header fields (`seq: None` answers the request due) and the bytes that
/// actually follow, which need not match `len`.
#[derive(Debug, Clone, arbitrary::Arbitrary)]
pub struct ServerFrame {
    pub kind: u8,
    pub result: u16,
    pub seq: Option<u32>,
    pub len: FrameLen,
    pub payload: Vec<u8>,
}

/// A frame's announced length: mostly the payload's, sometimes a lie.
#[derive(Debug, Clone, Copy, arbitrary::Arbitrary)]
pub enum FrameLen {
    Exact,
    Announced(u32),
}

/// Plays a server: answers each request with the next scripted frames, numbering them after the request just
/// sent (a real server echoes it), unless a frame names its own number.
pub struct ServerScript {
    frames: VecDeque<ServerFrame>,
    pending: VecDeque<u8>,
    last_seq: u32,
}

impl ServerScript {
    pub fn new(frames: Vec<ServerFrame>) -> Self {
        ServerScript {
            frames: frames.into(),
            pending: VecDeque::new(),
            last_seq: 0,
        }
    }

    fn refill(&mut self) -> bool {
        let Some(f) = self.frames.pop_front() else {
            return false;
        };
        let len = match f.len {
            FrameLen::Exact => f.payload.len() as u32,
            FrameLen::Announced(n) => n,
        };
        let head = ReplyHeader {
            len,
            result: u32::from(f.result),
            kind: u32::from(f.kind % 4),
            seq: f.seq.unwrap_or(self.last_seq),
        };
        self.pending.extend(head.as_bytes());
        self.pending.extend(&f.payload);
        true
    }
}

impl Transport for ServerScript {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        // Requests are whole frames; the last one sent is the one a reply is due for.
        let bytes: Vec<u8> = parts.concat();
        let mut rest = &bytes[..];
        while let Ok((h, after)) = RequestHeader::read_from_prefix(rest) {
            self.last_seq = h.seq;
            rest = after.get(h.len as usize..).unwrap_or(&[]);
        }
        Ok(())
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        while self.pending.len() < buf.len() {
            if !self.refill() {
                return Err(TransportError::Closed);
            }
        }
        for b in buf.iter_mut() {
            *b = self.pending.pop_front().ok_or(TransportError::Closed)?;
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "fuzz"
    }
}
