//! `vgpu __multi-check`: a driver-API walk over every device the process sees (one or several servers): their
//! identities, memory and unified addressing on each, peer access answers, copies between every pair, streams
//! and events across devices. Prints one line per fact; `vgpu`'s tests and benchmarks read them.

use std::ffi::{c_char, c_void, CStr};
use std::time::Instant;

use vgpu_cuda_sys::driver::{CUcontext, CUpointer_attribute, CUresult};

use crate::cuda::{Cuda, PTX};

/// Bytes copied between each pair of devices.
const COPY_BYTES: usize = 3 << 20;

/// Runs the walk and prints what it finds; `Err` on the first unexpected driver error.
pub fn run(bench_mib: u64) -> Result<(), String> {
    let cuda = Cuda::load()?;
    // SAFETY (this function): documented driver calls; out-pointers are locals, buffers outlive the calls.
    unsafe {
        cuda.check("cuInit", cuda.cuInit(0))?;
        let mut count = 0;
        cuda.check("cuDeviceGetCount", cuda.cuDeviceGetCount(&mut count))?;
        println!("devices: {count}");
        let mut ctxs: Vec<CUcontext> = Vec::new();
        let mut bufs: Vec<u64> = Vec::new();
        for d in 0..count {
            let mut uuid = vgpu_cuda_sys::driver::CUuuid { bytes: [0; 16] };
            cuda.check("cuDeviceGetUuid", cuda.cuDeviceGetUuid_v2(&mut uuid, d))?;
            let hex: String = uuid.bytes.iter().map(|&b| format!("{:02x}", b as u8)).collect();
            let mut bus = [0 as c_char; 32];
            cuda.check("cuDeviceGetPCIBusId", cuda.cuDeviceGetPCIBusId(bus.as_mut_ptr(), 32, d))?;
            let bus = CStr::from_ptr(bus.as_ptr()).to_string_lossy();
            println!("device {d}: uuid {hex} pci {bus}");
            let mut ctx = std::ptr::null_mut();
            cuda.check("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(&mut ctx, d))?;
            cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))?;
            let mut dptr = 0u64;
            cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dptr, COPY_BYTES))?;
            let fill = vec![d as u8 + 1; COPY_BYTES];
            cuda.check(
                "cuMemcpyHtoD",
                cuda.cuMemcpyHtoD_v2(dptr, fill.as_ptr() as *const c_void, COPY_BYTES),
            )?;
            // A small one too: it shares a granule with others of its device.
            let mut small = 0u64;
            cuda.check("cuMemAlloc(256)", cuda.cuMemAlloc_v2(&mut small, 256))?;
            println!("device {d}: alloc {dptr:#x} small {small:#x}");
            ctxs.push(ctx);
            bufs.push(dptr);
        }
        let distinct = (0..bufs.len()).all(|i| (0..i).all(|j| bufs[i].abs_diff(bufs[j]) >= COPY_BYTES as u64));
        println!("addresses distinct: {distinct}");
        // Unified addressing: each pointer names its device, whichever context is current.
        if let Some(&last) = ctxs.last() {
            cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(last))?;
        }
        for (d, &p) in bufs.iter().enumerate() {
            let mut ordinal = -1i32;
            let attr = CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL;
            cuda.check(
                "cuPointerGetAttribute",
                cuda.cuPointerGetAttribute(&mut ordinal as *mut i32 as *mut c_void, attr, p + 100),
            )?;
            println!("pointer of device {d}: ordinal {ordinal}");
        }
        for a in 0..count {
            for b in 0..count {
                if a != b {
                    let mut can = -1;
                    cuda.check("cuDeviceCanAccessPeer", cuda.cuDeviceCanAccessPeer(&mut can, a, b))?;
                    println!("can access peer {a} -> {b}: {can}");
                }
            }
        }
        nvml_peers(count as u32);
        // Copies between every pair, by each entry point, each checked byte for byte.
        for a in 0..bufs.len() {
            for b in 0..bufs.len() {
                if a != b {
                    pair_copies(&cuda, (bufs[a], ctxs[a], a), (bufs[b], ctxs[b], b))?;
                }
            }
        }
        // A kernel on each device, and a stream of the last one waiting for an event of the first.
        let saxpy = cuda.kernel(PTX, "empty");
        println!(
            "kernel on the last device: {}",
            if saxpy.is_ok() { "loaded" } else { "failed" }
        );
        if count >= 2 {
            cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctxs[0]))?;
            let (mut event, mut stream) = (std::ptr::null_mut(), std::ptr::null_mut());
            cuda.check("cuEventCreate", cuda.cuEventCreate(&mut event, 0))?;
            cuda.check("cuEventRecord", cuda.cuEventRecord(event, std::ptr::null_mut()))?;
            cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctxs[1]))?;
            cuda.check("cuStreamCreate", cuda.cuStreamCreate(&mut stream, 0))?;
            let r = cuda.cuStreamWaitEvent(stream, event, 0);
            println!("stream of device 1 waits for an event of device 0: {}", name(&cuda, r));
            cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
            let r = cuda.cuCtxEnablePeerAccess(ctxs[0], 0);
            println!("enable peer access 1 -> 0: {}", name(&cuda, r));
            let r = cuda.cuCtxDisablePeerAccess(ctxs[0]);
            println!("disable peer access 1 -> 0: {}", name(&cuda, r));
        }
        if bench_mib > 0 && count >= 2 {
            bench_copy(&cuda, &ctxs, bench_mib)?;
        }
        // Frees from another device's context (unified addressing names the device).
        cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctxs[0]))?;
        for &p in bufs.iter().rev() {
            cuda.check("cuMemFree", cuda.cuMemFree_v2(p))?;
        }
        println!("freed from device 0's context: ok");
    }
    Ok(())
}

