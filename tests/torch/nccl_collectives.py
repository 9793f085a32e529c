"""PyTorch's NCCL process group over vGPU's libnccl.so.2 (issue 16), checked with values only copies produce.

Usage: nccl_collectives.py RANK WORLD PORT. Every tensor is made on the host and copied to the GPU, and read back
with a copy, so the check holds on the emulated backend (kernels do not run there; copies and collectives do) as on
a GPU. Prints one line per collective ("... ok") and "rank R: all ok"; exits non-zero on the first wrong value.
"""

import sys

import torch
import torch.distributed as dist


def check(name, got, want):
    if not torch.equal(got.cpu(), want):
        print(f"{name}: got {got.cpu()[:8].tolist()}..., want {want[:8].tolist()}...", flush=True)
        sys.exit(1)
    print(f"{name} ok", flush=True)


def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dev = torch.device("cuda:0")
    n = 1 << 20  # 4 MiB of float32, not a multiple of anything but the world
    host = torch.arange(n, dtype=torch.float32) + 1000.0 * rank
    x = host.to(dev)
    dist.all_reduce(x)
    want = sum(torch.arange(n, dtype=torch.float32) + 1000.0 * r for r in range(world))
    check("all_reduce sum", x, want)
    y = host.to(dev)
    dist.all_reduce(y, op=dist.ReduceOp.MAX)
    check("all_reduce max", y, torch.arange(n, dtype=torch.float32) + 1000.0 * (world - 1))
    z = host.to(dev)
    dist.broadcast(z, src=world - 1)
    check("broadcast", z, torch.arange(n, dtype=torch.float32) + 1000.0 * (world - 1))
    out = torch.empty(world * 1000, dtype=torch.float32).to(dev)
    dist.all_gather_into_tensor(out, host[:1000].to(dev))
    check("all_gather_into_tensor", out, torch.cat([torch.arange(1000, dtype=torch.float32) + 1000.0 * r for r in range(world)]))
    src = torch.cat([torch.full((100,), float(rank * 10 + j)) for j in range(world)]).to(dev)
    part = torch.empty(100, dtype=torch.float32).to(dev)
    dist.reduce_scatter_tensor(part, src)
    check("reduce_scatter_tensor", part, torch.full((100,), float(sum(r * 10 + rank for r in range(world)))))
    ints = torch.tensor([rank + 1, -rank, 7], dtype=torch.int64).to(dev)
    dist.all_reduce(ints, op=dist.ReduceOp.MIN)
    check("all_reduce int64 min", ints, torch.tensor([1, -(world - 1), 7], dtype=torch.int64))
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    send = torch.full((256,), float(rank)).to(dev)
    recv = torch.empty(256, dtype=torch.float32).to(dev)
    ops = [dist.P2POp(dist.isend, send, nxt), dist.P2POp(dist.irecv, recv, prv)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    check("batch_isend_irecv ring", recv, torch.full((256,), float(prv)))
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: all ok", flush=True)


if __name__ == "__main__":
    main()
