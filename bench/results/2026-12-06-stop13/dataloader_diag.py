"""Which DataLoader batches arrive wrong on the device, and what they hold instead (diagnosis, stop 13)."""
import sys
import torch

dev = torch.device("cuda")
a = torch.randn(1000, device=dev)
float((a * 2).sum())


def run(workers, pin, sync_each, compute=True):
    g = torch.Generator().manual_seed(7)
    ds = torch.utils.data.TensorDataset(torch.randn(512, 64, generator=g), torch.arange(512))
    dl = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers, pin_memory=pin, shuffle=False)
    outs = []
    total = torch.zeros((), dtype=torch.float64, device=dev)
    for b, (x, i) in enumerate(dl):
        xh, ih = x.clone(), i.clone()
        pinned = x.is_pinned()
        xd, idv = x.to(dev, non_blocking=True), i.to(dev, non_blocking=True)
        if sync_each:
            torch.cuda.synchronize()
        if compute:
            total += (xd.double().sum(dim=1) * idv.double()).sum()
        outs.append((b, xh, ih, xd, idv, pinned, x.data_ptr()))
    torch.cuda.synchronize()
    expect = sum(float((xh.double().sum(dim=1) * ih.double()).sum()) for _, xh, ih, *_ in outs)
    bad = []
    for b, xh, ih, xd, idv, pinned, ptr in outs:
        xc, ic = xd.cpu(), idv.cpu()
        okx, oki = torch.equal(xc, xh), torch.equal(ic, ih)
        if not (okx and oki):
            srcx = [o[0] for o in outs if torch.equal(xc, o[1])]
            srci = [o[0] for o in outs if torch.equal(ic, o[2])]
            bad.append(f"b{b} ptr={ptr:#x} pinned={pinned}: x {'ok' if okx else f'BAD eq-batch={srcx} zeros={bool((xc == 0).all())} frac={float((xc != xh).float().mean()):.2f}'}"
                       f" i {'ok' if oki else f'BAD eq-batch={srci} first={ic[:4].tolist()}'}")
    print(f"workers={workers} pin={pin} sync={sync_each}: {len(outs)} batches, bad {len(bad)}, "
          f"sum {float(total):.6f} expect {expect:.6f}", flush=True)
    for line in bad:
        print("   ", line, flush=True)


for args in [(0, True, False), (2, False, False), (2, True, False), (2, True, True), (0, True, True)]:
    try:
        run(*args)
    except Exception as e:
        print(f"{args}: {type(e).__name__}: {e}", flush=True)
print("diag done", flush=True)
