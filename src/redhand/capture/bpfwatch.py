"""The eBPF backend of ``redhand watch``: the test runs in the kernel, at the call's return.

One tracepoint program per watch, generated for the event, on
``syscalls:sys_exit_NAME`` (``raw_syscalls:sys_exit`` for ``any``): for a
thread of the watched process, test the return value; read the call's
arguments from the registers the thread entered the kernel with
(``bpf_task_pt_regs``: x86_64 keeps rdi, rsi, rdx, r10, r8 and r9 there
through the call) and test the conditions on them; on a match, count it (the
first ``--skip`` matches only count), put a record in a ring buffer and
``bpf_send_signal_thread(SIGSTOP)``: the thread stops before it returns to
user space, so it runs no instruction after the failing call.  No program
runs at the calls' entry: enabling a syscall tracepoint makes every system
call of the machine take the kernel's slower path for it, and one direction
costs less than two (measured in BENCHMARKS.md).

"The watched process" is a tgid (``-p``), or (``--comm``) a thread whose
name is the one asked for, or a thread of a process in a map of tgids: the
processes redhand found with that name in /proc (rescanned every second),
those that take the name by exec (a program on ``sched:sched_process_exec``)
and their children (``sched:sched_process_fork``).  So a process whose
threads renamed themselves (``worker-3``) is still watched.

A SIGSTOP is job control: a shell or supervisor that waits with WUNTRACED
sees the process stop, and sees it continue when redhand sends SIGCONT
after the actions; the window is as short as the capture.  Closing the perf
event fds detaches the programs, which the kernel does by itself when
redhand dies, even by SIGKILL; the guard process resumes a process that
redhand had stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
from dataclasses import dataclass

from redhand.capture import bpf, syscalls
from redhand.capture.bpf import (
    ADD,
    DW,
    JEQ,
    JGE,
    JGT,
    JLE,
    JLT,
    JNE,
    JSGE,
    JSGT,
    JSLE,
    JSLT,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R8,
    R9,
    R10,
    RSH,
    Assembler,
    B,
    BpfError,
    W,
)
from redhand.capture.events import MAX_ERRNO, RESTART_CODES, Result, SyscallEvent
from redhand.capture.hits import Hit, SyscallCall
from redhand.capture.tracer import Held
from redhand.errors import ProcessExited
from redhand.proc import procfs, ptrace
from redhand.proc.checks import check_process

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from redhand.capture.guard import Guard

__all__ = ["BpfBackend", "exec_program", "exit_program", "fork_program"]

RING_SIZE = 1 << 16
# struct pt_regs on x86_64: where the six argument registers of a system call are saved.
_PT_REGS_ARGUMENTS = (112, 104, 96, 56, 72, 64)  # rdi, rsi, rdx, r10, r8, r9
GET_CURRENT_TASK_BTF = 158
TASK_PT_REGS = 175
PROBE_READ_KERNEL = 113
_RECORD = struct.Struct("<QqQ6QQ16s")  # pid_tgid, ret, nr, args, ktime, comm
_BPF_ANY = 0
_RESCAN_SECONDS = 1.0
_STOP_WAIT_SECONDS = 5.0

# For a jump that skips when a comparison does NOT hold.
_NEGATED_SIGNED = {"==": JNE, "!=": JEQ, "<": JSGE, "<=": JSGT, ">": JSLE, ">=": JSLT}
_UNSIGNED_LESS = JLT
_unused = (JGE, JGT, JLE)  # the unsigned forms, kept for readers of the table above


@dataclass(frozen=True)
class Who:
    """Which threads a program looks at: a tgid, or a thread name (and a map of tgids)."""

    tgid: int | None = None
    comm: bytes | None = None  # 16 bytes, NUL-padded
    tgids_fd: int | None = None


def _filter(asm: Assembler, who: Who, out: str) -> None:
    """R7 = pid_tgid; jump to ``out`` unless the thread is one of ``who``'s."""
    asm.call(bpf.GET_CURRENT_PID_TGID)
    asm.mov_reg(R7, R0)
    asm.mov_reg(R1, R0)
    asm.alu_imm(RSH, R1, 32)
    if who.tgid is not None:
        asm.jump_imm(JNE, R1, who.tgid, out)
        return
    assert who.comm is not None and who.tgids_fd is not None
    # A tgid redhand found with the name...
    asm.store(W, R10, R1, -4)
    asm.load_map_fd(R1, who.tgids_fd)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, -4)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JNE, R0, 0, "who_ok")
    # ... or a thread named so.
    _compare_comm(asm, who.comm, out)
    asm.label("who_ok")


