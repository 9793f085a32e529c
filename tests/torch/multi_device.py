"""Two devices in one process (issue 16): peer copies of every shape and a model split across both GPUs.

Through vGPU the two devices are two servers (`VGPU_SERVER=A,B`); natively on a one-GPU machine both names are
cuda:0, so the numbers printed on stdout must be identical either way. Diagnostics (device count, peer access,
copy rates) go to stderr, which is not compared.
"""

import sys
import time

import torch


def checksum(t):
    t = t.detach().to("cpu").contiguous()
    return f"{t.double().sum().item():.10e} {t.double().abs().max().item():.10e}"


def main():
    n = torch.cuda.device_count()
    d0 = torch.device("cuda:0")
    d1 = torch.device("cuda:1" if n > 1 else "cuda:0")
    print(f"devices: {n}; peer 0->1: {torch.cuda.can_device_access_peer(0, 1) if n > 1 else '-'}", file=sys.stderr)
    torch.manual_seed(0)
    a = torch.randn(1024, 1024).to(d0)
    host = a.cpu()
    # Contiguous, transposed (a kernel copies on one side after a peer copy), a column slice (a pitched 2D copy),
    # asynchronous on a side stream, into an existing tensor, and back.
    b = a.to(d1)
    print("contiguous", torch.equal(b.cpu(), host))
    print("transposed", torch.equal(a.t().to(d1).cpu(), host.t()))
    print("column slice", torch.equal(a[:, 3:700].to(d1).cpu(), host[:, 3:700]))
    side = torch.cuda.Stream(device=d1)
    with torch.cuda.stream(side):
        c = a.to(d1, non_blocking=True)
    side.synchronize()
    print("non-blocking on a side stream", torch.equal(c.cpu(), host))
    dest = torch.empty_like(b)
    dest.copy_(a)
    print("copy_ into existing", torch.equal(dest.cpu(), host))
    print("round trip", torch.equal(dest.to(d0).cpu(), host))
    ints = torch.arange(12345, device=d1, dtype=torch.int64)
    print("int64 back to device 0", torch.equal(ints.to(d0).cpu(), torch.arange(12345)))
    # Bulk rate, for the log only.
    big = torch.ones(64 << 20, device=d0)
    torch.cuda.synchronize(d0)
    t0 = time.perf_counter()
    for _ in range(3):
        moved = big.to(d1)
    torch.cuda.synchronize(d1)
    secs = time.perf_counter() - t0
    print(f"256 MiB device 0 -> 1: {3 * big.numel() * 4 / secs / 1e9:.2f} GB/s", file=sys.stderr)
    print("bulk", moved.sum().item() == big.numel())
    # A model split across the two devices, trained a few steps: activations go 0 -> 1, gradients 1 -> 0.
    torch.manual_seed(1)
    first = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU()).to(d0)
    second = torch.nn.Sequential(torch.nn.Linear(512, 10)).to(d1)
    opt = torch.optim.SGD(list(first.parameters()) + list(second.parameters()), lr=0.05, momentum=0.9)
    # Inputs from the CPU generator: each device has its own generator, and natively both names are one device.
    x = torch.randn(64, 256).to(d0)
    y = torch.randint(0, 10, (64,)).to(d1)
    for step in range(8):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(second(first(x).to(d1)), y)
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.8f}")
    print("first", checksum(first[0].weight))
    print("second", checksum(second[0].weight))


if __name__ == "__main__":
    main()
