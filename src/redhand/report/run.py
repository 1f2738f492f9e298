"""What ``redhand run`` saw: crash reports made from the live process, a timeout's stacks,
and how the program ended.

A crash report is the one ``redhand core`` prints for the same crash (the
process was caught whole at its fatal signal), followed by what became of
the signal.  ``--json`` prints one document at the end: the crash report
document of ``redhand core --json`` for the program's own crash (or its
first report), with ``"kind": "run"``, the program's end in ``"exit"`` and
every report in ``"reports"``.
"""

from __future__ import annotations

import os
import signal
from typing import TextIO

from redhand.capture.run import Run
from redhand.capture.watch import Caught
from redhand.report.core import build_core_report, core_json, render_core_text
from redhand.report.stack import build_stack_report, render_stack_text, stack_json
from redhand.report.style import Style
from redhand.report.watch import render_actions, render_recent_calls

__all__ = [
    "exit_json",
    "render_delivery",
    "render_end",
    "render_guard_header",
    "render_report_text",
    "report_json",
]


def render_guard_header(guard: Run, stream: TextIO, style: Style | None = None) -> None:
    style = style or Style.for_stream(stream)
    what = " ".join(guard.argv) if guard.argv is not None else f"process {guard.pid}"
    extra = f"; time limit {guard.timeout:g} s" if guard.timeout is not None else ""
    if guard.syscall_history:
        extra += (
            f"; keeping each thread's last {guard.syscall_history} system calls (ptrace at every "
            "call: a program that makes many runs 100-250 times slower)"
        )
    stops = "stopped at every system call" if guard.syscall_history else "stopped only by signals"
    stream.write(
        style(f"guarding {what}", "bold") + f": {stops}, a report at a fatal signal{extra}\n"
    )
    stream.flush()


def render_report_text(
    caught: Caught,
    stream: TextIO,
    *,
    max_frames: int | None = None,
    group: bool = True,
    style: Style | None = None,
    guard: Run | None = None,
) -> None:
    style = style or Style.for_stream(stream)
    write = stream.write
    target = caught.target
    if caught.kind == "timeout":
        limit = f" after {guard.timeout:g} s" if guard is not None and guard.timeout else ""
        write(style(f"time is up{limit}: every thread's stack before it is killed", "bold", "red"))
        write("\n\n")
        if target is not None:
            render_stack_text(
                build_stack_report(target, group=group, max_frames=max_frames), stream, style
            )
    elif target is not None:
        render_core_text(
            build_core_report(target, group=group, max_frames=max_frames), stream, style
        )
    else:
        write(style(str(caught.hit), "bold", "red") + "\n")
    render_recent_calls(caught, stream, style)
    render_actions(caught, stream, style)
    stream.flush()


def render_delivery(caught: Caught, stream: TextIO) -> None:
    """After a report: how long the process was held, and that its signal goes on."""
    if caught.kind != "timeout" and caught.hit.signal is not None:
        stream.write(
            f"\nthe process was held {caught.paused_ns / 1e6:.1f} ms; "
            f"{caught.hit.signal_name} is delivered now, as without redhand\n"
        )
    stream.write("\n")
    stream.flush()


def report_json(
    caught: Caught, *, max_frames: int | None = None, group: bool = True
) -> dict[str, object]:
    target = caught.target
    if target is None:
        document: dict[str, object] = {"redhand": 1}
    elif caught.kind == "timeout":
        document = stack_json(build_stack_report(target, group=group, max_frames=max_frames))
    else:
        document = core_json(build_core_report(target, group=group, max_frames=max_frames))
    document["kind"] = "run"
    document["report"] = caught.kind if caught.kind == "timeout" else "crash"
    document["event"] = caught.hit.to_json() | {"text": str(caught.hit)}
    document["timing"] = {"stopped_ns": caught.stopped_ns, "paused_ns": caught.paused_ns}
    document["actions"] = [result.to_json() for result in caught.actions]
    document["syscalls"] = [call.to_json() for call in caught.syscalls]
    return document


def exit_json(guard: Run) -> dict[str, object]:
    status = guard.exit_status
    signal_number = None
    code = None
    if status is not None:
        value = os.waitstatus_to_exitcode(status)
        if value < 0:
            signal_number = -value
        else:
            code = value
    return {
        "status": code,
        "signal": signal_number,
        "signal_name": signal.Signals(signal_number).name if signal_number else None,
        "core_dumped": bool(status is not None and os.WIFSIGNALED(status) and os.WCOREDUMP(status)),
        "exit_code": guard.exit_code,
        "timed_out": guard.timed_out,
        "killed_with": signal.Signals(guard.killed_with).name if guard.killed_with else None,
    }


def render_end(guard: Run, stream: TextIO) -> None:
    """One line: how the program ended (``killed by SIGSEGV (core dumped)``)."""
    end = exit_json(guard)
    what = " ".join(guard.argv) if guard.argv is not None else f"process {guard.pid}"
    if end["signal"]:
        text = f"{what}: killed by {end['signal_name']}"
        if end["core_dumped"]:
            text += " (core dumped)"
    elif end["status"] is not None:
        text = f"{what}: exited with status {end['status']}"
    else:
        text = f"{what}: its end was not seen"
    if guard.timed_out:
        text += f"; timed out, sent {end['killed_with']}"
    stream.write(f"redhand: {text}\n")
    stream.flush()
