"""``redhand allocs``: who allocates what in a running program, with true call stacks.

The allocator a process really calls is read from its GOT slots (see
:mod:`redhand.dynlink`): glibc's, jemalloc's or tcmalloc's when preloaded, a
static executable's own.  Its functions are probed with uprobes filtered on
the process (:mod:`redhand.capture.allocprobes`): exact counts and bytes per
call site in the kernel, and for calls a byte-sampling gate picks, the
registers and the top of the stack, unwound here by redhand's CFI unwinder
(frames past the copied bytes come from live memory, and are marked less
certain).  Sampled blocks not freed by the end are the leak suspects.

Nothing is injected: detaching closes the links, and what stays in the
process is the kernel's one-page ``[uprobes]`` mapping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import struct
import time
from dataclasses import dataclass, field

from redhand.capture import allocprobes as kernel
from redhand.capture import bpf
from redhand.capture.allocprobes import Function, PointerFrom, Record, SizeFrom
from redhand.errors import RedhandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redhand.elf import ElfFile
    from redhand.target.memory import Memory
    from redhand.target.module import Module
    from redhand.target.target import Target
    from redhand.unwind.unwinder import Unwinder

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_BYTES = 512 << 10
DEFAULT_STACK_BYTES = 16 << 10
DEFAULT_BUDGET = 0.25  # the predicted slowdown allowed without --force (see BENCHMARKS.md)
TRAP_SECONDS = 1.2e-6  # what a probed call costs the program (measured: 0.9-1.5 us)
_RING_BYTES = 32 << 20
_CALL_SITES = 1 << 16
_LIVE = 1 << 18
_GUARD_SECONDS = 0.2
_MAX_QUEUED = 4096  # samples waiting to be unwound (16 KiB each at most)


class AllocsError(RedhandError):
    exit_code = 14


@dataclass(frozen=True)
class Spec:
    """How an allocator function takes its size and gives its block."""

    free: bool = False
    size_from: SizeFrom = SizeFrom.ARG0
    size_constant: int = 0
    pointer_from: PointerFrom = PointerFrom.RETURN
    frees_arg0: bool = False


_FREE = Spec(free=True, size_from=SizeFrom.NONE)
_SIZED_FREE = Spec(free=True, size_from=SizeFrom.ARG1)

STANDARD: dict[str, Spec] = {
    "malloc": Spec(),
    "calloc": Spec(size_from=SizeFrom.PRODUCT),
    "realloc": Spec(size_from=SizeFrom.ARG1, frees_arg0=True),
    "posix_memalign": Spec(size_from=SizeFrom.ARG2, pointer_from=PointerFrom.ARG0_INDIRECT),
    "aligned_alloc": Spec(size_from=SizeFrom.ARG1),
    "memalign": Spec(size_from=SizeFrom.ARG1),
    "valloc": Spec(),
    "pvalloc": Spec(),
    "_Znwm": Spec(),  # operator new(size_t)
    "_Znam": Spec(),  # operator new[](size_t)
    "_ZnwmRKSt9nothrow_t": Spec(),
    "_ZnamRKSt9nothrow_t": Spec(),
    "_ZnwmSt11align_val_t": Spec(),
    "_ZnamSt11align_val_t": Spec(),
    "_ZnwmSt11align_val_tRKSt9nothrow_t": Spec(),
    "_ZnamSt11align_val_tRKSt9nothrow_t": Spec(),
    "free": _FREE,
    "cfree": _FREE,
    "_ZdlPv": _FREE,  # operator delete(void*)
    "_ZdaPv": _FREE,
    "_ZdlPvm": _SIZED_FREE,  # operator delete(void*, size_t)
    "_ZdaPvm": _SIZED_FREE,
    "_ZdlPvSt11align_val_t": _FREE,
    "_ZdaPvSt11align_val_t": _FREE,
    "_ZdlPvmSt11align_val_t": _SIZED_FREE,
    "_ZdaPvmSt11align_val_t": _SIZED_FREE,
    "_ZdlPvRKSt9nothrow_t": _FREE,
    "_ZdaPvRKSt9nothrow_t": _FREE,
}

_PLAIN_NAMES = {
    "_Znwm": "operator new",
    "_Znam": "operator new[]",
    "_ZdlPv": "operator delete",
    "_ZdaPv": "operator delete[]",
    "_ZdlPvm": "operator delete (sized)",
    "_ZdaPvm": "operator delete[] (sized)",
}


def display_name(symbol: str) -> str:
    """``operator new`` for ``_Znwm``; C++ names demangled; others as they are."""
    if symbol in _PLAIN_NAMES:
        return _PLAIN_NAMES[symbol]
    if symbol.startswith("_Z"):
        from redhand.symbols.demangle import demangle

        return demangle(symbol) or symbol
    return symbol


def describe_probes(probes: Sequence[Probe], shown: int = 6) -> str:
    """``malloc, free, calloc, realloc, ... (8) in libc.so.6; operator new, ... in ...``."""
    by_file: dict[str, list[str]] = {}
    for probe in probes:
        names = by_file.setdefault(probe.display_path.rsplit("/", 1)[-1], [])
        if display_name(probe.symbol) not in names:
            names.append(display_name(probe.symbol))
    parts = []
    for name, functions in by_file.items():
        listed = ", ".join(functions[:shown])
        more = f", and {len(functions) - shown} more" if len(functions) > shown else ""
        parts.append(f"{listed}{more} in {name}")
    return "; ".join(parts)


def parse_user_spec(text: str, *, free: bool) -> tuple[str, Spec]:
    """``rb_newobj:size=40`` or ``pool_alloc:size=arg1`` (an allocator), ``pool_put:ptr=arg0``
    (a free function): the function's name and how it takes its size or pointer."""
    name, _, options = text.partition(":")
    if not name:
        raise ValueError(f"{text!r}: a function name is expected before ':'")
    size_from, constant = (SizeFrom.NONE, 0) if free else (SizeFrom.ARG0, 0)
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "size" and not free:
            if value.startswith("arg") and value[3:].isdigit() and int(value[3:]) < 6:
                size_from = SizeFrom(int(value[3:]))
            elif value.isdigit():
                size_from, constant = SizeFrom.CONSTANT, int(value)
            else:
                raise ValueError(f"{text!r}: size= takes arg0 ... arg5 or a number of bytes")
        elif key == "ptr" and free:
            if value != "arg0":
                raise ValueError(f"{text!r}: a freed pointer is taken from arg0 only")
        else:
            raise ValueError(f"{text!r}: unknown option {key!r} (size=... or ptr=arg0)")
    return name, Spec(free=free, size_from=size_from, size_constant=constant)


