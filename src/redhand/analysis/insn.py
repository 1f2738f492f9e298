"""Just enough x86_64 decoding to explain a fault: what the faulting instruction did.

Crash classification needs a few facts about the one instruction at the
faulting pc, not a disassembler: whether it reads or writes memory (the kernel
does not give user space the page-fault error code), the registers and
displacement of its memory operand (so that a non-canonical address, which the
kernel reports as 0, can be computed again), and whether it is one of a few
instructions that explain a fault by themselves (``ret``, ``call``, ``push``,
``ud2``, ``div``, privileged ones).

:func:`decode` handles legacy prefixes, REX, VEX (C4/C5) and EVEX (62)
prefixes and the ModRM/SIB forms; an opcode it does not know still gets its
memory operand (when it has a ModRM byte the tables know about) with the
access left unknown.  It never raises on garbage: it returns None.
"""

from __future__ import annotations

from redhand._value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.target.model import Registers

READ = "read"
WRITE = "write"

REGISTERS_64 = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip

_LEGACY_PREFIXES = frozenset({0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67})


def _opcodes(*spans: tuple[int, int] | int) -> frozenset[int]:
    result: set[int] = set()
    for span in spans:
        if isinstance(span, int):
            result.add(span)
        else:
            result.update(range(span[0], span[1] + 1))
    return frozenset(result)


# One-byte opcodes with a ModRM byte.
_ONE_MODRM = _opcodes(
    (0x00, 0x03), (0x08, 0x0B), (0x10, 0x13), (0x18, 0x1B), (0x20, 0x23), (0x28, 0x2B),
    (0x30, 0x33), (0x38, 0x3B), 0x63, 0x69, 0x6B, (0x80, 0x8F), (0xC0, 0xC1), (0xC6, 0xC7),
    (0xD0, 0xD3), (0xD8, 0xDF), (0xF6, 0xF7), (0xFE, 0xFF),
)  # fmt: skip
# One-byte opcodes whose ModRM operand is written (read-modify-write counts as a write).
_ONE_WRITES = _opcodes(
    0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21, 0x28, 0x29, 0x30, 0x31,
    0x86, 0x87, 0x88, 0x89, 0x8C, 0x8F, 0xC0, 0xC1, 0xC6, 0xC7, (0xD0, 0xD3),
)  # fmt: skip
# One-byte opcodes with a byte-sized operand (besides the even ALU opcodes below 0x40).
_ONE_BYTE_OPERAND = frozenset(
    {0x80, 0x82, 0x84, 0x86, 0x88, 0x8A, 0xC0, 0xC6, 0xD0, 0xD2, 0xF6, 0xFE}
)
# Immediate sizes after the ModRM operand (-1: 4 bytes, or 2 with an operand-size prefix).
_ONE_IMMEDIATE = {0x69: -1, 0x6B: 1, 0x80: 1, 0x81: -1, 0x83: 1, 0xC0: 1, 0xC1: 1, 0xC6: 1}

# Two-byte (0F) opcodes without a ModRM byte.
_TWO_NO_MODRM = _opcodes(
    (0x05, 0x09), 0x0B, 0x0E, (0x30, 0x37), (0x77, 0x77), (0x80, 0x8F), (0xA0, 0xA2),
    (0xA8, 0xAA), (0xC8, 0xCF),
)  # fmt: skip
# 0F opcodes whose ModRM operand is written (before prefix-specific exceptions).
_TWO_WRITES = _opcodes(
    0x11, 0x13, 0x17, 0x29, 0x2B, 0x7F, (0x90, 0x9F), 0xA4, 0xA5, 0xAB, 0xAC, 0xAD, 0xB0,
    0xB1, 0xB3, 0xBB, 0xC0, 0xC1, 0xC3, 0xD6, 0xE7,
)  # fmt: skip
_TWO_IMMEDIATE = _opcodes((0x70, 0x73), 0xA4, 0xAC, 0xBA, 0xC2, (0xC4, 0xC6))
# 0F 3A opcodes that store their result to memory (pextr*, extractps, vextract*, vcvtps2ph).
_THREE_3A_WRITES = _opcodes((0x14, 0x17), 0x19, 0x1D, 0x39, 0x3B, 0x7D)
# 0F 38 opcodes that store (movbe with no prefix is F1; vmaskmov and vpmaskmov stores).
_THREE_38_WRITES = _opcodes(0x2E, 0x2F, 0x8E, (0xA0, 0xA3))

