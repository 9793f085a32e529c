//! What queued device work may have changed in a mirrored region, and the two decisions built on it: which side
//! holds a range's newest bytes, and which bytes a pull brings back.

use std::collections::BTreeMap;

use vgpu_dataplane::digest::{chunk_hash, CHUNK};

/// What queued work may have changed in one mirrored region since the host's bytes and the mirror last agreed.
/// A pull brings back only that: the chunks a kernel changed (their hash differs from what was pushed) and the
/// ranges copies wrote. The host's other bytes stay, so host writes made after the work finished survive a pull
/// (a kernel argument word that only looks like a pointer into the region pushes it but changes nothing there).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Where the work was queued, with when (`Marks`): a call that waits for any of these streams, after the first
    /// such work was queued, pulls the region (`Covered`). One entry per stream however much work it queued.
    pub(super) owners: BTreeMap<Writer, Marks>,
    /// Per `CHUNK` of the region's data: the hash of the bytes pushed before a kernel ran (mirror == host then).
    pub(super) pushed: Option<Vec<u64>>,
    /// Ranges (offset from the region's data, length) that device-to-host copies wrote into the mirror.
    pub(super) copied: Vec<(usize, usize)>,
    /// A kernel ran over a region whose mirror was already newer than the host somewhere: every byte comes back.
    pub(super) whole: bool,
}

/// `Pending::summary`.
pub(super) struct Summary<'a>(&'a Pending);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.0;
        write!(
            f,
            "owners {:?}, copied {:?}, pushed {}, whole {}",
            p.owners,
            p.copied,
            p.pushed.is_some(),
            p.whole
        )
    }
}

/// How mirrors name a stream of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StreamKey {
    /// The legacy default stream (the null stream of a call without the per-thread flag).
    Legacy,
    /// A thread's per-thread default stream (that thread's number): only that thread queues work on it, but any
    /// thread may wait for it through an event recorded there.
    PerThread(u64),
    /// A stream the app created (its id).
    Created(u64),
}

impl StreamKey {
    /// One number per key (for remembering an idle stream).
    pub fn as_u64(self) -> u64 {
        match self {
            StreamKey::Legacy => vgpu_dataplane::ids::StreamId::LEGACY.get(),
            StreamKey::PerThread(thread) => u64::MAX - thread,
            StreamKey::Created(id) => id,
        }
    }
}

/// Where work that may change a mirrored region was queued: the stream (of one server) that a wait must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Writer {
    pub(super) server: usize,
    pub(super) stream: StreamKey,
    /// Whether the legacy default stream waits for this stream's work (every stream but non-blocking ones).
    pub(super) blocking: bool,
}

/// When a writer's pending work on a region was queued, in the process's count of marks (`mirror::marks_so_far`):
/// its first and its last still pending. An event recorded before a mark does not cover that work, whichever
/// thread asks about the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Marks {
    pub(super) first: u64,
    pub(super) last: u64,
}

/// What a synchronizing call waited for, and so whose queued writes into mirrors are done once it returns, as the
/// driver orders streams: a stream's wait covers that stream's work, whichever thread queued it (a framework's
/// worker thread waits for copies the main thread queued); a wait on the legacy default stream also covers every
/// blocking stream of the context; a context's wait covers everything. Work on other streams may still be
/// running: pulling it early would bring back stale bytes and lose the later ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    /// The legacy default stream of one server, and so its blocking streams (the copies and memsets that name no
    /// stream, `cuStreamSynchronize` of the null stream).
    Legacy(usize),
    /// One stream of one server (`cuStreamSynchronize`, a stream or event found complete, a host function); a
    /// per-thread default stream also waits for the legacy stream.
    Stream { server: usize, stream: StreamKey },
    /// Every stream of one server's context (`cuCtxSynchronize`).
    Server(usize),
}

impl Covered {
    /// Whether the work `w` queued is done once a call that waited for `self` returns.
    pub(super) fn covers(self, w: &Writer) -> bool {
        match self {
            Covered::Server(server) => w.server == server,
            Covered::Legacy(server)
            | Covered::Stream {
                server,
                stream: StreamKey::Legacy,
            } => w.server == server && w.blocking,
            Covered::Stream {
                server,
                stream: StreamKey::PerThread(t),
            } => w.server == server && (w.stream == StreamKey::PerThread(t) || w.stream == StreamKey::Legacy),
            Covered::Stream { server, stream } => w.server == server && w.stream == stream,
        }
    }
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
    /// Records work `w` queued at mark `at`.
    pub(super) fn add_owner(&mut self, w: Writer, at: u64) {
        self.owners
            .entry(w)
            .and_modify(|m| m.last = m.last.max(at))
            .or_insert(Marks { first: at, last: at });
    }

