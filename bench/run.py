"""Benchmark ``redhand run`` (the crash guard) against the bare program, gdb and the kernel's core.

The targets are one C program (compiled here with gcc into a temporary folder)
that times itself and writes its figures to a file of its own (OUT, a line
at a time with write(2): nothing is lost when it dies).  Several runs,
interleaved (one of each tool, then again); medians, and the fastest run.

1a. nothing happens, system calls: a loop of 1,000,000 ``syscall(SYS_getppid)``
    timed by the program (clock_gettime(CLOCK_MONOTONIC) around the loop, ns
    per iteration).  redhand seizes the program and stops at signals only: the
    goal is at most 1.02x the bare program, and no more than gdb's ``run``.
1b. nothing happens but signals: a SIGALRM timer at 1 kHz (setitimer
    ITIMER_REAL, 1 ms) whose handler counts, while the main loop does a fixed
    amount of arithmetic (about 2.5 s bare; 1 s with --quick), timed by the
    program.  Under redhand and gdb (``handle SIGALRM nostop noprint pass``)
    every SIGALRM is a ptrace signal-delivery stop: "us/signal" is the time
    above the bare program's per signal received.
2.  the crash: the program mallocs N MiB (--heap-mb, default 1,024), memsets
    it and writes a word of its own in each page (no zero pages), writes
    "ready", then CLOCK_REALTIME in ns, then dereferences NULL.  The bench reads
    each tool's stdout through a pipe and timestamps every line as it comes:
    * redhand run: fault to the report on stdout (the line with "SIGSEGV"),
      and to redhand's exit; once with RLIMIT_CORE 0, once unlimited (the
      kernel's core is written too, after the report: "core" is the core
      file's mtime, its last write);
    * the kernel's core of the bare program (RLIMIT_CORE unlimited, in the
      run's folder: core_pattern is read, never changed), then ``redhand core``
      on it: fault to the core complete (the process reaped), to redhand core's
      report and to its exit;
    * gdb ``-ex run -ex bt``: fault to the last frame of the backtrace, and
      to gdb's exit (gdb kills the program: no core);
    * systemd-coredump with ``coredumpctl info``, only when core_pattern pipes
      to it: fault to the stack trace ``coredumpctl info PID`` prints.
    The goal: redhand's report out before the kernel's core is written.
    Each core is deleted as soon as it is measured.

Usage: python bench/run.py [--runs 5] [--quick] [--rows 1a,1b,2] [--heap-mb 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from stack import redhand_command
from watch import kill_group, kill_program, median, minimum

SOURCE = r"""
/* run_target MODE N OUT
 *
 * MODE getppid: N x syscall(SYS_getppid), "ns_per_iter X".
 * MODE alarm: a SIGALRM every 1 ms counted by a handler while N rounds of
 *   arithmetic run; "work_ns X" and "signals K".
 * MODE crash: N MiB malloc'd and touched, "ready", "fault_ns T" (CLOCK_REALTIME),
 *   then a read through a NULL pointer.
 * OUT gets "pid P" at once, then the figures, each line with one write(2).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks;
static volatile unsigned long sink;
static volatile int *volatile nowhere; /* NULL, unknown to the compiler: a real load */

