"""The per-frame strategy chain: from a thread's registers to its raw frames.

For each frame the unwinder asks its strategies in order (DWARF CFI, the
sigreturn trampoline, a call through a bad pointer, a frameless stub, the
frame-pointer chain, a return address at sp, validated stack scanning:
:mod:`redhand.unwind.scan`);
the first that applies gives the caller's registers.  A strategy that does
not apply says why, and when none applies the trace ends with the most
telling of those reasons.  Every frame records how it was found
(:class:`~redhand.target.model.Trust`) and every trace why it ended
(:class:`~redhand.target.model.EndReason`).

A return address that is not code (``0x4141414141414141``, unmapped) means
the stack above it was overwritten: the trace says so in its end detail and
goes on with the callers a scan finds above the damage.

The unwinder runs after the target resumed, on copies of the stacks; it reads
only through the :class:`~redhand.target.memory.Memory` it is given and keeps
no assumption about the process being alive.
"""

from __future__ import annotations

import struct

from redhand._value import Value
from redhand.errors import MemoryReadError, RedhandError
from redhand.target.memory import Memory
from redhand.target.model import DWARF_FP, DWARF_RA, DWARF_SP, EndReason, Registers, Trust
from redhand.unwind._reader import MASK64, CfiError
from redhand.unwind.callsite import follows_call
from redhand.unwind.cfi import CfiTable, Fde, Row, RuleKind
from redhand.unwind.scan import (
    WORDS_AFTER_CFI,
    ScanStrategy,
    in_named_function,
    module_has_symbols,
    scan_caller,
)

# Protocols are for the type checker only (see redhand.target.memory).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Protocol
else:
    Protocol = object

__all__ = [
    "DEFAULT_STRATEGIES",
    "NOT_APPLICABLE",
    "BadCallStrategy",
    "CfiStrategy",
    "FramePointerStrategy",
    "FrameState",
    "LeafStrategy",
    "RawFrame",
    "ScanStrategy",
    "SigreturnStrategy",
    "Stop",
    "Strategy",
    "UnwindModule",
    "Unwinder",
]

NUM_REGS = 17  # DWARF 0-16: the general-purpose registers and rip

# x86_64 Linux rt_sigreturn trampoline: mov $15,%rax; syscall.
SIGRETURN_CODE = bytes.fromhex("48c7c00f0000000f05")
# struct rt_sigframe starts with the ucontext once the handler returned into
# the trampoline; uc_mcontext (the saved registers) is 40 bytes into it.
UCONTEXT_MCONTEXT = 40
# The first 17 greg slots of uc_mcontext and their DWARF numbers:
# r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip.
_MCONTEXT_DWARF = (8, 9, 10, 11, 12, 13, 14, 15, 5, 4, 6, 3, 1, 0, 2, 7, 16)
_MCONTEXT = struct.Struct("<17Q")
_TWO_WORDS = struct.Struct("<QQ")
_WORD = struct.Struct("<Q")


class RawFrame(Value):
    """One unwound frame, before symbolization.

    ``signal_frame`` is True when ``pc`` is exact (frame 0, or a frame a
    signal interrupted): symbolize pc itself.  ``trampoline`` is True for the
    frame of a signal trampoline (``__restore_rt``, where a handler returns):
    its pc is exact too, though nothing interrupted it.  Otherwise pc is a
    return address: symbolize pc - 1 (:attr:`lookup_pc` says which).  ``cfa``
    is this frame's canonical frame address when CFI computed it, else None.

    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_cfa",
        "_pc",
        "_signal_frame",
        "_sp",
        "_trampoline",
        "_trust",
    )
    _fields = ("pc", "sp", "trust", "signal_frame", "cfa", "trampoline")

    pc: int
    sp: int
    trust: Trust
    signal_frame: bool
    cfa: int | None
    trampoline: bool

    def __init__(
        self,
        pc: int,
        sp: int,
        trust: Trust,
        signal_frame: bool,
        cfa: int | None = None,
        trampoline: bool = False,
    ) -> None:
        self._pc = pc
        self._sp = sp
        self._trust = trust
        self._signal_frame = signal_frame
        self._cfa = cfa
        self._trampoline = trampoline

    @property
    def lookup_pc(self) -> int:
        """The address to symbolize: pc when it is exact, else pc - 1 (inside the call)."""
        return self.pc if self.signal_frame or self.trampoline else self.pc - 1


class UnwindModule(Protocol):
    """What the unwinder needs from a loaded module; the target layer provides it."""

    @property
    def bias(self) -> int:
        """Load bias: pc - bias is the link-time address."""
        ...

    def cfi(self) -> CfiTable | None:
        """The module's CFI, built on first use and cached by the module."""
        ...


