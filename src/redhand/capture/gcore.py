"""``redhand gcore``: a core file of a running process, which pauses for milliseconds.

Two ways to take the snapshot:

- **fork** (the default where it is safe): every thread is frozen as for
  ``redhand stack``, its registers saved (general, FXSAVE, XSAVE); one
  thread runs an injected ``clone(CLONE_FILES, exit signal 0)`` through a
  ``syscall`` instruction of the process's own vdso, and its registers are
  put back exactly; every thread runs again.  The child is a copy-on-write
  image of the process at that moment: born traced by redhand
  (PTRACE_O_TRACECLONE), stopped before its first instruction, killed if
  redhand dies (PTRACE_O_EXITKILL), with its share of the file table
  dropped at once (``close_range(CLOSE_RANGE_UNSHARE)``, so no descriptor of
  the process stays open because of it).  The core is written from the
  child at leisure; then the child is killed and the process made to reap
  it (an injected ``wait4``, one thread stopped for well under a
  millisecond), so it keeps no zombie and gets no SIGCHLD.  The process's
  libc ``fork()`` is never called and no atfork handler runs.
- **stop**: the whole dump while every thread is frozen, as gdb's gcore.

``auto`` takes fork unless a seccomp filter might kill the process for the
clone, its pids limit is reached, or the memory it may dirty meanwhile
(copy-on-write) exceeds what is available; then stop, saying why.

MAP_SHARED memory is not copied by a fork: small shared regions (and those
MADV_DONTFORK or MADV_WIPEONFORK keep from a child) are copied from the
process while it is frozen; larger ones are read after the pause and the
result says they are not a snapshot.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import signal
import threading
import time
from collections.abc import Callable

from redhand.capture import inject
from redhand.capture.corefile import (
    NT_REDHAND,
    Layout,
    MappedFile,
    Note,
    ProcessState,
    Segment,
    ThreadState,
    segment_flags,
    thread_notes,
)
from redhand.capture.inject import namespace_pid
from redhand.capture.output import (
    MemoryCopier,
    OutputFile,
    Sink,
    SparseSink,
    ZstdSink,
    output_error,
)
from redhand.capture.selection import (
    Choice,
    Dump,
    SmapsEntry,
    choose,
    executable_file,
    file_mappings,
    read_filter,
    read_smaps,
)
from redhand.errors import (
    Interrupted,
    OutputError,
    ProcessError,
    ProcessExited,
    ProcessNotFound,
    RedhandError,
)
from redhand.proc import procfs, ptrace
from redhand.proc.checks import check_process, has_live_thread
from redhand.proc.freeze import (
    DEFAULT_STOP_TIMEOUT,
    Capture,
    raise_priority,
    restore_priority,
)
from redhand.target.model import USER_REGS_FIELDS, Mapping
from redhand.units import format_size

COPY_NAME = "redhand-copy"
"""The name (comm) the copy of a process gets: in ps while it is dumped, and how a copy
left by a redhand that was killed is told from the process's own children."""

COPY_WHILE_FROZEN = 64 << 20
"""Shared (or fork-proof) memory up to this many bytes is copied while the process is frozen."""

Progress = Callable[[int, "int | None"], None]


class Mode(enum.Enum):
    AUTO = "auto"
    FORK = "fork"
    STOP = "stop"


@dataclasses.dataclass(frozen=True)
class Region:
    """A mapping the core does not hold as a snapshot, and why."""

    start: int
    end: int
    path: str | None
    reason: str

    @property
    def size(self) -> int:
        return self.end - self.start

    def to_json(self) -> dict[str, object]:
        return {
            "start": self.start,
            "end": self.end,
            "path": self.path,
            "bytes": self.size,
            "reason": self.reason,
        }


