#!/usr/bin/env bash
# Runs the RDMA transport's tests where no RDMA hardware exists: a QEMU VM (software emulation, no KVM) boots
# Debian's own kernel with Soft-RoCE (rdma_rxe), mounts this machine's root read-only over 9p and runs
# tests/rdma/inside.sh, which joins two addresses by a veth link with an rxe device on each end and runs the
# transport conformance suite, the RDMA-only tests, `vgpu sample` and the end-to-end driver-API suite (tests/e2e,
# emulated backend, the references of the TCP and shm runs) through the shim over rdma://, client on one end and
# server on the other. Recipe: shared/reference/rdma-softroce-vm.md.
#
# Installs its Debian packages if missing, builds the test binaries and the e2e programs (scripts/setup-cuda.sh for
# cuda.h), downloads the kernel package once into target/rdma-vm, and ends with one line "N passed, N failed".
# VM timings prove correctness only, never speed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
work="$root/target/rdma-vm"
mkdir -p "$work"
t_start=$(date +%s)

need=(qemu-system-x86 busybox-static kmod cpio rdma-core ibverbs-providers ibverbs-utils libibverbs1 librdmacm1
      iproute2 cmake libclang-dev python3)
missing=()
for p in "${need[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

echo "building the test binaries"
cargo build -q -p vgpu -p vgpu-client-shim -p vgpu-nvml-shim
json=$(cargo test -q -p vgpu-transports --no-run --message-format=json 2>/dev/null)
exe_of() { # path of the integration test binary $1
  printf '%s\n' "$json" | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    t = m.get("target") or {}
    if m.get("executable") and t.get("name") == sys.argv[1] and "test" in t.get("kind", []):
        print(m["executable"])' "$1" | tail -1
}
conformance=$(exe_of conformance)
rdma_tests=$(exe_of rdma)
[ -x "$conformance" ] && [ -x "$rdma_tests" ] || { echo "test binaries not found"; echo "0 passed, 1 failed"; exit 1; }
# `vgpu run` finds the shim here; the VM sees this tree read-only, so make the link now.
mkdir -p target/debug/shim && ln -sfn ../libcuda.so target/debug/shim/libcuda.so.1 \
  && ln -sfn ../libnvidia_ml.so target/debug/shim/libnvidia-ml.so.1
# The end-to-end driver-API programs (tests/e2e) need cuda.h to build; the VM cannot write, so build them now.
e2e=""
if cuda_env=$(scripts/setup-cuda.sh) \
  && python3 tests/e2e/run.py build --cuda-include "$(printf '%s\n' "$cuda_env" | sed -n 's/^CUDA_INCLUDE=//p')" \
       --lib-dir target/debug --out target/e2e | tail -1; then
  e2e="$root/target/e2e"
else
  echo "could not build the e2e programs; the VM counts that as a failure"
fi

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$kpkg" ] || { apt-get update -q >/dev/null; kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); }
kver=${kpkg#linux-image-}
kroot="$work/$kpkg"
if [ ! -e "$kroot/.done" ]; then
  echo "downloading $kpkg"
  rm -rf "$kroot" && mkdir -p "$kroot"
  (cd "$work" && rm -f "${kpkg}"_*.deb && apt-get download -q "$kpkg" >/dev/null)
  dpkg -x "$work/${kpkg}"_*.deb "$kroot"
  depmod -b "$kroot" "$kver"
  touch "$kroot/.done"
fi
moddir="$kroot/lib/modules/$kver"

# The initrd: static busybox, the modules (with their dependencies, in load order) and an init that mounts the host.
initrd="$work/initrd"
rm -rf "$initrd" && mkdir -p "$initrd"/{bin,proc,sys,dev,host,mods}
cp /bin/busybox "$initrd/bin/busybox"
python3 - "$moddir" "$initrd/mods" <<'PY'
import lzma, os, shutil, sys
moddir, out = sys.argv[1], sys.argv[2]
deps = {}
for line in open(os.path.join(moddir, "modules.dep")):
    path, _, rest = line.partition(":")
    deps[path] = rest.split()
by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
wanted = ["crc32_generic", "virtio_pci", "9pnet_virtio", "9p", "rdma_rxe", "ib_uverbs", "rdma_ucm", "veth"]
order, seen = [], set()
def visit(p):
    if p in seen: return
    seen.add(p)
    for d in reversed(deps[p]): visit(d)
    order.append(p)
for w in wanted:
    if w in by_name: visit(by_name[w])
    elif w != "crc32_generic": sys.exit(f"module {w} not in this kernel")
with open(os.path.join(out, "order"), "w") as f:
    for i, p in enumerate(order):
        name = f"{i:03d}-{os.path.basename(p).split('.ko')[0]}.ko"
        src = os.path.join(moddir, p)
        if p.endswith(".xz"):
            with lzma.open(src) as s, open(os.path.join(out, name), "wb") as d: shutil.copyfileobj(s, d)
        else:
            shutil.copy(src, os.path.join(out, name))
        f.write(name + "\n")
PY
cat > "$initrd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null || echo "vm: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000 hostroot /host || echo "vm: 9p mount failed"
mount -t proc proc /host/proc || echo "vm: proc mount failed"
mount -t sysfs sys /host/sys || echo "vm: sysfs mount failed"
mount -t devtmpfs dev /host/dev || echo "vm: devtmpfs mount failed"
mount -t tmpfs tmpfs /host/run || echo "vm: tmpfs mount failed"
# A checkout under /tmp stays reachable at /run/hosttmp once /tmp becomes the VM's scratch tmpfs.
mkdir -p /host/run/hosttmp && mount -o bind /host/tmp /host/run/hosttmp || echo "vm: /tmp bind failed"
mount -t tmpfs tmpfs /host/tmp || echo "vm: tmpfs mount failed"
script=$(sed -n 's/.*vgpu\.script=\([^ ]*\).*/\1/p' /proc/cmdline)
case "$script" in /tmp/*) script="/run/hosttmp/${script#/tmp/}" ;; esac
chroot /host /bin/bash "$script"
echo "vm: inside script exited with $?"
poweroff -f
INIT
chmod +x "$initrd/init"
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

echo "booting $kpkg in QEMU (TCG) with Soft-RoCE"
log="$work/vm.log"
t_boot=$(date +%s)
set +e
timeout "${VGPU_RDMA_VM_TIMEOUT:-1500}" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 2048 -smp 2 \
  -nographic -no-reboot -nic none -kernel "$kroot/boot/vmlinuz-$kver" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 quiet panic=-1 vgpu.script=${VGPU_RDMA_VM_SCRIPT:-$root/tests/rdma/inside.sh} vgpu.env=CONF=$conformance,RDMA=$rdma_tests,E2E=$e2e" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap </dev/null >"$log" 2>&1
rc=$?
set -e
tr -d '\r' <"$log" | grep -v '^\s*$' | grep -Ev '^(test .* \.\.\. ok|running [0-9]+ tests?)$' | tail -n 80
t_end=$(date +%s)
echo "rdma vm: build and setup $((t_boot - t_start)) s, VM $((t_end - t_boot)) s (qemu exit $rc)"
summary=$(tr -d '\r' <"$log" | sed -n 's/^RDMA-VM: \([0-9]* passed, [0-9]* failed\)$/\1/p' | tail -1)
if [ -z "$summary" ]; then
  echo "the VM gave no summary (timeout or boot failure; log: $log)"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "$summary"
[[ "$summary" == *" 0 failed" ]]
