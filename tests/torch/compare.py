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


# Which traffic part (workloads.py's per-step counters) a timing metric is the time of, and the metric's unit in s.
TRAFFIC_OF = {
    ("gpt_train", "median_step_ms"): ("step", 1e-3),
    ("vision_infer", "resnet50_median_ms"): ("resnet50", 1e-3),
    ("vision_infer", "vit_b_16_median_ms"): ("vit_b_16", 1e-3),
    ("vision_infer", "small_cnn_median_ms"): ("small_cnn", 1e-3),
    ("lm_infer", "median_token_ms"): ("token", 1e-3),
    ("compile", "compiled_step_ms"): ("compiled_step", 1e-3),
    ("compile", "eager_step_ms"): ("eager_step", 1e-3),
    ("cuda_graph", "replay_ms"): ("replay", 1e-3),
    ("cuda_graph", "eager_step_ms"): ("eager_step", 1e-3),
    ("resnet18_train", "resnet18_train_step_ms"): ("step", 1e-3),
    ("small_ops", "small_ops_us"): ("op", 1e-6),
    ("small_ops", "mm4096_fp32_ms"): ("matmul", 1e-3),
}


def parse_shape(text: str) -> tuple[float, float | None]:
    """(RTT in s, rate in bytes/s or None) of a RATE-RTT link shape such as 10g-500us (as `vgpu link-relay`)."""
    rate, rtt = text.split("-", 1)
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
    unit = next(u for u in ("ns", "us", "µs", "ms", "s") if rtt.endswith(u))
    rtt_s = float(rtt[: -len(unit)]) * units[unit]
    if rate in ("inf", "unlimited"):
        return rtt_s, None
    mult = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}.get(rate[-1].lower(), 1.0)
    return rtt_s, float(rate.rstrip("kmgtKMGT")) * mult / 8


def traffic_report(doc: dict, base: dict | None) -> list:
    """Per-step round trips of a vGPU run and, for a run through a link shape, the time the link model predicts from
    `base` (the loopback TCP run): base + RTT x round trips + max(0, bytes / rate - base), bytes being the busier
    direction. Returns rows (also printed)."""
    link = doc.get("meta", {}).get("vgpu_link")
    shape = None
    if link:
        try:
            shape = parse_shape(link)
        except (ValueError, StopIteration):
            print(f"  (link shape {link!r} not understood: no predictions)")
    rows = []
    for name, w in doc.get("workloads", {}).items():
        for part, t in (w.get("traffic") or {}).items():
            if not t:
                continue
            row = {"workload": name, "part": part, "round_trips": t.get("round_trips"),
                   "batch_flushes": t.get("batch_flushes"), "bytes_sent": t.get("bytes_sent"),
                   "bytes_received": t.get("bytes_received"), "sync_by_call": t.get("sync_by_call", {})}
            metric = next((m for (wn, m), (p, _) in TRAFFIC_OF.items() if wn == name and p == part), None)
            if metric and shape and base:
                unit = TRAFFIC_OF[(name, metric)][1]
                b = (base.get("workloads", {}).get(name, {}).get("timing") or {}).get(metric)
                m = (w.get("timing") or {}).get(metric)
                bt = (base.get("workloads", {}).get(name, {}).get("traffic") or {}).get(part) or t
                if isinstance(b, (int, float)):
                    rtt_s, rate = shape
                    bytes_max = max(bt.get("bytes_sent", 0), bt.get("bytes_received", 0))
                    serial = bytes_max / rate if rate else 0.0
                    pred = b * unit + bt.get("round_trips", 0) * rtt_s + max(0.0, serial - b * unit)
                    row.update(metric=metric, base=b, predicted=pred / unit, measured=m,
                               measured_over_predicted=(m / (pred / unit)) if isinstance(m, (int, float)) else None)
            rows.append(row)
    if not rows:
        return rows
    head = "round trips per step (the shim's counters)"
    if shape:
        head += (f"; link {link}: predicted = vgpu-tcp time + RTT x round trips + max(0, bytes / rate - vgpu-tcp time)"
                 if base else f"; link {link} (no vgpu-tcp run to predict from)")
    print(f"  {head}")
    print(f"  {'workload':<15} {'part':<14} {'RT/step':>8} {'flushes':>8} {'up kB':>9} {'down kB':>9} "
          f"{'tcp':>9} {'predicted':>10} {'measured':>10} {'÷pred':>6}  round trips by call")
    for r in rows:
        calls = ", ".join(f"{op} {n:.2f}" for op, n in list(r["sync_by_call"].items())[:4])
        print(f"  {r['workload']:<15} {r['part']:<14} {fmt(r['round_trips'], '.2f'):>8} "
              f"{fmt(r['batch_flushes'], '.1f'):>8} {fmt((r['bytes_sent'] or 0) / 1e3, '.1f'):>9} "
              f"{fmt((r['bytes_received'] or 0) / 1e3, '.1f'):>9} {fmt(r.get('base')):>9} "
              f"{fmt(r.get('predicted')):>10} {fmt(r.get('measured')):>10} "
              f"{fmt(r.get('measured_over_predicted'), '.2f'):>6}  {calls}")
    return rows


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
        base = next((d for d in docs[1:] if d and d.get("meta", {}).get("label") in ("vgpu-tcp", "tcp")
                     and not d.get("meta", {}).get("vgpu_link")), None)
        run["traffic"] = traffic_report(doc, base if doc is not base else None)
        summary["runs"].append(run)
        summary["ok"] &= run["ok"]
        print(f"  => {'all match' if run['ok'] else 'MISMATCH'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
