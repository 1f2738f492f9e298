"""Function names for addresses of one ELF file.

:class:`ModuleSymbols` merges, the first time it is asked:

1. the file's own .symtab; else the separate debug file's .symtab; else the
   .symtab inside .gnu_debugdata (MiniDebugInfo);
2. .dynsym;
3. PLT stubs, named ``printf@plt`` like objdump names them.

The index is a list of symbol starts sorted for :func:`bisect`, with a
running maximum of symbol ends so that a lookup walks back only over symbols
that can still contain the address.  Names are decoded and demangled only for
the symbols a lookup returns.  Indexes are shared per build-id inside the
process: the same library in two processes is parsed once.

Indexes are also kept on disk, in the persistent cache (:mod:`redhand.cache`),
as flat columns (arrays of numbers and a blob of names) that load in well
under a millisecond for libc, where building its index from libc6-dbg's debug
file took 9-14 ms.  An entry is used only when everything the index was built
from is unchanged: the file (its build-id, size and section headers; its
inode, size and mtime when it has no build-id), the debug directories and the
directory it was loaded from, and every place a separate debug file was
looked for (what is there now: nothing, or the same inode, size and mtime).
An entry that does not match is rebuilt and rewritten.  A cached index and a
fresh one are the same columns, looked up by the same code.

Which symbols count, and which name wins (see :meth:`_Index.choose`):

- STT_FUNC and STT_GNU_IFUNC (memcpy, strlen: an IFUNC symbol is a function);
- STT_NOTYPE only in executable sections, and never compiler-local labels
  (``.L...``), mapping symbols (``$x``), linker-defined boundaries (``_etext``,
  ``__start_SECTION``) or OCaml's code/data markers; they are assembler
  labels, useful only as the "nearest preceding" guess below;
- an address inside a sized symbol gets the smallest such symbol, exact;
- between aliases of one function (same start and size) the name gdb prints
  for a frame without DWARF (``info symbol``): public (global or weak) over
  local, then the fewest leading underscores, then the greatest name (gdb's
  minimal-symbol order).  In glibc that is ``poll`` (not ``__poll``,
  ``__libc_poll`` or ``__GI___poll``), ``read``, ``write``, ``nanosleep``,
  ``__memmove_avx_unaligned_erms``.  gdb's backtrace shows ``__GI___poll``
  only because it takes names from DWARF when libc6-dbg is installed; the
  symbol tables cannot reproduce that (read has three ``__GI_`` aliases) and
  the public name stays the same with or without debug files installed, which
  keeps crash signatures stable across machines;
- an address in no symbol has no name (None: the frame prints as
  module+offset), except right after a size-0 symbol (a hand-written assembly
  label) with nothing in between, in the same section: that name comes back
  with ``exact=False``.
"""

from __future__ import annotations

import marshal
import os
import sys
import zlib
from array import array
from bisect import bisect_right
from itertools import accumulate, compress
from operator import add, itemgetter, not_

from redhand import cache
from redhand._value import Value
from redhand.elf import ElfFile, SymbolTable
from redhand.elf import constants as c
from redhand.errors import ElfError, RedhandError
from redhand.symbols.debugfile import (
    DEFAULT_DEBUG_DIRS,
    debug_file_candidates,
    find_debug_file,
)
from redhand.symbols.demangle import demangle, is_ocaml_marker, strip_version

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redhand.elf.plt import PltStub


