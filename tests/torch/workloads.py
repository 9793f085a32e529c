#!/usr/bin/env python3
"""PyTorch workloads for checking vGPU against a native GPU (issue 4/5).

    python3 workloads.py NAME[,NAME...] [--device cuda|cpu] [--json OUT] [--quick] [--label L]
    python3 workloads.py --list

NAME is one of the workloads below or `all`. Every workload seeds everything with a fixed seed, builds its
model and data on the CPU from fixed-seed generators (so the numbers do not depend on the CUDA RNG), runs
with deterministic settings, and records:
  checks  numbers that must agree between a native run and a vGPU run (compare.py),
  timing  times in ms (or µs where the name says so); `primary` names the one compare.py puts in its table.
Each workload runs in a try block: an error is recorded (status "error") and the next one runs. A workload
that cannot run here (no CUDA for a CUDA-only feature, no triton, no torchvision) prints a SKIP line and is
recorded as status "skipped". The JSON is rewritten after every workload, so a run killed by a timeout still
leaves the finished workloads behind. Exit status: 0 when nothing errored (skips are fine), 1 otherwise.

Determinism: CUBLAS_WORKSPACE_CONFIG is set before torch is imported, cuDNN is deterministic without
benchmarking, and each workload first runs under torch.use_deterministic_algorithms(True) (strict: this is what
makes the memory-efficient attention backward deterministic; with warn_only=True it only warns and keeps its
split-key atomics). If strict mode raises for an op that has no deterministic kernel, the workload is run
again from scratch with warn_only=True and recorded with "deterministic": false (compare.py then uses a looser
tolerance). resnet18_train always runs warn-only (adaptive_avg_pool2d's backward has no deterministic CUDA
kernel), as the reference bench_torch.py does.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import time
import traceback

# Must be set before torch (cuBLAS) is loaded: deterministic cuBLAS workspaces.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SEED = 1234
SCHEMA = 1


# ---------------------------------------------------------------------------------------------
# common


class Skip(Exception):
    """The workload cannot run in this environment (not a failure)."""


class Ctx:
    def __init__(self, device: str, quick: bool):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.quick = quick

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def q(self, full, quick):
        return quick if self.quick else full


def seed_all(seed: int = SEED) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def set_determinism(strict: bool) -> None:
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=not strict)


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()  # CPU generator: same numbers on every device
    g.manual_seed(seed)
    return g


class StepTimer:
    """Per-step times without synchronizing every step: on CUDA an event at every step boundary (the interval
    between two events is when the GPU reached them, i.e. the step's throughput time whether the GPU or the
    launching CPU is the bottleneck); on the CPU perf_counter."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.marks: list = []

    def mark(self) -> None:
        if self.ctx.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append(e)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.ctx.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


class Traffic:
    """vGPU's traffic counters (the shim's `vgpu_stats_json`: round trips, batch flushes, async calls, bytes each way,
    time waiting for replies, and the synchronous requests by call), read around a timed loop so each workload
    reports what one step pays the link and which calls its round trips are. Natively, or with a shim without the
    counters, every reading is None and nothing is recorded."""

    def __init__(self):
        self.lib = None

    def _load(self) -> bool:
        if self.lib is None:
            import ctypes

            try:
                lib = ctypes.CDLL("libcuda.so.1")  # the library torch loaded (same soname, same handle)
                lib.vgpu_stats_json.restype = ctypes.c_size_t
                lib.vgpu_stats_json.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
                self.buf = ctypes.create_string_buffer(1 << 16)
                self.lib = lib
            except (OSError, AttributeError):
                self.lib = False
        return bool(self.lib)

    def snapshot(self) -> dict | None:
        if not self._load():
            return None
        import ctypes

        need = self.lib.vgpu_stats_json(self.buf, len(self.buf))
        if need > len(self.buf):
            self.buf = ctypes.create_string_buffer(need * 2)
            self.lib.vgpu_stats_json(self.buf, len(self.buf))
        return json.loads(self.buf.value.decode())

    def per_step(self, before: dict | None, steps: int) -> dict | None:
        """Counters' growth since `before` divided by `steps`, plus `steps` and the round trips by call per step."""
        after = self.snapshot()
        if before is None or after is None or steps <= 0:
            return None
        out = {n: (v - before.get(n, 0)) / steps for n, v in after.items()
               if isinstance(v, (int, float)) and n != "pid"}
        b_calls = before.get("sync_by_call", {})
        calls = {op: (n - b_calls.get(op, 0)) / steps for op, n in after.get("sync_by_call", {}).items()}
        out["sync_by_call"] = {op: v for op, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0}
        out["steps"] = steps
        return out


TRAFFIC = Traffic()


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def tsum(t: torch.Tensor) -> dict:
    """Checksum numbers of a tensor (computed in float64 on the host: no device reduction order involved)."""
    d = t.detach().double().cpu()
    return {"sum": float(d.sum()), "abs_sum": float(d.abs().sum()), "max": float(d.max()), "min": float(d.min())}


