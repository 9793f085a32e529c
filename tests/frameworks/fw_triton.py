"""Triton parts (issue 20): @triton.jit kernels launched directly (no torch.compile): Triton's own compiler, its cubin
loading (cuModuleLoadData) and its launcher, a small C extension Triton builds with the host compiler and links
against whichever libcuda.so.1 the process loads (vGPU's shim under `vgpu run`).

Tensors are PyTorch's where PyTorch with CUDA is importable (how Triton is used), else CuPy's: Triton 3.6's CUDA
driver takes the current device and stream from torch.cuda, so without PyTorch a small driver class gives it
CuPy's instead (CupyCudaDriver below; everything else is Triton's own code). Fixed block sizes, no autotuning:
the same kernels run natively and through vGPU, so results must be bit-identical.
"""
from __future__ import annotations

import time

from common import SEED, Ctx, Skip, asum, median, per_call_us

triton = None
tl = None
np = None
T = None  # the tensor library in use: a small adapter over torch or cupy


class _Torch:
    name = "torch"

    def __init__(self, torch):
        self.torch = torch
        self.dev = torch.device("cuda", 0)

    def to_device(self, a):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.dev)

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=getattr(self.torch, dtype), device=self.dev)

    def to_host(self, t):
        return t.cpu().numpy()

    def arg(self, t):
        return t

    def sync(self):
        self.torch.cuda.synchronize()


class _Cupy:
    name = "cupy"

    class Ptr:
        """What Triton needs of a tensor argument: data_ptr() and a dtype whose name it knows."""

        def __init__(self, a):
            self.a = a
            self.dtype = a.dtype

        def data_ptr(self):
            return self.a.data.ptr

    def __init__(self, cp):
        self.cp = cp

    def to_device(self, a):
        return self.cp.asarray(a)

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype=dtype)

    def to_host(self, t):
        return self.cp.asnumpy(t)

    def arg(self, t):
        return self.Ptr(t)

    def sync(self):
        self.cp.cuda.Device().synchronize()


def _cupy_driver(cp):
    from triton.backends.nvidia.driver import CudaDriver, CudaLauncher, CudaUtils

    class CupyCudaDriver(CudaDriver):
        """Triton's CUDA driver with CuPy's current device and stream instead of torch.cuda's."""

        def __init__(self):  # noqa: D401 - replaces GPUDriver.__init__, which imports torch
            self.utils = CudaUtils()
            self.launcher_cls = CudaLauncher
            self.get_device_capability = lambda d=None: tuple(
                int(c) for c in cp.cuda.Device(cp.cuda.Device().id if d is None else d).compute_capability)
            self.get_current_stream = lambda d=None: cp.cuda.get_current_stream().ptr
            self.get_current_device = lambda: cp.cuda.Device().id
            self.set_current_device = lambda d: cp.cuda.Device(d).use()

    return CupyCudaDriver()


def setup(ctx: Ctx) -> dict:
    global triton, tl, np, T
    try:
        import numpy
        import triton as triton_
        import triton.language as tl_
    except Exception as e:  # noqa: BLE001
        raise Skip(f"triton is not importable: {type(e).__name__}: {e}")
    triton, tl, np = triton_, tl_, numpy
    info = {"triton": triton.__version__}
    try:
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch.cuda.is_available() is False")
        T = _Torch(torch)
        info["tensors"] = f"torch {torch.__version__}"
    except Exception as torch_err:  # noqa: BLE001
        try:
            import cupy
        except Exception as e:  # noqa: BLE001
            raise Skip(f"triton needs torch or cupy for its tensors here: torch: {torch_err}; cupy: {e}")
        T = _Cupy(cupy)
        triton.runtime.driver.set_active(_cupy_driver(cupy))
        info["tensors"] = f"cupy {cupy.__version__} (torch: {type(torch_err).__name__}: {torch_err})"
    ctx.sync = T.sync
    info["target"] = str(triton.runtime.driver.active.get_current_target())
    return info


def rng(k: int):
    return np.random.default_rng(SEED + k)


# ---- kernels --------------------------------------------------------------------------------------------------
# Defined on first use: @triton.jit needs triton imported (setup()).
_K: dict = {}


