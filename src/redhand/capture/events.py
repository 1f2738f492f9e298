"""What ``redhand watch`` waits for: the event grammar, parsed into small value objects.

The grammar (documented in README.md)::

    event     := calls [result] [condition]  |  'signal' SIGNAL
    calls     := SYSCALL [',' SYSCALL]...  |  'any'
    result    := 'fails' [ERRNO [',' ERRNO]...]  |  'returns' OP VALUE
    condition := 'if' ARG OP VALUE ['and' ARG OP VALUE]...
    ARG       := arg0 ... arg5
    OP        := == != < <= > >=

``close fails EBADF``, ``write fails EPIPE if arg0 == 1``, ``mmap returns < 0``
(the raw value: a failure is -errno), ``openat`` (every call), ``any fails
ENOSPC``, ``signal SIGUSR1``.  Numbers are decimal or 0x hex, compared as
signed 64-bit values, as the kernel returns them.

A mistake gets one line that names the word, where it is and, when a known
word is close, what was probably meant.  A system call or errno name that
this architecture does not have is refused here; whether the running kernel
has the call is checked by the backend that watches it.
"""

from __future__ import annotations

import difflib
import enum
import errno
import os
import re
import signal as signal_module
from dataclasses import dataclass

from redhand.capture import syscalls
from redhand.errors import RedhandError

__all__ = [
    "Condition",
    "EventSpecError",
    "Result",
    "SignalEvent",
    "SyscallEvent",
    "parse_event",
]

OPERATORS = ("==", "!=", "<", "<=", ">", ">=")
MAX_ERRNO = 4095  # the kernel returns -1 ... -4095 for a failure
RESTART_CODES = (512, 516)  # ERESTARTSYS ... ERESTART_RESTARTBLOCK: internal, never returned


class EventSpecError(RedhandError, ValueError):
    """An event the grammar does not accept (a usage error: exit code 2)."""

    exit_code = 2

    def __init__(self, spec: str, column: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"bad event {spec!r} at column {column + 1}: {message}", hint=hint)
        self.spec = spec
        self.column = column


class Result(enum.Enum):
    """Which results of a call count."""

    EVERY = "every"  # every call, whatever it returns
    FAILS = "fails"  # -4095 <= value <= -1, optionally with given errnos
    RETURNS = "returns"  # value OP number


def compare(left: int, op: str, right: int) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "<":
        return left < right
    if op == "<=":
        return left <= right
    if op == ">":
        return left > right
    return left >= right


def signed64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


@dataclass(frozen=True)
class Condition:
    """``argN OP value`` on an integer argument of the call (compared as signed 64-bit)."""

    argument: int
    op: str
    value: int

    def holds(self, arguments: tuple[int, ...]) -> bool:
        return compare(signed64(arguments[self.argument]), self.op, self.value)

    def __str__(self) -> str:
        return f"arg{self.argument} {self.op} {self.value}"


@dataclass(frozen=True)
class SyscallEvent:
    """A system call's return, with a test on its result and arguments.

    ``calls`` is empty for ``any`` (every system call); ``numbers`` are the
    calls' x86_64 numbers.  ``errnos`` (positive) narrow ``fails``; empty
    means any error.
    """

    text: str
    calls: tuple[str, ...]
    numbers: tuple[int, ...]
    result: Result
    errnos: tuple[int, ...] = ()
    op: str = "=="
    value: int = 0
    conditions: tuple[Condition, ...] = ()

    @property
    def any_call(self) -> bool:
        return not self.calls

    def result_matches(self, value: int) -> bool:
        """Whether a raw return value (-errno for a failure) is one this event waits for.

        The kernel's own restart codes (-512 ... -516, ERESTARTSYS and friends) never
        match: the program does not see them, the call is made again.
        """
        if RESTART_CODES[0] <= -value <= RESTART_CODES[1]:
            return False
        if self.result is Result.EVERY:
            return True
        if self.result is Result.RETURNS:
            return compare(value, self.op, self.value)
        if not -MAX_ERRNO <= value <= -1:
            return False
        return not self.errnos or -value in self.errnos

    def matches(self, nr: int, arguments: tuple[int, ...], value: int) -> bool:
        if self.numbers and nr not in self.numbers:
            return False
        if not self.result_matches(value):
            return False
        return all(condition.holds(arguments) for condition in self.conditions)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class SignalEvent:
    """A signal about to be delivered to a thread of the process."""

    text: str
    signal: int

    @property
    def signal_name(self) -> str:
        return signal_module.Signals(self.signal).name

    def __str__(self) -> str:
        return self.text


# What each signal does by default (signal(7)): end the process (with a core or not).
_DEFAULT_KILLS = frozenset(
    {
        signal_module.SIGHUP,
        signal_module.SIGINT,
        signal_module.SIGQUIT,
        signal_module.SIGILL,
        signal_module.SIGTRAP,
        signal_module.SIGABRT,
        signal_module.SIGBUS,
        signal_module.SIGFPE,
        signal_module.SIGUSR1,
        signal_module.SIGSEGV,
        signal_module.SIGUSR2,
        signal_module.SIGPIPE,
        signal_module.SIGALRM,
        signal_module.SIGTERM,
        signal_module.SIGSTKFLT,
        signal_module.SIGXCPU,
        signal_module.SIGXFSZ,
        signal_module.SIGVTALRM,
        signal_module.SIGPROF,
        signal_module.SIGIO,
        signal_module.SIGPWR,
        signal_module.SIGSYS,
    }
)


