"""Validated stack scanning: return addresses found among the words of a stack.

When neither CFI nor the frame-pointer chain says where a frame's caller is
(code without unwind tables or frame pointers, JIT code, a stack whose
return address was overwritten), the words above the stack pointer are
searched for one that is plausibly a return address, by the rules of
Breakpad and rust-minidump:

- it is a canonical address and lies in an executable mapping;
- the instruction before it is a call (:mod:`redhand.unwind.callsite`);
- where its module has a symbol table, it falls inside a named function;
- at most 40 words are searched (160 when the frame below was found by its
  registers or by CFI, whose stack pointer is exact).

The first word that passes becomes the caller's pc, and the caller's stack
pointer is the slot just above it.  From there the unwinder's other
strategies take over again (CFI usually knows the scanned pc), so a scan
recovers the callers past the gap rather than scanning all the way down.
The chain ends because every frame's stack pointer must grow (the unwinder
checks it) and a scan only looks a bounded number of words up.

:func:`scan_stack` is the forensic side: every plausible return address on a
thread's stack with the reason it was accepted or rejected.

This module imports nothing heavy: the strategy is on the path of
``redhand stack``.  It does not import :mod:`redhand.unwind.unwinder` at run
time (that module imports this one for its default strategies).
"""

from __future__ import annotations

import struct

from redhand._value import Constant, Value, define
from redhand.errors import MemoryReadError, RedhandError
from redhand.target.model import DWARF_FP, DWARF_RA, DWARF_SP, EndReason, Trust

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

    from redhand.target.memory import Memory
    from redhand.target.target import Target, Thread
    from redhand.unwind.unwinder import FrameState, Stop, Unwinder

__all__ = [
    "MIN_PC",
    "WORDS_AFTER_CFI",
    "WORDS_AFTER_GUESS",
    "ScanEntry",
    "ScanStrategy",
    "Verdict",
    "find_return_address",
    "is_canonical",
    "read_stack_words",
    "scan_stack",
]

MIN_PC = 4096
"""A pc below this is never code (the kernel's mmap_min_addr): a scan never takes one."""
WORDS_AFTER_CFI = 160
"""Words scanned above a frame found by its registers or by CFI (its sp is exact)."""
WORDS_AFTER_GUESS = 40
"""Words scanned above a frame found by frame pointers or by scanning."""

# x86_64 has 48-bit virtual addresses: bits 63-47 are all equal.
_LOW_END = 1 << 47
_HIGH_START = 0xFFFF_8000_0000_0000
# A frame pointer further than this above a return address's slot is not the
# caller's (a frame of more than 1 MiB is possible but not to be guessed).
_MAX_FRAME = 1 << 20
# The registers a call may clobber (rax, rdx, rcx, rsi, rdi, r8-r11): unknown
# in a caller found by scanning.
_VOLATILE = (0, 1, 2, 4, 5, 8, 9, 10, 11)
_WORD = struct.Struct("<Q")
_PAGE = 4096


def is_canonical(value: int) -> bool:
    """Whether ``value`` is a canonical x86_64 address (bits 63-47 all equal)."""
    return value < _LOW_END or value >= _HIGH_START


