"""The ptrace backends of ``redhand watch``: a launched program under a seccomp filter,
a running one stopped at every system call, or at signals only.

Three modes, one state machine:

- ``seccomp`` (a program redhand launches): the child is seized before it
  installs a classic-BPF filter that returns SECCOMP_RET_TRACE for the
  watched calls only, then execs.  The kernel stops it at the entry of a
  watched call (PTRACE_EVENT_SECCOMP); one PTRACE_SYSCALL from there reaches
  the exit stop, where PTRACE_GET_SYSCALL_INFO gives the result.  Every other
  call runs at full speed.  Forks, clones and execs are followed, and
  PTRACE_O_EXITKILL kills the program if redhand dies: a filter that returns
  RET_TRACE makes the watched calls fail with ENOSYS when nobody traces, so
  the program must never run on without redhand.
- ``syscall`` (a running process when eBPF is not allowed): PTRACE_SYSCALL
  stops every thread at the entry and exit of every call.  Correct, slow.
- ``signals`` (a ``signal`` event): seized threads stop only at signal
  delivery, which costs nothing while no signal comes.

When a hit comes the process is brought to a group-stop (a SIGSTOP to the
thread that hit, which therefore runs no user instruction after the call)
and detached, so that the capture (redhand's freeze, gcore, a command such
as gdb) sees an ordinary stopped process; then every thread is seized again
and the process gets SIGCONT.  Hits in other threads meanwhile are reported
with the first, never nested.

All waiting is done by the thread that seized (ptrace requests are accepted
from the tracer thread only): the caller's thread.  A blocking waitpid is
interrupted by the caller's signal handlers (an interval timer ticks while
waiting) so that a deadline and a Ctrl-C are noticed.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import enum
import errno as errno_module
import os
import shutil
import signal
import struct
import time
from dataclasses import dataclass, field

from redhand.capture.events import CrashEvent, SignalEvent, SyscallEvent, signed64
from redhand.capture.hits import UNFINISHED, Hit, SyscallCall
from redhand.errors import FileNotFound, PermissionDenied, ProcessError, ProcessExited
from redhand.proc import procfs, ptrace
from redhand.proc.checks import check_process
from redhand.target.model import USER_REGS_FIELDS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redhand.capture.guard import Guard

__all__ = ["Mode", "PtraceBackend", "seccomp_filter"]

_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
_SYSCALL_TRAP = signal.SIGTRAP | 0x80
_FORK_EVENTS = (ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_VFORK, ptrace.PTRACE_EVENT_CLONE)
_ORIG_RAX = USER_REGS_FIELDS.index("orig_rax")
_ARGUMENT_REGISTERS = tuple(
    USER_REGS_FIELDS.index(r) for r in ("rdi", "rsi", "rdx", "r10", "r8", "r9")
)
_SYSCALL_INFO_SIZE = 88
_RVAL = struct.Struct("<q")
_OP_AND_RVAL = struct.Struct("<B23xq")  # ptrace_syscall_info: op, then the exit's rval at 24
_SETTLE_SECONDS = 2.0
_STOP_WAIT_SECONDS = 5.0  # for every thread's stop at a hit (as the eBPF backend waits)
# Signals redhand itself sends in a hand-off (SIGSTOP, SIGCONT), and the job-control stops.
_BOOKKEEPING_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGCONT, *_STOP_SIGNALS})

# seccomp (linux/seccomp.h, linux/audit.h, linux/filter.h)
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_TRACE = 0x7FF00000
_AUDIT_ARCH_X86_64 = 0xC000003E
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
_X32_BIT = 0x40000000


class Mode(enum.Enum):
    SECCOMP = "seccomp"
    SYSCALL = "ptrace-syscall"
    SIGNALS = "ptrace-signals"


def seccomp_filter(numbers: Sequence[int]) -> bytes:
    """A classic-BPF seccomp program: RET_TRACE for ``numbers`` (every call when empty).

    Calls of another architecture (int 0x80, x32) are allowed: the tracer
    decodes x86_64 calls only.  5 instructions, plus one per watched call.
    """

    def insn(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("<HBBI", code, jt, jf, k)

    body = [insn(_BPF_LD_W_ABS, 0, 0, 4)]  # seccomp_data.arch
    count = len(numbers)
    if count:
        body.append(insn(_BPF_JEQ_K, 0, count + 1, _AUDIT_ARCH_X86_64))  # else: allow
        body.append(insn(_BPF_LD_W_ABS, 0, 0, 0))  # seccomp_data.nr
        for index, nr in enumerate(numbers):
            body.append(insn(_BPF_JEQ_K, count - index, 0, nr))  # to the RET_TRACE
        body.append(insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
    else:
        body.append(insn(_BPF_JEQ_K, 0, 3, _AUDIT_ARCH_X86_64))
        body.append(insn(_BPF_LD_W_ABS, 0, 0, 0))
        body.append(insn(_BPF_JGE_K, 1, 0, _X32_BIT))
        body.append(insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_TRACE))
        body.append(insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW))
        return b"".join(body)
    body.append(insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_TRACE))
    return b"".join(body)


def _restore_signals(keep_ignored: frozenset[int]) -> None:
    """In the launched child, before exec: the signal state the program would have had.

    Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored
    across exec: a program writing to a closed pipe would get EPIPE instead of
    dying of SIGPIPE.  redhand's own handlers are reset by exec; the signals
    its caller ignored stay ignored; nothing stays blocked.
    """
    for default in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(default, signal.SIG_DFL)
    for ignored in keep_ignored:
        signal.signal(ignored, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _install_filter(program: bytes) -> None:
    """In the launched child, before exec: no new privileges, then the filter."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program)
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _state(pid: int, tid: int) -> str:
    """A thread's state as /proc says it (D: uninterruptible), or 'gone'."""
    try:
        return procfs.read_stat(pid, tid).state
    except ProcessError:
        return "gone"