def kills_by_default(signo: int) -> bool:
    """Whether the signal's default action ends the process (real-time signals do too)."""
    return signo in _DEFAULT_KILLS or signal_module.SIGRTMIN <= signo <= signal_module.SIGRTMAX


@dataclass(frozen=True)
class CrashEvent:
    """A signal that is about to end the process (``redhand run``), or one of ``on``.

    Whether a signal ends the process is decided at its delivery, from the
    process's dispositions (/proc/PID/status: not caught by a handler, not
    ignored) and the signal's default action.  A handler that re-raises the
    signal after resetting it is caught at the second delivery.
    """

    on: frozenset[int] = frozenset()
    text: str = "a fatal signal"

    def wanted(self, pid: int, signo: int) -> bool:
        return signo in self.on or will_kill(pid, signo)

    def __str__(self) -> str:
        return self.text


def will_kill(pid: int, signo: int) -> bool:
    """Whether delivering ``signo`` now ends process ``pid`` (False when unknowable).

    Asked at every delivery of such a signal (a 1 kHz SIGALRM asks a thousand
    times a second): /proc/PID/stat is kept open and read with one pread, its
    sigignore and sigcatch fields taken (parsing /proc/PID/status took 74 µs).
    """
    if not kills_by_default(signo):
        return False
    dispositions = _dispositions(pid)
    if dispositions is None:
        return False
    ignored, caught = dispositions
    bit = 1 << (signo - 1)
    return not (caught & bit or ignored & bit)


_stat_files: dict[int, int] = {}  # pid -> an open /proc/PID/stat
_MAX_STAT_FILES = 64


def _dispositions(pid: int) -> tuple[int, int] | None:
    """(sigignore, sigcatch) of a process, from /proc/PID/stat; None when it is gone."""
    for _attempt in range(2):
        fd = _stat_files.get(pid)
        if fd is None:
            try:
                fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            if len(_stat_files) >= _MAX_STAT_FILES:
                os.close(_stat_files.pop(next(iter(_stat_files))))
            _stat_files[pid] = fd
        try:
            data = os.pread(fd, 4096, 0)
        except OSError:
            data = b""
        if data:
            fields = data[data.rindex(b")") + 2 :].split()
            # Fields 33 and 34 of stat(5), counted from 1; fields[0] is field 3 (state).
            return int(fields[30]), int(fields[31])
        os.close(_stat_files.pop(pid))  # a recycled pid's stale file: open it again
    return None


Event = SyscallEvent | SignalEvent | CrashEvent

# -- names -----------------------------------------------------------------------


def errno_names() -> dict[str, int]:
    """Every errno name Python knows for this platform, aliases (EWOULDBLOCK) included."""
    return {
        name: value
        for name in dir(errno)
        if name.startswith("E") and isinstance(value := getattr(errno, name), int)
    }


def errno_name(value: int) -> str:
    return errno.errorcode.get(value, f"E{value}")


def errno_text(value: int) -> str:
    return os.strerror(value)


def signal_number(text: str) -> int | None:
    """SIGUSR1, USR1, usr1, 10, SIGRTMIN+2: the signal's number; None when it is not one."""
    upper = text.upper()
    if upper.isdigit():
        value = int(upper)
        return value if 1 <= value <= signal_module.SIGRTMAX else None
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    match = re.fullmatch(r"SIGRTM(IN|AX)([+-]\d+)?", upper)
    if match:
        base = signal_module.SIGRTMIN if match.group(1) == "IN" else signal_module.SIGRTMAX
        value = base + int(match.group(2) or 0)
        return value if signal_module.SIGRTMIN <= value <= signal_module.SIGRTMAX else None
    member = getattr(signal_module.Signals, upper, None)
    return int(member) if member is not None else None


# -- the parser ------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(==|!=|<=|>=|<|>|,|=|!|[^\s,<>=!]+)")


class _Tokens:
    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.items: list[tuple[str, int]] = []
        position = 0
        while position < len(spec):
            match = _TOKEN.match(spec, position)
            if match is None:  # trailing white space
                break
            self.items.append((match.group(1), match.start(1)))
            position = match.end()
        self.index = 0

    def peek(self) -> str | None:
        return self.items[self.index][0] if self.index < len(self.items) else None

    def column(self) -> int:
        if self.index < len(self.items):
            return self.items[self.index][1]
        return len(self.spec.rstrip())

    def take(self) -> str:
        word = self.items[self.index][0]
        self.index += 1
        return word

    def error(self, message: str, hint: str | None = None) -> EventSpecError:
        return EventSpecError(self.spec, self.column(), message, hint=hint)

    def expect(self, what: str) -> str:
        if self.peek() is None:
            raise self.error(f"{what} expected at the end")
        return self.take()


