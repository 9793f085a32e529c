//! The bundled sample: saxpy over a million floats through whatever `libcuda.so.1` is loaded, with every
//! result checked on the host. `vgpu quickstart` runs it through the shim.

use std::ffi::c_void;

use crate::cuda::{Cuda, PTX};

/// Runs the sample and returns the line it reports.
pub fn run() -> Result<String, String> {
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let backend = cuda.vgpu_backend();
    let n: u32 = 1 << 20;
    let a: f32 = 2.5;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let bytes = n as usize * 4;
    let f = cuda.kernel(PTX, "saxpy")?;
    let (mut dx, mut dy) = (0u64, 0u64);
    let mut out = vec![0f32; n as usize];
    let mut x_back = vec![0f32; n as usize];
    // SAFETY (this block): driver calls with host buffers of `bytes` bytes and arguments that outlive them.
    unsafe {
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dx, bytes))?;
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dy, bytes))?;
        cuda.check(
            "cuMemcpyHtoD",
            cuda.cuMemcpyHtoD_v2(dx, x.as_ptr() as *const c_void, bytes),
        )?;
        cuda.check(
            "cuMemcpyHtoD",
            cuda.cuMemcpyHtoD_v2(dy, y.as_ptr() as *const c_void, bytes),
        )?;
        let (mut pn, mut pa, mut px, mut py) = (n, a, dx, dy);
        let mut args = [
            &mut pn as *mut u32 as *mut c_void,
            &mut pa as *mut f32 as *mut c_void,
            &mut px as *mut u64 as *mut c_void,
            &mut py as *mut u64 as *mut c_void,
        ];
        let grid = n.div_ceil(256);
        let null = std::ptr::null_mut();
        cuda.check(
            "cuLaunchKernel",
            cuda.cuLaunchKernel(
                f,
                grid,
                1,
                1,
                256,
                1,
                1,
                0,
                null,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
        )?;
        cuda.check("cuCtxSynchronize", cuda.cuCtxSynchronize())?;
        cuda.check(
            "cuMemcpyDtoH",
            cuda.cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, dy, bytes),
        )?;
        cuda.check(
            "cuMemcpyDtoH",
            cuda.cuMemcpyDtoH_v2(x_back.as_mut_ptr() as *mut c_void, dx, bytes),
        )?;
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dx))?;
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dy))?;
    }
    if x_back != x {
        return Err("the copy round trip corrupted data".into());
    }
    pinned_round_trip(&cuda, 8 << 20)?;
    pageable_round_trip(&cuda, (20 << 20) + 12345)?;
    let device = cuda.device_name();
    let place = match backend {
        0 => "through vGPU on a real GPU",
        1 => "through vGPU on the emulated backend",
        _ => "on the native NVIDIA driver",
    };
    if backend == 1 {
        // The emulated backend checks and records launches but does not run them: y must be unchanged.
        if out != y {
            return Err("emulated backend changed y although it runs no kernels".into());
        }
        return Ok(format!(
            "sample: saxpy on {n} floats {place} ({device}): copies (pageable and pinned, sync and async) verified byte for byte, launch accepted; \
             kernels are not executed on the emulated backend"
        ));
    }
    let bad = out
        .iter()
        .zip(x.iter().zip(&y))
        .filter(|(o, (xi, yi))| **o != a.mul_add(**xi, **yi))
        .count();
    if bad > 0 {
        return Err(format!("saxpy gave {bad} wrong results out of {n}"));
    }
    Ok(format!(
        "sample: saxpy on {n} floats {place} ({device}): all {n} results correct; pinned copies verified"
    ))
}

/// A pageable round trip longer than the shim's staging slots (so several chunks and a ragged end), checked.
fn pageable_round_trip(cuda: &Cuda, size: usize) -> Result<(), String> {
    let src: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ (i >> 20) as u8).collect();
    let mut back = vec![0u8; size];
    let mut dev = 0u64;
    // SAFETY (this block): host buffers of `size` bytes and a device buffer of that size, freed at the end.
    unsafe {
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dev, size))?;
        cuda.check(
            "cuMemcpyHtoD",
            cuda.cuMemcpyHtoD_v2(dev, src.as_ptr() as *const c_void, size),
        )?;
        cuda.check(
            "cuMemcpyDtoH",
            cuda.cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, dev, size),
        )?;
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dev))?;
    }
    if back != src {
        return Err("a large pageable copy round trip corrupted data".into());
    }
    Ok(())
}

