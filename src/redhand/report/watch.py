"""What ``redhand watch`` caught: the event line, the stacks, what the actions did.

Text for people: the event in one line (the thread that hit first), the
other hits during the same stop, how fast the process was stopped and how
long it was held, the stacks as ``redhand stack`` prints them (the thread
that hit first), and one line per action.  JSON: one document per hit, on
one line each (JSON Lines), the v1 stack document with ``"kind": "watch"``
and ``event``, ``also``, ``actions`` and ``timing`` objects.
"""

from __future__ import annotations

from typing import TextIO

from redhand.capture.watch import Caught, Watch
from redhand.report.core import CoreReport, build_core_report, core_json, render_core_text
from redhand.report.stack import (
    StackReport,
    build_stack_report,
    render_stack_text,
    stack_json,
)
from redhand.report.style import Style

__all__ = [
    "caught_json",
    "render_actions",
    "render_caught_json",
    "render_caught_text",
    "render_header",
    "render_recent_calls",
]


def render_header(watched: Watch, stream: TextIO, style: Style | None = None) -> None:
    """``watching 'close fails EBADF' in process 4242 "node" with eBPF (...)``."""
    style = style or Style.for_stream(stream)
    if watched.pid is not None:
        from redhand.proc.procfs import comm_of

        name = comm_of(watched.pid)
        where = f"process {watched.pid}" + (f' "{name}"' if name else "")
    elif watched.comm is not None:
        where = f'every process named "{watched.comm}"'
    else:
        assert watched.argv is not None
        where = " ".join(watched.argv)
    how = f"{watched.count} hit{'s' if watched.count != 1 else ''}"
    if watched.skip:
        how += f" after {watched.skip} skipped"
    actions = ", ".join(str(action) for action in watched.actions)
    stream.write(
        style(f"watching '{watched.event}' in {where}", "bold")
        + f": {how}, then {actions}; backend: {watched.backend_description}\n"
    )
    if watched.syscall_history:
        stream.write(f"note: keeping each thread's last {watched.syscall_history} system calls\n")
    for note in watched.notes:
        stream.write(f"note: {note}\n")
    stream.flush()


def _report(caught: Caught, max_frames: int | None, group: bool) -> StackReport | CoreReport | None:
    """The stacks; for a hit at a signal that ends the program, the crash report of
    ``redhand core`` (the crash explained, the program and the host)."""
    target = caught.target
    if target is None:
        return None
    if target.crash is not None:
        return build_core_report(target, group=group, max_frames=max_frames)
    return build_stack_report(target, group=group, max_frames=max_frames)


def render_caught_text(
    caught: Caught,
    stream: TextIO,
    *,
    max_frames: int | None = None,
    group: bool = True,
    style: Style | None = None,
) -> None:
    style = style or Style.for_stream(stream)
    write = stream.write
    write(style(f"hit {caught.number}: {caught.hit}", "bold", "red") + "\n")
    for hit in caught.also:
        write(f"  and, during the same stop: {hit}\n")
    write(
        f"  process stopped {caught.stopped_ns / 1e6:.2f} ms after the "
        f"{'call returned' if caught.hit.call is not None else 'signal came'}, "
        f"held {caught.paused_ns / 1e6:.1f} ms for the actions ({caught.backend})\n"
    )
    for warning in caught.warnings:
        write(style(f"  warning: {warning}", "yellow") + "\n")
    report = _report(caught, max_frames, group)
    if isinstance(report, CoreReport):
        write("\n")
        render_core_text(report, stream, style)
    elif report is not None:
        write("\n")
        render_stack_text(report, stream, style)
    render_recent_calls(caught, stream, style)
    render_actions(caught, stream, style)
    if caught.resumed:
        write(f"process {caught.hit.pid} runs on\n")
    write("\n")
    stream.flush()


def render_actions(caught: Caught, stream: TextIO, style: Style) -> None:
    """A line per action but the stacks (shown above it): what it did, or why it failed."""
    for result in caught.actions:
        if result.action.kind.value == "stack":
            continue
        mark = "" if result.ok else style("failed: ", "red")
        stream.write(f"{result.action.kind.value}: {mark}{result.summary}\n")


def render_recent_calls(caught: Caught, stream: TextIO, style: Style) -> None:
    """``--syscalls N``: the last calls of the thread that hit, strace-style, oldest first."""
    if not caught.syscalls:
        return
    stream.write(
        style(
            f"\nthe last {len(caught.syscalls)} system calls of thread {caught.hit.tid}, "
            "oldest first:",
            "bold",
        )
        + "\n"
    )
    for call in caught.syscalls:
        line = f"  {call}"
        if call.errno_name == "ENOSYS":
            line += style("  <- a system call this kernel does not have", "red")
        stream.write(line + "\n")


def caught_json(
    caught: Caught, *, max_frames: int | None = None, group: bool = True
) -> dict[str, object]:
    report = _report(caught, max_frames, group)
    document: dict[str, object] = {"redhand": 1}
    if isinstance(report, CoreReport):
        document = core_json(report)
    elif report is not None:
        document = stack_json(report)
    document["kind"] = "watch"
    document["pid"] = caught.hit.pid
    call = caught.hit.call
    event: dict[str, object] = caught.hit.to_json()
    if call is not None:
        event.update(
            {
                "name": call.name,
                "number": call.number,
                "arguments": list(call.shown_arguments()),
                "return": event["syscall"]["return"],  # type: ignore[index]
                "errno": call.errno,
                "errno_name": call.errno_name,
            }
        )
    event["text"] = str(caught.hit)
    document["event"] = event
    document["hit"] = caught.number
    document["also"] = [hit.to_json() | {"text": str(hit)} for hit in caught.also]
    document["backend"] = caught.backend
    document["timing"] = {"stopped_ns": caught.stopped_ns, "paused_ns": caught.paused_ns}
    document["warnings"] = list(caught.warnings)
    document["actions"] = [result.to_json() for result in caught.actions]
    document["resumed"] = caught.resumed
    if caught.syscalls:
        document["syscalls"] = [call.to_json() for call in caught.syscalls]
    return document


def render_caught_json(
    caught: Caught, stream: TextIO, *, max_frames: int | None = None, group: bool = True
) -> None:
    import json

    stream.write(json.dumps(caught_json(caught, max_frames=max_frames, group=group)))
    stream.write("\n")
    stream.flush()
