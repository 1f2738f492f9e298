"""Full names of inlined calls, from a small, lazy DWARF reader of redhand's own.

drgn (0.3.0) names the function of an inlined call by its DW_AT_name only
(``wait``) and shows neither linkage names nor DIEs, while gdb says
``shop::Cart::wait`` and eu-stack ``shop::Cart::wait() const``.  For one
link-time pc of one file with DWARF, :func:`inline_names` finds the
DW_TAG_inlined_subroutine entries that contain it and names each as eu-stack
does: the demangled DW_AT_linkage_name (or DW_AT_MIPS_linkage_name), found on
the entry or through its DW_AT_abstract_origin and DW_AT_specification; else
its DW_AT_name qualified by the namespaces, classes, structures and unions
around its declaration (as gdb names it); else nothing.  C units keep the
plain DW_AT_name (glibc's asm labels such as ``__GI_toupper`` are linkage
names there), and a linkage name that is not mangled is not used.

Only what one answer needs is read.  The unit that holds the pc is found
through .debug_aranges (else through every unit's own ranges, indexed once);
its outermost functions are indexed by address on its first use (stepping
over types and declarations by DW_AT_sibling), and only the function that
holds the pc is walked, down to the innermost inlined call.  Abbreviation
tables, units, their indexes and decompressed sections are kept per file,
for the process (:data:`_MAX_FILES` files).

DWARF 2 to 5 is read: .debug_ranges and .debug_rnglists, the string and
address offset tables, compressed sections (SHF_COMPRESSED and .zdebug,
through :class:`~redhand.elf.file.ElfFile`), dwz's alternate file
(.gnu_debugaltlink, or DWARF 5's .debug_sup), split DWARF (the skeleton's
.dwo file, or the package ``FILE.dwp`` next to the file, as gdb finds them).
A type unit named by signature (DW_FORM_ref_sig8) ends a chain of
references: a linkage name found before it still counts, a qualified name
cannot be made.

Nothing here raises: malformed input, an unknown form, a missing section or
a missing file give None, and the caller keeps drgn's names.  Every loop is
bounded by the size of what it reads, every chain of references by a count.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_right

from redhand.elf.file import ElfFile, map_descriptor, open_regular_file
from redhand.symbols.debugfile import alternate_file_candidates

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Sequence
    from typing import TypeAlias

    _Buffer: TypeAlias = bytes | mmap.mmap
    _Attributes: TypeAlias = dict[int, tuple[int, int]]
    """Attribute -> (form, value): the value is an integer, or where a string starts."""
    _Plan: TypeAlias = tuple[tuple[int, int, int, int], ...]
    """An abbreviation's attributes as (attribute kept or 0, form, fixed size or -1, constant)."""
    _Abbrev: TypeAlias = tuple[int, bool, _Plan, int, int, int, bool]
    """(tag, has children, plan, size, sibling at, sibling's form, has ranges).

    See :func:`_read_abbrevs`.
    """

# Tags (DWARF 5, 7.5.3).
_TAG_CLASS_TYPE = 0x02
_TAG_ENTRY_POINT = 0x03
_TAG_LEXICAL_BLOCK = 0x0B
_TAG_COMPILE_UNIT = 0x11
_TAG_STRUCTURE_TYPE = 0x13
_TAG_UNION_TYPE = 0x17
_TAG_INLINED_SUBROUTINE = 0x1D
_TAG_MODULE = 0x1E
_TAG_CATCH_BLOCK = 0x25
_TAG_SUBPROGRAM = 0x2E
_TAG_TRY_BLOCK = 0x32
_TAG_INTERFACE_TYPE = 0x38
_TAG_NAMESPACE = 0x39
_TAG_SKELETON_UNIT = 0x4A

# Attributes.
_AT_SIBLING = 0x01
_AT_NAME = 0x03
_AT_LOW_PC = 0x11
_AT_HIGH_PC = 0x12
_AT_LANGUAGE = 0x13
_AT_COMP_DIR = 0x1B
_AT_ABSTRACT_ORIGIN = 0x31
_AT_SPECIFICATION = 0x47
_AT_RANGES = 0x55
_AT_LINKAGE_NAME = 0x6E
_AT_STR_OFFSETS_BASE = 0x72
_AT_ADDR_BASE = 0x73
_AT_RNGLISTS_BASE = 0x74
_AT_DWO_NAME = 0x76
_AT_MIPS_LINKAGE_NAME = 0x2007
_AT_GNU_DWO_NAME = 0x2130
_AT_GNU_DWO_ID = 0x2131
_AT_GNU_RANGES_BASE = 0x2132
_AT_GNU_ADDR_BASE = 0x2133

# The attributes whose values are kept; the others are stepped over.
_KEPT = frozenset(
    (
        _AT_SIBLING,
        _AT_NAME,
        _AT_LOW_PC,
        _AT_HIGH_PC,
        _AT_LANGUAGE,
        _AT_COMP_DIR,
        _AT_ABSTRACT_ORIGIN,
        _AT_SPECIFICATION,
        _AT_RANGES,
        _AT_LINKAGE_NAME,
        _AT_STR_OFFSETS_BASE,
        _AT_ADDR_BASE,
        _AT_RNGLISTS_BASE,
        _AT_DWO_NAME,
        _AT_MIPS_LINKAGE_NAME,
        _AT_GNU_DWO_NAME,
        _AT_GNU_DWO_ID,
        _AT_GNU_RANGES_BASE,
        _AT_GNU_ADDR_BASE,
    )
)

# Forms.
_FORM_ADDR = 0x01
_FORM_BLOCK2 = 0x03
_FORM_BLOCK4 = 0x04
_FORM_DATA2 = 0x05
_FORM_DATA4 = 0x06
_FORM_DATA8 = 0x07
_FORM_STRING = 0x08
_FORM_BLOCK = 0x09
_FORM_BLOCK1 = 0x0A
_FORM_DATA1 = 0x0B
_FORM_FLAG = 0x0C
_FORM_SDATA = 0x0D
_FORM_STRP = 0x0E
_FORM_UDATA = 0x0F
_FORM_REF_ADDR = 0x10
_FORM_REF1 = 0x11
_FORM_REF2 = 0x12
_FORM_REF4 = 0x13
_FORM_REF8 = 0x14
_FORM_REF_UDATA = 0x15
_FORM_INDIRECT = 0x16
_FORM_SEC_OFFSET = 0x17
_FORM_EXPRLOC = 0x18
_FORM_FLAG_PRESENT = 0x19
_FORM_STRX = 0x1A
_FORM_ADDRX = 0x1B
_FORM_REF_SUP4 = 0x1C
_FORM_STRP_SUP = 0x1D
_FORM_DATA16 = 0x1E
_FORM_LINE_STRP = 0x1F
_FORM_REF_SIG8 = 0x20
_FORM_IMPLICIT_CONST = 0x21
_FORM_LOCLISTX = 0x22
_FORM_RNGLISTX = 0x23
_FORM_REF_SUP8 = 0x24
_FORM_STRX1 = 0x25
_FORM_STRX2 = 0x26
_FORM_STRX3 = 0x27
_FORM_STRX4 = 0x28
_FORM_ADDRX1 = 0x29
_FORM_ADDRX2 = 0x2A
_FORM_ADDRX3 = 0x2B
_FORM_ADDRX4 = 0x2C
_FORM_GNU_ADDR_INDEX = 0x1F01
_FORM_GNU_STR_INDEX = 0x1F02
_FORM_GNU_REF_ALT = 0x1F20
_FORM_GNU_STRP_ALT = 0x1F21

