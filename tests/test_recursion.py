"""Recursion cycles and deep stacks, on real kernel cores and a live process.

tests/programs/recurse_cycle.c recurses a -> b -> c until its stack overflows
(in the main thread, or in a pthread with a small stack), or to a given depth
and then waits in pause().  It counts the frames it entered in the global
``depth``, which is read back from the core: the program's own count is the
truth the summary must match, not another debugger's.  Built at -O0 with
frame pointers and at -O2 without them.  The summarised frames are checked
against the plain unwinder run frame by frame over the whole stack.
"""

from __future__ import annotations

import io
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from helpers import (
    SYS_PAUSE,
    LiveProgram,
    check_against_unwinder,
    compile_c,
    core_pattern,
    gdb_core_at_signal,
    kernel_writes_cores_here,
)

import redhand
from redhand.analysis.recursion import DeepBacktrace, find_cycle
from redhand.cli import main
from redhand.target.model import Backtrace, EndReason
from redhand.target.target import Target

BUILDS = {
    "O0-fp": ("-O0", "-g", "-fno-omit-frame-pointer", "-pthread"),
    "O2-nofp": ("-O2", "-fomit-frame-pointer", "-pthread"),
}
CYCLE = {"a", "b", "c"}


def _core_of(argv: Sequence[str], workdir: Path, stack_kib: int | None = None) -> Path:
    """Run ``argv`` until it dies; the kernel's core (or gdb's gcore at the signal)."""
    workdir.mkdir(parents=True, exist_ok=True)

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
        if stack_kib is not None:
            hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
            resource.setrlimit(resource.RLIMIT_STACK, (stack_kib * 1024, hard))

    if kernel_writes_cores_here():
        result = subprocess.run(
            list(argv), cwd=workdir, preexec_fn=limits, capture_output=True, timeout=60
        )
        assert result.returncode < 0, result
        prefix = core_pattern().split("%", 1)[0]
        cores = [path for path in workdir.iterdir() if path.name.startswith(prefix)]
        if len(cores) == 1:
            return cores[0]
    return gdb_core_at_signal(list(argv), workdir).core


def _global(target: Target, exe: Path, name: str) -> int:
    """A long global of the program, read from the target (its address from nm)."""
    output = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    address = next(
        int(line.split()[0], 16) for line in output.splitlines() if line.endswith(f" {name}")
    )
    module = next(module for module in target.modules if module.path == str(exe))
    return int.from_bytes(target.memory.read(module.bias + address, 8), "little")


