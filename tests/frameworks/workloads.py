#!/usr/bin/env python3
"""Framework workloads for checking vGPU against a native GPU (issue 20): JAX, CuPy, Triton, Hugging Face.

    python3 workloads.py FRAMEWORK [--parts P1,P2] [--json OUT] [--quick] [--emulated] [--label L]
    python3 workloads.py --list

FRAMEWORK is one of: jax (XLA's defaults: pre-allocation, command buffers), jax_noprealloc
(XLA_PYTHON_CLIENT_PREALLOCATE=false), jax_nocmdbuf (XLA_FLAGS=--xla_gpu_enable_command_buffer=), cupy, triton,
hf (Hugging Face transformers on PyTorch). One framework per process: JAX pre-allocates most of the
GPU, and a crash in one framework must not hide the others. Each part of a framework (fw_*.py, PARTS) is one
entry under "workloads" in the JSON, in tests/torch/compare.py's format, so `compare.py native.json vgpu.json`
compares them number for number. The JSON is rewritten after every part: a run killed by a timeout or a crash
leaves the finished parts behind.

A framework that is not installed gives one "skipped" entry per part (exit 0), with the import error as reason.
--emulated: vGPU's emulated backend (kernels do not run): the parts drive the same CUDA traffic, their numbers
are meaningless, self checks are not reported. Exit status: 0 when no part errored, 1 otherwise, 2 bad usage.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

# framework -> (module, environment it needs before the framework is imported)
FRAMEWORKS = {
    "jax": ("fw_jax", {}),
    "jax_noprealloc": ("fw_jax", {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}),
    # XLA without command buffers (no CUDA graphs built node by node or captured to a given graph): the rest of
    # JAX's driver traffic where the command-buffer gaps (GAPS.md) would stop it.
    "jax_nocmdbuf": ("fw_jax", {"XLA_FLAGS": "--xla_gpu_enable_command_buffer="}),
    "cupy": ("fw_cupy", {}),
    "triton": ("fw_triton", {}),
    "hf": ("fw_hf", {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false"}),
}


def meta(framework: str, label: str | None, ctx: common.Ctx, info: dict) -> dict:
    return {
        "schema": common.SCHEMA,
        "framework": framework,
        "label": label or ("vgpu " + os.environ["VGPU_SERVER"] if os.environ.get("VGPU_SERVER") else "native"),
        "quick": ctx.quick,
        "emulated": ctx.emulated,
        "python": platform.python_version(),
        "host": platform.node(),
        "argv": sys.argv,
        "vgpu_server": os.environ.get("VGPU_SERVER"),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **info,
    }


def fill_missing(args, parts) -> int:
    """Records the parts a dead run never reached, so that compare.py lists them instead of not knowing them."""
    if not args.json:
        print("--fill-missing needs --json", file=sys.stderr)
        return 2
    try:
        with open(args.json) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = {"meta": {"framework": args.framework, "label": args.label}, "workloads": {}}
    added = 0
    for name, _ in parts:
        if args.parts and name not in args.parts.split(","):
            continue
        key = f"{args.framework}.{name}"
        if key not in doc["workloads"]:
            doc["workloads"][key] = {"status": "error", "error": f"not run: {args.fill_missing}"}
            added += 1
    doc.setdefault("meta", {})["died"] = args.fill_missing
    common.write_json(args.json, doc)
    print(f"{args.framework}: {added} part(s) recorded as not run ({args.fill_missing})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("framework", nargs="?", help=", ".join(FRAMEWORKS))
    ap.add_argument("--parts", help="comma-separated parts to run (default: all of the framework's)")
    ap.add_argument("--json", help="write the results here (rewritten after every part)")
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--emulated", action="store_true", help="vGPU's emulated backend: kernels do not run")
    ap.add_argument("--label", help="name of this run in the JSON (default: native, or vgpu $VGPU_SERVER)")
    ap.add_argument("--list", action="store_true", help="list frameworks and their parts")
    ap.add_argument("--fill-missing", metavar="WHY",
                    help="do not run: add every part missing from --json as an error saying WHY (for a run that "
                         "crashed or timed out before writing them)")
    args = ap.parse_args()
    if args.list:
        for fw, (mod, _) in FRAMEWORKS.items():
            print(f"{fw}: {', '.join(n for n, _ in importlib.import_module(mod).PARTS)}")
        return 0
    if args.framework not in FRAMEWORKS:
        ap.print_usage(sys.stderr)
        print(f"framework must be one of {', '.join(FRAMEWORKS)}", file=sys.stderr)
        return 2
    module_name, env = FRAMEWORKS[args.framework]
    if args.fill_missing is not None:
        return fill_missing(args, importlib.import_module(module_name).PARTS)
    for k, v in env.items():
        os.environ[k] = v  # before the framework is imported (setup() imports it)
    mod = importlib.import_module(module_name)
    parts = list(mod.PARTS)
    if args.parts:
        wanted = args.parts.split(",")
        bad = [p for p in wanted if p not in dict(parts)]
        if bad:
            print(f"unknown part(s) of {args.framework}: {', '.join(bad)}; known: "
                  f"{', '.join(n for n, _ in parts)}", file=sys.stderr)
            return 2
        parts = [(n, f) for n, f in parts if n in wanted]
    ctx = common.Ctx(args.quick, args.emulated)
    prefix = args.framework + "."
    doc: dict = {"meta": meta(args.framework, args.label, ctx, {}), "workloads": {}}
    t0 = time.perf_counter()
    try:
        info = mod.setup(ctx)
    except common.Skip as e:
        # Not installed (or unusable) here: every part says so, nothing fails.
        print(f"SKIP {args.framework}: {e}", flush=True)
        doc["meta"]["skipped"] = str(e)
        doc["workloads"] = {prefix + n: {"status": "skipped", "reason": str(e)} for n, _ in parts}
        if args.json:
            common.write_json(args.json, doc)
        print(f"SUMMARY {args.framework} skipped: {e}")
        return 0
    doc["meta"].update(info)
    doc["meta"]["setup_s"] = time.perf_counter() - t0
    print(f"{args.framework}: {' '.join(f'{k}={v}' for k, v in info.items())} setup {doc['meta']['setup_s']:.2f}s",
          flush=True)
    for name, fn in parts:
        common.set_seed(ctx)
        doc["workloads"][prefix + name] = common.run_part(prefix + name, fn, ctx)
        if args.json:
            common.write_json(args.json, doc)
    doc["meta"]["total_s"] = time.perf_counter() - t0
    if args.json:
        common.write_json(args.json, doc)
    st = {n: r["status"] for n, r in doc["workloads"].items()}
    print("SUMMARY " + " ".join(f"{n}={s}" for n, s in st.items()) + f" total {doc['meta']['total_s']:.1f}s",
          flush=True)
    return 1 if "error" in st.values() else 0


if __name__ == "__main__":
    sys.exit(main())