# ---------------------------------------------------------------------------------------------
# a small GPT written here (decoder-only, pre-LayerNorm, tied head)


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    """tied: the head is the token embedding (training); untied with a larger init_std for generation from random
    weights, where a tied head mostly repeats the last token."""

    def __init__(self, vocab: int, ctx_len: int, d: int, heads: int, layers: int, tied: bool = True,
                 init_std: float = 0.02):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(ctx_len, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = None if tied else nn.Linear(d, vocab, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = init_std / math.sqrt(2 * layers) if name.endswith(("attn.proj.weight", "out.weight")) \
                    else init_std
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, fp32_head: bool = False):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_f(x)
        w = self.wte.weight if self.head is None else self.head.weight
        if fp32_head:  # the head outside autocast, in fp32
            with torch.autocast(device_type=idx.device.type, enabled=False):
                return F.linear(x.float(), w.float())
        return F.linear(x, w)


def markov_tokens(n_seq: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """Sequences from a fixed random Markov chain (each token has 4 equally likely successors): learnable
    data, so the loss falls from ln(vocab) towards ln(4) and its trajectory depends on every step."""
    g = gen(seed)
    table = torch.randint(vocab, (vocab, 4), generator=g)
    out = torch.empty(n_seq, length, dtype=torch.long)
    out[:, 0] = torch.randint(vocab, (n_seq,), generator=g)
    choice = torch.randint(4, (n_seq, length), generator=g)
    for i in range(1, length):
        out[:, i] = table[out[:, i - 1], choice[:, i]]
    return out


# ---------------------------------------------------------------------------------------------
# workloads


def w_gpt_train(ctx: Ctx) -> dict:
    vocab, T, B, d, H, L = ctx.q((2048, 128, 32, 256, 4, 4), (256, 32, 4, 64, 2, 2))
    steps, every, warm = ctx.q((300, 50, 10), (60, 20, 5))
    data = markov_tokens(steps * B, T + 1, vocab, SEED + 1)
    if ctx.cuda:
        data = data.pin_memory()  # batches go up with non_blocking copies, as a DataLoader(pin_memory) does
    model = GPT(vocab, T, d, H, L).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    losses, timer = {}, StepTimer(ctx)
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step == warm:
            ctx.sync()
            t_warm = time.perf_counter()
            tr0 = TRAFFIC.snapshot()
        if step >= warm:
            timer.mark()
        if step == steps:
            break
        batch = data[step * B:(step + 1) * B].to(ctx.device, non_blocking=True)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % every == 0 or step == steps - 1:
            losses[step] = loss.item()  # a synchronizing read, as a training loop's logging does
            print(f"  gpt_train step {step:4d} loss {losses[step]:.7f}", flush=True)
    ctx.sync()
    t1 = time.perf_counter()
    traffic = {"step": TRAFFIC.per_step(tr0, steps - warm)}
    iv = timer.intervals_ms()
    param_sum = sum(float(p.detach().double().sum()) for p in model.parameters())
    return {
        "traffic": traffic,
        "checks": {
            "loss_steps": list(losses.keys()),
            "losses": list(losses.values()),
            "final_loss": losses[steps - 1],
            "param_sum": param_sum,
        },
        "timing": {
            "primary": "median_step_ms",
            "median_step_ms": median(iv),
            "mean_step_ms_wall": (t1 - t_warm) / (steps - warm) * 1e3,
            "total_s": t1 - t0,
        },
        "config": {"vocab": vocab, "seq": T, "batch": B, "d": d, "heads": H, "layers": L, "steps": steps},
    }


def _vision_models(ctx: Ctx):
    try:
        import torchvision
    except ImportError:
        torchvision = None
    if torchvision is None:
        # A small CNN of our own when torchvision is missing.
        def small_cnn():
            return nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                nn.Conv2d(64, 128, 3, 2, 1), nn.BatchNorm2d(128), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 1000))
        return [("small_cnn", small_cnn, ctx.q(32, 2), ctx.q(224, 64))]
    from torchvision.models import VisionTransformer, resnet50

    def vit():
        if ctx.quick:
            m = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128)
        else:
            m = torchvision.models.vit_b_16()
        nn.init.normal_(m.heads.head.weight, 0.0, 0.02)  # torchvision zero-inits the head: outputs would be all 0
        return m
    return [("resnet50", resnet50, ctx.q(32, 2), ctx.q(224, 64)), ("vit_b_16", vit, ctx.q(8, 1), ctx.q(224, 64))]


