"""The command-line tool: parse arguments, call the library, render, map errors to exit codes.

Each command is a few lines over the public API.  Errors are caught in one
place (:func:`main`) and printed as one line; a traceback means a bug.

The parser is argparse rather than click: importing click took 30-45 ms on
the reference machine, as long as eu-stack's whole run on a 20-thread
process, and ``redhand stack`` must not lose to eu-stack before it has
started.  Heavy modules are imported inside the commands for the same reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from redhand import __version__
from redhand.errors import RedhandError

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES = """\
exit codes:
  0    success
  1    internal error (a bug in redhand)
  2    bad command-line usage
  3    no such process
  4    permission denied (ptrace not allowed)
  5    the process is already traced by another tracer
  6    the pid is a kernel thread
  7    the process is a zombie
  8    the process exited during the capture
  9    the process could not be captured for another reason
  10   a file is not a usable ELF file
  11   a file was not found
  12   memory could not be read
  130  interrupted
"""


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, told the terminal's width so that it does not import shutil.

    argparse makes a formatter for every ``add_argument`` (to check the
    metavar) and, without a width, each asks ``shutil.get_terminal_size``:
    importing shutil took 4 ms of the start of ``redhand stack`` on the
    reference machine.  The width is found the way shutil finds it.
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


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _pid(text: str) -> int:
    try:
        return _positive(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}") from None


def _add_report_options(command: argparse.ArgumentParser, *, source_default: bool) -> None:
    """The options every command that prints backtraces shares."""
    command.add_argument("--json", action="store_true", help="print the JSON document (version 1)")
    command.add_argument(
        "--no-group", action="store_true", help="show every thread, even with identical stacks"
    )
    command.add_argument(
        "--max-frames",
        type=_positive,
        metavar="N",
        help="show at most N frames per thread and say how many were left out "
        "(of a recursion: N at each end; default 10)",
    )
    command.add_argument(
        "--all-frames",
        action="store_true",
        help="show every frame, even the repeated cycles of a deep recursion",
    )
    command.add_argument(
        "--debug-dir",
        dest="debug_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="look for separate debug files here too (repeatable; /usr/lib/debug is searched)",
    )
    command.add_argument(
        "--scan",
        action="store_true",
        help="after the backtraces, every plausible return address on each thread's stack, "
        "with why it was accepted or rejected (forensics of broken stacks)",
    )
    # Source lines are off by default for `stack`: drgn indexing libc's debug
    # information doubled the command's time (80 to 150 ms), and `stack` is the
    # quick look.  On for `core`, whose report is read at leisure.
    command.add_argument(
        "--source",
        action=argparse.BooleanOptionalAction,
        default=source_default,
        help="file:line:column of each frame and the calls inlined there, from DWARF "
        f"through drgn (default: {'on' if source_default else 'off'})",
    )
    command.add_argument(
        "--no-inline",
        action="store_true",
        help="do not show the calls inlined at a pc as frames of their own",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="redhand",
        description="Catch native Linux programs red-handed.",
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"redhand {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    stack = commands.add_parser(
        "stack",
        help="backtraces of every thread of a live process",
        description=(
            "Show the backtrace of every thread of the live process PID. The process is frozen "
            "only while registers and stack bytes are copied (about a millisecond); unwinding "
            "and symbols are done after it runs again."
        ),
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    stack.add_argument("pid", type=_pid, metavar="PID")
    _add_report_options(stack, source_default=False)
    stack.add_argument(
        "-t",
        "--thread",
        dest="tids",
        type=_positive,
        action="append",
        metavar="TID",
        help="only this thread (repeatable)",
    )
    stack.add_argument(
        "--timing", action="store_true", help="show how long the freeze and each phase took"
    )
    stack.add_argument(
        "--stack-bytes",
        type=_positive,
        default=1 << 20,
        metavar="N",
        help="bytes of each thread's stack copied while the process is frozen (default 1 MiB)",
    )
    stack.set_defaults(run=run_stack)

    core = commands.add_parser(
        "core",
        help="explain a crash from a core file, with every thread's backtrace",
        description=(
            "Read an ELF core file (plain, or compressed with zstd, gzip or xz) and explain the "
            "crash: the signal in plain words, the crashing thread first, then the others, the "
            "registers and the memory around the fault address."
        ),
        epilog=EXIT_CODES,
        formatter_class=_Formatter,
    )
    core.add_argument("core", metavar="CORE")
    core.add_argument(
        "--exe",
        metavar="EXE",
        help="the executable that crashed (when it moved, or for a core from another machine)",
    )
    core.add_argument(
        "--sysroot",
        metavar="DIR",
        help="find the executable and libraries under DIR (a core from another machine)",
    )
    _add_report_options(core, source_default=True)
    core.set_defaults(run=run_core)
    return parser


def run_stack(args: argparse.Namespace) -> int:
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
            group=not args.no_group and not args.json,
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


def run_core(args: argparse.Namespace) -> int:
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
        report = build_core_report(
            target,
            group=not args.no_group and not args.json,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code instead of exiting (so tests can call it)."""
    try:
        args = build_parser().parse_args(argv)
        run: Callable[[argparse.Namespace], int] = args.run
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
