"""The one model: registers, mappings, frames and backtraces.

A live snapshot and a core file both become a :class:`~redhand.target.Target`
made of these values; nothing downstream asks where they came from.
"""

from __future__ import annotations

# _collections_abc, where collections.abc's classes live, is loaded with the
# interpreter; collections.abc itself imports the collections package.
from _collections_abc import Sequence

from redhand._value import Constant, Value, define

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import ClassVar, overload

    from redhand.analysis.recursion import Recursion

RECURSION_MIN_FRAMES = 20
"""Backtraces at most this long are not searched for recursion (they are shown whole)."""

# The order of ``struct user_regs_struct`` in <sys/user.h> (x86_64), which is
# also the layout of NT_PRSTATUS's pr_reg and of PTRACE_GETREGSET NT_PRSTATUS.
USER_REGS_FIELDS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip

# DWARF register numbers of the x86_64 psABI (figure 3.36).
DWARF_REGISTERS = (
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
)  # fmt: skip
DWARF_RA = 16  # the return address column: rip
DWARF_SP = 7
DWARF_FP = 6


class Registers(Value):
    """The general-purpose registers of one thread (x86_64 user_regs_struct).

    Immutable; :meth:`replace` gives a copy with some registers changed.  (Not
    a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = tuple(f"_{name}" for name in USER_REGS_FIELDS)
    _fields = USER_REGS_FIELDS
    __match_args__ = (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
        "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
        "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
    )  # fmt: skip

    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int

    def __init__(
        self,
        r15: int = 0,
        r14: int = 0,
        r13: int = 0,
        r12: int = 0,
        rbp: int = 0,
        rbx: int = 0,
        r11: int = 0,
        r10: int = 0,
        r9: int = 0,
        r8: int = 0,
        rax: int = 0,
        rcx: int = 0,
        rdx: int = 0,
        rsi: int = 0,
        rdi: int = 0,
        orig_rax: int = 0,
        rip: int = 0,
        cs: int = 0,
        eflags: int = 0,
        rsp: int = 0,
        ss: int = 0,
        fs_base: int = 0,
        gs_base: int = 0,
        ds: int = 0,
        es: int = 0,
        fs: int = 0,
        gs: int = 0,
    ) -> None:
        self._r15 = r15
        self._r14 = r14
        self._r13 = r13
        self._r12 = r12
        self._rbp = rbp
        self._rbx = rbx
        self._r11 = r11
        self._r10 = r10
        self._r9 = r9
        self._r8 = r8
        self._rax = rax
        self._rcx = rcx
        self._rdx = rdx
        self._rsi = rsi
        self._rdi = rdi
        self._orig_rax = orig_rax
        self._rip = rip
        self._cs = cs
        self._eflags = eflags
        self._rsp = rsp
        self._ss = ss
        self._fs_base = fs_base
        self._gs_base = gs_base
        self._ds = ds
        self._es = es
        self._fs = fs
        self._gs = gs

    @classmethod
    def from_user_regs(cls, values: Sequence[int]) -> Registers:
        """Build from the 27 words of user_regs_struct, in their order."""
        return cls(*values[: len(USER_REGS_FIELDS)])

    @property
    def pc(self) -> int:
        return self.rip

    @property
    def sp(self) -> int:
        return self.rsp

    @property
    def fp(self) -> int:
        return self.rbp

    def dwarf(self) -> dict[int, int]:
        """The registers by DWARF number (0-16, 16 being rip)."""
        return {number: getattr(self, name) for number, name in enumerate(DWARF_REGISTERS)}

    def as_dict(self) -> dict[str, int]:
        return dict(zip(USER_REGS_FIELDS, self._get(self), strict=True))  # type: ignore[arg-type]

    def replace(self, **changes: int) -> Registers:
        """A copy with the registers named in ``changes`` set to new values."""
        values = self.as_dict()
        unknown = changes.keys() - values.keys()
        if unknown:
            raise TypeError(f"no such register: {', '.join(sorted(unknown))}")
        values.update(changes)
        return Registers(**values)


class Mapping(Value):
    """One line of /proc/PID/maps, or one PT_LOAD/NT_FILE entry of a core.

    ``path`` is the path as the process saw it, or a pseudo-name like
    ``[stack]``; None if the mapping is anonymous.  (Not a dataclass: see
    :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_dev",
        "_end",
        "_inode",
        "_offset",
        "_path",
        "_perms",
        "_start",
    )
    _fields = ("start", "end", "perms", "offset", "dev", "inode", "path")
    __match_args__ = ("start", "end", "perms", "offset", "dev", "inode", "path")

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str | None

    def __init__(
        self,
        start: int,
        end: int,
        perms: str,
        offset: int = 0,
        dev: str = "00:00",
        inode: int = 0,
        path: str | None = None,
    ) -> None:
        self._start = start
        self._end = end
        self._perms = perms
        self._offset = offset
        self._dev = dev
        self._inode = inode
        self._path = path

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def readable(self) -> bool:
        return self.perms[:1] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2:3] == "x"

    @property
    def is_file(self) -> bool:
        """Backed by a file: not anonymous, not a pseudo-mapping like ``[heap]``.

        Decided by the path alone: cores record no inode.
        """
        path = self.path
        return bool(path) and not path.startswith(("[", "anon_inode:"))  # type: ignore[union-attr]


