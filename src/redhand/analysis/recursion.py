"""Recursion cycles: the smallest repeating run of frames, and deep stacks summarised.

Two jobs:

- :func:`find_recursion` finds, in frames already unwound, the smallest cycle
  of frames (compared by pc: a return address names both the function and
  the call site) that repeats the most frames, with where it starts and ends.
- :func:`deep_backtrace` turns a trace that hit the frame limit inside a
  recursion into a :class:`DeepBacktrace`: a sequence of every frame of the
  thread, a million deep if need be, without unwinding each in Python.

How a deep stack is summarised (the stack words do the counting, numpy does
the work, the unwinder checks every claim):

1. the top frames, unwound by the ordinary unwinder up to its frame limit,
   show a cycle of ``L`` frames that takes a constant ``P`` bytes of stack;
2. each of those frames' return addresses lies at a fixed offset within a
   period of ``P`` bytes; the stack, read as 64-bit words with numpy and
   reshaped to rows of ``P`` bytes, gives in one comparison how many
   periods hold exactly the cycle's return addresses where CFI put them;
3. the unwinder restarts a couple of cycles before the last such period
   (the registers of a top frame, shifted by a whole number of periods),
   must find the cycle's frames again where they were predicted, and then
   unwinds the rest of the stack normally: the end of the recursion and the
   frames that entered it (main, __libc_start_call_main, ...).

If any check fails the caller keeps the ordinary, cut trace: a summary is
never a guess.  numpy is imported only here, and only for deep stacks.
"""

from __future__ import annotations

import time

from redhand._value import Value
from redhand.errors import MemoryReadError
from redhand.target.model import DWARF_SP, Backtrace, EndReason, Frame, Trust
from redhand.unwind.unwinder import FrameState, RawFrame, Stop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import overload

    from redhand.target.target import Target, Thread
    from redhand.unwind.unwinder import Unwinder

MIN_REPEATS = 3
"""A cycle must repeat this many times to count as recursion."""
MAX_CYCLE = 256
"""The longest cycle looked for, in frames."""
BOTTOM_LIMIT = 4096
"""How many frames are unwound below the recursion, to the thread's first frame."""
TOP_KEPT = 64
"""Frames of the top kept as unwound (the rest of the cycle is rebuilt on demand)."""


class Recursion(Value):
    """The smallest cycle of frames that repeats in a backtrace.

    - ``frames``: one cycle, as its first occurrence in the trace (so
      ``frames[0].index == start_index``), innermost first;
    - ``repeats``: how many whole cycles follow each other;
    - ``start_index``, ``end_index``: the first and last frame of those
      cycles (inclusive): ``end_index - start_index + 1 == repeats * len(frames)``;
    - ``cycle_bytes``: the stack one cycle takes, when it is the same for
      every cycle (always for a summarised deep stack); None when it varies.

    Frames above ``start_index`` (the innermost, where the recursion was
    when it stopped, often part of a cycle) and below ``end_index`` (part of a
    cycle, then what entered the recursion) are not counted in ``repeats``.
    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = ("_cycle_bytes", "_end_index", "_frames", "_repeats", "_start_index")
    _fields = ("frames", "repeats", "start_index", "end_index", "cycle_bytes")

    frames: tuple[Frame, ...]
    repeats: int
    start_index: int
    end_index: int
    cycle_bytes: int | None

    def __init__(
        self,
        frames: Sequence[Frame],
        repeats: int,
        start_index: int,
        end_index: int,
        cycle_bytes: int | None = None,
    ) -> None:
        self._frames = tuple(frames)
        self._repeats = repeats
        self._start_index = start_index
        self._end_index = end_index
        self._cycle_bytes = cycle_bytes

    @property
    def length(self) -> int:
        """Frames in one cycle."""
        return len(self._frames)

    @property
    def depth(self) -> int:
        """Frames in the repeated cycles: ``repeats * length``."""
        return self._end_index - self._start_index + 1

    def names(self) -> list[str]:
        """The cycle's functions, outermost call first (``a → b → c``: a calls b calls c)."""
        return [_short_name(frame) for frame in reversed(self._frames)]

    def label(self) -> str:
        """``[a → b → c]``."""
        return "[" + " → ".join(self.names()) + "]"

    def __str__(self) -> str:
        return (
            f"frames {self.start_index:,}-{self.end_index:,}: {self.label()} "
            f"repeated {self.repeats:,} times"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "frames": [frame.to_json() for frame in self._frames],
            "length": self.length,
            "repeats": self.repeats,
            "start_index": self.start_index,
            "end_index": self.end_index,
            "cycle_bytes": self.cycle_bytes,
        }


