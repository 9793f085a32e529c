#!/usr/bin/env python3
"""CUDA tensors shared between processes (issue 16, IPC): torch.multiprocessing and a DataLoader whose workers
produce CUDA tensors. Run natively and through vGPU (`vgpu run --server ... -- python3 tests/torch/ipc.py`); the
outputs must be identical (every line is a deterministic fact or checksum; nothing depends on time or addresses).

  1. parent -> child: a CUDA tensor put on a queue is opened in a spawned child (cudaIpcOpenMemHandle, plus the
     producer's IPC event that orders the child after the parent's kernels); the child's in-place write is seen by
     the parent (the same memory), and its sum is the parent's.
  2. child -> parent: a tensor made on the GPU by the child is opened and read by the parent while the child waits.
  3. DataLoader(num_workers=2, multiprocessing_context="spawn") whose dataset returns CUDA tensors: every batch
     arrives, in order, with the right values.

With PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True the tensors live in VMM memory and are shared through
cuMemExportToShareableHandle file descriptors instead of cudaIpcGetMemHandle. Exits 1 on any mismatch; each step is
bounded by a timeout (the whole run takes seconds).
"""

import os
import sys

import torch
import torch.multiprocessing as mp

TIMEOUT_S = 60


def child_main(inbox, outbox, release):
    x = inbox.get(timeout=TIMEOUT_S)
    outbox.put(("child sum", float(x.sum().item())))
    x[:10] = -1.0  # in place: the parent's memory
    torch.cuda.synchronize()
    made = torch.arange(4096, dtype=torch.float64, device="cuda") * 3.0
    outbox.put(("child tensor", made))
    # The parent opens `made` from here; keep it alive until the parent is done with it.
    release.wait(TIMEOUT_S)


class CudaDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.full((256,), float(i), device="cuda") + torch.arange(256, device="cuda", dtype=torch.float32)


def main():
    if not torch.cuda.is_available():
        print("SKIP: no CUDA device")
        return 0
    ctx = mp.get_context("spawn")
    failures = 0

    def check(ok, what):
        nonlocal failures
        print(f"{what}: {'ok' if ok else 'FAIL'}")
        failures += 0 if ok else 1

    # 1 and 2: a child process, tensors both ways.
    x = torch.arange(1 << 20, dtype=torch.float32, device="cuda") * 0.5
    expected_sum = float(x.sum().item())  # before the child writes into x
    inbox, outbox, release = ctx.Queue(), ctx.Queue(), ctx.Event()
    child = ctx.Process(target=child_main, args=(inbox, outbox, release))
    child.start()
    inbox.put(x)
    label, child_sum = outbox.get(timeout=TIMEOUT_S)
    print(f"{label}: {child_sum:.1f}")
    check(child_sum == expected_sum, "the child summed the parent's tensor")
    label, made = outbox.get(timeout=TIMEOUT_S)
    print(f"{label}: device {made.device.type}, dtype {made.dtype}, sum {float(made.sum().item()):.1f}")
    check(torch.equal(made.cpu(), torch.arange(4096, dtype=torch.float64) * 3.0), "the parent reads the child's tensor")
    del made
    release.set()
    child.join(TIMEOUT_S)
    print(f"child exit code: {child.exitcode}")
    check(bool((x[:10] == -1.0).all().item()) and float(x[10].item()) == 5.0, "the child's write is in the parent's tensor")

    # 3: DataLoader workers that produce CUDA tensors.
    loader = torch.utils.data.DataLoader(
        CudaDataset(), batch_size=3, num_workers=2, multiprocessing_context="spawn", timeout=TIMEOUT_S
    )
    sums = []
    for batch in loader:
        sums.append(float(batch.double().sum().item()))
        check(batch.is_cuda and batch.shape == (3, 256), f"batch {len(sums) - 1} is a CUDA tensor of 3 x 256")
    want = [sum(float(i) * 256 + 255 * 128 for i in range(b * 3, b * 3 + 3)) for b in range(4)]
    print(f"loader batch sums: {sums}")
    check(sums == want, "every batch, in order, with its values")

    print(f"allocator: {os.environ.get('PYTORCH_CUDA_ALLOC_CONF', 'default')}")
    print("FAILED" if failures else "all ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
