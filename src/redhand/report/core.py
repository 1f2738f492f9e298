"""The report of ``redhand core``: the crash explained, then every thread, then the registers.

Like ``redhand stack``, the work is done once (:func:`build_core_report`) and
rendered as text for people or as JSON for programs.
"""

from __future__ import annotations

from typing import TextIO

from redhand.report.stack import (
    JSON_VERSION,
    StackReport,
    build_stack_report,
    modules_json,
    render_groups,
    threads_json,
)
from redhand.report.style import Style
from redhand.target.model import USER_REGS_FIELDS
from redhand.target.target import DEFAULT_MAX_FRAMES, Target, Thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.analysis.crash import Crash
    from redhand.analysis.environment import HostFacts, ProgramFacts
    from redhand.analysis.instructions import CrashInstructions

# The registers worth a line, in the order people read them.
_REGISTER_ROWS = (
    ("rip", "rsp", "rbp", "eflags"),
    ("rax", "rbx", "rcx", "rdx"),
    ("rsi", "rdi", "r8", "r9"),
    ("r10", "r11", "r12", "r13"),
    ("r14", "r15", "fs_base", "orig_rax"),
)


class CoreReport:
    """A crash report: the target, its crash (None if the core says of none), the threads."""

    def __init__(self, target: Target, crash: Crash | None, stacks: StackReport) -> None:
        self.target = target
        self.crash = crash
        self.stacks = stacks
        self._program: ProgramFacts | None = None
        self._host: HostFacts | None = None
        self._instructions: CrashInstructions | None = None
        self._instructions_done = False

    @property
    def program(self) -> ProgramFacts:
        """What is unusual about the program (worked out on first use)."""
        if self._program is None:
            from redhand.analysis.environment import program_facts

            self._program = program_facts(self.target)
        return self._program

    @property
    def instructions(self) -> CrashInstructions | None:
        """The instruction at the crash and a few before it (None without a crash)."""
        if not self._instructions_done:
            from redhand.analysis.instructions import crash_instructions

            self._instructions_done = True
            self._instructions = crash_instructions(self.target, self.host.cpu_flags)
        return self._instructions

    @property
    def host(self) -> HostFacts:
        """The host: the live process's, or for a core this machine's (which may differ)."""
        if self._host is None:
            from redhand.analysis.environment import host_facts

            live = self.target.source == "live"
            self._host = host_facts(self.target.pid if live else None, this_machine=live)
        return self._host

    @property
    def crashed_thread(self) -> Thread | None:
        return next((thread for thread in self.target.threads if thread.crashed), None)


def build_core_report(
    target: Target,
    *,
    group: bool = True,
    max_frames: int | None = None,
    unwind_limit: int = DEFAULT_MAX_FRAMES,
    all_frames: bool = False,
) -> CoreReport:
    crash = target.crash
    stacks = build_stack_report(
        target,
        group=group,
        max_frames=max_frames,
        unwind_limit=unwind_limit,
        all_frames=all_frames,
    )
    # The crashing thread first, and never grouped with others.
    stacks.groups.sort(key=lambda g: not any(thread.crashed for thread in g.threads))
    return CoreReport(target, crash, stacks)


# -- text -----------------------------------------------------------------------------


def _process_lines(target: Target, style: Style) -> list[str]:
    process = target.process
    core_path = getattr(target, "core_path", None)
    compression = getattr(target, "compression", None)
    count = len(target.threads)
    live = target.source == "live"  # redhand run: the process caught at its fatal signal
    who = f"process {target.pid}" if target.pid is not None else "a process of unknown pid"
    title = who if live else f"core of {who}"
    if target.exe:
        title += f" ({target.exe})"
    title += f", {count:,} thread{'s' if count != 1 else ''}"
    lines = [style(title, "bold")]
    if core_path:
        lines.append(f"core file: {core_path}" + (f" ({compression})" if compression else ""))
    if live and target.cmdline:
        lines.append(f"command: {' '.join(target.cmdline)}")
    if process is not None:
        command = process.psargs
        if process.psargs_truncated:
            command += " …(cut to 80 bytes by the kernel)"
        lines.append(f"command: {command}")
        lines.append(f"uid {process.uid}, gid {process.gid}, parent {process.ppid}")
    return lines


def _crash_lines(report: CoreReport, style: Style) -> list[str]:
    crash = report.crash
    if crash is None:
        made_by = getattr(report.target, "made_by", None)
        if made_by:
            how = f"{made_by.get('mode')} snapshot"
            pause = made_by.get("pause_ns")
            if isinstance(pause, int):
                how += f", process paused {pause / 1e6:.2f} ms"
            return [f"no fatal signal: written by redhand gcore from the running process ({how})"]
        return ["no fatal signal recorded (a core written by gcore or on request?)"]
    signal = crash.signal_name
    if crash.code_name:
        signal += f" ({crash.code_name})"
    where = f" at address {crash.address:#x}" if crash.address is not None else ""
    lines = [style(f"{signal}{where} in thread {crash.thread}", "bold", "red")]
    # "null dereference: read at 0x10: ...", without saying the kind twice
    # when the explanation starts with it ("stack overflow: [a → b] ...").
    label = crash.kind.replace("-", " ")
    if crash.explanation.lower().startswith(label):
        lines.append(crash.explanation)
    else:
        lines.append(style(label, "bold") + ": " + crash.explanation)
    return lines


