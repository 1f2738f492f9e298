"""Benchmark ``redhand collect`` (the kernel's core handler) and ``redhand crashes``.

1. From the core's first byte on stdin to the crash stored (the collector's exit: the kernel
   waits for the handler to read the whole core before the crashed process's exit completes,
   so this delays a restart): a small real kernel core (a C program's), and 1 GiB made of a
   real python3 core repeated (memory-like data, compressible as cores are).
2. 50 and 200 collectors at once (the same small core, different programs): wall time until
   all are stored; all stored, none lost.
3. The collector's start: import time (``python -X importtime``) and peak memory.
4. ``redhand crashes`` (the bucket table), ``redhand crashes list --since 1d`` and
   ``redhand crashes families`` over 100,000 crash records in 5,000 buckets (three to a family).
5. The same 100,000 records of 20 hosts in PostgreSQL (a private cluster of Debian's
   postgresql, on a unix socket): ``redhand crashes --db`` and ``--db --host``; and the web
   page's bucket table (``serve``, one request) from the store and from PostgreSQL.

6. Only when asked for (``--parts 6``: it changes the machine's core_pattern, and puts it
   back): real crashes through the kernel, a small C program's, each a copy of its own (the
   crash-loop limit is per program).  How long the crashed process takes from its start to
   its exit, which the kernel holds until the handler has the core, with the kernel writing
   a plain ``core`` file itself (the floor), with ``redhand collect`` on a pipe (a program
   started per crash), and with ``redhand collect --serve`` on the coredump socket (Linux
   6.17+: a fork of a running server per crash); and 50, then 200 crashes at once in each
   mode (the second burst once the first one's analyses are done).

Parts 1 to 5 change no core_pattern: the collector is run as the kernel runs it.  Medians
of runs.

Usage: python bench/collect.py [--runs 5] [--big-mib 1024] [--parts 1,2,3,4,5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
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


def fleet_rows(
    records: int, buckets: int
) -> Iterator[tuple[str, float, int, int, str, str, str, str, str]]:
    """Crash records: ``buckets`` buckets, three to a family (one crash site, three callers)."""
    now = time.time()
    for n in range(records):
        bucket = n % buckets
        yield (
            os.urandom(16).hex(),
            now - n * 30,
            n,
            11,
            f"/usr/bin/prog{n % 97}",
            "null-dereference",
            f"{bucket:064x}",
            f"null-dereference | f{bucket // 3} | g{bucket % 3}",
            f"f{bucket // 3:063x}",
        )


def fill(store: Path, records: int, buckets: int) -> None:
    from redhand.collect.store import connect, open_store

    store_fd = open_store(str(store), create=True)
    connect(store_fd).close()
    os.close(store_fd)
    connection = sqlite3.connect(store / "crashes.db")
    now = time.time()
    connection.executemany(
        "INSERT INTO crashes (id, time, collected, pid, signal, exe, kind, bucket, signature, "
        "family, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((crash_id, when, now, *rest, "analyzed")
         for crash_id, when, *rest in fleet_rows(records, buckets)),
    )  # fmt: skip
    connection.commit()
    connection.close()


@contextlib.contextmanager
def private_postgresql(folder: Path) -> Iterator[str | None]:
    """A PostgreSQL cluster of its own, run as the postgres user on a unix socket; its URL."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not binaries:
        yield None
        return
    data, sockets = folder / "pg-data", folder / "pg-sockets"
    sockets.mkdir()
    for path in (folder, sockets):
        shutil.chown(path, "postgres")
    folder.chmod(0o755)
    folder.parent.chmod(0o711)  # a temporary folder is root's alone: let postgres through

    def as_postgres(*command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    as_postgres(str(binaries[-1] / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres")
    pg_ctl = str(binaries[-1] / "pg_ctl")
    options = f"-k {sockets} -c listen_addresses=''"
    as_postgres(pg_ctl, "-D", str(data), "-o", options, "-w", "-l", str(folder / "pg.log"), "start")
    try:
        yield f"postgresql:///postgres?host={sockets}&user=postgres"
    finally:
        as_postgres(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")


def fill_fleet(url: str, records: int, buckets: int, hosts: int) -> None:
    from redhand.collect.fleet import connect, migrate

    connection = connect(url)
    migrate(connection)
    with connection.cursor() as cursor:
        columns = "id, host, time, pid, signal, exe, kind, bucket, signature, family, sig_version"
        with cursor.copy(f"COPY redhand_crashes ({columns}) FROM STDIN") as copy:
            for n, (crash_id, when, pid, sig, exe, kind, bucket, text, family) in enumerate(
                fleet_rows(records, buckets)
            ):
                stamp = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(when))
                copy.write_row((crash_id, f"host{n % hosts}", stamp, pid, sig, exe, kind, bucket,
                                text, family, 1))  # fmt: skip
        cursor.execute("ANALYZE redhand_crashes")
    connection.commit()
    connection.close()


def page_time(args: list[str], runs: int) -> float:
    """The median time of one request for the web page's bucket table (after a first one)."""
    server = subprocess.Popen(
        [*redhand_command(), "crashes", *args, "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the access log
        text=True,
    )
    try:
        assert server.stdout is not None
        url = "http" + server.stdout.readline().split(" on http", 1)[1].strip()
        urllib.request.urlopen(url, timeout=120).read()
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            urllib.request.urlopen(url, timeout=120).read()
            times.append(time.perf_counter() - started)
        return median(times)
    finally:
        server.terminate()
        server.wait()


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def first_byte_to_stored(folder: Path, small: Path, runs: int, big_mib: int) -> None:
    python = kernel_core(folder, [sys.executable, "-c", "import os, json, decimal; os.abort()"])
    big = folder / "big.core"
    piece = python.read_bytes()
    with open(big, "wb") as out:
        while out.tell() < big_mib << 20:
            out.write(piece)
    print(f"1. first byte to stored (medians of {runs})")
    for label, core in (
        (f"small core ({small.stat().st_size >> 10} KiB)", small),
        (f"{big.stat().st_size >> 20} MiB of core", big),
    ):
        store = folder / "store1"
        times = [collect_once(store, core, f"p{n}") for n in range(runs)]
        print(
            f"  {label:<28} {median(times) * 1000:8.0f} ms  "
            f"({core.stat().st_size / median(times) / (1 << 20):,.0f} MiB/s)"
        )
        subprocess.run(["rm", "-rf", str(store)], check=True)
    big.unlink()


def collectors_at_once(folder: Path, small: Path) -> None:
    print("2. collectors at once")
    for count in (50, 200):
        store = folder / f"store{count}"
        wall, stored = at_once(store, small, count)
        print(f"  {count} at once: {wall:.2f} s, {stored} of {count} stored")


def collector_start(folder: Path, small: Path) -> None:
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


def listing(folder: Path, runs: int, postgresql: bool) -> None:
    store = folder / "store-list"
    fill(store, 100_000, 5_000)
    commands = [
        ("crashes (buckets)", ["--store", str(store)]),
        ("crashes list --since 1d", ["--store", str(store), "list", "--since", "1d"]),
        ("crashes families", ["--store", str(store), "families"]),
    ]
    pages = [("store", ["--store", str(store)])]
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(private_postgresql(folder / "pg")) if postgresql else None
        if postgresql and url is None:
            print("  (PostgreSQL is not installed: apt-get install postgresql)")
        if url is not None:
            fill_fleet(url, 100_000, 5_000, 20)
            commands += [
                ("crashes --db (buckets)", ["--db", url]),
                ("crashes --db --host host7", ["--db", url, "--host", "host7"]),
                ("crashes --db families", ["--db", url, "families"]),
            ]
            pages.append(("PostgreSQL", ["--db", url]))
        print(f"4. redhand crashes over 100,000 records in 5,000 buckets (medians of {runs})")
        for label, command in commands:
            times = [timed([*redhand_command(), "crashes", *command]) for _ in range(runs)]
            print(f"  redhand {label:<26} {median(times) * 1000:8.0f} ms")
        for label, command in pages:
            print(f"  web page, the bucket table from the {label}: "
                  f"{page_time(command, runs) * 1000:.0f} ms a request")  # fmt: skip


CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


@contextlib.contextmanager
def handler(mode: str, folder: Path) -> Iterator[Path]:
    """The kernel's core handler for one mode, installed; the store it fills."""
    store = folder / f"s-{mode}"
    before = CORE_PATTERN.read_text().strip()
    server = None
    try:
        if mode == "pipe":
            subprocess.run([*redhand_command(), "collect", "--install", "--store", str(store)],
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        elif mode == "socket":
            read, write = os.pipe()
            server = subprocess.Popen(
                [*redhand_command(), "collect", "--serve", "--install", "--store", str(store),
                 "--socket", str(folder / "run" / "c.sock"), "--ready-fd", str(write)],
                pass_fds=(write,),
            )  # fmt: skip
            os.close(write)
            with os.fdopen(read) as ready:
                if not ready.readline():
                    raise SystemExit("redhand collect --serve did not start")
        yield store
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        CORE_PATTERN.write_text(before)


def crash_exits(programs: list[Path], folder: Path) -> float:
    """Start the programs at once from a shell (a Python parent forks too slowly once the
    analyses of the first crashes take the CPUs); the wall time until every one has died."""
    script = "ulimit -c unlimited; for p in " + " ".join(str(p) for p in programs)
    script += '; do "$p" 2>/dev/null & done; wait'
    started = time.perf_counter()
    subprocess.run(["sh", "-c", script], cwd=folder, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def settled(store: Path, count: int) -> int:
    """Wait for the detached analyses (they would take the CPUs from the next runs); how many
    crashes the store has."""
    deadline = time.monotonic() + 300
    database = store / "crashes.db"
    while time.monotonic() < deadline:
        if database.exists():
            connection = sqlite3.connect(database)
            try:
                total, waiting = connection.execute(
                    "SELECT COUNT(*), SUM(status = 'collected') FROM crashes"
                ).fetchone()
            except sqlite3.Error:
                total, waiting = 0, 1
            finally:
                connection.close()
            if total >= count and not waiting:
                return int(total)
        time.sleep(0.2)
    return int(total)


def through_the_kernel(folder: Path, exe: Path, runs: int) -> None:
    if os.geteuid() != 0:
        raise SystemExit("part 6 changes core_pattern: run it as root")
    copies = []
    for n in range(200 + runs):
        copy = folder / f"crasher{n}"
        shutil.copy2(exe, copy)
        copies.append(copy)
    print(f"6. real crashes through the kernel: start to exit of the crashed process "
          f"(medians of {runs})")  # fmt: skip
    floor = None
    for mode in ("file", "pipe", "socket"):
        work = folder / f"k-{mode}"
        work.mkdir()
        with handler(mode, work) as store:
            one = []
            for program in copies[200:]:
                one.append(crash_exits([program], work))
                if mode != "file":
                    settled(store, len(one))
            bursts = []
            for count, programs in ((50, copies[:50]), (200, copies[50:200] + copies[:50])):
                before = settled(store, 0) if mode != "file" else 0
                wall = crash_exits(programs, work)
                stored = settled(store, before + count) - before if mode != "file" else count
                bursts.append(f"{count} at once: all dead in {wall:.2f} s, {stored} stored")
        median_ms = median(one) * 1000
        floor = floor if floor is not None else median_ms
        extra = "" if mode == "file" else f" (+{median_ms - floor:.1f} ms over the file)"
        print(f"  {mode:<7} one crash {median_ms:6.1f} ms{extra}; " + "; ".join(bursts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--parts", default="1,2,3,4,5", help="which parts to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        source = folder / "small.c"
        source.write_text(SMALL)
        exe = folder / "small"
        subprocess.run(["gcc", "-O1", "-o", str(exe), str(source)], check=True)
        small = kernel_core(folder, [str(exe)])
        if "1" in parts:
            first_byte_to_stored(folder, small, args.runs, args.big_mib)
        if "2" in parts:
            collectors_at_once(folder, small)
        if "3" in parts:
            collector_start(folder, small)
        if "4" in parts or "5" in parts:
            (folder / "pg").mkdir()
            listing(folder, args.runs, "5" in parts)
        if "6" in parts:
            through_the_kernel(folder, exe, args.runs)


if __name__ == "__main__":
    main()
