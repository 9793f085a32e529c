//! Streams held behind host counters (`Backend::stream_wait_counter`). The emulated backend runs each operation when
//! it is queued, so an operation on a held stream waits here first, as the GPU would run it only after the wait.
//!
//! Holds travel as they would on the GPU: an event recorded on a held stream completes only once the hold ends, a
//! stream that waits for that event is held too, and the legacy default stream and blocking streams of a context
//! hold each other. The caller blocks only where the driver would (an operation or a synchronize on a held stream);
//! recording and waiting for events never block.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::backend::HostCounter;

/// One hold: the counter and the value it must reach.
type Hold = (Arc<HostCounter>, u32);

/// A stream as holds are kept: built-in streams (NULL, legacy, per-thread) are each context's own.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    ctx: u64,
    stream: u64,
}

const LEGACY: u64 = 1;
const PER_THREAD: u64 = 2;

#[derive(Default)]
struct Inner {
    streams: HashMap<Key, Vec<Hold>>,
    events: HashMap<u64, Vec<Hold>>,
    /// Created streams: their context and whether they are non-blocking (`CU_STREAM_NON_BLOCKING`).
    created: HashMap<u64, (u64, bool)>,
}

#[derive(Default)]
pub(super) struct Waits {
    inner: Mutex<Inner>,
}

fn open(hold: &Hold) -> bool {
    hold.0.reached(hold.1)
}

impl Inner {
    fn key(&self, ctx: u64, stream: u64) -> Key {
        match stream {
            0 | LEGACY => Key { ctx, stream: LEGACY },
            PER_THREAD => Key { ctx, stream },
            s => Key { ctx: 0, stream: s },
        }
    }

    /// The context a stream belongs to and whether it synchronizes with the legacy stream.
    fn kind(&self, ctx: u64, stream: u64) -> (u64, bool) {
        match stream {
            0 | LEGACY | PER_THREAD => (ctx, true),
            s => self
                .created
                .get(&s)
                .map_or((ctx, false), |&(c, non_blocking)| (c, !non_blocking)),
        }
    }

    /// The holds still closed that an operation queued on `stream` waits for.
    fn closed_for(&mut self, ctx: u64, stream: u64) -> Vec<Hold> {
        self.streams.retain(|_, holds| {
            holds.retain(|h| !open(h));
            !holds.is_empty()
        });
        let own = self.key(ctx, stream);
        let (owner, blocking) = self.kind(ctx, stream);
        let legacy = Key {
            ctx: owner,
            stream: LEGACY,
        };
        let mut keys = vec![own];
        if own == legacy {
            // The legacy stream waits for every blocking stream of its context.
            keys.extend(self.streams.keys().copied().filter(|k| {
                *k != own
                    && (k.ctx == owner && k.stream == PER_THREAD
                        || k.ctx == 0 && self.kind(0, k.stream) == (owner, true))
            }));
        } else if blocking {
            keys.push(legacy);
        }
        keys.iter()
            .filter_map(|k| self.streams.get(k))
            .flatten()
            .cloned()
            .collect()
    }
}

impl Waits {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn note_stream(&self, stream: u64, ctx: u64, flags: u32) {
        self.inner().created.insert(stream, (ctx, flags & 1 != 0));
    }

    pub(super) fn forget_stream(&self, stream: u64) {
        let mut inner = self.inner();
        inner.created.remove(&stream);
        inner.streams.remove(&Key { ctx: 0, stream });
    }

    pub(super) fn forget_event(&self, event: u64) {
        self.inner().events.remove(&event);
    }

    /// Work queued on `stream` from now on waits until `counter` reaches `value`.
    pub(super) fn hold(&self, ctx: u64, stream: u64, counter: &Arc<HostCounter>, value: u32) {
        let mut inner = self.inner();
        let key = inner.key(ctx, stream);
        inner.streams.entry(key).or_default().push((counter.clone(), value));
    }

    /// Blocks until an operation queued on `stream` now could run.
    pub(super) fn await_stream(&self, ctx: u64, stream: u64) {
        let closed = self.inner().closed_for(ctx, stream);
        for (counter, value) in closed {
            counter.wait_for(value);
        }
    }

    /// Whether `stream` is held (its queued work not done).
    pub(super) fn stream_held(&self, ctx: u64, stream: u64) -> bool {
        !self.inner().closed_for(ctx, stream).is_empty()
    }

    /// Blocks until every hold of `ctx`'s streams ended (a context synchronize).
    pub(super) fn await_context(&self, ctx: u64) {
        let closed: Vec<Hold> = {
            let inner = self.inner();
            inner
                .streams
                .iter()
                .filter(|(k, _)| k.ctx == ctx || k.ctx == 0 && inner.kind(0, k.stream).0 == ctx)
                .flat_map(|(_, holds)| holds.iter().cloned())
                .collect()
        };
        for (counter, value) in closed {
            counter.wait_for(value);
        }
    }

    /// `event` recorded on `stream`: it completes when the stream's holds end.
    pub(super) fn record(&self, event: u64, ctx: u64, stream: u64) {
        let mut inner = self.inner();
        let closed = inner.closed_for(ctx, stream);
        if closed.is_empty() {
            inner.events.remove(&event);
        } else {
            inner.events.insert(event, closed);
        }
    }

    /// `stream` waits for `event`: it is held by whatever holds the event.
    pub(super) fn wait_event(&self, ctx: u64, stream: u64, event: u64) {
        let mut inner = self.inner();
        let Some(holds) = inner.events.get(&event) else { return };
        let closed: Vec<Hold> = holds.iter().filter(|h| !open(h)).cloned().collect();
        if !closed.is_empty() {
            let key = inner.key(ctx, stream);
            inner.streams.entry(key).or_default().extend(closed);
        }
    }

    pub(super) fn event_held(&self, event: u64) -> bool {
        self.inner()
            .events
            .get(&event)
            .is_some_and(|holds| holds.iter().any(|h| !open(h)))
    }

    pub(super) fn await_event(&self, event: u64) {
        let holds = self.inner().events.get(&event).cloned().unwrap_or_default();
        for (counter, value) in holds {
            counter.wait_for(value);
        }
    }
}