/// Copies device `a`'s buffer (filled with a+1) into device `b`'s (filled with b+1) by `cuMemcpyPeer`,
/// `cuMemcpyPeerAsync`, `cuMemcpy3DPeer`, `cuMemcpyDtoD`, `cuMemcpy` (unified) and a pitched `cuMemcpy2D`, reading `b` back after
/// each: one line per entry point ("<how> copy a -> b: <result> verified"). Each side: (buffer, context, ordinal).
fn pair_copies(
    cuda: &Cuda,
    (src, sctx, a): (u64, CUcontext, usize),
    (dst, dctx, b): (u64, CUcontext, usize),
) -> Result<(), String> {
    let (from, to) = (a as u8 + 1, b as u8 + 1);
    // SAFETY (this function): documented driver calls on the caller's two live COPY_BYTES buffers and retained
    // contexts; host buffers are locals that outlive each synchronous call (the async one is synchronized).
    unsafe {
        let refill = || {
            let fill = vec![to; COPY_BYTES];
            cuda.check(
                "cuMemcpyHtoD",
                cuda.cuMemcpyHtoD_v2(dst, fill.as_ptr() as *const c_void, COPY_BYTES),
            )
        };
        let read_back = || -> Result<Vec<u8>, String> {
            let mut back = vec![0u8; COPY_BYTES];
            cuda.check(
                "cuMemcpyDtoH",
                cuda.cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, dst, COPY_BYTES),
            )?;
            Ok(back)
        };
        let report = |how: &str, r: CUresult| -> Result<(), String> {
            let ok = read_back()?.iter().all(|&x| x == from);
            println!(
                "{how} copy {a} -> {b}: {} {}",
                name(cuda, r),
                if ok { "verified" } else { "WRONG BYTES" }
            );
            refill()
        };
        cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(dctx))?;
        report("peer", cuda.cuMemcpyPeer(dst, dctx, src, sctx, COPY_BYTES))?;
        let mut stream = std::ptr::null_mut();
        cuda.check("cuStreamCreate", cuda.cuStreamCreate(&mut stream, 0))?;
        let r = cuda.cuMemcpyPeerAsync(dst, dctx, src, sctx, COPY_BYTES, stream);
        cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
        cuda.check("cuStreamDestroy", cuda.cuStreamDestroy_v2(stream))?;
        report("async peer", r)?;
        // cuMemcpy3DPeer of the whole buffer as 1 KiB rows, 4 rows a slice.
        let (row, rows) = (1024usize, 4usize);
        let peer3d = vgpu_cuda_sys::driver::CUDA_MEMCPY3D_PEER {
            srcMemoryType: vgpu_cuda_sys::driver::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcDevice: src,
            srcContext: sctx,
            srcPitch: row,
            srcHeight: rows,
            dstMemoryType: vgpu_cuda_sys::driver::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstDevice: dst,
            dstContext: dctx,
            dstPitch: row,
            dstHeight: rows,
            WidthInBytes: row,
            Height: rows,
            Depth: COPY_BYTES / (row * rows),
            ..Default::default()
        };
        report("3d peer", cuda.cuMemcpy3DPeer(&peer3d))?;
        report("dtod", cuda.cuMemcpyDtoD_v2(dst, src, COPY_BYTES))?;
        report("unified", cuda.cuMemcpy(dst, src, COPY_BYTES))?;
        // Pitched: 3 rows of 1000 bytes from rows 4096 apart (at x = 8) into rows 2048 apart; only they change.
        let (width, height, spitch, dpitch) = (1000usize, 3usize, 4096usize, 2048usize);
        let copy = vgpu_cuda_sys::driver::CUDA_MEMCPY2D {
            srcXInBytes: 8,
            srcMemoryType: vgpu_cuda_sys::driver::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcDevice: src,
            srcPitch: spitch,
            dstMemoryType: vgpu_cuda_sys::driver::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstDevice: dst,
            dstPitch: dpitch,
            WidthInBytes: width,
            Height: height,
            ..Default::default()
        };
        let r = cuda.cuMemcpy2D_v2(&copy);
        let back = read_back()?;
        let ok = back.iter().enumerate().all(|(i, &x)| {
            let in_rows = i < height * dpitch && i % dpitch < width;
            x == if in_rows { from } else { to }
        });
        println!(
            "2d copy {a} -> {b}: {} {}",
            name(cuda, r),
            if ok { "verified" } else { "WRONG BYTES" }
        );
        refill()
    }
}