def w_vision_infer(ctx: Ctx) -> dict:
    warm, iters = ctx.q((3, 20), (1, 3))
    checks, timing, traffic, samples = {}, {}, {}, {}
    for i, (name, build, batch, size) in enumerate(_vision_models(ctx)):
        seed_all(SEED + 10 + i)
        model = build().eval().to(ctx.device)
        x = torch.randn(batch, 3, size, size, generator=gen(SEED + 20 + i)).to(ctx.device)
        lat, enq = [], []
        with torch.no_grad():
            for it in range(warm + iters):
                if it == warm:
                    tr0 = TRAFFIC.snapshot()
                t = time.perf_counter()
                out = model(x)
                queued = time.perf_counter()
                ctx.sync()
                if it >= warm:
                    lat.append((time.perf_counter() - t) * 1e3)
                    enq.append((queued - t) * 1e3)
            traffic[name] = TRAFFIC.per_step(tr0, iters)
        # How long the forward pass took to queue, against the whole: near the whole, the step is bound by the
        # host's launches (the app's thread, or the server's submissions behind it), not by the GPU.
        timing[f"{name}_enqueue_ms"] = median(enq)
        samples[name] = {"step_ms": [round(v, 3) for v in lat], "enqueue_ms": [round(v, 3) for v in enq]}
        o = out.double().cpu()
        checks[name] = {**tsum(o), "logits0": [float(v) for v in o[0, :5]],
                        "argmax": [int(v) for v in o.argmax(1)]}
        timing[f"{name}_median_ms"] = median(lat)
        print(f"  vision_infer {name} batch {batch} {size}x{size}: sum {checks[name]['sum']:.6f} "
              f"argmax {checks[name]['argmax'][:8]} median {median(lat):.3f} ms", flush=True)
        del model, out
    timing["primary"] = next(k for k in timing if k.endswith("_median_ms"))
    return {"checks": checks, "timing": timing, "traffic": traffic, "samples": samples}


def w_lm_infer(ctx: Ctx) -> dict:
    vocab, T, d, H, L = ctx.q((8192, 256, 512, 8, 8), (512, 64, 64, 2, 2))
    prompt_len, new = ctx.q((16, 64), (8, 16))
    model = GPT(vocab, T, d, H, L, tied=False, init_std=0.1).to(ctx.device).eval()
    prompt = torch.randint(vocab, (1, prompt_len), generator=gen(SEED + 2))
    # bf16 autocast on CUDA (flash-attention kernels for SDPA, bf16 GEMMs); fp32 on the CPU. The head is fp32
    # either way, so the greedy argmax is taken over fp32 logits.
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if ctx.cuda else contextlib.nullcontext()

    def generate(n: int):
        ids = prompt.to(ctx.device)
        toks, lat, margins = [], [], []
        for _ in range(n):
            t = time.perf_counter()
            logits = model(ids[:, -T:], fp32_head=True)[:, -1]
            nxt = logits.argmax(-1, keepdim=True)
            tok = int(nxt.item())  # one synchronizing read per token, as a generation loop checking EOS does
            lat.append((time.perf_counter() - t) * 1e3)
            top2 = logits[0].topk(2).values
            margins.append(float(top2[0] - top2[1]))
            toks.append(tok)
            ids = torch.cat([ids, nxt], dim=1)
        return toks, lat, margins, logits

    with torch.no_grad(), amp:
        generate(4)  # warm-up: kernels loaded, cuBLAS handles made
        tr0 = TRAFFIC.snapshot()
        toks, lat, margins, logits = generate(new)
        traffic = {"token": TRAFFIC.per_step(tr0, new)}
    lg = logits.double().cpu()[0]
    print(f"  lm_infer tokens {toks[:16]}{'...' if len(toks) > 16 else ''} median {median(lat):.3f} ms/token",
          flush=True)
    return {
        "checks": {
            "tokens": toks,
            "final_logits": {**tsum(lg), "argmax": int(lg.argmax()), "first5": [float(v) for v in lg[:5]]},
        },
        "info": {"min_top2_margin": min(margins)},  # how close the nearest greedy tie was (not compared)
        "traffic": traffic,
        "timing": {"primary": "median_token_ms", "median_token_ms": median(lat), "total_ms": sum(lat)},
        "config": {"vocab": vocab, "ctx": T, "d": d, "heads": H, "layers": L, "prompt": prompt_len, "new": new,
                   "dtype": "bf16-autocast" if ctx.cuda else "fp32"},
    }


def _compile_available(ctx: Ctx) -> None:
    if not hasattr(torch, "compile"):
        raise Skip("torch.compile does not exist in this torch")
    try:
        importlib.import_module("torch._inductor")
    except Exception as e:  # noqa: BLE001
        raise Skip(f"inductor not importable: {e!r}")
    if ctx.cuda:
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            has_triton = None
        if has_triton is not None and not has_triton():
            raise Skip("triton is not available (torch.utils._triton.has_triton() is False)")
    elif not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++") or shutil.which("clang++")):
        raise Skip("no C++ compiler for inductor's CPU backend")


# Errors from a broken toolchain (not from the GPU path under test): compile reports them as SKIP.
TOOLCHAIN_ERRORS = ("Python.h", "InvalidCxxCompiler", "Failed to find C compiler", "cc1", "ld: cannot find",
                    "No working C compiler", "CalledProcessError: Command '['gcc'", "ptxas")


