"""Crash classification: what killed the process, in plain words.

:func:`classify` looks at the crashing thread's signal (si_signo, si_code,
si_addr from NT_SIGINFO), its registers, the instruction at its pc, the
target's mappings and, for aborts, its frames and a few of glibc's and
libstdc++'s data structures, and returns a :class:`Crash` with a stable
``kind`` identifier and an ``explanation`` of one or two sentences.

The kinds (stable identifiers; reports and crash buckets key on them):

============================  ====================================================
``null-dereference``          SIGSEGV at an address below 64 KiB (or just below 2**64)
``unmapped-access``           SIGSEGV (SEGV_MAPERR) elsewhere: a wild or dangling pointer
``write-to-read-only``        SIGSEGV (SEGV_ACCERR) writing a mapping without ``w``
``protected-access``          SIGSEGV (SEGV_ACCERR) reading a mapping without ``r`` (guard pages)
``bad-pc``                    the pc is outside every executable mapping
``stack-overflow``            the fault is at the low end of a thread's stack
``non-canonical-address``     SIGSEGV/SIGBUS with SI_KERNEL: a general-protection fault
``vsyscall``                  a jump into the legacy vsyscall page that the kernel refused
``misaligned-access``         an aligned SSE/AVX move on a misaligned address, or BUS_ADRALN
``privileged-instruction``    hlt, cli, in/out... in user mode
``shadow-stack-violation``    SEGV_CPERR: a return address that does not match the shadow stack
``abort``                     SIGABRT from abort(), with glibc's message when it recorded one
``assertion``                 a failed assert(), with its text, file and line
``heap-corruption``           glibc's malloc found its data structures broken and aborted
``stack-smashing``            the stack protector found a canary overwritten
``uncaught-exception``        a C++ exception no handler caught (std::terminate)
``rust-panic``                a Rust panic in a program built with panic=abort
``divide-by-zero``            SIGFPE FPE_INTDIV
``division-overflow``         SIGFPE from INT_MIN / -1
``floating-point``            SIGFPE from an unmasked floating-point exception
``illegal-instruction``       SIGILL (ud2 from __builtin_trap, an instruction the CPU lacks)
``breakpoint``                SIGTRAP (int3 or a debug trap with no debugger)
``bus-error``                 SIGBUS: beyond the end of a mapped file, hardware errors
``bad-system-call``           SIGSYS from a seccomp filter
``fatal-signal``              any other signal, or one sent by a process (kill)
============================  ====================================================

What is read, and how far it can be trusted, is said in the explanation:
"type unknown" rather than a guess.
"""

from __future__ import annotations

import struct
from types import MappingProxyType

from redhand._value import Value
from redhand.analysis import insn
from redhand.analysis.objects import data_symbol, read_bytes, read_cstring, read_u32, read_u64
from redhand.errors import RedhandError
from redhand.target import signals as sig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from redhand.target.model import Frame, Registers
    from redhand.target.model import Mapping as MemoryMapping
    from redhand.target.signals import SignalInfo
    from redhand.target.target import Target, Thread

NULL_LIMIT = 0x10000
"""Addresses below this (the largest usual vm.mmap_min_addr) are NULL plus an offset."""

GUARD_GAP = 1 << 20
"""How far below a stack mapping a fault still counts as hitting its guard gap (1 MiB)."""

STACK_SLACK = 0x10000
"""How near a stack mapping's low end the stack pointer must be for an overflow (64 KiB)."""

_BRK_RANGE = (1 << 30) + 0x1000
"""How far after the executable the brk heap may start (x86_64 randomises it within 1 GiB)."""

_CANONICAL_LOW = 0x0000_8000_0000_0000
_CANONICAL_HIGH = 0xFFFF_8000_0000_0000
_TOP = 1 << 64

_GNU_CXX_EXCEPTION = 0x474E5543432B2B00  # "GNUCC++\0", libstdc++'s exception class
_CXA_EXCEPTION_TO_UNWIND_HEADER = 80  # offsetof(__cxa_exception, unwindHeader)
_UNWIND_HEADER_SIZE = 32  # sizeof(_Unwind_Exception) on x86_64
_STD_MESSAGE_TYPES = frozenset(
    {
        "std::runtime_error", "std::logic_error", "std::domain_error",
        "std::invalid_argument", "std::length_error", "std::out_of_range",
        "std::range_error", "std::overflow_error", "std::underflow_error",
        "std::system_error", "std::ios_base::failure",
    }
)  # fmt: skip
"""libstdc++ types whose message is a string pointer right after the vtable pointer."""

_ABORT_FUNCTIONS = frozenset({"abort", "raise", "__pthread_kill_implementation", "pthread_kill"})
_CXX_TERMINATE = (
    "std::terminate",
    "__cxxabiv1::__terminate",
    "__gnu_cxx::__verbose_terminate_handler",
    "__cxa_throw",
    "__cxa_rethrow",
    "__cxa_call_terminate",
    "__cxa_call_unexpected",
    "std::__terminate",
)
_RUST_PANIC = (
    "rust_panic",
    "__rustc::rust_panic",
    "__rustc::__rust_start_panic",
    "__rustc::rust_begin_unwind",
    "__rust_start_panic",
    "std::panicking::",
    "core::panicking::",
    "std::panic::panic_any",
    "panic_abort::",
    "rust_begin_unwind",
)


_FRAMES_EXAMINED = 1024
"""Frames of the crashing thread the rules look at (the innermost)."""


