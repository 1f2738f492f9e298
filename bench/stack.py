"""Benchmark ``redhand stack`` against gdb and eu-stack on the same live target.

For each target size (20 and 1,000 worker threads by default) one target
process runs; each tool is run on it several times, interleaved.  Two figures
per run:

* the freeze, as the target's own heartbeat thread sees it: the longest gap
  between its ticks (every ~100 us) while the tool ran;
* the wall time of the whole command.

A "cold" redhand run has an empty cache directory (XDG_CACHE_HOME); a "warm"
one reuses the cache of the previous run.  The baseline line is the longest
heartbeat gap over the same time with no tool at all: the machine's own noise.

"C floor" is bench/freeze_floor.c: redhand's capture system calls in C and
nothing else (no unwinding, no output).  Its freeze is the kernel's share, the
least any tool can do that stops every thread together and copies their
stacks; its wall time means nothing.

Usage: python bench/stack.py [--threads 20,1000] [--runs 7]
                             [--tools redhand,gdb,eu-stack,floor]
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "tests" / "programs" / "threads_heartbeat.c"
FLOOR = ROOT / "bench" / "freeze_floor.c"
HEARTBEAT = struct.Struct("<9Q")  # see the struct in threads_heartbeat.c


class Target:
    """The heartbeat program, started with N workers (and its other options)."""

    def __init__(self, binary: Path, workers: int, workdir: Path, *options: str) -> None:
        self.file = workdir / f"heartbeat-{workers}"
        self.process = subprocess.Popen(
            [str(binary), str(workers), str(self.file), "--no-spin", *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=workdir,
        )
        assert self.process.stdout is not None
        line = b""
        for line in self.process.stdout:  # "heap 0x..." comes first with --heap-mb
            if line.strip() == b"ready":
                break
        if line.strip() != b"ready":
            self.close()
            raise SystemExit(f"the target did not start: {line!r}")
        with open(self.file, "r+b") as handle:
            self.map = mmap.mmap(handle.fileno(), HEARTBEAT.size)
        self.pid = self.process.pid

    def field(self, index: int) -> int:
        value: int = HEARTBEAT.unpack_from(self.map)[index]
        return value

    def reset(self) -> None:
        request = self.field(3) + 1
        struct.pack_into("<Q", self.map, 24, request)
        deadline = time.monotonic() + 5
        while self.field(4) != request:
            if time.monotonic() > deadline:
                raise SystemExit("the target's heartbeat does not answer")
            time.sleep(0.0005)

    def max_gap_ms(self) -> float:
        time.sleep(0.002)  # let the heartbeat tick once after the tool let go
        return self.field(1) / 1e6

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


def compile_target(workdir: Path) -> Path:
    binary = workdir / "threads_heartbeat"
    subprocess.run(
        ["gcc", "-O1", "-g", "-pthread", "-o", str(binary), str(PROGRAM)],
        check=True,
    )
    return binary


def compile_floor(workdir: Path) -> Path:
    binary = workdir / "freeze_floor"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(FLOOR)], check=True)
    return binary


def redhand_command() -> list[str]:
    script = Path(sys.executable).parent / "redhand"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "redhand"]


def tool_commands(pid: int, floor: Path | None = None) -> dict[str, list[str]]:
    return {
        "floor": [str(floor), str(pid)],
        "redhand": [*redhand_command(), "stack", str(pid)],
        "gdb": ["gdb", "-batch", "-nx", "-p", str(pid), "-ex", "thread apply all bt"],
        "eu-stack": ["eu-stack", "-p", str(pid)],
    }


def run_once(
    target: Target, command: list[str], env: dict[str, str] | None = None
) -> tuple[float, float]:
    """(freeze in ms as the heartbeat saw it, wall time in ms)."""
    target.reset()
    started = time.perf_counter()
    result = subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=600
    )
    wall = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr.decode(errors='replace')}")
    return target.max_gap_ms(), wall


def idle_gap(target: Target, seconds: float) -> float:
    target.reset()
    time.sleep(seconds)
    return target.max_gap_ms()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench(
    threads: int, runs: int, tools: list[str], binary: Path, floor: Path, workdir: Path
) -> None:
    target = Target(binary, threads, workdir)
    try:
        commands = tool_commands(target.pid, floor)
        cache = Path(tempfile.mkdtemp(prefix="redhand-cache-", dir=workdir))
        warm_env = dict(os.environ, XDG_CACHE_HOME=str(cache))
        results: dict[str, list[tuple[float, float]]] = {}
        variants: list[tuple[str, list[str], Callable[[], dict[str, str] | None]]] = []
        for tool in tools:
            if tool == "redhand":

                def cold_env() -> dict[str, str]:
                    fresh = tempfile.mkdtemp(prefix="redhand-cold-", dir=workdir)
                    return dict(os.environ, XDG_CACHE_HOME=fresh)

                variants.append(("redhand (cold)", commands[tool], cold_env))
                variants.append(("redhand (warm)", commands[tool], lambda: warm_env))
            elif tool == "floor":
                variants.append(("C floor", commands[tool], lambda: None))
            else:
                variants.append((tool, commands[tool], lambda: None))
        run_once(target, commands["redhand"], warm_env)  # fill the warm cache
        noise: list[float] = []
        for _ in range(runs):
            for name, command, env in variants:
                results.setdefault(name, []).append(run_once(target, command, env()))
            noise.append(idle_gap(target, 0.05))
        print(f"\n{threads} worker threads (pid {target.pid}), {runs} runs each, medians:")
        print(f"  {'tool':<16} {'freeze ms':>10} {'wall ms':>10}")
        for name, values in results.items():
            freeze = median([v[0] for v in values])
            wall = median([v[1] for v in values])
            print(f"  {name:<16} {freeze:>10.2f} {wall:>10.1f}")
        print(f"  {'(no tool)':<16} {median(noise):>10.2f}")
        base_freeze = median([v[0] for v in results.get("redhand (warm)", [])])
        base_wall = median([v[1] for v in results.get("redhand (warm)", [])])
        for name, values in results.items():
            if name.startswith("redhand"):
                continue
            freeze = median([v[0] for v in values])
            wall = median([v[1] for v in values])
            if name == "C floor":
                print(f"  C floor: redhand's freeze is {base_freeze / freeze:.2f}x the floor's")
                continue
            print(
                f"  {name}: freeze {freeze / base_freeze:.0f}x redhand's, "
                f"wall {wall / base_wall:.2f}x redhand's (warm)"
            )
    finally:
        target.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="20,1000", help="comma-separated worker counts")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tools", default="redhand,gdb,eu-stack,floor")
    args = parser.parse_args()
    tools = [tool for tool in args.tools.split(",") if tool]
    for tool in tools:
        if tool not in ("redhand", "floor") and shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install gdb elfutils)")
    with tempfile.TemporaryDirectory(prefix="redhand-bench-") as directory:
        workdir = Path(directory)
        binary = compile_target(workdir)
        floor = compile_floor(workdir)
        for threads in (int(count) for count in args.threads.split(",")):
            bench(threads, args.runs, tools, binary, floor, workdir)


if __name__ == "__main__":
    main()
