"""The bytes of an ELF core file: notes as small pure functions, and the file's layout.

Layouts are Linux x86_64's, as the kernel writes them (fs/binfmt_elf.c,
<linux/elfcore.h>) and as gdb, lldb, eu-stack and :mod:`redhand.target.core`
read them.  Each ``*_note`` function returns one note's descriptor; a
:class:`Layout` places the notes and the memory segments in the file.

What the readers need (measured): NT_PRSTATUS of every thread; NT_PRPSINFO
(elfutils refuses a core without it); NT_AUXV (without it gdb and lldb find
no symbols); NT_FILE (eu-stack without the executable); and the first page
of every ELF file mapping (the build-ids).  The notes go in the kernel's
order, the segments in address order (elfutils relies on both).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence

from redhand.elf import constants as c
from redhand.target.corenotes import NT_REDHAND
from redhand.target.model import USER_REGS_FIELDS

PAGE_SIZE = 4096
PN_XNUM = 0xFFFF
"""e_phnum when there are too many program headers: the count is in section 0's sh_info."""

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_NOTE_HEAD = struct.Struct("<III")

# struct elf_prstatus: pr_info (signo, code, errno), pr_cursig, 2 bytes of
# padding, pr_sigpend, pr_sighold, pr_pid, pr_ppid, pr_pgrp, pr_sid, then
# pr_utime, pr_stime, pr_cutime, pr_cstime (struct timeval each), pr_reg
# (27 words), pr_fpvalid and 4 bytes of padding: 336 bytes.
_PRSTATUS = struct.Struct(f"<iiih2xQQiiii8q{len(USER_REGS_FIELDS)}Qi4x")
# struct elf_prpsinfo: pr_state, pr_sname, pr_zomb, pr_nice, 4 bytes of
# padding, pr_flag, pr_uid, pr_gid, pr_pid, pr_ppid, pr_pgrp, pr_sid,
# pr_fname[16], pr_psargs[80]: 136 bytes.
_PRPSINFO = struct.Struct("<bcbb4xQIIiiii16s80s")
PSARGS_SIZE = 80
SIGINFO_SIZE = 128
_FILE_HEAD = struct.Struct("<QQ")
_FILE_ENTRY = struct.Struct("<QQQ")

_STATE_NUMBERS = {"R": 0, "S": 1, "D": 2, "T": 3, "t": 3, "Z": 4, "X": 5}


@dataclasses.dataclass(frozen=True)
class ThreadState:
    """What a thread's notes say: its id, registers and signal state.

    ``fpregs`` is the 512-byte FXSAVE area (NT_FPREGSET) and ``xstate`` the
    XSAVE area (NT_X86_XSTATE); either is None when it could not be read,
    and its note is then left out.  Times are in microseconds.
    """

    tid: int
    registers: Sequence[int]
    """The 27 words of ``struct user_regs_struct``, in the kernel's order."""
    fpregs: bytes | None = None
    xstate: bytes | None = None
    cursig: int = 0
    sigpend: int = 0
    sighold: int = 0
    utime_us: int = 0
    stime_us: int = 0


@dataclasses.dataclass(frozen=True)
class ProcessState:
    """What NT_PRPSINFO and the thread notes say of the whole process."""

    pid: int
    ppid: int
    pgrp: int
    sid: int
    uid: int
    gid: int
    comm: str
    args: Sequence[str]
    state: str = "S"
    nice: int = 0
    flags: int = 0


def prstatus_note(thread: ThreadState, process: ProcessState) -> bytes:
    """NT_PRSTATUS: one thread's registers, pending and blocked signals, times."""
    if len(thread.registers) != len(USER_REGS_FIELDS):
        raise ValueError(f"{len(thread.registers)} register words, not {len(USER_REGS_FIELDS)}")
    utime = divmod(thread.utime_us, 1_000_000)
    stime = divmod(thread.stime_us, 1_000_000)
    return _PRSTATUS.pack(
        thread.cursig,
        0,
        0,
        thread.cursig,
        thread.sigpend,
        thread.sighold,
        thread.tid,
        process.ppid,
        process.pgrp,
        process.sid,
        *utime,
        *stime,
        0,
        0,
        0,
        0,
        *thread.registers,
        1 if thread.fpregs is not None else 0,
    )


