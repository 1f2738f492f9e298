"""Benchmark ``redhand core`` against gdb and eu-stack on the same core files.

Two cores, written by gdb's ``gcore`` (so this works whatever core_pattern
says): one of the 20-worker heartbeat program, and one of a program that has
filled and touched a large heap (default 64 MiB) before it was dumped.  Each
tool reads each core several times, interleaved; the medians and ratios of
the wall times are printed.  Run after `bench/stack.py` or alone.

Usage: python bench/core.py [--runs 7] [--heap-mib 64]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT = ROOT / "tests" / "programs" / "threads_heartbeat.c"

BIG_HEAP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t size = (size_t)atol(argv[1]) << 20;
    unsigned char *heap = malloc(size);
    for (size_t i = 0; i < size; i++) heap[i] = (unsigned char)(i * 2654435761u >> 13);
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
"""


def compile_program(source: Path, output: Path, *flags: str) -> Path:
    subprocess.run(["gcc", "-O1", "-g", *flags, "-o", str(output), str(source)], check=True)
    return output


def gcore(argv: list[str], core: Path) -> Path:
    """Start a program, wait for "ready", dump it with gdb's gcore, end it."""
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise SystemExit(f"{argv[0]} did not start")
        subprocess.run(
            ["gdb", "-batch", "-nx", "-p", str(process.pid), "-ex", f"gcore {core}"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=300,
        )
    finally:
        process.kill()
        process.wait()
    return core


def redhand_command() -> list[str]:
    script = Path(sys.executable).parent / "redhand"
    return [str(script)] if script.exists() else [sys.executable, "-m", "redhand"]


def wall_ms(command: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    elapsed = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr.decode(errors='replace')}")
    return elapsed


def bench(name: str, exe: Path, core: Path, runs: int) -> None:
    commands = {
        "redhand": [*redhand_command(), "core", str(core)],
        "gdb": ["gdb", "-batch", "-nx", "-ex", "thread apply all bt", str(exe), str(core)],
        "eu-stack": ["eu-stack", "--core", str(core), "-e", str(exe)],
    }
    for command in commands.values():
        wall_ms(command)  # page cache and redhand's cache warm for every tool
    times: dict[str, list[float]] = {tool: [] for tool in commands}
    for _ in range(runs):
        for tool, command in commands.items():
            times[tool].append(wall_ms(command))
    size = core.stat().st_size / 2**20
    print(f"\n{name}: {size:.0f} MiB core, {runs} runs each, median wall ms:")
    base = statistics.median(times["redhand"])
    for tool, values in times.items():
        median = statistics.median(values)
        ratio = "" if tool == "redhand" else f"  ({median / base:.2f}x redhand's)"
        print(f"  {tool:<10} {median:>9.1f}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--heap-mib", type=int, default=64)
    args = parser.parse_args()
    for tool in ("gdb", "eu-stack", "gcc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install gdb elfutils gcc)")
    with tempfile.TemporaryDirectory(prefix="redhand-bench-") as directory:
        work = Path(directory)
        threads = compile_program(HEARTBEAT, work / "threads_heartbeat", "-pthread")
        heap_source = work / "big_heap.c"
        heap_source.write_text(BIG_HEAP)
        heap = compile_program(heap_source, work / "big_heap")
        beat = work / "heartbeat"
        threads_core = gcore([str(threads), "20", str(beat), "--no-spin"], work / "threads.core")
        heap_core = gcore([str(heap), str(args.heap_mib)], work / "heap.core")
        bench("20 worker threads", threads, threads_core, args.runs)
        bench(f"{args.heap_mib} MiB heap", heap, heap_core, args.runs)


if __name__ == "__main__":
    main()