class Crash(Value):
    """What killed the process: the signal, a kind, and an explanation in plain words.

    - ``signal``, ``signal_name``, ``code``, ``code_name``: from the crashing
      thread's siginfo; ``code`` and ``code_name`` are None when the core
      has no siginfo for it (only a signal number);
    - ``address``: si_addr; None when the signal carries no address (a
      general-protection fault reports none; a signal sent by a process);
    - ``kind``: a stable identifier (see the module's documentation);
    - ``explanation``: one or two sentences;
    - ``thread``: the tid of the crashing thread;
    - ``details``: extra facts for reports and JSON (the faulting
      instruction's bytes, nearby mappings, the stack mapping, an abort
      message, an exception type...), a read-only mapping of JSON-ready values.

    Immutable; hashed without ``details``.  (Not a dataclass: see
    :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_address",
        "_code",
        "_code_name",
        "_details",
        "_explanation",
        "_kind",
        "_signal",
        "_signal_name",
        "_thread",
    )
    _fields = (
        "signal",
        "signal_name",
        "code",
        "code_name",
        "address",
        "kind",
        "explanation",
        "thread",
        "details",
    )

    signal: int
    signal_name: str
    code: int | None
    code_name: str | None
    address: int | None
    kind: str
    explanation: str
    thread: int

    def __init__(
        self,
        signal: int,
        signal_name: str,
        code: int | None,
        code_name: str | None,
        address: int | None,
        kind: str,
        explanation: str,
        thread: int,
        details: Mapping[str, object] | None = None,
    ) -> None:
        self._signal = signal
        self._signal_name = signal_name
        self._code = code
        self._code_name = code_name
        self._address = address
        self._kind = kind
        self._explanation = explanation
        self._thread = thread
        self._details = dict(details or {})

    @property
    def details(self) -> Mapping[str, object]:
        return MappingProxyType(self._details)

    def __hash__(self) -> int:
        return hash(self._get(self)[:-1])

    def __str__(self) -> str:
        return f"{self.kind}: {self.explanation}"

    def to_json(self) -> dict[str, object]:
        return {
            "signal": self.signal,
            "signal_name": self.signal_name,
            "code": self.code,
            "code_name": self.code_name,
            "address": self.address,
            "kind": self.kind,
            "explanation": self.explanation,
            "thread": self.thread,
            "details": dict(self._details),
        }


# -- helpers for words -----------------------------------------------------------------


def _size(size: int) -> str:
    """``8 MiB``, ``132 KiB``, ``4096 bytes``."""
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            value = size / unit
            return f"{value:.0f} {name}" if value == int(value) else f"{value:.1f} {name}"
    return f"{size} bytes"


def _ascii(value: int) -> str | None:
    """The 8 bytes of ``value`` as text when they are all printable ASCII ('AAAAAAAA')."""
    data = value.to_bytes(8, "little")
    if all(0x20 <= byte < 0x7F for byte in data):
        return data.decode("ascii")
    return None


def _canonical(address: int) -> bool:
    return address < _CANONICAL_LOW or address >= _CANONICAL_HIGH


def _plain_name(function: str) -> str:
    """A frame's function without its parameter list: ``std::terminate()`` is ``std::terminate``."""
    return function.split("(", 1)[0]


def _code_location(target: Target, address: int) -> str:
    """``read_value+0x4 (app)``, ``libc.so.6+0x1234`` or ``0x7f...``."""
    module = target.find_module(address)
    if module is None:
        return f"{address:#x}"
    try:
        match = module.lookup(address)
    except RedhandError:
        match = None
    if match is None:
        return f"{module.name}+{address - module.bias:#x}"
    offset = f"+{match.offset:#x}" if match.offset else ""
    return f"{match.symbol.name}{offset} ({module.name})"


# -- mappings -----------------------------------------------------------------------


def _stack_owners(target: Target) -> dict[int, int]:
    """Mapping start -> tid, for the mapping each thread's stack lives in."""
    owners: dict[int, int] = {}
    for thread in target.threads:
        if thread.registers is None:
            continue
        stack = _stack_mapping(target, thread.registers.rsp)
        if stack is not None:
            owners.setdefault(stack.start, thread.tid)
    return owners


def _heap_start(target: Target) -> int | None:
    """The start of the brk heap: a mapping named [heap], or the first anonymous
    writable mapping within the brk randomisation range after the executable."""
    for mapping in target.mappings:
        if mapping.path == "[heap]":
            return mapping.start
    exe_end = None
    for module in target.modules:
        if target.exe is not None and module.path == target.exe:
            exe_end = module.end
            break
    if exe_end is None:
        return None
    for mapping in target.mappings:
        if mapping.start >= exe_end:
            if mapping.path is None and mapping.writable and mapping.start - exe_end <= _BRK_RANGE:
                return mapping.start
            if mapping.start - exe_end > _BRK_RANGE:
                break
    return None