static long long now_ns(clockid_t clock)
{
	struct timespec t;
	clock_gettime(clock, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void on_alarm(int signo)
{
	(void)signo;
	ticks++;
}

__attribute__((noinline)) static int fault(void)
{
	return *nowhere;
}

static int crash(long mib, int out)
{
	size_t size = (size_t)mib << 20;
	unsigned char *heap = malloc(size);
	if (heap == NULL) {
		perror("malloc");
		return 3;
	}
	memset(heap, 0x5a, size);
	for (size_t offset = 0; offset + 8 <= size; offset += 4096) {
		unsigned long word = (offset >> 12) * 0x9e3779b97f4a7c15UL;
		memcpy(heap + offset, &word, sizeof word);
	}
	dprintf(out, "ready\n");
	dprintf(out, "fault_ns %lld\n", now_ns(CLOCK_REALTIME));
	return fault() + heap[size - 1];
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: run_target getppid|alarm|crash N OUT\n");
		return 2;
	}
	long n = atol(argv[2]);
	int out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	if (out < 0) {
		perror(argv[3]);
		return 3;
	}
	dprintf(out, "pid %ld\n", (long)getpid());
	if (strcmp(argv[1], "crash") == 0)
		return crash(n, out);
	if (strcmp(argv[1], "getppid") == 0) {
		long long started = now_ns(CLOCK_MONOTONIC);
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
		long long elapsed = now_ns(CLOCK_MONOTONIC) - started;
		dprintf(out, "ns_per_iter %.3f\n", (double)elapsed / n);
		return 0;
	}
	if (strcmp(argv[1], "alarm") != 0)
		return 2;
	struct sigaction action;
	memset(&action, 0, sizeof action);
	action.sa_handler = on_alarm;
	action.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &action, NULL);
	struct itimerval every = {{0, 1000}, {0, 1000}}, off = {{0, 0}, {0, 0}};
	unsigned long x = 88172645463325252UL;
	long long started = now_ns(CLOCK_MONOTONIC);
	setitimer(ITIMER_REAL, &every, NULL);
	for (long i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
	}
	setitimer(ITIMER_REAL, &off, NULL);
	long long elapsed = now_ns(CLOCK_MONOTONIC) - started;
	sink = x;
	dprintf(out, "work_ns %lld\nsignals %ld\n", elapsed, (long)ticks);
	return 0;
}
"""

SYSCALLS = 1_000_000
CALIBRATION = 200_000_000  # rounds of arithmetic timed once to size the signal row
RUN_TIMEOUT = 300.0
READ_TIMEOUT = 5.0
GDB_ALARM = "handle SIGALRM nostop noprint pass"
HELD = re.compile(r"the process was held ([0-9.]+) ms")
ADDRESS = re.compile(r"0x[0-9a-f]+")
THREAD = re.compile(r"thread \d+")


class Lines:
    """A pipe read line by line in a thread; each line with the moment it came
    (time.time_ns(), the clock of the program's CLOCK_REALTIME)."""

    def __init__(self, stream: object) -> None:
        self.lines: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            came = time.time_ns()
            with self._lock:
                self.lines.append((came, raw.decode(errors="replace").rstrip("\n")))

    def finish(self, timeout: float = READ_TIMEOUT) -> list[tuple[int, str]]:
        self._thread.join(timeout)
        with self._lock:
            return list(self.lines)


@dataclass
class Ended:
    """A command that ran to its end."""

    code: int
    ended_ns: int  # time.time_ns() once reaped
    stdout: list[tuple[int, str]]
    stderr: list[tuple[int, str]]

    def text(self, stream: str = "stdout") -> str:
        return "\n".join(line for _, line in getattr(self, stream))

    def first(self, predicate: Callable[[str], bool]) -> int | None:
        return next((came for came, line in self.stdout if predicate(line)), None)

    def last(self, predicate: Callable[[str], bool]) -> int | None:
        return next((came for came, line in reversed(self.stdout) if predicate(line)), None)

    def tail(self) -> str:
        lines = [line for _, line in self.stderr if line.strip()]
        return " | ".join(lines[-3:])


@contextlib.contextmanager
def core_limit(unlimited: bool) -> Iterator[None]:
    """RLIMIT_CORE for the processes started inside (they inherit it)."""
    old = resource.getrlimit(resource.RLIMIT_CORE)
    wanted = (resource.RLIM_INFINITY, resource.RLIM_INFINITY) if unlimited else (0, old[1])
    try:
        resource.setrlimit(resource.RLIMIT_CORE, wanted)
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (old[1], old[1]) if unlimited else (0, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, old)


def launch(command: list[str], folder: Path, unlimited: bool = False) -> Ended:
    """Run a command in its own session to its end (bounded), its output timestamped."""
    process: subprocess.Popen[bytes] | None = None
    try:
        with core_limit(unlimited):
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=folder,
                start_new_session=True,
            )
        stdout, stderr = Lines(process.stdout), Lines(process.stderr)
        code = process.wait(timeout=RUN_TIMEOUT)
        ended = time.time_ns()
        return Ended(code, ended, stdout.finish(), stderr.finish())
    finally:
        kill_group(process)


