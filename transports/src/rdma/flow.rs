//! How bytes cross an RDMA channel: small sends written into the peer's ring; larger ones left in the sender's ring
//! for the receiver to read in place; sends from registered memory larger than the ring offered where they are.
//!
//! Three ways, all in one ordered stream of ring positions, so flow control stays the credit scheme of `mod.rs`:
//! - *Written* (sends under `pull_min`): copied into the sender's ring and RDMA-written into the same positions of
//!   the receiver's ring, as before; the receiver copies them out.
//! - *Pulled* (sends of at least `pull_min`): copied into the sender's ring, announced by a zero-length write whose
//!   immediate says "the next n positions are in my ring"; the receiver reads them with RDMA READ straight into its
//!   destination when that is registered (no copy on its side), else into a bounce buffer. Credits return the
//!   positions once read. The sender's semantics do not change: a send that fits the ring never waits for the peer.
//! - *Offered in place* (a part larger than the ring whose memory is listed in `vgpu_dataplane::pinned`, i.e. an
//!   app's pinned buffer or a server's staging): a 24-byte offer (address, length, key) goes through the ring and
//!   the receiver reads the bytes from where they are, then answers DONE; the send returns at DONE. Such a send
//!   waited for the receiver before too (it could not fit the ring), so no new wait between the two ends appears.
//!   A 1 GiB copy from pinned memory into a server's staging is then read by the NIC with no CPU copy on either side.
//!
//! Immediates (32 bits): bit 31 set: credit (`mod.rs`); bits 31 and 30 clear: n bytes written; bit 30 set: a
//! control word, kind in bits 29..27, count in bits 26..0 (pulled positions, skipped positions before an offer that
//! would cross the ring's end, an offer's 24 positions, or DONE).

use std::collections::VecDeque;

use super::*;
use crate::rdma_stats::{add, COUNTERS};

/// Counts `n` bytes in this channel's counter and the process's: `count!(self, field, n)`.
macro_rules! count {
    ($t:expr, $field:ident, $n:expr) => {{
        let n = $n as u64;
        $t.moved.$field += n;
        add(&COUNTERS.$field, n);
    }};
}
use crate::sys::verbs::{ListedRegistration, LocalMemory};

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
/// Smallest part offered in place (below, the ring's copy costs less than the extra round trip).
const OFFER_MIN: usize = 1 << 20;
/// One RDMA READ's length at most: reads of a long stretch are pipelined in pieces of this size.
const READ_PIECE: usize = 1 << 20;
/// The bounce buffer reads land in when the destination is not registered.
pub(super) const BOUNCE: usize = 4 << 20;
pub(super) const WR_READ: u64 = 3;

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

impl RdmaTransport {
    /// Applies one immediate from the peer.
    pub(super) fn on_imm(&mut self, imm: u32) -> Result<(), TransportError> {
        let rx = &self.rx;
        let offer_at = |pos: usize| {
            let mut b = [0u8; OFFER_LEN];
            rx.map().read(pos, &mut b);
            b
        };
        match self.book.announce(imm, offer_at)? {
            Effect::Received => {}
            Effect::Credit(n) => {
                if self.tx_credit + n > self.tx_posted {
                    return Err(protocol(format!(
                        "the peer returned {n} bytes of credit, more than the {} it holds",
                        self.tx_posted - self.tx_credit
                    )));
                }
                self.tx_credit += n;
            }
            Effect::Done => {
                if self.offers_done == self.offers_sent {
                    return Err(protocol("the peer finished an offer this side never made"));
                }
                self.offers_done += 1;
            }
        }
        Ok(())
    }

    /// Posts a zero-length write that carries only `what`.
    fn announce(&mut self, what: Announce) -> Result<(), TransportError> {
        self.wait_raw(|t| t.send_outstanding < t.sq_depth)?;
        let (peer_ring, rkey) = (self.peer_ring, self.peer_rkey);
        if let Err(e) = verbs::post_write_imm(
            &mut self.qp,
            WR_SEND,
            &self.tx,
            0,
            0,
            peer_ring,
            rkey,
            what.encode().to_be(),
        ) {
            return Err(self.fail(rdma_err("post control write", e)));
        }
        self.send_outstanding += 1;
        Ok(())
    }