/// Device 0 to device 1, `mib` MiB, a few times: prints the bandwidth and this process's transport bytes for it.
/// `ctxs` are the primary contexts of devices 0 and 1, retained.
fn bench_copy(cuda: &Cuda, ctxs: &[CUcontext], mib: u64) -> Result<(), String> {
    let len = (mib as usize) << 20;
    let (mut src, mut dst) = (0u64, 0u64);
    // SAFETY (this function): documented driver calls with out-pointers to locals and contexts the caller
    // retained; the two allocations are freed at the end.
    unsafe {
        cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctxs[0]))?;
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut src, len))?;
        cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctxs[1]))?;
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dst, len))?;
        cuda.check("cuMemcpyPeer", cuda.cuMemcpyPeer(dst, ctxs[1], src, ctxs[0], len))?;
        let before = traffic(cuda);
        let reps = 3;
        let t = Instant::now();
        for _ in 0..reps {
            cuda.check("cuMemcpyPeer", cuda.cuMemcpyPeer(dst, ctxs[1], src, ctxs[0], len))?;
        }
        let secs = t.elapsed().as_secs_f64();
        let after = traffic(cuda);
        println!(
            "bench peer copy: {:.3} GB/s over {reps} x {mib} MiB; client transport bytes during it: {}",
            (len * reps) as f64 / secs / 1e9,
            after.saturating_sub(before)
        );
        // Pitched: every other 4 KiB row of the buffer (rows 8 KiB apart), half the bytes.
        let (width, pitch) = (4096usize, 8192usize);
        let rows2d = vgpu_cuda_sys::driver::CUDA_MEMCPY2D {
            srcMemoryType: vgpu_cuda_sys::driver::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcDevice: src,
            srcPitch: pitch,
            dstMemoryType: vgpu_cuda_sys::driver::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstDevice: dst,
            dstPitch: pitch,
            WidthInBytes: width,
            Height: len / pitch,
            ..Default::default()
        };
        let before = traffic(cuda);
        let t = Instant::now();
        for _ in 0..reps {
            cuda.check("cuMemcpy2D", cuda.cuMemcpy2D_v2(&rows2d))?;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "bench pitched peer copy: {:.3} GB/s over {reps} x {} MiB of {width}-byte rows; client bytes: {}",
            (width * (len / pitch) * reps) as f64 / secs / 1e9,
            (width * (len / pitch)) >> 20,
            traffic(cuda).saturating_sub(before)
        );
        // Latency: small synchronous copies, where setting a copy up costs more than moving it.
        let small = 4096usize.min(len);
        let t = Instant::now();
        let n = 100;
        for _ in 0..n {
            cuda.check("cuMemcpyPeer", cuda.cuMemcpyPeer(dst, ctxs[1], src, ctxs[0], small))?;
        }
        println!(
            "bench small peer copy: {:.1} us per {small}-byte copy",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dst))?;
        cuda.check("cuMemFree", cuda.cuMemFree_v2(src))
    }
}

