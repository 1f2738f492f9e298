"""The Target: threads, memory, mappings and modules, whatever the source.

A live snapshot (:func:`redhand.attach`) and, later, a core file produce the
same Target.  Unwinding and symbolizing happen lazily, on the copied data,
after a live process has been let go.
"""

from __future__ import annotations

import bisect
import time

from redhand.errors import RedhandError
from redhand.symbols.perfmap import PerfMap
from redhand.target.memory import Memory
from redhand.target.model import Backtrace, EndReason, Frame, Mapping, Registers, Trust
from redhand.target.module import Module, ModuleMap
from redhand.unwind.unwinder import RawFrame, Unwinder

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from redhand.analysis.crash import Crash
    from redhand.symbols.dwarf import SourceLines, SourceLocation
    from redhand.target.corenotes import ProcessInfo
    from redhand.target.signals import SignalInfo
    from redhand.target.unpacked import Placement

DEFAULT_MAX_FRAMES = 1024


class Thread:
    """One thread of a target.

    ``registers`` is None when they could not be captured (the thread exited
    during the capture); ``problem`` then says why.  (A plain class, not a
    dataclass: see :mod:`redhand._value` for why.)
    """

    def __init__(
        self,
        tid: int,
        name: str,
        registers: Registers | None,
        target: Target,
        state: str | None = None,
        problem: str | None = None,
        crashed: bool = False,
        signal: int | None = None,
        siginfo: SignalInfo | None = None,
    ) -> None:
        self.siginfo = siginfo
        """The signal that stopped or killed this thread, when known (a core's NT_SIGINFO)."""
        self.tid = tid
        self.name = name
        self.registers = registers
        self.target = target
        self.state = state
        self.problem = problem
        self.crashed = crashed
        self.signal = signal
        self._backtraces: dict[int, Backtrace] = {}

    def __repr__(self) -> str:
        return (
            f"Thread(tid={self.tid}, name={self.name!r}, registers={self.registers!r}, "
            f"state={self.state!r}, problem={self.problem!r}, crashed={self.crashed}, "
            f"signal={self.signal})"
        )

    def backtrace(self, max_frames: int = DEFAULT_MAX_FRAMES) -> Backtrace:
        """This thread's frames, innermost first (computed once per limit, then cached)."""
        cached = self._backtraces.get(max_frames)
        if cached is None:
            cached = self.target._backtrace(self, max_frames)
            self._backtraces[max_frames] = cached
        return cached


