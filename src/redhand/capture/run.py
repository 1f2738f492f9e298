"""``redhand run``: a crash guard.  The full crash report before a program dies, a hang's
stacks before it is killed.

The program (launched, or a running process with ``pid``) is seized and
stops for nothing but signals: no cost while nothing happens.  At a signal
that is about to end a process of it (its disposition is the default and
the default kills: SIGSEGV, SIGABRT, a SIGTERM from outside, ...), the
process is held, every thread's registers and stack are copied (and a core
written with ``core``), then the signal is delivered as it came: the kernel
writes its own core where core_pattern says, and the program dies with the
status it would have had without redhand.  The report is the one
``redhand core`` gives for the same crash, made from the live process.

A handler that recovers is left alone; one that resets the signal and
raises it again is caught at the second delivery.  ``on`` reports every
delivery of some signals as well.

``timeout``: when time is up, every thread's stack (and ``core``), then
``kill_signal``; SIGKILL after ``kill_after`` if the program is still there,
as coreutils' ``timeout`` does (whose exit codes :attr:`Run.exit_code`
follows: 124 when timed out, 128 + 9 when SIGKILL was needed).

A guard that dies (even by SIGKILL) leaves the program running, untraced.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

from redhand.capture.events import CrashEvent
from redhand.capture.hits import Hit
from redhand.capture.watch import Action, ActionKind, Caught, Watch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from redhand.capture.bpfwatch import BpfBackend
    from redhand.capture.tracer import PtraceBackend

__all__ = ["Run", "RunResult", "run"]

EXIT_TIMED_OUT = 124
DEFAULT_KILL_AFTER = 10.0


class Run(Watch):
    """A crash guard over a program; iterate it for each report (see :func:`run`)."""

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        *,
        pid: int | None = None,
        on: Sequence[int] = (),
        core: str | None = None,
        timeout: float | None = None,
        kill_signal: int = signal.SIGTERM,
        kill_after: float | None = DEFAULT_KILL_AFTER,
        follow: bool = True,
        syscalls: int | None = None,
        stack_bytes: int = 256 << 20,
        debug_dirs: Sequence[str] | None = None,
        source: bool = True,
        inline: bool = True,
        exe: str | None = None,
    ) -> None:
        actions = [Action(ActionKind.STACK)]
        if core is not None:
            actions.append(Action(ActionKind.GCORE, core))
        super().__init__(
            CrashEvent(frozenset(on)),
            pid=pid,
            argv=argv,
            then=actions,
            count=1 << 62,  # every crash of every process followed
            timeout=timeout,
            follow=follow,
            stack_bytes=stack_bytes,
            debug_dirs=debug_dirs,
            source=source,
            inline=inline,
            syscalls=syscalls,
            exe=exe,
        )
        # A process caught at its fatal signal dies when let go: everything the report reads
        # (the stacks past the copied bytes, an exception's message, glibc's abort message)
        # is read while it is held, and the whole stack of each thread is copied.
        self.analyse_while_held = True
        self.kill_signal = kill_signal
        self.kill_after = kill_after
        self.killed_with: int | None = None  # the signal a timeout ended the program with

    def _core_path(self, argument: str | None, pid: int, tid: int) -> str:
        path = super()._core_path(argument, pid, tid)
        if self.caught > 1 and argument is not None and "{" not in argument:
            path = f"{path}.{self.caught}"  # a second crash (a child) never replaces the first
        return path

    def _after_timeout(self, backend: BpfBackend | PtraceBackend) -> Iterator[Caught]:
        """Time is up: the stacks (and a core), then the kill signal, then SIGKILL."""
        from redhand.capture.tracer import PtraceBackend

        assert isinstance(backend, PtraceBackend)
        pid = backend.launched_pid or backend.attach_pid
        if pid is None or pid not in backend.processes:
            return
        backend.acting = False  # the kill signal below is no crash to report
        name = _comm(pid)
        hit = Hit(pid, pid, name, time.time())
        self.caught += 1
        caught, snapshot, held = self._act(backend, [hit], running=True, kind="timeout")
        self._complete(backend, caught, snapshot, held)
        yield caught
        self._kill(backend, pid)

    def _kill(self, backend: PtraceBackend, pid: int) -> None:
        self.killed_with = self.kill_signal
        _signal(pid, self.kill_signal)
        deadline = time.monotonic() + self.kill_after if self.kill_after is not None else None
        if not self._trace_until(backend, deadline) and pid in backend.processes:
            self.killed_with = signal.SIGKILL
            _signal(pid, signal.SIGKILL)
            self._trace_until(backend, None)

    def _trace_until(self, backend: PtraceBackend, deadline: float | None) -> bool:
        """Trace on until every process ends (True) or the deadline passes (False)."""
        with self._ticking():
            while backend.processes:
                if backend.wait(deadline, self._should_stop) == [] and (
                    self._should_stop() or (deadline is not None and time.monotonic() >= deadline)
                ):
                    return False
        self.ended = True
        return True

    @property
    def exit_code(self) -> int:
        """The shell's view of the program's end, as ``timeout`` reports a timeout."""
        if self.timed_out:
            return 128 + signal.SIGKILL if self.killed_with == signal.SIGKILL else EXIT_TIMED_OUT
        status = self.exit_status
        if status is None:
            return 0
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


@dataclass
class RunResult:
    """What :func:`run` saw: every report, the program's end and how the shell sees it."""

    reports: list[Caught] = field(default_factory=list)
    status: int | None = None  # the wait status (os.waitstatus_to_exitcode reads it)
    exit_code: int = 0
    timed_out: bool = False


def run(argv: Sequence[str] | None = None, **options: object) -> RunResult:
    """Run ``argv`` (or guard ``pid=``) to its end under a crash guard; see :class:`Run`."""
    guard = Run(argv, **options)  # type: ignore[arg-type]
    result = RunResult()
    for caught in guard:
        result.reports.append(caught)
    result.status = guard.exit_status
    result.exit_code = guard.exit_code
    result.timed_out = guard.timed_out
    return result


def _comm(pid: int) -> str:
    from redhand.proc.procfs import comm_of

    return comm_of(pid) or "?"


def _signal(pid: int, signo: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signo)
