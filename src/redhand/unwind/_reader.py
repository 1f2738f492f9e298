"""Low-level decoding shared by the CFI parser and the expression evaluator.

Every malformed byte sequence (truncation, an impossible length, an encoding
that does not exist) becomes :class:`CfiError`; nothing else escapes.
"""

from __future__ import annotations

import struct

from redhand.errors import RedhandError

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable

MASK64 = (1 << 64) - 1

# Pointer encodings (the DW_EH_PE_* values of the LSB and the x86_64 psABI).
DW_EH_PE_absptr = 0x00
DW_EH_PE_uleb128 = 0x01
DW_EH_PE_udata2 = 0x02
DW_EH_PE_udata4 = 0x03
DW_EH_PE_udata8 = 0x04
DW_EH_PE_signed = 0x08
DW_EH_PE_sleb128 = 0x09
DW_EH_PE_sdata2 = 0x0A
DW_EH_PE_sdata4 = 0x0B
DW_EH_PE_sdata8 = 0x0C
DW_EH_PE_pcrel = 0x10
DW_EH_PE_textrel = 0x20
DW_EH_PE_datarel = 0x30
DW_EH_PE_funcrel = 0x40
DW_EH_PE_aligned = 0x50
DW_EH_PE_indirect = 0x80
DW_EH_PE_omit = 0xFF

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_S16 = struct.Struct("<h")
_U32 = struct.Struct("<I")
_S32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_S64 = struct.Struct("<q")

# value format (low nibble) -> fixed-size struct
_FIXED: dict[int, struct.Struct] = {
    DW_EH_PE_udata2: _U16,
    DW_EH_PE_udata4: _U32,
    DW_EH_PE_udata8: _U64,
    DW_EH_PE_sdata2: _S16,
    DW_EH_PE_sdata4: _S32,
    DW_EH_PE_sdata8: _S64,
}


class CfiError(RedhandError, ValueError):
    """Call-frame information (or a DWARF expression in it) is malformed or unsupported.

    The unwinder turns it into the end of a trace; it never reaches the user as
    a traceback.
    """


class PointerBases:
    """The base addresses that pointer encodings are relative to.

    ``text`` and ``data`` are None when the file gives no such base (then a
    pointer using that encoding is an error).  ``read_pointer`` resolves
    DW_EH_PE_indirect (it reads 8 bytes at a link-time address).
    """

    __slots__ = ("data", "read_pointer", "text")

    def __init__(
        self,
        *,
        text: int | None = None,
        data: int | None = None,
        read_pointer: Callable[[int], int] | None = None,
    ) -> None:
        self.text = text
        self.data = data
        self.read_pointer = read_pointer


class Reader:
    """A cursor over ``data[pos:end]``; every read checks the bounds."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else min(end, len(data))

    def _need(self, size: int) -> int:
        pos = self.pos
        if pos < 0 or pos + size > self.end:
            raise CfiError(f"truncated data: need {size} bytes at offset {pos:#x}")
        self.pos = pos + size
        return pos

    def u8(self) -> int:
        pos = self.pos
        if pos >= self.end or pos < 0:
            raise CfiError(f"truncated data: need 1 byte at offset {pos:#x}")
        self.pos = pos + 1
        return self.data[pos]

    def u16(self) -> int:
        value: int = _U16.unpack_from(self.data, self._need(2))[0]
        return value

    def s16(self) -> int:
        value: int = _S16.unpack_from(self.data, self._need(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack_from(self.data, self._need(4))[0]
        return value

    def s32(self) -> int:
        value: int = _S32.unpack_from(self.data, self._need(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack_from(self.data, self._need(8))[0]
        return value

    def s64(self) -> int:
        value: int = _S64.unpack_from(self.data, self._need(8))[0]
        return value

    def uleb(self) -> int:
        data = self.data
        end = self.end
        pos = self.pos
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise CfiError(f"truncated LEB128 number at offset {self.pos:#x}")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift > 63:
                raise CfiError(f"LEB128 number too long at offset {self.pos:#x}")
        self.pos = pos
        return result

    def sleb(self) -> int:
        data = self.data
        end = self.end
        pos = self.pos
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise CfiError(f"truncated LEB128 number at offset {self.pos:#x}")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
            if shift > 63:
                raise CfiError(f"LEB128 number too long at offset {self.pos:#x}")
        self.pos = pos
        if byte & 0x40:
            result -= 1 << shift
        return result

    def block(self, size: int) -> bytes:
        if size < 0:
            raise CfiError(f"negative block size at offset {self.pos:#x}")
        pos = self._need(size)
        return self.data[pos : pos + size]

    def cstring(self) -> bytes:
        nul = self.data.find(b"\0", self.pos, self.end)
        if nul < 0:
            raise CfiError(f"unterminated string at offset {self.pos:#x}")
        text = self.data[self.pos : nul]
        self.pos = nul + 1
        return text

    def value(self, encoding: int) -> int:
        """The raw value of a pointer's format (low nibble of ``encoding``), not yet applied."""
        fmt = encoding & 0x0F
        if fmt == DW_EH_PE_absptr:
            return self.u64()
        fixed = _FIXED.get(fmt)
        if fixed is not None:
            value: int = fixed.unpack_from(self.data, self._need(fixed.size))[0]
            return value
        if fmt == DW_EH_PE_uleb128:
            return self.uleb()
        if fmt == DW_EH_PE_sleb128:
            return self.sleb()
        raise CfiError(f"unknown pointer encoding {encoding:#04x}")

    def pointer(
        self,
        encoding: int,
        field_vaddr: int,
        bases: PointerBases,
        *,
        func: int | None = None,
        indirect: bool = True,
    ) -> int:
        """Decode a pointer with a DW_EH_PE_* ``encoding``.

        ``field_vaddr`` is the link-time address of the byte at the cursor (for
        pcrel); ``func`` the function start (for funcrel).  With ``indirect``
        False an indirect pointer is returned as the address of its slot.
        """
        if encoding == DW_EH_PE_omit:
            raise CfiError("an omitted pointer was required")
        application = encoding & 0x70
        if application == DW_EH_PE_aligned:
            misalign = field_vaddr & 7
            if misalign:
                self._need(8 - misalign)
                field_vaddr += 8 - misalign
        start = field_vaddr
        value = self.value(encoding)
        if application == DW_EH_PE_pcrel:
            value += start
        elif application == DW_EH_PE_datarel:
            if bases.data is None:
                raise CfiError("data-relative pointer without a data base")
            value += bases.data
        elif application == DW_EH_PE_textrel:
            if bases.text is None:
                raise CfiError("text-relative pointer without a text base")
            value += bases.text
        elif application == DW_EH_PE_funcrel:
            if func is None:
                raise CfiError("function-relative pointer outside a function")
            value += func
        elif application not in (0, DW_EH_PE_aligned):
            raise CfiError(f"unknown pointer encoding {encoding:#04x}")
        value &= MASK64
        if encoding & DW_EH_PE_indirect and indirect:
            if bases.read_pointer is None:
                raise CfiError(f"indirect pointer at {value:#x} cannot be read")
            value = bases.read_pointer(value) & MASK64
        return value


def skip_pointer(reader: Reader, encoding: int, field_vaddr: int) -> None:
    """Move past a pointer without interpreting it (personality routines)."""
    if encoding == DW_EH_PE_omit:
        return
    if encoding & 0x70 == DW_EH_PE_aligned:
        misalign = field_vaddr & 7
        if misalign:
            reader.block(8 - misalign)
    reader.value(encoding)