def _jump_unless(asm: Assembler, register: int, op: str, value: int, out: str) -> None:
    """Jump to ``out`` unless ``register OP value`` holds (signed 64-bit)."""
    if -(1 << 31) <= value < 1 << 31:
        asm.jump_imm(_NEGATED_SIGNED[op], register, value, out)
    else:
        asm.load_imm64(R2, value)
        asm.jump_reg(_NEGATED_SIGNED[op], register, R2, out)


def _mark_tgid(asm: Assembler, tgids_fd: int, key_register: int) -> None:
    """tgids[key_register] = 1 (the key a u32 at fp-4, the value a byte at fp-8)."""
    asm.store(W, R10, key_register, -4)
    asm.store_imm(B, R10, -8, 1)
    asm.load_map_fd(R1, tgids_fd)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, -4)
    asm.mov_reg(R3, R10)
    asm.alu_imm(ADD, R3, -8)
    asm.mov_imm(R4, _BPF_ANY)
    asm.call(bpf.MAP_UPDATE_ELEM)


def exec_program(who: Who) -> bytes:
    """At sched_process_exec: a process that now has the name is watched, whatever its
    threads later call themselves."""
    assert who.comm is not None and who.tgids_fd is not None
    asm = Assembler()
    asm.call(bpf.GET_CURRENT_PID_TGID)
    asm.mov_reg(R7, R0)
    asm.alu_imm(RSH, R7, 32)
    _compare_comm(asm, who.comm, "out")
    _mark_tgid(asm, who.tgids_fd, R7)
    asm.label("out")
    asm.mov_imm(R0, 0)
    asm.exit()
    return asm.assemble()


def fork_program(who: Who) -> bytes:
    """At sched_process_fork: the children of a watched process are watched."""
    assert who.tgids_fd is not None
    asm = Assembler()
    asm.mov_reg(R6, R1)
    asm.call(bpf.GET_CURRENT_PID_TGID)
    asm.alu_imm(RSH, R0, 32)
    asm.store(W, R10, R0, -4)
    asm.load_map_fd(R1, who.tgids_fd)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, -4)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, "out")
    asm.load(W, R7, R6, 20)  # child_pid
    _mark_tgid(asm, who.tgids_fd, R7)
    asm.label("out")
    asm.mov_imm(R0, 0)
    asm.exit()
    return asm.assemble()


def _compare_comm(asm: Assembler, comm: bytes, out: str) -> None:
    """Jump to ``out`` unless the current thread's name is ``comm`` (16 bytes at fp-24)."""
    asm.mov_reg(R1, R10)
    asm.alu_imm(ADD, R1, -24)
    asm.mov_imm(R2, 16)
    asm.call(bpf.GET_CURRENT_COMM)
    for index in range(2):
        word = int.from_bytes(comm[index * 8 : index * 8 + 8], "little")
        asm.load(DW, R1, R10, -24 + index * 8)
        asm.load_imm64(R2, word)
        asm.jump_reg(JNE, R1, R2, out)


