"""Freeze a live process for as short a time as possible and copy what unwinding needs.

The order of work:

1. Before anything stops: the pre-checks, the threads' names and states,
   /proc/PID/maps, exe, cmdline, and a buffer for the stacks, faulted in.
2. Frozen: PTRACE_SEIZE every thread (they keep running), then
   PTRACE_INTERRUPT every one, then collect the stops; list /proc/PID/task
   again and repeat for threads that appeared, until a listing taken while
   every known thread is stopped shows nothing new (the thread count in
   /proc/PID/stat tells when no listing is needed).  Then copy registers
   (PTRACE_GETREGSET) and stacks (process_vm_readv, up to 1,024 ranges per
   call; /proc/PID/mem for a range it cannot read), and PTRACE_DETACH every
   thread.  /proc/PID/maps is read again only if a stack pointer lies in no
   known mapping (a thread that started after it was read).
3. After: turn the copied words and bytes into values.

**Never leave a target stopped.**  The frozen part runs in a thread of its own
(the tracer), which is therefore the tracer of every seized thread:

- Python delivers signals to the main thread only, so a Ctrl-C can never raise
  inside the frozen part; the caller's thread also blocks SIGINT, SIGTERM,
  SIGHUP and SIGQUIT until the capture is over, so they land after the detach
  (the tracer thread inherits that mask).
- ``try``/``finally`` detaches every thread that stopped.
- A thread that was seized but whose stop never arrived cannot be detached
  (PTRACE_DETACH needs a stopped tracee).  When the tracer thread exits, the
  kernel detaches everything it still traces (exit_ptrace), stopped or not,
  and a tracee in a ptrace stop runs again.  The same happens when redhand
  dies, even by SIGKILL.
- Waiting for stops is bounded (``stop_timeout``): a thread stuck in an
  uninterruptible sleep (state D) does not stop until its system call ends;
  it is reported without registers instead of stalling the others.

The tracer thread waits for each thread with waitid(__WALL | __WNOTHREAD |
WNOWAIT): it looks only at its own tracees and consumes nothing, so the exit
status of a target that is a child of the host program stays for the host.
It keeps the GIL through its system calls (see redhand.proc.ptrace) and runs
at nice -20 when allowed (nice is per thread on Linux, so the host's priority
is untouched): on a busy machine it waits less for a CPU while the target is
frozen.

``tids`` stops only the threads asked for: one thread's backtrace needs
nothing from the others, and the rest of the program runs on.

Blocking system calls interrupted by the freeze are restarted by the kernel,
except those Linux never restarts (epoll_wait, semop, sigtimedwait, ...: see
signal(7)), which return EINTR to the program, as with gdb or strace.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal without enum; no stubs
import _thread
import bisect
import ctypes
import errno
import mmap
import os
import time

from redhand.errors import PermissionDenied, ProcessExited, ProcessNotFound
from redhand.proc import procfs
from redhand.proc._record import Record
from redhand.proc.checks import (
    already_traced_error,
    check_process,
    has_live_thread,
    permission_error,
)
from redhand.proc.ptrace import (
    CLD_STOPPED,
    CLD_TRAPPED,
    IOV_MAX,
    NT_PRSTATUS,
    P_PID,
    PTRACE_DETACH,
    PTRACE_GETREGSET,
    PTRACE_INTERRUPT,
    PTRACE_SEIZE,
    USER_REGS_SIZE,
    USER_REGS_WORDS,
    WALL,
    WEXITED,
    WNOHANG,
    WNOTHREAD,
    WNOWAIT,
    WSTOPPED,
    ChildInfo,
    IOVec,
    LiveMemory,
    Timespec,
    errno_error,
    get_errno,
    iovecs,
    raw_nanosleep,
    raw_process_vm_readv,
    raw_ptrace,
    raw_sched_yield,
    raw_waitid,
)
from redhand.target.model import USER_REGS_FIELDS, Mapping, Registers

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

__all__ = ["Capture", "Snapshot", "ThreadSnapshot", "check_process", "freeze"]

RED_ZONE = 128  # bytes below sp a leaf function may use (x86_64 psABI)
DEFAULT_STACK_BYTES = 1 << 20
DEFAULT_STOP_TIMEOUT = 1.0
_SP_INDEX = USER_REGS_FIELDS.index("rsp")
_STACK_ESTIMATE = 8 << 10  # bytes per thread made ready before the freeze
_MAX_ROUNDS = 64  # listings of /proc/PID/task while freezing
_SPIN_NS = 2_000_000  # poll with sched_yield this long before sleeping between polls
_POLL_SLEEP_NS = 100_000
_SLOW_STOP_NS = 1_000_000  # a thread this slow to stop: look at its /proc state
_EXITED_CHECK_NS = 20_000_000  # and again this often
_DEFERRED_SIGNALS = frozenset({_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT})

_POLL_SLEEP = Timespec(0, _POLL_SLEEP_NS)


class ThreadSnapshot(Record):
    """One thread as the freeze found it.

    ``registers`` and ``stack`` are None when they could not be copied, and
    ``error`` then says why (the thread exited during the capture, it did not
    stop in time, its stack pointer lies in no mapping).  ``stack`` may also
    be None with no error when ``stack_bytes`` was 0.

    ``state`` is the /proc state letter before the freeze (R, S, D, T, ...);
    for a thread that appeared during the capture, "?".  ``stack`` is
    (start address, bytes): from sp-128 (the red zone) up to the end of the
    mapping that holds sp, at most ``stack_bytes`` long.  ``signal`` is a
    signal that arrived while the thread was being stopped (0: none); it was
    handed back to the thread at detach and is delivered afterwards.
    """

    __slots__ = ("error", "name", "registers", "signal", "stack", "state", "tid")

    def __init__(
        self,
        tid: int,
        name: str,
        state: str,
        registers: Registers | None,
        stack: tuple[int, bytes] | None,
        error: str | None = None,
        signal: int = 0,
    ) -> None:
        self.tid = tid
        self.name = name
        self.state = state
        self.registers = registers
        self.stack = stack
        self.error = error
        self.signal = signal


class Snapshot(Record):
    """What one freeze copied from a live process.

    ``threads``: the main thread first, then by tid.  ``frozen_ns``: how long
    threads were kept from running, from the first PTRACE_INTERRUPT to the
    last detach.  ``timings``: seconds per phase: before the freeze check,
    threads, maps, buffer; the frozen ones seize, interrupt, wait, rescan,
    registers, stacks (and maps_reread when a stack was in a new mapping),
    detach; after it, snapshot; and total.  Seize runs before the first stop.
    """

    __slots__ = ("cmdline", "exe", "frozen_ns", "mappings", "pid", "threads", "timings")

    def __init__(
        self,
        pid: int,
        threads: list[ThreadSnapshot],
        mappings: list[Mapping],
        exe: str | None,
        cmdline: list[str],
        frozen_ns: int,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.pid = pid
        self.threads = threads
        self.mappings = mappings
        self.exe = exe
        self.cmdline = cmdline
        self.frozen_ns = frozen_ns
        self.timings: dict[str, float] = {} if timings is None else timings

    def replace_threads(self, threads: list[ThreadSnapshot]) -> Snapshot:
        """A copy with other threads (the rest shared)."""
        return Snapshot(
            self.pid, threads, self.mappings, self.exe, self.cmdline, self.frozen_ns, self.timings
        )

    def thread(self, tid: int) -> ThreadSnapshot:
        for thread in self.threads:
            if thread.tid == tid:
                return thread
        raise KeyError(tid)


def freeze(
    pid: int,
    *,
    stack_bytes: int = DEFAULT_STACK_BYTES,
    tids: Collection[int] | None = None,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> Snapshot:
    """Freeze process ``pid``, copy every thread's registers and stack, let it run again.

    With ``tids``, only those threads are stopped and copied (the others run
    on); a snapshot of one thread needs nothing from the others.  Threads
    that start during the capture are frozen too (when ``tids`` is None);
    threads that exit during it are reported with an error.  A thread that
    does not stop within ``stop_timeout`` seconds (stuck in the kernel) is
    reported without registers.

    Raises the errors of :func:`check_process`, AlreadyTraced or
    PermissionDenied when seizing is refused, and ProcessExited when the
    process ends during the capture, before every thread was copied.
    """
    if stack_bytes < 0:
        raise ValueError("stack_bytes must not be negative")
    clock = time.perf_counter_ns
    started = clock()
    timings: dict[str, float] = {}

    def mark(name: str, since: int) -> int:
        now = clock()
        timings[name] = (now - since) / 1e9
        return now

    check_process(pid)
    now = mark("check", started)
    try:
        present = procfs.list_tids(pid)
        _check_requested(pid, tids, present)
        before: dict[int, tuple[str, str]] = {}
        for tid in present if tids is None else sorted(set(tids)):
            try:
                stat = procfs.read_stat(pid, tid)
            except ProcessNotFound:
                continue
            before[tid] = (stat.comm, stat.state)
        now = mark("threads", now)
        # Memory is reached through a live thread: a leader that called pthread_exit
        # is a zombie without memory, and its /proc/PID/maps is empty.
        via = _live_thread(pid, present)
        mappings = procfs.read_maps(pid, via)
        now = mark("maps", now)
        exe = procfs.read_exe(pid, via)
        cmdline = procfs.read_cmdline(pid, via)
    except ProcessNotFound as error:
        if error.pid != pid or procfs.has_process(pid):
            raise
        raise ProcessExited(pid, f"process {pid} exited before it could be frozen") from error

    capture = _Capture(
        pid,
        list(before),
        mappings,
        stack_bytes,
        rescan=tids is None,
        stop_timeout_ns=int(stop_timeout * 1e9),
        memory_tid=via or pid,
    )
    try:
        capture.spare_buffer = _populated(len(before) * min(stack_bytes, _STACK_ESTIMATE))
        now = mark("buffer", now)
        _run_as_tracer(capture.run)
        now = clock()
        timings.update({name: ns / 1e9 for name, ns in capture.phase_ns.items()})
        if capture.incomplete() and capture.process_gone():
            raise ProcessExited(
                pid,
                f"process {pid} exited during the capture",
                hint="it ended before every thread could be copied",
            )
        threads = capture.thread_snapshots(before)
    finally:
        capture.release_buffers()
    snapshot = Snapshot(
        pid=pid,
        threads=threads,
        mappings=capture.mappings,
        exe=exe,
        cmdline=cmdline,
        frozen_ns=capture.frozen_ns,
        timings=timings,
    )
    now = mark("snapshot", now)
    timings["total"] = (now - started) / 1e9
    return snapshot


# -- running the frozen part in its own thread -----------------------------------


def _run_as_tracer(work: Callable[[], None]) -> None:
    """Run ``work`` in a new thread, the tracer; re-raise what it raised.

    Signals that would interrupt redhand are blocked in the calling thread
    (and so in the tracer, which inherits the mask) until the work is done.
    An exception raised in the caller meanwhile (a KeyboardInterrupt from
    another thread's signal handler) is kept until the tracer has finished.

    Built on ``_thread`` and ``_signal``, the C modules under ``threading``
    and ``signal``: those two imported ``enum``, ``functools`` and
    ``collections`` and cost 5-6 ms of the start of ``redhand stack`` on the
    reference machine, for a thread that needs none of it.
    """
    failure: list[BaseException] = []
    began: list[int] = []  # the tracer's native thread id, once it runs
    finished: list[bool] = []  # set just before ``done`` is released
    done = _thread.allocate_lock()
    done.acquire()

    def body() -> None:
        try:
            began.append(_thread.get_native_id())
            work()
        except BaseException as error:  # handed to the caller
            failure.append(error)
        finally:
            finished.append(True)
            done.release()

    held: BaseException | None = None
    previous = _signal.pthread_sigmask(_signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
        # Started unless start_new_thread says it could not: an exception
        # raised just after the thread started (by a signal handler of the
        # caller's) must not let the caller run on while the tracer works.
        started = True
        try:
            _thread.start_new_thread(body, ())
        except RuntimeError as error:  # "can't start new thread"
            started = False
            held = error
        except BaseException as error:
            held = error
        waited_since = time.monotonic()
        # Waiting ends when the tracer says it has finished, not when the lock
        # is taken: a signal handler may raise just after a successful
        # acquire, and the lock must not be waited for a second time.
        while started and not finished:
            try:
                done.acquire(timeout=0.05)
            except BaseException as error:  # re-raised once the tracer is done
                held = held or error
            if not began and held is not None and time.monotonic() - waited_since > 1.0:
                break  # the exception came before the thread could start
        if began:
            _wait_for_thread_exit(began[0])
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, previous)
    if held is not None:
        raise held
    if failure:
        raise failure[0]


def raise_priority() -> int | None:
    """Give the calling thread (the tracer) the highest CFS priority, if allowed.

    On a busy machine the freeze lasts as long as the tracer waits for a CPU;
    at nice -20 it waits least (on 2 busy cores this halved the freeze of
    1,000 threads).  Linux's nice is per thread and the tracer thread ends
    with the capture, so nothing else of the host changes.  Without
    CAP_SYS_NICE this does nothing.  Returns the nice value before, for
    :func:`restore_priority` (None when it was not changed).
    """
    me = _thread.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, me)
        os.setpriority(os.PRIO_PROCESS, me, -20)
    except OSError:
        return None
    return before


def restore_priority(before: int | None) -> None:
    """Put back the nice value :func:`raise_priority` returned (a tracer that runs on)."""
    if before is None:
        return
    try:  # noqa: SIM105 (no contextlib on the path of `redhand stack`)
        os.setpriority(os.PRIO_PROCESS, _thread.get_native_id(), before)
    except OSError:
        pass


def _wait_for_thread_exit(tid: int, timeout: float = 1.0) -> None:
    """Wait until the kernel has released an ended thread, and so its tracees.

    The tracer says it is done a moment before its OS thread exits; a
    thread seized but never stopped is detached only then.
    """
    path = f"/proc/self/task/{tid}"
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.0001)


# -- the frozen part -----------------------------------------------------------


class _Capture:
    """The state of one freeze; :meth:`run` is the frozen part, run by the tracer thread."""

    def __init__(
        self,
        pid: int,
        tids: list[int],
        mappings: list[Mapping],
        stack_bytes: int,
        *,
        rescan: bool,
        stop_timeout_ns: int,
        memory_tid: int,
    ) -> None:
        self.pid = pid
        self.memory_tid = memory_tid  # a live thread, for maps and memory reads
        self.initial = tids
        self.mappings = mappings
        self._starts = [mapping.start for mapping in mappings]
        self.stack_bytes = stack_bytes
        self.rescan = rescan
        self.stop_timeout_ns = stop_timeout_ns
        self.known: set[int] = set(tids)
        self.stopped: dict[int, int] = {}  # tid -> signal to hand back at detach
        self.errors: dict[int, str] = {}
        self.order: list[int] = []  # stopped threads, in the order of the copies below
        self.words: ctypes.Array[ctypes.c_uint64] | None = None
        self.has_registers: list[bool] = []
        self.stack_ranges: list[tuple[int, int] | None] = []
        self.stack_lengths: list[int] = []
        self.stack_buffer: mmap.mmap | None = None
        self.spare_buffer: mmap.mmap | None = None  # allocated, and faulted in, before the freeze
        self.detached = 0
        self.first_stop_ns = 0
        self.last_detach_ns = 0
        self.phase_ns: dict[str, int] = {}
        self.late_names: dict[int, tuple[str, str]] = {}  # tid -> (name, state) of new threads
        self._index_of: dict[int, int] | None = None  # tid -> its place in ``order``

    @property
    def frozen_ns(self) -> int:
        if not self.first_stop_ns:
            return 0
        return max(self.last_detach_ns - self.first_stop_ns, 0)

    def _add_time(self, phase: str, since: int) -> int:
        now = time.perf_counter_ns()
        self.phase_ns[phase] = self.phase_ns.get(phase, 0) + now - since
        return now

    def incomplete(self) -> bool:
        """Some thread's registers or stack are missing (or there was no thread)."""
        if not self.known or len(self.has_registers) < len(self.known):
            return True
        if not all(self.has_registers):
            return True
        return self.stack_bytes > 0 and not all(self.stack_lengths)

    def process_gone(self) -> bool:
        """No thread of the process is left (a zombie leader alone does not count)."""
        return not has_live_thread(self.pid)

    def run(self) -> None:
        raise_priority()
        try:
            self._freeze_all()
            self._copy_registers()
            _copy_stacks(self)
        finally:
            self._detach_all()

    # The steps of run(), for a tracer that does more while every thread is
    # stopped (redhand.capture.gcore): call them from the tracer thread, and
    # resume_all() in a ``finally``.

    def stop_all(self) -> None:
        """Stop every thread (and those that appear meanwhile); see :meth:`run`."""
        self._freeze_all()

    def copy_registers(self) -> None:
        self._copy_registers()

    def resume_all(self) -> None:
        self._detach_all()

    def registers_of(self, tid: int) -> list[int] | None:
        """The 27 words of a stopped thread's user_regs_struct, as copied; None without."""
        if self._index_of is None or len(self._index_of) != len(self.order):
            self._index_of = {tid: index for index, tid in enumerate(self.order)}
        index = self._index_of.get(tid, -1)
        if index < 0 or self.words is None or not self.has_registers[index]:
            return None
        first = index * USER_REGS_WORDS
        return list(self.words[first : first + USER_REGS_WORDS])

    # -- stopping --

    def _freeze_all(self) -> None:
        self._stop(self.initial)
        if not self.rescan:
            return
        for _ in range(_MAX_ROUNDS):
            since = time.perf_counter_ns()
            try:
                listed = self._list_if_changed()
            except (ProcessNotFound, OSError):
                listed = []
            self._add_time("rescan", since)
            new = [tid for tid in listed if tid not in self.known]
            if not new:
                return
            self.known.update(new)
            self._stop(new)
            # Threads born during the capture: their names now, while they are
            # stopped and so still exist (their state before the stop is unknown).
            for tid in new:
                if tid in self.stopped:
                    self.late_names[tid] = (_name_and_state(self.pid, tid)[0], "?")

    def _list_if_changed(self) -> list[int]:
        """The process's threads, or [] when its thread count shows that none is new.

        The count (num_threads in /proc/PID/stat) covers every thread not yet
        released; when it equals the number of stopped threads, there can be
        no other.  Reading it is 50 times faster than listing 1,000 threads.
        """
        if procfs.read_stat(self.pid).num_threads == len(self.stopped):
            return []
        return procfs.list_tids(self.pid)

    def _stop(self, tids: Sequence[int]) -> None:
        """Seize all, then interrupt all, then collect the stops."""
        seized = self._seize(tids)
        if seized:
            self._interrupt_and_wait(seized)

    def _seize(self, tids: Sequence[int]) -> list[int]:
        """PTRACE_SEIZE each thread; they keep running."""
        ptrace = raw_ptrace
        since = time.perf_counter_ns()
        seized: list[int] = []
        for tid in tids:
            if ptrace(PTRACE_SEIZE, tid, None, 0) == -1:
                self._seize_failed(tid, get_errno())
            else:
                seized.append(tid)
        self._add_time("seize", since)
        return seized

    def _interrupt_and_wait(self, seized: list[int]) -> None:
        """PTRACE_INTERRUPT each seized thread, then wait for every stop."""
        ptrace = raw_ptrace
        since = time.perf_counter_ns()
        if not self.first_stop_ns:
            self.first_stop_ns = since
        for tid in seized:
            # ESRCH: it is exiting; its exit is reported to the wait below.
            ptrace(PTRACE_INTERRUPT, tid, None, None)
        since = self._add_time("interrupt", since)
        self._wait_for_stops(seized)
        self._add_time("wait", since)

    def _seize_failed(self, tid: int, err: int) -> None:
        if err == errno.ESRCH:
            self._lost(tid, "exited before it could be stopped")
            return
        if err == errno.EPERM:
            try:
                stat = procfs.read_stat(self.pid, tid)
                tracer = procfs.tracer_pid(self.pid, tid)
            except ProcessNotFound:
                self._lost(tid, "exited before it could be stopped")
                return
            if stat.state in ("Z", "X"):
                self._lost(tid, "exited before it could be stopped")
                return
            if tracer == os.getpid():  # a watch's tracer holds it: it did not stop at the hit
                self._lost(
                    tid, f"did not stop at the event (state {stat.state}: busy in the kernel)"
                )
                return
            if tracer:
                raise already_traced_error(self.pid, tracer)
            raise permission_error(self.pid)
        raise errno_error(err, tid, "PTRACE_SEIZE")

    def _lost(self, tid: int, why: str) -> None:
        self.stopped.pop(tid, None)
        self.errors.setdefault(tid, why)

    def _wait_for_stops(self, tids: list[int]) -> None:
        """Collect the ptrace stop (or exit) of every thread in ``tids``.

        One tid at a time, in the order they were interrupted: the kernel
        finds a given tid at once, where a wait for any child walks the whole
        list of tracees on every call (quadratic with 1,000 threads).
        waitid(WNOWAIT) reads a stop or an exit without consuming it, so the
        exit status of a target that is the host program's own child stays
        for its parent to collect.
        """
        info = ChildInfo()
        info_address = ctypes.addressof(info)
        options = WSTOPPED | WEXITED | WNOWAIT | WNOHANG | WALL | WNOTHREAD
        waitid = raw_waitid
        clock = time.perf_counter_ns
        start = head_since = clock()
        deadline = start + self.stop_timeout_ns
        next_check = 0
        index = 0
        count = len(tids)
        while index < count:
            tid = tids[index]
            info.pid = 0
            if waitid(P_PID, tid, info_address, options) == 0:
                if info.pid:
                    self._on_child_info(tid, info.code, info.status)
                    index += 1
                    head_since = clock()
                    continue
            elif get_errno() != errno.EINTR:
                # ECHILD: no longer our tracee (it exited, or an exec took its tid).
                self._lost(tid, "exited during the capture")
                index += 1
                continue
            now = clock()
            if now - head_since > _SLOW_STOP_NS and now >= next_check:
                next_check = now + _EXITED_CHECK_NS
                if self._settled_without_report(tid):
                    index += 1
                    head_since = now
                    continue
            if now >= deadline:
                self._give_up(tids[index:])
                return
            if now - start < _SPIN_NS:
                raw_sched_yield()
            else:
                raw_nanosleep(ctypes.byref(_POLL_SLEEP), None)

    def _on_child_info(self, tid: int, code: int, status: int) -> None:
        if code in (CLD_TRAPPED, CLD_STOPPED):
            event, sig = status >> 8, status & 0xFF
            # A stop for a signal (event 0) suppresses that signal; it is handed
            # back at detach.  PTRACE_EVENT_STOP is our interrupt, or a group
            # stop (SIGSTOP and such), which the kernel keeps after the detach.
            self.stopped[tid] = sig if event == 0 else 0
        else:  # CLD_EXITED, CLD_KILLED, CLD_DUMPED
            self._lost(tid, "exited during the capture")

    def _settled_without_report(self, tid: int) -> bool:
        """For a thread slow to stop: whether /proc shows it stopped or gone after all.

        A zombie leader (it called pthread_exit) never reports a stop.  A stop
        can also be reported and consumed elsewhere: a SIGCHLD handler of the
        host program calling waitpid(-1) collects its threads' tracees too.
        """
        try:
            state = procfs.read_stat(self.pid, tid).state
        except ProcessNotFound:
            state = "X"
        if state in ("Z", "X"):
            self._lost(tid, "exited during the capture")
            return True
        if state == "t":  # in a ptrace stop, ours: it was seized by this thread
            self.stopped[tid] = 0
            return True
        return False

    def _give_up(self, pending: list[int]) -> None:
        timeout_ms = self.stop_timeout_ns / 1e6
        for tid in pending:
            try:
                state = procfs.read_stat(self.pid, tid).state
            except ProcessNotFound:
                self._lost(tid, "exited during the capture")
                continue
            # Still seized: the kernel detaches it when the tracer thread exits.
            self.errors[tid] = (
                f"did not stop within {timeout_ms:.0f} ms (state {state}: "
                "busy in the kernel, e.g. an uninterruptible sleep)"
            )

    # -- copying --

    def _copy_registers(self) -> None:
        since = time.perf_counter_ns()
        order = list(self.stopped)
        self.order = order
        count = len(order)
        words = (ctypes.c_uint64 * (USER_REGS_WORDS * count))()
        self.words = words
        base = ctypes.addressof(words)
        vectors = iovecs([(base + i * USER_REGS_SIZE, USER_REGS_SIZE) for i in range(count)])
        iov_base = ctypes.addressof(vectors)
        iov_size = ctypes.sizeof(IOVec)
        ptrace = raw_ptrace
        has = [True] * count
        for index, tid in enumerate(order):
            if ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, iov_base + index * iov_size) == -1:
                has[index] = False
                err = get_errno()
                if err == errno.ESRCH:
                    self.errors.setdefault(tid, "exited during the capture")
                else:
                    self.errors.setdefault(tid, f"registers: {os.strerror(err)}")
        self.has_registers = has
        self._add_time("registers", since)

    def stack_range(self, sp: int) -> tuple[int, int] | None:
        """(start, size) of the bytes to copy for a stack pointer, None if sp is unmapped."""
        index = bisect.bisect_right(self._starts, sp) - 1
        if index < 0:
            return None
        mapping = self.mappings[index]
        if sp >= mapping.end:
            return None
        start = max(sp - RED_ZONE, mapping.start)
        end = min(mapping.end, start + self.stack_bytes)
        return start, end - start

    def reread_maps(self) -> None:
        since = time.perf_counter_ns()
        try:
            self.mappings = procfs.read_maps(self.pid, self.memory_tid)
        except (ProcessNotFound, OSError):
            return
        finally:
            self._add_time("maps_reread", since)
        self._starts = [mapping.start for mapping in self.mappings]

    # -- resuming --

    def _detach_all(self) -> None:
        since = time.perf_counter_ns()
        ptrace = raw_ptrace
        detached = 0
        for tid, sig in self.stopped.items():
            if ptrace(PTRACE_DETACH, tid, None, sig) == -1:
                # ESRCH: killed while stopped (SIGKILL wakes tracees); the
                # kernel releases it when the tracer thread exits.
                if get_errno() == errno.ESRCH:
                    self.errors.setdefault(tid, "exited during the capture")
            else:
                detached += 1
        self.last_detach_ns = time.perf_counter_ns()
        self.detached = detached
        self._add_time("detach", since)

    # -- values, after the process runs again --

    def release_buffers(self) -> None:
        for buffer in (self.stack_buffer, self.spare_buffer):
            if buffer is not None and not buffer.closed:
                buffer.close()
        self.stack_buffer = self.spare_buffer = None

    def thread_snapshots(self, before: dict[int, tuple[str, str]]) -> list[ThreadSnapshot]:
        index_of = {tid: index for index, tid in enumerate(self.order)}
        words = self.words
        threads: list[ThreadSnapshot] = []
        # Each stack's slot in the buffer is as long as its range, whatever was read.
        offset = 0
        offsets: list[int] = []
        for where in self.stack_ranges:
            offsets.append(offset)
            offset += where[1] if where is not None else 0
        buffer = self.stack_buffer
        for tid in sorted(self.known, key=lambda tid: (tid != self.pid, tid)):
            if tid in before:
                name, state = before[tid]
            elif tid in self.late_names:
                name, state = self.late_names[tid]
            else:
                name, state = _name_and_state(self.pid, tid)
            registers: Registers | None = None
            stack: tuple[int, bytes] | None = None
            index = index_of.get(tid)
            if index is not None and words is not None and self.has_registers[index]:
                first = index * USER_REGS_WORDS
                registers = Registers.from_user_regs(words[first : first + USER_REGS_WORDS])
                if index < len(self.stack_ranges) and buffer is not None:
                    where = self.stack_ranges[index]
                    length = self.stack_lengths[index]
                    if where is not None and length:
                        start = offsets[index]
                        stack = (where[0], bytes(buffer[start : start + length]))
            error = self.errors.get(tid)
            if error is None and registers is None:
                error = "not stopped"
            threads.append(
                ThreadSnapshot(
                    tid=tid,
                    name=name,
                    state=state,
                    registers=registers,
                    stack=stack,
                    error=error,
                    signal=self.stopped.get(tid, 0),
                )
            )
        return threads