class FrameState:
    """A frame while unwinding: its pc and its registers by DWARF number (None: unknown).

    ``callee_cfa`` is the CFA of the frame this one was unwound from (known
    only through CFI); ``from_trampoline`` says that frame is a signal
    trampoline.  (A plain class, not a dataclass: see :mod:`redhand._value`.)
    """

    __slots__ = ("callee_cfa", "from_trampoline", "pc", "regs", "signal_frame", "trust")

    def __init__(
        self,
        pc: int,
        regs: list[int | None],
        trust: Trust,
        signal_frame: bool,
        callee_cfa: int | None = None,
        from_trampoline: bool = False,
    ) -> None:
        self.pc = pc
        self.regs = regs
        self.trust = trust
        self.signal_frame = signal_frame
        self.callee_cfa = callee_cfa
        self.from_trampoline = from_trampoline

    def __repr__(self) -> str:
        return (
            f"FrameState(pc={self.pc:#x}, trust={self.trust!s}, signal_frame={self.signal_frame},"
            f" callee_cfa={self.callee_cfa}, from_trampoline={self.from_trampoline})"
        )

    @property
    def sp(self) -> int | None:
        return self.regs[DWARF_SP]


class Stop(Value):
    """A strategy's verdict that gives no caller.

    ``final`` True ends the trace with ``reason``; False only says this
    strategy does not apply (and why), and the next one is tried.
    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = ("_detail", "_final", "_reason")
    _fields = ("reason", "detail", "final")

    reason: EndReason
    detail: str
    final: bool

    def __init__(self, reason: EndReason, detail: str, final: bool = True) -> None:
        self._reason = reason
        self._detail = detail
        self._final = final


NOT_APPLICABLE = Stop(EndReason.NO_UNWIND_INFO, "", final=False)
"""What a strategy returns when it has nothing to say about a frame."""


class Strategy(Protocol):
    """One way to find a frame's caller."""

    name: str

    def step(self, unwinder: Unwinder, frame: FrameState) -> FrameState | Stop: ...


class CfiStrategy:
    """DWARF call-frame information (.eh_frame, .debug_frame)."""

    name = "cfi"

    def step(self, unwinder: Unwinder, frame: FrameState) -> FrameState | Stop:
        pc = frame.pc
        # What applies at a pc is the same for every thread that stops there
        # (a thousand threads waiting in one place): found once per pc.
        key = (pc, frame.signal_frame)
        found = unwinder._cfi_rows.get(key)
        if found is None:
            found = unwinder._cfi_rows[key] = self._find(unwinder, frame)
        if isinstance(found, Stop):
            return found
        fde, row, bias, plan = found
        try:
            if plan is not None:
                caller = _apply_plan(unwinder, frame, plan)
                if caller is not None:
                    return caller
            return _apply_row(unwinder, frame, fde, row, bias)
        except MemoryReadError as error:
            return Stop(
                EndReason.UNREADABLE_MEMORY,
                f"CFI at {pc:#x} needs memory that cannot be read ({error})",
            )
        except CfiError as error:
            return Stop(EndReason.NO_UNWIND_INFO, f"bad CFI at {pc:#x}: {error}", final=False)

    def _find(self, unwinder: Unwinder, frame: FrameState) -> _CfiAnswer | Stop:
        """The FDE, row, load bias and plan for the frame's pc, or why CFI does not apply."""
        pc = frame.pc
        lookup = pc if frame.signal_frame else pc - 1
        module = unwinder.module_for(lookup)
        if module is None:
            return Stop(EndReason.NO_UNWIND_INFO, f"no module contains {pc:#x}", final=False)
        bias = module.bias
        try:
            table = unwinder.table_of(module)
            found = table.row_for(lookup - bias) if table is not None else None
        except CfiError as error:
            return Stop(EndReason.NO_UNWIND_INFO, f"bad CFI at {pc:#x}: {error}", final=False)
        if found is None:
            return Stop(EndReason.NO_UNWIND_INFO, f"no CFI covers {pc:#x}", final=False)
        fde, row = found
        if (
            not fde.signal_frame
            and not frame.signal_frame
            and fde.pc_end == pc - bias
            and unwinder.is_sigreturn(pc)
        ):
            # The return address is a sigreturn trampoline without CFI, right
            # after the function whose FDE covers pc - 1.
            return Stop(EndReason.NO_UNWIND_INFO, f"{pc:#x} is a trampoline", final=False)
        return fde, row, bias, _plan(fde, row)


