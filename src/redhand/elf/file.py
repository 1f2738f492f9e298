"""A lazy reader of x86_64 ELF64 little-endian files.

Opening a file maps it and checks its header, nothing more: program headers,
section headers, notes and symbol tables are read the first time something
asks for them, and the headers are then kept.  Every low-level failure (a
struct that does not fit, an offset past the end, an absurd count, a broken
compressed stream) becomes an :class:`~redhand.errors.ElfError` that names the
file and what was wrong, in one place: :meth:`ElfFile._parsing` and the
bounds-checked readers below it.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import sys
import zlib
from bisect import bisect_right
from collections import namedtuple

from redhand._value import Value
from redhand.elf import constants as c
from redhand.errors import ElfError, FileNotFound, UnsupportedElf

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType
    from typing import NamedTuple

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes
_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym, 24 bytes
_NHDR = struct.Struct("<III")  # Elf64_Nhdr (same as Elf32_Nhdr), 12 bytes
_DYN = struct.Struct("<QQ")  # Elf64_Dyn, 16 bytes
_RELA = struct.Struct("<QQq")  # Elf64_Rela, 24 bytes
_CHDR = struct.Struct("<IIQQ")  # Elf64_Chdr, 24 bytes
_U32 = struct.Struct("<I")

# Limits that turn absurd values into errors instead of huge allocations.
MAX_DECOMPRESSED = 1 << 30  # one compressed section, or .gnu_debugdata
_MAX_SEGMENTS = 1 << 20  # cores of big processes have tens of thousands of PT_LOADs
_MAX_SECTIONS = 1 << 20

_Buffer = bytes | mmap.mmap

# The exceptions a parser can raise on bad input, translated in _parsing();
# lzma.LZMAError too, once lzma is imported (only .gnu_debugdata needs it).
_LOW_LEVEL_ERRORS: tuple[type[Exception], ...] = (
    struct.error,
    IndexError,
    KeyError,
    ValueError,
    OverflowError,
    UnicodeError,
    zlib.error,
    EOFError,
)


def _is_low_level(exc: Exception) -> bool:
    if isinstance(exc, _LOW_LEVEL_ERRORS):
        return True
    lzma = sys.modules.get("lzma")
    return lzma is not None and isinstance(exc, lzma.LZMAError)


def _cstring(data: _Buffer, offset: int) -> str:
    """The NUL-terminated string at ``offset`` (up to the end if unterminated)."""
    end = data.find(b"\0", offset)
    if end < 0:
        end = len(data)
    return data[offset:end].decode("utf-8", "backslashreplace")


def _describe_start(head: bytes) -> str:
    if not head:
        return "the file is empty"
    return f"starts with {head[:16]!r}"


class Segment(Value):
    """One program header (Elf64_Phdr).  Immutable; compared without its file.

    (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_elf",
        "_index",
        "_p_align",
        "_p_filesz",
        "_p_flags",
        "_p_memsz",
        "_p_offset",
        "_p_paddr",
        "_p_type",
        "_p_vaddr",
    )
    _fields = (
        "p_type",
        "p_flags",
        "p_offset",
        "p_vaddr",
        "p_paddr",
        "p_filesz",
        "p_memsz",
        "p_align",
        "index",
    )

    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int
    index: int
    _elf: ElfFile

    def __init__(
        self,
        p_type: int,
        p_flags: int,
        p_offset: int,
        p_vaddr: int,
        p_paddr: int,
        p_filesz: int,
        p_memsz: int,
        p_align: int,
        index: int,
        _elf: ElfFile,
    ) -> None:
        self._p_type = p_type
        self._p_flags = p_flags
        self._p_offset = p_offset
        self._p_vaddr = p_vaddr
        self._p_paddr = p_paddr
        self._p_filesz = p_filesz
        self._p_memsz = p_memsz
        self._p_align = p_align
        self._index = index
        self._elf = _elf

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        raise TypeError("a Segment belongs to an open ElfFile and cannot be pickled")

    def data(self) -> bytes:
        """The segment's ``p_filesz`` bytes from the file (ElfError if the file is shorter)."""
        return self._elf.read(self.p_offset, self.p_filesz)

    def contains_vaddr(self, vaddr: int) -> bool:
        return self.p_vaddr <= vaddr < self.p_vaddr + self.p_memsz

    @property
    def readable(self) -> bool:
        return bool(self.p_flags & c.PF_R)

    @property
    def writable(self) -> bool:
        return bool(self.p_flags & c.PF_W)

    @property
    def executable(self) -> bool:
        return bool(self.p_flags & c.PF_X)


