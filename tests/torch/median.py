#!/usr/bin/env python3
"""Medians over repeated rounds of the PyTorch comparison: each round's torch-compare.json (run-device.sh, native and
the vGPU modes side by side in one round) gives a ratio per workload and metric; this prints, per mode, the median
ratio over the rounds with its spread, and whether every round matched native.

usage: median.py ROUND/torch-compare.json [...] [--json OUT] [--goal tcp=1.1 --goal shm=1.05]
"""
import argparse
import json
import statistics
import sys


def load(paths):
    """{mode: {(workload, metric): {"ratios": [...], "native": [...], "other": [...], "match": [...]}}}"""
    table = {}
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        for run in doc.get("runs", []):
            mode = run.get("label", "?")
            for name, w in sorted(run.get("workloads", {}).items()):
                for t in w.get("timings", []):
                    if t.get("ratio") is None:
                        continue
                    cell = table.setdefault(mode, {}).setdefault(
                        (name, t["metric"]),
                        {"ratios": [], "native": [], "other": [], "match": [], "primary": t.get("primary", False)},
                    )
                    cell["ratios"].append(t["ratio"])
                    cell["native"].append(t["native"])
                    cell["other"].append(t["other"])
                    cell["match"].append(bool(w.get("match")))
    return table


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rounds", nargs="+", help="torch-compare.json of each round")
    ap.add_argument("--json", help="also write the medians here")
    ap.add_argument("--goal", action="append", default=[], help="MODE=RATIO: mark primary metrics above it")
    args = ap.parse_args()
    goals = {}
    for g in args.goal:
        mode, _, value = g.partition("=")
        try:
            goals[mode] = float(value)
        except ValueError:
            sys.exit(f"--goal {g!r}: expected MODE=RATIO, e.g. tcp=1.1")
    table = load(args.rounds)
    if not table:
        sys.exit("no comparisons in " + ", ".join(args.rounds))
    out = {}
    for mode, cells in table.items():
        goal = goals.get(mode.removeprefix("vgpu-"))
        print(f"=== {mode}: medians over {len(args.rounds)} round(s)" + (f", goal <= {goal}" if goal else ""))
        print(f"  {'workload':<15} {'metric':<26} {'native':>9} {'vgpu':>9} {'ratio':>6}  {'min':>5} {'max':>5}  "
              f"{'n':>2}  match")
        for (name, metric), c in sorted(cells.items()):
            med = statistics.median(c["ratios"])
            miss = goal is not None and c["primary"] and med > goal
            print(f"  {name:<15} {metric:<26} {statistics.median(c['native']):9.3f} "
                  f"{statistics.median(c['other']):9.3f} {med:6.2f}  {min(c['ratios']):5.2f} {max(c['ratios']):5.2f}  "
                  f"{len(c['ratios']):2d}  {'all' if all(c['match']) else 'NOT ALL'}{'  > goal' if miss else ''}")
            out.setdefault(mode, []).append({
                "workload": name, "metric": metric, "primary": c["primary"], "rounds": len(c["ratios"]),
                "median_ratio": med, "min_ratio": min(c["ratios"]), "max_ratio": max(c["ratios"]),
                "median_native": statistics.median(c["native"]), "median_vgpu": statistics.median(c["other"]),
                "all_match": all(c["match"]), "ratios": c["ratios"],
            })
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
