//! Handler: one rank's part of a collective between servers (`CollRun`, issued by vGPU's `libnccl.so.2`). The
//! server plans the steps (`vgpu_dataplane::coll::plan`) and runs them in the stream's order over the peer-copy
//! connections of `peer.rs`: each step sends to the next rank's server on a thread of its own while the channel
//! receives from the previous one, reducing arrived bytes into device memory through host staging.
//!
//! The bytes of a collective never pass through a client. Reductions run on the host (the staged bytes) so the
//! emulated backend computes the same results as the real one; their cost is modelled in bench/NOTES.md §21.

use vgpu_dataplane::coll::{self, Buf, Combine, Part, Series};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::DevicePtr;
use vgpu_dataplane::wire::*;

use super::channel::{Channel, Cx, Serve, Served, CHUNK};
use super::copy::Span;
use super::peer::{endpoint_of, SendHalf};
use super::ChannelEnd;
use crate::backend::{HostBuffer, Stream};
use vgpu_dataplane::Transport;

/// How arrived bytes combine with those at their place: the collective's element type and operation, and the
/// divisor of an average's last reduction (0 or 1: none).
#[derive(Debug, Clone, Copy)]
pub(super) struct Reduction {
    pub dtype: u32,
    pub op: u32,
    pub divide: u32,
}

impl Serve<CollRun> for Channel {
    fn serve(&mut self, c: CollRun, cx: &mut Cx<'_>) -> Served<Empty> {
        // Checked here, run on the stream's lane (`lane.rs`): for a collective of an NCCL group the channel goes on
        // at once, the app's stream waiting for it on the GPU; otherwise the channel waits for it.
        let on_lane = cx.header.flags & FLAG_COLL_LANE != 0;
        let issued = self
            .plan_collective(&c, cx.per_thread)
            .and_then(|(stream, plan, target)| {
                let context = self.b().current_context();
                let session = self.session.clone();
                super::lane::issue(&session, (context, stream), (c, plan, target), self, on_lane)
            });
        Ok(issued.map(|_| Empty {}))
    }
}

