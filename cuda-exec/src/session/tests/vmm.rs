//! The session's virtual memory management over the wire: expandable segments, the memory limit, foreign and
//! misplaced objects, device numbering, and release at session end.

use std::sync::Arc;

use vgpu_dataplane::cuerr::*;
use vgpu_dataplane::wire::*;
use zerocopy::IntoBytes;

use super::{emulated_session, pattern, Client};
use crate::backend::Backend;
use crate::emulated::EmulatedBackend;
use crate::session::{Limits, Session};

const G: u64 = 2 << 20;

/// The VMM calls the tests make, as a raw client would send them.
trait VmmClient {
    fn reserve(&mut self, size: u64) -> u64;
    fn create(&mut self, handle: u64, size: u64) -> CuResult<()>;
    fn map(&mut self, ptr: u64, size: u64, handle: u64) -> CuResult<()>;
    fn unmap(&mut self, ptr: u64, size: u64) -> CuResult<()>;
    fn release(&mut self, handle: u64) -> CuResult<()>;
    fn set_access(&mut self, ptr: u64, size: u64, device: i32) -> CuResult<()>;
}

impl VmmClient for Client {
    fn reserve(&mut self, size: u64) -> u64 {
        self.ok(&MemAddressReserve {
            size,
            alignment: 0,
            addr: DevicePtr(0),
            flags: 0,
        })
        .dptr
        .0
    }

    fn create(&mut self, handle: u64, size: u64) -> CuResult<()> {
        let c = MemCreate {
            handle: AllocHandleId(handle),
            size,
            flags: 0,
            prop: device_prop(0),
        };
        self.call(&c, &[]).map(|_| ())
    }

    fn map(&mut self, ptr: u64, size: u64, handle: u64) -> CuResult<()> {
        let c = MemMap {
            ptr: DevicePtr(ptr),
            size,
            offset: 0,
            handle: AllocHandleId(handle),
            flags: 0,
        };
        self.call(&c, &[]).map(|_| ())
    }

    fn unmap(&mut self, ptr: u64, size: u64) -> CuResult<()> {
        self.call(
            &MemUnmap {
                ptr: DevicePtr(ptr),
                size,
            },
            &[],
        )
        .map(|_| ())
    }

    fn release(&mut self, handle: u64) -> CuResult<()> {
        self.call(
            &MemRelease {
                handle: AllocHandleId(handle),
            },
            &[],
        )
        .map(|_| ())
    }

    fn set_access(&mut self, ptr: u64, size: u64, device: i32) -> CuResult<()> {
        let desc = MemAccessDesc {
            location_type: MEM_LOCATION_DEVICE,
            location_id: device,
            flags: 3,
        };
        let c = MemSetAccess {
            ptr: DevicePtr(ptr),
            size,
            count: 1,
            _pad: 0,
        };
        self.call(&c, desc.as_bytes()).map(|_| ())
    }
}

fn device_prop(device: i32) -> MemAllocProp {
    MemAllocProp {
        alloc_type: 1,
        handle_types: 1,
        location_type: MEM_LOCATION_DEVICE,
        location_id: device,
        ..Default::default()
    }
}