def read_results(out: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in out.read_text().splitlines():
            words = line.split()
            if len(words) == 2:
                with contextlib.suppress(ValueError):
                    values[words[0]] = float(words[1])
    return values


def core_files(folder: Path) -> list[Path]:
    """What the kernel wrote in a run's folder (everything but the program's OUT)."""
    return [path for path in folder.iterdir() if path.name != "result" and path.is_file()]


def core_pattern() -> str:
    try:
        return Path("/proc/sys/kernel/core_pattern").read_text().strip()
    except OSError:
        return "?"


def gdb_command(*commands: str) -> Callable[[list[str]], list[str]]:
    def command(program: list[str]) -> list[str]:
        words = ["gdb", "-batch", "-nx"]
        for text in commands:
            words += ["-ex", text]
        return [*words, "--args", *program]

    return command


def redhand_run(program: list[str]) -> list[str]:
    return [*redhand_command(), "run", "--", *program]


def bare(program: list[str]) -> list[str]:
    return program


# -- 1: nothing happens ---------------------------------------------------------------------


@dataclass
class Loop:
    """One tool (or the bare program) on the loop of row 1a or 1b."""

    name: str
    command: Callable[[list[str]], list[str]]
    needs: tuple[str, ...] = ()
    values: list[float] = field(default_factory=list)  # ns/iter (1a), ns of the work (1b)
    signals: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


LOOP_ROWS = {
    "1a": "nothing happens, system calls: 1,000,000 syscall(SYS_getppid), timed by the program",
    "1b": "nothing happens but signals: a SIGALRM every 1 ms, counted, during fixed arithmetic",
}


def loop_variants() -> list[Loop]:
    return [
        Loop("bare", bare),
        Loop("redhand run", redhand_run),
        Loop("gdb run", gdb_command(GDB_ALARM, "run"), needs=("gdb",)),
    ]


def missing(needs: tuple[str, ...]) -> str | None:
    absent = [name for name in needs if shutil.which(name) is None]
    return ", ".join(absent) if absent else None


def run_loop(variant: Loop, program: list[str], binary: Path, folder: Path) -> None:
    folder.mkdir()
    out = folder / "result"
    argv = [*program, str(out)]
    ended: Ended | None = None
    try:
        ended = launch(variant.command(argv), folder)
        if ended.code != 0:
            raise RuntimeError(f"exit code {ended.code}")
        values = read_results(out)
        if "ns_per_iter" in values:
            variant.values.append(values["ns_per_iter"])
        elif "work_ns" in values:
            variant.values.append(values["work_ns"])
            variant.signals.append(values.get("signals", 0.0))
        else:
            raise RuntimeError("the program wrote no result")
        if variant.command is redhand_run:
            odd = [
                line
                for _, line in ended.stderr
                if line.strip()
                and not line.startswith("guarding ")
                and not line.endswith("exited with status 0")
            ]
            if ended.stdout or odd:
                lines = [line for _, line in ended.stdout] + odd
                variant.errors.append("unexpected output: " + " | ".join(lines[:3]))
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        tail = ended.tail() if ended is not None else ""
        variant.errors.append(f"{error}" + (f": {tail}" if tail else ""))
    finally:
        kill_program(out, binary)
        shutil.rmtree(folder, ignore_errors=True)


def calibrate(binary: Path, workdir: Path, seconds: float) -> int:
    """Rounds of arithmetic that take the bare program about ``seconds``."""
    folder = workdir / "calibration"
    folder.mkdir()
    out = folder / "result"
    try:
        ended = launch([str(binary), "alarm", str(CALIBRATION), str(out)], folder)
        work = read_results(out).get("work_ns")
        if ended.code != 0 or not work:
            raise SystemExit(f"the signal program failed: {ended.tail()}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return max(1_000_000, int(CALIBRATION * seconds * 1e9 / work))


def bench_loop(row: str, runs: int, rounds: int, binary: Path, workdir: Path) -> None:
    variants = loop_variants()
    count = SYSCALLS if row == "1a" else rounds
    mode = "getppid" if row == "1a" else "alarm"
    print(f"\n{row}. {LOOP_ROWS[row]}")
    if row == "1b":
        print(f"  {count:,} rounds of arithmetic (about the calibrated time, bare)")
    print("  commands (PROG is the program's argv):")
    program = [str(binary), mode, str(count)]
    for variant in variants:
        if not missing(variant.needs):
            text = shlex.join(variant.command(["PROG", mode, str(count), "OUT"]))
            print(f"    {variant.name:<14} {text}")
    live = [variant for variant in variants if missing(variant.needs) is None]
    started = time.monotonic()
    for run in range(runs):
        for index, variant in enumerate(live):
            run_loop(variant, program, binary, workdir / f"row{row}-run{run}-{index}")
    print(f"  ({runs} runs, {time.monotonic() - started:.0f} s)")
    report_loop(row, variants)


def report_loop(row: str, variants: list[Loop]) -> None:
    base = variants[0]
    unit, scale = ("ns/iter", 1.0) if row == "1a" else ("work ms", 1e6)
    extra = "" if row == "1a" else f"{'signals':>9} {'us/signal':>10}"
    print(f"  {'tool':<14} {unit:>10} {'(min)':>10} {'x bare':>8} {'(min)':>8}  {extra}".rstrip())
    ratios: dict[str, float] = {}
    for variant in variants:
        absent = missing(variant.needs)
        if absent:
            print(f"  {variant.name:<14} not installed ({absent})")
            continue
        if not variant.values or not base.values:
            print(f"  {variant.name:<14} failed (see below)")
            continue
        value, fastest = median(variant.values), minimum(variant.values)
        ratio = value / median(base.values)
        ratios[variant.name] = ratio
        line = (
            f"  {variant.name:<14} {value / scale:>10.1f} {fastest / scale:>10.1f} "
            f"{ratio:>7.3f}x {fastest / minimum(base.values):>7.3f}x"
        )
        if row == "1b":
            signals = median(variant.signals)
            above = (value - median(base.values)) / signals / 1e3 if signals else float("nan")
            line += f"  {signals:>9,.0f} {above:>10.2f}"
        print(line)
    if row == "1b":
        print(
            "  us/signal: (work ns - bare's work ns) / signals received / 1000: what each "
            "SIGALRM costs above its delivery without a tracer"
        )
    guard = ratios.get("redhand run")
    if guard is not None:
        verdicts = [f"{guard:.3f}x bare (goal <= 1.02x): {'met' if guard <= 1.02 else 'NOT met'}"]
        gdb = ratios.get("gdb run")
        if gdb is not None:
            verdict = "met" if guard <= gdb else "NOT met"
            verdicts.append(f"gdb {gdb:.3f}x (goal: redhand <= gdb): {verdict}")
        print("  redhand run: " + "; ".join(verdicts))
    for variant in variants:
        for error in dict.fromkeys(variant.errors):
            print(f"  ! {variant.name}: {variant.errors.count(error)}x {error}")


# -- 2: the crash ---------------------------------------------------------------------------


@dataclass
class Crash:
    """One way of getting a crash report (a table row), its figures in ms from the fault."""

    name: str
    needs: tuple[str, ...] = ()
    report: list[float] = field(default_factory=list)
    core: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)  # redhand's own figure, from its text
    size: list[float] = field(default_factory=list)  # the core's apparent size, bytes
    first: list[bool] = field(default_factory=list)  # the report before the core was complete
    errors: list[str] = field(default_factory=list)
    absent: str | None = None  # why it is not measured
    signatures: set[tuple[str, ...]] = field(default_factory=set)


def signature(text: str) -> tuple[str, ...]:
    """The parts of a crash report a live process and its core must agree on: the signal
    line, the explanation and the frames, addresses and thread ids left out."""
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("SIGSEGV", "null dereference")) or re.match(r"#\d+ ", stripped):
            kept.append(THREAD.sub("thread N", ADDRESS.sub("0x?", stripped)))
    return tuple(kept)


