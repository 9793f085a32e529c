//! The receive side of an RDMA channel as plain bookkeeping, and the vocabulary both sides share: what each
//! immediate announces, the 24-byte offer, the incoming segments, and the steps a reader takes through them.
//!
//! Kept apart from the device so that a fuzz target (fuzz/src/rdma_book.rs) can drive it with a hostile peer's
//! immediates: every announcement is checked against the ring before anything is recorded.

use std::collections::VecDeque;

use super::{protocol, TransportError, IMM_CREDIT};

pub(super) const IMM_CONTROL: u32 = 1 << 30;
const KIND_SHIFT: u32 = 27;
const COUNT_MASK: u32 = (1 << KIND_SHIFT) - 1;
const KIND_PULL: u32 = 0;
const KIND_OFFER: u32 = 1;
const KIND_SKIP: u32 = 2;
const KIND_DONE: u32 = 3;
/// Ring positions an offer takes: address (8), length (8), key (4), magic (4).
pub const OFFER_LEN: usize = 24;
const OFFER_MAGIC: u32 = u32::from_le_bytes(*b"OFR1");
/// Largest offer accepted (a hostile length is refused before any read).
const MAX_OFFER: u64 = 1 << 40;

/// What one immediate announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    Credit(u64),
    Written(usize),
    Pulled(usize),
    Offer,
    Skip(usize),
    Done,
}

impl Announce {
    pub fn encode(self) -> u32 {
        let control = |kind: u32, n: usize| IMM_CONTROL | kind << KIND_SHIFT | n as u32 & COUNT_MASK;
        match self {
            Announce::Credit(n) => IMM_CREDIT | n as u32,
            Announce::Written(n) => n as u32,
            Announce::Pulled(n) => control(KIND_PULL, n),
            Announce::Offer => control(KIND_OFFER, OFFER_LEN),
            Announce::Skip(n) => control(KIND_SKIP, n),
            Announce::Done => control(KIND_DONE, 0),
        }
    }

    pub fn decode(imm: u32) -> Result<Announce, TransportError> {
        if imm & IMM_CREDIT != 0 {
            return Ok(Announce::Credit((imm & !IMM_CREDIT) as u64));
        }
        if imm & IMM_CONTROL == 0 {
            return Ok(Announce::Written(imm as usize));
        }
        let n = (imm & COUNT_MASK) as usize;
        match (imm & !IMM_CONTROL) >> KIND_SHIFT {
            KIND_PULL if n > 0 => Ok(Announce::Pulled(n)),
            KIND_OFFER if n == OFFER_LEN => Ok(Announce::Offer),
            KIND_SKIP if n > 0 && n < OFFER_LEN => Ok(Announce::Skip(n)),
            KIND_DONE if n == 0 => Ok(Announce::Done),
            kind => Err(protocol(format!("the peer sent control word {kind} with count {n}"))),
        }
    }
}

/// Bytes offered in place by the peer, and how many of them were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offer {
    pub addr: u64,
    pub rkey: u32,
    pub len: u64,
    pub done: u64,
}

impl Offer {
    pub fn encode(&self) -> [u8; OFFER_LEN] {
        let mut b = [0u8; OFFER_LEN];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b[16..20].copy_from_slice(&self.rkey.to_le_bytes());
        b[20..24].copy_from_slice(&OFFER_MAGIC.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; OFFER_LEN]) -> Result<Offer, TransportError> {
        let word = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let half = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let offer = Offer {
            addr: word(0),
            len: word(8),
            rkey: half(16),
            done: 0,
        };
        if half(20) != OFFER_MAGIC || offer.len == 0 || offer.len > MAX_OFFER {
            return Err(protocol(format!(
                "the peer offered {} bytes in a malformed offer",
                offer.len
            )));
        }
        Ok(offer)
    }
}

/// A stretch of the incoming stream, in ring order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes written into this side's ring.
    Written(usize),
    /// Bytes at the same positions of the peer's ring, to be read.
    Pulled(usize),
    /// Unused positions.
    Skip(usize),
    /// Bytes offered in place; its 24 ring positions are consumed once all are read.
    Offered(Offer),
}

/// The incoming stream's segments, adjacent ones of one kind merged.
#[derive(Default)]
struct Incoming(VecDeque<Segment>);

impl Incoming {
    fn push(&mut self, s: Segment) {
        match (self.0.back_mut(), s) {
            (Some(Segment::Written(n)), Segment::Written(m)) | (Some(Segment::Pulled(n)), Segment::Pulled(m)) => {
                *n += m
            }
            _ => self.0.push_back(s),
        }
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn front(&self) -> Option<Segment> {
        self.0.front().copied()
    }
    /// Records that `n` bytes of the front segment were consumed; returns whether it is finished (and removed).
    fn consume(&mut self, n: usize) -> bool {
        let finished = match self.0.front_mut() {
            Some(Segment::Written(left) | Segment::Pulled(left)) => {
                *left -= n;
                *left == 0
            }
            Some(Segment::Offered(o)) => {
                o.done += n as u64;
                o.done == o.len
            }
            Some(Segment::Skip(_)) | None => true,
        };
        if finished {
            self.0.pop_front();
        }
        finished
    }
}

/// What an immediate means for the sending side (the rest is the receive side's, kept in the book).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Ring positions or segments were announced.
    Received,
    /// The peer returned this many bytes of credit.
    Credit(u64),
    /// The peer finished reading the oldest offer this side made.
    Done,
}