def w_compile(ctx: Ctx) -> dict:
    _compile_available(ctx)
    d, H, B, T = ctx.q((256, 4, 16, 64), (64, 2, 2, 16))
    # 60 measured steps (15 until stop 22): a compiled step is about 1.5 ms, and 15 of them left a round's median
    # ±30 % from the next round's, more than the gaps being measured.
    steps, warm = ctx.q((65, 5), (6, 3))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block(d, H)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

        def forward(self, x):
            return self.mlp(self.block(x))

    g = gen(SEED + 3)
    xs = [torch.randn(B, T, d, generator=g) for _ in range(steps)]
    ys = [torch.randn(B, T, d, generator=g) for _ in range(steps)]
    base = Net()

    def train(compiled: bool):
        model = copy.deepcopy(base).to(ctx.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        fwd = torch.compile(model, mode="reduce-overhead") if compiled else model
        losses, timer, first_s = [], StepTimer(ctx), None
        for i in range(steps):
            if i == warm:
                tr0 = TRAFFIC.snapshot()
            if i >= warm:
                timer.mark()
            t = time.perf_counter()
            if compiled and hasattr(torch.compiler, "cudagraph_mark_step_begin"):
                torch.compiler.cudagraph_mark_step_begin()
            x, y = xs[i].to(ctx.device), ys[i].to(ctx.device)
            loss = F.mse_loss(fwd(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach().clone())  # cloned: a CUDA-graph output is overwritten by the next replay
            if i == 0:
                ctx.sync()
                first_s = time.perf_counter() - t
        timer.mark()
        traffic[("compiled" if compiled else "eager") + "_step"] = TRAFFIC.per_step(tr0, steps - warm)
        iv = timer.intervals_ms()
        out = model(xs[0].to(ctx.device)).detach()
        return [float(v) for v in losses], median(iv), first_s, out

    traffic: dict = {}
    eager_losses, eager_ms, _, _ = train(False)
    try:
        comp_losses, comp_ms, compile_s, out = train(True)
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}"
        if any(s in msg for s in TOOLCHAIN_ERRORS):
            raise Skip(f"inductor's toolchain failed here: {msg.splitlines()[0][:300]}")
        raise
    rel = max(abs(a - b) / max(abs(a), abs(b), 1e-12) for a, b in zip(eager_losses, comp_losses))
    print(f"  compile losses {comp_losses[0]:.7f} .. {comp_losses[-1]:.7f}; eager {eager_losses[-1]:.7f}; "
          f"max rel diff compiled vs eager {rel:.2e}; step {comp_ms:.3f} ms compiled, {eager_ms:.3f} ms eager; "
          f"first step (compile) {compile_s:.1f} s", flush=True)
    return {
        "checks": {"losses": comp_losses, "out": tsum(out)},
        # Inductor fuses and reorders float math, so compiled vs eager agree only approximately (1e-3 here).
        "self_check": {"ok": rel <= 1e-3, "what": "compiled losses vs eager losses, max rel diff",
                       "value": rel},
        "traffic": traffic,
        "timing": {"primary": "compiled_step_ms", "compiled_step_ms": comp_ms, "eager_step_ms": eager_ms,
                   "compile_first_step_s": compile_s},
    }


def w_cuda_graph(ctx: Ctx) -> dict:
    if not ctx.cuda:
        raise Skip("torch.cuda.CUDAGraph needs --device cuda")
    n_in, hid, n_cls, B = 512, 1024, 10, 64
    replays, n_warm = ctx.q(50, 10), 3
    g = gen(SEED + 4)
    batches = [(torch.randn(B, n_in, generator=g).pin_memory(), torch.randint(n_cls, (B,), generator=g).pin_memory())
               for _ in range(n_warm + replays)]
    base = nn.Sequential(nn.Linear(n_in, hid), nn.ReLU(), nn.Linear(hid, hid), nn.ReLU(), nn.Linear(hid, n_cls))

    def make():
        m = copy.deepcopy(base).to(ctx.device)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    # Whole-network capture, as in PyTorch's CUDA-graphs documentation.
    model, opt = make()
    static_x = torch.empty(B, n_in, device=ctx.device)
    static_y = torch.empty(B, dtype=torch.long, device=ctx.device)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(n_warm):  # warm-up on a side stream (also creates the momentum buffers)
            static_x.copy_(batches[i][0], non_blocking=True)
            static_y.copy_(batches[i][1], non_blocking=True)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(static_x), static_y).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = F.cross_entropy(model(static_x), static_y)
        static_loss.backward()
        opt.step()
    losses, timer = [], StepTimer(ctx)
    tr0 = TRAFFIC.snapshot()
    for i in range(n_warm, n_warm + replays):
        timer.mark()
        static_x.copy_(batches[i][0], non_blocking=True)
        static_y.copy_(batches[i][1], non_blocking=True)
        graph.replay()
        losses.append(static_loss.detach().clone())
    timer.mark()
    traffic = {"replay": TRAFFIC.per_step(tr0, replays)}
    replay_ms = median(timer.intervals_ms())
    graph_losses = [float(v) for v in losses]
    graph_params = sum(float(p.detach().double().sum()) for p in model.parameters())

    # The same steps without a graph, from the same initial weights: must give the same losses.
    model2, opt2 = make()
    eager, timer2 = [], StepTimer(ctx)
    for i in range(n_warm + replays):
        if i == n_warm:
            tr0 = TRAFFIC.snapshot()
        if i >= n_warm:
            timer2.mark()
        x, y = batches[i][0].to(ctx.device, non_blocking=True), batches[i][1].to(ctx.device, non_blocking=True)
        opt2.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model2(x), y)
        loss.backward()
        opt2.step()
        if i >= n_warm:
            eager.append(loss.detach().clone())
    timer2.mark()
    traffic["eager_step"] = TRAFFIC.per_step(tr0, replays)
    eager_ms = median(timer2.intervals_ms())
    eager_losses = [float(v) for v in eager]
    rel = max(abs(a - b) / max(abs(a), abs(b), 1e-12) for a, b in zip(eager_losses, graph_losses))
    print(f"  cuda_graph losses {graph_losses[0]:.7f} .. {graph_losses[-1]:.7f}; max rel diff vs eager {rel:.2e}; "
          f"replay {replay_ms:.4f} ms, eager step {eager_ms:.4f} ms", flush=True)
    return {
        "checks": {"losses": graph_losses, "param_sum": graph_params},
        # Same kernels on the same data in the same order: replay and eager should agree to rounding (1e-5).
        "self_check": {"ok": rel <= 1e-5, "what": "graph-replay losses vs eager losses, max rel diff",
                       "value": rel},
        "traffic": traffic,
        "timing": {"primary": "replay_ms", "replay_ms": replay_ms, "eager_step_ms": eager_ms},
    }


