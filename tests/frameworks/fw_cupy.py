"""CuPy parts (issue 20): array math with cuBLAS, NVRTC-compiled kernels, cuFFT, cuSOLVER, cuRAND, cuSPARSE, CuPy's
memory pools, pinned memory, streams and events, and CUDA graphs captured from a stream.

Inputs come from numpy generators on the host (the same numbers everywhere); results are copied back and
summed on the host (common.asum), with a digest of their bytes: the same kernels on the same GPU must give
bit-identical results natively and through vGPU.
"""
from __future__ import annotations

import time

from common import SEED, Ctx, Skip, asum, median, per_call_us

cp = None
np = None


def setup(ctx: Ctx) -> dict:
    global cp, np
    try:
        import numpy
        import cupy
    except Exception as e:  # noqa: BLE001 - any import failure means: not usable here
        raise Skip(f"cupy is not importable: {type(e).__name__}: {e}")
    cp, np = cupy, numpy
    dev = cp.cuda.Device(0)
    dev.use()
    ctx.sync = dev.synchronize
    t = time.perf_counter()
    cp.zeros(1, dtype=cp.float32).get()  # context, first allocation, first kernel
    return {
        "cupy": cp.__version__,
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cp.cuda.runtime.driverGetVersion(),
        "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(errors="replace"),
        "first_array_s": time.perf_counter() - t,
    }


def rng(k: int):
    return np.random.default_rng(SEED + k)


