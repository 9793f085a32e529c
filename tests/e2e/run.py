#!/usr/bin/env python3
"""End-to-end test runner (Python 3.11+, standard library only).

  run.py build --cuda-include DIR --lib-dir DIR --out DIR
      Compiles every tests/e2e/programs/*.c with gcc against cuda.h and the libcuda.so in lib-dir.

  run.py run --bins DIR --mode native|vgpu [--vgpu PATH] [--transport tcp|tls|shm | --server URL]
             [--backend emulated|real] --expected DIR [--write-expected DIR] [--save DIR] [--only NAME...]
      Runs every program (natively, or through `vgpu run` against a `vgpu server` it starts, or against
      the running one at --server, e.g. rdma://host:port) and compares its stdout with <expected>/<name>.out.

  run.py compare DIR_A DIR_B [--backend emulated|real]
      Compares two directories of saved outputs (e.g. native vs vgpu on the GPU machine).

Through vGPU, a program with expected/<name>.stats (lines `KEY <= N` over the shim's VGPU_STATS counters) must also
keep its traffic within those bounds.

Comparison rules: `timing:` lines are always dropped; with --backend emulated `result:` and
`device:` lines are dropped too (from both sides). Where results are compared (native mode, or
--backend real), a `result:` line that reports FAIL fails the program even if it matches.
Ends with the line "N passed, N failed"; exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import difflib
import json
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
PROGRAMS = HERE / "programs"
PROGRAM_TIMEOUT_S = int(os.environ.get("E2E_TIMEOUT_S", "60"))  # per program
SERVER_READY_TIMEOUT_S = 60
DIFF_LINES = 20
READY = re.compile(r"\bready\b", re.IGNORECASE)  # the server's "ready" line (not "already")


# ---------------------------------------------------------------------------------------------
# build


def cmd_build(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    sources = sorted(PROGRAMS.glob("*.c"))
    if not sources:
        print(f"no programs in {PROGRAMS}")
        return 1

    lib_dir = Path(args.lib_dir)
    if (lib_dir / "libcuda.so").exists():
        link = ["-lcuda"]
    elif (lib_dir / "libcuda.so.1").exists():
        link = ["-l:libcuda.so.1"]
    else:
        print(f"no libcuda.so or libcuda.so.1 in {lib_dir}")
        return 1

    def compile_one(src: Path) -> tuple[str, int, str]:
        cmd = [
            cc, "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-O1", "-Wall", "-Werror",
            "-I", str(args.cuda_include), "-I", str(PROGRAMS),
            "-o", str(out / src.stem), str(src),
            "-L", str(lib_dir), *link, "-lpthread",
        ]
        p = subprocess.run(cmd, capture_output=True, text=True)
        log = (p.stdout + p.stderr).strip()
        if p.returncode == 0 and shutil.which("readelf"):
            # The programs must load libcuda.so.1 at run time (the driver's, or the shim through vgpu run).
            d = subprocess.run(["readelf", "-d", str(out / src.stem)], capture_output=True, text=True).stdout
            if "[libcuda.so.1]" not in d:
                log += "\nwarning: the binary does not name libcuda.so.1 as NEEDED (is the SONAME of the linked libcuda set?)"
        return src.stem, p.returncode, log.strip()

    failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for name, rc, log in pool.map(compile_one, sources):
            if rc == 0 and not log:
                print(f"built {name}")
            elif rc == 0:
                print(f"built {name} (with output)\n{log}")
            else:
                failed += 1
                print(f"FAILED to build {name}\n{log}")
    print(f"{len(sources) - failed} built, {failed} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# output comparison


def filter_lines(text: str, backend: str, no_device: bool = False) -> list[str]:
    drop = ("timing:",) if backend == "real" else ("timing:", "result:", "device:")
    if no_device:
        drop += ("device:",)
    return [line for line in text.splitlines() if not line.startswith(drop)]


def compare_text(want: str, got: str, backend: str, label_a: str, label_b: str, no_device: bool = False) -> list[str]:
    """Empty list when equal after filtering, else the first lines of a unified diff."""
    a, b = filter_lines(want, backend, no_device), filter_lines(got, backend, no_device)
    if a == b:
        return []
    diff = list(difflib.unified_diff(a, b, label_a, label_b, lineterm="", n=1))
    if len(diff) > DIFF_LINES:
        diff = diff[:DIFF_LINES] + [f"... ({len(diff) - DIFF_LINES} more diff lines)"]
    return diff


def failed_results(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith("result:") and "FAIL" in l]


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
        self.shm = f"vgpu-e2e-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        # The server's TLS identity is generated into a fresh state folder, removed at stop.
        self.state_dir = tempfile.mkdtemp(prefix="vgpu-e2e-state-")
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


def run_program(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int | None, str, str]:
    """(exit status or None on timeout, stdout, stderr). The program runs in its own process group."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, errors="replace", start_new_session=True, env=env)
    try:
        out, err = p.communicate(timeout=PROGRAM_TIMEOUT_S)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        return None, out, err