def fault_ns(out: Path) -> int:
    """The program's CLOCK_REALTIME just before the fault (as an int: a float loses ns)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in out.read_text().splitlines():
            if line.startswith("fault_ns "):
                return int(line.split()[1])
    raise RuntimeError("the program did not reach the fault")


def ms(since: int, moment: int | None) -> float:
    return (moment - since) / 1e6 if moment is not None else float("nan")


def crash_redhand(variant: Crash, program: list[str], folder: Path, unlimited: bool) -> None:
    ended = launch(redhand_run(program), folder, unlimited)
    fault = fault_ns(folder / "result")
    text = ended.text()
    report = ended.first(lambda line: "SIGSEGV" in line)
    if report is None:
        raise RuntimeError(f"no report on stdout (exit code {ended.code}): {ended.tail()}")
    variant.report.append(ms(fault, report))
    variant.end.append(ms(fault, ended.ended_ns))
    held = HELD.search(text)
    if held:
        variant.held.append(float(held.group(1)))
    variant.signatures.add(signature(text))
    if ended.code != 128 + 11:
        variant.errors.append(f"exit code {ended.code}, not 139")
    said = ended.text("stderr")
    cores = core_files(folder)
    if unlimited:
        if not cores:
            variant.errors.append("no core from the kernel")
        elif "(core dumped)" not in said:
            variant.errors.append("a core was written but redhand's last line does not say so")
        for core in cores:
            info = core.stat()
            variant.core.append(ms(fault, info.st_mtime_ns))
            variant.size.append(info.st_size)
            variant.first.append(report < info.st_mtime_ns)
            core.unlink()
    elif cores:
        variant.errors.append(f"a core with RLIMIT_CORE 0: {cores[0].name}")
    elif "(core dumped)" in said:
        variant.errors.append("'(core dumped)' said with RLIMIT_CORE 0")
    odd = [
        line
        for line in said.splitlines()
        if line.strip() and not line.startswith(("guarding ", "redhand: "))
    ]
    if odd or "killed by SIGSEGV" not in said:
        variant.errors.append("stderr: " + " | ".join((odd or said.splitlines())[:3]))


def crash_kernel(kernel: Crash, reader: Crash, program: list[str], folder: Path) -> None:
    ended = launch(program, folder, unlimited=True)
    fault = fault_ns(folder / "result")
    if ended.code != -11:
        raise RuntimeError(f"the program ended with {ended.code}, not SIGSEGV")
    cores = core_files(folder)
    if not cores:
        raise RuntimeError(f"no core in the run's folder (core_pattern {core_pattern()!r})")
    core = cores[0]
    info = core.stat()
    kernel.core.append(ms(fault, info.st_mtime_ns))
    kernel.end.append(ms(fault, ended.ended_ns))
    kernel.size.append(info.st_size)
    try:
        read = launch([*redhand_command(), "core", str(core)], folder)
    finally:
        core.unlink()
    report = read.first(lambda line: "SIGSEGV" in line)
    if read.code != 0 or report is None:
        reader.errors.append(f"redhand core: exit code {read.code}: {read.tail()}")
        return
    reader.report.append(ms(fault, report))
    reader.end.append(ms(fault, read.ended_ns))
    reader.signatures.add(signature(read.text()))


def crash_gdb(variant: Crash, program: list[str], folder: Path) -> None:
    ended = launch(gdb_command("run", "bt")(program), folder)
    fault = fault_ns(folder / "result")
    if "SIGSEGV" not in ended.text():
        raise RuntimeError(f"gdb did not stop at SIGSEGV (exit code {ended.code}): {ended.tail()}")
    variant.report.append(ms(fault, ended.last(lambda line: re.match(r"#\d+ ", line) is not None)))
    variant.end.append(ms(fault, ended.ended_ns))
    for core in core_files(folder):
        core.unlink()


def crash_coredumpctl(variant: Crash, program: list[str], folder: Path) -> None:
    """The bare program under systemd-coredump: fault to ``coredumpctl info``'s stack."""
    ended = launch(program, folder, unlimited=True)
    fault = fault_ns(folder / "result")
    pid = int(read_results(folder / "result").get("pid", 0))
    variant.end.append(ms(fault, ended.ended_ns))
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        info = launch(["coredumpctl", "info", "--no-pager", str(pid)], folder)
        if info.code == 0 and "Stack trace" in info.text():
            variant.report.append(ms(fault, info.first(lambda line: "Stack trace" in line)))
            return
        time.sleep(0.05)
    raise RuntimeError("coredumpctl info never showed the stack trace")


