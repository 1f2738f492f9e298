"""The in-kernel half of ``redhand allocs``: BPF programs on the allocator's functions.

Two hand-assembled programs (type KPROBE), attached with uprobe_multi links
filtered on the target's pid (its later threads too; uprobes are per file, so
libraries mapped later are covered when they are the probed files):

- **allocation functions** (malloc, calloc, realloc, operator new, ...), in a
  *session* (BPF_TRACE_UPROBE_SESSION): the program runs at the entry and, only
  when the entry returned 0, at the return.  At the entry it counts the call
  and its bytes in a hash map keyed by (return address, function): the exact
  call-site table, with no stack walk.  A byte-countdown gate per CPU (a new
  interval drawn uniformly around the mean each time) picks calls to sample:
  for those it copies the registers and up to ``stack_bytes`` of the user
  stack into the ring buffer (the largest of 16 KiB, 8, 4, 2, 1 KiB, 512 bytes
  that is readable: the main thread's stack may end sooner), notes the thread
  as pending and returns 0, so the return runs: the returned pointer goes into
  the ``live`` map and the ring buffer.
- **free functions** (free, operator delete, ...): count per call site; a
  pointer found in ``live`` (a sampled allocation) is removed and its free
  goes to the ring buffer.  realloc's entry does the same for its old block.

The entry is told from the return by the instruction pointer: at the entry it
is the probed address (or one past it, the breakpoint's length).

Records (little-endian, ``<IIQ`` header: type, tid, kernel time in ns):

- SAMPLE: function index, bytes copied, size, weight in bytes and in calls
  (what the gate counted since the previous sample), the 17 registers of
  :data:`REGISTERS`, then the stack bytes;
- RETURN: pointer, sample time (the pending sample's id);
- FREE: pointer, sample time of the block.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from dataclasses import dataclass
from enum import IntEnum

from redhand.capture import bpf
from redhand.capture.bpf import (
    ADD,
    DW,
    JEQ,
    JGT,
    JNE,
    JSGT,
    LSH,
    MOD,
    MUL,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R8,
    R9,
    R10,
    RSH,
    SUB,
    Assembler,
    W,
)

# struct pt_regs (x86_64) offsets
PT_REGS = {
    "r15": 0, "r14": 8, "r13": 16, "r12": 24, "rbp": 32, "rbx": 40, "r11": 48, "r10": 56,
    "r9": 64, "r8": 72, "rax": 80, "rcx": 88, "rdx": 96, "rsi": 104, "rdi": 112, "rip": 128,
    "rsp": 152,
}  # fmt: skip
REGISTERS = (
    "rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
)  # fmt: skip
ARGUMENTS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


class Record(IntEnum):
    SAMPLE = 1
    RETURN = 2
    FREE = 3
    MMAP = 4
    MUNMAP = 5
    BRK = 6


class SizeFrom(IntEnum):
    """Where a function's size is: an argument (0-5), arg0 * arg1, a constant, nowhere."""

    ARG0 = 0
    ARG1 = 1
    ARG2 = 2
    ARG3 = 3
    ARG4 = 4
    ARG5 = 5
    PRODUCT = 6
    CONSTANT = 7
    NONE = 8


class PointerFrom(IntEnum):
    """Where an allocation's block is: the return value, or ``*arg0`` (posix_memalign)."""

    RETURN = 0
    ARG0_INDIRECT = 1


HEADER = struct.Struct("<IIQ")
SAMPLE = struct.Struct("<IIQQQ17Q")  # index, copied, size, weight bytes, weight calls, regs
SMALL = struct.Struct("<QQ")  # pointer, sample time
COUNTER_KEY = struct.Struct("<QII")  # return address, function index, 0
COUNTER_VALUE = struct.Struct("<QQ")  # calls, bytes
CONFIG = struct.Struct("<QIIII")  # probe address, size from, constant, pointer from, frees arg0
PENDING = struct.Struct("<QQ")  # sample time, arg0 at the entry
GATE = struct.Struct("<qqq")  # remaining, interval, calls since the last sample
_STACK_STEPS = (16384, 8192, 4096, 2048, 1024, 512)