# A row in the form the common case needs (see _plan): CFA register, CFA
# offset, the saved registers as (DWARF number, offset into the bytes read),
# where those bytes start relative to the CFA and how many, the return
# address column, and whether the FDE is a signal frame.
_Plan = tuple[int, int, tuple[tuple[int, int], ...], int, int, int, bool]
_CfiAnswer = tuple[Fde, Row, int, "_Plan | None"]
_MAX_PLAN_SPAN = 256


def _plan(fde: Fde, row: Row) -> _Plan | None:
    """The row as a plan for :func:`_apply_plan`, or None when it needs :func:`_apply_row`.

    Nearly every row says: the CFA is a register plus an offset, and the
    return address and some callee-saved registers are saved at offsets from
    it.  Such a row is applied with one memory read for all the saved values.
    """
    cfa = row.cfa
    ra_column = fde.cie.ra_register
    if cfa.expression is not None or not 0 <= cfa.register < NUM_REGS or ra_column >= NUM_REGS:
        return None
    saves: list[tuple[int, int]] = []
    for number, rule in row.registers.items():
        if number >= NUM_REGS:
            if number == ra_column:
                return None
            continue
        if rule.kind is _OFFSET:
            saves.append((number, rule.value))
        elif rule.kind is not _SAME_VALUE or number == ra_column:
            return None
    if ra_column not in row.registers or not saves:
        return None
    low = min(value for _, value in saves)
    span = max(value for _, value in saves) + 8 - low
    if span > _MAX_PLAN_SPAN:
        return None
    at = tuple((number, value - low) for number, value in saves)
    return cfa.register, cfa.offset, at, low, span, ra_column, fde.signal_frame


def _apply_plan(unwinder: Unwinder, frame: FrameState, plan: _Plan) -> FrameState | None:
    """The caller by a plan; None when the plan cannot say (then _apply_row explains why)."""
    register, offset, saves, low, span, ra_column, signal = plan
    regs = frame.regs
    base = regs[register]
    if base is None:
        return None
    cfa = (base + offset) & MASK64
    try:
        data = unwinder.memory.read((cfa + low) & MASK64, span)
    except MemoryReadError:
        return None
    caller = regs.copy()
    caller[DWARF_SP] = cfa
    from_bytes = int.from_bytes
    for number, at in saves:
        caller[number] = from_bytes(data[at : at + 8], "little")
    ra = caller[ra_column]
    assert ra is not None  # _plan makes sure the return address is one of the saves
    caller[DWARF_RA] = ra
    return FrameState(ra, caller, Trust.CONTEXT if signal else Trust.CFI, signal, cfa, signal)


_OFFSET = RuleKind.OFFSET
_UNDEFINED = RuleKind.UNDEFINED
_SAME_VALUE = RuleKind.SAME_VALUE
_VAL_OFFSET = RuleKind.VAL_OFFSET
_REGISTER = RuleKind.REGISTER
_EXPRESSION = RuleKind.EXPRESSION


def _evaluate(
    expression: bytes,
    register: Callable[[int], int],
    memory: Memory,
    *,
    initial: Sequence[int] = (),
    bias: int = 0,
) -> int:
    """:func:`redhand.unwind.expr.evaluate`, imported on first use (few CFI rules need it)."""
    from redhand.unwind.expr import evaluate

    return evaluate(expression, register, memory, initial=initial, bias=bias)