class Target:
    """A process as redhand sees it: a live snapshot or a core file."""

    def __init__(
        self,
        *,
        pid: int | None,
        exe: str | None,
        cmdline: Sequence[str],
        mappings: Sequence[Mapping],
        modules: ModuleMap,
        memory: Memory,
        source: str,
        frozen_ns: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.pid = pid
        self.exe = exe
        self.cmdline = list(cmdline)
        self.mappings = sorted(mappings, key=lambda mapping: mapping.start)
        self._mapping_starts = [mapping.start for mapping in self.mappings]
        self.modules = modules
        self.memory = memory
        self.source = source
        """Where the target came from: ``"live"`` or ``"core"`` (for reports only)."""
        self.frozen_ns = frozen_ns
        """How long a live process was kept from running, in nanoseconds."""
        self.timings: dict[str, float] = dict(timings or {})
        """Seconds spent in each phase (freeze, unwind, symbols, ...)."""
        self.threads: list[Thread] = []
        self._perf_maps: list[PerfMap | None] = []
        self._crash: Crash | None = None
        self._classified = False
        self.process: ProcessInfo | None = None
        """What the source says of the process (a core's NT_PRPSINFO), when known."""
        self.warnings: list[str] = []
        self.unpacked: Placement | None = None
        """The unpacked copy that names a packed program's code (and where it came from)."""
        self._named: dict[
            tuple[int, int], tuple[str | None, int | None, str | None, str | None, bool]
        ] = {}
        self._unwinder = Unwinder(memory, self.modules.find, self.is_executable)
        self.source_lines = True
        """Whether frames get file:line:column from DWARF (through drgn), when there is DWARF."""
        self.inline = True
        """Whether inlined calls become frames of their own (only with ``source_lines``)."""
        self._dwarf: SourceLines | None = None
        self._located: dict[int, list[SourceLocation] | None] = {}

    def __repr__(self) -> str:
        return f"<Target {self.source} pid={self.pid} threads={len(self.threads)}>"

    @property
    def crash(self) -> Crash | None:
        """What killed the process, explained; None when no thread has a fatal signal.

        Worked out on first use (it may unwind the crashing thread).
        """
        if not self._classified:
            self._classified = True
            if any(thread.crashed or thread.siginfo is not None for thread in self.threads):
                from redhand.analysis.crash import classify

                self._crash = classify(self)
        return self._crash

    @crash.setter
    def crash(self, crash: Crash | None) -> None:
        self._crash = crash
        self._classified = True

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release open files and save new source locations to the cache.  The data stays usable."""
        for module in self.modules:
            module.close()
        if self._dwarf is not None:
            self._dwarf.flush()

    def thread(self, tid: int) -> Thread:
        for thread in self.threads:
            if thread.tid == tid:
                return thread
        raise KeyError(tid)

    def find_mapping(self, address: int) -> Mapping | None:
        index = bisect.bisect_right(self._mapping_starts, address) - 1
        if index >= 0 and address < self.mappings[index].end:
            return self.mappings[index]
        return None

    def find_module(self, address: int) -> Module | None:
        return self.modules.find(address)

    def is_executable(self, address: int) -> bool:
        mapping = self.find_mapping(address)
        return mapping is not None and mapping.executable

    def _add_time(self, phase: str, started: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - started

    def _backtrace(self, thread: Thread, max_frames: int) -> Backtrace:
        if thread.registers is None:
            return Backtrace([], EndReason.NO_REGISTERS, thread.problem)
        started = time.perf_counter()
        raw, end, detail = self._unwinder.unwind(thread.registers, max_frames=max_frames)
        self._add_time("unwind", started)
        if end is EndReason.LIMIT:
            # Deep recursion is summarised, not cut (numpy comes only with it).
            from redhand.analysis.recursion import deep_backtrace

            deep = deep_backtrace(self, thread, raw)
            if deep is not None:
                return deep
        started = time.perf_counter()
        frames: list[Frame] = []
        for frame in raw:
            frames += self._frames(frame, len(frames))
        if any(frame.trust is Trust.SCAN for frame in frames):
            frames = self._infer_calls(frames)
        self._add_time("symbols", started)
        return Backtrace(frames, end, detail)

    def _infer_calls(self, frames: list[Frame]) -> list[Frame]:
        """Frames the direct calls before scanned return addresses entered, put back.

        A scanned frame was found by its return address; the instruction before
        it is the call that was running.  When that is a direct ``call rel32``
        and the frame below (inner) is not in the function it calls, that
        function was running too, its own frame destroyed (a smashed stack, a
        tail call aside): it is shown between them, with trust ``inferred``.
        """
        result: list[Frame] = []
        for frame in frames:
            if frame.trust is Trust.SCAN and result and not frame.inlined:
                inferred = self._inferred_callee(frame, result[-1])
                if inferred is not None:
                    result.append(inferred)
            result.append(frame)
        if len(result) == len(frames):
            return frames
        return [frame.renumbered(index) for index, frame in enumerate(result)]

    def _inferred_callee(self, caller: Frame, inner: Frame) -> Frame | None:
        try:
            call = self.memory.read(caller.pc - 5, 5)
        except RedhandError:
            return None
        if len(call) != 5 or call[0] != 0xE8:  # not a direct call rel32
            return None
        target = (caller.pc + int.from_bytes(call[1:], "little", signed=True)) & (1 << 64) - 1
        function, offset, module, build_id, exact = self._name(target, target)
        if function is None or offset or not exact:
            return None  # not the start of a named function: nothing sure to say
        if inner.function == function:
            return None  # the callee's own frame is there
        where = caller.location()
        site = (
            f"{caller.function}+{caller.offset - 5:#x}"
            if caller.function and caller.offset
            else where
        )
        return Frame(
            inner.index + 1,
            target,
            inner.sp,
            Trust.INFERRED,
            function,
            0,
            module,
            build_id,
            called_from=site,
        )

    def symbolize(self, raw: RawFrame, index: int) -> Frame:
        """Name a raw frame: function, offset, module and build-id."""
        pc = raw.pc
        lookup_pc = raw.lookup_pc
        # The same pc gets the same name in every thread: looked up once.
        key = (pc, lookup_pc)
        named = self._named.get(key)
        if named is None:
            named = self._named[key] = self._name(pc, lookup_pc)
        function, offset, module, build_id, exact = named
        file = line = column = None
        if self.source_lines and module is not None:
            locations = self._locate(lookup_pc)
            if locations:
                file, line, column = locations[-1][1:]
        return Frame(
            index,
            pc,
            raw.sp,
            raw.trust,
            function,
            offset,
            module,
            build_id,
            file,
            line,
            column,
            False,
            exact,
            raw.signal_frame,
            raw.trampoline,
        )

    def _frames(self, raw: RawFrame, index: int) -> list[Frame]:
        """The frames at one physical frame: the calls inlined there (innermost first), then it."""
        if not (self.source_lines and self.inline):
            return [self.symbolize(raw, index)]
        locations = self._locate(raw.lookup_pc)
        if locations is None or len(locations) < 2:
            return [self.symbolize(raw, index)]
        named = self._named.get((raw.pc, raw.lookup_pc))
        if named is None:
            named = self._named[(raw.pc, raw.lookup_pc)] = self._name(raw.pc, raw.lookup_pc)
        _, _, module, build_id, _ = named
        frames = [
            Frame(
                index + position,
                raw.pc,
                raw.sp,
                raw.trust,
                location.function,
                None,
                module,
                build_id,
                location.file,
                location.line,
                location.column,
                True,
                True,
                raw.signal_frame,
                False,
            )
            for position, location in enumerate(locations[:-1])
        ]
        frames.append(self.symbolize(raw, index + len(frames)))
        return frames

    def _locate(self, address: int) -> list[SourceLocation] | None:
        """The DWARF source locations at ``address``, innermost first (cached per address)."""
        if address in self._located:
            return self._located[address]
        module = self.modules.find(address)
        located = None
        if module is not None:
            if self._dwarf is None:
                from redhand.symbols.dwarf import SourceLines

                self._dwarf = SourceLines()
            started = time.perf_counter()
            located = self._dwarf.locate(module, address)
            self._add_time("source", started)
            if self._dwarf.problem is not None and self._dwarf.problem not in self.warnings:
                self.warnings.append(self._dwarf.problem)
        self._located[address] = located
        return located

    def _perf_map(self) -> PerfMap | None:
        """/tmp/perf-PID.map of a live process (node --perf-basic-prof, LuaJIT, JVM agents)."""
        if not self._perf_maps:
            found = PerfMap.for_pid(self.pid) if self.source == "live" and self.pid else None
            self._perf_maps.append(found)
        return self._perf_maps[0]

    def _name(
        self, pc: int, lookup_pc: int
    ) -> tuple[str | None, int | None, str | None, str | None, bool]:
        """(function, offset, module, build-id, exact) for a frame at ``pc``."""
        module = self.modules.find(pc)
        if module is None:
            # Code with no ELF file behind it: a JIT may name it in a perf map.
            perf_map = self._perf_map()
            hit = perf_map.lookup(lookup_pc) if perf_map is not None else None
            if hit is not None:
                return hit[0], pc - hit[1], None, None, True
            return None, None, None, None, True
        # A return address points after the call; the call itself (pc - 1) is
        # what lies inside the calling function (it may be a noreturn call at
        # the very end of it).  The unwinder says when pc is exact instead.
        match = module.lookup(lookup_pc)
        build_id = module.build_id
        if match is None:
            return None, pc - module.bias, module.path, build_id, True
        offset = pc - module.bias - match.symbol.start
        return match.symbol.name, offset, module.path, build_id, match.exact


__all__ = ["DEFAULT_MAX_FRAMES", "Target", "Thread", "Trust"]
