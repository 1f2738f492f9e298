"""The command-line tool: parse arguments, call the library, render, map errors to exit codes.

Each command is a few lines over the public API.  Errors are caught in one
place (:func:`main`) and printed as one line; a traceback means a bug.

The options are declared once, as data (:data:`COMMANDS`).  Two parsers read
that table:

- argparse, which is the reference: help, usage errors, abbreviations, every
  corner of the syntax;
- :func:`fast_parse`, a strict subset that only accepts the plain forms
  (``--opt VALUE``, ``--opt=VALUE``, ``-t TID``, flags, one positional) and
  hands anything else, including every error, to argparse.

Why two: importing argparse, with the ``re``, ``gettext`` and ``locale`` it
pulls in, took 8-10 ms of a 45 ms ``redhand stack`` on the reference
machine, against eu-stack's 24 ms for the whole job.  The fast parser returns
exactly what argparse would for what it accepts (a test compares the two on
thousands of command lines), so the only difference a user can see is the
time.  (click was dropped earlier for the same reason: 30-45 ms to import.)
Heavy modules are imported inside the commands.
"""

from __future__ import annotations

import os
import sys
import time

from redhand import __version__
from redhand.errors import RedhandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES = """\
exit codes:
  0    success
  1    internal error (a bug in redhand)
  2    bad command-line usage
  3    no such process (crashes: no such crash or bucket)
  4    permission denied (ptrace not allowed; crashes: the store is root's)
  5    the process is already traced by another tracer
  6    the pid is a kernel thread
  7    the process is a zombie
  8    the process exited during the capture
  9    the process could not be captured for another reason (crashes --db: the database)
  10   a file is not a usable ELF file, or a core holds no thread
  11   a file was not found
  12   memory could not be read
  13   an output file could not be written (nothing was left behind)
  14   eBPF could not be used (not allowed, or refused by the kernel)
  15   linkage --check: a hooked GOT slot was found
  16   collect --status: redhand is not the kernel's core handler
  124  watch: --timeout passed before the event
  130  interrupted (SIGINT; another signal: 128 + its number)
  watch -- CMD exits with the program's status (128 + signal when killed)
"""


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


class Arguments:
    """The parsed command line: one attribute per option ``dest``, plus ``command`` and ``run``."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # for mypy: the attributes come from the table
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Arguments) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Arguments({', '.join(f'{k}={v!r}' for k, v in sorted(vars(self).items()))})"


# -- values ------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1: {text!r}")
    return value


def _mode(text: str) -> str:
    if text not in ("auto", "fork", "stop"):
        raise ValueError(f"not a snapshot mode: {text!r} (auto, fork or stop)")
    return text


def _duration(text: str) -> float:
    """``30s``, ``5m``, ``1h``, ``500ms``, ``2.5`` (seconds)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    stripped = text.strip().lower()
    number, unit = stripped, "s"
    for suffix in ("ms", "s", "m", "h", "d"):
        if stripped.endswith(suffix):
            number, unit = stripped[: -len(suffix)], suffix
            break
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (for example 30s, 5m, 500ms)") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"a duration must be positive: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if value < 0:
        raise ValueError(f"must not be negative: {text!r}")
    return value


def _signal_number(text: str) -> int:
    from redhand.capture.events import signal_number

    number = signal_number(text)
    if number is None:
        raise ValueError(f"not a signal: {text!r} (SIGTERM, TERM or 15)")
    return number


def _stack_bytes(text: str) -> int:
    value = _positive(text)
    if value not in (512, 1024, 2048, 4096, 8192, 16384):
        raise ValueError(f"{text!r}: 16384, 8192, 4096, 2048, 1024 or 512")
    return value


def _backend(text: str) -> str:
    if text not in ("auto", "ebpf", "seccomp", "ptrace"):
        raise ValueError(f"not a backend: {text!r} (auto, ebpf, seccomp or ptrace)")
    return text


def _pid(text: str) -> int:
    try:
        return _positive(text)
    except ValueError:
        raise ValueError(f"not a process id: {text!r}") from None


# -- the options, as data ----------------------------------------------------

FLAG = "flag"  # --x: True when given
SWITCH = "switch"  # --x / --no-x: the last one wins
VALUE = "value"  # --x VALUE: the last one wins
APPEND = "append"  # --x VALUE, repeatable: every value, in order


class Option:
    """One option of a command, as both parsers read it."""

    __slots__ = ("default", "dest", "flags", "help", "kind", "metavar", "parse")

    def __init__(
        self,
        flags: tuple[str, ...],
        dest: str,
        kind: str,
        help: str,
        *,
        parse: Callable[[str], object] | None = None,
        default: object = None,
        metavar: str | None = None,
    ) -> None:
        self.flags = flags
        self.dest = dest
        self.kind = kind
        self.help = help
        self.parse = parse
        self.default = False if kind in (FLAG, SWITCH) and default is None else default
        self.metavar = metavar


