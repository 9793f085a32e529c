//! Handlers: copies and memsets. Bulk data is pipelined through two pinned staging buffers (the network fills one
//! while the copy engine drains the other); async copies keep their buffer until an event says the GPU is done;
//! device-to-host async bytes wait in a buffer until a synchronizing reply pushes them. Shared-memory sessions
//! copy straight to and from the client's registered regions.

use std::sync::Arc;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::ids::*;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::Transport;
use zerocopy::IntoBytes;

use super::channel::{Channel, Cx, InFlight, PendingCopy, Serve, Served, CHUNK};
use super::direct::direct;
use super::ChannelEnd;
use crate::backend::*;

/// Device memory a streamed copy writes or reads: contiguous bytes, or `width`-byte rows at `pitch` (the packed
/// data on the wire has the rows back to back; it moves in blocks of whole rows, so `width` is at most `CHUNK`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Span {
    Bytes(DevicePtr),
    Rows { at: DevicePtr, pitch: u64, width: u64 },
}

impl From<DevicePtr> for Span {
    fn from(at: DevicePtr) -> Span {
        Span::Bytes(at)
    }
}

impl Span {
    /// The length of the chunk that starts `done` bytes into `len` bytes of packed data: at most `CHUNK`, whole
    /// rows for `Rows`.
    fn chunk(&self, done: usize, len: usize) -> usize {
        let most = match *self {
            Span::Bytes(_) => CHUNK,
            Span::Rows { width, .. } => {
                let w = (width as usize).clamp(1, CHUNK);
                CHUNK / w * w
            }
        };
        (len - done).min(most)
    }

    /// Queues the copy of `n` packed bytes at `done` from `buf` to the device.
    fn write_chunk(&self, b: &dyn Backend, buf: &HostBuffer, done: usize, n: usize, stream: Stream) -> CuResult<()> {
        match *self {
            Span::Bytes(at) => b.memcpy_htod_async(at.offset(done as u64), buf, n, stream),
            Span::Rows { at, pitch, width } => {
                let row = done as u64 / width;
                let dst = Place::Device(at.offset(row * pitch), pitch);
                b.memcpy_2d_async(Place::Host(buf, width), dst, width, n as u64 / width, stream)
            }
        }
    }

    /// Queues the copy of `n` packed bytes at `done` from the device into `buf`.
    fn read_chunk(&self, b: &dyn Backend, buf: &HostBuffer, done: usize, n: usize, stream: Stream) -> CuResult<()> {
        match *self {
            Span::Bytes(at) => b.memcpy_dtoh_async(buf, at.offset(done as u64), n, stream),
            Span::Rows { at, pitch, width } => {
                let row = done as u64 / width;
                let src = Place::Device(at.offset(row * pitch), pitch);
                b.memcpy_2d_async(src, Place::Host(buf, width), width, n as u64 / width, stream)
            }
        }
    }
}

impl Channel {
    /// A memset's range check, then the backend's memset.
    fn memset(&self, dst: DevicePtr, fill: Fill, stream: Stream) -> CuResult<()> {
        let elem = fill.elem_size as u64;
        if !matches!(elem, 1 | 2 | 4) || (fill.height > 1 && fill.pitch < fill.width.saturating_mul(elem)) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if fill.width == 0 || fill.height == 0 {
            return Ok(());
        }
        let span = fill
            .pitch
            .saturating_mul(fill.height - 1)
            .saturating_add(fill.width.saturating_mul(elem));
        self.check_range(dst, span)?;
        self.gate.submit(stream.0, crate::sched::Work::Bytes(span));
        self.b().memset_async(dst, fill, stream)
    }