/// Copies `size` bytes from pinned memory to the device and back into other pinned memory, synchronously and
/// asynchronously, and checks every byte (on shared-memory sessions pinned memory is shared with the server).
fn pinned_round_trip(cuda: &Cuda, size: usize) -> Result<(), String> {
    let (mut a, mut b): (*mut c_void, *mut c_void) = (std::ptr::null_mut(), std::ptr::null_mut());
    let mut dev = 0u64;
    // SAFETY (this block): two pinned buffers and one device buffer of `size` bytes, used within their sizes and
    // freed at the end; the byte slices are dropped before the buffers are freed.
    unsafe {
        cuda.check("cuMemAllocHost", cuda.cuMemAllocHost_v2(&mut a, size))?;
        cuda.check("cuMemAllocHost", cuda.cuMemAllocHost_v2(&mut b, size))?;
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dev, size))?;
        let src = std::slice::from_raw_parts_mut(a as *mut u8, size);
        let dst = std::slice::from_raw_parts_mut(b as *mut u8, size);
        for (pass, asynchronous) in [(1u8, false), (2u8, true)] {
            for (i, v) in src.iter_mut().enumerate() {
                *v = (i as u8).wrapping_mul(31).wrapping_add(pass);
            }
            dst.fill(0);
            let null = std::ptr::null_mut();
            if asynchronous {
                cuda.check("cuMemcpyHtoDAsync", cuda.cuMemcpyHtoDAsync_v2(dev, a, size, null))?;
                cuda.check("cuMemcpyDtoHAsync", cuda.cuMemcpyDtoHAsync_v2(b, dev, size, null))?;
                cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(null))?;
            } else {
                cuda.check("cuMemcpyHtoD", cuda.cuMemcpyHtoD_v2(dev, a, size))?;
                cuda.check("cuMemcpyDtoH", cuda.cuMemcpyDtoH_v2(b, dev, size))?;
            }
            if src != dst {
                return Err(format!(
                    "pinned {} copy round trip corrupted data",
                    if asynchronous { "asynchronous" } else { "synchronous" }
                ));
            }
        }
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dev))?;
        cuda.check("cuMemFreeHost", cuda.cuMemFreeHost(a))?;
        cuda.check("cuMemFreeHost", cuda.cuMemFreeHost(b))?;
    }
    Ok(())
}

/// `vgpu __memcheck`: what a session may see and allocate, for tests of ticket limits. Prints one line per
/// fact: the device count, `cuMemGetInfo`'s total and free, then each allocation's result (kept allocated), then
/// holds the session open for `hold_ms` and checks it still answers.
pub fn memcheck(alloc_mib: &[u64], copy_mib: u64, hold_ms: u64) -> Result<(), String> {
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let mut count = 0;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY (this block): documented driver calls with out-pointers to locals.
    unsafe {
        cuda.check("cuDeviceGetCount", cuda.cuDeviceGetCount(&mut count))?;
        cuda.check("cuMemGetInfo", cuda.cuMemGetInfo_v2(&mut free, &mut total))?;
    }
    println!("devices {count}");
    println!("total_mib {}", total >> 20);
    println!("free_mib {}", free >> 20);
    for &mib in alloc_mib {
        let mut dptr = 0u64;
        // SAFETY: out-pointer to a local.
        let r = unsafe { cuda.cuMemAlloc_v2(&mut dptr, (mib << 20) as usize) };
        println!(
            "alloc {mib} {}",
            cuda.check("cuMemAlloc", r).err().unwrap_or_else(|| "ok".into())
        );
    }
    if copy_mib > 0 {
        pageable_round_trip(&cuda, (copy_mib << 20) as usize)?;
        println!("copied {copy_mib}");
    }
    println!("holding");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::thread::sleep(std::time::Duration::from_millis(hold_ms));
    // SAFETY: no arguments.
    let r = unsafe { cuda.cuCtxSynchronize() };
    println!(
        "after_hold {}",
        cuda.check("cuCtxSynchronize", r).err().unwrap_or_else(|| "ok".into())
    );
    Ok(())
}
