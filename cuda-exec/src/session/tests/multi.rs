//! A session as one server of a multi-server process: the client's device numbering, and device memory placed
//! in the client's address windows (unified addressing across servers).

use std::sync::Arc;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;
use vgpu_dataplane::Transport;
use zerocopy::IntoBytes;

use super::{pattern, Client};
use crate::emulated::EmulatedBackend;
use crate::session::{Limits, Session};

const WINDOW: u64 = 0x2000_0000_0000;
const WINDOW_SIZE: u64 = 1 << 40;
const G: u64 = 2 << 20;

fn numbering(pairs: &[(u32, u32)]) -> Vec<u8> {
    pairs
        .iter()
        .flat_map(|&(o, i)| [o.to_le_bytes(), i.to_le_bytes()])
        .flatten()
        .collect()
}

fn set_numbering(c: &mut Client, pairs: &[(u32, u32)]) -> CuResult<Empty> {
    let call = SetDeviceNumbering {
        count: pairs.len() as u32,
        _pad: 0,
    };
    c.call(&call, &numbering(pairs))
}

/// Client ordinals 3 and 5 name the server's devices 1 and 0; others are invalid devices, here and in the VMM
/// locations and NVML (which keeps the server's own order).
#[test]
fn the_clients_numbering_decides_which_device_an_ordinal_is() {
    let backend = Arc::new(EmulatedBackend::with_devices(2));
    let session = Session::new(backend.clone(), Limits::default());
    let mut c = Client::connect_bare(&session);
    assert_eq!(
        set_numbering(&mut c, &[(3, 1), (3, 0)]),
        Err(CUDA_ERROR_INVALID_VALUE),
        "ordinal twice"
    );
    assert_eq!(
        set_numbering(&mut c, &[(3, 1), (5, 1)]),
        Err(CUDA_ERROR_INVALID_VALUE),
        "device twice"
    );
    assert_eq!(
        set_numbering(&mut c, &[(3, 2)]),
        Err(CUDA_ERROR_INVALID_VALUE),
        "no such device"
    );
    set_numbering(&mut c, &[(3, 1), (5, 0)]).expect("numbering");
    let retain = |dev| PrimaryCtxRetain {
        ctx: ContextId(0x1000 + 0x10 * dev as u64),
        dev,
        _pad: 0,
    };
    assert_eq!(c.err(&retain(0)), CUDA_ERROR_INVALID_DEVICE);
    assert_eq!(c.err(&retain(1)), CUDA_ERROR_INVALID_DEVICE);
    c.ok(&retain(3));
    c.post(&CtxSetCurrent { ctx: ContextId(0x1030) });
    // VMM physical memory on client device 3 is the server's device 1.
    let prop = MemAllocProp {
        alloc_type: 1,
        location_type: MEM_LOCATION_DEVICE,
        location_id: 3,
        ..Default::default()
    };
    c.ok(&MemCreate {
        handle: AllocHandleId(0x77),
        size: G,
        flags: 0,
        prop,
    });
    assert_eq!(backend.physical_devices(), vec![1]);
    let back = c.ok(&MemGetAllocationProperties {
        handle: AllocHandleId(0x77),
    });
    assert_eq!(back.prop.location_id, 3, "reported in the client's numbering");
    let on_zero = MemCreate {
        handle: AllocHandleId(0x78),
        size: G,
        flags: 0,
        prop: MemAllocProp { location_id: 0, ..prop },
    };
    assert_eq!(c.err(&on_zero), CUDA_ERROR_INVALID_DEVICE);
    // NVML asks by the server's own list.
    c.ok(&NvmlDeviceStatus { device: 1, _pad: 0 });
    assert_eq!(
        c.err(&NvmlDeviceStatus { device: 2, _pad: 0 }),
        CUDA_ERROR_INVALID_DEVICE
    );
    // A tail that is not whole pairs ends the channel.
    c.send(&SetDeviceNumbering { count: 2, _pad: 0 }, &numbering(&[(0, 0)]));
    let mut head = [0u8; 16];
    assert!(
        c.t.recv_exact(&mut head).is_err(),
        "malformed numbering closes the channel"
    );
}

fn window(c: &mut Client, device: u32, base: u64) -> CuResult<Empty> {
    c.call(
        &VaWindow {
            device,
            _pad: 0,
            base,
            size: WINDOW_SIZE,
        },
        &[],
    )
}

