//! `vgpu __copy-data --kind KIND --mib N`: pageable copies of one kind of data to the device and back, timed and
//! checked byte for byte, for measuring what compressed channels (`VGPU_COMPRESS=lz4`) gain on each kind.
//!
//! Kinds: `zeros`; `ids` (int64 token ids below 50,257, as a language model's batches hold); `floats` (fp32 values
//! of a normal-looking distribution, as weights and activations are); `periodic` (a 251-byte pattern).
//! Then the same bytes once more asynchronously (pageable, NULL stream), and through page-locked memory
//! (`cuMemAllocHost`) synchronously and asynchronously, each checked too, and through vGPU the shim's channel counters (`striped_channels`: channels
//! that spread their bulk bytes over several TCP streams; `rdma_*`: bytes RDMA channels copied or read in place).

use std::ffi::c_void;
use std::time::Instant;

use crate::cuda::Cuda;

/// Asynchronous uploads from page-locked memory in pieces of up to 1 MiB (over RDMA each is offered in place and not
/// waited for), the last (an eighth of a piece: 128 KiB, below the shim's batching bound) from a buffer freed
/// before anything waited for the copies (the driver's `cuMemFreeHost` waits for them; over RDMA the shim's may
/// not, the registration keeping the pages until the server read them): every byte read back must be the one the
/// buffer held at its call.
fn pinned_async(cuda: &Cuda, kind: &str, src: &[u8], dev: u64) -> Result<(), String> {
    let n = src.len();
    let piece = (1usize << 20).min(n / 4).max(8);
    let small = piece / 8;
    let null = std::ptr::null_mut();
    let mut back = vec![0u8; n];
    // SAFETY: two page-locked buffers of `n` and `piece` bytes from cuMemAllocHost, viewed as slices only until
    // their cuMemFreeHost; `dev` holds `n` bytes.
    unsafe {
        let (mut pinned, mut last) = (std::ptr::null_mut(), std::ptr::null_mut());
        cuda.check("cuMemAllocHost", cuda.cuMemAllocHost_v2(&mut pinned, n))?;
        std::slice::from_raw_parts_mut(pinned as *mut u8, n).copy_from_slice(src);
        let t = Instant::now();
        let mut sent = Ok(());
        for off in (0..n).step_by(piece) {
            let len = piece.min(n - off);
            let from = (pinned as *const u8).add(off) as *const c_void;
            sent = sent.and_then(|_| {
                cuda.check(
                    "cuMemcpyHtoDAsync",
                    cuda.cuMemcpyHtoDAsync_v2(dev + off as u64, from, len, null),
                )
            });
        }
        let synced = sent.and_then(|_| cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(null)));
        let secs = t.elapsed().as_secs_f64();
        cuda.check("cuMemFreeHost", cuda.cuMemFreeHost(pinned))?;
        synced?;
        cuda.check("cuMemAllocHost", cuda.cuMemAllocHost_v2(&mut last, small))?;
        std::slice::from_raw_parts_mut(last as *mut u8, small).fill(0x5a);
        cuda.check("cuMemcpyHtoDAsync", cuda.cuMemcpyHtoDAsync_v2(dev, last, small, null))?;
        cuda.check("cuMemFreeHost", cuda.cuMemFreeHost(last))?;
        cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(null))?;
        cuda.check(
            "cuMemcpyDtoH",
            cuda.cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, dev, n),
        )?;
        if back[..small].iter().any(|&b| b != 0x5a) || back[small..] != src[small..] {
            return Err(format!(
                "{kind}: an asynchronous upload from page-locked memory carried other bytes"
            ));
        }
        println!(
            "copy-data {kind} {} MiB pinned async in {} KiB pieces: h2d {:.3} GB/s (verified, freed before the wait too)",
            n >> 20,
            piece >> 10,
            n as f64 / secs / 1e9
        );
    }
    Ok(())
}