def _copy_stacks(capture: _Capture) -> None:
    """Copy each stopped thread's stack (a module function, so tests can wrap it)."""
    since = time.perf_counter_ns()
    words = capture.words
    count = len(capture.order)
    if capture.stack_bytes == 0 or words is None or count == 0:
        capture.stack_ranges = [None] * count
        capture.stack_lengths = [0] * count
        capture._add_time("stacks", since)
        return
    sps = [
        words[index * USER_REGS_WORDS + _SP_INDEX] if capture.has_registers[index] else None
        for index in range(count)
    ]
    ranges = [capture.stack_range(sp) if sp is not None else None for sp in sps]
    if any(where is None and sp is not None for where, sp in zip(ranges, sps, strict=True)):
        # A thread that started after the maps were read has a new stack mapping.
        capture.reread_maps()
        ranges = [capture.stack_range(sp) if sp is not None else None for sp in sps]
    for index, (where, sp) in enumerate(zip(ranges, sps, strict=True)):
        if where is None and sp is not None:
            capture.errors.setdefault(
                capture.order[index], f"stack pointer {sp:#x} lies in no mapping"
            )
    capture.stack_ranges = ranges
    wanted = [where for where in ranges if where is not None]
    total = sum(size for _, size in wanted)
    spare = capture.spare_buffer
    # Beyond the estimate, a new buffer's pages are faulted in while frozen.
    fits = spare is not None and total <= len(spare)
    buffer = spare if spare is not None and fits else mmap.mmap(-1, max(total, 1))
    capture.stack_buffer = buffer
    lengths = [0] * count
    if total:
        got = _read_ranges(capture.memory_tid, buffer, wanted)
        it = iter(got)
        lengths = [next(it) if where is not None else 0 for where in ranges]
    for index, where in enumerate(ranges):
        if where is not None and lengths[index] == 0:
            capture.errors.setdefault(
                capture.order[index], f"stack at {where[0]:#x} could not be read"
            )
    # A range read in part keeps its whole slot in the buffer; only what was read is kept.
    capture.stack_lengths = lengths
    capture._add_time("stacks", since)