    /// `size` bytes at `offset` of region `id`, as a buffer the backend can copy through; the Arc keeps the
    /// mapping alive while the copy is issued.
    fn region_slice(
        &self,
        id: RegionId,
        offset: u64,
        size: u64,
    ) -> CuResult<(Arc<crate::sys::SharedRegion>, HostBuffer)> {
        let region = self
            .s()
            .objects()
            .regions
            .get(&id)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let ptr = region.at(offset, size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let len = usize::try_from(size).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        Ok((
            region,
            HostBuffer {
                ptr,
                len,
                ctx: 0,
                epoch: 0,
            },
        ))
    }

    /// Queues a copy on `stream` between device memory `dev` and `size` bytes at `offset` of shared region
    /// `region` (to the device when `to_device`), after checking both sides.
    fn region_copy(
        &self,
        to_device: bool,
        dev: DevicePtr,
        region: RegionId,
        offset: u64,
        size: u64,
        stream: Stream,
    ) -> CuResult<()> {
        self.check_range(dev, size)?;
        let (_keep, buf) = self.region_slice(region, offset, size)?;
        if to_device {
            self.b().memcpy_htod_async(dev, &buf, buf.len, stream)?;
        } else {
            self.b().memcpy_dtoh_async(&buf, dev, buf.len, stream)?;
        }
        self.s().count_moved(size);
        Ok(())
    }

    /// Receives `len` bytes of tail and copies them to `dst` on `stream`, pipelined: the network fills one
    /// staging buffer while the copy engine drains the other. Returns once the copy is done.
    pub(super) fn htod_through_staging(
        &mut self,
        t: &mut dyn Transport,
        dst: impl Into<Span>,
        len: usize,
        stream: Stream,
    ) -> Result<CuResult<()>, ChannelEnd> {
        let dst = dst.into();
        if let Err(e) = self.ensure_staging() {
            self.discard(t, len)?;
            return Ok(Err(e));
        }
        if let Span::Bytes(at) = dst {
            if let Some(r) = self.htod_direct(t, at, len, stream)? {
                return Ok(r);
            }
        }
        let mut done = 0usize;
        let mut which = 0;
        let mut error = None;
        while done < len {
            let n = dst.chunk(done, len);
            let buf = &mut self.staging[which];
            t.recv_exact(&mut buf.as_mut_slice()[..n])?;
            if error.is_none() {
                // The previous chunk's copy ran while this one arrived; waiting for it here (not right after
                // issuing it) is what overlaps the network with the copy engine, and it also frees that chunk's
                // buffer, which the next chunk fills.
                let r = if done > 0 {
                    self.b().stream_synchronize(stream)
                } else {
                    Ok(())
                }
                .and_then(|_| dst.write_chunk(self.b(), &self.staging[which], done, n, stream));
                error = r.err();
            }
            done += n;
            which ^= 1;
        }
        Ok(match error {
            Some(e) => Err(e),
            None => self.b().stream_synchronize(stream),
        })
    }

    /// A device-to-host async copy done now (the session's host budget is spent): waits for its stream, then
    /// pushes the bytes through the staging buffers. The client lands them at its next wait, as it would have.
    fn push_now(
        &mut self,
        t: &mut dyn Transport,
        id: PendingId,
        src: DevicePtr,
        len: usize,
        stream: Stream,
    ) -> Result<CuResult<()>, ChannelEnd> {
        if let Err(e) = self.b().stream_synchronize(stream).and_then(|_| self.ensure_staging()) {
            return Ok(Err(e));
        }
        let frame = std::mem::size_of::<PushHeader>() + len;
        let Ok(frame_len) = u32::try_from(frame) else {
            return Ok(Err(CUDA_ERROR_INVALID_VALUE));
        };
        let header = ReplyHeader {
            len: frame_len,
            result: 0,
            kind: REPLY_KIND_PUSH,
            seq: 0,
        };
        let push = PushHeader {
            pending_id: id.0,
            len: len as u64,
        };
        t.send(&[header.as_bytes(), push.as_bytes()])?;
        let error = self.stream_to_client(t, src, len, stream, false)?;
        Ok(error.map_or(Ok(()), Err))
    }

    /// Sends `len` bytes from `src` through the channel's staging buffers (`stream_out`; `awaited`: the client is
    /// waiting for them now).
    pub(super) fn stream_to_client(
        &mut self,
        t: &mut dyn Transport,
        src: impl Into<Span>,
        len: usize,
        stream: Stream,
        awaited: bool,
    ) -> Result<Option<CUresult>, ChannelEnd> {
        let src = src.into();
        if let Span::Bytes(at) = src {
            // GPUDirect RDMA: the peer reads the device memory itself, once the stream's earlier work is done.
            if direct(t, at, len) && self.b().stream_synchronize(stream).is_ok() && t.send_device(at.0, len)? {
                return Ok(None);
            }
        }
        stream_out(&*self.session.backend, &mut self.staging, t, src, len, stream, awaited)
    }

    /// The device span a 2D copy touches: `height` rows at `pitch`, `width` bytes each.
    pub(super) fn check_2d(&self, addr: u64, pitch: u64, width: u64, height: u64) -> CuResult<()> {
        if height == 0 || width == 0 {
            return Ok(());
        }
        if height > 1 && pitch < width {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let span = pitch
            .checked_mul(height - 1)
            .and_then(|v| v.checked_add(width))
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        self.check_range(DevicePtr(addr), span)
    }

    /// The frame rules every 2D copy shares: its packed size must not overflow, and host-to-device data
    /// (direction 0) travels as a tail of exactly that size. Returns the packed size, counted as bytes moved.
    fn frame_2d(&self, h: &RequestHeader, width: u64, height: u64, direction: u32) -> Result<u64, ChannelEnd> {
        let packed = width
            .checked_mul(height)
            .ok_or_else(|| ChannelEnd::Malformed("2D copy size overflows".into()))?;
        let expect_tail = if direction == 0 { packed } else { 0 };
        if h.tail_len() as u64 != expect_tail || direction > 2 {
            return Err(ChannelEnd::Malformed(
                "2D copy with a tail that does not match its direction".into(),
            ));
        }
        if direction < 2 {
            self.s().count_moved(packed);
        }
        Ok(packed)
    }

    /// Range checks of the device side(s) of a 2D copy: the destination for host-to-device (0), the source
    /// for device-to-host (1), both for device-to-device.
    fn check_2d_sides(
        &self,
        direction: u32,
        src: (u64, u64),
        dst: (u64, u64),
        width: u64,
        height: u64,
    ) -> CuResult<()> {
        if direction != 1 {
            self.check_2d(dst.0, dst.1, width, height)?;
        }
        if direction != 0 {
            self.check_2d(src.0, src.1, width, height)?;
        }
        Ok(())
    }

    /// Receives a host-to-device copy's whole tail into `buf` and names the two sides of a 2D copy.
    fn places_2d<'b>(
        t: &mut dyn Transport,
        direction: u32,
        buf: &'b mut Option<HostBuffer>,
        packed: u64,
        src: (u64, u64),
        dst: (u64, u64),
        width: u64,
    ) -> Result<(Place<'b>, Place<'b>), ChannelEnd> {
        Ok(match (direction, buf) {
            (0, Some(b)) => {
                t.recv_exact(&mut b.as_mut_slice()[..packed as usize])?;
                (Place::Host(b, width), Place::Device(DevicePtr(dst.0), dst.1))
            }
            (1, Some(b)) => (Place::Device(DevicePtr(src.0), src.1), Place::Host(b, width)),
            _ => (
                Place::Device(DevicePtr(src.0), src.1),
                Place::Device(DevicePtr(dst.0), dst.1),
            ),
        })
    }
}

impl Serve<MemcpyHtoD> for Channel {
    fn serve(&mut self, c: MemcpyHtoD, cx: &mut Cx<'_>) -> Served<Empty> {
        let len = cx.header.tail_len();
        if len as u64 != c.size {
            return Err(ChannelEnd::Malformed(format!("copy of {} bytes carries {len}", c.size)));
        }
        self.s().count_moved(c.size);
        if let Err(e) = self.check_range(c.dst, c.size) {
            self.discard(cx.t, len)?;
            return Ok(Err(e));
        }
        let stream = cx.default_stream();
        Ok(self.htod_through_staging(cx.t, c.dst, len, stream)?.map(|_| Empty {}))
    }
}

impl Serve<MemcpyHtoDAsync> for Channel {
    fn serve(&mut self, c: MemcpyHtoDAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        let len = cx.header.tail_len();
        if len as u64 != c.size {
            return Err(ChannelEnd::Malformed(format!("copy of {} bytes carries {len}", c.size)));
        }
        self.s().count_moved(c.size);
        let checked = self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.check_range(c.dst, c.size).map(|_| s));
        let stream = match checked {
            Ok(s) => s,
            Err(e) => {
                self.discard(cx.t, len)?;
                return Ok(Err(e));
            }
        };
        if let Some(r) = self.htod_direct_async(cx.t, c.dst, len, stream)? {
            return Ok(r.map(|_| Empty {}));
        }
        if !self.hold_for_queue(cx.t, len as u64)? {
            // The session's host budget is spent: the copy is done now, through the staging buffers.
            return Ok(self.htod_through_staging(cx.t, c.dst, len, stream)?.map(|_| Empty {}));
        }
        let mut buf = match self.take_buffer(len) {
            Ok(b) => b,
            Err(e) => {
                self.s().release_host(len as u64);
                self.discard(cx.t, len)?;
                return Ok(Err(e));
            }
        };
        cx.t.recv_exact(&mut buf.as_mut_slice()[..len])?;
        let issued = self
            .b()
            .memcpy_htod_async(c.dst, &buf, len, stream)
            .and_then(|_| self.mark(stream));
        Ok(match issued {
            Ok(event) => {
                self.in_flight.push(InFlight {
                    buf,
                    event,
                    held: len as u64,
                });
                Ok(Empty {})
            }
            Err(e) => {
                // The copy may still be queued: wait for the stream before the buffer is reused.
                let _ = self.b().stream_synchronize(stream);
                self.s().release_host(len as u64);
                self.give_back(buf);
                Err(e)
            }
        })
    }
}