/// What PyTorch's expandable segments do: handles mapped back to back in one reservation, copies and
/// memsets across the seams, a hole unmapped and filled again, everything released at the end.
#[test]
fn expandable_segment_round_trip() {
    let (backend, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let g = c.ok(&MemGetAllocationGranularity {
        prop: device_prop(0),
        option: 1,
        _pad: 0,
    });
    assert_eq!(g.granularity, G);
    let base = c.reserve(8 * G);
    for (i, h) in [0x100u64, 0x110, 0x120].into_iter().enumerate() {
        c.create(h, G).expect("cuMemCreate");
        c.map(base + i as u64 * G, G, h).expect("cuMemMap");
    }
    c.set_access(base, 3 * G, 0)
        .expect("cuMemSetAccess over three mappings");

    // A copy over the first seam, a memset over the second, a device-to-device copy over both.
    let data = pattern((G / 2) as usize, 7);
    let seam = base + G - G / 4;
    c.htod(seam, &data).expect("copy across the first seam");
    let memset = Memset {
        dst: DevicePtr(base + 2 * G - 100),
        pitch: 200,
        width: 200,
        height: 1,
        value: 0xab,
        elem_size: 1,
    };
    c.ok(&memset);
    let back = c.dtoh(base, 3 * G).expect("read back all three mappings");
    let at = (seam - base) as usize;
    assert!(back[at..at + data.len()] == data[..], "copy across the seam read back");
    assert!(back[(2 * G - 100) as usize..(2 * G + 100) as usize]
        .iter()
        .all(|&b| b == 0xab));
    c.ok(&MemcpyDtoD {
        dst: DevicePtr(base + G + G / 2),
        src: DevicePtr(seam),
        size: data.len() as u64,
    });
    let moved = c
        .dtoh(base + G + G / 2, data.len() as u64)
        .expect("read the moved copy");
    assert!(moved == data, "device-to-device copy across both seams");
    let middle = c.dtoh(base + G, G).expect("read the middle mapping");

    // Unmapping the middle one leaves a hole copies may not name.
    c.unmap(base + G, G).expect("cuMemUnmap of the middle mapping");
    assert_eq!(c.htod(base + G + 16, &[1; 16]), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(c.htod(base + G - 8, &[1; 16]), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(c.err(&MemFree { dptr: DevicePtr(base) }), CUDA_ERROR_INVALID_VALUE);
    // A new handle fills the hole (fresh memory), then the old one again: its bytes were kept.
    c.create(0x130, G).expect("cuMemCreate");
    c.map(base + G, G, 0x130).expect("map a new handle into the hole");
    c.set_access(base + G, G, 0).expect("set access");
    assert!(c.dtoh(base + G, 64).expect("read").iter().all(|&b| b == 0));
    c.unmap(base + G, G).expect("unmap");
    c.map(base + G, G, 0x110).expect("map the old handle again");
    let kept = c.dtoh(base + G, G).expect("read the old handle's bytes");
    assert!(kept == middle, "unmapping kept the handle's bytes");

    // The handle mapped at an address, with one more reference.
    let retained = c.ok(&MemRetainAllocationHandle {
        addr: DevicePtr(base + 2 * G + 5),
    });
    assert_eq!(retained.handle, AllocHandleId(0x120));
    c.release(0x120).expect("release the retained reference");
    let prop = c
        .ok(&MemGetAllocationProperties {
            handle: AllocHandleId(0x100),
        })
        .prop;
    assert_eq!((prop.location_type, prop.location_id, prop.handle_types), (1, 0, 1));

    for h in [0x100, 0x110, 0x120, 0x130] {
        c.release(h).expect("cuMemRelease");
    }
    assert_eq!(c.release(0x130), Err(CUDA_ERROR_INVALID_VALUE), "released twice");
    // Three mappings in one cuMemUnmap, then the reservation.
    c.unmap(base, 3 * G).expect("cuMemUnmap of three mappings at once");
    c.ok(&MemAddressFree {
        ptr: DevicePtr(base),
        size: 8 * G,
    });
    assert_eq!(session.usage().allocated_bytes, 0);
    assert_eq!(backend.used(), 0, "every physical allocation freed");
    c.close();
}

#[test]
fn memory_limit_counts_physical_memory_until_released_and_unmapped() {
    let (backend, session) = emulated_session(Limits {
        memory_bytes: Some(3 * G),
        devices: None,
        ..Default::default()
    });
    let mut c = Client::connect(&session);
    let base = c.reserve(4 * G);
    c.create(1, G).expect("create");
    c.create(2, G).expect("create");
    c.map(base, G, 1).expect("map");
    c.release(1).expect("release while mapped");
    c.release(2).expect("release");
    // The mapped handle's memory is alive natively, so it still counts.
    assert_eq!(session.usage().allocated_bytes, G);
    c.create(3, G).expect("create");
    c.create(4, G).expect("create up to the limit");
    assert_eq!(c.create(5, G), Err(CUDA_ERROR_OUT_OF_MEMORY), "over the limit");
    // Unmapping the released handle frees it: room for one more.
    c.unmap(base, G).expect("unmap");
    assert_eq!(session.usage().allocated_bytes, 2 * G);
    c.create(5, G).expect("create after the unmap");
    assert_eq!(backend.used(), 3 * G);
    c.close();
}

#[test]
fn foreign_and_misplaced_objects_are_refused() {
    let backend = Arc::new(EmulatedBackend::new());
    let a_session = Session::new(backend.clone(), Limits::default());
    let b_session = Session::new(backend.clone(), Limits::default());
    let mut a = Client::connect(&a_session);
    let mut b = Client::connect(&b_session);
    let a_base = a.reserve(4 * G);
    a.create(0x500, 2 * G).expect("create");
    let b_base = b.reserve(4 * G);
    b.create(0x600, G).expect("create");

    // Another session's handle, and another session's reservation (which the driver alone would accept).
    assert_eq!(b.map(b_base, G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(b.map(a_base, G, 0x600), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(b.release(0x500), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(
        b.err(&MemGetAllocationProperties {
            handle: AllocHandleId(0x500)
        }),
        CUDA_ERROR_INVALID_VALUE
    );
    // Outside any reservation, running off its end, past the handle's size, over an existing mapping.
    assert_eq!(a.map(a_base + 64 * G, G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(a.map(a_base + 3 * G, 2 * G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(a.map(a_base, 4 * G, 0x500), Err(CUDA_ERROR_NOT_SUPPORTED));
    a.map(a_base, 2 * G, 0x500).expect("map");
    assert_eq!(a.map(a_base + G, G, 0x500), Err(CUDA_ERROR_INVALID_VALUE));
    // The other session cannot copy into, unmap or retain what this one mapped.
    b.set_access(b_base, G, 0).expect_err("nothing mapped there");
    assert_eq!(b.htod(a_base, &[0; 8]), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(b.unmap(a_base, 2 * G), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(
        b.err(&MemRetainAllocationHandle {
            addr: DevicePtr(a_base)
        }),
        CUDA_ERROR_INVALID_VALUE
    );
    // Half a mapping cannot be unmapped; a reservation with mappings cannot be freed, nor freed by another size.
    assert_eq!(a.unmap(a_base, G), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(
        a.err(&MemAddressFree {
            ptr: DevicePtr(a_base),
            size: 4 * G
        }),
        CUDA_ERROR_INVALID_VALUE
    );
    assert_eq!(
        b.err(&MemAddressFree {
            ptr: DevicePtr(b_base),
            size: 2 * G
        }),
        CUDA_ERROR_INVALID_VALUE
    );
    // Host memory and unknown devices are not remoted.
    let host = MemAllocProp {
        location_type: 2,
        ..device_prop(0)
    };
    let create_host = MemCreate {
        handle: AllocHandleId(0x700),
        size: G,
        flags: 0,
        prop: host,
    };
    assert_eq!(a.err(&create_host), CUDA_ERROR_NOT_SUPPORTED);
    let create_dev1 = MemCreate {
        prop: device_prop(1),
        ..create_host
    };
    assert_eq!(a.err(&create_dev1), CUDA_ERROR_INVALID_DEVICE);
    assert_eq!(a.set_access(a_base, 2 * G, 1), Err(CUDA_ERROR_INVALID_DEVICE));
    a.close();
    b.close();
}

#[test]
fn device_ordinals_are_translated_both_ways() {
    // The client's device 0 is the server's device 1.
    let backend = Arc::new(EmulatedBackend::with_devices(2));
    let session = Session::new(
        backend.clone(),
        Limits {
            memory_bytes: None,
            devices: Some(vec![1]),
            ..Default::default()
        },
    );
    let mut c = Client::connect(&session);
    c.create(0x40, G).expect("create on the client's device 0");
    assert_eq!(
        backend.physical_devices(),
        vec![1],
        "the driver saw the server's ordinal"
    );
    let prop = c
        .ok(&MemGetAllocationProperties {
            handle: AllocHandleId(0x40),
        })
        .prop;
    assert_eq!(prop.location_id, 0, "the client sees its own ordinal");
    let create_dev1 = MemCreate {
        handle: AllocHandleId(0x50),
        size: G,
        flags: 0,
        prop: device_prop(1),
    };
    assert_eq!(c.err(&create_dev1), CUDA_ERROR_INVALID_DEVICE, "not the client's");
    c.close();
}

#[test]
fn session_end_releases_its_vmm_objects() {
    let (backend, session) = emulated_session(Limits::default());
    let mut c = Client::connect(&session);
    let base = c.reserve(2 * G);
    c.create(1, G).expect("create");
    c.create(2, G).expect("create");
    c.map(base, G, 1).expect("map");
    c.ok(&MemRetainAllocationHandle { addr: DevicePtr(base) });
    assert_eq!(backend.used(), 2 * G);
    c.close();
    drop(session);
    assert_eq!(backend.used(), 0, "mapped, retained and unmapped memory all freed");
    // The reservation went too: the same range can be reserved again.
    let again = backend
        .mem_address_reserve(2 * G, 0, DevicePtr(base), 0)
        .expect("reserve again");
    assert_eq!(again, DevicePtr(base));
}
