//! The collectives and point-to-point calls: each is checked, numbered in its communicator's series and sent to
//! the rank's GPU server as one `CollRun` (see `vgpu_dataplane::coll` for the steps the servers take).
//!
//! Collectives are issued at once, also inside a group (every rank issues them in the same order, which is all
//! the servers need). Sends and receives inside a group wait for the outermost `ncclGroupEnd`, which pairs them
//! in rounds: in round d each rank sends to rank + d while it receives from rank − d, so the halves a server runs
//! together are always matched by the servers it talks to, whatever order the app queued them in.

use std::ffi::{c_int, c_void};
use std::sync::atomic::Ordering;

use super::*;

/// A send or receive queued in a group.
pub struct P2p {
    comm: ncclComm_t,
    send: bool,
    buf: u64,
    bytes: u64,
    peer: u32,
    stream: u64,
}

fn comm_of<'a>(comm: ncclComm_t) -> Result<&'a Comm, ncclResult_t> {
    ffi::comm(comm).ok_or_else(|| fail(ncclInvalidArgument, "a NULL communicator"))
}

fn elem(dtype: c_int) -> Result<u64, ncclResult_t> {
    u32::try_from(dtype).ok().and_then(coll::elem_size).ok_or_else(|| {
        fail(
            ncclInvalidArgument,
            format!("data type {dtype} is not supported by vGPU's NCCL"),
        )
    })
}

fn op_of(op: c_int) -> Result<u32, ncclResult_t> {
    match u32::try_from(op) {
        Ok(op) if op <= coll::OP_AVG => Ok(op),
        _ => Err(fail(
            ncclInvalidArgument,
            format!("reduction operation {op} is not supported by vGPU's NCCL"),
        )),
    }
}

impl Comm {
    fn desc(&self, kind: u32, dtype: u32, count: u64, src: u64, dst: u64, stream: u64) -> CollDesc {
        let n = self.nranks;
        let next = (self.rank + 1) % n;
        CollDesc {
            kind,
            dtype,
            nranks: n,
            rank: self.rank,
            send_peer: next,
            recv_peer: (self.rank + n - 1) % n,
            count,
            src,
            dst,
            stream,
            send_session: self.members[next as usize].session,
            secret: self.secret,
            device: self.device,
            ..CollDesc::default()
        }
    }

    /// Device memory of at least `bytes` for this collective (grown, never shrunk).
    fn scratch(&self, bytes: u64) -> Result<(u64, u64), ncclResult_t> {
        let mut kept = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&(ptr, size)) = kept.last() {
            if size >= bytes {
                return Ok((ptr, size));
            }
        }
        let size = bytes.next_power_of_two().max(1 << 20);
        let cuda = cuda()?;
        let len = usize::try_from(size).map_err(|_| fail(ncclInvalidArgument, "a buffer too large"))?;
        let ptr = cuda.mem_alloc_on(self.device, len).map_err(|r| {
            fail(
                ncclUnhandledCudaError,
                format!("cuMemAlloc of a collective's scratch: CUDA error {r}"),
            )
        })?;
        kept.push((ptr, size));
        Ok((ptr, size))
    }

    /// Numbers `d` in this communicator's series, lends it scratch where its plan needs some, and sends it.
    fn run(&self, mut d: CollDesc) -> Result<(), ncclResult_t> {
        let cuda = cuda()?;
        if d.kind != coll::KIND_SEND_RECV {
            let plan = coll::plan(&coll::Collective {
                kind: d.kind,
                dtype: d.dtype,
                op: d.op,
                nranks: d.nranks,
                rank: d.rank,
                root: d.root,
                count: d.count,
            })
            .map_err(|e| fail(ncclInvalidArgument, format!("this collective cannot run: {e:?}")))?;
            if plan.scratch_len > 0 {
                (d.scratch, d.scratch_size) = self.scratch(plan.scratch_len)?;
            }
            d.seq = self.seq.fetch_add(1, Ordering::AcqRel);
        }
        // Inside a group the thread may issue collectives whose parts wait for each other (one per device, or a
        // ring's sends and receives on two streams): those run on their streams' lanes at the server.
        if d.kind == coll::KIND_SEND_RECV || crate::GROUP.with(|g| g.borrow().0 > 0) {
            d.flags |= coll::COLL_GROUPED;
        }
        let peer = (d.send_peer != coll::NO_PEER).then(|| self.endpoints[d.send_peer as usize].as_c_str());
        let r = cuda.run(&d, peer);
        if r != 0 {
            return Err(fail(
                ncclUnhandledCudaError,
                format!("a collective could not be queued: CUDA error {r}"),
            ));
        }
        Ok(())
    }
}