class Symbol(Value):
    """A function (or code label) of one ELF file.

    ``name`` is the demangled display name, ``raw_name`` the name in the
    symbol table (with its version suffix, if any), ``start`` its link-time
    address and ``size`` its size in bytes (0 for an assembly label).
    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_name",
        "_raw_name",
        "_size",
        "_start",
    )
    _fields = ("name", "raw_name", "start", "size")
    __match_args__ = ("name", "raw_name", "start", "size")

    name: str
    raw_name: str
    start: int
    size: int

    def __init__(self, name: str, raw_name: str, start: int, size: int) -> None:
        self._name = name
        self._raw_name = raw_name
        self._start = start
        self._size = size

    @property
    def end(self) -> int:
        return self.start + self.size

    def contains(self, vaddr: int) -> bool:
        return self.start <= vaddr < self.start + self.size


class SymbolMatch(Value):
    """The answer to a lookup: ``offset`` is the address minus ``symbol.start``.

    ``exact`` is False when the symbol does not contain the address and is
    only the nearest preceding assembly label (size 0).  Immutable.  (Not a
    dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = ("_exact", "_offset", "_symbol")
    _fields = ("symbol", "offset", "exact")
    __match_args__ = ("symbol", "offset", "exact")

    symbol: Symbol
    offset: int
    exact: bool

    def __init__(self, symbol: Symbol, offset: int, exact: bool) -> None:
        self._symbol = symbol
        self._offset = offset
        self._exact = exact

    def __str__(self) -> str:
        text = f"{self.symbol.name}+{self.offset:#x}" if self.offset else self.symbol.name
        return text if self.exact else f"{text} (nearest label)"


# -- what goes into the index ----------------------------------------------------

# Sized symbols bigger than this are kept out of the running maximum (a bogus
# or huge one would make every lookup after it walk back to it) and checked
# one by one instead.
_LARGE = 1 << 24

# Symbols the linker defines at section and segment boundaries.
_BOUNDARY_NAMES = frozenset(
    {
        "_etext", "etext", "__etext", "_edata", "edata", "_end", "end", "__bss_start",
        "__bss_start__", "__executable_start", "__ehdr_start", "__dso_handle", "__TMC_END__",
        "__FRAME_END__", "__GNU_EH_FRAME_HDR", "_GLOBAL_OFFSET_TABLE_", "_DYNAMIC",
        "_PROCEDURE_LINKAGE_TABLE_", "__data_start", "data_start", "_fdata", "_ftext",
    }
)  # fmt: skip
_BOUNDARY_PREFIXES = (
    "__start_",
    "__stop_",
    "__init_array_",
    "__fini_array_",
    "__preinit_array_",
    "__rela_iplt_",
    "__rel_iplt_",
)

# An index entry's flags: its name's qualities, and whether it is a PLT stub.
_PUBLIC = 2  # quality: GLOBAL/WEAK/UNIQUE binding
_TYPED = 1  # quality: STT_FUNC / STT_GNU_IFUNC rather than STT_NOTYPE
_QUALITY = _PUBLIC | _TYPED
_PLT = 4
_IS_PLT = bytes(0xFF if flags & _PLT else 0 for flags in range(256))  # for bytes.translate


def _is_label_name(name: str) -> bool:
    """Whether an untyped symbol in code is a label gdb would show as a function."""
    if not name or name[0] in ".$":
        return False
    if name in _BOUNDARY_NAMES or name.startswith(_BOUNDARY_PREFIXES):
        return False
    return not is_ocaml_marker(name)


def _name_preference(raw: str) -> tuple[int, str]:
    base = strip_version(raw)
    return (-(len(base) - len(base.lstrip("_"))), base)


def _pick(column: Sequence[int], indexes: list[int]) -> list[int]:
    """``[column[i] for i in indexes]`` at C speed."""
    if len(indexes) > 1:
        return list(itemgetter(*indexes)(column))
    return [column[i] for i in indexes]


# Translation tables over a column of st_info bytes: the quality of a function
# (0 for any other type), 0xFF for function types, and 0xFF for STT_NOTYPE.
_FUNC_QUALITY = bytes(
    (_TYPED | (_PUBLIC if info >> 4 != c.STB_LOCAL else 0))
    if info & 0xF in (c.STT_FUNC, c.STT_GNU_IFUNC)
    else 0
    for info in range(256)
)
_IS_FUNC = bytes(0xFF if q else 0 for q in _FUNC_QUALITY)
_IS_NOTYPE = bytes(0xFF if info & 0xF == c.STT_NOTYPE else 0 for info in range(256))
_NONZERO = bytes([0] + [0xFF] * 255)
_NOT_FF = bytes([0xFF] * 255 + [0])


def _defined_selector(table: SymbolTable, kind: bytes) -> bytes:
    """One byte per symbol, nonzero when its st_info passes ``kind`` (a translation
    table) and it is defined in a real section: st_shndx neither SHN_UNDEF (0) nor
    reserved (0xff00 and up, like SHN_ABS).

    The byte columns are combined as big integers: three bitwise operations over
    the whole table instead of a Python loop over every symbol.
    """
    data = table.data
    info = data[4::24]
    if not info:
        return b""
    low, high = data[6::24], data[7::24]  # st_shndx, little-endian
    mask = int.from_bytes(low.translate(_NONZERO)) | int.from_bytes(high.translate(_NONZERO))
    mask &= int.from_bytes(high.translate(_NOT_FF))
    mask &= int.from_bytes(info.translate(kind))
    return mask.to_bytes(len(info))


class _Index:
    """The sorted symbol index of one module, with its own copy of every name.

    Every column is in address order (entry ``i`` is the ``i``-th smallest
    start; entries with equal starts keep the order they were added in):

    - ``starts``, ``sizes``: link-time address and size;
    - ``maxend``: the running maximum of ``start + size`` (huge symbols left
      out, see ``large``), so a lookup walks back only while something can
      still contain the address;
    - ``flags``: one byte per entry, the name quality bits (``_PUBLIC``,
      ``_TYPED``) and ``_PLT`` for a PLT stub;
    - ``refs``: where the entry's name starts in ``names``, a blob of
      NUL-terminated names (the string tables the names come from, and the
      PLT stubs' names);
    - ``limits``: for a size-0 label, the end of its code section (index ->
      end; labels in no known section are absent);
    - ``large``: the entries bigger than ``_LARGE``, checked one by one.

    The columns are lists when the index is built, arrays when it is read back
    from the persistent cache: the lookups are the same code either way.
    """

    __slots__ = (
        "_matches",
        "_names",
        "_symbols",
        "debug_file",
        "flags",
        "large",
        "limits",
        "maxend",
        "names",
        "notes",
        "refs",
        "sizes",
        "starts",
    )

    def __init__(
        self,
        *,
        starts: Sequence[int],
        sizes: Sequence[int],
        maxend: Sequence[int],
        flags: bytes,
        refs: Sequence[int],
        names: bytes,
        limits: dict[int, int],
        large: list[int],
        debug_file: str | None,
        notes: list[str],
    ) -> None:
        self.starts = starts
        self.sizes = sizes
        self.maxend = maxend
        self.flags = flags
        self.refs = refs
        self.names = names
        self.limits = limits
        self.large = large
        self.debug_file = debug_file
        self.notes = notes
        self._symbols: dict[int, Symbol] = {}
        self._matches: dict[int, SymbolMatch | None] = {}
        self._names: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.starts)

    # -- names ----------------------------------------------------------------

    def raw_name(self, index: int) -> str:
        names = self.names
        ref = self.refs[index]
        end = names.find(b"\0", ref)
        return names[ref : end if end >= 0 else len(names)].decode("utf-8", "backslashreplace")

    def symbol(self, index: int) -> Symbol:
        symbol = self._symbols.get(index)
        if symbol is None:
            raw = self.raw_name(index)
            name = demangle(raw[:-4]) + "@plt" if raw.endswith("@plt") else demangle(raw)
            symbol = Symbol(name, raw, self.starts[index], self.sizes[index])
            self._symbols[index] = symbol
        return symbol

    # -- lookup ---------------------------------------------------------------

    def lookup(self, vaddr: int) -> SymbolMatch | None:
        matches = self._matches
        if vaddr in matches:
            return matches[vaddr]
        match = self.find(vaddr, plt=True)
        if len(matches) >= 1 << 16:
            matches.clear()
        matches[vaddr] = match
        return match

    def find(self, vaddr: int, *, plt: bool) -> SymbolMatch | None:
        starts = self.starts
        last = bisect_right(starts, vaddr) - 1
        if last < 0:
            return None
        maxend = self.maxend
        sizes = self.sizes
        candidates = []
        index = last
        while index >= 0 and maxend[index] > vaddr:
            if starts[index] + sizes[index] > vaddr:
                candidates.append(index)
            index -= 1
        for index in self.large:
            if starts[index] <= vaddr < starts[index] + sizes[index]:
                candidates.append(index)
        if not plt:
            flags = self.flags
            candidates = [i for i in candidates if not flags[i] & _PLT]
        if candidates:
            best = self.choose(candidates)
            return SymbolMatch(self.symbol(best), vaddr - starts[best], True)
        return self._nearest_label(last, vaddr)

    def choose(self, candidates: list[int]) -> int:
        """The smallest containing symbol; between aliases, the best quality, then name."""
        sizes = self.sizes
        smallest = min(sizes[i] for i in candidates)
        group = [i for i in candidates if sizes[i] == smallest]
        if len(group) > 1:
            flags = self.flags
            top = max(flags[i] & _QUALITY for i in group)
            group = [i for i in group if flags[i] & _QUALITY == top]
        if len(group) > 1:
            return max(group, key=lambda i: _name_preference(self.raw_name(i)))
        return group[0]

    def _nearest_label(self, last: int, vaddr: int) -> SymbolMatch | None:
        start = self.starts[last]
        # Nothing sized may start at or before the label and end after it:
        # that would put other code between the label and the address.
        if self.maxend[last] > start:
            return None
        labels = []
        index = last
        while index >= 0 and self.starts[index] == start:
            limit = self.limits.get(index, 0)
            if self.sizes[index] == 0 and vaddr < limit:
                labels.append(index)
            index -= 1
        if not labels:
            return None
        best = self.choose(labels)
        return SymbolMatch(self.symbol(best), vaddr - start, False)

    # -- by name --------------------------------------------------------------

    def by_name(self, name: str) -> Symbol | None:
        if self._names is None:
            names: dict[str, int] = {}
            sizes = self.sizes
            for index in range(len(self.starts)):
                raw = self.raw_name(index)
                for key in (raw, strip_version(raw) if not raw.endswith("@plt") else raw):
                    # Among same-named entries (.symtab and .dynsym), keep a sized one.
                    known = names.get(key)
                    if known is None or (sizes[known] == 0 and sizes[index] > 0):
                        names[key] = index
            self._names = names
        found = self._names.get(name)
        if found is None:
            found = self._names.get(strip_version(name))
        return None if found is None else self.symbol(found)

    # -- the persistent form ----------------------------------------------------

    def to_columns(self) -> tuple[object, ...]:
        """The index as flat values for :mod:`marshal` (OverflowError if one does not fit).

        Each number column is the bytes of an array of 32-bit items when its
        values allow, else of 64-bit ones, preceded by the array's type code.
        """
        return (
            *_packed(self.starts),
            *_packed(self.sizes),
            *_packed(self.maxend),
            bytes(self.flags),
            *_packed(self.refs),
            bytes(self.names),
            *_packed(list(self.limits.keys())),
            *_packed(list(self.limits.values())),
            tuple(self.large),
            self.debug_file,
            tuple(self.notes),
        )

    @classmethod
    def from_columns(cls, values: object) -> _Index | None:
        """The index :meth:`to_columns` gave, or None if ``values`` are not such an index.

        The number columns stay in the bytes they were read from (a
        ``memoryview`` cast to their item type): nothing is converted.
        """
        if not isinstance(values, tuple) or len(values) != 17:
            return None
        try:
            starts = _unpacked(values[0], values[1])
            sizes = _unpacked(values[2], values[3])
            maxend = _unpacked(values[4], values[5])
            flags = values[6]
            refs = _unpacked(values[7], values[8])
            names = values[9]
            limit_keys = _unpacked(values[10], values[11])
            limit_values = _unpacked(values[12], values[13])
        except (TypeError, ValueError):  # not bytes, or not a whole number of items
            return None
        large, debug_file, notes = values[14:]
        if not isinstance(flags, bytes) or not isinstance(names, bytes):
            return None
        count = len(starts)
        if not len(sizes) == len(maxend) == len(flags) == len(refs) == count:
            return None
        if len(limit_keys) != len(limit_values):
            return None
        if not isinstance(large, tuple) or not all(
            isinstance(i, int) and 0 <= i < count for i in large
        ):
            return None
        if debug_file is not None and not isinstance(debug_file, str):
            return None
        if not isinstance(notes, tuple) or not all(isinstance(note, str) for note in notes):
            return None
        return cls(
            starts=starts,
            sizes=sizes,
            maxend=maxend,
            flags=flags,
            refs=refs,
            names=names,
            limits=dict(zip(limit_keys, limit_values, strict=True)),
            large=list(large),
            debug_file=debug_file,
            notes=list(notes),
        )


