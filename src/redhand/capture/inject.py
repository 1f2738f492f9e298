"""System calls run inside a stopped thread of another process, through ptrace.

A thread stopped under redhand (PTRACE_SEIZE + PTRACE_INTERRUPT) is made to
execute one ``syscall`` instruction found in its own executable memory (the
vdso has several): its registers are saved whole (general, FXSAVE, XSAVE),
set to the call's number and arguments with ``orig_rax = -1`` (so that the
kernel's restart logic for the system call it was interrupted in does not
touch the injected one), it is single-stepped over the instruction, the
result is read from ``rax``, and every register is put back exactly.  When
the thread is let go later, the system call it was blocked in is restarted
as after any ptrace stop.

``clone()`` made this way (with PTRACE_O_TRACECLONE set on the thread)
produces a copy-on-write child that is born traced by redhand and stopped:
it never runs a single instruction of the program.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import signal
import time

from redhand.errors import ProcessError, ProcessExited, RedhandError
from redhand.proc import procfs, ptrace
from redhand.proc.ptrace import (
    CLD_STOPPED,
    CLD_TRAPPED,
    PTRACE_EVENT_CLONE,
    PTRACE_EVENT_STOP,
    WALL,
    WEXITED,
    WNOHANG,
    WNOWAIT,
    WSTOPPED,
)
from redhand.target.model import USER_REGS_FIELDS, Mapping

SYS_CLONE = 56
SYS_WAIT4 = 61
SYS_PRCTL = 157
SYS_CLOSE_RANGE = 436
PR_SET_NAME = 15
CLONE_FILES = 0x400
CLOSE_RANGE_UNSHARE = 0x2
SYSCALL_INSN = b"\x0f\x05"

_RAX = USER_REGS_FIELDS.index("rax")
_ORIG_RAX = USER_REGS_FIELDS.index("orig_rax")
_RIP = USER_REGS_FIELDS.index("rip")
_ARGUMENTS = tuple(
    USER_REGS_FIELDS.index(name) for name in ("rdi", "rsi", "rdx", "r10", "r8", "r9")
)
_WAIT_TIMEOUT = 120.0
"""A bound on one injected call; a clone copies page tables, about 35 ms per GiB."""


class InjectionError(ProcessError):
    """A system call could not be run inside the target; its registers were put back."""


@dataclasses.dataclass
class SavedRegisters:
    """Everything of a stopped thread's registers, to put back exactly."""

    tid: int
    words: list[int]
    fpregs: bytes | None
    xstate: bytes | None

    @classmethod
    def save(cls, tid: int) -> SavedRegisters:
        return cls(
            tid, ptrace.get_register_words(tid), ptrace.get_fpregs(tid), ptrace.get_xstate(tid)
        )

    def restore(self) -> None:
        ptrace.set_registers(self.tid, self.words)
        if self.fpregs is not None:
            ptrace.set_fpregs(self.tid, self.fpregs)
        if self.xstate is not None:
            ptrace.set_xstate(self.tid, self.xstate)


def find_syscall_instruction(pid: int, mappings: list[Mapping]) -> int | None:
    """The address of a ``syscall`` instruction in the process: in its vdso first,
    else in any executable mapping (the bytes need not start an instruction:
    only the two at the address are executed)."""
    ordered = sorted(mappings, key=lambda m: m.path != "[vdso]")
    with ptrace.LiveMemory(pid) as memory:
        for mapping in ordered:
            if not mapping.executable or mapping.path == "[vsyscall]":
                continue
            size = min(mapping.size, 1 << 20)
            data = memory.read_some(mapping.start, size)
            at = data.find(SYSCALL_INSN)
            if at >= 0:
                return mapping.start + at
    return None


@dataclasses.dataclass
class SyscallResult:
    value: int
    """The call's return value (negative: -errno)."""
    child: int | None = None
    """A clone's child, as redhand sees its pid, when PTRACE_O_TRACECLONE reported it."""
    held_signal: int = 0
    """A signal that arrived meanwhile and was held back: hand it back at detach."""

    @property
    def error(self) -> int:
        return -self.value if -4096 < self.value < 0 else 0