def _register_reader(regs: list[int | None]) -> Callable[[int], int]:
    """What an expression uses to read the frame's registers (ExpressionError if unknown)."""

    from redhand.unwind.expr import ExpressionError

    def register(number: int) -> int:
        value = regs[number] if 0 <= number < NUM_REGS else None
        if value is None:
            raise ExpressionError(f"the expression needs register {number}, which is unknown")
        return value

    return register


def _apply_row(
    unwinder: Unwinder, frame: FrameState, fde: Fde, row: Row, bias: int
) -> FrameState | Stop:
    regs = frame.regs
    memory = unwinder.memory

    cfa_rule = row.cfa
    if cfa_rule.expression is None:
        base = regs[cfa_rule.register] if 0 <= cfa_rule.register < NUM_REGS else None
        if base is None:
            raise CfiError(f"the CFA is based on register {cfa_rule.register}, which is unknown")
        cfa = (base + cfa_rule.offset) & MASK64
    else:
        cfa = _evaluate(cfa_rule.expression, _register_reader(regs), memory, bias=bias)

    caller = regs.copy()
    caller[DWARF_SP] = cfa
    ra_column = fde.cie.ra_register
    ra_rule = None
    read = memory.read
    for number, rule in row.registers.items():
        if number == ra_column:
            ra_rule = rule
        if number >= NUM_REGS:
            continue
        kind = rule.kind
        if kind is _OFFSET:
            caller[number] = int.from_bytes(read((cfa + rule.value) & MASK64, 8), "little")
        elif kind is _UNDEFINED:
            caller[number] = None
        elif kind is _SAME_VALUE:
            pass
        elif kind is _VAL_OFFSET:
            caller[number] = (cfa + rule.value) & MASK64
        elif kind is _REGISTER:
            caller[number] = regs[rule.value] if rule.value < NUM_REGS else None
        elif kind is _EXPRESSION:
            address = _evaluate(
                rule.expression, _register_reader(regs), memory, initial=(cfa,), bias=bias
            )
            caller[number] = int.from_bytes(read(address, 8), "little")
        else:  # VAL_EXPRESSION
            caller[number] = _evaluate(
                rule.expression, _register_reader(regs), memory, initial=(cfa,), bias=bias
            )

    if ra_rule is None:
        raise CfiError(f"no rule for the return address at {frame.pc:#x}")
    if ra_rule.kind is _UNDEFINED:
        return Stop(EndReason.OUTERMOST, "the CFI marks this frame as the outermost")
    ra = caller[ra_column] if ra_column < NUM_REGS else None
    if ra is None:
        raise CfiError(f"the return address column {ra_column} is unknown")
    caller[DWARF_RA] = ra
    signal = fde.signal_frame
    return FrameState(
        ra,
        caller,
        Trust.CONTEXT if signal else Trust.CFI,
        signal,
        cfa,
        signal,
    )


class SigreturnStrategy:
    """A signal trampoline without CFI, known by its code; the caller is in the ucontext."""

    name = "sigreturn"

    def step(self, unwinder: Unwinder, frame: FrameState) -> FrameState | Stop:
        if not unwinder.is_sigreturn(frame.pc):
            return NOT_APPLICABLE
        sp = frame.regs[DWARF_SP]
        if sp is None:
            return Stop(EndReason.NO_UNWIND_INFO, "signal trampoline with an unknown sp")
        address = sp + UCONTEXT_MCONTEXT
        try:
            values = _MCONTEXT.unpack(unwinder.memory.read(address, _MCONTEXT.size))
        except MemoryReadError as error:
            return Stop(
                EndReason.UNREADABLE_MEMORY,
                f"the signal frame's saved registers at {address:#x} cannot be read ({error})",
            )
        caller: list[int | None] = [None] * NUM_REGS
        for number, value in zip(_MCONTEXT_DWARF, values, strict=True):
            caller[number] = value
        return FrameState(
            pc=values[-1],
            regs=caller,
            trust=Trust.CONTEXT,
            signal_frame=True,
            from_trampoline=True,
        )