class Command:
    """A subcommand: its positional argument, its options and the function that runs it."""

    __slots__ = ("description", "help", "options", "positional", "run")

    def __init__(
        self,
        help: str,
        description: str,
        positional: tuple[str, str, Callable[[str], object]] | None,  # (dest, metavar, parse)
        options: list[Option],
        run: Callable[[Arguments], int],
    ) -> None:
        self.help = help
        self.description = description
        self.positional = positional
        self.options = options
        self.run = run


def _display_options(*, source_default: bool) -> list[Option]:
    """How watch and run show the stacks of what they caught."""
    return [
        Option(("--no-group",), "no_group", FLAG, "show every thread, even with identical stacks"),
        Option(
            ("--max-frames",),
            "max_frames",
            VALUE,
            "show at most N frames per thread (default 10)",
            parse=_positive,
            metavar="N",
        ),
        Option(
            ("--source",),
            "source",
            SWITCH,
            f"file:line of each frame, from DWARF (default: {'on' if source_default else 'off'})",
            default=source_default,
        ),
    ]


def _capture_options(what: str) -> list[Option]:
    """What watch and run add to the stacks they show: recent calls, a packed program's names."""
    return [
        Option(
            ("--syscalls",),
            "syscalls",
            VALUE,
            f"show the last N system calls of the thread that {what} (stops the program at "
            "every system call: for a program that makes few)",
            parse=_positive,
            metavar="N",
        ),
        Option(
            ("--exe",),
            "exe",
            VALUE,
            "an unpacked copy of a packed program, to name the code it unpacks into memory "
            "(its bytes must match)",
            metavar="UNPACKED",
        ),
    ]


def _report_options(*, source_default: bool) -> list[Option]:
    """The options every command that prints backtraces shares."""
    # Source lines are off by default for `stack`, the quick look: a first
    # look at a process indexes its libraries' DWARF (libc's alone doubled the
    # command's time, 80 to 150 ms; later looks hit the cache).  On for `core`,
    # whose report is read at leisure.
    return [
        Option(("--json",), "json", FLAG, "print the JSON document (version 1)"),
        Option(("--no-group",), "no_group", FLAG, "show every thread, even with identical stacks"),
        Option(
            ("--max-frames",),
            "max_frames",
            VALUE,
            "show at most N frames per thread and say how many were left out "
            "(of a recursion: N at each end; default 10)",
            parse=_positive,
            metavar="N",
        ),
        Option(
            ("--all-frames",),
            "all_frames",
            FLAG,
            "show every frame, even the repeated cycles of a deep recursion",
        ),
        Option(
            ("--debug-dir",),
            "debug_dirs",
            APPEND,
            "look for separate debug files here too (repeatable; /usr/lib/debug is searched)",
            default=(),
            metavar="DIR",
        ),
        Option(
            ("--scan",),
            "scan",
            FLAG,
            "after the backtraces, every plausible return address on each thread's stack, "
            "with why it was accepted or rejected (forensics of broken stacks)",
        ),
        Option(
            ("--source",),
            "source",
            SWITCH,
            "file:line:column of each frame and the calls inlined there, from DWARF "
            f"through drgn (default: {'on' if source_default else 'off'})",
            default=source_default,
        ),
        Option(
            ("--no-inline",),
            "no_inline",
            FLAG,
            "do not show the calls inlined at a pc as frames of their own",
        ),
    ]


