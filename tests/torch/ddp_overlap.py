"""Does DDP's all-reduce overlap its backward pass when the ranks' GPUs sit on different vGPU servers (issue 16)?

Usage: ddp_overlap.py RANK WORLD PORT [BACKEND [WIDTH]] (WIDTH 4096 by default; smaller to try it out). Each rank times, after warm-up, the median of several steps of
  compute: forward + backward without gradient exchange (DDP's no_sync),
  comm:    the all-reduces of the same gradients alone (one flat tensor cut into DDP's 25 MiB buckets),
  ddp:     forward + backward with DDP's bucketed all-reduces,
and prints one line per rank: the three times and the overlap, (compute + comm - ddp) / min(compute, comm): 0 when
the exchange runs after the backward pass, 1 when it hides entirely behind it. Compare runs of one machine only.
"""

import statistics
import sys
import time

import torch
import torch.distributed as dist


def timed(fn, reps):
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    backend = sys.argv[4] if len(sys.argv) > 4 else "nccl"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dev = torch.device("cuda:0")
    torch.cuda.set_device(dev)
    torch.manual_seed(0)
    width = int(sys.argv[5]) if len(sys.argv) > 5 else 4096
    depth, batch = 6, 4096
    layers = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers).to(dev)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[0], bucket_cap_mb=25)
    x = torch.randn(batch, width, device=dev)

    def step():
        ddp(x).square().mean().backward()

    def compute():
        with ddp.no_sync():
            step()

    grads = sum(p.numel() for p in model.parameters())
    flat = torch.ones(grads, device=dev)
    bucket = (25 << 20) // 4

    def comm():
        for at in range(0, grads, bucket):
            dist.all_reduce(flat[at : at + bucket])

    for fn in (compute, comm, step):
        fn()
    reps = 5
    t_compute = timed(compute, reps)
    t_comm = timed(comm, reps)
    t_ddp = timed(step, reps)
    overlap = (t_compute + t_comm - t_ddp) / min(t_compute, t_comm)
    print(
        f"rank {rank}: compute {t_compute * 1e3:.1f} ms, comm {t_comm * 1e3:.1f} ms "
        f"({grads * 4 / 2**20:.0f} MiB of gradients), ddp step {t_ddp * 1e3:.1f} ms, overlap {overlap:.2f}",
        flush=True,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