impl Serve<MemcpyDtoH> for Channel {
    /// Synchronous device-to-host copy: reply header, the data chunk by chunk as the copy engine fills the
    /// staging buffers, then a final status word (an error can surface after the first chunk left).
    fn serve(&mut self, c: MemcpyDtoH, cx: &mut Cx<'_>) -> Served<Empty> {
        let stream = cx.default_stream();
        let len = usize::try_from(c.size).map_err(|_| ChannelEnd::Malformed("copy size".into()))?;
        if let Err(e) = self.check_range(c.src, c.size).and_then(|_| self.ensure_staging()) {
            return Ok(Err(e));
        }
        if len + 4 > u32::MAX as usize {
            return Err(ChannelEnd::Malformed(
                "device-to-host copy over 4 GiB in one call".into(),
            ));
        }
        self.s().count_moved(c.size);
        self.deliver_pending(cx.t, true)?;
        let latched = self.latched.take();
        let header = ReplyHeader {
            len: (len + 4) as u32,
            result: 0,
            kind: REPLY_KIND_RESULT,
            seq: cx.header.seq,
        };
        cx.t.send(&[header.as_bytes()])?;
        cx.replied = true;
        let error = self.stream_to_client(cx.t, c.src, len, stream, true)?;
        let status = error.or(latched).unwrap_or(CUDA_SUCCESS);
        cx.t.send(&[&status.code().to_le_bytes()])?;
        Ok(Ok(Empty {}))
    }
}