class _Names:
    """Names for a target's mappings, worked out once per classification."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._owners: dict[int, int] | None = None
        self._heap: int | bool | None = False

    def name(self, mapping: MemoryMapping) -> str:
        if mapping.path:
            return mapping.path
        if self._owners is None:
            self._owners = _stack_owners(self.target)
        owner = self._owners.get(mapping.start)
        if owner is not None:
            main = owner == self.target.pid
            return "[stack]" if main else f"[stack of thread {owner}]"
        if self._heap is False:
            self._heap = _heap_start(self.target)
        if self._heap is not None and mapping.start == self._heap:
            return "[heap]"
        return "an anonymous mapping"


def _neighbours(target: Target, address: int) -> tuple[MemoryMapping | None, MemoryMapping | None]:
    """The mappings just below and just above an address that no mapping holds."""
    below = above = None
    for mapping in target.mappings:
        if mapping.end <= address:
            below = mapping
        elif mapping.start > address:
            above = mapping
            break
    return below, above


def _mapping_json(mapping: MemoryMapping | None, names: _Names) -> dict[str, object] | None:
    if mapping is None:
        return None
    return {
        "start": mapping.start,
        "end": mapping.end,
        "perms": mapping.perms,
        "offset": mapping.offset,
        "path": mapping.path,
        "name": names.name(mapping),
    }


def _section_name(target: Target, address: int) -> str | None:
    """The ELF section (.rodata, .text...) of a file-backed address, when the file is at hand."""
    module = target.find_module(address)
    if module is None:
        return None
    try:
        elf = module.elf()
        if elf is None:
            return None
        vaddr = address - module.bias
        best = None
        for section in elf.iter_sections():
            contains = section.sh_size and section.name and section.contains_vaddr(vaddr)
            if contains and (best is None or section.sh_size < best.sh_size):
                best = section
        return best.name if best is not None else None
    except RedhandError:
        return None


def _describe_in(names: _Names, mapping: MemoryMapping, address: int) -> str:
    """``.text of /usr/lib/libc.so.6 (r-xp)`` for an address inside ``mapping``."""
    text = f"{names.name(mapping)} ({mapping.perms})"
    if mapping.path and not mapping.path.startswith("["):
        section = _section_name(names.target, address)
        if section is not None:
            text = f"{section} of {names.name(mapping)} ({mapping.perms})"
    return text


def _describe_gap(names: _Names, address: int) -> str:
    target = names.target
    below, above = _neighbours(target, address)
    if below is None and above is None:
        return "the target has no mappings at all"
    parts = []
    if below is not None:
        parts.append(f"{_size(address - below.end)} past the end of {names.name(below)}")
    if above is not None:
        parts.append(f"{_size(above.start - address)} below {names.name(above)}")
    return " and ".join(parts)


def explain_mapping(target: Target, address: int) -> str:
    """Where an address lies, in words for a report.

    ``in /usr/lib/x86_64-linux-gnu/libc.so.6 (r-xp)``; ``between [heap] and
    /usr/lib/libfoo.so``; ``no mapping within 16 MiB``, ``not a canonical
    address``.
    """
    return _explain_mapping(_Names(target), address)


def _explain_mapping(names: _Names, address: int) -> str:
    target = names.target
    if not _canonical(address):
        return "not a canonical address (no mapping can hold it)"
    mapping = target.find_mapping(address)
    if mapping is not None:
        return f"in {_describe_in(names, mapping, address)}"
    below, above = _neighbours(target, address)
    if below is not None and above is not None:
        return f"between {names.name(below)} and {names.name(above)}"
    if above is not None:
        gap = _size(above.start - address)
        return f"nothing is mapped there: {gap} below {names.name(above)}, the lowest mapping"
    if below is not None:
        gap = _size(address - below.end)
        return f"nothing is mapped there: {gap} above {names.name(below)}, the highest mapping"
    return "no mapping at all"


def _stack_mapping(target: Target, sp: int) -> MemoryMapping | None:
    """The writable mapping a stack pointer belongs to: the one holding it, or,
    when sp has run off its bottom (into the guard gap or a guard page), the one above."""
    mapping = target.find_mapping(sp)
    if mapping is not None and mapping.writable:
        return mapping
    for candidate in target.mappings:
        if candidate.start > sp:
            if candidate.writable and candidate.start - sp <= GUARD_GAP + STACK_SLACK:
                return candidate
            return None
    return None


# -- classification -------------------------------------------------------------------


class _Context:
    """What every rule looks at: the thread, its signal, registers and instruction."""

    def __init__(self, target: Target, thread: Thread, info: SignalInfo | None, signo: int) -> None:
        self.target = target
        self.thread = thread
        self.info = info
        self.signo = signo
        self.code = info.code if info is not None else None
        self.address = info.address if info is not None else None
        self.registers: Registers | None = thread.registers
        self.names = _Names(target)
        self.details: dict[str, object] = {}
        self._instruction: insn.Instruction | None = None
        self._decoded = False
        self._frames: list[Frame] | None = None
        if self.registers is not None:
            self.details["pc"] = self.registers.rip
            self.details["sp"] = self.registers.rsp

    @property
    def pc(self) -> int | None:
        return self.registers.rip if self.registers is not None else None

    @property
    def sp(self) -> int | None:
        return self.registers.rsp if self.registers is not None else None

    def instruction(self) -> insn.Instruction | None:
        """The faulting instruction, decoded (None when its bytes cannot be read)."""
        if not self._decoded:
            self._decoded = True
            pc = self.pc
            if pc is not None:
                code = read_bytes(self.target.memory, pc, 16)
                if code:
                    self._instruction = insn.decode(code)
                    length = self._instruction.length if self._instruction else None
                    self.details["instruction"] = code[: length or len(code)].hex(" ")
        return self._instruction

    def frames(self) -> list[Frame]:
        if self._frames is None:
            try:
                # Bounded: a deep recursion's backtrace holds a million frames.
                self._frames = list(self.thread.backtrace()[:_FRAMES_EXAMINED])
            except RedhandError:
                self._frames = []
        return self._frames

    def function_names(self) -> list[str]:
        return [_plain_name(frame.function) for frame in self.frames() if frame.function]

    def where(self) -> str:
        """`` in read_value+0x4 (app)`` for the pc, or nothing when it is unknown."""
        return f" in {_code_location(self.target, self.pc)}" if self.pc is not None else ""

    def tail(self) -> str:
        """``, in read_value+0x4 (app)``: where, after a clause that ends a sentence's part."""
        return f",{self.where()}" if self.pc is not None else ""

    def effective_address(self) -> int | None:
        instruction = self.instruction()
        if instruction is None or instruction.memory is None or self.registers is None:
            return None
        return instruction.memory.address(self.registers, self.registers.rip, instruction.length)

    def access_word(self) -> str:
        instruction = self.instruction()
        access = instruction.access if instruction is not None else None
        if access is not None:
            self.details["access"] = access
        return access or "access"

    def crash(self, kind: str, explanation: str) -> Crash:
        info = self.info
        return Crash(
            self.signo,
            info.name if info is not None else sig.signal_name(self.signo),
            self.code,
            info.code_name if info is not None else None,
            self.address,
            kind,
            explanation,
            self.thread.tid,
            self.details,
        )


def _crashed_thread(target: Target) -> Thread | None:
    for thread in target.threads:
        if thread.crashed:
            return thread
    for thread in target.threads:
        if thread.siginfo is not None and thread.siginfo.signo:
            return thread
    for thread in target.threads:
        if thread.signal:
            return thread
    return None