_ULEB_FORMS = frozenset(
    (
        _FORM_UDATA,
        _FORM_REF_UDATA,
        _FORM_STRX,
        _FORM_ADDRX,
        _FORM_LOCLISTX,
        _FORM_RNGLISTX,
        _FORM_GNU_ADDR_INDEX,
        _FORM_GNU_STR_INDEX,
    )
)
_ADDRESS_FORMS = frozenset(
    (
        _FORM_ADDR,
        _FORM_ADDRX,
        _FORM_ADDRX1,
        _FORM_ADDRX2,
        _FORM_ADDRX3,
        _FORM_ADDRX4,
        _FORM_GNU_ADDR_INDEX,
    )
)
_STRX_FORMS = frozenset(
    (_FORM_STRX, _FORM_STRX1, _FORM_STRX2, _FORM_STRX3, _FORM_STRX4, _FORM_GNU_STR_INDEX)
)

# Sections of a package's .debug_cu_index (DW_SECT_*; RNGLISTS is DWARF 5's).
_SECT_INFO = 1
_SECT_ABBREV = 3
_SECT_STR_OFFSETS = 6
_SECT_RNGLISTS = 8
_UNIT_REFERENCES = frozenset((_FORM_REF1, _FORM_REF2, _FORM_REF4, _FORM_REF8, _FORM_REF_UDATA))
_ALT_REFERENCES = frozenset((_FORM_GNU_REF_ALT, _FORM_REF_SUP4, _FORM_REF_SUP8))

# DW_LANG_C89, C, C99, C11, C17: C has no scopes and no linkage names.
_C_LANGUAGES = frozenset((0x01, 0x02, 0x0C, 0x1D, 0x2C))

# Entries that may hold code (entered when they hold the pc, or have no
# ranges of their own but may have entries with ranges inside), and the
# scopes that qualify names (entered to find functions defined inside them).
_CODE_TAGS = frozenset(
    (
        _TAG_SUBPROGRAM,
        _TAG_INLINED_SUBROUTINE,
        _TAG_LEXICAL_BLOCK,
        _TAG_TRY_BLOCK,
        _TAG_CATCH_BLOCK,
        _TAG_ENTRY_POINT,
    )
)
_SCOPE_TAGS = frozenset(
    (
        _TAG_NAMESPACE,
        _TAG_CLASS_TYPE,
        _TAG_STRUCTURE_TYPE,
        _TAG_UNION_TYPE,
        _TAG_MODULE,
        _TAG_INTERFACE_TYPE,
    )
)

_ENTERED = frozenset((_TAG_NAMESPACE, _TAG_MODULE))

_FUNCTION_TAGS = frozenset((_TAG_SUBPROGRAM, _TAG_INLINED_SUBROUTINE))

# Bounds on chains that the data itself does not bound.
_MAX_HOPS = 16  # DW_AT_abstract_origin / DW_AT_specification links followed for one name
_MAX_DEPTH = 4096  # nesting of entries
_MAX_RANGES = 1 << 16  # entries of one range list
_MAX_FILES = 16  # files whose state is kept
_MAX_NAMES = 4096  # names kept per file
_ANONYMOUS_NAMESPACE = "(anonymous namespace)"

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U64_PAIR = struct.Struct("<QQ")


class _Malformed(Exception):
    """DWARF this reader cannot follow: the answer for the pc is None."""


def inline_names(
    paths: Sequence[str | None], pc: int, debug_dirs: Sequence[str] = ("/usr/lib/debug",)
) -> list[tuple[str | None, str | None]] | None:
    """The calls inlined at link-time address ``pc``, innermost first; None if unknown.

    ``paths`` are the files that may hold the module's DWARF, in drgn's order
    (the module's own file, then its separate debug file); the first with a
    .debug_info section is read.  Each call is ``(DW_AT_name, full name)``:
    the short name is drgn's, the full one the demangled linkage name, else
    the scope-qualified name, else None.  ``debug_dirs`` are where a dwz
    alternate file is looked for by build-id.  Never raises.
    """
    try:
        for path in paths:
            if path is None:
                continue
            dwarf = _open(path, tuple(debug_dirs))
            if dwarf is not None:
                return dwarf.inline_names(pc)
    except Exception:  # malformed DWARF of every kind: drgn's names stay
        return None
    return None


# -- per-file state ---------------------------------------------------------------

_FILES: dict[tuple[int, int, int, int, bool], _DwarfFile | None] = {}


def _open(path: str, debug_dirs: tuple[str, ...], dwo: bool = False) -> _DwarfFile | None:
    """The state of the file at ``path`` (shared by every path to it); None without DWARF.

    ``dwo``: a .dwo file or a .dwp package, whose sections are named ``.debug_*.dwo``.
    """
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, dwo)
    if key in _FILES:
        return _FILES[key]
    found: _DwarfFile | None = None
    try:
        with open_regular_file(path, path) as fd:
            data = map_descriptor(fd, path)
        elf = ElfFile(data, name=path)
        name = ".debug_info.dwo" if dwo else ".debug_info"
        if elf.get_section_by_name(name) or elf.get_section_by_name(".zdebug" + name[6:]):
            found = _DwarfFile(path, data, elf, debug_dirs, dwo)
        else:
            elf.close()
    except Exception:  # not ELF, unreadable: no names from it
        found = None
    if len(_FILES) >= _MAX_FILES:
        # The oldest is dropped, not closed: a file that has it as its
        # alternate may still read it (its map closes with its last user).
        del _FILES[next(iter(_FILES))]
    _FILES[key] = found
    return found


class _Section:
    """A section's bytes: ``data[start:end]`` (the file's map, or decompressed bytes)."""

    __slots__ = ("data", "end", "start")

    def __init__(self, data: _Buffer, start: int, end: int) -> None:
        self.data = data
        self.start = start
        self.end = end


_UNSET: object = object()