def kernels() -> dict:
    if _K:
        return _K

    @triton.jit
    def add(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)

    @triton.jit
    def softmax(out_ptr, in_ptr, stride, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        x = tl.load(in_ptr + row * stride + cols, mask=cols < n_cols, other=-float("inf"))
        x = x - tl.max(x, axis=0)
        e = tl.exp(x)
        tl.store(out_ptr + row * stride + cols, e / tl.sum(e, axis=0), mask=cols < n_cols)

    @triton.jit
    def matmul(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        pm, pn = tl.program_id(0), tl.program_id(1)
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(0, K, BK):
            a = tl.load(a_ptr + rm[:, None] * sam + (k + rk)[None, :] * sak,
                        mask=(rm[:, None] < M) & ((k + rk)[None, :] < K), other=0.0)
            b = tl.load(b_ptr + (k + rk)[:, None] * sbk + rn[None, :] * sbn,
                        mask=((k + rk)[:, None] < K) & (rn[None, :] < N), other=0.0)
            acc += tl.dot(a, b)
        tl.store(c_ptr + rm[:, None] * scm + rn[None, :] * scn, acc.to(tl.float16),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def histogram(x_ptr, hist_ptr, n, BINS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        v = tl.load(x_ptr + offs, mask=offs < n, other=0)
        tl.atomic_add(hist_ptr + (v % BINS), 1, mask=offs < n)  # integer atomics: order does not matter

    _K.update(add=add, softmax=softmax, matmul=matmul, histogram=histogram)
    return _K


def p_smoke(ctx: Ctx) -> dict:
    """Triton's driver, a compiled kernel loaded and launched (its launcher built and linked against libcuda.so.1),
    and copies both ways, checked in-process (copies are real on the emulated backend too)."""
    x0 = rng(1).standard_normal(4096).astype(np.float32)
    x = T.to_device(x0)
    if not np.array_equal(T.to_host(x), x0):
        raise AssertionError("host -> device -> host round trip changed the data")
    out = T.empty((4096,), "float32")
    t = time.perf_counter()
    k = kernels()["add"][(4,)](T.arg(x), T.arg(x), T.arg(out), 4096, BLOCK=1024)
    T.sync()
    first_s = time.perf_counter() - t
    checks = {"round_trip": asum(x0), "kernel": k.name, "n_regs_known": getattr(k, "n_regs", None) is not None}
    if not ctx.emulated:
        checks["doubled"] = asum(T.to_host(out))
    return {"checks": checks, "timing": {"primary": "first_launch_s", "first_launch_s": first_s}}


def p_vector_add(ctx: Ctx) -> dict:
    g = rng(2)
    n = ctx.q(1 << 22, 1 << 14)
    x = T.to_device(g.standard_normal(n).astype(np.float32))
    y = T.to_device(g.standard_normal(n).astype(np.float32))
    out = T.empty((n,), "float32")
    add = kernels()["add"]
    grid = (triton.cdiv(n, 1024),)

    def launch():
        add[grid](T.arg(x), T.arg(y), T.arg(out), n, BLOCK=1024)

    launch()
    T.sync()
    return {"checks": {"sum": asum(T.to_host(out))},
            "timing": {"primary": "launch_us", "launch_us": per_call_us(launch, ctx.q(500, 10), T.sync)}}


def p_softmax(ctx: Ctx) -> dict:
    g = rng(3)
    rows, cols = ctx.q((4096, 781), (64, 100))
    x = T.to_device(g.standard_normal((rows, cols)).astype(np.float32))
    out = T.empty((rows, cols), "float32")
    block = triton.next_power_of_2(cols)
    sm = kernels()["softmax"]

    def launch():
        sm[(rows,)](T.arg(out), T.arg(x), cols, cols, BLOCK=block)

    launch()
    T.sync()
    return {"checks": {"softmax": asum(T.to_host(out))},
            "timing": {"primary": "softmax_us", "softmax_us": per_call_us(launch, ctx.q(200, 5), T.sync)}}


def p_matmul(ctx: Ctx) -> dict:
    g = rng(4)
    M, N, K = ctx.q((1024, 1024, 1024), (64, 64, 64))
    a = T.to_device(g.standard_normal((M, K)).astype(np.float16))
    b = T.to_device(g.standard_normal((K, N)).astype(np.float16))
    c = T.empty((M, N), "float16")
    mm = kernels()["matmul"]
    BM, BN, BK = 64, 64, 32
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))

    def launch():
        mm[grid](T.arg(a), T.arg(b), T.arg(c), M, N, K, K, 1, N, 1, N, 1, BM=BM, BN=BN, BK=BK)

    t = time.perf_counter()
    launch()
    T.sync()
    first_s = time.perf_counter() - t
    times = []
    for _ in range(ctx.q(20, 2)):
        t = time.perf_counter()
        launch()
        T.sync()
        times.append((time.perf_counter() - t) * 1e3)
    return {"checks": {"c": asum(T.to_host(c))},
            "timing": {"primary": "matmul_ms", "matmul_ms": median(times), "first_call_s": first_s}}


def p_histogram(ctx: Ctx) -> dict:
    g = rng(5)
    n = ctx.q(1 << 20, 1 << 12)
    x = T.to_device(g.integers(0, 1 << 20, n).astype(np.int32))
    hist = T.to_device(np.zeros(256, np.int32))
    kernels()["histogram"][(triton.cdiv(n, 1024),)](T.arg(x), T.arg(hist), n, BINS=256, BLOCK=1024)
    T.sync()
    h = T.to_host(hist)
    return {"checks": {"histogram": [int(v) for v in h[:16]], "total": int(h.astype(np.int64).sum())},
            "timing": {}}


PARTS = [
    ("smoke", p_smoke),
    ("vector_add", p_vector_add),
    ("softmax", p_softmax),
    ("matmul", p_matmul),
    ("histogram", p_histogram),
]