def _short_name(frame: Frame) -> str:
    """A frame's function without offset or parameters, else its location."""
    if frame.function is not None:
        return frame.function.split("(", 1)[0]
    return frame.location()


# -- cycles in a sequence ---------------------------------------------------------------


def find_cycle(
    keys: Sequence[object], *, min_repeats: int = MIN_REPEATS, max_length: int = MAX_CYCLE
) -> tuple[int, int, int] | None:
    """``(start, length, repeats)`` of the run of whole cycles covering most keys.

    Among runs that cover as many keys, the shortest cycle wins, then the
    one nearest the top.  Whole cycles are counted from the run's last key
    up (a trace's last frames are its outermost: the cycle then begins where
    the recursion was entered), so a partial cycle is left at the top.
    None when no cycle repeats ``min_repeats`` times.
    Candidate lengths are the distances between equal keys, so a stack
    without repeats costs one pass.
    """
    count = len(keys)
    last: dict[object, int] = {}
    distances: set[int] = set()
    for index, key in enumerate(keys):
        previous = last.get(key)
        if previous is not None and index - previous <= max_length:
            distances.add(index - previous)
        last[key] = index
    best: tuple[int, int, int] | None = None
    best_cover = 0
    for length in sorted(distances):
        if length * min_repeats > count:
            break
        run_start = 0
        run = 0
        # Runs of i where keys[i] == keys[i + length]: a run of r such i
        # starting at i0 makes keys[i0 : i0 + r + length] periodic.
        for index in range(count - length + 1):
            if index < count - length and keys[index] == keys[index + length]:
                if run == 0:
                    run_start = index
                run += 1
                continue
            if run:
                repeats = (run + length) // length
                cover = repeats * length
                if repeats >= min_repeats and cover > best_cover:
                    # Whole cycles counted up from the run's outermost frame.
                    first = run_start + run + length - cover
                    best, best_cover = (first, length, repeats), cover
                run = 0
    return best


def find_recursion(backtrace: Sequence[Frame]) -> Recursion | None:
    """The recursion in frames already unwound (no memory is read), or None."""
    found = find_cycle([frame.pc for frame in backtrace])
    if found is None:
        return None
    start, length, repeats = found
    frames = backtrace[start : start + length]
    deltas = {
        backtrace[index + length].sp - backtrace[index].sp
        for index in range(start, start + (repeats - 1) * length)
    }
    cycle_bytes = deltas.pop() if len(deltas) == 1 else None
    return Recursion(frames, repeats, start, start + repeats * length - 1, cycle_bytes)


# -- a deep backtrace ------------------------------------------------------------------------


class DeepBacktrace(Backtrace):
    """Every frame of a thread deep in recursion, most of them rebuilt on demand.

    ``top`` and ``bottom`` are frames as unwound; between them every frame is
    a frame of the cycle (``recursion``) with its index and its sp moved by a
    whole number of cycles.  ``len()`` is the thread's real depth; indexing,
    slicing and iteration give the frames the unwinder would have given.
    """

    __slots__ = ("_bottom", "_bottom_start", "_cycle", "_length")

    def __init__(
        self,
        top: Sequence[Frame],
        recursion: Recursion,
        bottom: Sequence[Frame],
        end: EndReason,
        end_detail: str | None = None,
    ) -> None:
        super().__init__(top, end, end_detail, recursion=recursion)
        self._cycle = recursion.frames
        self._bottom = tuple(bottom)
        self._bottom_start = bottom[0].index if bottom else len(top)
        self._length = self._bottom_start + len(self._bottom)

    @property
    def top(self) -> Sequence[Frame]:
        return self._frames

    @property
    def bottom(self) -> Sequence[Frame]:
        return self._bottom

    def _frame(self, index: int) -> Frame:
        if index < len(self._frames):
            return self._frames[index]
        if index >= self._bottom_start:
            return self._bottom[index - self._bottom_start]
        recursion = self.recursion
        assert recursion is not None and recursion.cycle_bytes is not None
        turns, at = divmod(index - recursion.start_index, len(self._cycle))
        model = self._cycle[at]
        return Frame(
            index,
            model.pc,
            model.sp + turns * recursion.cycle_bytes,
            model.trust,
            model.function,
            model.offset,
            model.module,
            model.build_id,
            model.file,
            model.line,
            model.column,
            model.inlined,
            model.exact,
            model.signal_frame,
            model.trampoline,
        )

    if TYPE_CHECKING:

        @overload
        def __getitem__(self, index: int) -> Frame: ...
        @overload
        def __getitem__(self, index: slice) -> Sequence[Frame]: ...

    def __getitem__(self, index: int | slice) -> Frame | Sequence[Frame]:
        if isinstance(index, slice):
            return [self._frame(at) for at in range(self._length)[index]]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        return self._frame(index)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Frame]:
        return (self._frame(index) for index in range(self._length))

    def __str__(self) -> str:
        return "\n".join(str(frame) for frame in self)

    def __repr__(self) -> str:
        return f"<DeepBacktrace {len(self):,} frames, {self.recursion}, end={self.end}>"

    def key(self) -> tuple[tuple[int, str | None], ...]:
        recursion = self.recursion
        assert recursion is not None
        # Same top, same cycle as often, same bottom: the same stack.
        marker = (-recursion.repeats, f"cycle of {recursion.length}")
        return (
            *((frame.pc, frame.function) for frame in self._frames),
            marker,
            *((frame.pc, frame.function) for frame in self._bottom),
        )