def w_resnet18_train(ctx: Ctx) -> dict:
    try:
        import torchvision
    except ImportError:
        raise Skip("torchvision is not installed (resnet18_train is the reference bench_torch.py measurement)")
    batch, size = ctx.q((64, 224), (2, 64))
    warm, timed = ctx.q((5, 20), (2, 3))
    m = torchvision.models.resnet18().to(ctx.device)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    g = gen(SEED + 5)
    inp = torch.randn(batch, 3, size, size, generator=g).to(ctx.device)
    tgt = torch.randint(0, 1000, (batch,), generator=g).to(ctx.device)
    for i in range(warm + timed):
        if i == warm:
            ctx.sync()
            t = time.perf_counter()
            tr0 = TRAFFIC.snapshot()
        opt.zero_grad()
        loss = F.cross_entropy(m(inp), tgt)
        loss.backward()
        opt.step()
    ctx.sync()
    ms = (time.perf_counter() - t) / timed * 1e3
    traffic = {"step": TRAFFIC.per_step(tr0, timed)}
    print(f"  resnet18_train_step_ms {ms:.2f}  check {float(loss):.7f}", flush=True)
    return {"checks": {"loss": float(loss)}, "traffic": traffic,
            "timing": {"primary": "resnet18_train_step_ms", "resnet18_train_step_ms": ms},
            "config": {"batch": batch, "size": size, "warm": warm, "timed": timed}}


def w_small_ops(ctx: Ctx) -> dict:
    iters = ctx.q(20000, 2000)
    n_mm, mm_iters = ctx.q((4096, 50), (512, 5))
    g = gen(SEED + 6)
    x = torch.randn(64, 64, generator=g).to(ctx.device)
    ctx.sync()
    t = time.perf_counter()
    tr0 = TRAFFIC.snapshot()
    for _ in range(iters):
        x = x * 1.0001 + 0.5
    ctx.sync()
    us = (time.perf_counter() - t) / iters * 1e6
    traffic = {"op": TRAFFIC.per_step(tr0, iters)}
    a = torch.randn(n_mm, n_mm, generator=g).to(ctx.device)
    b = a @ a
    ctx.sync()
    t = time.perf_counter()
    tr0 = TRAFFIC.snapshot()
    for _ in range(mm_iters):
        b = a @ a
    ctx.sync()
    mm_ms = (time.perf_counter() - t) / mm_iters * 1e3
    traffic["matmul"] = TRAFFIC.per_step(tr0, mm_iters)
    print(f"  small_ops_us {us:.2f}  mm{n_mm}_fp32_ms {mm_ms:.3f}", flush=True)
    return {"checks": {"x": tsum(x), "mm": tsum(b)}, "traffic": traffic,
            "timing": {"primary": "small_ops_us", "small_ops_us": us, f"mm{n_mm}_fp32_ms": mm_ms},
            "config": {"iters": iters, "mm_n": n_mm}}


def _curand_uniform(n: int, seed: int, stream: int, out_ptr: int) -> None:
    """n uniform floats from cuRAND's Philox generator into device memory at out_ptr, through the libcurand that
    the PyTorch wheels bring (PyTorch's own RNG does not use cuRAND)."""
    import ctypes
    import glob
    import site

    roots = site.getsitepackages() + [site.getusersitepackages()]
    found = sorted(f for r in roots for f in glob.glob(os.path.join(r, "nvidia", "**", "libcurand.so*"), recursive=True))
    if not found:
        raise Skip("no libcurand in the nvidia-* wheels")
    lib = ctypes.CDLL(found[0])
    handle = ctypes.c_void_p()

    def ok(status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what} returned curandStatus {status}")

    ok(lib.curandCreateGenerator(ctypes.byref(handle), 161), "curandCreateGenerator")  # CURAND_RNG_PSEUDO_PHILOX4_32_10
    try:
        ok(lib.curandSetPseudoRandomGeneratorSeed(handle, ctypes.c_ulonglong(seed)), "curandSetSeed")
        ok(lib.curandSetStream(handle, ctypes.c_void_p(stream)), "curandSetStream")
        ok(lib.curandGenerateUniform(handle, ctypes.c_void_p(out_ptr), ctypes.c_size_t(n)), "curandGenerateUniform")
    finally:
        lib.curandDestroyGenerator(handle)