# Statistics slots (an array map): what could not be recorded.
STAT_COUNTER_FULL = 0
STAT_RING_FULL = 1
STAT_LIVE_FULL = 2
STATS = 4

NOEXIST = 1  # BPF_NOEXIST


@dataclass(frozen=True)
class Function:
    """One probed function: ``address`` is where it is probed in the process."""

    index: int
    address: int
    free: bool
    size_from: SizeFrom = SizeFrom.ARG0
    size_constant: int = 0
    pointer_from: PointerFrom = PointerFrom.RETURN
    frees_arg0: bool = False  # realloc: its entry frees its first argument

    def config(self) -> bytes:
        return CONFIG.pack(
            self.address,
            int(self.size_from),
            self.size_constant,
            int(self.pointer_from),
            int(self.frees_arg0),
        )


@dataclass
class Maps:
    """The maps shared by the programs (fds, closed by :meth:`close`)."""

    config: int
    counters: int
    gate: int
    pending: int
    live: int
    ring: int
    stats: int
    settings: int
    ring_size: int

    @classmethod
    def create(cls, functions: int, ring_size: int, call_sites: int, live: int) -> Maps:
        made: list[int] = []
        try:
            for args in (
                (bpf.MAP_ARRAY, 4, CONFIG.size, max(functions, 1), "ra_config"),
                (bpf.MAP_HASH, COUNTER_KEY.size, COUNTER_VALUE.size, call_sites, "ra_sites"),
                (bpf.MAP_PERCPU_ARRAY, 4, GATE.size, 1, "ra_gate"),
                (bpf.MAP_HASH, 8, PENDING.size, 16384, "ra_pending"),
                (bpf.MAP_HASH, 8, 8, live, "ra_live"),
                (bpf.MAP_RINGBUF, 0, 0, ring_size, "ra_ring"),
                (bpf.MAP_ARRAY, 4, 8, STATS, "ra_stats"),
                (bpf.MAP_ARRAY, 4, 8, 1, "ra_settings"),
            ):
                made.append(bpf.create_map(*args[:4], name=args[4]))
        except BaseException:
            for fd in made:
                os.close(fd)
            raise
        config, counters, gate, pending, live_map, ring, stats, settings = made
        return cls(config, counters, gate, pending, live_map, ring, stats, settings, ring_size)

    def close(self) -> None:
        for fd in (
            self.config,
            self.counters,
            self.gate,
            self.pending,
            self.live,
            self.ring,
            self.stats,
            self.settings,
        ):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- code generation -------------------------------------------------------------------
#
# Registers kept across helper calls: R6 the context (pt_regs), R7 the function index,
# R8 the thread id, R9 the function's configuration.  The stack frame (R10 - n):
_SIZE = -8  # the call's size
_RETURN = -16  # the return address read at [sp]
_KEY = -32  # a counter key (16 bytes), then scratch
_ZERO = -48  # 16 zero bytes: a new counter's value
_INDEX = -52  # u32 map keys
_POINTER = -64
_TIME = -72
_RECORD = -80  # a spilled ring buffer record pointer
_GATE_PTR = -88
_PENDING = -104  # a PENDING value (16 bytes)


def _stat(asm: Assembler, maps: Maps, slot: int, tag: str) -> None:
    """stats[slot] += 1 (clobbers R0-R5)."""
    asm.store_imm(W, R10, _INDEX, slot)
    asm.load_map_fd(R1, maps.stats)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _INDEX)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, f"{tag}_done")
    asm.mov_imm(R1, 1)
    asm.atomic_add(DW, R0, R1, 0)
    asm.label(f"{tag}_done")


def _prologue(asm: Assembler, maps: Maps, tag: str) -> None:
    """R6 = ctx, R7 = function index, R9 = its configuration, R8 = thread id."""
    asm.mov_reg(R6, R1)
    asm.call(bpf.GET_ATTACH_COOKIE)
    asm.mov_reg(R7, R0)
    asm.store(W, R10, R7, _INDEX)
    asm.load_map_fd(R1, maps.config)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _INDEX)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, f"{tag}_leave")
    asm.mov_reg(R9, R0)
    asm.call(bpf.GET_CURRENT_PID_TGID)
    asm.alu_imm(LSH, R0, 32)
    asm.alu_imm(RSH, R0, 32)
    asm.mov_reg(R8, R0)