def crash_variants() -> dict[str, Crash]:
    variants = {
        "redhand": Crash("redhand run (ulimit -c 0)"),
        "redhand+core": Crash("redhand run (ulimit -c unlimited)"),
        "kernel": Crash("kernel core (bare program)"),
        "reader": Crash("  then redhand core"),
        "gdb": Crash("gdb -ex run -ex bt", needs=("gdb",)),
        "coredumpctl": Crash("systemd-coredump + coredumpctl info", needs=("coredumpctl",)),
    }
    pattern = core_pattern()
    if pattern.startswith("|"):
        for key in ("redhand+core", "kernel", "reader"):
            variants[key].absent = f"core_pattern pipes to a program ({pattern}): no core file here"
    for variant in variants.values():
        absent = missing(variant.needs)
        if absent:
            variant.absent = "not installed"
    coredump = variants["coredumpctl"]
    if coredump.absent is None and "systemd-coredump" not in pattern:
        coredump.absent = f"installed, but core_pattern is {pattern!r} (left alone)"
    return variants


def run_crash(
    key: str, variants: dict[str, Crash], program: list[str], binary: Path, folder: Path
) -> None:
    folder.mkdir()
    out = folder / "result"
    argv = [*program, str(out)]
    variant = variants[key]
    try:
        if key == "redhand":
            crash_redhand(variant, argv, folder, unlimited=False)
        elif key == "redhand+core":
            crash_redhand(variant, argv, folder, unlimited=True)
        elif key == "kernel":
            crash_kernel(variant, variants["reader"], argv, folder)
        elif key == "gdb":
            crash_gdb(variant, argv, folder)
        elif key == "coredumpctl":
            crash_coredumpctl(variant, argv, folder)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as error:
        variant.errors.append(str(error))
    finally:
        kill_program(out, binary)
        shutil.rmtree(folder, ignore_errors=True)  # the core with it, if still there