def exit_program(
    event: SyscallEvent,
    who: Who,
    *,
    state_fd: int,
    ring_fd: int,
    skip: int,
    raw: bool,
) -> bytes:
    """At a call's return: test, count, report through the ring, stop the thread."""
    asm = Assembler()
    record = -8 - _RECORD.size  # the record, built on the stack
    asm.mov_reg(R6, R1)
    _filter(asm, who, "out")
    asm.load(DW, R8, R6, 16)  # ret
    # A call interrupted to be restarted (-ERESTARTSYS ...) is not a result: it comes again.
    asm.jump_imm(JSLT, R8, -RESTART_CODES[1], "not_restarted")
    asm.jump_imm(JSLE, R8, -RESTART_CODES[0], "out")
    asm.label("not_restarted")
    if event.result is Result.FAILS and event.errnos:
        for value in event.errnos:
            asm.jump_imm(JEQ, R8, -value, "result_ok")
        asm.goto("out")
    elif event.result is Result.FAILS:
        asm.jump_imm(JSGE, R8, 0, "out")
        asm.jump_imm(JSLT, R8, -MAX_ERRNO, "out")
    elif event.result is Result.RETURNS:
        _jump_unless(asm, R8, event.op, event.value, "out")
    asm.label("result_ok")
    # The record: pid_tgid, ret, nr, six arguments, time, comm.
    asm.store(DW, R10, R7, record)
    asm.store(DW, R10, R8, record + 8)
    if raw:
        asm.load(DW, R1, R6, 8)  # raw_syscalls: long id
    else:
        asm.load(W, R1, R6, 8)  # syscalls: int __syscall_nr
    asm.store(DW, R10, R1, record + 16)
    # The arguments, from the registers saved at the call's entry.
    asm.call(GET_CURRENT_TASK_BTF)
    asm.mov_reg(R1, R0)
    asm.call(TASK_PT_REGS)
    asm.mov_reg(R9, R0)
    for index, offset in enumerate(_PT_REGS_ARGUMENTS):
        asm.mov_reg(R1, R10)
        asm.alu_imm(ADD, R1, record + 24 + 8 * index)
        asm.mov_imm(R2, 8)
        asm.mov_reg(R3, R9)
        asm.alu_imm(ADD, R3, offset)
        asm.call(PROBE_READ_KERNEL)  # zeroes the word if it cannot be read
    for condition in event.conditions:
        asm.load(DW, R1, R10, record + 24 + 8 * condition.argument)
        _jump_unless(asm, R1, condition.op, condition.value, "out")
    # Count the match; the first ``skip`` only count.
    asm.store_imm(W, R10, -12, 0)
    asm.load_map_fd(R1, state_fd)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, -12)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, "out")
    asm.mov_imm(R1, 1)
    asm.atomic_add(DW, R0, R1, 0, fetch=True)
    if skip:
        asm.jump_imm(_UNSIGNED_LESS, R1, skip, "out")
    asm.call(bpf.KTIME_GET_NS)
    asm.store(DW, R10, R0, record + 72)
    asm.mov_reg(R1, R10)
    asm.alu_imm(ADD, R1, record + 80)
    asm.mov_imm(R2, 16)
    asm.call(bpf.GET_CURRENT_COMM)
    asm.load_map_fd(R1, ring_fd)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, record)
    asm.mov_imm(R3, _RECORD.size)
    asm.mov_imm(R4, 0)
    asm.call(bpf.RINGBUF_OUTPUT)
    asm.mov_imm(R1, signal.SIGSTOP)
    asm.call(bpf.SEND_SIGNAL_THREAD)
    asm.label("out")
    asm.mov_imm(R0, 0)
    asm.exit()
    return asm.assemble()