@dataclass(frozen=True)
class Probe:
    """One function probed: its symbol, where it runs, and the file the uprobe goes on."""

    symbol: str
    address: int
    path: str  # the file to probe (readable now)
    display_path: str
    offset: int  # file offset of the probed instruction
    spec: Spec
    shifted: int = 0  # bytes past the entry point the probe is placed at


# -- finding the allocator ---------------------------------------------------------------


def find_probes(target: Target, specs: dict[str, Spec], notes: list[str]) -> list[Probe]:
    """The functions the process really calls, by symbol: where its GOT slots point (or
    would point once bound); the executable's own definitions when nothing imports them
    (a static executable)."""
    from redhand.dynlink import Status, process_linkage

    addresses: dict[int, str] = {}
    linkage = process_linkage(target)
    for slot in linkage.slots:
        name = slot.entry.name
        if name not in specs or slot.value is None:
            continue
        # What the slot holds when it holds a function of a file (bound, or hooked to one);
        # else where ld.so binds it (not yet bound, or, at a launched program's start,
        # not yet relocated at all).
        module = target.modules.find(slot.value) if slot.value else None
        bound = slot.status not in (Status.UNBOUND, Status.UNRESOLVED, Status.UNREADABLE)
        if bound and module is not None and target.is_executable(slot.value):
            addresses.setdefault(slot.value, name)
        elif slot.expected is not None:
            addresses.setdefault(slot.expected.address, name)
    found = set(addresses.values())
    for name in specs:
        if name in found:
            continue
        for address in _definitions(target, name):
            addresses.setdefault(address, name)
    probes: list[Probe] = []
    for address, name in sorted(addresses.items()):
        probe = _probe_at(target, address, name, specs[name], notes)
        if probe is not None:
            probes.append(probe)
    return probes


_CODE = (2, 10)  # STT_FUNC, STT_GNU_IFUNC


def _definitions(target: Target, name: str) -> list[int]:
    """Run-time addresses of ``name`` where the executable (or a module) defines it."""
    found: list[int] = []
    for module in target.modules:
        elf = module.elf()
        if elf is None or module.path == "[vdso]":
            continue
        is_exe = target.exe is not None and module.path == target.exe.removesuffix(" (deleted)")
        for table in (".dynsym", ".symtab") if is_exe else (".dynsym",):
            try:
                for symbol in elf.iter_symbols(table):
                    if (
                        symbol.name == name
                        and symbol.shndx
                        and symbol.value
                        and symbol.type in (2, 10)
                    ):
                        found.append(module.bias + symbol.value)
                        break
            except RedhandError:
                continue
            if found:
                return found
    return found