def _commands() -> dict[str, Command]:
    return {
        "stack": Command(
            "backtraces of every thread of a live process",
            "Show the backtrace of every thread of the live process PID. The process is frozen "
            "only while registers and stack bytes are copied (about a millisecond); unwinding "
            "and symbols are done after it runs again.",
            ("pid", "PID", _pid),
            [
                *_report_options(source_default=False),
                Option(
                    ("-t", "--thread"),
                    "tids",
                    APPEND,
                    "only this thread (repeatable)",
                    parse=_positive,
                    metavar="TID",
                ),
                Option(
                    ("--timing",), "timing", FLAG, "show how long the freeze and each phase took"
                ),
                Option(
                    ("--stack-bytes",),
                    "stack_bytes",
                    VALUE,
                    "bytes of each thread's stack copied while the process is frozen "
                    "(default 1 MiB)",
                    parse=_positive,
                    default=1 << 20,
                    metavar="N",
                ),
            ],
            run_stack,
        ),
        "core": Command(
            "explain a crash from a core file, with every thread's backtrace",
            "Read an ELF core file (plain, or compressed with zstd, gzip or xz) and explain the "
            "crash: the signal in plain words, the crashing thread first, then the others, the "
            "registers and the memory around the fault address.",
            ("core", "CORE", str),
            [
                Option(
                    ("--exe",),
                    "exe",
                    VALUE,
                    "the executable that crashed (when it moved, or for a core from another "
                    "machine), or an unpacked copy of a packed one",
                    metavar="EXE",
                ),
                Option(
                    ("--sysroot",),
                    "sysroot",
                    VALUE,
                    "find the executable and libraries under DIR (a core from another machine)",
                    metavar="DIR",
                ),
                *_report_options(source_default=True),
            ],
            run_core,
        ),
        "gcore": Command(
            "write a core file of a live process, which runs on",
            "Write an ELF core file of the live process PID, which gdb, lldb, eu-stack and "
            "redhand read. By default (fork mode) the process is paused only while a "
            "copy-on-write copy of it is made (tens of milliseconds per GiB) and the core is "
            "written from the copy; stop mode keeps it frozen for the whole dump, as gdb's "
            "gcore does. The file appears only when whole.",
            ("pid", "PID", _pid),
            [
                Option(
                    ("-o", "--output"),
                    "output",
                    VALUE,
                    "the core file to write (default core.PID, core.PID.zst with --zstd)",
                    metavar="FILE",
                ),
                Option(("--zstd",), "zstd", FLAG, "compress the core with zstd as it is written"),
                Option(
                    ("--mode",),
                    "mode",
                    VALUE,
                    "auto (fork where it is safe, else stop), fork or stop (default auto)",
                    parse=_mode,
                    default="auto",
                    metavar="MODE",
                ),
                Option(("--force",), "force", FLAG, "replace the output file if it exists"),
                Option(
                    ("-t", "--thread"),
                    "thread",
                    VALUE,
                    "the thread readers show first (default the main thread)",
                    parse=_positive,
                    metavar="TID",
                ),
                Option(("--json",), "json", FLAG, "print the JSON document (version 1)"),
            ],
            run_gcore,
        ),
        "linkage": Command(
            "the dynamic linking of a file, a live process or a core: PLT, GOT slots, hooks",
            "For a file: what it needs (DT_NEEDED, RPATH/RUNPATH, the interpreter), its imports "
            "by kind with their versions and PLT stubs, its exports, lazy or immediate binding "
            "and RELRO. For a process (PID, read as it runs, never stopped) or a core: the link "
            "map of every namespace, and every GOT slot of every object, compared with where "
            "the dynamic linker's own lookup binds it: bound, not yet bound (lazy), an IFUNC's "
            "variant, interposed by an LD_PRELOAD library, bound elsewhere, or hooked (pointing "
            "where no lookup puts it: another function, anonymous memory).",
            ("what", "PID|FILE|CORE", str),
            [
                Option(
                    ("--symbol",),
                    "symbol",
                    VALUE,
                    "only this symbol: who provides it to every object, through which slot",
                    metavar="NAME",
                ),
                Option(
                    ("--check",),
                    "check",
                    FLAG,
                    "only what is unusual (hooked, bound elsewhere, interposed); exit code 15 "
                    "when a slot is hooked",
                ),
                Option(("--all",), "every", FLAG, "list every slot (a process or a core)"),
                Option(
                    ("--data",),
                    "data",
                    FLAG,
                    "also the pointers in data that the dynamic linker filled (function "
                    "pointers, vtables: R_X86_64_64), not only the GOT slots",
                ),
                Option(("--exports",), "exports", FLAG, "list the exported symbols (a file)"),
                Option(("--json",), "json", FLAG, "print the JSON document (version 1)"),
            ],
            run_linkage,
        ),
        "allocs": Command(
            "who allocates what in a running program, with true call stacks",
            "Record the allocations of a running process (PID) or of a program launched under "
            "redhand (-- CMD ...), with uprobes on the allocator it really calls (read from "
            "its GOT slots: glibc, jemalloc, tcmalloc, a static executable's own): every call "
            "of malloc, calloc, realloc, free, operator new and delete, ... counted per call "
            "site in the kernel (exact), and call stacks for calls sampled by bytes, unwound "
            "with the program's CFI. Sampled blocks never freed are the leak suspects. Nothing "
            "is injected into the program; detaching leaves only the kernel's [uprobes] page.",
            ("pid", "[PID]", _pid),
            [
                Option(
                    ("--duration",),
                    "duration",
                    VALUE,
                    "record this long (30s, 5m; default: until the program ends or Ctrl-C)",
                    parse=_duration,
                    metavar="DURATION",
                ),
                Option(
                    ("--sample-bytes",),
                    "sample_bytes",
                    VALUE,
                    "a stack sample per this many bytes allocated, on average (default 524288)",
                    parse=_positive,
                    default=512 << 10,
                    metavar="N",
                ),
                Option(("--all",), "every", FLAG, "a stack for every allocation (slow)"),
                Option(
                    ("--stack-bytes",),
                    "stack_bytes",
                    VALUE,
                    "bytes of stack copied per sample: 16384 (default), 8192, 4096, 2048, 1024 "
                    "or 512",
                    parse=_stack_bytes,
                    default=16384,
                    metavar="N",
                ),
                Option(
                    ("--alloc",),
                    "extra_allocs",
                    APPEND,
                    "an allocator of the program's own: NAME:size=argN or NAME:size=BYTES "
                    "(repeatable)",
                    default=[],
                    metavar="SPEC",
                ),
                Option(
                    ("--free",),
                    "extra_frees",
                    APPEND,
                    "a free function of the program's own: NAME:ptr=arg0 (repeatable)",
                    default=[],
                    metavar="SPEC",
                ),
                Option(
                    ("--force",),
                    "force",
                    FLAG,
                    "record even when the program allocates so often that it would slow down "
                    "by more than 25%",
                ),
                Option(
                    ("--top",),
                    "top",
                    VALUE,
                    "rows per table (default 15)",
                    parse=_positive,
                    default=15,
                    metavar="N",
                ),
                Option(
                    ("--folded",),
                    "folded",
                    VALUE,
                    "write the sampled stacks as folded stacks (flamegraph.pl, speedscope)",
                    metavar="FILE",
                ),
                Option(("--svg",), "svg", VALUE, "write an SVG flame graph", metavar="FILE"),
                Option(("--json",), "json", FLAG, "print the JSON document (version 1)"),
            ],
            run_allocs,
        ),
        "watch": Command(
            "wait for a system call's result or a signal, stop the program there and act",
            "Wait for EVENT in a running process (-p), in every process of a name (--comm), or "
            "in a program launched under watch (-- CMD ...). When it happens the program is "
            "stopped on the spot (the thread runs nothing after the call), the actions run "
            "(default: print every thread's stack), and the program runs on.\n\n"
            "events: 'close fails EBADF', 'write fails EPIPE if arg0 == 1', "
            "'mmap returns < 0', 'openat', 'any fails ENOSPC', 'signal SIGUSR1'\n"
            "actions: stack, gcore [PATH], exec COMMAND ({pid}, {tid}), abort, stop, kill",
            ("spec", "EVENT", str),
            [
                Option(
                    ("-p", "--pid"),
                    "pid",
                    VALUE,
                    "watch this running process (every thread)",
                    parse=_pid,
                    metavar="PID",
                ),
                Option(
                    ("--comm",),
                    "comm",
                    VALUE,
                    "watch every process of this name, also those started later (eBPF)",
                    metavar="NAME",
                ),
                Option(
                    ("--then",),
                    "then",
                    APPEND,
                    "what to do at a hit, in order: stack (default), gcore [PATH], "
                    "exec 'COMMAND {pid} {tid}', abort, stop, kill; comma-separated or repeated",
                    default=(),
                    metavar="ACTIONS",
                ),
                Option(
                    ("--count",),
                    "count",
                    VALUE,
                    "act on the first N hits, then stop watching (default 1)",
                    parse=_positive,
                    default=1,
                    metavar="N",
                ),
                Option(
                    ("--skip",),
                    "skip",
                    VALUE,
                    "let the first N hits pass (default 0)",
                    parse=_count,
                    default=0,
                    metavar="N",
                ),
                Option(
                    ("--timeout",),
                    "timeout",
                    VALUE,
                    "give up after this long (30s, 5m; exit code 124)",
                    parse=_duration,
                    metavar="DURATION",
                ),
                *_capture_options("hit"),
                Option(
                    ("--backend",),
                    "backend",
                    VALUE,
                    "auto (default), ebpf, seccomp (a launched program) or ptrace",
                    parse=_backend,
                    default="auto",
                    metavar="NAME",
                ),
                Option(
                    ("--no-follow",),
                    "no_follow",
                    FLAG,
                    "a launched program only: do not follow its children",
                ),
                Option(("--json",), "json", FLAG, "print one JSON document per hit (JSON Lines)"),
                *_display_options(source_default=False),
            ],
            run_watch,
        ),
        "run": Command(
            "run a program under a crash guard: a full crash report before it dies",
            "Run a program (-- CMD ...) or guard a running process (-p PID) until it ends. It "
            "stops for nothing but signals. At a signal that is about to end a process of it "
            "(SIGSEGV, SIGABRT, a SIGTERM from outside, ...), every thread's stack and the "
            "crash report that 'redhand core' gives are printed while the process is whole; "
            "then the signal is delivered as it came: the kernel writes its core as without "
            "redhand, and redhand exits with the program's status. With --timeout, a hang's "
            "stacks are printed before the program is killed.",
            None,
            [
                Option(
                    ("-p", "--pid"),
                    "pid",
                    VALUE,
                    "guard this running process until it ends",
                    parse=_pid,
                    metavar="PID",
                ),
                Option(
                    ("--core",),
                    "core",
                    VALUE,
                    "also write a core of the moment of the crash (or of the timeout) to FILE "
                    "({pid} is replaced)",
                    metavar="FILE",
                ),
                Option(
                    ("--on",),
                    "on",
                    APPEND,
                    "report every delivery of this signal too, even one the program handles "
                    "(repeatable)",
                    parse=_signal_number,
                    default=(),
                    metavar="SIGNAL",
                ),
                Option(
                    ("--timeout",),
                    "timeout",
                    VALUE,
                    "when time is up, print every thread's stack, then kill the program "
                    "(exit code 124, as timeout(1))",
                    parse=_duration,
                    metavar="DURATION",
                ),
                Option(
                    ("--kill-signal",),
                    "kill_signal",
                    VALUE,
                    "the signal sent at the timeout (default SIGTERM)",
                    parse=_signal_number,
                    default=15,
                    metavar="SIGNAL",
                ),
                Option(
                    ("--kill-after",),
                    "kill_after",
                    VALUE,
                    "SIGKILL this long after the kill signal if the program is still there "
                    "(default 10s)",
                    parse=_duration,
                    default=10.0,
                    metavar="DURATION",
                ),
                Option(
                    ("--no-follow",),
                    "no_follow",
                    FLAG,
                    "guard the program alone, not its children",
                ),
                *_capture_options("crashed"),
                Option(("--json",), "json", FLAG, "print the JSON document (version 1) at the end"),
                *_display_options(source_default=True),
            ],
            run_run,
        ),
    }