def _count(asm: Assembler, maps: Maps, tag: str) -> None:
    """counters[(return address, index)] += (1, size); the size is at _SIZE."""
    asm.mov_reg(R1, R10)
    asm.alu_imm(ADD, R1, _RETURN)
    asm.mov_imm(R2, 8)
    asm.load(DW, R3, R6, PT_REGS["rsp"])
    asm.call(bpf.PROBE_READ_USER)
    asm.load(DW, R1, R10, _RETURN)
    asm.store(DW, R10, R1, _KEY)
    asm.store(W, R10, R7, _KEY + 8)
    asm.store_imm(W, R10, _KEY + 12, 0)
    asm.store_imm(DW, R10, _ZERO, 0)
    asm.store_imm(DW, R10, _ZERO + 8, 0)
    asm.load_map_fd(R1, maps.counters)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _KEY)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JNE, R0, 0, f"{tag}_add")
    asm.load_map_fd(R1, maps.counters)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _KEY)
    asm.mov_reg(R3, R10)
    asm.alu_imm(ADD, R3, _ZERO)
    asm.mov_imm(R4, NOEXIST)
    asm.call(bpf.MAP_UPDATE_ELEM)
    asm.load_map_fd(R1, maps.counters)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _KEY)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JNE, R0, 0, f"{tag}_add")
    _stat(asm, maps, STAT_COUNTER_FULL, f"{tag}_full")
    asm.goto(f"{tag}_counted")
    asm.label(f"{tag}_add")
    asm.mov_imm(R1, 1)
    asm.atomic_add(DW, R0, R1, 0)
    asm.load(DW, R1, R10, _SIZE)
    asm.atomic_add(DW, R0, R1, 8)
    asm.label(f"{tag}_counted")


def _forget(asm: Assembler, maps: Maps, tag: str) -> None:
    """The block at _POINTER, if sampled and live: removed, and a FREE record written."""
    asm.load(DW, R1, R10, _POINTER)
    asm.jump_imm(JEQ, R1, 0, f"{tag}_kept")
    asm.load_map_fd(R1, maps.live)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _POINTER)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, f"{tag}_kept")
    asm.load(DW, R1, R0, 0)
    asm.store(DW, R10, R1, _TIME)
    asm.load_map_fd(R1, maps.live)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _POINTER)
    asm.call(bpf.MAP_DELETE_ELEM)
    _small_record(asm, maps, Record.FREE, f"{tag}_record")
    asm.label(f"{tag}_kept")


def _small_record(asm: Assembler, maps: Maps, kind: Record, tag: str) -> None:
    """A RETURN or FREE record of (_POINTER, _TIME)."""
    asm.load_map_fd(R1, maps.ring)
    asm.mov_imm(R2, HEADER.size + SMALL.size)
    asm.mov_imm(R3, 0)
    asm.call(bpf.RINGBUF_RESERVE)
    asm.jump_imm(JNE, R0, 0, f"{tag}_fill")
    _stat(asm, maps, STAT_RING_FULL, f"{tag}_lost")
    asm.goto(f"{tag}_done")
    asm.label(f"{tag}_fill")
    asm.store(DW, R10, R0, _RECORD)
    asm.store_imm(W, R0, 0, int(kind))
    asm.store(W, R0, R8, 4)
    asm.call(bpf.KTIME_GET_NS)
    asm.load(DW, R1, R10, _RECORD)
    asm.store(DW, R1, R0, 8)
    asm.load(DW, R2, R10, _POINTER)
    asm.store(DW, R1, R2, HEADER.size)
    asm.load(DW, R2, R10, _TIME)
    asm.store(DW, R1, R2, HEADER.size + 8)
    asm.mov_imm(R2, 0)
    asm.call(bpf.RINGBUF_SUBMIT)
    asm.label(f"{tag}_done")


