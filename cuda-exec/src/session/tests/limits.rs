//! What a hostile client cannot make the server hold (issue 14): queued copy buffers stay within the session's
//! host budget, an announced tail commits memory only as bytes arrive, arrays and host mirrors count against the
//! limits, and object counts are capped. Each case failed before its bound existed.

use std::sync::Arc;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{pattern, Client};
use crate::emulated::EmulatedBackend;
use crate::session::{Caps, Limits, Session};

const MIB: u64 = 1 << 20;

/// An asynchronous upload of `data` to `dst` on the NULL stream, served (a ping after it) before this returns.
fn upload_async(c: &mut Client, dst: DevicePtr, data: &[u8]) {
    let call = MemcpyHtoDAsync {
        dst,
        size: data.len() as u64,
        stream: StreamId::NULL,
    };
    c.send(&call, data);
    c.ok(&Ping {});
}

fn session(limits: Limits) -> (Arc<EmulatedBackend>, Arc<Session>) {
    let backend = Arc::new(EmulatedBackend::new());
    (backend.clone(), Session::new(backend, limits))
}

/// 32 async device-to-host copies of 8 MiB that nobody waits for: before the budget every one held a fresh
/// buffer (256 MiB); now at most the 16 MiB budget is queued and the rest is pushed as it is made room for.
#[test]
fn queued_copies_stay_within_the_host_budget() {
    let (backend, s) = session(Limits {
        caps: Caps {
            host_bytes: Some(16 * MIB),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut c = Client::connect(&s);
    let src = c.ok(&MemAlloc { size: 8 * MIB }).dptr;
    c.htod(src.0, &pattern((8 * MIB) as usize, 9)).expect("fill");
    for i in 0..32u64 {
        c.post(&MemcpyDtoHAsync {
            src,
            size: 8 * MIB,
            stream: StreamId::NULL,
            pending_id: PendingId(100 + i),
        });
    }
    let pushes = c.ping_counting_pushes();
    assert_eq!(pushes, 32, "every copy's bytes reached the client");
    // What is still held is buffers kept for reuse, within the budget; the channel's end gives them back.
    assert!(
        s.usage().host_bytes <= 16 * MIB,
        "held past the budget: {:?}",
        s.usage()
    );
    let peak = backend.host_peak();
    assert!(peak <= 48 * MIB, "host buffers peaked at {} MiB", peak / MIB);
    c.close();
    assert_eq!(s.usage().host_bytes, 0, "nothing held after the channel ended");
}

/// Large async uploads one after the other reuse one pinned buffer: none is freed on the submit path, where a
/// free would wait for every kernel still running and a copy could no longer overlap one (e2e `overlap` over
/// TCP said "no" when buffers over 16 MiB were freed after each copy).
#[test]
fn large_upload_buffers_are_reused_not_freed() {
    let (backend, s) = session(Limits::default());
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: 24 * MIB }).dptr;
    let data = pattern((24 * MIB) as usize, 6);
    for _ in 0..4 {
        upload_async(&mut c, dst, &data);
    }
    assert_eq!(backend.host_frees(), 0, "a pinned buffer was freed between copies");
    assert!(s.usage().host_bytes <= 24 * MIB, "kept {:?}", s.usage());
    c.close();
    assert_eq!(s.usage().host_bytes, 0, "kept buffers given back at the channel's end");
}

/// Pinned buffers a channel made while the app's own context was current survive a primary-context reset, as
/// natively: kept and reused. Forgetting them on every reset (the session fuzz target's memory grew by them) let a
/// client leak pinned memory past its budget, one reset at a time. Destroying that context takes them with it:
/// the channel forgets them then, and frees nothing twice.
#[test]
fn resets_do_not_leak_the_buffers_of_the_apps_own_context() {
    let (backend, s) = session(Limits {
        caps: Caps {
            host_bytes: Some(64 * MIB),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut c = Client::connect(&s);
    let own = ContextId(0x2000);
    c.ok(&CtxCreate {
        ctx: own,
        flags: 0,
        dev: 0,
    });
    let dst = c.ok(&MemAlloc { size: 8 * MIB }).dptr;
    let data = pattern((8 * MIB) as usize, 3);
    let mut after_first = 0;
    for round in 0..6 {
        c.htod(dst.0, &data).expect("synchronous upload");
        upload_async(&mut c, dst, &data);
        c.ok(&PrimaryCtxReset { dev: 0, _pad: 0 });
        if round == 0 {
            after_first = backend.host_live();
            assert!(after_first >= 8 * MIB, "the copies made pinned buffers: {after_first}");
        }
    }
    assert_eq!(backend.host_live(), after_first, "no pinned memory lost to the resets");
    assert_eq!(c.dtoh(dst.0, 8 * MIB).expect("read back"), data);
    c.ok(&CtxDestroy { ctx: own });
    c.ok(&Ping {});
    assert_eq!(s.usage().host_bytes, 0, "their budget given back: {:?}", s.usage());
    c.close();
    assert_eq!(backend.host_live(), 0, "nothing left allocated");
    assert_eq!(
        backend.host_stale_frees(),
        0,
        "the destroyed context's buffers were not freed again"
    );
}

/// A kept buffer is reused only for copies in the context it was made in: one made in the primary context and reused
/// by a copy queued in another could be freed under that copy by the primary's reset.
#[test]
fn kept_buffers_are_reused_within_their_context_only() {
    let (backend, s) = session(Limits::default());
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: 24 * MIB }).dptr;
    let data = pattern((24 * MIB) as usize, 5);
    upload_async(&mut c, dst, &data);
    let in_primary = backend.host_live();
    upload_async(&mut c, dst, &data);
    assert_eq!(backend.host_live(), in_primary, "reused within the primary context");
    c.ok(&CtxCreate {
        ctx: ContextId(0x2000),
        flags: 0,
        dev: 0,
    });
    upload_async(&mut c, dst, &data);
    assert!(
        backend.host_live() >= in_primary + 24 * MIB,
        "a buffer of the new context's own"
    );
    let both = backend.host_live();
    c.post(&CtxSetCurrent { ctx: ContextId(0x1000) });
    upload_async(&mut c, dst, &data);
    assert_eq!(backend.host_live(), both, "the primary's buffer reused again");
    assert_eq!(c.dtoh(dst.0, 24 * MIB).expect("read back"), data);
    c.close();
}

/// A context's end as the channel's last request (a reset, or the primary context's last release, after which
/// the driver destroys it) leaves the channel's buffers to the driver: the channel's end frees none of them again,
/// and a context retained anew gets buffers of its own instead of the ones its predecessor took.
#[test]
fn buffers_a_context_took_are_never_freed_or_used_again() {
    for end in ["reset", "release"] {
        let (backend, s) = session(Limits::default());
        let mut c = Client::connect(&s);
        let dst = c.ok(&MemAlloc { size: 8 * MIB }).dptr;
        let data = pattern((8 * MIB) as usize, 8);
        upload_async(&mut c, dst, &data);
        if end == "release" {
            c.ok(&PrimaryCtxRelease { dev: 0, _pad: 0 });
            // Retained again: a new context; the old one's buffers are not the channel's to reuse.
            c.ok(&PrimaryCtxRetain {
                ctx: ContextId(0x1000),
                dev: 0,
                _pad: 0,
            });
            c.post(&CtxSetCurrent { ctx: ContextId(0x1000) });
            let dst2 = c.ok(&MemAlloc { size: 8 * MIB }).dptr;
            upload_async(&mut c, dst2, &data);
            assert_eq!(c.dtoh(dst2.0, 8 * MIB).expect("read back"), data);
        } else {
            c.ok(&PrimaryCtxReset { dev: 0, _pad: 0 });
        }
        c.close();
        assert_eq!(backend.host_stale_frees(), 0, "{end}: a buffer freed twice");
        assert_eq!(backend.host_live(), 0, "{end}: left allocated");
        assert_eq!(s.usage().host_bytes, 0, "{end}: budget still held");
    }
}

/// Synchronous copies stage through buffers of the current context: a copy in a context of the app's own never
/// goes through staging a primary reset (from another thread, natively legal) could free under it. Switching
/// contexts back and forth reuses each context's pair; nothing grows, nothing is freed twice.
#[test]
fn staging_belongs_to_the_current_context() {
    let (backend, s) = session(Limits::default());
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: 8 * MIB }).dptr;
    let data = pattern((8 * MIB) as usize, 2);
    c.htod(dst.0, &data).expect("upload in the primary context");
    let primary_pair = backend.host_live();
    let own = ContextId(0x2000);
    c.ok(&CtxCreate {
        ctx: own,
        flags: 0,
        dev: 0,
    });
    c.htod(dst.0, &data).expect("upload in the app's own context");
    let both = backend.host_live();
    assert!(
        both >= 2 * primary_pair,
        "a pair of the own context's: {both} against {primary_pair}"
    );
    for _ in 0..3 {
        c.post(&CtxSetCurrent { ctx: ContextId(0x1000) });
        c.htod(dst.0, &data).expect("primary again");
        c.post(&CtxSetCurrent { ctx: own });
        c.htod(dst.0, &data).expect("own again");
    }
    assert_eq!(backend.host_live(), both, "each context's pair reused");
    // The primary's reset takes its pair (kept in the pool meanwhile); the own context's copies go on as they were.
    c.ok(&PrimaryCtxReset { dev: 0, _pad: 0 });
    c.htod(dst.0, &data).expect("upload after the primary's reset");
    assert_eq!(c.dtoh(dst.0, 8 * MIB).expect("read back"), data);
    assert_eq!(
        backend.host_live(),
        both - primary_pair,
        "the own pair kept, nothing new made"
    );
    c.ok(&CtxDestroy { ctx: own });
    c.close();
    assert_eq!(backend.host_stale_frees(), 0, "nothing freed twice");
    assert_eq!(backend.host_live(), 0);
    assert_eq!(s.usage().host_bytes, 0, "budget given back: {:?}", s.usage());
}