impl Serve<MemcpyDtoHAsync> for Channel {
    fn serve(&mut self, c: MemcpyDtoHAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        let prepared = (|| {
            let stream = self.stream(c.stream, cx.per_thread)?;
            self.check_range(c.src, c.size)?;
            let len = usize::try_from(c.size).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
            Ok((stream, len))
        })();
        let (stream, len) = match prepared {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        self.s().count_moved(c.size);
        if !self.hold_for_queue(cx.t, len as u64)? {
            return Ok(self.push_now(cx.t, c.pending_id, c.src, len, stream)?.map(|_| Empty {}));
        }
        let buf = match self.take_buffer(len) {
            Ok(b) => b,
            Err(e) => {
                self.s().release_host(len as u64);
                return Ok(Err(e));
            }
        };
        let issued = self
            .b()
            .memcpy_dtoh_async(&buf, c.src, len, stream)
            .and_then(|_| self.mark(stream));
        Ok(match issued {
            Ok(event) => {
                self.pending.push(PendingCopy {
                    id: c.pending_id,
                    buf,
                    len,
                    event,
                });
                Ok(Empty {})
            }
            Err(e) => {
                let _ = self.b().stream_synchronize(stream);
                self.s().release_host(len as u64);
                self.give_back(buf);
                Err(e)
            }
        })
    }
}

impl Serve<MemcpyDtoD> for Channel {
    fn serve(&mut self, c: MemcpyDtoD, cx: &mut Cx<'_>) -> Served<Empty> {
        let stream = cx.default_stream();
        Ok(self
            .check_range(c.src, c.size)
            .and_then(|_| self.check_range(c.dst, c.size))
            .map(|_| self.gate.submit(stream.0, crate::sched::Work::Bytes(c.size)))
            .and_then(|_| self.b().memcpy_dtod_async(c.dst, c.src, c.size, stream))
            // Measured up to here, not up to the next call.
            .map(|_| self.gate.sync_point())
            .and_then(|_| self.b().stream_synchronize(stream))
            .map(|_| Empty {}))
    }
}

impl Serve<MemcpyDtoDAsync> for Channel {
    fn serve(&mut self, c: MemcpyDtoDAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self.stream(c.stream, cx.per_thread).and_then(|s| {
            self.check_range(c.src, c.size)?;
            self.check_range(c.dst, c.size)?;
            self.gate.submit(s.0, crate::sched::Work::Bytes(c.size));
            self.b().memcpy_dtod_async(c.dst, c.src, c.size, s).map(|_| Empty {})
        }))
    }
}

