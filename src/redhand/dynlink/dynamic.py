"""What an ELF file says about its dynamic linking, read as the dynamic linker reads it.

Everything comes from the dynamic section (``PT_DYNAMIC``) and the addresses
it gives, never from section headers, so a stripped file, one without
section headers, or an image read from a process's memory is read alike:

- ``DT_NEEDED``, ``DT_SONAME``, ``DT_RPATH``/``DT_RUNPATH``, the interpreter
  (``PT_INTERP``), the binding mode (``DT_BIND_NOW``, ``DF_BIND_NOW``,
  ``DF_1_NOW``) and RELRO (``PT_GNU_RELRO``: full with immediate binding);
- the dynamic symbols (``DT_SYMTAB``, counted through ``DT_GNU_HASH`` or
  ``DT_HASH``) with their versions (``DT_VERSYM``, ``DT_VERDEF``,
  ``DT_VERNEED``): what the file exports and what it needs;
- the relocations that name a symbol (``DT_RELA`` and ``DT_JMPREL``), and
  ``R_X86_64_IRELATIVE``: the imports, by kind.

The PLT stubs come from :mod:`redhand.elf.plt` (they need section headers).
"""

from __future__ import annotations

import marshal
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

from redhand.elf import ElfFile
from redhand.elf import constants as c
from redhand.errors import ElfError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_VERDEF = struct.Struct("<HHHHIII")
_VERDAUX = struct.Struct("<II")
_VERNEED = struct.Struct("<HHIII")
_VERNAUX = struct.Struct("<IHHII")
_GNU_HASH_HEADER = struct.Struct("<IIII")

DF_SYMBOLIC = 0x2
DF_1_NOW = 0x1
DF_1_NODEFLIB = 0x800
VERSYM_HIDDEN = 0x8000
_MAX_VERSIONS = 1 << 16
_MAX_SYMBOLS = 1 << 24


class Kind(Enum):
    """How a relocation binds: the names ``readelf -r`` prints, without the ``R_X86_64_``."""

    JUMP_SLOT = c.R_X86_64_JUMP_SLOT
    GLOB_DAT = c.R_X86_64_GLOB_DAT
    COPY = c.R_X86_64_COPY
    TPOFF64 = c.R_X86_64_TPOFF64
    DTPMOD64 = c.R_X86_64_DTPMOD64
    DTPOFF64 = c.R_X86_64_DTPOFF64
    IRELATIVE = c.R_X86_64_IRELATIVE
    ABS64 = c.R_X86_64_64

    @property
    def label(self) -> str:
        return "64" if self is Kind.ABS64 else self.name

    @property
    def slot(self) -> bool:
        """A slot that holds an address: a GOT slot the code jumps or loads through, or a
        pointer in data (R_X86_64_64: a function pointer, a vtable's entry; read on demand)."""
        return self in (Kind.JUMP_SLOT, Kind.GLOB_DAT, Kind.IRELATIVE, Kind.ABS64)


class DynSymbol(NamedTuple):
    """One dynamic symbol.  ``version`` is the version it defines (a definition) or needs
    (a reference, with ``version_file``, the file that should provide it); ``hidden``: a
    non-default version (``name@VERSION``), which an unversioned reference never binds to."""

    number: int  # its index in the dynamic symbol table
    name: str
    value: int
    size: int
    type: int
    bind: int
    visibility: int
    shndx: int
    version: str | None = None
    version_file: str | None = None
    hidden: bool = False

    @property
    def defined(self) -> bool:
        return self.shndx != c.SHN_UNDEF

    @property
    def versioned_name(self) -> str:
        if self.version is None:
            return self.name
        return f"{self.name}{'@' if self.hidden or not self.defined else '@@'}{self.version}"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "version_file": self.version_file,
            "hidden": self.hidden,
            "value": self.value,
            "size": self.size,
            "type": _TYPE_NAMES.get(self.type, str(self.type)),
            "bind": _BIND_NAMES.get(self.bind, str(self.bind)),
            "visibility": _VISIBILITY_NAMES[self.visibility & 3],
        }