class Section(Value):
    """One section header (Elf64_Shdr) and its name.  Immutable; compared without its file.

    (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_elf",
        "_index",
        "_name",
        "_sh_addr",
        "_sh_addralign",
        "_sh_entsize",
        "_sh_flags",
        "_sh_info",
        "_sh_link",
        "_sh_offset",
        "_sh_size",
        "_sh_type",
    )
    _fields = (
        "name",
        "sh_type",
        "sh_flags",
        "sh_addr",
        "sh_offset",
        "sh_size",
        "sh_link",
        "sh_info",
        "sh_addralign",
        "sh_entsize",
        "index",
    )

    name: str
    sh_type: int
    sh_flags: int
    sh_addr: int
    sh_offset: int
    sh_size: int
    sh_link: int
    sh_info: int
    sh_addralign: int
    sh_entsize: int
    index: int
    _elf: ElfFile

    def __init__(
        self,
        name: str,
        sh_type: int,
        sh_flags: int,
        sh_addr: int,
        sh_offset: int,
        sh_size: int,
        sh_link: int,
        sh_info: int,
        sh_addralign: int,
        sh_entsize: int,
        index: int,
        _elf: ElfFile,
    ) -> None:
        self._name = name
        self._sh_type = sh_type
        self._sh_flags = sh_flags
        self._sh_addr = sh_addr
        self._sh_offset = sh_offset
        self._sh_size = sh_size
        self._sh_link = sh_link
        self._sh_info = sh_info
        self._sh_addralign = sh_addralign
        self._sh_entsize = sh_entsize
        self._index = index
        self._elf = _elf

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        raise TypeError("a Section belongs to an open ElfFile and cannot be pickled")

    def data(self) -> bytes:
        """The section's contents.

        SHT_NOBITS sections give ``b""``; SHF_COMPRESSED sections (zlib or
        zstd) and legacy ``.zdebug`` sections come back decompressed.
        """
        return self._elf.section_data(self)

    @property
    def is_compressed(self) -> bool:
        return bool(self.sh_flags & c.SHF_COMPRESSED)

    @property
    def executable(self) -> bool:
        return bool(self.sh_flags & c.SHF_EXECINSTR)

    @property
    def allocated(self) -> bool:
        return bool(self.sh_flags & c.SHF_ALLOC)

    def contains_vaddr(self, vaddr: int) -> bool:
        return bool(self.sh_flags & c.SHF_ALLOC) and self.sh_addr <= vaddr < (
            self.sh_addr + self.sh_size
        )


# The small records below are named tuples.  At run time they are made with
# collections.namedtuple: ``typing.NamedTuple`` would import ``typing``, which
# cost 5-10 ms of the start of ``redhand stack`` on the reference machine;
# the type checker sees the same fields, typed, in the TYPE_CHECKING branch.
if TYPE_CHECKING:

    class _ElfSymbol(NamedTuple):
        name: str
        value: int
        size: int
        type: int
        bind: int
        shndx: int
        other: int

    class Note(NamedTuple):
        """One ELF note: ``offset`` is where its header starts in the file."""

        name: str
        type: int
        desc: bytes
        offset: int

    class Relocation(NamedTuple):
        """One Elf64_Rela entry, with r_info split into symbol index and type."""

        r_offset: int
        r_type: int
        r_sym: int
        r_addend: int

    class SymbolColumns(NamedTuple):
        """A symbol table as columns, one item per symbol (``st_info``/``st_other`` as bytes)."""

        st_name: list[int]
        st_info: bytes
        st_other: bytes
        st_shndx: list[int]
        st_value: list[int]
        st_size: list[int]

else:
    _ElfSymbol = namedtuple("ElfSymbol", "name value size type bind shndx other")
    Note = namedtuple("Note", "name type desc offset", module=__name__)
    Note.__doc__ = "One ELF note: ``offset`` is where its header starts in the file."
    Relocation = namedtuple("Relocation", "r_offset r_type r_sym r_addend", module=__name__)
    Relocation.__doc__ = "One Elf64_Rela entry, with r_info split into symbol index and type."
    SymbolColumns = namedtuple(
        "SymbolColumns", "st_name st_info st_other st_shndx st_value st_size", module=__name__
    )
    SymbolColumns.__doc__ = (
        "A symbol table as columns, one item per symbol (``st_info``/``st_other`` as bytes)."
    )


class ElfSymbol(_ElfSymbol):
    """One Elf64_Sym with its name resolved."""

    __slots__ = ()

    @property
    def visibility(self) -> int:
        return self.other & 0x3


class SymbolTable:
    """A symbol table section and its string table, read once.

    :meth:`raw` gives the unpacked ``(st_name, st_info, st_other, st_shndx,
    st_value, st_size)`` tuples and :meth:`columns` the same as columns, the
    fast paths for indexes that resolve names only for the few symbols they
    need (:meth:`name`).
    """

    __slots__ = ("_columns", "_elf", "_entries", "_raw", "section", "strtab")

    def __init__(self, elf: ElfFile, section: Section, entries: bytes, strtab: bytes) -> None:
        self._elf = elf
        self.section = section
        self._entries = entries
        self.strtab = strtab
        self._raw: list[tuple[int, int, int, int, int, int]] | None = None
        self._columns: SymbolColumns | None = None

    def __len__(self) -> int:
        return len(self._entries) // _SYM.size

    @property
    def data(self) -> bytes:
        """The table's Elf64_Sym entries (24 bytes each), as in the file."""
        return self._entries

    def raw(self) -> list[tuple[int, int, int, int, int, int]]:
        if self._raw is None:
            self._raw = list(_SYM.iter_unpack(self._entries))
        return self._raw

    def columns(self) -> SymbolColumns:
        """The fields of every symbol as columns, extracted at C speed (cached)."""
        if self._columns is None:
            self._columns = self._make_columns()
        return self._columns

    def _make_columns(self) -> SymbolColumns:
        entries = self._entries
        if sys.byteorder != "little":  # pragma: no cover - redhand runs on x86_64
            rows = self.raw()
            return SymbolColumns(
                [r[0] for r in rows],
                bytes(r[1] for r in rows),
                bytes(r[2] for r in rows),
                [r[3] for r in rows],
                [r[4] for r in rows],
                [r[5] for r in rows],
            )
        # An Elf64_Sym is 24 bytes: st_name u32 | st_info u8 | st_other u8 |
        # st_shndx u16 | st_value u64 | st_size u64; strided views pick one field.
        view = memoryview(entries)
        quads = view.cast("Q")
        return SymbolColumns(
            view.cast("I")[0::6].tolist(),
            entries[4::24],
            entries[5::24],
            view.cast("H")[3::12].tolist(),
            quads[1::3].tolist(),
            quads[2::3].tolist(),
        )

    def name(self, st_name: int) -> str:
        """The name at offset ``st_name`` of the string table (ElfError if out of range)."""
        if not 0 <= st_name < len(self.strtab):
            if st_name == 0:
                return ""
            raise ElfError(
                self._elf.path,
                f"symbol name offset {st_name:#x} is past the end of the string table "
                f"of {self.section.name} ({len(self.strtab)} bytes)",
            )
        return _cstring(self.strtab, st_name)

    def __getitem__(self, index: int) -> ElfSymbol:
        st_name, info, other, shndx, value, size = self.raw()[index]
        return ElfSymbol(self.name(st_name), value, size, info & 0xF, info >> 4, shndx, other)

    def __iter__(self) -> Iterator[ElfSymbol]:
        strtab = self.strtab
        limit = len(strtab)
        raw = self.raw()
        for st_name, *_ in raw:
            if st_name >= limit and st_name != 0:
                raise ElfError(
                    self._elf.path,
                    f"symbol name offset {st_name:#x} is past the end of the string "
                    f"table of {self.section.name} ({limit} bytes)",
                )
        make = tuple.__new__
        if strtab.isascii():
            # Decoding the table once and slicing str is twice as fast as
            # decoding every name; ASCII keeps byte and character offsets equal.
            text = strtab.decode("ascii") + "\0"
            find = text.find
            for st_name, info, other, shndx, value, size in raw:
                name = text[st_name : find("\0", st_name)]
                yield make(ElfSymbol, (name, value, size, info & 0xF, info >> 4, shndx, other))
            return
        for st_name, info, other, shndx, value, size in raw:
            name = _cstring(strtab, st_name) if st_name < limit else ""
            yield make(ElfSymbol, (name, value, size, info & 0xF, info >> 4, shndx, other))