class Parts:
    """A workload's parts, each on its own: one that fails is recorded (and fails the comparison) without hiding the
    rest. A marker line before each lets a driver diagnostic on stderr be traced to the part that caused it."""

    def __init__(self, ctx: Ctx):
        self.ctx = ctx
        self.checks: dict = {}
        self.errors: list = []
        self.ms: dict = {}

    def run(self, name: str, fn) -> None:
        print(f"  part {name}", flush=True)
        t = time.perf_counter()
        try:
            self.checks[name] = fn()
            self.ctx.sync()
        except Skip:
            raise
        except Exception as e:  # noqa: BLE001 - the error text is the finding
            self.checks[name] = {"error": f"{type(e).__name__}: {e}"}
            self.errors.append(name)
        self.ms[name] = (time.perf_counter() - t) * 1e3


def w_libs(ctx: Ctx) -> dict:
    """The CUDA libraries PyTorch ships beside cuBLAS and cuDNN: cuFFT (torch.fft), cuBLASLt (a linear layer with
    bias, which PyTorch runs as one GEMM with a bias epilogue), cuSOLVER (torch.linalg), cuSPARSE (a CSR product)
    and cuRAND (called directly: PyTorch does not)."""
    g = gen(SEED + 7)
    x = torch.randn(64, 4096, generator=g).to(ctx.device)
    w = torch.randn(1024, 4096, generator=g).to(ctx.device) * 0.02
    b = torch.randn(1024, generator=g).to(ctx.device)
    parts = Parts(ctx)

    def fft():
        spec = torch.fft.rfft(x, dim=1)
        back = torch.fft.irfft(spec, n=4096, dim=1)
        return {"spectrum_abs": tsum(spec.abs()), "round_trip": tsum(back)}

    def curand():
        r = torch.empty(1 << 20, device=ctx.device)
        _curand_uniform(r.numel(), 1234, torch.cuda.current_stream().cuda_stream, r.data_ptr())
        return tsum(r)

    def linalg():
        # cuSOLVER (PyTorch's default CUDA linear-algebra backend): factorizations of a fixed well-conditioned matrix.
        a = torch.randn(256, 256, generator=gen(SEED + 8), dtype=torch.float64)
        spd = (a @ a.T / 256 + torch.eye(256, dtype=torch.float64)).to(ctx.device)
        rhs = torch.randn(256, 8, generator=gen(SEED + 9), dtype=torch.float64).to(ctx.device)
        chol = torch.linalg.cholesky(spd)
        evals = torch.linalg.eigvalsh(spd)
        sol = torch.linalg.solve(spd, rhs)
        svals = torch.linalg.svdvals(a.to(ctx.device))
        q, r = torch.linalg.qr(a.to(ctx.device))
        return {"cholesky": tsum(chol), "eigvalsh": tsum(evals), "solve": tsum(sol), "svdvals": tsum(svals),
                "qr_r_diag_abs": tsum(r.diagonal().abs()), "qr_residual": float((q @ r - a.to(ctx.device)).abs().max())}

    def sparse():
        # cuSPARSE: a CSR matrix (about 2% dense) times a dense one.
        g2 = gen(SEED + 10)
        dense = torch.randn(512, 512, generator=g2)
        dense[torch.rand(512, 512, generator=g2) > 0.02] = 0
        csr = dense.to_sparse_csr().to(ctx.device)
        rhs = torch.randn(512, 64, generator=g2).to(ctx.device)
        return tsum(torch.sparse.mm(csr, rhs) if hasattr(torch.sparse, "mm") else csr @ rhs)

    parts.run("linear_bias", lambda: tsum(F.linear(x, w, b)))
    parts.run("fft", fft)
    parts.run("linalg", linalg)
    parts.run("sparse", sparse)
    if ctx.cuda:
        parts.run("curand_uniform", curand)
    errors = parts.errors
    iters = ctx.q(200, 20)

    def per_call_us(fn) -> float:
        fn()
        ctx.sync()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        ctx.sync()
        return (time.perf_counter() - t) / iters * 1e6

    timing: dict = {"primary": "linear_bias_us"}
    timing["linear_bias_us"] = float("nan") if "linear_bias" in errors else per_call_us(lambda: F.linear(x, w, b))
    if "fft" not in errors:
        timing["rfft_64x4096_us"] = per_call_us(lambda: torch.fft.rfft(x, dim=1))
    print("  " + "  ".join(f"{k} {v:.1f}" for k, v in timing.items() if k != "primary"), flush=True)
    if errors:
        print(f"  failed: {', '.join(errors)}", flush=True)
    return {"checks": parts.checks, "timing": timing, "config": {}}