_TYPE_NAMES = {
    c.STT_NOTYPE: "NOTYPE",
    c.STT_OBJECT: "OBJECT",
    c.STT_FUNC: "FUNC",
    c.STT_COMMON: "COMMON",
    c.STT_TLS: "TLS",
    c.STT_GNU_IFUNC: "IFUNC",
}
_BIND_NAMES = {c.STB_LOCAL: "LOCAL", c.STB_GLOBAL: "GLOBAL", c.STB_WEAK: "WEAK", 10: "UNIQUE"}
_VISIBILITY_NAMES = ("DEFAULT", "INTERNAL", "HIDDEN", "PROTECTED")


class Import(NamedTuple):
    """One relocation that binds: its slot's link-time address (``offset``), its kind,
    the symbol (None for IRELATIVE, whose ``addend`` is the IFUNC resolver), and whether
    it is bound lazily (in ``DT_JMPREL`` of a file without immediate binding)."""

    offset: int
    kind: Kind
    symbol: DynSymbol | None
    addend: int
    lazy: bool

    @property
    def name(self) -> str:
        return self.symbol.name if self.symbol is not None else f"*{self.addend:#x}"

    def to_json(self) -> dict[str, object]:
        return {
            "offset": self.offset,
            "kind": self.kind.label,
            "symbol": self.symbol.name if self.symbol is not None else None,
            "version": self.symbol.version if self.symbol is not None else None,
            "weak": self.symbol is not None and self.symbol.bind == c.STB_WEAK,
            "addend": self.addend,
            "lazy": self.lazy,
        }


