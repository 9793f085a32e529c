//! Collectives run between GPU servers (issue 16, vGPU's `libnccl.so.2`): the steps one rank's server takes for
//! one collective, the tokens that authenticate each server-to-server message, and the host-side reduction.
//!
//! Pure: no CUDA, no sockets. Every rank's server plans the same collective from the same numbers, so the k-th
//! message a rank sends to its next neighbour is the k-th its neighbour expects; each message travels under a token
//! derived from the group's secret (which only the group's ranks know), the collective's sequence number, the
//! sender, the receiver and the message's index, so a server grants exactly the connection it waits for.
//! Rings: every collective sends only to the next rank (`rank + 1`) and receives only from the previous one.

use sha2::{Digest, Sha256};

/// `CollRun::kind`.
pub const KIND_ALL_REDUCE: u32 = 0;
pub const KIND_BROADCAST: u32 = 1;
pub const KIND_REDUCE: u32 = 2;
pub const KIND_ALL_GATHER: u32 = 3;
pub const KIND_REDUCE_SCATTER: u32 = 4;
/// A point-to-point exchange: at most one send (to `send_peer`) and one receive (from `recv_peer`), at once.
pub const KIND_SEND_RECV: u32 = 5;

/// `send_peer`/`recv_peer` of a point-to-point exchange that only receives or only sends.
pub const NO_PEER: u32 = u32::MAX;

/// One rank's part of a collective as vGPU's NCCL hands it to vGPU's CUDA library (`CollRun`'s fields, with the
/// app's stream handle and the device whose server runs it). Both libraries come from one build.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CollDesc {
    pub kind: u32,
    pub dtype: u32,
    pub op: u32,
    pub nranks: u32,
    pub rank: u32,
    pub root: u32,
    pub send_peer: u32,
    pub recv_peer: u32,
    pub count: u64,
    pub recv_count: u64,
    pub src: u64,
    pub dst: u64,
    pub scratch: u64,
    pub scratch_size: u64,
    /// The `CUstream` handle's value.
    pub stream: u64,
    pub send_session: u64,
    pub seq: u64,
    pub seq2: u64,
    pub secret: [u8; 16],
    /// The device (the app's ordinal) whose server runs this part.
    pub device: i32,
    /// `COLL_GROUPED` or 0.
    pub flags: u32,
}

/// `CollDesc::flags`: issued inside an NCCL group (or a send/receive, always one), so it may have to run beside
/// other collectives of the same thread, on other streams or devices: the server runs it on its stream's lane.
pub const COLL_GROUPED: u32 = 1;

/// Element types, numbered as `ncclDataType_t`.
pub const DTYPE_I8: u32 = 0;
pub const DTYPE_U8: u32 = 1;
pub const DTYPE_I32: u32 = 2;
pub const DTYPE_U32: u32 = 3;
pub const DTYPE_I64: u32 = 4;
pub const DTYPE_U64: u32 = 5;
pub const DTYPE_F16: u32 = 6;
pub const DTYPE_F32: u32 = 7;
pub const DTYPE_F64: u32 = 8;
pub const DTYPE_BF16: u32 = 9;

/// Reduction operations, numbered as `ncclRedOp_t`.
pub const OP_SUM: u32 = 0;
pub const OP_PROD: u32 = 1;
pub const OP_MAX: u32 = 2;
pub const OP_MIN: u32 = 3;
pub const OP_AVG: u32 = 4;

/// Broadcasts and reductions to a root move in pieces of this many bytes, so a rank forwards one piece while it
/// receives the next (a chain of n ranks costs one transfer plus n − 2 pieces, not n − 1 transfers).
pub const PIPELINE_PIECE: u64 = 4 << 20;

/// Bytes of one element of `dtype`, or `None` for a type this module cannot reduce.
pub fn elem_size(dtype: u32) -> Option<u64> {
    Some(match dtype {
        DTYPE_I8 | DTYPE_U8 => 1,
        DTYPE_F16 | DTYPE_BF16 => 2,
        DTYPE_I32 | DTYPE_U32 | DTYPE_F32 => 4,
        DTYPE_I64 | DTYPE_U64 | DTYPE_F64 => 8,
        _ => return None,
    })
}