impl Serve<Memset> for Channel {
    fn serve(&mut self, c: Memset, cx: &mut Cx<'_>) -> Served<Empty> {
        let stream = cx.default_stream();
        let fill = Fill {
            value: c.value,
            elem_size: c.elem_size,
            width: c.width,
            height: c.height,
            pitch: c.pitch,
        };
        Ok(self
            .memset(c.dst, fill, stream)
            // Measured up to here, not up to the next call.
            .map(|_| self.gate.sync_point())
            .and_then(|_| self.b().stream_synchronize(stream))
            .map(|_| Empty {}))
    }
}

impl Serve<MemsetAsync> for Channel {
    fn serve(&mut self, c: MemsetAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        let fill = Fill {
            value: c.value,
            elem_size: c.elem_size,
            width: c.width,
            height: c.height,
            pitch: c.pitch,
        };
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.memset(c.dst, fill, s))
            .map(|_| Empty {}))
    }
}

impl Serve<Memcpy2D> for Channel {
    /// Synchronous 2D copy. Host rows travel packed; the server copies them through a staging buffer.
    fn serve(&mut self, c: Memcpy2D, cx: &mut Cx<'_>) -> Served<Empty> {
        let stream = cx.default_stream();
        let packed = self.frame_2d(cx.header, c.width, c.height, c.direction)?;
        let (src, dst) = ((c.src, c.src_pitch), (c.dst, c.dst_pitch));
        let checked = self.check_2d_sides(c.direction, src, dst, c.width, c.height);
        let buf = checked.and_then(|_| {
            if c.direction < 2 {
                self.take_buffer(packed as usize).map(Some)
            } else {
                Ok(None)
            }
        });
        let mut buf = match buf {
            Ok(b) => b,
            Err(e) => {
                self.discard(cx.t, cx.header.tail_len())?;
                return Ok(Err(e));
            }
        };
        let (from, to) = Self::places_2d(cx.t, c.direction, &mut buf, packed, src, dst, c.width)?;
        let r = self
            .b()
            .memcpy_2d_async(from, to, c.width, c.height, stream)
            .and_then(|_| self.b().stream_synchronize(stream));
        if let (Ok(()), 1, Some(b)) = (&r, c.direction, &buf) {
            cx.reply_tail = b.as_slice()[..packed as usize].to_vec();
        }
        if let Some(b) = buf {
            self.give_back(b);
        }
        Ok(r.map(|_| Empty {}))
    }
}

impl Serve<Memcpy2DAsync> for Channel {
    fn serve(&mut self, c: Memcpy2DAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        let packed = self.frame_2d(cx.header, c.width, c.height, c.direction)?;
        let (src, dst) = ((c.src, c.src_pitch), (c.dst, c.dst_pitch));
        let checked = self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.check_2d_sides(c.direction, src, dst, c.width, c.height).map(|_| s));
        let stream = match checked {
            Ok(s) => s,
            Err(e) => {
                self.discard(cx.t, cx.header.tail_len())?;
                return Ok(Err(e));
            }
        };
        // Host rows wait in a buffer held against the session's host budget; past it, the copy is done now.
        let queued = c.direction < 2 && self.hold_for_queue(cx.t, packed)?;
        let buf = if c.direction < 2 {
            self.take_buffer(packed as usize).map(Some)
        } else {
            Ok(None)
        };
        let mut buf = match buf {
            Ok(b) => b,
            Err(e) => {
                if queued {
                    self.s().release_host(packed);
                }
                self.discard(cx.t, cx.header.tail_len())?;
                return Ok(Err(e));
            }
        };
        let (from, to) = Self::places_2d(cx.t, c.direction, &mut buf, packed, src, dst, c.width)?;
        let issued = self.b().memcpy_2d_async(from, to, c.width, c.height, stream);
        let Some(b) = buf else {
            return Ok(issued.map(|_| Empty {}));
        };
        if !queued {
            let r = issued.and_then(|_| self.b().stream_synchronize(stream));
            if r.is_ok() && c.direction == 1 {
                let header = ReplyHeader {
                    len: (std::mem::size_of::<PushHeader>() as u64 + packed) as u32,
                    result: 0,
                    kind: REPLY_KIND_PUSH,
                    seq: 0,
                };
                let push = PushHeader {
                    pending_id: c.pending_id.0,
                    len: packed,
                };
                let sent =
                    cx.t.send(&[header.as_bytes(), push.as_bytes(), &b.as_slice()[..packed as usize]]);
                self.give_back(b);
                sent?;
            } else {
                self.give_back(b);
            }
            return Ok(r.map(|_| Empty {}));
        }
        Ok(match issued.and_then(|_| self.mark(stream)) {
            Ok(event) if c.direction == 1 => {
                self.pending.push(PendingCopy {
                    id: c.pending_id,
                    buf: b,
                    len: packed as usize,
                    event,
                });
                Ok(Empty {})
            }
            Ok(event) => {
                self.in_flight.push(InFlight {
                    buf: b,
                    event,
                    held: packed,
                });
                Ok(Empty {})
            }
            Err(e) => {
                let _ = self.b().stream_synchronize(stream);
                self.s().release_host(packed);
                self.give_back(b);
                Err(e)
            }
        })
    }
}

