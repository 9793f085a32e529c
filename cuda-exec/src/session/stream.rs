//! Handlers: streams, events and stream memory operations (whose addresses must be the session's memory).

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;
use zerocopy::FromBytes;

use super::channel::{Channel, Cx, Serve, Served};
use super::ChannelEnd;

impl Serve<StreamCreate> for Channel {
    fn serve(&mut self, c: StreamCreate, _cx: &mut Cx<'_>) -> Served<Empty> {
        if let Err(e) = self.s().check_cap(|o| o.streams.len(), |c| c.streams) {
            return Ok(Err(e));
        }
        Ok(self.b().stream_create(c.flags, c.priority).map(|real| {
            self.s().objects().streams.insert(c.stream, real);
            Empty {}
        }))
    }
}

impl Serve<StreamDestroy> for Channel {
    fn serve(&mut self, c: StreamDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        let real = self.s().objects().streams.remove(&c.stream);
        Ok(real
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
            .and_then(|r| self.b().stream_destroy(r))
            .map(|_| Empty {}))
    }
}

impl Serve<StreamSynchronize> for Channel {
    fn serve(&mut self, c: StreamSynchronize, cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.b().stream_synchronize(s))
            .map(|_| Empty {}))
    }
}

impl Serve<StreamQuery> for Channel {
    fn serve(&mut self, c: StreamQuery, cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.b().stream_query(s))
            .map(|_| Empty {}))
    }
}

impl Serve<StreamWaitEvent> for Channel {
    fn serve(&mut self, c: StreamWaitEvent, cx: &mut Cx<'_>) -> Served<Empty> {
        let e = self.event(c.event);
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.b().stream_wait_event(s, e?, c.flags))
            .map(|_| Empty {}))
    }
}

impl Serve<StreamMemOps> for Channel {
    fn serve(&mut self, c: StreamMemOps, cx: &mut Cx<'_>) -> Served<Empty> {
        let count = c.count as usize;
        if count == 0 || count > MAX_MEM_OPS || (c.single != 0 && count != 1) {
            return Err(ChannelEnd::Malformed(format!("{count} stream memory operations")));
        }
        let record = std::mem::size_of::<MemOp>();
        if self.tail.len() != count * record {
            return Err(ChannelEnd::Malformed(format!(
                "{count} stream memory operations in {} bytes",
                self.tail.len()
            )));
        }
        let ops: Vec<MemOp> = self
            .tail
            .chunks_exact(record)
            .filter_map(|b| MemOp::read_from_bytes(b).ok())
            .collect();
        // Each write or wait must name 4 or 8 bytes of the session's device memory; unknown operations are refused.
        let checked = ops.iter().try_for_each(|op| match op.operand_len() {
            None => Err(CUDA_ERROR_INVALID_VALUE),
            Some(0) => Ok(()),
            Some(len) => self.check_range(op.address, len),
        });
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| checked.map(|_| s))
            .and_then(|s| self.b().stream_mem_ops(s, &ops, c.flags, c.single != 0))
            .map(|_| Empty {}))
    }
}

impl Serve<EventCreate> for Channel {
    fn serve(&mut self, c: EventCreate, _cx: &mut Cx<'_>) -> Served<Empty> {
        if let Err(e) = self.s().check_cap(|o| o.events.len(), |c| c.events) {
            return Ok(Err(e));
        }
        Ok(self.b().event_create(c.flags).map(|real| {
            self.s().objects().events.insert(c.event, real);
            Empty {}
        }))
    }
}

impl Serve<EventRecord> for Channel {
    fn serve(&mut self, c: EventRecord, cx: &mut Cx<'_>) -> Served<Empty> {
        let e = self.event(c.event);
        Ok(self
            .stream(c.stream, cx.per_thread)
            .and_then(|s| self.b().event_record(e?, s))
            .map(|_| Empty {}))
    }
}

impl Serve<EventSynchronize> for Channel {
    fn serve(&mut self, c: EventSynchronize, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .event(c.event)
            .and_then(|e| self.b().event_synchronize(e))
            .map(|_| Empty {}))
    }
}

impl Serve<EventQuery> for Channel {
    fn serve(&mut self, c: EventQuery, _cx: &mut Cx<'_>) -> Served<Empty> {
        Ok(self
            .event(c.event)
            .and_then(|e| self.b().event_query(e))
            .map(|_| Empty {}))
    }
}

impl Serve<EventElapsedTime> for Channel {
    fn serve(&mut self, c: EventElapsedTime, _cx: &mut Cx<'_>) -> Served<EventElapsedReply> {
        let (a, b) = (self.event(c.start), self.event(c.end));
        Ok(a.and_then(|a| self.b().event_elapsed(a, b?))
            .map(|ms| EventElapsedReply { ms, _pad: 0 }))
    }
}

impl Serve<EventDestroy> for Channel {
    fn serve(&mut self, c: EventDestroy, _cx: &mut Cx<'_>) -> Served<Empty> {
        let real = self.s().objects().events.remove(&c.event);
        if real.is_some() {
            self.s().ipc_event_destroyed(c.event);
        }
        Ok(real
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
            .and_then(|r| self.b().event_destroy(r))
            .map(|_| Empty {}))
    }
}