def w_runtime(ctx: Ctx) -> dict:
    """What training scripts use around the model: mixed precision (bf16 autocast, fp16 with GradScaler), the flash
    attention kernel, side streams with events, a DataLoader whose forked workers feed pinned batches copied with
    non_blocking=True, and the caching allocator's accounting. Each part on its own, like `libs`."""
    if not ctx.cuda:
        raise Skip("runtime features are CUDA's (streams, pinned memory, flash attention)")
    parts = Parts(ctx)

    def mlp():
        g = gen(SEED + 11)
        m = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 10)).to(ctx.device)
        for p_ in m.parameters():
            with torch.no_grad():
                p_.copy_(torch.randn(p_.shape, generator=g) * 0.05)
        data = [(torch.randn(128, 256, generator=g), torch.randint(10, (128,), generator=g)) for _ in range(20)]
        return m, data

    def amp_train(dtype, make_opt, scaler=None):
        m, data = mlp()
        opt = make_opt(m.parameters())
        losses = []
        for x, y in data:
            x, y = x.to(ctx.device), y.to(ctx.device)
            with torch.autocast("cuda", dtype=dtype):
                loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            losses.append(float(loss.detach()))
        out = {"losses": losses, "params": sum(float(p_.double().sum()) for p_ in m.parameters())}
        if scaler is not None:
            out["scale"] = float(scaler.get_scale())
        return out

    def amp_bf16():
        return amp_train(torch.bfloat16, lambda ps: torch.optim.AdamW(ps, lr=1e-3))

    def amp_fp16_scaler():
        return amp_train(torch.float16, lambda ps: torch.optim.SGD(ps, lr=0.05),
                         torch.amp.GradScaler("cuda", init_scale=2.0 ** 16))

    def flash_attention():
        from torch.nn.attention import SDPBackend, sdpa_kernel
        g = gen(SEED + 12)
        q, k, v = (torch.randn(2, 8, 512, 64, generator=g).to(ctx.device, torch.bfloat16) for _ in range(3))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return tsum(out.float())

    def streams_events():
        g = gen(SEED + 13)
        a = torch.randn(2048, 2048, generator=g).to(ctx.device)
        side = torch.cuda.Stream()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            start.record()
            b = a @ a
            c = torch.relu(b - b.mean())
            end.record()
        torch.cuda.current_stream().wait_stream(side)
        c.record_stream(torch.cuda.current_stream())
        host = torch.empty(c.shape, pin_memory=True)
        host.copy_(c, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        done.synchronize()
        ms = start.elapsed_time(end)
        return {"result": tsum(host), "elapsed_positive": ms > 0, "query_after_sync": done.query()}

    def dataloader_workers():
        g = gen(SEED + 14)
        ds = torch.utils.data.TensorDataset(torch.randn(512, 64, generator=g), torch.arange(512))
        dl = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=2, pin_memory=True, shuffle=False)
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        pinned = []
        for x, i in dl:
            pinned.append(x.is_pinned())
            x, i = x.to(ctx.device, non_blocking=True), i.to(ctx.device, non_blocking=True)
            total += (x.double().sum(dim=1) * i.double()).sum()
        return {"weighted_sum": float(total), "batches": len(pinned), "all_pinned": all(pinned)}

    def allocator():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        t = torch.empty(256 << 20, dtype=torch.uint8, device=ctx.device)
        grown = torch.cuda.memory_allocated() - before
        free, total = torch.cuda.mem_get_info()
        del t
        torch.cuda.empty_cache()
        return {"allocated_growth": grown, "after_free": torch.cuda.memory_allocated() - before,
                "total_mib": total >> 20, "free_le_total": free <= total}

    def ddp_nccl():
        # torchrun --nproc_per_node=1 in miniature: one NCCL rank, DistributedDataParallel over an MLP.
        import socket
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
        if not dist.is_available() or not dist.is_nccl_available():
            return {"skipped": "no NCCL in this PyTorch"}
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                device_id=ctx.device if ctx.device.index is not None else torch.device("cuda", 0))
        try:
            t = torch.arange(4096, dtype=torch.float32, device=ctx.device)
            dist.all_reduce(t)
            dist.broadcast(t, src=0)
            m, data = mlp()
            ddp = DistributedDataParallel(m)
            opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
            losses = []
            for xb, yb in data[:5]:
                loss = F.cross_entropy(ddp(xb.to(ctx.device)), yb.to(ctx.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            return {"all_reduce": tsum(t), "losses": losses}
        finally:
            dist.destroy_process_group()

    parts.run("amp_bf16", amp_bf16)
    parts.run("amp_fp16_scaler", amp_fp16_scaler)
    parts.run("flash_attention", flash_attention)
    parts.run("streams_events", streams_events)
    parts.run("dataloader_workers", dataloader_workers)
    parts.run("allocator", allocator)
    parts.run("ddp_nccl", ddp_nccl)
    checks, errors = parts.checks, parts.errors
    print(f"  parts ok: {len(checks) - len(errors)}/{len(checks)}" + (f"; failed: {', '.join(errors)}" if errors else ""),
          flush=True)
    # Wall time of the AMP training loop (20 steps, a first-use cost included): the parts are checks, not benchmarks.
    return {"checks": checks, "timing": {"primary": "amp_bf16_ms", "amp_bf16_ms": parts.ms.get("amp_bf16", float("nan"))},
            "config": {}}


WORKLOADS = {
    "gpt_train": w_gpt_train,
    "vision_infer": w_vision_infer,
    "lm_infer": w_lm_infer,
    "compile": w_compile,
    "cuda_graph": w_cuda_graph,
    "resnet18_train": w_resnet18_train,
    "small_ops": w_small_ops,
    "libs": w_libs,
    "runtime": w_runtime,
}
WARN_ONLY = {"resnet18_train"}  # the reference measurement; its backward has a nondeterministic kernel


# ---------------------------------------------------------------------------------------------
# driver


def run_one(name: str, ctx: Ctx) -> dict:
    fn = WORKLOADS[name]
    strict = name not in WARN_ONLY
    t0 = time.perf_counter()
    print(f"== {name} ({ctx.device}{', quick' if ctx.quick else ''})", flush=True)
    rec: dict = {}
    try:
        try:
            seed_all()
            set_determinism(strict)
            rec = fn(ctx)
        except RuntimeError as e:
            if not strict or "determinis" not in str(e):
                raise
            print(f"  strict determinism failed ({str(e).splitlines()[0][:200]}); running again warn-only",
                  flush=True)
            ctx.sync()
            strict = False
            seed_all()
            set_determinism(False)
            rec = fn(ctx)
            rec["determinism_note"] = str(e).splitlines()[0][:500]
        rec["status"] = "ok"
        if rec.get("self_check") and not rec["self_check"]["ok"]:
            print(f"  SELF-CHECK FAILED: {rec['self_check']}", flush=True)
    except Skip as e:
        print(f"SKIP {name}: {e}", flush=True)
        rec = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001
        tb = traceback.format_exc()
        print(f"ERROR {name}: {type(e).__name__}: {e}\n{tb}", flush=True)
        rec = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-4000:]}
    finally:
        set_determinism(False)
    rec["deterministic"] = strict
    rec["wall_s"] = time.perf_counter() - t0
    if rec["status"] == "ok":
        tm = rec["timing"]
        print(f"RESULT {name} ok {tm['primary']}={tm[tm['primary']]:.4f} wall {rec['wall_s']:.1f}s", flush=True)
    return rec