_UNSET: object = object()


class open_regular_file:
    """A read-only descriptor of a regular, non-empty file, closed on leaving.

    Every way of not being one (missing, a directory, unreadable, a FIFO, empty)
    becomes one FileNotFound or ElfError naming ``name``.  A FIFO is opened
    non-blocking so that it cannot hang the caller.  (A class rather than a
    ``contextlib.contextmanager``: contextlib, with functools and
    collections, is not otherwise needed on the path of ``redhand stack``.)
    """

    __slots__ = ("_fd", "_opening")

    def __init__(
        self,
        path: str,
        name: str,
        *,
        what: str = "an ELF file",
        permission_hint: str = "run as a user who can read it",
        empty_message: str = "not an ELF file (the file is empty)",
        empty_hint: str | None = None,
        missing_hint: str | None = None,
    ) -> None:
        self._fd = -1
        self._opening = (path, name, what, permission_hint, empty_message, empty_hint, missing_hint)

    def __enter__(self) -> int:
        path, name, what, permission_hint, empty_message, empty_hint, missing_hint = self._opening
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise FileNotFound(name, hint=missing_hint) from None
        except IsADirectoryError:
            raise ElfError(name, f"is a directory, not {what}") from None
        except PermissionError:
            raise ElfError(name, "cannot open: permission denied", hint=permission_hint) from None
        except OSError as exc:
            raise ElfError(name, f"cannot open: {os.strerror(exc.errno or 0)}") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise ElfError(name, f"is a directory, not {what}")
            if not stat.S_ISREG(info.st_mode):
                raise ElfError(name, "is not a regular file")
            if info.st_size == 0:
                raise ElfError(name, empty_message, hint=empty_hint)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def __exit__(self, *exc_info: object) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class _Parsing:
    """The one choke point of :class:`ElfFile`: see :meth:`ElfFile._parsing`."""

    __slots__ = ("_elf", "_what")

    def __init__(self, elf: ElfFile, what: str) -> None:
        self._elf = elf
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if exc is None or isinstance(exc, ElfError):
            return
        path, what = self._elf.path, self._what
        if isinstance(exc, MemoryError):
            raise ElfError(path, f"corrupt {what}: too large to read") from None
        if not isinstance(exc, Exception) or not _is_low_level(exc):
            return
        if self._elf.closed:
            raise ElfError(path, f"cannot read {what}: the file is closed") from None
        detail = str(exc) or type(exc).__name__
        raise ElfError(path, f"corrupt {what}: {detail}") from exc