# Instructions that need a 16-byte (or wider) aligned memory operand: movaps,
# movapd, movntps, movdqa, movntdq (and their VEX forms, vmovaps/vmovdqa).
_ALIGNED_MOVES = frozenset({(1, 0x28), (1, 0x29), (1, 0x2B), (1, 0xE7)})
_ALIGNED_MOVES_66 = frozenset({(1, 0x6F), (1, 0x7F)})

_PRIVILEGED_ONE = _opcodes(0xF4, 0xFA, 0xFB, (0xE4, 0xE7), (0xEC, 0xEF), 0x6C, 0x6D, 0x6E, 0x6F)
_PRIVILEGED_TWO = _opcodes(0x06, 0x08, 0x09, (0x20, 0x23), 0x30, 0x32)


class MemoryOperand(Value):
    """A ModRM memory operand: ``segment:[base + index*scale + displacement]``.

    ``base`` and ``index`` are register names (None when absent); ``rip`` is
    True for a rip-relative operand (``base`` None); ``displacement`` is None
    when it cannot be known (an EVEX disp8, which is scaled by the operand
    size).  ``segment`` is ``"fs"`` or ``"gs"`` or None.
    """

    __slots__ = ("_base", "_displacement", "_index", "_rip", "_scale", "_segment")
    _fields = ("base", "index", "scale", "displacement", "rip", "segment")

    base: str | None
    index: str | None
    scale: int
    displacement: int | None
    rip: bool
    segment: str | None

    def __init__(
        self,
        base: str | None,
        index: str | None,
        scale: int,
        displacement: int | None,
        rip: bool = False,
        segment: str | None = None,
    ) -> None:
        self._base = base
        self._index = index
        self._scale = scale
        self._displacement = displacement
        self._rip = rip
        self._segment = segment

    def __str__(self) -> str:
        parts = []
        if self.rip:
            parts.append("rip")
        if self.base:
            parts.append(self.base)
        if self.index:
            parts.append(f"{self.index}*{self.scale}" if self.scale != 1 else self.index)
        text = " + ".join(parts)
        if self.displacement:
            sign = "-" if self.displacement < 0 else "+"
            magnitude = abs(self.displacement)
            text = f"{text} {sign} {magnitude:#x}" if text else f"{self.displacement:#x}"
        prefix = f"{self.segment}:" if self.segment else ""
        return f"{prefix}[{text or '0'}]"

    def address(self, registers: Registers, pc: int, length: int | None) -> int | None:
        """The effective address with these registers, or None if it cannot be known."""
        if self.displacement is None:
            return None
        value = self.displacement
        if self.rip:
            if length is None:
                return None
            value += pc + length
        if self.base is not None:
            value += getattr(registers, self.base)
        if self.index is not None:
            value += getattr(registers, self.index) * self.scale
        if self.segment == "fs":
            value += registers.fs_base
        elif self.segment == "gs":
            value += registers.gs_base
        return value & 0xFFFF_FFFF_FFFF_FFFF