class _DwarfFile:
    """One ELF file's DWARF, read lazily and kept for the process."""

    def __init__(
        self, path: str, data: mmap.mmap, elf: ElfFile, debug_dirs: tuple[str, ...], dwo: bool
    ) -> None:
        self.path = path
        self.data = data
        self.elf = elf
        self.debug_dirs = debug_dirs
        self.dwo = dwo
        """Whether this is a .dwo file or a .dwp package: its sections end in ``.dwo``."""
        self._package: dict[int, dict[int, int]] | None = None
        self._sections: dict[str, _Section | None] = {}
        self._abbrevs: dict[tuple[int, int, int], dict[int, _Abbrev]] = {}
        self._unit_starts: list[int] | None = None
        self._unit_ends: list[int] = []
        self._units: dict[int, _Unit | None] = {}
        self._aranges: tuple[list[int], list[int], list[int]] | None = None
        self._unit_ranges: tuple[list[int], list[int], list[int]] | None = None
        self._alt: object = _UNSET
        self.names: dict[int, tuple[str | None, str | None]] = {}
        """The names of inlined calls found, by their entries' offsets."""
        self._scopes: dict[int, list[str] | None] = {}
        self.info = self.section(".debug_info")

    # -- sections ---------------------------------------------------------------

    def section(self, name: str) -> _Section:
        """The section called ``name`` (or ``.zdebug_...``); _Malformed when missing."""
        found = self._sections.get(name, _UNSET)
        if found is _UNSET:
            found = self._sections[name] = self._load_section(name)
        if found is None:
            raise _Malformed(f"no {name}")
        return found  # type: ignore[return-value]

    def _load_section(self, name: str) -> _Section | None:
        elf = self.elf
        if self.dwo and name != ".debug_cu_index":
            name += ".dwo"
        section = elf.get_section_by_name(name)
        if section is None:
            section = elf.get_section_by_name(".z" + name[1:])
            if section is None:
                return None
        if section.is_compressed or section.name.startswith(".zdebug"):
            data = elf.section_data(section)
            return _Section(data, 0, len(data))
        start = section.sh_offset
        end = start + section.sh_size
        if section.sh_type == 8 or end > len(self.data):  # SHT_NOBITS, or past the end
            return None
        return _Section(self.data, start, end)

    # -- abbreviations and units ------------------------------------------------

    def abbrevs(self, offset: int, address_size: int, offset_size: int) -> dict[int, _Abbrev]:
        """The abbreviation table at ``offset`` in .debug_abbrev, with sizes for these units."""
        key = (offset, address_size, offset_size)
        table = self._abbrevs.get(key)
        if table is None:
            table = self._abbrevs[key] = _read_abbrevs(
                self.section(".debug_abbrev"), offset, _fixed_sizes(address_size, offset_size)
            )
        return table

    def _index_units(self) -> tuple[list[int], list[int]]:
        """Where every unit of .debug_info starts and ends (section offsets), read once."""
        if self._unit_starts is None:
            info = self.info
            data = info.data
            starts: list[int] = []
            ends: list[int] = []
            size = info.end - info.start
            offset = 0
            while offset + 11 <= size:
                (length,) = _U32.unpack_from(data, info.start + offset)
                header = 4
                if length == 0xFFFFFFFF:
                    (length,) = _U64.unpack_from(data, info.start + offset + 4)
                    header = 12
                elif length >= 0xFFFFFFF0:
                    break
                end = offset + header + length
                if end > size:
                    break
                starts.append(offset)
                ends.append(end)
                offset = end
            self._unit_starts = starts
            self._unit_ends = ends
        return self._unit_starts, self._unit_ends

    def unit_offsets(self) -> list[int]:
        """Where every unit of .debug_info starts (section offsets)."""
        return self._index_units()[0]

    def package_unit(self, dwo_id: int) -> dict[int, int] | None:
        """The contributions (DW_SECT_* -> offset) of a package's unit ``dwo_id``, or None."""
        if self._package is None:
            self._package = {}
            try:  # noqa: SIM105 (as above)
                self._package = _read_cu_index(self.section(".debug_cu_index"))
            except Exception:  # not a package, or a damaged index
                pass
        return self._package.get(dwo_id)

    def unit(self, offset: int) -> _Unit:
        """The unit whose header starts at section offset ``offset``."""
        unit = self._units.get(offset, _UNSET)
        if unit is _UNSET:
            self._units[offset] = None  # a damaged unit is read once
            unit = self._units[offset] = _Unit(self, offset)
        if unit is None:
            raise _Malformed(f"the unit at {offset:#x} cannot be read")
        return unit  # type: ignore[return-value]

    def unit_containing(self, offset: int) -> _Unit:
        """The unit that holds the entry at section offset ``offset``."""
        starts, ends = self._index_units()
        index = bisect_right(starts, offset) - 1
        if index < 0 or offset >= ends[index]:
            raise _Malformed(f"no unit holds offset {offset:#x}")
        return self.unit(starts[index])

    def unit_for_pc(self, pc: int) -> _Unit | None:
        """The compile unit whose code holds ``pc``: by .debug_aranges, else by units' ranges."""
        for index in (self._arange_index, self._unit_range_index):
            starts, ends, units = index()
            at = bisect_right(starts, pc) - 1
            # Entries may overlap (folded code): the few before may hold pc too.
            for candidate in range(at, max(at - 8, -1), -1):
                if pc < ends[candidate]:
                    try:
                        unit = self.unit(units[candidate])
                    except Exception:  # a damaged unit, or a wrong offset in .debug_aranges
                        continue
                    if unit.tag in (_TAG_COMPILE_UNIT, _TAG_SKELETON_UNIT):
                        return unit
        return None

    def _arange_index(self) -> tuple[list[int], list[int], list[int]]:
        if self._aranges is None:
            self._aranges = ([], [], [])
            try:  # noqa: SIM105 (contextlib is not imported on the path of `redhand stack`)
                self._aranges = _read_aranges(self.section(".debug_aranges"))
            except Exception:  # no .debug_aranges, or a damaged one: units' own ranges
                pass
        return self._aranges

    def _unit_range_index(self) -> tuple[list[int], list[int], list[int]]:
        """Every compile unit's ranges, sorted: for files without (complete) .debug_aranges."""
        if self._unit_ranges is None:
            rows: list[tuple[int, int, int]] = []
            for offset in self._index_units()[0]:
                try:
                    unit = self.unit(offset)
                    if unit.tag not in (_TAG_COMPILE_UNIT, _TAG_SKELETON_UNIT):
                        continue
                    rows += [(low, high, offset) for low, high in unit.code_ranges(unit.attributes)]
                except Exception:  # one damaged unit hides only its own code
                    continue
            rows.sort()
            self._unit_ranges = ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
        return self._unit_ranges

    # -- the alternate file -----------------------------------------------------

    def alt(self) -> _DwarfFile | None:
        """dwz's alternate (supplementary) file, opened once; None when it cannot be found."""
        if self._alt is _UNSET:
            self._alt = None
            try:  # noqa: SIM105 (as above)
                self._alt = self._find_alt()
            except Exception:  # a damaged link: references into it give no names
                pass
        return self._alt  # type: ignore[return-value]

    def _find_alt(self) -> _DwarfFile | None:
        elf = self.elf
        section = elf.get_section_by_name(".gnu_debugaltlink")
        if section is not None:
            data = elf.section_data(section)
            nul = data.index(b"\0")
            name, build_id = os.fsdecode(data[:nul]), data[nul + 1 :].hex()
        else:
            section = elf.get_section_by_name(".debug_sup")
            if section is None:
                return None
            data = elf.section_data(section)  # version, is_supplementary, name, checksum
            nul = data.index(b"\0", 3)
            name = os.fsdecode(data[3:nul])
            length, position = _uleb(data, nul + 1)
            build_id = data[position : position + length].hex()
        for candidate in alternate_file_candidates(self.path, name, build_id, self.debug_dirs):
            found = _open(candidate, self.debug_dirs)
            if (
                found is not None
                and found is not self
                and (not build_id or found.elf.build_id == build_id)
            ):
                return found
        return None

    # -- answers ----------------------------------------------------------------

    def inline_names(self, pc: int) -> list[tuple[str | None, str | None]] | None:
        """See the module's :func:`inline_names` (this one raises on damaged DWARF)."""
        unit = self.unit_for_pc(pc)
        if unit is not None and unit.skeleton:
            unit = unit.split_unit()
        if unit is None:
            return None
        nest = _nest(unit, pc)
        if not nest or nest[0][0] != _TAG_SUBPROGRAM:
            return None
        names: list[tuple[str | None, str | None]] = []
        for tag, offset, attributes in reversed(nest[1:]):
            if tag != _TAG_INLINED_SUBROUTINE:
                return None  # a function nested in a function: not what drgn counts
            cache = unit.file.names
            found = cache.get(offset)
            if found is None:
                found = _names(unit, offset, attributes)
                if len(cache) >= _MAX_NAMES:
                    cache.clear()
                cache[offset] = found
            names.append(found)
        return names

    def scopes(self, unit: _Unit, offset: int) -> list[str] | None:
        """The names of the scopes around the entry at ``offset``, outermost first (cached)."""
        found = self._scopes.get(offset, _UNSET)
        if found is _UNSET:
            if len(self._scopes) >= _MAX_NAMES:
                self._scopes.clear()
            found = self._scopes[offset] = _scopes(unit, offset)
        return found  # type: ignore[return-value]