def bench_crash(runs: int, heap_mb: int, binary: Path, workdir: Path) -> None:
    variants = crash_variants()
    program = [str(binary), "crash", str(heap_mb)]
    print(f"\n2. the crash: {heap_mb:,} MiB touched, then a read through NULL (SIGSEGV)")
    print(f"  core_pattern {core_pattern()!r}; commands (PROG is the program's argv):")
    shown = ["PROG", "crash", str(heap_mb), "OUT"]
    commands = {
        "redhand": "ulimit -c 0; " + shlex.join(redhand_run(shown)),
        "redhand+core": "ulimit -c unlimited; " + shlex.join(redhand_run(shown)),
        "kernel": "ulimit -c unlimited; " + shlex.join(shown),
        "reader": shlex.join([*redhand_command(), "core", "CORE"]),
        "gdb": shlex.join(gdb_command("run", "bt")(shown)),
        "coredumpctl": f"{shlex.join(shown)}; coredumpctl info --no-pager PID",
    }
    for key, variant in variants.items():
        if variant.absent is None:
            print(f"    {variant.name.strip():<36} {commands[key]}")
    live = [key for key, variant in variants.items() if variant.absent is None]
    live = [key for key in live if key != "reader"]  # measured with "kernel"
    started = time.monotonic()
    for run in range(runs):
        for index, key in enumerate(live):
            run_crash(key, variants, program, binary, workdir / f"row2-run{run}-{index}")
    print(f"  ({runs} runs, {time.monotonic() - started:.0f} s)")
    report_crash(variants)