@dataclasses.dataclass
class GcoreResult:
    """What ``redhand gcore`` did.

    ``pause_ns`` is how long the process was kept from running: from the
    first thread stopped to the last let go (in fork mode the freeze and
    the clone; in stop mode the whole dump).  ``reap_pause_ns`` is the
    second, one-thread stop that made the process reap the copy (fork mode).
    ``disk_bytes`` is what the file occupies, ``apparent_bytes`` its length.
    ``left_out`` lists memory not in the core (MADV_DONTDUMP, I/O and shared
    file mappings), ``not_snapshot`` shared memory read after the pause.
    """

    path: str
    pid: int
    mode: str
    mode_reason: str | None
    pause_ns: int
    reap_pause_ns: int | None
    seconds: float
    disk_bytes: int
    apparent_bytes: int
    compression: str | None
    threads: int
    segments: int
    data_bytes: int
    left_out: list[Region] = dataclasses.field(default_factory=list)
    not_snapshot: list[Region] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "redhand": 1,
            "kind": "gcore",
            "path": self.path,
            "pid": self.pid,
            "mode": self.mode,
            "mode_reason": self.mode_reason,
            "pause_ns": self.pause_ns,
            "reap_pause_ns": self.reap_pause_ns,
            "seconds": round(self.seconds, 6),
            "disk_bytes": self.disk_bytes,
            "apparent_bytes": self.apparent_bytes,
            "compression": self.compression,
            "threads": self.threads,
            "segments": self.segments,
            "data_bytes": self.data_bytes,
            "left_out": [region.to_json() for region in self.left_out],
            "not_snapshot": [region.to_json() for region in self.not_snapshot],
            "warnings": list(self.warnings),
            "timings": {name: round(value, 6) for name, value in self.timings.items()},
        }


def default_path(pid: int, compression: str | None) -> str:
    """``core.PID`` in the current folder (``core.PID.zst`` when compressed)."""
    return f"core.{pid}" + (".zst" if compression == "zstd" else "")


def gcore(
    pid: int,
    path: str | None = None,
    *,
    mode: Mode | str = Mode.AUTO,
    compression: str | None = None,
    force: bool = False,
    first_thread: int | None = None,
    progress: Progress | None = None,
    on_snapshot: Callable[[], None] | None = None,
) -> GcoreResult:
    """Write a core file of the running process ``pid`` to ``path``; it runs on.

    ``mode`` is ``"auto"``, ``"fork"`` or ``"stop"`` (see the module).
    ``compression`` ``"zstd"`` streams a .zst core.  ``first_thread`` is the
    thread whose notes come first (readers show it first; default the main
    thread).  ``progress(done, total)`` is called as memory is copied.
    ``on_snapshot()`` is called (from another thread) once a fork-mode
    snapshot exists and the process runs again, before the dump: a caller
    that holds the process stopped (redhand watch) may let it go then.

    Raises the errors of :func:`redhand.attach` for the process, OutputError
    (nothing is left behind) when the file cannot be written, ProcessExited
    when the process ends before its snapshot is whole, and Interrupted.
    """
    started = time.perf_counter()
    mode = Mode(mode)
    if compression not in (None, "zstd"):
        raise ValueError(f"unknown compression {compression!r}: only 'zstd'")
    check_process(pid)
    facts = _Facts.read(pid)
    if first_thread is not None and first_thread not in facts.threads:
        raise ProcessNotFound(
            pid,
            f"process {pid} has no thread {first_thread}",
            hint=f"its threads are listed in /proc/{pid}/task",
        )
    chosen, reason = _choose_mode(pid, facts, mode)
    output = OutputFile(path or default_path(pid, compression), force=force)
    job = _Job(pid, facts, chosen, reason, output, compression, first_thread, progress)
    job.on_snapshot = on_snapshot
    try:
        job.check_space()
        _run_cancellable(job)
        output.commit()
    except _Signalled as stop:
        output.discard()
        # Its handler now (the CLI's ends redhand); Python's turns SIGINT into
        # KeyboardInterrupt.  If it returns, the dump still did not happen.
        signal.raise_signal(stop.signo)
        raise Interrupted("interrupted: no core was written") from None
    except BaseException:
        output.discard()
        raise
    info = os.stat(output.path)
    job.timings["total"] = time.perf_counter() - started
    return GcoreResult(
        path=output.path,
        pid=pid,
        mode=job.mode.value,
        mode_reason=job.mode_reason,
        pause_ns=job.pause_ns,
        reap_pause_ns=job.reap_pause_ns,
        seconds=job.timings["total"],
        disk_bytes=info.st_blocks * 512,
        apparent_bytes=info.st_size,
        compression=compression,
        threads=job.thread_count,
        segments=job.segment_count,
        data_bytes=job.data_bytes,
        left_out=job.left_out,
        not_snapshot=job.not_snapshot,
        warnings=job.warnings,
        timings=job.timings,
    )