/// Bytes this process's shim has sent and received over all its channels (0 natively).
pub(crate) fn traffic(cuda: &Cuda) -> u64 {
    // own ABI: vgpu_client_traffic is vGPU's export, declared by no header.
    type Traffic = unsafe extern "C" fn(*mut u64, *mut u64);
    // SAFETY: an optional function only vGPU's shim exports; it writes two counters into the locals.
    match unsafe { cuda.library().get::<Traffic>(b"vgpu_client_traffic\0") } {
        Ok(f) => {
            let (mut sent, mut received) = (0u64, 0u64);
            // SAFETY: as above.
            unsafe { f(&mut sent, &mut received) };
            sent + received
        }
        Err(_) => 0,
    }
}

fn name(cuda: &Cuda, r: CUresult) -> String {
    match cuda.check("", r) {
        Ok(()) => "CUDA_SUCCESS".into(),
        Err(e) => e.trim_start_matches(" failed: ").to_string(),
    }
}

/// NVML's peer status between every two devices (read, NVLink, atomics), where an NVML library loads: the lines
/// "nvml p2p A -> B: read R nvlink N atomics T" (`nvmlGpuP2PStatus_t` values; 0 is OK). NVML numbers devices as
/// CUDA does here (no `CUDA_VISIBLE_DEVICES`).
fn nvml_peers(count: u32) {
    use vgpu_cuda_sys::nvml::{nvmlDevice_t, nvmlGpuP2PCapsIndex_t, nvmlGpuP2PStatus_t, nvmlReturn_t};
    let Ok(nvml) = vgpu_cuda_sys::NvmlLibrary::load_any("libnvidia-ml.so.1") else {
        println!("nvml: not loadable");
        return;
    };
    // SAFETY (this block): nvml.h's entry points with out-pointers to locals and handles NVML gave.
    unsafe {
        if nvml.nvmlInit_v2() != nvmlReturn_t::NVML_SUCCESS {
            println!("nvml: init failed");
            return;
        }
        let handle = |i: u32| {
            let mut h: nvmlDevice_t = std::ptr::null_mut();
            (nvml.nvmlDeviceGetHandleByIndex_v2(i, &mut h) == nvmlReturn_t::NVML_SUCCESS).then_some(h)
        };
        for a in 0..count {
            for b in 0..count {
                let (Some(ha), Some(hb)) = (handle(a), handle(b)) else {
                    continue;
                };
                if a == b {
                    continue;
                }
                let status = |index: u32| {
                    let mut s = nvmlGpuP2PStatus_t(99);
                    match nvml.nvmlDeviceGetP2PStatus(ha, hb, nvmlGpuP2PCapsIndex_t(index), &mut s) {
                        r if r == nvmlReturn_t::NVML_SUCCESS => s.0.to_string(),
                        r => format!("error {}", r.0),
                    }
                };
                println!(
                    "nvml p2p {a} -> {b}: read {} nvlink {} atomics {}",
                    status(0),
                    status(2),
                    status(3)
                );
            }
        }
        nvml.nvmlShutdown();
    }
}
