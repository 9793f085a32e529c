//! Tests of the emulated backend's own rules (VMM, occupancy, cubin layouts, memsets, stream waits).

use super::launch::active_blocks;
use super::memory::{fill_repeated, wait_condition_holds};
use super::*;

/// Constructors and readings for tests elsewhere in the crate.
impl EmulatedBackend {
    /// A backend whose kernels take simulated time by `cost`, for tests.
    pub(crate) fn with_kernel_cost(cost: crate::emulated_time::KernelCost) -> Self {
        EmulatedBackend {
            time: crate::emulated_time::SimulatedTime::new(Some(cost)),
            ..Self::new()
        }
    }

    /// A backend with `count` identical devices, for tests of device numbering.
    pub(crate) fn with_devices(count: usize) -> Self {
        EmulatedBackend {
            devices: vec![device::emulated_device(); count],
            ..Self::new()
        }
    }

    /// The device ordinal of every piece of VMM physical memory alive, for tests.
    pub(crate) fn physical_devices(&self) -> Vec<i32> {
        self.state().physical.values().map(|p| p.prop.location_id).collect()
    }

    /// Kernels launched so far (graph nodes included), for tests.
    pub(crate) fn launches(&self) -> u64 {
        self.state().launches
    }

    /// Device memory in use (allocations and VMM physical memory), for tests.
    pub(crate) fn used(&self) -> u64 {
        self.state().used
    }
}

#[test]
fn memset_patterns_fill_whole_elements() {
    for elem in [&[0xabu8][..], &[1, 2], &[1, 2, 3, 4]] {
        for count in [0usize, 1, 2, 3, 7, 8, 1000, 4097] {
            let mut d = vec![0u8; count * elem.len()];
            fill_repeated(&mut d, elem);
            assert!(d.chunks_exact(elem.len()).all(|c| c == elem), "{elem:?} x {count}");
        }
    }
}

#[test]
fn stream_wait_conditions_follow_the_driver_documentation() {
    // GEQ on 32 bits compares the wrapping difference: 1 is "after" 0xffff_fff0.
    assert_eq!(wait_condition_holds(1, 0xffff_fff0, 0, false), Ok(true));
    assert_eq!(wait_condition_holds(4, 5, 0, false), Ok(false));
    assert_eq!(wait_condition_holds(5, 5, 0, true), Ok(true));
    assert_eq!(wait_condition_holds(7, 7, 1, false), Ok(true));
    assert_eq!(wait_condition_holds(7, 8, 1 | 1 << 30, false), Ok(false));
    assert_eq!(wait_condition_holds(0b0110, 0b0100, 2, false), Ok(true));
    assert_eq!(wait_condition_holds(0b0110, 0b1001, 2, false), Ok(false));
    // NOR: some bit is clear in both.
    assert_eq!(wait_condition_holds(0xffff_0000, 0x0000_ffff, 3, false), Ok(false));
    assert_eq!(wait_condition_holds(0xffff_0000, 0x0000_fffe, 3, false), Ok(true));
    assert_eq!(wait_condition_holds(0, 0, 9, false), Err(CUDA_ERROR_INVALID_VALUE));
}

/// nvcc 13.0's fat binary of tests/e2e/kernels/kernels.cu with every entry Zstandard-compressed.
const COMPRESSED: &[u8] = include_bytes!("../../../dataplane/testdata/kernels_zstd.fatbin");

/// The same, reduced to its (compressed) cubin: what nvcc's default `-arch` produces, SASS only.
fn cubin_only() -> Vec<u8> {
    let header = u16::from_le_bytes([COMPRESSED[6], COMPRESSED[7]]) as usize;
    let mut at = header;
    let mut out = COMPRESSED[..header].to_vec();
    while at + 64 <= COMPRESSED.len() {
        let e = &COMPRESSED[at..];
        let word = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]) as usize;
        let len = word(4) + word(8).max(word(16));
        if e[0] == 2 {
            out.extend_from_slice(&e[..len]);
        }
        at += len;
    }
    let files = (out.len() - header) as u64;
    out[8..16].copy_from_slice(&files.to_le_bytes());
    out
}

