"""Native OCaml programs: deep recursion through OCaml frames, names demangled.

tests/programs/ocaml_deep.ml recurses walk -> step -> walk ... (not tail
calls) until the kernel kills it with SIGSEGV (it restores the default
disposition: OCaml 4.13 would raise Stack_overflow), or to a given depth and
then blocks in Unix.read.  It counts the frames it entered in a global OCaml
int array, read back from the core through the module's data symbol
(``camlOcaml_deep``, whose field 0 is the array): the program's own count is
the truth the summary must match.  Built with ocamlopt with and without -g
(both emit CFI for OCaml code on amd64).  gdb checks both ends of a stack it
can still walk in a few seconds (a 1 MiB stack; 8 MiB took it 23 s).
"""

from __future__ import annotations

import io
import re
import resource
import subprocess
from collections.abc import Sequence
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from gdb_oracle import CORE_TIMEOUT, ocaml_function_name
from helpers import (
    SYS_READ,
    LiveProgram,
    check_against_unwinder,
    core_pattern,
    gdb_core_at_signal,
    kernel_writes_cores_here,
    ocamlopt,
)

import redhand
from redhand.analysis.recursion import DeepBacktrace
from redhand.cli import main
from redhand.symbols import demangle
from redhand.target.model import Backtrace, EndReason, Frame
from redhand.target.target import Target

BUILDS = {"g": ("-g",), "plain": ()}
CYCLE = {"Ocaml_deep.walk", "Ocaml_deep.step"}
LABEL = "[Ocaml_deep.walk → Ocaml_deep.step]"
# Where the recursion is entered, outermost last (OCaml 4.13's startup).
ENTRY = [
    "Ocaml_deep.entry",
    "caml_program",
    "caml_start_program",
    "caml_startup_common",
    "caml_main",
    "main",
    "__libc_start_call_main",
]
MAX_INT = 2**62 - 1
"""OCaml's max_int on 64 bits: the initial ``limit``."""
MIB = 1 << 20


@pytest.fixture(scope="module", params=sorted(BUILDS))
def program(request: pytest.FixtureRequest, build_dir: Path) -> Path:
    return ocamlopt("ocaml_deep.ml", build_dir, BUILDS[request.param])


def _core_of(exe: Path, workdir: Path, stack_bytes: int) -> Path:
    """Run ``exe overflow`` with that RLIMIT_STACK until it dies; its core."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [str(exe), "overflow"]

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
        hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
        resource.setrlimit(resource.RLIMIT_STACK, (stack_bytes, hard))

    if kernel_writes_cores_here():
        result = subprocess.run(
            argv,
            cwd=workdir,
            preexec_fn=limits,
            capture_output=True,
            timeout=CORE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == -11, result  # SIGSEGV, not Stack_overflow
        prefix = core_pattern().split("%", 1)[0]
        cores = [path for path in workdir.iterdir() if path.name.startswith(prefix)]
        if len(cores) == 1:
            return cores[0]
    return gdb_core_at_signal(argv, workdir).core


@pytest.fixture(scope="module")
def overflow_core(program: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The core of a main thread that overflowed an 8 MiB stack (about 520,000 frames)."""
    return _core_of(program, tmp_path_factory.mktemp("ocaml-core"), 8 * MIB)


def _symbol(exe: Path, name: str) -> int:
    output = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
    return next(
        int(line.split()[0], 16) for line in output.splitlines() if line.split()[-1] == name
    )


def _read_word(target: Target, address: int) -> int:
    return int.from_bytes(target.memory.read(address, 8), "little")


def _ocaml_counters(target: Target, exe: Path) -> tuple[int, int]:
    """The program's ``depth.(0)`` and ``limit.(0)``, through the module block.

    ``camlOcaml_deep`` is the module's block of toplevel values in the order
    they are defined: field 0 is ``depth`` and field 1 ``limit`` (pointers to
    one-element int arrays on the OCaml heap, in the core); an int is stored
    tagged, ``2n + 1``.
    """
    module = next(module for module in target.modules if module.path == str(exe))
    block = module.bias + _symbol(exe, "camlOcaml_deep")
    values = []
    for field in (0, 1):
        tagged = _read_word(target, _read_word(target, block + 8 * field))
        assert tagged & 1, f"field {field}'s element is not an int: {tagged:#x}"
        values.append(tagged >> 1)
    return values[0], values[1]


def _ocaml_depth(target: Target, exe: Path) -> int:
    """``depth.(0)`` of an overflowed program (whose ``limit`` is still max_int:
    that checks the layout)."""
    depth, limit = _ocaml_counters(target, exe)
    assert limit == MAX_INT
    return depth


def _names(frames: Sequence[Frame]) -> list[str | None]:
    return [frame.function for frame in frames]