def _packed(values: Sequence[int]) -> tuple[str, bytes]:
    """A column of unsigned numbers as (array type code, bytes); OverflowError past 64 bits."""
    code = "I" if not values or max(values) < 1 << 32 else "Q"
    return code, array(code, values).tobytes()


def _unpacked(code: object, data: object) -> Sequence[int]:
    """The column :func:`_packed` gave, as a view of ``data`` (TypeError, ValueError if bad)."""
    if code not in ("I", "Q") or not isinstance(data, bytes):
        raise TypeError("not a packed column")
    return memoryview(data).cast(code)


class _Builder:
    """Collects index entries from symbol tables and PLTs, in any order, then sorts them."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.sizes: list[int] = []
        self.flags = bytearray()
        self.refs: list[int] = []
        self.limits: list[int] = []  # for size-0 entries: end of their code section
        self.names = bytearray()
        self.stubs: list[PltStub] = []
        self.notes: list[str] = []

    def _add_names(self, strtab: bytes) -> tuple[int, int]:
        """Append a string table to the name blob: (its offset, where an empty name is)."""
        base = len(self.names)
        self.names += strtab
        self.names += b"\0"  # ends an unterminated last name; the empty name for bad offsets
        return base, base + len(strtab)

    def add_table(self, elf: ElfFile, table: SymbolTable, what: str) -> int:
        """Add the functions of ``table`` (a .symtab or .dynsym of ``elf``); how many."""
        code_ends: dict[int, int] = {}
        for sec in elf.iter_sections():
            if sec.sh_flags & c.SHF_EXECINSTR and sec.sh_flags & c.SHF_ALLOC:
                code_ends[sec.index] = sec.sh_addr + sec.sh_size
        col = table.columns()
        functions = _defined_selector(table, _IS_FUNC)
        starts = list(compress(col.st_value, functions))
        sizes = list(compress(col.st_size, functions))
        flags = bytearray(compress(col.st_info.translate(_FUNC_QUALITY), functions))
        refs = list(compress(col.st_name, functions))
        sections = list(compress(col.st_shndx, functions))
        strtab = table.strtab
        labels = _defined_selector(table, _IS_NOTYPE)
        for i in compress(range(len(labels)), labels):
            if col.st_shndx[i] in code_ends:
                st_name = col.st_name[i]
                end = strtab.find(b"\0", st_name)
                name = strtab[st_name : end if end >= 0 else len(strtab)]
                if _is_label_name(name.decode("utf-8", "backslashreplace")):
                    starts.append(col.st_value[i])
                    sizes.append(col.st_size[i])
                    flags.append(_PUBLIC if col.st_info[i] >> 4 != c.STB_LOCAL else 0)
                    refs.append(st_name)
                    sections.append(col.st_shndx[i])
        base, empty = self._add_names(strtab)
        limit = len(strtab)
        if refs and max(refs) >= limit:
            refs = [empty if ref >= limit else base + ref for ref in refs]
        elif base:
            refs = [base + ref for ref in refs]
        limits = [0] * len(starts)
        if 0 in sizes:
            for j in compress(range(len(sizes)), map(not_, sizes)):
                limits[j] = code_ends.get(sections[j], 0)
        self.starts += starts
        self.sizes += sizes
        self.flags += flags
        self.refs += refs
        self.limits += limits
        self.notes.append(f"{what}: {len(starts)} functions")
        return len(starts)

    def add_plt(self, elf: ElfFile) -> None:
        from redhand.elf.plt import iter_plt_stubs  # here: only a new index needs it

        stubs = list(iter_plt_stubs(elf))
        if not stubs:
            return
        count = len(stubs)
        first = len(self.stubs)
        self.stubs += stubs
        self.starts += [stub.address for stub in stubs]
        self.sizes += [stub.size for stub in stubs]
        self.flags += bytes([_TYPED | _PUBLIC | _PLT]) * count
        # Until the index is sorted a stub's ref is its number; then its name.
        self.refs += range(first, first + count)
        self.limits += [0] * count
        self.notes.append(f"PLT of {elf.path}: {count} stubs")

    def index(self, debug_file: str | None) -> _Index:
        count = len(self.starts)
        # Only a stable sort keeps entries with equal starts in the order they came.
        order = sorted(range(count), key=self.starts.__getitem__)
        starts = _pick(self.starts, order)
        sizes = _pick(self.sizes, order)
        flags = bytes(map(self.flags.__getitem__, order))
        refs = _pick(self.refs, order)
        limits = _pick(self.limits, order)
        ends = list(map(add, starts, sizes))
        large: list[int] = []
        if sizes and max(sizes) > _LARGE:
            large = [i for i, size in enumerate(sizes) if size > _LARGE]
            for i in large:
                ends[i] = starts[i]
        index = _Index(
            starts=starts,
            sizes=sizes,
            maxend=list(accumulate(ends, max)),
            flags=flags,
            refs=refs,
            names=bytes(self.names),
            limits=dict(zip(compress(range(count), limits), compress(limits, limits), strict=True)),
            large=large,
            debug_file=debug_file,
            notes=self.notes,
        )
        if self.stubs:
            self._name_stubs(index, refs)
        return index

    def _name_stubs(self, index: _Index, refs: list[int]) -> None:
        """Give every PLT entry of the sorted index its name, in the name blob."""
        names = bytearray(index.names)
        for position in compress(range(len(refs)), index.flags.translate(_IS_PLT)):
            stub = self.stubs[refs[position]]
            refs[position] = len(names)
            names += _stub_name(index, stub).encode("utf-8", "surrogateescape") + b"\0"
        index.names = bytes(names)


def _stub_name(index: _Index, stub: PltStub) -> str:
    if stub.symbol:
        return f"{stub.symbol}@plt"
    if stub.reloc_type == c.R_X86_64_IRELATIVE:
        # The slot holds what the IFUNC resolver at the addend returns: name
        # the stub after the IFUNC (strchr@plt), as objdump would for a
        # dynamic import; objdump's own form when the resolver is unknown.
        # Only entries that are not PLT stubs are looked at (plt=False), and
        # their names are already in the blob.
        target = index.find(stub.addend, plt=False)
        if target is not None and target.exact:
            return f"{strip_version(target.symbol.raw_name)}@plt"
        return f"*ABS*+{stub.addend:#x}@plt"
    return f"*UND*+{stub.got_address:#x}@plt"


def _build(
    elf: ElfFile,
    file_path: str | None,
    origin_path: str | None,
    debug_dirs: Sequence[str],
) -> tuple[_Index, bool]:
    """The index of ``elf``, and whether a separate debug file was looked for."""
    builder = _Builder()
    notes = builder.notes
    name = elf.path or "<memory>"
    debug_path: str | None = None

    def attempt(what: str, action: Callable[[], object]) -> bool:
        try:
            return bool(action())
        except ElfError as exc:
            notes.append(f"skipped {what}: {exc}")
            return False

    def own_symtab() -> bool:
        table = elf.get_symbol_table(".symtab")
        return table is not None and builder.add_table(elf, table, f".symtab of {name}") >= 0

    searched = False

    def debug_symtab() -> bool:
        nonlocal debug_path, searched
        searched = True
        tried: list[str] = []
        debug = find_debug_file(elf, file_path, debug_dirs, origin_path=origin_path, tried=tried)
        notes.extend(f"rejected debug file {line}" for line in tried)
        if debug is None:
            notes.append("no separate debug file found")
            return False
        try:
            table = debug.get_symbol_table(".symtab")
            if table is None:
                notes.append(f"debug file {debug.path} has no .symtab")
                return False
            builder.add_table(debug, table, f".symtab of debug file {debug.path}")
            debug_path = debug.path
            return True
        finally:
            debug.close()

    def mini_symtab() -> bool:
        mini = elf.gnu_debugdata()
        if mini is None:
            return False
        table = mini.get_symbol_table(".symtab")
        if table is None:
            return False
        builder.add_table(mini, table, f".symtab of {mini.path}")
        return True

    # A linker's .symtab (the file's own, or the debug file's copy of it) holds
    # every symbol of .dynsym too; MiniDebugInfo deliberately holds only the
    # functions .dynsym lacks.  So .dynsym adds names only after the latter.
    full = attempt(f".symtab of {name}", own_symtab) or attempt("separate debug file", debug_symtab)
    if not full:
        attempt(f".gnu_debugdata of {name}", mini_symtab)

    def dynsym() -> bool:
        table = elf.get_symbol_table(".dynsym")
        if table is not None:
            builder.add_table(elf, table, f".dynsym of {name}")
        return True

    if full:
        notes.append(f".dynsym of {name}: not needed, the .symtab has its symbols")
    else:
        attempt(f".dynsym of {name}", dynsym)
    attempt(f"PLT of {name}", lambda: builder.add_plt(elf))
    return builder.index(debug_path), searched


# -- caches ------------------------------------------------------------------------

# The version of the persistent index entries (bump it whenever what _build
# puts into an index, or how to_columns lays it out, changes).
_PAYLOAD_VERSION = 1
_CACHE_KIND = "symbols"

# Indexes shared in this process, by the key of the persistent cache.
_CACHE: dict[tuple[object, ...], _Index] = {}
_CACHE_SIZE = 256


def clear_cache() -> None:
    """Forget every index shared in this process (tests; or after installing debug files).

    The persistent cache needs no clearing: its entries are checked against
    the debug files they were built from (see :class:`ModuleSymbols`).
    """
    _CACHE.clear()


def _stat_signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _file_key(elf: ElfFile, file_path: str | None) -> tuple[object, ...] | None:
    """What identifies the symbol-relevant contents of ``elf``, or None if nothing does.

    The build-id names the program, but a stripped copy of a binary keeps the
    unstripped one's build-id: the file's size and a CRC32 of its section
    headers tell such copies apart.  A file without a build-id is known by
    its inode, size and mtime instead (None when it is not a file on disk).
    """
    try:
        build_id = elf.build_id
        count = elf.num_sections()
        headers = elf.read(elf.e_shoff, count * elf.e_shentsize) if count else b""
    except ElfError:
        return None
    identity: tuple[object, ...] = (elf.size, zlib.crc32(headers))
    if build_id is None:
        signature = _stat_signature(file_path) if file_path else None
        if signature is None:
            return None
        identity += signature
    return (build_id, *identity)


class ModuleSymbols:
    """All function names of one ELF file, looked up by link-time address.

    ``file_path`` is where the file can be read now (possibly
    /proc/PID/map_files/...), ``origin_path`` the path the process saw; both
    only serve to find a separate debug file through .gnu_debuglink.  Nothing
    is read before the first lookup; ``elf`` must stay open until then (the
    index keeps its own copies of what it needs, and the debug file it opens
    is closed after reading).

    A corrupt symbol table, debug file or PLT is skipped, never raised: its
    error is listed in :attr:`sources`.  The index comes from the persistent
    cache when it holds a valid entry (see the module's documentation), and
    goes there when it is built.
    """

    def __init__(
        self,
        elf: ElfFile,
        *,
        file_path: str | None = None,
        origin_path: str | None = None,
        debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
    ) -> None:
        self._elf: ElfFile | None = elf
        self._file_path = file_path or elf.path
        self._origin_path = origin_path
        self._debug_dirs = tuple(debug_dirs)
        self._index: _Index | None = None
        self._notes: list[str] = []
        self._debug_elf: ElfFile | None = None
        self._debug_elf_tried = False
        self.path = origin_path or file_path or elf.path
        try:
            build_id = elf.build_id
        except ElfError:
            build_id = None
        self.build_id = build_id
        self.cache_path: str | None = None
        """The persistent cache entry the index was read from, if it was."""
        # Computed now: an index shared in this process needs nothing more of elf.
        self._key = self._cache_key()

    def _cache_key(self) -> tuple[object, ...] | None:
        """Everything the index depends on, but for the debug files (see :meth:`_debug_inputs`)."""
        assert self._elf is not None
        identity = _file_key(self._elf, self._file_path)
        if identity is None:
            return None
        where = self._origin_path or self._file_path or ""
        return (
            _PAYLOAD_VERSION,
            sys.byteorder,
            *identity,
            os.path.dirname(where),
            self._debug_dirs,
        )

    def _debug_inputs(self) -> tuple[tuple[str, object], ...] | None:
        """Every place a separate debug file could come from, with what is there now.

        An index built after looking for a debug file is valid while these
        are the same: a debug file installed, removed or replaced since makes
        the cached index stale.  None when the places cannot be known.
        """
        assert self._elf is not None
        try:
            candidates = debug_file_candidates(
                self._elf, self._file_path, self._debug_dirs, origin_path=self._origin_path
            )
        except ElfError:
            return None
        return tuple((path, _stat_signature(path)) for path, _how in candidates)

    def _ensure(self) -> _Index:
        if self._index is not None:
            return self._index
        key = self._key
        index = _CACHE.get(key) if key is not None else None
        if index is None:
            # The persistent cache's entry for this key (None: the cache is off).
            name = None
            if key is not None and cache.directory() is not None:
                name = f"{self.build_id or 'no-build-id'}-{zlib.crc32(repr(key).encode()):08x}"
                index = self._load(name, key)
            if index is None:
                elf = self._elf
                assert elf is not None
                inputs = self._debug_inputs() if name is not None else None
                index, searched = _build(elf, self._file_path, self._origin_path, self._debug_dirs)
                if key is not None and name is not None and (inputs is not None or not searched):
                    self._store(name, key, inputs if searched else None, index)
            if key is not None:
                if len(_CACHE) >= _CACHE_SIZE:
                    del _CACHE[next(iter(_CACHE))]
                _CACHE[key] = index
        self._index = index
        self._notes = list(index.notes)
        if self.cache_path is not None:
            self._notes.append(f"index read from the cache: {self.cache_path}")
        self._elf = None  # the index holds what it needs
        return index

    def _load(self, name: str, key: tuple[object, ...]) -> _Index | None:
        """The index from the persistent cache, if it is there and still valid."""
        payload = cache.read(_CACHE_KIND, name)
        if payload is None:
            return None
        try:
            values = marshal.loads(payload)
        except (ValueError, EOFError, TypeError):
            return None
        if not isinstance(values, tuple) or len(values) != 4:
            return None
        version, stored_key, inputs, columns = values
        if version != _PAYLOAD_VERSION or stored_key != key:
            return None
        if inputs is not None and inputs != self._debug_inputs():
            return None
        index = _Index.from_columns(columns)
        if index is not None:
            self.cache_path = cache.entry_path(_CACHE_KIND, name)
        return index

    def _store(
        self,
        name: str,
        key: tuple[object, ...],
        inputs: tuple[tuple[str, object], ...] | None,
        index: _Index,
    ) -> None:
        try:
            entry = (_PAYLOAD_VERSION, key, inputs, index.to_columns())
            payload = marshal.dumps(entry)  # type: ignore[arg-type]
        except (OverflowError, ValueError):  # a value that does not fit the columns
            return
        cache.write(_CACHE_KIND, name, payload)

    def lookup(self, vaddr: int) -> SymbolMatch | None:
        """The function containing link-time address ``vaddr`` (pc minus load bias).

        None when no symbol contains it: a stripped binary's internal function
        has no name rather than the name of a neighbour.
        """
        return self._ensure().lookup(vaddr)

    def get_symbol(self, name: str) -> Symbol | None:
        """A function by its raw (``__poll``, ``_ZN3foo3barEv``) or unversioned name."""
        return self._ensure().by_name(name)

    def function_ranges(self) -> list[tuple[int, int]]:
        """``(start, end)`` of every sized symbol, sorted by start (for stack scanning)."""
        index = self._ensure()
        return [
            (start, start + size)
            for start, size in zip(index.starts, index.sizes, strict=True)
            if size > 0
        ]

    def __len__(self) -> int:
        """How many entries the index holds (aliases and duplicates included)."""
        return len(self._ensure())

    @property
    def sources(self) -> list[str]:
        """Where names came from, and what was skipped or rejected, for --verbose."""
        self._ensure()
        return list(self._notes)

    @property
    def debug_file(self) -> str | None:
        """The path of the separate debug file whose .symtab was used, or None."""
        return self._ensure().debug_file

    @property
    def debug_elf(self) -> ElfFile | None:
        """The separate debug file, opened (once) for readers of its other sections
        (.debug_frame for the unwinder); None if there is none or it cannot be read.
        :meth:`close` closes it."""
        if self._debug_elf is None and not self._debug_elf_tried:
            self._debug_elf_tried = True
            path = self.debug_file
            if path is not None:
                try:
                    self._debug_elf = ElfFile.open(path)
                except RedhandError as exc:
                    self._notes = [*self._notes, f"cannot reopen debug file: {exc}"]
        return self._debug_elf

    def close(self) -> None:
        """Close the debug file opened by :attr:`debug_elf` (lookups keep working)."""
        if self._debug_elf is not None:
            self._debug_elf.close()
            self._debug_elf = None

    def __repr__(self) -> str:
        return f"<ModuleSymbols {self.path!r} build-id={self.build_id}>"
