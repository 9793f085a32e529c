"""JAX parts (issue 20): a jitted MLP trained some steps, lax.scan, convolutions (cuDNN), FFT (cuFFT), vmap, jax.random
and a few cuSOLVER factorizations, all through XLA's CUDA plugin: its BFC allocator (pre-allocating 75 % of the GPU
unless XLA_PYTHON_CLIENT_PREALLOCATE=false, which workloads.py sets for `jax_noprealloc`), cuModuleLoadData of
XLA-compiled cubins, command buffers (CUDA graphs) and host callbacks.

JAX runs with JAX_PLATFORMS=cuda,cpu (a CUDA failure is an error, never a silent fall back to the CPU) and
XLA_FLAGS=--xla_gpu_deterministic_ops=true --xla_gpu_autotune_level=0 (no atomics in reductions, no timing-based
choice of kernels), so a vGPU run must give the same bits as the native one. Inputs come from numpy generators on the host.
"""
from __future__ import annotations

import os
import time

from common import SEED, Ctx, Skip, asum, median, per_call_us, timed_steps

jax = None
jnp = None
np = None


def setup(ctx: Ctx) -> dict:
    global jax, jnp, np
    # Both listed: JAX then fails loudly if CUDA does not start; the CPU is there for pure_callback's inputs.
    os.environ["JAX_PLATFORMS"] = "cuda,cpu"
    # Deterministic reductions, and no autotuning: XLA times candidate kernels (cuDNN algorithms, Triton GEMM
    # tilings) and keeps the fastest, so two runs could pick different kernels and differ in the last bits.
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in ("--xla_gpu_deterministic_ops=true", "--xla_gpu_autotune_level=0"):
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    os.environ["XLA_FLAGS"] = flags
    try:
        import numpy
        import jax as jax_
        import jax.numpy as jnp_
        from jax._src import hardware_utils
    except Exception as e:  # noqa: BLE001 - any import failure means: not usable here
        raise Skip(f"jax is not importable: {type(e).__name__}: {e}")
    # JAX starts its CUDA backend only where /dev/nvidia0, /dev/nvidiactl or /dev/dxg exists; on a client without
    # a GPU, `vgpu run`'s Python start-up hook (vgpu/python/sitecustomize.py) makes that check answer True.
    patched = bool(getattr(hardware_utils, "_vgpu_patched", False))
    if os.environ.get("VGPU_SERVER") and not hardware_utils.has_visible_nvidia_gpu():
        raise RuntimeError("no /dev/nvidia* device node here and vGPU's Python start-up hook did not answer JAX's "
                           "check for one: run through `vgpu run` (GAPS.md G4)")
    jax, jnp, np = jax_, jnp_, numpy
    try:
        devs = jax.devices("cuda")
    except RuntimeError as e:
        raise RuntimeError(f"JAX's CUDA backend did not start: {e}") from e
    dev = devs[0]
    ctx.sync = jax.effects_barrier  # parts block on their own results; this also waits for host callbacks
    stats = dev.memory_stats() or {}
    return {"jax": jax.__version__, "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
            "device": dev.device_kind, "platform_version": getattr(dev.client, "platform_version", "?"),
            "xla_flags": os.environ["XLA_FLAGS"], "bytes_limit": stats.get("bytes_limit"), "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE",
                                                                                   "true"),
            "dev_node_check_bypassed": patched}


def rng(k: int):
    return np.random.default_rng(SEED + k)


def host(x):
    return np.asarray(jax.device_get(x))


def p_smoke(ctx: Ctx) -> dict:
    """Start-up, allocation, copies both ways, a device-to-device copy and one compiled module: the copies are
    checked in-process and hold on the emulated backend too."""
    x0 = rng(1).standard_normal(1 << 20).astype(np.float32)
    t = time.perf_counter()
    x = jax.device_put(x0)
    back = host(x)
    copy_ms = (time.perf_counter() - t) * 1e3
    if not np.array_equal(back, x0):
        raise AssertionError("host -> device -> host round trip changed the data")
    y = jnp.copy(x)  # device-to-device
    if not np.array_equal(host(y), x0):
        raise AssertionError("device -> device copy changed the data")
    f = jax.jit(lambda a: a * 2.0 + 1.0)
    out = f(x)  # XLA compile, cuModuleLoadData, launch
    out.block_until_ready()
    checks = {"round_trip": asum(back), "devices": len(jax.devices("cuda"))}
    if not ctx.emulated:
        checks["jit"] = asum(host(out))
    return {"checks": checks, "timing": {"primary": "copy_4MiB_round_trip_ms", "copy_4MiB_round_trip_ms": copy_ms}}


