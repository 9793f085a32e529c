//! Stream memory operations: 32- and 64-bit writes and waits on device memory in stream order, and batches of
//! them (`cuStreamBatchMemOp`). Asynchronous like a memset; addresses are checked here so a bad one fails at the call.
//! On a capturing stream they become graph nodes, replayed through the same path.

use std::ffi::{c_uint, c_void};

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_STREAM_MEM_OPS;
use vgpu_dataplane::wire::*;
use zerocopy::IntoBytes;

use super::graph;
use super::{need_ctx, Handle};
use crate::log::{log, WARN};
use crate::{client, ffi, mirror, state};

/// Size of `CUstreamBatchMemOpParams` (a union padded to six 64-bit words).
const BATCH_PARAMS_LEN: usize = 48;

/// Queues `ops` on `stream` (or records them into the graph the stream is capturing).
pub(super) fn submit(flags: u16, stream: Handle, ops: &[MemOp], batch_flags: u32, single: bool) -> CuResult<()> {
    need_ctx()?;
    // An older server would end the session on the unknown operation.
    if client::session()?.capabilities & CAP_STREAM_MEM_OPS == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let stream = super::exec::stream_id(stream)?;
    for op in ops {
        let len = op.operand_len().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if len == 0 {
            continue;
        }
        if mirror::find(op.address as usize).is_some() {
            // Pinned host memory lives in the client; the server's copy of it is only brought back at
            // synchronizing calls, so a flag the device writes there would not be seen by a polling host.
            log!(
                WARN,
                "stream memory operations on pinned host memory are not supported by vGPU (address {:#x})",
                op.address
            );
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        // The driver requires natural alignment and refuses at the call; the server would only find out later.
        if op.address % len != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        state::read().check_range(op.address, len)?;
    }
    let key = graph::key(flags, stream);
    if graph::is_capturing(key) {
        let node = graph::Node::MemOps {
            ops: ops.to_vec(),
            batch_flags,
            single,
        };
        if let Some(r) = graph::capture(key, node) {
            return r;
        }
    }
    let call = StreamMemOps {
        stream,
        count: ops.len() as u32,
        flags: batch_flags,
        single: single as u32,
        _pad: 0,
    };
    client::post(flags, &call, ops.as_bytes())
}

fn one(flags: u16, stream: Handle, operation: u32, address: u64, value: u64, op_flags: c_uint) -> CuResult<()> {
    let op = MemOp {
        operation,
        flags: op_flags,
        address,
        value,
    };
    submit(flags, stream, &[op], 0, true)
}

/// Reads `count` `CUstreamBatchMemOpParams` the way cuda.h lays them out: the operation at 0, and for waits and
/// writes the address at 8, the value at 16 and the flags at 24; for barriers and flushes the flags at 4.
fn batch(flags: u16, stream: Handle, count: c_uint, params: *const c_void, batch_flags: c_uint) -> CuResult<()> {
    // An empty batch is a successful no-op to the driver (H200, driver 580), whatever `params` is.
    if count == 0 {
        need_ctx()?;
        return super::exec::stream_id(stream).map(|_| ());
    }
    if count as usize > MAX_MEM_OPS || params.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let raw = ffi::bytes(params as *const u8, count as usize * BATCH_PARAMS_LEN)?;
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let half = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let ops: Vec<MemOp> = raw
        .chunks_exact(BATCH_PARAMS_LEN)
        .map(|p| {
            let operation = half(p, 0);
            match operation {
                MEM_OP_WAIT_VALUE_32 | MEM_OP_WRITE_VALUE_32 => MemOp {
                    operation,
                    flags: half(p, 24),
                    address: word(p, 8),
                    value: half(p, 16) as u64,
                },
                MEM_OP_WAIT_VALUE_64 | MEM_OP_WRITE_VALUE_64 => MemOp {
                    operation,
                    flags: half(p, 24),
                    address: word(p, 8),
                    value: word(p, 16),
                },
                _ => MemOp {
                    operation,
                    flags: half(p, 4),
                    address: 0,
                    value: 0,
                },
            }
        })
        .collect();
    submit(flags, stream, &ops, batch_flags, false)
}

crate::api::entry! {
    [cuStreamWriteValue32, cuStreamWriteValue32_v2] [cuStreamWriteValue32_ptsz, cuStreamWriteValue32_v2_ptsz] (stream: Handle, addr: u64, value: u32, op_flags: c_uint) |f| {
        one(f, stream, MEM_OP_WRITE_VALUE_32, addr, value as u64, op_flags)
    }
    [cuStreamWriteValue64, cuStreamWriteValue64_v2] [cuStreamWriteValue64_ptsz, cuStreamWriteValue64_v2_ptsz] (stream: Handle, addr: u64, value: u64, op_flags: c_uint) |f| {
        one(f, stream, MEM_OP_WRITE_VALUE_64, addr, value, op_flags)
    }
    [cuStreamWaitValue32, cuStreamWaitValue32_v2] [cuStreamWaitValue32_ptsz, cuStreamWaitValue32_v2_ptsz] (stream: Handle, addr: u64, value: u32, op_flags: c_uint) |f| {
        one(f, stream, MEM_OP_WAIT_VALUE_32, addr, value as u64, op_flags)
    }
    [cuStreamWaitValue64, cuStreamWaitValue64_v2] [cuStreamWaitValue64_ptsz, cuStreamWaitValue64_v2_ptsz] (stream: Handle, addr: u64, value: u64, op_flags: c_uint) |f| {
        one(f, stream, MEM_OP_WAIT_VALUE_64, addr, value, op_flags)
    }
    [cuStreamBatchMemOp, cuStreamBatchMemOp_v2] [cuStreamBatchMemOp_ptsz, cuStreamBatchMemOp_v2_ptsz] (stream: Handle, count: c_uint, params: *const c_void, batch_flags: c_uint) |f| {
        batch(f, stream, count, params, batch_flags)
    }
}
