"""An unpacked copy of a packed program, matched to the code that runs from anonymous memory.

A packed executable (UPX and its kind) carries its real code compressed; at
start its stub writes that code into anonymous memory, at the addresses the
real program was linked for, and jumps there.  No file backs that code, so
its frames have no names and no CFI.  Given an unpacked copy of the program
(``upx -d``, or the build before packing), :func:`place_unpacked` finds where
its code runs in the target, checks that the bytes there are the copy's,
byte for byte, and returns a :class:`Module` for it: frames then get names,
file:line and inlined calls, and the unwinder its CFI.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from redhand.elf import ElfFile
from redhand.elf import constants as c
from redhand.elf.file import Segment
from redhand.errors import MemoryReadError, RedhandError
from redhand.target.model import Mapping
from redhand.target.module import PAGE_MASK, Module, segment_perms

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_QUICK = 256
"""Bytes compared first at each candidate place, before the whole segment."""


@dataclass(frozen=True)
class Placement:
    """Where an unpacked copy's code was found, or why it was not.

    ``module`` is set when the code matched; ``problem`` says why the copy was
    not used when code was expected but differs.  Both None: the copy's code
    would not run from anonymous memory in this target (it is no unpacked
    copy of a packed program here), and the caller treats it as an ordinary
    executable.
    """

    module: Module | None = None
    problem: str | None = None


def _anonymous(mapping: Mapping) -> bool:
    return mapping.path in (None, "")


def _covering(mappings: Sequence[Mapping], start: int, end: int) -> list[Mapping] | None:
    """The anonymous mappings that cover [start, end) without a gap, or None."""
    covered: list[Mapping] = []
    at = start
    for mapping in mappings:
        if mapping.end <= at or not _anonymous(mapping):
            continue
        if mapping.start > at:
            break
        covered.append(mapping)
        at = mapping.end
        if at >= end:
            return covered
    return None


def _first_difference(a: bytes, b: bytes) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))


def place_unpacked(
    path: str,
    mappings: Sequence[Mapping],
    read: Callable[[int, int], bytes],
    debug_dirs: Sequence[str],
) -> Placement:
    """Match the executable at ``path`` to code in the target's anonymous memory.

    ``mappings`` are the target's, sorted; ``read(address, size)`` reads its
    memory.  A non-PIE copy is looked for at its link addresses; a PIE copy
    at the start of each anonymous executable mapping.  Every executable
    segment's bytes must be the file's.
    """
    try:
        elf = ElfFile.open(path)
        segments = [s for s in elf.iter_segments() if s.p_type == c.PT_LOAD and s.p_memsz]
    except RedhandError:
        return Placement()  # the caller's ordinary use of --exe says what is wrong with it
    code = [s for s in segments if s.p_flags & c.PF_X]
    if not code:
        elf.close()
        return Placement()
    first = code[0]
    if elf.e_type == c.ET_EXEC:
        biases = [0]
    else:
        biases = [
            m.start - (first.p_vaddr & PAGE_MASK)
            for m in mappings
            if _anonymous(m) and "x" in m.perms
        ]
    mismatch: str | None = None
    for bias in biases:
        if any(_covering(mappings, bias + s.p_vaddr, bias + s.p_vaddr + s.p_filesz) is None
               for s in code):  # fmt: skip
            continue  # the code would not be in anonymous memory at this bias
        problem = _compare(code, bias, read, path)
        if problem is None:
            return Placement(module=_module(path, elf, segments, mappings, bias, debug_dirs))
        mismatch = mismatch or problem
    fixed = elf.e_type == c.ET_EXEC
    elf.close()
    if mismatch is not None and fixed:
        return Placement(problem=mismatch)
    # A PIE that matches no anonymous code is an executable given for the usual reason.
    return Placement()


def _compare(
    code: Sequence[Segment], bias: int, read: Callable[[int, int], bytes], path: str
) -> str | None:
    """None when every code segment's bytes are in memory at ``bias``; else what differs."""
    for segment in code:
        wanted = segment.data()
        address = bias + segment.p_vaddr
        quick = min(_QUICK, len(wanted))
        try:
            found = read(address, quick)
            if found == wanted[:quick]:
                found = read(address, len(wanted))
        except MemoryReadError as error:
            return (
                f"--exe {path} was not used: the memory where its code would run "
                f"({address:#x}-{address + len(wanted):#x}) cannot be read: {error.reason}"
            )
        if found != wanted:
            at = _first_difference(found, wanted)
            return (
                f"--exe {path} was not used: its code differs from the code unpacked in "
                f"memory, first at {address + at:#x} (file offset {segment.p_offset + at:#x}): "
                "it is not an unpacked copy of this build"
            )
    return None


def _module(
    path: str,
    elf: ElfFile,
    segments: Sequence[Segment],
    mappings: Sequence[Mapping],
    bias: int,
    debug_dirs: Sequence[str],
) -> Module:
    """The module of the matched copy: its segments that lie in anonymous memory."""
    placed: list[Mapping] = []
    for segment in segments:
        start = (bias + segment.p_vaddr) & PAGE_MASK
        end = (bias + segment.p_vaddr + segment.p_memsz + 0xFFF) & PAGE_MASK
        if _covering(mappings, start, end) is None:
            continue
        perms = segment_perms(segment.p_flags)
        offset = segment.p_offset & PAGE_MASK
        placed.append(Mapping(start, end, perms, offset, "00:00", 0, os.path.abspath(path)))
    log.debug("unpacked copy %s placed at bias %#x: %d segments", path, bias, len(placed))

    def load() -> ElfFile:
        return elf

    return Module(
        path=os.path.abspath(path),
        mappings=placed,
        open_path=path,
        loader=load,
        debug_dirs=debug_dirs,
    )