def classify(target: Target) -> Crash | None:
    """Explain why the target died.

    None when no thread shows a fatal signal (a gcore of a live process).
    """
    thread = _crashed_thread(target)
    if thread is None:
        return None
    info = thread.siginfo
    signo = info.signo if info is not None and info.signo else (thread.signal or 0)
    if not signo:
        return None
    context = _Context(target, thread, info, signo)
    try:
        return _classify(context)
    except RedhandError as error:
        # Each rule reads what it can and copes with what it cannot; this is the
        # last line for a damaged core, so that a report still names the signal.
        context.details["analysis_error"] = str(error)
        return _fatal(context)


def _classify(ctx: _Context) -> Crash:
    info = ctx.info
    signo = ctx.signo
    if info is not None and info.sent_by_process:
        sent = _sent_signal(ctx)
        if sent is not None:
            return sent
    if signo == sig.SIGSEGV:
        return _segv(ctx)
    if signo == sig.SIGBUS:
        return _bus(ctx)
    if signo == sig.SIGFPE:
        return _fpe(ctx)
    if signo == sig.SIGILL:
        return _ill(ctx)
    if signo == sig.SIGTRAP:
        return _trap(ctx)
    if signo == sig.SIGABRT:
        return _abort(ctx)
    if signo == sig.SIGSYS:
        return _sys(ctx)
    return _fatal(ctx)


def _sent_signal(ctx: _Context) -> Crash | None:
    """A signal sent with kill()/tgkill()/sigqueue(): by someone else, or by the process itself."""
    info = ctx.info
    assert info is not None
    pid = info.pid
    ctx.details["sender_pid"] = pid
    ctx.details["sender_uid"] = info.uid
    own = ctx.target.pid
    if pid is not None and own is not None and pid == own:
        if ctx.signo == sig.SIGABRT:
            return None  # abort() raises SIGABRT itself: explained by _abort
        names = set(ctx.function_names())
        how = "abort()" if names & _ABORT_FUNCTIONS else "raise() or kill()"
        return ctx.crash(
            "fatal-signal",
            f"the program sent {info.name} to itself ({how}){ctx.where()}; "
            "it was not a fault of the instruction at the pc",
        )
    sender = f"pid {pid} (uid {info.uid})" if pid else "the kernel or an unknown process"
    if pid == 0:
        sender = "pid 0 (the kernel, or a process in another pid namespace)"
    return ctx.crash(
        "fatal-signal",
        f"killed by {info.name} sent by {sender} with {_sender_call(info.code)}; "
        f"the program was{ctx.where()} at the time",
    )


def _sender_call(code: int) -> str:
    return {
        sig.SI_USER: "kill()",
        sig.SI_TKILL: "tkill()/tgkill()",
        sig.SI_QUEUE: "sigqueue()",
        sig.SI_TIMER: "a POSIX timer",
        sig.SI_MESGQ: "a message queue notification",
        sig.SI_ASYNCIO: "asynchronous I/O completion",
    }.get(code, f"si_code {code}")


# -- SIGSEGV --------------------------------------------------------------------------------


def _segv(ctx: _Context) -> Crash:
    code = ctx.code
    address = ctx.address
    pc = ctx.pc
    if code == sig.SI_KERNEL or (address is None and code is not None and code > 0):
        return _general_protection(ctx)
    if code == 10:  # SEGV_CPERR
        return ctx.crash(
            "shadow-stack-violation",
            f"a return address did not match the shadow stack{ctx.where()}: "
            "the stack was overwritten or a return went somewhere it should not",
        )
    if pc is not None and not ctx.target.is_executable(pc):
        return _bad_pc(ctx)
    if address is None and ctx.info is None:
        # No siginfo in the core (only the signal number): the faulting
        # instruction's operand says where it went, if it is a memory access.
        address = ctx.effective_address()
        if address is not None:
            ctx.details["address_from_instruction"] = address
    if address is None:
        return _fatal(ctx)
    overflow = _stack_overflow(ctx, address)
    if overflow is not None:
        return overflow
    if address < NULL_LIMIT or address >= _TOP - NULL_LIMIT:
        return _null(ctx, address)
    mapping = ctx.target.find_mapping(address)
    access = ctx.access_word()
    if code == sig.SEGV_ACCERR and mapping is not None:
        ctx.details["mapping"] = _mapping_json(mapping, ctx.names)
        where = _describe_in(ctx.names, mapping, address)
        if not mapping.readable and not mapping.writable:
            return ctx.crash(
                "protected-access",
                f"{access} at {address:#x}, in {where}: memory that may not be touched at all "
                f"(a guard page, or memory made inaccessible with mprotect){ctx.tail()}",
            )
        if access != "read" and not mapping.writable:
            return ctx.crash(
                "write-to-read-only",
                f"write to {address:#x}, in read-only memory: {where}{ctx.tail()}",
            )
        return ctx.crash(
            "protected-access",
            f"{access} at {address:#x} not allowed by the mapping's permissions, "
            f"in {where}{ctx.tail()}",
        )
    if code == sig.SEGV_ACCERR:
        return ctx.crash(
            "protected-access",
            f"{access} at {address:#x} not allowed by the permissions there{ctx.tail()}",
        )
    if code == 4:  # SEGV_PKUERR
        return ctx.crash(
            "protected-access",
            f"{access} at {address:#x} denied by a memory protection key{ctx.tail()}",
        )
    return _unmapped(ctx, address, access)


def _null(ctx: _Context, address: int) -> Crash:
    access = ctx.access_word()
    if address >= _TOP - NULL_LIMIT:
        offset = _TOP - address
        what = f"{offset} bytes before a NULL pointer (a NULL pointer with a negative offset)"
    elif address == 0:
        what = "through a NULL pointer"
    else:
        what = f"a field {address} bytes into a NULL pointer"
    base = _null_register(ctx)
    if base is not None:
        what += f" ({base} is NULL)"
        ctx.details["null_register"] = base
    return ctx.crash("null-dereference", f"{access} at {address:#x}: {what}{ctx.tail()}")


def _null_register(ctx: _Context) -> str | None:
    """The base register of the faulting operand when it holds 0."""
    instruction = ctx.instruction()
    if instruction is None or instruction.memory is None or ctx.registers is None:
        return None
    memory = instruction.memory
    ctx.details["operand"] = str(memory)
    for register in (memory.base, memory.index):
        if register is not None and getattr(ctx.registers, register) == 0:
            return register
    return None


