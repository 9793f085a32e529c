//! Collectives off the channel: each app stream that carries collectives gets a lane, a thread of the session with
//! a stream and staging buffers of its own, that runs that stream's collectives one after another.
//!
//! Issuing one (`issue`, on the channel) records an event on the app's stream where the collective's inputs are
//! ready, queues the collective to the lane and holds the app's stream behind the lane's counter
//! (`Backend::stream_wait_counter`): work queued on that stream afterwards runs after the collective on the GPU,
//! while the channel, and the app thread behind it, go on at once (a backward pass overlaps its all-reduce; one
//! thread drives ranks on two devices). The lane waits for the event on its own stream, runs the steps, and sets
//! the counter; a collective's error reaches its channel's next synchronizing reply (set before the counter, so a
//! synchronize of the app's stream sees it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, Weak};

use vgpu_dataplane::coll::Plan;
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::CollRun;
use vgpu_dataplane::Endpoint;

use super::channel::{Channel, CHUNK};
use super::ended::EndedContexts;
use super::Session;
use crate::backend::{Backend, Context, Event, HostBuffer, HostCounter, Stream};

/// Most lanes (app streams carrying collectives, per context) one session keeps; past it a collective on yet
/// another stream fails with out-of-memory, the driver's answer when it runs out of resources.
const MAX_LANES: usize = 16;
/// Collectives queued to one lane at most; the channel issuing one more waits for room.
const LANE_QUEUE: usize = 256;
/// Staging a lane keeps: two buffers the receiving half fills and drains in turn, and three for a step that also
/// sends (two) and for a reduction's read back (one).
const LANE_STAGING: usize = 2;
const LANE_POOL: usize = 3;
/// `CU_STREAM_NON_BLOCKING`: a lane's stream must not wait for the legacy stream, which may be the app's held one.
const NON_BLOCKING: u32 = 1;

/// One collective, checked, for a lane.
struct Job {
    call: CollRun,
    plan: Plan,
    target: Option<Endpoint>,
    /// Recorded on the app's stream where the collective's inputs are ready.
    ready: Event,
    /// The counter value that releases the app's stream.
    number: u32,
    /// The issuing channel's slot for a collective's error code (0: none).
    late: Arc<AtomicU32>,
}

struct Lane {
    jobs: SyncSender<Job>,
    counter: Arc<HostCounter>,
    issued: u32,
    /// The session's `reset_epoch` when the lane started: its context's end (a reset, `cuCtxDestroy`) after that
    /// took its stream, and the buffers made in it.
    epoch: u64,
}

/// A session's lanes, by the app stream (and its context) they serve.
#[derive(Default)]
pub(super) struct Lanes(Mutex<HashMap<(Context, Stream), Lane>>);

/// Queues collective `call` (checked: `plan`, `target`) to the lane of `stream` in `context`, and holds `stream`
/// behind it (`on_lane`, the client's `FLAG_COLL_LANE`) or waits for it here (`wait_mode` says which wins).
/// `ch` is the issuing channel (its error slot, and the stream's ready event).
pub(super) fn issue(
    session: &Arc<Session>,
    (context, stream): (Context, Stream),
    (call, plan, target): (CollRun, Plan, Option<Endpoint>),
    ch: &Channel,
    on_lane: bool,
) -> CuResult<()> {
    let channel_waits = match wait_mode() {
        WaitMode::Channel => true,
        WaitMode::Lanes => false,
        WaitMode::Auto => !on_lane,
    };
    tracing::trace!(
        kind = call.kind,
        seq = call.seq,
        on_lane,
        channel_waits,
        "collective issued"
    );
    let b = &*session.backend;
    let mut lanes = session.coll_lanes.0.lock().unwrap_or_else(|p| p.into_inner());
    let epoch = session.reset_epoch.load(Ordering::Acquire);
    // Lanes of an ended context go (their threads end once their queues are done).
    lanes.retain(|(ctx, _), lane| !session.context_ended_since(ctx.0, lane.epoch));
    let key = (context, stream);
    if !lanes.contains_key(&key) {
        if lanes.len() >= MAX_LANES {
            tracing::warn!("a collective on a {}th stream of one session: refused", MAX_LANES + 1);
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        lanes.insert(key, Lane::start(session, context, epoch)?);
    }
    let Some(lane) = lanes.get_mut(&key) else {
        return Err(CUDA_ERROR_UNKNOWN);
    };
    let ready = ch.mark(stream)?;
    let number = lane.issued.wrapping_add(1);
    let job = Job {
        call,
        plan,
        target,
        ready,
        number,
        late: ch.late.clone(),
    };
    if lane.jobs.send(job).is_err() {
        // The lane's thread ended (it cannot panic past its guard; a spawn-time failure is caught in `start`).
        let _ = b.event_destroy(ready);
        lanes.remove(&key);
        return Err(CUDA_ERROR_UNKNOWN);
    }
    lane.issued = number;
    let held = if channel_waits {
        Err(CUDA_ERROR_NOT_SUPPORTED)
    } else {
        b.stream_wait_counter(stream, &lane.counter, number)
    };
    if let Err(e) = held {
        // Without a device-side wait the channel waits here, as it did before lanes: slower, still in order.
        if !channel_waits {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    code = e.code(),
                    "the driver refused a stream wait on a host counter: collectives hold their channel until they end"
                )
            });
        }
        let counter = lane.counter.clone();
        drop(lanes);
        // The requests queued behind this one wait their turn however long the other ranks take (a rank late by
        // seconds), rather than run ahead of it after the order's time limit.
        let _held = session.order.hold();
        counter.wait_for(number);
    }
    Ok(())
}