def _check_names(frames: Sequence[Frame]) -> None:
    """Every OCaml function demangled: no raw ``camlModule__name_NNN``, no markers."""
    for frame in frames:
        name = frame.function
        assert name is not None, frame
        assert not re.match(r"caml[A-Z]", name), frame
        assert not re.search(r"(code_begin|code_end|frametable|data_begin)", name), frame
        if name.startswith(("Ocaml_deep.", "Unix.", "Stdlib.")):
            assert not re.search(r"_\d+$", name), frame


def _check_cycle(backtrace: Backtrace, depth: int) -> int:
    """The cycle is [walk → step] and holds the program's count; the end index."""
    recursion = backtrace.recursion
    assert recursion is not None
    assert recursion.names() == ["Ocaml_deep.walk", "Ocaml_deep.step"]
    assert recursion.length == 2
    start, end = recursion.start_index, recursion.end_index
    assert end - start + 1 == recursion.repeats * 2
    assert set(_names(backtrace[:start])) <= CYCLE and start <= 2
    # walk is called from outside the cycle (by the module's entry).
    assert backtrace[end].function == "Ocaml_deep.walk"
    assert backtrace[end + 1].function == "Ocaml_deep.entry"
    # Frame 0 may not have counted itself yet.
    assert end + 1 in (depth, depth + 1)
    for index in (start, start + 1, (start + end) // 2, end - 1):
        frame = backtrace[index]
        assert frame.index == index and frame.function in CYCLE
    # One cycle's bytes, as the frames' stack pointers say.
    assert recursion.cycle_bytes == backtrace[end - 1].sp - backtrace[end - 3].sp
    return end


# -- (a) the overflow core -------------------------------------------------------------------


def test_overflow_core(program: Path, overflow_core: Path) -> None:
    with redhand.open_core(overflow_core, exe=str(program)) as target:
        depth = _ocaml_depth(target, program)
        thread = next(thread for thread in target.threads if thread.crashed)
        backtrace = thread.backtrace()
        assert isinstance(backtrace, DeepBacktrace)
        assert backtrace.end is EndReason.OUTERMOST
        end = _check_cycle(backtrace, depth)
        recursion = backtrace.recursion
        assert recursion is not None and recursion.cycle_bytes is not None
        # The cycles filled the 8 MiB stack, less what startup and the
        # environment took (a few KiB).
        used = recursion.repeats * recursion.cycle_bytes
        assert 8 * MIB - 64 * 1024 < used <= 8 * MIB
        assert depth > 400_000
        # Where the recursion was entered: the module's initialisation, run
        # by the runtime's startup, run by main.
        bottom = _names(backtrace[end + 1 :])
        assert bottom[: len(ENTRY)] == ENTRY
        _check_names([*backtrace.top, *backtrace.bottom, *recursion.frames])

        crash = target.crash
        assert crash is not None and crash.kind == "stack-overflow"
        explanation = crash.explanation
        assert f"stack overflow: {LABEL} recursed {end + 1:,} frames deep" in explanation
        assert (
            f"of the 8 MiB stack (RLIMIT_STACK); each cycle takes {recursion.cycle_bytes} bytes"
            in explanation
        )
        assert "entered from Ocaml_deep.entry+0x" in explanation
        assert "camlOcaml_deep" not in explanation  # no raw OCaml symbol
        assert crash.details["recursion"]["repeats"] == recursion.repeats  # type: ignore[index]


def test_overflow_core_text(program: Path, overflow_core: Path) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["core", str(overflow_core), "--exe", str(program)]) == 0
    text = out.getvalue()
    with redhand.open_core(overflow_core, exe=str(program)) as target:
        thread = next(thread for thread in target.threads if thread.crashed)
        backtrace = thread.backtrace()
        recursion = backtrace.recursion
        assert recursion is not None
        total = len(backtrace)
    cut = next(line for line in text.splitlines() if line.startswith("… frames "))
    first, last = (int(part.replace(",", "")) for part in cut.split()[2].rstrip(":").split("-"))
    repeats = int(cut.split(" repeated ")[1].split()[0].replace(",", ""))
    assert LABEL in cut and last - first + 1 == 2 * repeats
    assert (
        f"recursion: frames {recursion.start_index:,}-{recursion.end_index:,} are "
        f"{LABEL} {recursion.repeats:,} times, {recursion.cycle_bytes} bytes" in text
    )
    assert f"#{total - 1} " in text
    for name in ("Ocaml_deep.entry+0x", "caml_program+0x", "caml_start_program+0x", "main+0x"):
        assert f" in {name}" in text
    assert "camlOcaml_deep" not in text and "code_begin" not in text


# -- against gdb and the plain unwinder, on a stack gdb can walk --------------------------