def _size(asm: Assembler) -> None:
    """_SIZE = the call's size, as the configuration says."""
    loads = {int(SizeFrom(i)): PT_REGS[name] for i, name in enumerate(ARGUMENTS)}
    asm.load(W, R1, R9, 8)
    asm.mov_imm(R3, 0)
    for kind, offset in loads.items():
        asm.jump_imm(JNE, R1, kind, f"size_not_{kind}")
        asm.load(DW, R3, R6, offset)
        asm.goto("size_known")
        asm.label(f"size_not_{kind}")
    asm.jump_imm(JNE, R1, int(SizeFrom.PRODUCT), "size_not_product")
    asm.load(DW, R3, R6, PT_REGS["rdi"])
    asm.load(DW, R2, R6, PT_REGS["rsi"])
    asm.alu_reg(MUL, R3, R2)
    asm.goto("size_known")
    asm.label("size_not_product")
    asm.jump_imm(JNE, R1, int(SizeFrom.CONSTANT), "size_known")
    asm.load(W, R3, R9, 12)
    asm.label("size_known")
    asm.store(DW, R10, R3, _SIZE)


def alloc_program(maps: Maps, *, stack_bytes: int) -> bytes:
    """The session program of the allocation functions (see the module's documentation).

    The sampling gate's mean interval in bytes is read from ``settings[0]`` at each
    sample (0: sample every call; :func:`set_mean` changes it as the program runs);
    ``stack_bytes``: the most stack copied per sample (one of 16384 ... 512).
    """
    asm = Assembler()
    _prologue(asm, maps, "alloc")
    # The entry, or the return?
    asm.load(DW, R1, R6, PT_REGS["rip"])
    asm.load(DW, R2, R9, 0)
    asm.alu_reg(SUB, R1, R2)
    asm.jump_imm(JGT, R1, 1, "return")
    # -- the entry
    _size(asm)
    _count(asm, maps, "alloc")
    asm.load(W, R1, R9, 20)  # frees arg0 (realloc)
    asm.jump_imm(JEQ, R1, 0, "gate")
    asm.load(DW, R1, R6, PT_REGS["rdi"])
    asm.store(DW, R10, R1, _POINTER)
    _forget(asm, maps, "realloc")
    asm.label("gate")
    asm.store_imm(W, R10, _INDEX, 0)
    asm.load_map_fd(R1, maps.gate)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _INDEX)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, "alloc_leave")
    asm.load(DW, R1, R0, 16)  # calls since the last sample
    asm.alu_imm(ADD, R1, 1)
    asm.store(DW, R0, R1, 16)
    asm.load(DW, R1, R0, 0)  # remaining
    asm.load(DW, R2, R10, _SIZE)
    asm.alu_reg(SUB, R1, R2)
    asm.jump_imm(JSGT, R1, 0, "not_sampled")
    # -- sampled: weights, then a new interval
    asm.store(DW, R10, R0, _GATE_PTR)
    asm.load(DW, R2, R0, 8)  # the interval set at the previous sample
    asm.alu_reg(SUB, R2, R1)  # bytes counted since = interval - (remaining - size)
    asm.store(DW, R10, R2, _KEY)
    asm.load(DW, R2, R0, 16)
    asm.store(DW, R10, R2, _KEY + 8)
    asm.store_imm(W, R10, _INDEX, 0)
    asm.load_map_fd(R1, maps.settings)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _INDEX)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.mov_imm(R1, 0)
    asm.jump_imm(JEQ, R0, 0, "interval")
    asm.load(DW, R1, R0, 0)  # the mean
    asm.jump_imm(JEQ, R1, 0, "interval")  # 0: every call
    asm.store(DW, R10, R1, _POINTER)
    asm.call(bpf.GET_PRANDOM_U32)
    asm.load(DW, R1, R10, _POINTER)
    asm.alu_reg(MOD, R0, R1)
    asm.alu_imm(RSH, R1, 1)
    asm.alu_reg(ADD, R1, R0)  # uniform in [mean/2, 3 mean/2): the mean on average
    asm.label("interval")
    asm.load(DW, R0, R10, _GATE_PTR)
    asm.store(DW, R0, R1, 0)
    asm.store(DW, R0, R1, 8)
    asm.store_imm(DW, R0, 16, 0)
    # the record
    size = HEADER.size + SAMPLE.size + stack_bytes
    asm.load_map_fd(R1, maps.ring)
    asm.mov_imm(R2, size)
    asm.mov_imm(R3, 0)
    asm.call(bpf.RINGBUF_RESERVE)
    asm.jump_imm(JNE, R0, 0, "fill")
    _stat(asm, maps, STAT_RING_FULL, "sample_lost")
    asm.goto("alloc_leave")
    asm.label("fill")
    asm.store(DW, R10, R0, _RECORD)
    asm.store_imm(W, R0, 0, int(Record.SAMPLE))
    asm.store(W, R0, R8, 4)
    asm.call(bpf.KTIME_GET_NS)
    asm.store(DW, R10, R0, _TIME)
    asm.load(DW, R1, R10, _RECORD)
    asm.store(DW, R1, R0, 8)
    base = HEADER.size
    asm.store(W, R1, R7, base)
    asm.store_imm(W, R1, base + 4, 0)
    asm.load(DW, R2, R10, _SIZE)
    asm.store(DW, R1, R2, base + 8)
    asm.load(DW, R2, R10, _KEY)
    asm.store(DW, R1, R2, base + 16)
    asm.load(DW, R2, R10, _KEY + 8)
    asm.store(DW, R1, R2, base + 24)
    for n, name in enumerate(REGISTERS):
        asm.load(DW, R2, R6, PT_REGS[name])
        asm.store(DW, R1, R2, base + 32 + 8 * n)
    # the stack: the largest readable copy
    stack_at = HEADER.size + SAMPLE.size
    for step in (s for s in _STACK_STEPS if s <= stack_bytes):
        asm.load(DW, R1, R10, _RECORD)
        asm.alu_imm(ADD, R1, stack_at)
        asm.mov_imm(R2, step)
        asm.load(DW, R3, R6, PT_REGS["rsp"])
        asm.call(bpf.PROBE_READ_USER)
        asm.jump_imm(JNE, R0, 0, f"smaller_{step}")
        asm.load(DW, R1, R10, _RECORD)
        asm.store_imm(W, R1, base + 4, step)
        asm.goto("copied")
        asm.label(f"smaller_{step}")
    asm.label("copied")
    asm.load(DW, R1, R10, _RECORD)
    asm.mov_imm(R2, 0)
    asm.call(bpf.RINGBUF_SUBMIT)
    # pending[tid] = (sample time, arg0): the return records the block
    asm.store(DW, R10, R8, _KEY)
    asm.load(DW, R1, R10, _TIME)
    asm.store(DW, R10, R1, _PENDING)
    asm.load(DW, R1, R6, PT_REGS["rdi"])
    asm.store(DW, R10, R1, _PENDING + 8)
    asm.load_map_fd(R1, maps.pending)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _KEY)
    asm.mov_reg(R3, R10)
    asm.alu_imm(ADD, R3, _PENDING)
    asm.mov_imm(R4, 0)
    asm.call(bpf.MAP_UPDATE_ELEM)
    asm.mov_imm(R0, 0)  # run at the return
    asm.exit()
    asm.label("not_sampled")
    asm.store(DW, R0, R1, 0)
    asm.label("alloc_leave")
    asm.mov_imm(R0, 1)
    asm.exit()
    # -- the return of a sampled call
    asm.label("return")
    asm.store(DW, R10, R8, _KEY)
    asm.load_map_fd(R1, maps.pending)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _KEY)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, "return_leave")
    asm.load(DW, R1, R0, 0)
    asm.store(DW, R10, R1, _TIME)
    asm.load(DW, R1, R0, 8)
    asm.store(DW, R10, R1, _POINTER)  # arg0 at the entry, for posix_memalign
    asm.load_map_fd(R1, maps.pending)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _KEY)
    asm.call(bpf.MAP_DELETE_ELEM)
    asm.load(W, R1, R9, 16)
    asm.jump_imm(JEQ, R1, int(PointerFrom.RETURN), "from_rax")
    asm.mov_reg(R1, R10)
    asm.alu_imm(ADD, R1, _POINTER)
    asm.mov_imm(R2, 8)
    asm.load(DW, R3, R10, _POINTER)
    asm.call(bpf.PROBE_READ_USER)
    asm.jump_imm(JEQ, R0, 0, "have_pointer")
    asm.goto("return_leave")
    asm.label("from_rax")
    asm.load(DW, R1, R6, PT_REGS["rax"])
    asm.store(DW, R10, R1, _POINTER)
    asm.label("have_pointer")
    asm.load(DW, R1, R10, _POINTER)
    asm.jump_imm(JEQ, R1, 0, "return_leave")
    asm.load_map_fd(R1, maps.live)
    asm.mov_reg(R2, R10)
    asm.alu_imm(ADD, R2, _POINTER)
    asm.mov_reg(R3, R10)
    asm.alu_imm(ADD, R3, _TIME)
    asm.mov_imm(R4, 0)
    asm.call(bpf.MAP_UPDATE_ELEM)
    asm.jump_imm(JEQ, R0, 0, "live_kept")
    _stat(asm, maps, STAT_LIVE_FULL, "live_full")
    asm.label("live_kept")
    _small_record(asm, maps, Record.RETURN, "returned")
    asm.label("return_leave")
    asm.mov_imm(R0, 0)
    asm.exit()
    return asm.assemble()