# -- the fast path ---------------------------------------------------------------------------


def deep_backtrace(target: Target, thread: Thread, top: Sequence[RawFrame]) -> DeepBacktrace | None:
    """The whole stack of a thread whose trace hit the frame limit inside a recursion.

    ``top`` is what the unwinder gave before its limit.  None when the top
    shows no cycle of constant size, or when any check of the summary fails.
    """
    registers = thread.registers
    if registers is None or len(top) < 2:
        return None
    started = time.perf_counter()
    try:
        found = _summarise(target, registers.dwarf(), top)
    except MemoryReadError:
        found = None
    target._add_time("recursion", started)
    if found is None:
        return None
    top_raw, bottom_raw, bottom_start, start, length, repeats, cycle_bytes, end, detail = found
    _warn_if_read_late(target, thread, top_raw[0].sp)
    started = time.perf_counter()
    top_frames = [target.symbolize(raw, index) for index, raw in enumerate(top_raw)]
    bottom_frames = [
        target.symbolize(raw, bottom_start + offset) for offset, raw in enumerate(bottom_raw)
    ]
    target._add_time("symbols", started)
    recursion = Recursion(
        top_frames[start : start + length],
        repeats,
        start,
        start + repeats * length - 1,
        cycle_bytes,
    )
    return DeepBacktrace(top_frames, recursion, bottom_frames, end, detail)


_Summary = tuple[list[RawFrame], list[RawFrame], int, int, int, int, int, EndReason, "str | None"]


def _summarise(target: Target, first: dict[int, int], top: Sequence[RawFrame]) -> _Summary | None:
    # 1. The cycle among the top frames, reaching the deepest of them.
    pcs = [frame.pc for frame in top]
    found = find_cycle(pcs)
    if found is None:
        return None
    start, length, repeats = found
    if start + repeats * length < len(top) - length:
        return None  # the recursion ends within the top: not the deep case
    sps = [frame.sp for frame in top]
    cycle_bytes = sps[start + length] - sps[start]
    if cycle_bytes <= 0 or cycle_bytes % 8:
        return None
    for index in range(start, len(top) - length):
        if sps[index + length] - sps[index] != cycle_bytes or pcs[index + length] != pcs[index]:
            return None
    base = sps[start]
    stack = target.find_mapping(base)
    if stack is None:
        return None

    # 2. The return-address slots of one cycle, checked in every period at once.
    slots = [sps[start + 1 + j] - 8 - base for j in range(length)]
    expected = pcs[start + 1 : start + 1 + length]
    memory = target.memory
    for slot, pc in zip(slots, expected, strict=True):
        if int.from_bytes(memory.read(base + slot, 8), "little") != pc:
            return None  # the return addresses are not where CFI said
    data = _read_stack(target, base, stack.end)
    periods = _matching_periods(data, cycle_bytes, slots, expected)
    # Periods 0 .. periods-1 hold the cycle: frames start .. start + periods*length
    # are the cycle's (the last one's pc is checked by the last period's last slot).
    known = (len(top) - 1 - start) // length  # whole periods the top already unwound
    if periods <= known:
        return None

    # 3. Unwind again from two periods before the last, with the registers of
    # frame `start` moved down the stack by a whole number of periods.
    jump = max(known, periods - 2)
    shift = jump * cycle_bytes
    unwinder = target._unwinder
    state = _state_at(unwinder, first, start)
    if state is None or state.pc != pcs[start]:
        return None
    regs = [
        value + shift if value is not None and stack.start <= value < stack.end else value
        for value in state.regs
    ]
    moved = FrameState(state.pc, regs, state.trust, state.signal_frame)
    if moved.regs[DWARF_SP] != base + shift:
        return None
    bottom, end, detail = _walk(unwinder, moved, BOTTOM_LIMIT + 3 * length)
    bottom_start = start + jump * length
    # The frames the stack words vouch for must be the cycle again, where predicted.
    vouched = min(len(bottom), (periods - jump) * length + 1)
    for offset in range(vouched):
        turns, at = divmod(bottom_start + offset - start, length)
        if (
            bottom[offset].pc != pcs[start + at]
            or bottom[offset].sp != sps[start + at] + turns * cycle_bytes
        ):
            return None
    # 4. Where the cycle ends, counting frames as the unwinder found them; the
    # whole cycles are counted from there up, so that the cycle starts with
    # the function that was called from outside it.
    last = bottom_start - 1
    for offset, raw in enumerate(bottom):
        if raw.pc != pcs[start + (bottom_start + offset - start) % length]:
            break
        last = bottom_start + offset
    topmost = start  # the topmost frame of the cycles
    while topmost > 0 and pcs[topmost - 1] == pcs[topmost - 1 + length]:
        topmost -= 1
    repeats = (last - topmost + 1) // length
    start = last - repeats * length + 1
    kept = max(TOP_KEPT, start + length)
    return (
        list(top[:kept]),
        list(bottom),
        bottom_start,
        start,
        length,
        repeats,
        cycle_bytes,
        end,
        detail,
    )


