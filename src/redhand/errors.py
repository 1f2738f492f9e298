"""redhand's errors: one base class, caught once by the CLI.

Every error carries what it is about (a pid, a path, an address), a hint that
says what to do next, and the exit code the command-line tool returns for it.
Leaves also subclass the matching builtin, so ``except ProcessLookupError``
works for a Python user who does not know redhand's classes.

Exit codes (documented in README.md):

====  =====================================================================
0     success
1     internal error (a bug in redhand: please report it)
2     bad command-line usage
3     no such process
4     permission denied (ptrace not allowed)
5     the process is already traced by another tracer
6     the pid is a kernel thread
7     the process is a zombie
8     the process exited while it was being captured
9     the process cannot be captured for another reason
10    a file is not a usable ELF file (corrupt, truncated, unsupported)
11    a file was not found
12    memory could not be read
13    an output file could not be written (it exists, is a symbolic link, no
      permission, no space left); nothing was left behind
14    eBPF could not be used (not allowed, or a program refused by the kernel)
124   ``watch --timeout`` passed before the event
130   interrupted (SIGINT; another signal: 128 + its number)
====  =====================================================================
"""

from __future__ import annotations


class RedhandError(Exception):
    """Base class of every error redhand raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}: {self.hint}"
        return self.message


# -- processes ---------------------------------------------------------------


class ProcessError(RedhandError):
    """Something about a live process stopped the capture."""

    exit_code = 9

    def __init__(self, pid: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.pid = pid


class ProcessNotFound(ProcessError, ProcessLookupError):
    exit_code = 3


class PermissionDenied(ProcessError, PermissionError):
    exit_code = 4


class AlreadyTraced(PermissionDenied):
    exit_code = 5

    def __init__(self, pid: int, tracer: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(pid, message, hint=hint)
        self.tracer = tracer


class KernelThread(ProcessError):
    exit_code = 6


class ZombieProcess(ProcessError):
    exit_code = 7


class ProcessExited(ProcessError):
    exit_code = 8


# -- files --------------------------------------------------------------------


class ElfError(RedhandError, ValueError):
    """A file is not a usable ELF file: not ELF, truncated, corrupt or unsupported."""

    exit_code = 10

    def __init__(self, path: str | None, message: str, *, hint: str | None = None) -> None:
        where = path if path else "<memory>"
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path


class UnsupportedElf(ElfError):
    """A well-formed ELF file redhand does not handle (32-bit, not x86_64, ...)."""


class FileNotFound(RedhandError, FileNotFoundError):
    exit_code = 11

    def __init__(self, path: str, message: str | None = None, *, hint: str | None = None) -> None:
        super().__init__(message or f"{path}: no such file", hint=hint)
        self.path = path


class OutputError(RedhandError, OSError):
    """A file redhand writes (a core) could not be written; nothing half-written was left.

    ``no_space`` is True when the file system was full (or a quota reached).
    """

    exit_code = 13

    def __init__(
        self, path: str, message: str, *, hint: str | None = None, no_space: bool = False
    ) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.no_space = no_space


# -- memory -------------------------------------------------------------------


class MemoryReadError(RedhandError):
    """An address could not be read from the target.

    Unwinders catch this and end a trace with the reason "unreadable memory";
    it reaches the user only when an explicitly requested read fails.
    """

    exit_code = 12

    def __init__(self, address: int, size: int, reason: str = "not readable") -> None:
        super().__init__(f"cannot read {size} bytes at {address:#x}: {reason}")
        self.address = address
        self.size = size
        self.reason = reason


class Interrupted(RedhandError):
    """A signal ended the work: SIGINT (130), or another (128 + its number)."""

    exit_code = 130

    def __init__(
        self, message: str, *, hint: str | None = None, exit_code: int | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        if exit_code is not None:
            self.exit_code = exit_code