class BadCallStrategy:
    """An exact pc outside executable memory: a call through a bad pointer just happened.

    The caller's return address is then the word at sp.  The frame is a
    guess checked only by the return address being executable: trust SCAN.
    """

    name = "bad-call"

    def step(self, unwinder: Unwinder, frame: FrameState) -> FrameState | Stop:
        sp = frame.regs[DWARF_SP]
        if not frame.signal_frame or sp is None or unwinder.executable(frame.pc):
            return NOT_APPLICABLE
        try:
            (ra,) = _WORD.unpack(unwinder.memory.read(sp, 8))
        except MemoryReadError:
            return Stop(
                EndReason.BAD_PC, f"pc {frame.pc:#x} is not in executable memory", final=False
            )
        if ra == 0 or not unwinder.executable(ra):
            return Stop(
                EndReason.BAD_PC, f"pc {frame.pc:#x} is not in executable memory", final=False
            )
        caller = list(frame.regs)
        caller[DWARF_SP] = sp + 8
        caller[DWARF_RA] = ra
        return FrameState(pc=ra, regs=caller, trust=Trust.SCAN, signal_frame=False)


class LeafStrategy:
    """An exact pc in code without CFI and without a frame: the return address is at sp.

    Hand-written assembly stubs (system call wrappers such as glibc's clone3,
    whose CFI leaves the instructions around its syscall uncovered) neither
    describe themselves nor set up rbp.  For frame 0, or a frame a signal
    interrupted, the word at sp is taken as the return address when it is
    executable and right after a call instruction; trust SCAN.

    With ``strict`` the call must also be a direct call to a function that
    starts at or before pc and does not begin by pushing rbp (so it has no
    frame of its own): then this runs before the frame-pointer strategy, which
    would lose the stub's caller.  Without ``strict`` it runs after it: a
    wrong frame pointer loses one frame, a stale word taken for a return
    address would invent frames.
    """

    name = "leaf"

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict

    def step(self, unwinder: Unwinder, frame: FrameState) -> FrameState | Stop:
        sp = frame.regs[DWARF_SP]
        if not frame.signal_frame or sp is None:
            return NOT_APPLICABLE
        memory = unwinder.memory
        try:
            (ra,) = _WORD.unpack(memory.read(sp, 8))
        except MemoryReadError:
            return NOT_APPLICABLE
        if not unwinder.executable(ra) or not unwinder.follows_call(ra):
            return NOT_APPLICABLE
        if self.strict and not _direct_call_into_frameless(memory, ra, frame.pc):
            return NOT_APPLICABLE
        caller = list(frame.regs)
        caller[DWARF_SP] = sp + 8
        caller[DWARF_RA] = ra
        return FrameState(pc=ra, regs=caller, trust=Trust.SCAN, signal_frame=False)


_ENDBR64 = bytes.fromhex("f30f1efa")
_PUSH_RBP = 0x55
_MAX_STUB = 1 << 16  # how far pc may be from the start of the stub it is in


def _direct_call_into_frameless(memory: Memory, ra: int, pc: int) -> bool:
    """Whether ``ra`` follows ``call rel32`` to a function holding ``pc`` that pushes no rbp."""
    try:
        call = memory.read(ra - 5, 5)
        if call[0] != 0xE8:
            return False
        target = (ra + int.from_bytes(call[1:], "little", signed=True)) & MASK64
        if not 0 <= pc - target < _MAX_STUB:
            return False
        entry = memory.read(target, 5)
    except MemoryReadError:
        return False
    skip = len(_ENDBR64) if entry.startswith(_ENDBR64) else 0
    # At the entry itself nothing is pushed yet, whatever the function does next.
    return pc == target + skip or entry[skip] != _PUSH_RBP