def run_syscall(
    tid: int,
    instruction: int,
    number: int,
    arguments: tuple[int, ...] = (),
    *,
    saved: SavedRegisters | None = None,
) -> SyscallResult:
    """Run system call ``number`` in the stopped tracee ``tid``; its registers are put back.

    ``instruction`` is the address of a ``syscall`` instruction in the
    process (:func:`find_syscall_instruction`).  Raises ProcessExited if the
    thread died meanwhile, InjectionError if it stopped somewhere unexpected.
    """
    state = saved or SavedRegisters.save(tid)
    words = list(state.words)
    words[_RAX] = number
    words[_ORIG_RAX] = (1 << 64) - 1
    words[_RIP] = instruction
    for index, value in zip(_ARGUMENTS, arguments, strict=False):
        words[index] = value & ((1 << 64) - 1)
    result = SyscallResult(0)
    try:
        ptrace.set_registers(tid, words)
        ptrace.single_step(tid)
        while True:
            code, status = wait_stop(tid)
            if code not in (CLD_TRAPPED, CLD_STOPPED):
                raise ProcessExited(tid, f"thread {tid} ended during an injected system call")
            event, sig = (status >> 8) & 0xFF, status & 0xFF
            if event == PTRACE_EVENT_CLONE:
                result.child = ptrace.get_event_message(tid)
            elif event == 0 and sig == signal.SIGTRAP:
                after = ptrace.get_register_words(tid)
                if after[_RIP] != instruction + len(SYSCALL_INSN):
                    raise InjectionError(
                        tid, f"thread {tid} stopped at {after[_RIP]:#x} after an injected call"
                    )
                value = after[_RAX]
                result.value = value - (1 << 64) if value >= 1 << 63 else value
                return result
            elif event == 0:  # another signal: hold it back, give it again at detach
                result.held_signal = result.held_signal or sig
            elif event != PTRACE_EVENT_STOP:
                raise InjectionError(tid, f"thread {tid}: unexpected ptrace event {event}")
            ptrace.single_step(tid)
    finally:
        state.restore()


def wait_stop(tid: int, timeout: float = _WAIT_TIMEOUT) -> tuple[int, int]:
    """(CLD_* code, status) of the next stop or exit of a tracee, left waitable.

    WNOWAIT: an exit is not consumed, so a target that is the host's own child
    keeps its exit status for the host.  Polled, so the GIL is free between polls.
    """
    info = ptrace.ChildInfo()
    options = WSTOPPED | WEXITED | WNOWAIT | WNOHANG | WALL
    deadline = time.monotonic() + timeout
    delay = 0.00002
    while True:
        info.pid = 0
        if ptrace.raw_waitid(ptrace.P_PID, tid, ctypes.addressof(info), options) == 0:
            if info.pid:
                return info.code, info.status
        elif ptrace.get_errno() != errno.EINTR:
            raise ProcessExited(tid, f"thread {tid} is no longer traced (it exited)")
        if time.monotonic() > deadline:
            raise InjectionError(tid, f"thread {tid} did not stop within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.0002)


# -- the clone child ------------------------------------------------------------------


def _wait_child(child: int, timeout: float) -> int | None:
    """The next wait status of a child redhand traces, consumed; None once it is not ours."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status = ptrace.waitpid(child, WALL | WNOHANG)
        except ProcessError:
            return None
        if pid == child:
            return status
        if time.monotonic() > deadline:
            raise InjectionError(child, f"the copy {child} of the process did not answer")
        time.sleep(0.0001)


def wait_child_stop(child: int, timeout: float = _WAIT_TIMEOUT) -> None:
    """Collect the first stop of a child born traced (PTRACE_EVENT_STOP)."""
    status = _wait_child(child, timeout)
    if status is None or not os.WIFSTOPPED(status):
        raise ProcessExited(child, f"the copy {child} of the process ended at once")


def end_child(child: int, timeout: float = _WAIT_TIMEOUT) -> None:
    """SIGKILL a traced child and consume its exit as its tracer.

    It is then a zombie of its real parent (the target), which must reap it
    (an injected wait4), or of init if the target has exited.
    """
    try:
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        while True:  # a stop reported before the kill may come first
            status = _wait_child(child, timeout)
            if status is None or os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return
    except InjectionError:
        return  # it will be killed with the tracer thread (EXITKILL) in any case


def write_memory(pid: int, address: int, data: bytes) -> None:
    """Write ``data`` into a stopped tracee's memory (/proc/PID/mem)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.pwrite(fd, data, address) != len(data):
            raise OSError(errno.EIO, "short write")
    finally:
        os.close(fd)


def namespace_pid(pid: int) -> int:
    """A process's pid in its own pid namespace (the last NSpid of /proc/PID/status)."""
    try:
        return int(procfs.read_status(pid)["NSpid"].split()[-1])
    except (RedhandError, KeyError, ValueError, IndexError):
        return pid


__all__ = [
    "CLONE_FILES",
    "CLOSE_RANGE_UNSHARE",
    "PR_SET_NAME",
    "SYS_CLONE",
    "SYS_CLOSE_RANGE",
    "SYS_PRCTL",
    "SYS_WAIT4",
    "InjectionError",
    "SavedRegisters",
    "SyscallResult",
    "end_child",
    "find_syscall_instruction",
    "namespace_pid",
    "run_syscall",
    "wait_child_stop",
    "wait_stop",
    "write_memory",
]