def prpsinfo_note(process: ProcessState) -> bytes:
    """NT_PRPSINFO: the process's state, ids, command name and arguments.

    The arguments are joined by spaces and cut to 79 bytes, as the kernel
    does (it keeps the space after the last argument).
    """
    args = " ".join(process.args).encode("utf-8", "surrogateescape")
    if args:
        args += b" "
    state = _STATE_NUMBERS.get(process.state, 1)
    sname = process.state.encode("latin-1")[:1] or b"S"
    return _PRPSINFO.pack(
        state,
        sname,
        1 if process.state == "Z" else 0,
        process.nice,
        process.flags,
        process.uid & 0xFFFFFFFF,
        process.gid & 0xFFFFFFFF,
        process.pid,
        process.ppid,
        process.pgrp,
        process.sid,
        process.comm.encode("utf-8", "surrogateescape")[:15],
        args[: PSARGS_SIZE - 1],
    )


def siginfo_note(signo: int = 0, code: int = 0) -> bytes:
    """NT_SIGINFO: the signal being handled; all zeros for a live process dumped on request."""
    return struct.pack("<iii", signo, 0, code).ljust(SIGINFO_SIZE, b"\0")


@dataclasses.dataclass(frozen=True)
class MappedFile:
    """One file mapping for NT_FILE: where, from which page of the file, which file."""

    start: int
    end: int
    offset: int
    path: str