def _read_ranges(pid: int, buffer: mmap.mmap, ranges: list[tuple[int, int]]) -> list[int]:
    """Read ``ranges`` of ``pid`` (or any of its live threads) back to back into ``buffer``.

    Returns the bytes read of each range, from its start.

    process_vm_readv takes up to IOV_MAX ranges per call and stops at the
    first one it cannot read in full; that one is retried through
    /proc/PID/mem and the call goes on with the next.
    """
    holder = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    base = ctypes.addressof(holder)
    sizes = [size for _, size in ranges]
    offsets: list[int] = []
    offset = 0
    for size in sizes:
        offsets.append(offset)
        offset += size
    got = [0] * len(ranges)
    fallback: LiveMemory | None = None
    use_readv = True
    index = 0
    count = len(ranges)
    try:
        while index < count:
            copied = 0
            end = index + 1
            if use_readv:
                batch = ranges[index : index + IOV_MAX]
                end = index + len(batch)
                remote = iovecs(batch)
                local = IOVec(base + offsets[index], sum(sizes[index:end]))
                copied = raw_process_vm_readv(
                    pid, ctypes.addressof(local), 1, ctypes.addressof(remote), len(batch), 0
                )
                if copied < 0:
                    err = get_errno()
                    if err == errno.ESRCH:  # the process is gone
                        break
                    # Forbidden here (a seccomp policy, an old kernel): /proc/PID/mem only.
                    use_readv = err not in (errno.EPERM, errno.ENOSYS)
                    copied = 0
                while index < end and copied >= sizes[index]:
                    got[index] = sizes[index]
                    copied -= sizes[index]
                    index += 1
                if index == end:
                    continue
            # Range ``index`` could not be read in full by process_vm_readv.
            if fallback is None:
                fallback = LiveMemory(pid)
            start, size = ranges[index]
            data = fallback.read_some(start, size)
            if len(data) > copied:
                buffer[offsets[index] : offsets[index] + len(data)] = data
                copied = len(data)
            got[index] = copied
            index += 1
    finally:
        del holder
        if fallback is not None:
            fallback.close()
    return got


