"""Rust panics: where a panic happened, and its message when the core still holds it.

The default panic hook writes the message to stderr; nothing stores it.  Two
things usually survive on the panicking thread's stack all the same:

- a pointer to the panic's ``core::panic::Location`` (file ``&str``, line,
  column), a constant in the executable's read-only data: it is passed down
  from ``panic_fmt`` through the hook;
- for a message that is a plain string literal (``panic!("text")``),
  std's panic handler wraps that ``&'static str`` (pointer, length) in a
  payload on its own stack frame (``std::panicking::panic_handler::{closure}``,
  called ``begin_panic_handler`` before Rust 1.90; ``begin_panic`` for
  ``panic_any`` and edition-2015 string panics).

Both are recognised by shape and checked (a UTF-8 file name ending in
``.rs``; a string of printable text), never trusted by position alone.  A
message formatted at run time (``panic!("bad {x}")``) is not in memory in
its final form: then the message is None.
"""

from __future__ import annotations

import struct
from itertools import pairwise

from redhand.analysis.objects import read_bytes
from redhand.errors import RedhandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.target.model import Frame, Mapping
    from redhand.target.target import Target, Thread

_SCAN = 0x4000  # bytes of stack above sp searched for the Location pointer
_MAX_TEXT = 4096
_STD_SOURCES = ("/rustc/", "library/core/", "library/std/", "library/alloc/")
_LOCATION = struct.Struct("<QQII")  # file.ptr, file.len, line, col

# Frames whose locals hold the panic payload (a &'static str for a literal message).
_PAYLOAD_FRAMES = (
    "std::panicking::panic_handler::",
    "std::panicking::begin_panic_handler::",
    "std::panicking::begin_panic::",
    "std::panicking::begin_panic<",
    "std::panicking::begin_panic",
)


def _read_only_data(target: Target, address: int) -> Mapping | None:
    """The mapping of ``address`` if it is read-only data of a file (where constants live)."""
    mapping = target.find_mapping(address)
    if mapping is None or not mapping.path or mapping.path.startswith("["):
        return None
    if mapping.writable or mapping.executable or not mapping.readable:
        return None
    return mapping


def _text(target: Target, pointer: int, length: int) -> str | None:
    """``length`` bytes at ``pointer`` as printable UTF-8 in read-only data, or None."""
    if not 0 < length <= _MAX_TEXT or _read_only_data(target, pointer) is None:
        return None
    data = read_bytes(target.memory, pointer, length)
    if len(data) != length:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.isprintable() and not all(ch.isprintable() or ch in "\n\t" for ch in text):
        return None
    return text


def _location_at(target: Target, address: int) -> str | None:
    data = read_bytes(target.memory, address, _LOCATION.size)
    if len(data) != _LOCATION.size:
        return None
    pointer, length, line, column = _LOCATION.unpack(data)
    if not (0 < line < 10_000_000 and 0 < column < 100_000):
        return None
    name = _text(target, pointer, length)
    if name is None or not name.endswith(".rs"):
        return None
    return f"{name}:{line}:{column}"


def panic_location(target: Target, sp: int) -> str | None:
    """``src/main.rs:6:19``: a pointer to a valid Location above ``sp``.

    Other Locations may be on the stack too (std passes them to functions
    marked ``#[track_caller]`` that did not panic, and those lie in std's
    own sources, ``/rustc/HASH/library/...``).  The first Location outside
    the standard library wins; failing that, the first one found.
    """
    data = read_bytes(target.memory, sp, _SCAN)
    tried: set[int] = set()
    first = None
    for (word,) in struct.iter_unpack("<Q", data[: len(data) - len(data) % 8]):
        if word in tried or word & 3:
            continue
        tried.add(word)
        if _read_only_data(target, word) is None:
            continue
        found = _location_at(target, word)
        if found is None:
            continue
        if not found.startswith(_STD_SOURCES):
            return found
        first = first or found
    return first


def _frame_range(frames: list[Frame]) -> tuple[int, int] | None:
    """The stack range of the frame that holds the panic payload."""
    for index, frame in enumerate(frames):
        function = frame.function or ""
        if function.startswith(_PAYLOAD_FRAMES) and index + 1 < len(frames):
            return frame.sp, frames[index + 1].sp
    return None


def panic_message(target: Target, frames: list[Frame], location: str | None) -> str | None:
    """A literal panic message: a (pointer, length) string in the payload frame, or None."""
    span = _frame_range(frames)
    if span is None:
        return None
    start, end = span
    data = read_bytes(target.memory, start, min(end - start + 16, 0x1000))
    words = [word for (word,) in struct.iter_unpack("<Q", data[: len(data) - len(data) % 8])]
    file_name = location.rsplit(":", 2)[0] if location else None
    for pointer, length in pairwise(words):
        text = _text(target, pointer, length)
        if text is not None and text != file_name:
            return text
    return None


def panic_info(target: Target, thread: Thread) -> tuple[str | None, str | None] | None:
    """(message, location) of the panic in flight on ``thread``; None if neither is found."""
    registers = thread.registers
    if registers is None:
        return None
    location = panic_location(target, registers.rsp)
    try:
        frames = list(thread.backtrace())
    except RedhandError:  # a best-effort read: the crash is still a panic
        frames = []
    message = panic_message(target, frames, location)
    if message is None and location is None:
        return None
    return message, location
