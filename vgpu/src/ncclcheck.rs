//! `vgpu __nccl-check`: one rank of a communicator over vGPU's `libnccl.so.2`, running every collective on known
//! data and checking each result byte for byte; with `--bench-mib`, all-reduce bus bandwidth and the client's
//! own bytes during it. Rank 0 writes the unique id to `--id-file`; the other ranks wait for it there.

use std::ffi::{c_int, c_void};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cuda::Cuda;

type Comm = *mut c_void;
type Stream = *mut c_void;
// nccl.h: ncclAllReduce, ncclReduceScatter
type Coll = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
// nccl.h: ncclReduce
type Rooted = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, c_int, Comm, Stream) -> c_int;
// nccl.h: ncclAllGather
type Gather = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> c_int;
// nccl.h: ncclBroadcast
type Bcast = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
// nccl.h: ncclSend
type P2p = unsafe extern "C" fn(*const c_void, usize, c_int, c_int, Comm, Stream) -> c_int;

const FLOAT: c_int = 7;
const INT32: c_int = 2;
const SUM: c_int = 0;
const MAX: c_int = 2;
const AVG: c_int = 4;

struct Nccl {
    lib: libloading::Library,
}

impl Nccl {
    fn get<T: Copy>(&self, name: &str) -> Result<T, String> {
        // SAFETY: each name is NCCL's entry point with the signature `T` declares (nccl.h).
        unsafe { self.lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| format!("{name}: {e}"))
    }
}

fn ok(what: &str, r: c_int) -> Result<(), String> {
    if r == 0 {
        Ok(())
    } else {
        Err(format!("{what} failed: ncclResult {r}"))
    }
}

/// Element `i` of rank `r`'s input.
fn value(r: u32, i: usize) -> f32 {
    ((i % 1000) as f32) * 0.5 + r as f32 * 1000.0
}

/// What `__nccl-check` does besides the checks: time all-reduces, or leave right after joining (the other ranks then
/// see a peer gone mid-collective).
pub struct Extra {
    pub bench_mib: u64,
    pub exit_after_init: bool,
}

/// The driver (`libcuda.so.1`) and NCCL (`libnccl.so.2`), as the loader finds them.
fn open() -> Result<(Cuda, Nccl), String> {
    let cuda = Cuda::load()?;
    // SAFETY: loading NCCL runs only its initialisers (vGPU's has none).
    let lib = unsafe { libloading::Library::new("libnccl.so.2") }.map_err(|e| format!("libnccl.so.2: {e}"))?;
    Ok((cuda, Nccl { lib }))
}

