//! How bytes cross an RDMA channel: small sends written into the peer's ring; larger ones left in the sender's ring
//! for the receiver to read in place; sends from registered memory offered where they are (which ones depends on
//! what the caller promised about them).
//!
//! Three ways, all in one ordered stream of ring positions, so flow control stays the credit scheme of `mod.rs`:
//! - *Written* (sends under `pull_min`): copied into the sender's ring and RDMA-written into the same positions of
//!   the receiver's ring, as before; the receiver copies them out.
//! - *Pulled* (sends of at least `pull_min`): copied into the sender's ring, announced by a zero-length write whose
//!   immediate says "the next n positions are in my ring"; the receiver reads them with RDMA READ straight into its
//!   destination when that is registered (no copy on its side), else into a bounce buffer. Credits return the
//!   positions once read. A plain `send` that fits the ring never waits for the peer (only `send_awaited` may).
//! - *Offered in place* (a part whose memory is listed in `vgpu_dataplane::pinned`, i.e. an app's pinned buffer or
//!   a server's staging): a 24-byte offer (address, length, key) goes through the ring and the receiver reads the
//!   bytes from where they are, then answers DONE. Which parts, and whether the send waits for DONE, depends on
//!   what the caller promised (`Keep`): a plain `send` offers only parts larger than the ring and returns at DONE
//!   (such a send waited for the receiver before too: it could not fit the ring); `send_awaited` (the peer is
//!   receiving now) offers parts from the pull size up and returns at DONE; `send_stable` (the parts stay unchanged
//!   until the peer has them) offers them from the pull size up and returns at once, the registration kept until
//!   DONE. A copy from pinned memory into a server's staging is then read by the NIC with no CPU copy on either side.
//!
//! Immediates (32 bits): bit 31 set: credit (`mod.rs`); bits 31 and 30 clear: n bytes written; bit 30 set: a
//! control word, kind in bits 29..27, count in bits 26..0 (pulled positions, skipped positions before an offer that
//! would cross the ring's end, an offer's 24 positions, or DONE).

use super::*;
use crate::rdma_stats::{add, COUNTERS};
use crate::sys::verbs::{ListedRegistration, LocalMemory};

/// Counts `n` bytes in this channel's counter and the process's: `count!(self, field, n)`.
macro_rules! count {
    ($t:expr, $field:ident, $n:expr) => {{
        let n = $n as u64;
        $t.moved.$field += n;
        add(&COUNTERS.$field, n);
    }};
}