# -- what is known before the freeze ----------------------------------------------------


@dataclasses.dataclass
class _ThreadFacts:
    name: str
    sigpend: int
    sighold: int
    utime_us: int
    stime_us: int


@dataclasses.dataclass
class _Facts:
    """The process as /proc describes it, read before anything stops."""

    process: ProcessState
    threads: dict[int, _ThreadFacts]
    auxv: bytes
    coredump_filter: int
    seccomp: int
    rss_anon: int
    mappings: list[Mapping]
    smaps: dict[int, SmapsEntry]
    leftover_copies: list[int]
    """Dead copies a redhand killed during a dump left under the process (zombies)."""

    @classmethod
    def read(cls, pid: int) -> _Facts:
        try:
            status = procfs.read_status(pid)
            fields = procfs.read_stat_fields(pid)
            tick_us = 1_000_000 // os.sysconf("SC_CLK_TCK")
            threads = {}
            for tid in procfs.list_tids(pid):
                try:
                    thread_status = procfs.read_status(pid, tid)
                    thread_fields = procfs.read_stat_fields(pid, tid)
                except (ProcessNotFound, OSError):
                    continue
                threads[tid] = _ThreadFacts(
                    name=thread_status.get("Name", ""),
                    sigpend=int(thread_status.get("SigPnd", "0"), 16),
                    sighold=int(thread_status.get("SigBlk", "0"), 16),
                    utime_us=int(thread_fields[11]) * tick_us,
                    stime_us=int(thread_fields[12]) * tick_us,
                )
            with open(f"/proc/{pid}/auxv", "rb") as file:
                auxv = file.read()
            process = ProcessState(
                pid=pid,
                ppid=int(fields[1]),
                pgrp=int(fields[2]),
                sid=int(fields[3]),
                uid=int(status.get("Uid", "0").split()[0]),
                gid=int(status.get("Gid", "0").split()[0]),
                comm=status.get("Name", ""),
                args=procfs.read_cmdline(pid),
                state=fields[0],
                nice=int(fields[16]),
                flags=int(fields[6]),
            )
            return cls(
                process=process,
                threads=threads,
                auxv=auxv,
                coredump_filter=read_filter(pid),
                seccomp=int(status.get("Seccomp", "0") or 0),
                rss_anon=_kib(status.get("RssAnon", "0 kB")),
                mappings=procfs.read_maps(pid),
                smaps=read_smaps(pid),
                leftover_copies=_leftover_copies(pid),
            )
        except FileNotFoundError as error:
            raise ProcessExited(pid, f"process {pid} exited before it could be dumped") from error
        except PermissionError as error:
            raise ProcessError(pid, f"cannot read /proc/{pid}: {error.strerror}") from None


