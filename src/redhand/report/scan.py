"""The stack scan of ``--scan``: every plausible return address of a thread, and why.

:func:`redhand.unwind.scan.scan_stack` does the work; these only format it:
one line per word for people, one object per word in the JSON.
"""

from __future__ import annotations

from redhand.report.style import Style
from redhand.unwind.scan import ScanEntry, Verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from typing import TextIO

    from redhand.target.target import Target, Thread

VERDICT_TEXT = {
    Verdict.ACCEPTED: "accepted",
    Verdict.NOT_CANONICAL: "rejected",
    Verdict.NOT_EXECUTABLE: "rejected",
    Verdict.NO_CALL: "rejected",
    Verdict.OUTSIDE_FUNCTION: "rejected",
}


def format_entry(entry: ScanEntry, style: Style) -> str:
    """``0x7ffd...  0x000055...  accepted: call to smash at middle+0x4  outer+0x9 (prog)``."""
    slot = style(f"{entry.address:#018x}", "dim")
    verdict = VERDICT_TEXT[entry.verdict]
    text = f"  {slot}  {entry.value:#018x}  "
    if entry.accepted:
        text += style(f"{verdict}: {entry.reason}", "green")
    else:
        text += f"{verdict}: {entry.reason}"
    if entry.symbol is not None:
        text += "  " + style(entry.symbol, "yellow")
        if entry.module is not None and entry.symbol.split("+", 1)[0] != _basename(entry.module):
            text += " " + style(f"({_basename(entry.module)})", "cyan")
    return text


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def scan_title(thread: Thread, entries: Sequence[ScanEntry]) -> str:
    """``stack scan of thread 123 "name" from sp 0x7ffd...: 14 candidates, 5 accepted``."""
    accepted = sum(1 for entry in entries if entry.accepted)
    registers = thread.registers
    where = f" from sp {registers.rsp:#x}" if registers is not None else ""
    count = len(entries)
    return (
        f'stack scan of thread {thread.tid} "{thread.name}"{where}: '
        f"{count} candidate{'s' if count != 1 else ''}, {accepted} accepted"
    )


def render_scan_text(
    thread: Thread, entries: Sequence[ScanEntry], stream: TextIO, style: Style | None = None
) -> None:
    """A title, then one line per candidate word, from the stack pointer up."""
    style = style or Style.for_stream(stream)
    write = stream.write
    write(style(scan_title(thread, entries), "bold") + "\n")
    if thread.registers is None:
        write(f"  (no registers: {thread.problem or 'unknown'})\n")
    index = 0
    while index < len(entries):
        run = _non_canonical_run(entries, index)
        if run >= _RUN:
            write(_format_run(entries[index : index + run], style) + "\n")
            index += run
        else:
            write(format_entry(entries[index], style) + "\n")
            index += 1


_RUN = 3  # consecutive non-canonical words shown as one line (text, overwritten bytes)


def _non_canonical_run(entries: Sequence[ScanEntry], start: int) -> int:
    """How many entries from ``start`` are non-canonical words in adjacent slots."""
    end = start
    while (
        end < len(entries)
        and entries[end].verdict is Verdict.NOT_CANONICAL
        and (end == start or entries[end].address == entries[end - 1].address + 8)
    ):
        end += 1
    return end - start


def _format_run(run: Sequence[ScanEntry], style: Style) -> str:
    """``0x7ffd...-0x7ffd...  6 words rejected: not canonical (bytes: 'AAAAAAAA...')``."""
    first, last = run[0].address, run[-1].address
    data = b"".join(entry.value.to_bytes(8, "little") for entry in run)
    text = "".join(chr(byte) if 32 <= byte < 127 else "." for byte in data[:32])
    more = "..." if len(data) > 32 else ""
    slots = style(f"{first:#018x}", "dim") + "-" + style(f"{last + 8:#018x}", "dim")
    return f"  {slots}  {len(run)} words rejected: not canonical (bytes: '{text}{more}')"


def scan_json(entries: Sequence[ScanEntry]) -> list[dict[str, object]]:
    """The entries as JSON objects (``address`` is the stack slot, ``value`` the word)."""
    return [entry.to_json() for entry in entries]


def scanned_threads(target: Target, tids: Collection[int] | None = None) -> list[Thread]:
    """The threads whose stacks ``--scan`` shows: those in ``tids``, or all, in target order."""
    return [thread for thread in target.threads if tids is None or thread.tid in tids]


def render_scans_text(
    target: Target,
    stream: TextIO,
    tids: Collection[int] | None = None,
    style: Style | None = None,
) -> None:
    """The scan of each thread's stack (every thread, or those in ``tids``), one after another."""
    from redhand.unwind.scan import scan_stack

    style = style or Style.for_stream(stream)
    for thread in scanned_threads(target, tids):
        stream.write("\n")
        render_scan_text(thread, scan_stack(target, thread), stream, style)


def render_json_with_scans(document: dict[str, object], target: Target, stream: TextIO) -> None:
    """A report's JSON document with each of its threads given a ``scan`` list, written out."""
    from redhand.report import _json
    from redhand.unwind.scan import scan_stack

    threads = document.get("threads")
    if isinstance(threads, list):
        for entry in threads:
            if isinstance(entry, dict):
                thread = target.thread(entry["tid"])
                entry["scan"] = scan_json(scan_stack(target, thread))
    stream.write(_json.dumps(document, indent=2))
    stream.write("\n")