/// Smallest part a plain `send` offers in place, waiting for the reader (below, the ring's copy costs less than
/// the wait's round trip). Offers the caller need not wait for (`send_stable`) or waits for anyway (`send_awaited`)
/// start at the pull size.
pub(super) const OFFER_MIN: usize = 1 << 20;
/// One RDMA READ's length at most: reads of a long stretch are pipelined in pieces of this size.
const READ_PIECE: usize = 1 << 20;
/// The bounce buffer reads land in when the destination is not registered.
pub(super) const BOUNCE: usize = 4 << 20;
pub(super) const WR_READ: u64 = 3;

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
                self.regs.taken(self.offers_done);
            }
        }
        Ok(())
    }

    /// Posts a zero-length write that carries only `what`.
    fn announce(&mut self, what: Announce) -> Result<(), TransportError> {
        self.write_imm(0, 0, what, "post control write")
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
        } else {
            let pos = (self.tx_posted as usize) & (self.cap - 1);
            self.write_imm(pos, n as usize, Announce::Written(n as usize), "post write")?;
        }
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
                self.write_imm(pos, n, what, "post offer")?;
            }
        }
        self.tx_head += n as u64;
        self.tx_posted = self.tx_head;
        Ok(())
    }

    /// Offers `part` (in registered memory with key `rkey`) for the peer to read, waiting until it has unless the
    /// caller keeps it unchanged until then (`Keep::UntilTaken`: the registration is lent until that offer is done).
    fn send_offered(&mut self, part: &[u8], rkey: u32, keep: Keep) -> Result<(), TransportError> {
        let wait = keep != Keep::UntilTaken;
        self.offer(part.as_ptr() as u64, part.len(), rkey, wait)?;
        if !wait {
            self.regs.lend(part.as_ptr() as usize, part.len(), self.offers_sent);
            count!(self, offered_unwaited, part.len() as u64);
        }
        count!(self, offered_in_place, part.len() as u64);
        Ok(())
    }

    /// Offers `len` bytes at `addr` (as the peer names them, key `rkey`) for the peer to read, and with `wait`
    /// waits until it has.
    pub(super) fn offer(&mut self, addr: u64, len: usize, rkey: u32, wait: bool) -> Result<(), TransportError> {
        self.post_staged()?;
        let pos = (self.tx_head as usize) & (self.cap - 1);
        if self.cap - pos < OFFER_LEN {
            self.send_positions(self.cap - pos, Announce::Skip(self.cap - pos), None)?;
        }
        let offer = Offer {
            addr,
            rkey,
            len: len as u64,
            done: 0,
        };
        self.send_positions(OFFER_LEN, Announce::Offer, Some(&offer.encode()))?;
        self.offers_sent += 1;
        let target = self.offers_sent;
        if !wait {
            return Ok(());
        }
        self.block_until(|t| t.offers_done >= target)
    }

    /// The key under which the peer may read `part` in place, when it is offered that way (what the caller
    /// promised about the part decides from which length).
    fn offer_key(&mut self, part: &[u8], keep: Keep) -> Option<u32> {
        let big_enough = match keep {
            Keep::Nothing => part.len() > self.cap && part.len() >= OFFER_MIN,
            Keep::PeerReading | Keep::UntilTaken => part.len() >= self.pull_min,
        };
        if self.pull_min == 0 || !big_enough {
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

    /// Takes the next `len` stream bytes step by step (`book.step`), each handed to `place` with its offset in the
    /// `len` bytes, waiting for announcements as needed; finishes offers and returns credits as it goes.
    pub(super) fn receive(
        &mut self,
        len: usize,
        mut place: impl FnMut(&mut Self, Step, usize) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        let mut off = 0;
        while off < len {
            if self.book.is_empty() {
                self.pump()?;
                if self.book.is_empty() {
                    self.block_until(|t| !t.book.is_empty())?;
                }
            }
            let Some(step) = self.book.step(len - off) else {
                continue;
            };
            place(self, step, off)?;
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

    /// Posts reads of `len` bytes in pieces, as many in flight as the queue pair allows, and waits for all.
    pub(super) fn read_pieces(
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
pub(super) struct Target {
    pub(super) lkey: u32,
    pub(super) base: usize,
    pub(super) size: usize,
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

/// What the caller of a send promised about its parts, which decides what is offered in place and whether the send
/// waits for the peer's reads (see the module's top).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Keep {
    /// `send`: the caller may change the parts once it returns.
    Nothing,
    /// `send_awaited`: as `Nothing`, but the peer is receiving them now, so waiting for its reads costs nothing.
    PeerReading,
    /// `send_stable`: listed parts stay unchanged until the peer has read them.
    UntilTaken,
}

impl RdmaTransport {
    /// Drops registrations of ranges freed since the last look (one atomic load each when nothing was): freed
    /// memory does not stay pinned by the device until the channel next registers something. Ranges an unwaited
    /// offer still reads are retired until its DONE instead.
    fn sweep_registrations(&mut self) {
        self.regs.sweep_if_unlisted();
        self.dev_regs.sweep_if_unlisted();
    }

    fn send_kept(&mut self, parts: &[&[u8]], keep: Keep) -> Result<(), TransportError> {
        self.check()?;
        self.sweep_registrations();
        for part in parts {
            if let Some(rkey) = self.offer_key(part, keep) {
                self.send_offered(part, rkey, keep)?;
                continue;
            }
            let pulled = self.pull_min > 0 && part.len() >= self.pull_min;
            self.send_through_ring(part, pulled)?;
        }
        self.post_staged()
    }
}

impl Transport for RdmaTransport {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.send_kept(parts, Keep::Nothing)
    }

    fn send_stable(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.send_kept(parts, Keep::UntilTaken)
    }

    fn send_awaited(&mut self, parts: &[&[u8]]) -> Result<(), TransportError> {
        self.send_kept(parts, Keep::PeerReading)
    }

    fn stable_in_place_min(&self) -> Option<usize> {
        (self.pull_min > 0).then_some(self.pull_min)
    }

    fn recv_exact(&mut self, buf: &mut [u8]) -> Result<(), TransportError> {
        self.check()?;
        self.sweep_registrations();
        self.receive(buf.len(), |t, step, off| match step {
            Step::Skip(_) => Ok(()),
            Step::Copy { pos, len } => {
                t.rx.map().read(pos, &mut buf[off..off + len]);
                count!(t, ring_copied_out, len);
                Ok(())
            }
            Step::ReadRing { pos, len } => {
                let (remote, rkey) = (t.peer_tx + pos as u64, t.peer_tx_rkey);
                t.read_remote(remote, rkey, &mut buf[off..off + len])
            }
            Step::ReadOffer { addr, rkey, len, .. } => t.read_remote(addr, rkey, &mut buf[off..off + len]),
        })
    }

    fn moves_device_memory(&self) -> bool {
        self.device_capable()
    }

    fn send_device(&mut self, addr: u64, len: usize) -> Result<bool, TransportError> {
        self.check()?;
        self.offer_device(addr, len)
    }

    fn recv_device(
        &mut self,
        addr: u64,
        len: usize,
        inline: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<bool, TransportError> {
        self.check()?;
        self.read_into_device(addr, len, inline)
    }

    fn kind(&self) -> &'static str {
        "rdma"
    }
}