pub fn run(rank: u32, nranks: u32, id_file: &Path, extra: &Extra) -> Result<(), String> {
    let (cuda, nccl) = open()?;
    let mut version: c_int = 0;
    // nccl.h: ncclGetVersion
    let get_version: unsafe extern "C" fn(*mut c_int) -> c_int = nccl.get("ncclGetVersion")?;
    // SAFETY (this function): documented driver and NCCL calls; out-pointers are locals, buffers outlive the calls
    // (each collective is waited for with cuStreamSynchronize before its buffers are read or freed).
    unsafe {
        ok("ncclGetVersion", get_version(&mut version))?;
        cuda.check("cuInit", cuda.cuInit(0))?;
        let mut ctx = std::ptr::null_mut();
        cuda.check("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(&mut ctx, 0))?;
        cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))?;
        let mut id = [0u8; 128];
        if rank == 0 {
            // nccl.h: ncclGetUniqueId
            let get_id: unsafe extern "C" fn(*mut u8) -> c_int = nccl.get("ncclGetUniqueId")?;
            ok("ncclGetUniqueId", get_id(id.as_mut_ptr()))?;
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = id_file.with_extension("tmp");
            std::fs::write(&tmp, hex).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, id_file).map_err(|e| e.to_string())?;
        } else {
            let deadline = Instant::now() + Duration::from_secs(60);
            let text = loop {
                if let Ok(t) = std::fs::read_to_string(id_file) {
                    break t;
                }
                if Instant::now() > deadline {
                    return Err(format!("no unique id in {} after 60 s", id_file.display()));
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            for (i, b) in id.iter_mut().enumerate() {
                *b = text
                    .get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a damaged id file")?;
            }
        }
        // nccl.h: ncclCommInitRank
        let init: unsafe extern "C" fn(*mut Comm, c_int, [u8; 128], c_int) -> c_int = nccl.get("ncclCommInitRank")?;
        let mut comm: Comm = std::ptr::null_mut();
        ok("ncclCommInitRank", init(&mut comm, nranks as c_int, id, rank as c_int))?;
        println!("rank {rank} of {nranks}: communicator ready (NCCL version {version})");
        if extra.exit_after_init {
            // Gone without a word: no destroy, no session goodbye beyond the process's own end.
            std::process::exit(0);
        }
        let mut stream = std::ptr::null_mut();
        cuda.check("cuStreamCreate", cuda.cuStreamCreate(&mut stream, 1))?;
        let s = stream as Stream;
        let n = nranks as usize;
        // Not a multiple of the rank count, larger than one staging chunk (8 MiB) and one pipeline piece.
        let count = (9 << 20) / 4 + 3;
        let bytes = count * 4;
        let mine: Vec<f32> = (0..count).map(|i| value(rank, i)).collect();
        let alloc = |len: usize| -> Result<u64, String> {
            let mut p = 0u64;
            cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut p, len.max(1)))?;
            Ok(p)
        };
        let upload = |p: u64, data: &[f32]| {
            cuda.check(
                "cuMemcpyHtoD",
                cuda.cuMemcpyHtoD_v2(p, data.as_ptr() as *const c_void, data.len() * 4),
            )
        };
        let download = |p: u64, len: usize| -> Result<Vec<f32>, String> {
            cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
            let mut out = vec![0f32; len];
            cuda.check(
                "cuMemcpyDtoH",
                cuda.cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut c_void, p, len * 4),
            )?;
            Ok(out)
        };
        let verdict = |what: &str, got: &[f32], want: &dyn Fn(usize) -> f32| -> Result<(), String> {
            match got.iter().enumerate().find(|(i, g)| **g != want(*i)) {
                None => {
                    println!("{what}: verified");
                    Ok(())
                }
                Some((i, g)) => Err(format!("{what}: element {i} is {g}, want {}", want(i))),
            }
        };
        let src = alloc(bytes)?;
        let dst = alloc(bytes * n)?;
        upload(src, &mine)?;
        let all_reduce: Coll = nccl.get("ncclAllReduce")?;
        let sum_all = |i: usize| (0..nranks).map(|r| value(r, i)).sum::<f32>();
        ok(
            "ncclAllReduce",
            all_reduce(src as _, dst as _, count, FLOAT, SUM, comm, s),
        )?;
        verdict("all-reduce f32 sum", &download(dst, count)?, &sum_all)?;
        // In place, average.
        upload(dst, &mine)?;
        ok(
            "ncclAllReduce",
            all_reduce(dst as _, dst as _, count, FLOAT, AVG, comm, s),
        )?;
        verdict("all-reduce f32 avg in place", &download(dst, count)?, &|i| {
            sum_all(i) / n as f32
        })?;
        let ints: Vec<i32> = (0..count).map(|i| (i as i32 % 77) * (rank as i32 + 1) - 30).collect();
        cuda.check(
            "cuMemcpyHtoD",
            cuda.cuMemcpyHtoD_v2(src, ints.as_ptr() as *const c_void, bytes),
        )?;
        ok(
            "ncclAllReduce",
            all_reduce(src as _, dst as _, count, INT32, MAX, comm, s),
        )?;
        cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
        let mut got = vec![0i32; count];
        cuda.check(
            "cuMemcpyDtoH",
            cuda.cuMemcpyDtoH_v2(got.as_mut_ptr() as *mut c_void, dst, bytes),
        )?;
        let want_max = |i: usize| {
            (0..nranks as i32)
                .map(|r| (i as i32 % 77) * (r + 1) - 30)
                .max()
                .unwrap_or(0)
        };
        match got.iter().enumerate().find(|(i, g)| **g != want_max(*i)) {
            None => println!("all-reduce i32 max: verified"),
            Some((i, g)) => return Err(format!("all-reduce i32 max: element {i} is {g}")),
        }
        upload(src, &mine)?;
        let broadcast: Bcast = nccl.get("ncclBroadcast")?;
        let root = nranks - 1;
        ok(
            "ncclBroadcast",
            broadcast(src as _, dst as _, count, FLOAT, root as c_int, comm, s),
        )?;
        verdict("broadcast from the last rank", &download(dst, count)?, &|i| {
            value(root, i)
        })?;
        let reduce: Rooted = nccl.get("ncclReduce")?;
        ok("ncclReduce", reduce(src as _, dst as _, count, FLOAT, MAX, 0, comm, s))?;
        if rank == 0 {
            verdict("reduce max to rank 0", &download(dst, count)?, &|i| {
                value(nranks - 1, i)
            })?;
        } else {
            cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
            println!("reduce max to rank 0: sent");
        }
        let all_gather: Gather = nccl.get("ncclAllGather")?;
        ok("ncclAllGather", all_gather(src as _, dst as _, count, FLOAT, comm, s))?;
        verdict("all-gather", &download(dst, count * n)?, &|i| {
            value((i / count) as u32, i % count)
        })?;
        // Reduce-scatter of the gathered buffer: block r of the sum is n times rank r's input.
        let reduce_scatter: Coll = nccl.get("ncclReduceScatter")?;
        ok(
            "ncclReduceScatter",
            reduce_scatter(dst as _, src as _, count, FLOAT, SUM, comm, s),
        )?;
        verdict("reduce-scatter sum", &download(src, count)?, &|i| {
            value(rank, i) * n as f32
        })?;
        // A ring of sends and receives in one group: each rank gets the previous rank's input.
        upload(src, &mine)?;
        let send: P2p = nccl.get("ncclSend")?;
        // nccl.h: ncclRecv
        let recv: unsafe extern "C" fn(*mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int =
            nccl.get("ncclRecv")?;
        // nccl.h: ncclGroupStart
        let group_start: unsafe extern "C" fn() -> c_int = nccl.get("ncclGroupStart")?;
        // nccl.h: ncclGroupEnd
        let group_end: unsafe extern "C" fn() -> c_int = nccl.get("ncclGroupEnd")?;
        let (next, prev) = ((rank + 1) % nranks, (rank + nranks - 1) % nranks);
        ok("ncclGroupStart", group_start())?;
        ok("ncclRecv", recv(dst as _, count, FLOAT, prev as c_int, comm, s))?;
        ok("ncclSend", send(src as _, count, FLOAT, next as c_int, comm, s))?;
        ok("ncclGroupEnd", group_end())?;
        verdict("send/recv ring", &download(dst, count)?, &|i| value(prev, i))?;
        // The same with each rank's send on another stream than its receive: the two halves run at once on the
        // server (each stream's lane), so neither rank's send waits for a receive queued behind it.
        let mut other = std::ptr::null_mut();
        cuda.check("cuStreamCreate", cuda.cuStreamCreate(&mut other, 1))?;
        upload(dst, &vec![0f32; count])?;
        ok("ncclGroupStart", group_start())?;
        ok(
            "ncclSend",
            send(src as _, count, FLOAT, next as c_int, comm, other as Stream),
        )?;
        ok("ncclRecv", recv(dst as _, count, FLOAT, prev as c_int, comm, s))?;
        ok("ncclGroupEnd", group_end())?;
        cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(other))?;
        verdict("send/recv ring on two streams", &download(dst, count)?, &|i| {
            value(prev, i)
        })?;
        cuda.check("cuStreamDestroy", cuda.cuStreamDestroy_v2(other))?;
        // A split: ranks in reverse order (keys descending); with three ranks or more the last joins none.
        // nccl.h: ncclCommSplit
        let split: unsafe extern "C" fn(Comm, c_int, c_int, *mut Comm, *mut c_void) -> c_int =
            nccl.get("ncclCommSplit")?;
        // nccl.h: ncclCommUserRank
        let user_rank: unsafe extern "C" fn(Comm, *mut c_int) -> c_int = nccl.get("ncclCommUserRank")?;
        let left_out = nranks > 2 && rank == nranks - 1;
        let color = if left_out { -1 } else { 7 };
        let mut child: Comm = std::ptr::null_mut();
        ok(
            "ncclCommSplit",
            split(comm, color, (nranks - rank) as c_int, &mut child, std::ptr::null_mut()),
        )?;
        if left_out {
            if !child.is_null() {
                return Err("a rank without a color got a communicator".into());
            }
            println!("split: verified (no color)");
        } else {
            let members = if nranks > 2 { nranks - 1 } else { nranks };
            let mut new_rank: c_int = -1;
            ok("ncclCommUserRank", user_rank(child, &mut new_rank))?;
            if new_rank != (members - 1 - rank) as c_int {
                return Err(format!("split: rank {rank} became {new_rank}"));
            }
            upload(src, &mine)?;
            ok(
                "ncclAllReduce",
                all_reduce(src as _, dst as _, count, FLOAT, SUM, child, s),
            )?;
            let sum_members = |i: usize| (0..members).map(|r| value(r, i)).sum::<f32>();
            verdict(
                "split: verified; all-reduce on it",
                &download(dst, count)?,
                &sum_members,
            )?;
            // nccl.h: ncclCommDestroy
            let destroy: unsafe extern "C" fn(Comm) -> c_int = nccl.get("ncclCommDestroy")?;
            ok("ncclCommDestroy", destroy(child))?;
        }
        if extra.bench_mib > 0 {
            bench(&cuda, &nccl, comm, stream, extra.bench_mib, n)?;
        }
        // nccl.h: ncclCommDestroy
        let destroy: unsafe extern "C" fn(Comm) -> c_int = nccl.get("ncclCommDestroy")?;
        ok("ncclCommDestroy", destroy(comm))?;
        cuda.check("cuMemFree", cuda.cuMemFree_v2(src))?;
        cuda.check("cuMemFree", cuda.cuMemFree_v2(dst))?;
        println!("rank {rank}: every collective verified");
    }
    Ok(())
}