#[test]
fn vmm_follows_the_native_rules() {
    const G: u64 = VMM_GRANULARITY;
    let b = EmulatedBackend::new();
    let ctx = b.primary_ctx_retain(0).expect("primary context");
    b.ctx_set_current(ctx).expect("current");
    let prop = MemAllocProp {
        alloc_type: 1,
        location_type: MEM_LOCATION_DEVICE,
        ..Default::default()
    };
    assert_eq!(b.mem_granularity(&prop, 0), Ok(G));
    assert_eq!(b.mem_granularity(&prop, 1), Ok(G));
    assert_eq!(b.mem_granularity(&prop, 2), Err(CUDA_ERROR_INVALID_VALUE));
    let base = b.mem_address_reserve(4 * G, 0, DevicePtr(0), 0).expect("reserve");
    assert!((VMM_BASE..VMM_END).contains(&base.0) && base.0.is_multiple_of(G));
    assert_eq!(
        b.mem_address_reserve(4097, 0, DevicePtr(0), 0),
        Err(CUDA_ERROR_INVALID_VALUE)
    );

    assert_eq!(
        b.mem_create(G + 4096, &prop, 0),
        Err(CUDA_ERROR_INVALID_VALUE),
        "not a granule multiple"
    );
    let fabric = MemAllocProp {
        handle_types: HANDLE_TYPE_FABRIC,
        ..prop
    };
    assert_eq!(b.mem_create(G, &fabric, 0), Err(CUDA_ERROR_NOT_SUPPORTED));
    let other_device = MemAllocProp { location_id: 1, ..prop };
    assert_eq!(b.mem_create(G, &other_device, 0), Err(CUDA_ERROR_INVALID_DEVICE));
    assert_eq!(b.mem_create(64 << 30, &prop, 0), Err(CUDA_ERROR_OUT_OF_MEMORY));
    let h = b.mem_create(G, &prop, 0).expect("create");

    assert_eq!(
        b.mem_map(base.offset(4096), G, 0, h, 0),
        Err(CUDA_ERROR_INVALID_VALUE),
        "misaligned"
    );
    assert_eq!(
        b.mem_map(base, G, 0, AllocHandle(h.0 + 1), 0),
        Err(CUDA_ERROR_INVALID_VALUE),
        "unknown handle"
    );
    assert_eq!(
        b.mem_map(base.offset(4 * G), G, 0, h, 0),
        Err(CUDA_ERROR_INVALID_VALUE),
        "outside"
    );
    assert_eq!(
        b.mem_map(base, 2 * G, 0, h, 0),
        Err(CUDA_ERROR_NOT_SUPPORTED),
        "past the handle"
    );
    b.mem_map(base, G, 0, h, 0).expect("map");
    assert_eq!(
        b.mem_map(base, G, 0, h, 0),
        Err(CUDA_ERROR_INVALID_VALUE),
        "mapped twice"
    );
    // One handle at two addresses: both name the same bytes.
    b.mem_map(base.offset(2 * G), G, 0, h, 0).expect("alias");
    let mut buf = b.host_alloc(16).expect("host buffer");
    buf.as_mut_slice().copy_from_slice(b"vmm alias bytes!");
    b.memcpy_htod_async(base.offset(100), &buf, 16, Stream::NULL)
        .expect("write through one");
    let out = b.host_alloc(16).expect("host buffer");
    b.memcpy_dtoh_async(&out, base.offset(2 * G + 100), 16, Stream::NULL)
        .expect("read through the other");
    assert_eq!(out.as_slice(), b"vmm alias bytes!");
    // A copy into the gap between them fails.
    assert_eq!(
        b.memcpy_htod_async(base.offset(G - 8), &buf, 16, Stream::NULL),
        Err(CUDA_ERROR_INVALID_VALUE)
    );

    assert_eq!(
        b.mem_get_access(MEM_LOCATION_DEVICE, 0, base),
        Ok(0),
        "no access before cuMemSetAccess"
    );
    let rw = MemAccessDesc {
        location_type: MEM_LOCATION_DEVICE,
        location_id: 0,
        flags: 3,
    };
    assert_eq!(
        b.mem_set_access(base, 3 * G, &[rw]),
        Err(CUDA_ERROR_INVALID_VALUE),
        "a gap"
    );
    b.mem_set_access(base, G, &[rw]).expect("set access");
    assert_eq!(b.mem_get_access(MEM_LOCATION_DEVICE, 0, base.offset(5)), Ok(3));

    b.mem_release(h).expect("release while mapped");
    assert_eq!(b.used(), G, "mapped memory lives on");
    assert_eq!(
        b.mem_address_free(base, 4 * G),
        Err(CUDA_ERROR_INVALID_VALUE),
        "still mapped"
    );
    b.mem_unmap(base, G).expect("unmap");
    b.mem_unmap(base.offset(2 * G), G).expect("unmap the alias");
    assert_eq!(b.used(), 0, "freed with its last mapping");
    assert_eq!(b.mem_release(h), Err(CUDA_ERROR_INVALID_VALUE));
    assert_eq!(
        b.mem_address_free(base, 2 * G),
        Err(CUDA_ERROR_INVALID_VALUE),
        "another size"
    );
    b.mem_address_free(base, 4 * G).expect("free");
    assert_eq!(
        b.mem_address_reserve(4 * G, 0, DevicePtr(0), 0),
        Ok(base),
        "the range is reused"
    );
}

