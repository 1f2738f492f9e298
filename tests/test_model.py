"""The model's small behaviours: memory regions, frames, backtraces, the public names."""

from __future__ import annotations

import pytest

import redhand
from redhand.errors import MemoryReadError
from redhand.target.memory import RegionMemory, read_u64
from redhand.target.model import Backtrace, EndReason, Frame, Mapping, Registers, Trust


def test_public_names_exist() -> None:
    for name in redhand.__all__:
        assert getattr(redhand, name) is not None, name
    assert callable(redhand.attach)


def test_errors_subclass_builtins() -> None:
    error = redhand.ProcessNotFound(12345, "no process 12345")
    assert isinstance(error, ProcessLookupError)
    assert isinstance(error, redhand.RedhandError)
    assert error.exit_code == 3
    assert isinstance(redhand.PermissionDenied(1, "x"), PermissionError)
    codes = [
        redhand.ProcessNotFound.exit_code,
        redhand.PermissionDenied.exit_code,
        redhand.AlreadyTraced.exit_code,
        redhand.KernelThread.exit_code,
        redhand.ZombieProcess.exit_code,
        redhand.ProcessExited.exit_code,
    ]
    assert len(set(codes)) == len(codes)


def test_region_memory_reads_inside_regions_only() -> None:
    memory = RegionMemory([(0x2000, bytes(range(16))), (0x1000, b"\x01" * 8)])
    assert memory.read(0x2004, 4) == bytes([4, 5, 6, 7])
    assert read_u64(memory, 0x1000) == 0x0101010101010101
    with pytest.raises(MemoryReadError):
        memory.read(0x200C, 8)  # runs past the end of the region
    with pytest.raises(MemoryReadError):
        memory.read(0x0FFF, 2)
    assert memory.regions() == [(0x1000, 0x1008), (0x2000, 0x2010)]


def test_region_memory_falls_back() -> None:
    behind = RegionMemory([(0x5000, b"abcdefgh")])
    memory = RegionMemory([(0x1000, b"x")], fallback=behind)
    assert memory.read(0x5002, 3) == b"cde"


def test_registers_dwarf_numbering() -> None:
    values = list(range(1, 28))
    registers = Registers.from_user_regs(values)
    dwarf = registers.dwarf()
    assert dwarf[0] == registers.rax == 11
    assert dwarf[7] == registers.rsp == registers.sp == 20
    assert dwarf[16] == registers.rip == registers.pc == 17
    assert dwarf[6] == registers.rbp == 5


def test_mapping_behaviour() -> None:
    mapping = Mapping(0x1000, 0x3000, "r-xp", 0, "08:01", 42, "/lib/libc.so.6")
    assert mapping.contains(0x1000) and not mapping.contains(0x3000)
    assert mapping.executable and mapping.readable and not mapping.writable
    assert mapping.is_file and mapping.size == 0x2000
    assert not Mapping(0, 1, "rw-p", path="[stack]").is_file


def test_frame_text_is_honest() -> None:
    named = Frame(0, 0x7F00_0000_1234, 0x7FFF_0000, Trust.CONTEXT, "poll", 0x1A, "/lib/libc.so.6")
    assert str(named) == "#0  0x00007f0000001234 in poll+0x1a (libc.so.6)"
    stripped = Frame(1, 0x5555_0000_4321, 0, Trust.CFI, None, 0x4321, "/usr/bin/app")
    assert stripped.location() == "app+0x4321"
    assert str(stripped) == "#1  0x0000555500004321 in ?? (app+0x4321)"
    nowhere = Frame(2, 0xDEAD, 0, Trust.FP)
    assert nowhere.location() == "0xdead"
    assert nowhere.to_json()["function"] is None
    assert named.to_json()["trust"] == "context"


def test_backtrace_is_a_sequence() -> None:
    frames = [Frame(i, 0x1000 + i, 0x2000 + i, Trust.CFI, f"f{i}") for i in range(5)]
    backtrace = Backtrace(frames, EndReason.OUTERMOST)
    assert len(backtrace) == 5
    assert backtrace[0].function == "f0"
    assert [f.index for f in backtrace[1:3]] == [1, 2]
    assert list(backtrace)[-1].function == "f4"
    assert str(backtrace).splitlines()[0].startswith("#0 ")
    same = Backtrace(frames, EndReason.OUTERMOST)
    assert backtrace.key() == same.key()


def test_constants_behave_like_enum_members() -> None:
    import copy
    import json
    import pickle

    from redhand.target.model import EndReason, Trust
    from redhand.unwind.cfi import RuleKind

    assert Trust("cfi") is Trust.CFI and EndReason("loop") is EndReason.LOOP
    assert RuleKind(2) is RuleKind.OFFSET
    with pytest.raises(ValueError, match="not a valid Trust"):
        Trust("bogus")
    assert list(Trust) == [Trust.CONTEXT, Trust.CFI, Trust.FP, Trust.SCAN, Trust.INFERRED]
    assert len(Trust) == 5
    assert Trust.CFI == "cfi" and f"{Trust.CFI}" == "cfi" and str(RuleKind.OFFSET) == "2"
    assert Trust.CFI.name == "CFI" and Trust.CFI.value == "cfi" and type(Trust.CFI.value) is str
    assert repr(EndReason.BAD_PC) == "<EndReason.BAD_PC: 'bad-pc'>"
    assert pickle.loads(pickle.dumps(Trust.FP)) is Trust.FP
    assert copy.deepcopy(Trust.FP) is Trust.FP
    assert json.dumps({"trust": Trust.SCAN}) == '{"trust": "scan"}'
    assert {Trust.CFI: 1}["cfi"] == 1