def free_program(maps: Maps) -> bytes:
    """The program of the free functions: count per call site, and forget sampled blocks."""
    asm = Assembler()
    _prologue(asm, maps, "free")
    _size(asm)
    _count(asm, maps, "free")
    asm.load(DW, R1, R6, PT_REGS["rdi"])
    asm.store(DW, R10, R1, _POINTER)
    _forget(asm, maps, "free")
    asm.label("free_leave")
    asm.mov_imm(R0, 0)
    asm.exit()
    return asm.assemble()


# -- mmap, munmap, brk ------------------------------------------------------------------

SYSCALL = struct.Struct("<5QII17Q")  # arguments 0-4, bytes of stack copied, 0, registers
_TASK_PT_REGS = 175
_CURRENT_TASK_BTF = 158
_PROBE_READ_KERNEL = 113
_REGS_PTR = -112


def syscall_program(maps: Maps, kind: Record, *, pid: int, stack_bytes: int) -> bytes:
    """A tracepoint program on sys_enter_mmap, _munmap or _brk: for the process ``pid``
    only, a record of the call's arguments, its registers and the top of its stack."""
    asm = Assembler()
    asm.mov_reg(R6, R1)
    asm.call(bpf.GET_CURRENT_PID_TGID)
    asm.mov_reg(R8, R0)
    asm.alu_imm(RSH, R0, 32)
    asm.jump_imm(JNE, R0, pid, "leave")
    asm.alu_imm(LSH, R8, 32)
    asm.alu_imm(RSH, R8, 32)
    size = HEADER.size + SYSCALL.size + stack_bytes
    asm.load_map_fd(R1, maps.ring)
    asm.mov_imm(R2, size)
    asm.mov_imm(R3, 0)
    asm.call(bpf.RINGBUF_RESERVE)
    asm.jump_imm(JNE, R0, 0, "fill")
    _stat(asm, maps, STAT_RING_FULL, "lost")
    asm.goto("leave")
    asm.label("fill")
    asm.store(DW, R10, R0, _RECORD)
    asm.store_imm(W, R0, 0, int(kind))
    asm.store(W, R0, R8, 4)
    asm.call(bpf.KTIME_GET_NS)
    asm.load(DW, R1, R10, _RECORD)
    asm.store(DW, R1, R0, 8)
    base = HEADER.size
    # syscalls:sys_enter_*: the arguments are longs from offset 16, as many as the call has
    # (a program that reads past the tracepoint's record is refused at the attach).
    arguments = {Record.MMAP: 5, Record.MUNMAP: 2, Record.BRK: 1}[kind]
    for n in range(5):
        if n < arguments:
            asm.load(DW, R2, R6, 16 + 8 * n)
            asm.store(DW, R1, R2, base + 8 * n)
        else:
            asm.store_imm(DW, R1, base + 8 * n, 0)
    asm.store_imm(W, R1, base + 40, 0)
    asm.store_imm(W, R1, base + 44, 0)
    # The registers the call saved on entry (the user's).
    asm.call(_CURRENT_TASK_BTF)
    asm.mov_reg(R1, R0)
    asm.call(_TASK_PT_REGS)
    asm.store(DW, R10, R0, _REGS_PTR)
    for n, name in enumerate(REGISTERS):
        asm.load(DW, R1, R10, _RECORD)
        asm.alu_imm(ADD, R1, base + 48 + 8 * n)
        asm.mov_imm(R2, 8)
        asm.load(DW, R3, R10, _REGS_PTR)
        asm.alu_imm(ADD, R3, PT_REGS[name])
        asm.call(_PROBE_READ_KERNEL)
    sp_at = base + 48 + 8 * REGISTERS.index("rsp")
    stack_at = HEADER.size + SYSCALL.size
    for step in (s for s in _STACK_STEPS if s <= stack_bytes):
        asm.load(DW, R1, R10, _RECORD)
        asm.load(DW, R3, R1, sp_at)
        asm.alu_imm(ADD, R1, stack_at)
        asm.mov_imm(R2, step)
        asm.call(bpf.PROBE_READ_USER)
        asm.jump_imm(JNE, R0, 0, f"smaller_{step}")
        asm.load(DW, R1, R10, _RECORD)
        asm.store_imm(W, R1, base + 40, step)
        asm.goto("copied")
        asm.label(f"smaller_{step}")
    asm.label("copied")
    asm.load(DW, R1, R10, _RECORD)
    asm.mov_imm(R2, 0)
    asm.call(bpf.RINGBUF_SUBMIT)
    asm.label("leave")
    asm.mov_imm(R0, 0)
    asm.exit()
    return asm.assemble()