def _unmapped(ctx: _Context, address: int, access: str) -> Crash:
    below, above = _neighbours(ctx.target, address)
    ctx.details["mapping_below"] = _mapping_json(below, ctx.names)
    ctx.details["mapping_above"] = _mapping_json(above, ctx.names)
    if address >= _CANONICAL_HIGH:
        return ctx.crash(
            "unmapped-access",
            f"{access} at {address:#x}, a kernel address no program may touch: "
            f"a wild or corrupted pointer{ctx.tail()}",
        )
    return ctx.crash(
        "unmapped-access",
        f"{access} at {address:#x}, where nothing is mapped "
        f"({_describe_gap(ctx.names, address)}): "
        f"a wild or dangling pointer{ctx.tail()}",
    )


def _bad_pc(ctx: _Context) -> Crash:
    pc = ctx.pc
    sp = ctx.sp
    assert pc is not None and sp is not None
    memory = ctx.target.memory
    if pc == 0 or pc < NULL_LIMIT:
        start = (
            "a call through a NULL function pointer"
            if pc == 0
            else (
                f"a jump to {pc:#x}, near NULL (a NULL function pointer, or one read from a "
                "NULL structure)"
            )
        )
    else:
        mapping = ctx.target.find_mapping(pc)
        if mapping is not None:
            ctx.details["mapping"] = _mapping_json(mapping, ctx.names)
            start = (
                f"a jump to {pc:#x}, in {_describe_in(ctx.names, mapping, pc)}, "
                "which is not executable: code called a pointer to data"
            )
        elif not _canonical(pc):
            start = f"a jump to {pc:#x}, which is not an address at all"
        else:
            start = f"a jump to {pc:#x}, where nothing is mapped ({_describe_gap(ctx.names, pc)})"
    # Who went there: a call leaves its return address at sp; a ret consumed it from sp - 8.
    caller = read_u64(memory, sp)
    previous = read_u64(memory, sp - 8)
    if caller is not None and ctx.target.is_executable(caller) and _follows_call(ctx, caller):
        ctx.details["return_address"] = caller
        rest = (
            f"the return address at sp points to {_code_location(ctx.target, caller)}: "
            "the likely caller, through a bad function pointer"
        )
    elif previous == pc:
        ctx.details["return_address"] = previous
        text = _ascii(pc)
        ascii_note = f" (the bytes '{text}')" if text else ""
        rest = (
            f"a `ret` took {pc:#x}{ascii_note} from the stack: the return address was "
            "overwritten (a stack buffer overflow?)"
        )
    else:
        rest = "no return address at sp says where it came from"
    return ctx.crash("bad-pc", f"{start}; {rest}")


def _follows_call(ctx: _Context, address: int) -> bool:
    from redhand.unwind.callsite import follows_call

    return follows_call(ctx.target.memory, address) is True


def _stack_overflow(ctx: _Context, address: int) -> Crash | None:
    """A fault at the low end of the crashing thread's stack (or of any thread's, by sp)."""
    sp = ctx.sp
    if sp is None:
        return None
    stack = _stack_mapping(ctx.target, sp)
    if stack is None:
        return None
    near_bottom = stack.start - GUARD_GAP <= address < stack.start + STACK_SLACK
    sp_low = sp < stack.start + STACK_SLACK
    if not (near_bottom and sp_low):
        return None
    ctx.access_word()
    ctx.details["stack"] = {
        "start": stack.start,
        "end": stack.end,
        "size": stack.size,
        "name": ctx.names.name(stack),
    }
    guard = ctx.target.find_mapping(address)
    if guard is not None and guard is not stack and not guard.readable:
        hit = f"the guard page below it at {address:#x}"
    elif address < stack.start:
        hit = f"the guard gap below it at {address:#x}"
    else:
        hit = f"its last bytes at {address:#x}"
    main = ctx.thread.tid == ctx.target.pid
    whose = "the main thread's stack" if main else f"the stack of thread {ctx.thread.tid}"
    full = (
        f"{whose} is full (the stack mapping is {_size(stack.size)}) "
        f"and the program touched {hit}{ctx.tail()}"
    )
    recursed = _recursion_words(ctx, stack, main)
    if recursed is not None:
        return ctx.crash("stack-overflow", f"stack overflow: {recursed}; {full}")
    return ctx.crash(
        "stack-overflow",
        f"stack overflow: {full}; deep or unbounded recursion is the usual cause",
    )


def _used_size(size: int) -> str:
    """``8.0 MiB``, ``255.9 KiB``: one decimal, so that "used 8.0 MiB of 8 MiB" reads as full."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{size} bytes"


def _recursion_words(ctx: _Context, stack: MemoryMapping, main: bool) -> str | None:
    """``[a → b → c] recursed 131,034 frames deep and used 8.0 MiB of the 8 MiB stack
    (RLIMIT_STACK); each cycle takes 192 bytes; entered from main+0x1f``, when the
    crashing thread's frames repeat (None otherwise)."""
    sp = ctx.sp
    try:
        backtrace = ctx.thread.backtrace()
        recursion = backtrace.recursion
    except RedhandError:
        return None
    if recursion is None or sp is None:
        return None
    depth = recursion.end_index + 1
    used = stack.end - sp
    whose = "the" if main else f"thread {ctx.thread.tid}'s"
    limit = "RLIMIT_STACK" if main else "the size of its stack mapping"
    text = (
        f"{recursion.label()} recursed {depth:,} frames deep and used {_used_size(used)} "
        f"of {whose} {_size(stack.size)} stack ({limit})"
    )
    if recursion.cycle_bytes is not None:
        text += f"; each cycle takes {recursion.cycle_bytes:,} bytes"
    entry = backtrace[depth] if depth < len(backtrace) else None
    if entry is not None:
        where = entry.location()
        if entry.file is not None:
            where += f" at {entry.file}:{entry.line}"
        text += f"; entered from {where}"
    ctx.details["recursion"] = {
        "cycle": recursion.names(),
        "length": recursion.length,
        "repeats": recursion.repeats,
        "start_index": recursion.start_index,
        "end_index": recursion.end_index,
        "depth": depth,
        "cycle_bytes": recursion.cycle_bytes,
        "stack_used": used,
        "entered_from": entry.location() if entry is not None else None,
    }
    return text


