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


TIDS_SHOWN = 3
"""Thread ids a group's title lists before saying how many it left out."""

NAMES_SHOWN = 3
"""Names (or numbered families of names) a group's title lists before the rest are counted."""

MANY_THREADS = 16
"""From this many threads on, a report says what the freeze cost per thread and
sums the threads up by state before showing them."""

STATE_WORDS = {
    "R": "running",
    "S": "sleeping",
    "D": "in uninterruptible wait",
    "T": "stopped",
    "t": "stopped by a tracer",
    "Z": "zombie",
    "X": "dead",
    "I": "idle",
    "P": "parked",
}


def _numbered(name: str) -> tuple[str, str, str] | None:
    """A name cut around its last run of digits: ``("w-", "0042", "")``; None without one."""
    end = len(name)
    while end and not name[end - 1].isdigit():
        end -= 1
    if not end:
        return None
    start = end
    while start and name[start - 1].isdigit():
        start -= 1
    return name[:start], name[start:end], name[end:]


def summarize_names(names: list[str], shown: int = NAMES_SHOWN) -> str:
    """Thread names for a title: ``"w-0000" … "w-0999"``, ``"main", "io"``.

    Names that differ only in a number (``w-0000`` … ``w-0999``) are one
    family, shown by its lowest and highest member; other names are listed
    as they are.  At most ``shown`` entries, then how many names were left out.
    """
    order: list[str | tuple[str, str]] = []
    families: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for name in dict.fromkeys(names):
        parts = _numbered(name)
        if parts is None:
            order.append(name)
            continue
        key = (parts[0], parts[2])
        if key not in families:
            families[key] = []
            order.append(key)
        families[key].append((int(parts[1]), name))
    entries: list[tuple[str, int]] = []  # (text, how many names it stands for)
    for item in order:
        if isinstance(item, str):
            entries.append((f'"{item}"', 1))
            continue
        members = sorted(families[item])
        if len(members) <= 2:
            entries.extend((f'"{name}"', 1) for _number, name in members)
        else:
            entries.append((f'"{members[0][1]}" … "{members[-1][1]}"', len(members)))
    if len(entries) <= shown + 1:
        return ", ".join(text for text, _count in entries)
    left = sum(count for _text, count in entries[shown:])
    return ", ".join(text for text, _count in entries[:shown]) + f" and {left:,} more names"


def summarize_tids(tids: list[int], shown: int = TIDS_SHOWN) -> str:
    """``27937 27940 27943 … and 331 more``; every tid when there are few."""
    if len(tids) <= shown + 2:
        return " ".join(str(tid) for tid in tids)
    listed = " ".join(str(tid) for tid in tids[:shown])
    return f"{listed} … and {len(tids) - shown:,} more"


def _group_title(group: ThreadGroup, style: Style) -> str:
    names = summarize_names([thread.name for thread in group.threads])
    if len(group.threads) == 1:
        thread = group.threads[0]
        title = f"thread {thread.tid} {names}"
        if thread.crashed:
            signal = thread.siginfo.name if thread.siginfo is not None else thread.signal
            return style(f"{title} (crashed: {signal})", "bold", "red") + ":"
        if thread.state:
            title += f" ({thread.state})"
        return style(title, "bold") + ":"
    tids = summarize_tids(group.tids)
    return style(f"{len(group.threads):,} threads {names} ({tids})", "bold") + ":"


def thread_summary(report: StackReport) -> str | None:
    """One line on the shape of a large process, before any frame:
    ``1,001 threads: 1,000 sleeping in 3 stacks, 1 running``; None for a few threads."""
    threads = [thread for group in report.groups for thread in group.threads]
    if len(report.target.threads) < MANY_THREADS:
        return None
    # state -> (threads, the groups they are in), in the order states first appear
    counts: dict[str, list[int]] = {}
    stacks: dict[str, set[int]] = {}
    for number, group in enumerate(report.groups):
        for thread in group.threads:
            if thread.crashed:
                word = "crashed"
            elif thread.state is None:
                word = "" if thread.registers is not None else "not captured"
            else:
                word = STATE_WORDS.get(thread.state, f"in state {thread.state}")
            counts.setdefault(word, []).append(thread.tid)
            stacks.setdefault(word, set()).add(number)
    parts = []
    for word, tids in sorted(counts.items(), key=lambda item: -len(item[1])):
        text = f"{len(tids):,} {word}".rstrip()
        if len(tids) > 1:
            count = len(stacks[word])
            text += f" in {count:,} stack{'s' if count != 1 else ''}"
        parts.append(text)
    shown = len(threads)
    total = len(report.target.threads)
    head = f"{total:,} threads" if shown == total else f"{shown:,} of {total:,} threads"
    return f"{head}: {', '.join(parts)}"


def format_freeze(frozen_ns: int, threads: int) -> str:
    """``frozen for 13.80 ms``, with the cost per thread when there are many."""
    text = f"frozen for {frozen_ns / 1e6:.2f} ms"
    if threads >= MANY_THREADS:
        text += f" ({frozen_ns / 1e3 / threads:.1f} µs per thread)"
    return text


def format_location(frame: Frame) -> str:
    """``src/cart.cpp:88:12``: as much of file, line and column as is known."""
    text = f"{frame.file}"
    if frame.line is not None:
        text += f":{frame.line}"
        if frame.column is not None:
            text += f":{frame.column}"
    return text


def format_frame(frame: Frame, style: Style, innermost: bool = False) -> str:
    """``#3  0x00007f3a1c2b4e10 in pthread_cond_wait+0x1a0 (libc.so.6)``.

    ``innermost``: the thread's first real frame (perhaps after frames
    inlined into it), whose exact pc says nothing of a signal."""
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
    elif frame.trust is Trust.INFERRED:
        notes.append(f"inferred from the call at {frame.called_from}")
    if frame.trampoline:
        notes.append("signal handler called")
    elif frame.signal_frame and frame.index > 0 and not innermost:
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
    header += f", {count:,} thread{'s' if count != 1 else ''}"
    if target.frozen_ns is not None:
        header += ", " + format_freeze(target.frozen_ns, count)
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
    """A summary line for a large process, then each group of threads: a title,
    its frames, and why its backtrace stops."""
    write = stream.write
    summary = thread_summary(report)
    if summary is not None:
        write("\n" + summary + "\n")
    for group in report.groups:
        write("\n" + _group_title(group, style) + "\n")
        backtrace = group.backtrace
        total = len(backtrace)
        physical_seen = False  # a real (not inlined) frame has been shown
        for part in layout(backtrace, report.max_frames, report.all_frames):
            if isinstance(part, Cut):
                write(style(format_cut(part, total), "dim") + "\n")
                continue
            for frame in backtrace[part.start : part.stop]:
                write(format_frame(frame, style, innermost=not physical_seen) + "\n")
                physical_seen = physical_seen or not frame.inlined
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
