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

import os
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress
from operator import add, itemgetter

from redhand.elf import ElfFile, SymbolTable
from redhand.elf import constants as c
from redhand.elf.plt import PltStub, iter_plt_stubs
from redhand.errors import ElfError, RedhandError
from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS, find_debug_file
from redhand.symbols.demangle import demangle, is_ocaml_marker, strip_version


@dataclass(frozen=True, slots=True)
class Symbol:
    """A function (or code label) of one ELF file.

    ``name`` is the demangled display name, ``raw_name`` the name in the
    symbol table (with its version suffix, if any), ``start`` its link-time
    address and ``size`` its size in bytes (0 for an assembly label).
    """

    name: str
    raw_name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.size

    def contains(self, vaddr: int) -> bool:
        return self.start <= vaddr < self.start + self.size


@dataclass(frozen=True, slots=True)
class SymbolMatch:
    """The answer to a lookup: ``offset`` is the address minus ``symbol.start``.

    ``exact`` is False when the symbol does not contain the address and is
    only the nearest preceding assembly label (size 0).
    """

    symbol: Symbol
    offset: int
    exact: bool

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

_PUBLIC = 2  # qualities: GLOBAL/WEAK/UNIQUE binding
_TYPED = 1  # STT_FUNC / STT_GNU_IFUNC rather than STT_NOTYPE


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


class _Source:
    """Where names of some index entries come from: a string table, or PLT stubs."""

    __slots__ = ("label", "strtab", "stubs")

    def __init__(
        self, label: str, strtab: bytes = b"", stubs: Sequence[PltStub] | None = None
    ) -> None:
        self.label = label
        self.strtab = strtab
        self.stubs = stubs


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


class _Columns:
    """Index entries as parallel columns, in any order until :class:`_Index` sorts them."""

    __slots__ = ("limits", "quals", "refs", "sizes", "srcs", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.sizes: list[int] = []
        self.quals: list[int] = []
        self.srcs: list[int] = []
        self.refs: list[int] = []
        self.limits: list[int] = []  # for size-0 entries: end of their code section


class _Index:
    """The sorted symbol index of one module, with its own copies of every name."""

    __slots__ = (
        "_large",
        "_matches",
        "_names",
        "_symbols",
        "debug_file",
        "limits",
        "maxend",
        "order",
        "quals",
        "refs",
        "sizes",
        "sources",
        "srcs",
        "starts",
    )

    def __init__(self, cols: _Columns, sources: list[_Source], debug_file: str | None):
        # Only starts and sizes are reordered; the other columns stay in their
        # original order and are reached through ``order`` (sorted -> original).
        self.order = order = sorted(range(len(cols.starts)), key=cols.starts.__getitem__)
        self.starts = _pick(cols.starts, order)
        self.sizes = sizes = _pick(cols.sizes, order)
        self.quals = cols.quals
        self.srcs = cols.srcs
        self.refs = cols.refs
        limits = cols.limits
        self.limits = dict(
            zip(compress(range(len(limits)), limits), compress(limits, limits), strict=True)
        )
        ends = list(map(add, self.starts, sizes))
        self._large: list[int] = []
        if sizes and max(sizes) > _LARGE:
            self._large = [i for i, size in enumerate(sizes) if size > _LARGE]
            for i in self._large:
                ends[i] = self.starts[i]
        self.maxend = list(accumulate(ends, max))
        self.sources = sources
        self.debug_file = debug_file
        self._symbols: dict[int, Symbol] = {}
        self._matches: dict[int, SymbolMatch | None] = {}
        self._names: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.starts)

    # -- names ----------------------------------------------------------------

    def raw_name(self, index: int) -> str:
        original = self.order[index]
        source = self.sources[self.srcs[original]]
        ref = self.refs[original]
        if source.stubs is None:
            strtab = source.strtab
            end = strtab.find(b"\0", ref)
            return strtab[ref : end if end >= 0 else len(strtab)].decode(
                "utf-8", "backslashreplace"
            )
        stub = source.stubs[ref]
        if stub.symbol:
            return f"{stub.symbol}@plt"
        if stub.reloc_type == c.R_X86_64_IRELATIVE:
            # The slot holds what the IFUNC resolver at the addend returns: name
            # the stub after the IFUNC (strchr@plt), as objdump would for a
            # dynamic import; objdump's own form when the resolver is unknown.
            target = self.find(stub.addend, plt=False)
            if target is not None and target.exact:
                return f"{strip_version(target.symbol.raw_name)}@plt"
            return f"*ABS*+{stub.addend:#x}@plt"
        return f"*UND*+{stub.got_address:#x}@plt"

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
        for index in self._large:
            if starts[index] <= vaddr < starts[index] + sizes[index]:
                candidates.append(index)
        if not plt:
            candidates = [
                i for i in candidates if self.sources[self.srcs[self.order[i]]].stubs is None
            ]
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
            quals, order = self.quals, self.order
            top = max(quals[order[i]] for i in group)
            group = [i for i in group if quals[order[i]] == top]
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
            limit = self.limits.get(self.order[index], 0)
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