def _check_cycle(backtrace: Backtrace, depth: int) -> None:
    """The cycle is [a → b → c]; it and the partial cycle above it hold the program's count."""
    recursion = backtrace.recursion
    assert recursion is not None
    assert recursion.names() == ["a", "b", "c"]
    assert recursion.length == 3
    start, end = recursion.start_index, recursion.end_index
    assert end - start + 1 == recursion.repeats * 3
    above = [frame.function for frame in backtrace[:start]]
    assert set(above) <= CYCLE and len(above) <= 3
    # The outermost frame of the cycles is the a that was called from outside.
    assert backtrace[end].function == "a"
    assert backtrace[end + 1].function not in CYCLE
    # Frame 0 may not have counted itself yet (it faulted in its prologue).
    assert end + 1 in (depth, depth + 1)
    for index in (start, start + 1, (start + end) // 2, end):
        frame = backtrace[index]
        assert frame.index == index
        assert frame.function in CYCLE


@pytest.fixture(scope="module", params=sorted(BUILDS))
def program(request: pytest.FixtureRequest, build_dir: Path) -> Path:
    return compile_c("recurse_cycle.c", build_dir, BUILDS[request.param])


def test_main_thread_overflow(program: Path, tmp_path: Path) -> None:
    core = _core_of([str(program), "main"], tmp_path, stack_kib=8192)
    with redhand.open_core(core, exe=str(program)) as target:
        depth = _global(target, program, "depth")
        assert depth > 50_000
        thread = next(thread for thread in target.threads if thread.crashed)
        backtrace = thread.backtrace()
        assert isinstance(backtrace, DeepBacktrace)
        assert backtrace.end is EndReason.OUTERMOST
        _check_cycle(backtrace, depth)
        recursion = backtrace.recursion
        assert recursion is not None
        end = recursion.end_index
        names = [frame.function for frame in backtrace[end + 1 :]]
        assert names[:2] == ["main", "__libc_start_call_main"]
        assert recursion.cycle_bytes == backtrace[end - 2].sp - backtrace[end - 5].sp

        crash = target.crash
        assert crash is not None and crash.kind == "stack-overflow"
        stack = target.find_mapping(thread.registers.rsp if thread.registers else 0)
        stack = stack or target.find_mapping(backtrace[1].sp)
        assert stack is not None
        assert f"stack overflow: [a → b → c] recursed {end + 1:,} frames deep" in (
            crash.explanation
        )
        assert f"MiB stack (RLIMIT_STACK); each cycle takes {recursion.cycle_bytes} bytes" in (
            crash.explanation
        )
        assert "entered from main+0x" in crash.explanation
        assert crash.details["recursion"]["repeats"] == recursion.repeats  # type: ignore[index]
        check_against_unwinder(target, thread.tid, backtrace)


def test_thread_overflow(program: Path, tmp_path: Path) -> None:
    core = _core_of([str(program), "thread", "256"], tmp_path)
    with redhand.open_core(core, exe=str(program)) as target:
        depth = _global(target, program, "depth")
        thread = next(thread for thread in target.threads if thread.crashed)
        assert thread.tid != target.pid
        backtrace = thread.backtrace()
        assert isinstance(backtrace, DeepBacktrace)
        _check_cycle(backtrace, depth)
        recursion = backtrace.recursion
        assert recursion is not None
        entry = backtrace[recursion.end_index + 1].function
        assert entry in ("worker", "start_thread")  # -O2 makes worker's call a jump
        crash = target.crash
        assert crash is not None and crash.kind == "stack-overflow"
        assert f"of thread {thread.tid}'s 256 KiB stack (the size of its stack mapping)" in (
            crash.explanation
        )
        check_against_unwinder(target, thread.tid, backtrace)


def test_live_process_deep_in_recursion(program: Path) -> None:
    frames = 100_000
    with (
        LiveProgram([program, "live", str(frames)], blocked={"recurser": SYS_PAUSE}) as live,
        redhand.attach(live.pid) as target,
    ):
        thread = target.threads[0]
        backtrace = thread.backtrace()
        assert isinstance(backtrace, DeepBacktrace)
        assert backtrace.end is EndReason.OUTERMOST
        recursion = backtrace.recursion
        assert recursion is not None and recursion.names() == ["a", "b", "c"]
        counted = [
            frame.function
            for frame in (*backtrace.top, *backtrace.bottom)
            if frame.function in CYCLE
        ]
        assert counted  # the partial cycles at both ends are real frames
        in_cycle = sum(
            1
            for index in range(len(backtrace))
            if index < len(backtrace.top) or index >= backtrace.bottom[0].index
            if backtrace[index].function in CYCLE
        )
        middle = backtrace.bottom[0].index - len(backtrace.top)
        assert in_cycle + middle == frames
        assert backtrace[recursion.end_index + 1].function == "main"
        # 100,000 frames are more than the 1 MiB copied while frozen: said so.
        assert any("read after the process resumed" in warning for warning in target.warnings)


def test_text_and_json(program: Path, tmp_path: Path) -> None:
    core = _core_of([str(program), "thread", "256"], tmp_path)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["core", str(core), "--exe", str(program)]) == 0
    text = out.getvalue()
    with redhand.open_core(core, exe=str(program)) as target:
        thread = next(thread for thread in target.threads if thread.crashed)
        backtrace = thread.backtrace()
        recursion = backtrace.recursion
        assert recursion is not None
        total = len(backtrace)
    lines = text.splitlines()
    cut = next(line for line in lines if line.startswith("… frames ") and "repeated" in line)
    first, last = (int(part.replace(",", "")) for part in cut.split()[2].rstrip(":").split("-"))
    repeats = int(cut.split(" repeated ")[1].split()[0].replace(",", ""))
    assert "[a → b → c]" in cut and (last - first + 1) == 3 * repeats
    assert "--all-frames" in cut
    # Top: frames 0 up to the cut; bottom: from the cut's end down to the first frame.
    assert f"#{first - 1:<3}" in text and "#0  " in text
    assert f"#{last + 1} " in text and f"#{total - 1} " in text
    assert f"#{first + 1} " not in text
    assert "in main+0x" in text or "in worker" in text or "in start_thread" in text
    assert (
        f"recursion: frames {recursion.start_index:,}-{recursion.end_index:,} are "
        f"[a → b → c] {recursion.repeats:,} times" in text
    )

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["core", str(core), "--exe", str(program), "--all-frames"]) == 0
    assert out.getvalue().count(" in a+0x") >= recursion.repeats
    assert "repeated" not in out.getvalue()

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["core", str(core), "--exe", str(program), "--json"]) == 0
    document = json.loads(out.getvalue())
    crashed = next(t for t in document["threads"] if t["crashed"])
    assert crashed["recursion"]["repeats"] == recursion.repeats
    assert crashed["recursion"]["start_index"] == recursion.start_index
    assert crashed["recursion"]["end_index"] == recursion.end_index
    assert [f["function"] for f in crashed["recursion"]["frames"]][::-1] == ["a", "b", "c"]
    assert crashed["depth"] == total
    assert len(crashed["frames"]) + crashed["frames_omitted"] == total
    assert crashed["frames"][-1]["index"] == total - 1


def test_million_frames_in_bounded_time(build_dir: Path, tmp_path: Path) -> None:
    """Two functions, a 16 MiB stack, about 1,000,000 frames: the report is quick.

    (The benchmark is bench/deep.py; this only bounds it generously.)
    """
    exe = compile_c("recurse_pingpong.c", build_dir, ["-O2", "-g"])
    core = _core_of([str(exe)], tmp_path, stack_kib=16384)
    result = subprocess.run(
        [sys.executable, "-m", "redhand", "core", str(core)],
        capture_output=True,
        text=True,
        timeout=600,  # a bound against a hang: bench/deep.py measures the time
    )
    assert result.returncode == 0, result.stderr
    assert "stack overflow: [ping → pong] recursed 1,0" in result.stdout
    assert "… frames 1" in result.stdout and "[ping → pong] repeated" in result.stdout
    assert " in main+0x" in result.stdout


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ("xabababz", (1, 2, 3)),
        ("cabcabcabcm", (1, 3, 3)),  # whole cycles counted up from the outermost
        ("bcabcabcabcm", (2, 3, 3)),
        ("abcdefg", None),
        ("aaaab", (0, 1, 4)),
        ("abab", None),  # two repeats are not yet recursion
    ],
)
def test_find_cycle(keys: str, expected: tuple[int, int, int] | None) -> None:
    assert find_cycle(list(keys)) == expected