/// The buffers a step names: the call's source, destination, or scratch (device memory the client lent for
/// reductions whose destination is not the place to accumulate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buf {
    Src,
    Dst,
    Scratch,
}

/// `len` bytes at `offset` of `buf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub buf: Buf,
    pub offset: u64,
    pub len: u64,
}

/// What a received part does to the bytes already at its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    Replace,
    /// Reduced with them by the collective's operation; `divide` > 1: the result is then divided by it (the
    /// average's last reduction).
    Reduce {
        divide: u32,
    },
}

/// One step: a local device copy first (to, from), then at once a send to the next rank and a receive from the
/// previous one. The next step starts when both are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Step {
    pub copy: Option<(Part, Part)>,
    pub send: Option<Part>,
    pub recv: Option<(Part, Combine)>,
}

/// One rank's plan: its steps, and the bytes of each buffer the steps touch (checked against the call's buffers).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub src_len: u64,
    pub dst_len: u64,
    pub scratch_len: u64,
}

/// Why a collective cannot be planned: the caller's arguments, never the wire's framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Ranks,
    Root,
    Type,
    Op,
    Kind,
    Size,
}

/// A collective as every rank describes it, plus this rank's place.
#[derive(Debug, Clone, Copy)]
pub struct Collective {
    pub kind: u32,
    pub dtype: u32,
    pub op: u32,
    pub nranks: u32,
    pub rank: u32,
    pub root: u32,
    /// Elements: of each rank's input for all-gather, of each rank's output for reduce-scatter, else of the buffer.
    pub count: u64,
}

/// The steps `c.rank` takes in collective `c`.
pub fn plan(c: &Collective) -> Result<Plan, PlanError> {
    let n = c.nranks as u64;
    if n == 0 || c.rank >= c.nranks {
        return Err(PlanError::Ranks);
    }
    let elem = elem_size(c.dtype).ok_or(PlanError::Type)?;
    let reduces = matches!(c.kind, KIND_ALL_REDUCE | KIND_REDUCE | KIND_REDUCE_SCATTER);
    if reduces && c.op > OP_AVG {
        return Err(PlanError::Op);
    }
    if matches!(c.kind, KIND_BROADCAST | KIND_REDUCE) && c.root >= c.nranks {
        return Err(PlanError::Root);
    }
    let bytes = c.count.checked_mul(elem).ok_or(PlanError::Size)?;
    let total = bytes.checked_mul(n).ok_or(PlanError::Size)?;
    let r = c.rank as u64;
    let last_divide = if c.op == OP_AVG { c.nranks } else { 0 };
    let part = |buf, offset, len| Part { buf, offset, len };
    let mut p = Plan::default();
    match c.kind {
        KIND_ALL_REDUCE => {
            (p.src_len, p.dst_len) = (bytes, bytes);
            let seg = |i: u64| segment(c.count, n, i % n, elem);
            p.steps.push(Step {
                copy: Some((part(Buf::Dst, 0, bytes), part(Buf::Src, 0, bytes))),
                ..Step::default()
            });
            if n == 1 {
                return Ok(p);
            }
            for k in 0..n - 1 {
                let (so, sl) = seg(r + n - k);
                let (ro, rl) = seg(r + 2 * n - k - 1);
                let divide = if k == n - 2 { last_divide } else { 0 };
                p.steps.push(Step {
                    copy: None,
                    send: Some(part(Buf::Dst, so, sl)),
                    recv: Some((part(Buf::Dst, ro, rl), Combine::Reduce { divide })),
                });
            }
            for k in 0..n - 1 {
                let (so, sl) = seg(r + 1 + n - k);
                let (ro, rl) = seg(r + n - k);
                p.steps.push(Step {
                    copy: None,
                    send: Some(part(Buf::Dst, so, sl)),
                    recv: Some((part(Buf::Dst, ro, rl), Combine::Replace)),
                });
            }
        }
        KIND_ALL_GATHER => {
            (p.src_len, p.dst_len) = (bytes, total);
            p.steps.push(Step {
                copy: Some((part(Buf::Dst, r * bytes, bytes), part(Buf::Src, 0, bytes))),
                ..Step::default()
            });
            for k in 0..n.saturating_sub(1) {
                let send = (r + n - k) % n;
                let recv = (r + 2 * n - k - 1) % n;
                p.steps.push(Step {
                    copy: None,
                    send: Some(part(Buf::Dst, send * bytes, bytes)),
                    recv: Some((part(Buf::Dst, recv * bytes, bytes), Combine::Replace)),
                });
            }
        }
        KIND_REDUCE_SCATTER => {
            (p.src_len, p.dst_len) = (total, bytes);
            if n == 1 {
                p.steps.push(Step {
                    copy: Some((part(Buf::Dst, 0, bytes), part(Buf::Src, 0, bytes))),
                    ..Step::default()
                });
                return Ok(p);
            }
            p.scratch_len = total;
            p.steps.push(Step {
                copy: Some((part(Buf::Scratch, 0, total), part(Buf::Src, 0, total))),
                ..Step::default()
            });
            for k in 0..n - 1 {
                let send = (r + 2 * n - k - 1) % n;
                let recv = (r + 2 * n - k - 2) % n;
                let divide = if k == n - 2 { last_divide } else { 0 };
                p.steps.push(Step {
                    copy: None,
                    send: Some(part(Buf::Scratch, send * bytes, bytes)),
                    recv: Some((part(Buf::Scratch, recv * bytes, bytes), Combine::Reduce { divide })),
                });
            }
            p.steps.push(Step {
                copy: Some((part(Buf::Dst, 0, bytes), part(Buf::Scratch, r * bytes, bytes))),
                ..Step::default()
            });
        }
        KIND_BROADCAST | KIND_REDUCE => chain(c, bytes, &mut p),
        _ => return Err(PlanError::Kind),
    }
    Ok(p)
}