impl Serve<MemcpyHtoDRegion> for Channel {
    fn serve(&mut self, c: MemcpyHtoDRegion, cx: &mut Cx<'_>) -> Served<Empty> {
        let stream = cx.default_stream();
        Ok(self
            .region_copy(true, c.dst, c.region, c.offset, c.size, stream)
            .and_then(|_| self.b().stream_synchronize(stream))
            .map(|_| Empty {}))
    }
}

impl Serve<MemcpyHtoDRegionAsync> for Channel {
    fn serve(&mut self, c: MemcpyHtoDRegionAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.region_copy(true, c.dst, c.region, c.offset, c.size, s))
            .map(|_| Empty {}))
    }
}

impl Serve<MemcpyDtoHRegion> for Channel {
    fn serve(&mut self, c: MemcpyDtoHRegion, cx: &mut Cx<'_>) -> Served<Empty> {
        let stream = cx.default_stream();
        Ok(self
            .region_copy(false, c.src, c.region, c.offset, c.size, stream)
            .and_then(|_| self.b().stream_synchronize(stream))
            .map(|_| Empty {}))
    }
}

impl Serve<MemcpyDtoHRegionAsync> for Channel {
    fn serve(&mut self, c: MemcpyDtoHRegionAsync, cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.region_copy(false, c.src, c.region, c.offset, c.size, s))
            .map(|_| Empty {}))
    }
}

/// `send_awaited` where the peer is receiving these bytes now, else `send`.
pub(super) fn send_maybe_awaited(
    t: &mut dyn Transport,
    parts: &[&[u8]],
    awaited: bool,
) -> Result<(), vgpu_dataplane::transport::TransportError> {
    if awaited {
        t.send_awaited(parts)
    } else {
        t.send(parts)
    }
}

/// Sends `len` bytes from `src` chunk by chunk as the copy engine fills the staging buffers (the frame's
/// header is already out): issue the first chunk, then wait for chunk i, issue chunk i+1 into the other
/// buffer, send chunk i. A failed copy sends zeros for the rest, keeping the frame whole; its error is
/// returned for the status the caller reports. `awaited`: the peer is receiving these bytes now (a synchronous
/// copy), so the transport may have it read each chunk in place before the chunk's buffer is filled again.
pub(super) fn stream_out(
    b: &dyn Backend,
    staging: &mut [HostBuffer],
    t: &mut dyn Transport,
    src: Span,
    len: usize,
    stream: Stream,
    awaited: bool,
) -> Result<Option<CUresult>, ChannelEnd> {
    let mut error: Option<CUresult> = None;
    let mut offset = 0usize;
    let mut which = 0;
    if len > 0 {
        let first = src.chunk(0, len);
        error = src.read_chunk(b, &staging[0], 0, first, stream).err();
    }
    while offset < len {
        let n = src.chunk(offset, len);
        if error.is_none() {
            error = b.stream_synchronize(stream).err();
        }
        let next = offset + n;
        if next < len && error.is_none() {
            let m = src.chunk(next, len);
            error = src.read_chunk(b, &staging[which ^ 1], next, m, stream).err();
        }
        if error.is_some() {
            staging[which].as_mut_slice()[..n].fill(0);
        }
        send_maybe_awaited(t, &[&staging[which].as_slice()[..n]], awaited)?;
        offset = next;
        which ^= 1;
    }
    Ok(error)
}