def _leftover_copies(pid: int) -> list[int]:
    """Zombie children named redhand-copy: copies whose redhand was killed before it reaped."""
    found = []
    for tid in procfs.list_tids(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as file:
                children = [int(word) for word in file.read().split()]
        except (OSError, ValueError):
            continue
        for child in children:
            try:
                stat = procfs.read_stat(child)
            except RedhandError:
                continue
            if stat.comm == COPY_NAME and stat.state == "Z":
                found.append(child)
    return found


def _kib(text: str) -> int:
    value = text.split()
    return int(value[0]) * 1024 if value and value[0].isdigit() else 0


def _choose_mode(pid: int, facts: _Facts, mode: Mode) -> tuple[Mode, str | None]:
    """The snapshot mode to use and, when it is not the one asked for, why."""
    if mode is Mode.STOP:
        return Mode.STOP, None
    if facts.seccomp:
        why = (
            f"process {pid} runs under a seccomp filter (Seccomp: {facts.seccomp}), "
            "which may kill it for the clone() a fork snapshot injects"
        )
        if mode is Mode.FORK:
            raise ProcessError(pid, f"cannot take a fork snapshot: {why}", hint="use --mode stop")
        return Mode.STOP, why
    risk = _pids_limit_reached(pid) or _memory_short(facts)
    if risk is not None:
        if mode is Mode.FORK:
            return Mode.FORK, None  # asked for: a failed clone still falls back to stop
        return Mode.STOP, risk
    return Mode.FORK, None


def _pids_limit_reached(pid: int) -> str | None:
    limit = _cgroup_value(pid, "pids", "pids.max", "pids.max")
    current = _cgroup_value(pid, "pids", "pids.current", "pids.current")
    if limit is None or current is None or current < limit:
        return None
    return f"its cgroup's pids limit is reached ({current} of {limit}): a copy cannot be made"


def _memory_short(facts: _Facts) -> str | None:
    """Why the copy-on-write memory a fork may cost could run the machine short, or None."""
    available = procfs.read_meminfo("MemAvailable")
    pid = facts.process.pid
    limit = _cgroup_value(pid, "memory", "memory.max", "memory.limit_in_bytes")
    used = _cgroup_value(pid, "memory", "memory.current", "memory.usage_in_bytes")
    if limit is not None and used is not None:
        room = max(limit - used, 0)
        available = room if available is None else min(available, room)
    if available is None or facts.rss_anon <= available:
        return None
    return (
        f"the process may dirty up to {format_size(facts.rss_anon)} of copy-on-write memory "
        f"while it is dumped, more than the {format_size(available)} available"
    )


_NO_LIMIT = 1 << 62
"""cgroup v1 says "no limit" with a number near 2**63."""


def _cgroup_value(pid: int, controller: str, v2_name: str, v1_name: str) -> int | None:
    """A number from the process's cgroup (v2, or v1's ``controller`` hierarchy); None
    when there is none or no limit ("max")."""
    try:
        with open(f"/proc/{pid}/cgroup") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        path = path.lstrip("/")
        if controllers == "":
            for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                candidates.append(os.path.join(root, path, v2_name))
        elif controller in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup", controller)
            candidates.append(os.path.join(base, path, v1_name))
            candidates.append(os.path.join("/sys/fs/cgroup", controllers, path, v1_name))
    for candidate in candidates:
        try:
            with open(candidate) as file:
                text = file.read().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            return None
        return None if value >= _NO_LIMIT else value
    return None


# -- the work, in the tracer thread ------------------------------------------------------


class _Job:
    """One gcore: everything after the checks, run by the tracer thread."""

    def __init__(
        self,
        pid: int,
        facts: _Facts,
        mode: Mode,
        mode_reason: str | None,
        output: OutputFile,
        compression: str | None,
        first_thread: int | None,
        progress: Progress | None,
    ) -> None:
        self.pid = pid
        self.facts = facts
        self.mode = mode
        self.mode_reason = mode_reason
        self.output = output
        self.compression = compression
        self.first_thread = first_thread
        self.progress = progress
        self.cancel = threading.Event()
        self.pause_ns = 0
        self.reap_pause_ns: int | None = None
        self.on_snapshot: Callable[[], None] | None = None
        self.thread_count = 0
        self.segment_count = 0
        self.data_bytes = 0
        self.left_out: list[Region] = []
        self.not_snapshot: list[Region] = []
        self.warnings: list[str] = []
        self.timings: dict[str, float] = {}
        self.instruction: int | None = None
        self.threads: list[ThreadState] = []
        self.names: dict[int, str] = {}
        self.maps: list[Mapping] = []
        self.captured: dict[int, bytes] = {}

    def _time(self, phase: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[phase] = now - since
        return now

    def check_space(self) -> None:
        """Refuse at once when the destination cannot hold the memory to be written."""
        if self.compression is not None:
            return
        needed = 0
        for mapping in self.facts.mappings:
            entry = self.facts.smaps.get(mapping.start)
            choice = choose(mapping, entry, self.facts.coredump_filter)
            if entry is not None:
                needed += min(entry.rss + entry.swap, choice.size)
        free = self.output.free_bytes()
        if needed > free:
            raise OutputError(
                self.output.path,
                f"{self.output.folder} has {format_size(free)} free, and the core may need "
                f"{format_size(needed)}",
                hint="free some space, write it elsewhere (-o), or compress it (--zstd)",
                no_space=True,
            )

    def run(self) -> None:
        """The whole dump: freeze, snapshot, resume, write; in the tracer thread."""
        if self.mode is Mode.FORK:
            self.instruction = inject.find_syscall_instruction(self.pid, self.facts.mappings)
            if self.instruction is None:
                self.mode, self.mode_reason = Mode.STOP, "no syscall instruction to inject"
        clock = time.perf_counter
        previous_nice = raise_priority()
        capture = Capture(
            self.pid,
            list(self.facts.threads),
            self.facts.mappings,
            0,
            rescan=True,
            stop_timeout_ns=int(DEFAULT_STOP_TIMEOUT * 1e9),
            memory_tid=self.pid,
        )
        child: int | None = None
        child_pid_inside = 0
        try:
            since = clock()
            capture.stop_all()
            capture.copy_registers()
            since = self._time("freeze", since)  # as redhand stack's freeze
            self._keep_threads(capture)
            self.maps = procfs.read_maps(self.pid)
            self._time("snapshot", since)  # FP and XSAVE areas, the mappings
            if capture.incomplete() and not has_live_thread(self.pid):
                raise ProcessExited(self.pid, f"process {self.pid} exited while it was frozen")
            if self.mode is Mode.FORK:
                since = clock()
                try:
                    child, child_pid_inside = self._clone(capture)
                except inject.InjectionError as error:
                    self.mode = Mode.STOP
                    self.mode_reason = f"the injected clone() failed ({error.message})"
                self.timings["clone"] = clock() - since
            if child is not None:
                self._copy_while_frozen(capture)
            else:
                since = clock()
                self._write(self.pid, read_smaps(self.pid), frozen=True)
                self.timings["dump"] = clock() - since
        finally:
            capture.resume_all()
            self.pause_ns = capture.frozen_ns
            restore_priority(previous_nice)
        if child is None:
            return
        if self.on_snapshot is not None:
            self.on_snapshot()
        try:
            since = clock()
            self._prepare_copy(child)
            self._write(child, read_smaps(child), frozen=False)
            self.timings["dump"] = clock() - since
        finally:
            inject.end_child(child)
            since = clock()
            self._reap(child_pid_inside)
            self.timings["reap"] = clock() - since

    # -- snapshot --

    def _keep_threads(self, capture: Capture) -> None:
        """Every stopped thread's registers, FXSAVE and XSAVE areas, while frozen."""
        threads: list[ThreadState] = []
        for tid in sorted(capture.stopped, key=lambda tid: (tid != self.pid, tid)):
            words = capture.registers_of(tid)
            facts = self.facts.threads.get(tid)
            if words is None:
                self.warnings.append(
                    f"thread {tid} is not in the core: {capture.errors.get(tid, 'not stopped')}"
                )
                continue
            threads.append(
                ThreadState(
                    tid=tid,
                    registers=words,
                    fpregs=ptrace.get_fpregs(tid),
                    xstate=ptrace.get_xstate(tid),
                    sigpend=facts.sigpend if facts else 0,
                    sighold=facts.sighold if facts else 0,
                    utime_us=facts.utime_us if facts else 0,
                    stime_us=facts.stime_us if facts else 0,
                )
            )
            self.names[tid] = facts.name if facts else procfs.thread_name(self.pid, tid)
        for tid, error in capture.errors.items():
            if tid not in capture.stopped:
                self.warnings.append(f"thread {tid} is not in the core: {error}")
        first = self.first_thread
        if first is not None:
            threads.sort(key=lambda thread: thread.tid != first)
            if not threads or threads[0].tid != first:
                self.warnings.append(f"thread {first} could not be stopped: the main one is first")
        self.threads = threads
        self.thread_count = len(threads)

    def _clone(self, capture: Capture) -> tuple[int, int]:
        """Inject clone() into one stopped thread: (the child as redhand sees its pid,
        its pid inside the process's pid namespace)."""
        assert self.instruction is not None
        candidates = [tid for tid, sig in capture.stopped.items() if capture.registers_of(tid)]
        candidates.sort(key=lambda tid: (capture.stopped[tid] != 0, tid != self.pid, tid))
        if not candidates:
            raise inject.InjectionError(self.pid, "no thread is stopped with its registers")
        tid = candidates[0]
        saved = inject.SavedRegisters.save(tid)
        # The child inherits EXITKILL: should redhand die, it dies too instead
        # of running as a second copy of the program.  (Cleared on the thread
        # at once: the program itself must never die with redhand.)
        ptrace.set_options(tid, ptrace.PTRACE_O_TRACECLONE | ptrace.PTRACE_O_EXITKILL)
        try:
            result = inject.run_syscall(
                tid, self.instruction, inject.SYS_CLONE, (inject.CLONE_FILES, 0, 0, 0, 0),
                saved=saved,
            )  # fmt: skip
        finally:
            ptrace.set_options(tid, 0)
        if result.held_signal and not capture.stopped[tid]:
            capture.stopped[tid] = result.held_signal
        if result.child is None:
            if result.value > 0:  # a child not traced: it must not run
                try:  # noqa: SIM105
                    os.kill(result.value, signal.SIGKILL)
                except OSError:
                    pass
            reason = os.strerror(result.error) if result.error else "no child was reported"
            raise inject.InjectionError(self.pid, reason)
        inject.wait_child_stop(result.child)
        ptrace.set_options(result.child, ptrace.PTRACE_O_EXITKILL)
        return result.child, result.value

    def _copy_while_frozen(self, capture: Capture) -> None:
        """Memory a fork does not snapshot (shared, DONTFORK, WIPEONFORK): copied now when
        small, else read after the pause and reported as not a snapshot."""
        budget = COPY_WHILE_FROZEN
        with ptrace.LiveMemory(self.pid) as memory:
            for mapping in self.maps:
                entry = self.facts.smaps.get(mapping.start)
                choice = choose(mapping, entry, self.facts.coredump_filter)
                if choice.dump is Dump.NOTHING or not (choice.shared or choice.no_fork):
                    continue
                if choice.size <= budget:
                    data = memory.read_some(mapping.start, choice.size)
                    self.captured[mapping.start] = data.ljust(choice.size, b"\0")
                    budget -= choice.size
                else:
                    self.not_snapshot.append(
                        Region(
                            mapping.start,
                            mapping.end,
                            mapping.path,
                            "shared memory, read after the pause (a fork does not copy it)",
                        )
                    )

    def _prepare_copy(self, child: int) -> None:
        """The copy takes the name redhand-copy and lets go of the process's file table."""
        assert self.instruction is not None
        try:
            stack = ptrace.get_register_words(child)[USER_REGS_FIELDS.index("rsp")]
            name_at = (stack - 4096) & ~0xF  # well below its red zone: the copy never runs
            with ptrace.LiveMemory(child) as memory:
                saved = memory.read(name_at, len(COPY_NAME) + 1)
            inject.write_memory(child, name_at, COPY_NAME.encode() + b"\0")
            try:
                inject.run_syscall(
                    child, self.instruction, inject.SYS_PRCTL, (inject.PR_SET_NAME, name_at)
                )
            finally:  # the copy's memory is the snapshot again
                inject.write_memory(child, name_at, saved)
        except (RedhandError, OSError) as error:
            self.warnings.append(f"the copy of the process could not be named: {error}")
        try:
            result = inject.run_syscall(
                child, self.instruction, inject.SYS_CLOSE_RANGE,
                (0, 0xFFFFFFFF, inject.CLOSE_RANGE_UNSHARE),
            )  # fmt: skip
        except RedhandError as error:
            self.warnings.append(f"the copy keeps the process's files open: {error}")
            return
        if result.error:
            self.warnings.append(
                "the copy shares the process's file table while it is dumped "
                f"(close_range: {os.strerror(result.error)})"
            )

    def _reap(self, child_inside: int) -> None:
        """Make the process reap its dead copy, and copies an earlier redhand left when it
        was killed: wait4 injected into one of its threads."""
        copies = [child_inside] if child_inside else []
        copies += [namespace_pid(pid) for pid in self.facts.leftover_copies]
        if not copies or self.instruction is None or not has_live_thread(self.pid):
            return
        tids = sorted(self.facts.threads, key=lambda tid: tid != self.pid)
        for tid in tids[:8]:
            outcome = _reap_in(tid, self.instruction, copies)
            if outcome is not None:
                self.reap_pause_ns = outcome
                return
        self.warnings.append(
            f"process {self.pid} was not made to reap its copy: a zombie named "
            f"{COPY_NAME} stays under it until it waits for its children, exits, "
            "or redhand gcore is run on it again"
        )

    # -- the file --

    def _write(self, source: int, smaps: dict[int, SmapsEntry], *, frozen: bool) -> None:
        """Write the core from ``source`` (the process, or its copy)."""
        choices = []
        for mapping in self.maps:
            entry = smaps.get(mapping.start) or self.facts.smaps.get(mapping.start)
            choices.append(choose(mapping, entry, self.facts.coredump_filter))
        with ptrace.LiveMemory(source) as memory:
            segments = [_segment(memory, choice) for choice in choices]
        for choice in choices:
            if choice.worth_saying:
                m = choice.mapping
                assert choice.reason is not None
                self.left_out.append(Region(m.start, m.end, m.path, choice.reason.value))
        layout = Layout(self._notes(frozen), segments)
        self.segment_count = len(segments)
        sink: Sink = (
            ZstdSink(self.output.fd) if self.compression == "zstd" else SparseSink(self.output.fd)
        )
        total = sum(segment.dumped for segment in segments)
        copier = MemoryCopier(sink, cancel=self.cancel, progress=self.progress, total=total)
        try:
            head = layout.head()
            copier.write(head)
            copier.skip(layout.data_start - len(head))
            copier.done = 0  # the progress counts memory only
            by_start = {choice.mapping.start: choice for choice in choices}
            for segment in layout.segments:
                if not segment.dumped:
                    continue
                choice = by_start[segment.start]
                captured = self.captured.get(segment.start)
                if captured is not None:
                    copier.copy_bytes(captured[: segment.dumped])
                elif not frozen and (choice.shared or choice.no_fork):
                    # Read after the pause from the process itself (the copy lacks it).
                    copier.copy(self.pid, segment.start, segment.dumped, anonymous=False)
                else:
                    anonymous = choice.anonymous and not choice.shared
                    copier.copy(source, segment.start, segment.dumped, anonymous=anonymous)
            copier.write(layout.tail())
            copier.finish()
            sink.finish()
        except RedhandError:
            raise
        except OSError as error:  # writing the file
            raise output_error(self.output.path, error) from None
        finally:
            copier.close()
        if sink.position != layout.size:
            raise AssertionError(f"the core is {sink.position} bytes long, not {layout.size}")
        self.data_bytes = copier.stored
        if copier.unreadable:
            lost = format_size(copier.unreadable)
            self.warnings.append(f"{lost} of memory could not be read (holes in the core)")

    def _notes(self, frozen: bool) -> list[Note]:
        files = [
            MappedFile(m.start, m.end, m.offset, m.path or "") for m in file_mappings(self.maps)
        ]
        about = {
            "tool": "redhand gcore",
            "mode": self.mode.value,
            "mode_reason": self.mode_reason,
            # In stop mode the pause lasts the whole dump: not known yet.
            "pause_ns": None if frozen else self.pause_ns,
            "threads": [[thread.tid, self.names.get(thread.tid, "")] for thread in self.threads],
            "not_snapshot": [region.to_json() for region in self.not_snapshot],
            "time": time.time(),
        }
        redhand_note = Note("REDHAND", NT_REDHAND, json.dumps(about).encode())
        return thread_notes(
            self.threads, self.facts.process, auxv=self.facts.auxv, files=files,
            extra=[redhand_note],
        )  # fmt: skip


def _segment(memory: ptrace.LiveMemory, choice: Choice) -> Segment:
    """The PT_LOAD of a mapping; ``memory`` is where it is read (the process or its copy)."""
    mapping = choice.mapping
    dumped = choice.size
    # A library need not be executable: then its first page only if it is ELF.
    if (
        choice.dump is Dump.FIRST_PAGE
        and not executable_file(mapping)
        and memory.read_some(mapping.start, 4) != b"\x7fELF"
    ):
        dumped = 0
    return Segment(mapping.start, mapping.end, segment_flags(mapping.perms), dumped)


def _reap_in(tid: int, instruction: int, children: list[int]) -> int | None:
    """Stop thread ``tid`` alone, run wait4(child, WNOHANG|__WALL) in it for each, let it go.

    Returns how long it was stopped (ns), or None when it could not be used.
    """
    try:
        ptrace.seize(tid)
    except RedhandError:
        return None
    since = time.perf_counter_ns()
    held = 0
    try:
        ptrace.interrupt(tid)
        code, status = inject.wait_stop(tid, timeout=5.0)
        if code not in (ptrace.CLD_TRAPPED, ptrace.CLD_STOPPED):
            return None
        if (status >> 8) & 0xFF == 0:
            held = status & 0xFF  # a signal arrived first: it is given back
        for child in children:
            for _ in range(50):
                result = inject.run_syscall(
                    tid, instruction, inject.SYS_WAIT4, (child, 0, ptrace.WALL | ptrace.WNOHANG, 0)
                )
                held = held or result.held_signal
                if result.value != 0:  # reaped, or not ours any more (ECHILD)
                    break
                time.sleep(0.001)  # not yet a zombie
        return time.perf_counter_ns() - since
    except RedhandError:
        return None
    finally:
        try:  # noqa: SIM105
            ptrace.detach(tid, held)
        except RedhandError:
            pass  # the kernel lets it go when the tracer thread ends


# -- running it, cancellable ---------------------------------------------------------------

_DEFERRED = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT})