# -- reading the maps ------------------------------------------------------------------

BPF_MAP_GET_NEXT_KEY = 4


def map_items(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map, read after the programs are detached."""
    items: list[tuple[bytes, bytes]] = []
    key = ctypes.create_string_buffer(key_size)
    following = ctypes.create_string_buffer(key_size)
    first = True
    while True:
        attr = bpf._attr(
            "<IIQQ",
            fd,
            0,
            0 if first else ctypes.addressof(key),
            ctypes.addressof(following),
        )
        if bpf._raw_bpf(BPF_MAP_GET_NEXT_KEY, attr) < 0:
            return items
        first = False
        ctypes.memmove(key, following, key_size)
        value = bpf.map_lookup(fd, key.raw, value_size)
        if value is not None:
            items.append((key.raw, value))


def read_stats(maps: Maps) -> list[int]:
    found = []
    for slot in range(STATS):
        raw = bpf.map_lookup(maps.stats, struct.pack("<I", slot), 8)
        found.append(struct.unpack("<Q", raw)[0] if raw else 0)
    return found


def set_mean(maps: Maps, mean: int) -> None:
    """The sampling gate's mean interval in bytes from now on (0: every call)."""
    bpf.map_update(maps.settings, struct.pack("<I", 0), struct.pack("<Q", mean))


def set_gate(maps: Maps, first_interval: int) -> None:
    """Every CPU's gate starts a first interval (drawn by the caller)."""
    cpus = os.cpu_count() or 1
    possible = _possible_cpus() or cpus
    value = GATE.pack(first_interval, first_interval, 0) * possible
    bpf.map_update(maps.gate, struct.pack("<I", 0), value)


def _possible_cpus() -> int | None:
    """How many CPUs a per-CPU map holds a value for (/sys/devices/system/cpu/possible)."""
    try:
        with open("/sys/devices/system/cpu/possible") as file:
            text = file.read().strip()
    except OSError:
        return None
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


__all__ = [
    "CONFIG",
    "COUNTER_KEY",
    "COUNTER_VALUE",
    "HEADER",
    "REGISTERS",
    "SAMPLE",
    "SMALL",
    "SYSCALL",
    "Function",
    "Maps",
    "PointerFrom",
    "Record",
    "SizeFrom",
    "alloc_program",
    "free_program",
    "map_items",
    "read_stats",
    "set_gate",
    "set_mean",
    "syscall_program",
]