class _Builder:
    def __init__(self) -> None:
        self.cols = _Columns()
        self.sources: list[_Source] = []
        self.notes: list[str] = []

    def _extend(
        self, src: int, starts: list[int], sizes: list[int], quals: list[int], refs: list[int]
    ) -> None:
        cols = self.cols
        cols.starts += starts
        cols.sizes += sizes
        cols.quals += quals
        cols.refs += refs
        cols.srcs += [src] * len(starts)

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
        quals = list(compress(col.st_info.translate(_FUNC_QUALITY), functions))
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
                    quals.append(_PUBLIC if col.st_info[i] >> 4 != c.STB_LOCAL else 0)
                    refs.append(st_name)
                    sections.append(col.st_shndx[i])
        src = len(self.sources)
        self.sources.append(_Source(what, strtab))
        limits = [0] * len(starts)
        if 0 in sizes:
            for j in compress(range(len(sizes)), [not size for size in sizes]):
                limits[j] = code_ends.get(sections[j], 0)
        self.cols.limits += limits
        self._extend(src, starts, sizes, quals, refs)
        self.notes.append(f"{what}: {len(starts)} functions")
        return len(starts)

    def add_plt(self, elf: ElfFile) -> None:
        stubs = list(iter_plt_stubs(elf))
        if not stubs:
            return
        src = len(self.sources)
        self.sources.append(_Source(f"PLT of {elf.path}", stubs=stubs))
        count = len(stubs)
        self._extend(
            src,
            [stub.address for stub in stubs],
            [stub.size for stub in stubs],
            [_TYPED | _PUBLIC] * count,
            list(range(count)),
        )
        self.cols.limits += [0] * count
        self.notes.append(f"PLT of {elf.path}: {count} stubs")


def _build(
    elf: ElfFile,
    file_path: str | None,
    origin_path: str | None,
    debug_dirs: Sequence[str],
) -> tuple[_Index, list[str]]:
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

    def debug_symtab() -> bool:
        nonlocal debug_path
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
    return _Index(builder.cols, builder.sources, debug_path), notes


# Indexes shared in this process, by (build-id, debuglink directory, debug dirs).
_CACHE: dict[tuple[str, str, tuple[str, ...]], tuple[_Index, list[str]]] = {}
_CACHE_SIZE = 256


def clear_cache() -> None:
    """Forget every shared index (tests; or after installing debug files)."""
    _CACHE.clear()


class ModuleSymbols:
    """All function names of one ELF file, looked up by link-time address.

    ``file_path`` is where the file can be read now (possibly
    /proc/PID/map_files/...), ``origin_path`` the path the process saw; both
    only serve to find a separate debug file through .gnu_debuglink.  Nothing
    is read before the first lookup; ``elf`` must stay open until then (the
    index keeps its own copies of what it needs, and the debug file it opens
    is closed after reading).

    A corrupt symbol table, debug file or PLT is skipped, never raised: its
    error is listed in :attr:`sources`.
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

    def _cache_key(self) -> tuple[str, str, tuple[str, ...]] | None:
        if not self.build_id:
            return None
        where = self._origin_path or self._file_path or ""
        return (self.build_id, os.path.dirname(where), self._debug_dirs)

    def _ensure(self) -> _Index:
        if self._index is not None:
            return self._index
        key = self._cache_key()
        cached = _CACHE.get(key) if key is not None else None
        if cached is None:
            assert self._elf is not None
            cached = _build(self._elf, self._file_path, self._origin_path, self._debug_dirs)
            if key is not None:
                if len(_CACHE) >= _CACHE_SIZE:
                    del _CACHE[next(iter(_CACHE))]
                _CACHE[key] = cached
        self._index, self._notes = cached
        self._elf = None  # the index holds what it needs
        return self._index

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