/// The one step of a point-to-point exchange: `count` elements sent from the source (unless `sends` is false)
/// while `recv_count` arrive into the destination (unless `receives` is false).
pub fn plan_send_recv(dtype: u32, count: u64, recv_count: u64, sends: bool, receives: bool) -> Result<Plan, PlanError> {
    let elem = elem_size(dtype).ok_or(PlanError::Type)?;
    let out = if sends {
        count.checked_mul(elem).ok_or(PlanError::Size)?
    } else {
        0
    };
    let inc = if receives {
        recv_count.checked_mul(elem).ok_or(PlanError::Size)?
    } else {
        0
    };
    let step = Step {
        copy: None,
        send: sends.then_some(Part {
            buf: Buf::Src,
            offset: 0,
            len: out,
        }),
        recv: receives.then_some((
            Part {
                buf: Buf::Dst,
                offset: 0,
                len: inc,
            },
            Combine::Replace,
        )),
    };
    Ok(Plan {
        steps: vec![step],
        src_len: out,
        dst_len: inc,
        scratch_len: 0,
    })
}

/// Broadcast (from the root along the ring) and reduce (along the ring, ending at the root), in pieces.
fn chain(c: &Collective, bytes: u64, p: &mut Plan) {
    let n = c.nranks as u64;
    let (r, root) = (c.rank as u64, c.root as u64);
    let broadcast = c.kind == KIND_BROADCAST;
    // Position along the chain: 0 starts it, n − 1 ends it.
    let pos = if broadcast {
        (r + n - root) % n
    } else {
        (r + n - root - 1) % n
    };
    let is_root = r == root;
    // Where this rank's bytes live: a reduction's non-root ranks accumulate in scratch (their destination is not
    // theirs to write).
    let home = if broadcast || is_root { Buf::Dst } else { Buf::Scratch };
    p.src_len = if broadcast && !is_root { 0 } else { bytes };
    p.dst_len = if broadcast || is_root { bytes } else { 0 };
    let first = pos == 0;
    let last = pos == n - 1;
    if !broadcast && first && !is_root {
        // The chain's start sends its own input: nothing to accumulate.
        let pieces = pieces_of(bytes);
        for (o, l) in pieces {
            p.steps.push(Step {
                send: Some(Part {
                    buf: Buf::Src,
                    offset: o,
                    len: l,
                }),
                ..Step::default()
            });
        }
        return;
    }
    if home == Buf::Scratch {
        p.scratch_len = bytes;
    }
    if is_root || !broadcast {
        p.steps.push(Step {
            copy: Some((
                Part {
                    buf: home,
                    offset: 0,
                    len: bytes,
                },
                Part {
                    buf: Buf::Src,
                    offset: 0,
                    len: bytes,
                },
            )),
            ..Step::default()
        });
    }
    if n == 1 {
        return;
    }
    let combine = if broadcast {
        Combine::Replace
    } else {
        Combine::Reduce {
            divide: if last && c.op == OP_AVG { c.nranks } else { 0 },
        }
    };
    let pieces = pieces_of(bytes);
    let at = |i: usize| {
        let (o, l) = pieces[i];
        Part {
            buf: home,
            offset: o,
            len: l,
        }
    };
    let receives = !first;
    let sends = !last;
    // Step i receives piece i and sends piece i − 1 (received, or for the start owned, one step earlier).
    let lag = usize::from(receives);
    for i in 0..pieces.len() + lag {
        let recv = (receives && i < pieces.len()).then(|| (at(i), combine));
        let send = (sends && i >= lag).then(|| at(i - lag));
        p.steps.push(Step { copy: None, send, recv });
    }
}

