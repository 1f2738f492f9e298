"""redhand's commands inside gdb (`redhand-recursion`, `redhand-scan`), with `gdb -batch`."""

from __future__ import annotations

import re
import resource
import subprocess
from pathlib import Path

import pytest
from helpers import LiveProgram, compile_c, kernel_writes_cores_here

import redhand.gdb
from redhand.gdb import scan_words, summarise

GDB_SCRIPT = Path(redhand.gdb.__file__)
STACK_BYTES = 1 << 20  # a 1 MiB stack: about 65,000 frames of ping and pong


def _small_stack_and_cores() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, STACK_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


@pytest.fixture(scope="module")
def overflow(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(executable, core) of ping and pong calling each other until the stack overflows."""
    work = tmp_path_factory.mktemp("gdb-commands")
    exe = compile_c("recurse_pingpong.c", work, ["-O2", "-g"])
    run = work / "run"
    run.mkdir()
    if kernel_writes_cores_here():
        result = subprocess.run(
            [str(exe)], cwd=run, preexec_fn=_small_stack_and_cores, capture_output=True, timeout=60
        )
        assert result.returncode < 0
        cores = list(run.iterdir())
        assert len(cores) == 1, cores
        return exe, cores[0]
    core = run / "core.gdb"
    subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "run", "-ex", f"gcore {core}", str(exe)],
        cwd=run,
        preexec_fn=_small_stack_and_cores,
        capture_output=True,
        timeout=120,
    )
    assert core.exists()
    return exe, core


def gdb(exe: Path, core: Path, *commands: str) -> str:
    argv = ["gdb", "-batch", "-nx", "-ex", f"source {GDB_SCRIPT}"]
    for command in commands:
        argv += ["-ex", command]
    result = subprocess.run(
        [*argv, str(exe), str(core)], capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_recursion_in_gdb(overflow: tuple[Path, Path]) -> None:
    exe, core = overflow
    out = gdb(exe, core, "p depth", "redhand-recursion")
    depth = int(re.search(r"\$1 = (\d+)", out).group(1))  # type: ignore[union-attr]
    match = re.search(r"\[(\w+) → (\w+)\] repeated ([\d,]+) times, frames ([\d,]+)-([\d,]+)", out)
    assert match is not None, out
    assert {match.group(1), match.group(2)} == {"ping", "pong"}
    repeats, first, last = (int(match.group(i).replace(",", "")) for i in (3, 4, 5))
    # Whole cycles are counted from the outermost recursive frame: a partial
    # cycle may be left at the top.  Frames 0 to depth-1 are ping and pong
    # (the program counts every frame it entered), then comes main.
    assert last - first + 1 == 2 * repeats
    assert first <= 2
    assert last == depth - 1, (last, depth)
    bottom = out.split("bottom (where the recursion was entered):", 1)[1]
    assert re.search(r"#[\d]+\s+0x[0-9a-f]+\s+main\+", bottom), bottom
    assert "__libc_start_call_main" in bottom


def test_scan_in_gdb(overflow: tuple[Path, Path]) -> None:
    exe, core = overflow
    out = gdb(exe, core, "redhand-scan $sp 32", "redhand-scan/all $sp 8")
    first, second = out.split("redhand-scan: 8 words", 1)
    assert "redhand-scan: 32 words from 0x" in first
    names = re.findall(r"0x[0-9a-f]{16}  (\w+)\+\d+ \(", first)
    assert names and set(names) <= {"ping", "pong"}, first
    assert "[call at 0x" in first
    assert "plausible return addresses" in second


def test_plain_functions_outside_gdb() -> None:
    """scan_words and summarise need no gdb: the rules on bytes, the cycle on addresses."""
    code = {0x1000: b"\x00\x00\xe8\x00\x00\x00\x00"}  # `call rel32` ends at 0x1007

    def read(address: int, size: int) -> bytes:
        for start, data in code.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        raise OSError("unmapped")

    words = (0x1007).to_bytes(8, "little") + (0x1003).to_bytes(8, "little")
    words += (0x4141414141414141).to_bytes(8, "little")
    found = scan_words(words, 0x7000, [(0x1000, 0x2000)], read, keep_rejected=True)
    verdicts = [(candidate.value, candidate.accepted, candidate.reason) for candidate in found]
    assert verdicts[0] == (0x1007, True, "call at 0x1002")
    assert verdicts[1][1] is False and "no call" in verdicts[1][2]
    assert verdicts[2] == (0x4141414141414141, False, "not canonical")
    summary = summarise([1, 2, 3, 2, 3, 2, 3, 2, 3, 9])
    assert summary.found and summary.cycle in ([2, 3], [3, 2]) and summary.repeats >= 3


def test_recursion_in_gdb_on_a_live_process(tmp_path: Path) -> None:
    """The same command on a live process that gdb attaches to."""
    exe = compile_c("recurse_pingpong.c", tmp_path, ["-O2", "-g"])
    with LiveProgram([exe, "live", "20000"], timeout=60) as program:
        attach = ["gdb", "-batch", "-nx", "-p", str(program.pid)]
        result = subprocess.run(
            [*attach, "-ex", f"source {GDB_SCRIPT}", "-ex", "redhand-recursion"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert "Traceback" not in result.stderr, result.stderr
    match = re.search(r"\[(\w+) → (\w+)\] repeated ([\d,]+) times", result.stdout)
    assert match is not None, result.stdout
    assert {match.group(1), match.group(2)} == {"ping", "pong"}
    assert abs(2 * int(match.group(3).replace(",", "")) - 20000) <= 4
    assert "main+" in result.stdout.split("bottom", 1)[1]
