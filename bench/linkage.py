"""Benchmark ``redhand linkage`` on a process with over 100 libraries and on large files.

1. A process: python3 that loads, with ctypes, the first N shared libraries of
   /usr/lib/x86_64-linux-gnu that load (default 120; their dependencies come
   along), then prints "ready" and sleeps.  Interleaved runs of
   * ``redhand linkage PID`` (the link map, every GOT slot read and compared
     with the dynamic linker's lookup), text and ``--json``, with redhand's
     cache warm (the parsed dynamic sections) and empty, and ``--data`` (the
     pointers in data too);
   * ``pldd PID`` (glibc's: the libraries only) and gdb's
     ``info sharedlibrary`` (the libraries and their text ranges), which list
     a part of that, for scale.
   The goal: at most 0.5 s for redhand.
2. Files: ``redhand linkage FILE`` (imports, exports, PLT) against
   ``readelf -rW FILE`` (the relocations alone) on libc and on large C++
   libraries (libstdc++, and LLVM's when lldb's is installed).

3. A program as it would start here: ``redhand linkage FILE`` (its libraries found as
   ld.so finds them, every import of every object looked up) against ``ldd -r FILE``
   (ld.so itself, loading and relocating everything without running it), on chromium
   (over 100 libraries) and python3.

Medians and the fastest run of each; ratios are the other tool's time over
redhand's (above 1: redhand is faster).

Usage: python bench/linkage.py [--runs 7] [--libraries 120]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from stack import redhand_command
from watch import median, minimum

LOADER = r"""
import ctypes, glob, sys, time
wanted = int(sys.argv[1])
loaded = 0
for path in sorted(glob.glob("/usr/lib/x86_64-linux-gnu/lib*.so.*")):
    if loaded >= wanted:
        break
    try:
        ctypes.CDLL(path)
        loaded += 1
    except OSError:
        pass
print("ready", loaded, flush=True)
time.sleep(3600)
"""


COLD = "(cold cache)"


def timed(command: list[str], tool: str) -> float:
    """Wall ms of one run; a tool named "... (cold cache)" runs with an empty redhand cache."""
    env = None
    with tempfile.TemporaryDirectory() as cache:
        if tool.endswith(COLD):
            env = {**os.environ, "XDG_CACHE_HOME": cache}
        started = time.perf_counter()
        subprocess.run(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=600
        )
        return (time.perf_counter() - started) * 1000


def report(name: str, times: dict[str, list[float]], reference: str) -> None:
    base = median(times[reference])
    print(f"\n{name}")
    print(f"  {'tool':<34} {'median ms':>10} {'fastest':>9} {'ratio':>7}")
    for tool, values in times.items():
        ratio = median(values) / base if base else float("nan")
        print(f"  {tool:<34} {median(values):>10.1f} {minimum(values):>9.1f} {ratio:>6.2f}x")


def count_objects(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as maps:
        return len({line.split()[-1] for line in maps if ".so" in line})


def bench_process(runs: int, libraries: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", LOADER, str(libraries)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if not line or line[0] != "ready":
            raise SystemExit("the loader did not start")
        pid = process.pid
        objects = count_objects(pid)
        redhand = redhand_command()
        tools = {
            "redhand linkage": [*redhand, "linkage", str(pid)],
            f"redhand linkage {COLD}": [*redhand, "linkage", str(pid)],
            "redhand linkage --json": [*redhand, "linkage", str(pid), "--json"],
            "redhand linkage --data": [*redhand, "linkage", str(pid), "--data"],
        }
        if shutil.which("pldd"):
            tools["pldd (libraries only)"] = ["pldd", str(pid)]
        if shutil.which("gdb"):
            tools["gdb info sharedlibrary"] = [
                "gdb", "-batch", "-nx", "-p", str(pid), "-ex", "info sharedlibrary",
            ]  # fmt: skip
        slots = subprocess.run(
            [*redhand, "linkage", str(pid), "--json"], capture_output=True, text=True
        ).stdout.count('"status"')
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        for _ in range(runs):
            for tool, command in tools.items():
                times[tool].append(timed(command, tool))
        report(
            f"1. a python3 process with {line[1]} libraries loaded by hand, {objects} shared "
            f"objects mapped, {slots:,} slots (goal: redhand at most 500 ms)",
            times,
            "redhand linkage",
        )
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def bench_files(runs: int) -> None:
    candidates = [
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
        *sorted(glob.glob("/usr/lib/llvm-*/lib/libLLVM-*.so*"))[:1],
    ]
    redhand = redhand_command()
    for path in candidates:
        if not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        tools = {
            "redhand linkage FILE": [*redhand, "linkage", real],
            f"redhand linkage FILE {COLD}": [*redhand, "linkage", real],
            "redhand linkage FILE --json": [*redhand, "linkage", real, "--json"],
            "readelf -rW": ["readelf", "-rW", real],
        }
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        for _ in range(runs):
            for tool, command in tools.items():
                times[tool].append(timed(command, tool))
        size = os.path.getsize(real) / (1 << 20)
        report(f"2. {real} ({size:.1f} MiB)", times, "redhand linkage FILE")


def bench_programs(runs: int) -> None:
    redhand = redhand_command()
    for path in ("/usr/lib/chromium/chromium", "/usr/bin/python3"):
        if not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        tools = {
            "redhand linkage FILE": [*redhand, "linkage", real],
            "redhand linkage FILE --json": [*redhand, "linkage", real, "--json"],
            "ldd -r": ["ldd", "-r", real],
            "ldd": ["ldd", real],
        }
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        for _ in range(runs):
            for tool, command in tools.items():
                times[tool].append(timed(command, tool))
        report(f"3. {real}, as it would start here", times, "redhand linkage FILE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--libraries", type=int, default=120)
    parser.add_argument("--parts", default="1,2,3", help="which parts to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if "1" in parts:
        bench_process(args.runs, args.libraries)
    if "2" in parts:
        bench_files(args.runs)
    if "3" in parts:
        bench_programs(args.runs)


if __name__ == "__main__":
    main()
