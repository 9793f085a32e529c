//! A hostile client's frames served by a session on the emulated backend, as a worker serves a connection: every
//! operation of the call table, with arbitrary bodies and tails, sometimes with damaged headers.
//!
//! Asserts: the channel ends (cleanly or refusing a malformed frame) without a panic; the session never holds
//! more device memory than its limit or more host memory than its budget; the backend's host buffers stay
//! within the budget plus the channel's bounded staging pool, none is left once the session has ended, and none
//! is freed twice (or after a context's end took it).

use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use bytes::{BufMut, BytesMut};
use vgpu_cuda_exec::emulated::EmulatedBackend;
use vgpu_cuda_exec::session::{Caps, Limits, Session};
use vgpu_dataplane::wire::*;
use zerocopy::IntoBytes;

use crate::script::ByteScript;

const MIB: u64 = 1 << 20;
/// The session's device memory limit and host budget in these runs.
const MEMORY_LIMIT: u64 = 64 * MIB;
const HOST_BUDGET: u64 = 64 * MIB;
/// What a channel may hold beyond the budget: its pool of staging buffers and the copy chunk in use.
const STAGING_ALLOWANCE: u64 = 8 * 16 * MIB + 16 * MIB;

#[derive(Debug, Arbitrary)]
struct Frame {
    /// Index into the call table (wrapped), so most frames name a real operation.
    op: u16,
    per_thread: bool,
    body: Vec<u8>,
    tail: Vec<u8>,
    damage: Damage,
}

/// Mostly intact headers; sometimes one field is a lie.
#[derive(Debug, Arbitrary)]
enum Damage {
    None,
    Intact,
    Fine,
    Op(u16),
    Len(u32),
    BodyLen(u32),
    Seq(u32),
}

pub fn run(data: &[u8]) {
    let Ok(frames) = Vec::<Frame>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let stream = encode(&frames);
    // A thread of its own per run: the emulated backend keeps the current context per thread, as a worker has it.
    let outcome = std::thread::spawn(move || {
        let backend = Arc::new(EmulatedBackend::new());
        let limits = Limits {
            memory_bytes: Some(MEMORY_LIMIT),
            caps: small_caps(),
            peer_wait: Some(Duration::ZERO),
            ..Default::default()
        };
        let session = Session::new(backend.clone(), limits);
        let mut transport = ByteScript::new(stream);
        let _ = session.serve_channel(&mut transport);
        let usage = session.usage();
        drop(session);
        // Every pinned buffer the session made is freed when it ends (or went with a context's reset).
        (
            usage,
            backend.host_peak(),
            backend.host_live(),
            backend.host_stale_frees(),
        )
    })
    .join();
    let (usage, host_peak, host_left, stale_frees) = outcome.unwrap_or_else(|_| panic!("serving the session panicked"));
    assert!(
        usage.allocated_bytes <= MEMORY_LIMIT,
        "device memory past the limit: {usage:?}"
    );
    assert!(
        usage.host_bytes <= HOST_BUDGET,
        "host memory past the budget: {usage:?}"
    );
    assert!(
        host_peak <= HOST_BUDGET + STAGING_ALLOWANCE + MEMORY_LIMIT,
        "the backend held {host_peak} bytes of host buffers"
    );
    assert_eq!(
        host_left, 0,
        "pinned host bytes still allocated after the session ended"
    );
    assert_eq!(
        stale_frees, 0,
        "a pinned buffer freed twice, or after a context's end took it"
    );
}

/// Caps small enough that inputs reach them.
fn small_caps() -> Caps {
    Caps {
        host_bytes: Some(HOST_BUDGET),
        streams: 64,
        events: 256,
        contexts: 8,
        modules: 64,
        functions: 4096,
        allocations: 1024,
        arrays: 64,
        pools: 8,
        tex_objects: 64,
        host_regions: 64,
        vmm_objects: 256,
        graphs: 16,
        graph_nodes: 256,
        graph_execs: 16,
    }
}

/// The client's byte stream: the primary context of device 0 made current (as the shim starts), then the frames.
fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let mut seq = 0u32;
    let mut next = || {
        seq += 1;
        seq
    };
    let ctx = ContextId(0x1000);
    encode_request(&mut buf, next(), 0, &PrimaryCtxRetain { ctx, dev: 0, _pad: 0 }, &[]);
    encode_request(&mut buf, next(), 0, &CtxSetCurrent { ctx }, &[]);
    for f in frames.iter().take(256) {
        let op = Op::ALL[usize::from(f.op) % Op::ALL.len()];
        let mut body = f.body.clone();
        body.resize(op.body_len(), 0);
        let mut header = RequestHeader {
            len: (body.len() + f.tail.len()) as u32,
            op: op as u16,
            flags: if f.per_thread { FLAG_PER_THREAD } else { 0 },
            body_len: body.len() as u32,
            seq: next(),
        };
        match f.damage {
            Damage::None | Damage::Intact | Damage::Fine => {}
            Damage::Op(v) => header.op = v,
            Damage::Len(v) => header.len = v,
            Damage::BodyLen(v) => header.body_len = v,
            Damage::Seq(v) => header.seq = v,
        }
        buf.put_slice(header.as_bytes());
        buf.put_slice(&body);
        buf.put_slice(&f.tail);
    }
    buf.to_vec()
}
