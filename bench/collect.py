"""Benchmark ``redhand collect`` (the kernel's core handler) and ``redhand crashes``.

1. From the core's first byte on stdin to the crash stored (the collector's exit: the kernel
   waits for the handler to read the whole core before the crashed process's exit completes,
   so this delays a restart): a small real kernel core (a C program's), and 1 GiB made of a
   real python3 core repeated (memory-like data, compressible as cores are).
2. 50 and 200 collectors at once (the same small core, different programs): wall time until
   all are stored; all stored, none lost.
3. The collector's start: import time (``python -X importtime``) and peak memory.
4. ``redhand crashes`` (the bucket table) and ``redhand crashes list --since 1d`` over 100,000
   crash records in 5,000 buckets.

No core_pattern is changed: the collector is run as the kernel runs it.  Medians of runs.

Usage: python bench/collect.py [--runs 5] [--big-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack import redhand_command
from watch import median

SMALL = r"""
#include <stdio.h>
#include <stdlib.h>
int main(void) { char *volatile p = malloc(1 << 20); p[0] = 1; *(volatile int *)0 = 1; return 0; }
"""

ARGS = ["1", "1", "11", "0", "18446744073709551615", "1", "0", "0", "", "host"]


def kernel_core(folder: Path, argv: list[str]) -> Path:
    def unlimited() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    before = set(folder.iterdir())
    subprocess.run(argv, cwd=folder, preexec_fn=unlimited, capture_output=True)
    made = [p for p in set(folder.iterdir()) - before if p.name.startswith("core")]
    if not made:
        raise SystemExit("no kernel core was written here (core_pattern must be a plain file)")
    kept = folder / f"kept-{Path(argv[0]).name}.core"  # the kernel writes no core over a file
    made[0].rename(kept)
    return kept


def collect_once(store: Path, core: Path, name: str) -> float:
    command = [
        *redhand_command(),
        "collect",
        "--store",
        str(store),
        "--no-analyze",
        "1",
        *ARGS,
        name,
    ]
    with open(core, "rb") as data:
        started = time.perf_counter()
        subprocess.run(command, stdin=data, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - started


def at_once(store: Path, core: Path, count: int) -> tuple[float, int]:
    data = core.read_bytes()
    started = time.perf_counter()
    processes = []
    for n in range(count):
        command = [
            *redhand_command(),
            "collect",
            "--store",
            str(store),
            "--no-analyze",
            str(10000 + n),
            *ARGS,
            f"program{n}",
        ]
        processes.append(
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        )
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(data)
        process.stdin.close()
    failed = sum(process.wait() != 0 for process in processes)
    wall = time.perf_counter() - started
    stored = sqlite3.connect(store / "crashes.db").execute("SELECT COUNT(*) FROM crashes")
    return wall, stored.fetchone()[0] - failed


def fill(store: Path, records: int, buckets: int) -> None:
    from redhand.collect.store import connect, open_store

    store_fd = open_store(str(store), create=True)
    connect(store_fd).close()
    os.close(store_fd)
    connection = sqlite3.connect(store / "crashes.db")
    now = time.time()
    rows = []
    for n in range(records):
        bucket = f"{n % buckets:064x}"
        rows.append(
            (
                os.urandom(16).hex(),
                now - n * 30,
                now,
                n,
                11,
                f"/usr/bin/prog{n % 97}",
                "null-dereference",
                bucket,
                f"null-dereference | f{n % buckets} | g",
                "analyzed",
            )
        )
    connection.executemany(
        "INSERT INTO crashes (id, time, collected, pid, signal, exe, kind, bucket, signature, "
        "status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    connection.commit()
    connection.close()


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        source = folder / "small.c"
        source.write_text(SMALL)
        exe = folder / "small"
        subprocess.run(["gcc", "-O1", "-o", str(exe), str(source)], check=True)
        small = kernel_core(folder, [str(exe)])
        python = kernel_core(folder, [sys.executable, "-c", "import os, json, decimal; os.abort()"])
        big = folder / "big.core"
        piece = python.read_bytes()
        with open(big, "wb") as out:
            while out.tell() < args.big_mib << 20:
                out.write(piece)
        print(f"1. first byte to stored (medians of {args.runs})")
        for label, core in (
            (f"small core ({small.stat().st_size >> 10} KiB)", small),
            (f"{big.stat().st_size >> 20} MiB of core", big),
        ):
            store = folder / "store1"
            times = [collect_once(store, core, f"p{n}") for n in range(args.runs)]
            print(
                f"  {label:<28} {median(times) * 1000:8.0f} ms  "
                f"({core.stat().st_size / median(times) / (1 << 20):,.0f} MiB/s)"
            )
            subprocess.run(["rm", "-rf", str(store)], check=True)
        big.unlink()
        print("2. collectors at once")
        for count in (50, 200):
            store = folder / f"store{count}"
            wall, stored = at_once(store, small, count)
            print(f"  {count} at once: {wall:.2f} s, {stored} of {count} stored")
        print("3. the collector's start")
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import redhand.collect.helper, zstandard"],
            capture_output=True,
            text=True,
        )
        total = sum(
            int(line.split("|")[1])
            for line in out.stderr.splitlines()
            if line.startswith("import time:") and line.split("|")[1].strip().isdigit()
        )
        print(f"  imports: {total / 1000:.1f} ms (the sum of python -X importtime)")
        usage_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        collect_once(folder / "store-rss", small, "rss")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"  peak memory of a collector: {max(peak, usage_before) / 1024:.1f} MiB")
        print("4. redhand crashes over 100,000 records in 5,000 buckets")
        store = folder / "store-list"
        fill(store, 100_000, 5_000)
        for label, command in (
            ("crashes (buckets)", ["crashes", "--store", str(store)]),
            (
                "crashes list --since 1d",
                ["crashes", "--store", str(store), "list", "--since", "1d"],
            ),
        ):
            times = [timed([*redhand_command(), *command]) for _ in range(args.runs)]
            print(f"  redhand {label:<26} {median(times) * 1000:8.0f} ms")


if __name__ == "__main__":
    main()