def meta(ctx: Ctx, label: str | None) -> dict:
    m = {
        "schema": SCHEMA,
        "label": label or ("vgpu " + os.environ["VGPU_SERVER"] if os.environ.get("VGPU_SERVER") else "native"),
        "device": str(ctx.device),
        "quick": ctx.quick,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
        "argv": sys.argv,
        "vgpu_server": os.environ.get("VGPU_SERVER"),
        "vgpu_link": os.environ.get("VGPU_LINK"),  # the link shape run-device.sh put between client and server
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torchvision

        m["torchvision"] = torchvision.__version__
    except ImportError:
        m["torchvision"] = None
    if ctx.cuda:
        t = time.perf_counter()
        torch.randn(4096, 4096, device=ctx.device)  # as bench_torch.py: the first CUDA tensor
        torch.cuda.synchronize()
        m["torch_init_s"] = time.perf_counter() - t
        m["gpu"] = torch.cuda.get_device_name(ctx.device)
        m["cudnn"] = torch.backends.cudnn.version()
        print(f"torch_init_s {m['torch_init_s']:.2f}  gpu {m['gpu']}", flush=True)
    return m


def write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="workload, comma-separated workloads, or all")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--json", help="write the results here (rewritten after every workload)")
    ap.add_argument("--quick", action="store_true", help="small sizes (CPU validation)")
    ap.add_argument("--label", help="name of this run in the JSON (default: native, or vgpu $VGPU_SERVER)")
    ap.add_argument("--list", action="store_true", help="list the workloads")
    args = ap.parse_args()
    if args.list or not args.name:
        print("\n".join(list(WORKLOADS) + ["all"]))
        return 0 if args.list else 2
    names = list(WORKLOADS) if args.name == "all" else args.name.split(",")
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        print(f"unknown workload(s): {', '.join(bad)}; known: {', '.join(WORKLOADS)}, all", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but torch.cuda.is_available() is False", file=sys.stderr)
        doc = {"meta": {"label": args.label, "device": device, "error": "cuda not available"},
               "workloads": {n: {"status": "error", "error": "cuda not available"} for n in names}}
        if args.json:
            write_json(args.json, doc)
        return 1
    ctx = Ctx(device, args.quick)
    doc = {"meta": meta(ctx, args.label), "workloads": {}}
    t0 = time.perf_counter()
    for n in names:
        doc["workloads"][n] = run_one(n, ctx)
        if args.json:
            write_json(args.json, doc)
    doc["meta"]["total_s"] = time.perf_counter() - t0
    if args.json:
        write_json(args.json, doc)
    st = {n: r["status"] for n, r in doc["workloads"].items()}
    print("SUMMARY " + " ".join(f"{n}={s}" for n, s in st.items()) + f" total {doc['meta']['total_s']:.1f}s")
    return 1 if "error" in st.values() else 0


if __name__ == "__main__":
    sys.exit(main())
