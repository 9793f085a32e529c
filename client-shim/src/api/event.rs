//! Events: creation with client-chosen ids (no round trip), records in stream order (or into a capture), waits,
//! queries and elapsed time, answered by the server's driver.

use std::collections::HashMap;
use std::sync::Mutex;

use vgpu_cuda_sys::driver::{CUevent, CUevent_flags, CUevent_record_flags, CUstream};
use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::stream::{same_server, stream_id};
use super::{route_of_object, route_of_stream, ClientHandle};
use crate::mirror::Covered;
use crate::{client, ffi, mirror, state};

/// The stream each event was last recorded on: what waiting for the event waits for, so which queued writes into
/// pinned memory a completed wait brings back (whichever thread queued them). One entry per live event.
static RECORDED_ON: Mutex<Option<HashMap<EventId, (Covered, u64)>>> = Mutex::new(None);

fn recorded_on() -> std::sync::MutexGuard<'static, Option<HashMap<EventId, (Covered, u64)>>> {
    RECORDED_ON.lock().unwrap_or_else(|p| p.into_inner())
}

/// After a wait for `event` completed: brings back what the work before its record wrote into pinned memory.
fn after_event(event: EventId) -> CuResult<()> {
    let covered = recorded_on().as_ref().and_then(|m| m.get(&event).copied());
    // Never recorded: complete at once, having waited for nothing.
    covered.map_or(Ok(()), |(covered, before)| mirror::after_sync_before(covered, before))
}

/// The wire id of an event handle the app holds.
pub(crate) fn event_id(event: CUevent) -> CuResult<EventId> {
    let id = event.id();
    if state::read().events.contains_key(&id) {
        Ok(id)
    } else {
        Err(CUDA_ERROR_INVALID_HANDLE)
    }
}

/// The flags `cuEventCreate` accepts here: the `CUevent_flags` bits (BLOCKING_SYNC 1, DISABLE_TIMING 2,
/// INTERPROCESS 4) and 0x8, which the client has always passed on for the server's driver to judge.
const EVENT_FLAGS: u32 = 0xf;

/// Records `event` on `stream` in stream order, or where the capture of `stream` stands.
fn record(flags: u16, event: CUevent, stream: CUstream) -> CuResult<()> {
    let (event, stream) = (event_id(event)?, stream_id(stream)?);
    if super::graph::record_event(super::graph::key(flags, stream), event) {
        return Ok(());
    }
    let route = route_of_stream(stream);
    // An event is recorded on a stream of its own server (of its own context, natively).
    if !same_server(route, route_of_object(event.get()))? {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    client::post_to(route, flags, &EventRecord { event, stream }, &[])?;
    let covered = super::stream::stream_covered(route, flags, stream)?;
    // The work it covers is what was queued before it: a copy another thread queues later on the same stream is not.
    recorded_on()
        .get_or_insert_with(HashMap::new)
        .insert(event, (covered, mirror::marks_so_far()));
    let interprocess = CUevent_flags::CU_EVENT_INTERPROCESS.0;
    if state::read().events.get(&event).is_some_and(|f| f & interprocess != 0) {
        // Another process may wait for this record as soon as the app tells it (over a pipe, say): it must be on
        // the server's driver before cuEventRecord returns, as natively, not in this thread's batch.
        client::call_to(route, flags, &Ping {}, &[])?;
    }
    Ok(())
}

entry! {
    cuEventCreate => |f, out, flags| {
        let dev = super::current_device()?;
        if out.is_null() || flags & !EVENT_FLAGS != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // The driver refuses an interprocess event that keeps timing at once (measured on driver 580): refused
        // here too, rather than latched on the server and surfacing at some later call.
        let interprocess = CUevent_flags::CU_EVENT_INTERPROCESS.0;
        let no_timing = CUevent_flags::CU_EVENT_DISABLE_TIMING.0;
        if flags & interprocess != 0 && flags & no_timing == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        client::sticky_error()?;
        let event = EventId(state::new_id());
        client::post_now(0, &EventCreate { event, flags, _pad: 0 }, &[])?;
        let mut reg = state::write();
        reg.events.insert(event, flags);
        reg.owners.insert(event.get(), dev);
        ffi::write(out, CUevent::of(event))
    }
    cuEventRecord, cuEventRecord_ptsz => |f, event, stream| {
        record(f, event, stream)
    }
    cuEventRecordWithFlags, cuEventRecordWithFlags_ptsz => |f, event, stream, flags| {
        // CU_EVENT_RECORD_EXTERNAL only matters inside graph capture, which is not remoted.
        if flags & !CUevent_record_flags::CU_EVENT_RECORD_EXTERNAL.0 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        record(f, event, stream)
    }
    cuEventSynchronize => |f, event| {
        let event = event_id(event)?;
        client::call_to(route_of_object(event.get()), 0, &EventSynchronize { event }, &[])?;
        after_event(event)
    }
    cuEventQuery => |f, event| {
        let event = event_id(event)?;
        client::call_to(route_of_object(event.get()), 0, &EventQuery { event }, &[])?;
        // Complete: a poller reads what the work before the record wrote, as after a wait.
        after_event(event)
    }
    cuEventElapsedTime, cuEventElapsedTime_v2 => |f, ms, start, end| {
        if ms.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (start, end) = (event_id(start)?, event_id(end)?);
        {
            let reg = state::read();
            let untimed = |e: &EventId| {
                reg.events.get(e).is_some_and(|f| f & CUevent_flags::CU_EVENT_DISABLE_TIMING.0 != 0)
            };
            if [start, end].iter().any(untimed) {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
        }
        let route = route_of_object(start.get());
        if !same_server(route, route_of_object(end.get()))? {
            // Two events of different servers have no common clock.
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let r = client::call_to(route, 0, &EventElapsedTime { start, end }, &[])?;
        ffi::write(ms, r.ms)
    }
    cuEventDestroy, cuEventDestroy_v2 => |f, event| {
        let id = event.id();
        let route = route_of_object(id.get());
        {
            let mut reg = state::write();
            if reg.events.remove(&id).is_none() {
                return Err(CUDA_ERROR_INVALID_HANDLE);
            }
            reg.owners.remove(&id.get());
        }
        if let Some(m) = recorded_on().as_mut() {
            m.remove(&id);
        }
        client::post_to(route, 0, &EventDestroy { event: id }, &[])
    }
}
