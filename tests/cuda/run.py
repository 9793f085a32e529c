#!/usr/bin/env python3
"""CUDA runtime test runner (Python 3.9+, standard library only).

Programs: tests/cuda/*.cu, CUDA C++ against NVIDIA's runtime (cudart), each built twice by nvcc:
static cudart (nvcc's default) and `-cudart shared`.

  run.py build --nvcc PATH --out DIR [-j N] [--gencode SPEC] [--only NAME...]
      Compiles each program once (nvcc -c) and links it twice: DIR/static/NAME, DIR/shared/NAME.
      A program whose source, common.h, flags and nvcc are unchanged is not rebuilt (content hash
      in DIR/keys/). Ends with "N built, N cached, N failed".

  run.py run --bins DIR --mode native|vgpu [--vgpu PATH] [--transport tcp|tls|shm]
             [--backend emulated|real] [--expected DIR] [--save DIR] [--save-expected]
             [--variant static|shared|both] [--only NAME...] [--skip NAME:REASON] [--no-device]
      Runs every built program (both variants unless --variant says otherwise), natively or through
      `vgpu run` against a `vgpu server` it starts, and checks it (rules below). Ends with
      "N passed, N failed, N skipped"; exits non-zero on any failure.

  run.py compare DIR_A DIR_B [--no-device]
      Compares two directories of saved outputs (e.g. native vs vgpu on the GPU machine).

Checks (one program variant passes when all that apply hold):
  always             exit status 0 within the time limit (CUDA_TEST_TIMEOUT_S; default 60 s on the
                     emulated backend, 120 s otherwise; after 3 time-outs the rest are not run), the line "done" in its stdout, no
                     "FAIL ..." line (an unexpected API error) in its stdout
  --mode vgpu        no line of the shim's own diagnostics ("vgpu: ..." on stderr: a call the shim
                     does not support, a lost connection, a protocol error)
  native, or vgpu with --backend real
                     stdout equals the reference <expected>/<name>.out after dropping `time:` lines
                     (and `device:` lines with --no-device); no "result: ... FAIL" line
  vgpu --backend emulated
                     nothing more: kernels are not executed there, so results are not compared.
                     The check is that the program got through initialisation, module loading,
                     copies and launches (it printed "done") without an API error and without a
                     shim diagnostic.
The reference for a variant is <expected>/<name>.<variant>.out if present, else <expected>/<name>.out.
--save DIR writes each output as DIR/<name>.<variant>.out. --save-expected [DIR] (native mode)
writes DIR/<name>.out (default tests/cuda/expected) from the static variant instead of comparing
with a reference; the shared variant must then match the static one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = HERE / "expected"
VARIANTS = ("static", "shared")
# Per program run: on the emulated backend no kernel runs and every program takes about a second.
TIMEOUT_S = {"emulated": 60, "real": 120}
MAX_TIMEOUTS = 3  # after this many timed-out programs the rest are not run (bounds CI time on a hang)
SERVER_READY_TIMEOUT_S = 60
DIFF_LINES = 20
DEFAULT_GENCODE = "arch=compute_90,code=[sm_90,compute_90]"
FLAGS_RE = re.compile(r"^//\s*nvcc-flags:\s*(.*)$", re.MULTILINE)
READY = re.compile(r"\bready\b", re.IGNORECASE)
SHIM_LOG = re.compile(r"^vgpu: ")
DROP_ALWAYS = ("time:", "timing:")


# ---------------------------------------------------------------------------------------------
# build


def nvcc_lib_dir(nvcc: Path) -> Path | None:
    """The toolkit's library directory, next to nvcc's bin/ (lib64 in a toolkit, lib in the wheels)."""
    root = Path(os.path.realpath(nvcc)).parent.parent
    for name in ("lib64", "lib"):
        d = root / name
        if (d / "libcudart.so").exists() or list(d.glob("libcudart.so.*")):
            return d
    return None


def extra_flags(src: Path) -> list[str]:
    m = FLAGS_RE.search(src.read_text(errors="replace")[:2000])
    return m.group(1).split() if m else []


def cmd_build(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    nvcc = args.nvcc
    if not shutil.which(nvcc) and not Path(nvcc).is_file():
        print(f"no nvcc at {nvcc}")
        print("0 built, 0 cached, 1 failed")
        return 1
    sources = sorted(HERE.glob("*.cu"))
    if args.only:
        sources = [s for s in sources if s.stem in args.only]
    if not sources:
        print(f"no programs in {HERE}")
        print("0 built, 0 cached, 1 failed")
        return 1
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    if ver.returncode != 0:
        print(f"{nvcc} --version failed:\n{ver.stdout}{ver.stderr}")
        print("0 built, 0 cached, 1 failed")
        return 1
    version = ver.stdout.strip().splitlines()[-1] if ver.stdout.strip() else "?"
    lib_dir = nvcc_lib_dir(Path(shutil.which(nvcc) or nvcc))
    print(f"nvcc: {nvcc} ({version}); runtime libraries: {lib_dir or 'not found next to nvcc'}", flush=True)
    for d in ("obj", "keys", *VARIANTS):
        (out / d).mkdir(parents=True, exist_ok=True)
    common = (HERE / "common.h").read_bytes()
    gencode = ["-gencode", args.gencode]
    base = ["-std=c++17", "-O2", "-I", str(HERE), *gencode]
    rpath = ["-Xlinker", f"-rpath={lib_dir}"] if lib_dir else []
    link = {"static": ["-cudart", "static"], "shared": ["-cudart", "shared", *rpath]}

    def build_one(src: Path) -> tuple[str, str, str, float]:
        name = src.stem
        t0 = time.monotonic()
        flags = base + extra_flags(src)
        key = hashlib.sha256(
            b"\0".join([ver.stdout.encode(), " ".join(flags).encode(), repr(link).encode(), src.read_bytes(), common])
        ).hexdigest()
        key_file = out / "keys" / name
        bins = [out / v / name for v in VARIANTS]
        if key_file.is_file() and key_file.read_text() == key and all(b.is_file() for b in bins):
            return name, "cached", "", 0.0
        key_file.unlink(missing_ok=True)
        obj = out / "obj" / f"{name}.o"
        logs = []
        steps = [[nvcc, *flags, "-c", str(src), "-o", str(obj)]]
        for v, b in zip(VARIANTS, bins):
            steps.append([nvcc, *gencode, *link[v], "-o", str(b), str(obj), "-lpthread"])
        for cmd in steps:
            p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
            text = (p.stdout + p.stderr).strip()
            if text:
                logs.append(text)
            if p.returncode != 0:
                logs.insert(0, "$ " + " ".join(cmd))
                return name, "failed", "\n".join(logs), time.monotonic() - t0
        key_file.write_text(key)
        secs = time.monotonic() - t0
        (out / "keys" / f"{name}.secs").write_text(f"{secs:.1f}")
        return name, "built", "\n".join(logs), secs

    counts = {"built": 0, "cached": 0, "failed": 0}
    t0 = time.monotonic()
    jobs = args.jobs or os.cpu_count() or 2

    def last_secs(src: Path) -> float:
        """The slowest programs start first: last build's time, else Thrust/CUB users (~25 s)."""
        try:
            return float((out / "keys" / f"{src.stem}.secs").read_text())
        except (OSError, ValueError):
            text = src.read_text(errors="replace")
            return 30.0 if "<thrust/" in text or "<cub/" in text else 0.0

    sources.sort(key=last_secs, reverse=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(build_one, src) for src in sources]
        for fut in concurrent.futures.as_completed(futures):
            name, status, log, secs = fut.result()
            counts[status] += 1
            if status == "cached":
                print(f"cached {name}")
            elif status == "built":
                print(f"built  {name} ({secs:.1f} s)" + (f"\n{indent(log)}" if log else ""))
            else:
                print(f"FAILED to build {name}\n{indent(log)}")
            sys.stdout.flush()
    print(f"time: build {time.monotonic() - t0:.1f} s with {jobs} jobs")
    print(f"{counts['built']} built, {counts['cached']} cached, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


# ---------------------------------------------------------------------------------------------
# output comparison


def filter_lines(text: str, no_device: bool) -> list[str]:
    drop = DROP_ALWAYS + (("device:",) if no_device else ())
    return [line for line in text.splitlines() if not line.startswith(drop)]


def compare_text(want: str, got: str, label_a: str, label_b: str, no_device: bool) -> list[str]:
    """Empty list when equal after filtering, else the first lines of a unified diff."""
    a, b = filter_lines(want, no_device), filter_lines(got, no_device)
    if a == b:
        return []
    diff = list(difflib.unified_diff(a, b, label_a, label_b, lineterm="", n=1))
    if len(diff) > DIFF_LINES:
        diff = diff[:DIFF_LINES] + [f"... ({len(diff) - DIFF_LINES} more diff lines)"]
    return diff


def failed_results(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith("result:") and l.rstrip().endswith("FAIL")]


def api_failures(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith("FAIL ")]


def shim_lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if SHIM_LOG.match(l)]


