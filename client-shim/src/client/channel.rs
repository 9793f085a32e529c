//! One app thread's channel to one server: calls batched and flushed, replies and pushed copy data read
//! back, the server thread's current context kept in step, and a lost server reported once.

use super::*;

pub(super) fn lock(ch: &Mutex<Channel>) -> MutexGuard<'_, Channel> {
    ch.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asynchronous tails from this length up go out on their own, straight from where they are, not through the batch.
const BULK_TAIL: usize = 256 * 1024;
/// Largest reply tail a synchronous call accepts (the function table of the largest library images stays far
/// below it), and the first piece one is received in (memory grows with the bytes that arrived, doubling).
const MAX_REPLY_TAIL: usize = 256 << 20;
const REPLY_TAIL_STEP: usize = 64 << 10;

/// One app thread's link to its server thread on one server.
pub struct Channel {
    pub(super) transport: stats::Counted,
    batch: BytesMut,
    pub(super) broken: bool,
    /// The server this channel leads to (its index in `Session::servers`).
    server: usize,
    /// The context this channel's server thread has current, as this client last set it (`NO_CONTEXT`: none
    /// set yet).
    pub(super) mirrored: ContextId,
    /// Whether the channel is striped over extra TCP connections (`lanes`).
    pub(super) lanes: super::lanes::Lanes,
}

static LOST_REPORTED: AtomicBool = AtomicBool::new(false);

impl Drop for Channel {
    /// A thread that queued work and ended without a synchronizing call: its batch still goes out, as the
    /// driver runs work a thread queued after the thread is gone (the server also waits for these request
    /// numbers before running later ones).
    fn drop(&mut self) {
        let _ = self.flush_own();
    }
}

impl Channel {
    /// A channel over an open transport (after the handshake), to the first server. Public for the fuzzing
    /// harness, which plays a hostile server to it.
    #[cfg_attr(not(feature = "fuzzing"), allow(dead_code))] // the shim itself names the server: `on_server`
    pub fn new(transport: Box<dyn Transport>) -> Self {
        Self::on_server(transport, 0)
    }

    /// A channel to server `server` (its index in the session) over an open transport.
    pub(super) fn on_server(transport: Box<dyn Transport>, server: usize) -> Self {
        Channel {
            transport: stats::Counted(transport, 0),
            batch: BytesMut::with_capacity(64 * 1024),
            broken: false,
            server,
            mirrored: crate::state::NO_CONTEXT,
            lanes: super::lanes::Lanes::Untried,
        }
    }

    /// Whether the channel has given up on its server (every call on it now answers `LOST`).
    #[cfg(feature = "fuzzing")]
    pub fn is_lost(&self) -> bool {
        self.broken
    }

    pub(super) fn fail(&mut self, what: &dyn std::fmt::Display) -> CUresult {
        self.broken = true;
        if !LOST_REPORTED.swap(true, Ordering::Relaxed) {
            log!(
                ERROR,
                "lost the GPU server: {what}; every CUDA call now fails with CUDA_ERROR_DEVICE_UNAVAILABLE"
            );
        }
        LOST
    }

    /// Makes `ctx` current on this channel's server thread (posted in order with the thread's other calls).
    pub(super) fn set_current(&mut self, srv: &Server, ctx: ContextId) -> CuResult<()> {
        self.post(srv, 0, &CtxSetCurrent { ctx }, &[])?;
        self.mirrored = ctx;
        Ok(())
    }

    /// Before a call on this channel: the server thread must have the right context current. For a call on the
    /// current context (`device` `None`), the thread's current context. For a call about an object or address of
    /// device `dev`: the thread's current context when it is of that device; else the one mirrored there already
    /// when it is; else the device's primary context when the app holds it (say `cuMemFree` of memory of device 1
    /// while device 0 is current). A context the server does not know yet (a primary context made current
    /// before it was retained) is left alone: the retain mirrors it.
    pub(super) fn ensure_context(&mut self, srv: &Server, device: Option<i32>) -> CuResult<()> {
        use crate::state::NO_CONTEXT;
        let current = crate::state::current_ctx();
        if device.is_none() && (current == self.mirrored || current == NO_CONTEXT) {
            return Ok(());
        }
        let want = {
            let reg = crate::state::read();
            let known = |c: ContextId| match reg.contexts.get(&c) {
                Some(i) if i.primary => {
                    reg.primary_refs.get(&i.device).copied().unwrap_or(0) > 0 && !reg.primary_reset.contains(&i.device)
                }
                Some(_) => true,
                None => false,
            };
            let device_of = |c: ContextId| reg.contexts.get(&c).map(|i| i.device);
            match device {
                None if known(current) && crate::state::server_of_device_in(&reg, current) == Some(srv.index) => {
                    current
                }
                None => return Ok(()),
                Some(dev) if device_of(current) == Some(dev) && known(current) => current,
                Some(dev) if self.mirrored != NO_CONTEXT && device_of(self.mirrored) == Some(dev) => return Ok(()),
                Some(dev) if known(crate::state::primary_ctx_id(dev)) => crate::state::primary_ctx_id(dev),
                Some(_) => return Ok(()),
            }
        };
        if self.mirrored != want {
            self.set_current(srv, want)?;
        }
        Ok(())
    }