fn ptr(p: *const c_void) -> u64 {
    p as usize as u64
}

/// What a collective entry point was given: its buffers, count and type, and its operation and root where it has
/// them.
struct Args {
    kind: u32,
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    dtype: c_int,
    op: Option<c_int>,
    root: Option<c_int>,
    comm: ncclComm_t,
    stream: *mut c_void,
}

/// Checks a collective's arguments (communicator, type, then operation and root) and issues it.
fn collective(a: Args) -> ncclResult_t {
    code((|| {
        let c = comm_of(a.comm)?;
        elem(a.dtype)?;
        let mut d = c.desc(
            a.kind,
            a.dtype as u32,
            a.count as u64,
            ptr(a.sendbuff),
            ptr(a.recvbuff),
            ptr(a.stream),
        );
        if let Some(op) = a.op {
            d.op = op_of(op)?;
        }
        if let Some(root) = a.root {
            d.root = u32::try_from(root).map_err(|_| fail(ncclInvalidArgument, format!("root {root}")))?;
        }
        c.run(d)
    })())
}

#[no_mangle]
pub extern "C" fn ncclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    dtype: c_int,
    op: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    collective(Args {
        kind: coll::KIND_ALL_REDUCE,
        sendbuff,
        recvbuff,
        count,
        dtype,
        op: Some(op),
        root: None,
        comm,
        stream,
    })
}

#[no_mangle]
pub extern "C" fn ncclBroadcast(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    dtype: c_int,
    root: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    collective(Args {
        kind: coll::KIND_BROADCAST,
        sendbuff,
        recvbuff,
        count,
        dtype,
        op: None,
        root: Some(root),
        comm,
        stream,
    })
}

#[no_mangle]
pub extern "C" fn ncclBcast(
    buff: *mut c_void,
    count: usize,
    dtype: c_int,
    root: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    ncclBroadcast(buff, buff, count, dtype, root, comm, stream)
}

#[no_mangle]
pub extern "C" fn ncclReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    dtype: c_int,
    op: c_int,
    root: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    collective(Args {
        kind: coll::KIND_REDUCE,
        sendbuff,
        recvbuff,
        count,
        dtype,
        op: Some(op),
        root: Some(root),
        comm,
        stream,
    })
}

#[no_mangle]
pub extern "C" fn ncclAllGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    dtype: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    collective(Args {
        kind: coll::KIND_ALL_GATHER,
        sendbuff,
        recvbuff,
        count: sendcount,
        dtype,
        op: None,
        root: None,
        comm,
        stream,
    })
}

#[no_mangle]
pub extern "C" fn ncclReduceScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcount: usize,
    dtype: c_int,
    op: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    collective(Args {
        kind: coll::KIND_REDUCE_SCATTER,
        sendbuff,
        recvbuff,
        count: recvcount,
        dtype,
        op: Some(op),
        root: None,
        comm,
        stream,
    })
}

/// All-to-all: block j of the input goes to rank j, block i of the output comes from rank i; one group of sends
/// and receives.
#[no_mangle]
pub extern "C" fn ncclAlltoAll(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    dtype: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    code((|| {
        let c = comm_of(comm)?;
        let block = (count as u64)
            .checked_mul(elem(dtype)?)
            .ok_or_else(|| fail(ncclInvalidArgument, "a count too large"))?;
        in_group(|| {
            let mut queued = Ok(());
            for peer in 0..c.nranks {
                let at = u64::from(peer) * block;
                for send in [true, false] {
                    let base = if send { ptr(sendbuff) } else { ptr(recvbuff) };
                    queued = queued.and(queue(comm, send, base + at, block, peer, ptr(stream)));
                }
            }
            queued
        })
    })())
}

#[no_mangle]
pub extern "C" fn ncclSend(
    sendbuff: *const c_void,
    count: usize,
    dtype: c_int,
    peer: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    p2p(comm, true, ptr(sendbuff), count, dtype, peer, ptr(stream))
}