def file_note(files: Iterable[MappedFile], page_size: int = PAGE_SIZE) -> bytes:
    """NT_FILE: a count and the page size, (start, end, page offset) triples, then the names."""
    entries = list(files)
    head = _FILE_HEAD.pack(len(entries), page_size)
    triples = b"".join(
        _FILE_ENTRY.pack(entry.start, entry.end, entry.offset // page_size) for entry in entries
    )
    names = b"".join(entry.path.encode("utf-8", "surrogateescape") + b"\0" for entry in entries)
    return head + triples + names


@dataclasses.dataclass(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes

    def encode(self) -> bytes:
        name = self.name.encode() + b"\0"
        return (
            _NOTE_HEAD.pack(len(name), len(self.desc), self.type) + _pad4(name) + _pad4(self.desc)
        )


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def thread_notes(
    threads: Sequence[ThreadState],
    process: ProcessState,
    *,
    auxv: bytes,
    files: Sequence[MappedFile],
    extra: Sequence[Note] = (),
) -> list[Note]:
    """Every note of a core, in the kernel's order.

    The first thread (the one a reader shows first and takes for the one
    that got the signal) has NT_PRSTATUS, NT_PRPSINFO, NT_SIGINFO, NT_AUXV,
    NT_FILE, NT_FPREGSET, NT_X86_XSTATE; each other thread NT_PRSTATUS,
    NT_FPREGSET, NT_X86_XSTATE.  ``extra`` notes come last.
    """
    notes: list[Note] = []
    for index, thread in enumerate(threads):
        notes.append(Note("CORE", c.NT_PRSTATUS, prstatus_note(thread, process)))
        if index == 0:
            notes.append(Note("CORE", c.NT_PRPSINFO, prpsinfo_note(process)))
            notes.append(Note("CORE", c.NT_SIGINFO, siginfo_note(thread.cursig)))
            notes.append(Note("CORE", c.NT_AUXV, auxv))
            notes.append(Note("CORE", c.NT_FILE, file_note(files)))
        if thread.fpregs is not None:
            notes.append(Note("CORE", c.NT_PRFPREG, thread.fpregs))
        if thread.xstate is not None:
            notes.append(Note("LINUX", c.NT_X86_XSTATE, thread.xstate))
    notes.extend(extra)
    return notes


# -- the file's layout ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Segment:
    """One PT_LOAD: the memory from ``start`` to ``end``, of which the first
    ``dumped`` bytes are in the file (0: described, not dumped)."""

    start: int
    end: int
    flags: int
    """PF_R, PF_W and PF_X."""
    dumped: int

    @property
    def size(self) -> int:
        return self.end - self.start


def segment_flags(perms: str) -> int:
    """PF_* of a /proc/PID/maps permission string (``r-xp``)."""
    flags = 0
    if perms[:1] == "r":
        flags |= c.PF_R
    if perms[1:2] == "w":
        flags |= c.PF_W
    if perms[2:3] == "x":
        flags |= c.PF_X
    return flags


class Layout:
    """Where everything of a core goes: headers, notes, then each segment's data.

    The data of each dumped segment starts on a page boundary, segments
    follow each other in address order, and nothing is written between
    them: :meth:`data_offset` of each, and :attr:`size` of the whole file.
    """

    def __init__(self, notes: Sequence[Note], segments: Sequence[Segment]) -> None:
        self.segments = sorted(segments, key=lambda segment: segment.start)
        self.notes_data = b"".join(note.encode() for note in notes)
        self.phnum = len(self.segments) + 1
        self.extended = self.phnum >= PN_XNUM
        self.notes_offset = _EHDR.size + self.phnum * _PHDR.size
        offset = _round_up(self.notes_offset + len(self.notes_data), PAGE_SIZE)
        self.offsets: list[int] = []
        for segment in self.segments:
            self.offsets.append(offset)
            offset += segment.dumped
        self.data_end = offset
        # With PN_XNUM, one section header after the data holds the real count.
        self.shoff = self.data_end if self.extended else 0
        self.size = self.data_end + (_SHDR.size if self.extended else 0)

    @property
    def data_start(self) -> int:
        return self.offsets[0] if self.offsets else self.data_end

    def head(self) -> bytes:
        """The ELF header, the program headers and the notes: the file's first bytes."""
        ident = b"\x7fELF" + bytes([c.ELFCLASS64, c.ELFDATA2LSB, c.EV_CURRENT, 0])
        header = _EHDR.pack(
            ident.ljust(16, b"\0"),
            c.ET_CORE,
            c.EM_X86_64,
            c.EV_CURRENT,
            0,
            _EHDR.size,
            self.shoff,
            0,
            _EHDR.size,
            _PHDR.size,
            PN_XNUM if self.extended else self.phnum,
            _SHDR.size if self.extended else 0,
            1 if self.extended else 0,
            0,
        )
        headers = [_PHDR.pack(c.PT_NOTE, 0, self.notes_offset, 0, 0, len(self.notes_data), 0, 4)]
        for segment, offset in zip(self.segments, self.offsets, strict=True):
            headers.append(
                _PHDR.pack(
                    c.PT_LOAD,
                    segment.flags,
                    offset,
                    segment.start,
                    0,
                    segment.dumped,
                    segment.size,
                    PAGE_SIZE,
                )
            )
        return header + b"".join(headers) + self.notes_data

    def tail(self) -> bytes:
        """What follows the data: section header 0 with the real e_phnum, when extended."""
        if not self.extended:
            return b""
        return _SHDR.pack(0, 0, 0, 0, 0, 0, 0, self.phnum, 0, 0)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


__all__ = [
    "NT_REDHAND",
    "PAGE_SIZE",
    "PN_XNUM",
    "Layout",
    "MappedFile",
    "Note",
    "ProcessState",
    "Segment",
    "ThreadState",
    "file_note",
    "prpsinfo_note",
    "prstatus_note",
    "segment_flags",
    "siginfo_note",
    "thread_notes",
]