impl Channel {
    /// The collective's stream, its checked plan and where it sends (the call's tail, when its operator listed it).
    fn plan_collective(
        &mut self,
        c: &CollRun,
        per_thread: bool,
    ) -> CuResult<(Stream, coll::Plan, Option<vgpu_dataplane::Endpoint>)> {
        let stream = self.stream(c.stream, per_thread)?;
        let plan = if c.kind == coll::KIND_SEND_RECV {
            let sends = c.send_peer != coll::NO_PEER;
            let receives = c.recv_peer != coll::NO_PEER;
            coll::plan_send_recv(c.dtype, c.count, c.recv_count, sends, receives)
        } else {
            coll::plan(&coll::Collective {
                kind: c.kind,
                dtype: c.dtype,
                op: c.op,
                nranks: c.nranks,
                rank: c.rank,
                root: c.root,
                count: c.count,
            })
        }
        .map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        if plan.scratch_len > c.scratch_size {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        for (at, len) in [
            (c.src, plan.src_len),
            (c.dst, plan.dst_len),
            (c.scratch, plan.scratch_len),
        ] {
            if len > 0 {
                self.check_range(at, len)?;
            }
        }
        let target = if plan.steps.iter().any(|s| s.send.is_some()) {
            let asked = endpoint_of(&self.tail)?;
            Some(self.s().allowed_peer(&asked).ok_or(CUDA_ERROR_NOT_PERMITTED)?)
        } else {
            None
        };
        Ok((stream, plan, target))
    }

    /// Runs a checked collective's steps on `stream` (a lane's own), with this channel's staging buffers.
    pub(super) fn run_collective(
        &mut self,
        c: &CollRun,
        plan: &coll::Plan,
        stream: Stream,
        target: Option<&vgpu_dataplane::Endpoint>,
    ) -> CuResult<()> {
        self.ensure_staging()?;
        let both = plan.steps.iter().any(|s| s.send.is_some() && s.recv.is_some());
        let mut own = Vec::new();
        if both {
            own.push(self.take_buffer(CHUNK)?);
            own.push(self.take_buffer(CHUNK)?);
        }
        let result = self.run_steps(c, &plan.steps, stream, target, &mut own);
        for buf in own {
            self.give_back(buf);
        }
        result
    }

    fn run_steps(
        &mut self,
        c: &CollRun,
        steps: &[coll::Step],
        stream: Stream,
        target: Option<&vgpu_dataplane::Endpoint>,
        own: &mut [HostBuffer],
    ) -> CuResult<()> {
        let (out_series, in_series, mut sent, mut received) = if c.kind == coll::KIND_SEND_RECV {
            (Series::PointToPoint, Series::PointToPoint, c.seq, c.seq2)
        } else {
            let s = Series::Collective { seq: c.seq };
            (s, s, 0, 0)
        };
        let at = |p: Part| -> DevicePtr {
            let base = match p.buf {
                Buf::Src => c.src,
                Buf::Dst => c.dst,
                Buf::Scratch => c.scratch,
            };
            base.offset(p.offset)
        };
        for step in steps {
            if let Some((to, from)) = step.copy {
                if to.len > 0 && at(to) != at(from) {
                    self.b().memcpy_dtod_async(at(to), at(from), to.len, stream)?;
                }
            }
            let send = step.send.map(|p| {
                let token = coll::token(&c.secret, out_series, c.rank, c.send_peer, sent);
                sent += 1;
                (token, p)
            });
            let recv = step.recv.map(|(p, combine)| {
                let token = coll::token(&c.secret, in_series, c.recv_peer, c.rank, received);
                received += 1;
                (token, p, combine)
            });
            let reduction = |combine| match combine {
                Combine::Replace => None,
                Combine::Reduce { divide } => Some(Reduction {
                    dtype: c.dtype,
                    op: c.op,
                    divide,
                }),
            };
            match (send, recv, target) {
                (Some((token, p)), None, Some(target)) => {
                    let mut half = SendHalf {
                        session: &self.session,
                        staging: &mut self.staging,
                    };
                    half.send(
                        target,
                        (c.send_session, token),
                        (Span::Bytes(at(p)), p.len),
                        Ok((stream, len_of(p)?)),
                    )?;
                }
                (None, Some((token, p, combine)), _) => {
                    let prepared = Ok((stream, len_of(p)?));
                    self.receive(token, prepared, (Span::Bytes(at(p)), p.len), reduction(combine))?;
                }
                (Some((out_token, out)), Some((in_token, inc, combine)), Some(target)) => {
                    let session = self.session.clone();
                    let context = self.b().current_context();
                    let (src, out_len) = (at(out), len_of(out)?);
                    let in_len = len_of(inc)?;
                    let (sent_result, received_result) = std::thread::scope(|scope| {
                        let sender = scope.spawn(|| {
                            // The driver's calls on this thread act in the channel's context.
                            session.backend.ctx_set_current(context)?;
                            let mut half = SendHalf {
                                session: &session,
                                staging: own,
                            };
                            half.send(
                                target,
                                (c.send_session, out_token),
                                (Span::Bytes(src), out.len),
                                Ok((stream, out_len)),
                            )
                        });
                        let got = self.receive(
                            in_token,
                            Ok((stream, in_len)),
                            (Span::Bytes(at(inc)), inc.len),
                            reduction(combine),
                        );
                        (sender.join().unwrap_or(Err(CUDA_ERROR_UNKNOWN)), got)
                    });
                    received_result?;
                    sent_result?;
                }
                (None, None, _) => {}
                // A send without a target cannot be planned (the target is checked above).
                (Some(_), _, None) => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        Ok(())
    }

    /// Receives `len` bytes into `dst` chunk by chunk, each reduced with the bytes already there: the device's
    /// chunk is read into a host buffer, the arrived one reduced into it, and the result written back, in
    /// `stream`'s order. A reader thread takes the next chunk off the connection into the other staging buffer
    /// meanwhile, so the network and the reduction overlap.
    pub(super) fn reduce_through_staging(
        &mut self,
        t: &mut dyn Transport,
        dst: DevicePtr,
        len: usize,
        stream: Stream,
        r: Reduction,
    ) -> Result<CuResult<()>, ChannelEnd> {
        let mut acc = match self.take_buffer(CHUNK) {
            Ok(b) => b,
            Err(e) => {
                self.discard(t, len)?;
                return Ok(Err(e));
            }
        };
        let b = &*self.session.backend;
        let (first, second) = self.staging.split_at_mut(1);
        let (received, outcome) = std::thread::scope(|scope| {
            // Buffers travel between the reader (to fill) and this thread (to reduce from) by channel.
            let (free_tx, free_rx) = std::sync::mpsc::channel::<&mut HostBuffer>();
            let (full_tx, full_rx) = std::sync::mpsc::channel::<(&mut HostBuffer, usize)>();
            let reader = scope.spawn(move || -> Result<(), ChannelEnd> {
                let mut done = 0usize;
                while done < len {
                    let n = (len - done).min(CHUNK);
                    let Ok(buf) = free_rx.recv() else { return Ok(()) };
                    t.recv_exact(&mut buf.as_mut_slice()[..n])?;
                    if full_tx.send((buf, n)).is_err() {
                        return Ok(());
                    }
                    done += n;
                }
                Ok(())
            });
            let _ = free_tx.send(&mut first[0]);
            let _ = free_tx.send(&mut second[0]);
            let mut done = 0usize;
            let mut error = None;
            while done < len {
                // The reader ended early only on a failed connection, which its join reports.
                let Ok((buf, n)) = full_rx.recv() else { break };
                if error.is_none() {
                    let at = dst.offset(done as u64);
                    error = reduce_chunk(b, &mut acc, buf, at, n, stream, r).err();
                }
                let _ = free_tx.send(buf);
                done += n;
            }
            drop(free_tx);
            let received = reader.join().unwrap_or(Err(ChannelEnd::Closed));
            let outcome = match error {
                Some(e) => Err(e),
                None => b.stream_synchronize(stream),
            };
            (received, outcome)
        });
        self.give_back(acc);
        received?;
        Ok(outcome)
    }
}

/// One chunk of a reducing receive: the device's `n` bytes at `at` read into `acc`, `arrived` reduced into them,
/// the result queued back to the device (the next chunk's read, on the same stream, waits for it).
fn reduce_chunk(
    b: &dyn crate::backend::Backend,
    acc: &mut HostBuffer,
    arrived: &HostBuffer,
    at: DevicePtr,
    n: usize,
    stream: Stream,
    r: Reduction,
) -> CuResult<()> {
    // Waiting first also frees `acc` from the previous chunk's write back.
    b.stream_synchronize(stream)?;
    b.memcpy_dtoh_async(acc, at, n, stream)?;
    b.stream_synchronize(stream)?;
    coll::reduce_into_parallel(
        r.dtype,
        r.op,
        &mut acc.as_mut_slice()[..n],
        &arrived.as_slice()[..n],
        r.divide,
        reduction_threads(),
    )
    .map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    b.memcpy_htod_async(at, acc, n, stream)
}

/// Threads a reduction of one chunk uses: `VGPU_REDUCE_THREADS`, else up to 4 of the host's cores (a collective's
/// receive waits for its reduction; the session's other work goes on meanwhile on its own threads).
fn reduction_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("VGPU_REDUCE_THREADS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|n: &usize| (1..=64).contains(n))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)))
    })
}

/// A part's length as the copy helpers count it.
fn len_of(p: Part) -> CuResult<usize> {
    usize::try_from(p.len).map_err(|_| CUDA_ERROR_INVALID_VALUE)
}