class _Unit:
    """One unit of .debug_info: its header, abbreviations and the bases its DIE sets.

    A unit of a .dwo file or a .dwp package (split DWARF) is made with its
    ``skeleton``, the unit of the binary that points to it: its addresses are
    in the binary's .debug_addr, its DWARF 4 range lists in the binary's
    .debug_ranges; in a package, ``contributions`` (section id -> offset, from
    .debug_cu_index) say where its parts of the package's sections start.
    """

    def __init__(
        self,
        file: _DwarfFile,
        offset: int,
        skeleton: _Unit | None = None,
        contributions: dict[int, int] | None = None,
    ) -> None:
        self.file = file
        self.offset = offset
        """Where the header starts (section offset)."""
        info = file.info
        data = info.data
        position = info.start + offset
        (length,) = _U32.unpack_from(data, position)
        position += 4
        offset_size = 4
        if length == 0xFFFFFFFF:
            (length,) = _U64.unpack_from(data, position)
            position += 8
            offset_size = 8
        self.end = position + length
        """Where the unit ends (a position in ``file.info.data``)."""
        if self.end > info.end:
            raise _Malformed("unit past the end of .debug_info")
        (version,) = _U16.unpack_from(data, position)
        position += 2
        unit_type = 1  # DW_UT_compile
        self.dwo_id: int | None = None
        if version >= 5:
            unit_type, address_size = data[position], data[position + 1]
            abbrev_offset = int.from_bytes(
                data[position + 2 : position + 2 + offset_size], "little"
            )
            position += 2 + offset_size
            if unit_type in (4, 5):  # DW_UT_skeleton, DW_UT_split_compile: dwo_id
                (self.dwo_id,) = _U64.unpack_from(data, position)
                position += 8
            elif unit_type in (2, 6):  # DW_UT_type, DW_UT_split_type: signature, type offset
                position += 8 + offset_size
        elif 2 <= version <= 4:
            abbrev_offset = int.from_bytes(data[position : position + offset_size], "little")
            address_size = data[position + offset_size]
            position += offset_size + 1
        else:
            raise _Malformed(f"DWARF version {version}")
        if address_size != 8 or version > 5:
            raise _Malformed(f"DWARF {version} with {address_size}-byte addresses")
        contributions = contributions or {}
        self.version = version
        self.offset_size = offset_size
        self.abbrevs = file.abbrevs(
            abbrev_offset + contributions.get(_SECT_ABBREV, 0), address_size, offset_size
        )
        # Split units have no bases of their own: their tables start after
        # the headers of their contributions (DWARF 4's GNU tables have none).
        self.str_offsets_base = (8 if version >= 5 or not file.dwo else 0) + contributions.get(
            _SECT_STR_OFFSETS, 0
        )
        self.rnglists_offset = contributions.get(_SECT_RNGLISTS, 0) if version >= 5 else 0
        """Where the unit's part of .debug_rnglists starts (in a package)."""
        self.rnglists_base = 12 + self.rnglists_offset
        self.addr_file: _DwarfFile = file if skeleton is None else skeleton.addr_file
        """The file whose .debug_addr holds the unit's addresses."""
        self.addr_base: int = 8 if skeleton is None else skeleton.addr_base
        self.ranges_file = file if skeleton is None else skeleton.file
        """The file whose .debug_ranges holds the unit's DWARF 4 range lists."""
        self.ranges_base: int = 0 if skeleton is None else skeleton.split_ranges_base
        """What DWARF 4 range list offsets are relative to (a split unit's)."""
        self.split_ranges_base: int = 0
        """A DWARF 4 skeleton's DW_AT_GNU_ranges_base: its split unit's ``ranges_base``."""
        self.base: int = 0 if skeleton is None else skeleton.base
        """The unit's base address (its DW_AT_low_pc) for range lists."""
        self.language: int | None = None
        self.tag = 0
        self.attributes: _Attributes = {}
        self.children: int | None = None
        """Where the unit DIE's children start (a position), or None without children."""
        self.skeleton = False
        """Whether the unit is a skeleton: its entries are in a .dwo file or a .dwp package."""
        self._functions: tuple[list[int], list[int], list[int]] | None = None
        self._split: object = _UNSET
        code, position = _uleb(data, position)
        if code == 0:
            return
        tag, has_children, plan = self.abbrevs[code][:3]
        attributes, position = _attributes(data, position, plan, self.end)
        self.tag = tag
        self.attributes = attributes
        self.children = position if has_children else None
        # Bases first: the unit's own DW_AT_low_pc may be an index into .debug_addr.
        for attribute, name in (
            (_AT_STR_OFFSETS_BASE, "str_offsets_base"),
            (_AT_ADDR_BASE, "addr_base"),
            (_AT_GNU_ADDR_BASE, "addr_base"),
            (_AT_RNGLISTS_BASE, "rnglists_base"),
            (_AT_GNU_RANGES_BASE, "split_ranges_base"),
        ):
            if attribute in attributes and skeleton is None:
                setattr(self, name, attributes[attribute][1])
        language = attributes.get(_AT_LANGUAGE)
        self.language = None if language is None else language[1]
        self.skeleton = not file.dwo and (
            unit_type == 4
            or tag == _TAG_SKELETON_UNIT
            or _AT_DWO_NAME in attributes
            or _AT_GNU_DWO_NAME in attributes
        )
        if self.dwo_id is None and _AT_GNU_DWO_ID in attributes:
            self.dwo_id = attributes[_AT_GNU_DWO_ID][1]
        low = attributes.get(_AT_LOW_PC)
        if low is not None and skeleton is None:
            self.base = self.address(*low)

    def split_unit(self) -> _Unit | None:
        """The split unit of this skeleton (opened once); None when it cannot be found."""
        if self._split is _UNSET:
            self._split = None
            try:  # noqa: SIM105 (as above)
                self._split = self._find_split()
            except Exception:  # a damaged or missing .dwo: drgn's names stay
                pass
        return self._split  # type: ignore[return-value]

    def _find_split(self) -> _Unit | None:
        """The split unit: in the package ``FILE.dwp`` (like gdb), else in the .dwo file."""
        if self.dwo_id is None:
            return None
        debug_dirs = self.file.debug_dirs
        path = self.file.path
        for package in dict.fromkeys((path + ".dwp", os.path.realpath(path) + ".dwp")):
            found = _open(package, debug_dirs, dwo=True)
            contributions = None if found is None else found.package_unit(self.dwo_id)
            if found is not None and contributions is not None:
                unit = _Unit(found, contributions[_SECT_INFO], self, contributions)
                return unit if unit.dwo_id in (None, self.dwo_id) else None
        name_value = self.attributes.get(_AT_DWO_NAME) or self.attributes.get(_AT_GNU_DWO_NAME)
        name = None if name_value is None else self.string(*name_value)
        if not name:
            return None
        folder_value = self.attributes.get(_AT_COMP_DIR)
        folder = None if folder_value is None else self.string(*folder_value)
        candidates = [os.path.join(folder or "", name)]
        for directory in (os.path.dirname(path), os.path.dirname(os.path.realpath(path))):
            candidates.append(os.path.join(directory, os.path.basename(name)))
        for candidate in dict.fromkeys(candidates):
            found = _open(candidate, debug_dirs, dwo=True)
            if found is None:
                continue
            for offset in found.unit_offsets():
                unit = _Unit(found, offset, self)
                if unit.dwo_id == self.dwo_id:
                    return unit
        return None

    def address(self, form: int, value: int) -> int:
        """The address an attribute of an address form says."""
        if form == _FORM_ADDR:
            return value
        section = self.addr_file.section(".debug_addr")
        position = section.start + self.addr_base + value * 8
        if position + 8 > section.end:
            raise _Malformed("address index past .debug_addr")
        result: int = _U64.unpack_from(section.data, position)[0]
        return result

    def string(self, form: int, value: int) -> str | None:
        """The string an attribute of a string form says; None for other forms."""
        file = self.file
        if form == _FORM_STRING:
            section = file.info
            return _cstring(section, value - section.start)
        if form == _FORM_STRP:
            return _cstring(file.section(".debug_str"), value)
        if form == _FORM_LINE_STRP:
            return _cstring(file.section(".debug_line_str"), value)
        if form in _STRX_FORMS:
            offsets = file.section(".debug_str_offsets")
            size = self.offset_size
            position = offsets.start + self.str_offsets_base + value * size
            if position + size > offsets.end:
                raise _Malformed("string index past .debug_str_offsets")
            offset = int.from_bytes(offsets.data[position : position + size], "little")
            return _cstring(file.section(".debug_str"), offset)
        if form in (_FORM_GNU_STRP_ALT, _FORM_STRP_SUP):
            alt = file.alt()
            return None if alt is None else _cstring(alt.section(".debug_str"), value)
        return None

    def reference(self, form: int, value: int) -> tuple[_DwarfFile, int] | None:
        """The file and .debug_info offset a reference points to; None if it cannot be followed."""
        if form in _UNIT_REFERENCES:
            return self.file, self.offset + value
        if form == _FORM_REF_ADDR:
            return self.file, value
        if form in _ALT_REFERENCES:
            alt = self.file.alt()
            return None if alt is None else (alt, value)
        return None  # DW_FORM_ref_sig8 (a type unit), or not a reference

    def functions(self) -> tuple[list[int], list[int], list[int]]:
        """The index of the unit's outermost entries with code (see :func:`_index_functions`)."""
        if self._functions is None:
            self._functions = _index_functions(self)
        return self._functions

    def contains(self, attributes: _Attributes, pc: int) -> bool | None:
        """Whether an entry's ranges hold ``pc``; None when it has no ranges."""
        ranges = attributes.get(_AT_RANGES)
        if ranges is not None:
            return any(low <= pc < high for low, high in self.range_list(*ranges))
        low = attributes.get(_AT_LOW_PC)
        high = attributes.get(_AT_HIGH_PC)
        if low is None or high is None:
            return None
        start = self.address(*low)
        end = self.address(*high) if high[0] in _ADDRESS_FORMS else start + high[1]
        return start <= pc < end

    def code_ranges(self, attributes: _Attributes) -> list[tuple[int, int]]:
        """An entry's ranges (the unit's own code, for the unit's attributes)."""
        if _AT_RANGES in attributes:
            return self.range_list(*attributes[_AT_RANGES])
        low = attributes.get(_AT_LOW_PC)
        high = attributes.get(_AT_HIGH_PC)
        if low is None or high is None:
            return []
        start = self.address(*low)
        end = self.address(*high) if high[0] in _ADDRESS_FORMS else start + high[1]
        return [(start, end)]

    def range_list(self, form: int, value: int) -> list[tuple[int, int]]:
        """The ranges a DW_AT_ranges value names (.debug_ranges, or .debug_rnglists in DWARF 5)."""
        if self.version < 5:
            section = self.ranges_file.section(".debug_ranges")
            return _ranges_v4(section, value + self.ranges_base, self.base)
        section = self.file.section(".debug_rnglists")
        if form != _FORM_RNGLISTX:
            value += self.rnglists_offset
        else:
            size = self.offset_size
            position = section.start + self.rnglists_base + value * size
            if position + size > section.end:
                raise _Malformed("range list index past .debug_rnglists")
            value = self.rnglists_base + int.from_bytes(
                section.data[position : position + size], "little"
            )
        return _rnglists(self, section, value)