# Commands that take a program to run after ``--``.
_TRAILING = frozenset({"watch", "run", "allocs"})


# -- the fast parser ---------------------------------------------------------


def fast_parse(argv: Sequence[str]) -> Arguments | None:
    """The plain command lines, parsed as argparse would; None for anything else.

    Accepted: a known command, then in any order its options spelled in full
    (``--opt VALUE``, ``--opt=VALUE``, ``-t TID``, flags) and exactly one
    positional argument.  Everything else (help, --version, abbreviations,
    ``--``, a value that starts with ``-``, a value that does not convert,
    a missing or second positional) returns None and goes to argparse, which
    prints the help or the error.
    """
    if not argv:
        return None
    command = _commands().get(argv[0])
    if command is None:
        return None
    by_flag: dict[str, tuple[Option, bool]] = {}
    values: dict[str, object] = {}
    for option in command.options:
        for flag in option.flags:
            by_flag[flag] = (option, True)
        if option.kind == SWITCH:
            by_flag["--no-" + option.flags[-1][2:]] = (option, False)
        default = option.default
        if option.kind == APPEND and default is not None:
            default = list(default)  # type: ignore[call-overload]  # argparse appends to a copy
        values[option.dest] = default
    positional: str | None = None
    index = 1
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("-") or token == "-":
            if positional is not None or token == "-":
                return None
            positional = token
            continue
        name, equals, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        found = by_flag.get(name)
        if found is None:
            return None
        option, on = found
        if option.kind in (FLAG, SWITCH):
            if equals:
                return None
            values[option.dest] = on
            continue
        if equals:
            text = inline
        elif index < len(argv) and not argv[index].startswith("-"):
            text = argv[index]
            index += 1
        else:
            return None
        try:
            value = option.parse(text) if option.parse is not None else text
        except ValueError:
            return None
        if option.kind == APPEND:
            values[option.dest] = [*(values[option.dest] or ()), value]  # type: ignore[misc]
        else:
            values[option.dest] = value
    if command.positional is None:
        return (
            None
            if positional is not None
            else Arguments(command=argv[0], run=command.run, **values)
        )
    dest, metavar, parse = command.positional
    if positional is None:
        if not metavar.startswith("["):
            return None
        values[dest] = None
        return Arguments(command=argv[0], run=command.run, **values)
    try:
        values[dest] = parse(positional)
    except ValueError:
        return None
    return Arguments(command=argv[0], run=command.run, **values)