class FramePointerStrategy:
    """The rbp chain: caller pc = [rbp+8], caller sp = rbp+16, caller rbp = [rbp].

    Validated: rbp is 8-aligned, not below sp, and readable; the return
    address is executable and, when the code can be read, right after a call
    (or a signal trampoline, where the kernel "returns" a handler to).
    """

    name = "fp"

    def step(self, unwinder: Unwinder, frame: FrameState) -> FrameState | Stop:
        regs = frame.regs
        rbp = regs[DWARF_FP]
        sp = regs[DWARF_SP]
        if rbp is None or sp is None or rbp < sp or rbp & 7:
            what = "unknown" if rbp is None else f"{rbp:#x}"
            return Stop(
                EndReason.NO_UNWIND_INFO,
                f"no CFI for {frame.pc:#x} and rbp ({what}) is not a frame pointer",
                final=False,
            )
        try:
            saved_rbp, ra = _TWO_WORDS.unpack(unwinder.memory.read(rbp, 16))
        except MemoryReadError:
            return Stop(
                EndReason.NO_UNWIND_INFO,
                f"no CFI for {frame.pc:#x} and rbp ({rbp:#x}) points to no readable frame",
                final=False,
            )
        if ra == 0:
            return Stop(EndReason.OUTERMOST, "the frame-pointer chain ends")
        if not unwinder.executable(ra) or (
            unwinder.follows_call(ra) is False and not unwinder.is_sigreturn(ra)
        ):
            return Stop(
                EndReason.NO_UNWIND_INFO,
                f"no CFI for {frame.pc:#x}, and rbp ({rbp:#x}) gives {ra:#x},"
                " which is not a return address",
                final=False,
            )
        caller = list(regs)
        caller[DWARF_FP] = saved_rbp
        caller[DWARF_SP] = rbp + 16
        caller[DWARF_RA] = ra
        return FrameState(pc=ra, regs=caller, trust=Trust.FP, signal_frame=False)


DEFAULT_STRATEGIES: tuple[Strategy, ...] = (
    CfiStrategy(),
    SigreturnStrategy(),
    BadCallStrategy(),
    LeafStrategy(strict=True),
    FramePointerStrategy(),
    LeafStrategy(strict=False),
    ScanStrategy(),
)