/// Where a collective's channel waits: `VGPU_COLL_WAIT` = `channel` (always the channel, as before lanes), `lanes`
/// (never: the app's stream is held on the GPU), unset or `auto` (lanes for collectives of an NCCL group only).
///
/// Why not lanes always: on an H100 and an H200, PyTorch's DDP over two servers stalled with every collective on a
/// lane (`bench/results/2026-12-07-stop20/`): a stream held on the GPU behind a host counter meets calls that wait for
/// the device (and the session's request order across channels) in ways not yet understood, while the channel
/// waiting for a lone collective is what DDP ran correctly with. Groups need lanes: one thread's collectives on two
/// devices of one server, or a ring's sends and receives on two streams, wait for each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WaitMode {
    Auto,
    Channel,
    Lanes,
}

fn wait_mode() -> WaitMode {
    static MODE: std::sync::OnceLock<WaitMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("VGPU_COLL_WAIT").as_deref().map(str::trim) {
        Ok("channel") => WaitMode::Channel,
        Ok("lanes") => WaitMode::Lanes,
        Ok("") | Ok("auto") | Err(_) => WaitMode::Auto,
        Ok(other) => {
            tracing::warn!("VGPU_COLL_WAIT={other}: use auto, lanes or channel; auto it is");
            WaitMode::Auto
        }
    })
}

thread_local! {
    /// Set on a lane's thread (`on_lane`).
    static ON_LANE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is a collective's lane, which must not free memory while it runs (`Channel::give_back`).
pub(super) fn on_lane() -> bool {
    ON_LANE.with(|l| l.get())
}

impl Lane {
    /// A lane for `context`'s stream: its stream, counter and staging made here, on the channel, before the stream
    /// is held (bench/NOTES.md §22 says what is not known about such allocations while other lanes hold streams),
    /// its thread started.
    fn start(session: &Arc<Session>, context: Context, epoch: u64) -> CuResult<Lane> {
        let b = session.backend.clone();
        let kit = Kit::allocate(&*b, session, epoch)?;
        let stream = match b.stream_create(NON_BLOCKING, 0) {
            Ok(s) => s,
            Err(e) => {
                kit.free(&*b, Some(session), &session.ended_book(), epoch);
                return Err(e);
            }
        };
        let counter = match session.alloc_pinned(4096) {
            Ok(buf) => match HostCounter::new(buf) {
                Some(c) => Arc::new(c),
                // `host_alloc` gives whole pages: always room for the word.
                None => {
                    kit.free(&*b, Some(session), &session.ended_book(), epoch);
                    let _ = b.stream_destroy(stream);
                    return Err(CUDA_ERROR_UNKNOWN);
                }
            },
            Err(e) => {
                kit.free(&*b, Some(session), &session.ended_book(), epoch);
                let _ = b.stream_destroy(stream);
                return Err(e);
            }
        };
        let (jobs, queue) = sync_channel::<Job>(LANE_QUEUE);
        let worker = Worker {
            session: Arc::downgrade(session),
            backend: b.clone(),
            context,
            stream,
            counter: counter.clone(),
            epoch,
            book: session.ended_book(),
        };
        let spawned = std::thread::Builder::new()
            .name("vgpu-coll-lane".into())
            .spawn(move || worker.run(queue, kit));
        if spawned.is_err() {
            // The closure (and the kit in it) was dropped unspawned: its pinned buffers leak, once.
            let _ = b.stream_destroy(stream);
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        Ok(Lane {
            jobs,
            counter,
            issued: 0,
            epoch,
        })
    }
}

/// A lane's pinned buffers between collectives: the staging pair and the pool (held against the session's budget).
struct Kit {
    staging: Vec<HostBuffer>,
    pool: Vec<HostBuffer>,
}

impl Kit {
    fn allocate(b: &dyn Backend, session: &Session, epoch: u64) -> CuResult<Kit> {
        let pooled = (LANE_POOL * CHUNK) as u64;
        if !session.hold_host(pooled) {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let mut kit = Kit {
            staging: Vec::new(),
            pool: Vec::new(),
        };
        for i in 0..LANE_STAGING + LANE_POOL {
            match session.alloc_pinned(CHUNK) {
                Ok(buf) if i < LANE_STAGING => kit.staging.push(buf),
                Ok(buf) => kit.pool.push(buf),
                Err(e) => {
                    let held: u64 = kit.pool.iter().map(|b| b.len as u64).sum();
                    session.release_host(pooled - held);
                    kit.free(b, Some(session), &session.ended_book(), epoch);
                    return Err(e);
                }
            }
        }
        Ok(kit)
    }

    /// Frees the buffers, giving the pool's bytes back to the session's budget (if the session is still there);
    /// those a context's end took after `epoch` (the book says, even once the session is gone) are only forgotten.
    fn free(self, b: &dyn Backend, session: Option<&Session>, book: &Mutex<EndedContexts>, epoch: u64) {
        if let Some(session) = session {
            session.release_host(self.pool.iter().map(|b| b.len as u64).sum());
        }
        let alive: Vec<HostBuffer> = {
            let book = book.lock().unwrap_or_else(|p| p.into_inner());
            self.staging
                .into_iter()
                .chain(self.pool)
                .filter(|buf| !book.took(buf, epoch))
                .collect()
        };
        // Freed outside the book's lock: cuMemFreeHost may wait for the device.
        for buf in alive {
            b.host_free(buf);
        }
    }
}

/// A lane's thread: what it runs collectives with. It holds the session weakly, so a session whose client left
/// ends its lanes (dropping their queues) rather than being kept alive by them.
struct Worker {
    session: Weak<Session>,
    backend: Arc<dyn Backend>,
    context: Context,
    stream: Stream,
    counter: Arc<HostCounter>,
    epoch: u64,
    /// The session's book of ended contexts, held strongly: the lane may end after the session and must still know
    /// what a context's end took.
    book: Arc<Mutex<EndedContexts>>,
}

/// Sets the counter to a collective's number however its run ends, so the app's stream is never held for good.
struct Release<'a>(&'a HostCounter, u32);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.set(self.1);
    }
}