def _gdb_ends(exe: Path, core: Path) -> tuple[list[tuple[int, int, str]], str]:
    """gdb's ``bt 3`` and ``bt -3`` of the core: (index, pc, name) of each frame."""
    result = subprocess.run(
        [
            "gdb", "-batch", "-nx",
            "-ex", "set pagination off",
            "-ex", "set print frame-arguments none",
            "-ex", "set print frame-info location-and-address",
            "-ex", "echo RH-BT\\n",
            "-ex", "bt 3",
            "-ex", "bt -3",
            str(exe), str(core),
        ],
        capture_output=True,
        text=True,
        timeout=CORE_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    # After the marker: not frame 0 as gdb prints it on loading the core.
    printed = result.stdout.split("RH-BT\n", 1)[-1]
    frames = [
        (int(match[1]), int(match[2], 16), match[3])
        for match in re.finditer(r"^#(\d+)\s+(0x[0-9a-f]+) in (\S+)", printed, re.M)
    ]
    return frames, result.stdout


def test_small_stack_against_gdb_and_unwinder(program: Path, tmp_path: Path) -> None:
    """A 1 MiB stack (about 65,000 frames): gdb's three top and bottom frames,
    and the plain unwinder frame by frame, agree with the summary."""
    core = _core_of(program, tmp_path, 1 * MIB)
    with redhand.open_core(core, exe=str(program)) as target:
        depth = _ocaml_depth(target, program)
        thread = next(thread for thread in target.threads if thread.crashed)
        backtrace = thread.backtrace()
        assert isinstance(backtrace, DeepBacktrace)
        _check_cycle(backtrace, depth)
        check_against_unwinder(target, thread.tid, backtrace)
        crash = target.crash
        assert crash is not None and crash.kind == "stack-overflow"
        assert "of the 1 MiB stack (RLIMIT_STACK)" in crash.explanation

        frames, output = _gdb_ends(program, core)
        assert len(frames) == 6, output
        for index, pc, name in frames:
            # gdb stops at main (backtrace past-main is off): same frame, same index.
            frame = backtrace[index]
            assert frame.pc == pc, (index, frame, output)
            assert frame.function == ocaml_function_name(name), (index, frame, output)
        assert frames[-1][2] == "main" and backtrace[frames[-1][0]].function == "main"


# -- (b) a live process, 100,000 frames deep --------------------------------------------------


def test_live_process_deep_in_ocaml_recursion(program: Path) -> None:
    frames = 100_000
    with LiveProgram([program, "live", str(frames)], blocked={"main": SYS_READ}) as live:
        with redhand.attach(live.pid) as target:
            thread = target.threads[0]
            backtrace = thread.backtrace()
            assert isinstance(backtrace, DeepBacktrace)
            assert backtrace.end is EndReason.OUTERMOST
            recursion = backtrace.recursion
            assert recursion is not None
            assert recursion.names() == ["Ocaml_deep.walk", "Ocaml_deep.step"]
            assert _ocaml_counters(target, program) == (frames, frames)
            # Blocked in the read that Ocaml_deep.block called from the recursion.
            assert _names(backtrace.top[:4]) == [
                "read",
                "unix_read",
                "Unix.read",
                "Ocaml_deep.block",
            ]
            in_cycle = [
                index for index in range(len(backtrace)) if backtrace[index].function in CYCLE
            ]
            # Exactly the frames the program entered, one after another.
            assert len(in_cycle) == frames
            assert in_cycle == list(range(4, 4 + frames))
            # The cycle is by call site: frame 4, the step that called block
            # (another call site), and the walk above it are not whole cycles.
            start, end = recursion.start_index, recursion.end_index
            assert (start, end) == (6, 4 + frames - 1)
            assert recursion.repeats == (frames - 2) // 2
            assert _names(backtrace[end + 1 :])[: len(ENTRY)] == ENTRY
            _check_names([*backtrace.top, *backtrace.bottom])

        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["stack", str(live.pid)]) == 0
    text = out.getvalue()
    cut = next(line for line in text.splitlines() if line.startswith("… frames "))
    assert f"{LABEL} repeated" in cut
    assert f"recursion: frames {start:,}-{end:,} are {LABEL} {recursion.repeats:,} times" in text
    assert " in Ocaml_deep.block+0x" in text and " in caml_start_program+0x" in text
    assert "camlOcaml_deep" not in text and "code_begin" not in text


# -- (c) the names -------------------------------------------------------------------------


def test_ocaml_names_of_the_program(program: Path) -> None:
    """Every function symbol of the module demangles to ``Ocaml_deep.name``."""
    output = subprocess.run(["nm", str(program)], capture_output=True, text=True, check=True)
    symbols = {
        line.split()[-1]
        for line in output.stdout.splitlines()
        if line.split()[-1].startswith("camlOcaml_deep__") and line.split()[1] in "Tt"
    }
    shown = {name: demangle(name) for name in symbols}
    for name in ("walk", "step", "block"):
        raw = next(
            symbol for symbol in symbols if re.fullmatch(rf"camlOcaml_deep__{name}_\d+", symbol)
        )
        assert shown[raw] == f"Ocaml_deep.{name}"
    assert shown["camlOcaml_deep__entry"] == "Ocaml_deep.entry"
    # The code markers are labels, not functions: left as they are.
    assert shown["camlOcaml_deep__code_begin"] == "camlOcaml_deep__code_begin"
    assert demangle("camlLwt__run_waiters_rec_207") == "Lwt.run_waiters_rec"
