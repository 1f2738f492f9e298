"""Data objects of a target by symbol name, and small typed reads of its memory.

:class:`~redhand.symbols.ModuleSymbols` indexes functions only; crash analysis
also needs a few variables (glibc's ``__abort_msg``).  They are looked up here
by name in a module's .dynsym, its .symtab, then the .symtab of its separate
debug file: the name is found in the string table first (one ``bytes.find``
per occurrence), so no table is decoded symbol by symbol.
"""

from __future__ import annotations

import struct

from redhand.errors import MemoryReadError, RedhandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.elf import ElfFile, SymbolTable
    from redhand.target.memory import Memory
    from redhand.target.module import Module

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _find_in_table(table: SymbolTable, name: str) -> int | None:
    """The st_value of the defined symbol called ``name`` in ``table``, or None."""
    wanted = name.encode() + b"\0"
    strtab = table.strtab
    offsets: set[int] = set()
    position = strtab.find(wanted)
    while position >= 0:
        offsets.add(position)
        position = strtab.find(wanted, position + 1)
    if not offsets:
        return None
    columns = table.columns()
    for index, st_name in enumerate(columns.st_name):
        if st_name in offsets and columns.st_shndx[index] != 0:
            return columns.st_value[index]
    return None


def data_symbol(module: Module, name: str) -> int | None:
    """The run-time address of the symbol ``name`` (any type) defined in ``module``, or None."""
    files: list[tuple[ElfFile, str]] = []
    elf = module.elf()
    if elf is not None:
        files += [(elf, ".dynsym"), (elf, ".symtab")]
    for file, section in files:
        found = _lookup(file, section, name)
        if found is not None:
            return module.bias + found
    symbols = module.symbols()
    debug = symbols.debug_elf if symbols is not None else None
    if debug is not None:
        found = _lookup(debug, ".symtab", name)
        if found is not None:
            return module.bias + found
    return None


def _lookup(file: ElfFile, section: str, name: str) -> int | None:
    try:
        table = file.get_symbol_table(section)
        return None if table is None else _find_in_table(table, name)
    except RedhandError:
        return None


def read_u32(memory: Memory, address: int) -> int | None:
    try:
        value: int = _U32.unpack(memory.read(address, 4))[0]
    except MemoryReadError:
        return None
    return value


def read_u64(memory: Memory, address: int) -> int | None:
    """The 64-bit word at ``address``, or None if it cannot be read."""
    if not 0 <= address <= 0xFFFF_FFFF_FFFF_FFF8:
        return None
    try:
        value: int = _U64.unpack(memory.read(address, 8))[0]
    except MemoryReadError:
        return None
    return value


def read_bytes(memory: Memory, address: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``address``: fewer when the end cannot be read (maybe none)."""
    while size > 0:
        try:
            return memory.read(address, size)
        except MemoryReadError:
            # Retry up to the next page boundary and below: the tail may be unmapped.
            boundary = ((address + size - 1) & ~0xFFF) - address
            size = boundary if 0 < boundary < size else size // 2
    return b""


def read_cstring(memory: Memory, address: int, limit: int = 4096) -> bytes | None:
    """The NUL-terminated bytes at ``address`` (at most ``limit``), or None if unreadable."""
    result = bytearray()
    while len(result) < limit:
        chunk = read_bytes(memory, address + len(result), min(256, limit - len(result)))
        if not chunk:
            break
        end = chunk.find(b"\0")
        if end >= 0:
            result += chunk[:end]
            return bytes(result)
        result += chunk
    return bytes(result) if result else None