def cmd_run(args: argparse.Namespace) -> int:
    bins = Path(args.bins)
    programs = sorted(p for p in bins.iterdir() if p.is_file() and os.access(p, os.X_OK)) if bins.is_dir() else []
    if args.only:
        programs = [p for p in programs if p.name in args.only]
    skipped = []
    for entry in args.skip or []:
        name, _, reason = entry.partition(":")
        if any(p.name == name for p in programs):
            skipped.append((name, reason or "no reason given"))
            programs = [p for p in programs if p.name != name]
    for name, reason in skipped:
        print(f"skip {name}: {reason}")
    if not programs:
        print(f"no programs in {bins}")
        print("0 passed, 1 failed")
        return 1
    backend = "real" if args.mode == "native" else args.backend
    expected = Path(args.expected)
    write_dir = Path(args.write_expected) if args.write_expected else None
    save_dir = Path(args.save) if args.save else None
    for d in (write_dir, save_dir):
        if d:
            d.mkdir(parents=True, exist_ok=True)

    server = None
    passed = failed = 0
    try:
        if args.mode == "vgpu":
            if not args.vgpu:
                print("--vgpu PATH is needed with --mode vgpu")
                print("0 passed, 1 failed")
                return 1
        if args.mode == "vgpu" and not args.server:
            server = Server(args.vgpu, args.backend)
            try:
                server.start()
            except RuntimeError as e:
                print(f"FAIL server: {e}\n{indent(server.tail())}")
                print(f"0 passed, {len(programs)} failed")
                return 1

        transport = args.server.partition("://")[0] if args.server else args.transport
        label = "native" if args.mode == "native" else f"vgpu {transport} {args.backend}"
        for prog in programs:
            name = prog.name
            if args.mode == "vgpu":
                url = args.server or server.url(args.transport)
                cmd = [args.vgpu, "run", "--server", url, "--", str(prog.resolve())]
            else:
                cmd = [str(prog.resolve())]
            budget = expected / f"{name}.stats"
            env = None
            stats_file = None
            if args.mode == "vgpu" and budget.is_file():
                stats_file = Path(tempfile.mkdtemp(prefix="vgpu-e2e-stats-")) / "stats.json"
                env = dict(os.environ, VGPU_STATS=str(stats_file))
            t0 = time.monotonic()
            rc, out, err = run_program(cmd, env)
            secs = time.monotonic() - t0
            if save_dir:
                (save_dir / f"{name}.out").write_text(out)
            if write_dir:
                (write_dir / f"{name}.out").write_text(out)

            problems: list[str] = []
            details: list[str] = []
            if rc is None:
                problems.append(f"timed out after {PROGRAM_TIMEOUT_S} s")
            elif rc != 0:
                problems.append(f"exit status {rc}")
            ref = expected / f"{name}.out"
            if ref.is_file():
                diff = compare_text(ref.read_text(), out, backend, f"expected/{name}.out", f"{label}/{name}",
                                    args.no_device)
                if diff:
                    problems.append("output differs")
                    details += diff
            elif write_dir:
                problems_note = f"(no reference; wrote {write_dir / (name + '.out')})"
                details.append(problems_note)
            else:
                problems.append("no reference")
            if stats_file is not None:
                broken = check_budget(budget, stats_file)
                shutil.rmtree(stats_file.parent, ignore_errors=True)
                if broken:
                    problems.append("traffic over budget")
                    details += broken
            if backend == "real":
                bad = failed_results(out)
                if bad:
                    problems.append("kernel results FAIL")
                    details += bad[:DIFF_LINES]

            if problems:
                failed += 1
                print(f"FAIL {name} ({secs:.1f} s): {'; '.join(problems)}")
                if details:
                    print(indent(details))
                if rc != 0 and err.strip():
                    print("    stderr:")
                    print(indent(err.strip().splitlines()[-DIFF_LINES:]))
                if server and not server.alive():
                    print("    server is no longer running; its last lines:")
                    print(indent(server.tail()))
            else:
                passed += 1
                note = f" {details[0]}" if details else ""
                print(f"ok   {name} ({secs:.1f} s){note}")
            sys.stdout.flush()
    finally:
        if server:
            server.stop()
    print(f"{passed} passed, {failed} failed" + (f", {len(skipped)} skipped" if skipped else ""))
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# traffic budgets