#[test]
fn occupancy_follows_the_per_sm_limits() {
    let dev = device::emulated_device();
    let mut attrs = [0; FUNC_ATTR_COUNT];
    attrs[0] = 1024;
    attrs[4] = 32;
    // 256 threads, 32 registers: threads allow 8 blocks, registers 8 (8192 per block).
    assert_eq!(active_blocks(&dev, &attrs, 256, 0), 8);
    attrs[4] = 64;
    assert_eq!(active_blocks(&dev, &attrs, 256, 0), 4);
    attrs[4] = 32;
    // 100 KB of dynamic shared memory: two blocks fit in 228 KB.
    assert_eq!(active_blocks(&dev, &attrs, 256, 100 * 1024), 2);
    assert_eq!(active_blocks(&dev, &attrs, 2048, 0), 0);
}

#[test]
fn compressed_cubins_give_kernel_layouts_and_globals() {
    let b = EmulatedBackend::new();
    let image = cubin_only();
    assert!(matches!(fatbin::classify(&image), fatbin::Image::FatBinary(ref e) if e.len() == 1 && e[0].kind == 2));
    // Libraries load without a context, as natively.
    let (library, functions) = b.library_load(&image, 0).expect("library loads");
    let f = |name: &str| functions.iter().find(|f| f.info.name == name).expect(name);
    assert_eq!(f("vector_add").info.params, vec![(0, 8), (8, 8), (16, 8), (24, 4)]);
    assert_eq!(f("mixed_params").info.args_size(), 56);
    assert!(b
        .image_global(Image::Library(library), c"g_table")
        .is_ok_and(|(_, size)| size == 1024));
    // A launch is checked against the layout read from the cubin.
    let ctx = b.primary_ctx_retain(0).expect("primary context");
    b.ctx_set_current(ctx).expect("current");
    let mut args = vec![0u8; 28];
    let saxpy = f("saxpy");
    let shape = LaunchShape {
        grid: [1, 1, 1],
        block: [32, 1, 1],
        ..Default::default()
    };
    assert_eq!(
        b.launch(saxpy.handle, Stream::NULL, &shape, &mut args, &saxpy.info.params),
        Ok(())
    );
    let mut short = vec![0u8; 20];
    assert!(b
        .launch(saxpy.handle, Stream::NULL, &shape, &mut short, &saxpy.info.params)
        .is_err());
}

#[test]
fn context_limits_answer_as_cublaslt_needs() {
    let b = EmulatedBackend::new();
    let ctx = b.primary_ctx_retain(0).expect("primary context");
    b.ctx_set_current(ctx).expect("current");
    assert_eq!(b.ctx_get_limit(0), Ok(1024));
    assert_eq!(
        b.ctx_get_limit(8),
        Ok(0),
        "CIG_ENABLED: cuBLASLt reads it at every handle's creation"
    );
    assert_eq!(b.ctx_get_limit(7), Err(CUDA_ERROR_UNSUPPORTED_LIMIT));
    assert_eq!(b.ctx_get_limit(10), Err(CUDA_ERROR_INVALID_VALUE));
    b.ctx_set_limit(0, 4096).expect("stack size");
    assert_eq!(b.ctx_get_limit(0), Ok(4096));
}