def p_smoke(ctx: Ctx) -> dict:
    """Initialise, allocate, copy both ways, memset, device-to-device copy, compile and load a module: everything
    here is checked in-process, and holds on the emulated backend too (memory and copies are real there)."""
    host = rng(1).standard_normal(1 << 20).astype(np.float32)
    t = time.perf_counter()
    dev = cp.asarray(host)
    back = cp.asnumpy(dev)
    copy_ms = (time.perf_counter() - t) * 1e3
    if not np.array_equal(back, host):
        raise AssertionError("host -> device -> host round trip changed the data")
    z = cp.zeros(12345, dtype=cp.int32)  # memset
    if cp.asnumpy(z).any():
        raise AssertionError("cupy.zeros read back non-zero")
    d2 = cp.empty_like(dev)
    d2.data.copy_from_device(dev.data, dev.nbytes)  # cuMemcpyDtoD
    if not np.array_equal(cp.asnumpy(d2), host):
        raise AssertionError("device -> device copy changed the data")
    mod = cp.RawModule(code=r'''
        extern "C" __global__ void scale(float *x, float a, int n) {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) x[i] *= a;
        }''')
    fn = mod.get_function("scale")  # NVRTC compile, cuModuleLoadData, cuModuleGetFunction
    fn((host.size // 256,), (256,), (dev, np.float32(2.0), np.int32(host.size)))
    ctx.sync()
    free, total = cp.cuda.runtime.memGetInfo()
    checks = {"round_trip": asum(back), "zeros": int(cp.asnumpy(z).sum()), "free_le_total": bool(free <= total)}
    if not ctx.emulated:
        checks["scaled"] = asum(cp.asnumpy(dev))
    return {"checks": checks, "timing": {"primary": "copy_4MiB_round_trip_ms", "copy_4MiB_round_trip_ms": copy_ms}}


def p_math(ctx: Ctx) -> dict:
    g = rng(2)
    n = ctx.q(1024, 128)
    a = cp.asarray(g.standard_normal((n, n)).astype(np.float32))
    b = cp.asarray(g.standard_normal((n, n)).astype(np.float32))
    a64 = a.astype(cp.float64)
    v = cp.asarray(g.standard_normal(1 << 18).astype(np.float32))
    ew = cp.tanh(a) * cp.exp(-b * b) + cp.sqrt(cp.abs(a)) - a[:, :1] * b[:1, :]  # ufuncs and broadcasting
    red = {"sum": float(a.sum()), "mean_axis0": asum(cp.asnumpy(a.mean(axis=0))), "std": float(b.std()),
           "argmax": int(a.argmax()), "max_axis1": asum(cp.asnumpy(b.max(axis=1)))}
    mm = a @ b  # cuBLAS sgemm
    mm64 = a64 @ a64.T  # cuBLAS dgemm
    srt = cp.sort(v)
    cs = cp.cumsum(v[:4096].astype(cp.float64))
    ctx.sync()
    checks = {"elementwise": asum(cp.asnumpy(ew)), "reductions": red, "matmul_f32": asum(cp.asnumpy(mm)),
              "matmul_f64": asum(cp.asnumpy(mm64)), "sort": asum(cp.asnumpy(srt)), "cumsum": asum(cp.asnumpy(cs))}
    return {"checks": checks,
            "timing": {"primary": "sgemm_us", "sgemm_us": per_call_us(lambda: a @ b, ctx.q(50, 5), ctx.sync),
                       "elementwise_us": per_call_us(lambda: cp.tanh(a) * b + 1.0, ctx.q(200, 10), ctx.sync)},
            "config": {"n": n}}


def p_kernels(ctx: Ctx) -> dict:
    g = rng(3)
    n = ctx.q(1 << 20, 1 << 14)
    x = cp.asarray(g.standard_normal(n).astype(np.float32))
    y = cp.asarray(g.standard_normal(n).astype(np.float32))
    raw = cp.RawKernel(r'''
        extern "C" __global__ void saxpy(float a, const float *x, const float *y, float *out, unsigned n) {
            for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
                out[i] = a * x[i] + y[i];
        }''', "saxpy")
    out = cp.empty_like(x)
    raw((128,), (256,), (np.float32(1.5), x, y, out, np.uint32(n)))
    sqdiff = cp.ElementwiseKernel("float32 a, float32 b", "float32 c", "c = (a - b) * (a - b)", "fw_sqdiff")
    l2 = cp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = sqrt(a)", "0", "fw_l2norm")
    tmpl = cp.RawModule(code=r'''
        template<typename T> __global__ void twice(T *x, int n) {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) x[i] = x[i] + x[i];
        }''', options=("-std=c++17",), name_expressions=("twice<float>", "twice<int>"))
    ints = cp.arange(4096, dtype=cp.int32)
    tmpl.get_function("twice<int>")((16,), (256,), (ints, np.int32(4096)))
    fl = x[:4096].copy()
    tmpl.get_function("twice<float>")((16,), (256,), (fl, np.int32(4096)))
    sq = sqdiff(x, y)
    norm = l2(x)
    ctx.sync()
    return {"checks": {"raw_saxpy": asum(cp.asnumpy(out)), "elementwise_sqdiff": asum(cp.asnumpy(sq)),
                       "reduction_l2": float(norm), "template_int": int(cp.asnumpy(ints).astype(np.int64).sum()),
                       "template_float": asum(cp.asnumpy(fl))},
            "timing": {"primary": "raw_launch_us",
                       "raw_launch_us": per_call_us(lambda: raw((128,), (256,), (np.float32(1.5), x, y, out,
                                                                                 np.uint32(n))), ctx.q(500, 20),
                                                    ctx.sync),
                       "reduction_us": per_call_us(lambda: l2(x), ctx.q(200, 10), ctx.sync)}}


def p_fft(ctx: Ctx) -> dict:
    g = rng(4)
    rows, n = ctx.q((64, 4096), (4, 256))
    x = cp.asarray(g.standard_normal((rows, n)).astype(np.float32))
    c = cp.asarray((g.standard_normal((128, 128)) + 1j * g.standard_normal((128, 128))).astype(np.complex64))
    spec = cp.fft.rfft(x, axis=1)
    back = cp.fft.irfft(spec, n=n, axis=1)
    f2 = cp.fft.fft2(c)
    ctx.sync()
    return {"checks": {"rfft_abs": asum(cp.asnumpy(cp.abs(spec))), "round_trip": asum(cp.asnumpy(back)),
                       "fft2_real": asum(cp.asnumpy(f2.real)), "fft2_imag": asum(cp.asnumpy(f2.imag))},
            "timing": {"primary": "rfft_us", "rfft_us": per_call_us(lambda: cp.fft.rfft(x, axis=1), ctx.q(200, 5),
                                                                    ctx.sync)}}


def p_linalg(ctx: Ctx) -> dict:
    g = rng(5)
    n = ctx.q(256, 32)
    a = g.standard_normal((n, n))
    spd = cp.asarray(a @ a.T / n + np.eye(n))
    ad = cp.asarray(a)
    rhs = cp.asarray(g.standard_normal((n, 8)))
    chol = cp.linalg.cholesky(spd)
    sol = cp.linalg.solve(spd, rhs)
    w = cp.linalg.eigvalsh(spd)
    q, r = cp.linalg.qr(ad)
    s = cp.linalg.svd(ad, compute_uv=False)
    inv = cp.linalg.inv(spd)
    ctx.sync()
    t = time.perf_counter()
    cp.linalg.solve(spd, rhs)
    ctx.sync()
    solve_ms = (time.perf_counter() - t) * 1e3
    return {"checks": {"cholesky": asum(cp.asnumpy(chol)), "solve": asum(cp.asnumpy(sol)),
                       "eigvalsh": asum(cp.asnumpy(w)), "qr_r_diag_abs": asum(cp.asnumpy(cp.abs(cp.diag(r)))),
                       "svdvals": asum(cp.asnumpy(s)), "inv": asum(cp.asnumpy(inv)),
                       "qr_residual_small": bool(float(cp.abs(q @ r - ad).max()) < 1e-8) or ctx.emulated},
            "timing": {"primary": "solve_ms", "solve_ms": solve_ms}}


def p_random(ctx: Ctx) -> dict:
    n = ctx.q(1 << 20, 1 << 12)
    rs = cp.random.RandomState(SEED)  # cuRAND (XORWOW) generator
    u = rs.uniform(size=n, dtype=cp.float32)
    nrm = rs.standard_normal(size=n, dtype=cp.float64)
    gen = cp.random.default_rng(SEED)  # CuPy's own bit generator kernels
    ints = gen.integers(0, 1000, size=4096)
    perm = cp.random.RandomState(SEED + 1).permutation(1000)
    ctx.sync()
    return {"checks": {"curand_uniform": asum(cp.asnumpy(u)), "curand_normal": asum(cp.asnumpy(nrm)),
                       "generator_integers": asum(cp.asnumpy(ints)), "permutation_first10":
                       [int(v) for v in cp.asnumpy(perm)[:10]]},
            "timing": {"primary": "uniform_us", "uniform_us": per_call_us(lambda: rs.uniform(size=n, dtype=cp.float32),
                                                                          ctx.q(100, 5), ctx.sync)}}


def p_sparse(ctx: Ctx) -> dict:
    try:
        import cupyx.scipy.sparse as sparse
    except Exception as e:  # noqa: BLE001
        raise Skip(f"cupyx.scipy.sparse is not importable: {e}")
    g = rng(6)
    dense = g.standard_normal((512, 512)).astype(np.float32)
    dense[g.random((512, 512)) > 0.02] = 0
    csr = sparse.csr_matrix(cp.asarray(dense))
    rhs = cp.asarray(g.standard_normal((512, 64)).astype(np.float32))
    vec = cp.asarray(g.standard_normal(512).astype(np.float32))
    out = csr @ rhs  # cuSPARSE SpMM
    mv = csr @ vec  # cuSPARSE SpMV
    ctx.sync()
    return {"checks": {"nnz": int(csr.nnz), "spmm": asum(cp.asnumpy(out)), "spmv": asum(cp.asnumpy(mv))},
            "timing": {"primary": "spmm_us", "spmm_us": per_call_us(lambda: csr @ rhs, ctx.q(100, 5), ctx.sync)}}


def p_pinned_pools(ctx: Ctx) -> dict:
    """Pinned host memory (cupyx.empty_pinned, the pinned memory pool), asynchronous copies through it, the
    device memory pool's accounting and the stream-ordered pool (cudaMallocAsync)."""
    import cupyx

    g = rng(7)
    n = ctx.q(1 << 22, 1 << 16)
    src = cupyx.empty_pinned((n,), dtype=np.float32)
    src[:] = g.standard_normal(n).astype(np.float32)
    dst = cupyx.empty_pinned((n,), dtype=np.float32)
    s = cp.cuda.Stream(non_blocking=True)
    d = cp.empty(n, dtype=cp.float32)
    t = time.perf_counter()
    d.set(src, stream=s)  # pinned -> device, asynchronous
    d.get(stream=s, out=dst)  # device -> pinned, asynchronous
    s.synchronize()
    copy_ms = (time.perf_counter() - t) * 1e3
    if not np.array_equal(src, dst):
        raise AssertionError("pinned round trip changed the data")
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    before = pool.used_bytes()
    blk = cp.empty(64 << 20, dtype=cp.uint8)
    grown = pool.used_bytes() - before
    del blk
    pool.free_all_blocks()
    pinned_pool = cp.get_default_pinned_memory_pool()
    checks = {"round_trip": asum(dst), "pool_growth": int(grown), "pool_after_free": int(pool.used_bytes() - before),
              "pinned_pool_free_blocks_ge0": pinned_pool.n_free_blocks() >= 0}
    try:
        apool = cp.cuda.MemoryAsyncPool()
    except Exception as e:  # noqa: BLE001 - a CuPy build or driver without cudaMallocAsync
        checks["async_pool"] = f"unavailable: {type(e).__name__}"
    else:
        with s:
            mem = apool.malloc(1 << 20)
            arr = cp.ndarray((1 << 18,), dtype=cp.float32, memptr=mem)
            arr.fill(3.0)
            checks["async_pool_fill"] = float(arr[:16].sum().get()) if not ctx.emulated else 48.0
            del arr, mem
        s.synchronize()
    return {"checks": checks, "timing": {"primary": "pinned_round_trip_ms", "pinned_round_trip_ms": copy_ms,
                                         "bytes": n * 4}}


def p_streams_events(ctx: Ctx) -> dict:
    g = rng(8)
    n = ctx.q(2048, 128)
    a = cp.asarray(g.standard_normal((n, n)).astype(np.float32))
    s1, s2 = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    start, mid, end = cp.cuda.Event(), cp.cuda.Event(), cp.cuda.Event()
    start.record(cp.cuda.get_current_stream())
    s1.wait_event(start)
    with s1:
        b = a @ a
        mid.record(s1)
    s2.wait_event(mid)  # s2 consumes s1's result
    with s2:
        c = cp.maximum(b - b.mean(), 0)
        end.record(s2)
    called = []
    s2.add_callback(lambda stream, status, arg: called.append(status), None)  # host callback
    end.synchronize()
    s2.synchronize()
    ms = cp.cuda.get_elapsed_time(start, end)
    return {"checks": {"result": asum(cp.asnumpy(c)), "end_done": bool(end.done), "callback_status": called,
                       "elapsed_nonneg": bool(ms >= 0)},
            "timing": {"primary": "event_elapsed_ms", "event_elapsed_ms": ms}}


def p_cuda_graph(ctx: Ctx) -> dict:
    """Capture a short sequence of kernels on a stream (cudaStreamBeginCapture), replay it, compare with the
    same work run eagerly."""
    g = rng(9)
    n = ctx.q(1 << 20, 1 << 12)
    x0 = g.standard_normal(n).astype(np.float32)
    x = cp.asarray(x0)
    w = cp.asarray(g.standard_normal(n).astype(np.float32))

    def step():
        x[...] = cp.tanh(x * 0.9 + w * 0.1)  # in place: the graph's buffers stay the same

    s = cp.cuda.Stream(non_blocking=True)
    with s:
        step()  # warm-up: kernels compiled and loaded before capture
        s.synchronize()
        x.set(x0, stream=s)
        s.begin_capture()
        for _ in range(4):
            step()
        graph = s.end_capture()
    replays = ctx.q(50, 5)
    times = []
    for _ in range(replays):
        t = time.perf_counter()
        graph.launch(stream=s)
        s.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    got = cp.asnumpy(x)
    x.set(x0)
    for _ in range(4 * replays):
        step()
    eager = cp.asnumpy(x)
    return {"checks": {"replayed": asum(got), "eager": asum(eager)},
            "self_check": {"ok": bool(np.array_equal(got, eager)), "what": "graph replays vs eager, bit-identical",
                           "value": float(np.abs(got.astype(np.float64) - eager).max())},
            "timing": {"primary": "graph_replay_us", "graph_replay_us": median(times) * 1e3}}


PARTS = [
    ("smoke", p_smoke),
    ("math", p_math),
    ("kernels", p_kernels),
    ("fft", p_fft),
    ("linalg", p_linalg),
    ("random", p_random),
    ("sparse", p_sparse),
    ("pinned_pools", p_pinned_pools),
    ("streams_events", p_streams_events),
    ("cuda_graph", p_cuda_graph),
]
