"""Reading x86_64 ELF64 files: headers, sections, segments, symbols, notes, build-id.

Own code over :mod:`struct`, lazy: opening a file reads only its header.
"""

from __future__ import annotations

from redhand.elf import constants
from redhand.elf.file import (
    ElfFile,
    ElfSymbol,
    Note,
    Relocation,
    Section,
    Segment,
    SymbolColumns,
    SymbolTable,
)

__all__ = [
    "ElfFile",
    "ElfSymbol",
    "Note",
    "Relocation",
    "Section",
    "Segment",
    "SymbolColumns",
    "SymbolTable",
    "constants",
]
