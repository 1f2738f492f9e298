"""Benchmark ``redhand watch`` against strace, gdb and bpftrace on the same target, in one run.

The target is a C program (compiled here with gcc into a temporary folder) that
times a loop of system calls itself (clock_gettime(CLOCK_MONOTONIC) around the
loop, ns per iteration), and times each of a few failing ``close(-1)`` spread
across the loop (clock_gettime just before and just after the call: how long
the program was kept from running on, as the program itself saw it).  Every
tool watches ``close fails EBADF`` (or its own form of it).  Several runs,
interleaved (one of each tool, then again); medians, and the fastest run.

1. unwatched system calls: N ``syscall(SYS_getppid)``, with 5 failing
   ``close(-1)`` in the loop.  redhand lets the failing closes only be counted
   (``--skip 1000``: in the kernel with eBPF, in the tracer with seccomp and
   ptrace), so no hit is acted on; bpftrace prints a line for each, gdb
   stops at each and continues.  The tools that stop the program at every
   system call (PTRACE_SYSCALL: strace without --seccomp-bpf, gdb's catch
   syscall, redhand --backend ptrace) run N-slow iterations (default
   100,000); their ratio is to the bare program at the same N.
2. watched calls that do not match: N iterations of ``dup(fd); close(copy)``
   (a descriptor of /dev/null opened once), no failing close; the whole loop
   is timed (a dup and a close per iteration), and "us/call above bare" is
   the difference from the bare program per close.  The ptrace-based tools
   (redhand's seccomp filter, strace --seccomp-bpf: both stop at close only)
   run N-slow iterations.
3. the hit: the getppid loop with its 5 failing closes, each acted on
   (``--count 5 --json``): ``stopped`` is redhand's own figure from its JSON
   (eBPF: from the call's return, as the kernel timed it, to the whole process
   stopped; seccomp: from the ptrace stop of the thread that hit); ``paused``
   how long redhand held the process for the actions; ``seen`` the pause as
   the program saw it (around the failing close), the same figure for every
   tool.  The bpftrace recipe is ``signal("SIGSTOP")`` and
   ``system("gcore ...; kill -CONT ...")`` (bpftrace --unsafe).

For -p (attach) runs the program prints "ready" and waits for a line on stdin;
the bench sends it once the tool is attached (redhand's "watching" line on
stderr, bpftrace's "Attaching" line).

Usage: python bench/watch.py [--runs 5] [--n 1000000] [--n-slow 100000] [--quick]
                             [--rows 1,2,3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stack import redhand_command

SOURCE = r"""
/* watch_target MODE N FAILS WAIT OUT
 *
 * MODE getppid: N x syscall(SYS_getppid); MODE close: N x close(dup(fd)).
 * FAILS failing close(-1) spread across the loop, each timed on its own.
 * WAIT 1: print "ready" and wait for a line on stdin before the loop.
 * OUT gets "pid P" at once, then "ns_per_iter X" and one "fail_ns X" per
 * failing close at the end.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_FAILS 64

static long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

__attribute__((noinline)) static int failing_close(void)
{
	return close(-1);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: watch_target getppid|close N FAILS WAIT OUT\n");
		return 2;
	}
	int closes = strcmp(argv[1], "close") == 0;
	long n = atol(argv[2]);
	int fails = atoi(argv[3]);
	if (fails > MAX_FAILS)
		fails = MAX_FAILS;
	FILE *out = fopen(argv[5], "w");
	if (out == NULL) {
		perror(argv[5]);
		return 3;
	}
	fprintf(out, "pid %ld\n", (long)getpid());
	fflush(out);
	int fd = open("/dev/null", O_RDONLY);
	if (fd < 0) {
		perror("/dev/null");
		return 3;
	}
	if (atoi(argv[4])) {
		char line[16];
		printf("ready\n");
		fflush(stdout);
		if (fgets(line, sizeof line, stdin) == NULL)
			return 4;
	}
	long long pause[MAX_FAILS];
	int done = 0;
	long every = n / (fails + 1), next = fails ? every : n;
	long long started = now_ns();
	for (long i = 0; i < n; i++) {
		if (i == next && done < fails) {
			long long before = now_ns();
			int result = failing_close();
			pause[done++] = now_ns() - before;
			if (result != -1)
				return 5;
			next += every;
		}
		if (closes) {
			int copy = dup(fd);
			if (copy < 0 || close(copy) != 0) {
				perror("dup/close");
				return 6;
			}
		} else {
			syscall(SYS_getppid);
		}
	}
	long long elapsed = now_ns() - started;
	fprintf(out, "ns_per_iter %.3f\n", (double)elapsed / n);
	for (int k = 0; k < done; k++)
		fprintf(out, "fail_ns %lld\n", pause[k]);
	fclose(out);
	return 0;
}
"""

EVENT = "close fails EBADF"
FAILS = 5
SKIP = 1000  # more than FAILS: the failing closes only count
READY_TIMEOUT = 60.0
RUN_TIMEOUT = 600.0
END_TIMEOUT = 30.0
GDB_SCRIPT = """set pagination off
set confirm off
catch syscall close
condition 1 $rax == -9
commands 1
silent
continue
end
run
"""
BPFTRACE_PRINT = (
    "tracepoint:syscalls:sys_exit_close /pid == {pid} && args->ret == -9/ "
    '{{ printf("hit %d\\n", tid); }}'
)
BPFTRACE_GCORE = (
    "tracepoint:syscalls:sys_exit_close /pid == {pid} && args->ret == -9/ "
    '{{ signal("SIGSTOP"); '
    'system("gcore -o core %d >/dev/null 2>&1; kill -CONT %d", pid, pid); }}'
)  # bpftrace 0.17 takes strings of 64 bytes at most: the core goes to its working folder


@dataclass
class Variant:
    """One tool (or the bare program) on one workload."""

    name: str
    command: Callable[[list[str], str, Path], list[str]]
    """(the program's argv, for a launch; the pid, for an attach; the run's folder)"""
    needs: tuple[str, ...] = ()
    attach: bool = False
    slow: bool = False
    ready: tuple[str, str] | None = None  # (stream, prefix) that says the tool is attached
    codes: tuple[int, ...] = (0,)
    interrupt: bool = False  # SIGINT once the program ended (bpftrace)
    backend: str | None = None  # what redhand's header must name


@dataclass
class Figures:
    per_iter: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    fail: list[float] = field(default_factory=list)  # ns, as the program saw them
    stopped: list[float] = field(default_factory=list)  # ns, redhand's own
    paused: list[float] = field(default_factory=list)  # ns, redhand's own
    outside: list[float] = field(default_factory=list)  # ns: seen - (stopped + paused)
    errors: list[str] = field(default_factory=list)
    headers: set[str] = field(default_factory=set)


class Lines:
    """A pipe read line by line in a thread: nothing blocks on a full pipe."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()
        self.closed = False

    def _read(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_for(self, prefix: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return None
                self._changed.wait(left)

    def finish(self, timeout: float = 5.0) -> str:
        self._thread.join(timeout)
        with self._changed:
            return "\n".join(self.lines)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def minimum(values: list[float]) -> float:
    return min(values) if values else float("nan")


# -- the tools ------------------------------------------------------------------------


def redhand(*options: str) -> Callable[[list[str], str, Path], list[str]]:
    def command(program: list[str], pid: str, folder: Path) -> list[str]:
        words = [*redhand_command(), "watch", EVENT, *options]
        words = [word.replace("{dir}", str(folder)) for word in words]
        return [*words, "-p", pid] if not program else [*words, "--", *program]

    return command


def bare(program: list[str], pid: str, folder: Path) -> list[str]:
    return program


def strace(*options: str) -> Callable[[list[str], str, Path], list[str]]:
    def command(program: list[str], pid: str, folder: Path) -> list[str]:
        return ["strace", "-f", *options, "-e", "trace=close", "-o", "/dev/null", *program]

    return command


def gdb(program: list[str], pid: str, folder: Path) -> list[str]:
    return ["gdb", "-batch", "-nx", "-x", str(folder.parent / "catch.gdb"), "--args", *program]


def bpftrace(template: str, *options: str) -> Callable[[list[str], str, Path], list[str]]:
    def command(program: list[str], pid: str, folder: Path) -> list[str]:
        script = template.format(pid=pid)
        return ["bpftrace", *options, "-e", script]

    return command


REDHAND_READY = ("stderr", "watching")
BPFTRACE_READY = ("stdout", "Attaching")
EBPF = "eBPF"


def row_variants(row: int) -> list[Variant]:
    """The variants of a row, in the order they run (interleaved by run)."""
    skip = ("--skip", str(SKIP))
    if row == 1:
        return [
            Variant("bare", bare),
            Variant("bare (N-slow)", bare, slow=True),
            Variant("redhand seccomp (-- CMD)", redhand(*skip), backend="seccomp"),
            Variant(
                "redhand eBPF (-p)",
                redhand(*skip),
                attach=True,
                ready=REDHAND_READY,
                codes=(8,),  # the process exited before a hit acted on: as expected
                backend=EBPF,
            ),
            Variant("strace (PTRACE_SYSCALL)", strace(), needs=("strace",), slow=True),
            Variant("strace --seccomp-bpf", strace("--seccomp-bpf"), needs=("strace",)),
            Variant("gdb catch syscall", gdb, needs=("gdb",), slow=True),
            Variant(
                "redhand ptrace (-p)",
                redhand(*skip, "--backend", "ptrace"),
                attach=True,
                slow=True,
                ready=REDHAND_READY,
                codes=(8,),
                backend="ptrace at every system call",
            ),
            Variant(
                "bpftrace",
                bpftrace(BPFTRACE_PRINT),
                needs=("bpftrace",),
                attach=True,
                ready=BPFTRACE_READY,
                interrupt=True,
            ),
        ]
    if row == 2:
        return [
            Variant("bare", bare),
            Variant("bare (N-slow)", bare, slow=True),
            Variant(
                "redhand eBPF (-p)",
                redhand(),
                attach=True,
                ready=REDHAND_READY,
                codes=(8,),
                backend=EBPF,
            ),
            Variant(
                "bpftrace",
                bpftrace(BPFTRACE_PRINT),
                needs=("bpftrace",),
                attach=True,
                ready=BPFTRACE_READY,
                interrupt=True,
            ),
            Variant("redhand seccomp (-- CMD)", redhand(), slow=True, backend="seccomp"),
            Variant(
                "strace --seccomp-bpf -Z",
                strace("--seccomp-bpf", "-Z"),
                needs=("strace",),
                slow=True,
            ),
        ]
    hits = ("--count", str(FAILS), "--json")
    gcore = ("--then", "gcore {dir}/redhand-core.{n}")
    return [
        Variant("bare", bare),
        Variant(
            "redhand eBPF, stack",
            redhand(*hits),
            attach=True,
            ready=REDHAND_READY,
            backend=EBPF,
        ),
        Variant(
            "redhand eBPF, gcore",
            redhand(*hits, *gcore),
            attach=True,
            ready=REDHAND_READY,
            backend=EBPF,
        ),
        Variant("redhand seccomp, stack", redhand(*hits), backend="seccomp"),
        Variant("redhand seccomp, gcore", redhand(*hits, *gcore), backend="seccomp"),
        Variant(
            "bpftrace + gcore",
            bpftrace(BPFTRACE_GCORE, "--unsafe"),
            needs=("bpftrace", "gcore"),
            attach=True,
            ready=BPFTRACE_READY,
            interrupt=True,
        ),
    ]


ROWS = {
    1: "unwatched system calls: the getppid loop with 5 failing close(-1), not acted on",
    2: "watched calls that do not match: the dup+close loop, every close succeeds",
    3: "the hit: 5 failing close(-1) in the getppid loop, each acted on",
}


def workload(row: int) -> tuple[str, int]:
    return ("close", 0) if row == 2 else ("getppid", FAILS)


# -- one run ----------------------------------------------------------------------------


def kill_group(process: subprocess.Popen[bytes] | None) -> None:
    """Kill a process started in a session of its own, and its group, by id."""
    if process is None:
        return
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def kill_program(out: Path, binary: Path) -> None:
    """The program a tool launched, by the pid it wrote, if it still runs."""
    try:
        first = out.read_text().split("\n", 1)[0].split()
        pid = int(first[1]) if first and first[0] == "pid" else 0
    except (OSError, ValueError, IndexError):
        return
    if pid <= 0:
        return
    try:
        if os.readlink(f"/proc/{pid}/exe") != str(binary):
            return
    except OSError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def read_results(out: Path) -> tuple[float, list[float]]:
    per_iter = float("nan")
    fails: list[float] = []
    for line in out.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "ns_per_iter":
            per_iter = float(words[1])
        elif len(words) == 2 and words[0] == "fail_ns":
            fails.append(float(words[1]))
    if per_iter != per_iter:
        raise RuntimeError("the program wrote no result")
    return per_iter, fails


def run_variant(
    variant: Variant, binary: Path, row: int, n: int, folder: Path, figures: Figures
) -> None:
    """One run of a variant: its figures appended, or an error noted."""
    folder.mkdir()
    out = folder / "result"
    mode, fails = workload(row)
    program = [str(binary), mode, str(n), str(fails), "1" if variant.attach else "0", str(out)]
    target: subprocess.Popen[bytes] | None = None
    tool: subprocess.Popen[bytes] | None = None
    streams: dict[str, Lines] = {}
    try:
        if variant.attach:
            target = subprocess.Popen(
                program, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
            )
            said = Lines(target.stdout)
            if said.wait_for("ready", READY_TIMEOUT) is None:
                raise RuntimeError("the program did not start")
            command = variant.command([], str(target.pid), folder)
        else:
            command = variant.command(program, "", folder)
        if command != program:
            tool = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=folder,
                start_new_session=True,
            )
            streams = {"stdout": Lines(tool.stdout), "stderr": Lines(tool.stderr)}
        if variant.ready is not None:
            stream, prefix = variant.ready
            line = streams[stream].wait_for(prefix, READY_TIMEOUT)
            if line is None:
                raise RuntimeError(f"no {prefix!r} line on {stream}")
            if variant.backend is not None:
                figures.headers.add(line)
        if target is not None:
            assert target.stdin is not None
            target.stdin.write(b"go\n")
            target.stdin.close()
            target.wait(timeout=RUN_TIMEOUT)
            if target.returncode != 0:
                raise RuntimeError(f"the program exited with {target.returncode}")
        if tool is not None:
            if variant.interrupt:
                time.sleep(0.1)  # let bpftrace print what it still has
                tool.send_signal(signal.SIGINT)
            tool.wait(timeout=RUN_TIMEOUT if target is None else END_TIMEOUT)
            if tool.returncode not in variant.codes:
                raise RuntimeError(f"exit code {tool.returncode}")
        elif target is None:
            completed = subprocess.run(program, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
            if completed.returncode != 0:
                raise RuntimeError(f"the program exited with {completed.returncode}")
        per_iter, fail_ns = read_results(out)
        stdout = streams["stdout"].finish() if streams else ""
        if variant.backend is not None and not variant.attach:
            header = next(
                (ln for ln in streams["stderr"].finish().splitlines() if ln.startswith("watch")),
                "",
            )
            figures.headers.add(header)
        hits = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        if "--count" in command and len(hits) != fails:
            raise RuntimeError(f"{len(hits)} JSON hits, not {fails}")
        figures.per_iter.append(per_iter)
        figures.n.append(n)
        figures.fail.extend(fail_ns)
        for hit, seen in zip(hits, fail_ns, strict=False):
            stopped, paused = hit["timing"]["stopped_ns"], hit["timing"]["paused_ns"]
            figures.stopped.append(stopped)
            figures.paused.append(paused)
            figures.outside.append(seen - stopped - paused)
            failed = [a for a in hit.get("actions", []) if not a.get("ok", True)]
            if failed:
                figures.errors.append(f"action failed: {failed[0].get('summary')}")
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError, KeyError) as error:
        stderr = streams["stderr"].finish(1.0) if streams else ""
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        figures.errors.append(f"{error}" + (f": {tail}" if tail else ""))
    finally:
        for process in (tool, target):
            kill_group(process)
        kill_program(out, binary)
        shutil.rmtree(folder, ignore_errors=True)


# -- a row ----------------------------------------------------------------------------------


def missing(variant: Variant) -> str | None:
    absent = [name for name in variant.needs if shutil.which(name) is None]
    return ", ".join(absent) if absent else None


def show_commands(variants: list[Variant], binary: Path, row: int, workdir: Path) -> None:
    mode, fails = workload(row)
    print("  commands (PROG is the program's argv, PID its pid, DIR the run's folder):")
    for variant in variants:
        if missing(variant):
            continue
        wait = "1" if variant.attach else "0"
        program = ["PROG", mode, "N-slow" if variant.slow else "N", str(fails), wait, "OUT"]
        command = variant.command([] if variant.attach else program, "PID", Path("DIR"))
        text = shlex.join(command).replace(str(workdir), "WORKDIR")
        if variant.attach:
            text = f"{shlex.join(program)} &  {text}"
        print(f"    {variant.name:<26} {text}")


def bench_row(
    row: int, runs: int, n: int, n_slow: int, binary: Path, workdir: Path
) -> dict[str, Figures]:
    variants = row_variants(row)
    print(f"\n{row}. {ROWS[row]}")
    show_commands(variants, binary, row, workdir)
    figures = {variant.name: Figures() for variant in variants}
    live = [variant for variant in variants if missing(variant) is None]
    started = time.monotonic()
    for run in range(runs):
        for index, variant in enumerate(live):
            folder = workdir / f"row{row}-run{run}-{index}"
            count = n_slow if variant.slow else n
            run_variant(variant, binary, row, count, folder, figures[variant.name])
    print(f"  ({runs} runs, {time.monotonic() - started:.0f} s)")
    report = report_hits if row == 3 else report_loop
    report(row, variants, figures, n, n_slow)
    for variant in variants:
        values = figures[variant.name]
        for header in sorted(values.headers):
            if variant.backend is not None and variant.backend not in header:
                print(f"  ! {variant.name}: not the backend expected: {header}")
        for error in dict.fromkeys(values.errors):
            count = values.errors.count(error)
            print(f"  ! {variant.name}: {count}x {error}")
    return figures


def report_loop(
    row: int, variants: list[Variant], figures: dict[str, Figures], n: int, n_slow: int
) -> None:
    base = {False: figures["bare"], True: figures["bare (N-slow)"]}
    extra = "failing close us" if row == 1 else "us/call above bare"
    print(
        f"  {'tool':<26} {'N':>10} {'ns/iter':>10} {'(min)':>10} {'x bare':>8} "
        f"{'(min)':>8}  {extra}"
    )
    for variant in variants:
        absent = missing(variant)
        count = n_slow if variant.slow else n
        if absent:
            print(f"  {variant.name:<26} {count:>10,}  not installed ({absent})")
            continue
        values = figures[variant.name]
        if not values.per_iter:
            print(f"  {variant.name:<26} {count:>10,}  failed (see below)")
            continue
        bare_values = base[variant.slow].per_iter
        value, fastest = median(values.per_iter), minimum(values.per_iter)
        ratio, ratio_min = value / median(bare_values), fastest / minimum(bare_values)
        if row == 1:
            last = f"{median(values.fail) / 1e3:>10.1f}"
        else:
            last = f"{(value - median(bare_values)) / 1e3:>10.3f}"
        print(
            f"  {variant.name:<26} {count:>10,} {value:>10.1f} {fastest:>10.1f} "
            f"{ratio:>7.2f}x {ratio_min:>7.2f}x  {last}"
        )
    if row == 1:
        print(
            "  failing close us: the median of each failing close(-1) as the program timed it "
            "(redhand: counted and let pass; bpftrace: a printf; gdb: a stop and continue)"
        )
    else:
        print(
            "  us/call above bare: (ns/iter - bare's ns/iter at the same N) / 1000; "
            "one close (and one dup) per iteration"
        )


def report_hits(
    row: int, variants: list[Variant], figures: dict[str, Figures], n: int, n_slow: int
) -> None:
    print(
        f"  {'tool':<26} {'hits':>5} {'stopped us':>11} {'(min)':>8} {'paused ms':>10} "
        f"{'(min)':>8} {'seen ms':>9} {'(min)':>8} {'seen-own ms':>12}"
    )
    for variant in variants:
        absent = missing(variant)
        if absent:
            print(f"  {variant.name:<26}  not installed ({absent})")
            continue
        values = figures[variant.name]
        if not values.fail:
            print(f"  {variant.name:<26}  failed (see below)")
            continue
        if values.stopped:
            own = (
                f"{median(values.stopped) / 1e3:>11.0f} {minimum(values.stopped) / 1e3:>8.0f} "
                f"{median(values.paused) / 1e6:>10.2f} {minimum(values.paused) / 1e6:>8.2f}"
            )
            outside = f"{median(values.outside) / 1e6:>12.2f}"
        else:
            own = f"{'':>11} {'':>8} {'':>10} {'':>8}"
            outside = ""
        print(
            f"  {variant.name:<26} {len(values.fail):>5} {own} "
            f"{median(values.fail) / 1e6:>9.3f} {minimum(values.fail) / 1e6:>8.3f} {outside}"
        )
    print(
        "  stopped, paused: redhand's own (--json timing); seen: the failing close as the "
        "program timed it;\n  seen-own: seen - (stopped + paused), the part of the pause "
        "redhand's figures leave out"
    )
    bare_seen = median(figures["bare"].fail)
    print(f"  a bare failing close(-1), as the program timed it: {bare_seen / 1e3:.1f} us")
    reference = figures.get("redhand eBPF, gcore")
    for name in ("redhand seccomp, gcore", "bpftrace + gcore"):
        values = figures.get(name)
        if values is None or not values.fail or reference is None or not reference.fail:
            continue
        ratio = median(values.fail) / median(reference.fail)
        print(f"  {name}: pause seen {ratio:.2f}x redhand eBPF gcore's")


# -- main ------------------------------------------------------------------------------------


def compile_program(workdir: Path) -> Path:
    source = workdir / "watch_target.c"
    source.write_text(SOURCE)
    binary = workdir / "watch_target"
    subprocess.run(["gcc", "-O2", "-g", "-o", str(binary), str(source)], check=True, timeout=120)
    (workdir / "catch.gdb").write_text(GDB_SCRIPT)
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="runs of each tool (default 5; --quick: 2)")
    parser.add_argument("--n", type=int, help="iterations (default 1,000,000; --quick: 200,000)")
    parser.add_argument(
        "--n-slow",
        type=int,
        help="iterations for the tools that stop at every call (default 100,000; --quick: 20,000)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller N")
    parser.add_argument("--rows", default="1,2,3", help="which rows (1, 2, 3; comma-separated)")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    n = args.n or (200_000 if args.quick else 1_000_000)
    n_slow = args.n_slow or (20_000 if args.quick else 100_000)
    rows = [int(text) for text in args.rows.split(",") if text]
    if set(rows) - set(ROWS):
        raise SystemExit(f"unknown rows: {args.rows} (1, 2, 3)")
    if os.geteuid() != 0:
        print("note: not root: eBPF and bpftrace need root (CAP_BPF, CAP_PERFMON)")
    with tempfile.TemporaryDirectory(prefix="redhand-bench-") as directory:
        workdir = Path(directory)
        binary = compile_program(workdir)
        load = os.getloadavg()[0]
        print(
            f"watching '{EVENT}'; N = {n:,}, N-slow = {n_slow:,}, {runs} runs, "
            f"{os.cpu_count()} cores, load average {load:.1f}; medians, (min) the fastest run"
        )
        print("gdb script (catch.gdb):\n    " + GDB_SCRIPT.strip().replace("\n", "\n    "))
        for row in rows:
            bench_row(row, runs, n, n_slow, binary, workdir)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