/// (offset, length) of the pipeline's pieces of `bytes` (one empty piece for an empty buffer: every rank still
/// exchanges one message, so all agree on the count).
fn pieces_of(bytes: u64) -> Vec<(u64, u64)> {
    if bytes == 0 {
        return vec![(0, 0)];
    }
    (0..bytes.div_ceil(PIPELINE_PIECE))
        .map(|i| {
            let o = i * PIPELINE_PIECE;
            (o, PIPELINE_PIECE.min(bytes - o))
        })
        .collect()
}

/// Byte offset and length of segment `i` of `count` elements cut into `n` (the first `count % n` one longer).
fn segment(count: u64, n: u64, i: u64, elem: u64) -> (u64, u64) {
    let (base, extra) = (count / n, count % n);
    let start = i * base + i.min(extra);
    let len = base + u64::from(i < extra);
    (start * elem, len * elem)
}

/// Whose messages a token names: a collective's `index`-th message of sequence number `seq`, or the `index`-th
/// point-to-point message between two ranks.
#[derive(Debug, Clone, Copy)]
pub enum Series {
    Collective { seq: u64 },
    PointToPoint,
}

/// The token of the `index`-th message from rank `from` to rank `to` in `series`, for the group whose secret is
/// `secret`.
pub fn token(secret: &[u8; 16], series: Series, from: u32, to: u32, index: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"vgpu-coll-1");
    h.update(secret);
    match series {
        Series::Collective { seq } => {
            h.update([0u8]);
            h.update(seq.to_le_bytes());
        }
        Series::PointToPoint => h.update([1u8]),
    }
    h.update(from.to_le_bytes());
    h.update(to.to_le_bytes());
    h.update(index.to_le_bytes());
    first_16(h)
}

/// The secret of the communicator split number `split` of a group whose secret is `parent`, for ranks of `color`
/// (every rank of that color derives the same; other colors and other splits get unrelated ones).
pub fn derive_secret(parent: &[u8; 16], split: u64, color: u32) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"vgpu-coll-split-1");
    h.update(parent);
    h.update(split.to_le_bytes());
    h.update(color.to_le_bytes());
    first_16(h)
}

