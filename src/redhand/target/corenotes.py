"""The notes of an ELF core file, decoded: threads, process, signal, auxv, mapped files.

Layouts are Linux x86_64's (<linux/elfcore.h>, <asm/elf.h>): the kernel and
gdb's gcore write the same structures.  Each decoder takes a note's
descriptor and returns a small value, or raises ValueError when the
descriptor is too short or inconsistent; :func:`read_core_notes` turns those
into warnings and keeps everything else.
"""

from __future__ import annotations

import struct

from redhand._value import Value
from redhand.elf import constants as c
from redhand.elf.file import Note
from redhand.target.model import USER_REGS_FIELDS, Registers
from redhand.target.signals import SIGINFO_SIZE, SignalInfo

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Iterable

# struct elf_prstatus: pr_info (3 ints), pr_cursig (short, 2 bytes of padding),
# pr_sigpend, pr_sighold, pr_pid, pr_ppid, pr_pgrp, pr_sid, 4 timevals,
# pr_reg (27 words) at 112, pr_fpvalid: 336 bytes.
_PRSTATUS_HEAD = struct.Struct("<iiih2xQQiiii")
_PRSTATUS_REGS_AT = 112
_REGS = struct.Struct(f"<{len(USER_REGS_FIELDS)}Q")
PRSTATUS_MIN_SIZE = _PRSTATUS_REGS_AT + _REGS.size

# struct elf_prpsinfo: pr_state, pr_sname, pr_zomb, pr_nice, pr_flag, pr_uid,
# pr_gid (32-bit on x86_64), pr_pid, pr_ppid, pr_pgrp, pr_sid, pr_fname[16],
# pr_psargs[80]: 136 bytes.
_PRPSINFO = struct.Struct("<bcbb4xQIIiiii16s80s")
PSARGS_SIZE = 80

_AUXV_ENTRY = struct.Struct("<QQ")
AT_NULL = 0
AT_PHDR = 3
AT_ENTRY = 9
AT_EXECFN = 31
AT_SYSINFO_EHDR = 33

_FILE_HEAD = struct.Struct("<QQ")  # count, page size
_FILE_ENTRY = struct.Struct("<QQQ")  # start, end, file offset in pages
_MAX_FILES = 1 << 22


class PrStatus(Value):
    """One thread's NT_PRSTATUS: its tid, the signal it is handling, its registers."""

    __slots__ = ("_cursig", "_pgrp", "_pid", "_ppid", "_registers", "_sid", "_sighold", "_sigpend")
    _fields = ("pid", "cursig", "registers", "ppid", "pgrp", "sid", "sigpend", "sighold")

    pid: int
    """The thread's id (pr_pid)."""
    cursig: int
    registers: Registers
    ppid: int
    pgrp: int
    sid: int
    sigpend: int
    sighold: int

    def __init__(
        self,
        pid: int,
        cursig: int,
        registers: Registers,
        ppid: int = 0,
        pgrp: int = 0,
        sid: int = 0,
        sigpend: int = 0,
        sighold: int = 0,
    ) -> None:
        self._pid = pid
        self._cursig = cursig
        self._registers = registers
        self._ppid = ppid
        self._pgrp = pgrp
        self._sid = sid
        self._sigpend = sigpend
        self._sighold = sighold


def parse_prstatus(desc: bytes) -> PrStatus:
    if len(desc) < PRSTATUS_MIN_SIZE:
        raise ValueError(
            f"NT_PRSTATUS has {len(desc)} bytes, an x86_64 one has at least {PRSTATUS_MIN_SIZE}"
        )
    _signo, _code, _errno, cursig, sigpend, sighold, pid, ppid, pgrp, sid = (
        _PRSTATUS_HEAD.unpack_from(desc, 0)
    )
    registers = Registers.from_user_regs(_REGS.unpack_from(desc, _PRSTATUS_REGS_AT))
    return PrStatus(pid, cursig, registers, ppid, pgrp, sid, sigpend, sighold)