# -- argparse: the reference, for help and errors -----------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser for every command, built from :func:`_commands`."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")

    class Formatter(argparse.RawDescriptionHelpFormatter):
        """argparse's formatter, told the terminal's width so that it does not import shutil.

        argparse makes a formatter for every ``add_argument`` (to check the
        metavar) and, without a width, each asks ``shutil.get_terminal_size``:
        importing shutil took 4 ms on the reference machine.  The width is
        found the way shutil finds it.
        """

        def __init__(
            self,
            prog: str,
            indent_increment: int = 2,
            max_help_position: int = 24,
            width: int | None = None,
        ) -> None:
            if width is None:
                width = _terminal_columns() - 2
            super().__init__(prog, indent_increment, max_help_position, width)

    def checked(parse: Callable[[str], object]) -> Callable[[str], object]:
        """``parse`` with its ValueError turned into argparse's message-carrying error."""

        def convert(text: str) -> object:
            try:
                return parse(text)
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None

        return convert

    parser = Parser(
        prog="redhand",
        description="Catch native Linux programs red-handed.",
        epilog=EXIT_CODES,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"redhand {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for name, command in _commands().items():
        sub = subparsers.add_parser(
            name,
            help=command.help,
            description=command.description,
            epilog=EXIT_CODES,
            formatter_class=Formatter,
        )
        if command.positional is not None:
            dest, metavar, parse = command.positional
            if metavar.startswith("["):  # optional: [PID]
                sub.add_argument(dest, type=checked(parse), metavar=metavar[1:-1], nargs="?")
            else:
                sub.add_argument(dest, type=checked(parse), metavar=metavar)
        for option in command.options:
            common: dict[str, Any] = {"dest": option.dest, "help": option.help}
            if option.kind == FLAG:
                sub.add_argument(*option.flags, action="store_true", **common)
            elif option.kind == SWITCH:
                sub.add_argument(
                    *option.flags,
                    action=argparse.BooleanOptionalAction,
                    default=option.default,
                    **common,
                )
            else:
                default = option.default
                sub.add_argument(
                    *option.flags,
                    action="append" if option.kind == APPEND else "store",
                    type=checked(option.parse) if option.parse is not None else str,
                    default=list(default) if isinstance(default, tuple) else default,
                    metavar=option.metavar,
                    **common,
                )
        sub.set_defaults(run=command.run)
    # Run before this parser is built (see main): listed here for --help alone.
    subparsers.add_parser(
        "collect", help="become the kernel's core handler; `collect --help` for more"
    )
    subparsers.add_parser(
        "crashes", help="the crashes kept on this machine or a fleet, grouped by bug"
    )
    return parser


def parse_arguments(argv: Sequence[str]) -> Arguments:
    """Parse a command line (without the program name); UsageError when it is wrong.

    For the commands that launch a program, what follows ``--`` is its
    command line (``command_argv``; None without ``--``).
    """
    argv = list(argv)
    trailing: list[str] | None = None
    if argv and argv[0] in _TRAILING and "--" in argv:
        split = argv.index("--")
        argv, trailing = argv[:split], argv[split + 1 :]
    fast = fast_parse(argv)
    args = fast if fast is not None else Arguments(**vars(build_parser().parse_args(argv)))
    if args.command in _TRAILING:
        args.__dict__["command_argv"] = trailing
    return args


def _terminal_columns() -> int:
    """$COLUMNS, else the width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns if columns > 0 else 80


def run_stack(args: Arguments) -> int:
    from redhand.report.stack import build_stack_report, render_stack_json, render_stack_text
    from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS
    from redhand.target.live import attach

    started = time.perf_counter()
    debug_dirs = tuple(dict.fromkeys((*args.debug_dirs, *DEFAULT_DEBUG_DIRS)))
    tids = args.tids or None
    with attach(
        args.pid,
        threads=tids,
        stack_bytes=args.stack_bytes,
        debug_dirs=debug_dirs,
        source=args.source,
        inline=not args.no_inline,
    ) as target:
        report = build_stack_report(
            target,
            group=not args.no_group,
            tids=set(tids) if tids else None,
            max_frames=args.max_frames,
            show_timing=args.timing,
            all_frames=args.all_frames,
        )
        target.timings["total"] = time.perf_counter() - started
        if args.json and args.scan:
            from redhand.report.scan import render_json_with_scans
            from redhand.report.stack import stack_json

            render_json_with_scans(stack_json(report), target, sys.stdout)
        elif args.json:
            render_stack_json(report, sys.stdout)
        else:
            render_stack_text(report, sys.stdout)
            if args.scan:
                from redhand.report.scan import render_scans_text

                render_scans_text(target, sys.stdout, set(tids) if tids else None)
    sys.stdout.flush()
    return 0


def run_core(args: Arguments) -> int:
    from redhand.report.core import build_core_report, render_core_json, render_core_text
    from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS
    from redhand.target.core import open_core
    from redhand.target.decompress import terminal_progress

    debug_dirs = tuple(dict.fromkeys((*args.debug_dirs, *DEFAULT_DEBUG_DIRS)))
    on_terminal = sys.stderr.isatty()
    with (
        terminal_progress(f"decompressing {args.core}", enabled=on_terminal) as progress,
        open_core(
            args.core,
            exe=args.exe,
            sysroot=args.sysroot,
            debug_dirs=debug_dirs,
            progress=progress,
            source=args.source,
            inline=not args.no_inline,
        ) as target,
    ):
        if not target.threads:
            # Nothing to report: say why in one line, rather than a report of "0 threads".
            from redhand.errors import ElfError

            reasons = [w for w in target.warnings if "note" in w.lower() or "PT_NOTE" in w]
            raise ElfError(
                args.core,
                "the core holds no thread, so there is no crash to report",
                hint=reasons[0] if reasons else "its NT_PRSTATUS notes are missing or unreadable",
            )
        report = build_core_report(
            target,
            group=not args.no_group,
            max_frames=args.max_frames,
            all_frames=args.all_frames,
        )
        if args.json and args.scan:
            from redhand.report.core import core_json
            from redhand.report.scan import render_json_with_scans

            render_json_with_scans(core_json(report), target, sys.stdout)
        elif args.json:
            render_core_json(report, sys.stdout)
        else:
            render_core_text(report, sys.stdout)
            if args.scan:
                from redhand.report.scan import render_scans_text

                render_scans_text(target, sys.stdout)
    sys.stdout.flush()
    return 0


def run_gcore(args: Arguments) -> int:
    from redhand.capture.gcore import gcore
    from redhand.report.gcore import render_gcore_json, render_gcore_text
    from redhand.report.progress import terminal_progress

    with terminal_progress(f"writing a core of process {args.pid}", threshold=64 << 20) as bar:
        result = gcore(
            args.pid,
            args.output,
            mode=args.mode,
            compression="zstd" if args.zstd else None,
            force=args.force,
            first_thread=args.thread,
            progress=bar,
        )
    if args.json:
        render_gcore_json(result, sys.stdout)
    else:
        render_gcore_text(result, sys.stdout)
    return 0


def _say_recording(recording: object) -> None:
    from redhand.capture.allocs import Recording, describe_probes

    assert isinstance(recording, Recording)
    print(
        f"recording the allocations of process {recording.pid}: "
        f"{describe_probes(recording.probes, shown=3)} "
        f"(attached in {recording.attach_seconds * 1000:.0f} ms; Ctrl-C to stop)",
        file=sys.stderr,
        flush=True,
    )


def run_allocs(args: Arguments) -> int:
    import signal

    from redhand.capture.allocs import allocs
    from redhand.report.allocs import allocs_json, flame_graph_svg, render_allocs_text

    if (args.pid is None) == (args.command_argv is None):
        raise UsageError("redhand allocs: say what to record: PID or -- CMD ... (one of them)")
    if args.command_argv == []:
        raise UsageError("redhand allocs: a program to launch is expected after --")
    stop = False

    def interrupted(signo: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        try:
            result = allocs(
                args.pid,
                argv=args.command_argv,
                duration=args.duration,
                sample_bytes=args.sample_bytes,
                every=args.every,
                stack_bytes=args.stack_bytes,
                extra_allocs=args.extra_allocs,
                extra_frees=args.extra_frees,
                force=args.force,
                should_stop=lambda: stop,
                on_attached=_say_recording,
            )
        except ValueError as error:
            if isinstance(error, RedhandError):
                raise
            raise UsageError(f"redhand allocs: {error}") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    if args.folded:
        with open(args.folded, "w") as file:
            file.write(result.folded())
    if args.svg:
        with open(args.svg, "w") as file:
            file.write(flame_graph_svg(result))
    if args.json:
        import json

        sys.stdout.write(json.dumps(allocs_json(result)) + "\n")
    else:
        render_allocs_text(result, sys.stdout, top=args.top)
    if result.exit_status is not None:
        code = os.waitstatus_to_exitcode(result.exit_status)
        return 128 - code if code < 0 else code
    return 0


EXIT_HOOKED = 15


def run_linkage(args: Arguments) -> int:
    from redhand.dynlink import Linkage, Status, linkage
    from redhand.report.linkage import (
        file_json,
        linkage_json,
        render_file_text,
        render_linkage_text,
    )

    what: str | int = args.what
    if isinstance(what, str) and what.isdigit() and not os.path.exists(what):
        what = _pid(what)
    result = linkage(what, data=args.data)
    if isinstance(result, Linkage):
        if args.json:
            import json

            document = linkage_json(
                result, symbol=args.symbol, check=args.check, every=not args.check
            )
            # One line: a process's document holds tens of thousands of slots (indenting
            # them took four times as long as the rest, and doubled its size).
            sys.stdout.write(json.dumps(document) + "\n")
        else:
            render_linkage_text(
                result, sys.stdout, symbol=args.symbol, check=args.check, every=args.every
            )
        hooked = any(slot.status is Status.HOOKED for slot in result.slots)
        return EXIT_HOOKED if args.check and hooked else 0
    if args.json:
        import json

        sys.stdout.write(json.dumps(file_json(result, symbol=args.symbol)) + "\n")  # one line
    else:
        render_file_text(result, sys.stdout, symbol=args.symbol, exports=args.exports)
    return 0


def run_watch(args: Arguments) -> int:
    from redhand.capture.watch import Caught, Watch, WatchTimedOut, parse_actions
    from redhand.report.watch import render_caught_json, render_caught_text, render_header

    targets = [x is not None for x in (args.pid, args.comm, args.command_argv)]
    if sum(targets) != 1:
        raise UsageError(
            "redhand watch: say what to watch: -p PID, --comm NAME, or -- CMD ... (one of them)"
        )
    if args.command_argv == []:
        raise UsageError("redhand watch: a program to launch is expected after --")
    try:
        actions = parse_actions(args.then or ["stack"])
        watched = Watch(
            args.spec,
            pid=args.pid,
            comm=args.comm,
            argv=args.command_argv,
            then=actions,
            count=args.count,
            skip=args.skip,
            timeout=args.timeout,
            backend=args.backend,
            follow=not args.no_follow,
            source=args.source,
            syscalls=args.syscalls,
            exe=args.exe,
        )
    except ValueError as error:
        if isinstance(error, RedhandError):
            raise
        raise UsageError(f"redhand watch: {error}") from None
    import io

    from redhand.report.style import Style

    watched.on_start = lambda started: render_header(started, sys.stderr)
    group = not args.no_group
    style = Style.for_stream(sys.stdout)

    def prepare(caught: Caught) -> None:
        # Rendered while the program runs on (unwinding and symbols are the slow part).
        out = io.StringIO()
        if args.json:
            render_caught_json(caught, out, max_frames=args.max_frames, group=group)
        else:
            render_caught_text(caught, out, max_frames=args.max_frames, group=group, style=style)
        caught.rendered = out.getvalue()

    watched.prepare = prepare
    for caught in watched:
        sys.stdout.write(caught.rendered or "")
        sys.stdout.flush()
    if watched.timed_out:
        hits = f"{watched.caught} of {watched.count} hits" if watched.caught else "no hit"
        ended = f": {watched.argv[0]} was killed" if watched.argv is not None else ""
        raise WatchTimedOut(f"{hits} of '{watched.event}' in {args.timeout:g} s{ended}")
    if watched.argv is not None:
        if watched.exec_error:
            print(f"redhand: cannot run {watched.argv[0]}: {watched.exec_error}", file=sys.stderr)
            return 126
        status = watched.exit_status
        code = os.waitstatus_to_exitcode(status) if status is not None else 0
        if watched.caught < watched.count:
            print(
                f"redhand: {watched.argv[0]} ended after {watched.caught} of "
                f"{watched.count} hit(s) of '{watched.event}'",
                file=sys.stderr,
            )
        return 128 - code if code < 0 else code
    if watched.ended and watched.caught < watched.count:
        from redhand.errors import ProcessExited

        pid = watched.pid or 0
        raise ProcessExited(
            pid,
            f"process {pid} exited after {watched.caught} of {watched.count} hit(s) "
            f"of '{watched.event}'",
        )
    return 0


def run_run(args: Arguments) -> int:
    import io

    from redhand.capture.run import Run
    from redhand.capture.watch import Caught
    from redhand.report.run import (
        exit_json,
        render_delivery,
        render_end,
        render_guard_header,
        render_report_text,
        report_json,
    )
    from redhand.report.style import Style

    if (args.pid is None) == (args.command_argv is None):
        raise UsageError("redhand run: say what to guard: -- CMD ... or -p PID (one of them)")
    if args.command_argv == []:
        raise UsageError("redhand run: a program to launch is expected after --")
    guard = Run(
        args.command_argv,
        pid=args.pid,
        on=args.on,
        core=args.core,
        timeout=args.timeout,
        kill_signal=args.kill_signal,
        kill_after=args.kill_after,
        follow=not args.no_follow,
        syscalls=args.syscalls,
        source=args.source,
        exe=args.exe,
    )
    guard.on_start = lambda started: render_guard_header(guard, sys.stderr)
    group = not args.no_group
    style = Style.for_stream(sys.stdout)
    documents: list[dict[str, object]] = []
    document_of: dict[int, dict[str, object]] = {}

    def prepare(caught: Caught) -> None:
        # Rendered while the process is held (it is about to die): the time it was held
        # is known only after, and put in below.
        if args.json:
            document = report_json(caught, max_frames=args.max_frames, group=group)
            documents.append(document)
            document_of[id(caught)] = document
            return
        out = io.StringIO()
        render_report_text(
            caught, out, max_frames=args.max_frames, group=group, style=style, guard=guard
        )
        caught.rendered = out.getvalue()

    guard.prepare = prepare
    for caught in guard:
        held = document_of.pop(id(caught), None)
        if held is not None:
            held["timing"] = {"stopped_ns": caught.stopped_ns, "paused_ns": caught.paused_ns}
        if caught.rendered:
            sys.stdout.write(caught.rendered)
            render_delivery(caught, sys.stdout)
    if guard.exec_error:
        print(f"redhand: cannot run {args.command_argv[0]}: {guard.exec_error}", file=sys.stderr)
        return 126
    if args.json:
        import json

        main_pid = args.pid
        primary = next((d for d in documents if main_pid is None or d.get("pid") == main_pid), None)
        document = dict(primary) if primary is not None else {"redhand": 1, "kind": "run"}
        document["exit"] = exit_json(guard)
        document["reports"] = documents
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        render_end(guard, sys.stderr)
    return guard.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting (so tests can call it)."""
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["collect"]:
        from redhand.collect.command import collect_command

        return collect_command(words[1:])
    if words[:1] == ["crashes"]:
        from redhand.collect.crashes import main as crashes

        return crashes(list(words[1:]))
    try:
        args = parse_arguments(words)
        run: Callable[[Arguments], int] = args.run
        return run(args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except RedhandError as error:
        print(f"redhand: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("redhand: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`redhand stack PID | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as error:
        if os.environ.get("REDHAND_DEBUG"):
            raise
        print(
            f"redhand: internal error: {type(error).__name__}: {error} "
            "(this is a bug in redhand; run with REDHAND_DEBUG=1 for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