def _suggest(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}?" if close else None


def _number(tokens: _Tokens, what: str) -> int:
    column = tokens.column()
    word = tokens.expect(what)
    try:
        value = int(word, 0)
    except ValueError:
        raise EventSpecError(tokens.spec, column, f"{what} expected, not {word!r}") from None
    if not -(1 << 63) <= value < (1 << 64):
        raise EventSpecError(tokens.spec, column, f"{word} does not fit in 64 bits")
    return signed64(value)


def _operator(tokens: _Tokens) -> str:
    column = tokens.column()
    word = tokens.expect("a comparison (== != < <= > >=)")
    if word not in OPERATORS:
        raise EventSpecError(
            tokens.spec, column, f"a comparison (== != < <= > >=) expected, not {word!r}"
        )
    return word


def _syscall(tokens: _Tokens) -> tuple[str, int]:
    column = tokens.column()
    word = tokens.take()
    nr = syscalls.number(word)
    if nr is None:
        raise EventSpecError(
            tokens.spec,
            column,
            f"{word!r} is not an x86_64 system call",
            hint=_suggest(word, [*syscalls.names(), "signal", "any"]),
        )
    return word, nr


def _errno(tokens: _Tokens) -> int:
    column = tokens.column()
    word = tokens.take()
    if word.isdigit():
        value = int(word)
    else:
        known = errno_names()
        found = known.get(word.upper())
        if found is None:
            raise EventSpecError(
                tokens.spec,
                column,
                f"{word!r} is not an errno name",
                hint=_suggest(word.upper(), list(known)),
            )
        value = found
    if not 1 <= value <= MAX_ERRNO:
        raise EventSpecError(tokens.spec, column, f"errno {value} is out of range (1-4095)")
    return value


def _conditions(tokens: _Tokens) -> tuple[Condition, ...]:
    found: list[Condition] = []
    while True:
        column = tokens.column()
        word = tokens.expect("an argument (arg0 ... arg5)")
        match = re.fullmatch(r"arg([0-5])", word)
        if match is None:
            raise EventSpecError(
                tokens.spec, column, f"an argument (arg0 ... arg5) expected, not {word!r}"
            )
        op = _operator(tokens)
        found.append(Condition(int(match.group(1)), op, _number(tokens, "a number")))
        if tokens.peek() != "and":
            return tuple(found)
        tokens.take()


def parse_event(spec: str) -> Event:
    """Parse an event; EventSpecError (one line, pointing at the word) when it is wrong."""
    tokens = _Tokens(spec)
    text = " ".join(spec.split())
    first = tokens.peek()
    if first is None:
        raise tokens.error("an event is empty", hint="for example 'close fails EBADF'")
    if first == "signal":
        tokens.take()
        column = tokens.column()
        signal_word = tokens.expect("a signal name")
        number = signal_number(signal_word)
        if number is None:
            raise EventSpecError(
                spec,
                column,
                f"{signal_word!r} is not a signal",
                hint=_suggest(signal_word.upper(), [s.name for s in signal_module.Signals]),
            )
        _end(tokens)
        return SignalEvent(text, number)
    calls: list[tuple[str, int]] = []
    if first == "any":
        tokens.take()
    else:
        calls.append(_syscall(tokens))
        while tokens.peek() == ",":
            tokens.take()
            if tokens.peek() is None:
                raise tokens.error("a system call expected after ','")
            calls.append(_syscall(tokens))
    result = Result.EVERY
    errnos: list[int] = []
    op, value = "==", 0
    word = tokens.peek()
    if word == "fails":
        tokens.take()
        result = Result.FAILS
        if tokens.peek() not in (None, "if"):
            errnos.append(_errno(tokens))
            while tokens.peek() == ",":
                tokens.take()
                if tokens.peek() is None:
                    raise tokens.error("an errno name expected after ','")
                errnos.append(_errno(tokens))
    elif word == "returns":
        tokens.take()
        result = Result.RETURNS
        op = _operator(tokens)
        value = _number(tokens, "a number")
    elif word not in (None, "if"):
        raise tokens.error(
            f"'fails', 'returns' or 'if' expected, not {word!r}",
            hint=_suggest(word, ["fails", "returns"]),
        )
    conditions: tuple[Condition, ...] = ()
    if tokens.peek() == "if":
        tokens.take()
        conditions = _conditions(tokens)
    _end(tokens)
    if not calls and result is Result.EVERY:
        raise EventSpecError(
            spec,
            0,
            "'any' needs a result to wait for",
            hint="for example 'any fails ENOSPC': every system call of the process would stop it",
        )
    return SyscallEvent(
        text=text,
        calls=tuple(name for name, _nr in calls),
        numbers=tuple(nr for _name, nr in calls),
        result=result,
        errnos=tuple(dict.fromkeys(errnos)),
        op=op,
        value=value,
        conditions=conditions,
    )


def _end(tokens: _Tokens) -> None:
    word = tokens.peek()
    if word is not None:
        raise tokens.error(f"nothing expected after the event, not {word!r}")
