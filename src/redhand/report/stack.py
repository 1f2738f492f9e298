"""The report of ``redhand stack``: the same content as text for people and as JSON.

:func:`build_stack_report` does the work once (unwinding, grouping); the two
renderers only format it, so the text and the JSON never disagree.
"""

from __future__ import annotations

from redhand.report.style import Style
from redhand.target.model import RECURSION_MIN_FRAMES, Backtrace, EndReason, Frame, Trust
from redhand.target.target import DEFAULT_MAX_FRAMES, Target, Thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import TextIO

    from redhand.analysis.recursion import Recursion

JSON_VERSION = 1

END_TEXT = {
    EndReason.OUTERMOST: "reached the thread's first frame",
    EndReason.NO_UNWIND_INFO: "no unwind information and no frame pointer",
    EndReason.UNREADABLE_MEMORY: "memory needed to unwind could not be read",
    EndReason.BAD_PC: "a return address points to no code",
    EndReason.LOOP: "the stack pointer stopped growing (unwinding would loop)",
    EndReason.LIMIT: "frame limit reached",
    EndReason.NO_REGISTERS: "the thread's registers could not be captured",
}


# ThreadGroup and StackReport are plain classes, not dataclasses: see
# redhand._value for what dataclasses cost at the start of `redhand stack`.


class ThreadGroup:
    """Threads with identical stacks, shown once."""

    def __init__(self, threads: list[Thread], backtrace: Backtrace) -> None:
        self.threads = threads
        self.backtrace = backtrace

    def __repr__(self) -> str:
        return f"ThreadGroup(tids={self.tids}, backtrace={self.backtrace!r})"

    @property
    def tids(self) -> list[int]:
        return [thread.tid for thread in self.threads]


class StackReport:
    """What ``redhand stack`` shows: the target and its threads grouped by stack.

    ``max_frames`` is how many frames to show per thread; None shows them all,
    except in a recursion: then the top and bottom :data:`RECURSION_SHOWN`
    frames and one line for the cycles between (``max_frames`` sets how many
    at each end).  ``all_frames`` shows every frame, every cycle.
    """

    def __init__(
        self,
        target: Target,
        groups: list[ThreadGroup],
        max_frames: int | None,
        show_timing: bool = False,
        all_frames: bool = False,
    ) -> None:
        self.target = target
        self.groups = groups
        self.max_frames = max_frames
        self.show_timing = show_timing
        self.all_frames = all_frames

    def __repr__(self) -> str:
        return f"StackReport({self.target!r}, {len(self.groups)} groups)"


def build_stack_report(
    target: Target,
    *,
    group: bool = True,
    tids: Collection[int] | None = None,
    max_frames: int | None = None,
    unwind_limit: int = DEFAULT_MAX_FRAMES,
    show_timing: bool = False,
    all_frames: bool = False,
) -> StackReport:
    """Unwind every thread (or those in ``tids``) and group identical stacks."""
    threads = [t for t in target.threads if tids is None or t.tid in tids]
    groups: list[ThreadGroup] = []
    by_key: dict[object, ThreadGroup] = {}
    for thread in threads:
        backtrace = thread.backtrace(unwind_limit)
        key = (backtrace.key(), backtrace.end) if group and len(backtrace) else None
        existing = by_key.get(key) if key is not None else None
        if existing is not None:
            existing.threads.append(thread)
            continue
        entry = ThreadGroup([thread], backtrace)
        groups.append(entry)
        if key is not None:
            by_key[key] = entry
    return StackReport(target, groups, max_frames, show_timing, all_frames)


# -- what to show of a long trace -----------------------------------------------------------

RECURSION_SHOWN = 10
"""Frames shown at each end of a recursion (where it is now, and where it was entered)."""


class Cut:
    """Frames ``start`` to ``stop - 1`` left out of a report; ``recursion`` when all of
    them are ``repeats`` whole cycles of it."""

    def __init__(
        self, start: int, stop: int, recursion: Recursion | None = None, repeats: int = 0
    ) -> None:
        self.start = start
        self.stop = stop
        self.recursion = recursion
        self.repeats = repeats

    def __repr__(self) -> str:
        return f"Cut({self.start}, {self.stop}, repeats={self.repeats})"

    def __len__(self) -> int:
        return self.stop - self.start


def layout(
    backtrace: Backtrace, max_frames: int | None, all_frames: bool = False
) -> list[range | Cut]:
    """The frames to show (ranges of indices) and what is cut between them.

    A recursion shows its top and bottom ``max_frames`` (default
    :data:`RECURSION_SHOWN`) and, between them, whole cycles as one cut;
    frames cut that are not cycles get a cut of their own.  Without a
    recursion, the first ``max_frames`` (None: all), then one cut.
    """
    total = len(backtrace)
    if all_frames:
        return [range(total)]
    shown = max_frames if max_frames is not None else RECURSION_SHOWN
    recursion = backtrace.recursion if total > 2 * shown else None
    if recursion is not None:
        parts = _recursion_layout(total, shown, recursion)
        if parts is not None:
            return parts
    if max_frames is None or total <= max_frames:
        return [range(total)]
    return [range(max_frames), Cut(max_frames, total)]


