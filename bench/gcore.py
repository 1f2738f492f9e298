"""Benchmark ``redhand gcore`` against gdb's gcore and the kernel's own core, in one run.

The target is tests/programs/threads_heartbeat.c with 18 workers (20 threads
with main and the heartbeat) and N MiB of touched anonymous memory (half
random bytes, a quarter written zeros, a quarter a pattern).  For each tool,
several runs, interleaved:

* the pause as the target saw it: its heartbeat thread's longest gap between
  ticks (every ~100 us) while the tool ran;
* the wall time of the command;
* the core's size on disk (allocated blocks) and its apparent size.

The kernel's core is taken by ``kill -ABRT`` of a fresh copy of the target
(RLIMIT_CORE unlimited, in a folder of its own); it needs core_pattern to
write a file (not a pipe).  Its "pause" is the process's end: reported as
the wall time from the signal to the reaped process, the core on disk.

Usage: python bench/gcore.py [--heap-mb 1024,4096] [--runs 5]
                             [--tools redhand-fork,redhand-stop,redhand-zstd,gdb,kernel]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack import Target, compile_target, redhand_command

TOOLS = ("redhand-fork", "redhand-stop", "redhand-zstd", "gdb", "kernel")
MiB = 1 << 20


class Figures:
    def __init__(self) -> None:
        self.pause: list[float] = []
        self.wall: list[float] = []
        self.disk: list[int] = []
        self.apparent: list[int] = []

    def add(self, pause: float, wall: float, core: Path) -> None:
        info = core.stat()
        self.pause.append(pause)
        self.wall.append(wall)
        self.disk.append(info.st_blocks * 512)
        self.apparent.append(info.st_size)


def command(tool: str, pid: int, core: Path) -> list[str]:
    redhand = [*redhand_command(), "gcore", str(pid), "-o", str(core)]
    return {
        "redhand-fork": [*redhand, "--mode", "fork"],
        "redhand-stop": [*redhand, "--mode", "stop"],
        "redhand-zstd": [*redhand, "--mode", "fork", "--zstd"],
        "gdb": ["gdb", "-batch", "-nx", "-p", str(pid), "-ex", f"gcore {core}"],
    }[tool]


def run_tool(target: Target, tool: str, core: Path) -> tuple[float, float]:
    """(pause in ms as the heartbeat saw it, wall time in ms)."""
    target.reset()
    started = time.perf_counter()
    result = subprocess.run(
        command(tool, target.pid, core),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=1800,
    )
    wall = (time.perf_counter() - started) * 1000
    if result.returncode != 0 or not core.exists():
        raise SystemExit(f"{tool} failed: {result.stderr.decode(errors='replace')}")
    return target.max_gap_ms(), wall


def kernel_core(binary: Path, heap_mb: int, workdir: Path) -> tuple[float, Path]:
    """Start a fresh target, kill it with SIGABRT; (ms until it was reaped, its core)."""
    folder = workdir / f"kernel-{time.monotonic_ns()}"
    folder.mkdir()
    limit = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    resource.setrlimit(resource.RLIMIT_CORE, limit)  # inherited by the target
    target = Target(binary, 18, folder, f"--heap-mb={heap_mb}")
    try:
        started = time.perf_counter()
        os.kill(target.pid, signal.SIGABRT)
        target.process.wait(timeout=1800)
        wall = (time.perf_counter() - started) * 1000
    finally:
        target.close()
    cores = [path for path in folder.iterdir() if path.name.startswith("core")]
    if not cores:
        raise SystemExit("the kernel wrote no core here: core_pattern is not a plain file name")
    return wall, cores[0]


def size(count: float) -> str:
    return f"{count / MiB:,.0f} MiB"


def bench(heap_mb: int, runs: int, tools: list[str], binary: Path, workdir: Path) -> None:
    figures: dict[str, Figures] = {tool: Figures() for tool in tools}
    live = [tool for tool in tools if tool != "kernel"]
    target = Target(binary, 18, workdir, f"--heap-mb={heap_mb}") if live else None
    try:
        for run in range(runs):
            for tool in live:
                assert target is not None
                core = workdir / f"core-{tool}-{run}"
                pause, wall = run_tool(target, tool, core)
                figures[tool].add(pause, wall, core)
                core.unlink()
            if "kernel" in tools:
                wall, core = kernel_core(binary, heap_mb, workdir)
                figures["kernel"].add(float("nan"), wall, core)
                shutil.rmtree(core.parent)
    finally:
        if target is not None:
            target.close()
    print(f"\n{heap_mb:,} MiB touched, 20 threads, {runs} runs each, medians:")
    print(f"  {'tool':<14} {'pause ms':>10} {'wall ms':>10} {'disk':>10} {'apparent':>10}")
    for tool, values in figures.items():
        pause = statistics.median(values.pause) if tool != "kernel" else float("nan")
        print(
            f"  {tool:<14} {pause:>10.1f} {statistics.median(values.wall):>10.0f} "
            f"{size(statistics.median(values.disk)):>10} "
            f"{size(statistics.median(values.apparent)):>10}"
        )
    if "redhand-fork" in figures and figures["redhand-fork"].pause:
        fork = figures["redhand-fork"]
        pause = statistics.median(fork.pause)
        print(f"  redhand fork: {pause / (heap_mb / 1024):.1f} ms of pause per GiB")
        for tool in ("redhand-stop", "redhand-zstd", "gdb"):
            if tool in figures:
                other = figures[tool]
                print(
                    f"  {tool}: pause {statistics.median(other.pause) / pause:.1f}x redhand "
                    f"fork's, wall {statistics.median(other.wall) / statistics.median(fork.wall):.2f}x"
                )
        if "kernel" in figures:
            kernel = figures["kernel"]
            print(
                f"  kernel: disk {statistics.median(kernel.disk) / statistics.median(fork.disk):.2f}"
                "x redhand fork's"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heap-mb", default="1024,4096", help="comma-separated sizes (MiB)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--workdir", help="where cores are written (default: a temporary folder)")
    args = parser.parse_args()
    tools = [tool for tool in args.tools.split(",") if tool]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        raise SystemExit(f"unknown tools: {', '.join(sorted(unknown))}")
    if "gdb" in tools and shutil.which("gdb") is None:
        raise SystemExit("gdb is not installed (apt-get install gdb)")
    with tempfile.TemporaryDirectory(prefix="redhand-bench-", dir=args.workdir) as directory:
        workdir = Path(directory)
        binary = compile_target(workdir)
        for heap_mb in (int(text) for text in args.heap_mb.split(",")):
            bench(heap_mb, args.runs, tools, binary, workdir)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
