"""Shared pieces of the framework workloads (issue 20): parts, checksums, timings, the result JSON.

Every framework module (fw_jax, fw_cupy, fw_triton, fw_hf) defines PARTS, an ordered list of (name, function);
workloads.py runs them one by one. A part is one entry under "workloads" in the result JSON, in exactly the
format tests/torch/compare.py reads:

    {"status": "ok"|"error"|"skipped", "checks": {...}, "timing": {"primary": KEY, KEY: ms, ...},
     "deterministic": true, "wall_s": s}

so one part that fails or is skipped is reported on its own and never hides the others. Framework modules import
nothing heavy at module level: the framework is imported by their setup(), after the environment is final.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
import traceback

SEED = 1234
SCHEMA = 1


class Skip(Exception):
    """The part cannot run here (a missing package, a feature this framework build lacks): not a failure."""


class Ctx:
    """What a part needs to know about the run: sizes (quick) and whether kernels really run (emulated)."""

    def __init__(self, quick: bool, emulated: bool):
        self.quick = quick
        # On vGPU's emulated backend kernels are checked and recorded, never run: device results are whatever the
        # memory held. Parts then still drive the same driver traffic, but their numbers mean nothing.
        self.emulated = emulated
        self.sync = lambda: None  # set by the framework's setup() to its device-wide synchronize
        self.reseed = None  # set by setup() where the framework has a global generator (torch.manual_seed)

    def q(self, full, quick):
        return quick if self.quick else full


def digest(data: bytes) -> str:
    """A short digest of a result's bytes: equal digests mean bit-identical results (compare.py compares strings
    for equality)."""
    return hashlib.sha256(data).hexdigest()[:16]


def asum(a) -> dict:
    """Checksum numbers of a host (numpy) array, computed in float64 on the host: no device reduction order
    involved. `bits` is a digest of the raw bytes, for results that must be bit-identical."""
    import numpy as np

    a = np.asarray(a)
    d = a.astype(np.float64)
    finite = np.isfinite(d)
    out = {
        "sum": float(d[finite].sum()),
        "abs_sum": float(np.abs(d[finite]).sum()),
        "max": float(d[finite].max()) if finite.any() else float("nan"),
        "min": float(d[finite].min()) if finite.any() else float("nan"),
        "nonfinite": int(d.size - finite.sum()),
        "bits": digest(np.ascontiguousarray(a).tobytes()),
    }
    return out


def median(xs: list) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def timed_steps(step, n: int, warm: int, sync) -> tuple[list, float]:
    """Runs step(i) n times, synchronizing after each; returns the per-step wall times in ms of the steps after
    the first `warm` and the total wall time in s."""
    times = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        step(i)
        sync()
        if i >= warm:
            times.append((time.perf_counter() - t) * 1e3)
    return times, time.perf_counter() - t0


def per_call_us(fn, iters: int, sync) -> float:
    """Mean wall time of fn in µs over iters calls, after one unmeasured call, synchronized at both ends."""
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t) / iters * 1e6


def run_part(name: str, fn, ctx: Ctx) -> dict:
    """One part: its result record. A part prints a marker line first, so that a shim diagnostic on stderr can be
    traced to the part that caused it."""
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        rec = fn(ctx)
        ctx.sync()
        rec["status"] = "ok"
        rec.setdefault("deterministic", True)
        if ctx.emulated:
            rec.pop("self_check", None)  # kernels did not run: a comparison of their results means nothing
        elif rec.get("self_check") and not rec["self_check"]["ok"]:
            print(f"  SELF-CHECK FAILED: {rec['self_check']}", flush=True)
    except Skip as e:
        print(f"SKIP {name}: {e}", flush=True)
        rec = {"status": "skipped", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - the error is the finding
        tb = traceback.format_exc()
        print(f"ERROR {name}: {type(e).__name__}: {e}\n{tb}", flush=True)
        rec = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-4000:]}
    rec["wall_s"] = time.perf_counter() - t0
    if rec["status"] == "ok":
        tm = rec.get("timing") or {}
        primary = tm.get("primary")
        shown = f"{primary}={tm[primary]:.4f}" if primary in tm else "no timing"
        print(f"RESULT {name} ok {shown} wall {rec['wall_s']:.2f}s", flush=True)
    return rec


def write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=True, default=str)
    os.replace(tmp, path)


def set_seed(ctx: Ctx) -> None:
    """Before every part: Python's and numpy's global generators (parts draw their inputs from their own
    numpy Generator seeded with SEED + k; this only covers library code that uses the global ones)."""
    import random

    random.seed(SEED)
    try:
        import numpy as np

        np.random.seed(SEED)
    except ImportError:
        pass
    if ctx.reseed is not None:
        ctx.reseed(SEED)