BUDGET_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*<=\s*([0-9]+)\s*(?:#.*)?$")


def check_budget(budget: Path, stats_file: Path) -> list[str]:
    """expected/<name>.stats: lines `KEY <= N` (KEY a dotted path into the shim's VGPU_STATS JSON, a missing key
    counting 0; `#` starts a comment). Through vGPU, the program's traffic must stay within each bound: round trips
    and bytes a change must not add back. Returns the broken bounds."""
    try:
        lines = stats_file.read_text().splitlines()
        stats = json.loads(lines[-1])
    except (OSError, ValueError, IndexError) as e:
        return [f"no traffic counters from the shim ({stats_file}): {e}"]
    broken = []
    for raw in budget.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = BUDGET_LINE.match(line)
        if not m:
            broken.append(f"{budget.name}: unreadable line {line!r}")
            continue
        value = stats
        for part in m.group(1).split("."):
            value = value.get(part, 0) if isinstance(value, dict) else 0
        if not isinstance(value, (int, float)) or value > int(m.group(2)):
            broken.append(f"traffic: {m.group(1)} = {value}, budget {m.group(2)}")
    return broken


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
        diff = compare_text(ta, tb, args.backend, str(fa), str(fb), args.no_device)
        bad = failed_results(ta) + failed_results(tb) if args.backend == "real" else []
        if diff or bad:
            failed += 1
            print(f"FAIL {name}: {'output differs' if diff else 'kernel results FAIL'}")
            print(indent(diff + bad[:DIFF_LINES]))
        else:
            passed += 1
            print(f"ok   {name}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not names else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="compile the test programs")
    b.add_argument("--cuda-include", required=True, help="directory holding cuda.h (CUDA 13.0)")
    b.add_argument("--lib-dir", required=True, help="directory holding libcuda.so to link against")
    b.add_argument("--out", required=True, help="where the binaries go")

    r = sub.add_parser("run", help="run the programs and compare with the references")
    r.add_argument("--bins", required=True)
    r.add_argument("--mode", choices=["native", "vgpu"], required=True)
    r.add_argument("--vgpu", help="path to the vgpu binary (vgpu mode)")
    r.add_argument("--transport", choices=["tcp", "tls", "shm"], default="tcp")
    r.add_argument("--server", metavar="URL",
                   help="vgpu mode: use this running server (e.g. rdma://host:port; the RDMA VM starts its own) "
                        "instead of starting one; --transport is then unused")
    r.add_argument("--backend", choices=["emulated", "real"], default="emulated",
                   help="server backend (vgpu mode); decides which lines are compared")
    r.add_argument("--expected", required=True, help="directory of reference outputs <name>.out")
    r.add_argument("--write-expected", help="write each program's output there as <name>.out")
    r.add_argument("--save", help="also save each program's output there (for `compare`)")
    r.add_argument("--only", nargs="+", help="run only these programs")
    r.add_argument("--skip", action="append",
                   help="NAME:REASON - leave a program out, saying why (reported as skipped)")
    r.add_argument("--no-device", action="store_true",
                   help="ignore device: lines (references taken on another machine: UUIDs differ)")

    c = sub.add_parser("compare", help="compare two directories of saved outputs")
    c.add_argument("dir_a")
    c.add_argument("dir_b")
    c.add_argument("--backend", choices=["emulated", "real"], default="real",
                   help="emulated: ignore result:/device: lines too")
    c.add_argument("--no-device", action="store_true", help="ignore device: lines")

    args = ap.parse_args()
    return {"build": cmd_build, "run": cmd_run, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
