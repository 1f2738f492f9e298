"""Cores that lack a note, or whose notes cannot be read: a report without a Python None or
nan in it, or (no thread at all) one line and a documented exit code."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compile_c, crash_into_core

NT_PRSTATUS, NT_PRPSINFO, NT_AUXV = 1, 3, 6
NT_SIGINFO, NT_FILE = 0x53494749, 0x46494C45
PT_NOTE = 4
UNKNOWN_NOTE = 0x7E7E7E7E

PROGRAM = r"""
#include <stdio.h>
__attribute__((noinline)) static void set(volatile int *p) { *p = 1; }
int main(void) { puts("start"); set((volatile int *)0x18); return 0; }
"""


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("damaged")
    exe = compile_c(PROGRAM, folder, ["-O1", "-g"])
    crash = crash_into_core([str(exe)], folder / "run")
    return exe, crash.core


def note_segments(data: bytes) -> list[tuple[int, int]]:
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phnum = struct.unpack_from("<H", data, 0x38)[0]
    found = []
    for index in range(phnum):
        entry = phoff + index * 56
        if struct.unpack_from("<I", data, entry)[0] == PT_NOTE:
            offset, _vaddr, _paddr, size = struct.unpack_from("<QQQQ", data, entry + 8)
            found.append((offset, size))
    return found


def without_note(data: bytes, note_type: int) -> bytes:
    """The core with every note of ``note_type`` renamed to a type no reader knows."""
    changed = bytearray(data)
    hits = 0
    for offset, size in note_segments(data):
        position = offset
        while position + 12 <= offset + size:
            namesz, descsz, kind = struct.unpack_from("<III", data, position)
            if kind == note_type:
                struct.pack_into("<I", changed, position + 8, UNKNOWN_NOTE)
                hits += 1
            position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    assert hits, f"the core has no note of type {note_type:#x}"
    return bytes(changed)


def redhand_core(core: Path, exe: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redhand", "core", str(core), "--exe", str(exe), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "note", [NT_PRPSINFO, NT_FILE, NT_AUXV, NT_SIGINFO], ids=["prpsinfo", "file", "auxv", "siginfo"]
)
def test_a_core_without_a_note_reports_without_none_or_nan(
    crashed: tuple[Path, Path], tmp_path: Path, note: int
) -> None:
    exe, core = crashed
    damaged = tmp_path / "core.damaged"
    damaged.write_bytes(without_note(core.read_bytes(), note))
    text = redhand_core(damaged, exe)
    assert text.returncode == 0, text.stderr
    for word in ("None", "nan", "Traceback"):
        assert word not in text.stdout and word not in text.stderr, (word, text.stdout)
    if note != NT_FILE:  # without NT_FILE no file is known: frames are addresses (and said so)
        assert "set" in text.stdout
    as_json = redhand_core(damaged, exe, "--json")
    assert as_json.returncode == 0
    json.loads(as_json.stdout)


def test_a_core_without_threads_says_so_in_one_line(
    crashed: tuple[Path, Path], tmp_path: Path
) -> None:
    exe, core = crashed
    damaged = tmp_path / "core.nothreads"
    damaged.write_bytes(without_note(core.read_bytes(), NT_PRSTATUS))
    result = redhand_core(damaged, exe)
    assert result.returncode == 10, result.stdout
    assert result.stderr.count("\n") == 1 and "holds no thread" in result.stderr


def test_a_core_whose_notes_are_past_its_end(crashed: tuple[Path, Path], tmp_path: Path) -> None:
    exe, core = crashed
    data = bytearray(core.read_bytes())
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phnum = struct.unpack_from("<H", data, 0x38)[0]
    for index in range(phnum):
        entry = phoff + index * 56
        if struct.unpack_from("<I", data, entry)[0] == PT_NOTE:
            struct.pack_into("<Q", data, entry + 8, len(data) + 4096)
    damaged = tmp_path / "core.badnotes"
    damaged.write_bytes(bytes(data))
    result = redhand_core(damaged, exe)
    assert result.returncode == 10
    assert "holds no thread" in result.stderr and "past the end of the file" in result.stderr