/// `cuMemAlloc`, `cuMemAllocPitch` and managed memory land in the window: small ones share a granule, large ones
/// get granules of their own; copies reach them; freed space is used again; the memory limit still holds.
#[test]
fn device_memory_is_placed_in_the_clients_window() {
    let backend = Arc::new(EmulatedBackend::new());
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        ..Default::default()
    };
    let session = Session::new(backend.clone(), limits);
    let mut c = Client::connect(&session);
    assert_eq!(
        window(&mut c, 0, WINDOW + 4096),
        Err(CUDA_ERROR_INVALID_VALUE),
        "not granule-aligned"
    );
    window(&mut c, 0, WINDOW).expect("window");
    assert_eq!(
        window(&mut c, 0, WINDOW),
        Err(CUDA_ERROR_INVALID_VALUE),
        "one window per device"
    );
    let inside = |p: u64| (WINDOW..WINDOW + WINDOW_SIZE).contains(&p);
    let a = c.ok(&MemAlloc { size: 256 }).dptr.0;
    let b = c.ok(&MemAlloc { size: 256 }).dptr.0;
    assert!(inside(a) && inside(b), "{a:#x} {b:#x}");
    assert_eq!(a / G, b / G, "small allocations share a granule");
    assert!(b >= a + 256 && b.is_multiple_of(512));
    let big = c.ok(&MemAlloc { size: 5 << 20 }).dptr.0;
    assert!(inside(big) && big.is_multiple_of(G) && big / G != a / G, "{big:#x}");
    let data = pattern(5 << 20, 9);
    c.htod(big, &data).expect("copy into window memory");
    assert_eq!(c.dtoh(big, 5 << 20).expect("copy back"), data);
    c.htod(a, &data[..256]).expect("small copy");
    assert_eq!(c.dtoh(a, 256).expect("small back"), &data[..256]);
    assert_eq!(c.htod(a, &data[..257]), Err(CUDA_ERROR_INVALID_VALUE), "past the end");
    assert_eq!(
        session.windows().span(0),
        Some((WINDOW, WINDOW_SIZE)),
        "reserved at its fixed address"
    );
    let pitched = c.ok(&MemAllocPitch {
        width: 1003,
        height: 10,
        elem_size: 4,
        _pad: 0,
    });
    assert!(inside(pitched.dptr.0) && pitched.pitch == 1024);
    let managed = c
        .ok(&MemAllocManaged {
            size: 100,
            flags: 1,
            _pad: 0,
        })
        .dptr
        .0;
    assert!(
        inside(managed) && managed.is_multiple_of(4096),
        "managed memory takes whole pages: {managed:#x}"
    );
    // Past the limit: refused before anything is placed.
    assert_eq!(c.err(&MemAlloc { size: 60 << 20 }), CUDA_ERROR_OUT_OF_MEMORY);
    c.ok(&MemFree { dptr: DevicePtr(big) });
    let again = c.ok(&MemAlloc { size: 4 << 20 }).dptr.0;
    assert_eq!(again, big, "freed space is used again");
    for p in [a, b, again, pitched.dptr.0, managed] {
        c.ok(&MemFree { dptr: DevicePtr(p) });
    }
    assert_eq!(
        c.err(&MemFree { dptr: DevicePtr(a) }),
        CUDA_ERROR_INVALID_VALUE,
        "freed twice"
    );
    assert_eq!(session.usage().allocated_bytes, 0);
    let _ = Empty {}.as_bytes();
    c.close();
}

/// Where the driver will not give the window's address (here: taken by the backend's own memory), the window is
/// given up and the driver places the memory, as without windows.
#[test]
fn a_refused_window_leaves_placement_to_the_driver() {
    let backend = Arc::new(EmulatedBackend::new());
    let session = Session::new(backend, Limits::default());
    let mut c = Client::connect(&session);
    let taken = c.ok(&MemAlloc { size: 4096 }).dptr.0;
    let base = taken & !(G - 1);
    window(&mut c, 0, base).expect("window recorded");
    let p = c.ok(&MemAlloc { size: 4096 }).dptr.0;
    assert_eq!(session.windows().span(0), None, "given up");
    // The backend's own next address, right after the first allocation (a window would have begun a granule).
    assert!(
        p > taken && p - taken < G && !p.is_multiple_of(G),
        "{p:#x} after {taken:#x}"
    );
    c.htod(p, &pattern(4096, 1)).expect("usable");
    c.close();
}
