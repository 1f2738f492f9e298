"""Validated stack scanning: smashed stacks, binaries without unwind information, ``--scan``.

- a program that overwrites its own return address with 'A's, live (blocked
  after the damage) and as a core (crashed returning into it): the trace
  ends the damaged frame with the detail that says so, then recovers the
  real callers by scanning above the damage;
- a stripped binary with neither unwind tables nor frame pointers: its
  callers are recovered by scanning, at the very pcs gdb finds with the
  unstripped twin's debug information (same build-id, same process);
- that twin, unstripped, is unwound by CFI (.debug_frame) alone: scanning
  is the last resort, and test_stack_vs_gdb.py shows it invents no frame on
  normal programs;
- ``--scan`` lists accepted and rejected candidates with their reasons, as
  text and as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from gdb_oracle import GDB_PYTHON, parse_gdb_backtraces, read_build_id
from helpers import SYS_PAUSE, LiveProgram, compile_c, crash_into_core

import redhand
from redhand.cli import main
from redhand.target.model import EndReason, Trust
from redhand.target.target import Target
from redhand.unwind.scan import ScanEntry, Verdict, scan_stack

SMASHED_FLAGS = ("-O0", "-g", "-fno-stack-protector")
BARE_FLAGS = (
    "-O2", "-g", "-fomit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
)  # fmt: skip
SMASHED_WORD = 0x4141414141414141
TIMEOUT = 60


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scan-build")


@pytest.fixture(scope="module")
def smashed(build_dir: Path) -> Path:
    return compile_c("scan_smashed.c", build_dir, SMASHED_FLAGS)


def _names(frames: object) -> list[str | None]:
    return [frame.function for frame in frames]  # type: ignore[attr-defined]


def _check_smashed(trace: redhand.Backtrace, damaged_index: int) -> None:
    """The damaged frame is smash, the detail says so, and outer and main come back by scanning."""
    names = _names(trace)
    assert names[damaged_index] == "smash", names
    assert trace.end is EndReason.BAD_PC, (trace.end, trace.end_detail)
    assert trace.end_detail is not None
    assert (
        f"frame {damaged_index}'s return address {SMASHED_WORD:#x} is not code: "
        "the stack above it was probably overwritten"
    ) in trace.end_detail, trace.end_detail
    # middle's return address was the overwritten word: nothing on the stack names it,
    # but outer's call to it, just before the return address the scan found, does.
    inferred = trace[damaged_index + 1]
    assert inferred.function == "middle" and inferred.trust is Trust.INFERRED, str(trace)
    assert inferred.called_from is not None and inferred.called_from.startswith("outer+0x")
    recovered = trace[damaged_index + 2]
    assert recovered.function == "outer" and recovered.trust is Trust.SCAN, str(trace)
    # Unwinding goes on from the scanned frame: main (by CFI from outer's
    # frame) and the thread's first frame.
    assert names[damaged_index + 3] == "main", names
    assert names[-1] == "_start", names
    assert "reached the thread's first frame" in trace.end_detail


def test_smashed_live(smashed: Path) -> None:
    with (
        LiveProgram([smashed, "live"], blocked={"main": SYS_PAUSE}) as program,
        redhand.attach(program.pid) as target,
    ):
        trace = target.thread(program.tids["main"]).backtrace()
    names = _names(trace)
    assert "smash" in names, str(trace)
    _check_smashed(trace, names.index("smash"))


def test_smashed_core(smashed: Path, tmp_path: Path) -> None:
    crash = crash_into_core([str(smashed), "crash"], tmp_path / "core")
    with redhand.open_core(str(crash.core), exe=str(smashed)) as target:
        thread = next(thread for thread in target.threads if thread.crashed)
        trace = thread.backtrace()
        # The `ret` into 0x4141414141414141 faulted: frame 0 is smash itself.
        assert trace[0].trust is Trust.CONTEXT
        _check_smashed(trace, 0)
        assert target.crash is not None and target.crash.kind == "non-canonical-address"


# -- a binary without unwind tables or frame pointers ------------------------------------


@pytest.fixture(scope="module")
def bare(build_dir: Path) -> tuple[Path, Path]:
    """(unstripped, stripped): the same build, the second stripped of symbols and .debug_frame."""
    unstripped = compile_c("scan_stripped.c", build_dir, BARE_FLAGS)
    stripped = compile_c("scan_stripped.c", build_dir, BARE_FLAGS, strip=True)
    return unstripped, stripped


def _section_names(path: Path) -> set[str]:
    from redhand.elf import ElfFile

    with ElfFile.open(str(path)) as elf:
        return {section.name for section in elf.iter_sections()}


def _gdb_pcs(exe: Path, pid: int) -> list[int]:
    """gdb's frame pcs of the process's first thread, with ``exe`` for symbols and CFI."""
    script = exe.parent / "scan-gdb-frames.py"
    script.write_text(GDB_PYTHON)
    argv = [
        "gdb", "-batch", "-nx", str(exe), "-p", str(pid),
        "-ex", "set pagination off",
        "-ex", "set width 0",
        "-ex", "set print frame-arguments none",
        "-ex", "set print frame-info location-and-address",
        "-ex", "set backtrace past-main on",
        "-ex", "thread apply all bt",
        "-x", str(script),
    ]  # fmt: skip
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )
    threads = parse_gdb_backtraces(result.stdout)
    assert pid in threads, f"{result.stdout}\n{result.stderr}"
    thread = threads[pid]
    assert thread.stopped is None, thread.stopped
    frames = thread.real_frames
    assert all(frame.pc is not None for frame in frames), result.stdout
    names = [frame.function for frame in frames]
    assert names[1:6] == ["wait_forever", "gamma_", "beta", "alpha", "main"], result.stdout
    return [frame.pc for frame in frames if frame.pc is not None]


def test_stripped_callers_by_scanning(bare: tuple[Path, Path]) -> None:
    unstripped, stripped = bare
    assert read_build_id(unstripped) == read_build_id(stripped) is not None
    assert ".debug_frame" in _section_names(unstripped)
    assert not {".debug_frame", ".symtab"} & _section_names(stripped)

    with LiveProgram([stripped], blocked={"main": SYS_PAUSE}) as program:
        with redhand.attach(program.pid) as target:
            trace = target.thread(program.pid).backtrace()
            exe = os.path.realpath(stripped)
            in_exe = [frame for frame in trace if frame.module == exe]
        # redhand has let go: gdb can attach now, with the unstripped twin.
        expected = _gdb_pcs(unstripped, program.pid)

    assert [frame.pc for frame in trace] == expected, str(trace)
    assert trace.end is EndReason.OUTERMOST, trace.end_detail
    # wait_forever's frame comes by CFI from libc's pause; gamma, beta, alpha
    # and main have neither CFI nor a frame pointer, and nothing names them.
    callers = [frame for frame in in_exe if 2 <= frame.index <= 5]
    assert len(callers) == 4, str(trace)
    assert all(f.trust is Trust.SCAN and f.function is None for f in callers), str(trace)


def test_unstripped_twin_needs_no_scanning(bare: tuple[Path, Path]) -> None:
    """With .debug_frame the same program unwinds by CFI: scanning is only a last resort."""
    unstripped, _ = bare
    with (
        LiveProgram([unstripped], blocked={"main": SYS_PAUSE}) as program,
        redhand.attach(program.pid) as target,
    ):
        trace = target.thread(program.pid).backtrace()
    names = _names(trace)
    chain = ["wait_forever", "gamma_", "beta", "alpha", "main"]
    assert names[1:6] == chain, names
    assert trace.end is EndReason.OUTERMOST, trace.end_detail
    assert all(frame.trust is not Trust.SCAN for frame in trace), str(trace)


# -- forensics: --scan ---------------------------------------------------------------------


def _verdicts(entries: list[ScanEntry]) -> dict[Verdict, list[ScanEntry]]:
    found: dict[Verdict, list[ScanEntry]] = {verdict: [] for verdict in Verdict}
    for entry in entries:
        found[entry.verdict].append(entry)
    return found


def _check_scan(target: Target, entries: list[ScanEntry]) -> None:
    by = _verdicts(entries)
    reasons = {entry.reason for entry in by[Verdict.ACCEPTED]}
    assert any(reason.startswith("call to middle at outer+0x") for reason in reasons), reasons
    assert any(reason.startswith("call to outer at main+0x") for reason in reasons), reasons
    assert sum(entry.value == SMASHED_WORD for entry in by[Verdict.NOT_CANONICAL]) >= 2
    assert all(
        e.reason == "not canonical (text: 'AAAAAAAA')"
        for e in by[Verdict.NOT_CANONICAL]
        if e.value == SMASHED_WORD
    )
    # outer's three words: a data pointer, an address after a call in no
    # function, an address in code with no call before it.
    assert any(
        e.reason.startswith("not in an executable mapping") for e in by[Verdict.NOT_EXECUTABLE]
    )
    assert any(
        e.reason.startswith("outside any named function of scan_smashed")
        for e in by[Verdict.OUTSIDE_FUNCTION]
    )
    assert any(
        e.symbol == "outer+0x1" and e.reason == "no call before it" for e in by[Verdict.NO_CALL]
    )
    # Entries come from the stack pointer up.
    addresses = [entry.address for entry in entries]
    assert addresses == sorted(addresses) and len(set(addresses)) == len(addresses)


def test_scan_stack_live(smashed: Path) -> None:
    with (
        LiveProgram([smashed, "live"], blocked={"main": SYS_PAUSE}) as program,
        redhand.attach(program.pid) as target,
    ):
        thread = target.thread(program.tids["main"])
        entries = scan_stack(target, thread)
        _check_scan(target, entries)
        # Every frame of the backtrace but the first is an accepted word (but an inferred
        # frame: the start of the function a scanned frame's call entered).
        accepted = {entry.value for entry in entries if entry.accepted}
        found = [f for f in thread.backtrace()[1:] if f.trust is not Trust.INFERRED]
        assert {frame.pc for frame in found} <= accepted
        assert scan_stack(target, thread, words=4) == [
            e for e in entries if e.address < thread.registers.rsp + 32
        ]  # type: ignore[union-attr]


def test_cli_scan_text_and_json(smashed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LiveProgram([smashed, "live"], blocked={"main": SYS_PAUSE}) as program:
        assert main(["stack", "--scan", str(program.pid)]) == 0
        text = capsys.readouterr().out
        assert main(["stack", "--scan", "--json", str(program.pid)]) == 0
        document = json.loads(capsys.readouterr().out)
    backtrace, _, scan = text.partition("stack scan of thread")
    assert "outer+0x" in backtrace and "[found by scanning]" in backtrace
    assert "is not code: the stack above it was probably overwritten" in backtrace
    assert "candidates," in scan and "accepted" in scan
    assert "accepted: call to middle at outer+0x" in scan
    assert "words rejected: not canonical (bytes: 'AAAAAAAA" in scan
    assert "rejected: not in an executable mapping (" in scan
    assert "rejected: outside any named function of scan_smashed" in scan
    assert "rejected: no call before it  outer+0x1 " in scan

    (thread,) = document["threads"]
    entries = thread["scan"]
    assert {entry["verdict"] for entry in entries} == {str(verdict) for verdict in Verdict}
    first = next(entry for entry in entries if entry["reason"].startswith("call to middle"))
    assert first["accepted"] is True and first["symbol"].startswith("outer+0x")
    assert first["module"].endswith("scan_smashed") or "scan_smashed" in first["module"]
    assert isinstance(first["address"], int) and isinstance(first["value"], int)
    frames = thread["frames"]
    assert any(frame["trust"] == "scan" and frame["function"] == "outer" for frame in frames)


def test_cli_core_scan(smashed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crash = crash_into_core([str(smashed), "crash"], tmp_path / "core")
    assert main(["core", "--scan", "--exe", str(smashed), str(crash.core)]) == 0
    text = capsys.readouterr().out
    assert "frame 0's return address 0x4141414141414141 is not code" in text
    assert "stack scan of thread" in text and "accepted: call to outer at main+0x" in text
    assert main(["core", "--scan", "--json", "--exe", str(smashed), str(crash.core)]) == 0
    document = json.loads(capsys.readouterr().out)
    crashed = next(thread for thread in document["threads"] if thread["crashed"])
    assert any(entry["value"] == SMASHED_WORD for entry in crashed["scan"])