impl Worker {
    fn run(self, queue: Receiver<Job>, kit: Kit) {
        ON_LANE.with(|l| l.set(true));
        let b = &*self.backend;
        let mut kit = Some(kit);
        let entered = b.ctx_set_current(self.context);
        while let Ok(job) = queue.recv() {
            let _release = Release(&self.counter, job.number);
            let outcome = match (self.session.upgrade(), entered) {
                (Some(session), Ok(())) if !session.context_ended_since(self.context.0, self.epoch) => {
                    // A panic fails this collective only: the lane goes on releasing the ones queued behind it
                    // (without staging, lost with the panic, they fail as out of memory).
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_job(&session, &job, &mut kit)))
                        .unwrap_or(Err(CUDA_ERROR_UNKNOWN))
                }
                (_, Err(e)) => Err(e),
                // The context's end (a reset, `cuCtxDestroy`) destroyed the lane's stream and the app's: nothing of
                // it runs.
                _ => Err(CUDA_ERROR_CONTEXT_IS_DESTROYED),
            };
            if let Err(e) = outcome {
                tracing::warn!(
                    code = e.code(),
                    kind = job.call.kind,
                    seq = job.call.seq,
                    number = job.number,
                    "a collective failed on its lane; the issuing channel reports it"
                );
                // The first error since the channel's last reply stays, as a latched one does.
                let _ = job
                    .late
                    .compare_exchange(0, e.code(), Ordering::AcqRel, Ordering::Acquire);
            }
        }
        // The session ended or dropped this lane: what the lane made goes, unless its context's end took it already.
        let session = self.session.upgrade();
        let book = || self.book.lock().unwrap_or_else(|p| p.into_inner());
        if !book().since(self.context.0, self.epoch) && entered.is_ok() {
            let _ = b.stream_synchronize(self.stream);
            let _ = b.stream_destroy(self.stream);
        }
        if let Some(kit) = kit.take() {
            kit.free(b, session.as_deref(), &self.book, self.epoch);
        }
        if let Ok(counter) = Arc::try_unwrap(self.counter) {
            let buf = counter.into_buffer();
            if !book().took(&buf, self.epoch) {
                b.host_free(buf);
            }
        }
    }

    /// One collective: the lane's stream waits for its inputs, its steps run there, and the lane waits for the
    /// stream before releasing the app's.
    fn run_job(&self, session: &Arc<Session>, job: &Job, kit: &mut Option<Kit>) -> CuResult<()> {
        let b = &*self.backend;
        let waited = b.stream_wait_event(self.stream, job.ready, 0);
        let _ = b.event_destroy(job.ready);
        waited?;
        let Some(Kit { staging, pool }) = kit.take() else {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        };
        let mut ch = Channel::for_lane(session.clone(), staging, pool);
        let ran = ch.run_collective(&job.call, &job.plan, self.stream, job.target.as_ref());
        let synced = b.stream_synchronize(self.stream);
        let (staging, pool) = ch.into_buffers();
        *kit = Some(Kit { staging, pool });
        ran.and(synced)
    }
}
