//! Copies that move between an RDMA channel and device memory directly (GPUDirect RDMA): when a copy may, and the
//! upload paths (the download path is the transport's `send_device`, called from `copy.rs`).

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::Transport;

use super::channel::Channel;
use super::ChannelEnd;
use crate::backend::*;

impl Channel {
    /// GPUDirect RDMA: receives `len` bytes straight into device memory at `dst` when the transport can reach it
    /// (`None`: it cannot, nothing was received). As a native synchronous copy, it starts once the stream's earlier
    /// work is done. Bytes the device cannot take directly go through the first staging buffer.
    pub(super) fn htod_direct(
        &mut self,
        t: &mut dyn Transport,
        dst: DevicePtr,
        len: usize,
        stream: Stream,
    ) -> Result<Option<CuResult<()>>, ChannelEnd> {
        if !direct(t, dst, len) || self.b().stream_synchronize(stream).is_err() {
            return Ok(None);
        }
        let b = self.session.backend.clone();
        let staging = &self.staging[0];
        let mut error = None;
        let mut inline = |off: usize, bytes: &[u8]| {
            for (i, piece) in bytes.chunks(staging.len).enumerate() {
                if error.is_some() {
                    return;
                }
                staging.write_at(0, piece);
                let at = dst.offset((off + i * staging.len) as u64);
                error = b
                    .memcpy_htod_async(at, staging, piece.len(), stream)
                    .and_then(|_| b.stream_synchronize(stream))
                    .err();
            }
        };
        if !t.recv_device(dst.0, len, &mut inline)? {
            return Ok(None);
        }
        Ok(Some(match error {
            Some(e) => Err(e),
            None => self.b().flush_direct_writes(),
        }))
    }

    /// An asynchronous upload straight into device memory (GPUDirect RDMA), only while nothing can be ahead of it:
    /// its stream and the legacy NULL stream (which blocking streams wait for) are idle, so no earlier work can
    /// still read or write `dst` in stream order, and no later request runs before this one returns (the session's
    /// submission order), so writing now is what the stream would do. A busy stream, or a copy on the NULL or
    /// legacy stream itself, keeps the queued path through host memory, which never waits. `None`: not done so.
    pub(super) fn htod_direct_async(
        &mut self,
        t: &mut dyn Transport,
        dst: DevicePtr,
        len: usize,
        stream: Stream,
    ) -> Result<Option<CuResult<()>>, ChannelEnd> {
        let idle = |s: Stream| self.b().stream_query(s).is_ok();
        if stream.0 <= LEGACY_STREAM || !direct(t, dst, len) || !idle(stream) || !idle(Stream::NULL) {
            return Ok(None);
        }
        if self.ensure_staging().is_err() {
            return Ok(None);
        }
        self.htod_direct(t, dst, len, stream)
    }
}

/// Whether a copy of `len` bytes at `at` may move between the transport and device memory directly (GPUDirect
/// RDMA): large enough that registration and the offer's round trip pay, inside one listed allocation.
pub(super) fn direct(t: &dyn Transport, at: DevicePtr, len: usize) -> bool {
    len >= DIRECT_MIN
        && t.moves_device_memory()
        && usize::try_from(at.0).is_ok_and(|a| vgpu_dataplane::pinned::DEVICE.find(a, len).is_some())
}

/// Stream handles up to this one are the NULL stream (0) and `CU_STREAM_LEGACY` (1).
const LEGACY_STREAM: u64 = 1;

/// Smallest copy moved directly between an RDMA channel and device memory.
const DIRECT_MIN: usize = 1 << 20;
