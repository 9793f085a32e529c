#!/usr/bin/env python3
"""The driver's answers to the calls behind the gaps in GAPS.md, printed as JSON (standard library only, ctypes).

    python3 probe_driver.py                      # NVIDIA's driver: the native semantics vGPU must reproduce
    vgpu run --server URL -- python3 probe_driver.py   # the same questions answered through vGPU

run-device.sh runs it both ways and keeps both answers (frameworks-probe-*.json in the logs archive). Each entry is
the CUresult name (and the value written, where there is one).
"""
from __future__ import annotations

import ctypes
import json
import sys

CU_ERRORS = {0: "CUDA_SUCCESS", 1: "CUDA_ERROR_INVALID_VALUE", 3: "CUDA_ERROR_NOT_INITIALIZED",
             201: "CUDA_ERROR_INVALID_CONTEXT", 215: "CUDA_ERROR_UNSUPPORTED_LIMIT", 400: "CUDA_ERROR_INVALID_HANDLE",
             500: "CUDA_ERROR_NOT_FOUND", 801: "CUDA_ERROR_NOT_SUPPORTED"}

# Private export tables seen in framework runs (GAPS.md): who asks is noted beside each.
TABLES = {
    "da9151d33ae6cc41a5c04f26d533e328": "NVRTC, nvJitLink, cuDNN graph",
    "7cb63f9b9ca48e42a484beb66e6aed7f": "CUPTI (loaded by JAX's CUDA plugin)",
    "d7bd8af8e7acca4abdbcfb1f1b3fcf33": "CUPTI (loaded by JAX's CUDA plugin)",
}


def name(r: int) -> str:
    return CU_ERRORS.get(r, f"CUresult {r}")


def main() -> int:
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        print(json.dumps({"error": f"no libcuda.so.1: {e}"}))
        return 1
    out: dict = {}
    r = cu.cuInit(0)
    out["cuInit"] = name(r)
    if r:
        print(json.dumps(out, indent=1))
        return 1
    dev = ctypes.c_int()
    cu.cuDeviceGet(ctypes.byref(dev), 0)
    ctx = ctypes.c_void_p()
    out["cuDevicePrimaryCtxRetain"] = name(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev))
    out["cuCtxSetCurrent"] = name(cu.cuCtxSetCurrent(ctx))
    limits = {}
    for limit in range(11):
        v = ctypes.c_size_t(0xDEAD)
        r = cu.cuCtxGetLimit(ctypes.byref(v), limit)
        limits[limit] = [name(r), v.value if r == 0 else ("untouched" if v.value == 0xDEAD else v.value)]
    out["cuCtxGetLimit"] = limits  # 7 SHMEM_SIZE, 8 CIG_ENABLED, 9 CIG_SHMEM_FALLBACK_ENABLED, 10: not a CUlimit
    stream = ctypes.c_void_p()
    cu.cuStreamCreate(ctypes.byref(stream), 1)
    green = {}
    for label, s in (("created stream", stream), ("NULL stream", ctypes.c_void_p(0)),
                     ("per-thread stream", ctypes.c_void_p(2))):
        g = ctypes.c_void_p(0xBEEF)
        r = cu.cuStreamGetGreenCtx(s, ctypes.byref(g))
        green[label] = [name(r), "NULL" if not g.value else ("untouched" if g.value == 0xBEEF else hex(g.value))]
    out["cuStreamGetGreenCtx"] = green
    tables = {}
    for uuid, who in TABLES.items():
        table = ctypes.c_void_p()
        raw = (ctypes.c_ubyte * 16)(*bytes.fromhex(uuid))
        r = cu.cuGetExportTable(ctypes.byref(table), ctypes.byref(raw))
        size = None
        if r == 0 and table.value:
            first = ctypes.c_size_t.from_address(table.value).value
            size = first if first < 4096 else None  # word 0 is the table's byte size in most tables
        tables[uuid] = {"asked_by": who, "result": name(r), "size_word": size}
    out["cuGetExportTable"] = tables
    cu.cuStreamDestroy_v2(stream)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
