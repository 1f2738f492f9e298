"""Benchmark ``redhand allocs`` against the bare program, heaptrack, a frame-pointer bpftrace
script (bcc memleak's method) and valgrind's DHAT, on the same programs in one run.

Targets (compiled here with gcc into a temporary folder):

1. a malloc-heavy C program: each iteration frees one slot of a 1024-slot ring and mallocs
   16 to 271 bytes into it; one thread, then two.  It times its loop itself
   (CLOCK_MONOTONIC) and prints ns per iteration (one malloc and one free): "added" is that
   minus the bare program's, per malloc+free pair;
2. python3 running a small workload (building and dropping lists, dicts and strings), timed
   by itself.

Every tool launches the program (redhand: ``redhand allocs --force -- CMD``, default
sampling, 512 KiB; heaptrack; ``bpftrace -c``; ``valgrind --tool=dhat``).  For redhand the
run also gives: the exact malloc count against the program's own (lossless counters), the
share of sampled stacks complete to _start/clone, attach and detach times, and redhand's
peak memory (RUSAGE of the redhand process).  Medians of several interleaved runs.

Usage: python bench/allocs.py [--runs 5] [--iterations 2000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack import redhand_command
from watch import median

PROGRAM = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long iterations;

static void *work(void *arg)
{
    void *ring[1024] = {0};
    unsigned seed = (unsigned)(long)arg;
    for (long i = 0; i < iterations; i++) {
        unsigned slot = i & 1023;
        free(ring[slot]);
        seed = seed * 1103515245u + 12345u;
        ring[slot] = malloc(16 + (seed >> 16) % 256);
        ((char *)ring[slot])[0] = 1;
    }
    for (int i = 0; i < 1024; i++)
        free(ring[i]);
    return 0;
}

int main(int argc, char **argv)
{
    iterations = atol(argv[1]);
    int threads = atoi(argv[2]);
    pthread_t ids[16];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int t = 0; t < threads; t++)
        pthread_create(&ids[t], 0, work, (void *)(long)(t + 1));
    for (int t = 0; t < threads; t++)
        pthread_join(ids[t], 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("ns_per_iteration %.1f\n", ns / iterations);
    return 0;
}
"""

PYTHON_WORKLOAD = r"""
import time
started = time.perf_counter()
total = 0
for round in range(40):
    rows = [{"id": i, "name": str(i) * 3, "tags": [i, i + 1]} for i in range(20000)]
    total += sum(len(row["name"]) for row in rows)
    del rows
elapsed = time.perf_counter() - started
print("seconds", elapsed)
"""

BPFTRACE = r"""
uprobe:/lib/x86_64-linux-gnu/libc.so.6:malloc /pid == cpid/ { @size[tid] = arg0; }
uretprobe:/lib/x86_64-linux-gnu/libc.so.6:malloc /pid == cpid/ {
    @stacks[ustack] = count(); @live[retval] = @size[tid];
}
uprobe:/lib/x86_64-linux-gnu/libc.so.6:free /pid == cpid/ { delete(@live[arg0]); }
END { clear(@live); clear(@size); }
"""


def build(folder: Path) -> Path:
    source = folder / "allocbench.c"
    source.write_text(PROGRAM)
    exe = folder / "allocbench"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(source)], check=True)
    return exe


def figure(output: str, key: str) -> float | None:
    match = re.search(rf"^{key} ([0-9.]+)$", output, re.M)
    return float(match.group(1)) if match else None


def run(command: list[str], folder: Path) -> tuple[str, float, int]:
    """(stdout, wall seconds, peak RSS of the command's own process in KiB)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=folder
    )
    assert process.stdout is not None
    out = process.stdout.read()
    _pid, _status, usage = os.wait4(process.pid, 0)
    process.returncode = 0
    return out, time.perf_counter() - started, usage.ru_maxrss


def tools(program: list[str], folder: Path) -> dict[str, list[str]]:
    found = {
        "bare": program,
        "redhand allocs": [*redhand_command(), "allocs", "--force", "--json", "--", *program],
    }
    if shutil.which("heaptrack"):
        found["heaptrack (preload)"] = ["heaptrack", "-o", str(folder / "heaptrack"), *program]
    if program[0] in ("python3", sys.executable):
        # bpftrace -c needs one command word; valgrind's run of python3 here printed the
        # bare program's own timing (it did not slow it at all): neither is comparable.
        return found
    if shutil.which("bpftrace"):
        script = folder / "memleak.bt"
        script.write_text(BPFTRACE)
        found["bpftrace, frame-pointer stacks"] = ["bpftrace", "-c", " ".join(program), str(script)]
    if shutil.which("valgrind"):
        found["valgrind --tool=dhat"] = [
            "valgrind", "--tool=dhat", f"--dhat-out-file={folder / 'dhat.out'}", *program,
        ]  # fmt: skip
    return found


def bench(title: str, program: list[str], key: str, runs: int, folder: Path, per: float) -> None:
    commands = tools(program, folder)
    values: dict[str, list[float]] = {name: [] for name in commands}
    extras: dict[str, list[float]] = {"attach ms": [], "detach ms": [], "complete %": [],
                                      "RSS MiB": [], "exact mallocs": []}  # fmt: skip
    for _ in range(runs):
        for name, command in commands.items():
            out, _wall, rss = run(command, folder)
            text = out
            if name == "redhand allocs":
                lines = out.strip().splitlines()
                document = json.loads(lines[-1])
                text = "\n".join(lines[:-1])
                extras["attach ms"].append(document["attach_seconds"] * 1000)
                extras["detach ms"].append(document["detach_seconds"] * 1000)
                if document["samples"]:
                    extras["complete %"].append(100 * document["complete"] / document["samples"])
                extras["RSS MiB"].append(rss / 1024)
                mallocs = sum(t["calls"] for t in document["totals"] if t["function"] == "malloc")
                extras["exact mallocs"].append(mallocs)
            value = figure(text, key)
            if value is not None:
                values[name].append(value)
    bare = median(values["bare"])
    print(f"\n{title}")
    per_call = key == "ns_per_iteration"
    added_title = "added per pair" if per_call else "added"
    print(f"  {'tool':<34} {'median':>14} {added_title:>15} {'vs bare':>8}")
    for name, got in values.items():
        if not got:
            print(f"  {name:<34} {'failed':>14}")
            continue
        value = median(got)
        added = (value - bare) * per
        shown = f"{value:,.1f} ns" if per_call else f"{value:.3f} s"
        extra = f"{added:,.0f} ns" if per_call else f"{added / 1e6:,.0f} ms"
        print(f"  {name:<34} {shown:>14} {extra:>15} {value / bare:>7.2f}x")
    for name, got in extras.items():
        if got:
            runs_text = ", ".join(f"{g:,.0f}" for g in got)
            print(f"  redhand {name}: median {median(got):,.1f} (runs: {runs_text})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs
    iterations = 300_000 if args.quick else args.iterations
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        exe = build(folder)
        for threads in (1, 2):
            bench(
                f"1. malloc+free loop, {threads} thread(s), {iterations:,} iterations each "
                f"(ns per iteration; added per malloc+free pair)",
                [str(exe), str(iterations), str(threads)],
                "ns_per_iteration",
                runs,
                folder,
                1.0,
            )
        script = folder / "workload.py"
        script.write_text(PYTHON_WORKLOAD)
        bench(
            "2. python3, lists and dicts of 20,000 rows, 40 times (seconds, timed by itself)",
            [sys.executable if not shutil.which("python3") else "python3", str(script)],
            "seconds",
            runs,
            folder,
            1e9,
        )


if __name__ == "__main__":
    main()
