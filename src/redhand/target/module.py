"""Modules: the ELF files mapped into a target, and where their names and CFI come from.

A module is found from the target's mappings (grouped by file), opened
lazily, and asked for symbols and call-frame information only when a frame
lands in it.  Everything expensive is cached per build-id by the layers below
(symbols, CFI), so a library shared by many processes is parsed once.
"""

from __future__ import annotations

import bisect
import os

from redhand.elf import ElfFile
from redhand.elf.constants import PF_R, PF_W, PF_X, PT_LOAD
from redhand.errors import RedhandError
from redhand.symbols import ModuleSymbols, SymbolMatch
from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS
from redhand.target.model import Mapping
from redhand.unwind.cfi import CfiTable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from typing import TypeVar

    _M = TypeVar("_M", bound=Mapping)

PAGE_MASK = ~0xFFF

VDSO = "[vdso]"


class Module:
    """One ELF file mapped into the target.

    ``path`` is the file's name as the target saw it (``[vdso]`` for the vdso).
    ``bias`` is the load bias: a pc minus the bias is the file's link-time
    address.  It is 0 for non-PIE executables.  ``open_path`` is where the file
    can be read now (for a live process, /proc/PID/map_files/..., which is the
    very file mapped even if it was deleted or replaced since).  ``problem``
    says why the file could not be used (unreadable, not ELF, ...), once known.
    (A plain class, not a dataclass: see :mod:`redhand._value` for why.)
    """

    def __init__(
        self,
        path: str,
        mappings: list[Mapping],
        open_path: str | None = None,
        loader: Callable[[], ElfFile | None] | None = None,
        debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
        problem: str | None = None,
    ) -> None:
        self.path = path
        self.mappings = mappings
        self.open_path = open_path
        self.loader = loader
        self.debug_dirs = debug_dirs
        self.problem = problem
        self._elf: ElfFile | None = None
        self._loaded = False
        self._bias: int | None = None
        self._symbols: ModuleSymbols | None = None
        self._symbols_loaded = False
        self._cfi: CfiTable | None = None
        self._cfi_loaded = False
        self._dwarf_file: str | None = None
        self._dwarf_file_loaded = False

    def __repr__(self) -> str:
        return (
            f"Module(path={self.path!r}, mappings={self.mappings!r}, "
            f"open_path={self.open_path!r}, problem={self.problem!r})"
        )

    @property
    def start(self) -> int:
        return self.mappings[0].start

    @property
    def end(self) -> int:
        return self.mappings[-1].end

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end

    def elf(self) -> ElfFile | None:
        """The ELF file, opened on first use; None (and ``problem`` set) if it cannot be."""
        if not self._loaded:
            self._loaded = True
            try:
                if self.loader is not None:
                    self._elf = self.loader()
                elif self.open_path is not None:
                    self._elf = ElfFile.open(self.open_path, display_path=self.path)
            except RedhandError as error:
                self.problem = str(error)
            except OSError as error:
                self.problem = f"{self.path}: {error.strerror or error}"
        return self._elf

    @property
    def build_id(self) -> str | None:
        elf = self.elf()
        return elf.build_id if elf is not None else None

    @property
    def bias(self) -> int:
        """The load bias, from the first mapping and the PT_LOAD that maps its file offset."""
        if self._bias is None:
            self._bias = self._compute_bias()
        return self._bias

    def _compute_bias(self) -> int:
        first = self.mappings[0]
        elf = self.elf()
        if elf is None:
            return first.start - first.offset
        try:
            for segment in elf.iter_segments():
                if segment.p_type == PT_LOAD and (segment.p_offset & PAGE_MASK) == first.offset:
                    return first.start - (segment.p_vaddr & PAGE_MASK)
        except RedhandError as error:
            self.problem = str(error)
        return first.start - first.offset

    def cfi(self) -> CfiTable | None:
        if not self._cfi_loaded:
            self._cfi_loaded = True
            elf = self.elf()
            if elf is not None:

                def debug_files() -> list[ElfFile]:
                    # Only asked when elf's own CFI has no answer for a pc.
                    symbols = self.symbols()
                    debug = symbols.debug_elf if symbols is not None else None
                    return [debug] if debug is not None else []

                try:
                    self._cfi = CfiTable.from_elf(elf, debug_files)
                except RedhandError as error:
                    self.problem = str(error)
        return self._cfi

    def symbols(self) -> ModuleSymbols | None:
        if not self._symbols_loaded:
            self._symbols_loaded = True
            elf = self.elf()
            if elf is not None:
                try:
                    self._symbols = ModuleSymbols(
                        elf,
                        file_path=self.open_path,
                        origin_path=None if self.path == VDSO else self.path,
                        debug_dirs=self.debug_dirs,
                    )
                except RedhandError as error:
                    self.problem = str(error)
        return self._symbols

    def dwarf_file(self) -> str | None:
        """The separate debug file that holds this module's DWARF; None when its own file does.

        The one whose symbol table was used, when there is one.  Otherwise, for
        a binary that kept its symbol table but not its DWARF (``strip
        --strip-debug`` or ``objcopy --only-keep-debug`` with a
        .gnu_debuglink), it is looked for now, in the same places and order.
        None too when there is none anywhere.
        """
        if not self._dwarf_file_loaded:
            self._dwarf_file_loaded = True
            symbols = self.symbols()
            found = symbols.debug_file if symbols is not None else None
            elf = self.elf()
            if found is None and elf is not None and self.path != VDSO:
                try:
                    has_dwarf = any(
                        elf.get_section_by_name(name) is not None
                        for name in (".debug_info", ".zdebug_info")
                    )
                except RedhandError:
                    has_dwarf = False
                if not has_dwarf:
                    from redhand.symbols.debugfile import find_debug_file

                    debug = find_debug_file(
                        elf, self.open_path, self.debug_dirs, origin_path=self.path
                    )
                    if debug is not None:
                        found = debug.path
                        debug.close()
            self._dwarf_file = found
        return self._dwarf_file

    def close(self) -> None:
        """Close the files opened for this module (a later use reopens nothing)."""
        if self._symbols is not None:
            self._symbols.close()
        if self._elf is not None:
            self._elf.close()

    def lookup(self, address: int) -> SymbolMatch | None:
        """The symbol at a run-time address, or None."""
        symbols = self.symbols()
        if symbols is None:
            return None
        try:
            return symbols.lookup(address - self.bias)
        except RedhandError as error:
            self.problem = str(error)
            return None