def _probe_at(
    target: Target, address: int, name: str, spec: Spec, notes: list[str]
) -> Probe | None:
    module = target.modules.find(address)
    if module is None or module.path.startswith("["):
        notes.append(f"{display_name(name)} at {address:#x} is in no file: not probed")
        return None
    elf = module.elf()
    if elf is None:
        notes.append(f"{module.path}: {module.problem or 'cannot be read'}: {name} not probed")
        return None
    vaddr = address - module.bias
    shifted = _probe_shift(elf, vaddr) if spec.free and spec.size_from is SizeFrom.NONE else 0
    offset = elf.vaddr_to_offset(vaddr + shifted)
    if offset is None:
        notes.append(f"{name} at {address:#x}: no file bytes there: not probed")
        return None
    path = module.open_path or module.path
    return Probe(name, address + shifted, path, module.path, offset, spec, shifted)


def _probe_shift(elf: ElfFile, vaddr: int) -> int:
    """Bytes to skip at a free function's entry: a leading ``test rdi, rdi; je`` (free(NULL)
    returns at once) is single-stepped by the kernel, about ten times the cost of the
    emulated ``push`` after it.  The pointer is still in rdi there."""
    from iced_x86 import Decoder, Mnemonic

    try:
        code = elf.read_vaddr(vaddr, 32)
    except RedhandError:
        return 0
    decoder = Decoder(64, code, ip=vaddr)
    instructions = [decoder.decode() for _ in range(3)]
    first, second = instructions[0], instructions[1]
    if first.mnemonic == Mnemonic.ENDBR64:
        first, second = instructions[1], instructions[2]
    if (
        first.mnemonic == Mnemonic.TEST
        and str(first).replace(" ", "") in ("testrdi,rdi",)
        and second.mnemonic in (Mnemonic.JE,)
    ):
        return second.next_ip - vaddr
    return 0


# -- the record ---------------------------------------------------------------------------


@dataclass
class Sample:
    """A sampled allocation: its stack (return addresses, innermost first) and weights."""

    time: int
    tid: int
    function: int
    size: int
    weight_bytes: int
    weight_calls: int
    pcs: tuple[int, ...] = ()
    complete: bool = False
    from_live: int = 0  # frames from this one on were read past the copied stack
    skipped: bool = False  # an allocation made inside another probed one (operator new's malloc)


@dataclass
class MapCall:
    """An mmap, munmap or brk call of the process, with its stack."""

    kind: Record
    time: int
    tid: int
    arguments: tuple[int, ...]
    pcs: tuple[int, ...] = ()
    complete: bool = False
    from_live: int = 0


@dataclass
class Recording:
    """What a recording gathered (see :class:`AllocsResult` for the report's view)."""

    pid: int
    probes: list[Probe]
    call_sites: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    samples: dict[int, Sample] = field(default_factory=dict)
    map_calls: list[MapCall] = field(default_factory=list)
    live: dict[int, int] = field(default_factory=dict)  # sample time -> pointer
    freed: int = 0
    lost_samples: int = 0
    lost_unwinding: int = 0  # samples read but dropped: more than could be unwound
    lost_call_sites: int = 0
    lost_live: int = 0
    started: float = 0.0
    ended: float = 0.0
    attach_seconds: float = 0.0
    detach_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    exit_status: int | None = None


class _SampleMemory:
    """A sample's copied stack, and the live process past it (for the unwinder)."""

    def __init__(self, live: Memory) -> None:
        self.live = live
        self.start = 0
        self.data = b""

    def read(self, address: int, size: int) -> bytes:
        offset = address - self.start
        if offset >= 0 and offset + size <= len(self.data):
            return self.data[offset : offset + size]
        return self.live.read(address, size)