def map_descriptor(fd: int, name: str) -> mmap.mmap:
    """The whole file read-only in memory (the mapping keeps the file open by itself)."""
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else exc
        raise ElfError(name, f"cannot map the file: {reason}") from None


class ElfFile:
    """An x86_64 ELF64 little-endian file: executable, shared object, core or object file.

    Use :meth:`open` for a file on disk (mmap-backed) or :meth:`from_bytes`
    for data in memory.  ``path`` is the name used in messages.
    """

    path: str | None
    e_ident: bytes
    e_type: int
    e_machine: int
    e_version: int
    e_entry: int
    e_phoff: int
    e_flags: int
    e_shoff: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int

    def __init__(self, data: _Buffer, *, name: str | None) -> None:
        """Use :meth:`open` or :meth:`from_bytes`; this checks the header of ``data``."""
        self.path = name
        self._data: _Buffer = data
        self._size = len(data)
        self._closed = False
        self._segments: tuple[Segment, ...] | None = None
        self._loads: tuple[list[int], list[Segment]] | None = None
        self._sections: tuple[Section, ...] | None = None
        self._section_names: dict[str, Section] | None = None
        self._section_cache: dict[int, bytes] = {}
        self._symbol_tables: dict[str, SymbolTable | None] = {}
        self._build_id: object = _UNSET
        self._debugdata: object = _UNSET
        self._parse_header()

    # -- construction ---------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, display_path: str | None = None) -> ElfFile:
        """Map the file at ``path``; messages name it ``display_path`` if given.

        Raises FileNotFound when there is no such file, ElfError when it cannot
        be read or is not ELF, UnsupportedElf for ELF files that are not x86_64
        ELF64 little-endian.
        """
        name = display_path or path
        with open_regular_file(path, name) as fd:
            data = map_descriptor(fd, name)
        try:
            return cls(data, name=name)
        except BaseException:
            data.close()
            raise

    @classmethod
    def from_bytes(cls, data: bytes, *, name: str) -> ElfFile:
        """Read an ELF image held in memory; ``name`` is used in messages."""
        return cls(bytes(data), name=name)

    def close(self) -> None:
        """Unmap the file.  Later reads raise ElfError."""
        if self._closed:
            return
        self._closed = True
        data = self._data
        self._data = b""
        self._size = 0
        if isinstance(data, mmap.mmap):
            try:  # noqa: SIM105 (contextlib is not imported on the path of `redhand stack`)
                data.close()
            except BufferError:  # a view of it is still alive; it closes with the last one
                pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = {c.ET_EXEC: "EXEC", c.ET_DYN: "DYN", c.ET_CORE: "CORE", c.ET_REL: "REL"}.get(
            self.e_type, str(self.e_type)
        )
        return f"<ElfFile {self.path!r} {kind}{' closed' if self._closed else ''}>"

    @property
    def size(self) -> int:
        """The size of the file in bytes."""
        return self._size

    def crc32(self) -> int:
        """The CRC32 of the whole file, as .gnu_debuglink stores it."""
        if self._closed:
            raise self._error("cannot read: the file is closed")
        return zlib.crc32(self._data) & 0xFFFFFFFF

    # -- the one choke point --------------------------------------------------

    def _parsing(self, what: str) -> _Parsing:
        """Turn any low-level failure while reading ``what`` into an ElfError (``with``)."""
        return _Parsing(self, what)

    def _error(self, message: str) -> ElfError:
        return ElfError(self.path, message)

    def _check_range(self, offset: int, size: int, what: str) -> None:
        if self._closed:
            raise self._error(f"cannot read {what}: the file is closed")
        if offset < 0 or size < 0 or offset + size > self._size:
            raise self._error(
                f"{what} ({size} bytes at offset {offset:#x}) is past the end of the file "
                f"({self._size} bytes): the file is truncated or corrupt"
            )

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at file offset ``offset``, or ElfError."""
        self._check_range(offset, size, "read")
        return bytes(self._data[offset : offset + size])

    def _unpack(self, st: struct.Struct, offset: int, what: str) -> tuple[int, ...]:
        self._check_range(offset, st.size, what)
        result: tuple[int, ...] = st.unpack_from(self._data, offset)
        return result

    # -- header ---------------------------------------------------------------

    def _parse_header(self) -> None:
        data = self._data
        head = bytes(data[:64])
        if head[:4] != c.ELFMAG:
            raise ElfError(self.path, f"not an ELF file ({_describe_start(head)})")
        if len(head) <= c.EI_DATA:
            raise ElfError(self.path, f"truncated ELF header ({len(head)} bytes)")
        ei_class = head[c.EI_CLASS]
        ei_data = head[c.EI_DATA]
        supported = "redhand reads x86_64 ELF64 files"
        if ei_class == c.ELFCLASS32:
            raise UnsupportedElf(
                self.path, f"32-bit ELF (ELFCLASS32) is not supported: {supported}"
            )
        if ei_class != c.ELFCLASS64:
            raise ElfError(self.path, f"invalid ELF class {ei_class} in e_ident[EI_CLASS]")
        if ei_data == c.ELFDATA2MSB:
            raise UnsupportedElf(
                self.path, f"big-endian ELF (ELFDATA2MSB) is not supported: {supported}"
            )
        if ei_data != c.ELFDATA2LSB:
            raise ElfError(self.path, f"invalid data encoding {ei_data} in e_ident[EI_DATA]")
        if len(head) < _EHDR.size:
            raise ElfError(
                self.path, f"truncated ELF header ({len(head)} bytes, an ELF64 header has 64)"
            )
        (
            self.e_ident,
            self.e_type,
            self.e_machine,
            self.e_version,
            self.e_entry,
            self.e_phoff,
            self.e_shoff,
            self.e_flags,
            self.e_ehsize,
            self.e_phentsize,
            self.e_phnum,
            self.e_shentsize,
            self.e_shnum,
            self.e_shstrndx,
        ) = _EHDR.unpack(head)
        if self.e_machine != c.EM_X86_64:
            machine = c.MACHINE_NAMES.get(self.e_machine, "an unknown machine")
            raise UnsupportedElf(
                self.path,
                f"ELF file for {machine} (e_machine {self.e_machine}) is not supported: "
                f"{supported}",
            )

    @property
    def ei_osabi(self) -> int:
        return self.e_ident[c.EI_OSABI]

    def _section_zero(self) -> tuple[int, ...] | None:
        """Section header 0, whose fields hold counts too big for the ELF header."""
        if self.e_shoff == 0:
            return None
        with self._parsing("section header 0"):
            return self._unpack(_SHDR, self.e_shoff, "section header 0")

    def num_segments(self) -> int:
        """The number of program headers (PN_XNUM resolved through section 0)."""
        if self.e_phnum != c.PN_XNUM:
            return self.e_phnum
        zero = self._section_zero()
        if zero is None:
            raise self._error("e_phnum is PN_XNUM but there is no section header 0")
        return zero[7]  # sh_info

    def num_sections(self) -> int:
        """The number of section headers (0 in e_shnum resolved through section 0)."""
        if self.e_shoff == 0:
            return 0
        if self.e_shnum != 0:
            return self.e_shnum
        zero = self._section_zero()
        return zero[5] if zero is not None else 0  # sh_size

    def _shstrndx(self) -> int:
        if self.e_shstrndx != c.SHN_XINDEX:
            return self.e_shstrndx
        zero = self._section_zero()
        return zero[6] if zero is not None else 0  # sh_link

    # -- segments -------------------------------------------------------------

    def _load_segments(self) -> tuple[Segment, ...]:
        if self._segments is not None:
            return self._segments
        with self._parsing("program header table"):
            count = self.num_segments()
            if count == 0 or self.e_phoff == 0:
                self._segments = ()
                return self._segments
            if self.e_phentsize != _PHDR.size:
                raise self._error(
                    f"e_phentsize is {self.e_phentsize}, an ELF64 program header has "
                    f"{_PHDR.size} bytes"
                )
            if count > _MAX_SEGMENTS:
                raise self._error(f"absurd number of program headers ({count})")
            size = count * _PHDR.size
            self._check_range(self.e_phoff, size, f"program header table ({count} entries)")
            table = self._data[self.e_phoff : self.e_phoff + size]
            segments = []
            for index, (ptype, flags, offset, vaddr, paddr, filesz, memsz, align) in enumerate(
                _PHDR.iter_unpack(table)
            ):
                segments.append(
                    Segment(ptype, flags, offset, vaddr, paddr, filesz, memsz, align, index, self)
                )
            self._segments = tuple(segments)
        return self._segments

    def iter_segments(self) -> Iterator[Segment]:
        """The program headers, in file order."""
        return iter(self._load_segments())

    def get_segment(self, index: int) -> Segment:
        segments = self._load_segments()
        if not 0 <= index < len(segments):
            raise self._error(f"no program header {index} (the file has {len(segments)})")
        return segments[index]

    # -- sections -------------------------------------------------------------

    def _load_sections(self) -> tuple[Section, ...]:
        if self._sections is not None:
            return self._sections
        with self._parsing("section header table"):
            count = self.num_sections()
            if count == 0:
                self._sections = ()
                return self._sections
            if self.e_shentsize != _SHDR.size:
                raise self._error(
                    f"e_shentsize is {self.e_shentsize}, an ELF64 section header has "
                    f"{_SHDR.size} bytes"
                )
            if count > _MAX_SECTIONS:
                raise self._error(f"absurd number of section headers ({count})")
            size = count * _SHDR.size
            self._check_range(self.e_shoff, size, f"section header table ({count} entries)")
            table = self._data[self.e_shoff : self.e_shoff + size]
            headers = list(_SHDR.iter_unpack(table))
            strndx = self._shstrndx()
            names: bytes = b""
            if strndx != c.SHN_UNDEF:
                if strndx >= count:
                    raise self._error(
                        f"e_shstrndx {strndx} is out of range (the file has {count} sections)"
                    )
                str_hdr = headers[strndx]
                if str_hdr[1] != c.SHT_NOBITS:
                    self._check_range(str_hdr[4], str_hdr[5], "section name string table")
                    names = bytes(self._data[str_hdr[4] : str_hdr[4] + str_hdr[5]])
            sections = []
            for index, hdr in enumerate(headers):
                sh_name = hdr[0]
                if sh_name and sh_name >= len(names):
                    raise self._error(
                        f"name offset {sh_name:#x} of section {index} is past the end of the "
                        f"section name string table ({len(names)} bytes)"
                    )
                name = _cstring(names, sh_name) if names else ""
                _, stype, flags, addr, offset, size, link, info, align, entsize = hdr
                section = Section(
                    name, stype, flags, addr, offset, size, link, info, align, entsize, index, self
                )
                sections.append(section)
            self._sections = tuple(sections)
        return self._sections

    def iter_sections(self) -> Iterator[Section]:
        """The section headers, in index order (section 0 included)."""
        return iter(self._load_sections())

    def get_section(self, index: int) -> Section:
        sections = self._load_sections()
        if not 0 <= index < len(sections):
            raise self._error(f"no section {index} (the file has {len(sections)})")
        return sections[index]

    def get_section_by_name(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        if self._section_names is None:
            by_name: dict[str, Section] = {}
            for section in self._load_sections():
                by_name.setdefault(section.name, section)
            self._section_names = by_name
        return self._section_names.get(name)

    def section_data(self, section: Section) -> bytes:
        """The contents of ``section``, decompressed; see :meth:`Section.data`."""
        if section.sh_type == c.SHT_NOBITS:
            return b""
        what = f"section {section.name or section.index}"
        cached = self._section_cache.get(section.index)
        if cached is not None:
            return cached
        with self._parsing(what):
            raw = self.read_checked(section.sh_offset, section.sh_size, what)
            if section.sh_flags & c.SHF_COMPRESSED:
                data = self._decompress_section(raw, what)
                self._section_cache[section.index] = data
                return data
            if section.name.startswith(".zdebug") and raw[:4] == b"ZLIB":
                data = self._decompress_zdebug(raw, what)
                self._section_cache[section.index] = data
                return data
            return raw

    def read_checked(self, offset: int, size: int, what: str) -> bytes:
        """Like :meth:`read`, with ``what`` named in the error."""
        self._check_range(offset, size, what)
        return bytes(self._data[offset : offset + size])

    def _decompress_section(self, raw: bytes, what: str) -> bytes:
        if len(raw) < _CHDR.size:
            raise self._error(f"{what} is compressed but too short for its header")
        ch_type, _reserved, ch_size, _align = _CHDR.unpack_from(raw, 0)
        if ch_size > MAX_DECOMPRESSED:
            raise self._error(f"{what}: decompressed size {ch_size} is absurd")
        payload = raw[_CHDR.size :]
        if ch_type == c.ELFCOMPRESS_ZLIB:
            data = _inflate(payload, ch_size)
        elif ch_type == c.ELFCOMPRESS_ZSTD:
            data = self._unzstd(payload, ch_size, what)
        else:
            raise UnsupportedElf(self.path, f"{what} uses unknown compression type {ch_type}")
        if len(data) != ch_size:
            raise self._error(
                f"{what} decompressed to {len(data)} bytes, its header says {ch_size}"
            )
        return data

    def _decompress_zdebug(self, raw: bytes, what: str) -> bytes:
        if len(raw) < 12:
            raise self._error(f"{what} is too short for its ZLIB header")
        (size,) = struct.unpack_from(">Q", raw, 4)
        if size > MAX_DECOMPRESSED:
            raise self._error(f"{what}: decompressed size {size} is absurd")
        data = _inflate(raw[12:], size)
        if len(data) != size:
            raise self._error(f"{what} decompressed to {len(data)} bytes, its header says {size}")
        return data

    def _unzstd(self, payload: bytes, size: int, what: str) -> bytes:
        try:
            import zstandard
        except ImportError:
            raise UnsupportedElf(
                self.path,
                f"{what} is zstd-compressed",
                hint="install the zstandard module (pip install zstandard)",
            ) from None
        try:
            out: bytes = zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=max(size, 1)
            )
        except zstandard.ZstdError as exc:
            raise self._error(f"corrupt {what}: {exc}") from None
        return out

    # -- notes ----------------------------------------------------------------

    def iter_notes(self) -> Iterator[Note]:
        """Every note, from the PT_NOTE segments; from SHT_NOTE sections if there are
        no program headers (object files, some debug files).

        A note whose sizes run past its segment or the file raises ElfError
        after the notes before it were given, so a reader of a damaged core can
        keep what came first.
        """
        segments = self._load_segments()
        if segments:
            for seg in segments:
                if seg.p_type == c.PT_NOTE:
                    align = 8 if seg.p_align == 8 else 4
                    yield from self._parse_notes(seg.p_offset, seg.p_filesz, align, "PT_NOTE")
            return
        for sec in self._load_sections():
            if sec.sh_type == c.SHT_NOTE:
                yield from self._iter_section_notes(sec)

    def _iter_section_notes(self, sec: Section) -> Iterator[Note]:
        align = 8 if sec.sh_addralign == 8 else 4
        yield from self._parse_notes(sec.sh_offset, sec.sh_size, align, sec.name or "SHT_NOTE")

    def _parse_notes(self, start: int, size: int, align: int, where: str) -> Iterator[Note]:
        with self._parsing(f"notes of {where}"):
            if start < 0 or start > self._size:
                raise self._error(f"{where} at offset {start:#x} is past the end of the file")
            end = start + size
            mask = align - 1
            offset = start
            data = self._data
            while offset + _NHDR.size <= end:
                self._check_range(offset, _NHDR.size, f"note header in {where}")
                namesz, descsz, ntype = _NHDR.unpack_from(data, offset)
                name_at = offset + _NHDR.size
                desc_at = (name_at + namesz + mask) & ~mask
                next_at = (desc_at + descsz + mask) & ~mask
                if desc_at + descsz > end:
                    raise self._error(
                        f"note at offset {offset:#x} in {where} claims namesz {namesz} and "
                        f"descsz {descsz}, past the end of its {where} ({size} bytes)"
                    )
                self._check_range(name_at, desc_at + descsz - name_at, f"note in {where}")
                raw_name = bytes(data[name_at : name_at + namesz])
                nul = raw_name.find(b"\0")
                name = (raw_name if nul < 0 else raw_name[:nul]).decode("ascii", "replace")
                yield Note(name, ntype, bytes(data[desc_at : desc_at + descsz]), offset)
                offset = next_at

    @property
    def build_id(self) -> str | None:
        """The GNU build-id as lowercase hex, or None if the file has none."""
        if self._build_id is _UNSET:
            self._build_id = self._find_build_id()
        return self._build_id  # type: ignore[return-value]

    def _find_build_id(self) -> str | None:
        for note in self.iter_notes():
            if note.type == c.NT_GNU_BUILD_ID and note.name == "GNU" and note.desc:
                return note.desc.hex()
        # Program headers that describe no build-id note (some debug files and
        # odd linkers): look at the section named for it.
        if self._load_segments():
            sec = self.get_section_by_name(".note.gnu.build-id")
            if sec is not None and sec.sh_type == c.SHT_NOTE:
                for note in self._iter_section_notes(sec):
                    if note.type == c.NT_GNU_BUILD_ID and note.name == "GNU" and note.desc:
                        return note.desc.hex()
        return None

    @property
    def debuglink(self) -> tuple[str, int] | None:
        """``(file name, crc32)`` from .gnu_debuglink, or None."""
        sec = self.get_section_by_name(".gnu_debuglink")
        if sec is None or sec.sh_type == c.SHT_NOBITS:
            return None
        with self._parsing(".gnu_debuglink"):
            data = sec.data()
            nul = data.find(b"\0")
            if nul <= 0:
                raise self._error(".gnu_debuglink holds no file name")
            crc_at = (nul + 1 + 3) & ~3
            (crc,) = _U32.unpack_from(data, crc_at)
            return data[:nul].decode("utf-8", "surrogateescape"), crc

    def gnu_debugdata(self) -> ElfFile | None:
        """The ELF file inside .gnu_debugdata (xz-compressed "MiniDebugInfo"), or None."""
        if self._debugdata is _UNSET:
            self._debugdata = self._load_debugdata()
        return self._debugdata  # type: ignore[return-value]

    def _load_debugdata(self) -> ElfFile | None:
        sec = self.get_section_by_name(".gnu_debugdata")
        if sec is None or sec.sh_type == c.SHT_NOBITS:
            return None
        import lzma  # only here: MiniDebugInfo is rare, and lzma costs a few ms to import

        with self._parsing(".gnu_debugdata"):
            packed = sec.data()
            decompressor = lzma.LZMADecompressor()
            data = decompressor.decompress(packed, max_length=MAX_DECOMPRESSED)
            if not decompressor.eof:
                raise self._error(".gnu_debugdata is truncated or too large")
        inner_name = f"{self.path or '<memory>'}[.gnu_debugdata]"
        return ElfFile.from_bytes(data, name=inner_name)

    # -- symbols --------------------------------------------------------------

    def get_symbol_table(self, section: str = ".symtab") -> SymbolTable | None:
        """The symbol table in the section called ``section``, or None if there is none."""
        if section in self._symbol_tables:
            return self._symbol_tables[section]
        sec = self.get_section_by_name(section)
        table = None if sec is None else self.symbol_table_of(sec)
        self._symbol_tables[section] = table
        return table

    def symbol_table_of(self, sec: Section) -> SymbolTable | None:
        """The symbol table in ``sec`` (None when it has no contents, as in stripped copies)."""
        what = f"symbol table {sec.name or sec.index}"
        with self._parsing(what):
            if sec.sh_type == c.SHT_NOBITS or sec.sh_size == 0:
                return None
            if sec.sh_type not in (c.SHT_SYMTAB, c.SHT_DYNSYM):
                raise self._error(f"{sec.name} is not a symbol table (type {sec.sh_type})")
            if sec.sh_entsize not in (0, _SYM.size):
                raise self._error(f"{what} has entries of {sec.sh_entsize} bytes, not 24")
            sections = self._load_sections()
            if not 0 < sec.sh_link < len(sections):
                raise self._error(f"{what} links to string table {sec.sh_link}, out of range")
            strsec = sections[sec.sh_link]
            strtab = self.section_data(strsec)
            entries = self.section_data(sec)
            usable = len(entries) - len(entries) % _SYM.size
            return SymbolTable(self, sec, entries[:usable], strtab)

    def iter_symbols(self, section: str = ".symtab") -> Iterator[ElfSymbol]:
        """The symbols of ``section`` (".symtab" or ".dynsym"); none if it is absent."""
        table = self.get_symbol_table(section)
        if table is None:
            return
        with self._parsing(f"symbol table {section}"):
            yield from table

    # -- dynamic section and relocations --------------------------------------

    def iter_dynamic(self) -> Iterator[tuple[int, int]]:
        """``(d_tag, d_val)`` pairs from PT_DYNAMIC (else .dynamic), up to DT_NULL."""
        start = size = None
        for seg in self._load_segments():
            if seg.p_type == c.PT_DYNAMIC:
                start, size = seg.p_offset, seg.p_filesz
                break
        if start is None:
            sec = self.get_section_by_name(".dynamic")
            if sec is None or sec.sh_type == c.SHT_NOBITS:
                return
            start, size = sec.sh_offset, sec.sh_size
        assert size is not None
        with self._parsing("dynamic section"):
            raw = self.read_checked(start, size - size % _DYN.size, "dynamic section")
            for tag, val in _DYN.iter_unpack(raw):
                if tag == c.DT_NULL:
                    return
                yield tag, val

    def iter_relocations(self, section: Section | str) -> Iterator[Relocation]:
        """The entries of a SHT_RELA section (by object or name); none if it is absent."""
        sec = self.get_section_by_name(section) if isinstance(section, str) else section
        if sec is None or sec.sh_type == c.SHT_NOBITS:
            return
        what = f"relocation section {sec.name or sec.index}"
        with self._parsing(what):
            if sec.sh_type != c.SHT_RELA:
                raise self._error(f"{what} is not SHT_RELA (type {sec.sh_type})")
            raw = sec.data()
            raw = raw[: len(raw) - len(raw) % _RELA.size]
            for r_offset, r_info, r_addend in _RELA.iter_unpack(raw):
                yield Relocation(r_offset, r_info & 0xFFFFFFFF, r_info >> 32, r_addend)

    # -- addresses ------------------------------------------------------------

    def _load_index(self) -> tuple[list[int], list[Segment]]:
        if self._loads is None:
            loads = sorted(
                (s for s in self._load_segments() if s.p_type == c.PT_LOAD),
                key=lambda s: s.p_vaddr,
            )
            self._loads = ([s.p_vaddr for s in loads], loads)
        return self._loads

    def _load_at(self, vaddr: int) -> Segment | None:
        starts, loads = self._load_index()
        index = bisect_right(starts, vaddr) - 1
        # PT_LOADs never overlap in a valid file; a few steps back copes with bad ones.
        for candidate in range(index, max(index - 8, -1), -1):
            seg = loads[candidate]
            if seg.p_vaddr <= vaddr < seg.p_vaddr + seg.p_memsz:
                return seg
        return None

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """The file offset of link-time address ``vaddr``, or None if no file bytes back it."""
        seg = self._load_at(vaddr)
        if seg is None or vaddr - seg.p_vaddr >= seg.p_filesz:
            return None
        return seg.p_offset + (vaddr - seg.p_vaddr)

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at link-time address ``vaddr`` through the PT_LOAD segments.

        Bytes past a segment's p_filesz (up to p_memsz, like .bss) read as zeros.
        ElfError if part of the range is in no PT_LOAD segment.
        """
        if size < 0:
            raise self._error(f"negative read size {size}")
        parts: list[bytes] = []
        address = vaddr
        remaining = size
        while remaining > 0:
            seg = self._load_at(address)
            if seg is None:
                raise self._error(
                    f"address {address:#x} is not in any PT_LOAD segment "
                    f"(reading {size} bytes at {vaddr:#x})"
                )
            rel = address - seg.p_vaddr
            chunk = min(remaining, seg.p_memsz - rel)
            in_file = max(0, min(chunk, seg.p_filesz - rel))
            if in_file:
                parts.append(self.read_checked(seg.p_offset + rel, in_file, f"segment {seg.index}"))
            if chunk > in_file:
                parts.append(bytes(chunk - in_file))
            address += chunk
            remaining -= chunk
        return b"".join(parts)


def _inflate(payload: bytes, size: int) -> bytes:
    inflater = zlib.decompressobj()
    data = inflater.decompress(payload, size + 1)
    return data


__all__ = [
    "MAX_DECOMPRESSED",
    "ElfFile",
    "ElfSymbol",
    "Note",
    "Relocation",
    "Section",
    "Segment",
    "SymbolColumns",
    "SymbolTable",
]