/// The next thing the receiver does with its stream, for a caller wanting `want` more bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Consume `n` unused positions.
    Skip(usize),
    /// Copy `len` bytes at `pos` of this side's ring.
    Copy { pos: usize, len: usize },
    /// Read `len` bytes at `pos` of the peer's send ring.
    ReadRing { pos: usize, len: usize },
    /// Read `len` bytes at `addr` under `rkey` (an offer); `last`: the offer is then fully read.
    ReadOffer {
        addr: u64,
        rkey: u32,
        len: usize,
        last: bool,
    },
}

/// The receive side's bookkeeping, apart from the device so that a hostile peer's immediates can be fuzzed: ring
/// positions announced and consumed, and the stream's segments in order.
pub struct RxBook {
    cap: usize,
    incoming: Incoming,
    /// Ring positions announced / consumed.
    head: u64,
    tail: u64,
}

impl RxBook {
    /// A book for a ring of `cap` positions (a power of two).
    pub fn new(cap: usize) -> RxBook {
        RxBook {
            cap,
            incoming: Incoming::default(),
            head: 0,
            tail: 0,
        }
    }

    /// Applies one immediate. `offer_at(pos)` gives the 24 ring bytes at `pos` an offer was written into.
    pub fn announce(
        &mut self,
        imm: u32,
        offer_at: impl FnOnce(usize) -> [u8; OFFER_LEN],
    ) -> Result<Effect, TransportError> {
        let (segment, positions) = match Announce::decode(imm)? {
            Announce::Credit(n) => return Ok(Effect::Credit(n)),
            Announce::Done => return Ok(Effect::Done),
            Announce::Written(n) => (Segment::Written(n), n),
            Announce::Pulled(n) => (Segment::Pulled(n), n),
            Announce::Skip(n) => (Segment::Skip(n), n),
            Announce::Offer => {
                let pos = (self.head as usize) & (self.cap - 1);
                if pos + OFFER_LEN > self.cap {
                    return Err(protocol("the peer's offer crosses the end of the ring"));
                }
                (Segment::Offered(Offer::decode(&offer_at(pos))?), OFFER_LEN)
            }
        };
        let n = positions as u64;
        if n == 0 || self.head + n - self.tail > self.cap as u64 {
            return Err(protocol(format!(
                "the peer announced {n} bytes with {} unread in a ring of {}",
                self.head - self.tail,
                self.cap
            )));
        }
        self.head += n;
        self.incoming.push(segment);
        Ok(Effect::Received)
    }

    /// Whether nothing announced is left to consume.
    pub fn is_empty(&self) -> bool {
        self.incoming.is_empty()
    }

    /// The next step for a caller wanting `want` (> 0) bytes; `None` until something is announced.
    pub fn step(&self, want: usize) -> Option<Step> {
        let pos = (self.tail as usize) & (self.cap - 1);
        Some(match self.incoming.front()? {
            Segment::Skip(n) => Step::Skip(n),
            Segment::Written(n) => Step::Copy {
                pos,
                len: want.min(n).min(self.cap - pos),
            },
            Segment::Pulled(n) => Step::ReadRing {
                pos,
                len: want.min(n).min(self.cap - pos),
            },
            Segment::Offered(o) => {
                let len = (want as u64).min(o.len - o.done) as usize;
                Step::ReadOffer {
                    addr: o.addr.wrapping_add(o.done),
                    rkey: o.rkey,
                    len,
                    last: o.done + len as u64 == o.len,
                }
            }
        })
    }

    /// Records that `step` was done; returns the stream bytes it delivered.
    pub fn done(&mut self, step: Step) -> usize {
        let (read, positions) = match step {
            Step::Skip(n) => (0, n),
            Step::Copy { len, .. } | Step::ReadRing { len, .. } => (len, len),
            Step::ReadOffer { len, last, .. } => (len, if last { OFFER_LEN } else { 0 }),
        };
        self.incoming.consume(read);
        self.tail += positions as u64;
        read
    }

    /// Ring positions consumed so far (what credits return).
    pub fn consumed(&self) -> u64 {
        self.tail
    }