class ProcessInfo(Value):
    """The process as NT_PRPSINFO describes it.

    ``fname`` is the command name (at most 15 bytes, like /proc/PID/comm);
    ``psargs`` the command line with arguments joined by spaces and cut to
    80 bytes by the kernel (``psargs_truncated`` says when it may have been
    cut); ``state`` the one-letter state (``R``, ``S``, ``D``...).
    """

    __slots__ = ("_fname", "_gid", "_pgrp", "_pid", "_ppid", "_psargs", "_sid", "_state", "_uid")
    _fields = ("pid", "ppid", "uid", "gid", "fname", "psargs", "state", "pgrp", "sid")

    pid: int
    ppid: int
    uid: int
    gid: int
    fname: str
    psargs: str
    state: str
    pgrp: int
    sid: int

    def __init__(
        self,
        pid: int,
        ppid: int,
        uid: int,
        gid: int,
        fname: str,
        psargs: str,
        state: str = "",
        pgrp: int = 0,
        sid: int = 0,
    ) -> None:
        self._pid = pid
        self._ppid = ppid
        self._uid = uid
        self._gid = gid
        self._fname = fname
        self._psargs = psargs
        self._state = state
        self._pgrp = pgrp
        self._sid = sid

    @property
    def psargs_truncated(self) -> bool:
        """True when the command line filled pr_psargs: it may go on beyond 80 bytes."""
        return len(self.psargs.encode("utf-8", "surrogateescape")) >= PSARGS_SIZE - 1

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "uid": self.uid,
            "gid": self.gid,
            "fname": self.fname,
            "psargs": self.psargs,
            "psargs_truncated": self.psargs_truncated,
            "state": self.state,
        }


def _text(raw: bytes) -> str:
    nul = raw.find(b"\0")
    return (raw if nul < 0 else raw[:nul]).decode("utf-8", "surrogateescape")


def parse_prpsinfo(desc: bytes) -> ProcessInfo:
    if len(desc) < _PRPSINFO.size:
        raise ValueError(f"NT_PRPSINFO has {len(desc)} bytes, an x86_64 one has {_PRPSINFO.size}")
    (_state, sname, _zomb, _nice, _flag, uid, gid, pid, ppid, pgrp, sid, fname, psargs) = (
        _PRPSINFO.unpack_from(desc, 0)
    )
    state = sname.decode("latin-1") if sname not in (b"\0", b" ") else ""
    # The kernel keeps a trailing space where the last argument ended.
    return ProcessInfo(
        pid, ppid, uid, gid, _text(fname), _text(psargs).rstrip(" "), state, pgrp, sid
    )


def parse_auxv(desc: bytes) -> dict[int, int]:
    """The auxiliary vector up to AT_NULL (the first value of each type wins)."""
    usable = len(desc) - len(desc) % _AUXV_ENTRY.size
    auxv: dict[int, int] = {}
    for a_type, a_val in _AUXV_ENTRY.iter_unpack(desc[:usable]):
        if a_type == AT_NULL:
            break
        auxv.setdefault(a_type, a_val)
    return auxv


class FileMapping(Value):
    """One entry of NT_FILE: a mapping of ``path`` from file offset ``offset``."""

    __slots__ = ("_end", "_offset", "_path", "_start")
    _fields = ("start", "end", "offset", "path")

    start: int
    end: int
    offset: int
    path: str

    def __init__(self, start: int, end: int, offset: int, path: str) -> None:
        self._start = start
        self._end = end
        self._offset = offset
        self._path = path


def parse_nt_file(desc: bytes) -> tuple[list[FileMapping], int]:
    """The file mappings of NT_FILE and its page size.

    NT_FILE holds a count and a page size, then ``count`` (start, end, offset
    in pages) triples, then ``count`` NUL-terminated names.
    """
    if len(desc) < _FILE_HEAD.size:
        raise ValueError(f"NT_FILE has {len(desc)} bytes, too short for its header")
    count, page_size = _FILE_HEAD.unpack_from(desc, 0)
    names_at = _FILE_HEAD.size + count * _FILE_ENTRY.size
    if count > _MAX_FILES or names_at > len(desc):
        raise ValueError(f"NT_FILE claims {count} files, more than its {len(desc)} bytes hold")
    if page_size == 0 or page_size & (page_size - 1) or page_size > 1 << 30:
        raise ValueError(f"NT_FILE has an impossible page size {page_size}")
    entries = list(_FILE_ENTRY.iter_unpack(desc[_FILE_HEAD.size : names_at]))
    names = desc[names_at:].split(b"\0")
    if len(names) < count:
        raise ValueError(f"NT_FILE lists {count} mappings but only {len(names) - 1} names")
    files = []
    for (start, end, pages), raw in zip(entries, names, strict=False):
        if end <= start:
            continue
        path = raw.decode("utf-8", "surrogateescape")
        files.append(FileMapping(start, end, pages * page_size, path))
    return files, page_size