class BpfBackend:
    """Programs loaded and attached for one watch; hits read from the ring buffer."""

    name = "ebpf"

    def __init__(
        self,
        event: SyscallEvent,
        guard: Guard,
        *,
        pid: int | None = None,
        comm: str | None = None,
        skip: int = 0,
    ) -> None:
        self.event = event
        self.guard = guard
        self.pid = pid
        self.comm = comm
        self.skip = skip
        self.notes: list[str] = []
        self.exit_status: int | None = None
        self._fds: list[int] = []
        self._links: list[int] = []
        self._ring: bpf.RingBuffer | None = None
        self._queue: list[Hit] = []
        self._tgids_fd: int | None = None
        self._known_tgids: set[int] = set()
        self._last_scan = 0.0
        self._stopped_by_us: set[int] = set()

    @property
    def description(self) -> str:
        where = f"tracepoints {', '.join(self._tracepoints())}"
        return f"eBPF ({where}; the test runs in the kernel)"

    def _tracepoints(self) -> list[str]:
        if self.event.any_call:
            return ["raw_syscalls:sys_exit"]
        return [f"syscalls:sys_exit_{syscalls.tracepoint_name(n)}" for n in self.event.calls]

    # -- starting --------------------------------------------------------------------

    def start(self) -> None:
        if self.pid is not None:
            check_process(self.pid)
        _root, mounted = bpf.tracefs()
        if mounted:
            self.notes.append("mounted tracefs at /sys/kernel/tracing")
        raw = self.event.any_call
        tracepoints: list[tuple[str, str]] = []  # (category, name)
        if raw:
            tracepoints.append(("raw_syscalls", "sys_exit"))
        else:
            for call in self.event.calls:
                name = f"sys_exit_{syscalls.tracepoint_name(call)}"
                if not bpf.tracepoint_exists("syscalls", name):
                    raise BpfError(
                        f"this kernel has no tracepoint for {call}()",
                        hint="it was built without it, or the call does not exist here; "
                        "watch a program you launch (-- CMD) to use seccomp instead",
                    )
                tracepoints.append(("syscalls", name))
        try:
            self._load(tracepoints, raw)
        except BaseException:
            self.close()
            raise
        if self.comm is not None:
            self._rescan()

    def _map(self, kind: int, key: int, value: int, entries: int, name: str) -> int:
        fd = bpf.create_map(kind, key, value, entries, name=name)
        self._fds.append(fd)
        return fd

    def _load(self, tracepoints: list[tuple[str, str]], raw: bool) -> None:
        state_fd = self._map(bpf.MAP_ARRAY, 4, 8, 1, "rh_watch_state")
        ring_fd = self._map(bpf.MAP_RINGBUF, 0, 0, RING_SIZE, "rh_watch_ring")
        who = Who(tgid=self.pid)
        if self.comm is not None:
            self._tgids_fd = self._map(bpf.MAP_HASH, 4, 1, 4096, "rh_watch_tgids")
            who = Who(comm=self.comm.encode()[:15].ljust(16, b"\0"), tgids_fd=self._tgids_fd)
        self._ring = bpf.RingBuffer(ring_fd, RING_SIZE)
        if self.comm is not None:
            # Processes that take the name by exec, and their children, join the map.
            for program, event in (
                (exec_program(who), "sched_process_exec"),
                (fork_program(who), "sched_process_fork"),
            ):
                fd = bpf.load_program(program, name="redhand_follow")
                self._fds.append(fd)
                self._links.append(bpf.attach_tracepoint(fd, bpf.tracepoint_id("sched", event)))
        program = exit_program(
            self.event, who, state_fd=state_fd, ring_fd=ring_fd, skip=self.skip, raw=raw
        )
        exit_fd = bpf.load_program(program, name="redhand_watch")
        self._fds.append(exit_fd)
        # One program, attached to each call's tracepoint (each has a prog array of its own).
        for category, name in tracepoints:
            self._links.append(bpf.attach_tracepoint(exit_fd, bpf.tracepoint_id(category, name)))

    def _rescan(self) -> None:
        """Add the tgids of processes now named ``comm`` to the kernel's map."""
        assert self.comm is not None and self._tgids_fd is not None
        self._last_scan = time.monotonic()
        wanted = self.comm[:15]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            tgid = int(entry)
            if tgid in self._known_tgids:
                continue
            if procfs.comm_of(tgid) == wanted:
                self._known_tgids.add(tgid)
                with contextlib.suppress(BpfError):
                    bpf.map_update(self._tgids_fd, struct.pack("<I", tgid), b"\1")

    # -- waiting -------------------------------------------------------------------

    def wait(self, deadline: float | None, should_stop: Callable[[], bool]) -> list[Hit] | None:
        ring = self._ring
        assert ring is not None
        while not self._queue:
            if self.pid is not None and not procfs.has_process(self.pid):
                return None
            if should_stop():
                return []
            timeout = 0.25
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                timeout = min(timeout, left)
            if self.comm is not None and time.monotonic() - self._last_scan > _RESCAN_SECONDS:
                self._rescan()
            if ring.wait(timeout):
                self._take(ring.read())
        # The hits of one process go together; the others wait their turn.
        pid = self._queue[0].pid
        hits = [hit for hit in self._queue if hit.pid == pid]
        self._queue = [hit for hit in self._queue if hit.pid != pid]
        return hits

    def _take(self, records: list[bytes]) -> None:
        now = time.time()
        now_ns = time.monotonic_ns()
        for data in records:
            pid_tgid, value, nr, *rest = _RECORD.unpack(data[: _RECORD.size])
            arguments = tuple(rest[:6])
            kernel_ns, comm = rest[6], rest[7]
            pid, tid = pid_tgid >> 32, pid_tgid & 0xFFFFFFFF
            self._stopped_by_us.add(pid)
            self.guard.hold(pid)
            self._queue.append(
                Hit(
                    pid,
                    tid,
                    comm.split(b"\0", 1)[0].decode(errors="replace"),
                    now - (now_ns - kernel_ns) / 1e9,
                    SyscallCall(nr, arguments, value),
                    kernel_ns=kernel_ns,
                )
            )

    # -- holding and releasing ---------------------------------------------------------

    def hold(self, hits: list[Hit], should_stop: Callable[[], bool]) -> Held:
        """Wait until every thread of the process is in its group-stop."""
        first = hits[0]
        pid = first.pid
        # A thread in an uninterruptible sleep stops late: after the wait, capture anyway.
        procfs.wait_all_stopped(pid, _STOP_WAIT_SECONDS)
        states = procfs.thread_states(pid)
        if not states:
            self._stopped_by_us.discard(pid)
            self.guard.release(pid)
            raise ProcessExited(pid, f"process {pid} exited at the event")
        stopped_ns = time.monotonic_ns() - (first.kernel_ns or time.monotonic_ns())
        if self.ring_has_more(pid):
            hits = hits + self._claim(pid)
        held = Held(pid, first, list(hits[1:]), max(stopped_ns, 0), launched=False)
        held.late = {tid: state for tid, state in states.items() if state not in "tTZX"}
        return held

    def ring_has_more(self, pid: int) -> bool:
        assert self._ring is not None
        self._take(self._ring.read())
        return any(hit.pid == pid for hit in self._queue)

    def _claim(self, pid: int) -> list[Hit]:
        mine = [hit for hit in self._queue if hit.pid == pid]
        self._queue = [hit for hit in self._queue if hit.pid != pid]
        return mine

    def release(self, held: Held, *, resume: bool) -> int:
        """SIGCONT (unless ``resume`` is False); the time (perf_counter_ns) it was let go."""
        pid = held.pid
        if held.let_go_ns is not None:
            # It ran on during the actions: a hit since then is a hit of its own, and the
            # process stays stopped for it.
            return held.let_go_ns
        # Hits that came while the actions ran belong to this stop.
        if self._ring is not None:
            self._take(self._ring.read())
            held.also.extend(self._claim(pid))
        let_go = time.perf_counter_ns()
        if resume:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._stopped_by_us.discard(pid)
        self.guard.release(pid)
        return let_go

    def let_go(self, held: Held) -> None:
        """Let the process run before the actions end (gcore's copy of it exists).

        Called from gcore's thread while this one waits for it: the ring is not read
        meanwhile, so the hits of this stop are all in hand already.
        """
        self._take(self._ring.read() if self._ring is not None else [])
        held.also.extend(self._claim(held.pid))
        held.let_go_ns = time.perf_counter_ns()
        with contextlib.suppress(ProcessLookupError):
            os.kill(held.pid, signal.SIGCONT)
        self._stopped_by_us.discard(held.pid)
        self.guard.release(held.pid)

    def abort(self, held: Held) -> None:
        ptrace.tgkill(held.pid, held.hit.tid, signal.SIGABRT)

    # -- ending --------------------------------------------------------------------

    def detach(self) -> None:
        """Detach the programs (the process is no longer stopped by a late hit)."""
        for fd in self._links:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links.clear()

    def close(self) -> None:
        """Detach, then resume every process a hit stopped that was not handled."""
        self.detach()
        if self._ring is not None:
            self._take(self._ring.read())
            self._ring.close()
            self._ring = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        for pid in sorted(self._stopped_by_us):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self.guard.release(pid)
        self._stopped_by_us.clear()
        self._queue.clear()