def read_stack_words(memory: Memory, start: int, count: int) -> bytes:
    """Up to ``count`` words from ``start``: fewer when the memory ends, whole words only."""
    wanted = max(0, count) * 8
    if not wanted:
        return b""
    try:
        return memory.read(start, wanted)
    except MemoryReadError:
        pass
    # The stack ends inside the range (its top, or a gap): read page by page
    # up to the first page that cannot be read.
    chunks = []
    at = start
    end = start + wanted
    while at < end:
        stop = min(end, (at // _PAGE + 1) * _PAGE)
        try:
            chunks.append(memory.read(at, stop - at))
        except MemoryReadError:
            break
        at = stop
    data = b"".join(chunks)
    return data[: len(data) & ~7]


class Verdict(Constant, str):
    """What a scan made of one word of the stack."""

    __slots__ = ()

    ACCEPTED: ClassVar[Verdict]
    NOT_CANONICAL: ClassVar[Verdict]
    NOT_EXECUTABLE: ClassVar[Verdict]
    NO_CALL: ClassVar[Verdict]
    OUTSIDE_FUNCTION: ClassVar[Verdict]


define(
    Verdict,
    ACCEPTED="accepted",
    NOT_CANONICAL="not-canonical",
    NOT_EXECUTABLE="not-executable",
    NO_CALL="no-call",
    OUTSIDE_FUNCTION="outside-function",
)


def _verdict(unwinder: Unwinder, value: int) -> Verdict:
    """The rules, cheapest first; every answer is cached by the unwinder per address."""
    if not is_canonical(value):
        return Verdict.NOT_CANONICAL
    if value < MIN_PC or not unwinder.executable(value):
        return Verdict.NOT_EXECUTABLE
    if unwinder.follows_call(value) is not True:
        return Verdict.NO_CALL
    # The call lies inside the caller (a return address may be one past the
    # end of a function that ends with a call to a noreturn function).
    # in_function is None when the module has no symbol table to ask.
    if unwinder.in_function(value - 1) is False:
        return Verdict.OUTSIDE_FUNCTION
    return Verdict.ACCEPTED


def find_return_address(unwinder: Unwinder, sp: int, words: int) -> tuple[int, int] | None:
    """The first plausible return address among ``words`` words from ``sp``: (slot, value)."""
    return _first_accepted(unwinder, read_stack_words(unwinder.memory, sp, words), sp)


def module_has_symbols(module: object) -> bool | None:
    """Whether a module's symbol table covers all its functions (a .symtab or a debug file).

    A stripped file still has .dynsym, but that names only exported
    functions: requiring a return address to lie in one of them would reject
    every call from an internal function, so such a module counts as having
    no symbols.  None when the module offers no way to tell: the
    :class:`~redhand.unwind.unwinder.UnwindModule` protocol asks only for a
    load bias and CFI; scanning also needs ``symbols()``, ``elf()`` and
    ``lookup(address)`` (as :class:`redhand.target.module.Module` has).
    """
    symbols_of = getattr(module, "symbols", None)
    elf_of = getattr(module, "elf", None)
    if (
        not callable(symbols_of)
        or not callable(elf_of)
        or not callable(getattr(module, "lookup", None))
    ):
        return None
    try:
        elf = elf_of()
        if elf is None:
            return False
        if (
            elf.get_section_by_name(".symtab") is not None
            or elf.get_section_by_name(".gnu_debugdata") is not None
        ):
            return symbols_of() is not None
        symbols = symbols_of()
        return symbols is not None and symbols.debug_file is not None
    except (RedhandError, OSError):
        return False


def in_named_function(module: object, address: int) -> bool | None:
    """Whether ``address`` lies in a named function of ``module`` (None: it cannot say).

    Ask only of a module with a full symbol table (:func:`module_has_symbols`).
    """
    lookup = getattr(module, "lookup", None)
    if not callable(lookup):
        return None
    return lookup(address) is not None


def scanned_caller(
    regs: list[int | None], slot: int, ra: int, data: bytes, base: int, *, damaged: bool = False
) -> FrameState:
    """The caller whose return address ``ra`` was found at ``slot``.

    ``data`` holds the stack words read from ``base``.  The caller's sp is
    just above the slot; the registers a call clobbers are unknown; the
    callee-saved ones stay the callee's, rbp too, but for two cases where the
    word below the slot is taken as the caller's rbp (a callee that begins
    with ``push %rbp`` saved it there), if it can be a frame pointer:

    - the callee's rbp points at that word (the callee has a standard frame,
      and CFI of the caller may need its frame pointer);
    - ``damaged``: the callee's rbp was read from an overwritten stack, and
      cannot be the caller's frame pointer.

    Taking that word in other cases would turn any stack address left below
    a return address into a frame pointer, and the frame-pointer strategy
    would then follow a chain that is not one.
    """
    from redhand.unwind.unwinder import FrameState

    caller = list(regs)
    for number in _VOLATILE:
        caller[number] = None
    caller[DWARF_SP] = slot + 8
    caller[DWARF_RA] = ra
    rbp = regs[DWARF_FP]
    below = slot - 8 - base
    if below >= 0 and (
        rbp == slot - 8 or (damaged and (rbp is None or not _frame_pointer_for(rbp, slot)))
    ):
        (saved,) = _WORD.unpack_from(data, below)
        if _frame_pointer_for(saved, slot):
            caller[DWARF_FP] = saved
    return FrameState(pc=ra, regs=caller, trust=Trust.SCAN, signal_frame=False)


def _frame_pointer_for(value: int, slot: int) -> bool:
    """Whether ``value`` can be the frame pointer of the frame whose return address is at slot."""
    return slot + 8 <= value <= slot + _MAX_FRAME and not value & 7


def scan_caller(
    unwinder: Unwinder, regs: list[int | None], sp: int, words: int, *, damaged: bool = False
) -> FrameState | None:
    """The caller found by scanning ``words`` words from ``sp``, or None.

    ``damaged``: ``regs`` were restored from an overwritten stack (see
    :func:`scanned_caller`).
    """
    data = read_stack_words(unwinder.memory, sp, words)
    found = _first_accepted(unwinder, data, sp)
    if found is None:
        return None
    slot, ra = found
    return scanned_caller(regs, slot, ra, data, sp, damaged=damaged)


def _first_accepted(unwinder: Unwinder, data: bytes, base: int) -> tuple[int, int] | None:
    executable = unwinder.executable
    for index, (value,) in enumerate(_WORD.iter_unpack(data)):
        if value < MIN_PC or not executable(value):
            continue  # most words: small numbers, stack and data pointers, non-canonical values
        if _verdict(unwinder, value) is Verdict.ACCEPTED:
            return base + 8 * index, value
    return None


class ScanStrategy:
    """The last resort: a return address found among the words above sp (trust SCAN).

    Searches 160 words above a frame found by its registers or by CFI, 40
    above one found by frame pointers or by scanning (whose sp is itself a
    guess).  Never final: when nothing is found the trace ends with the
    reasons of the strategies before it.
    """

    name = "scan"

    def step(self, unwinder: Unwinder, frame: FrameState) -> FrameState | Stop:
        from redhand.unwind.unwinder import Stop

        sp = frame.regs[DWARF_SP]
        if sp is None:
            return Stop(EndReason.NO_UNWIND_INFO, "", final=False)
        words = WORDS_AFTER_CFI if frame.trust in (Trust.CONTEXT, Trust.CFI) else WORDS_AFTER_GUESS
        caller = scan_caller(unwinder, frame.regs, sp, words)
        if caller is None:
            return Stop(
                EndReason.NO_UNWIND_INFO,
                f"no return address in the {words} words above sp {sp:#x}",
                final=False,
            )
        return caller


# -- forensics ------------------------------------------------------------------------


class ScanEntry(Value):
    """One word of a stack that could be a return address, and what the scan made of it.

    ``address`` is the stack slot, ``value`` the word in it.  ``reason`` says
    in words why it was accepted (``call to overflow at main+0xe``) or
    rejected.  ``symbol`` is where the value points, as a backtrace would
    name it (``main+0x13``, ``libc.so.6+0x2724a``), and ``module`` the path
    of the file it lies in; both None when it lies in no module.
    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = ("_address", "_module", "_reason", "_symbol", "_value", "_verdict")
    _fields = ("address", "value", "verdict", "reason", "symbol", "module")
    __match_args__ = ("address", "value", "verdict", "reason", "symbol", "module")

    address: int
    value: int
    verdict: Verdict
    reason: str
    symbol: str | None
    module: str | None

    def __init__(
        self,
        address: int,
        value: int,
        verdict: Verdict,
        reason: str,
        symbol: str | None = None,
        module: str | None = None,
    ) -> None:
        self._address = address
        self._value = value
        self._verdict = verdict
        self._reason = reason
        self._symbol = symbol
        self._module = module

    @property
    def accepted(self) -> bool:
        return self._verdict is Verdict.ACCEPTED

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "value": self.value,
            "verdict": str(self.verdict),
            "accepted": self.accepted,
            "reason": self.reason,
            "symbol": self.symbol,
            "module": self.module,
        }


DEFAULT_SCAN_WORDS = 1 << 20
"""How many words :func:`scan_stack` reads when the stack's mapping is unknown (8 MiB)."""


def scan_stack(target: Target, thread: Thread, *, words: int | None = None) -> list[ScanEntry]:
    """Every plausible return address on ``thread``'s stack, accepted or rejected, and why.

    The words from the thread's stack pointer up to the end of its stack
    mapping (or ``words`` words) are read; a word is listed when it could be
    taken for a code address: not below the lowest mapping (then it is a
    number), not pointing into the stack itself (a saved frame pointer, a
    pointer to a local), and not a kernel address; non-canonical words are
    listed, since an overwritten stack is full of them (``0x4141414141414141``).
    Each gets the verdict of the scanning rules, in their order: not
    canonical, not in an executable mapping, no call before it, outside any
    named function, or accepted.  An empty list when the thread has no
    registers.
    """
    from redhand.unwind.callsite import call_before
    from redhand.unwind.unwinder import RawFrame, Unwinder

    registers = thread.registers
    if registers is None:
        return []
    sp = registers.rsp
    stack = target.find_mapping(sp)
    if words is None:
        words = (stack.end - sp) // 8 if stack is not None else DEFAULT_SCAN_WORDS
    memory = target.memory
    data = read_stack_words(memory, sp, words)
    unwinder = Unwinder(memory, target.modules.find, target.is_executable)
    lowest = target.mappings[0].start if target.mappings else MIN_PC
    lowest = max(lowest, MIN_PC)
    stack_start, stack_end = (stack.start, stack.end) if stack is not None else (sp, sp)

    def name(pc: int, exact: bool) -> tuple[str | None, str | None]:
        frame = target.symbolize(RawFrame(pc, 0, Trust.SCAN, exact), 0)
        if frame.module is None:
            return None, None
        return frame.location(), frame.module

    entries: list[ScanEntry] = []
    for index, (value,) in enumerate(_WORD.iter_unpack(data)):
        slot = sp + 8 * index
        if value < lowest or stack_start <= value < stack_end:
            continue
        verdict = _verdict(unwinder, value)
        if verdict is Verdict.NOT_CANONICAL:
            text = value.to_bytes(8, "little")
            reason = "not canonical"
            if all(32 <= byte < 127 for byte in text):
                reason += f" (text: {text.decode('ascii')!r})"
            entries.append(ScanEntry(slot, value, verdict, reason))
            continue
        if verdict is Verdict.NOT_EXECUTABLE:
            if value >= _HIGH_START:
                continue  # a kernel address or a negative number
            mapping = target.find_mapping(value)
            where = (
                f"{mapping.path or 'anonymous'} {mapping.perms}"
                if mapping is not None
                else "unmapped"
            )
            reason = f"not in an executable mapping ({where})"
            entries.append(ScanEntry(slot, value, verdict, reason))
            continue
        symbol, module = name(value, False)
        if verdict is Verdict.NO_CALL:
            readable = unwinder.follows_call(value) is not None
            reason = "no call before it" if readable else "the code before it cannot be read"
        elif verdict is Verdict.OUTSIDE_FUNCTION:
            owner = module.rsplit("/", 1)[-1] if module else "its module"
            reason = f"outside any named function of {owner}"
        else:
            call = call_before(memory, value)
            if call is None:  # follows_call said yes: only a read that failed now
                reason = "call before it"
            else:
                site, callee = call
                at = name(site, True)[0] or f"{site:#x}"
                if callee is None:
                    reason = f"indirect call at {at}"
                else:
                    reason = f"call to {name(callee, True)[0] or f'{callee:#x}'} at {at}"
        entries.append(ScanEntry(slot, value, verdict, reason, symbol, module))
    return entries
