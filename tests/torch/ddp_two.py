"""Two-rank DistributedDataParallel (issue 16): each rank's GPU may sit on a different vGPU server.

Usage: ddp_two.py RANK WORLD PORT BACKEND. Each rank trains the same small model on its own shard for a few steps and
prints its losses and the final weights' checksum on stdout (identical across ranks and against a native run: DDP
averages gradients, so the weights agree). Natively both ranks may share one GPU with gloo.
"""

import sys
import time

import torch
import torch.distributed as dist


def main():
    rank, world, port, backend = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dev = torch.device("cuda:0")
    torch.cuda.set_device(dev)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).to(dev)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0])
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(6):
        print(f"@@ step {step}", file=sys.stderr, flush=True)
        x = torch.randn(32, 128, generator=gen).to(dev)
        y = torch.randint(0, 10, (32,), generator=gen).to(dev)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        losses = [torch.zeros(1, device=dev) for _ in range(world)]
        dist.all_gather(losses, loss.detach().reshape(1))
        print(f"step {step} losses " + " ".join(f"{v.item():.8f}" for v in losses))
    w = model[0].weight.detach().double().cpu()
    print(f"weights {w.sum().item():.10e} {w.abs().max().item():.10e}")
    # All-reduce bus bandwidth (log only): 64 MiB of float32, a few times.
    t = torch.ones(16 << 20, device=dev)
    dist.all_reduce(t)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        dist.all_reduce(t)
    torch.cuda.synchronize()
    secs = (time.perf_counter() - t0) / reps
    bus = t.numel() * 4 * 2 * (world - 1) / world / secs / 1e9
    print(f"rank {rank}: all_reduce 64 MiB {secs * 1e3:.1f} ms, bus bandwidth {bus:.2f} GB/s", file=sys.stderr)
    print(f"all_reduce value {t[0].item():.1f} (expected {float(world ** (reps + 1)):.1f})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