    /// Merges the owners of `other` (the same region's).
    pub(super) fn add_owners(&mut self, other: BTreeMap<Writer, Marks>) {
        for (w, m) in other {
            let entry = self.owners.entry(w).or_insert(m);
            entry.first = entry.first.min(m.first);
            entry.last = entry.last.max(m.last);
        }
    }

    /// Whether a wait for `covered`, which covered the work queued up to mark `before`, finished some of the work
    /// pending here.
    pub(super) fn some_done(&self, covered: Covered, before: u64) -> bool {
        self.owners.iter().any(|(w, m)| covered.covers(w) && m.first <= before)
    }

    /// Forgets the work such a wait finished; what its streams queued after `before` stays pending.
    pub(super) fn forget_done(&mut self, covered: Covered, before: u64) {
        self.owners.retain(|w, m| {
            if !covered.covers(w) || m.first > before {
                return true;
            }
            if m.last <= before {
                return false;
            }
            m.first = before + 1;
            true
        });
    }

    /// A one-line account for the debug log (the pushed hashes themselves left out), formatted only if printed.
    pub(super) fn summary(&self) -> Summary<'_> {
        Summary(self)
    }

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

    fn writer(server: usize, stream: StreamKey, blocking: bool) -> Writer {
        Writer {
            server,
            stream,
            blocking,
        }
    }

    #[test]
    fn an_event_covers_only_work_queued_before_it_and_a_stream_stays_one_owner() {
        let legacy = writer(0, StreamKey::Legacy, true);
        let side = writer(0, StreamKey::Created(7), false);
        let mut p = Pending::default();
        for at in [3, 5, 9] {
            p.add_owner(legacy, at);
        }
        p.add_owner(side, 4);
        assert_eq!(p.owners.len(), 2, "a stream's repeated work is one owner");
        let on_legacy = Covered::Legacy(0);
        assert!(
            !p.some_done(on_legacy, 2),
            "an event recorded before any of it covers none"
        );
        assert!(p.some_done(on_legacy, 5));
        p.forget_done(on_legacy, 5);
        assert_eq!(
            p.owners.get(&legacy),
            Some(&Marks { first: 6, last: 9 }),
            "what came after stays pending"
        );
        assert_eq!(
            p.owners.get(&side),
            Some(&Marks { first: 4, last: 4 }),
            "a non-blocking stream is not covered"
        );
        p.forget_done(on_legacy, u64::MAX);
        assert!(!p.owners.contains_key(&legacy));
        let mut other = BTreeMap::new();
        other.insert(side, Marks { first: 2, last: 8 });
        p.add_owners(other);
        assert_eq!(p.owners.get(&side), Some(&Marks { first: 2, last: 8 }));
    }

    #[test]
    fn a_wait_covers_what_the_driver_waited_for_and_nothing_else() {
        use StreamKey::*;
        let main_on_side = writer(0, Created(0x100), false);
        let main_on_blocking = writer(0, Created(0x200), true);
        let main_on_legacy = writer(0, Legacy, true);
        let main_per_thread = writer(0, PerThread(1), true);
        let on_other_server = writer(1, Created(0x100), false);
        let stream = |server, stream| Covered::Stream { server, stream };
        // A stream's wait covers its work whichever thread waits, and not the work of other streams (an event of
        // another stream found complete must not bring back a copy still running).
        assert!(stream(0, Created(0x100)).covers(&main_on_side));
        assert!(!stream(0, Created(0x100)).covers(&on_other_server));
        for w in [main_on_side, main_on_blocking, main_on_legacy, main_per_thread] {
            assert!(!stream(0, Created(0x300)).covers(&w), "{w:?}");
        }
        // The legacy stream waits for blocking streams (the per-thread default ones too), not non-blocking ones.
        for legacy in [Covered::Legacy(0), stream(0, Legacy)] {
            assert!(legacy.covers(&main_on_blocking) && legacy.covers(&main_on_legacy));
            assert!(legacy.covers(&main_per_thread));
            assert!(!legacy.covers(&main_on_side) && !legacy.covers(&on_other_server));
        }
        // A thread's per-thread stream, waited for by that thread or through an event recorded there by another:
        // its own work and the legacy stream's, not another thread's per-thread stream.
        assert!(stream(0, PerThread(1)).covers(&main_per_thread));
        assert!(!stream(0, PerThread(2)).covers(&main_per_thread));
        assert!(stream(0, PerThread(2)).covers(&main_on_legacy) && !stream(0, PerThread(1)).covers(&main_on_side));
        // A context's wait covers every stream of its server.
        for w in [main_on_side, main_on_blocking, main_on_legacy, main_per_thread] {
            assert!(Covered::Server(0).covers(&w));
        }
        assert!(!Covered::Server(0).covers(&on_other_server));
    }

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