def p_mlp_train(ctx: Ctx) -> dict:
    """A 3-layer MLP classifier trained with a jitted SGD-with-momentum step on fixed random data."""
    g = rng(2)
    d_in, hid, n_cls, batch = ctx.q((256, 512, 10), (32, 64, 10)) + (ctx.q(128, 16),)
    steps, warm = ctx.q((100, 10), (6, 2))
    xs = g.standard_normal((steps, batch, d_in)).astype(np.float32)
    ys = g.integers(0, n_cls, (steps, batch)).astype(np.int32)
    params = [(g.standard_normal((a, b)).astype(np.float32) * np.float32(1 / np.sqrt(a)), np.zeros(b, np.float32))
              for a, b in ((d_in, hid), (hid, hid), (hid, n_cls))]
    params = jax.device_put(params)
    mom = jax.tree_util.tree_map(jnp.zeros_like, params)

    def loss_fn(p, x, y):
        h = x
        for i, (w, b) in enumerate(p):
            h = h @ w + b
            if i < len(p) - 1:
                h = jax.nn.gelu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @jax.jit
    def step(p, m, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + b, m, grads)
        p = jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, p, m)
        return p, m, loss

    losses = {}
    state = {"p": params, "m": mom}

    def one(i):
        state["p"], state["m"], loss = step(state["p"], state["m"], xs[i], ys[i])
        if i % 10 == 0 or i == steps - 1:
            losses[i] = float(loss)  # a synchronizing read, as a training loop's logging does
        else:
            loss.block_until_ready()

    t = time.perf_counter()
    one(0)
    first_s = time.perf_counter() - t  # compilation included
    iv, total_s = timed_steps(lambda i: one(i + 1), steps - 1, warm, lambda: None)
    flat = jax.tree_util.tree_leaves(state["p"])
    return {"checks": {"loss_steps": list(losses), "losses": list(losses.values()),
                       "params": [asum(host(a)) for a in flat]},
            "timing": {"primary": "median_step_ms", "median_step_ms": median(iv), "first_step_s": first_s,
                       "total_s": total_s},
            "config": {"d_in": d_in, "hidden": hid, "batch": batch, "steps": steps}}