@dataclass
class Dynamic:
    """The dynamic linking of one ELF file (see the module's documentation)."""

    path: str
    type: str  # "executable", "PIE executable", "shared library", "static executable", ...
    interpreter: str | None = None
    soname: str | None = None
    needed: list[str] = field(default_factory=list)
    rpath: str | None = None
    runpath: str | None = None
    bind_now: bool = False
    symbolic: bool = False
    relro: str = "none"  # "none", "partial" or "full"
    nodeflib: bool = False  # DF_1_NODEFLIB: its needs are not looked for in the cache or /lib
    warnings: list[str] = field(default_factory=list)
    # Read from the file, the symbols and imports are lists; from the cache, columns and rows
    # that become DynSymbol and Import objects only as they are asked for.
    _symbols: list[DynSymbol] | None = field(default=None, repr=False)
    _columns: tuple[Sequence[Any], ...] | None = field(default=None, repr=False)
    _made: dict[int, DynSymbol] = field(default_factory=dict, repr=False)
    _imports: list[Import] | None = field(default=None, repr=False)
    _import_rows: Sequence[tuple[int, int, int, int, bool]] | None = field(default=None, repr=False)
    _export_numbers: dict[str, tuple[int, ...]] | None = field(default=None, repr=False)
    _canonical_numbers: dict[str, tuple[int, ...]] | None = field(default=None, repr=False)

    @property
    def symbols(self) -> list[DynSymbol]:
        """Every dynamic symbol, by number."""
        if self._symbols is None:
            columns = self._columns or ((),)
            self._symbols = [
                self._made.get(number) or DynSymbol(number, *row)
                for number, row in enumerate(zip(*columns, strict=True))
            ]
        return self._symbols

    def symbol(self, number: int) -> DynSymbol:
        """The dynamic symbol ``number`` (made alone when the rest are not needed)."""
        if self._symbols is not None:
            return self._symbols[number]
        made = self._made.get(number)
        if made is None:
            assert self._columns is not None
            made = self._made[number] = DynSymbol(number, *(c[number] for c in self._columns))
        return made

    @property
    def imports(self) -> list[Import]:
        """Every relocation that binds, in the file's order."""
        if self._imports is None:
            self._imports = self._make_imports(self._import_rows or (), None)
        return self._imports

    def slot_imports(self, data: bool) -> list[Import]:
        """The imports whose slots a process holds: its GOT (and, with ``data``, pointers
        in data)."""
        kinds = {k.value for k in Kind if k.slot and (data or k is not Kind.ABS64)}
        if self._imports is not None:
            return [entry for entry in self._imports if entry.kind.value in kinds]
        return self._make_imports(self._import_rows or (), kinds)

    def _make_imports(
        self, rows: Sequence[tuple[int, int, int, int, bool]], kinds: set[int] | None
    ) -> list[Import]:
        by_value = {kind.value: kind for kind in Kind}
        symbol = self.symbol
        return [
            Import(offset, by_value[r_type], symbol(number) if number >= 0 else None, addend, lazy)
            for offset, r_type, number, addend, lazy in rows
            if kinds is None or r_type in kinds
        ]

    @property
    def export_numbers(self) -> dict[str, tuple[int, ...]]:
        """Defined global, weak and unique symbols (what lookups can bind to): name -> their
        numbers in :attr:`symbols`."""
        if self._export_numbers is None:
            found: dict[str, list[int]] = {}
            for symbol in self.symbols:
                if symbol.defined and symbol.bind != c.STB_LOCAL and symbol.name:
                    if symbol.visibility & 3 in (c.STV_HIDDEN, c.STV_INTERNAL):
                        continue
                    found.setdefault(symbol.name, []).append(symbol.number)
            self._export_numbers = {name: tuple(numbers) for name, numbers in found.items()}
        return self._export_numbers

    @property
    def canonical_numbers(self) -> dict[str, tuple[int, ...]]:
        """Undefined functions with a value: a non-PIE executable's PLT entries that stand
        for the functions' addresses (what data references to them bind to)."""
        if self._canonical_numbers is None:
            found: dict[str, list[int]] = {}
            for symbol in self.symbols:
                if not symbol.defined and symbol.value and symbol.name:
                    found.setdefault(symbol.name, []).append(symbol.number)
            self._canonical_numbers = {name: tuple(numbers) for name, numbers in found.items()}
        return self._canonical_numbers

    def exported(self, name: str) -> list[DynSymbol]:
        """The definitions of ``name`` that lookups can bind to."""
        return [self.symbol(number) for number in self.export_numbers.get(name, ())]

    def canonical(self, name: str) -> list[DynSymbol]:
        return [self.symbol(number) for number in self.canonical_numbers.get(name, ())]

    @property
    def exports(self) -> dict[str, list[DynSymbol]]:
        """Every export by name (for reports; lookups use :meth:`exported`)."""
        symbols = self.symbols
        return {
            name: [symbols[number] for number in numbers]
            for name, numbers in self.export_numbers.items()
        }

    def version_use(self) -> tuple[set[str], set[tuple[str, str]]]:
        """The versions the file's definitions carry, and the (file, version) pairs its
        references need; read from the columns, without making every symbol."""
        rows: Iterable[tuple[Any, Any, Any]]
        if self._symbols is None and self._columns is not None:
            shndx, versions, files = self._columns[6], self._columns[7], self._columns[8]
            rows = zip(shndx, versions, files, strict=True)
        else:
            rows = ((s.shndx, s.version, s.version_file) for s in self.symbols)
        defined: set[str] = set()
        needed: set[tuple[str, str]] = set()
        for section, version, file in rows:
            if version is None:
                continue
            if section != c.SHN_UNDEF:
                defined.add(version)
            elif file is not None:
                needed.add((file, version))
        return defined, needed

    @property
    def versions_defined(self) -> bool:
        return any(s.version is not None for s in self.symbols if s.defined)