# -- reading ----------------------------------------------------------------------


def _uleb(data: _Buffer, position: int) -> tuple[int, int]:
    """An unsigned LEB128 number at ``position``, and where it ends."""
    byte = data[position]
    position += 1
    if byte < 0x80:
        return byte, position
    result = byte & 0x7F
    shift = 7
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift > 70:  # past 64 bits: damaged data (and a long run would cost O(n^2))
            raise _Malformed("LEB128 number too long")


def _sleb(data: _Buffer, position: int) -> tuple[int, int]:
    """A signed LEB128 number at ``position``, and where it ends."""
    result = 0
    shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                result -= 1 << shift
            return result, position
        if shift > 70:
            raise _Malformed("LEB128 number too long")


def _cstring(section: _Section, offset: int) -> str:
    """The NUL-terminated string at section offset ``offset``."""
    start = section.start + offset
    if offset < 0 or start >= section.end:
        raise _Malformed("string past its section")
    end = section.data.find(b"\0", start, section.end)
    if end < 0:
        raise _Malformed("unterminated string")
    return section.data[start:end].decode("utf-8", "replace")


_FIXED_SIZES: dict[tuple[int, int], dict[int, int]] = {}


def _fixed_sizes(address_size: int, offset_size: int) -> dict[int, int]:
    """Form -> size in bytes, for the forms whose size the unit's header fixes."""
    key = (address_size, offset_size)
    sizes = _FIXED_SIZES.get(key)
    if sizes is None:
        sizes = _FIXED_SIZES[key] = {
            _FORM_ADDR: address_size,
            _FORM_DATA1: 1,
            _FORM_REF1: 1,
            _FORM_FLAG: 1,
            _FORM_STRX1: 1,
            _FORM_ADDRX1: 1,
            _FORM_DATA2: 2,
            _FORM_REF2: 2,
            _FORM_STRX2: 2,
            _FORM_ADDRX2: 2,
            _FORM_STRX3: 3,
            _FORM_ADDRX3: 3,
            _FORM_DATA4: 4,
            _FORM_REF4: 4,
            _FORM_STRX4: 4,
            _FORM_ADDRX4: 4,
            _FORM_REF_SUP4: 4,
            _FORM_DATA8: 8,
            _FORM_REF8: 8,
            _FORM_REF_SIG8: 8,
            _FORM_REF_SUP8: 8,
            _FORM_DATA16: 16,
            _FORM_STRP: offset_size,
            _FORM_SEC_OFFSET: offset_size,
            _FORM_LINE_STRP: offset_size,
            _FORM_STRP_SUP: offset_size,
            _FORM_GNU_REF_ALT: offset_size,
            _FORM_GNU_STRP_ALT: offset_size,
            # DWARF 2's DW_FORM_ref_addr is address-sized; redhand reads only
            # 8-byte addresses, where DWARF 2 from GCC has 4-byte offsets too.
            _FORM_REF_ADDR: offset_size,
            _FORM_FLAG_PRESENT: 0,
            _FORM_IMPLICIT_CONST: 0,
        }
    return sizes