@dataclass
class Held:
    """A process brought to a group-stop and detached, for the actions."""

    pid: int
    hit: Hit
    also: list[Hit]
    stopped_ns: int  # from the hit's stop to the whole process stopped
    launched: bool
    stashed: dict[int, bytes] = field(default_factory=dict)  # tid -> siginfo to deliver again
    let_go_ns: int | None = None  # when it was let go before the actions ended (perf_counter)
    late: dict[int, str] = field(default_factory=dict)  # tid -> its state: it did not stop


@dataclass
class _Process:
    pid: int
    tids: set[int]
    launched: bool


class PtraceBackend:
    """One ptrace session: launch or attach, wait for hits, hold, release, end."""

    def __init__(
        self,
        event: SyscallEvent | SignalEvent | CrashEvent,
        mode: Mode,
        guard: Guard,
        *,
        skip: int = 0,
        argv: Sequence[str] | None = None,
        pid: int | None = None,
        follow: bool = True,
        exit_kill: bool = True,
        history: int = 0,
    ) -> None:
        self.event: SyscallEvent | SignalEvent | CrashEvent = event
        self.mode = mode
        self.guard = guard
        self.skip = skip
        self.argv = list(argv) if argv is not None else None
        self.attach_pid = pid
        self.follow = follow
        self.name = mode.value
        self.acting = True  # False once the hits asked for were seen: run on, quietly
        self.launched_pid: int | None = None
        self.exit_status: int | None = None  # the launched program's wait status
        self.matches = 0
        self.processes: dict[int, _Process] = {}
        self.tgid_of: dict[int, int] = {}
        self.pending: collections.deque[tuple[int, int]] = collections.deque()
        self.in_call: dict[int, int] = {}  # syscall mode: tid -> nr of the call it is in
        self.expect_sigstop: set[int] = set()
        self.expect_sigcont: dict[int, int] = {}
        self.restore: dict[int, bytes] = {}  # tid -> siginfo of a signal delivered again
        self.own_signal: dict[int, int] = {}  # tid -> a signal redhand sent it (abort)
        self.exec_error: bytes = b""
        # --syscalls: each thread's last calls (None: not recorded; needs Mode.SYSCALL).
        # --syscalls: each thread's last ``history`` calls (Mode.SYSCALL), by tid.
        self.history: dict[int, collections.deque[SyscallCall]] | None = {} if history else None
        self.history_size = history
        self._entering: dict[int, tuple[int, tuple[int, ...]]] = {}
        # Signals redhand's caller ignored (nohup): a launched program ignores them too.
        self.keep_ignored: frozenset[int] = frozenset()
        self._error_pipe: int | None = None
        self._info = ctypes.create_string_buffer(_SYSCALL_INFO_SIZE)
        self._info_address = ctypes.addressof(self._info)
        self._status = ctypes.c_int()
        self._status_ref = ctypes.byref(self._status)
        self._numbers = frozenset(event.numbers) if isinstance(event, SyscallEvent) else frozenset()
        self._closed = False
        options = ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_TRACECLONE
        if self.argv is not None:
            if exit_kill or mode is Mode.SECCOMP:  # a filtered program never runs untraced
                options |= ptrace.PTRACE_O_EXITKILL
            if follow:
                options |= (
                    ptrace.PTRACE_O_TRACEFORK
                    | ptrace.PTRACE_O_TRACEVFORK
                    | ptrace.PTRACE_O_TRACEEXEC
                )
            if mode is Mode.SECCOMP:
                options |= ptrace.PTRACE_O_TRACESECCOMP
        self.options = options

    @property
    def description(self) -> str:
        if self.mode is Mode.SECCOMP:
            return "seccomp filter + ptrace (unwatched system calls run at full speed)"
        if self.mode is Mode.SYSCALL:
            return (
                "ptrace at every system call: a program that makes many system calls runs "
                "100-250 times slower while watched"
            )
        return "ptrace, stopping at signals only"

    # -- starting --------------------------------------------------------------------

    def start(self) -> None:
        if self.argv is not None:
            self._launch(self.argv)
        else:
            assert self.attach_pid is not None
            self._attach(self.attach_pid)

    def _launch(self, argv: list[str]) -> None:
        program = argv[0]
        path = program if "/" in program else shutil.which(program)
        if path is None or not os.path.exists(path):
            raise FileNotFound(program, f"{program}: command not found")
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise PermissionDenied(0, f"{program}: not an executable file")
        seccomp = seccomp_filter(sorted(self._numbers)) if self.mode is Mode.SECCOMP else None
        go_read, go_write = os.pipe()
        error_read, error_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child, until exec)
            try:
                os.close(go_write)
                os.close(error_read)
                if os.read(go_read, 1) != b"g":
                    os._exit(127)
                _restore_signals(self.keep_ignored)
                if seccomp is not None:
                    _install_filter(seccomp)
                os.execv(path, argv)
            except OSError as error:
                try:
                    os.write(error_write, f"{error.errno or 0} {error.strerror}".encode())
                finally:
                    os._exit(126)
            finally:
                os._exit(127)
        os.close(go_read)
        os.close(error_write)
        self._error_pipe = error_read
        try:
            ptrace.seize(pid, self.options)
        except BaseException:
            os.close(go_write)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        self.launched_pid = pid
        self.processes[pid] = _Process(pid, {pid}, launched=True)
        self.tgid_of[pid] = pid
        os.write(go_write, b"g")
        os.close(go_write)

    def _attach(self, pid: int) -> None:
        check_process(pid)
        process = _Process(pid, set(), launched=False)
        self.processes[pid] = process
        self._seize_threads(pid, process.tids, strict=True)
        if not process.tids:
            raise ProcessExited(pid, f"process {pid} exited before it could be watched")
        if self.mode is Mode.SYSCALL:
            # Stop each thread once, then restart it with PTRACE_SYSCALL.
            for tid in sorted(process.tids):
                try:
                    ptrace.interrupt(tid)
                except ProcessError:
                    continue
            for tid in sorted(process.tids):
                if self._wait_for_stop(tid):
                    self._restart(tid)

    def _seize_threads(
        self, pid: int, seized: set[int], *, strict: bool, wait: bool = False
    ) -> None:
        """Seize every thread of ``pid`` not in ``seized`` (added there), listing the
        threads again until no new one appears; ``wait`` for each one's stop.

        ``strict``: a thread that cannot be seized (no permission) is an error.
        """
        for _round in range(64):
            try:
                tids = procfs.list_tids(pid)
            except ProcessError:
                if strict:
                    raise
                tids = []
            new = [tid for tid in tids if tid not in seized]
            if not new:
                return
            for tid in new:
                try:
                    ptrace.seize(tid, self.options)
                except ProcessError:
                    if strict and procfs.has_process(tid):
                        raise
                    continue
                seized.add(tid)
                self.tgid_of[tid] = pid
                if wait and not self._wait_for_stop(tid):
                    seized.discard(tid)

    def _wait_for_stop(self, tid: int) -> bool:
        """Wait for a seized thread's PTRACE_EVENT_STOP; False if it exited instead."""
        while True:
            try:
                got, status = ptrace.waitpid(tid, ptrace.WALL)
            except ProcessError:
                self._forget(tid)
                return False
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                self._gone(got, status)
                return False
            if ptrace.stop_event(status) == ptrace.PTRACE_EVENT_STOP:
                return True
            # Some other stop came first (a signal): keep it for the main loop.
            self.pending.append((got, status))
            return True

    # -- waiting -------------------------------------------------------------------

    def wait(self, deadline: float | None, should_stop: Callable[[], bool]) -> list[Hit] | None:
        """The next hit; [] at the deadline or when asked to stop; None when nothing is left."""
        waitpid = ptrace._blocking_waitpid
        status = self._status
        status_ref = self._status_ref
        ptrace_call = ptrace.raw_ptrace
        seccomp_status = (signal.SIGTRAP | (ptrace.PTRACE_EVENT_SECCOMP << 8)) << 8 | 0x7F
        syscall_request = ptrace.PTRACE_SYSCALL
        # The other hot stop: a watched call's return whose result is not one asked for.
        exit_status = _SYSCALL_TRAP << 8 | 0x7F
        event = self.event
        quick = self.mode is Mode.SECCOMP and isinstance(event, SyscallEvent) and self.acting
        result_matches = event.result_matches if isinstance(event, SyscallEvent) else None
        info, info_address, unpack_exit = self._info, self._info_address, _OP_AND_RVAL.unpack_from
        info_request, cont_request = ptrace.PTRACE_GET_SYSCALL_INFO, ptrace.PTRACE_CONT
        exit_op = ptrace.PTRACE_SYSCALL_INFO_EXIT
        quick_signals = self.mode is Mode.SIGNALS
        tgid_of, wanted = self.tgid_of, self._wanted
        while True:
            if self.pending:
                tid, value = self.pending.popleft()
            else:
                if not self.processes:
                    return None
                if should_stop() or (deadline is not None and time.monotonic() >= deadline):
                    return []
                tid = waitpid(-1, status_ref, ptrace.WALL)
                if tid == -1:
                    err = ptrace.get_errno()
                    if err == errno_module.EINTR:
                        continue
                    if err == errno_module.ECHILD:
                        self.processes.clear()
                        return None
                    raise ptrace.errno_error(err, -1, "waitpid")
                value = status.value
                if value == seccomp_status:  # the hot path: on to the exit stop
                    ptrace_call(syscall_request, tid, None, None)
                    continue
                if (value & 0xFFFF00FF) == 0x7F and quick_signals:
                    # A signal-delivery stop (no event) of a signal nobody waits for: pass it.
                    sig = (value >> 8) & 0xFF
                    tgid = tgid_of.get(tid)
                    if (
                        tgid is not None
                        and sig != _SYSCALL_TRAP
                        and sig not in _BOOKKEEPING_SIGNALS
                        and not self.restore
                        and not self.own_signal
                        and not (self.acting and wanted(tgid, sig))
                    ):
                        ptrace_call(cont_request, tid, None, sig)
                        continue
                if (
                    quick
                    and value == exit_status
                    and ptrace_call(info_request, tid, _SYSCALL_INFO_SIZE, info_address) != -1
                ):
                    op, result = unpack_exit(info)
                    if op == exit_op and not result_matches(result):  # type: ignore[misc]
                        ptrace_call(cont_request, tid, None, None)
                        continue
            hit = self._dispatch(tid, value)
            if hit is not None:
                return [hit]

    def _dispatch(self, tid: int, status: int) -> Hit | None:
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._gone(tid, status)
            return None
        if not os.WIFSTOPPED(status):
            return None
        sig = os.WSTOPSIG(status)
        event = ptrace.stop_event(status)
        if tid not in self.tgid_of:
            self._adopt(tid)
        if sig == _SYSCALL_TRAP:
            return self._syscall_stop(tid)
        if event == ptrace.PTRACE_EVENT_SECCOMP:
            self._ptrace(ptrace.PTRACE_SYSCALL, tid)
            return None
        if event in _FORK_EVENTS:
            with contextlib.suppress(ProcessError):
                self._adopt(
                    ptrace.get_event_message(tid), parent=tid, thread=event == _FORK_EVENTS[2]
                )
            self._restart(tid)
            return None
        if event == ptrace.PTRACE_EVENT_EXEC:
            self._exec(tid)
            self._restart(tid)
            return None
        if event == ptrace.PTRACE_EVENT_STOP:
            if sig in _STOP_SIGNALS:
                self._ptrace(ptrace.PTRACE_LISTEN, tid)  # a job-control stop: stay stopped
            else:
                self._restart(tid)  # a new thread's first stop, or an interrupt
            return None
        if event:
            self._restart(tid)
            return None
        return self._signal_stop(tid, sig)

    def _record(self, tid: int, op: int, raw: bytes) -> None:
        """``--syscalls``: keep the thread's last calls, each once it has returned."""
        assert self.history is not None
        if op == ptrace.PTRACE_SYSCALL_INFO_ENTRY:
            nr, *arguments = struct.unpack_from("<7Q", raw, 24)
            self._entering[tid] = (nr, tuple(arguments))
        elif op == ptrace.PTRACE_SYSCALL_INFO_EXIT:
            entered = self._entering.pop(tid, None)
            if entered is not None:
                calls = self.history.get(tid)
                if calls is None:
                    calls = self.history[tid] = collections.deque(maxlen=self.history_size)
                value = _RVAL.unpack_from(raw, 24)[0]
                calls.append(SyscallCall(entered[0], entered[1], value))

    def recent_calls(self, tid: int) -> list[SyscallCall]:
        """The thread's last system calls (with ``--syscalls``), oldest first; the one it
        is in, if any, last, without a result."""
        calls = list(self.history.get(tid, ())) if self.history is not None else []
        entered = self._entering.get(tid)
        if entered is not None:
            calls.append(SyscallCall(entered[0], entered[1], UNFINISHED))
        return calls

    def _syscall_stop(self, tid: int) -> Hit | None:
        if (
            ptrace.raw_ptrace(
                ptrace.PTRACE_GET_SYSCALL_INFO, tid, _SYSCALL_INFO_SIZE, self._info_address
            )
            == -1
        ):
            self._forget_if_gone(tid)
            return None
        raw = self._info.raw
        op = raw[0]
        event = self.event
        if self.history is not None:
            self._record(tid, op, raw)
        if op == ptrace.PTRACE_SYSCALL_INFO_ENTRY:
            nr = struct.unpack_from("<Q", raw, 24)[0]
            if not self._numbers or nr in self._numbers:
                self.in_call[tid] = nr
            self._restart(tid)
            return None
        if op != ptrace.PTRACE_SYSCALL_INFO_EXIT or not isinstance(event, SyscallEvent):
            self._restart(tid)
            return None
        if self.mode is Mode.SYSCALL and self.in_call.pop(tid, None) is None:
            self._restart(tid)
            return None
        value = _RVAL.unpack_from(raw, 24)[0]
        if not self.acting or not event.result_matches(value):
            self._restart(tid)
            return None
        call = self._matching_call(tid, value)
        if call is None:
            self._restart(tid)
            return None
        self.matches += 1
        if self.matches <= self.skip:
            self._restart(tid)
            return None
        tgid = self.tgid_of[tid]
        return Hit(tgid, tid, _thread_name(tgid, tid), time.time(), call)

    def _matching_call(self, tid: int, value: int) -> SyscallCall | None:
        """The call at a syscall-exit stop, if it matches the event (registers give the rest)."""
        assert isinstance(self.event, SyscallEvent)
        try:
            words = ptrace.get_register_words(tid)
        except ProcessError:
            return None
        nr = words[_ORIG_RAX]
        arguments = tuple(words[index] for index in _ARGUMENT_REGISTERS)
        if not self.event.matches(nr, arguments, value):
            return None
        return SyscallCall(nr, arguments, signed64(value))

    def _signal_stop(self, tid: int, sig: int) -> Hit | None:
        tgid = self.tgid_of.get(tid, tid)
        if sig == signal.SIGSTOP and tid in self.expect_sigstop:
            self.expect_sigstop.discard(tid)
            self._ptrace(ptrace.PTRACE_CONT, tid, sig)  # delivered: the group-stop begins
            return None
        if sig == signal.SIGCONT and self.expect_sigcont.get(tgid):
            self.expect_sigcont[tgid] -= 1
            self._restart(tid)  # redhand's own SIGCONT: the program never sees it
            return None
        saved = self.restore.get(tid)
        if saved is not None and sig == int.from_bytes(saved[:4], "little"):
            del self.restore[tid]
            with contextlib.suppress(ProcessError):
                ptrace.set_siginfo(tid, saved)
            self._restart(tid, sig)
            return None
        if self.own_signal.get(tid) == sig:
            del self.own_signal[tid]
            self._restart(tid, sig)
            return None
        if self.acting and self._wanted(tgid, sig):
            try:
                info = ptrace.get_siginfo(tid)
            except ProcessError:
                self._forget_if_gone(tid)
                return None
            self.matches += 1
            if self.matches > self.skip:
                return Hit(
                    tgid, tid, _thread_name(tgid, tid), time.time(), signal=sig, siginfo=info
                )
        self._restart(tid, sig)
        return None

    def _wanted(self, tgid: int, sig: int) -> bool:
        event = self.event
        if isinstance(event, SignalEvent):
            return sig == event.signal
        return isinstance(event, CrashEvent) and event.wanted(tgid, sig)

    # -- threads and processes --------------------------------------------------------

    def _adopt(self, tid: int, *, parent: int | None = None, thread: bool | None = None) -> None:
        """Track a thread or process that appeared (its first stop may come before the event)."""
        if tid in self.tgid_of:
            return
        tgid = tid
        if thread or (thread is None and parent is None):
            try:
                tgid = int(procfs.read_status(tid).get("Tgid", tid))
            except ProcessError:
                tgid = self.tgid_of.get(parent, tid) if parent is not None else tid
        elif thread is None and parent is not None:
            tgid = self.tgid_of.get(parent, tid)
        self.tgid_of[tid] = tgid
        process = self.processes.get(tgid)
        if process is None:
            launched = any(p.launched for p in self.processes.values())
            process = self.processes[tgid] = _Process(tgid, set(), launched=launched)
        process.tids.add(tid)

    def _exec(self, tid: int) -> None:
        """A thread other than the leader that execs takes the leader's tid."""
        try:
            former = ptrace.get_event_message(tid)
        except ProcessError:
            return
        if former != tid:
            self._forget(former)
            self.tgid_of[tid] = tid
            self.processes.setdefault(tid, _Process(tid, set(), launched=True)).tids.add(tid)

    def _gone(self, tid: int, status: int) -> None:
        if tid in (self.launched_pid, self.attach_pid) and self.exit_status is None:
            self.exit_status = status
            self._read_exec_error()
        self._forget(tid)

    def _forget(self, tid: int) -> None:
        tgid = self.tgid_of.pop(tid, None)
        self.in_call.pop(tid, None)
        self.expect_sigstop.discard(tid)
        if tgid is None:
            return
        process = self.processes.get(tgid)
        if process is not None:
            process.tids.discard(tid)
            if not process.tids:
                del self.processes[tgid]
                self.guard.release(tgid)

    def _forget_if_gone(self, tid: int) -> None:
        if not os.path.exists(f"/proc/{self.tgid_of.get(tid, tid)}/task/{tid}"):
            self._forget(tid)

    def _read_exec_error(self) -> None:
        if self._error_pipe is None:
            return
        try:
            os.set_blocking(self._error_pipe, False)
            self.exec_error = os.read(self._error_pipe, 512)
        except OSError:
            pass
        os.close(self._error_pipe)
        self._error_pipe = None

    # -- restarting ------------------------------------------------------------------

    def _restart(self, tid: int, sig: int = 0) -> None:
        request = ptrace.PTRACE_SYSCALL if self.mode is Mode.SYSCALL else ptrace.PTRACE_CONT
        self._ptrace(request, tid, sig)

    def _ptrace(self, request: int, tid: int, sig: int = 0) -> None:
        # ESRCH: the thread was killed meanwhile; its exit comes through waitpid.
        if (
            ptrace.raw_ptrace(request, tid, None, sig) == -1
            and ptrace.get_errno() != errno_module.ESRCH
        ):
            raise ptrace.errno_error(ptrace.get_errno(), tid, "ptrace")

    # -- holding a process for the actions ----------------------------------------------

    def hold(
        self, hits: list[Hit], should_stop: Callable[[], bool], *, running: bool = False
    ) -> Held:
        """Bring the process of ``hits[0]`` to a group-stop and detach it.

        The thread that hit (in a ptrace stop) gets a SIGSTOP and runs no user
        code before it stops.  ``running``: no thread is in a stop (a timeout),
        the process gets the SIGSTOP.  Stops of the other processes meanwhile
        wait in ``pending``.
        """
        first = hits[0]
        pid, tid = first.pid, first.tid
        process = self.processes.get(pid)
        if process is None:
            raise ProcessExited(pid, f"process {pid} exited at the event")
        started = time.perf_counter_ns()
        held = Held(pid, first, list(hits[1:]), 0, process.launched)
        if first.siginfo is not None:
            held.stashed[tid] = first.siginfo.raw
        if running:
            self.expect_sigstop.update(process.tids)
            os.kill(pid, signal.SIGSTOP)
        else:
            self.expect_sigstop.add(tid)
            ptrace.tgkill(pid, tid, signal.SIGSTOP)
            self._ptrace(ptrace.PTRACE_CONT, tid, 0)
        stopped: set[int] = set()
        # Bounded: a thread in an uninterruptible sleep (an NFS server gone, a vfork parent)
        # stops only when it leaves it.  Polled: the stops come within microseconds.
        deadline = time.monotonic() + _STOP_WAIT_SECONDS
        pause = 0.0
        while process.tids - stopped:
            if self.pending and self.tgid_of.get(self.pending[0][0]) == pid:
                got, status = self.pending.popleft()
            else:
                got = ptrace._blocking_waitpid(-1, self._status_ref, ptrace.WALL | os.WNOHANG)
                if got == 0:
                    if time.monotonic() > deadline:
                        held.late = {tid: _state(pid, tid) for tid in process.tids - stopped}
                        break
                    time.sleep(pause)
                    pause = min(pause * 2 or 0.00005, 0.005)
                    continue
                pause = 0.0
                if got == -1:
                    err = ptrace.get_errno()
                    if err == errno_module.EINTR:
                        continue
                    raise ptrace.errno_error(err, pid, "waitpid")
                status = self._status.value
            if got not in self.tgid_of:
                self._adopt(got)
            if self.tgid_of.get(got) != pid:
                self.pending.append((got, status))
                continue
            if os.WIFSTOPPED(status) and ptrace.stop_event(status) == ptrace.PTRACE_EVENT_STOP:
                if os.WSTOPSIG(status) in _STOP_SIGNALS:
                    stopped.add(got)
                else:
                    self._restart(got)
                continue
            if os.WIFSTOPPED(status) and ptrace.stop_event(status) == 0:
                sig = os.WSTOPSIG(status)
                if sig != _SYSCALL_TRAP and sig != signal.SIGSTOP and sig != signal.SIGCONT:
                    also = self._signal_stop(got, sig)
                    if also is not None:  # another thread got the watched signal: keep it
                        held.also.append(also)
                        held.stashed[got] = also.siginfo.raw if also.siginfo else b""
                        self._ptrace(ptrace.PTRACE_CONT, got, 0)
                    continue
            also = self._dispatch(got, status)
            if also is not None:
                held.also.append(also)
                self._ptrace(ptrace.PTRACE_CONT, got, 0)
            if pid not in self.processes:
                raise ProcessExited(pid, f"process {pid} exited before it could be stopped")
        held.stopped_ns = time.perf_counter_ns() - started
        for thread in sorted(process.tids - set(held.late)):
            with contextlib.suppress(ProcessError):
                ptrace.detach(thread)
        # A late thread stays traced (PTRACE_DETACH needs a stop): the SIGCONT of the
        # release takes back its pending SIGSTOP, and it runs on, traced, when it wakes.
        self.guard.hold(pid, kill=process.launched and self.mode is Mode.SECCOMP)
        # A detached thread wakes for a moment to enter its group-stop again (in the
        # kernel: it runs no user code); a debugger the actions start wants it stopped.
        procfs.wait_all_stopped(pid, _SETTLE_SECONDS)
        return held

    def release(self, held: Held, *, resume: bool) -> int:
        """Trace the held process again and let it run (or forget it: ``resume=False``).

        Returns the time (perf_counter_ns) the process was let go.
        """
        pid = held.pid
        process = self.processes.get(pid)
        if process is None:
            return time.perf_counter_ns()
        if not resume:
            self._drop(pid)
            return time.perf_counter_ns()
        seized = {tid for tid in held.late if procfs.has_process(tid)}  # still traced
        self._seize_threads(pid, seized, strict=False, wait=True)
        process.tids = seized
        if not seized:
            self._drop(pid)
            return time.perf_counter_ns()
        for tid, raw in held.stashed.items():
            if tid in seized and raw:
                signo = int.from_bytes(raw[:4], "little")
                self.restore[tid] = raw
                ptrace.tgkill(pid, tid, signo)
        self.expect_sigcont[pid] = self.expect_sigcont.get(pid, 0) + 1
        let_go = time.perf_counter_ns()
        os.kill(pid, signal.SIGCONT)
        for tid in sorted(seized):
            self._restart(tid)
        self.guard.release(pid)
        return let_go

    def abort(self, held: Held) -> None:
        """SIGABRT to the thread that hit, delivered as soon as the process runs again."""
        self.own_signal[held.hit.tid] = signal.SIGABRT
        ptrace.tgkill(held.pid, held.hit.tid, signal.SIGABRT)

    def _drop(self, pid: int) -> None:
        process = self.processes.pop(pid, None)
        if process is not None:
            for tid in process.tids:
                self.tgid_of.pop(tid, None)
        self.guard.release(pid)

    # -- ending --------------------------------------------------------------------

    def run_on(self, should_stop: Callable[[], bool]) -> None:
        """A launched program: trace on, acting on nothing, until it and its children end."""
        self.acting = False
        while self.processes:
            if self.wait(None, should_stop) == [] and should_stop():
                return

    def forward(self, signo: int) -> None:
        """Pass a signal redhand received on to the program it launched."""
        if self.launched_pid is not None and self.launched_pid in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.launched_pid, signo)

    def close(self) -> None:
        """Detach from everything (a program under redhand's seccomp filter, which cannot
        run untraced, is killed)."""
        if self._closed:
            return
        self._closed = True
        for process in list(self.processes.values()):
            if process.launched and self.mode is Mode.SECCOMP:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                continue
            self._detach_process(process)
        if self.launched_pid is not None and self.exit_status is None and self.mode is Mode.SECCOMP:
            try:
                _pid, status = os.waitpid(self.launched_pid, 0)
                self.exit_status = status
            except ChildProcessError:
                pass
        if self._error_pipe is not None:
            os.close(self._error_pipe)
            self._error_pipe = None
        self.processes.clear()

    def _detach_process(self, process: _Process) -> None:
        held = {tid for tid, _status in self.pending if tid in process.tids}
        for tid in process.tids - held:
            with contextlib.suppress(ProcessError):
                ptrace.interrupt(tid)
        waiting = set(process.tids) - held
        deadline = time.monotonic() + 5.0
        while waiting and time.monotonic() < deadline:
            got, status = ptrace.waitpid(-1, ptrace.WALL | ptrace.WNOHANG)
            if got == 0:
                time.sleep(0.001)
                continue
            if not os.WIFSTOPPED(status):
                waiting.discard(got)
                continue
            sig = os.WSTOPSIG(status)
            delivery = ptrace.stop_event(status) == 0 and sig not in (_SYSCALL_TRAP, signal.SIGSTOP)
            saved = self.restore.get(got)
            if saved is not None and not (delivery and sig == int.from_bytes(saved[:4], "little")):
                # A watched signal redhand raised again is pending: let the thread reach its
                # delivery, where it is handed over with its sender's siginfo.
                self._ptrace(ptrace.PTRACE_CONT, got, sig if delivery else 0)
                continue
            waiting.discard(got)
            held.add(got)
            if delivery:
                self.pending.append((got, status))  # a signal to hand back at detach
        pending_signal = {
            tid: os.WSTOPSIG(status)
            for tid, status in self.pending
            if os.WIFSTOPPED(status) and ptrace.stop_event(status) == 0
        }
        for tid in held:
            sig = pending_signal.get(tid, 0)
            if sig == _SYSCALL_TRAP:
                sig = 0
            saved = self.restore.pop(tid, None)
            with contextlib.suppress(ProcessError):
                if saved is not None and sig == int.from_bytes(saved[:4], "little"):
                    ptrace.set_siginfo(tid, saved)  # a held signal, with its own sender
                ptrace.detach(tid, sig)


def _thread_name(pid: int, tid: int) -> str:
    try:
        return procfs.thread_name(pid, tid)
    except (ProcessError, OSError):
        return "?"