def _recursion_layout(total: int, shown: int, recursion: Recursion) -> list[range | Cut] | None:
    """Top frames, the cycles between as one cut, then the bottom: the last cycles
    and the ``shown`` frames from where the recursion was entered."""
    start, end, length = recursion.start_index, recursion.end_index + 1, recursion.length
    bottom_stop = min(total, end + shown)
    # Whole cycles only: the cut begins and ends on a cycle's boundary.
    cut_start = start + -(-(max(shown, start) - start) // length) * length
    cut_stop = start + ((max(bottom_stop - shown, start) - start) // length) * length
    if cut_stop - cut_start < 2 * length:
        return None
    parts: list[range | Cut] = []
    if start > shown:  # frames above the recursion, not cycles
        parts += [range(shown), Cut(shown, start), range(start, cut_start)]
    else:
        parts.append(range(cut_start))
    parts.append(Cut(cut_start, cut_stop, recursion, (cut_stop - cut_start) // length))
    parts.append(range(cut_stop, bottom_stop))
    if bottom_stop < total:
        parts.append(Cut(bottom_stop, total))
    return [part for part in parts if len(part)]


# -- text ---------------------------------------------------------------------------


def _milliseconds(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _group_title(group: ThreadGroup, style: Style) -> str:
    names = list(dict.fromkeys(thread.name for thread in group.threads))
    quoted = ", ".join(f'"{name}"' for name in names)
    if len(group.threads) == 1:
        thread = group.threads[0]
        title = f"thread {thread.tid} {quoted}"
        if thread.crashed:
            signal = thread.siginfo.name if thread.siginfo is not None else thread.signal
            return style(f"{title} (crashed: {signal})", "bold", "red") + ":"
        if thread.state:
            title += f" ({thread.state})"
        return style(title, "bold") + ":"
    tids = " ".join(str(tid) for tid in group.tids)
    return style(f"{len(group.threads)} threads ({tids}) {quoted}", "bold") + ":"


def format_location(frame: Frame) -> str:
    """``src/cart.cpp:88:12``: as much of file, line and column as is known."""
    text = f"{frame.file}"
    if frame.line is not None:
        text += f":{frame.line}"
        if frame.column is not None:
            text += f":{frame.column}"
    return text


def format_frame(frame: Frame, style: Style) -> str:
    """``#3  0x00007f3a1c2b4e10 in pthread_cond_wait+0x1a0 (libc.so.6)``."""
    index = f"#{frame.index:<3}"
    if len(index) > 4:  # frame 1,000 and deeper: keep a space before the address
        index += " "
    address = style(f"{frame.pc:#018x}", "dim")
    if frame.function is not None:
        name = style(frame.function, "yellow")
        if frame.offset:
            name += f"+{frame.offset:#x}"
        if frame.inlined:
            name += " " + style("(inlined)", "magenta")
        text = f"{index}{address} in {name}"
        if frame.file is not None:
            text += " at " + format_location(frame)
        if frame.module is not None:
            text += " " + style(f"({frame.module_name})", "cyan")
    elif frame.module is not None and frame.offset is not None:
        place = style(f"({frame.module_name}+{frame.offset:#x})", "cyan")
        text = f"{index}{address} in ?? {place}"
    else:
        text = f"{index}{address} in ??"
    notes = []
    if not frame.exact:
        notes.append("nearest symbol")
    if frame.trust in (Trust.FP, Trust.SCAN):
        notes.append(f"found by {'frame pointer' if frame.trust is Trust.FP else 'scanning'}")
    if frame.trampoline:
        notes.append("signal handler called")
    elif frame.signal_frame and frame.index > 0:
        notes.append("interrupted by a signal")
    if notes:
        text += " " + style("[" + "; ".join(notes) + "]", "magenta")
    return text


def render_stack_text(report: StackReport, stream: TextIO, style: Style | None = None) -> None:
    style = style or Style.for_stream(stream)
    target = report.target
    write = stream.write
    count = len(target.threads)
    header = f"process {target.pid}"
    if target.exe:
        header += f" ({target.exe})"
    header += f", {count} thread{'s' if count != 1 else ''}"
    if target.frozen_ns is not None:
        header += f", frozen for {target.frozen_ns / 1e6:.2f} ms"
    write(style(header, "bold") + "\n")
    for warning in target.warnings:
        write(style(f"warning: {warning}", "red") + "\n")
    render_groups(report, stream, style)
    if report.show_timing:
        write("\n" + format_timings(target) + "\n")


def format_cut(cut: Cut, total: int) -> str:
    """The line that stands for frames left out, saying which and how to see them."""
    recursion = cut.recursion
    if recursion is None:
        if cut.stop == total:
            return f"… {len(cut):,} more frames (--max-frames to show more)"
        count = f"{len(cut):,} frame{'s' if len(cut) != 1 else ''}"
        return f"… frames {cut.start:,}-{cut.stop - 1:,} ({count}; --all-frames shows them) …"
    return (
        f"… frames {cut.start:,}-{cut.stop - 1:,}: {recursion.label()} repeated "
        f"{cut.repeats:,} times (--all-frames shows them) …"
    )


def format_recursion(recursion: Recursion) -> str:
    """``recursion: frames 1-1,047,984, [ping → pong] 523,992 times, 32 bytes a cycle``."""
    text = (
        f"recursion: frames {recursion.start_index:,}-{recursion.end_index:,} are "
        f"{recursion.label()} {recursion.repeats:,} times"
    )
    if recursion.cycle_bytes is not None:
        text += f", {recursion.cycle_bytes:,} bytes of stack a cycle"
    return text


def render_groups(report: StackReport, stream: TextIO, style: Style) -> None:
    """Each group of threads: a title, its frames, and why its backtrace stops."""
    write = stream.write
    for group in report.groups:
        write("\n" + _group_title(group, style) + "\n")
        backtrace = group.backtrace
        total = len(backtrace)
        for part in layout(backtrace, report.max_frames, report.all_frames):
            if isinstance(part, Cut):
                write(style(format_cut(part, total), "dim") + "\n")
                continue
            for frame in backtrace[part.start : part.stop]:
                write(format_frame(frame, style) + "\n")
        recursion = backtrace.recursion if total > RECURSION_MIN_FRAMES else None
        if recursion is not None:
            write(style(f"    {format_recursion(recursion)}", "magenta") + "\n")
        if backtrace.end is not EndReason.OUTERMOST:
            reason = END_TEXT[backtrace.end]
            if backtrace.end is EndReason.LIMIT:
                reason += f" after {len(backtrace):,} frames: deeper frames were not unwound"
            if backtrace.end_detail:
                reason += f" ({backtrace.end_detail})"
            write(style(f"    backtrace stops: {reason}", "magenta") + "\n")


def format_timings(target: Target) -> str:
    parts = []
    if target.frozen_ns is not None:
        parts.append(f"frozen {target.frozen_ns / 1e6:.2f} ms")
    parts.extend(f"{phase} {_milliseconds(seconds)}" for phase, seconds in target.timings.items())
    return "timing: " + ", ".join(parts)


# -- JSON ----------------------------------------------------------------------------


def thread_json(
    thread: Thread, backtrace: Backtrace, max_frames: int | None, all_frames: bool = False
) -> dict[str, object]:
    """A thread; its ``frames`` are those the text shows of a deep recursion (each
    with its ``index``), all of any other trace up to ``max_frames``."""
    if len(backtrace) > DEFAULT_MAX_FRAMES and not all_frames:
        parts = layout(backtrace, max_frames)  # a summarised recursion: not a million frames
    elif max_frames is not None and not all_frames:
        parts = [range(min(max_frames, len(backtrace)))]
    else:
        parts = [range(len(backtrace))]
    frames = [
        frame
        for part in parts
        if isinstance(part, range)
        for frame in backtrace[part.start : part.stop]
    ]
    recursion = backtrace.recursion if len(backtrace) > RECURSION_MIN_FRAMES else None
    return {
        "tid": thread.tid,
        "name": thread.name,
        "state": thread.state,
        "crashed": thread.crashed,
        "signal": thread.signal,
        "frames": [frame.to_json() for frame in frames],
        "frames_omitted": len(backtrace) - len(frames),
        "depth": len(backtrace),
        "recursion": recursion.to_json() if recursion is not None else None,
        "end": str(backtrace.end),
        "end_detail": backtrace.end_detail,
        "problem": thread.problem,
    }


def stack_json(report: StackReport) -> dict[str, object]:
    target = report.target
    threads = threads_json(report)
    groups = [group.tids for group in report.groups]
    return {
        "redhand": JSON_VERSION,
        "kind": "stack",
        "pid": target.pid,
        "exe": target.exe,
        "cmdline": target.cmdline,
        "frozen_ns": target.frozen_ns,
        "timings": {phase: round(seconds, 6) for phase, seconds in target.timings.items()},
        "threads": threads,
        "groups": groups,
        "modules": modules_json(target),
        "warnings": list(target.warnings),
    }


def threads_json(report: StackReport) -> list[dict[str, object]]:
    """Every reported thread, in the target's order, with its group's backtrace."""
    backtraces = {}
    for group in report.groups:
        for thread in group.threads:
            backtraces[thread.tid] = (thread, group.backtrace)
    return [
        thread_json(thread, backtrace, report.max_frames, report.all_frames)
        for thread, backtrace in (
            backtraces[t.tid] for t in report.target.threads if t.tid in backtraces
        )
    ]


def modules_json(target: Target) -> list[dict[str, object]]:
    return [
        {
            "path": module.path,
            "start": module.start,
            "end": module.end,
            "bias": module.bias if module._loaded else None,
            "build_id": module.build_id if module._loaded else None,
            "problem": module.problem,
        }
        for module in target.modules
    ]


def render_stack_json(report: StackReport, stream: TextIO) -> None:
    from redhand.report import _json  # here: only --json needs it

    stream.write(_json.dumps(stack_json(report), indent=2))
    stream.write("\n")