_VSYSCALL_PAGE = range(0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000)


def _general_protection(ctx: _Context) -> Crash:
    """SI_KERNEL: the CPU raised #GP, which has no fault address (the kernel reports 0)."""
    pc = ctx.registers.pc if ctx.registers is not None else None
    if pc is not None and _VSYSCALL_PAGE.start <= pc < _VSYSCALL_PAGE.stop:
        mapped = any(m.path == "[vsyscall]" for m in ctx.target.mappings)
        return ctx.crash(
            "vsyscall",
            f"a jump to {pc:#x}, in the legacy vsyscall page (old static binaries call its "
            "time(), gettimeofday() and getcpu() there): "
            + (
                "this kernel emulates only the three entry points (0x...000, 0x...400, "
                "0x...800) and faults anywhere else"
                if mapped
                else "this kernel has no vsyscall page (vsyscall=none): every such call faults"
            ),
        )
    instruction = ctx.instruction()
    registers = ctx.registers
    sp = ctx.sp
    memory = ctx.target.memory
    if instruction is not None and registers is not None and sp is not None:
        if instruction.kind == "ret":
            target_address = read_u64(memory, sp)
            if target_address is not None and not _canonical(target_address):
                ctx.details["return_address"] = target_address
                text = _ascii(target_address)
                ascii_note = f" (the ASCII bytes '{text}')" if text else ""
                return ctx.crash(
                    "non-canonical-address",
                    f"a `ret`{ctx.where()} tried to return to {target_address:#x}"
                    f"{ascii_note}, a non-canonical address taken from the stack at {sp:#x}: "
                    "the return address was overwritten (a stack buffer overflow)",
                )
        if instruction.kind in ("call", "jmp") and instruction.register is not None:
            destination = getattr(registers, instruction.register)
            if not _canonical(destination):
                return ctx.crash(
                    "non-canonical-address",
                    f"a {instruction.kind} to {destination:#x} (in {instruction.register}), "
                    f"a non-canonical address: a corrupted function pointer{ctx.tail()}",
                )
        effective = ctx.effective_address()
        if effective is not None and instruction.memory is not None:
            ctx.details["operand"] = str(instruction.memory)
            ctx.details["effective_address"] = effective
            if not _canonical(effective):
                access = ctx.access_word()
                text = _ascii(effective)
                ascii_note = f" (the ASCII bytes '{text}')" if text else ""
                return ctx.crash(
                    "non-canonical-address",
                    f"{access} at {effective:#x}{ascii_note} through {instruction.memory}, "
                    f"a non-canonical address (the kernel reports it as 0; it is not NULL): "
                    f"a corrupted pointer{ctx.tail()}",
                )
            if instruction.aligned and effective % 16:
                return ctx.crash(
                    "misaligned-access",
                    f"an aligned SSE/AVX move at {effective:#x}, which is not 16-byte "
                    f"aligned{ctx.where()} (often a misaligned stack, or a packed structure)",
                )
        if instruction.kind == "privileged":
            return ctx.crash(
                "privileged-instruction",
                f"a privileged instruction{ctx.where()}, which user programs may not run",
            )
        if instruction.kind in ("call", "jmp") and instruction.memory is not None:
            effective = ctx.effective_address()
            pointer = read_u64(memory, effective) if effective is not None else None
            if pointer is not None and not _canonical(pointer):
                return ctx.crash(
                    "non-canonical-address",
                    f"a {instruction.kind} to {pointer:#x}, read from {effective:#x}, a "
                    f"non-canonical address: a corrupted function pointer{ctx.tail()}",
                )
    if sp is not None:
        stack = _stack_mapping(ctx.target, sp)
        if stack is not None and sp < stack.start + 4096:
            overflow = _stack_overflow(ctx, sp)
            if overflow is not None:
                return overflow
    return ctx.crash(
        "non-canonical-address",
        f"a general-protection fault{ctx.where()}: the kernel reports no address (0 here is "
        "not NULL); usually a non-canonical address from a corrupted pointer or a smashed "
        "return address",
    )


# -- SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS -------------------------------------------------


def _bus(ctx: _Context) -> Crash:
    address = ctx.address
    code = ctx.code
    if code == sig.SI_KERNEL or address is None:
        return _general_protection(ctx)
    access = ctx.access_word()
    mapping = ctx.target.find_mapping(address)
    if code == sig.BUS_ADRERR:
        if mapping is not None and mapping.path:
            ctx.details["mapping"] = _mapping_json(mapping, ctx.names)
            offset = mapping.offset + address - mapping.start
            ctx.details["file_offset"] = offset
            return ctx.crash(
                "bus-error",
                f"{access} at {address:#x}, offset {offset:#x} of {mapping.path}, which lies "
                "beyond the end of the file: the file is shorter than its mapping (truncated "
                f"after it was mapped?){ctx.tail()}",
            )
        return ctx.crash(
            "bus-error",
            f"{access} at {address:#x}, memory with nothing behind it (beyond the end of a "
            f"mapped file or object){ctx.tail()}",
        )
    if code == sig.BUS_ADRALN:
        return ctx.crash(
            "misaligned-access", f"{access} at the misaligned address {address:#x}{ctx.tail()}"
        )
    if code in (4, 5):  # BUS_MCEERR_AR, BUS_MCEERR_AO
        return ctx.crash(
            "bus-error",
            f"a hardware memory error (machine check) at {address:#x}{ctx.where()}: "
            "the RAM holding it is failing, not the program",
        )
    return ctx.crash(
        "bus-error",
        f"bus error ({ctx.info.code_name if ctx.info else code}) at {address:#x}{ctx.tail()}",
    )


