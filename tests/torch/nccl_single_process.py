"""One process, two devices (each on its own vGPU server), through torch.cuda.nccl (ncclCommInitAll, issue 16).

Tensors are made on the host and copied, and read back with copies, so the check holds on the emulated backend as on
a GPU. Prints one line per collective and "all ok"; exits non-zero on the first wrong value.
"""

import sys

import torch
import torch.cuda.nccl as nccl


def check(name, got, want):
    if not torch.equal(got.cpu(), want):
        print(f"{name}: got {got.cpu()[:8].tolist()}..., want {want[:8].tolist()}...", flush=True)
        sys.exit(1)
    print(f"{name} ok", flush=True)


def main():
    n = torch.cuda.device_count()
    if n < 2:
        print(f"needs two devices, sees {n}")
        sys.exit(1)
    size = 300_000
    base = [torch.arange(size, dtype=torch.float32) + 1000.0 * d for d in range(2)]
    xs = [base[d].to(f"cuda:{d}") for d in range(2)]
    nccl.all_reduce(xs)
    for d in range(2):
        check(f"all_reduce on cuda:{d}", xs[d], base[0] + base[1])
    bs = [base[0].to("cuda:0"), torch.zeros(size).to("cuda:1")]
    nccl.broadcast(bs, root=0)
    check("broadcast to cuda:1", bs[1], base[0])
    ins = [base[d][:1000].to(f"cuda:{d}") for d in range(2)]
    outs = [torch.zeros(2000).to(f"cuda:{d}") for d in range(2)]
    nccl.all_gather(ins, outs)
    for d in range(2):
        check(f"all_gather on cuda:{d}", outs[d], torch.cat([base[0][:1000], base[1][:1000]]))
    for d in range(2):
        torch.cuda.synchronize(d)
    print("all ok", flush=True)


if __name__ == "__main__":
    main()