/// All-reduce bus bandwidth over `mib` MiB (NCCL's definition: 2 (n − 1) / n × size ÷ time) and the client's own
/// transport bytes during it.
unsafe fn bench(
    cuda: &Cuda,
    nccl: &Nccl,
    comm: Comm,
    stream: *mut vgpu_cuda_sys::driver::CUstream_st,
    mib: u64,
    n: usize,
) -> Result<(), String> {
    let all_reduce: Coll = nccl.get("ncclAllReduce")?;
    let bytes = (mib as usize) << 20;
    let mut buf = 0u64;
    // SAFETY: as in `run`.
    unsafe {
        cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut buf, bytes))?;
        ok(
            "ncclAllReduce",
            all_reduce(buf as _, buf as _, bytes / 4, FLOAT, SUM, comm, stream as _),
        )?;
        cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
        let before = crate::multicheck::traffic(cuda);
        let reps = 3;
        let t = Instant::now();
        for _ in 0..reps {
            ok(
                "ncclAllReduce",
                all_reduce(buf as _, buf as _, bytes / 4, FLOAT, SUM, comm, stream as _),
            )?;
        }
        cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
        let secs = t.elapsed().as_secs_f64() / reps as f64;
        let bus = 2.0 * (n as f64 - 1.0) / n as f64 * bytes as f64 / secs / 1e9;
        println!(
            "bench all-reduce: {mib} MiB in {:.2} ms, bus bandwidth {bus:.3} GB/s; client transport bytes during it: {}",
            secs * 1e3,
            crate::multicheck::traffic(cuda).saturating_sub(before)
        );
        cuda.check("cuMemFree", cuda.cuMemFree_v2(buf))
    }
}