def report_crash(variants: dict[str, Crash]) -> None:
    def pair(values: list[float]) -> str:
        if not values:
            return f"{'':>9} {'':>8}"
        return f"{median(values):>9.1f} {minimum(values):>8.1f}"

    print(
        f"  {'ms from the fault to':<36} {'report':>9} {'(min)':>8} {'core':>9} {'(min)':>8} "
        f"{'end':>9} {'(min)':>8} {'held ms':>8} {'core MiB':>9}"
    )
    for variant in variants.values():
        if variant.absent is not None:
            print(f"  {variant.name:<36} {variant.absent}")
            continue
        if not (variant.report or variant.core or variant.end):
            print(f"  {variant.name:<36} failed (see below)")
            continue
        held = f"{median(variant.held):>8.1f}" if variant.held else f"{'':>8}"
        size = f"{median(variant.size) / (1 << 20):>9,.0f}" if variant.size else ""
        print(
            f"  {variant.name:<36} {pair(variant.report)} {pair(variant.core)} "
            f"{pair(variant.end)} {held} {size}".rstrip()
        )
    print(
        "  report: the line with SIGSEGV on redhand's stdout (gdb: the last frame of bt);\n"
        "  core: the core file's last write (mtime); end: the tool's exit (the bare program: "
        "reaped, its core complete);\n  held: 'the process was held' from redhand's report"
    )
    guard, kernel = variants["redhand"], variants["kernel"]
    if guard.report and kernel.end:
        lead = median(kernel.end) - median(guard.report)
        verdict = "met" if lead > 0 else "NOT met"
        print(
            f"  goal, redhand's report before the kernel's core: {median(guard.report):.1f} ms "
            f"vs {median(kernel.end):.1f} ms to the bare program's core complete: {verdict} "
            f"({lead:.1f} ms ahead)"
        )
    both = variants["redhand+core"]
    if both.first:
        print(
            f"  under redhand with a core: the report came before the core's last write in "
            f"{sum(both.first)} of {len(both.first)} runs"
        )
    reader = variants["reader"]
    if reader.end and kernel.end:
        alone = median(reader.end) - median(kernel.end)
        print(f"  redhand core on the core alone: {alone:.0f} ms (median end - core complete)")
    reference = guard.signatures | both.signatures
    if reference and reader.signatures and reference != reader.signatures:
        print("  ! redhand run's report and redhand core's disagree (addresses left out):")
        for name, found in (("run", reference), ("core", reader.signatures)):
            for lines in sorted(found):
                print(f"      {name}: " + " / ".join(lines))
    elif len(reference) > 1:
        print("  ! redhand run's reports differ from one run to another")
    for variant in variants.values():
        for error in dict.fromkeys(variant.errors):
            print(f"  ! {variant.name.strip()}: {variant.errors.count(error)}x {error}")


# -- main ------------------------------------------------------------------------------------


def compile_program(workdir: Path) -> Path:
    source = workdir / "run_target.c"
    source.write_text(SOURCE)
    binary = workdir / "run_target"
    subprocess.run(["gcc", "-O2", "-g", "-o", str(binary), str(source)], check=True, timeout=120)
    return binary


ROWS = ("1a", "1b", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="runs of each tool (default 5; --quick: 2)")
    parser.add_argument(
        "--heap-mb", type=int, help="MiB touched before the crash (default 1024; --quick: 256)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs, a shorter signal row, a smaller heap"
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="which rows (1a, 1b, 2)")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 5)
    heap_mb = args.heap_mb or (256 if args.quick else 1024)
    seconds = 1.0 if args.quick else 2.5
    rows = [text.strip() for text in args.rows.split(",") if text.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))} (1a, 1b, 2)")
    with tempfile.TemporaryDirectory(prefix="redhand-bench-") as directory:
        workdir = Path(directory)
        binary = compile_program(workdir)
        load = os.getloadavg()[0]
        print(
            f"redhand run; {runs} runs, {os.cpu_count()} cores, load average {load:.1f}, "
            f"kernel {os.uname().release}; medians, (min) the fastest run"
        )
        rounds = calibrate(binary, workdir, seconds) if "1b" in rows else 0
        for row in rows:
            if row == "2":
                bench_crash(runs, heap_mb, binary, workdir)
            else:
                bench_loop(row, runs, rounds, binary, workdir)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
