"""Benchmark ``redhand stack --source`` against ``eu-stack -i -s`` and gdb.

The same 20-worker heartbeat target as bench/stack.py; each tool prints
every thread's frames with source lines and inlined calls.  "cold" runs
start with an empty redhand cache directory, "warm" ones reuse it.  Wall
times, medians and ratios.

Usage: python bench/source.py [--threads 20] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from stack import Target, compile_target, redhand_command, run_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for tool in ("gdb", "eu-stack"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install gdb elfutils)")
    with tempfile.TemporaryDirectory(prefix="redhand-bench-") as directory:
        work = Path(directory)
        target = Target(compile_target(work), args.threads, work)
        try:
            pid = str(target.pid)
            base_env = {k: v for k, v in os.environ.items() if k != "REDHAND_CACHE"}
            warm_home = work / "warm-cache"
            warm = dict(base_env, XDG_CACHE_HOME=str(warm_home))
            commands = {
                "redhand --source (cold)": [*redhand_command(), "stack", "--source", pid],
                "redhand --source (warm)": [*redhand_command(), "stack", "--source", pid],
                "eu-stack -i -s": ["eu-stack", "-i", "-s", "-p", pid],
                "gdb bt": ["gdb", "-batch", "-nx", "-p", pid, "-ex", "thread apply all bt"],
            }
            # The warm runs find every answer in the cache this run leaves.
            run_once(target, commands["redhand --source (warm)"], warm)
            if not any((warm_home / "redhand" / "source").glob("*")):
                raise SystemExit("redhand wrote no source cache entries: is the cache off?")
            walls: dict[str, list[float]] = {name: [] for name in commands}
            for run in range(args.runs):
                for name, command in commands.items():
                    env = warm
                    cold_home = work / f"cold-{run}"
                    if "cold" in name:  # a new, empty cache directory each time
                        shutil.rmtree(cold_home, ignore_errors=True)
                        env = dict(base_env, XDG_CACHE_HOME=str(cold_home))
                    elif not name.startswith("redhand"):
                        env = None
                    walls[name].append(run_once(target, command, env)[1])
                    if "cold" in name:
                        shutil.rmtree(cold_home, ignore_errors=True)
            print(f"\n{args.threads} worker threads, {args.runs} runs each, median wall ms:")
            base = statistics.median(walls["redhand --source (warm)"])
            for name, values in walls.items():
                median = statistics.median(values)
                print(f"  {name:<26} {median:>8.1f}  ({median / base:.2f}x redhand warm)")
        finally:
            target.close()


if __name__ == "__main__":
    main()
