"""DWARF call-frame information: .eh_frame, .eh_frame_hdr and .debug_frame.

A :class:`CfiTable` answers "which FDE covers this link-time address?" and
"what is the unwind row there?".  It finds FDEs through the binary search
table of .eh_frame_hdr (the section, or the PT_GNU_EH_FRAME segment of a
stripped file) and parses each one only when it is asked for; without a usable
search table it indexes .eh_frame by walking it once, and it falls back to the
.debug_frame of the file and of its separate debug files.

A row is what the CFA program of an FDE says for one range of addresses: how
to compute the canonical frame address (a register plus an offset, or an
expression) and, per register, where the caller's value is (:class:`Rule`).

Malformed input never raises anything but :class:`CfiError`.
"""

from __future__ import annotations

import bisect
import struct

from redhand._value import Constant, Value, define
from redhand.elf.constants import PT_GNU_EH_FRAME, PT_LOAD, SHT_NOBITS
from redhand.errors import RedhandError
from redhand.unwind._reader import (
    MASK64,
    CfiError,
    DW_EH_PE_absptr,
    DW_EH_PE_datarel,
    DW_EH_PE_indirect,
    DW_EH_PE_omit,
    DW_EH_PE_pcrel,
    PointerBases,
    Reader,
    skip_pointer,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from typing import ClassVar

    from redhand.elf import ElfFile

__all__ = [
    "CfaRule",
    "CfiError",
    "CfiTable",
    "Cie",
    "Fde",
    "Row",
    "Rule",
    "RuleKind",
]

# Call-frame instructions (DWARF 5 section 7.24, plus the GNU extensions).
DW_CFA_advance_loc = 0x40
DW_CFA_offset = 0x80
DW_CFA_restore = 0xC0
DW_CFA_nop = 0x00
DW_CFA_set_loc = 0x01
DW_CFA_advance_loc1 = 0x02
DW_CFA_advance_loc2 = 0x03
DW_CFA_advance_loc4 = 0x04
DW_CFA_offset_extended = 0x05
DW_CFA_restore_extended = 0x06
DW_CFA_undefined = 0x07
DW_CFA_same_value = 0x08
DW_CFA_register = 0x09
DW_CFA_remember_state = 0x0A
DW_CFA_restore_state = 0x0B
DW_CFA_def_cfa = 0x0C
DW_CFA_def_cfa_register = 0x0D
DW_CFA_def_cfa_offset = 0x0E
DW_CFA_def_cfa_expression = 0x0F
DW_CFA_expression = 0x10
DW_CFA_offset_extended_sf = 0x11
DW_CFA_def_cfa_sf = 0x12
DW_CFA_def_cfa_offset_sf = 0x13
DW_CFA_val_offset = 0x14
DW_CFA_val_offset_sf = 0x15
DW_CFA_val_expression = 0x16
DW_CFA_MIPS_advance_loc8 = 0x1D
DW_CFA_GNU_args_size = 0x2E
DW_CFA_GNU_negative_offset_extended = 0x2F

_DWARF32_CIE_ID = 0xFFFFFFFF
_DWARF64_CIE_ID = 0xFFFFFFFFFFFFFFFF

MAX_STATE_DEPTH = 64
"""How deep DW_CFA_remember_state may nest before the program counts as malformed."""

MAX_REGISTER = 1024
"""Register numbers above this are malformed (x86_64 uses fewer than 130)."""


class RuleKind(Constant, int):
    """Where the caller's value of a register is (DWARF 5 section 6.4.1)."""

    __slots__ = ()

    UNDEFINED: ClassVar[RuleKind]  # not recoverable
    SAME_VALUE: ClassVar[RuleKind]  # unchanged from the callee
    OFFSET: ClassVar[RuleKind]  # saved at CFA + value
    VAL_OFFSET: ClassVar[RuleKind]  # is CFA + value
    REGISTER: ClassVar[RuleKind]  # held in register number ``value``
    EXPRESSION: ClassVar[
        RuleKind
    ]  # saved at the address ``expression`` computes (the CFA pushed first)
    VAL_EXPRESSION: ClassVar[
        RuleKind
    ]  # is the value ``expression`` computes (the CFA pushed first)


define(
    RuleKind,
    UNDEFINED=0,
    SAME_VALUE=1,
    OFFSET=2,
    VAL_OFFSET=3,
    REGISTER=4,
    EXPRESSION=5,
    VAL_EXPRESSION=6,
)


class Rule(Value):
    """One register's rule; ``expression`` is empty unless kind is an expression.

    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = ("_expression", "_kind", "_value")
    _fields = ("kind", "value", "expression")

    kind: RuleKind
    value: int
    expression: bytes

    def __init__(self, kind: RuleKind, value: int = 0, expression: bytes = b"") -> None:
        self._kind = kind
        self._value = value
        self._expression = expression

    def __str__(self) -> str:
        kind = self.kind
        if kind is RuleKind.UNDEFINED:
            return "undefined"
        if kind is RuleKind.SAME_VALUE:
            return "same"
        if kind is RuleKind.OFFSET:
            return f"[cfa{self.value:+d}]"
        if kind is RuleKind.VAL_OFFSET:
            return f"cfa{self.value:+d}"
        if kind is RuleKind.REGISTER:
            return f"r{self.value}"
        if kind is RuleKind.EXPRESSION:
            return f"[expr {self.expression.hex()}]"
        return f"expr {self.expression.hex()}"


UNDEFINED_RULE = Rule(RuleKind.UNDEFINED)
SAME_VALUE_RULE = Rule(RuleKind.SAME_VALUE)


class CfaRule(Value):
    """The canonical frame address: ``register + offset``, or ``expression`` when not None.

    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = ("_expression", "_offset", "_register")
    _fields = ("register", "offset", "expression")

    register: int
    offset: int
    expression: bytes | None

    def __init__(self, register: int, offset: int, expression: bytes | None = None) -> None:
        self._register = register
        self._offset = offset
        self._expression = expression

    def __str__(self) -> str:
        if self.expression is not None:
            return f"expr {self.expression.hex()}"
        return f"r{self.register}{self.offset:+d}"


class Row(Value):
    """The unwind rules for the link-time addresses ``start <= pc < end`` of one FDE.

    ``registers`` holds only the registers the CFI mentions; a register
    missing from it has no rule (callee-saved registers then keep their
    value, by the convention every x86_64 unwinder follows).  Treat it as
    read-only: rows are cached and shared.  Immutable otherwise.  (Not a
    dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_args_size",
        "_cfa",
        "_end",
        "_registers",
        "_start",
    )
    _fields = ("start", "end", "cfa", "registers", "args_size")

    start: int
    end: int
    cfa: CfaRule
    registers: Mapping[int, Rule]
    args_size: int

    def __init__(
        self,
        start: int,
        end: int,
        cfa: CfaRule,
        registers: Mapping[int, Rule],
        args_size: int = 0,
    ) -> None:
        self._start = start
        self._end = end
        self._cfa = cfa
        self._registers = registers
        self._args_size = args_size

    def __hash__(self) -> int:
        # The registers are a dict (unhashable); as a frozen dataclass did, hash
        # would fail on them: hash what identifies the row instead.
        return hash((self.start, self.end, self.cfa, self.args_size))

    def rule(self, register: int) -> Rule | None:
        return self.registers.get(register)


class Cie:
    """A common information entry: what the FDEs that point to it share."""

    __slots__ = (
        "_initial",
        "address_size",
        "augmentation",
        "code_alignment",
        "data_alignment",
        "fde_encoding",
        "has_augmentation_data",
        "instructions",
        "lsda_encoding",
        "offset",
        "ra_register",
        "signal_frame",
        "version",
    )

    def __init__(
        self,
        *,
        offset: int,
        version: int,
        augmentation: str,
        code_alignment: int,
        data_alignment: int,
        ra_register: int,
        fde_encoding: int,
        lsda_encoding: int,
        has_augmentation_data: bool,
        signal_frame: bool,
        address_size: int,
        instructions: bytes,
    ) -> None:
        self.offset = offset
        self.version = version
        self.augmentation = augmentation
        self.code_alignment = code_alignment
        self.data_alignment = data_alignment
        self.ra_register = ra_register
        self.fde_encoding = fde_encoding
        self.lsda_encoding = lsda_encoding
        self.has_augmentation_data = has_augmentation_data
        self.signal_frame = signal_frame
        self.address_size = address_size
        self.instructions = instructions
        self._initial: tuple[CfaRule, dict[int, Rule]] | None = None

    def __repr__(self) -> str:
        return f"<Cie at {self.offset:#x} v{self.version} {self.augmentation!r}>"

    def initial_state(self) -> tuple[CfaRule, dict[int, Rule]]:
        """The CFA rule and register rules after the CIE's initial instructions."""
        if self._initial is None:
            machine = _Machine(self, None, 0, 0, 0, PointerBases())
            machine.run(self.instructions)
            self._initial = (machine.cfa_rule(), dict(machine.rules))
        return self._initial


class Fde:
    """A frame description entry: the CFA program of one function (``pc_begin <= pc < pc_end``)."""

    __slots__ = (
        "_bases",
        "_row_starts",
        "_rows",
        "cie",
        "instructions",
        "instructions_vaddr",
        "lsda",
        "offset",
        "pc_begin",
        "pc_end",
        "section",
    )

    def __init__(
        self,
        *,
        section: str,
        offset: int,
        cie: Cie,
        pc_begin: int,
        pc_end: int,
        lsda: int | None,
        instructions: bytes,
        instructions_vaddr: int,
        bases: PointerBases,
    ) -> None:
        self.section = section
        self.offset = offset
        self.cie = cie
        self.pc_begin = pc_begin
        self.pc_end = pc_end
        self.lsda = lsda
        self.instructions = instructions
        self.instructions_vaddr = instructions_vaddr
        self._bases = bases
        self._rows: list[Row] | None = None
        self._row_starts: list[int] = []

    def __repr__(self) -> str:
        return (
            f"<Fde {self.section}+{self.offset:#x} "
            f"pc={self.pc_begin:#x}..{self.pc_end:#x} {self.cie.augmentation!r}>"
        )

    @property
    def signal_frame(self) -> bool:
        """The CIE's 'S' augmentation: this function is a signal trampoline."""
        return self.cie.signal_frame

    def contains(self, vaddr: int) -> bool:
        return self.pc_begin <= vaddr < self.pc_end

    def rows(self) -> list[Row]:
        """Every row of the CFA program, in address order (computed once, then cached)."""
        if self._rows is None:
            cfa, rules = self.cie.initial_state()
            machine = _Machine(
                self.cie, self, self.pc_begin, self.pc_end, self.instructions_vaddr, self._bases
            )
            machine.start(cfa, rules)
            machine.run(self.instructions)
            machine.finish()
            self._rows = machine.rows
            self._row_starts = [row.start for row in machine.rows]
        return self._rows

    def row_at(self, vaddr: int) -> Row:
        """The row for link-time address ``vaddr``, which must lie in the FDE."""
        rows = self.rows()
        index = bisect.bisect_right(self._row_starts, vaddr) - 1
        if index < 0 or not self.contains(vaddr):
            raise CfiError(f"{vaddr:#x} is outside {self!r}")
        return rows[index]


class _Machine:
    """The CFA interpreter: runs CIE and FDE instructions, emitting rows."""

    __slots__ = (
        "args_size",
        "bases",
        "cfa_expression",
        "cfa_offset",
        "cfa_register",
        "cie",
        "code_vaddr",
        "dirty",
        "end",
        "fde",
        "initial",
        "last_cfa",
        "last_rules",
        "loc",
        "rows",
        "rules",
        "stack",
    )

    def __init__(
        self,
        cie: Cie,
        fde: Fde | None,
        loc: int,
        end: int,
        code_vaddr: int,
        bases: PointerBases,
    ) -> None:
        self.cie = cie
        self.fde = fde
        self.loc = loc
        self.end = end
        self.code_vaddr = code_vaddr
        self.bases = bases
        self.cfa_register = -1
        self.cfa_offset = 0
        self.cfa_expression: bytes | None = None
        self.rules: dict[int, Rule] = {}
        self.initial: dict[int, Rule] = {}
        self.stack: list[tuple[int, int, bytes | None, dict[int, Rule]]] = []
        self.args_size = 0
        self.rows: list[Row] = []
        self.dirty = True
        self.last_rules: dict[int, Rule] = {}
        self.last_cfa: CfaRule | None = None

    def start(self, cfa: CfaRule, rules: dict[int, Rule]) -> None:
        self.cfa_register = cfa.register
        self.cfa_offset = cfa.offset
        self.cfa_expression = cfa.expression
        self.rules = dict(rules)
        self.initial = rules

    def cfa_rule(self) -> CfaRule:
        last = self.last_cfa
        if (
            last is not None
            and last.register == self.cfa_register
            and last.offset == self.cfa_offset
            and last.expression == self.cfa_expression
        ):
            return last
        rule = CfaRule(self.cfa_register, self.cfa_offset, self.cfa_expression)
        self.last_cfa = rule
        return rule

    def _emit(self, new_loc: int) -> None:
        """Close the row that began at ``self.loc`` and move to ``new_loc``."""
        if self.fde is None:  # advances inside a CIE mean nothing
            return
        if new_loc < self.loc:
            raise CfiError(f"DW_CFA_set_loc moves backwards in {self.fde!r}")
        if new_loc == self.loc:
            return
        if self.loc < self.end:
            if self.dirty:
                self.last_rules = dict(self.rules)
                self.dirty = False
            self.rows.append(
                Row(
                    self.loc,
                    min(new_loc, self.end),
                    self.cfa_rule(),
                    self.last_rules,
                    self.args_size,
                )
            )
        self.loc = new_loc

    def finish(self) -> None:
        if self.loc < self.end:
            self._emit(self.end)

    def _register(self, number: int) -> int:
        if number > MAX_REGISTER:
            raise CfiError(f"register number {number} is out of range")
        return number

    def _set(self, register: int, rule: Rule) -> None:
        self.rules[self._register(register)] = rule
        self.dirty = True

    def _restore(self, register: int) -> None:
        self._register(register)
        rule = self.initial.get(register)
        if rule is None:
            self.rules.pop(register, None)
        else:
            self.rules[register] = rule
        self.dirty = True

    def run(self, code: bytes) -> None:
        reader = Reader(code)
        end = len(code)
        cie = self.cie
        caf = cie.code_alignment
        daf = cie.data_alignment
        while reader.pos < end:
            op = reader.u8()
            high = op & 0xC0
            if high == DW_CFA_advance_loc:
                self._emit(self.loc + (op & 0x3F) * caf)
            elif high == DW_CFA_offset:
                self._set(op & 0x3F, Rule(RuleKind.OFFSET, reader.uleb() * daf))
            elif high == DW_CFA_restore:
                self._restore(op & 0x3F)
            elif op == DW_CFA_nop:
                pass
            elif op == DW_CFA_def_cfa_offset:
                self.cfa_offset = reader.uleb()
                self.cfa_expression = None
            elif op == DW_CFA_advance_loc1:
                self._emit(self.loc + reader.u8() * caf)
            elif op == DW_CFA_advance_loc2:
                self._emit(self.loc + reader.u16() * caf)
            elif op == DW_CFA_advance_loc4:
                self._emit(self.loc + reader.u32() * caf)
            elif op == DW_CFA_MIPS_advance_loc8:
                self._emit(self.loc + reader.u64() * caf)
            elif op == DW_CFA_remember_state:
                if len(self.stack) >= MAX_STATE_DEPTH:
                    raise CfiError("DW_CFA_remember_state nested too deeply")
                self.stack.append(
                    (self.cfa_register, self.cfa_offset, self.cfa_expression, dict(self.rules))
                )
            elif op == DW_CFA_restore_state:
                if not self.stack:
                    raise CfiError("DW_CFA_restore_state without DW_CFA_remember_state")
                (self.cfa_register, self.cfa_offset, self.cfa_expression, self.rules) = (
                    self.stack.pop()
                )
                self.dirty = True
            elif op == DW_CFA_def_cfa:
                self.cfa_register = self._register(reader.uleb())
                self.cfa_offset = reader.uleb()
                self.cfa_expression = None
            elif op == DW_CFA_def_cfa_register:
                self.cfa_register = self._register(reader.uleb())
                self.cfa_expression = None
            elif op == DW_CFA_def_cfa_sf:
                self.cfa_register = self._register(reader.uleb())
                self.cfa_offset = reader.sleb() * daf
                self.cfa_expression = None
            elif op == DW_CFA_def_cfa_offset_sf:
                self.cfa_offset = reader.sleb() * daf
                self.cfa_expression = None
            elif op == DW_CFA_def_cfa_expression:
                self.cfa_expression = reader.block(reader.uleb())
                self.cfa_register = -1
                self.cfa_offset = 0
            elif op == DW_CFA_offset_extended:
                register = reader.uleb()
                self._set(register, Rule(RuleKind.OFFSET, reader.uleb() * daf))
            elif op == DW_CFA_offset_extended_sf:
                register = reader.uleb()
                self._set(register, Rule(RuleKind.OFFSET, reader.sleb() * daf))
            elif op == DW_CFA_GNU_negative_offset_extended:
                register = reader.uleb()
                self._set(register, Rule(RuleKind.OFFSET, -reader.uleb() * daf))
            elif op == DW_CFA_val_offset:
                register = reader.uleb()
                self._set(register, Rule(RuleKind.VAL_OFFSET, reader.uleb() * daf))
            elif op == DW_CFA_val_offset_sf:
                register = reader.uleb()
                self._set(register, Rule(RuleKind.VAL_OFFSET, reader.sleb() * daf))
            elif op == DW_CFA_restore_extended:
                self._restore(reader.uleb())
            elif op == DW_CFA_undefined:
                self._set(reader.uleb(), UNDEFINED_RULE)
            elif op == DW_CFA_same_value:
                self._set(reader.uleb(), SAME_VALUE_RULE)
            elif op == DW_CFA_register:
                register = reader.uleb()
                self._set(register, Rule(RuleKind.REGISTER, self._register(reader.uleb())))
            elif op == DW_CFA_expression:
                register = reader.uleb()
                expression = reader.block(reader.uleb())
                self._set(register, Rule(RuleKind.EXPRESSION, 0, expression))
            elif op == DW_CFA_val_expression:
                register = reader.uleb()
                expression = reader.block(reader.uleb())
                self._set(register, Rule(RuleKind.VAL_EXPRESSION, 0, expression))
            elif op == DW_CFA_GNU_args_size:
                self.args_size = reader.uleb()
                self.dirty = True
            elif op == DW_CFA_set_loc:
                if self.fde is None:
                    raise CfiError("DW_CFA_set_loc in a CIE")
                encoding = cie.fde_encoding
                field = self.code_vaddr + reader.pos
                target = reader.pointer(encoding, field, self.bases, func=self.fde.pc_begin)
                self._emit(target)
            else:
                raise CfiError(f"unknown call-frame instruction {op:#04x}")


# -- sections ------------------------------------------------------------------


class _FrameSection:
    """One .eh_frame or .debug_frame: its bytes, its link-time address, its entries."""

    __slots__ = (
        "_cies",
        "_data",
        "_fdes",
        "_index",
        "_index_starts",
        "_loader",
        "bases",
        "is_eh",
        "name",
        "vaddr",
    )

    def __init__(
        self,
        name: str,
        loader: Callable[[], bytes],
        vaddr: int,
        *,
        is_eh: bool,
        bases: PointerBases,
    ) -> None:
        self.name = name
        self._loader = loader
        self._data: bytes | None = None
        self.vaddr = vaddr
        self.is_eh = is_eh
        self.bases = bases
        self._cies: dict[int, Cie] = {}
        self._fdes: dict[int, Fde] = {}
        self._index: list[tuple[int, int, int]] | None = None
        self._index_starts: list[int] = []

    @property
    def data(self) -> bytes:
        if self._data is None:
            try:
                self._data = self._loader()
            except RedhandError as error:
                if isinstance(error, CfiError):
                    raise
                raise CfiError(f"{self.name} cannot be read: {error}") from None
        return self._data

    def _header(self, offset: int) -> tuple[Reader, int, bool] | None:
        """Read an entry's length and id: (reader after the id, id, is 64-bit), None at the end."""
        data = self.data
        reader = Reader(data, offset)
        length = reader.u32()
        dwarf64 = False
        if length == 0xFFFFFFFF:
            length = reader.u64()
            dwarf64 = True
        if length == 0:
            return None
        end = reader.pos + length
        if end > len(data):
            raise CfiError(f"{self.name} entry at {offset:#x} runs past the section end")
        reader.end = end
        ident = reader.u64() if dwarf64 else reader.u32()
        return reader, ident, dwarf64

    def _is_cie(self, ident: int, dwarf64: bool) -> bool:
        if self.is_eh:
            return ident == 0
        return ident == (_DWARF64_CIE_ID if dwarf64 else _DWARF32_CIE_ID)

    def cie_at(self, offset: int) -> Cie:
        cie = self._cies.get(offset)
        if cie is None:
            cie = self._parse_cie(offset)
            self._cies[offset] = cie
        return cie

    def _parse_cie(self, offset: int) -> Cie:
        if not 0 <= offset < len(self.data):
            raise CfiError(f"{self.name}: CIE offset {offset:#x} outside the section")
        header = self._header(offset)
        if header is None:
            raise CfiError(f"{self.name}: no CIE at {offset:#x}")
        reader, ident, dwarf64 = header
        if not self._is_cie(ident, dwarf64):
            raise CfiError(f"{self.name}: entry at {offset:#x} is not a CIE")
        version = reader.u8()
        if version not in (1, 3, 4):
            raise CfiError(f"{self.name}: CIE at {offset:#x} has version {version}")
        try:
            augmentation = reader.cstring().decode("ascii")
        except UnicodeDecodeError:
            raise CfiError(f"{self.name}: CIE at {offset:#x} has a garbled augmentation") from None
        address_size = 8
        if augmentation.startswith("eh"):  # pre-2000 GCC: a pointer follows
            reader.u64()
        if version == 4:
            address_size = reader.u8()
            segment_size = reader.u8()
            if address_size not in (4, 8) or segment_size != 0:
                raise CfiError(
                    f"{self.name}: CIE at {offset:#x} has address size {address_size}"
                    f" and segment size {segment_size}"
                )
        code_alignment = reader.uleb()
        data_alignment = reader.sleb()
        ra_register = reader.u8() if version == 1 else reader.uleb()
        fde_encoding = DW_EH_PE_absptr if address_size == 8 else 0x03  # udata4
        lsda_encoding = DW_EH_PE_omit
        signal_frame = False
        has_data = augmentation.startswith("z")
        if has_data:
            size = reader.uleb()
            aug_end = reader.pos + size
            if aug_end > reader.end:
                raise CfiError(f"{self.name}: CIE at {offset:#x}: augmentation data too long")
            for letter in augmentation[1:]:
                if letter == "L":
                    lsda_encoding = reader.u8()
                elif letter == "P":
                    encoding = reader.u8()
                    skip_pointer(reader, encoding, self.vaddr + reader.pos)
                elif letter == "R":
                    fde_encoding = reader.u8()
                elif letter == "S":
                    signal_frame = True
                elif letter in "BG":  # AArch64 BTI and MTE marks: nothing to read
                    pass
                else:
                    break  # unknown: the length lets us skip the rest
            reader.pos = aug_end
        elif augmentation not in ("", "eh"):
            raise CfiError(
                f"{self.name}: CIE at {offset:#x}: unknown augmentation {augmentation!r}"
            )
        if code_alignment == 0:
            raise CfiError(f"{self.name}: CIE at {offset:#x} has a code alignment of 0")
        return Cie(
            offset=offset,
            version=version,
            augmentation=augmentation,
            code_alignment=code_alignment,
            data_alignment=data_alignment,
            ra_register=ra_register,
            fde_encoding=fde_encoding,
            lsda_encoding=lsda_encoding,
            has_augmentation_data=has_data,
            signal_frame=signal_frame,
            address_size=address_size,
            instructions=reader.data[reader.pos : reader.end],
        )

    def fde_at(self, offset: int) -> Fde:
        fde = self._fdes.get(offset)
        if fde is None:
            fde = self._parse_fde(offset)
            self._fdes[offset] = fde
        return fde

    def _cie_offset(self, reader: Reader, ident: int, dwarf64: bool) -> int:
        if self.is_eh:
            # Relative to the CIE-pointer field itself.
            return reader.pos - (8 if dwarf64 else 4) - ident
        return ident

    def _parse_fde(self, offset: int) -> Fde:
        if not 0 <= offset < len(self.data):
            raise CfiError(f"{self.name}: FDE offset {offset:#x} outside the section")
        header = self._header(offset)
        if header is None:
            raise CfiError(f"{self.name}: no FDE at {offset:#x}")
        reader, ident, dwarf64 = header
        if self._is_cie(ident, dwarf64):
            raise CfiError(f"{self.name}: entry at {offset:#x} is a CIE, not an FDE")
        cie = self.cie_at(self._cie_offset(reader, ident, dwarf64))
        return self._fde_body(offset, reader, cie)

    def _fde_body(self, offset: int, reader: Reader, cie: Cie) -> Fde:
        bases = self.bases
        encoding = cie.fde_encoding
        pc_begin = reader.pointer(encoding, self.vaddr + reader.pos, bases)
        pc_range = reader.value(encoding) & MASK64
        lsda: int | None = None
        if cie.has_augmentation_data:
            size = reader.uleb()
            aug_end = reader.pos + size
            if aug_end > reader.end:
                raise CfiError(f"{self.name}: FDE at {offset:#x}: augmentation data too long")
            if cie.lsda_encoding != DW_EH_PE_omit and size:
                # The LSDA's slot address is enough; do not chase an indirect pointer.
                lsda = reader.pointer(
                    cie.lsda_encoding,
                    self.vaddr + reader.pos,
                    bases,
                    func=pc_begin,
                    indirect=False,
                )
            reader.pos = aug_end
        return Fde(
            section=self.name,
            offset=offset,
            cie=cie,
            pc_begin=pc_begin,
            pc_end=pc_begin + pc_range,
            lsda=lsda,
            instructions=reader.data[reader.pos : reader.end],
            instructions_vaddr=self.vaddr + reader.pos,
            bases=bases,
        )

    def iter_fdes(self) -> Iterator[Fde]:
        """Every FDE, in section order, up to the terminator; CfiError at a malformed entry."""
        data = self.data
        offset = 0
        while offset + 4 <= len(data):
            header = self._header(offset)
            if header is None:
                break
            reader, ident, dwarf64 = header
            next_offset = reader.end
            if not self._is_cie(ident, dwarf64):
                fde = self._fdes.get(offset)
                if fde is None:
                    cie = self.cie_at(self._cie_offset(reader, ident, dwarf64))
                    fde = self._fde_body(offset, reader, cie)
                    self._fdes[offset] = fde
                yield fde
            offset = next_offset

    def index(self) -> tuple[list[int], list[tuple[int, int, int]]]:
        """A sorted ``(pc_begin, pc_end, offset)`` index of every FDE (built once)."""
        if self._index is None:
            entries: list[tuple[int, int, int]] = []
            data = self.data
            offset = 0
            # Walk entry by entry; a malformed entry ends the walk (what came
            # before it stays usable) and a malformed FDE is left out.
            while offset + 4 <= len(data):
                try:
                    header = self._header(offset)
                except CfiError:
                    break
                if header is None:
                    break
                reader, ident, dwarf64 = header
                next_offset = reader.end
                if not self._is_cie(ident, dwarf64):
                    try:
                        cie = self.cie_at(self._cie_offset(reader, ident, dwarf64))
                        begin = reader.pointer(
                            cie.fde_encoding, self.vaddr + reader.pos, self.bases
                        )
                        size = reader.value(cie.fde_encoding) & MASK64
                    except CfiError:
                        begin = size = 0
                    if begin and size:
                        entries.append((begin, begin + size, offset))
                offset = next_offset
            entries.sort()
            self._index = entries
            self._index_starts = [entry[0] for entry in entries]
        return self._index_starts, self._index

    def find_linear(self, vaddr: int) -> Fde | None:
        starts, entries = self.index()
        index = bisect.bisect_right(starts, vaddr) - 1
        # Entries may nest or repeat (code from discarded sections); look back a little.
        for candidate in range(index, max(index - 8, -1), -1):
            begin, end, offset = entries[candidate]
            if begin <= vaddr < end:
                return self.fde_at(offset)
        return None


class _SearchTable:
    """The binary search table of .eh_frame_hdr: sorted (initial location, FDE address) pairs."""

    __slots__ = ("_struct", "application", "count", "data", "entry_size", "table_offset", "vaddr")

    _FORMATS: ClassVar[dict[int, str]] = {
        0x02: "<HH",
        0x03: "<II",
        0x04: "<QQ",
        0x0A: "<hh",
        0x0B: "<ii",
        0x0C: "<qq",
    }

    def __init__(self, data: bytes, vaddr: int, table_offset: int, count: int, encoding: int):
        self.data = data
        self.vaddr = vaddr
        self.table_offset = table_offset
        self.count = count
        fmt = self._FORMATS.get(encoding & 0x0F)
        if encoding & 0x0F == DW_EH_PE_absptr:
            fmt = "<QQ"
        if fmt is None or encoding & DW_EH_PE_indirect:
            raise CfiError(f"unsearchable .eh_frame_hdr table encoding {encoding:#04x}")
        self.application = encoding & 0x70
        if self.application not in (0, DW_EH_PE_datarel, DW_EH_PE_pcrel):
            raise CfiError(f"unsearchable .eh_frame_hdr table encoding {encoding:#04x}")
        self._struct = struct.Struct(fmt)
        self.entry_size = self._struct.size
        if table_offset + count * self.entry_size > len(data):
            raise CfiError(".eh_frame_hdr table runs past its end")

    def _entry(self, index: int) -> tuple[int, int]:
        position = self.table_offset + index * self.entry_size
        location, address = self._struct.unpack_from(self.data, position)
        if self.application == DW_EH_PE_datarel:
            return (location + self.vaddr) & MASK64, (address + self.vaddr) & MASK64
        if self.application == DW_EH_PE_pcrel:
            field = self.vaddr + position
            half = self.entry_size // 2
            return (location + field) & MASK64, (address + field + half) & MASK64
        return location, address

    def lookup(self, vaddr: int) -> int | None:
        """The address of the FDE whose initial location is the last one <= vaddr."""
        low, high = 0, self.count
        while low < high:
            middle = (low + high) // 2
            if self._entry(middle)[0] <= vaddr:
                low = middle + 1
            else:
                high = middle
        if low == 0:
            return None
        return self._entry(low - 1)[1]


def _parse_eh_frame_hdr(data: bytes, vaddr: int) -> tuple[int, _SearchTable | None]:
    """Read .eh_frame_hdr: (address of .eh_frame, search table or None)."""
    reader = Reader(data)
    version = reader.u8()
    if version != 1:
        raise CfiError(f".eh_frame_hdr version {version}")
    eh_frame_ptr_enc = reader.u8()
    fde_count_enc = reader.u8()
    table_enc = reader.u8()
    bases = PointerBases(data=vaddr)
    eh_frame = reader.pointer(eh_frame_ptr_enc, vaddr + reader.pos, bases)
    if fde_count_enc == DW_EH_PE_omit or table_enc == DW_EH_PE_omit:
        return eh_frame, None
    count = reader.pointer(fde_count_enc, vaddr + reader.pos, bases)
    try:
        return eh_frame, _SearchTable(data, vaddr, reader.pos, count, table_enc)
    except CfiError:
        return eh_frame, None


# -- the table -------------------------------------------------------------------


_FIND_CACHE_LIMIT = 1 << 16


class CfiTable:
    """All call-frame information of one module, by link-time address."""

    def __init__(
        self,
        name: str,
        *,
        eh_frame: _FrameSection | None = None,
        search_table: _SearchTable | None = None,
        debug_frames: Sequence[_FrameSection] = (),
        more_debug_frames: Callable[[], Sequence[_FrameSection]] | None = None,
    ) -> None:
        self.name = name
        self._eh_frame = eh_frame
        self._search_table = search_table
        self._debug_frames = list(debug_frames)
        # Sections of separate debug files, found only when .eh_frame and the
        # file's own .debug_frame have no answer: opening a debug file and
        # reading its section headers is work most stacks never need.
        self._more_debug_frames = more_debug_frames
        self._finds: dict[int, Fde | None] = {}
        self._rows: dict[int, tuple[Fde, Row] | CfiError | None] = {}

    def __repr__(self) -> str:
        parts = []
        if self._eh_frame is not None:
            how = "hdr" if self._search_table is not None else "linear"
            parts.append(f".eh_frame ({how})")
        parts.extend(section.name for section in self._debug_frames)
        if self._more_debug_frames is not None:
            parts.append("debug files not read yet")
        return f"<CfiTable {self.name}: {', '.join(parts) or 'empty'}>"

    @property
    def uses_search_table(self) -> bool:
        """True when .eh_frame lookups go through .eh_frame_hdr's binary search table."""
        return self._search_table is not None

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_bytes(
        cls,
        *,
        name: str = "<memory>",
        eh_frame: bytes | None = None,
        eh_frame_vaddr: int = 0,
        eh_frame_hdr: bytes | None = None,
        eh_frame_hdr_vaddr: int = 0,
        debug_frame: bytes | None = None,
        text_vaddr: int = 0,
        got_vaddr: int = 0,
    ) -> CfiTable | None:
        """Build from raw section bytes and their link-time addresses.

        ``text_vaddr`` and ``got_vaddr`` are the bases of text- and
        data-relative pointers.  An ``eh_frame_hdr`` is used only together
        with the ``eh_frame`` it points to.
        """
        bases = PointerBases(text=text_vaddr, data=got_vaddr)
        debug_frames = []
        if debug_frame:
            data = debug_frame
            debug_frames.append(
                _FrameSection(".debug_frame", lambda: data, 0, is_eh=False, bases=bases)
            )
        table = None
        eh_section = None
        if eh_frame_hdr:
            try:
                hdr_eh_frame, table = _parse_eh_frame_hdr(eh_frame_hdr, eh_frame_hdr_vaddr)
            except CfiError:
                table = None
            else:
                if eh_frame is not None and hdr_eh_frame != eh_frame_vaddr:
                    table = None
        if eh_frame:
            eh_data = eh_frame
            eh_section = _FrameSection(
                ".eh_frame", lambda: eh_data, eh_frame_vaddr, is_eh=True, bases=bases
            )
        if eh_section is None:
            table = None
        if eh_section is None and not debug_frames:
            return None
        return cls(name, eh_frame=eh_section, search_table=table, debug_frames=debug_frames)

    @classmethod
    def from_elf(
        cls,
        elf: ElfFile,
        extra: Sequence[ElfFile] | Callable[[], Sequence[ElfFile]] = (),
        *,
        use_eh_frame_hdr: bool = True,
    ) -> CfiTable | None:
        """The CFI of ``elf`` (and of ``extra``: separate debug files with .debug_frame).

        Returns None when there is none at all.  Reads only headers and
        .eh_frame_hdr up front; .eh_frame and .debug_frame are read on first use.
        ``extra`` may be a function that gives the debug files: it is called
        only when a lookup finds nothing in ``elf`` itself (or right away, when
        ``elf`` has no CFI of its own).  ``use_eh_frame_hdr`` False forces the
        linear index (for tests).
        """
        name = _elf_name(elf)
        try:
            return cls._from_elf(elf, extra, name, use_eh_frame_hdr)
        except CfiError:
            raise
        except RedhandError as error:
            raise CfiError(f"{name}: {error}") from None
        except (ValueError, IndexError, struct.error) as error:
            raise CfiError(f"{name}: unreadable call-frame information: {error}") from None

    @classmethod
    def _from_elf(
        cls,
        elf: ElfFile,
        extra: Sequence[ElfFile] | Callable[[], Sequence[ElfFile]],
        name: str,
        use_hdr: bool,
    ) -> CfiTable | None:
        def read_pointer(address: int) -> int:
            try:
                return int.from_bytes(elf.read_vaddr(address, 8), "little")
            except RedhandError as error:
                raise CfiError(f"indirect pointer at {address:#x}: {error}") from None

        # Text- and data-relative pointers (never emitted for x86_64 in
        # practice) are taken relative to .text and .got, as the LSB says;
        # without those sections, to 0 as libgcc does on x86_64.
        text = elf.get_section_by_name(".text")
        got = elf.get_section_by_name(".got")
        bases = PointerBases(
            text=text.sh_addr if text is not None else 0,
            data=got.sh_addr if got is not None else 0,
            read_pointer=read_pointer,
        )

        eh_section: _FrameSection | None = None
        table: _SearchTable | None = None
        hdr = elf.get_section_by_name(".eh_frame_hdr")
        eh = elf.get_section_by_name(".eh_frame")
        hdr_data: bytes | None = None
        hdr_vaddr = 0
        if hdr is not None and hdr.sh_type != SHT_NOBITS and hdr.sh_size:
            hdr_data, hdr_vaddr = hdr.data(), hdr.sh_addr
        elif hdr is None:
            for segment in elf.iter_segments():
                if segment.p_type == PT_GNU_EH_FRAME and segment.p_filesz:
                    hdr_data, hdr_vaddr = segment.data(), segment.p_vaddr
                    break
        hdr_eh_frame: int | None = None
        if hdr_data:
            try:
                hdr_eh_frame, table = _parse_eh_frame_hdr(hdr_data, hdr_vaddr)
            except CfiError:
                table = None
        if eh is not None and eh.sh_type != SHT_NOBITS and eh.sh_size:
            eh_section = _FrameSection(".eh_frame", eh.data, eh.sh_addr, is_eh=True, bases=bases)
            if hdr_eh_frame != eh.sh_addr:
                table = None
        elif eh is None and hdr_eh_frame is not None:
            loader = _segment_tail(elf, hdr_eh_frame)
            if loader is not None:
                eh_section = _FrameSection(
                    ".eh_frame", loader, hdr_eh_frame, is_eh=True, bases=bases
                )
        if eh_section is None or not use_hdr:
            table = None

        def debug_frames_of(sources: Sequence[ElfFile]) -> list[_FrameSection]:
            found = []
            for source in sources:
                section = source.get_section_by_name(".debug_frame")
                if section is None or section.sh_type == SHT_NOBITS or not section.sh_size:
                    continue
                label = ".debug_frame" if source is elf else f".debug_frame of {_elf_name(source)}"
                found.append(_FrameSection(label, section.data, 0, is_eh=False, bases=bases))
            return found

        debug_frames = debug_frames_of([elf])
        more: Callable[[], Sequence[_FrameSection]] | None = None
        if callable(extra):
            if eh_section is None and not debug_frames:
                debug_frames += debug_frames_of(extra())
            else:
                get_extra = extra

                def more() -> Sequence[_FrameSection]:
                    return debug_frames_of(get_extra())

        else:
            debug_frames += debug_frames_of(extra)
        if eh_section is None and not debug_frames:
            return None
        return cls(
            name,
            eh_frame=eh_section,
            search_table=table,
            debug_frames=debug_frames,
            more_debug_frames=more,
        )

    # -- lookups ---------------------------------------------------------------------

    def find(self, vaddr: int) -> Fde | None:
        """The FDE covering link-time address ``vaddr``, or None.  Raises only CfiError."""
        try:
            return self._finds[vaddr]
        except KeyError:
            pass
        fde = self._find(vaddr)
        if len(self._finds) >= _FIND_CACHE_LIMIT:
            self._finds.clear()
        self._finds[vaddr] = fde
        return fde

    def _find(self, vaddr: int) -> Fde | None:
        try:
            eh = self._eh_frame
            if eh is not None:
                fde: Fde | None
                table = self._search_table
                if table is not None:
                    address = table.lookup(vaddr)
                    fde = None
                    if address is not None:
                        fde = eh.fde_at(address - eh.vaddr)
                        if not fde.contains(vaddr):
                            fde = None
                else:
                    fde = eh.find_linear(vaddr)
                if fde is not None:
                    return fde
            for section in self._debug_sections():
                fde = section.find_linear(vaddr)
                if fde is not None:
                    return fde
            return None
        except (IndexError, struct.error, OverflowError) as error:  # pragma: no cover
            raise CfiError(f"{self.name}: malformed call-frame information: {error}") from None

    def row_for(self, vaddr: int) -> tuple[Fde, Row] | None:
        """The FDE and the row for link-time address ``vaddr``, or None without CFI.

        Answers, and CfiErrors, are cached per address: a thousand threads
        waiting at the same pc cost one lookup.
        """
        try:
            cached = self._rows[vaddr]
        except KeyError:
            pass
        else:
            if isinstance(cached, CfiError):
                raise cached.with_traceback(None)
            return cached
        result: tuple[Fde, Row] | CfiError | None
        try:
            fde = self.find(vaddr)
            result = None if fde is None else (fde, fde.row_at(vaddr))
        except CfiError as error:
            result = error
        except (IndexError, struct.error, OverflowError) as error:  # pragma: no cover
            result = CfiError(f"{self.name}: malformed CFA program: {error}")
        if len(self._rows) >= _FIND_CACHE_LIMIT:
            self._rows.clear()
        self._rows[vaddr] = result
        if isinstance(result, CfiError):
            raise result
        return result

    def iter_fdes(self) -> Iterator[Fde]:
        """Every FDE of .eh_frame, then of each .debug_frame, in section order."""
        sections = [self._eh_frame] if self._eh_frame is not None else []
        for section in [*sections, *self._debug_sections()]:
            yield from section.iter_fdes()

    def _debug_sections(self) -> list[_FrameSection]:
        """The .debug_frame sections, those of separate debug files read on first use."""
        more = self._more_debug_frames
        if more is not None:
            self._more_debug_frames = None
            try:
                self._debug_frames += more()
            except CfiError:
                raise
            except RedhandError as error:
                raise CfiError(f"{self.name}: a debug file's CFI cannot be read: {error}") from None
            except (ValueError, IndexError, struct.error) as error:
                raise CfiError(f"{self.name}: unreadable call-frame information: {error}") from None
        return self._debug_frames


def _elf_name(elf: ElfFile) -> str:
    return elf.path or "<elf>"


def _segment_tail(elf: ElfFile, start: int) -> Callable[[], bytes] | None:
    """A loader of the bytes from ``start`` to the end of its PT_LOAD segment.

    With section headers stripped, .eh_frame is known only by where
    .eh_frame_hdr points; its terminator (or the segment's end) ends it.
    """
    for segment in elf.iter_segments():
        low = segment.p_vaddr
        if segment.p_type == PT_LOAD and low <= start < low + segment.p_filesz:
            read = segment.data
            return lambda: read()[start - low :]
    return None