    /// Announces the staged but not yet announced positions (they never cross the ring's end): as one write of
    /// their bytes, or, for a pulled part, as a zero-length write telling the peer to read them.
    pub(super) fn post_staged(&mut self) -> Result<(), TransportError> {
        let n = self.tx_head - self.tx_posted;
        if n == 0 {
            return Ok(());
        }
        if self.staging_pulled {
            self.announce(Announce::Pulled(n as usize))?;
            self.tx_posted = self.tx_head;
            return Ok(());
        }
        self.wait_raw(|t| t.send_outstanding < t.sq_depth)?;
        let pos = (self.tx_posted as usize) & (self.cap - 1);
        if let Err(e) = verbs::post_write_imm(
            &mut self.qp,
            WR_SEND,
            &self.tx,
            pos,
            n as u32,
            self.peer_ring + pos as u64,
            self.peer_rkey,
            Announce::Written(n as usize).encode().to_be(),
        ) {
            return Err(self.fail(rdma_err("post write", e)));
        }
        self.send_outstanding += 1;
        self.tx_posted = self.tx_head;
        Ok(())
    }

    /// Copies `part` into the ring (written or pulled by the peer as `pulled` says), announcing as it goes.
    fn send_through_ring(&mut self, part: &[u8], pulled: bool) -> Result<(), TransportError> {
        if pulled != self.staging_pulled {
            self.post_staged()?;
            self.staging_pulled = pulled;
        }
        let mut off = 0;
        while off < part.len() {
            let used = (self.tx_head - self.tx_credit) as usize;
            if used == self.cap {
                self.post_staged()?;
                self.block_until(|t| ((t.tx_head - t.tx_credit) as usize) < t.cap)?;
            }
            let free = self.cap - (self.tx_head - self.tx_credit) as usize;
            let pos = (self.tx_head as usize) & (self.cap - 1);
            let n = (part.len() - off).min(free).min(self.cap - pos).min(self.chunk);
            self.tx.map().write(pos, &part[off..off + n]);
            self.tx_head += n as u64;
            off += n;
            if pos + n == self.cap || self.tx_head - self.tx_posted >= self.chunk as u64 {
                self.post_staged()?;
            }
        }
        count!(self, ring_copied_in, part.len() as u64);
        Ok(())
    }

    /// Reserves `n` ring positions (waiting for credit), announcing them with `what` and, for an offer, its bytes.
    fn send_positions(
        &mut self,
        n: usize,
        what: Announce,
        bytes: Option<&[u8; OFFER_LEN]>,
    ) -> Result<(), TransportError> {
        self.block_until(|t| ((t.tx_head - t.tx_credit) as usize) + n <= t.cap)?;
        let pos = (self.tx_head as usize) & (self.cap - 1);
        match bytes {
            None => self.announce(what)?,
            Some(b) => {
                self.tx.map().write(pos, b);
                self.wait_raw(|t| t.send_outstanding < t.sq_depth)?;
                let (remote, rkey) = (self.peer_ring + pos as u64, self.peer_rkey);
                if let Err(e) = verbs::post_write_imm(
                    &mut self.qp,
                    WR_SEND,
                    &self.tx,
                    pos,
                    n as u32,
                    remote,
                    rkey,
                    what.encode().to_be(),
                ) {
                    return Err(self.fail(rdma_err("post offer", e)));
                }
                self.send_outstanding += 1;
            }
        }
        self.tx_head += n as u64;
        self.tx_posted = self.tx_head;
        Ok(())
    }

    /// Offers `part` (in registered memory with key `rkey`) for the peer to read, and waits until it has.
    fn send_offered(&mut self, part: &[u8], rkey: u32) -> Result<(), TransportError> {
        self.post_staged()?;
        let pos = (self.tx_head as usize) & (self.cap - 1);
        if self.cap - pos < OFFER_LEN {
            self.send_positions(self.cap - pos, Announce::Skip(self.cap - pos), None)?;
        }
        let offer = Offer {
            addr: part.as_ptr() as u64,
            rkey,
            len: part.len() as u64,
            done: 0,
        };
        self.send_positions(OFFER_LEN, Announce::Offer, Some(&offer.encode()))?;
        self.offers_sent += 1;
        let target = self.offers_sent;
        self.block_until(|t| t.offers_done >= target)?;
        count!(self, offered_in_place, part.len() as u64);
        Ok(())
    }

    /// The key under which the peer may read `part` in place, when it is offered that way.
    fn offer_key(&mut self, part: &[u8]) -> Option<u32> {
        if self.pull_min == 0 || part.len() <= self.cap || part.len() < OFFER_MIN {
            return None;
        }
        let pd = self.pd.clone();
        let access = AccessFlags::LocalWrite | AccessFlags::RemoteRead;
        self.regs
            .get(part.as_ptr() as usize, part.len(), |addr, len| {
                ListedRegistration::new(&pd, addr, len, access)
            })
            .map(|r| r.rkey())
    }