class Unwinder:
    """Unwinds threads of one target.

    ``memory`` answers reads of the stacks (and, to recognise a signal
    trampoline without CFI, of code); ``find_module`` maps an address to the
    module loaded there; ``is_executable`` says whether an address lies in
    executable memory.  One unwinder may serve every thread of a target: it
    caches module lookups and trampoline checks per address.
    """

    def __init__(
        self,
        memory: Memory,
        find_module: Callable[[int], UnwindModule | None],
        is_executable: Callable[[int], bool],
        *,
        strategies: Sequence[Strategy] = DEFAULT_STRATEGIES,
    ) -> None:
        self.memory = memory
        self._find_module = find_module
        self._is_executable = is_executable
        self.strategies = tuple(strategies)
        self._modules: dict[int, UnwindModule | None] = {}
        self._executable: dict[int, bool] = {}
        self._sigreturn: dict[int, bool] = {}
        self._calls: dict[int, bool | None] = {}
        self._tables: dict[int, tuple[UnwindModule, CfiTable | None]] = {}
        self._cfi_rows: dict[tuple[int, bool], _CfiAnswer | Stop] = {}
        self._functions: dict[int, bool | None] = {}
        self._symbolized: dict[int, tuple[UnwindModule, bool | None]] = {}

    # -- services for strategies ------------------------------------------------

    def module_for(self, address: int) -> UnwindModule | None:
        try:
            return self._modules[address]
        except KeyError:
            module = self._modules[address] = self._find_module(address)
            return module

    def table_of(self, module: UnwindModule) -> CfiTable | None:
        """The module's CFI; a module whose CFI cannot be read has none (CfiError says why)."""
        key = id(module)
        cached = self._tables.get(key)
        if cached is not None and cached[0] is module:
            return cached[1]
        try:
            table = module.cfi()
        except CfiError:
            raise
        except (RedhandError, OSError) as error:
            raise CfiError(f"the module's CFI cannot be read: {error}") from None
        self._tables[key] = (module, table)
        return table

    def executable(self, address: int) -> bool:
        try:
            return self._executable[address]
        except KeyError:
            result = self._executable[address] = bool(self._is_executable(address))
            return result

    def follows_call(self, address: int) -> bool | None:
        """Whether a call instruction ends right before ``address`` (None: code unreadable)."""
        try:
            return self._calls[address]
        except KeyError:
            result = self._calls[address] = follows_call(self.memory, address)
            return result

    def in_function(self, address: int) -> bool | None:
        """Whether ``address`` lies in a named function, for stack scanning.

        None when there is no symbol table to ask: no module holds the
        address (JIT code), or its module has none (a stripped file).  False
        also when the module cannot say whether it has one (it offers only
        the :class:`UnwindModule` protocol): scanning must not take a word
        it cannot validate.
        """
        try:
            return self._functions[address]
        except KeyError:
            pass
        module = self.module_for(address)
        result = None
        if module is not None:
            key = id(module)
            known = self._symbolized.get(key)
            if known is None or known[0] is not module:
                known = self._symbolized[key] = (module, module_has_symbols(module))
            if known[1] is None:
                result = False
            elif known[1]:
                result = in_named_function(module, address)
        self._functions[address] = result
        return result

    def is_sigreturn(self, pc: int) -> bool:
        """Whether the code at ``pc`` is the rt_sigreturn trampoline (False if unreadable)."""
        try:
            return self._sigreturn[pc]
        except KeyError:
            pass
        try:
            result = self.memory.read(pc, len(SIGRETURN_CODE)) == SIGRETURN_CODE
        except MemoryReadError:
            result = False
        self._sigreturn[pc] = result
        return result

    # -- the chain ----------------------------------------------------------------

    def step(self, frame: FrameState) -> FrameState | Stop:
        """The caller of ``frame`` by the first strategy that applies, or why there is none."""
        skipped: list[Stop] = []
        for strategy in self.strategies:
            result = strategy.step(self, frame)
            if isinstance(result, FrameState):
                return result
            if result.final:
                return result
            skipped.append(result)
        return _verdict(frame, skipped)

    def unwind(
        self, registers: Registers, *, max_frames: int = 256
    ) -> tuple[list[RawFrame], EndReason, str | None]:
        """Frames innermost first, why the trace ended, and a detail for the user."""
        regs: list[int | None] = [
            registers.rax, registers.rdx, registers.rcx, registers.rbx,
            registers.rsi, registers.rdi, registers.rbp, registers.rsp,
            registers.r8, registers.r9, registers.r10, registers.r11,
            registers.r12, registers.r13, registers.r14, registers.r15,
            registers.rip,
        ]  # fmt: skip
        frame = FrameState(pc=registers.rip, regs=regs, trust=Trust.CONTEXT, signal_frame=True)
        return self.walk(frame, max_frames=max_frames)

    def walk(
        self, frame: FrameState, *, max_frames: int = 256
    ) -> tuple[list[RawFrame], EndReason, str | None]:
        """Like :meth:`unwind`, from any frame's state (one found in the middle of a stack)."""
        frames: list[RawFrame] = []
        max_frames = max(1, max_frames)
        damage: _Damage | None = None
        while True:
            try:
                result = self.step(frame)
            except MemoryReadError as error:  # a strategy that forgot to catch it
                result = Stop(EndReason.UNREADABLE_MEMORY, str(error))
            except CfiError as error:
                result = Stop(EndReason.NO_UNWIND_INFO, str(error))
            sp = frame.regs[DWARF_SP]
            if isinstance(result, FrameState):
                cfa, trampoline = result.callee_cfa, result.from_trampoline
            else:
                cfa, trampoline = None, False
            frames.append(
                RawFrame(frame.pc, sp or 0, frame.trust, frame.signal_frame, cfa, trampoline)
            )
            if isinstance(result, Stop):
                return _ended(frames, result.reason, result.detail, damage)
            caller = result
            caller_sp = caller.regs[DWARF_SP]
            if caller.pc == 0:
                return _ended(frames, EndReason.OUTERMOST, "the return address is 0", damage)
            if caller_sp is None:
                return _ended(
                    frames,
                    EndReason.NO_UNWIND_INFO,
                    "the caller's stack pointer is unknown",
                    damage,
                )
            if caller.trust is not Trust.CONTEXT and sp is not None and caller_sp <= sp:
                return _ended(
                    frames,
                    EndReason.LOOP,
                    f"the stack pointer did not grow ({sp:#x} to {caller_sp:#x})",
                    damage,
                )
            if not self.executable(caller.pc):
                detail = f"return address {caller.pc:#x} is not in executable memory"
                if caller.trust is Trust.CONTEXT:
                    if len(frames) < max_frames:
                        # The interrupted code itself: show where it was.
                        frames.append(RawFrame(caller.pc, caller_sp, caller.trust, True, None))
                        detail = f"a signal interrupted {caller.pc:#x}, not in executable memory"
                    return _ended(frames, EndReason.BAD_PC, detail, damage)
                if damage is not None or len(frames) >= max_frames:
                    return _ended(frames, EndReason.BAD_PC, detail, damage)
                # A smashed stack: look for the real callers above the damage
                # (once per trace: a second bad return address after a
                # recovery ends it).
                damage = _Damage(len(frames) - 1, caller.pc, len(frames))
                recovered = scan_caller(self, caller.regs, caller_sp, WORDS_AFTER_CFI, damaged=True)
                if recovered is None:
                    return (
                        frames,
                        EndReason.BAD_PC,
                        damage.text()
                        + (f"; no return address in the {WORDS_AFTER_CFI} words above it"),
                    )
                caller = recovered
            if len(frames) >= max_frames:
                return _ended(frames, EndReason.LIMIT, f"stopped after {max_frames} frames", damage)
            frame = caller