/// The first 16 bytes of `h`'s digest: tokens and secrets are 16 bytes.
fn first_16(h: Sha256) -> [u8; 16] {
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Reduces `incoming` into `acc` element by element (`acc = acc op incoming`), then divides by `divide` where it is
/// above 1. Both hold whole elements of `dtype`; `Err` for a type or operation this module does not know or
/// lengths that disagree.
pub fn reduce_into(dtype: u32, op: u32, acc: &mut [u8], incoming: &[u8], divide: u32) -> Result<(), PlanError> {
    let elem = elem_size(dtype).ok_or(PlanError::Type)? as usize;
    if acc.len() != incoming.len() || !acc.len().is_multiple_of(elem) {
        return Err(PlanError::Size);
    }
    if op > OP_AVG {
        return Err(PlanError::Op);
    }
    let op = if op == OP_AVG { OP_SUM } else { op };
    macro_rules! ints {
        ($t:ty) => {{
            for (a, b) in acc.chunks_exact_mut(elem).zip(incoming.chunks_exact(elem)) {
                let x = <$t>::from_le_bytes(a.try_into().map_err(|_| PlanError::Size)?);
                let y = <$t>::from_le_bytes(b.try_into().map_err(|_| PlanError::Size)?);
                let mut v = match op {
                    OP_SUM => x.wrapping_add(y),
                    OP_PROD => x.wrapping_mul(y),
                    OP_MAX => x.max(y),
                    _ => x.min(y),
                };
                if divide > 1 {
                    v /= divide as $t;
                }
                a.copy_from_slice(&v.to_le_bytes());
            }
        }};
    }
    macro_rules! floats {
        ($t:ty, $from:expr, $to:expr) => {{
            for (a, b) in acc.chunks_exact_mut(elem).zip(incoming.chunks_exact(elem)) {
                let x: $t = $from(a.try_into().map_err(|_| PlanError::Size)?);
                let y: $t = $from(b.try_into().map_err(|_| PlanError::Size)?);
                let mut v = match op {
                    OP_SUM => x + y,
                    OP_PROD => x * y,
                    // As the GPU's max/min: a NaN operand loses to a number.
                    OP_MAX => x.max(y),
                    _ => x.min(y),
                };
                if divide > 1 {
                    v /= divide as $t;
                }
                let bytes = $to(v);
                a.copy_from_slice(&bytes);
            }
        }};
    }
    match dtype {
        DTYPE_I8 => ints!(i8),
        DTYPE_U8 => ints!(u8),
        DTYPE_I32 => ints!(i32),
        DTYPE_U32 => ints!(u32),
        DTYPE_I64 => ints!(i64),
        DTYPE_U64 => ints!(u64),
        DTYPE_F32 => floats!(f32, f32::from_le_bytes, f32::to_le_bytes),
        DTYPE_F64 => floats!(f64, f64::from_le_bytes, f64::to_le_bytes),
        DTYPE_F16 => floats!(f32, |b: [u8; 2]| half::f16::from_le_bytes(b).to_f32(), |v: f32| {
            half::f16::from_f32(v).to_le_bytes()
        }),
        DTYPE_BF16 => floats!(f32, |b: [u8; 2]| half::bf16::from_le_bytes(b).to_f32(), |v: f32| {
            half::bf16::from_f32(v).to_le_bytes()
        }),
        _ => return Err(PlanError::Type),
    }
    Ok(())
}

/// `reduce_into` on up to `threads` threads for buffers of a MiB or more (the server's reduction runs on the host,
/// between a chunk's arrival and its write back: one core would bound the collective, bench/NOTES.md §21).
pub fn reduce_into_parallel(
    dtype: u32,
    op: u32,
    acc: &mut [u8],
    incoming: &[u8],
    divide: u32,
    threads: usize,
) -> Result<(), PlanError> {
    let elem = elem_size(dtype).ok_or(PlanError::Type)? as usize;
    if threads <= 1 || acc.len() < (1 << 20) || acc.len() != incoming.len() {
        return reduce_into(dtype, op, acc, incoming, divide);
    }
    let part = acc.len().div_ceil(threads).div_ceil(elem) * elem;
    std::thread::scope(|scope| {
        let handles: Vec<_> = acc
            .chunks_mut(part)
            .zip(incoming.chunks(part))
            .map(|(a, b)| scope.spawn(move || reduce_into(dtype, op, a, b, divide)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or(Err(PlanError::Size)))
    })
}

#[cfg(test)]
mod tests;
