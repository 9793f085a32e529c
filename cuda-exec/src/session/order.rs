//! The client's submission order across a session's channels: requests carry one number series across all of
//! a client's threads, and each channel submits a request only once every earlier number has been submitted.
//!
//! So work two app threads put on one stream (PyTorch's autograd thread and its main thread), or an event one
//! thread records and another waits for, reaches the GPU in the app's order, as it does natively.

use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
pub(super) struct SubmitOrder {
    /// The last request number whose work has been submitted (or, for a synchronous call, started).
    done: AtomicU32,
    /// Channels holding their thread in work that waits for other servers (a collective, a copy between
    /// servers): the requests queued behind such a call are held, not lost, so no channel gives up waiting for them.
    held: AtomicU32,
}

/// A channel's hold on the submission order (`SubmitOrder::hold`), released when dropped.
pub(super) struct Held<'a>(&'a AtomicU32);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a request waits for an earlier number before going ahead anyway. Normally the wait is microseconds
/// (the client's flusher sends every batch within `VGPU_FLUSH_US`); only a client that lost requests stalls
/// this long, and then ordering is given up rather than the session.
const ORDER_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

impl SubmitOrder {
    fn previous(seq: u32) -> u32 {
        // The client never uses 0: after u32::MAX comes 1.
        if seq == 1 {
            u32::MAX
        } else {
            seq.wrapping_sub(1)
        }
    }

    /// Waits until every request numbered before `seq` has been submitted. `gated`: the session's channel threads
    /// waiting at the scheduler's gate, whose numbers are not lost, only held: no giving up on them.
    pub fn wait_turn(&self, seq: u32, gated: &AtomicU32, limit: Option<std::time::Duration>) {
        let want = Self::previous(seq);
        if seq == 0 || self.done.load(Ordering::Acquire) == want {
            return;
        }
        let start = std::time::Instant::now();
        let mut rounds = 0u32;
        loop {
            let done = self.done.load(Ordering::Acquire);
            // `done` at or past `want` (in wrapping order): nothing earlier is outstanding.
            if done.wrapping_sub(want) < (1 << 31) {
                return;
            }
            if start.elapsed() > limit.unwrap_or(ORDER_WAIT_LIMIT)
                && gated.load(Ordering::Acquire) == 0
                && self.held.load(Ordering::Acquire) == 0
            {
                tracing::warn!(seq, done, "request numbers missing; going ahead out of order");
                return;
            }
            rounds += 1;
            if rounds < 200 {
                std::hint::spin_loop();
            } else if rounds < 400 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }
    }

    /// Marks the calling channel as holding its thread for other servers until the guard drops (a rank arriving
    /// late keeps a collective waiting for seconds: the app's other threads then wait their turn, as ordered,
    /// instead of running ahead of requests that are only queued).
    pub fn hold(&self) -> Held<'_> {
        self.held.fetch_add(1, Ordering::AcqRel);
        Held(&self.held)
    }

    /// Records that `seq` has been submitted (never moving backwards).
    pub fn advance(&self, seq: u32) {
        if seq == 0 {
            return;
        }
        let _ = self.done.fetch_update(Ordering::AcqRel, Ordering::Acquire, |done| {
            (seq.wrapping_sub(done).wrapping_sub(1) < (1 << 31)).then_some(seq)
        });
    }
}