#[no_mangle]
pub extern "C" fn ncclRecv(
    recvbuff: *mut c_void,
    count: usize,
    dtype: c_int,
    peer: c_int,
    comm: ncclComm_t,
    stream: *mut c_void,
) -> ncclResult_t {
    p2p(comm, false, ptr(recvbuff), count, dtype, peer, ptr(stream))
}

fn p2p(comm: ncclComm_t, send: bool, buf: u64, count: usize, dtype: c_int, peer: c_int, stream: u64) -> ncclResult_t {
    code((|| {
        let bytes = (count as u64)
            .checked_mul(elem(dtype)?)
            .ok_or_else(|| fail(ncclInvalidArgument, "a count too large"))?;
        let peer = u32::try_from(peer).map_err(|_| fail(ncclInvalidArgument, format!("peer {peer}")))?;
        in_group(|| queue(comm, send, buf, bytes, peer, stream))
    })())
}

/// Queues sends and receives with `queue_all` inside a group of their own, which runs them when it ends (inside the
/// app's group: when that ends). A queueing error wins over the group's.
fn in_group(queue_all: impl FnOnce() -> Result<(), ncclResult_t>) -> Result<(), ncclResult_t> {
    ncclGroupStart();
    let queued = queue_all();
    let ended = ncclGroupEnd();
    queued?;
    if ended != ncclSuccess {
        return Err(ended);
    }
    Ok(())
}

fn queue(comm: ncclComm_t, send: bool, buf: u64, bytes: u64, peer: u32, stream: u64) -> Result<(), ncclResult_t> {
    let c = comm_of(comm)?;
    if peer >= c.nranks {
        return Err(fail(ncclInvalidArgument, format!("peer {peer} of {} ranks", c.nranks)));
    }
    GROUP.with(|g| {
        g.borrow_mut().1.push(P2p {
            comm,
            send,
            buf,
            bytes,
            peer,
            stream,
        })
    });
    Ok(())
}

#[no_mangle]
pub extern "C" fn ncclGroupStart() -> ncclResult_t {
    GROUP.with(|g| g.borrow_mut().0 += 1);
    ncclSuccess
}

#[no_mangle]
pub extern "C" fn ncclGroupEnd() -> ncclResult_t {
    let queued = GROUP.with(|g| {
        let mut g = g.borrow_mut();
        if g.0 == 0 {
            return None;
        }
        g.0 -= 1;
        Some(if g.0 == 0 { std::mem::take(&mut g.1) } else { Vec::new() })
    });
    let Some(queued) = queued else {
        return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    };
    // Per communicator, in the order first used.
    let mut comms: Vec<ncclComm_t> = Vec::new();
    for op in &queued {
        if !comms.contains(&op.comm) {
            comms.push(op.comm);
        }
    }
    code(comms.into_iter().try_for_each(|comm| {
        let ops: Vec<&P2p> = queued.iter().filter(|o| o.comm == comm).collect();
        exchange(comm_of(comm)?, &ops)
    }))
}

#[no_mangle]
pub extern "C" fn ncclGroupSimulateEnd(_info: *mut c_void) -> ncclResult_t {
    // Nothing to simulate: ending the group later costs what it costs.
    ncclSuccess
}

/// Runs a group's sends and receives in rounds (see the module documentation).
fn exchange(c: &Comm, ops: &[&P2p]) -> Result<(), ncclResult_t> {
    let n = c.nranks;
    let cuda = cuda()?;
    for d in 0..n {
        let to = (c.rank + d) % n;
        let from = (c.rank + n - d) % n;
        let mut sends = ops.iter().filter(|o| o.send && o.peer == to).peekable();
        let mut recvs = ops.iter().filter(|o| !o.send && o.peer == from).peekable();
        while sends.peek().is_some() || recvs.peek().is_some() {
            let (s, r) = (sends.next(), recvs.next());
            if d == 0 {
                // To itself: a device copy in the receive's stream.
                let (Some(s), Some(r)) = (s, r) else {
                    return Err(fail(
                        ncclInvalidUsage,
                        "a send to this rank itself without its receive (or the reverse)",
                    ));
                };
                if s.bytes != r.bytes {
                    return Err(fail(
                        ncclInvalidArgument,
                        "a send to itself of another size than its receive",
                    ));
                }
                let len = usize::try_from(s.bytes).map_err(|_| ncclInvalidArgument)?;
                cu("cuMemcpyDtoDAsync", cuda.memcpy_dtod_async(r.buf, s.buf, len, r.stream))?;
                continue;
            }
            if let (Some(s), Some(r)) = (s, r) {
                if s.stream != r.stream {
                    // Two streams: two calls, each in its own stream's order; the server runs them at once on the
                    // streams' lanes, so neither waits for the other.
                    one_way(c, Some(s), None)?;
                    one_way(c, None, Some(r))?;
                    continue;
                }
            }
            one_way(c, s.copied(), r.copied())?;
        }
    }
    Ok(())
}

