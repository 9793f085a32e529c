#!/usr/bin/env python3
"""Compare workloads.py results: the first file (native) against each of the others (vGPU runs).

    python3 compare.py NATIVE.json OTHER.json [OTHER2.json ...] [--json SUMMARY.json]

A path may also be a directory of per-workload JSON files (run-device.sh SPLIT=1); they are merged.
For every workload that ran in the native file: the other run must have run it too, every number under
"checks" must agree within the workload's tolerance (below), and a workload's in-run self check must hold.
Prints a table (workload, match + max relative difference, time native, time other, other ÷ native) and
exits 1 if anything does not match, 2 on bad input, 0 otherwise. Workloads skipped natively are listed, not
compared.

Numbers: integers (token ids, argmaxes, step numbers) must be equal; floats are compared by relative
difference |a - b| / max(|a|, |b|, FLOOR) (FLOOR keeps values near zero from inflating the ratio).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys

FLOOR = 1e-6

# Relative tolerance per workload: (both runs strictly deterministic, otherwise).
#
# A vGPU run executes the same PyTorch build's kernels, with the same launch configurations, on the same GPU
# model as the native run; it only forwards the driver calls. With deterministic algorithms (fixed-order
# reductions, cuBLAS with a fixed workspace, deterministic cuDNN algorithms, memory-efficient attention without
# split-key atomics) the results are then bit-identical, and any difference means vGPU copied, ordered or
# launched something wrongly -- such bugs show up as large differences (the TCP ordering bug of
# bench/results/2026-11-24-h100-torch-smoke.md changed a loss from 0.7303 to 0.6592). The deterministic
# tolerance is therefore tight: 1e-5 leaves room only for printing/rounding, not for a different computation.
#
# When a run could not be strict (workloads.py fell back to warn_only because some op has no deterministic
# kernel, or resnet18_train, whose adaptive_avg_pool2d backward uses atomics), float sums are reordered by
# atomics run to run (~1e-7 relative per op in fp32). Over a training run such differences grow: a few
# hundred AdamW steps of gpt_train amplify them to ~1e-4..1e-3 relative on the loss, the 25 SGD steps of
# resnet18_train to far less. 2e-3 (1e-3 for the short runs) tolerates that drift while still catching a
# wrong result, which moves losses by percents.
#
# lm_infer: greedy tokens are integers and must be equal; with bf16 autocast the forward pass is still
# deterministic (flash-attention forward, cuBLAS, fixed-order LayerNorm), so equal tokens are expected, not
# just likely. If a token differs, the report shows where, and workloads.py's info.min_top2_margin says how
# close the nearest tie was (a near-tie flip under a nondeterministic run would be explainable, a flip with
# a wide margin is a bug).
# compile: inductor-generated kernels are deterministic given the same configuration; the autotuner is not
# used in reduce-overhead mode, so the same kernels run in both runs.
TOLERANCES = {
    "gpt_train": (1e-5, 2e-3),
    "vision_infer": (1e-5, 1e-3),
    "lm_infer": (1e-5, 1e-3),
    "compile": (1e-5, 1e-3),
    "cuda_graph": (1e-5, 1e-3),
    "resnet18_train": (1e-5, 1e-3),
    "small_ops": (1e-6, 1e-6),  # elementwise ops and one GEMM: no atomics anywhere
    "libs": (1e-6, 1e-5),  # FFT, one GEMM with bias, Philox numbers: same kernels, same order
}
DEFAULT_TOL = (1e-5, 1e-3)


def load(path: str) -> dict:
    if os.path.isdir(path):
        doc: dict = {"meta": {}, "workloads": {}}
        for f in sorted(glob.glob(os.path.join(path, "*.json"))):
            with open(f) as fh:
                d = json.load(fh)
            if not doc["meta"]:
                doc["meta"] = d.get("meta", {})
            doc["workloads"].update(d.get("workloads", {}))
        if not doc["meta"]:
            doc["meta"] = {"label": os.path.basename(path.rstrip("/"))}
        return doc
    with open(path) as fh:
        return json.load(fh)


def diff(a, b, path: str, out: list) -> float:
    """Max relative difference between two check trees; structural or integer mismatches are appended to
    out (as strings) and count as infinite."""
    if isinstance(a, dict) and isinstance(b, dict):
        m = 0.0
        for k in a:
            if k not in b:
                out.append(f"{path}.{k}: missing")
                m = math.inf
            else:
                m = max(m, diff(a[k], b[k], f"{path}.{k}", out))
        return m
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} vs {len(b)}")
            return math.inf
        m, first_bad = 0.0, None
        for i, (x, y) in enumerate(zip(a, b)):
            sub: list = []
            d = diff(x, y, f"{path}[{i}]", sub)
            if sub and first_bad is None:
                first_bad = i
                out.append(sub[0] + (f" (first of {sum(1 for p, q in zip(a, b) if p != q)} differing)"
                                     if all(isinstance(v, int) for v in a + b) else ""))
            m = max(m, d)
        return m
    if isinstance(a, bool) or isinstance(b, bool) or (isinstance(a, int) and isinstance(b, int)):
        if a != b:
            out.append(f"{path}: {a} vs {b}")
            return math.inf
        return 0.0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            if math.isnan(a) and math.isnan(b):
                return 0.0
            out.append(f"{path}: {a} vs {b}")
            return math.inf
        if a == b:
            return 0.0
        return abs(a - b) / max(abs(a), abs(b), FLOOR)
    if a != b:
        out.append(f"{path}: {a!r} vs {b!r}")
        return math.inf
    return 0.0


def compare_workload(name: str, ref: dict, oth: dict | None) -> dict:
    r: dict = {"workload": name, "native_status": ref.get("status"),
               "other_status": oth.get("status") if oth else "missing"}
    if ref.get("status") != "ok":
        r["match"] = None  # nothing to compare against
        r["note"] = ref.get("reason") or ref.get("error", "")
        return r
    if not oth or oth.get("status") != "ok":
        r["match"] = False
        r["note"] = (oth or {}).get("error") or (oth or {}).get("reason") or "not run"
        return r
    det = bool(ref.get("deterministic")) and bool(oth.get("deterministic"))
    tol = TOLERANCES.get(name, DEFAULT_TOL)[0 if det else 1]
    problems: list = []
    m = diff(ref.get("checks", {}), oth.get("checks", {}), name, problems)
    sc = oth.get("self_check")
    if sc and not sc.get("ok"):
        problems.append(f"self check failed: {sc.get('what')} = {sc.get('value')}")
    r.update(max_rel_diff=m, tolerance=tol, deterministic=det)
    if m > tol and not problems:
        problems.append(f"max rel diff {m:.3g} > tolerance {tol:g}")
    r["match"] = not problems and m <= tol
    r["problems"] = problems
    return r


def timings(ref: dict, oth: dict | None) -> list:
    rows = []
    rt = ref.get("timing", {}) if ref.get("status") == "ok" else {}
    ot = (oth or {}).get("timing", {}) if (oth or {}).get("status") == "ok" else {}
    primary = rt.get("primary") or ot.get("primary")
    keys = [k for k in rt if k != "primary"]
    keys.sort(key=lambda k: k != primary)
    for k in keys:
        a, b = rt.get(k), ot.get(k)
        ratio = b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
        rows.append({"metric": k, "native": a, "other": b, "ratio": ratio, "primary": k == primary})
    return rows


def fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="native result first, then the runs to check against it")
    ap.add_argument("--json", help="write a summary here")
    ap.add_argument("--all-timings", action="store_true", help="list every timing metric, not only the primary")
    args = ap.parse_args()
    if len(args.files) < 2:
        ap.error("need the native result and at least one other")
    docs = []
    for f in args.files:
        try:
            docs.append(load(f))
        except (OSError, ValueError) as e:
            print(f"cannot read {f}: {e}", file=sys.stderr)
            if f == args.files[0]:
                return 2
            docs.append(None)
    ref = docs[0]
    if not ref.get("workloads"):
        print(f"{args.files[0]}: no workloads in the native result: nothing to compare against", file=sys.stderr)
        return 2
    rlabel = ref.get("meta", {}).get("label", "native")
    summary: dict = {"native": {"file": args.files[0], "meta": ref.get("meta", {})}, "runs": [], "ok": True}
    for f, doc in zip(args.files[1:], docs[1:]):
        label = (doc or {}).get("meta", {}).get("label") or f
        print(f"\n=== {label} ({f}) against {rlabel} ({args.files[0]})")
        if doc is None:
            summary["runs"].append({"file": f, "label": label, "ok": False, "error": "unreadable"})
            summary["ok"] = False
            print("  unreadable: every workload counts as a mismatch")
            continue
        ri = ref.get("meta", {}).get("torch_init_s")
        oi = doc.get("meta", {}).get("torch_init_s")
        if ri is not None or oi is not None:
            print(f"  first CUDA tensor (torch_init_s): native {fmt(ri, '.2f')} s, this run {fmt(oi, '.2f')} s")
        wn = max([15] + [len(n) for n in ref.get("workloads", {})])  # framework parts have longer names
        hdr = f"  {'workload':<{wn}} {'match':<16} {'metric':<26} {'native':>11} {'other':>11} {'ratio':>7}"
        print(hdr)
        print("  " + "-" * (len(hdr) - 2))
        run = {"file": f, "label": label, "meta": doc.get("meta", {}), "workloads": {}, "ok": True}
        for name, rw in ref.get("workloads", {}).items():
            ow = doc.get("workloads", {}).get(name)
            c = compare_workload(name, rw, ow)
            c["timings"] = timings(rw, ow)
            run["workloads"][name] = c
            if c["match"] is None:
                mtxt = f"n/a ({c['native_status']})"
            elif c["match"]:
                mtxt = f"yes ({c['max_rel_diff']:.1e})" if c["max_rel_diff"] else "yes (exact)"
            else:
                mtxt = "NO" + (f" ({c['max_rel_diff']:.1e})" if c.get("max_rel_diff") not in (None, math.inf)
                               else f" ({c['other_status']})" if c["other_status"] != "ok" else "")
                run["ok"] = False
            rows = c["timings"] if args.all_timings else [t for t in c["timings"] if t["primary"]]
            if not rows:
                rows = [{"metric": "", "native": None, "other": None, "ratio": None}]
            for i, t in enumerate(rows):
                print(f"  {name if i == 0 else '':<{wn}} {mtxt if i == 0 else '':<16} {t['metric']:<26} "
                      f"{fmt(t['native']):>11} {fmt(t['other']):>11} {fmt(t['ratio'], '.2f'):>7}")
            if c["match"] is False:
                for p in (c.get("problems") or [c.get("note", "")])[:5]:
                    print(f"      {p}"[:300])
            elif c["match"] is None and c.get("note"):
                print(f"      native: {c['note']}"[:300])
        summary["runs"].append(run)
        summary["ok"] &= run["ok"]
        print(f"  => {'all match' if run['ok'] else 'MISMATCH'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
