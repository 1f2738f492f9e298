"""Is the instruction before a return address a call?  (x86_64 opcodes only.)

A word found on the stack is a plausible return address when the bytes just
before it encode a ``call``: ``E8 rel32`` (5 bytes), or ``FF /2`` (an
indirect call) whose ModRM, SIB and displacement add up to exactly the bytes
between the opcode and the return address.  Prefixes (REX, segment) before
the opcode do not change where it starts relative to the return address, so
they need no check.
"""

from __future__ import annotations

from redhand.errors import MemoryReadError
from redhand.target.memory import Memory

_LOOKBACK = 7  # the longest call form: FF /2 with SIB and a 32-bit displacement


def _ff_call_length(modrm: int, sib: int | None) -> int | None:
    """The length of ``FF modrm ...`` if it is a call (reg field 2), else None."""
    if (modrm >> 3) & 7 != 2:
        return None
    mod = modrm >> 6
    rm = modrm & 7
    length = 2
    if mod == 3:
        return length
    if rm == 4:  # a SIB byte follows
        if sib is None:
            return None
        length += 1
        if mod == 0 and sib & 7 == 5:
            length += 4  # no base: disp32
    elif mod == 0 and rm == 5:
        length += 4  # rip-relative disp32
    if mod == 1:
        length += 1
    elif mod == 2:
        length += 4
    return length


def is_call_before(code: bytes) -> bool:
    """Whether ``code`` (the bytes right before a return address) ends with a call."""
    return call_length(code) is not None


def call_length(code: bytes) -> int | None:
    """The length of the call ``code`` (the bytes before a return address) ends with, or None.

    5 is ``E8 rel32``, a direct call; any other length is an indirect ``FF /2``.
    """
    size = len(code)
    if size >= 5 and code[size - 5] == 0xE8:
        return 5
    for length in (2, 3, 4, 6, 7):
        if size < length:
            break
        start = size - length
        if code[start] != 0xFF:
            continue
        sib = code[start + 2] if start + 2 < size else None
        if _ff_call_length(code[start + 1], sib) == length:
            return length
    return None


def _code_before(memory: Memory, address: int) -> bytes | None:
    """The bytes just before ``address`` (as many as a call can have, fewer near a
    mapping's start); None when none of them can be read."""
    for lookback in (_LOOKBACK, 5, 2):
        if address < lookback:
            continue
        try:
            return memory.read(address - lookback, lookback)
        except MemoryReadError:
            continue
    return None


def call_before(memory: Memory, address: int) -> tuple[int, int | None] | None:
    """The call ending right before ``address``: (its address, its direct target or None).

    None when there is no call there, or its bytes cannot be read.  The
    target is known for ``E8 rel32`` only; an indirect call's depends on
    registers or memory at the time of the call.
    """
    code = _code_before(memory, address)
    if code is None:
        return None
    length = call_length(code)
    if length is None:
        return None
    if length == 5:
        displacement = int.from_bytes(code[-4:], "little", signed=True)
        return address - 5, (address + displacement) & 0xFFFF_FFFF_FFFF_FFFF
    return address - length, None


def follows_call(memory: Memory, address: int) -> bool | None:
    """Whether the instruction before ``address`` is a call; None when its bytes are unreadable."""
    code = _code_before(memory, address)
    return None if code is None else is_call_before(code)
