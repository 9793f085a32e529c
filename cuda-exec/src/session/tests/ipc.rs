//! Inter-process sharing over the wire: three sessions on one server (each with its own emulated backend, as each
//! has its own worker process), two of tenant "alpha" and one of tenant "beta", linked to one IPC registry over
//! socket pairs as the listener links its workers.

use std::sync::Arc;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;

use super::{pattern, Client};
use crate::emulated::EmulatedBackend;
use crate::registry::{connect, Member, Registry};
use crate::session::{Limits, Session};

const INTERPROCESS_EVENT: u32 = 4 | 2; // CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING
const POSIX_FD: u32 = 1;
const G: u64 = 2 << 20;

/// A session of `tenant` with its own backend, linked to `registry`.
fn session(registry: &Arc<Registry>, id: u64, tenant: &str, limits: Limits) -> Arc<Session> {
    let s = Session::new(Arc::new(EmulatedBackend::new()), limits);
    let who = Member {
        session: id,
        tenant: tenant.into(),
    };
    s.attach_registry(connect(registry, who).expect("registry link"));
    s
}

/// Alpha's two sessions and beta's one, each with a channel.
fn three(limits: Limits) -> (Arc<Registry>, [Client; 3]) {
    let r = Registry::new();
    let a = Client::connect(&session(&r, 1, "alpha", limits.clone()));
    let b = Client::connect(&session(&r, 2, "alpha", limits.clone()));
    let c = Client::connect(&session(&r, 3, "beta", limits));
    (r, [a, b, c])
}

fn export(c: &mut Client, dptr: u64) -> IpcHandle {
    c.ok(&IpcGetMemHandle { dptr: DevicePtr(dptr) }).handle
}

fn open(c: &mut Client, handle: IpcHandle) -> CuResult<IpcOpenReply> {
    c.call(
        &IpcOpenMemHandle {
            handle,
            flags: 1,
            _pad: 0,
        },
        &[],
    )
}

fn close(c: &mut Client, dptr: u64) -> CuResult<()> {
    c.call(&IpcCloseMemHandle { dptr: DevicePtr(dptr) }, &[]).map(|_| ())
}

#[test]
fn memory_is_shared_within_a_tenant_and_refused_across_tenants() {
    let (_r, [mut a, mut b, mut c]) = three(Limits::default());
    let dptr = a.ok(&MemAlloc { size: 64 << 10 }).dptr.0;
    let data = pattern(64 << 10, 5);
    a.htod(dptr, &data).expect("fill");
    let handle = export(&mut a, dptr);
    assert_eq!(
        export(&mut a, dptr + 4096),
        handle,
        "one handle per allocation, from any address in it"
    );
    assert_eq!(
        open(&mut a, handle).err(),
        Some(CUDA_ERROR_INVALID_CONTEXT),
        "in the exporting session"
    );
    assert_eq!(
        open(&mut c, handle).err(),
        Some(CUDA_ERROR_INVALID_VALUE),
        "another tenant"
    );
    let forged = IpcHandle {
        server_id: handle.server_id ^ 1,
        ..handle
    };
    assert_eq!(
        open(&mut b, forged).err(),
        Some(CUDA_ERROR_INVALID_VALUE),
        "another server"
    );
    let guessed = IpcHandle::new(IPC_KIND_MEM, handle.server_id, [0x55; 16]);
    assert_eq!(
        open(&mut b, guessed).err(),
        Some(CUDA_ERROR_INVALID_VALUE),
        "a made-up token"
    );
    assert_eq!(
        open(&mut b, IpcHandle::default()).err(),
        Some(CUDA_ERROR_INVALID_VALUE),
        "zeros"
    );

    let opened = open(&mut b, handle).expect("same tenant");
    assert_eq!(opened.size, 64 << 10);
    assert_eq!(b.dtoh(opened.dptr.0, 64 << 10).expect("read"), data);
    b.htod(opened.dptr.0 + 100, b"written by b").expect("write");
    assert_eq!(a.dtoh(dptr + 100, 12).expect("a sees it"), b"written by b");
    // A copy past the end of the opened memory is refused like any other.
    assert_eq!(
        b.htod(opened.dptr.0 + (64 << 10) - 4, &[0; 8]),
        Err(CUDA_ERROR_INVALID_VALUE)
    );
    // cuMemFree does not release opened memory.
    assert_eq!(b.err(&MemFree { dptr: opened.dptr }), CUDA_ERROR_INVALID_VALUE);
    // A second open: the same address; it stays mapped until the second close.
    assert_eq!(open(&mut b, handle).expect("again").dptr, opened.dptr);
    close(&mut b, opened.dptr.0).expect("close 1");
    assert_eq!(b.dtoh(opened.dptr.0, 4).expect("still mapped"), &data[..4]);
    close(&mut b, opened.dptr.0).expect("close 2");
    assert_eq!(
        b.dtoh(opened.dptr.0, 4).err(),
        Some(CUDA_ERROR_INVALID_VALUE),
        "unmapped"
    );
    assert_eq!(
        close(&mut b, opened.dptr.0),
        Err(CUDA_ERROR_INVALID_VALUE),
        "closed twice"
    );
    assert_eq!(close(&mut b, dptr), Err(CUDA_ERROR_INVALID_VALUE), "never opened here");

    // Only cuMemAlloc memory of the session is exported.
    let foreign = a.call(
        &IpcGetMemHandle {
            dptr: DevicePtr(0x1234_0000),
        },
        &[],
    );
    assert_eq!(foreign.err(), Some(CUDA_ERROR_INVALID_VALUE));
    for c in [a, b, c] {
        c.close();
    }
}