def _fpe(ctx: _Context) -> Crash:
    code = ctx.code
    if code in (1, 2):  # FPE_INTDIV, FPE_INTOVF: x86's #DE covers both
        instruction = ctx.instruction()
        divisor = _divisor(ctx, instruction)
        if divisor is not None:
            ctx.details["divisor"] = divisor
        if divisor == -1:
            return ctx.crash(
                "division-overflow",
                f"integer division overflow{ctx.where()}: the smallest integer divided by -1 "
                "does not fit",
            )
        source = ""
        if instruction is not None and instruction.register is not None:
            source = f" (the divisor, {instruction.register}, is 0)"
        return ctx.crash("divide-by-zero", f"integer division by zero{ctx.where()}{source}")
    return ctx.crash(
        "floating-point",
        f"floating-point exception ({ctx.info.code_name if ctx.info else code}){ctx.where()}: "
        "a floating-point trap the program unmasked",
    )


def _divisor(ctx: _Context, instruction: insn.Instruction | None) -> int | None:
    """The signed divisor of a div/idiv, when its operand can be read."""
    if instruction is None or instruction.kind != "div" or ctx.registers is None:
        return None
    size = instruction.operand_size
    if instruction.register is not None:
        raw = int(getattr(ctx.registers, instruction.register))
    else:
        effective = ctx.effective_address()
        if effective is None:
            return None
        data = read_bytes(ctx.target.memory, effective, size)
        if len(data) != size:
            return None
        raw = int.from_bytes(data, "little")
    raw &= (1 << (8 * size)) - 1
    return raw - (1 << (8 * size)) if raw >> (8 * size - 1) else raw


def _ill(ctx: _Context) -> Crash:
    names = ctx.function_names()
    if _has_rust_panic(names):
        return _rust_panic(ctx)
    instruction = ctx.instruction()
    if instruction is not None and instruction.kind == "ud2":
        return ctx.crash(
            "illegal-instruction",
            f"the program executed ud2{ctx.where()}: a deliberate trap (__builtin_trap(), "
            "code the compiler proved unreachable, or Rust's intrinsics::abort)",
        )
    pc = ctx.pc
    if pc is not None and not ctx.target.is_executable(pc):
        return _bad_pc(ctx)
    return ctx.crash(
        "illegal-instruction",
        f"illegal instruction ({ctx.info.code_name if ctx.info else ctx.code}){ctx.where()}: an "
        "instruction this CPU does not have (code built for a newer CPU?) or a jump into the "
        "middle of code",
    )


def _trap(ctx: _Context) -> Crash:
    instruction_text = ""
    pc = ctx.pc
    if pc is not None:
        before = read_bytes(ctx.target.memory, pc - 1, 1)
        if before == b"\xcc":
            instruction_text = " (an int3 instruction just before the pc)"
    return ctx.crash(
        "breakpoint",
        f"a breakpoint trap{ctx.where()}{instruction_text} with no debugger attached "
        "(__builtin_debugtrap, raise(SIGTRAP), or a leftover breakpoint)",
    )


def _sys(ctx: _Context) -> Crash:
    info = ctx.info
    number = info.syscall if info is not None and info.syscall is not None else None
    if number is None and ctx.registers is not None:
        number = ctx.registers.orig_rax
    ctx.details["syscall"] = number
    return ctx.crash(
        "bad-system-call",
        f"system call {number} was refused by a seccomp filter{ctx.where()}",
    )


def _fatal(ctx: _Context) -> Crash:
    info = ctx.info
    name = info.name if info is not None else sig.signal_name(ctx.signo)
    how = ""
    if info is not None and info.code == sig.SI_KERNEL:
        how = " from the kernel (a terminal key like Ctrl-\\, or a resource limit)"
    return ctx.crash("fatal-signal", f"killed by {name}{how}{ctx.where()}")


# -- SIGABRT: abort(), assert(), C++ and Rust ------------------------------------------------


def _has_rust_panic(names: Iterable[str]) -> bool:
    return any(name.startswith(_RUST_PANIC) or name in ("rust_panic",) for name in names)


def _abort(ctx: _Context) -> Crash:
    names = ctx.function_names()
    if any(name.startswith(_CXX_TERMINATE) for name in names):
        return _uncaught_exception(ctx, names)
    if _has_rust_panic(names):
        return _rust_panic(ctx)
    message = abort_message(ctx.target)
    if message is not None:
        ctx.details["abort_message"] = message
        text = message.strip()
        assertion = _parse_assertion(text)
        if assertion is not None:
            ctx.details["assertion"] = assertion
            where = f" in {assertion['function']}()" if assertion.get("function") else ""
            return ctx.crash(
                "assertion",
                f"assertion `{assertion['expression']}' failed{where} at "
                f"{assertion['file']}:{assertion['line']}",
            )
        if "Assertion" in text and "failed" in text:
            return ctx.crash("assertion", f"assertion failed: {text}")
        if "stack smashing detected" in text:
            return ctx.crash(
                "stack-smashing",
                f"the stack protector found a canary overwritten (a stack buffer overflow) and "
                f"aborted: {text}",
            )
        lowered = text.lower()
        if any(word in lowered for word in ("malloc", "free()", "realloc", "corrupted", "tcache")):
            return ctx.crash(
                "heap-corruption",
                f"glibc's allocator found its heap corrupted and aborted: {text} (a double free, "
                "a write past the end of a block, or a use after free)",
            )
        return ctx.crash("abort", f"abort() with the message: {text}")
    called = f", called from {_caller_of_abort(ctx)}" if _caller_of_abort(ctx) else ""
    return ctx.crash("abort", f"the program called abort(){called}; it recorded no message")


def _parse_assertion(text: str) -> dict[str, object] | None:
    """glibc's "PROG: FILE:LINE: FUNCTION: Assertion `EXPR' failed." as its parts."""
    import re

    match = re.fullmatch(
        r"(?:(?P<program>[^:\n]*): )?(?P<file>[^\n]*?):(?P<line>\d+): "
        r"(?:(?P<function>[^\n]*?): )?Assertion `(?P<expression>.*)' failed\.?",
        text,
        re.DOTALL,
    )
    if match is None:
        return None
    parts: dict[str, object] = {
        key: value for key, value in match.groupdict().items() if value is not None
    }
    parts["line"] = int(match.group("line"))
    return parts


