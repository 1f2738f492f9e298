"""redhand's stack scan and recursion finder as gdb commands.

In gdb, on a live process or a core (gdb's current inferior)::

    (gdb) python import redhand.gdb          # redhand importable by gdb's Python
    (gdb) source /path/to/redhand/gdb.py     # or this file, from an installed redhand

    (gdb) redhand-scan [ADDRESS] [WORDS]     # plausible return addresses above $sp (or ADDRESS)
    (gdb) redhand-scan/all ...               # also the rejected words, with the reason
    (gdb) redhand-recursion                  # the repeating cycle of a deep stack, summarised

Both work through gdb's own memory, mappings and symbols, so they answer
where ``bt`` takes minutes (a million-frame overflow) or stops (a smashed
stack).  A word is a plausible return address when it is canonical, lies in
an executable mapping and follows a call instruction (the same rules as
redhand's own scanning).  Outside gdb this module only offers
:func:`scan_words` and :func:`summarise`, the parts that do not need it.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import sys

if __package__ in (None, ""):  # `source`d by path: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from redhand.analysis.recursion import find_cycle
from redhand.errors import MemoryReadError
from redhand.unwind.callsite import call_before
from redhand.unwind.scan import MIN_PC, is_canonical

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

_WORD = struct.Struct("<Q")
DEFAULT_SCAN_WORDS = 256
RECURSION_LIMIT_BYTES = 1 << 30


class Candidate:
    """One word of the stack and what the scan made of it."""

    __slots__ = ("accepted", "reason", "slot", "value")

    def __init__(self, slot: int, value: int, accepted: bool, reason: str) -> None:
        self.slot = slot
        self.value = value
        self.accepted = accepted
        self.reason = reason


class _ReadMemory:
    """The Memory protocol over a function that reads bytes (gdb's inferior)."""

    def __init__(self, read: Callable[[int, int], bytes]) -> None:
        self._read = read

    def read(self, address: int, size: int) -> bytes:
        try:
            data = self._read(address, size)
        except Exception as error:  # gdb.MemoryError, or anything gdb raises
            raise MemoryReadError(address, size, str(error)) from None
        if len(data) != size:
            raise MemoryReadError(address, size, "short read")
        return data


def scan_words(
    data: bytes,
    base: int,
    executable: Sequence[tuple[int, int]],
    read: Callable[[int, int], bytes],
    *,
    keep_rejected: bool = False,
) -> list[Candidate]:
    """Judge every word of ``data`` (stack bytes read at ``base``) as a return address.

    ``executable`` holds the sorted ``(start, end)`` ranges of executable
    mappings; ``read`` reads code bytes for the call-site check.  Words that
    are obviously data (small numbers, non-executable pointers) are dropped
    unless ``keep_rejected``.
    """
    memory = _ReadMemory(read)
    starts = [start for start, _ in executable]
    calls: dict[int, str | None] = {}
    found: list[Candidate] = []
    for index, (value,) in enumerate(_WORD.iter_unpack(data[: len(data) & ~7])):
        slot = base + index * 8
        if not is_canonical(value):
            if keep_rejected:
                found.append(Candidate(slot, value, False, "not canonical"))
            continue
        where = bisect.bisect_right(starts, value) - 1
        if value < MIN_PC or where < 0 or value >= executable[where][1]:
            if keep_rejected and value >= MIN_PC:
                found.append(Candidate(slot, value, False, "not in an executable mapping"))
            continue
        if value not in calls:
            site = call_before(memory, value)
            calls[value] = None if site is None else f"call at {site[0]:#x}"
        reason = calls[value]
        if reason is None:
            if keep_rejected:
                found.append(Candidate(slot, value, False, "no call instruction before it"))
            continue
        found.append(Candidate(slot, value, True, reason))
    return found


class Summary:
    """A stack's return addresses, with the cycle that repeats in them (if any)."""

    def __init__(self, addresses: Sequence[int]) -> None:
        self.addresses = list(addresses)
        cycle = find_cycle(self.addresses)
        self.start, self.length, self.repeats = cycle if cycle is not None else (0, 0, 0)

    @property
    def found(self) -> bool:
        return self.repeats > 0

    @property
    def cycle(self) -> list[int]:
        return self.addresses[self.start : self.start + self.length]

    @property
    def end(self) -> int:
        """Index of the last return address inside the repeated cycles."""
        return self.start + self.length * self.repeats - 1


def summarise(addresses: Sequence[int]) -> Summary:
    """The smallest cycle repeating in a stack's return addresses (innermost first)."""
    return Summary(addresses)


# -- gdb ----------------------------------------------------------------------------


def _mappings_text(gdb: object) -> str:
    """``info proc mappings`` of the inferior (live or core), read once per command."""
    execute = gdb.execute  # type: ignore[attr-defined]
    text: str = execute("info proc mappings", to_string=True)
    return text


def _executable_ranges(text: str) -> list[tuple[int, int]]:
    """Executable mappings, from the text of ``info proc mappings``."""
    ranges: list[tuple[int, int]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[0].startswith("0x"):
            continue
        try:
            start, end = int(fields[0], 16), int(fields[1], 16)
        except ValueError:
            continue
        perms = next((f for f in fields[2:] if len(f) == 4 and f[0] in "r-"), None)
        if perms is None or "x" in perms:
            # gdb prints permissions for live processes; for cores it may not
            # (then every file mapping counts, and the call check decides).
            ranges.append((start, end))
    return sorted(ranges)


def _ranges(text: str, separator: str | None) -> list[tuple[int, int]]:
    """``(start, end)`` pairs from lines that begin with two hex addresses."""
    found = []
    for line in text.splitlines():
        fields = line.replace(" - ", " ").split(separator)
        if len(fields) >= 2 and fields[0].startswith("0x"):
            try:
                found.append((int(fields[0], 16), int(fields[1], 16)))
            except ValueError:
                continue
    return found


def _stack_end(gdb: object, sp: int, mappings: str) -> int:
    """The end of the memory that holds ``sp`` (the top of that stack).

    From ``info proc mappings`` (``mappings``) for a live process; a core's anonymous
    mappings are not there, but its segments are in ``info files``.
    Adjacent segments are joined: the kernel may split a stack in several.
    """
    execute = gdb.execute  # type: ignore[attr-defined]
    ranges = _ranges(mappings, None)
    with contextlib.suppress(Exception):  # not every gdb target has files to list
        ranges += _ranges(execute("info files", to_string=True), None)
    end = None
    for start, stop in sorted(ranges):
        if start <= sp < stop or (end is not None and start <= end):
            if end is None or stop > end:
                end = stop
        elif end is not None and start > end:
            break
    return end if end is not None else sp + DEFAULT_SCAN_WORDS * 8


def _symbol(gdb: object, address: int) -> str:
    execute = gdb.execute  # type: ignore[attr-defined]
    try:
        text: str = execute(f"info symbol {address:#x}", to_string=True).strip()
    except Exception:
        return "??"
    if text.startswith("No symbol"):
        return "??"
    name, _, rest = text.partition(" in section ")
    library = rest.partition(" of ")[2]
    name = name.replace(" + ", "+")
    return f"{name} ({os.path.basename(library)})" if library else name


def _register(gdb: object, name: str) -> int:
    frame = gdb.newest_frame()  # type: ignore[attr-defined]
    return int(frame.read_register(name)) & 0xFFFF_FFFF_FFFF_FFFF


def _reader(gdb: object) -> Callable[[int, int], bytes]:
    inferior = gdb.selected_inferior()  # type: ignore[attr-defined]

    def read(address: int, size: int) -> bytes:
        return bytes(inferior.read_memory(address, size))

    return read


def _read_stack(read: Callable[[int, int], bytes], start: int, end: int) -> bytes:
    """The bytes from ``start`` to ``end``, in large pieces, up to the first unreadable one."""
    chunks = []
    at = start
    while at < end:
        size = min(end - at, 1 << 20)
        try:
            chunks.append(read(at, size))
        except Exception:
            break
        at += size
    return b"".join(chunks)


def _parse_scan_arguments(gdb: object, argument: str) -> tuple[int | None, int]:
    words = DEFAULT_SCAN_WORDS
    address = None
    parts = argument.split()
    parse = gdb.parse_and_eval  # type: ignore[attr-defined]
    if parts:
        address = int(parse(parts[0])) & 0xFFFF_FFFF_FFFF_FFFF
    if len(parts) > 1:
        words = int(parse(parts[1]))
    return address, words


def run_scan(gdb: object, argument: str, show_all: bool) -> None:
    address, words = _parse_scan_arguments(gdb, argument)
    if address is None:
        address = _register(gdb, "rsp")
    read = _reader(gdb)
    data = _read_stack(read, address, address + words * 8)
    ranges = _executable_ranges(_mappings_text(gdb))
    found = scan_words(data, address, ranges, read, keep_rejected=show_all)
    accepted = sum(candidate.accepted for candidate in found)
    count = len(data) // 8
    print(f"redhand-scan: {count} words from {address:#x}: {accepted} plausible return addresses")
    for candidate in found:
        where = f"  {candidate.slot:#x} (sp+{candidate.slot - address:#x})  {candidate.value:#018x}"
        if candidate.accepted:
            print(f"{where}  {_symbol(gdb, candidate.value)}  [{candidate.reason}]")
        else:
            print(f"{where}  rejected: {candidate.reason}")


def run_recursion(gdb: object, top_bottom: int = 10) -> None:
    sp = _register(gdb, "rsp")
    pc = _register(gdb, "rip")
    read = _reader(gdb)
    mappings = _mappings_text(gdb)
    end = min(_stack_end(gdb, sp, mappings), sp + RECURSION_LIMIT_BYTES)
    data = _read_stack(read, sp, end)
    found = scan_words(data, sp, _executable_ranges(mappings), read)
    addresses = [pc] + [candidate.value for candidate in found]
    summary = summarise(addresses)
    print(
        f"redhand-recursion: {len(data) // 8:,} stack words from {sp:#x}, "
        f"{len(addresses):,} frames (pc and plausible return addresses)"
    )
    if not summary.found:
        print("  no repeating cycle: this is not a runaway recursion")
        return
    names = [_symbol(gdb, address).split("+", 1)[0].split(" (", 1)[0] for address in summary.cycle]
    label = " → ".join(reversed(names))
    print(
        f"  [{label}] repeated {summary.repeats:,} times, frames {summary.start:,}-{summary.end:,} "
        f"({summary.length} frame{'s' if summary.length != 1 else ''} a cycle)"
    )
    print("  top:")
    shown = min(top_bottom, summary.end + 1)
    for index in range(shown):
        print(f"    #{index:<6} {addresses[index]:#018x}  {_symbol(gdb, addresses[index])}")
    if shown <= summary.end:
        print(f"  … frames {shown:,}-{summary.end:,}: the cycle again …")
    print("  bottom (where the recursion was entered):")
    for index in range(summary.end + 1, min(len(addresses), summary.end + 1 + top_bottom)):
        print(f"    #{index:<6} {addresses[index]:#018x}  {_symbol(gdb, addresses[index])}")


def _register_commands() -> None:
    import gdb  # type: ignore[import-untyped]

    class RedhandScan(gdb.Command):  # type: ignore[misc]
        """Plausible return addresses on the stack: redhand-scan[/all] [ADDRESS [WORDS]].

        Scans WORDS words (default 256) from ADDRESS (default $sp) and lists the
        words that are canonical, point into executable memory and follow a
        call instruction, with their symbols.  /all also lists rejected words
        and why.
        """

        def __init__(self) -> None:
            super().__init__("redhand-scan", gdb.COMMAND_STACK)

        def invoke(self, argument: str, from_tty: bool) -> None:
            show_all = argument.startswith("/all")
            if show_all:
                argument = argument[4:]
            run_scan(gdb, argument, show_all)

    class RedhandRecursion(gdb.Command):  # type: ignore[misc]
        """Summarise a deep recursion: the repeating cycle, its count, the top and the bottom.

        Reads the whole stack of the selected thread from $sp, keeps the
        plausible return addresses and finds the smallest cycle repeating in
        them, without unwinding frame by frame.
        """

        def __init__(self) -> None:
            super().__init__("redhand-recursion", gdb.COMMAND_STACK)

        def invoke(self, argument: str, from_tty: bool) -> None:
            run_recursion(gdb)

    RedhandScan()
    RedhandRecursion()


if "gdb" in sys.modules or __name__ == "__main__":
    with contextlib.suppress(ImportError):  # outside gdb: the plain functions only
        _register_commands()