    /// Reads `dst.len()` bytes at `remote` (key `rkey`) of the peer's memory into `dst`: in place when `dst` is
    /// registered memory, else through the bounce buffer.
    fn read_remote(&mut self, remote: u64, rkey: u32, dst: &mut [u8]) -> Result<(), TransportError> {
        let pd = self.pd.clone();
        let access = AccessFlags::LocalWrite | AccessFlags::RemoteRead;
        let addr = dst.as_ptr() as usize;
        let listed = self
            .regs
            .get(addr, dst.len(), |a, l| ListedRegistration::new(&pd, a, l, access))
            .map(|r| (r.lkey(), r.base()));
        if let Some((lkey, base)) = listed {
            let target = Target {
                lkey,
                base,
                size: addr - base + dst.len(),
            };
            self.read_pieces(remote, rkey, &target, addr - base, dst.len())?;
            count!(self, pulled_in_place, dst.len() as u64);
            return Ok(());
        }
        if self.bounce.is_none() {
            let b = Registered::new(&self.pd, BOUNCE, AccessFlags::LocalWrite).map_err(|e| self.fail(e.into()))?;
            self.bounce = Some(b);
        }
        let mut done = 0;
        while done < dst.len() {
            let n = (dst.len() - done).min(BOUNCE);
            let bounce = self.bounce.take().ok_or(TransportError::Closed)?;
            let r = self.read_pieces(remote + done as u64, rkey, &bounce, 0, n);
            if r.is_ok() {
                bounce.map().read(0, &mut dst[done..done + n]);
            }
            self.bounce = Some(bounce);
            r?;
            done += n;
        }
        count!(self, pulled_bounced, dst.len() as u64);
        count!(self, ring_copied_out, dst.len() as u64);
        Ok(())
    }

    /// Posts reads of `len` bytes in pieces, as many in flight as the queue pair allows, and waits for all.
    fn read_pieces(
        &mut self,
        remote: u64,
        rkey: u32,
        dst: &dyn LocalMemory,
        off: usize,
        len: usize,
    ) -> Result<(), TransportError> {
        let mut at = 0;
        while at < len {
            self.wait_raw(|t| t.reads_out < t.read_depth && t.send_outstanding < t.sq_depth)?;
            let n = (len - at).min(READ_PIECE);
            if let Err(e) = verbs::post_read(&mut self.qp, WR_READ, dst, off + at, n as u32, remote + at as u64, rkey) {
                return Err(self.fail(rdma_err("post read", e)));
            }
            self.reads_out += 1;
            self.send_outstanding += 1;
            at += n;
        }
        self.wait_raw(|t| t.reads_out == 0)
    }
}

/// A registered range's keys and bounds, borrowed for one read.
struct Target {
    lkey: u32,
    base: usize,
    size: usize,
}

impl LocalMemory for Target {
    fn lkey(&self) -> u32 {
        self.lkey
    }
    fn base(&self) -> usize {
        self.base
    }
    fn size(&self) -> usize {
        self.size
    }
}

impl Transport for RdmaTransport {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.check()?;
        for part in parts {
            if let Some(rkey) = self.offer_key(part) {
                self.send_offered(part, rkey)?;
                continue;
            }
            let pulled = self.pull_min > 0 && part.len() >= self.pull_min;
            self.send_through_ring(part, pulled)?;
        }
        self.post_staged()
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        self.check()?;
        let mut off = 0;
        while off < buf.len() {
            if self.book.is_empty() {
                self.pump()?;
                if self.book.is_empty() {
                    self.block_until(|t| !t.book.is_empty())?;
                }
            }
            let Some(step) = self.book.step(buf.len() - off) else {
                continue;
            };
            match step {
                Step::Skip(_) => {}
                Step::Copy { pos, len } => {
                    self.rx.map().read(pos, &mut buf[off..off + len]);
                    count!(self, ring_copied_out, len);
                }
                Step::ReadRing { pos, len } => {
                    let (remote, rkey) = (self.peer_tx + pos as u64, self.peer_tx_rkey);
                    self.read_remote(remote, rkey, &mut buf[off..off + len])?;
                }
                Step::ReadOffer { addr, rkey, len, .. } => self.read_remote(addr, rkey, &mut buf[off..off + len])?,
            }
            off += self.book.done(step);
            if matches!(step, Step::ReadOffer { last: true, .. }) {
                self.announce(Announce::Done)?;
            }
            if self.book.consumed() - self.rx_returned >= self.credit_batch {
                self.return_credits()?;
            }
        }
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "rdma"
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