def _caller_of_abort(ctx: _Context) -> str | None:
    """The first frame outside abort/raise and libc's plumbing."""
    seen_abort = False
    for frame in ctx.frames():
        name = _plain_name(frame.function) if frame.function else None
        if name in _ABORT_FUNCTIONS or name in ("__GI_abort", "__GI_raise"):
            seen_abort = True
            continue
        if seen_abort:
            return frame.location()
    return None


def abort_message(target: Target) -> str | None:
    """The message glibc recorded before aborting (``__abort_msg``), or None.

    glibc keeps a ``struct abort_msg_s {unsigned int size; char msg[];}*`` in
    ``__abort_msg``: set by assert(), by malloc's checks and by
    __fortify_fail; NULL for a bare abort().
    """
    memory = target.memory
    modules = sorted(target.modules, key=lambda m: not m.name.startswith(("libc.so", "libc-")))
    for module in modules[:3]:
        address = data_symbol(module, "__abort_msg")
        if address is None:
            continue
        pointer = read_u64(memory, address)
        if not pointer:
            return None
        size = read_u32(memory, pointer)
        if size is None:
            return None
        text = read_cstring(memory, pointer + 4, min(max(size, 8), 4096))
        return text.decode("utf-8", "replace") if text else None
    return None


def _uncaught_exception(ctx: _Context, names: list[str]) -> Crash:
    found = exception_type(ctx.target, ctx.thread)
    thrown = "__cxa_throw" in names or "__cxa_rethrow" in names
    if found is None:
        how = "thrown and not caught" if thrown else "std::terminate() was called"
        return ctx.crash(
            "uncaught-exception",
            f"an uncaught C++ exception (type unknown): {how}, so std::terminate() aborted the "
            "program; its type and what() went to stderr",
        )
    type_name, what = found
    ctx.details["exception_type"] = type_name
    text = f"an uncaught C++ exception of type {type_name}"
    if what is not None:
        ctx.details["exception_what"] = what
        text += f" (what(): {what})"
    thrower = _thrower(ctx)
    if thrower is not None:
        text += f", thrown from {thrower}"
    return ctx.crash("uncaught-exception", text + "; std::terminate() aborted the program")


def _thrower(ctx: _Context) -> str | None:
    frames = ctx.frames()
    for index, frame in enumerate(frames):
        throws = frame.function and _plain_name(frame.function) in ("__cxa_throw", "__cxa_rethrow")
        if throws and index + 1 < len(frames):
            return frames[index + 1].location()
    return None


def exception_type(target: Target, thread: Thread) -> tuple[str, str | None] | None:
    """(type, what()) of the C++ exception in flight on ``thread``, or None.

    libstdc++ puts a ``__cxa_exception`` header in front of every thrown
    object; its ``unwindHeader`` (an ``_Unwind_Exception``) starts with the
    exception class ``"GNUCC++\\0"``, and ``exceptionType`` (a
    ``std::type_info*``, whose name is a mangled type) lies 80 bytes before
    it.  __cxa_throw and the unwinder keep pointers to the header or to the
    object in their frames, so the words of the stack above sp are tried
    as such pointers.  ``what()`` is read only for libstdc++'s own types
    (std::runtime_error and its kin), whose message pointer follows the
    vtable pointer.
    """
    registers = thread.registers
    if registers is None:
        return None
    memory = target.memory
    sp = registers.rsp
    stack = _stack_mapping(target, sp)
    end = min(stack.end, sp + 0x4000) if stack is not None else sp + 0x4000
    data = read_bytes(memory, sp, end - sp)
    words = struct.unpack_from(f"<{len(data) // 8}Q", data)
    register_words = [getattr(registers, name) for name in insn.REGISTERS_64]
    tried: set[int] = set()
    for word in (*register_words, *words):
        for header in (word, word - _UNWIND_HEADER_SIZE):
            if header in tried or header & 7:
                continue
            tried.add(header)
            mapping = target.find_mapping(header)
            if mapping is None or not mapping.writable:
                continue
            if read_u64(memory, header) not in (_GNU_CXX_EXCEPTION, _GNU_CXX_EXCEPTION | 1):
                continue
            found = _exception_at(target, header)
            if found is not None:
                return found
    return None


def _exception_at(target: Target, unwind_header: int) -> tuple[str, str | None] | None:
    from redhand.symbols.demangle import demangle

    memory = target.memory
    type_info = read_u64(memory, unwind_header - _CXA_EXCEPTION_TO_UNWIND_HEADER)
    if not type_info:
        return None
    name_pointer = read_u64(memory, type_info + 8)
    if not name_pointer:
        return None
    raw = read_cstring(memory, name_pointer, 1024)
    if not raw:
        return None
    mangled = raw.decode("ascii", "replace").lstrip("*")
    name = demangle("_Z" + mangled)
    if name.startswith("_Z"):
        name = mangled
    what = None
    if name in _STD_MESSAGE_TYPES:
        message_pointer = read_u64(memory, unwind_header + _UNWIND_HEADER_SIZE + 8)
        text = read_cstring(memory, message_pointer, 1024) if message_pointer else None
        if text is not None:
            what = text.decode("utf-8", "replace")
    return name, what


def _rust_panic(ctx: _Context) -> Crash:
    from redhand.analysis.rust import panic_info

    found = panic_info(ctx.target, ctx.thread)
    location = message = None
    if found is not None:
        message, location = found
    if location is not None:
        ctx.details["panic_location"] = location
    if message is not None:
        ctx.details["panic_message"] = message
    where = f" at {location}" if location else ""
    if message is not None:
        return ctx.crash("rust-panic", f"a Rust panic{where}: {message}")
    return ctx.crash(
        "rust-panic",
        f"a Rust panic{where}; the message is not in the core (it went to stderr)",
    )


__all__ = ["Crash", "abort_message", "classify", "exception_type", "explain_mapping"]
