//! Which contexts ended (reset or destroyed) and when, so holders of pinned buffers forget exactly what went with them.
//! Bounded: past `KEEP` entries the oldest are dropped, and a holder that last looked before them forgets to be safe.

use std::collections::HashMap;

use crate::backend::HostBuffer;

/// Entries kept; each context end adds at most one (a context ended again replaces its own).
const KEEP: usize = 4096;

#[derive(Default)]
pub(super) struct EndedContexts {
    /// Real context → the epoch it last ended at.
    at: HashMap<u64, u64>,
    /// The newest epoch among entries dropped to stay within `KEEP`: a holder whose last look is older cannot be told
    /// which contexts ended since, so every buffer of its counts as gone (at worst a buffer leaks; none is used after
    /// the driver freed it).
    forgotten_up_to: u64,
}

impl EndedContexts {
    pub(super) fn record(&mut self, ctx: u64, epoch: u64) {
        self.at.insert(ctx, epoch);
        if self.at.len() > KEEP {
            // Drop the older half at once, so the scan is paid once per KEEP / 2 ends.
            let mut epochs: Vec<u64> = self.at.values().copied().collect();
            epochs.sort_unstable();
            let cut = epochs[epochs.len() / 2];
            self.at.retain(|_, &mut e| e > cut);
            self.forgotten_up_to = self.forgotten_up_to.max(cut);
        }
    }

    /// Whether `ctx` ended after `epoch`.
    pub(super) fn since(&self, ctx: u64, epoch: u64) -> bool {
        epoch < self.forgotten_up_to || self.at.get(&ctx).is_some_and(|&at| at > epoch)
    }

    /// Whether the driver freed `buf` with its context: an end after its holder last looked (`looked`) or after
    /// it was made, whichever is later.
    pub(super) fn took(&self, buf: &HostBuffer, looked: u64) -> bool {
        self.since(buf.ctx, looked.max(buf.epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_ended_after_the_holders_look_counts_and_one_before_does_not() {
        let mut ended = EndedContexts::default();
        ended.record(0xa, 3);
        assert!(ended.since(0xa, 2));
        assert!(!ended.since(0xa, 3), "the holder looked when it ended");
        assert!(!ended.since(0xb, 0), "never ended");
        ended.record(0xa, 9);
        assert!(ended.since(0xa, 5), "ended again");
    }

    #[test]
    fn past_the_bound_old_entries_go_and_stale_holders_forget_everything() {
        let mut ended = EndedContexts::default();
        for epoch in 1..=(KEEP as u64 + 1) {
            ended.record(0x1000 + epoch, epoch);
        }
        assert!(ended.at.len() <= KEEP / 2 + 1, "{} entries", ended.at.len());
        let cut = ended.forgotten_up_to;
        assert!(cut > 0);
        // A holder that looked before the dropped entries cannot tell: all of its buffers count as gone.
        assert!(ended.since(0xdead, cut - 1));
        // One that looked since is told exactly.
        assert!(!ended.since(0xdead, cut));
        assert!(ended.since(0x1000 + KEEP as u64 + 1, cut));
    }
}
