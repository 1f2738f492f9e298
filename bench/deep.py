"""Benchmark: a stack overflowed about 1,000,000 frames deep, redhand against gdb and eu-stack.

Builds tests/programs/recurse_pingpong.c (ping and pong calling each other,
-O2: 16 bytes a frame), runs it with a 16 MiB stack (RLIMIT_STACK) until the
kernel writes its core, then times, each in a fresh process:

- ``redhand core CORE`` (the whole report: crash kind, cycle, both ends);
- ``gdb -batch -ex 'bt -3' EXE CORE`` and a full ``bt`` (bounded by --timeout);
- ``eu-stack -n 0 --core CORE`` (bounded likewise);
- the live case: ``redhand stack PID`` of the program paused --live-depth
  frames deep, and ``eu-stack -n 0 -p PID``.

Prints the median wall time of --runs runs, the ratio to redhand and the peak
memory (ru_maxrss of the measured process).  A tool stopped by the timeout is
reported as "did not finish in N s".

    .venv/bin/python bench/deep.py [--runs 5] [--timeout 60] [--skip-slow]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "programs" / "recurse_pingpong.c"
STACK_BYTES = 16 << 20

# Runs one command, bounded, and reports its wall time and peak RSS: a wrapper
# process whose only child is the command, so RUSAGE_CHILDREN is that command's.
_MEASURE = """
import json, resource, subprocess, sys, time
argv, timeout = json.loads(sys.argv[1]), float(sys.argv[2])
started = time.perf_counter()
try:
    code = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL, timeout=timeout).returncode
    finished = True
except subprocess.TimeoutExpired:
    code, finished = None, False
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"wall": wall, "peak": peak, "finished": finished, "code": code}))
"""


class Result:
    def __init__(self, name: str, walls: list[float], peak: int, finished: bool) -> None:
        self.name = name
        self.walls = walls
        self.peak = peak
        self.finished = finished

    @property
    def median(self) -> float:
        return statistics.median(self.walls)


def measure(name: str, argv: list[str], runs: int, timeout: float) -> Result:
    walls: list[float] = []
    peak = 0
    for _ in range(runs):
        output = subprocess.run(
            [sys.executable, "-c", _MEASURE, json.dumps(argv), str(timeout)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        measured = json.loads(output)
        peak = max(peak, measured["peak"])
        if not measured["finished"]:
            return Result(name, [measured["wall"]], peak, False)
        walls.append(measured["wall"])
    return Result(name, walls, peak, True)


def report(results: list[Result], timeout: float) -> None:
    base = results[0].median
    print(f"{'command':<44} {'median':>12} {'vs redhand':>11} {'peak memory':>12}")
    for result in results:
        if result.finished:
            wall = f"{result.median:.3f} s"
            ratio = f"{result.median / base:.1f}x"
        else:
            wall = f"did not finish in {timeout:.0f} s"
            ratio = f">{timeout / base:.0f}x"
        print(f"{result.name:<44} {wall:>12} {ratio:>11} {result.peak / 1e6:>9.0f} MB")


def limits() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, hard))


def make_core(work: Path, exe: Path) -> Path:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    if pattern.startswith("|") or "/" in pattern:
        # The kernel does not write the core here: gdb writes it at the signal.
        core = work / "core.gdb"
        subprocess.run(
            ["gdb", "-batch", "-nx", "-ex", "run", "-ex", f"gcore {core}", str(exe)],
            cwd=work,
            preexec_fn=limits,
            capture_output=True,
            check=False,
        )
        return core
    subprocess.run([str(exe)], cwd=work, preexec_fn=limits, capture_output=True, check=False)
    prefix = pattern.split("%", 1)[0]
    return next(path for path in work.iterdir() if path.name.startswith(prefix))


def redhand_argv() -> list[str]:
    return [sys.executable, "-m", "redhand"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each fast command")
    parser.add_argument("--slow-runs", type=int, default=1, help="runs of gdb and eu-stack")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound for one run (s)")
    parser.add_argument("--live-depth", type=int, default=1_000_000, help="frames, live case")
    parser.add_argument("--skip-slow", action="store_true", help="only redhand")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="redhand-deep-") as temp:
        work = Path(temp)
        exe = work / "pingpong"
        subprocess.run(["gcc", "-O2", "-g", "-o", str(exe), str(SOURCE)], check=True)
        core = make_core(work, exe)
        depth = (
            subprocess.run(
                ["gdb", "-batch", "-nx", "-ex", "print depth", str(exe), str(core)],
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .rsplit("=", 1)[-1]
        )
        print(f"core: {core.stat().st_size / 1e6:.0f} MB, {depth.strip()} frames of ping/pong")
        print()
        results = [
            measure("redhand core", [*redhand_argv(), "core", str(core)], args.runs, args.timeout)
        ]
        if not args.skip_slow:
            slow = [
                ("gdb bt -3", ["gdb", "-batch", "-nx", "-ex", "bt -3", str(exe), str(core)]),
                ("gdb bt (full)", ["gdb", "-batch", "-nx", "-ex", "bt", str(exe), str(core)]),
                (
                    "eu-stack -n 0 --core",
                    ["eu-stack", "-n", "0", "-e", str(exe), "--core", str(core)],
                ),
            ]
            for name, argv in slow:
                if shutil.which(argv[0]) is None:
                    print(f"{argv[0]} is not installed: {name} skipped")
                    continue
                results.append(measure(name, argv, args.slow_runs, args.timeout))
        report(results, args.timeout)

        print()
        live = subprocess.Popen(
            [str(exe), "live", str(args.live_depth)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=limits,
            text=True,
        )
        try:
            assert live.stdout is not None
            for line in live.stdout:
                if line.strip() == "ready":
                    break
            time.sleep(0.1)  # into pause()
            print(f"live: process {live.pid} paused {args.live_depth:,} frames deep")
            pid = str(live.pid)
            results = [
                measure("redhand stack", [*redhand_argv(), "stack", pid], args.runs, args.timeout)
            ]
            if not args.skip_slow and shutil.which("eu-stack"):
                results.append(
                    measure("eu-stack -n 0 -p", ["eu-stack", "-n", "0", "-p", pid], 1, args.timeout)
                )
            report(results, args.timeout)
        finally:
            live.kill()
            live.wait()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    sys.exit(main())