def _populated(size: int) -> mmap.mmap | None:
    """An anonymous buffer whose pages are already present (so no faults while frozen)."""
    if size <= 0:
        return None
    try:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    except OSError:
        return None


def _check_requested(pid: int, tids: Collection[int] | None, present: Sequence[int]) -> None:
    missing = sorted(set(tids or ()) - set(present))
    if missing:
        listed = " ".join(str(tid) for tid in missing)
        raise ProcessNotFound(
            pid,
            f"process {pid} has no thread {listed}",
            hint=f"its threads are listed in /proc/{pid}/task",
        )


def _live_thread(pid: int, tids: Sequence[int]) -> int | None:
    """None when the leader is alive (use /proc/PID), else a live thread's tid."""
    for tid in [pid, *tids]:
        try:
            if procfs.read_stat(pid, tid).state not in ("Z", "X"):
                return None if tid == pid else tid
        except ProcessNotFound:
            continue
    return None


def _name_and_state(pid: int, tid: int) -> tuple[str, str]:
    try:
        stat = procfs.read_stat(pid, tid)
    except (ProcessNotFound, PermissionDenied):
        return "", "?"
    return stat.comm, stat.state


Capture = _Capture
"""The state of one freeze (see :meth:`_Capture.stop_all` for its public steps)."""