def _read_abbrevs(section: _Section, offset: int, sizes: dict[int, int]) -> dict[int, _Abbrev]:
    """The abbreviation table at ``offset``: code -> :data:`_Abbrev`.

    For stepping over entries without decoding them: ``size`` is the size of
    the attribute values when every form has a fixed size (else -1), and
    ``sibling at`` where the DW_AT_sibling value starts among them when the
    values before it have fixed sizes (else -1), ``form`` its form; ``has
    ranges`` says whether the entries have DW_AT_low_pc or DW_AT_ranges.
    """
    data = section.data
    position = section.start + offset
    end = section.end
    table: dict[int, _Abbrev] = {}
    while position < end:
        code, position = _uleb(data, position)
        if code == 0:
            return table
        tag, position = _uleb(data, position)
        has_children = data[position] != 0
        position += 1
        plan: list[tuple[int, int, int, int]] = []
        size = 0
        sibling_at = sibling_form = -1
        while position < end:
            attribute, position = _uleb(data, position)
            form, position = _uleb(data, position)
            if attribute == 0 and form == 0:
                break
            constant = 1 if form == _FORM_FLAG_PRESENT else 0
            if form == _FORM_IMPLICIT_CONST:
                constant, position = _sleb(data, position)
            kept = attribute if attribute in _KEPT else 0
            fixed = sizes.get(form, -1)
            plan.append((kept, form, fixed, constant))
            if size >= 0:
                if attribute == _AT_SIBLING and sibling_at < 0 and fixed > 0:
                    sibling_at, sibling_form = size, form
                size = size + fixed if fixed >= 0 else -1
        has_ranges = any(kept in (_AT_LOW_PC, _AT_RANGES) for kept, _, _, _ in plan)
        table[code] = (tag, has_children, tuple(plan), size, sibling_at, sibling_form, has_ranges)
    raise _Malformed("abbreviation table past .debug_abbrev")


def _attributes(data: _Buffer, position: int, plan: _Plan, end: int) -> tuple[_Attributes, int]:
    """The kept attributes of the entry whose values start at ``position``, and where it ends."""
    attributes: _Attributes = {}
    for attribute, form, size, constant in plan:
        if size >= 0:
            if attribute:
                if size:
                    value = int.from_bytes(data[position : position + size], "little")
                else:
                    value = constant
                attributes[attribute] = (form, value)
            position += size
            continue
        if form in _ULEB_FORMS:
            value, position = _uleb(data, position)
        elif form == _FORM_SDATA:
            value, position = _sleb(data, position)
        elif form == _FORM_STRING:
            value = position
            nul = data.find(b"\0", position, end)
            if nul < 0:
                raise _Malformed("unterminated string")
            position = nul + 1
        elif form in (_FORM_EXPRLOC, _FORM_BLOCK):
            length, position = _uleb(data, position)
            value = 0
            position += length
        elif form == _FORM_BLOCK1:
            value = 0
            position += 1 + data[position]
        elif form == _FORM_BLOCK2:
            value = 0
            position += 2 + _U16.unpack_from(data, position)[0]
        elif form == _FORM_BLOCK4:
            value = 0
            position += 4 + _U32.unpack_from(data, position)[0]
        elif form == _FORM_INDIRECT:
            form, position = _uleb(data, position)
            if form in (_FORM_INDIRECT, _FORM_IMPLICIT_CONST):
                raise _Malformed("DW_FORM_indirect to itself or to an implicit constant")
            # The address and offset sizes are the ones the unit's plan was made for.
            found, position = _attributes(
                data, position, ((attribute, form, _INDIRECT_SIZES.get(form, -1), 0),), end
            )
            attributes.update(found)
            continue
        else:
            raise _Malformed(f"unknown form {form:#x}")
        if attribute:
            attributes[attribute] = (form, value)
    if position > end:
        raise _Malformed("entry past the end of its unit")
    return attributes, position


# DW_FORM_indirect's forms: the sizes of 8-byte addresses and 4-byte offsets
# (64-bit DWARF with DW_FORM_indirect to an offset form is not read right).
_INDIRECT_SIZES = _fixed_sizes(8, 4)


