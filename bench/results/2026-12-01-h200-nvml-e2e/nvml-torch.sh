#!/usr/bin/env bash
# PyTorch's NVML uses natively and through vGPU's NVML shim (TCP and shm).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
cat > /tmp/nvml_torch.py <<'PY'
import os, torch
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
print("device_count", torch.cuda.device_count(), "available", torch.cuda.is_available())
print("nvml count", torch.cuda._device_count_nvml())
print("nvml uuids", torch.cuda._raw_device_uuid_nvml())
x = torch.ones(256 << 20, device="cuda")  # 1 GiB
torch.cuda.synchronize()
free, total = torch.cuda.mem_get_info()
print("mem_get_info total GiB %.1f" % (total / 2**30))
print("utilization", type(torch.cuda.utilization()).__name__)
print("memory_usage", type(torch.cuda.memory_usage()).__name__)
print("device name", torch.cuda.get_device_name(0))
print(torch.cuda.list_gpu_processes())
PY
echo "== native"; python3 /tmp/nvml_torch.py 2>&1 | tail -12
port=$((20000 + RANDOM % 10000))
.device/bin/vgpu server --backend real --tcp 127.0.0.1:$port --shm nt > /tmp/nt-server.log 2>&1 &
sp=$!; sleep 1.5
for srv in tcp://127.0.0.1:$port shm://nt; do
  echo "== vgpu $srv"; timeout 120 .device/bin/vgpu run --server $srv -- python3 /tmp/nvml_torch.py 2>&1 | tail -12
done
kill $sp