/// Asynchronous host-to-device copies queued behind the budget are waited for, never dropped.
#[test]
fn queued_uploads_wait_and_all_land() {
    let (backend, s) = session(Limits {
        caps: Caps {
            host_bytes: Some(4 * MIB),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut c = Client::connect(&s);
    let dst = c.ok(&MemAlloc { size: 32 * MIB }).dptr;
    let data = pattern((32 * MIB) as usize, 4);
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        let call = MemcpyHtoDAsync {
            dst: dst.offset(i as u64 * MIB),
            size: MIB,
            stream: StreamId::NULL,
        };
        c.send(&call, chunk);
    }
    assert_eq!(c.dtoh(dst.0, 32 * MIB).expect("read back"), data);
    assert!(
        backend.host_peak() <= 40 * MIB,
        "peak {} MiB",
        backend.host_peak() / MIB
    );
    c.close();
}

/// A frame announcing a 1 GiB module image followed by 64 KiB: the server holds about what arrived (other tests
/// run in this process too, hence the margin; before the fix the whole gigabyte was zero-filled at once).
#[test]
fn an_announced_tail_commits_memory_only_as_it_arrives() {
    let (_backend, s) = session(Limits::default());
    let mut c = Client::connect(&s);
    let before = resident_bytes();
    let header = RequestHeader {
        len: (std::mem::size_of::<ModuleLoad>() + (1 << 30)) as u32,
        op: Op::ModuleLoad as u16,
        flags: 0,
        body_len: std::mem::size_of::<ModuleLoad>() as u32,
        seq: 1,
    };
    c.send_raw(&[
        zerocopy::IntoBytes::as_bytes(&header),
        zerocopy::IntoBytes::as_bytes(&ModuleLoad { module: ModuleId(7) }),
        &vec![0u8; 64 << 10],
    ]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 256 * MIB, "the server committed {} MiB for 64 KiB", grown / MIB);
    c.close();
}

/// CUDA arrays are device memory: they count against the limit and show in cuMemGetInfo and the usage.
#[test]
fn arrays_count_against_the_memory_limit() {
    let (_backend, s) = session(Limits {
        memory_bytes: Some(64 * MIB),
        ..Default::default()
    });
    let mut c = Client::connect(&s);
    let array = |id: u64, mib: u64| ArrayCreate {
        array: ArrayId(id),
        width: mib * MIB / 4,
        height: 0,
        depth: 0,
        format: 0x20,
        channels: 1,
        flags: 0,
        _pad: 0,
    };
    assert_eq!(
        c.err(&array(1, 100)),
        CUDA_ERROR_OUT_OF_MEMORY,
        "one array over the limit"
    );
    for id in 0..7 {
        c.ok(&array(10 + id, 8));
    }
    assert_eq!(
        c.err(&array(20, 16)),
        CUDA_ERROR_OUT_OF_MEMORY,
        "the eighth does not fit"
    );
    assert_eq!(s.usage().allocated_bytes, 56 * MIB);
    let info = c.ok(&MemGetInfo {});
    assert_eq!((info.total, info.free), (64 * MIB, 8 * MIB));
    c.ok(&ArrayDestroy { array: ArrayId(10) });
    assert_eq!(s.usage().allocated_bytes, 48 * MIB, "freed with the array");
    c.close();
}

/// Host mirrors pin server memory: they count against the host budget.
#[test]
fn host_mirrors_count_against_the_host_budget() {
    let (_backend, s) = session(Limits {
        caps: Caps {
            host_bytes: Some(8 * MIB),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut c = Client::connect(&s);
    let base = 0x6000_0000_0000u64;
    let mirror = |i: u64| HostMirrorMap {
        addr: HostAddr(base + i * 8 * MIB),
        size: 4 * MIB,
    };
    c.ok(&mirror(0));
    c.ok(&mirror(1));
    assert_eq!(c.err(&mirror(2)), CUDA_ERROR_OUT_OF_MEMORY);
    c.ok(&HostMirrorUnmap { addr: HostAddr(base) });
    c.ok(&mirror(2));
    assert_eq!(s.usage().host_bytes, 8 * MIB);
    c.close();
}

/// A million streams were accepted once; now the cap answers out-of-memory (latched: stream creation is
/// asynchronous) and the session goes on.
#[test]
fn object_counts_are_capped() {
    let (_backend, s) = session(Limits {
        caps: Caps {
            streams: 16,
            events: 8,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut c = Client::connect(&s);
    for i in 0..16 {
        c.post(&StreamCreate {
            stream: StreamId(0x100 + i),
            flags: 0,
            priority: 0,
        });
    }
    assert_eq!(c.call(&Ping {}, &[]).map(|_| ()), Ok(()), "16 streams fit");
    c.post(&StreamCreate {
        stream: StreamId(0x200),
        flags: 0,
        priority: 0,
    });
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_OUT_OF_MEMORY, "the seventeenth is refused");
    for i in 0..9 {
        c.post(&EventCreate {
            event: EventId(0x300 + i),
            flags: 0,
            _pad: 0,
        });
    }
    assert_eq!(c.err(&Ping {}), CUDA_ERROR_OUT_OF_MEMORY);
    c.post(&StreamDestroy {
        stream: StreamId(0x100),
    });
    c.post(&StreamCreate {
        stream: StreamId(0x201),
        flags: 0,
        priority: 0,
    });
    assert_eq!(c.call(&Ping {}, &[]).map(|_| ()), Ok(()), "room again after a destroy");
    c.close();
}

/// The test process's resident memory (the server's channel threads run in it).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
