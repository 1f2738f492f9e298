"""An unpacked copy of a packed program, matched to the code that runs from anonymous memory.

A packed executable (UPX and its kind) carries its real code compressed; at
start its stub writes that code into anonymous memory, at the addresses the
real program was linked for, and jumps there.  No file backs that code, so
its frames have no names and no CFI.  Given an unpacked copy of the program
(``upx -d``, or the build before packing), :func:`place_unpacked` finds where
its code runs in the target, checks that the bytes there are the copy's,
byte for byte, and returns a :class:`Module` for it: frames then get names,
file:line and inlined calls, and the unwinder its CFI.

:func:`find_unpacked` is what the targets call: the copy given with
``--exe`` first; else, for a UPX-packed executable when ``upx`` is installed
(Debian's upx-ucl), a copy that ``upx -d`` unpacks into redhand's cache.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
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

UPX_MARK = b"UPX!"
"""What UPX writes into the files it packs, in the first and the last page."""

_UPX_SECONDS = 120.0


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
    how: str | None = None
    """Where the copy came from, for the report: ``--exe PATH``, or upx and the copy's path."""


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
    name: str | None = None,
) -> Placement:
    """Match the executable at ``path`` to code in the target's anonymous memory.

    ``mappings`` are the target's, sorted; ``read(address, size)`` reads its
    memory.  A non-PIE copy is looked for at its link addresses; a PIE copy
    at the start of each anonymous executable mapping.  Every executable
    segment's bytes must be the file's.  ``name`` is the module's name in
    reports (the copy's absolute path by default).
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
            module = _module(path, name, elf, segments, mappings, bias, debug_dirs)
            return Placement(module=module)
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
    name: str | None,
    elf: ElfFile,
    segments: Sequence[Segment],
    mappings: Sequence[Mapping],
    bias: int,
    debug_dirs: Sequence[str],
) -> Module:
    """The module of the matched copy: its segments that lie in anonymous memory."""
    name = name or os.path.abspath(path)
    placed: list[Mapping] = []
    for segment in segments:
        start = (bias + segment.p_vaddr) & PAGE_MASK
        end = (bias + segment.p_vaddr + segment.p_memsz + 0xFFF) & PAGE_MASK
        if _covering(mappings, start, end) is None:
            continue
        perms = segment_perms(segment.p_flags)
        offset = segment.p_offset & PAGE_MASK
        placed.append(Mapping(start, end, perms, offset, "00:00", 0, name))
    log.debug("unpacked copy %s placed at bias %#x: %d segments", path, bias, len(placed))

    def load() -> ElfFile:
        return elf

    return Module(
        path=name,
        mappings=placed,
        open_path=path,
        loader=load,
        debug_dirs=debug_dirs,
    )


def find_unpacked(
    exe: str | None,
    packed: str | None,
    mappings: Sequence[Mapping],
    read: Callable[[int, int], bytes],
    debug_dirs: Sequence[str],
) -> Placement:
    """The module of a packed program's unpacked code, from ``exe`` or from upx.

    ``exe`` is the copy the user gave (``--exe``), ``packed`` the program's
    own file as the target names it.  When ``exe`` is no unpacked copy (its
    code is not in anonymous memory), it is taken for the program's file.
    A UPX-packed file is unpacked with ``upx -d`` when upx is installed.
    """
    if exe is not None:
        placement = place_unpacked(exe, mappings, read, debug_dirs)
        if placement.module is not None or placement.problem is not None:
            return Placement(placement.module, placement.problem, f"--exe {exe}")
        packed = exe
    if packed is None or not upx_packed(packed):
        return Placement()
    upx = shutil.which("upx")
    if upx is None:
        return Placement(
            problem=f"{packed} is packed by UPX and upx is not installed (Debian: upx-ucl): "
            "its frames cannot be named; install it, or give an unpacked copy with --exe"
        )
    copy, problem = upx_unpack(upx, packed)
    if copy is None:
        return Placement(problem=problem)
    name = f"{packed} [unpacked by upx]"
    placement = place_unpacked(copy, mappings, read, debug_dirs, name)
    if placement.problem is not None:
        problem = placement.problem.replace(f"--exe {copy}", f"upx's unpacked copy {copy}")
        return Placement(problem=problem)
    return Placement(placement.module, None, f"a copy that upx unpacked: {copy}")


def upx_packed(path: str) -> bool:
    """Whether the file carries UPX's marks in its first or last page."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
            size = file.seek(0, os.SEEK_END)
            file.seek(max(size - 4096, 0))
            tail = file.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x7fELF") and (UPX_MARK in head or UPX_MARK in tail)


def upx_unpack(upx: str, packed: str) -> tuple[str | None, str | None]:
    """``upx -d`` of ``packed`` into redhand's cache (kept by the file's SHA-256): the copy's
    path, or None and why not."""
    from redhand import cache

    digest = hashlib.sha256()
    try:
        with open(packed, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    except OSError as error:
        return None, f"{packed} cannot be read to unpack it: {error.strerror or error}"
    name = f"{digest.hexdigest()[:32]}-{os.path.basename(packed)}"
    copy = cache.entry_path("unpacked", name)
    if copy is None:  # no cache: a folder of this run's own, removed at exit
        folder = tempfile.mkdtemp(prefix="redhand-unpacked-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        copy = os.path.join(folder, name)
    if os.path.exists(copy):
        return copy, None
    os.makedirs(os.path.dirname(copy), mode=0o700, exist_ok=True)
    partial = f"{copy}.{os.getpid()}.tmp"
    try:
        result = subprocess.run(
            [upx, "-d", "-q", "-o", partial, packed],
            capture_output=True,
            text=True,
            timeout=_UPX_SECONDS,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            reason = said[-1] if said else f"exit status {result.returncode}"
            return None, f"upx could not unpack {packed}: {reason}"
        os.replace(partial, copy)
    except subprocess.TimeoutExpired:
        return None, f"upx did not unpack {packed} in {_UPX_SECONDS:g} s"
    except OSError as error:
        return None, f"upx could not unpack {packed}: {error.strerror or error}"
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    log.info("unpacked %s with upx into %s", packed, copy)
    return copy, None