def p_scan(ctx: Ctx) -> dict:
    """lax.scan (an RNN over time, XLA's while loop, possibly a conditional command buffer), lax.fori_loop and a
    data-dependent lax.while_loop."""
    g = rng(3)
    T, B, H = ctx.q((256, 32, 128), (16, 4, 16))
    xs = jnp.asarray(g.standard_normal((T, B, H)).astype(np.float32))
    w = jnp.asarray(g.standard_normal((H, H)).astype(np.float32) / np.float32(np.sqrt(H)))

    @jax.jit
    def rnn(w, xs):
        def cell(h, x):
            h = jnp.tanh(h @ w + x)
            return h, h.sum()
        return jax.lax.scan(cell, jnp.zeros((B, H), jnp.float32), xs)

    @jax.jit
    def collatz_steps(n):
        def cond(s):
            return s[0] != 1
        def body(s):
            v, k = s
            return jnp.where(v % 2 == 0, v // 2, 3 * v + 1), k + 1
        return jax.lax.while_loop(cond, body, (n, jnp.int32(0)))[1]

    fori = jax.jit(lambda x: jax.lax.fori_loop(0, 100, lambda i, a: a * 0.99 + jnp.sin(a), x))
    h, sums = rnn(w, xs)
    steps = [int(collatz_steps(jnp.int32(n))) for n in (27, 97, 871)] if not ctx.emulated else []
    f = fori(xs[0])
    return {"checks": {"scan_final": asum(host(h)), "scan_sums": asum(host(sums)), "fori": asum(host(f)),
                       "while_collatz": steps},
            "timing": {"primary": "scan_us", "scan_us": per_call_us(lambda: rnn(w, xs)[0].block_until_ready(),
                                                                    ctx.q(20, 2), ctx.sync)}}


def p_conv(ctx: Ctx) -> dict:
    """2-D convolutions forward and backward (cuDNN through XLA), NHWC."""
    g = rng(4)
    B, S, C, K = ctx.q((16, 32, 32, 64), (2, 8, 4, 8))
    x = jnp.asarray(g.standard_normal((B, S, S, C)).astype(np.float32))
    k1 = jnp.asarray(g.standard_normal((3, 3, C, K)).astype(np.float32) * 0.1)
    k2 = jnp.asarray(g.standard_normal((3, 3, K, K)).astype(np.float32) * 0.1)
    dn = ("NHWC", "HWIO", "NHWC")

    def net(k1, k2, x):
        h = jax.nn.relu(jax.lax.conv_general_dilated(x, k1, (1, 1), "SAME", dimension_numbers=dn))
        h = jax.lax.conv_general_dilated(h, k2, (2, 2), "SAME", dimension_numbers=dn)
        return jnp.mean(h * h)

    fwd = jax.jit(net)
    grad = jax.jit(jax.grad(net, argnums=(0, 1)))
    y = fwd(k1, k2, x)
    g1, g2 = grad(k1, k2, x)
    return {"checks": {"loss": float(y), "grad_k1": asum(host(g1)), "grad_k2": asum(host(g2))},
            "timing": {"primary": "fwd_bwd_us", "fwd_bwd_us": per_call_us(
                lambda: grad(k1, k2, x)[0].block_until_ready(), ctx.q(20, 2), ctx.sync)}}


def p_fft(ctx: Ctx) -> dict:
    g = rng(5)
    rows, n = ctx.q((64, 4096), (4, 256))
    x = jnp.asarray(g.standard_normal((rows, n)).astype(np.float32))
    img = jnp.asarray(g.standard_normal((8, 128, 128)).astype(np.float32))
    spec = jax.jit(lambda a: jnp.fft.rfft(a, axis=1))(x)
    back = jax.jit(lambda s: jnp.fft.irfft(s, n=n, axis=1))(spec)
    f2 = jax.jit(jnp.fft.fft2)(img)
    return {"checks": {"rfft_abs": asum(host(jnp.abs(spec))), "round_trip": asum(host(back)),
                       "fft2_real": asum(host(f2.real)), "fft2_imag": asum(host(f2.imag))},
            "timing": {"primary": "rfft_us", "rfft_us": per_call_us(
                lambda: jnp.fft.rfft(x, axis=1).block_until_ready(), ctx.q(50, 2), ctx.sync)}}


def p_vmap(ctx: Ctx) -> dict:
    """vmap: a per-example attention score and per-example gradients of a linear model."""
    g = rng(6)
    B, T, D = ctx.q((64, 64, 64), (4, 8, 8))
    q = jnp.asarray(g.standard_normal((B, T, D)).astype(np.float32))
    k = jnp.asarray(g.standard_normal((B, T, D)).astype(np.float32))
    w = jnp.asarray(g.standard_normal(D).astype(np.float32))

    def attn(q1, k1):
        s = q1 @ k1.T / np.float32(np.sqrt(D))
        return jax.nn.softmax(s, axis=-1).sum(axis=0)

    def loss(w, x, y):
        return (jnp.tanh(x @ w) - y) ** 2

    batched = jax.jit(jax.vmap(attn))
    per_ex = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
    a = batched(q, k)
    pg = per_ex(w, q[:, 0, :], k[:, 0, 0])
    return {"checks": {"attention": asum(host(a)), "per_example_grads": asum(host(pg))},
            "timing": {"primary": "vmap_attention_us", "vmap_attention_us": per_call_us(
                lambda: batched(q, k).block_until_ready(), ctx.q(50, 2), ctx.sync)}}


def p_random_linalg(ctx: Ctx) -> dict:
    """jax.random (threefry on the GPU) and cuSOLVER factorizations through XLA."""
    key = jax.random.PRNGKey(SEED)
    k1, k2 = jax.random.split(key)
    u = jax.random.uniform(k1, (1 << 16,))
    nrm = jax.random.normal(k2, (256, 256))
    spd = nrm @ nrm.T / 256 + jnp.eye(256)
    chol = jnp.linalg.cholesky(spd)
    w = jnp.linalg.eigvalsh(spd)
    sol = jnp.linalg.solve(spd, jnp.ones((256, 4)))
    return {"checks": {"uniform": asum(host(u)), "normal": asum(host(nrm)), "cholesky": asum(host(chol)),
                       "eigvalsh": asum(host(w)), "solve": asum(host(sol))},
            "timing": {"primary": "solve_us", "solve_us": per_call_us(
                lambda: jnp.linalg.solve(spd, jnp.ones((256, 4))).block_until_ready(), ctx.q(20, 2), ctx.sync)}}


def p_host_callback(ctx: Ctx) -> dict:
    """jax.debug.callback / pure_callback: XLA hands values back to Python in the middle of a computation."""
    seen = []

    def record(v):
        seen.append(float(v))

    @jax.jit
    def f(x):
        y = jnp.sin(x).sum()
        jax.debug.callback(record, y)
        z = jax.pure_callback(lambda a: np.asarray(a, np.float32) * 2, jax.ShapeDtypeStruct((), jnp.float32), y)
        return z + 1

    x = jnp.arange(1024, dtype=jnp.float32) / 1024
    out = float(f(x))
    jax.effects_barrier()
    return {"checks": {"out": out if not ctx.emulated else 0.0, "callbacks": len(seen),
                       "seen": seen if not ctx.emulated else []},
            "timing": {"primary": "call_us", "call_us": per_call_us(lambda: f(x).block_until_ready(), ctx.q(20, 2),
                                                                    ctx.sync)}}


PARTS = [
    ("smoke", p_smoke),
    ("mlp_train", p_mlp_train),
    ("scan", p_scan),
    ("fft", p_fft),
    ("vmap", p_vmap),
    ("random_linalg", p_random_linalg),
    ("host_callback", p_host_callback),
    # Last: cuDNN failures abort the process inside XLA (a CHECK), which would cost the parts after it.
    ("conv", p_conv),
]
