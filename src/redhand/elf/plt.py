"""PLT stubs: which import each entry of .plt, .plt.sec and .plt.got jumps to.

A PLT entry that calls an import is an indirect jump through a GOT slot,
``jmp *disp32(%rip)`` (``ff 25``), sometimes with a ``bnd`` prefix (``f2``)
and, in IBT-enabled code, after an ``endbr64`` (``f3 0f 1e fa``).  The slot's
address names the import through the dynamic relocation that fills it:
R_X86_64_JUMP_SLOT (.rela.plt), R_X86_64_GLOB_DAT (.rela.dyn, for .plt.got)
or R_X86_64_IRELATIVE (static binaries: the addend is the IFUNC resolver).

The layouts, as GNU ld writes them:

- lazy .plt: PLT0 (push GOT+8; jmp *GOT+16), then 16-byte entries
  ``jmp *slot; push index; jmp PLT0``;
- IBT (``-z ibtplt`` or all inputs marked IBT): .plt entries are
  ``endbr64; push index; jmp PLT0`` (no slot: left unnamed, as objdump
  does) and the callable stubs are in .plt.sec,
  ``endbr64; [bnd] jmp *slot; nop``;
- .plt.got: 8-byte (16 with IBT) stubs for imports also referenced as data;
- static binaries: 8-byte .plt entries ``jmp *slot; xchg %ax,%ax`` for IFUNCs,
  with sh_entsize 0.
"""

from __future__ import annotations

import struct
from collections import namedtuple

from redhand.elf import constants as c
from redhand.elf.file import ElfFile, Section

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import NamedTuple

PLT_SECTIONS = (".plt", ".plt.sec", ".plt.got", ".iplt")

_DISP = struct.Struct("<i")
_ENDBR64 = b"\xf3\x0f\x1e\xfa"


_PLT_STUB_DOC = """One PLT entry that jumps through a GOT slot.

``symbol`` is the import's name (from the dynamic symbol table, without
version), None for an R_X86_64_IRELATIVE slot (then ``addend`` is the
IFUNC resolver's address) or a slot no relocation describes.
"""

# A named tuple made with collections.namedtuple at run time, so that this
# module does not import typing (see redhand.elf.file for the cost).
if TYPE_CHECKING:

    class PltStub(NamedTuple):
        address: int
        size: int
        section: str
        got_address: int
        symbol: str | None
        reloc_type: int | None
        addend: int

else:
    PltStub = namedtuple(
        "PltStub",
        "address size section got_address symbol reloc_type addend",
        module=__name__,
    )
    PltStub.__doc__ = _PLT_STUB_DOC


def _jump_slot(entry: bytes) -> int | None:
    """Where the disp32 of the entry's ``jmp *disp32(%rip)`` starts, or None if it has none."""
    start = 4 if entry.startswith(_ENDBR64) else 0
    if entry[start : start + 2] == b"\xff\x25":
        at = start + 2
    elif entry[start : start + 3] == b"\xf2\xff\x25":
        at = start + 3
    else:
        return None
    if at + 4 > len(entry):
        return None
    return at


def _got_names(elf: ElfFile, want_glob_dat: bool) -> dict[int, tuple[str | None, int, int]]:
    """GOT slot address -> (import name, relocation type, addend)."""
    slots: dict[int, tuple[str | None, int, int]] = {}
    for sec in elf.iter_sections():
        if sec.sh_type != c.SHT_RELA or not sec.sh_flags & c.SHF_ALLOC:
            continue
        if sec.name != ".rela.plt" and not want_glob_dat:
            continue
        table = None
        if sec.sh_link > 0:
            link = elf.get_section(sec.sh_link)
            if link.sh_type in (c.SHT_DYNSYM, c.SHT_SYMTAB):
                table = elf.symbol_table_of(link)
        st_names = table.columns().st_name if table is not None else []
        for rel in elf.iter_relocations(sec):
            if rel.r_type in (c.R_X86_64_JUMP_SLOT, c.R_X86_64_GLOB_DAT):
                name = None
                if table is not None and 0 < rel.r_sym < len(st_names):
                    name = table.name(st_names[rel.r_sym]) or None
                slots.setdefault(rel.r_offset, (name, rel.r_type, rel.r_addend))
            elif rel.r_type == c.R_X86_64_IRELATIVE:
                slots.setdefault(rel.r_offset, (None, rel.r_type, rel.r_addend))
    return slots


def iter_plt_stubs(elf: ElfFile) -> Iterator[PltStub]:
    """Every PLT entry of ``elf`` that jumps through a GOT slot, in section order.

    Needs section headers (a file with none has no PLT to name).  ElfError
    if the sections or relocations are corrupt.
    """
    sections: list[Section] = [
        sec
        for sec in elf.iter_sections()
        if sec.name in PLT_SECTIONS
        and sec.sh_flags & c.SHF_EXECINSTR
        and sec.sh_type != c.SHT_NOBITS
        and sec.sh_size
    ]
    if not sections:
        return
    slots = _got_names(elf, want_glob_dat=any(s.name == ".plt.got" for s in sections))
    for sec in sections:
        data = sec.data()
        step = sec.sh_entsize if sec.sh_entsize in (8, 16) else 8
        offset = 0
        while offset + 6 <= len(data):
            entry = data[offset : offset + 16]
            at = _jump_slot(entry)
            if at is None:
                offset += step
                continue
            (disp,) = _DISP.unpack_from(entry, at)
            got = sec.sh_addr + offset + at + 4 + disp
            size = step
            if sec.sh_entsize not in (8, 16):
                # No entry size recorded (static binaries): an entry runs to the next jump.
                size = 8 if _jump_slot(data[offset + 8 : offset + 16]) is not None else 16
                size = min(size, len(data) - offset)
            name, rtype, addend = slots.get(got, (None, None, 0))
            yield PltStub(sec.sh_addr + offset, size, sec.name, got, name, rtype, addend)
            offset += size