class CoreNotes:
    """Everything read from a core's notes.  ``warnings`` says what could not be read."""

    def __init__(self) -> None:
        self.threads: list[tuple[PrStatus, SignalInfo | None]] = []
        """One entry per NT_PRSTATUS in file order: the first is the thread that got the
        signal; its NT_SIGINFO (the one that follows it) if any."""
        self.process: ProcessInfo | None = None
        self.auxv: dict[int, int] = {}
        self.files: list[FileMapping] = []
        self.page_size = 4096
        self.made_by: dict[str, object] | None = None
        """What redhand's own note says of how the core was made (``redhand gcore``)."""
        self.thread_names: dict[int, str] = {}
        """Thread names from redhand's note (the kernel's notes have none)."""
        self.warnings: list[str] = []


def read_core_notes(notes: Iterable[Note]) -> CoreNotes:
    """Decode the notes of a core; a bad note becomes a warning, the others are kept.

    Iterating ``notes`` may raise ElfError at a corrupt note after giving the
    good ones: that is the caller's to catch (it knows the file's name).
    """
    result = CoreNotes()
    for note in notes:
        kind = note.type
        if note.name == "REDHAND" and kind == NT_REDHAND:
            _read_redhand_note(note, result)
            continue
        if note.name not in ("CORE", "LINUX"):
            continue
        try:
            if kind == c.NT_PRSTATUS and note.name == "CORE":
                result.threads.append((parse_prstatus(note.desc), None))
            elif kind == c.NT_SIGINFO:
                info = SignalInfo.from_bytes(note.desc)
                if result.threads and result.threads[-1][1] is None:
                    result.threads[-1] = (result.threads[-1][0], info)
                elif not result.threads:
                    raise ValueError("NT_SIGINFO comes before any thread's NT_PRSTATUS")
            elif kind == c.NT_PRPSINFO and note.name == "CORE" and result.process is None:
                result.process = parse_prpsinfo(note.desc)
            elif kind == c.NT_AUXV and not result.auxv:
                result.auxv = parse_auxv(note.desc)
            elif kind == c.NT_FILE and not result.files:
                result.files, result.page_size = parse_nt_file(note.desc)
        except (ValueError, struct.error) as error:
            result.warnings.append(f"note {_NOTE_NAMES.get(kind, hex(kind))} at offset "
                                   f"{note.offset:#x} is unusable: {error}")  # fmt: skip
    return result


NT_REDHAND = 1
"""redhand's own note (name ``REDHAND``): JSON on how ``redhand gcore`` made the core."""


def _read_redhand_note(note: Note, result: CoreNotes) -> None:
    import json

    try:
        about = json.loads(note.desc.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        result.warnings.append(f"redhand's note at offset {note.offset:#x} is unusable: {error}")
        return
    if not isinstance(about, dict):
        return
    result.made_by = about
    threads = about.get("threads")
    if isinstance(threads, list):
        for item in threads:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], int)
                and isinstance(item[1], str)
            ):
                result.thread_names[item[0]] = item[1]


_NOTE_NAMES = {
    c.NT_PRSTATUS: "NT_PRSTATUS",
    c.NT_PRPSINFO: "NT_PRPSINFO",
    c.NT_SIGINFO: "NT_SIGINFO",
    c.NT_AUXV: "NT_AUXV",
    c.NT_FILE: "NT_FILE",
}

__all__ = [
    "AT_ENTRY",
    "AT_EXECFN",
    "AT_PHDR",
    "AT_SYSINFO_EHDR",
    "SIGINFO_SIZE",
    "CoreNotes",
    "FileMapping",
    "PrStatus",
    "ProcessInfo",
    "read_core_notes",
]