class ModuleMap:
    """The target's modules, found by address."""

    def __init__(self, modules: Iterable[Module]) -> None:
        self.modules = sorted(modules, key=lambda module: module.start)
        self._starts = [module.start for module in self.modules]

    def __iter__(self) -> Iterator[Module]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def find(self, address: int) -> Module | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0:
            module = self.modules[index]
            if address < module.end:
                return module
        return None


def group_file_mappings(mappings: Sequence[_M]) -> list[list[_M]]:
    """Consecutive mappings of one file, as the dynamic loader lays them out.

    A new group starts at a mapping of the file at offset 0 (or where the file
    changes: its path, or its inode where the source knows it).  Anonymous
    mappings between segments (.bss) do not split a group.
    """
    groups: list[list[_M]] = []
    current: list[_M] = []
    for mapping in mappings:
        if not mapping.is_file:
            continue
        same_file = (
            current and current[-1].path == mapping.path and current[-1].inode == mapping.inode
        )
        if same_file and mapping.offset != 0:
            current.append(mapping)
            continue
        if current:
            groups.append(current)
        current = [mapping]
    if current:
        groups.append(current)
    return groups


def segment_perms(flags: int) -> str:
    """A PT_LOAD's p_flags as the permissions of a private mapping (``r-xp``)."""
    return (
        ("r" if flags & PF_R else "-")
        + ("w" if flags & PF_W else "-")
        + ("x" if flags & PF_X else "-")
        + "p"
    )


def map_files_path(pid: int, mapping: Mapping) -> str:
    return f"/proc/{pid}/map_files/{mapping.start:x}-{mapping.end:x}"


def live_open_path(pid: int, mapping: Mapping) -> str:
    """Where to read a live process's mapped file.

    The path itself when it still names the same inode (cheap, and friendlier
    in messages); else /proc/PID/map_files/, which reaches deleted files and
    files in other mount namespaces.
    """
    path = mapping.path
    if path is not None and not path.endswith(" (deleted)"):
        try:
            if os.stat(path).st_ino == mapping.inode:
                return path
        except OSError:
            pass
    return map_files_path(pid, mapping)


def vdso_module(
    mapping: Mapping, read: Callable[[int, int], bytes], debug_dirs: Sequence[str]
) -> Module:
    """The vdso as a module: an ELF image that exists only in the target's memory.

    ``read(address, size)`` gives its bytes (from the live process, or from a
    core), read when a frame first lands in it.
    """

    def load() -> ElfFile:
        return ElfFile.from_bytes(read(mapping.start, mapping.size), name=VDSO)

    return Module(path=VDSO, mappings=[mapping], loader=load, debug_dirs=debug_dirs)
