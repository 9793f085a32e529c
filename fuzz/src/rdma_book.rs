//! The RDMA transport's receive bookkeeping (`transports::rdma::RxBook`) driven by a hostile peer: arbitrary
//! immediates (written, pulled, skipped and offered positions, credits, DONE) with arbitrary offer bytes, between
//! reads of arbitrary sizes.
//!
//! Asserts: nothing panics; announcements never leave more unread positions than the ring holds; every step stays
//! inside the ring (copies and reads of the peer's ring never cross its end), never delivers more than asked, and an
//! offer is read within its length; the bytes delivered never exceed the bytes announced.

use arbitrary::{Arbitrary, Unstructured};
use vgpu_transports::rdma::{Announce, Offer, RxBook, Step, OFFER_LEN};

#[derive(Debug, Arbitrary)]
enum Op {
    /// An immediate as the peer sends it, and the 24 ring bytes an offer would have written.
    Imm(u32, [u8; OFFER_LEN]),
    /// A well-formed announcement (so the interesting states are reached often), by kind and count.
    Announce(u8, u32, u64),
    /// A caller reading this many bytes.
    Read(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    ring_shift: u8,
    ops: Vec<Op>,
}

pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let cap = 1usize << (12 + input.ring_shift % 8);
    let mut book = RxBook::new(cap);
    let (mut announced, mut delivered) = (0u64, 0u64);
    for op in input.ops.iter().take(256) {
        let (imm, bytes) = match *op {
            Op::Imm(imm, bytes) => (imm, bytes),
            Op::Announce(kind, n, len) => {
                let n = n as usize % (cap + 1);
                let offer = Offer {
                    addr: len.rotate_left(17),
                    rkey: n as u32,
                    len: len % (1 << 41),
                    done: 0,
                };
                let a = match kind % 4 {
                    0 => Announce::Written(n),
                    1 => Announce::Pulled(n),
                    2 => Announce::Skip(n % OFFER_LEN),
                    _ => Announce::Offer,
                };
                (a.encode(), offer.encode())
            }
            Op::Read(want) => {
                let want = usize::from(want).max(1);
                let Some(step) = book.step(want) else { continue };
                match step {
                    Step::Skip(n) => assert!(n > 0 && n < OFFER_LEN, "{step:?}"),
                    Step::Copy { pos, len } | Step::ReadRing { pos, len } => {
                        assert!(
                            len > 0 && len <= want && pos + len <= cap,
                            "{step:?} in a ring of {cap}"
                        );
                    }
                    Step::ReadOffer { len, .. } => assert!(len <= want, "{step:?}"),
                }
                delivered += book.done(step) as u64;
                assert!(delivered <= announced, "delivered {delivered} of {announced} announced");
                continue;
            }
        };
        let before = book.unread();
        match book.announce(imm, |_| bytes) {
            Ok(_) => {
                let added = book.unread() - before;
                assert!(
                    book.unread() <= cap as u64,
                    "{} unread in a ring of {cap}",
                    book.unread()
                );
                announced += match Announce::decode(imm) {
                    Ok(Announce::Written(n) | Announce::Pulled(n)) => n as u64,
                    Ok(Announce::Offer) => Offer::decode(&bytes).map_or(0, |o| o.len),
                    _ => 0,
                };
                assert!(added <= cap as u64);
            }
            // A refused announcement ends the channel.
            Err(_) => return,
        }
    }
}