class _Damage:
    """A return address that is not code: frame ``index``'s, ``address``.

    ``resumed`` is the index of the first frame recovered by scanning above it.
    """

    __slots__ = ("address", "index", "resumed")

    def __init__(self, index: int, address: int, resumed: int) -> None:
        self.index = index
        self.address = address
        self.resumed = resumed

    def text(self) -> str:
        return (
            f"frame {self.index}'s return address {self.address:#x} is not code:"
            " the stack above it was probably overwritten"
        )


def _ended(
    frames: list[RawFrame], reason: EndReason, detail: str | None, damage: _Damage | None
) -> tuple[list[RawFrame], EndReason, str | None]:
    """How a trace ends; after a smashed return address, the damage comes first.

    Such a trace ends as ``bad-pc`` (it is broken, whatever came after), or
    ``limit`` when the frame limit cut it; the detail names the damaged
    frame, the frames recovered by scanning above it and how they ended.
    """
    if damage is None:
        return frames, reason, detail
    last = len(frames) - 1
    recovered = (
        f"frame {last} was" if last == damage.resumed else f"frames {damage.resumed}-{last} were"
    )
    how = (
        "reached the thread's first frame"
        if reason is EndReason.OUTERMOST
        else f"stopped: {_END_WORDS.get(reason, str(reason))}"
    )
    text = (
        f"{damage.text()}; {recovered} recovered by scanning the stack above it,"
        f" and unwinding from there {how}" + (f" ({detail})" if detail else "")
    )
    return frames, EndReason.LIMIT if reason is EndReason.LIMIT else EndReason.BAD_PC, text


_END_WORDS = {
    EndReason.NO_UNWIND_INFO: "no unwind information",
    EndReason.UNREADABLE_MEMORY: "memory needed to unwind could not be read",
    EndReason.BAD_PC: "a return address points to no code",
    EndReason.LOOP: "the stack pointer stopped growing",
    EndReason.LIMIT: "frame limit reached",
}
"""How the part of a trace after a smashed return address ended, in words."""


def _verdict(frame: FrameState, skipped: list[Stop]) -> Stop:
    """Why no strategy applied: the first reason other than a lack of unwind information."""
    for stop in skipped:
        if stop.reason is not EndReason.NO_UNWIND_INFO:
            return Stop(stop.reason, stop.detail)
    details = [stop.detail for stop in skipped if stop.detail]
    return Stop(
        EndReason.NO_UNWIND_INFO,
        "; ".join(details) if details else f"no way to unwind from {frame.pc:#x}",
    )