class Instruction(Value):
    """What :func:`decode` found out about one instruction.

    - ``kind``: one of ``"ret"``, ``"call"``, ``"jmp"``, ``"push"``, ``"pop"``,
      ``"ud2"``, ``"int3"``, ``"div"``, ``"privileged"``, ``"string"``,
      ``"other"``;
    - ``access``: ``"read"``, ``"write"`` or None (no memory operand, or not known);
    - ``memory``: the ModRM memory operand, None when there is none;
    - ``length``: the instruction's length in bytes, None when not known;
    - ``aligned``: the instruction needs a 16-byte aligned memory operand;
    - ``register``: for a register operand of ``div``/``idiv``, ``call``/``jmp``:
      the register's name;
    - ``operand_size``: 1, 2, 4 or 8 bytes, for ``div``.
    """

    __slots__ = (
        "_access",
        "_aligned",
        "_kind",
        "_length",
        "_memory",
        "_operand_size",
        "_register",
    )
    _fields = ("kind", "access", "memory", "length", "aligned", "register", "operand_size")

    kind: str
    access: str | None
    memory: MemoryOperand | None
    length: int | None
    aligned: bool
    register: str | None
    operand_size: int

    def __init__(
        self,
        kind: str,
        access: str | None = None,
        memory: MemoryOperand | None = None,
        length: int | None = None,
        aligned: bool = False,
        register: str | None = None,
        operand_size: int = 8,
    ) -> None:
        self._kind = kind
        self._access = access
        self._memory = memory
        self._length = length
        self._aligned = aligned
        self._register = register
        self._operand_size = operand_size


def decode(code: bytes) -> Instruction | None:
    """Decode the instruction at the start of ``code`` (up to 15 bytes); None if it cannot."""
    try:
        return _decode(code)
    except IndexError:  # ran off the end of the bytes given
        return None


def _decode(code: bytes) -> Instruction | None:
    pos = 0
    prefixes: set[int] = set()
    while code[pos] in _LEGACY_PREFIXES and pos < 14:
        prefixes.add(code[pos])
        pos += 1
    segment = "fs" if 0x64 in prefixes else "gs" if 0x65 in prefixes else None
    rex = 0
    if 0x40 <= code[pos] <= 0x4F:
        rex = code[pos]
        pos += 1
    vex = False
    evex = False
    opmap = 0
    mandatory = 0x66 if 0x66 in prefixes else 0xF3 if 0xF3 in prefixes else 0
    if 0xF2 in prefixes:
        mandatory = 0xF2
    first = code[pos]
    if first in (0xC4, 0xC5, 0x62) and not rex:
        # VEX / EVEX: in 64-bit mode these bytes are always prefixes.
        vex = True
        pp_names = (0, 0x66, 0xF3, 0xF2)
        if first == 0xC5:
            byte1 = code[pos + 1]
            rex = 0x40 | (0 if byte1 & 0x80 else 4)
            mandatory = pp_names[byte1 & 3]
            opmap = 1
            pos += 2
        elif first == 0xC4:
            byte1, byte2 = code[pos + 1], code[pos + 2]
            rex = 0x40 | ((~byte1 >> 5) & 7) | (8 if byte2 & 0x80 else 0)
            opmap = byte1 & 0x1F
            mandatory = pp_names[byte2 & 3]
            pos += 3
        else:
            evex = True
            byte1, byte2 = code[pos + 1], code[pos + 2]
            rex = 0x40 | ((~byte1 >> 5) & 7) | (8 if byte2 & 0x80 else 0)
            opmap = byte1 & 7
            mandatory = pp_names[byte2 & 3]
            pos += 4
        if opmap not in (1, 2, 3):
            return None
    opcode = code[pos]
    pos += 1
    if not vex and opcode == 0x0F:
        opmap = 1
        opcode = code[pos]
        pos += 1
        if opcode == 0x38:
            opmap = 2
            opcode = code[pos]
            pos += 1
        elif opcode == 0x3A:
            opmap = 3
            opcode = code[pos]
            pos += 1
    operand_size = 8 if rex & 8 else 2 if 0x66 in prefixes else 4

    if opmap == 0:
        simple = _one_byte_simple(opcode, code, pos)
        if simple is not None:
            return simple
        if opcode not in _ONE_MODRM:
            return Instruction("other")
        if opcode in _ONE_BYTE_OPERAND or (opcode < 0x40 and opcode & 1 == 0):
            operand_size = 1
    elif opmap == 1:
        if opcode in _TWO_NO_MODRM:
            if opcode == 0x0B:
                return Instruction("ud2", length=pos)
            if opcode in _PRIVILEGED_TWO:
                return Instruction("privileged", length=pos)
            return Instruction("other", length=None)
        if opcode in _PRIVILEGED_TWO:
            return Instruction("privileged", length=None)

    modrm = code[pos]
    pos += 1
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    memory: MemoryOperand | None = None
    register: str | None = None
    if mod == 3:
        register = REGISTERS_64[rm | (8 if rex & 1 else 0)]
    else:
        memory, pos = _memory_operand(code, pos, mod, rm, rex, segment, evex)

    access, kind = _access(opmap, opcode, reg, mandatory, vex)
    immediate = _immediate_size(opmap, opcode, reg, 0x66 in prefixes)
    length = None if immediate is None else pos + immediate
    if opmap == 0 and opcode in (0xF6, 0xF7) and reg >= 6:
        kind = "div"
    aligned = (opmap, opcode) in _ALIGNED_MOVES and mandatory in (0, 0x66)
    aligned = aligned or ((opmap, opcode) in _ALIGNED_MOVES_66 and mandatory == 0x66)
    if evex:
        aligned = False  # EVEX forms: the alignment depends on the vector length
    return Instruction(
        kind,
        access if memory is not None else None,
        memory,
        length,
        aligned and memory is not None,
        register,
        operand_size,
    )


