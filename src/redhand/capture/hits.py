"""What a watch saw: a system call's return or a signal, in one thread, at one moment."""

from __future__ import annotations

import signal as signal_module
from dataclasses import dataclass

from redhand.capture import syscalls
from redhand.capture.events import MAX_ERRNO, errno_name, errno_text, signed64
from redhand.target.signals import SignalInfo

__all__ = ["UNFINISHED", "Hit", "SyscallCall", "format_argument"]


UNFINISHED = -(1 << 63)  # the value of a call the thread is still in


def format_argument(value: int) -> str:
    """A raw argument word as strace would show an integer: small ones in decimal."""
    value &= (1 << 64) - 1
    if value >= 1 << 63 and (1 << 64) - value < 1 << 16:
        return str(value - (1 << 64))
    if (1 << 32) - (1 << 16) <= value < 1 << 32:  # a negative int: AT_FDCWD, -1
        return str(value - (1 << 32))
    return str(value) if value < 1 << 16 else hex(value)


@dataclass(frozen=True)
class SyscallCall:
    """One system call as it returned: its number, the six argument words, the raw result."""

    number: int
    arguments: tuple[int, ...]
    value: int

    @property
    def name(self) -> str:
        return syscalls.name(self.number)

    @property
    def failed(self) -> bool:
        return -MAX_ERRNO <= signed64(self.value) <= -1

    @property
    def errno(self) -> int | None:
        return -signed64(self.value) if self.failed else None

    @property
    def errno_name(self) -> str | None:
        return errno_name(self.errno) if self.errno is not None else None

    def shown_arguments(self) -> tuple[int, ...]:
        """The arguments the call takes (all six when the kernel does not say)."""
        names = syscalls.argument_names(self.name)
        count = len(names) if names is not None else len(self.arguments)
        return self.arguments[:count]

    @property
    def finished(self) -> bool:
        """False for a call the thread is still in (its result is not known)."""
        return self.value != UNFINISHED

    def __str__(self) -> str:
        arguments = ", ".join(format_argument(value) for value in self.shown_arguments())
        text = f"{self.name}({arguments}) = "
        if not self.finished:
            return text + "? (the thread is in it)"
        if self.errno is not None:
            return text + f"-1 {self.errno_name} ({errno_text(self.errno)})"
        value = signed64(self.value)
        return text + (str(value) if -(1 << 16) < value < 1 << 16 else hex(value & (1 << 64) - 1))

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "number": self.number,
            "arguments": list(self.shown_arguments()),
            "return": signed64(self.value) if self.finished else None,
            "errno": self.errno,
            "errno_name": self.errno_name,
        }


@dataclass(frozen=True)
class Hit:
    """A watched event in one thread: a system call's return (``call``) or a signal.

    ``time`` is the wall-clock time redhand learned of it (seconds since the
    epoch); ``kernel_ns`` the kernel's CLOCK_MONOTONIC time of the event
    where the backend knows it (eBPF).  ``siginfo`` is the signal's siginfo
    for a signal event.
    """

    pid: int
    tid: int
    thread_name: str
    time: float
    call: SyscallCall | None = None
    signal: int | None = None
    siginfo: SignalInfo | None = None
    kernel_ns: int | None = None

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal_module.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    def what(self) -> str:
        """The event alone: ``close(987) = -1 EBADF (Bad file descriptor)``."""
        if self.call is not None:
            return str(self.call)
        if self.signal is None:
            return "time is up"
        text = f"signal {self.signal_name}"
        info = self.siginfo
        if info is not None and info.pid is not None:
            text += f" sent by process {info.pid}"
            if info.uid is not None:
                text += f" (uid {info.uid})"
        elif info is not None and info.address is not None:
            text += f" at address {info.address:#x}"
        return text

    def __str__(self) -> str:
        return f'{self.what()} in thread {self.tid} "{self.thread_name}"'

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "pid": self.pid,
            "tid": self.tid,
            "thread_name": self.thread_name,
            "time": self.time,
            "kernel_ns": self.kernel_ns,
            "syscall": self.call.to_json() if self.call is not None else None,
            "signal": self.signal,
            "signal_name": self.signal_name,
        }
        if self.siginfo is not None:
            document["siginfo"] = {
                "code": self.siginfo.code,
                "address": self.siginfo.address,
                "sender_pid": self.siginfo.pid,
                "sender_uid": self.siginfo.uid,
            }
        return document