class Trust(Constant, str):
    """How a frame was found, from most to least certain."""

    __slots__ = ()

    CONTEXT: ClassVar[
        Trust
    ]  # the thread's own registers: frame 0, or a signal frame's saved context
    CFI: ClassVar[Trust]  # DWARF call-frame information
    FP: ClassVar[Trust]  # the frame-pointer chain
    SCAN: ClassVar[Trust]  # a plausible return address found by scanning the stack
    # the target of the direct call before a scanned frame's return address: the function
    # that call entered, whose own frame (and return address) was destroyed
    INFERRED: ClassVar[Trust]


define(
    Trust,
    CONTEXT="context",
    CFI="cfi",
    FP="fp",
    SCAN="scan",
    INFERRED="inferred",
)


class EndReason(Constant, str):
    """Why a backtrace ends."""

    __slots__ = ()

    OUTERMOST: ClassVar[EndReason]  # reached the thread's first frame (_start, clone)
    NO_UNWIND_INFO: ClassVar[EndReason]  # no CFI for the pc and no usable frame pointer
    UNREADABLE_MEMORY: ClassVar[EndReason]  # the next frame's data could not be read
    BAD_PC: ClassVar[EndReason]  # the return address points to no executable code
    LOOP: ClassVar[EndReason]  # the stack pointer stopped growing: unwinding would loop
    LIMIT: ClassVar[EndReason]  # the frame limit was reached
    NO_REGISTERS: ClassVar[EndReason]  # the thread's registers are unknown


define(
    EndReason,
    OUTERMOST="outermost",
    NO_UNWIND_INFO="no-unwind-info",
    UNREADABLE_MEMORY="unreadable-memory",
    BAD_PC="bad-pc",
    LOOP="loop",
    LIMIT="limit",
    NO_REGISTERS="no-registers",
)