def _one_byte_simple(opcode: int, code: bytes, pos: int) -> Instruction | None:
    """One-byte opcodes without ModRM that explain a fault by themselves."""
    if opcode in (0xC3, 0xCB):
        return Instruction("ret", READ, length=pos)
    if opcode in (0xC2, 0xCA):
        return Instruction("ret", READ, length=pos + 2)
    if opcode == 0xE8:
        return Instruction("call", WRITE, length=pos + 4)
    if 0x50 <= opcode <= 0x57 or opcode in (0x9C,):
        return Instruction("push", WRITE, length=pos)
    if opcode in (0x68, 0x6A):
        return Instruction("push", WRITE, length=pos + (4 if opcode == 0x68 else 1))
    if 0x58 <= opcode <= 0x5F or opcode == 0x9D:
        return Instruction("pop", READ, length=pos)
    if opcode == 0xCC:
        return Instruction("int3", length=pos)
    if opcode in _PRIVILEGED_ONE:
        return Instruction("privileged", length=pos)
    if opcode in (0xA4, 0xA5, 0xAA, 0xAB):  # movs, stos: the destination is written
        return Instruction("string", WRITE, length=pos)
    if opcode in (0xA6, 0xA7, 0xAC, 0xAD, 0xAE, 0xAF):  # cmps, lods, scas
        return Instruction("string", READ, length=pos)
    return None


def _memory_operand(
    code: bytes, pos: int, mod: int, rm: int, rex: int, segment: str | None, evex: bool
) -> tuple[MemoryOperand, int]:
    base: str | None
    index: str | None = None
    scale = 1
    rip = False
    if rm == 4:
        sib = code[pos]
        pos += 1
        scale = 1 << (sib >> 6)
        index_number = ((sib >> 3) & 7) | (8 if rex & 2 else 0)
        index = REGISTERS_64[index_number] if index_number != 4 else None
        base_number = sib & 7
        if base_number == 5 and mod == 0:
            base = None
            displacement_size = 4
        else:
            base = REGISTERS_64[base_number | (8 if rex & 1 else 0)]
            displacement_size = (0, 1, 4)[mod]
    elif rm == 5 and mod == 0:
        base = None
        rip = True
        displacement_size = 4
    else:
        base = REGISTERS_64[rm | (8 if rex & 1 else 0)]
        displacement_size = (0, 1, 4)[mod]
    displacement: int | None = 0
    if displacement_size:
        raw = code[pos : pos + displacement_size]
        if len(raw) != displacement_size:
            raise IndexError(pos)
        displacement = int.from_bytes(raw, "little", signed=True)
        pos += displacement_size
        if evex and displacement_size == 1:
            displacement = None  # disp8*N: scaled by a size this decoder does not track
    return MemoryOperand(base, index, scale, displacement, rip, segment), pos