def indent(lines: list[str] | str) -> str:
    if isinstance(lines, str):
        lines = lines.splitlines()
    return "\n".join("    " + l for l in lines)


# ---------------------------------------------------------------------------------------------
# vgpu server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`vgpu server` in its own process group; its output is kept for failure reports."""

    def __init__(self, vgpu: str, backend: str):
        self.port = free_port()
        self.tls_port = free_port()
        self.shm = f"vgpu-cuda-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        # The server's TLS identity is generated into a fresh state folder, removed at stop.
        self.state_dir = tempfile.mkdtemp(prefix="vgpu-cuda-state-")
        self.cmd = [vgpu, "server", "--backend", backend, "--tcp", f"127.0.0.1:{self.port}", "--shm", self.shm,
                    "--tls", f"127.0.0.1:{self.tls_port}", "--state-dir", self.state_dir]
        self.tls_url = ""
        self.log: list[str] = []
        self.ready = threading.Event()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        print("starting: " + " ".join(self.cmd), flush=True)
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", start_new_session=True,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"vgpu server exited with {self.proc.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vgpu server not ready after {SERVER_READY_TIMEOUT_S} s")
        print(f"server ready (tcp 127.0.0.1:{self.port}, {self.tls_url}, shm {self.shm})", flush=True)

    def _drain(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.log.append(line.rstrip("\n"))
            if len(self.log) > 2000:
                del self.log[:1000]
            if READY.search(line):
                # "ready on tcp://…, tls://127.0.0.1:PORT#sha256=HEX, shm://…": the TLS URL pins the certificate.
                m = re.search(r"tls://\S+#sha256=[0-9a-f]{64}", line)
                if m:
                    self.tls_url = m.group(0)
                self.ready.set()

    def url(self, transport: str) -> str:
        if transport == "tls":
            if not self.tls_url:
                raise RuntimeError("the server printed no tls:// endpoint")
            return self.tls_url
        return f"tcp://127.0.0.1:{self.port}" if transport == "tcp" else f"shm://{self.shm}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if not self.proc or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                pass

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log[-n:])


# ---------------------------------------------------------------------------------------------
# run


def run_program(cmd: list[str], env: dict[str, str] | None, timeout: int) -> tuple[int | None, str, str]:
    """(exit status or None on timeout, stdout, stderr). The program runs in its own process group."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, errors="replace", start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        return None, out, err


def exit_text(rc: int | None, timeout: int) -> str:
    if rc is None:
        return f"timed out after {timeout} s"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def find_reference(expected: Path | None, name: str, variant: str) -> Path | None:
    if not expected:
        return None
    for p in (expected / f"{name}.{variant}.out", expected / f"{name}.out"):
        if p.is_file():
            return p
    return None


def cmd_run(args: argparse.Namespace) -> int:
    bins = Path(args.bins)
    variants = VARIANTS if args.variant == "both" else (args.variant,)
    names = sorted({p.name for v in variants for p in (bins / v).glob("*") if p.is_file() and os.access(p, os.X_OK)})
    if args.only:
        names = [n for n in names if n in args.only]
    programs = [(n, v) for n in names for v in variants if (bins / v / n).is_file()]
    skipped: list[tuple[str, str]] = []
    for entry in args.skip or []:
        key, _, reason = entry.partition(":")
        hit = [(n, v) for n, v in programs if key in (n, f"{n}.{v}")]
        for n, v in hit:
            skipped.append((f"{n} [{v}]", reason or "no reason given"))
        programs = [pv for pv in programs if pv not in hit]
    for label, reason in skipped:
        print(f"skip {label}: {reason}")
    if not programs:
        print(f"no programs in {bins}/{{{','.join(variants)}}} (run `run.py build` first)")
        print(f"0 passed, 1 failed, {len(skipped)} skipped")
        return 1

    vgpu_mode = args.mode == "vgpu"
    compare_outputs = not vgpu_mode or args.backend == "real"
    expected = Path(args.expected) if args.expected else (EXPECTED if compare_outputs else None)
    if args.save_expected and vgpu_mode:
        print("--save-expected is for --mode native")
        print(f"0 passed, 1 failed, {len(skipped)} skipped")
        return 1
    save_dir = Path(args.save) if args.save else None
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
    save_expected = Path(args.save_expected) if args.save_expected else None
    if save_expected:
        save_expected.mkdir(parents=True, exist_ok=True)

    server = None
    passed = failed = 0
    outputs: dict[tuple[str, str], str] = {}
    try:
        if vgpu_mode:
            if not args.vgpu:
                print("--vgpu PATH is needed with --mode vgpu")
                print(f"0 passed, 1 failed, {len(skipped)} skipped")
                return 1
            server = Server(args.vgpu, args.backend)
            try:
                server.start()
            except RuntimeError as e:
                print(f"FAIL server: {e}\n{indent(server.tail())}")
                print(f"0 passed, {len(programs)} failed, {len(skipped)} skipped")
                return 1
        mode = "native" if not vgpu_mode else f"vgpu {args.transport} {args.backend}"
        print(f"mode: {mode}; checks: exit 0 + 'done'" + (" + no shim diagnostics" if vgpu_mode else "")
              + (" + output equals the reference" if compare_outputs else " (results not compared)"), flush=True)

        # The shim's diagnostics at its default level (warn): unsupported calls, errors. A VGPU_LOG
        # of info/debug in the caller's environment would add lines that are not problems.
        env = dict(os.environ, VGPU_LOG="warn") if vgpu_mode else None
        backend = args.backend if vgpu_mode else "real"
        timeout = int(os.environ.get("CUDA_TEST_TIMEOUT_S", TIMEOUT_S[backend]))
        timeouts = 0
        for name, variant in programs:
            label = f"{name} [{variant}]"
            if timeouts >= MAX_TIMEOUTS:
                failed += 1
                print(f"FAIL {label}: not run ({timeouts} programs timed out already)")
                continue
            prog = (bins / variant / name).resolve()
            cmd = [args.vgpu, "run", "--server", server.url(args.transport), "--", str(prog)] if server else [str(prog)]
            t0 = time.monotonic()
            rc, out, err = run_program(cmd, env, timeout)
            timeouts += rc is None
            secs = time.monotonic() - t0
            outputs[(name, variant)] = out
            if save_dir:
                (save_dir / f"{name}.{variant}.out").write_text(out)

            problems: list[str] = []
            details: list[str] = []
            if rc != 0:
                problems.append(exit_text(rc, timeout))
            if "done" not in out.splitlines():
                problems.append("no 'done' line")
            bad_api = api_failures(out)
            if bad_api:
                problems.append("API error")
                details += bad_api[:5]
            if vgpu_mode:
                shim = shim_lines(err)  # first line of each diagnostic
                if shim:
                    problems.append("shim diagnostics")
                    details += shim[:8] + ([f"... ({len(shim) - 8} more)"] if len(shim) > 8 else [])
            if compare_outputs:
                if save_expected:
                    if variant == "static" or (name, "static") not in outputs:
                        (save_expected / f"{name}.out").write_text(out)
                        details.append(f"(wrote {save_expected / (name + '.out')})")
                    else:
                        diff = compare_text(outputs[(name, "static")], out, f"{name} [static]", label,
                                            args.no_device)
                        if diff:
                            problems.append("differs from the static variant")
                            details += diff
                else:
                    ref = find_reference(expected, name, variant)
                    if ref:
                        diff = compare_text(ref.read_text(), out, str(ref), f"{mode}/{label}", args.no_device)
                        if diff:
                            problems.append("output differs")
                            details += diff
                    else:
                        problems.append(f"no reference in {expected}")
                bad = failed_results(out)
                if bad:
                    problems.append("result FAIL")
                    details += bad[:DIFF_LINES]

            if problems:
                failed += 1
                marks = [l[len("checkpoint: "):] for l in out.splitlines() if l.startswith("checkpoint: ")]
                reached = f" [last checkpoint: {marks[-1] if marks else 'none'}]" if "done" not in out.splitlines() else ""
                print(f"FAIL {label} ({secs:.1f} s): {'; '.join(problems)}{reached}")
                if details:
                    print(indent(details))
                tail_out = [l for l in out.splitlines() if not l.startswith(DROP_ALWAYS)][-3:]
                if tail_out and not bad_api and (rc != 0 or "done" not in out.splitlines()):
                    print("    last stdout lines:")
                    print(indent(["  " + l for l in tail_out]))
                other_err = [l for l in err.strip().splitlines() if not SHIM_LOG.match(l)]
                if rc != 0 and other_err:
                    print("    stderr:")
                    print(indent(["  " + l for l in other_err[-DIFF_LINES:]]))
                if server and not server.alive():
                    print("    server is no longer running; its last lines:")
                    print(indent(server.tail()))
                    server = restart(server, args)
            else:
                passed += 1
                note = f" {details[0]}" if details else ""
                print(f"ok   {label} ({secs:.1f} s){note}")
            sys.stdout.flush()
    finally:
        if server:
            server.stop()
    print(f"{passed} passed, {failed} failed, {len(skipped)} skipped")
    return 1 if failed else 0


def restart(server: Server, args: argparse.Namespace) -> Server:
    """A dead server would fail every later program: start a new one (the death is already reported)."""
    server.stop()
    fresh = Server(args.vgpu, args.backend)
    try:
        fresh.start()
    except RuntimeError as e:
        print(f"    could not restart the server: {e}")
    return fresh


# ---------------------------------------------------------------------------------------------
# compare


def cmd_compare(args: argparse.Namespace) -> int:
    a, b = Path(args.dir_a), Path(args.dir_b)
    names = sorted({p.name for p in a.glob("*.out")} | {p.name for p in b.glob("*.out")})
    passed = failed = 0
    for name in names:
        fa, fb = a / name, b / name
        if not fa.is_file() or not fb.is_file():
            failed += 1
            print(f"FAIL {name}: missing in {a if not fa.is_file() else b}")
            continue
        ta, tb = fa.read_text(), fb.read_text()
        diff = compare_text(ta, tb, str(fa), str(fb), args.no_device)
        bad = failed_results(ta) + failed_results(tb) + api_failures(ta) + api_failures(tb)
        unfinished = [str(f) for f, t in ((fa, ta), (fb, tb)) if "done" not in t.splitlines()]
        if diff or bad or unfinished:
            failed += 1
            why = (["output differs"] if diff else []) + (["FAIL lines"] if bad else []) \
                + ([f"no 'done' line in {', '.join(unfinished)}"] if unfinished else [])
            print(f"FAIL {name}: {'; '.join(why)}")
            if diff or bad:
                print(indent(diff + bad[:DIFF_LINES]))
        else:
            passed += 1
            print(f"ok   {name}")
    print(f"{passed} passed, {failed} failed, 0 skipped")
    return 1 if failed or not names else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="compile the programs (static and shared cudart)")
    b.add_argument("--nvcc", required=True, help="nvcc to use (CUDA 13.0)")
    b.add_argument("--out", required=True, help="build directory (static/, shared/, obj/, keys/)")
    b.add_argument("-j", "--jobs", type=int, help="parallel programs (default: CPU count)")
    b.add_argument("--gencode", default=DEFAULT_GENCODE, help=f"nvcc -gencode value (default {DEFAULT_GENCODE})")
    b.add_argument("--only", nargs="+", help="build only these programs")

    r = sub.add_parser("run", help="run the programs and check them")
    r.add_argument("--bins", required=True, help="the build directory")
    r.add_argument("--mode", choices=["native", "vgpu"], required=True)
    r.add_argument("--vgpu", help="path to the vgpu binary (vgpu mode)")
    r.add_argument("--transport", choices=["tcp", "tls", "shm"], default="tcp")
    r.add_argument("--backend", choices=["emulated", "real"], default="emulated",
                   help="server backend (vgpu mode); real: outputs are compared")
    r.add_argument("--expected", help=f"directory of reference outputs (default {EXPECTED})")
    r.add_argument("--save", help="save each output there as <name>.<variant>.out")
    r.add_argument("--save-expected", nargs="?", const=str(EXPECTED), metavar="DIR",
                   help=f"native mode: write the references DIR/<name>.out (default DIR {EXPECTED}) "
                        "from the static variant; the shared variant must match it")
    r.add_argument("--variant", choices=["static", "shared", "both"], default="both")
    r.add_argument("--only", nargs="+", help="run only these programs")
    r.add_argument("--skip", action="append",
                   help="NAME:REASON or NAME.VARIANT:REASON - leave a program out, saying why")
    r.add_argument("--no-device", action="store_true",
                   help="ignore device: lines (references taken on another machine)")

    c = sub.add_parser("compare", help="compare two directories of saved outputs")
    c.add_argument("dir_a")
    c.add_argument("dir_b")
    c.add_argument("--no-device", action="store_true", help="ignore device: lines")

    args = ap.parse_args()
    return {"build": cmd_build, "run": cmd_run, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
