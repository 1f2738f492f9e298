"""Perf maps (/tmp/perf-PID.map): names for JIT code in anonymous memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from helpers import LiveProgram, compile_c, gcore_of_live

import redhand
from redhand.symbols.perfmap import PerfMap


def test_parse_and_lookup(tmp_path: Path) -> None:
    path = tmp_path / "perf-1.map"
    path.write_text(
        "7f0000001000 40 LazyCompile:*add /app/main.js:3:17\n"
        "0x7f0000000000 100 Interpreter\n"
        "garbage line\n"
        "zz 10 bad start\n"
        "7f0000002000 10\n"  # no name: skipped
        "7f0000001000 20 regenerated in place\n"  # a later line for the same start wins
        "7f0000003000 0 empty\n"
    )
    perf = PerfMap(str(path))
    assert len(perf) == 3
    assert perf.lookup(0x7F0000000000) == ("Interpreter", 0x7F0000000000, 0x100)
    assert perf.lookup(0x7F00000000FF) == ("Interpreter", 0x7F0000000000, 0x100)
    assert perf.lookup(0x7F0000000100) is None
    assert perf.lookup(0x7F000000101F) == ("regenerated in place", 0x7F0000001000, 0x20)
    assert perf.lookup(0x7F0000001020) is None
    assert perf.lookup(0x7F0000003000) == ("empty", 0x7F0000003000, 0)
    assert perf.lookup(0x1000) is None
    assert perf.lookup(0xFFFFFFFFFFFFFFFF) is None


def test_unreadable_map_is_empty(tmp_path: Path) -> None:
    perf = PerfMap(str(tmp_path / "missing.map"))
    assert perf.lookup(0x1000) is None
    assert perf.error is not None and "missing.map" in perf.error
    assert PerfMap.for_pid(2**22 + 7) is None


def _jit_region(pid: int) -> tuple[int, int]:
    """The program's anonymous read-write-execute page (the JIT code), from /proc/PID/maps."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if fields[1] == "rwxp" and len(fields) == 5:
            start, end = (int(value, 16) for value in fields[0].split("-"))
            return start, end
    raise AssertionError("no anonymous executable mapping")


@contextlib.contextmanager
def jit_program(build_dir: Path) -> Iterator[LiveProgram]:
    binary = compile_c("jit_perfmap.c", build_dir, ["-O1", "-g", "-fno-omit-frame-pointer"])
    program = LiveProgram([binary])
    try:
        with program:
            yield program
    finally:
        if program.process is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/tmp/perf-{program.pid}.map")


def test_map_of_a_live_jit_program(build_dir: Path) -> None:
    with jit_program(build_dir) as program:
        start, _end = _jit_region(program.pid)
        perf = PerfMap.for_pid(program.pid)
        assert perf is not None
        assert perf.lookup(start + 5) == ("jit_trampoline [JIT] tier 1", start, 14)
        assert perf.lookup(start + 256) == ("LazyCompile:*unused /app/x.js:1", start + 256, 14)
        assert perf.lookup(start + 14) is None
        # The unwinder gets through the JIT frame by its frame pointer.
        with redhand.attach(program.pid) as target:
            backtrace = target.threads[0].backtrace()
        jit = [frame for frame in backtrace if start <= frame.pc < start + 4096]
        assert len(jit) == 1, backtrace
        assert jit[0].module is None
        names = [frame.function for frame in backtrace]
        assert "blocker" in names and "main" in names, names
        assert names.index("blocker") < backtrace.index(jit[0]) < names.index("main")


def test_jit_frame_named_from_the_perf_map(build_dir: Path) -> None:
    with jit_program(build_dir) as program:
        start, _end = _jit_region(program.pid)
        with redhand.attach(program.pid) as target:
            backtrace = target.threads[0].backtrace()
        jit = next(frame for frame in backtrace if start <= frame.pc < start + 4096)
        assert jit.function == "jit_trampoline [JIT] tier 1"
        assert jit.offset == jit.pc - start


def _jit_frame(backtrace: redhand.Backtrace) -> redhand.Frame:
    names = [frame.function for frame in backtrace]
    assert "blocker" in names and "main" in names, backtrace
    between = backtrace[names.index("blocker") + 1 : names.index("main")]
    assert len(between) == 1 and between[0].module is None, backtrace
    return between[0]


def test_jit_frame_of_a_core_named_from_the_perf_map(build_dir: Path, tmp_path: Path) -> None:
    binary = compile_c("jit_perfmap.c", build_dir, ["-O1", "-g", "-fno-omit-frame-pointer"])
    core, _tids, pid = gcore_of_live([str(binary)], tmp_path, 1)
    perf = Path(f"/tmp/perf-{pid}.map")
    try:
        with redhand.open_core(core, exe=binary) as target:
            jit = _jit_frame(target.threads[0].backtrace())
            assert jit.function == "jit_trampoline [JIT] tier 1"
            assert not any("perf-" in warning for warning in target.warnings)
        # A process that runs on (gcore) appends to its map after the core: still its map.
        with perf.open("a") as appended:
            appended.write("7f0000400000 10 compiled later\n")
        later = core.stat().st_mtime + 60
        os.utime(perf, (later, later))
        with redhand.open_core(core, exe=binary) as target:
            assert _jit_frame(target.threads[0].backtrace()).function == (
                "jit_trampoline [JIT] tier 1"
            )
        # A map that names none of the core's JIT code was left by another process
        # that had the same pid: ignored, and said so.
        perf.write_text("7f0000400000 10 someone else's code\n")
        with redhand.open_core(core, exe=binary) as target:
            jit = _jit_frame(target.threads[0].backtrace())
            assert jit.function is None
            assert any(str(perf) in warning for warning in target.warnings), target.warnings
    finally:
        perf.unlink(missing_ok=True)


def test_core_perf_map_under_the_sysroot(build_dir: Path, tmp_path: Path) -> None:
    binary = compile_c("jit_perfmap.c", build_dir, ["-O1", "-g", "-fno-omit-frame-pointer"])
    core, _tids, pid = gcore_of_live([str(binary)], tmp_path, 1)
    perf = Path(f"/tmp/perf-{pid}.map")
    sysroot = tmp_path / "root"
    (sysroot / "tmp").mkdir(parents=True)
    try:
        # With a sysroot, this machine's /tmp belongs to other processes: not used.
        with redhand.open_core(core, exe=binary, sysroot=sysroot) as target:
            names = [frame.function for frame in target.threads[0].backtrace()]
            assert not any(name and "[JIT]" in name for name in names), names
        moved = sysroot / "tmp" / perf.name
        moved.write_text(perf.read_text().replace("tier 1", "from the sysroot"))
        # (libc is not under this sysroot: only the JIT frame's name is checked.)
        with redhand.open_core(core, exe=binary, sysroot=sysroot) as target:
            names = [frame.function for frame in target.threads[0].backtrace()]
            assert "jit_trampoline [JIT] from the sysroot" in names, names
    finally:
        perf.unlink(missing_ok=True)