_WRAP = 100


def _environment_lines(report: CoreReport, style: Style) -> list[str]:
    """The program and the host, and what is unusual about the program, with evidence."""
    import textwrap

    from redhand.analysis.environment import host_summary, summary

    def wrapped(label: str, text: str, indent: str = "") -> list[str]:
        # Long facts are folded at 100 columns, the rest of a point indented under it.
        first, *rest = textwrap.wrap(
            f"{label}{text}",
            _WRAP,
            initial_indent=indent,
            subsequent_indent=indent + "    ",
            break_on_hyphens=False,
        ) or [indent + label]
        if label:
            first = first.replace(label, style(label, "bold"), 1)
        return [first, *rest]

    program = report.program
    lines = ["", *wrapped("program: ", summary(program))]
    for fact in program.unusual:
        lines.extend(wrapped("", f"{fact.what} ({fact.evidence})", "  "))
    host = report.host
    whose = "" if host.this_machine else " (this machine's: the core may come from another)"
    lines.extend(wrapped("host: ", f"{host_summary(host)}{whose}"))
    instructions = report.instructions
    if instructions is not None and instructions.lines:
        lines.append(style("instructions at the crash:", "bold"))
        for address, text, at_crash in instructions.lines:
            lines.append(f"{'=>' if at_crash else '  '} {address:#018x}  {text}")
        if instructions.needs:
            lines.append(f"   (needs {', '.join(instructions.needs)})")
        if instructions.explanation:
            lines.append(style(instructions.explanation, "bold"))
    return lines


def _register_lines(thread: Thread, style: Style) -> list[str]:
    registers = thread.registers
    if registers is None:
        return []
    values = registers.as_dict()
    lines = [style(f"registers of thread {thread.tid}:", "bold")]
    for row in _REGISTER_ROWS:
        cells = [f"{name:>8} {values[name]:#018x}" for name in row]
        lines.append("  ".join(cells))
    return lines


def render_core_text(report: CoreReport, stream: TextIO, style: Style | None = None) -> None:
    style = style or Style.for_stream(stream)
    write = stream.write
    target = report.target
    for line in _process_lines(target, style):
        write(line + "\n")
    write("\n")
    for line in _crash_lines(report, style):
        write(line + "\n")
    for line in _environment_lines(report, style):
        write(line + "\n")
    for warning in target.warnings:
        write(style(f"warning: {warning}", "red") + "\n")
    render_groups(report.stacks, stream, style)
    crashed = report.crashed_thread
    if crashed is not None:
        registers = _register_lines(crashed, style)
        if registers:
            write("\n" + "\n".join(registers) + "\n")
    crash = report.crash
    if crash is not None and crash.address is not None:
        from redhand.analysis.crash import explain_mapping

        write(f"\naddress {crash.address:#x}: {explain_mapping(target, crash.address)}\n")


# -- JSON -----------------------------------------------------------------------------


def core_json(report: CoreReport) -> dict[str, object]:
    target = report.target
    process = target.process
    crashed = report.crashed_thread
    return {
        "redhand": JSON_VERSION,
        "kind": "core",
        "core": getattr(target, "core_path", None),
        "compression": getattr(target, "compression", None),
        "pid": target.pid,
        "exe": target.exe,
        "cmdline": target.cmdline,
        "process": process.to_json() if process is not None else None,
        "crash": report.crash.to_json() if report.crash is not None else None,
        "threads": threads_json(report.stacks),
        "groups": [group.tids for group in report.stacks.groups],
        "registers": (
            crashed.registers.as_dict()
            if crashed is not None and crashed.registers is not None
            else None
        ),
        "register_order": list(USER_REGS_FIELDS),
        "mappings": [
            {
                "start": mapping.start,
                "end": mapping.end,
                "perms": mapping.perms,
                "offset": mapping.offset,
                "path": mapping.path,
            }
            for mapping in target.mappings
        ],
        "modules": modules_json(target),
        "program": report.program.to_json(),
        "instructions": report.instructions.to_json() if report.instructions else None,
        "host": report.host.to_json(),
        "warnings": list(target.warnings),
    }


def render_core_json(report: CoreReport, stream: TextIO) -> None:
    from redhand.report import _json

    stream.write(_json.dumps(core_json(report), indent=2))
    stream.write("\n")