def _warn_if_read_late(target: Target, thread: Thread, sp: int) -> None:
    """Say so when a live thread's stack was read partly after the process resumed.

    A live capture copies at most ``stack_bytes`` (1 MiB by default) of each
    stack while the process is frozen: enough for nearly every thread, and
    the freeze stays about a millisecond.  A deeper stack is read whole, once
    more, after the process runs again (16 MiB took a few milliseconds); the
    checks above reject a recursion that changed meanwhile.
    """
    regions = getattr(target.memory, "regions", None)
    stack = target.find_mapping(sp)
    if target.source != "live" or regions is None or stack is None:
        return
    copied = max((end for start, end in regions() if start <= sp < end), default=sp)
    if copied < stack.end:
        target.warnings.append(
            f"thread {thread.tid}: {stack.end - copied:,} bytes of its stack, below the "
            f"{copied - sp:,} copied while it was frozen, were read after the process "
            "resumed (--stack-bytes copies more while frozen)"
        )


def _read_stack(target: Target, start: int, end: int) -> bytes:
    """The bytes from ``start`` to ``end`` (the stack's top), or as many as can be read."""
    memory = target.memory
    try:
        return memory.read(start, end - start)
    except MemoryReadError:
        pass
    # Piece by piece, up to the first page that cannot be read.
    pieces = []
    at = start
    step = 1 << 20
    while at < end:
        size = min(step, end - at)
        try:
            pieces.append(memory.read(at, size))
        except MemoryReadError:
            if step == 4096:
                break
            step = 4096
            continue
        at += size
    return b"".join(pieces)


def _matching_periods(data: bytes, period: int, slots: list[int], expected: list[int]) -> int:
    """How many periods of ``period`` bytes from the start of ``data`` hold ``expected``
    at ``slots``, one after another."""
    import numpy as np

    words = np.frombuffer(data, dtype="<u8", count=len(data) // 8)
    width = period // 8
    rows = len(words) // width
    if rows == 0:
        return 0
    table = words[: rows * width].reshape(rows, width)
    columns = np.array([slot // 8 for slot in slots], dtype=np.intp)
    wanted = np.array(expected, dtype=np.uint64)
    matches = (table[:, columns] == wanted).all(axis=1)
    if bool(matches.all()):
        return rows
    return int(np.argmin(matches))


def _initial_state(first: dict[int, int]) -> FrameState:
    regs: list[int | None] = [first.get(number) for number in range(17)]
    return FrameState(pc=first[16], regs=regs, trust=Trust.CONTEXT, signal_frame=True)


def _state_at(unwinder: Unwinder, first: dict[int, int], index: int) -> FrameState | None:
    """The unwinder's state (all known registers) at frame ``index``."""
    state = _initial_state(first)
    for _ in range(index):
        result = unwinder.step(state)
        if isinstance(result, Stop):
            return None
        state = result
    return state


def _walk(
    unwinder: Unwinder, frame: FrameState, max_frames: int
) -> tuple[list[RawFrame], EndReason, str | None]:
    """Frames from ``frame`` on, as :meth:`Unwinder.unwind` gives them from registers."""
    frames, end, detail = unwinder.walk(frame, max_frames=max_frames)
    if end is EndReason.LIMIT:
        detail = f"stopped after {max_frames} frames below the recursion"
    return frames, end, detail