#[test]
fn a_stream_held_behind_a_counter_holds_what_waits_for_it_and_nothing_else() {
    use std::sync::Arc;
    use std::time::Duration;
    let b = Arc::new(EmulatedBackend::new());
    let ctx = b.primary_ctx_retain(0).expect("context");
    b.ctx_set_current(ctx).expect("current");
    let buf = b.host_alloc(4096).expect("pinned");
    let counter = Arc::new(HostCounter::new(buf).expect("counter"));
    let held = b.stream_create(0, 0).expect("blocking stream");
    let free = b.stream_create(1, 0).expect("non-blocking stream");
    let waiter = b.stream_create(1, 0).expect("non-blocking stream");
    let dst = b.mem_alloc(64).expect("memory");
    b.stream_wait_counter(held, &counter, 1).expect("hold");
    let event = b.event_create(0).expect("event");
    b.event_record(event, held).expect("record: does not block");
    b.stream_wait_event(waiter, event, 0).expect("wait: does not block");
    assert_eq!(b.stream_query(held), Err(CUDA_ERROR_NOT_READY));
    assert_eq!(b.event_query(event), Err(CUDA_ERROR_NOT_READY));
    assert_eq!(
        b.stream_query(waiter),
        Err(CUDA_ERROR_NOT_READY),
        "held through the event"
    );
    assert_eq!(
        b.stream_query(Stream(1)),
        Err(CUDA_ERROR_NOT_READY),
        "the legacy stream waits for blocking ones"
    );
    assert_eq!(b.stream_query(free), Ok(()), "a non-blocking stream is not held");
    b.memset_async(
        dst,
        Fill {
            value: 1,
            elem_size: 1,
            width: 64,
            height: 1,
            pitch: 64,
        },
        free,
    )
    .expect("runs at once");
    // An operation on the held stream runs only once the counter is reached.
    let opener = {
        let counter = counter.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            counter.set(1);
        })
    };
    let started = std::time::Instant::now();
    b.memset_async(
        dst,
        Fill {
            value: 2,
            elem_size: 1,
            width: 64,
            height: 1,
            pitch: 64,
        },
        waiter,
    )
    .expect("after the hold");
    assert!(started.elapsed() >= Duration::from_millis(40), "waited for the counter");
    opener.join().expect("opener");
    assert_eq!(b.stream_query(held), Ok(()));
    assert_eq!(b.event_query(event), Ok(()));
    // A context synchronize waits for every hold of the context.
    b.stream_wait_counter(free, &counter, 2).expect("hold");
    let opener = {
        let counter = counter.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            counter.set(2);
        })
    };
    let started = std::time::Instant::now();
    b.ctx_synchronize().expect("synchronize");
    assert!(started.elapsed() >= Duration::from_millis(40));
    opener.join().expect("opener");
}

#[test]
fn frees_wait_for_held_streams_as_the_drivers_implicit_synchronization_does() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let b = Arc::new(EmulatedBackend::new());
    let ctx = b.primary_ctx_retain(0).expect("context");
    b.ctx_set_current(ctx).expect("current");
    let counter = Arc::new(HostCounter::new(b.host_alloc(4096).expect("pinned")).expect("counter"));
    let held = b.stream_create(1, 0).expect("non-blocking stream");
    let (dev, pinned) = (b.mem_alloc(64).expect("memory"), b.host_alloc(4096).expect("pinned"));
    // cuMemFree and cuMemFreeHost wait for the device's work, a held stream's included.
    for (value, free_device) in [(1, true), (2, false)] {
        b.stream_wait_counter(held, &counter, value).expect("hold");
        let opener = {
            let counter = counter.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                counter.set(value);
            })
        };
        let started = Instant::now();
        if free_device {
            b.mem_free(dev).expect("free");
        } else {
            b.host_free(HostBuffer {
                ptr: pinned.ptr,
                len: pinned.len,
                ctx: pinned.ctx,
                epoch: pinned.epoch,
            });
        }
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "the free waited (device {free_device})"
        );
        opener.join().expect("opener");
    }
}

#[test]
fn a_primary_context_reset_frees_its_pinned_buffers_and_only_those() {
    let b = EmulatedBackend::new();
    let primary = b.primary_ctx_retain(0).expect("retain");
    b.ctx_set_current(primary).expect("current");
    let in_primary = b.host_alloc(1 << 20).expect("pinned");
    let own = b.ctx_create(0, 0).expect("context"); // current now
    let in_own = b.host_alloc(4096).expect("pinned");
    assert!(vgpu_dataplane::pinned::find(in_primary.ptr as usize, 1 << 20).is_some());
    let frees = b.host_frees();
    b.primary_ctx_reset(0).expect("reset");
    assert_eq!(b.host_frees(), frees + 1, "the primary context's buffer went with it");
    assert!(
        vgpu_dataplane::pinned::find(in_primary.ptr as usize, 1).is_none(),
        "no longer listed as pinned"
    );
    // The app's own context keeps its buffer, still writable; freeing the reset one again frees nothing twice.
    assert!(in_own.write_at(0, &[7; 16]));
    assert_eq!(in_own.as_slice()[..16], [7; 16]);
    b.host_free(in_primary);
    assert_eq!(b.host_frees(), frees + 1);
    assert_eq!(
        b.host_stale_frees(),
        1,
        "the second free of the reset buffer is counted, not done"
    );
    b.host_free(in_own);
    assert_eq!(b.host_frees(), frees + 2);
    b.ctx_destroy(own).expect("destroy");
}