def _access(opmap: int, opcode: int, reg: int, mandatory: int, vex: bool) -> tuple[str | None, str]:
    """(access, kind) of the ModRM memory operand of an instruction."""
    if opmap == 0:
        if opcode == 0x8D:  # lea: computes an address, touches no memory
            return None, "other"
        if opcode in _ONE_WRITES:
            return WRITE, "other"
        if opcode in (0x80, 0x81, 0x83):
            return (READ if reg == 7 else WRITE), "other"
        if opcode in (0xF6, 0xF7):
            return (WRITE if reg in (2, 3) else READ), "other"
        if opcode == 0xFE:
            return WRITE, "other"
        if opcode == 0xFF:
            if reg in (0, 1):
                return WRITE, "other"
            if reg in (2, 3):
                return READ, "call"
            if reg in (4, 5):
                return READ, "jmp"
            if reg == 6:
                return READ, "push"
            return None, "other"
        if 0xD8 <= opcode <= 0xDF:  # x87: stores are /2, /3 and a few /6, /7
            stores = reg in (2, 3) or (reg == 7 and opcode in (0xD9, 0xDB, 0xDD, 0xDF))
            stores = stores or (reg == 6 and opcode in (0xD9, 0xDD))
            return (WRITE if stores else READ), "other"
        return READ, "other"
    if opmap == 1:
        if opcode == 0x7E:  # movd/movq to r/m, except F3 0F 7E (movq xmm, m64: a load)
            return (READ if mandatory == 0xF3 else WRITE), "other"
        if opcode == 0xD6:
            return (WRITE if mandatory == 0x66 else READ), "other"
        if opcode == 0xBA:
            return (READ if reg == 4 else WRITE), "other"
        if opcode == 0xAE:
            return (WRITE if reg in (0, 3, 4, 6) else READ), "other"
        if opcode == 0xC7:
            return (WRITE if reg == 1 else READ), "other"
        if opcode in (0x12, 0x16) and mandatory == 0 and not vex:
            return READ, "other"
        if opcode in _TWO_WRITES:
            return WRITE, "other"
        if 0x18 <= opcode <= 0x1F:  # prefetch and hint nops: no fault on their operand
            return None, "other"
        return READ, "other"
    if opmap == 2:
        if opcode == 0xF1 and mandatory in (0, 0x66) and not vex:
            return WRITE, "other"  # movbe m, r
        if opcode in _THREE_38_WRITES and vex:
            return WRITE, "other"
        return READ, "other"
    if opcode in _THREE_3A_WRITES:
        return WRITE, "other"
    return READ, "other"


def _immediate_size(opmap: int, opcode: int, reg: int, operand_prefix: bool) -> int | None:
    if opmap == 0:
        if opcode in (0xF6, 0xF7):
            if reg in (0, 1):
                return 1 if opcode == 0xF6 else (2 if operand_prefix else 4)
            return 0
        if opcode == 0xC7:
            return 2 if operand_prefix else 4
        size = _ONE_IMMEDIATE.get(opcode, 0)
        if size == -1:
            return 2 if operand_prefix else 4
        return size
    if opmap == 1:
        return 1 if opcode in _TWO_IMMEDIATE else 0
    if opmap == 3:
        return 1
    return 0