    /// The next request's number, from the server's one counter for all its channels: the server submits work
    /// to the driver in this order across its channel threads, as the app submitted it across its threads. Taken
    /// under this channel's lock right before the request joins the batch, so each channel's numbers rise in
    /// send order. Never 0 (the server's starting point).
    fn next_seq(&mut self, srv: &Server) -> u32 {
        srv.requests.fetch_add(1, Ordering::SeqCst);
        let mut seq = srv.submit_order.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if seq == 0 {
            seq = srv.submit_order.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        }
        seq
    }

    /// Writes out this channel's batch only (used while flushing the other channels).
    pub(super) fn flush_own(&mut self) -> CuResult<()> {
        if self.broken || self.batch.is_empty() {
            return Ok(());
        }
        stats::add(stats::BATCH_FLUSHES, 1);
        let r = self.transport.send(&[&self.batch]);
        count_sent(self.batch.len());
        self.batch.clear();
        r.map_err(|e| self.fail(&e))
    }

    /// Writes out everything batched so far.
    pub fn flush(&mut self) -> CuResult<()> {
        if self.broken {
            return Err(LOST);
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        flush_other_channels(self.server);
        stats::add(stats::BATCH_FLUSHES, 1);
        let r = self.transport.send(&[&self.batch]);
        count_sent(self.batch.len());
        self.batch.clear();
        r.map_err(|e| self.fail(&e))
    }

    /// Queues an asynchronous call; its error, if any, latches on the server.
    pub fn post<C: AsyncCall>(&mut self, srv: &Server, flags: u16, call: &C, tail: &[u8]) -> CuResult<()> {
        self.post_kept(srv, flags, call, tail, false)
    }

    /// `post`, for a tail in the app's page-locked memory (an asynchronous copy's source, which CUDA forbids
    /// changing before the copy ran): a bulk one may be read by the transport after this returns.
    pub fn post_pinned<C: AsyncCall>(&mut self, srv: &Server, flags: u16, call: &C, tail: &[u8]) -> CuResult<()> {
        self.post_kept(srv, flags, call, tail, true)
    }

    fn post_kept<C: AsyncCall>(
        &mut self,
        srv: &Server,
        flags: u16,
        call: &C,
        tail: &[u8],
        stable: bool,
    ) -> CuResult<()> {
        // A pinned tail the transport reads in place goes on its own: batching it would copy it.
        let in_place = stable
            && self
                .transport
                .stable_in_place_min()
                .is_some_and(|min| tail.len() >= min);
        if tail.len() >= BULK_TAIL || in_place {
            return self.post_bulk(srv, flags, call, tail, stable);
        }
        self.post_with(srv, flags, call, tail.len(), |buf| buf.put_slice(tail), srv.batch_limit)
    }

    /// Sends an asynchronous call with a bulk tail straight from the caller's memory (no copy into a buffer of
    /// ours: the transport takes the bytes from where they are). `stable`: see `post_pinned`.
    fn post_bulk<C: AsyncCall>(
        &mut self,
        srv: &Server,
        flags: u16,
        call: &C,
        tail: &[u8],
        stable: bool,
    ) -> CuResult<()> {
        if self.broken {
            return Err(LOST);
        }
        self.stripe_if_bulk(srv, tail.len());
        stats::add(stats::ASYNC_CALLS, 1);
        // Everything batched goes first, then this request takes its number: a channel dropped while flushing
        // (whose transport may wait for the server to read what it offered) never waits behind a number this
        // thread holds unsent.
        flush_other_channels(self.server);
        self.flush_own()?;
        let seq = self.next_seq(srv);
        let header = request_header::<C>(seq, flags, tail.len());
        count_sent(header.as_bytes().len() + call.as_bytes().len() + tail.len());
        stats::add(stats::BATCH_FLUSHES, 1);
        let parts = [header.as_bytes(), call.as_bytes(), tail];
        let sent = if stable {
            self.transport.send_stable(&parts)
        } else {
            self.transport.send(&parts)
        };
        sent.map_err(|e| self.fail(&e))
    }

    /// Sends an asynchronous call at once (not batched).
    pub fn post_now<C: AsyncCall>(&mut self, srv: &Server, flags: u16, call: &C, tail: &[u8]) -> CuResult<()> {
        self.post_with(srv, flags, call, tail.len(), |buf| buf.put_slice(tail), 0)
    }

    /// Queues an asynchronous call whose `tail_len`-byte tail `write_tail` appends in place.
    pub fn post_with<C: AsyncCall>(
        &mut self,
        srv: &Server,
        flags: u16,
        call: &C,
        tail_len: usize,
        write_tail: impl FnOnce(&mut BytesMut),
        batch_limit: usize,
    ) -> CuResult<()> {
        if self.broken {
            return Err(LOST);
        }
        if tail_len >= BULK_TAIL {
            // Large tails written in place (not a slice of the caller's) go out directly rather than through the
            // batch.
            let mut tail = BytesMut::with_capacity(tail_len);
            write_tail(&mut tail);
            return self.post_bulk(srv, flags, call, &tail, false);
        }
        stats::add(stats::ASYNC_CALLS, 1);
        let seq = self.next_seq(srv);
        let header = request_header::<C>(seq, flags, tail_len);
        let was_empty = self.batch.is_empty();
        self.batch.put_slice(header.as_bytes());
        self.batch.put_slice(call.as_bytes());
        let before = self.batch.len();
        write_tail(&mut self.batch);
        debug_assert_eq!(self.batch.len() - before, tail_len);
        if self.batch.len() >= batch_limit {
            self.flush()
        } else {
            if was_empty {
                wake_flusher();
            }
            Ok(())
        }
    }

    /// Sends a synchronous call (after the batch) and waits for its reply; `reply_tail` receives any bytes
    /// after the fixed reply body.
    pub fn call<C: SyncCall>(
        &mut self,
        srv: &Server,
        flags: u16,
        call: &C,
        tail: &[u8],
        reply_tail: Option<&mut Vec<u8>>,
    ) -> CuResult<C::Reply> {
        let seq = self.send_sync::<C>(srv, flags, call, tail)?;
        let header = self.await_reply(seq)?;
        if header.status() != CUDA_SUCCESS {
            note_sticky(header.status());
            self.skip(header.len as usize)?;
            return Err(header.status());
        }
        let body_len = std::mem::size_of::<C::Reply>();
        if (header.len as usize) < body_len {
            return Err(self.fail(&"short reply"));
        }
        let mut reply = C::Reply::default();
        self.recv(reply.as_mut_bytes())?;
        let extra = header.len as usize - body_len;
        match reply_tail {
            Some(buf) => self.recv_reply_tail(buf, extra)?,
            None => self.skip(extra)?,
        }
        Ok(reply)
    }

    /// `cuMemcpyDtoH`: the data lands straight in `dst`, then a final status word follows.
    pub fn copy_to_host(&mut self, srv: &Server, flags: u16, call: &MemcpyDtoH, dst: &mut [u8]) -> CuResult<()> {
        self.stripe_if_bulk(srv, dst.len());
        let seq = self.send_sync::<MemcpyDtoH>(srv, flags, call, &[])?;
        let header = self.await_reply(seq)?;
        if header.status() != CUDA_SUCCESS {
            note_sticky(header.status());
            self.skip(header.len as usize)?;
            return Err(header.status());
        }
        if header.len as usize != dst.len() + 4 {
            return Err(self.fail(&"device-to-host reply of the wrong length"));
        }
        self.recv(dst)?;
        let mut status = [0u8; 4];
        self.recv(&mut status)?;
        CUresult::from_code(u32::from_le_bytes(status)).result()
    }

    fn send_sync<C: SyncCall>(&mut self, srv: &Server, flags: u16, call: &C, tail: &[u8]) -> CuResult<u32> {
        if self.broken {
            return Err(LOST);
        }
        if C::OP != Op::LanesJoin {
            self.stripe_if_bulk(srv, tail.len());
        }
        flush_other_channels(self.server);
        stats::note_sync(C::OP);
        let seq = self.next_seq(srv);
        let header = request_header::<C>(seq, flags, tail.len());
        // The reply comes after the server read the whole request: the tail (an app's buffer, say) is stable until
        // then, so a transport may read it in place.
        let r = if self.batch.is_empty() {
            count_sent(header.as_bytes().len() + call.as_bytes().len() + tail.len());
            self.transport.send_stable(&[header.as_bytes(), call.as_bytes(), tail])
        } else {
            count_sent(self.batch.len() + header.as_bytes().len() + call.as_bytes().len() + tail.len());
            let r = self
                .transport
                .send_stable(&[&self.batch, header.as_bytes(), call.as_bytes(), tail]);
            self.batch.clear();
            r
        };
        r.map_err(|e| self.fail(&e))?;
        Ok(seq)
    }

    fn recv(&mut self, buf: &mut [u8]) -> CuResult<()> {
        count_received(buf.len());
        self.transport.recv_exact(buf).map_err(|e| self.fail(&e))
    }

    /// Reads frames until the reply to `seq`, landing pushed async-copy data on the way.
    fn await_reply(&mut self, seq: u32) -> CuResult<ReplyHeader> {
        let _wait = stats::ReplyWait::start();
        loop {
            let mut head = ReplyHeader::default();
            self.recv(head.as_mut_bytes())?;
            match head.kind {
                REPLY_KIND_RESULT if head.seq == seq => return Ok(head),
                REPLY_KIND_RESULT => return Err(self.fail(&format!("reply {} where {seq} was due", head.seq))),
                REPLY_KIND_PUSH => self.land_push(head.len as usize)?,
                REPLY_KIND_STDOUT => self.relay_stdout(head.len as usize)?,
                other => return Err(self.fail(&format!("unknown frame kind {other}"))),
            }
        }
    }

    fn land_push(&mut self, len: usize) -> CuResult<()> {
        let mut push = PushHeader::default();
        if len < std::mem::size_of::<PushHeader>() {
            return Err(self.fail(&"short push frame"));
        }
        self.recv(push.as_mut_bytes())?;
        let data_len = len - std::mem::size_of::<PushHeader>();
        let target = pending_take(PendingId(push.pending_id));
        match target {
            Some(l) if l.len() == data_len && push.len as usize == data_len && l.rows <= 1 => {
                let dst = crate::ffi::fill(l.addr, data_len);
                self.recv(dst)
            }
            Some(l) if l.len() == data_len && push.len as usize == data_len => {
                let mut packed = vec![0u8; data_len];
                self.recv(&mut packed)?;
                for (row, chunk) in packed.chunks_exact(l.width).enumerate() {
                    crate::ffi::fill(l.addr + row * l.pitch, l.width).copy_from_slice(chunk);
                }
                Ok(())
            }
            _ => {
                log!(
                    WARN,
                    "server pushed {data_len} bytes for unknown copy {}",
                    push.pending_id
                );
                self.skip(data_len)
            }
        }
    }

    /// Receives `len` bytes of a reply's tail into `buf`, which grows with what arrives (a server announcing more
    /// than `MAX_REPLY_TAIL` is treated as lost: no call's reply comes near it).
    fn recv_reply_tail(&mut self, buf: &mut Vec<u8>, len: usize) -> CuResult<()> {
        if len > MAX_REPLY_TAIL {
            return Err(self.fail(&format!("reply tail of {len} bytes announced")));
        }
        buf.clear();
        let mut step = REPLY_TAIL_STEP;
        while buf.len() < len {
            let start = buf.len();
            let end = len.min(start + step);
            buf.resize(end, 0);
            self.transport
                .recv_exact(&mut buf[start..end])
                .map_err(|e| self.fail(&e))?;
            step = step.saturating_mul(2);
        }
        Ok(())
    }

    /// Copies a frame of the server driver's standard output to the app's, piece by piece.
    fn relay_stdout(&mut self, mut len: usize) -> CuResult<()> {
        let mut piece = [0u8; 4096];
        while len > 0 {
            let n = len.min(piece.len());
            self.transport.recv_exact(&mut piece[..n]).map_err(|e| self.fail(&e))?;
            crate::ffi::write_stdout(&piece[..n]);
            len -= n;
        }
        Ok(())
    }

    fn skip(&mut self, mut len: usize) -> CuResult<()> {
        let mut scratch = [0u8; 4096];
        while len > 0 {
            let n = len.min(scratch.len());
            self.recv(&mut scratch[..n])?;
            len -= n;
        }
        Ok(())
    }
}
