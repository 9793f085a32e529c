"""Stop 15 diagnosis: the copies ProcessGroupGloo makes for CUDA tensors, one at a time, then gloo collectives."""
import os
import sys
import threading

import torch


def mark(msg):
    print(f"@@ {msg}", file=sys.stderr, flush=True)
    print(msg, flush=True)


def copies():
    dev = torch.device("cuda:0")
    x = torch.tensor([4], device=dev, dtype=torch.long)
    mark(f"A tensor on device: {x.item()}")
    # 1. D2H into pinned memory on a side stream, synchronized on the same thread.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        p = torch.empty(1, dtype=torch.long, pin_memory=True).copy_(x, non_blocking=True)
    s.synchronize()
    mark(f"1 D2H pinned, side stream, same-thread sync: {p[0].item()}")
    # 2. The same, synchronized on another thread (as gloo's worker does).
    s2 = torch.cuda.Stream()
    s2.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s2):
        p2 = torch.empty(1, dtype=torch.long, pin_memory=True).copy_(x * 3, non_blocking=True)
    th = threading.Thread(target=s2.synchronize)
    th.start()
    th.join()
    mark(f"2 D2H pinned, side stream, other-thread sync: {p2[0].item()} (12)")
    # 3. H2D from pinned memory written by the CPU, on a side stream from another thread, event waited on the
    # current stream, then item().
    out = torch.zeros(1, dtype=torch.long, device=dev)
    pin = torch.empty(1, dtype=torch.long, pin_memory=True)
    ev = torch.cuda.Event()
    s3 = torch.cuda.Stream()

    def work():
        pin[0] = 77
        with torch.cuda.stream(s3):
            out.copy_(pin, non_blocking=True)
            ev.record(s3)

    th = threading.Thread(target=work)
    th.start()
    th.join()
    torch.cuda.current_stream().wait_event(ev)
    mark(f"3 H2D pinned from another thread, event wait: {out.item()} (77)")
    # 4. As gloo: pinned input copy started on the main thread, other thread syncs, reads, writes outputs, copies
    # back, main thread waits on the event.
    inp = torch.tensor([5], device=dev, dtype=torch.long)
    outs = [torch.empty_like(inp) for _ in range(2)]
    si, so = torch.cuda.Stream(), torch.cuda.Stream()
    si.wait_stream(torch.cuda.current_stream())
    so.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(si):
        tin = torch.empty(1, dtype=torch.long, pin_memory=True).copy_(inp, non_blocking=True)
    touts = [torch.empty(1, dtype=torch.long, pin_memory=True) for _ in range(2)]
    ev4 = torch.cuda.Event()
    seen = []

    def run():
        si.synchronize()
        so.synchronize()
        seen.append(tin[0].item())
        for t in touts:
            t.copy_(tin)
        with torch.cuda.stream(so):
            for o, t in zip(outs, touts):
                o.copy_(t, non_blocking=True)
            ev4.record(so)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    torch.cuda.current_stream().wait_event(ev4)
    mark(f"4 gloo-like: worker saw {seen}, outputs {[o.item() for o in outs]} (5, [5, 5])")


def collectives(rank, world, port):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    dev = torch.device("cuda:0")
    x = torch.tensor([10 + rank], device=dev, dtype=torch.long)
    outs = [torch.zeros_like(x) for _ in range(world)]
    dist.all_gather(outs, x)
    mark(f"rank {rank} all_gather: {[o.item() for o in outs]}")
    y = torch.full((4,), float(rank + 1), device=dev)
    dist.all_reduce(y)
    mark(f"rank {rank} all_reduce: {y.tolist()}")
    dist.broadcast(y, 0)
    mark(f"rank {rank} broadcast: {y.tolist()}")
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "copies":
        copies()
    else:
        collectives(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
