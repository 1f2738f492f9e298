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

"on disk ms" adds an fsync of the core to each tool's wall time: redhand fsyncs
its core before naming it, gdb and the kernel leave theirs in the page cache.

Usage: python bench/gcore.py [--heap-mb 1024,4096] [--runs 5] [--hugepages]
                             [--tools redhand-fork,redhand-stop,redhand-zstd,gdb,kernel]
"""

from __future__ import annotations

import argparse
import json
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
        self.durable: list[float] = []
        self.disk: list[int] = []
        self.apparent: list[int] = []
        self.freeze: list[float] = []
        """redhand's own figure: stopping every thread and copying its registers (ms)."""
        self.own_pause: list[float] = []
        """redhand's own figure for the pause: first thread stopped to last let go (ms)."""

    def add(self, pause: float, wall: float, durable: float, core: Path) -> None:
        info = core.stat()
        self.pause.append(pause)
        self.wall.append(wall)
        self.durable.append(durable)
        self.disk.append(info.st_blocks * 512)
        self.apparent.append(info.st_size)

    def median(self, name: str) -> float:
        values = getattr(self, name)
        return statistics.median(values) if values else float("nan")


def command(tool: str, pid: int, core: Path) -> list[str]:
    redhand = [*redhand_command(), "gcore", str(pid), "-o", str(core), "--json"]
    return {
        "redhand-fork": [*redhand, "--mode", "fork"],
        "redhand-stop": [*redhand, "--mode", "stop"],
        "redhand-zstd": [*redhand, "--mode", "fork", "--zstd"],
        "gdb": ["gdb", "-batch", "-nx", "-p", str(pid), "-ex", f"gcore {core}"],
    }[tool]


def run_tool(
    target: Target, tool: str, core: Path
) -> tuple[float, float, float, tuple[float, float]]:
    """(pause in ms as the heartbeat saw it, wall time in ms, wall time until the core
    is on disk: redhand fsyncs it; gdb and the kernel leave it to the page cache; the
    freeze and the pause redhand reports, in ms, or nan)."""
    target.reset()
    started = time.perf_counter()
    result = subprocess.run(
        command(tool, target.pid, core),
        capture_output=True,
        timeout=1800,
    )
    wall = (time.perf_counter() - started) * 1000
    if result.returncode != 0 or not core.exists():
        raise SystemExit(f"{tool} failed: {result.stderr.decode(errors='replace')}")
    fsync(core)
    durable = (time.perf_counter() - started) * 1000
    own = (float("nan"), float("nan"))
    if tool.startswith("redhand"):
        document = json.loads(result.stdout)
        own = (document["timings"]["freeze"] * 1000, document["pause_ns"] / 1e6)
    return target.max_gap_ms(), wall, durable, own


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def kernel_core(
    binary: Path, heap_mb: int, workdir: Path, options: list[str]
) -> tuple[float, float, Path]:
    """Start a fresh target, kill it with SIGABRT: (ms until it was reaped, ms until its
    core was on disk, the core)."""
    folder = workdir / f"kernel-{time.monotonic_ns()}"
    folder.mkdir()
    limit = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    resource.setrlimit(resource.RLIMIT_CORE, limit)  # inherited by the target
    target = Target(binary, 18, folder, f"--heap-mb={heap_mb}", *options)
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
    fsync(cores[0])
    return wall, (time.perf_counter() - started) * 1000, cores[0]


def size(count: float) -> str:
    return f"{count / MiB:,.0f} MiB"


def bench(
    heap_mb: int, runs: int, tools: list[str], binary: Path, workdir: Path, options: list[str]
) -> None:
    figures: dict[str, Figures] = {tool: Figures() for tool in tools}
    live = [tool for tool in tools if tool != "kernel"]
    heap = f"--heap-mb={heap_mb}"
    target = Target(binary, 18, workdir, heap, *options) if live else None
    try:
        for run in range(runs):
            for tool in live:
                assert target is not None
                core = workdir / f"core-{tool}-{run}"
                pause, wall, durable, (freeze, own_pause) = run_tool(target, tool, core)
                figures[tool].add(pause, wall, durable, core)
                figures[tool].freeze.append(freeze)
                figures[tool].own_pause.append(own_pause)
                core.unlink()
            if "kernel" in tools:
                wall, durable, core = kernel_core(binary, heap_mb, workdir, options)
                figures["kernel"].add(float("nan"), wall, durable, core)
                shutil.rmtree(core.parent)
    finally:
        if target is not None:
            target.close()
    pages = "huge pages (MADV_HUGEPAGE)" if "--hugepages" in options else "4 KiB pages"
    print(f"\n{heap_mb:,} MiB touched in {pages}, 20 threads, {runs} runs each, medians:")
    print(
        f"  {'tool':<14} {'pause ms':>10} {'wall ms':>9} {'on disk ms':>11} "
        f"{'disk':>10} {'apparent':>10}"
    )
    for tool, values in figures.items():
        print(
            f"  {tool:<14} {values.median('pause'):>10.1f} {values.median('wall'):>9.0f} "
            f"{values.median('durable'):>11.0f} {size(values.median('disk')):>10} "
            f"{size(values.median('apparent')):>10}"
        )
    fork = figures.get("redhand-fork")
    if fork is None:
        return
    pause = fork.median("pause")
    print(
        f"  redhand fork: {pause / (heap_mb / 1024):.1f} ms of pause per GiB; by redhand's own "
        f"clock: paused {fork.median('own_pause'):.1f} ms, of which stopping the 20 threads "
        f"and copying their registers {fork.median('freeze'):.2f} ms"
    )
    for tool in ("redhand-stop", "redhand-zstd", "gdb", "kernel"):
        other = figures.get(tool)
        if other is None:
            continue
        ratios = [
            f"wall {other.median('wall') / fork.median('wall'):.2f}x",
            f"until on disk {other.median('durable') / fork.median('durable'):.2f}x",
            f"disk {other.median('disk') / fork.median('disk'):.2f}x",
        ]
        if tool != "kernel":
            ratios.insert(0, f"pause {other.median('pause') / pause:.1f}x")
        print(f"  {tool} / redhand fork: {', '.join(ratios)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heap-mb", default="1024,4096", help="comma-separated sizes (MiB)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--workdir", help="where cores are written (default: a temporary folder)")
    parser.add_argument(
        "--hugepages", action="store_true", help="the target's memory in transparent huge pages"
    )
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
            options = ["--hugepages"] if args.hugepages else []
            bench(heap_mb, args.runs, tools, binary, workdir, options)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