class Recorder:
    """Attach to a process, record, detach: :meth:`record` gives a :class:`Recording`."""

    def __init__(
        self,
        pid: int,
        *,
        specs: dict[str, Spec],
        sample_bytes: int = DEFAULT_SAMPLE_BYTES,
        every: bool = False,
        stack_bytes: int = DEFAULT_STACK_BYTES,
        budget: float | None = DEFAULT_BUDGET,
        progress: Callable[[Recording], None] | None = None,
    ) -> None:
        self.pid = pid
        self.specs = specs
        self.mean = 0 if every else sample_bytes
        self.stack_bytes = stack_bytes
        self.budget = budget
        self.progress = progress
        self._maps: kernel.Maps | None = None
        self._links: list[int] = []
        self._programs: list[int] = []
        self._ring: bpf.RingBuffer | None = None
        self._target: Target | None = None
        self._unwinder: Unwinder | None = None
        self._memory: _SampleMemory | None = None
        self._refreshed = 0.0
        self._probed: dict[int, Probe] = {}
        self._entries: set[int] = set()  # the probed functions' entry points
        self._queue: list[tuple[Sample | MapCall, dict[str, int], bytes]] = []
        self._lost_seen = 0
        self._samples_seen = 0
        self._notes: list[str] = []
        self.recording: Recording | None = None

    # -- attaching

    def attach(self) -> Recording:
        from redhand.target.live import observe

        started = time.perf_counter()
        target = observe(self.pid)
        recording = Recording(pid=self.pid, probes=[])
        probes = find_probes(target, self.specs, recording.notes)
        if not probes:
            raise AllocsError(
                f"no allocator function found in process {self.pid}",
                hint="is it a program that allocates through malloc? name its own allocator "
                "with --alloc NAME:size=argN and --free NAME:ptr=arg0",
            )
        recording.probes = probes
        self._attach_probes(probes)
        recording.notes.extend(self._notes)
        recording.attach_seconds = time.perf_counter() - started
        recording.started = time.time()
        self._set_target(target)
        self.recording = recording
        return recording

    def _attach_probes(self, probes: Sequence[Probe]) -> None:
        maps = self._maps = kernel.Maps.create(len(probes), _RING_BYTES, _CALL_SITES, _LIVE)
        try:
            for index, probe in enumerate(probes):
                function = Function(
                    index,
                    probe.address,
                    probe.spec.free,
                    probe.spec.size_from,
                    probe.spec.size_constant,
                    probe.spec.pointer_from,
                    probe.spec.frees_arg0,
                )
                bpf.map_update(maps.config, struct.pack("<I", index), function.config())
                self._probed[index] = probe
                self._entries.add(probe.address - probe.shifted)
            first = self.mean // 2 + (int.from_bytes(os.urandom(4), "little") % max(self.mean, 1))
            kernel.set_gate(maps, first if self.mean else 0)
            kernel.set_mean(maps, self.mean)
            alloc = bpf.load_program(
                kernel.alloc_program(maps, stack_bytes=self.stack_bytes),
                prog_type=bpf.PROG_KPROBE,
                name="redhand_alloc",
                expected_attach_type=bpf.TRACE_UPROBE_SESSION,
            )
            self._programs.append(alloc)
            free = bpf.load_program(
                kernel.free_program(maps),
                prog_type=bpf.PROG_KPROBE,
                name="redhand_free",
                expected_attach_type=bpf.TRACE_UPROBE_MULTI,
            )
            self._programs.append(free)
            groups: dict[tuple[str, bool], list[tuple[int, int]]] = {}
            for index, probe in enumerate(probes):
                groups.setdefault((probe.path, probe.spec.free), []).append((probe.offset, index))
            for (path, is_free), entries in groups.items():
                self._links.append(
                    bpf.attach_uprobes(
                        free if is_free else alloc,
                        path,
                        [offset for offset, _ in entries],
                        [index for _, index in entries],
                        pid=self.pid,
                        attach_type=bpf.TRACE_UPROBE_MULTI if is_free else bpf.TRACE_UPROBE_SESSION,
                    )
                )
            self._attach_syscalls(maps)
            self._ring = bpf.RingBuffer(maps.ring, maps.ring_size)
        except BaseException:
            self.close()
            raise

    def _attach_syscalls(self, maps: kernel.Maps) -> None:
        """mmap, munmap and brk, from their tracepoints, for this process only."""
        _root, mounted = bpf.tracefs()
        if mounted:
            self._notes.append("tracefs was not mounted: redhand mounted it")
        for kind, call in ((Record.MMAP, "mmap"), (Record.MUNMAP, "munmap"), (Record.BRK, "brk")):
            if not bpf.tracepoint_exists("syscalls", f"sys_enter_{call}"):
                self._notes.append(f"no tracepoint for {call}: its calls are not recorded")
                continue
            program = bpf.load_program(
                kernel.syscall_program(maps, kind, pid=self.pid, stack_bytes=self.stack_bytes),
                name=f"redhand_{call}",
            )
            self._programs.append(program)
            tracepoint = bpf.tracepoint_id("syscalls", f"sys_enter_{call}")
            self._links.append(bpf.attach_tracepoint(program, tracepoint))

    def _set_target(self, target: Target) -> None:
        from redhand.unwind.unwinder import Unwinder

        self._target = target
        self._memory = _SampleMemory(target.memory)
        self._unwinder = Unwinder(self._memory, target.modules.find, target.is_executable)
        self._refreshed = time.monotonic()

    # -- recording

    def record(
        self,
        *,
        duration: float | None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Recording:
        """Record until ``duration`` passes, ``should_stop()`` says so or the process ends."""
        recording = self.recording or self.attach()
        deadline = None if duration is None else time.monotonic() + duration
        guard_at = time.monotonic() + _GUARD_SECONDS if self.budget is not None else None
        try:
            while True:
                self.drain(recording)
                now = time.monotonic()
                if guard_at is not None and now >= guard_at:
                    guard_at = None
                    self._guard(recording)
                self._adapt(recording)
                if deadline is not None and now >= deadline:
                    break
                if should_stop() or not _alive(self.pid):
                    break
                if self.progress is not None:
                    self.progress(recording)
                assert self._ring is not None
                self._ring.wait(0.1)
        finally:
            self.detach(recording)
        return recording

    def _adapt(self, recording: Recording) -> None:
        """More than 1 % of the samples lost (the ring full): sample half as often."""
        assert self._maps is not None
        lost = kernel.read_stats(self._maps)[kernel.STAT_RING_FULL] + recording.lost_unwinding
        if lost - self._lost_seen <= 0.01 * max(len(recording.samples) - self._samples_seen, 1):
            self._lost_seen, self._samples_seen = lost, len(recording.samples)
            return
        mean = max(2 * self.mean, 64 << 10)
        recording.notes.append(
            f"{lost - self._lost_seen} samples lost (more than could be kept): the sampling "
            f"interval grows to {mean:,} bytes"
        )
        self.mean = mean
        kernel.set_mean(self._maps, mean)
        self._lost_seen, self._samples_seen = lost, len(recording.samples)

    def _guard(self, recording: Recording) -> None:
        """After a first moment, the calls per second predict the program's slowdown."""
        assert self._maps is not None and self.budget is not None
        calls = sum(
            kernel.COUNTER_VALUE.unpack(value)[0]
            for _key, value in kernel.map_items(
                self._maps.counters, kernel.COUNTER_KEY.size, kernel.COUNTER_VALUE.size
            )
        )
        seconds = max(time.time() - recording.started, 1e-3)
        rate = calls / seconds
        slowdown = rate * TRAP_SECONDS
        recording.notes.append(
            f"{rate:,.0f} probed calls/s in the first {seconds:.2f} s: about "
            f"{slowdown:.0%} of one CPU added to the program"
        )
        if slowdown > self.budget:
            raise AllocsError(
                f"process {self.pid} makes {rate:,.0f} allocator calls per second: recording "
                f"them would add about {slowdown:.0%} to its time, over the {self.budget:.0%} "
                "allowed",
                hint="record anyway with --force, or a shorter --duration",
            )

    def drain(self, recording: Recording, *, budget: float | None = 0.05) -> None:
        """Read the ring; unwind the samples read, for up to ``budget`` seconds (None: all),
        between reads of the ring, so that it never fills while stacks are unwound."""
        deadline = None if budget is None else time.monotonic() + budget
        while True:
            self._read_ring(recording)
            if not self._queue or (deadline is not None and time.monotonic() >= deadline):
                return
            for _ in range(min(len(self._queue), 64)):
                sample, regs, stack = self._queue.pop(0)
                self._unwind(sample, regs, stack)

    def _read_ring(self, recording: Recording) -> None:
        ring = self._ring
        if ring is None:
            return
        for data in ring.read():
            kind, tid, when = kernel.HEADER.unpack_from(data)
            if kind == Record.SAMPLE:
                self._sample(recording, tid, when, data)
            elif kind == Record.RETURN:
                pointer, sample_time = kernel.SMALL.unpack_from(data, kernel.HEADER.size)
                if sample_time in recording.samples:
                    recording.live[sample_time] = pointer
            elif kind == Record.FREE:
                _pointer, sample_time = kernel.SMALL.unpack_from(data, kernel.HEADER.size)
                if recording.live.pop(sample_time, None) is not None:
                    recording.freed += 1
            elif kind in (Record.MMAP, Record.MUNMAP, Record.BRK):
                *arguments, copied, _pad = kernel.SYSCALL.unpack_from(data, kernel.HEADER.size)[:7]
                registers = kernel.SYSCALL.unpack_from(data, kernel.HEADER.size)[7:]
                call = MapCall(Record(kind), when, tid, tuple(arguments))
                recording.map_calls.append(call)
                start = kernel.HEADER.size + kernel.SYSCALL.size
                regs = dict(zip(kernel.REGISTERS, registers, strict=True))
                self._queue.append((call, regs, data[start : start + copied]))

    def _sample(self, recording: Recording, tid: int, when: int, data: bytes) -> None:
        if len(self._queue) >= _MAX_QUEUED:
            # More samples than redhand unwinds: dropped, and counted as lost (the
            # sampling interval then grows, as when the ring is full).
            recording.lost_unwinding += 1
            return
        index, copied, size, weight_bytes, weight_calls, *registers = kernel.SAMPLE.unpack_from(
            data, kernel.HEADER.size
        )
        sample = Sample(when, tid, index, size, weight_bytes, max(weight_calls, 1))
        recording.samples[when] = sample
        start = kernel.HEADER.size + kernel.SAMPLE.size
        regs = dict(zip(kernel.REGISTERS, registers, strict=True))
        self._queue.append((sample, regs, data[start : start + copied]))

    def _unwind(self, sample: Sample | MapCall, regs: dict[str, int], stack: bytes) -> None:
        from redhand.target.model import EndReason, Registers

        if self._target is None or self._unwinder is None or self._memory is None:
            return
        caller = int.from_bytes(stack[:8], "little") if len(stack) >= 8 else regs["rip"]
        for address in (regs["rip"], caller):
            if self._target.modules.find(address) is None and self._refresh():
                break  # a library mapped since the last look (dlopen)
        memory = self._memory
        assert memory is not None and self._unwinder is not None
        memory.start, memory.data = regs["rsp"], stack
        registers = Registers(**{name: regs[name] for name in kernel.REGISTERS})
        try:
            frames, reason, _detail = self._unwinder.unwind(registers, max_frames=512)
        except RedhandError:
            return
        sample.pcs = tuple(frame.pc for frame in frames)
        sample.complete = reason == EndReason.OUTERMOST
        end = regs["rsp"] + len(stack)
        sample.from_live = next(
            (n for n, frame in enumerate(frames) if frame.cfa is not None and frame.cfa > end),
            len(frames),
        )
        if isinstance(sample, Sample) and len(frames) > 1 and self._is_probed(frames[1].pc - 1):
            sample.skipped = True

    def _is_probed(self, address: int) -> bool:
        """Whether ``address`` is inside one of the probed functions (operator new, whose
        malloc call is then the same allocation)."""
        target = self._target
        module = target.modules.find(address) if target is not None else None
        match = module.lookup(address) if module is not None else None
        if module is None or match is None:
            return False
        start = module.bias + match.symbol.start
        return start in self._entries

    def _refresh(self) -> bool:
        """A library mapped since: read the process's mappings again (at most 5 times a second)."""
        from redhand.target.live import observe

        if time.monotonic() - self._refreshed < 0.2:
            return False
        try:
            self._set_target(observe(self.pid))
        except RedhandError:
            return False
        return True

    # -- detaching

    def detach(self, recording: Recording) -> None:
        """Remove the probes, read what is left in the ring and the counters."""
        started = time.perf_counter()
        for fd in self._links:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links.clear()
        recording.detach_seconds = time.perf_counter() - started
        recording.ended = time.time()
        self.drain(recording, budget=None)
        maps = self._maps
        if maps is not None:
            for key, value in kernel.map_items(
                maps.counters, kernel.COUNTER_KEY.size, kernel.COUNTER_VALUE.size
            ):
                address, index, _ = kernel.COUNTER_KEY.unpack(key)
                recording.call_sites[(address, index)] = kernel.COUNTER_VALUE.unpack(value)
            stats = kernel.read_stats(maps)
            recording.lost_call_sites = stats[kernel.STAT_COUNTER_FULL]
            recording.lost_samples = stats[kernel.STAT_RING_FULL] + recording.lost_unwinding
            recording.lost_live = stats[kernel.STAT_LIVE_FULL]
        self.close()

    def close(self) -> None:
        for fd in self._links + self._programs:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._links.clear()
        self._programs.clear()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._maps is not None:
            self._maps.close()
            self._maps = None

    # -- names

    def name_of(self, pc: int, exact: bool) -> tuple[str, str | None]:
        """(function+offset or module+offset, module name) of a pc (a return address unless
        ``exact``)."""
        target = self._target
        module: Module | None = target.modules.find(pc) if target is not None else None
        if module is None and self._refresh():
            target = self._target
            module = target.modules.find(pc) if target is not None else None
        if module is None:
            mapping = target.find_mapping(pc) if target is not None else None
            if mapping is not None and mapping.path == "[uprobes]":
                # A probed function tail-called from another one whose return was
                # being probed: the kernel's trampoline stands in for the return address.
                return "a probed function's return (a tail call)", "[uprobes]"
            return f"{pc:#x}", None
        match = module.lookup(pc if exact else pc - 1)
        if match is None:
            return f"{module.name}+{pc - module.bias:#x}", module.name
        return match.symbol.name, module.name


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


# -- launching ------------------------------------------------------------------------------

_SET_TID_ADDRESS = 218


def launch_held(argv: Sequence[str]) -> int:
    """Start ``argv`` traced, run it to its first set_tid_address(2) (its libraries are
    mapped, none of its code has run: the dynamic linker sets up its thread there, a static
    executable's libc early in its start), and return its pid, stopped and still traced."""
    from redhand.proc import ptrace

    pid = os.fork()
    if pid == 0:  # the child: to be traced, then the program
        with contextlib.suppress(BaseException):
            ptrace.raw_ptrace(0, 0, 0, 0)  # PTRACE_TRACEME
            os.execvp(argv[0], list(argv))
        os._exit(127)
    _, status = os.waitpid(pid, 0)
    if not os.WIFSTOPPED(status):
        raise AllocsError(f"{argv[0]} could not be started (status {status:#x})")
    ptrace.set_options(pid, ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL)
    delivered = 0
    while True:
        ptrace.syscall(pid, delivered)
        delivered = 0
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            code = os.waitstatus_to_exitcode(status)
            raise AllocsError(f"{argv[0]} ended before it started (status {code})")
        stop = os.WSTOPSIG(status)
        if stop == signal.SIGTRAP | 0x80:
            if ptrace.get_register_words(pid)[15] == _SET_TID_ADDRESS:  # orig_rax
                return pid
        elif stop != signal.SIGTRAP:
            delivered = stop


def release(pid: int) -> None:
    """Let a :func:`launch_held` program run, untraced."""
    from redhand.proc import ptrace

    ptrace.detach(pid)


# -- the result ---------------------------------------------------------------------------


@dataclass
class FunctionTotal:
    """Every call of one probed function (exact)."""

    name: str
    module: str
    calls: int
    bytes: int
    free: bool


@dataclass
class CallSite:
    """The calls of one function from one return address (exact)."""

    function: str
    caller: str
    module: str | None
    address: int
    calls: int
    bytes: int
    free: bool


@dataclass
class Stack:
    """Sampled allocations with the same stack: estimated bytes and calls (samples scaled by
    the gate's weights).  ``frames`` innermost first; those from ``from_live`` on were read
    past the copied stack."""

    frames: list[str]
    samples: int = 0
    bytes: int = 0
    calls: int = 0
    complete: bool = True
    from_live: int = 0
    blocks: int = 0  # live: sampled blocks not freed
    oldest: float = 0.0  # live: the age of the oldest, in seconds


@dataclass
class MapStack:
    """mmap, munmap or brk calls from one stack (every call: exact)."""

    call: str  # "mmap (anonymous)", "mmap (file)", "munmap", "brk"
    frames: list[str]
    calls: int = 0
    bytes: int = 0  # mapped, unmapped, or the break moved by
    complete: bool = True


_MAP_ANONYMOUS = 0x20
_OUTERMOST = frozenset({"_dl_start_user", "_dl_start"})


@dataclass
class AllocsResult:
    """What ``redhand allocs`` reports (see :func:`summarize`)."""

    pid: int
    exe: str | None
    seconds: float
    sample_bytes: int  # the gate's mean interval; 0: every call sampled
    probes: list[Probe]
    totals: list[FunctionTotal]
    call_sites: list[CallSite]
    stacks: list[Stack]
    live: list[Stack]
    maps: list[MapStack]
    samples: int
    complete: int
    skipped: int
    lost_samples: int
    lost_call_sites: int
    lost_live: int
    attach_seconds: float
    detach_seconds: float
    notes: list[str]
    exit_status: int | None = None

    def folded(self) -> str:
        """Folded stacks (flamegraph.pl, speedscope): ``outer;...;inner bytes`` per line."""
        lines = []
        for stack in self.stacks:
            frames = ";".join(reversed([f.replace(";", ":") for f in stack.frames]))
            lines.append(f"{frames} {stack.bytes}")
        return "\n".join(lines) + ("\n" if lines else "")


def summarize(recorder: Recorder, recording: Recording) -> AllocsResult:
    """The report's figures: exact totals and call sites, the sampled stacks, the live ones."""
    probes = recording.probes
    totals: dict[int, list[int]] = {}
    sites: list[CallSite] = []
    for (address, index), (calls, size) in recording.call_sites.items():
        probe = probes[index] if index < len(probes) else None
        if probe is None:
            continue
        total = totals.setdefault(index, [0, 0])
        total[0] += calls
        total[1] += size
        caller, module = recorder.name_of(address, exact=False)
        sites.append(
            CallSite(
                display_name(probe.symbol), caller, module, address, calls, size, probe.spec.free
            )
        )
    sites.sort(key=lambda site: (-site.bytes, -site.calls))
    function_totals = [
        FunctionTotal(
            display_name(probes[index].symbol),
            probes[index].display_path.rsplit("/", 1)[-1],
            calls,
            size,
            probes[index].spec.free,
        )
        for index, (calls, size) in sorted(totals.items(), key=lambda kv: -kv[1][1])
    ]
    names: dict[tuple[int, bool], str] = {}

    def frames_of(sample: Sample | MapCall) -> list[str]:
        frames = []
        for n, pc in enumerate(sample.pcs):
            key = (pc, n == 0)
            if key not in names:
                name, module = recorder.name_of(pc, exact=n == 0)
                names[key] = f"{name} ({module})" if module else name
            frames.append(names[key])
        return frames

    # Stacks are told apart by their functions, not their return addresses: a loop that
    # allocates from two lines of one function is one stack.
    stacks: dict[tuple[str, ...], Stack] = {}
    live: dict[tuple[str, ...], Stack] = {}
    now = recording.ended or time.time()
    boot_offset = time.time() - time.monotonic()  # ktime is CLOCK_MONOTONIC, in ns
    complete = skipped = 0
    for when, sample in recording.samples.items():
        if sample.skipped:
            skipped += 1
            continue
        frames = frames_of(sample)
        if not sample.complete and frames and frames[-1].split(" (")[0] in _OUTERMOST:
            sample.complete = True  # ld.so's entry, running the constructors before main
        complete += sample.complete
        key = tuple(frames)
        stack = stacks.get(key)
        if stack is None:
            stack = stacks[key] = Stack(frames, complete=sample.complete,
                                        from_live=sample.from_live)  # fmt: skip
        stack.samples += 1
        stack.bytes += max(sample.weight_bytes, sample.size)
        stack.calls += sample.weight_calls
        if when in recording.live:
            held = live.get(key)
            if held is None:
                held = live[key] = Stack(frames, complete=sample.complete,
                                         from_live=sample.from_live)  # fmt: skip
            held.samples += 1
            held.blocks += 1
            held.bytes += max(sample.weight_bytes, sample.size)
            held.calls += sample.weight_calls
            age = now - (boot_offset + when / 1e9)
            held.oldest = max(held.oldest, age)
    maps: dict[tuple[str, tuple[str, ...]], MapStack] = {}
    previous_break = 0
    for call in sorted(recording.map_calls, key=lambda c: c.time):
        if call.kind is Record.MMAP:
            anonymous = call.arguments[3] & _MAP_ANONYMOUS
            kind, size = ("mmap (anonymous)" if anonymous else "mmap (file)"), call.arguments[1]
        elif call.kind is Record.MUNMAP:
            kind, size = "munmap", call.arguments[1]
        else:
            moved_to = call.arguments[0]
            kind = "brk"
            size = moved_to - previous_break if moved_to and previous_break else 0
            previous_break = moved_to or previous_break
        frames = frames_of(call)
        entry = maps.get((kind, tuple(frames)))
        if entry is None:
            entry = maps[(kind, tuple(frames))] = MapStack(kind, frames, complete=call.complete)
        entry.calls += 1
        entry.bytes += size
    target = recorder._target
    return AllocsResult(
        pid=recording.pid,
        exe=target.exe if target is not None else None,
        seconds=max((recording.ended or now) - recording.started, 0.0),
        sample_bytes=recorder.mean,
        probes=probes,
        totals=function_totals,
        call_sites=sites,
        stacks=sorted(stacks.values(), key=lambda s: -s.bytes),
        live=sorted(live.values(), key=lambda s: -s.bytes),
        maps=sorted(maps.values(), key=lambda m: -abs(m.bytes)),
        samples=len(recording.samples) - skipped,
        complete=complete,
        skipped=skipped,
        lost_samples=recording.lost_samples,
        lost_call_sites=recording.lost_call_sites,
        lost_live=recording.lost_live,
        attach_seconds=recording.attach_seconds,
        detach_seconds=recording.detach_seconds,
        notes=recording.notes,
        exit_status=recording.exit_status,
    )


def allocs(
    pid: int | None = None,
    *,
    argv: Sequence[str] | None = None,
    duration: float | None = None,
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    every: bool = False,
    stack_bytes: int = DEFAULT_STACK_BYTES,
    extra_allocs: Sequence[str] = (),
    extra_frees: Sequence[str] = (),
    force: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    on_attached: Callable[[Recording], None] | None = None,
) -> AllocsResult:
    """Record the allocations of process ``pid`` (or of ``argv``, launched) for
    ``duration`` seconds (None: until it ends or ``should_stop()``), and summarize them."""
    if (pid is None) == (argv is None):
        raise ValueError("allocs needs a pid or a command")
    specs = dict(STANDARD)
    for text in extra_allocs:
        name, spec = parse_user_spec(text, free=False)
        specs[name] = spec
    for text in extra_frees:
        name, spec = parse_user_spec(text, free=True)
        specs[name] = spec
    launched = argv is not None
    if argv is not None:
        pid = launch_held(argv)
    assert pid is not None
    recorder = Recorder(
        pid,
        specs=specs,
        sample_bytes=sample_bytes,
        every=every,
        stack_bytes=stack_bytes,
        budget=None if force or launched else DEFAULT_BUDGET,
    )
    try:
        recorder.attach()
    except BaseException:
        if launched:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        raise
    if launched:
        release(pid)
    if on_attached is not None and recorder.recording is not None:
        on_attached(recorder.recording)
    status: int | None = None

    def ended() -> bool:
        nonlocal status
        if launched and status is None:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
        return status is not None or should_stop()

    try:
        recording = recorder.record(duration=duration, should_stop=ended)
    finally:
        if launched and status is None:
            with contextlib.suppress(OSError):
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = raw
    recording.exit_status = status
    return summarize(recorder, recording)