def _cstring(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    if offset >= len(table):
        return ""
    return table[offset : end if end >= 0 else len(table)].decode("utf-8", "replace")


def read_dynamic(elf: ElfFile, path: str | None = None) -> Dynamic:
    """The dynamic linking of ``elf``.  What cannot be read is said in ``warnings``;
    ElfError only when the file is not a readable ELF file at all."""
    segments = list(elf.iter_segments())
    interp = next((s for s in segments if s.p_type == c.PT_INTERP), None)
    has_dynamic = any(s.p_type == c.PT_DYNAMIC for s in segments)
    tags: list[tuple[int, int]] = []
    result = Dynamic(path=path or elf.path or "?", type="")
    try:
        tags = list(elf.iter_dynamic())
    except ElfError as error:
        result.warnings.append(f"the dynamic section cannot be read: {error.message}")
    values: dict[int, int] = {}
    for tag, value in tags:
        values.setdefault(tag, value)
    flags, flags_1 = values.get(c.DT_FLAGS, 0), values.get(c.DT_FLAGS_1, 0)
    if interp is not None:
        result.interpreter = interp.data().split(b"\0", 1)[0].decode("utf-8", "replace")
    if elf.e_type == c.ET_EXEC:
        result.type = "executable" if has_dynamic else "static executable"
    elif interp is not None and c.DT_SONAME in values and not flags_1 & c.DF_1_PIE:
        result.type = "shared library (also runnable)"  # libc.so.6, ld.so
    elif interp is not None or flags_1 & c.DF_1_PIE:
        result.type = "PIE executable" if interp is not None else "static-pie executable"
    else:
        result.type = "shared library" if has_dynamic else "position-independent object"
    result.bind_now = (
        c.DT_BIND_NOW in values or bool(flags & c.DF_BIND_NOW) or bool(flags_1 & DF_1_NOW)
    )
    result.symbolic = c.DT_SYMBOLIC in values or bool(flags & DF_SYMBOLIC)
    result.nodeflib = bool(flags_1 & DF_1_NODEFLIB)
    if any(s.p_type == c.PT_GNU_RELRO for s in segments):
        result.relro = "full" if result.bind_now else "partial"
    if not tags:
        return result
    strtab = _read(elf, values.get(c.DT_STRTAB), values.get(c.DT_STRSZ, 0), "DT_STRTAB", result)
    for tag, value in tags:
        if tag == c.DT_NEEDED:
            result.needed.append(_cstring(strtab, value))
    if c.DT_SONAME in values:
        result.soname = _cstring(strtab, values[c.DT_SONAME])
    if c.DT_RPATH in values:
        result.rpath = _cstring(strtab, values[c.DT_RPATH])
    if c.DT_RUNPATH in values:
        result.runpath = _cstring(strtab, values[c.DT_RUNPATH])
    result._symbols = _read_symbols(elf, values, strtab, result)
    result._imports = _read_imports(elf, values, result)
    return result


def _read(elf: ElfFile, vaddr: int | None, size: int, what: str, result: Dynamic) -> bytes:
    if not vaddr or size <= 0:
        return b""
    try:
        return elf.read_vaddr(vaddr, size)
    except ElfError as error:
        result.warnings.append(f"{what} at {vaddr:#x} cannot be read: {error.message}")
        return b""


def _symbol_count(elf: ElfFile, values: dict[int, int], result: Dynamic) -> int:
    """How many dynamic symbols there are: DT_HASH's nchain, else the GNU hash chains' end,
    else the .dynsym section's size."""
    try:
        if c.DT_HASH in values:
            return int(struct.unpack("<II", elf.read_vaddr(values[c.DT_HASH], 8))[1])
        if c.DT_GNU_HASH in values:
            return _gnu_hash_count(elf, values[c.DT_GNU_HASH])
    except (ElfError, struct.error) as error:
        result.warnings.append(f"the symbol hash table cannot be read: {error}")
    section = elf.get_section_by_name(".dynsym") if elf.num_sections() else None
    return section.sh_size // _SYM.size if section is not None else 0


def _gnu_hash_count(elf: ElfFile, vaddr: int) -> int:
    nbuckets, symoffset, bloom_size, _shift = _GNU_HASH_HEADER.unpack(elf.read_vaddr(vaddr, 16))
    if nbuckets > _MAX_SYMBOLS or bloom_size > _MAX_SYMBOLS:
        raise ElfError(elf.path, f"a GNU hash table of {nbuckets} buckets")
    buckets_at = vaddr + 16 + 8 * bloom_size
    buckets: tuple[int, ...] = struct.unpack(
        f"<{nbuckets}I", elf.read_vaddr(buckets_at, 4 * nbuckets)
    )
    last = max(buckets, default=0)
    if last < symoffset:
        return int(symoffset)
    chains_at = buckets_at + 4 * nbuckets
    index = last
    while index < _MAX_SYMBOLS:
        (word,) = struct.unpack("<I", elf.read_vaddr(chains_at + 4 * (index - symoffset), 4))
        if word & 1:
            return index + 1
        index += 1
    raise ElfError(elf.path, "a GNU hash chain that does not end")


def _read_symbols(
    elf: ElfFile, values: dict[int, int], strtab: bytes, result: Dynamic
) -> list[DynSymbol]:
    count = _symbol_count(elf, values, result)
    if not count or c.DT_SYMTAB not in values:
        return []
    raw = _read(elf, values[c.DT_SYMTAB], count * _SYM.size, "DT_SYMTAB", result)
    count = len(raw) // _SYM.size
    versym = _read(elf, values.get(c.DT_VERSYM), 2 * count, "DT_VERSYM", result)
    indexes = struct.unpack(f"<{len(versym) // 2}H", versym) if versym else ()
    defined = _verdefs(elf, values, strtab, result)
    needed = _verneeds(elf, values, strtab, result)
    symbols = []
    name_of = _names(strtab)
    versions = len(indexes)
    for index, (name, info, other, shndx, value, size) in enumerate(_SYM.iter_unpack(raw)):
        version = version_file = None
        hidden = False
        if index < versions and indexes[index] > 1:
            number = indexes[index] & 0x7FFF
            hidden = bool(indexes[index] & VERSYM_HIDDEN)
            if shndx != c.SHN_UNDEF and number in defined:
                version = defined[number]
            elif number in needed:
                version, version_file = needed[number]
            elif number in defined:
                version = defined[number]
        text = name_of.get(name)
        if text is None:
            text = _cstring(strtab, name)  # a suffix of another string
        symbols.append(
            DynSymbol(
                index,
                text,
                value,
                size,
                info & 0xF,
                info >> 4,
                other & 3,
                shndx,
                version,
                version_file,
                hidden,
            )
        )
    return symbols


def _names(strtab: bytes) -> dict[int, str]:
    """Offset -> the string that starts there, for every string of a string table."""
    names: dict[int, str] = {}
    at = 0
    for piece in strtab.decode("utf-8", "surrogateescape").split("\0"):
        names[at] = piece
        at += (
            len(piece.encode("utf-8", "surrogateescape")) + 1
            if not piece.isascii()
            else len(piece) + 1
        )
    return names


def _verdefs(
    elf: ElfFile, values: dict[int, int], strtab: bytes, result: Dynamic
) -> dict[int, str]:
    """Version index -> the version a file defines (the base entry, the file's own name,
    included)."""
    found: dict[int, str] = {}
    at, count = values.get(c.DT_VERDEF), values.get(c.DT_VERDEFNUM, 0)
    try:
        for _ in range(min(count, _MAX_VERSIONS)):
            if not at:
                break
            _v, _flags, ndx, cnt, _hash, aux, following = _VERDEF.unpack(elf.read_vaddr(at, 20))
            if cnt:
                name, _next = _VERDAUX.unpack(elf.read_vaddr(at + aux, 8))
                found[ndx] = _cstring(strtab, name)
            if not following:
                break
            at += following
    except ElfError as error:
        result.warnings.append(f"DT_VERDEF cannot be read: {error.message}")
    return found


def _verneeds(
    elf: ElfFile, values: dict[int, int], strtab: bytes, result: Dynamic
) -> dict[int, tuple[str, str]]:
    """Version index -> (version, file) that a file needs."""
    found: dict[int, tuple[str, str]] = {}
    at, count = values.get(c.DT_VERNEED), values.get(c.DT_VERNEEDNUM, 0)
    try:
        for _ in range(min(count, _MAX_VERSIONS)):
            if not at:
                break
            _v, cnt, file, aux, following = _VERNEED.unpack(elf.read_vaddr(at, 16))
            filename = _cstring(strtab, file)
            entry = at + aux
            for _ in range(min(cnt, _MAX_VERSIONS)):
                _hash, _flags, other, name, next_aux = _VERNAUX.unpack(elf.read_vaddr(entry, 16))
                found[other] = (_cstring(strtab, name), filename)
                if not next_aux:
                    break
                entry += next_aux
            if not following:
                break
            at += following
    except ElfError as error:
        result.warnings.append(f"DT_VERNEED cannot be read: {error.message}")
    return found


def _read_imports(elf: ElfFile, values: dict[int, int], result: Dynamic) -> list[Import]:
    imports: list[Import] = []
    tables = [
        (values.get(c.DT_RELA), values.get(c.DT_RELASZ, 0), "DT_RELA", False),
        (values.get(c.DT_JMPREL), values.get(c.DT_PLTRELSZ, 0), "DT_JMPREL", True),
    ]
    if values.get(c.DT_PLTREL, c.DT_RELA) != c.DT_RELA:
        result.warnings.append("DT_PLTREL is not DT_RELA: PLT relocations are not read")
        tables.pop()
    kinds = {kind.value: kind for kind in Kind}
    symbols = result.symbols
    count = len(symbols)
    plt_start = values.get(c.DT_JMPREL, 0)
    plt_end = plt_start + values.get(c.DT_PLTRELSZ, 0)
    relative = c.R_X86_64_RELATIVE
    for at, size, what, plt in tables:
        size -= size % _RELA.size
        if not plt and at is not None and at < plt_end and plt_start < at + size:
            # An old layout's DT_RELA that covers DT_JMPREL: those are read as PLT below.
            size = max(plt_start - at, 0) // _RELA.size * _RELA.size
        raw = _read(elf, at, size, what, result)
        lazy_kind = Kind.JUMP_SLOT if plt and not result.bind_now else None
        for offset, info, addend in _RELA.iter_unpack(raw):
            r_type = info & 0xFFFFFFFF
            if r_type == relative:
                continue
            kind = kinds.get(r_type)
            r_sym = info >> 32
            if kind is None or (r_sym == 0 and kind is not Kind.IRELATIVE):
                continue
            symbol = symbols[r_sym] if 0 < r_sym < count else None
            imports.append(Import(offset, kind, symbol, addend, kind is lazy_kind))
    return imports


# -- the persistent cache ---------------------------------------------------------------

_CACHE_KIND = "dynamic"
_PAYLOAD_VERSION = 4
_KIND_VALUES = frozenset(kind.value for kind in Kind)


def cached_dynamic(elf: ElfFile, path: str) -> Dynamic:
    """:func:`read_dynamic`, kept in redhand's cache by the file's build-id: a process maps
    the same libraries run after run, and parsing their symbols is most of the time."""
    from redhand import cache

    build_id = elf.build_id
    if build_id is None:
        return read_dynamic(elf, path)
    name = f"{build_id}-{elf.size}"
    found = _load(cache.read(_CACHE_KIND, name), path)
    if found is not None:
        return found
    result = read_dynamic(elf, path)
    try:
        payload = marshal.dumps((_PAYLOAD_VERSION, _to_rows(result)))  # type: ignore[arg-type]
    except (OverflowError, ValueError):
        return result
    cache.write(_CACHE_KIND, name, payload)
    return result


def _to_rows(result: Dynamic) -> tuple[object, ...]:
    return (
        result.type,
        result.interpreter,
        result.soname,
        tuple(result.needed),
        result.rpath,
        result.runpath,
        result.bind_now,
        result.symbolic,
        result.relro,
        tuple(list(column) for column in zip(*result.symbols, strict=True))[1:],
        tuple(
            (
                entry.offset,
                entry.kind.value,
                entry.symbol.number if entry.symbol is not None else -1,
                entry.addend,
                entry.lazy,
            )
            for entry in result.imports
        ),
        tuple(result.warnings),
        result.export_numbers,
        result.canonical_numbers,
        result.nodeflib,
    )


def _load(payload: bytes | None, path: str) -> Dynamic | None:
    if payload is None:
        return None
    try:
        version, rows = marshal.loads(payload)
        if version != _PAYLOAD_VERSION:
            return None
        (file_type, interpreter, soname, needed, rpath, runpath, bind_now, symbolic, relro,
         symbol_columns, import_rows, warnings, export_numbers,
         canonical_numbers, nodeflib) = rows  # fmt: skip
        if len(symbol_columns) != len(DynSymbol._fields) - 1:
            return None
        if any(r_type not in _KIND_VALUES for _o, r_type, _n, _a, _l in import_rows):
            return None
    except (ValueError, EOFError, TypeError):
        return None
    return Dynamic(
        path=path,
        type=file_type,
        interpreter=interpreter,
        soname=soname,
        needed=list(needed),
        rpath=rpath,
        runpath=runpath,
        bind_now=bind_now,
        symbolic=symbolic,
        relro=relro,
        nodeflib=nodeflib,
        warnings=list(warnings),
        _columns=symbol_columns,
        _import_rows=import_rows,
        _export_numbers=export_numbers,
        _canonical_numbers=canonical_numbers,
    )
