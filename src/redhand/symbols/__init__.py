"""Names for addresses: symbol tables, separate debug files, demangling."""

from __future__ import annotations

from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS, debug_file_candidates, find_debug_file
from redhand.symbols.demangle import demangle, demangle_ocaml, is_ocaml_marker, strip_version
from redhand.symbols.table import ModuleSymbols, Symbol, SymbolMatch, clear_cache

__all__ = [
    "DEFAULT_DEBUG_DIRS",
    "ModuleSymbols",
    "Symbol",
    "SymbolMatch",
    "clear_cache",
    "debug_file_candidates",
    "demangle",
    "demangle_ocaml",
    "find_debug_file",
    "is_ocaml_marker",
    "strip_version",
]
