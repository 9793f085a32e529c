//! Stream memory operations: 32- and 64-bit writes and waits on device memory in stream order, and batches of
//! them (`cuStreamBatchMemOp`). Asynchronous like a memset; addresses are checked here so a bad one fails at the call.
//! On a capturing stream they become graph nodes, replayed through the same path.

use std::ffi::c_uint;
use std::mem::{offset_of, size_of};

use vgpu_cuda_sys::driver::{
    CUstream, CUstreamBatchMemOpParams,
    CUstreamBatchMemOpParams_union_CUstreamMemOpFlushRemoteWritesParams_st as Flush,
    CUstreamBatchMemOpParams_union_CUstreamMemOpWaitValueParams_st as WaitValue,
    CUstreamBatchMemOpParams_union_CUstreamMemOpWriteValueParams_st as WriteValue,
};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::handshake::CAP_STREAM_MEM_OPS;
use vgpu_dataplane::wire::*;
use zerocopy::IntoBytes;

use super::graph;
use super::need_ctx;
use crate::log::{log, WARN};
use crate::{client, ffi, mirror, state};

/// Size of `CUstreamBatchMemOpParams` (a union padded to six 64-bit words).
const BATCH_PARAMS_LEN: usize = size_of::<CUstreamBatchMemOpParams>();

/// Queues `ops` on `stream` (or records them into the graph the stream is capturing).
pub(super) fn submit(flags: u16, stream: CUstream, ops: &[MemOp], batch_flags: u32, single: bool) -> CuResult<()> {
    need_ctx()?;
    // An older server would end the session on the unknown operation.
    if client::session()?.capabilities & CAP_STREAM_MEM_OPS == 0 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let stream = super::stream::stream_id(stream)?;
    for op in ops {
        let len = op.operand_len().ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if len == 0 {
            continue;
        }
        if mirror::find(op.address.get() as usize).is_some() {
            // Pinned host memory lives in the client; the server's copy of it is only brought back at
            // synchronizing calls, so a flag the device writes there would not be seen by a polling host.
            log!(
                WARN,
                "stream memory operations on pinned host memory are not supported by vGPU (address {:#x})",
                op.address.get()
            );
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        // The driver requires natural alignment and refuses at the call; the server would only find out later.
        if op.address.get() % len != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        state::read().check_range(op.address.get(), len)?;
        // A stream waits on or writes memory of its own server only (no peer access across servers).
        let route = super::route_of_stream(stream);
        if !super::stream::same_server(route, super::route_of_ptr(op.address.get()))? {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
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
    client::post_to(super::route_of_stream(stream), flags, &call, ops.as_bytes())
}

fn one(flags: u16, stream: CUstream, operation: u32, address: u64, value: u64, op_flags: c_uint) -> CuResult<()> {
    let op = MemOp {
        operation,
        flags: op_flags,
        address: DevicePtr(address),
        value,
    };
    submit(flags, stream, &[op], 0, true)
}

/// Reads `count` `CUstreamBatchMemOpParams`: a union whose `operation` (first in every member) says which member
/// is live; waits and writes carry an address, a 32- or 64-bit value and flags, barriers and flushes their flags.
fn batch(
    flags: u16,
    stream: CUstream,
    count: c_uint,
    params: *const CUstreamBatchMemOpParams,
    batch_flags: c_uint,
) -> CuResult<()> {
    // An empty batch is a successful no-op to the driver (H200, driver 580), whatever `params` is.
    if count == 0 {
        need_ctx()?;
        return super::stream::stream_id(stream).map(|_| ());
    }
    if count as usize > MAX_MEM_OPS || params.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let raw = ffi::bytes(params as *const u8, count as usize * BATCH_PARAMS_LEN)?;
    let mut ops = Vec::with_capacity(count as usize);
    for p in raw.chunks_exact(BATCH_PARAMS_LEN) {
        let operation = ffi::field::<u32>(p, 0)?;
        let op = match operation {
            MEM_OP_WAIT_VALUE_32 | MEM_OP_WAIT_VALUE_64 => MemOp {
                operation,
                flags: ffi::field(p, offset_of!(WaitValue, flags))?,
                address: DevicePtr(ffi::field(p, offset_of!(WaitValue, address))?),
                value: value_of(operation, p, offset_of!(WaitValue, __bindgen_anon_1))?,
            },
            MEM_OP_WRITE_VALUE_32 | MEM_OP_WRITE_VALUE_64 => MemOp {
                operation,
                flags: ffi::field(p, offset_of!(WriteValue, flags))?,
                address: DevicePtr(ffi::field(p, offset_of!(WriteValue, address))?),
                value: value_of(operation, p, offset_of!(WriteValue, __bindgen_anon_1))?,
            },
            // Barriers and flushes (and operations the driver will refuse) carry only flags.
            _ => MemOp {
                operation,
                flags: ffi::field(p, offset_of!(Flush, flags))?,
                address: DevicePtr::NULL,
                value: 0,
            },
        };
        ops.push(op);
    }
    submit(flags, stream, &ops, batch_flags, false)
}

/// The operand of a wait or write: the 32-bit `value` or the 64-bit `value64` of the member's value union.
fn value_of(operation: u32, p: &[u8], at: usize) -> CuResult<u64> {
    if matches!(operation, MEM_OP_WAIT_VALUE_32 | MEM_OP_WRITE_VALUE_32) {
        ffi::field::<u32>(p, at).map(u64::from)
    } else {
        ffi::field::<u64>(p, at)
    }
}

entry! {
    cuStreamWriteValue32, cuStreamWriteValue32_v2, cuStreamWriteValue32_ptsz, cuStreamWriteValue32_v2_ptsz => |f, stream, addr, value, op_flags| {
        one(f, stream, MEM_OP_WRITE_VALUE_32, addr, value as u64, op_flags)
    }
    cuStreamWriteValue64, cuStreamWriteValue64_v2, cuStreamWriteValue64_ptsz, cuStreamWriteValue64_v2_ptsz => |f, stream, addr, value, op_flags| {
        one(f, stream, MEM_OP_WRITE_VALUE_64, addr, value, op_flags)
    }
    cuStreamWaitValue32, cuStreamWaitValue32_v2, cuStreamWaitValue32_ptsz, cuStreamWaitValue32_v2_ptsz => |f, stream, addr, value, op_flags| {
        one(f, stream, MEM_OP_WAIT_VALUE_32, addr, value as u64, op_flags)
    }
    cuStreamWaitValue64, cuStreamWaitValue64_v2, cuStreamWaitValue64_ptsz, cuStreamWaitValue64_v2_ptsz => |f, stream, addr, value, op_flags| {
        one(f, stream, MEM_OP_WAIT_VALUE_64, addr, value, op_flags)
    }
    cuStreamBatchMemOp, cuStreamBatchMemOp_v2, cuStreamBatchMemOp_ptsz, cuStreamBatchMemOp_v2_ptsz => |f, stream, count, params, batch_flags| {
        batch(f, stream, count, params, batch_flags)
    }
}