/// One `KIND_SEND_RECV` call: `s` sent while `r` is received.
fn one_way(c: &Comm, s: Option<&P2p>, r: Option<&P2p>) -> Result<(), ncclResult_t> {
    let stream = s.or(r).map_or(0, |o| o.stream);
    let mut d = c.desc(coll::KIND_SEND_RECV, coll::DTYPE_U8, 0, 0, 0, stream);
    let mut counters = c.p2p.lock().unwrap_or_else(|p| p.into_inner());
    d.send_peer = coll::NO_PEER;
    d.recv_peer = coll::NO_PEER;
    if let Some(s) = s {
        d.send_peer = s.peer;
        d.send_session = c.members[s.peer as usize].session;
        d.src = s.buf;
        d.count = s.bytes;
        d.seq = counters.0[s.peer as usize];
        counters.0[s.peer as usize] += 1;
    }
    if let Some(r) = r {
        d.recv_peer = r.peer;
        d.dst = r.buf;
        d.recv_count = r.bytes;
        d.seq2 = counters.1[r.peer as usize];
        counters.1[r.peer as usize] += 1;
    }
    drop(counters);
    c.run(d)
}

/// `ncclCommSplit`'s color for a rank that joins no new communicator.
const SPLIT_NOCOLOR: c_int = -1;

/// Splits `parent` (every rank calls this): the ranks' (color, key) pairs are all-gathered over the parent on the
/// legacy stream, then each rank with a color forms, with the others of its color ordered by key (then parent rank),
/// a communicator whose secret derives from the parent's, the split's number and the color.
pub(crate) fn split(parent: &Comm, color: c_int, key: c_int) -> Result<Option<Comm>, ncclResult_t> {
    if color < SPLIT_NOCOLOR {
        return Err(fail(ncclInvalidArgument, format!("ncclCommSplit: color {color}")));
    }
    let cuda = cuda()?;
    let n = parent.nranks as usize;
    let mine: Vec<u8> = [color.to_le_bytes(), key.to_le_bytes()].concat();
    // The gathered pairs, then this rank's own pair.
    let buf = cuda.mem_alloc((n + 1) * 8).map_err(|r| {
        fail(
            ncclUnhandledCudaError,
            format!("cuMemAlloc for ncclCommSplit: CUDA error {r}"),
        )
    })?;
    let gathered = (|| -> Result<Vec<u8>, ncclResult_t> {
        let own = buf + n as u64 * 8;
        cu("cuMemcpyHtoD", cuda.memcpy_htod(own, &mine))?;
        let d = parent.desc(coll::KIND_ALL_GATHER, coll::DTYPE_U8, 8, own, buf, 0);
        parent.run(d)?;
        let mut all = vec![0u8; n * 8];
        // The legacy stream: this copy starts once the gather is done.
        cu("cuMemcpyDtoH", cuda.memcpy_dtoh(&mut all, buf))?;
        Ok(all)
    })();
    let _ = cuda.mem_free(buf);
    let all = gathered?;
    let pairs: Vec<(c_int, c_int)> = all
        .chunks_exact(8)
        .map(|c| {
            let color = c_int::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let key = c_int::from_le_bytes([c[4], c[5], c[6], c[7]]);
            (color, key)
        })
        .collect();
    let number = parent.splits.fetch_add(1, Ordering::AcqRel);
    if color == SPLIT_NOCOLOR {
        return Ok(None);
    }
    let mut group: Vec<usize> = (0..n).filter(|&r| pairs[r].0 == color).collect();
    group.sort_by_key(|&r| (pairs[r].1, r));
    let rank = group.iter().position(|&r| r == parent.rank as usize).ok_or_else(|| {
        fail(
            ncclInternalError,
            "ncclCommSplit: this rank is missing from its own color",
        )
    })?;
    let members = group.iter().map(|&r| parent.members[r].clone()).collect();
    let secret = coll::derive_secret(&parent.secret, number, color as u32);
    Comm::new(rank as u32, parent.device, secret, members).map(Some)
}
