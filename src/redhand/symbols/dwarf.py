"""Source lines and inlined calls from DWARF, with drgn as the engine.

redhand unwinds; drgn only symbolizes: each module that has frames is added
to one ``drgn.Program`` per target (its ELF file and its separate debug file,
at its load address), and a pc is turned into its chain of source locations,
innermost inlined call first, the real function last.  drgn is never asked to
unwind or to read the target's memory.

drgn is imported on first use only.  When it cannot be imported, or a module
has no DWARF, there are simply no source locations: names still come from the
ELF symbol tables.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from redhand.target.module import VDSO, Module


class SourceLocation(NamedTuple):
    """One source location at a pc: the function (DWARF name) and where in it."""

    function: str | None
    file: str | None
    line: int | None
    column: int | None


class _Loaded(NamedTuple):
    program: Any  # a drgn.Program with this one module
    delta: int  # redhand's load bias minus drgn's: a pc minus delta is drgn's address


# One drgn Program per module file (at link-time addresses), shared by every
# target of this process: a second look at the same library parses nothing.
_PROGRAMS: dict[tuple[object, ...], tuple[Any, int] | None] = {}


class SourceLines:
    """The DWARF line and inline information of one target's modules, loaded lazily."""

    def __init__(self) -> None:
        self._drgn: Any = None
        self._program: Any = None
        self.problem: str | None = None
        """Why source lines are unavailable altogether (drgn missing), once known."""
        self._modules: dict[int, _Loaded | None] = {}
        self._next_id = 0

    def _program_or_none(self) -> Any:
        if self._program is None and self.problem is None:
            try:
                import drgn
            except ImportError as error:
                self.problem = (
                    f"source lines and inlined frames are unavailable: drgn cannot be imported "
                    f"({error}); install redhand[source]"
                )
                return None
            self._drgn = drgn
            self._program = True
        return self._program

    def _load(self, module: Module) -> _Loaded | None:
        key = id(module)
        if key in self._modules:
            return self._modules[key]
        self._modules[key] = None
        if self._program_or_none() is None or module.path == VDSO or module.open_path is None:
            return None
        try:
            symbols = module.symbols()
            debug_file = symbols.debug_file if symbols is not None else None
            bias = module.bias
            start, end = module.start - bias, module.end - bias
            stat = os.stat(module.open_path)
            file_key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, debug_file, start, end)
            cached = _PROGRAMS.get(file_key)
            if cached is None:
                cached = _PROGRAMS[file_key] = self._new_program(module, debug_file, start, end)
            self._modules[key] = cached and _Loaded(cached[0], bias - cached[1])
        except Exception:  # drgn raises many kinds on damaged or odd files
            return None
        return self._modules[key]

    def _new_program(
        self, module: Module, debug_file: str | None, start: int, end: int
    ) -> tuple[Any, int] | None:
        """A drgn Program holding only this module, at its link-time addresses."""
        drgn = self._drgn
        program = drgn.Program(drgn.host_platform)
        found = program.extra_module(module.path, 0, create=True)
        found.address_range = (start, end)
        found.try_file(module.open_path, force=True)
        if debug_file is not None and found.debug_file_status != drgn.ModuleFileStatus.HAVE:
            found.try_file(debug_file, force=True)
        if found.debug_file_status != drgn.ModuleFileStatus.HAVE:
            return None
        bias = found.debug_file_bias
        return None if bias is None else (program, bias)

    def locate(self, module: Module, address: int) -> list[SourceLocation] | None:
        """The source locations at ``address`` (a run-time address in ``module``).

        Innermost inlined call first, the real function last; None when the
        module has no usable DWARF for that address.
        """
        loaded = self._load(module)
        if loaded is None:
            return None
        try:
            found = loaded.program.source_location(address - loaded.delta)
        except (LookupError, ValueError, OverflowError):
            return None
        except Exception:  # a damaged DWARF unit: no lines for it, not a failed trace
            return None
        locations: list[SourceLocation] = []
        for location in found:
            try:
                name = location.name()
            except Exception:
                name = None
            locations.append(
                SourceLocation(
                    name,
                    location.filename or None,
                    location.line or None,
                    location.column or None,
                )
            )
        return locations or None


__all__ = ["SourceLines", "SourceLocation"]