/// `--all-devices`: one thread drives every visible device as one communicator (`ncclCommInitAll`), issuing an
/// all-reduce on each device's stream in one group and only then waiting: each rank's collective must not wait for
/// the next rank's, which this same thread issues after it (the devices may sit on one server, on one channel).
pub fn run_all_devices() -> Result<(), String> {
    let (cuda, nccl) = open()?;
    // nccl.h: ncclCommInitAll
    let init_all: unsafe extern "C" fn(*mut Comm, c_int, *const c_int) -> c_int = nccl.get("ncclCommInitAll")?;
    // nccl.h: ncclGroupStart
    let group_start: unsafe extern "C" fn() -> c_int = nccl.get("ncclGroupStart")?;
    // nccl.h: ncclGroupEnd
    let group_end: unsafe extern "C" fn() -> c_int = nccl.get("ncclGroupEnd")?;
    let all_reduce: Coll = nccl.get("ncclAllReduce")?;
    let count = (9 << 20) / 4 + 3;
    // SAFETY (this function): documented driver and NCCL calls; out-pointers are locals, buffers outlive the calls
    // (every stream is synchronized before its buffers are read).
    unsafe {
        cuda.check("cuInit", cuda.cuInit(0))?;
        let mut n: c_int = 0;
        cuda.check("cuDeviceGetCount", cuda.cuDeviceGetCount(&mut n))?;
        if n < 2 {
            return Err(format!("--all-devices needs two devices or more, sees {n}"));
        }
        let devices: Vec<c_int> = (0..n).collect();
        let mut comms: Vec<Comm> = vec![std::ptr::null_mut(); n as usize];
        ok("ncclCommInitAll", init_all(comms.as_mut_ptr(), n, devices.as_ptr()))?;
        let mut per_device = Vec::new();
        for d in 0..n {
            let mut ctx = std::ptr::null_mut();
            cuda.check("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(&mut ctx, d))?;
            cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))?;
            let mut stream = std::ptr::null_mut();
            cuda.check("cuStreamCreate", cuda.cuStreamCreate(&mut stream, 1))?;
            let (mut src, mut dst) = (0u64, 0u64);
            cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut src, count * 4))?;
            cuda.check("cuMemAlloc", cuda.cuMemAlloc_v2(&mut dst, count * 4))?;
            let mine: Vec<f32> = (0..count).map(|i| value(d as u32, i)).collect();
            cuda.check(
                "cuMemcpyHtoD",
                cuda.cuMemcpyHtoD_v2(src, mine.as_ptr() as *const c_void, count * 4),
            )?;
            per_device.push((ctx, stream, src, dst));
        }
        let started = Instant::now();
        ok("ncclGroupStart", group_start())?;
        for (d, &(ctx, stream, src, dst)) in per_device.iter().enumerate() {
            cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))?;
            let r = all_reduce(src as _, dst as _, count, FLOAT, SUM, comms[d], stream as Stream);
            ok("ncclAllReduce", r)?;
        }
        ok("ncclGroupEnd", group_end())?;
        let want: Vec<f32> = (0..count).map(|i| (0..n as u32).map(|r| value(r, i)).sum()).collect();
        for (d, &(ctx, stream, _, dst)) in per_device.iter().enumerate() {
            cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))?;
            cuda.check("cuStreamSynchronize", cuda.cuStreamSynchronize(stream))?;
            let mut got = vec![0f32; count];
            cuda.check(
                "cuMemcpyDtoH",
                cuda.cuMemcpyDtoH_v2(got.as_mut_ptr() as *mut c_void, dst, count * 4),
            )?;
            if let Some(i) = (0..count).find(|&i| got[i] != want[i]) {
                return Err(format!("device {d}: element {i} is {}, want {}", got[i], want[i]));
            }
        }
        println!(
            "all devices ({n}) from one thread: all-reduce verified in {} ms",
            started.elapsed().as_millis()
        );
        // A collective in a stream capture would run at once instead of at the graph's launch: refused.
        let (ctx, stream, src, dst) = per_device[0];
        cuda.check("cuCtxSetCurrent", cuda.cuCtxSetCurrent(ctx))?;
        cuda.check(
            "cuStreamBeginCapture",
            cuda.cuStreamBeginCapture_v2(
                stream,
                vgpu_cuda_sys::driver::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL,
            ),
        )?;
        let r = all_reduce(src as _, dst as _, count, FLOAT, SUM, comms[0], stream as Stream);
        let mut graph = std::ptr::null_mut();
        let ended = cuda.cuStreamEndCapture(stream, &mut graph);
        if r == 0 {
            return Err("a collective in a stream capture was accepted".into());
        }
        if !graph.is_null() {
            cuda.cuGraphDestroy(graph);
        }
        println!(
            "a collective in a stream capture: refused (ncclResult {r}, capture ended with {})",
            ended.0
        );
    }
    Ok(())
}
