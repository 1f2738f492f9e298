"""``redhand watch``: wait for an event, stop the program on the spot, act, let it run on.

``watch(spec, pid=...)`` returns a :class:`Watch`; iterating it starts the
watch and yields a :class:`Caught` for each hit acted on (``count`` of
them), each after the process runs again.  The backend is chosen from what
is watched and how the program is reached:

==================  =====================================================
``-p PID``          eBPF (the test runs in the kernel); ptrace at every
                    system call when eBPF is not allowed (slow: said so)
``--comm NAME``     eBPF only
``-- CMD ...``      a seccomp filter and ptrace (watched calls only)
``signal SIG``      ptrace, stopping at signals only (free until one comes)
==================  =====================================================

For every hit the process is brought to a group-stop, then the actions run
in order (``stack`` copies what the backtraces need, ``gcore`` writes a
core, ``exec`` runs a command; ``abort``, ``kill`` and ``stop`` end it),
then it runs on.  The slow work (unwinding, symbols) is done after.

The caller's thread must keep iterating: with a ptrace backend it is the
tracer.  In the main thread, SIGINT, SIGTERM and SIGHUP end the watch
cleanly (for a launched program, the first is passed on to it); elsewhere
the caller must close the watch.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from redhand.capture.events import (
    CrashEvent,
    SignalEvent,
    SyscallEvent,
    parse_event,
    will_kill,
)
from redhand.capture.guard import Guard
from redhand.capture.hits import Hit, SyscallCall
from redhand.errors import Interrupted, RedhandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from redhand.capture.bpfwatch import BpfBackend
    from redhand.capture.gcore import GcoreResult
    from redhand.capture.tracer import Held, PtraceBackend
    from redhand.proc.freeze import Snapshot
    from redhand.target.target import Target

__all__ = [
    "Action",
    "ActionKind",
    "ActionResult",
    "Caught",
    "Watch",
    "WatchTimedOut",
    "parse_actions",
    "watch",
]

log = logging.getLogger(__name__)

EXIT_TIMED_OUT = 124  # as coreutils' timeout
_TICK = 0.2  # seconds between checks of a deadline or a signal while blocked in waitpid
_EXEC_TIMEOUT = 300.0
_SERVE_TICK = 0.005  # how soon the tracer notices that the report is ready
_SERVE_SWITCH = 0.0005  # the GIL's switch interval meanwhile: the tracer waits less for it
_SERVED_SIGNALS = {signal.SIGALRM, signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


class WatchTimedOut(RedhandError):
    """``--timeout`` passed before the event happened (as often as asked)."""

    exit_code = EXIT_TIMED_OUT


class ActionKind(enum.Enum):
    STACK = "stack"
    GCORE = "gcore"
    EXEC = "exec"
    ABORT = "abort"
    STOP = "stop"
    KILL = "kill"


_FINAL = (ActionKind.ABORT, ActionKind.STOP, ActionKind.KILL)


@dataclass(frozen=True)
class Action:
    """One thing to do at a hit; ``argument`` is gcore's path or exec's command."""

    kind: ActionKind
    argument: str | None = None

    def __str__(self) -> str:
        return self.kind.value + (f" {self.argument}" if self.argument else "")


def parse_actions(values: Sequence[str]) -> list[Action]:
    """``--then`` values: comma-separated names; ``gcore PATH``; ``exec COMMAND`` takes the rest.

    ValueError (a usage error) for an unknown action, or a final action
    (abort, stop, kill) that is not the last one.
    """
    actions: list[Action] = []
    for value in values:
        rest = value.strip()
        while rest:
            part, _comma, after = rest.partition(",")
            words = part.split(None, 1)
            if words and words[0] == "exec":
                # The command is the rest of the value, commas and all.
                command = rest.strip()[4:].strip()
                if not command:
                    raise ValueError(
                        "exec needs a command: --then 'exec gdb -p {pid} -batch -ex bt'"
                    )
                actions.append(Action(ActionKind.EXEC, command))
                break
            if not words:
                raise ValueError(f"empty action in {value!r}")
            try:
                kind = ActionKind(words[0])
            except ValueError:
                names = ", ".join(k.value for k in ActionKind)
                raise ValueError(f"unknown action {words[0]!r} (one of {names})") from None
            argument = words[1].strip() if len(words) > 1 else None
            if argument is not None and kind is not ActionKind.GCORE:
                raise ValueError(f"{kind.value} takes no argument, not {argument!r}")
            actions.append(Action(kind, argument))
            rest = after.strip()
            if _comma and not rest:
                raise ValueError(f"empty action in {value!r}")
    if not actions:
        actions.append(Action(ActionKind.STACK))
    finals = [index for index, action in enumerate(actions) if action.kind in _FINAL]
    if len(finals) > 1 or (finals and finals[0] != len(actions) - 1):
        raise ValueError("abort, stop and kill end the program's run: only one, and last")
    return actions


@dataclass
class ActionResult:
    """What an action did: ``ok``, a line saying it, and what it produced."""

    action: Action
    ok: bool
    summary: str
    path: str | None = None
    gcore: GcoreResult | None = None
    exit_code: int | None = None

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "action": self.action.kind.value,
            "argument": self.action.argument,
            "ok": self.ok,
            "summary": self.summary,
        }
        if self.path is not None:
            document["path"] = self.path
        if self.exit_code is not None:
            document["exit_code"] = self.exit_code
        return document


@dataclass
class Caught:
    """One hit acted on: the event, the other hits during the stop, the stacks, the actions.

    ``stopped_ns``: from the hit to the whole process stopped (eBPF measures
    it from the kernel's time of the call's return; ptrace from the stop of
    the thread that hit).  ``paused_ns``: how long the process was held for
    the actions.  ``target`` holds the stacks (None without the ``stack``
    action); the process already runs again.
    """

    number: int
    hit: Hit
    also: list[Hit]
    backend: str
    stopped_ns: int
    paused_ns: int
    actions: list[ActionResult]
    target: Target | None = None
    resumed: bool = True
    warnings: list[str] = field(default_factory=list)
    rendered: str | None = None  # what a ``prepare`` hook made of it (the CLI: its output)
    kind: str = "event"  # or "timeout" (redhand run: the stacks of a program out of time)
    prepared: bool = False  # the stacks were unwound and the ``prepare`` hook ran
    syscalls: list[SyscallCall] = field(default_factory=list)  # --syscalls: its last calls
    fatal: bool = False  # a signal that ends the process when delivered (decided while held)


def _late(held: Held) -> list[str]:
    """What to say of the threads that did not stop at the hit."""
    said = {"D": "an uninterruptible sleep", "R": "running in the kernel"}
    return [
        f"thread {tid} did not stop (state {state}: {said.get(state, 'busy in the kernel')}); "
        "the process was held without it, and its stack may be missing"
        for tid, state in sorted(held.late.items())
    ]


class Watch:
    """A watch, started by iterating it; see :func:`watch`."""

    def __init__(
        self,
        spec: str | CrashEvent,
        *,
        pid: int | None = None,
        comm: str | None = None,
        argv: Sequence[str] | None = None,
        then: Sequence[str] | Sequence[Action] = ("stack",),
        count: int = 1,
        skip: int = 0,
        timeout: float | None = None,
        backend: str = "auto",
        follow: bool = True,
        stack_bytes: int = 1 << 20,
        debug_dirs: Sequence[str] | None = None,
        source: bool = False,
        inline: bool = True,
        syscalls: int | None = None,
        exe: str | None = None,
    ) -> None:
        if sum(x is not None for x in (pid, comm, argv)) != 1:
            raise ValueError("watch needs exactly one of pid, comm and argv")
        if argv is not None and not argv:
            raise ValueError("argv is empty: name the program to launch")
        if count < 1 or skip < 0:
            raise ValueError("count must be at least 1 and skip not negative")
        self.event = spec if isinstance(spec, CrashEvent) else parse_event(spec)
        self.actions: list[Action] = [a for a in then if isinstance(a, Action)]
        if len(self.actions) != len(then):
            self.actions = parse_actions([str(a) for a in then])
        self.pid = pid
        self.comm = comm
        self.argv = list(argv) if argv is not None else None
        self.count = count
        self.skip = skip
        self.timeout = timeout
        self.follow = follow
        self.stack_bytes = stack_bytes
        self.debug_dirs = debug_dirs
        self.source = source
        self.inline = inline
        self.caught = 0
        self.timed_out = False
        self.ended = False  # every watched process exited
        self.notes: list[str] = []
        self.backend_name = ""
        self.backend_description = ""
        self._requested_backend = backend
        self._backend: BpfBackend | PtraceBackend | None = None
        self._closed_backend: BpfBackend | PtraceBackend | None = None  # for the exit status
        self._guard: Guard | None = None
        self._signalled: int | None = None
        self._forwarded = False
        self._previous_handlers: dict[int, object] = {}
        self.on_start: Callable[[Watch], None] | None = None  # called once the watch is set
        # Called with each Caught, after its stacks are unwound and before it is yielded, in
        # a thread of its own while the program runs on (a renderer does its slow work here).
        self.prepare: Callable[[Caught], None] | None = None
        self._pending_hits: list[Hit] | None = None
        # Unwind and analyse before letting the process go (it is about to die: redhand run).
        self.analyse_while_held = False
        # --syscalls N: the last N system calls of the thread that hit (ptrace at every call).
        self.syscall_history = syscalls
        # --exe: an unpacked copy of a packed program, to name the code it unpacks.
        self.exe = exe
        self._check_choices()

    # -- choosing -------------------------------------------------------------------

    def _check_choices(self) -> None:
        requested = self._requested_backend
        if requested not in ("auto", "ebpf", "seccomp", "ptrace"):
            raise ValueError(f"unknown backend {requested!r} (auto, ebpf, seccomp or ptrace)")
        stop = any(a.kind is ActionKind.STOP for a in self.actions)
        if self.argv is not None and stop and isinstance(self.event, SyscallEvent):
            raise ValueError(
                "--then stop cannot be used with a launched program: its seccomp filter makes "
                "the watched calls fail with ENOSYS once nobody traces it; watch it with -p, "
                "or use --then exec or gcore"
            )
        if isinstance(self.event, (SignalEvent, CrashEvent)):
            if self.comm is not None:
                raise ValueError("a signal event needs -p PID or a command, not --comm")
            if requested in ("ebpf", "seccomp"):
                raise ValueError("a signal event is watched with ptrace (--backend ptrace)")
        elif self.syscall_history and (self.comm is not None or requested in ("ebpf", "seccomp")):
            raise ValueError(
                "--syscalls stops the program at every system call: it needs the ptrace "
                "backend, and -p PID or a command"
            )
        elif self.comm is not None and requested not in ("auto", "ebpf"):
            raise ValueError("--comm is watched with eBPF only")
        elif self.argv is not None and requested == "ebpf":
            raise ValueError("a launched program is watched with seccomp or ptrace, not eBPF")
        elif self.pid is not None and requested == "seccomp":
            raise ValueError(
                "seccomp can watch only a program redhand launches (a filter cannot be removed "
                "from a running process): use eBPF or ptrace with -p"
            )

    def _make_backend(self, guard: Guard) -> BpfBackend | PtraceBackend:
        from redhand.capture.tracer import Mode, PtraceBackend

        event = self.event
        requested = self._requested_backend
        if isinstance(event, (SignalEvent, CrashEvent)):
            return PtraceBackend(
                event,
                Mode.SYSCALL if self.syscall_history else Mode.SIGNALS,
                guard,
                skip=self.skip,
                argv=self.argv,
                pid=self.pid,
                follow=self.follow,
                # A crash guard must never take the program down with it.
                exit_kill=not isinstance(event, CrashEvent),
                history=self.syscall_history or 0,
            )
        if self.syscall_history:
            return PtraceBackend(
                event,
                Mode.SYSCALL,
                guard,
                skip=self.skip,
                argv=self.argv,
                pid=self.pid,
                follow=self.follow,
                history=self.syscall_history,
            )
        if self.argv is not None:
            mode = Mode.SYSCALL if requested == "ptrace" else Mode.SECCOMP
            return PtraceBackend(
                event, mode, guard, skip=self.skip, argv=self.argv, follow=self.follow
            )
        if requested in ("auto", "ebpf"):
            from redhand.capture.bpf import BpfError
            from redhand.capture.bpfwatch import BpfBackend

            backend = BpfBackend(event, guard, pid=self.pid, comm=self.comm, skip=self.skip)
            try:
                backend.start()
            except BpfError as error:
                backend.close()
                if requested == "ebpf" or self.comm is not None:
                    raise
                self.notes.append(f"eBPF cannot be used ({error.message}): using ptrace")
                log.info("eBPF unavailable: %s", error)
            else:
                self.notes.extend(backend.notes)
                return backend
        return PtraceBackend(event, Mode.SYSCALL, guard, skip=self.skip, pid=self.pid)

    # -- running --------------------------------------------------------------------

    def __iter__(self) -> Iterator[Caught]:
        self._install_handlers()
        try:
            self._start()
            if self.on_start is not None:
                self.on_start(self)
            yield from self._loop()
        finally:
            self.close()
            self._restore_handlers()

    def _start(self) -> None:
        from redhand.capture.tracer import PtraceBackend

        if self.pid is not None:
            from redhand.proc.checks import check_process

            check_process(self.pid)
        self._guard = Guard()
        backend = self._make_backend(self._guard)
        self._backend = backend
        if isinstance(backend, PtraceBackend):
            backend.keep_ignored = frozenset(
                signo
                for signo, handler in self._previous_handlers.items()
                if handler is signal.SIG_IGN
            )
            backend.start()
        self.backend_name = backend.name
        self.backend_description = backend.description

    def _loop(self) -> Iterator[Caught]:
        from redhand.capture.tracer import PtraceBackend

        backend = self._backend
        assert backend is not None
        deadline = time.monotonic() + self.timeout if self.timeout is not None else None
        while self.caught < self.count:
            hits, self._pending_hits = self._pending_hits or self._wait(backend, deadline), None
            if hits is None:
                self.ended = True
                break
            if not hits:
                if self._signalled is not None:
                    if self._pass_on_signal(backend):
                        continue
                    raise self._interrupted()
                self.timed_out = True
                yield from self._after_timeout(backend)
                break
            self.caught += 1
            caught, snapshot, held = self._act(backend, hits)
            self._complete(backend, caught, snapshot, held)
            yield caught
            if self._signalled is not None and not self._pass_on_signal(backend):
                raise self._interrupted()
            if not caught.resumed:
                break
        launched = isinstance(backend, PtraceBackend) and self.argv is not None
        if launched and not self.ended and not self.timed_out:
            # A launched program cannot run on untraced: trace on quietly until it ends.
            # (At the timeout it is killed, as coreutils' timeout does.)
            assert isinstance(backend, PtraceBackend)
            self._run_on(backend)

    @contextlib.contextmanager
    def _ticking(self, interval: float = _TICK, *, enabled: bool = True) -> Iterator[None]:
        """An interval timer while a ptrace backend blocks in waitpid: each tick interrupts
        it, so that a deadline or a signal is noticed (main thread only: the handlers)."""
        ticking = enabled and self._can_handle_signals()
        if ticking:
            signal.setitimer(signal.ITIMER_REAL, interval, interval)
        try:
            yield
        finally:
            if ticking:
                signal.setitimer(signal.ITIMER_REAL, 0)

    def _wait(
        self, backend: BpfBackend | PtraceBackend, deadline: float | None
    ) -> list[Hit] | None:
        from redhand.capture.tracer import PtraceBackend

        with self._ticking(enabled=isinstance(backend, PtraceBackend)):
            return backend.wait(deadline, self._should_stop)

    def _run_on(self, backend: PtraceBackend) -> None:
        with self._ticking():
            while backend.processes:
                backend.run_on(self._should_stop)
                if self._signalled is not None and not self._pass_on_signal(backend):
                    break
        self.ended = not backend.processes

    def _pass_on_signal(self, backend: BpfBackend | PtraceBackend) -> bool:
        """A launched program gets the first SIGTERM/SIGHUP (a first SIGINT is left to the
        terminal, which sends it to the program too); True to wait on."""
        from redhand.capture.tracer import PtraceBackend

        signo = self._signalled
        self._signalled = None
        if signo is None:
            return True
        if isinstance(backend, PtraceBackend) and self.argv is not None and not self._forwarded:
            self._forwarded = True
            if signo != signal.SIGINT:  # a Ctrl-C reaches the program from the terminal itself
                backend.forward(signo)
            return True
        self._signalled = signo
        return False

    def _interrupted(self) -> Interrupted:
        signo = self._signalled or signal.SIGINT
        return Interrupted(
            f"stopped by {signal.Signals(signo).name}; every process watched runs on",
            exit_code=128 + signo,
        )

    def _should_stop(self) -> bool:
        return self._signalled is not None

    # -- acting -------------------------------------------------------------------------

    def _after_timeout(self, backend: BpfBackend | PtraceBackend) -> Iterator[Caught]:
        """What a timeout does besides ending the watch (redhand run: a report, a kill)."""
        return iter(())

    def _act(
        self,
        backend: BpfBackend | PtraceBackend,
        hits: list[Hit],
        *,
        running: bool = False,
        kind: str = "event",
    ) -> tuple[Caught, Snapshot | None, Held]:
        """Hold the process, run the actions, let it go; the stacks are unwound later.

        ``running``: no thread of the process is in a stop (a ptrace backend's timeout).
        """
        from redhand.capture.tracer import PtraceBackend

        if isinstance(backend, PtraceBackend):
            held = backend.hold(hits, self._should_stop, running=running)
        else:
            held = backend.hold(hits, self._should_stop)
        paused_from = time.perf_counter_ns()
        results: list[ActionResult] = []
        snapshot: Snapshot | None = None
        resume = True
        final = any(action.kind in _FINAL for action in self.actions)
        last = final or self.caught >= self.count
        if last and not isinstance(backend, PtraceBackend):
            backend.detach()  # no later call may stop the process once it is let go
        try:
            for index, action in enumerate(self.actions):
                try:
                    if action.kind is ActionKind.STACK:
                        snapshot, result = self._stack(held, action)
                    elif action.kind is ActionKind.GCORE:
                        # The last action, with eBPF: the process may run on as soon as
                        # gcore's copy of it exists, while the core is written.
                        early = index == len(self.actions) - 1 and not isinstance(
                            backend, PtraceBackend
                        )
                        result = self._gcore(backend, held, action, early=early)
                    else:
                        result = self._do(backend, held, action)
                except RedhandError as error:
                    result = ActionResult(action, False, str(error))
                results.append(result)
                if action.kind in (ActionKind.STOP, ActionKind.KILL):
                    resume = False
            if last and isinstance(backend, PtraceBackend):
                backend.acting = False
            caught = Caught(
                number=self.caught,
                hit=held.hit,
                also=held.also,
                backend=backend.name,
                stopped_ns=held.stopped_ns,
                paused_ns=0,
                actions=results,
                resumed=resume and not final,
                kind=kind,
                warnings=_late(held),
            )
            if self.syscall_history and isinstance(backend, PtraceBackend):
                caught.syscalls = backend.recent_calls(held.hit.tid)
            signo = held.hit.signal
            caught.fatal = isinstance(self.event, CrashEvent) or (
                signo is not None and will_kill(held.pid, signo)
            )
            if self.analyse_while_held or caught.fatal:
                # The process is about to die: its memory is read while it is whole.
                self._complete(backend, caught, snapshot, held, serve=False)
                snapshot = None
        finally:
            let_go = backend.release(held, resume=resume)
        caught.paused_ns = let_go - paused_from
        return caught, snapshot, held

    def _complete(
        self,
        backend: BpfBackend | PtraceBackend,
        caught: Caught,
        snapshot: Snapshot | None,
        held: Held,
        *,
        serve: bool = True,
    ) -> None:
        """Unwind the stacks (and run the ``prepare`` hook) while the backend runs on.

        Without ``serve``, in this thread (the process is held meanwhile).  Nothing
        to do once done (no snapshot, no hook left).

        A ptrace backend is the tracer of the program: every stop of it (a watched
        call, a signal, redhand's own SIGCONT) waits until the tracer thread looks.
        So the slow work (modules, unwinding, symbols, the caller's rendering) runs
        in a thread of its own while this one keeps answering the program's stops;
        a hit meanwhile waits, stopped, for the next round.
        """
        from redhand.capture.tracer import PtraceBackend

        failure: list[BaseException] = []

        def work() -> None:
            try:
                if snapshot is not None:
                    caught.target = self._target(snapshot, held, fatal=caught.fatal)
                    if self.analyse_while_held:  # for a caller without a prepare hook
                        for thread in caught.target.threads:
                            thread.backtrace()
                        _crash = caught.target.crash
                if self.prepare is not None:
                    self.prepare(caught)
            except BaseException as error:  # handed to the caller
                failure.append(error)

        if snapshot is None and (self.prepare is None or caught.prepared):
            return
        caught.prepared = True
        if not serve or not isinstance(backend, PtraceBackend) or not self._can_handle_signals():
            work()
        else:
            self._serve_while(backend, work)
        if failure:
            raise failure[0]

    def _serve_while(self, backend: PtraceBackend, work: Callable[[], None]) -> None:
        def masked() -> None:
            # The ticks and the signals redhand takes must reach this thread, the tracer.
            signal.pthread_sigmask(signal.SIG_BLOCK, _SERVED_SIGNALS)
            work()

        worker = threading.Thread(target=masked, name="redhand-report", daemon=True)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(_SERVE_SWITCH)
        try:
            with self._ticking(_SERVE_TICK):
                worker.start()
                while worker.is_alive():
                    if self._pending_hits is not None or not backend.processes:
                        worker.join(_SERVE_TICK)
                        continue
                    hits = backend.wait(None, lambda: not worker.is_alive() or self._should_stop())
                    if hits is None:
                        continue
                    if hits:
                        self._pending_hits = hits  # acted on in the next round
                    elif self._should_stop():
                        worker.join()
        finally:
            sys.setswitchinterval(switch)
        worker.join()

    def _stack(self, held: Held, action: Action) -> tuple[Snapshot, ActionResult]:
        from redhand.proc.freeze import freeze

        snapshot = freeze(held.pid, stack_bytes=self.stack_bytes)
        return snapshot, ActionResult(
            action,
            True,
            f"stacks of {len(snapshot.threads)} thread(s) copied "
            f"in {snapshot.frozen_ns / 1e6:.2f} ms",
        )

    def _target(self, snapshot: Snapshot, held: Held, *, fatal: bool) -> Target:
        from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS
        from redhand.target.live import target_from_snapshot

        dirs = tuple(dict.fromkeys((*(self.debug_dirs or ()), *DEFAULT_DEBUG_DIRS)))
        target = target_from_snapshot(snapshot, debug_dirs=dirs, exe=self.exe)
        target.source_lines = self.source
        target.inline = self.inline
        first = held.hit.tid
        others = {hit.tid for hit in held.also}
        target.threads.sort(key=lambda t: (t.tid != first, t.tid not in others))
        if fatal and held.hit.siginfo is not None:
            # Caught at its fatal signal: the thread is the crashing one, as in a core.
            thread = target.threads[0]
            thread.crashed = True
            thread.signal = held.hit.signal
            thread.siginfo = held.hit.siginfo
        return target

    def _gcore(
        self, backend: BpfBackend | PtraceBackend, held: Held, action: Action, *, early: bool
    ) -> ActionResult:
        from redhand.capture.bpfwatch import BpfBackend
        from redhand.capture.gcore import gcore

        path = self._core_path(action.argument, held.pid, held.hit.tid)
        let_go = None
        if early and isinstance(backend, BpfBackend):
            let_go = lambda: backend.let_go(held)  # noqa: E731
        result = gcore(
            held.pid,
            path,
            compression="zstd" if path.endswith(".zst") else None,
            first_thread=held.hit.tid,
            on_snapshot=let_go,
        )
        summary = f"core written to {result.path} ({result.mode} mode"
        if held.let_go_ns is not None:
            summary += ", the process ran on once the copy was made"
        return ActionResult(action, True, summary + ")", path=result.path, gcore=result)

    def _do(self, backend: BpfBackend | PtraceBackend, held: Held, action: Action) -> ActionResult:
        pid, tid = held.pid, held.hit.tid
        if action.kind is ActionKind.EXEC:
            assert action.argument is not None
            return _run_command(action, action.argument, pid, tid, self._should_stop)
        if action.kind is ActionKind.ABORT:
            backend.abort(held)
            return ActionResult(
                action, True, f"SIGABRT sent to thread {tid}: the kernel writes its core"
            )
        if action.kind is ActionKind.KILL:
            os.kill(pid, signal.SIGKILL)
            return ActionResult(action, True, f"process {pid} killed (SIGKILL)")
        return ActionResult(
            action,
            True,
            f"process {pid} left stopped and untraced: attach with 'gdb -p {pid}', "
            f"resume with 'kill -CONT {pid}'",
        )

    def _core_path(self, argument: str | None, pid: int, tid: int) -> str:
        if argument is None:
            return f"core.{pid}" if self.count == 1 else f"core.{pid}.{self.caught}"
        try:
            return argument.format(pid=pid, tid=tid, n=self.caught)
        except (KeyError, IndexError, ValueError):
            return argument

    # -- signals -------------------------------------------------------------------

    def _can_handle_signals(self) -> bool:
        return threading.current_thread() is threading.main_thread()

    def _install_handlers(self) -> None:
        if not self._can_handle_signals():
            return

        def note(signo: int, _frame: object) -> None:
            self._signalled = signo

        for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous_handlers[signo] = signal.signal(signo, note)
        self._previous_handlers[signal.SIGALRM] = signal.signal(
            signal.SIGALRM, lambda _signo, _frame: None
        )

    def _restore_handlers(self) -> None:
        for signo, handler in self._previous_handlers.items():
            signal.signal(signo, handler)  # type: ignore[arg-type]
        self._previous_handlers.clear()

    # -- ending -------------------------------------------------------------------

    @property
    def exit_status(self) -> int | None:
        """A launched program's wait status (os.waitstatus_to_exitcode reads it)."""
        backend = self._backend or self._closed_backend
        return backend.exit_status if backend is not None else None

    @property
    def exec_error(self) -> str | None:
        """Why a launched program could not be started, when it could not."""
        from redhand.capture.tracer import PtraceBackend

        backend = self._backend or self._closed_backend
        if isinstance(backend, PtraceBackend) and backend.exec_error:
            _errno, _space, reason = backend.exec_error.decode(errors="replace").partition(" ")
            return reason
        return None

    def close(self) -> None:
        """Detach everything, resume anything held; idempotent."""
        backend, self._backend = self._backend, None
        try:
            if backend is not None:
                backend.close()
                self._closed_backend = backend
        finally:
            if self._guard is not None:
                self._guard.close()
                self._guard = None

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._restore_handlers()


def watch(spec: str, **options: object) -> Watch:
    """Watch for the event ``spec`` (``'close fails EBADF'``); iterate for the hits.

    One of ``pid``, ``comm`` or ``argv`` says what to watch; ``then`` the
    actions (default ``("stack",)``); ``count`` how many hits to act on
    (then the watch ends), ``skip`` how many to let pass first, ``timeout``
    seconds to wait in all.  ``syscalls=N`` keeps each thread's last N system
    calls (``Caught.syscalls``: the ptrace backend, stopped at every call);
    ``exe`` is an unpacked copy of a packed program, matched byte for byte to
    the code it unpacked (see :mod:`redhand.target.unpacked`).  See
    :class:`Watch` for the rest.
    """
    return Watch(spec, **options)  # type: ignore[arg-type]


def _run_command(
    action: Action, command: str, pid: int, tid: int, should_stop: Callable[[], bool]
) -> ActionResult:
    """Run ``command`` ({pid}, {tid} replaced) while the process is stopped; a signal to
    redhand ends it (SIGTERM, then SIGKILL) so that the process is resumed at once."""
    text = command.replace("{pid}", str(pid)).replace("{tid}", str(tid))
    try:
        argv = shlex.split(text)
    except ValueError as error:
        return ActionResult(action, False, f"cannot parse {text!r}: {error}")
    try:
        child = subprocess.Popen(argv)
    except FileNotFoundError:
        return ActionResult(action, False, f"{argv[0]}: command not found")
    except OSError as error:
        return ActionResult(action, False, f"{text}: {error.strerror}")
    deadline = time.monotonic() + _EXEC_TIMEOUT
    why = None
    while True:
        try:
            code = child.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        if should_stop():
            why = "redhand was interrupted"
        elif time.monotonic() > deadline:
            why = f"it ran over {_EXEC_TIMEOUT:.0f} s"
        if why is not None:
            child.terminate()
            try:
                child.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return ActionResult(action, False, f"{text} ended early: {why}")
    return ActionResult(action, code == 0, f"{text} exited with {code}", exit_code=code)