#[test]
fn memory_freed_by_its_exporter_counts_against_it_until_the_last_close() {
    const M: u64 = 1 << 20;
    let limits = Limits {
        memory_bytes: Some(M),
        ..Default::default()
    };
    let (_r, [mut a, mut b, mut c]) = three(limits);
    let dptr = a.ok(&MemAlloc { size: 3 * M / 4 }).dptr.0;
    a.htod(dptr, b"kept alive").expect("fill");
    let handle = export(&mut a, dptr);
    let opened = open(&mut b, handle).expect("open");
    // The opener's limit does not count it: b may still allocate its whole limit.
    let own = b.ok(&MemAlloc { size: M }).dptr;
    b.ok(&MemFree { dptr: own });
    a.ok(&MemFree { dptr: DevicePtr(dptr) });
    assert_eq!(open(&mut c, handle).err(), Some(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(
        open(&mut b, handle).err(),
        Some(CUDA_ERROR_INVALID_VALUE),
        "no new opens once freed"
    );
    assert_eq!(
        b.dtoh(opened.dptr.0, 10).expect("the opener still reads it"),
        b"kept alive"
    );
    // Still open in b: still a's memory.
    assert_eq!(a.err(&MemAlloc { size: M / 2 }), CUDA_ERROR_OUT_OF_MEMORY);
    close(&mut b, opened.dptr.0).expect("close");
    a.ok(&MemAlloc { size: M / 2 });
    for c in [a, b, c] {
        c.close();
    }
}

#[test]
fn events_are_shared_within_a_tenant() {
    let (_r, [mut a, mut b, mut c]) = three(Limits::default());
    let ev = EventId(0x7000);
    a.post(&EventCreate {
        event: ev,
        flags: INTERPROCESS_EVENT,
        _pad: 0,
    });
    let plain = EventId(0x7010);
    a.post(&EventCreate {
        event: plain,
        flags: 0,
        _pad: 0,
    });
    assert_eq!(a.err(&IpcGetEventHandle { event: plain }), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(
        a.err(&IpcGetEventHandle { event: EventId(0x9999) }),
        CUDA_ERROR_INVALID_HANDLE
    );
    let handle = a.ok(&IpcGetEventHandle { event: ev }).handle;
    assert_eq!(a.ok(&IpcGetEventHandle { event: ev }).handle, handle);
    a.post(&EventRecord {
        event: ev,
        stream: StreamId::NULL,
    });
    let mine = EventId(0x8000);
    let open_as = |event| IpcOpenEventHandle { event, handle };
    assert_eq!(c.err(&open_as(mine)), CUDA_ERROR_INVALID_VALUE, "another tenant");
    assert_eq!(
        a.err(&open_as(EventId(0x7020))),
        CUDA_ERROR_INVALID_CONTEXT,
        "the exporter"
    );
    b.ok(&open_as(mine));
    assert_eq!(b.err(&open_as(mine)), CUDA_ERROR_INVALID_VALUE, "an id bound already");
    b.post(&StreamWaitEvent {
        stream: StreamId::NULL,
        event: mine,
        flags: 0,
        _pad: 0,
    });
    b.ok(&EventSynchronize { event: mine });
    b.ok(&EventQuery { event: mine });
    b.post(&EventRecord {
        event: mine,
        stream: StreamId::NULL,
    });
    b.post(&EventDestroy { event: mine });
    b.ok(&Ping {});
    // Destroyed by its exporter: no new opens.
    a.post(&EventDestroy { event: ev });
    a.ok(&Ping {});
    assert_eq!(b.err(&open_as(EventId(0x8010))), CUDA_ERROR_INVALID_VALUE);
    for c in [a, b, c] {
        c.close();
    }
}

#[test]
fn shareable_vmm_memory_is_imported_within_a_tenant() {
    let (_r, [mut a, mut b, mut c]) = three(Limits::default());
    let prop = |handle_types| MemAllocProp {
        alloc_type: 1,
        handle_types,
        location_type: MEM_LOCATION_DEVICE,
        location_id: 0,
        ..Default::default()
    };
    let reserve = |cl: &mut Client| {
        cl.ok(&MemAddressReserve {
            size: G,
            alignment: 0,
            addr: DevicePtr(0),
            flags: 0,
        })
        .dptr
    };
    let (h, plain) = (AllocHandleId(0x100), AllocHandleId(0x110));
    a.ok(&MemCreate {
        handle: h,
        size: G,
        flags: 0,
        prop: prop(POSIX_FD),
    });
    a.ok(&MemCreate {
        handle: plain,
        size: G,
        flags: 0,
        prop: prop(0),
    });
    let va = reserve(&mut a);
    a.ok(&MemMap {
        ptr: va,
        size: G,
        offset: 0,
        handle: h,
        flags: 0,
    });
    a.htod(va.0 + 8, b"vmm shared").expect("fill");
    let export = |handle, handle_type| MemExportShareable {
        handle,
        flags: 0,
        handle_type,
        _pad: 0,
    };
    assert_eq!(
        a.err(&export(plain, POSIX_FD)),
        CUDA_ERROR_INVALID_VALUE,
        "not asked for at creation"
    );
    assert_eq!(a.err(&export(h, 8)), CUDA_ERROR_INVALID_VALUE, "fabric");
    let token = a.ok(&export(h, POSIX_FD)).handle;
    let import = |handle| MemImportShareable { handle, token };
    assert_eq!(
        c.err(&import(AllocHandleId(0x200))),
        CUDA_ERROR_INVALID_VALUE,
        "another tenant"
    );
    let got = b.ok(&import(AllocHandleId(0x200)));
    assert_eq!((got.size, got.prop.handle_types), (G, POSIX_FD));
    let vb = reserve(&mut b);
    b.ok(&MemMap {
        ptr: vb,
        size: G,
        offset: 0,
        handle: AllocHandleId(0x200),
        flags: 0,
    });
    assert_eq!(b.dtoh(vb.0 + 8, 10).expect("read"), b"vmm shared");
    b.htod(vb.0 + 100, b"from b").expect("write");
    assert_eq!(a.dtoh(va.0 + 100, 6).expect("a sees it"), b"from b");
    // The exporter may import its own (as natively).
    a.ok(&import(AllocHandleId(0x300)));
    b.ok(&MemUnmap { ptr: vb, size: G });
    b.ok(&MemRelease {
        handle: AllocHandleId(0x200),
    });
    for c in [a, b, c] {
        c.close();
    }
}

#[test]
fn a_session_without_a_registry_shares_nothing_and_an_ended_session_takes_its_exports() {
    let lone = Session::new(Arc::new(EmulatedBackend::new()), Limits::default());
    let mut l = Client::connect(&lone);
    let dptr = l.ok(&MemAlloc { size: 4096 }).dptr;
    assert_eq!(l.err(&IpcGetMemHandle { dptr }), CUDA_ERROR_NOT_SUPPORTED);
    l.close();

    let r = Registry::new();
    let a_session = session(&r, 1, "alpha", Limits::default());
    let mut a = Client::connect(&a_session);
    let mut b = Client::connect(&session(&r, 2, "alpha", Limits::default()));
    let dptr = a.ok(&MemAlloc { size: 4096 }).dptr.0;
    let handle = export(&mut a, dptr);
    a.close();
    drop(a_session);
    // The registry hears the session's link close; its exports go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut last = open(&mut b, handle);
    while last.is_ok() && std::time::Instant::now() < deadline {
        if let Ok(o) = &last {
            close(&mut b, o.dptr.0).expect("close");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        last = open(&mut b, handle);
    }
    assert_eq!(last.err(), Some(CUDA_ERROR_INVALID_VALUE));
    b.close();
}