def _read_aranges(section: _Section) -> tuple[list[int], list[int], list[int]]:
    """.debug_aranges as sorted (starts, ends, unit offsets)."""
    data = section.data
    position = section.start
    end = section.end
    rows: list[tuple[int, int, int]] = []
    while position + 16 <= end:
        set_start = position
        (length,) = _U32.unpack_from(data, position)
        position += 4
        offset_size = 4
        if length == 0xFFFFFFFF:
            (length,) = _U64.unpack_from(data, position)
            position += 8
            offset_size = 8
        set_end = position + length
        if set_end > end or length < 4:
            break
        version = _U16.unpack_from(data, position)[0]
        unit = int.from_bytes(data[position + 2 : position + 2 + offset_size], "little")
        position += 2 + offset_size
        address_size, segment_size = data[position], data[position + 1]
        position += 2
        if version == 2 and address_size == 8 and segment_size == 0:
            position = set_start + (-(-(position - set_start) // 16) * 16)  # tuples are aligned
            count = (set_end - position) // 16
            pairs = _U64_PAIR.iter_unpack(data[position : position + count * 16])
            for start, size in pairs:
                if start == 0 and size == 0:
                    break
                if size:
                    rows.append((start, start + size, unit))
        position = set_end
    rows.sort()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _read_cu_index(section: _Section) -> dict[int, dict[int, int]]:
    """A package's .debug_cu_index (DWARF 5, 7.3.5; GNU's version 2 alike): dwo_id -> parts."""
    data = section.data
    start = section.start
    version, columns, units, slots = struct.unpack_from("<IIII", data, start)
    if version & 0xFFFF not in (2, 5) or columns > 64 or slots > (section.end - start) // 12:
        raise _Malformed(f".debug_cu_index version {version}")
    signatures = start + 16
    rows = signatures + 8 * slots
    table = rows + 4 * slots  # the section ids, then one row of offsets per unit
    ids = struct.unpack_from(f"<{columns}I", data, table)
    index: dict[int, dict[int, int]] = {}
    for slot in range(slots):
        (row,) = _U32.unpack_from(data, rows + 4 * slot)
        if row == 0 or row > units:
            continue
        (signature,) = _U64.unpack_from(data, signatures + 8 * slot)
        offsets = struct.unpack_from(f"<{columns}I", data, table + 4 * columns * row)
        index[signature] = dict(zip(ids, offsets, strict=True))
    return index


def _ranges_v4(section: _Section, offset: int, base: int) -> list[tuple[int, int]]:
    """A range list of .debug_ranges (DWARF 2 to 4)."""
    data = section.data
    position = section.start + offset
    result: list[tuple[int, int]] = []
    while position + 16 <= section.end and len(result) < _MAX_RANGES:
        start, end = _U64_PAIR.unpack_from(data, position)
        position += 16
        if start == 0 and end == 0:
            return result
        if start == 0xFFFFFFFFFFFFFFFF:
            base = end
        else:
            result.append((base + start, base + end))
    raise _Malformed("range list past .debug_ranges")


def _rnglists(unit: _Unit, section: _Section, offset: int) -> list[tuple[int, int]]:
    """A range list of .debug_rnglists (DWARF 5), the DW_RLE_* entries of 2.17.3."""
    data = section.data
    position = section.start + offset
    base = unit.base
    result: list[tuple[int, int]] = []
    while position < section.end and len(result) < _MAX_RANGES:
        kind = data[position]
        position += 1
        if kind == 0:  # end_of_list
            return result
        if kind == 1:  # base_addressx
            index, position = _uleb(data, position)
            base = unit.address(_FORM_ADDRX, index)
            continue
        if kind == 5:  # base_address
            (base,) = _U64.unpack_from(data, position)
            position += 8
            continue
        if kind == 2:  # startx_endx
            first, position = _uleb(data, position)
            last, position = _uleb(data, position)
            start, end = unit.address(_FORM_ADDRX, first), unit.address(_FORM_ADDRX, last)
        elif kind == 3:  # startx_length
            first, position = _uleb(data, position)
            length, position = _uleb(data, position)
            start = unit.address(_FORM_ADDRX, first)
            end = start + length
        elif kind == 4:  # offset_pair
            first, position = _uleb(data, position)
            last, position = _uleb(data, position)
            start, end = base + first, base + last
        elif kind == 6:  # start_end
            start, end = _U64_PAIR.unpack_from(data, position)
            position += 16
        elif kind == 7:  # start_length
            (start,) = _U64.unpack_from(data, position)
            length, position = _uleb(data, position + 8)
            end = start + length
        else:
            raise _Malformed(f"range list entry kind {kind}")
        result.append((start, end))
    raise _Malformed("range list past .debug_rnglists")


# -- walking entries ----------------------------------------------------------------


def _entry(unit: _Unit, position: int) -> tuple[int, bool, _Attributes, int] | None:
    """(tag, has children, attributes, end) of the entry at ``position``; None for a 0 code."""
    data = unit.file.info.data
    code, position = _uleb(data, position)
    if code == 0:
        return None
    tag, has_children, plan = unit.abbrevs[code][:3]
    attributes, position = _attributes(data, position, plan, unit.end)
    return tag, has_children, attributes, position


def _sibling(unit: _Unit, form: int, value: int, position: int) -> int | None:
    """Where a DW_AT_sibling value points (a position after ``position``), or None."""
    if form in _UNIT_REFERENCES:
        target = unit.file.info.start + unit.offset + value
    elif form == _FORM_REF_ADDR:
        target = unit.file.info.start + value
    else:
        return None
    return target if position < target <= unit.end else None


def _step(unit: _Unit, data: _Buffer, position: int, abbrev: _Abbrev) -> tuple[int, bool]:
    """Past the entry whose values start at ``position``: (where, whether past its children too).

    Its values are stepped over without being decoded where the abbreviation
    allows (fixed sizes, a DW_AT_sibling at a fixed place); ``False`` means
    the entry's children start there and still have to be stepped over.
    """
    _tag, has_children, plan, size, sibling_at, sibling_form, _ranges = abbrev
    if not has_children:
        if size >= 0:
            return position + size, True
        return _attributes(data, position, plan, unit.end)[1], True
    if sibling_at >= 0:
        start = position + sibling_at
        value = int.from_bytes(data[start : start + _INDIRECT_SIZES[sibling_form]], "little")
        target = _sibling(unit, sibling_form, value, position)
        if target is not None:
            return target, True
    attributes, position = _attributes(data, position, plan, unit.end)
    sibling = attributes.get(_AT_SIBLING)
    if sibling is not None:
        target = _sibling(unit, sibling[0], sibling[1], position)
        if target is not None:
            return target, True
    return position, False


def _skip_children(unit: _Unit, position: int) -> int:
    """Where the children that start at ``position`` end (after their 0 code)."""
    data = unit.file.info.data
    abbrevs = unit.abbrevs
    end = unit.end
    depth = 1
    while position < end:
        code, position = _uleb(data, position)
        if code == 0:
            depth -= 1
            if depth == 0:
                return position
            continue
        position, past = _step(unit, data, position, abbrevs[code])
        if not past:
            depth += 1
            if depth > _MAX_DEPTH:
                raise _Malformed("entries nested too deep")
    raise _Malformed("children past the end of their unit")


def _index_functions(unit: _Unit) -> tuple[list[int], list[int], list[int]]:
    """The unit's outermost entries with code, as sorted (lows, highs, positions).

    One row per range of each subprogram (or block) with ranges that is not
    inside another one; namespaces and modules are entered, for functions
    defined inside them; classes, structures and unions are not (GCC, Clang
    and rustc define member functions outside them, through
    DW_AT_specification), nor anything else.
    """
    data = unit.file.info.data
    abbrevs = unit.abbrevs
    position = unit.children
    rows: list[tuple[int, int, int]] = []
    if position is None:
        return [], [], []
    end = unit.end
    depth = 0
    while position < end:
        start = position
        code = data[position]  # _uleb, inline for the usual one-byte code
        if code < 0x80:
            position += 1
        else:
            code, position = _uleb(data, position)
        if code == 0:
            if depth == 0:
                break  # the end of the unit's entries
            depth -= 1
            continue
        abbrev = abbrevs[code]
        tag = abbrev[0]
        if not abbrev[1] and abbrev[3] >= 0 and tag not in _CODE_TAGS:
            position += abbrev[3]  # _step, inline for the usual leaf of fixed size
            continue
        if tag in _ENTERED or (tag in _CODE_TAGS and not abbrev[6] and tag not in _FUNCTION_TAGS):
            # A namespace; or a block without ranges, which may still hold
            # blocks that have them.
            position = _attributes(data, position, abbrev[2], end)[1]
            if abbrev[1]:
                depth += 1
                if depth > _MAX_DEPTH:
                    raise _Malformed("entries nested too deep")
            continue
        if tag in _CODE_TAGS and abbrev[6]:
            attributes = _attributes(data, position, abbrev[2], end)[0]
            for low, high in unit.code_ranges(attributes):
                if low < high:
                    rows.append((low, high, start))
        # Not code, a function without code (a declaration, an abstract
        # instance), or a function, whose inside _nest reads: stepped over.
        position, past = _step(unit, data, position, abbrev)
        if not past:
            position = _skip_children(unit, position)
    rows.sort()
    return [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows]


def _nest(unit: _Unit, pc: int) -> list[tuple[int, int, _Attributes]]:
    """The subprogram and inlined-subroutine entries whose ranges hold ``pc``, outermost first.

    Each is (tag, section offset, attributes).  The outermost entry is found
    in the unit's index of functions; inside it, entries that do not hold
    the pc are stepped over (by DW_AT_sibling where they have one), and the
    walk ends when it leaves the innermost entry that holds the pc.
    """
    lows, highs, starts = unit.functions()
    at = bisect_right(lows, pc) - 1
    # Ranges may overlap (folded code): the few before may hold pc too.
    for candidate in range(at, max(at - 8, -1), -1):
        if pc < highs[candidate]:
            nest = _nest_in(unit, starts[candidate], pc)
            if nest:
                return nest
    return []


def _nest_in(unit: _Unit, position: int, pc: int) -> list[tuple[int, int, _Attributes]]:
    """:func:`_nest` inside the entry at ``position``."""
    info = unit.file.info
    data = info.data
    abbrevs = unit.abbrevs
    end = unit.end
    levels: list[bool] = []  # per open entry: whether it holds pc
    nest: list[tuple[int, int, _Attributes]] = []
    while position < end:
        start = position
        code = data[position]  # _uleb, inline for the usual one-byte code
        if code < 0x80:
            position += 1
        else:
            code, position = _uleb(data, position)
        if code == 0:
            if not levels or levels.pop():
                break  # the end of the innermost entry that holds pc
            continue
        abbrev = abbrevs[code]
        tag = abbrev[0]
        if tag not in _CODE_TAGS or (not abbrev[6] and tag in _FUNCTION_TAGS):
            # Not code, or a function without code (a declaration, an abstract instance).
            if not abbrev[1] and abbrev[3] >= 0:
                position += abbrev[3]  # _step, inline for the usual leaf of fixed size
            else:
                position, past = _step(unit, data, position, abbrev)
                if not past:
                    position = _skip_children(unit, position)
        else:
            attributes, position = _attributes(data, position, abbrev[2], end)
            inside = unit.contains(attributes, pc)
            if inside:
                if tag in _FUNCTION_TAGS:
                    nest.append((tag, start - info.start, attributes))
                if not abbrev[1]:
                    break  # a leaf that holds pc: the innermost
                levels.append(True)
                if len(levels) > _MAX_DEPTH:
                    raise _Malformed("entries nested too deep")
            elif inside is None and tag not in _FUNCTION_TAGS:
                # A block without ranges may still hold blocks that have them.
                if abbrev[1]:
                    levels.append(False)
            elif abbrev[1]:
                sibling = attributes.get(_AT_SIBLING)
                target = None if sibling is None else _sibling(unit, *sibling, position)
                position = target if target is not None else _skip_children(unit, position)
        if not levels:
            break  # the first entry, and it did not hold pc
    return nest


def _names(unit: _Unit, offset: int, attributes: _Attributes) -> tuple[str | None, str | None]:
    """(DW_AT_name, full name) of the function of the entry at ``offset`` (see the module doc).

    Like libdw's dwarf_attr_integrate, an attribute the entry lacks is looked
    for on its DW_AT_abstract_origin, else its DW_AT_specification, and so on.
    """
    c_unit = unit.language in _C_LANGUAGES
    linkage: str | None = None
    name: str | None = None
    ended = False  # whether the chain of references ended (not given up)
    for _ in range(_MAX_HOPS):
        if linkage is None and not c_unit:
            found = attributes.get(_AT_LINKAGE_NAME) or attributes.get(_AT_MIPS_LINKAGE_NAME)
            if found is not None:
                linkage = unit.string(*found)
        if name is None:
            found = attributes.get(_AT_NAME)
            if found is not None:
                name = unit.string(*found)
        if linkage is not None and name is not None:
            break
        link = attributes.get(_AT_ABSTRACT_ORIGIN) or attributes.get(_AT_SPECIFICATION)
        if link is None:
            ended = True
            break
        target = unit.reference(*link)
        if target is None:
            break
        file, offset = target
        if file is not unit.file or not unit.offset <= offset < unit.end - file.info.start:
            unit = file.unit_containing(offset)  # (a split unit's own unit is kept: its bases)
        found_entry = _entry(unit, file.info.start + offset)
        if found_entry is None:
            raise _Malformed(f"a reference to a null entry at {offset:#x}")
        attributes = found_entry[2]
    if linkage:
        from redhand.symbols.demangle import demangle

        full = demangle(linkage)
        if full != linkage:
            return name, full
        # Not a mangled name: an asm label (glibc's __GI_ aliases in C++), or
        # a name the demangler does not know; the DWARF name is the better one.
    if name is None or not ended:
        return name, None
    if c_unit:
        return name, name
    scopes = unit.file.scopes(unit, offset)
    if scopes is None:
        return name, None
    return name, "::".join([*scopes, name])


def _scopes(unit: _Unit, offset: int) -> list[str] | None:
    """The names of the namespaces, classes, structures and unions around an entry.

    Outermost first, up to the first enclosing entry that is not one of
    those; None when the entry cannot be reached, or a class around it has
    no name.
    """
    info = unit.file.info
    data = info.data
    abbrevs = unit.abbrevs
    target = info.start + offset
    position = unit.children
    if position is None:
        return None
    ancestors: list[tuple[int, _Attributes]] = []
    while position < target:
        code, values = _uleb(data, position)
        if code == 0:
            position = values
            if not ancestors:
                return None
            ancestors.pop()
            continue
        abbrev = abbrevs[code]
        position, past = _step(unit, data, values, abbrev)
        if (past and position <= target) or not abbrev[1]:
            continue  # the entry is not among these children (or is this very entry: no)
        attributes, position = _attributes(data, values, abbrev[2], unit.end)
        ancestors.append((abbrev[0], attributes))
        if len(ancestors) > _MAX_DEPTH:
            raise _Malformed("entries nested too deep")
    if position != target:
        return None
    names: list[str] = []
    for tag, attributes in reversed(ancestors):
        if tag not in _SCOPE_TAGS:
            break
        found_name = attributes.get(_AT_NAME)
        name = None if found_name is None else unit.string(*found_name)
        if name is None:
            if tag != _TAG_NAMESPACE:
                return None
            name = _ANONYMOUS_NAMESPACE
        names.append(name)
    names.reverse()
    return names


__all__ = ["inline_names"]