def _run_cancellable(job: _Job) -> None:
    """Run ``job.run`` in a tracer thread; SIGINT, SIGTERM, SIGHUP and SIGQUIT cancel it.

    Those signals are blocked in this thread (and so in the tracer, which
    inherits the mask) and taken here with sigtimedwait: they never land in
    the middle of the freeze or of an injected call.  The first one sets the
    job's cancel flag; the tracer stops at the next chunk it copies, kills
    and reaps the copy, lets every thread go; then _Signalled says which
    signal came, for the caller to raise again once it has cleaned up.
    """
    failure: list[BaseException] = []

    def body() -> None:
        try:
            job.run()
        except BaseException as error:  # handed to the caller
            failure.append(error)

    received: int | None = None
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        tracer = threading.Thread(target=body, name="redhand-gcore", daemon=True)
        tracer.start()
        while tracer.is_alive():
            info = signal.sigtimedwait(_DEFERRED, 0.05)
            if info is not None and received is None:
                received = info.si_signo
                job.cancel.set()
        tracer.join()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    if received is not None:
        raise _Signalled(received)
    if failure:
        raise failure[0]


class _Signalled(Exception):
    """A signal cancelled the dump; raise it again once the output is discarded."""

    def __init__(self, signo: int) -> None:
        super().__init__(f"signal {signo}")
        self.signo = signo


__all__ = ["GcoreResult", "Mode", "Region", "default_path", "gcore"]