class Frame(Value):
    """One frame of a backtrace, innermost first.

    ``function`` is None when the pc resolves to no symbol; then ``module``
    and ``offset`` (from the module's load address) still place it.  When the
    name is only the nearest preceding symbol of a stripped binary,
    ``exact`` is False.  ``file``, ``line`` and ``column`` are None when the
    module has no usable line information.

    - ``offset``: pc minus the function's start; or, when ``function`` is
      None, pc minus the module's base.
    - ``exact``: False when ``function`` is only the nearest symbol below pc,
      not one known to hold it.
    - ``signal_frame``: the pc is exact, not a return address: frame 0, or a
      frame a signal interrupted.
    - ``trampoline``: the signal trampoline a handler returns to (gdb's
      ``<signal handler called>``).

    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_build_id",
        "_called_from",
        "_column",
        "_exact",
        "_file",
        "_function",
        "_index",
        "_inlined",
        "_line",
        "_module",
        "_offset",
        "_pc",
        "_signal_frame",
        "_sp",
        "_trampoline",
        "_trust",
    )
    _fields = (
        "index",
        "pc",
        "sp",
        "trust",
        "function",
        "offset",
        "module",
        "build_id",
        "file",
        "line",
        "column",
        "inlined",
        "exact",
        "signal_frame",
        "trampoline",
        "called_from",
    )
    __match_args__ = (
        "index", "pc", "sp", "trust", "function", "offset", "module", "build_id",
        "file", "line", "column", "inlined", "exact", "signal_frame", "trampoline",
        "called_from",
    )  # fmt: skip

    index: int
    pc: int
    sp: int
    trust: Trust
    function: str | None
    offset: int | None
    module: str | None
    build_id: str | None
    file: str | None
    line: int | None
    column: int | None
    inlined: bool
    exact: bool
    signal_frame: bool
    trampoline: bool
    called_from: str | None
    """An inferred frame's call site (``main+0x4a``): the direct call that entered it."""

    def __init__(
        self,
        index: int,
        pc: int,
        sp: int,
        trust: Trust,
        function: str | None = None,
        offset: int | None = None,
        module: str | None = None,
        build_id: str | None = None,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        inlined: bool = False,
        exact: bool = True,
        signal_frame: bool = False,
        trampoline: bool = False,
        called_from: str | None = None,
    ) -> None:
        self._index = index
        self._pc = pc
        self._sp = sp
        self._trust = trust
        self._function = function
        self._offset = offset
        self._module = module
        self._build_id = build_id
        self._file = file
        self._line = line
        self._column = column
        self._inlined = inlined
        self._exact = exact
        self._signal_frame = signal_frame
        self._trampoline = trampoline
        self._called_from = called_from

    def renumbered(self, index: int) -> Frame:
        """The same frame at another place in its trace."""
        values = [getattr(self, name) for name in self._fields]
        values[0] = index
        return Frame(*values)

    @property
    def module_name(self) -> str | None:
        return self.module.rsplit("/", 1)[-1] if self.module else None

    def location(self) -> str:
        """``function+0x1a`` or ``libfoo.so+0x1234`` or ``0x7f00...``."""
        if self.function is not None:
            return f"{self.function}+{self.offset:#x}" if self.offset else self.function
        if self.module is not None and self.offset is not None:
            return f"{self.module_name}+{self.offset:#x}"
        return f"{self.pc:#x}"

    def __str__(self) -> str:
        if self.function is None and self.module is not None:
            # No name: say so, and place the pc in its module (never read
            # ``libfoo.so+0x1234`` as a function called libfoo.so).
            return f"#{self.index:<2} {self.pc:#018x} in ?? ({self.location()})"
        text = f"#{self.index:<2} {self.pc:#018x} in {self.location()}"
        if self.file is not None:
            text += f" at {self.file}:{self.line}"
        elif self.module is not None and self.function is not None:
            text += f" ({self.module_name})"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "index": self.index,
            "pc": self.pc,
            "sp": self.sp,
            "function": self.function,
            "offset": self.offset,
            "module": self.module,
            "build_id": self.build_id,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "inlined": self.inlined,
            "trust": str(self.trust),
            "exact": self.exact,
            "signal_frame": self.signal_frame,
            "trampoline": self.trampoline,
            "called_from": self.called_from,
        }


class Backtrace(Sequence[Frame]):
    """The frames of one thread, innermost first, and why the trace ends.

    ``truncated`` counts frames that exist but were not unwound because of a
    frame limit (only known when the limit was hit; otherwise 0).

    ``recursion`` is the smallest cycle of frames that repeats in the trace
    (:class:`redhand.analysis.recursion.Recursion`), or None.  It is looked
    for only in traces longer than :data:`RECURSION_MIN_FRAMES` (shorter
    ones are shown whole anyway).  A thread deep in recursion gets a
    :class:`~redhand.analysis.recursion.DeepBacktrace`, which holds every
    frame of a million-frame stack without unwinding each.
    """

    __slots__ = ("_frames", "_recursion", "_recursion_known", "end", "end_detail")

    def __init__(
        self,
        frames: Sequence[Frame],
        end: EndReason,
        end_detail: str | None = None,
        *,
        recursion: Recursion | None = None,
    ) -> None:
        self._frames = tuple(frames)
        self.end = end
        self.end_detail = end_detail
        self._recursion = recursion
        self._recursion_known = recursion is not None

    @property
    def recursion(self) -> Recursion | None:
        """The repeating cycle of frames, found on first use (None if there is none)."""
        if not self._recursion_known:
            self._recursion_known = True
            if len(self._frames) > RECURSION_MIN_FRAMES:
                from redhand.analysis.recursion import find_recursion

                self._recursion = find_recursion(self._frames)
        return self._recursion

    if TYPE_CHECKING:

        @overload
        def __getitem__(self, index: int) -> Frame: ...
        @overload
        def __getitem__(self, index: slice) -> Sequence[Frame]: ...

    def __getitem__(self, index: int | slice) -> Frame | Sequence[Frame]:
        return self._frames[index]

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self._frames)

    def __str__(self) -> str:
        return "\n".join(str(frame) for frame in self._frames)

    def __repr__(self) -> str:
        return f"<Backtrace {len(self)} frames, end={self.end}>"

    def key(self) -> tuple[tuple[int, str | None], ...]:
        """What two threads must share to be grouped as having the same stack."""
        return tuple((frame.pc, frame.function) for frame in self._frames)