    /// Ring positions announced and not yet consumed.
    pub fn unread(&self) -> u64 {
        self.head - self.tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediates_round_trip_and_hostile_ones_are_refused() {
        for a in [
            Announce::Credit(1 << 30),
            Announce::Written(256 << 10),
            Announce::Pulled(1),
            Announce::Pulled(COUNT_MASK as usize),
            Announce::Offer,
            Announce::Skip(23),
            Announce::Done,
        ] {
            assert_eq!(Announce::decode(a.encode()).expect("decodes"), a);
        }
        for bad in [
            IMM_CONTROL | KIND_PULL << KIND_SHIFT,
            IMM_CONTROL | KIND_OFFER << KIND_SHIFT | 23,
            IMM_CONTROL | KIND_SKIP << KIND_SHIFT | 24,
            IMM_CONTROL | KIND_SKIP << KIND_SHIFT,
            IMM_CONTROL | KIND_DONE << KIND_SHIFT | 1,
            IMM_CONTROL | 4 << KIND_SHIFT | 5,
            IMM_CONTROL | 7 << KIND_SHIFT | 5,
        ] {
            assert!(
                matches!(Announce::decode(bad), Err(TransportError::Protocol(_))),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn offers_round_trip_and_malformed_ones_are_refused() {
        let o = Offer {
            addr: 0x7f00_0000_1000,
            rkey: 0x1234,
            len: 5 << 30,
            done: 0,
        };
        assert_eq!(Offer::decode(&o.encode()).expect("decodes"), o);
        for bad in [
            Offer { len: 0, ..o },
            Offer {
                len: MAX_OFFER + 1,
                ..o
            },
        ] {
            assert!(Offer::decode(&bad.encode()).is_err());
        }
        let mut b = o.encode();
        b[23] ^= 1;
        assert!(Offer::decode(&b).is_err(), "bad magic");
    }

    #[test]
    fn the_book_steps_through_segments_and_refuses_announcements_beyond_the_ring() {
        let offer = Offer {
            addr: 0x1000,
            rkey: 9,
            len: 30,
            done: 0,
        };
        let at = |_: usize| offer.encode();
        let mut b = RxBook::new(4096);
        assert_eq!(
            b.announce(Announce::Written(100).encode(), at).expect("ok"),
            Effect::Received
        );
        assert_eq!(b.step(60), Some(Step::Copy { pos: 0, len: 60 }));
        assert_eq!(b.done(Step::Copy { pos: 0, len: 60 }), 60);
        assert_eq!(b.step(1000), Some(Step::Copy { pos: 60, len: 40 }));
        b.done(Step::Copy { pos: 60, len: 40 });
        assert!(b.is_empty() && b.step(1).is_none());
        // 3990 more positions: the ring (4096) now holds 3990 unread; 107 more would overflow it.
        b.announce(Announce::Pulled(3990).encode(), at).expect("fits");
        assert!(b.announce(Announce::Written(107).encode(), at).is_err());
        assert_eq!(b.step(10_000), Some(Step::ReadRing { pos: 100, len: 3990 }));
        b.done(Step::ReadRing { pos: 100, len: 3990 });
        // Position 4090: an offer would cross the end; a skip of 6 first, then it lands at 0.
        assert!(b.announce(Announce::Offer.encode(), at).is_err());
        let mut b = RxBook::new(4096);
        b.announce(Announce::Written(4090).encode(), at).expect("fits");
        b.done(Step::Copy { pos: 0, len: 4090 });
        b.announce(Announce::Skip(6).encode(), at).expect("skip");
        b.announce(Announce::Offer.encode(), at).expect("offer at 0");
        assert_eq!(b.step(5), Some(Step::Skip(6)));
        b.done(Step::Skip(6));
        let first = b.step(20).expect("offer");
        assert_eq!(
            first,
            Step::ReadOffer {
                addr: 0x1000,
                rkey: 9,
                len: 20,
                last: false
            }
        );
        assert_eq!(b.done(first), 20);
        let last = b.step(64).expect("offer");
        assert_eq!(
            last,
            Step::ReadOffer {
                addr: 0x1000 + 20,
                rkey: 9,
                len: 10,
                last: true
            }
        );
        b.done(last);
        assert_eq!((b.consumed(), b.unread()), (4096 + OFFER_LEN as u64, 0));
        assert_eq!(
            b.announce(Announce::Credit(5).encode(), at).expect("credit"),
            Effect::Credit(5)
        );
        assert_eq!(b.announce(Announce::Done.encode(), at).expect("done"), Effect::Done);
    }

    #[test]
    fn segments_merge_by_kind_and_are_consumed_in_order() {
        let mut q = Incoming::default();
        q.push(Segment::Written(10));
        q.push(Segment::Written(5));
        q.push(Segment::Pulled(100));
        q.push(Segment::Pulled(28));
        q.push(Segment::Skip(3));
        let offer = Offer {
            addr: 1,
            rkey: 2,
            len: 50,
            done: 0,
        };
        q.push(Segment::Offered(offer));
        q.push(Segment::Written(1));
        assert_eq!(q.front(), Some(Segment::Written(15)));
        assert!(!q.consume(14));
        assert!(q.consume(1));
        assert_eq!(q.front(), Some(Segment::Pulled(128)));
        assert!(q.consume(128));
        assert!(q.consume(0), "a skip is finished at once");
        assert!(!q.consume(20));
        assert_eq!(q.front(), Some(Segment::Offered(Offer { done: 20, ..offer })));
        assert!(q.consume(30));
        assert_eq!(q.front(), Some(Segment::Written(1)));
        assert!(q.consume(1) && q.is_empty());
    }
}
