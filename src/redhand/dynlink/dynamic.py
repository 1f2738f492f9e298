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

import struct
from dataclasses import dataclass, field
from enum import Enum

from redhand.elf import ElfFile
from redhand.elf import constants as c
from redhand.errors import ElfError

_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_VERDEF = struct.Struct("<HHHHIII")
_VERDAUX = struct.Struct("<II")
_VERNEED = struct.Struct("<HHIII")
_VERNAUX = struct.Struct("<IHHII")
_GNU_HASH_HEADER = struct.Struct("<IIII")

DF_SYMBOLIC = 0x2
DF_1_NOW = 0x1
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
        pointer in data (R_X86_64_64: a function pointer, a vtable's entry)."""
        return self in (Kind.JUMP_SLOT, Kind.GLOB_DAT, Kind.IRELATIVE, Kind.ABS64)


@dataclass(frozen=True)
class DynSymbol:
    """One dynamic symbol.  ``version`` is the version it defines (a definition) or needs
    (a reference, with ``version_file``, the file that should provide it); ``hidden``: a
    non-default version (``name@VERSION``), which an unversioned reference never binds to."""

    index: int
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


@dataclass(frozen=True)
class Import:
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
    symbols: list[DynSymbol] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _exports: dict[str, list[DynSymbol]] | None = field(default=None, repr=False)
    _canonical: dict[str, list[DynSymbol]] | None = field(default=None, repr=False)

    @property
    def exports(self) -> dict[str, list[DynSymbol]]:
        """Defined global, weak and unique symbols by name (what lookups can bind to)."""
        if self._exports is None:
            exports: dict[str, list[DynSymbol]] = {}
            for symbol in self.symbols:
                if symbol.defined and symbol.bind != c.STB_LOCAL and symbol.name:
                    if symbol.visibility & 3 in (c.STV_HIDDEN, c.STV_INTERNAL):
                        continue
                    exports.setdefault(symbol.name, []).append(symbol)
            self._exports = exports
        return self._exports

    @property
    def canonical(self) -> dict[str, list[DynSymbol]]:
        """Undefined functions with a value: a non-PIE executable's PLT entries that stand
        for the functions' addresses (what data references to them bind to)."""
        if self._canonical is None:
            self._canonical = {}
            for symbol in self.symbols:
                if not symbol.defined and symbol.value and symbol.name:
                    self._canonical.setdefault(symbol.name, []).append(symbol)
        return self._canonical

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
    result.symbols = _symbols(elf, values, strtab, result)
    result.imports = _imports(elf, values, result)
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


def _symbols(
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
    for index, (name, info, other, shndx, value, size) in enumerate(_SYM.iter_unpack(raw)):
        version = version_file = None
        hidden = False
        if index < len(indexes) and indexes[index] > 1:
            number = indexes[index] & 0x7FFF
            hidden = bool(indexes[index] & VERSYM_HIDDEN)
            if shndx != c.SHN_UNDEF and number in defined:
                version = defined[number]
            elif number in needed:
                version, version_file = needed[number]
            elif number in defined:
                version = defined[number]
        symbols.append(
            DynSymbol(
                index,
                _cstring(strtab, name),
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


def _imports(elf: ElfFile, values: dict[int, int], result: Dynamic) -> list[Import]:
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
    plt_start = values.get(c.DT_JMPREL, 0)
    plt_end = plt_start + values.get(c.DT_PLTRELSZ, 0)
    for at, size, what, plt in tables:
        raw = _read(elf, at, size - size % _RELA.size, what, result)
        for number, (offset, info, addend) in enumerate(_RELA.iter_unpack(raw)):
            if not plt and at is not None and plt_start <= at + number * _RELA.size < plt_end:
                continue  # an old layout's DT_RELA that covers DT_JMPREL: read as PLT below
            r_type, r_sym = info & 0xFFFFFFFF, info >> 32
            kind = kinds.get(r_type)
            if kind is None or (r_sym == 0 and kind is not Kind.IRELATIVE):
                continue
            symbol = symbols[r_sym] if 0 < r_sym < len(symbols) else None
            lazy = plt and kind is Kind.JUMP_SLOT and not result.bind_now
            imports.append(Import(offset, kind, symbol, addend, lazy))
    return imports