/// `n` bytes of `kind`, from a fixed seed.
fn data(kind: &str, n: usize) -> Result<Vec<u8>, String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(n);
    match kind {
        "zeros" => out.resize(n, 0),
        "periodic" => out.extend((0..n).map(|i| (i % 251) as u8)),
        "ids" => {
            while out.len() < n {
                out.extend_from_slice(&(next() % 50_257).to_le_bytes());
            }
        }
        "floats" => {
            while out.len() < n {
                // The sum of four uniforms: a bell around 0 with the exponent bits of real weights.
                let u = |v: u64| (v >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let v = (u(next()) + u(next()) + u(next()) + u(next())) * 0.05;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        other => return Err(format!("unknown data kind {other:?}: zeros, ids, floats or periodic")),
    }
    out.truncate(n);
    Ok(out)
}

pub fn run(kind: &str, mib: u64, reps: u32) -> Result<(), String> {
    let n = usize::try_from(mib << 20).map_err(|_| "too large")?;
    let src = data(kind, n)?;
    let mut back = vec![0u8; n];
    let cuda = Cuda::load()?;
    cuda.open_device()?;
    let mut dev = 0u64;
    let (mut h2d, mut d2h) = (0f64, 0f64);
    // SAFETY (this block): host buffers of `n` bytes (one page-locked, from cuMemAllocHost, viewed as a slice only
    // until cuMemFreeHost) and device buffers of `n` bytes, all freed at the end.
    unsafe {
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dev, n))?;
        for _ in 0..reps.max(1) {
            let t = Instant::now();
            cuda.check(
                "cuMemcpyHtoD",
                cuda.cuMemcpyHtoD_v2(dev, src.as_ptr() as *const c_void, n),
            )?;
            h2d += t.elapsed().as_secs_f64();
            let t = Instant::now();
            cuda.check(
                "cuMemcpyDtoH",
                cuda.cuMemcpyDtoH_v2(back.as_mut_ptr() as *mut c_void, dev, n),
            )?;
            d2h += t.elapsed().as_secs_f64();
        }
        if back != src {
            return Err(format!("{kind}: the round trip changed the data"));
        }
        // Asynchronously, into a fresh device buffer and a cleared host one: a copy that came back short or from
        // the wrong place cannot pass.
        let mut dev2 = 0u64;
        back.fill(0);
        let null = std::ptr::null_mut();
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dev2, n))?;
        cuda.check(
            "cuMemcpyHtoDAsync",
            cuda.cuMemcpyHtoDAsync_v2(dev2, src.as_ptr() as *const c_void, n, null),
        )?;
        cuda.check(
            "cuMemcpyDtoHAsync",
            cuda.cuMemcpyDtoHAsync_v2(back.as_mut_ptr() as *mut c_void, dev2, n, null),
        )?;
        cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(null))?;
        // One pageable buffer reused for four asynchronous copies back to back, overwritten as soon as each call
        // returns: each copy must carry the bytes the buffer held at its call (the driver stages them before it
        // returns), whatever the shim does with them after.
        let piece = (2usize << 20).min(n / 4);
        if piece > 0 {
            let mut scratch = vec![0u8; piece];
            for k in 0..4u8 {
                scratch.fill(k.wrapping_mul(37).wrapping_add(1));
                cuda.check(
                    "cuMemcpyHtoDAsync",
                    cuda.cuMemcpyHtoDAsync_v2(
                        dev2 + (k as usize * piece) as u64,
                        scratch.as_ptr() as *const c_void,
                        piece,
                        null,
                    ),
                )?;
                scratch.fill(0xee);
            }
            let mut check = vec![0u8; 4 * piece];
            cuda.check(
                "cuMemcpyDtoH",
                cuda.cuMemcpyDtoH_v2(check.as_mut_ptr() as *mut c_void, dev2, 4 * piece),
            )?;
            for (k, block) in check.chunks(piece).enumerate() {
                let want = (k as u8).wrapping_mul(37).wrapping_add(1);
                if block.iter().any(|&b| b != want) {
                    return Err(format!(
                        "{kind}: asynchronous copy {k} of a reused buffer carried other bytes"
                    ));
                }
            }
        }
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dev2))?;
        if back != src {
            return Err(format!("{kind}: the asynchronous round trip changed the data"));
        }
        // Page-locked: to the device from one pinned buffer, back into it after clearing it.
        let mut pinned = std::ptr::null_mut();
        cuda.check("cuMemAllocHost", cuda.cuMemAllocHost_v2(&mut pinned, n))?;
        let host = std::slice::from_raw_parts_mut(pinned as *mut u8, n);
        host.copy_from_slice(&src);
        let t = Instant::now();
        let up = cuda.check("cuMemcpyHtoD", cuda.cuMemcpyHtoD_v2(dev, pinned, n));
        let pinned_h2d = t.elapsed().as_secs_f64();
        host.fill(0);
        let t = Instant::now();
        let down = up.and_then(|_| cuda.check("cuMemcpyDtoH", cuda.cuMemcpyDtoH_v2(pinned, dev, n)));
        let pinned_d2h = t.elapsed().as_secs_f64();
        let same = host[..] == src[..];
        cuda.check("cuMemFreeHost", cuda.cuMemFreeHost(pinned))?;
        down?;
        if !same {
            return Err(format!("{kind}: the pinned round trip changed the data"));
        }
        println!(
            "copy-data {kind} {mib} MiB pinned: h2d {:.3} GB/s, d2h {:.3} GB/s (verified)",
            n as f64 / pinned_h2d / 1e9,
            n as f64 / pinned_d2h / 1e9
        );
        pinned_async(&cuda, kind, &src, dev)?;
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dev))?;
    }
    let bytes = n as f64 * f64::from(reps.max(1));
    println!(
        "copy-data {kind} {mib} MiB x {}: h2d {:.3} GB/s, d2h {:.3} GB/s (verified)",
        reps.max(1),
        bytes / h2d / 1e9,
        bytes / d2h / 1e9
    );
    if let Some(stats) = cuda.vgpu_stats() {
        let striped = stats
            .iter()
            .find(|(name, _)| name == "striped_channels")
            .map_or(0, |s| s.1);
        println!("striped_channels {striped}");
        for (name, value) in stats.iter().filter(|(name, _)| name.starts_with("rdma_")) {
            println!("{name} {value}");
        }
    }
    Ok(())
}
