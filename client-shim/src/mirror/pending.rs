//! What queued device work may have changed in a mirrored region, and the two decisions built on it: which side
//! holds a range's newest bytes, and which bytes a pull brings back.

use std::collections::BTreeSet;

use vgpu_dataplane::digest::{chunk_hash, CHUNK};

/// What queued work may have changed in one mirrored region since the host's bytes and the mirror last agreed.
/// A pull brings back only that: the chunks a kernel changed (their hash differs from what was pushed) and the
/// ranges copies wrote. The host's other bytes stay, so host writes made after the work finished survive a pull
/// (a kernel argument word that only looks like a pointer into the region pushes it but changes nothing there).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Threads that queued the work; each one's synchronizing call pulls the region.
    pub(super) owners: BTreeSet<u64>,
    /// Per `CHUNK` of the region's data: the hash of the bytes pushed before a kernel ran (mirror == host then).
    pub(super) pushed: Option<Vec<u64>>,
    /// Ranges (offset from the region's data, length) that device-to-host copies wrote into the mirror.
    pub(super) copied: Vec<(usize, usize)>,
    /// A kernel ran over a region whose mirror was already newer than the host somewhere: every byte comes back.
    pub(super) whole: bool,
}

/// Which side holds the newest bytes of a range (`Pending::newest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Newest {
    Host,
    Mirror,
    /// Known only once the queued work is done.
    Unknown,
}

impl Pending {
    /// Whether [off, off+n) lies inside one copied range (the mirror's bytes there are the newer ones).
    pub(super) fn copied_covers(&self, off: usize, n: usize) -> bool {
        self.copied.iter().any(|&(o, l)| off >= o && off + n <= o + l)
    }

    /// Where the newest bytes of [off, off+n) of the region are (`n` > 0), `host` being the region's bytes here:
    /// copies that wrote all of it → the mirror; no copy touching it and no push → the host; after a push, the
    /// mirror where the host has not changed those chunks since (a kernel may have written them), the host where
    /// it has changed all of them (it rewrote the buffer once it saw the work done); any mix → unknown.
    pub(super) fn newest(&self, off: usize, n: usize, host: &[u8]) -> Newest {
        let copied_overlap = self.copied.iter().any(|&(o, l)| o < off + n && off < o + l);
        if self.whole {
            return Newest::Unknown;
        }
        let Some(pushed) = &self.pushed else {
            return match (self.copied_covers(off, n), copied_overlap) {
                (true, _) => Newest::Mirror,
                (false, false) => Newest::Host,
                (false, true) => Newest::Unknown,
            };
        };
        if copied_overlap {
            return Newest::Unknown;
        }
        let (first, last) = (off / CHUNK, (off + n - 1) / CHUNK);
        let changed = (first..=last)
            .filter(|&i| {
                let chunk = host.get(i * CHUNK..((i + 1) * CHUNK).min(host.len())).unwrap_or(&[]);
                pushed.get(i) != Some(&chunk_hash(chunk))
            })
            .count();
        match changed {
            0 => Newest::Mirror,
            c if c == last - first + 1 => Newest::Host,
            _ => Newest::Unknown,
        }
    }

    /// The runs of chunks (byte ranges of the region) a pull must bring back, given the mirror's chunk hashes now:
    /// those that changed since the push, and those copies wrote.
    pub(super) fn changed_runs(&self, pushed: &[u64], now: &[u64], len: usize) -> Vec<(usize, usize)> {
        let changed = |i: usize| {
            let off = i * CHUNK;
            pushed.get(i) != now.get(i) || self.copied.iter().any(|&(o, l)| o < off + CHUNK && off < o + l)
        };
        let mut runs = Vec::new();
        let mut i = 0;
        while i < now.len() {
            if !changed(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < now.len() && changed(i) {
                i += 1;
            }
            runs.push((start * CHUNK, (i * CHUNK).min(len)));
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpu_dataplane::digest::chunk_hashes;

    fn pushed_over(bytes: &[u8]) -> Pending {
        Pending {
            pushed: Some(chunk_hashes(bytes)),
            ..Default::default()
        }
    }

    #[test]
    fn copies_decide_by_their_ranges() {
        let p = Pending {
            copied: vec![(4096, 8192)],
            ..Default::default()
        };
        let host = vec![0u8; 4 * CHUNK];
        assert_eq!(p.newest(4096, 100, &host), Newest::Mirror, "inside a copied range");
        assert_eq!(p.newest(0, 100, &host), Newest::Host, "no copy touched it");
        assert_eq!(p.newest(4000, 200, &host), Newest::Unknown, "partly copied");
    }

    #[test]
    fn after_a_push_the_host_wins_where_it_rewrote_the_chunks() {
        let mut host = vec![1u8; 4 * CHUNK];
        let p = pushed_over(&host);
        assert_eq!(
            p.newest(CHUNK, 10, &host),
            Newest::Mirror,
            "unchanged: a kernel may have written it"
        );
        host[CHUNK..2 * CHUNK].fill(9);
        assert_eq!(p.newest(CHUNK, CHUNK, &host), Newest::Host, "rewritten since the push");
        assert_eq!(
            p.newest(CHUNK, 2 * CHUNK, &host),
            Newest::Unknown,
            "one chunk rewritten, one not"
        );
        let whole = Pending {
            whole: true,
            ..pushed_over(&host)
        };
        assert_eq!(whole.newest(0, 1, &host), Newest::Unknown);
    }

    #[test]
    fn a_pull_brings_back_changed_and_copied_chunks_only() {
        let before = vec![0u8; 5 * CHUNK + 100];
        let mut after = before.clone();
        after[2 * CHUNK + 7] = 1;
        after[3 * CHUNK] = 1;
        let p = Pending {
            copied: vec![(5 * CHUNK, 50)],
            ..pushed_over(&before)
        };
        let runs = p.changed_runs(&chunk_hashes(&before), &chunk_hashes(&after), after.len());
        assert_eq!(runs, vec![(2 * CHUNK, 4 * CHUNK), (5 * CHUNK, 5 * CHUNK + 100)]);
        let none = pushed_over(&before).changed_runs(&chunk_hashes(&before), &chunk_hashes(&before), before.len());
        assert!(none.is_empty(), "a kernel that wrote nothing costs no bytes");
    }
}
