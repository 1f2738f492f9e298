"""``redhand stack`` against gdb, the oracle: every thread, frame by frame.

Each program of tests/programs is built several ways (optimisation, frame
pointers, PIE or not, static, stripped; C, C++, Rust, OCaml) and started as a
live target.  Then, one tracer at a time: gdb attaches, prints
``thread apply all bt`` and detaches; once no tracer is left and every
blocked thread is back in its system call, ``redhand.attach`` captures the
process.  Both answers are kept (one capture per build, shared by the tests
of that build) and compared thread by thread.

What is asserted, per build and thread (``test_x[BUILD/THREAD]``):

- test_gdb_sees_program: gdb's trace contains the program's own call chain
  (checks the oracle and the program, not redhand);
- test_thread_set: redhand's tids equal gdb's, /proc's and the program's;
  thread names equal gdb's and /proc's comm;
- test_frames: names equal gdb's by the rules of ``gdb_oracle.names_match``,
  frame by frame; pcs equal; the stack pointer of ordinary frames equal;
  ``inlined`` exactly where gdb has an inline frame; same number of frames.
  gdb's synthetic tail-call frames are not real frames and are left out;
- test_source_chain: redhand's names contain the program's call chain, in
  order (the oracle where gdb cannot be);
- test_trust: every frame found by context, CFI or frame pointer (never a
  scan in these programs); frame 0 and the frame a signal interrupted by
  context;
- test_end_reason: ``outermost``: every thread here reaches clone3 or _start;
- test_stripped_frames: in the stripped build, each function of the
  executable appears without a name, as module + offset, at gdb's pc;
- test_cli_json: ``redhand stack PID --json`` (run after the library's
  capture) lists the same threads, and for each blocked thread the same
  pcs, names and end reason as the library.

Where gdb's answer is not a fact about the stack, the comparison says so and
uses the program's source instead: gdb's tail-call frames are dropped (they
are made up from DWARF call-site records, see ``gdb_oracle.compare_backtrace``);
a spinning thread is compared from its first frame outside the spin loop;
test_source_chain checks every trace against the source's call chain.  In
the stripped build gdb has no names at all for the executable: the chain is
checked by naming pcs from the unstripped twin (same build-id).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest
from gdb_oracle import (
    INLINED_FRAMES,
    SIGNAL_HANDLER_CALLED,
    UNKNOWN_FUNCTION,
    FrameLike,
    GdbFrame,
    GdbThread,
    canonical_name,
    compare_backtrace,
    cxx_function_name,
    function_ranges,
    is_subsequence,
    names_match,
    ocaml_function_name,
    parse_gdb_backtraces,
    read_build_id,
    run_gdb_backtraces,
    rust_function_key,
    same_function,
)
from helpers import (
    SYS_CLOCK_NANOSLEEP,
    SYS_EPOLL_WAIT,
    SYS_FUTEX,
    SYS_POLL,
    SYS_READ,
    SYS_RT_SIGSUSPEND,
    LiveProgram,
    compile_c,
    load_base,
    module_at,
    ocamlopt,
    read_maps,
    rustc,
    wait_until,
)

# -- the programs and how each is built ------------------------------------------------


@dataclass(frozen=True)
class ThreadSpec:
    """One thread of a test program and what the program's source says of it."""

    name: str
    """The name the program reports (``thread NAME TID``)."""
    chain: tuple[str, ...]
    """Functions the trace must contain, innermost first, in canonical_name form."""
    syscall: int | None
    """The system call the thread blocks in; None for a thread that keeps running."""
    spinning: frozenset[str] = frozenset()
    """For a running thread: the functions its innermost frame may be in."""


@dataclass(frozen=True)
class BuildSpec:
    id: str
    language: str  # "c", "c++", "rust", "ocaml": chooses the name rules
    source: str
    flags: tuple[str, ...]
    threads: tuple[ThreadSpec, ...]
    strip: bool = False

    def build(self, build_dir: Path) -> Path:
        if self.language in ("c", "c++"):
            return compile_c(self.source, build_dir, self.flags, strip=self.strip)
        if self.language == "rust":
            return rustc(self.source, build_dir, self.flags)
        return ocamlopt(self.source, build_dir, self.flags)

    def thread(self, name: str) -> ThreadSpec:
        return next(thread for thread in self.threads if thread.name == name)


RESTORE_RT = "__restore_rt"

C_THREADS = (
    ThreadSpec("main", ("main_wait", "main"), SYS_FUTEX),
    ThreadSpec("cond", ("cond_inner", "cond_outer", "cond_entry"), SYS_FUTEX),
    ThreadSpec("sleep", ("sleep_inner", "sleep_outer", "sleep_entry"), SYS_CLOCK_NANOSLEEP),
    ThreadSpec("read", ("read_inner", "read_outer", "read_entry"), SYS_READ),
    ThreadSpec("poll", ("poll_inner", "poll_outer", "poll_entry"), SYS_POLL),
    ThreadSpec("epoll", ("epoll_inner", "epoll_outer", "epoll_entry"), SYS_EPOLL_WAIT),
    ThreadSpec(
        "signal",
        ("handler_inner", "on_usr1", RESTORE_RT, "signal_inner", "signal_outer", "signal_entry"),
        SYS_RT_SIGSUSPEND,
    ),
    ThreadSpec(
        "raise",
        ("handler_inner", "on_usr2", RESTORE_RT, "raise_inner", "raise_outer", "raise_entry"),
        SYS_RT_SIGSUSPEND,
    ),
    ThreadSpec(
        "spin",
        ("spin_loop", "spin_outer", "spin_entry"),
        None,
        spinning=frozenset({"spin_loop", "spin_step"}),
    ),
)

CXX_THREADS = (
    ThreadSpec("main", ("rh::wait_forever", "main"), SYS_FUTEX),
    ThreadSpec(
        "unwinding",
        (
            "rh::block_in_read",
            "rh::Guard<int>::~Guard",
            "rh::thrower<int>",
            "rh::detail::Worker<std::vector<int, std::allocator<int> > >::run",
            "rh::unwinding_entry",
        ),
        SYS_READ,
    ),
    ThreadSpec(
        "terminate",
        (
            "rh::block_in_read",
            "rh::on_terminate",
            "__cxa_throw",
            "rh::noexcept_thrower",
            "rh::Outer::call",
            "rh::terminate_entry",
        ),
        SYS_READ,
    ),
    ThreadSpec(
        "catching",
        (
            "rh::block_in_read",
            "rh::(anonymous namespace)::in_handler",
            "rh::catcher",
            "rh::catching_entry",
        ),
        SYS_READ,
    ),
    ThreadSpec(
        "lambda",
        (
            "rh::block_in_read",
            "rh::lambda_entry(void*)::{lambda(int)#1}::operator()",
            "rh::call_it",
            "rh::lambda_entry",
        ),
        SYS_READ,
    ),
)

RUST_THREADS = (
    ThreadSpec("main", ("threads::wait_all", "threads::main", "main"), SYS_FUTEX),
    ThreadSpec(
        "condvar",
        ("threads::Waiter<T>::wait_forever", "threads::condvar_entry"),
        SYS_FUTEX,
    ),
    ThreadSpec(
        "channel",
        ("std::sync::mpsc::Receiver<T>::recv", "threads::receive_all", "threads::channel_entry"),
        SYS_FUTEX,
    ),
    ThreadSpec(
        "sleep",
        (
            "std::thread::sleep",
            "threads::sleep_entry::{{closure}}",
            "threads::nap",
            "threads::sleep_entry",
        ),
        SYS_CLOCK_NANOSLEEP,
    ),
)

OCAML_THREADS = (
    ThreadSpec(
        "main",
        (
            "Unix.read",
            "Recurse.block",
            "Recurse.descend",
            "Recurse.descend",
            "Recurse.descend",
            "Recurse.descend",
            "Recurse.entry",
            "caml_program",
            "main",
        ),
        SYS_READ,
    ),
)

C_PIE = ("-g", "-pthread", "-fPIE", "-pie")
C_NO_PIE = ("-g", "-pthread", "-fno-pie", "-no-pie")
O0_FP = ("-O0", "-fno-omit-frame-pointer")
O2_NO_FP = ("-O2", "-fomit-frame-pointer")
RUST_FLAGS = ("-C", "debuginfo=1", "-C", "opt-level=1")

BUILDS = (
    BuildSpec("c-O0-fp-pie", "c", "threads.c", (*O0_FP, *C_PIE), C_THREADS),
    BuildSpec("c-O0-fp-nopie", "c", "threads.c", (*O0_FP, *C_NO_PIE), C_THREADS),
    BuildSpec("c-O2-nofp-pie", "c", "threads.c", (*O2_NO_FP, *C_PIE), C_THREADS),
    BuildSpec("c-O2-nofp-nopie", "c", "threads.c", (*O2_NO_FP, *C_NO_PIE), C_THREADS),
    BuildSpec("c-O2-static", "c", "threads.c", (*O2_NO_FP, "-g", "-pthread", "-static"), C_THREADS),
    # A build-id of its own (uuid): redhand caches symbols by build-id, and the
    # same flags without it would give c-O2-nofp-pie's build-id, whose symbols
    # an earlier capture in this process has already cached.
    BuildSpec(
        "c-O2-stripped",
        "c",
        "threads.c",
        (*O2_NO_FP, *C_PIE, "-Wl,--build-id=uuid"),
        C_THREADS,
        strip=True,
    ),
    BuildSpec("cxx-O0-fp", "c++", "exceptions.cpp", (*O0_FP, *C_PIE), CXX_THREADS),
    BuildSpec("cxx-O2", "c++", "exceptions.cpp", ("-O2", *C_PIE), CXX_THREADS),
    BuildSpec("rust-O1", "rust", "threads.rs", RUST_FLAGS, RUST_THREADS),
    BuildSpec(
        "rust-O1-fp",
        "rust",
        "threads.rs",
        (*RUST_FLAGS, "-C", "force-frame-pointers=yes"),
        RUST_THREADS,
    ),
    BuildSpec("ocaml-g", "ocaml", "recurse.ml", ("-g",), OCAML_THREADS),
    BuildSpec("ocaml", "ocaml", "recurse.ml", (), OCAML_THREADS),
)
BUILDS_BY_ID = {build.id: build for build in BUILDS}


def thread_params(
    builds: tuple[BuildSpec, ...] = BUILDS, keep: Callable[[BuildSpec], bool] = lambda b: True
) -> list[object]:
    return [
        pytest.param(build.id, thread.name, id=f"{build.id}/{thread.name}")
        for build in builds
        if keep(build)
        for thread in build.threads
    ]


# -- capturing: gdb first, then redhand -------------------------------------------------


@dataclass
class RedhandThread:
    tid: int
    name: str | None
    frames: list[FrameLike]
    end: str


@dataclass
class Capture:
    """What gdb and redhand said about one live run of one build."""

    build: BuildSpec
    binary: Path
    pid: int
    program_tids: dict[str, int]
    proc_tids: set[int]
    proc_names: dict[int, str]
    maps: list[tuple[int, int, int, str]]
    gdb: dict[int, GdbThread]
    gdb_text: str
    redhand: dict[int, RedhandThread] | None = None
    redhand_error: str | None = None
    notes: list[str] = field(default_factory=list)
    cli: subprocess.CompletedProcess[str] | None = None
    """``python3 -m redhand stack PID --json``, run after the API's capture."""
    twin_functions: list[tuple[int, int, str]] = field(default_factory=list)
    """For a stripped build: the functions of the same build before strip (file addresses)."""

    def symbolize(self, pc: int) -> str | None:
        """Name a pc of the stripped executable from its unstripped twin (None elsewhere)."""
        exe = os.path.realpath(self.binary)
        base = load_base(self.maps, exe)
        if base is None or module_at(self.maps, pc) != exe:
            return None
        address = pc - base
        return next(
            (name for start, end, name in self.twin_functions if start <= address < end), None
        )

    def names(self, functions: list[str | None], pcs: list[int | None]) -> list[str]:
        """Canonical names; a frame without one is named from the twin, or ``??``."""
        names = []
        for function, pc in zip(functions, pcs, strict=True):
            if (function is None or function == UNKNOWN_FUNCTION) and pc is not None:
                function = self.symbolize(pc)
            if function == SIGNAL_HANDLER_CALLED:
                function = RESTORE_RT
            names.append(canonical_name(function, self.build.language) if function else "??")
        return names

    def tid(self, name: str) -> int:
        return self.program_tids[name]

    def gdb_thread(self, name: str) -> GdbThread:
        tid = self.tid(name)
        assert tid in self.gdb, f"gdb did not list thread {name} ({tid}):\n{self.gdb_text}"
        return self.gdb[tid]

    def redhand_thread(self, name: str) -> RedhandThread:
        if self.redhand is None:
            self.fail_capture()
        tid = self.tid(name)
        assert tid in self.redhand, f"redhand did not list thread {name} ({tid})"
        return self.redhand[tid]

    def fail_capture(self) -> NoReturn:
        details = "\n".join(self.notes)
        pytest.fail(f"redhand could not capture {self.build.id}: {self.redhand_error}\n{details}")


def _proc_threads(pid: int) -> tuple[set[int], dict[int, str]]:
    tids = {int(entry) for entry in os.listdir(f"/proc/{pid}/task")}
    names = {}
    for tid in tids:
        names[tid] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().rstrip("\n")
    return tids, names


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def _redhand_capture(pid: int) -> dict[int, RedhandThread]:
    import redhand

    attach = getattr(redhand, "attach", None)
    if attach is None:
        raise NotImplementedError("redhand.attach does not exist yet")
    target = attach(pid)
    try:
        threads = {}
        for thread in target.threads:
            backtrace = thread.backtrace()
            threads[thread.tid] = RedhandThread(
                tid=thread.tid,
                name=thread.name,
                frames=list(backtrace),
                end=str(backtrace.end),
            )
        return threads
    finally:
        target.close()


def capture(build: BuildSpec, build_dir: Path) -> Capture:
    binary = build.build(build_dir)
    blocked = {
        thread.name: thread.syscall for thread in build.threads if thread.syscall is not None
    }
    running = {thread.name for thread in build.threads if thread.syscall is None}
    with LiveProgram([binary], blocked=blocked, running=running) as program:
        pid = program.pid
        proc_tids, proc_names = _proc_threads(pid)
        maps = read_maps(pid)
        gdb, gdb_text = run_gdb_backtraces(pid)
        # One tracer at a time: gdb has exited; wait until the kernel says no
        # one traces the process and every blocked thread is back in its call.
        wait_until(lambda: _tracer_of(pid) == 0, f"gdb to let go of {pid}")
        program.wait_blocked()
        result = Capture(
            build=build,
            binary=binary,
            pid=pid,
            program_tids=dict(program.tids),
            proc_tids=proc_tids,
            proc_names=proc_names,
            maps=maps,
            gdb=gdb,
            gdb_text=gdb_text,
        )
        try:
            result.redhand = _redhand_capture(pid)
        except Exception as error:
            result.redhand_error = "".join(traceback.format_exception_only(error)).strip()
            result.notes.append(traceback.format_exc())
        result.cli = subprocess.run(
            [sys.executable, "-m", "redhand", "stack", "--source", str(pid), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert _proc_threads(pid)[0] == proc_tids, "the program's threads changed during the test"
    if build.strip:
        twin = dataclasses.replace(build, strip=False).build(build_dir)
        assert read_build_id(twin) == read_build_id(binary), "the twin is another build"
        result.twin_functions = function_ranges(twin)
    return result


class Captures:
    """One capture per build, made the first time a test asks for it."""

    def __init__(self, build_dir: Path) -> None:
        self.build_dir = build_dir
        self._done: dict[str, Capture] = {}

    def __getitem__(self, build_id: str) -> Capture:
        if build_id not in self._done:
            self._done[build_id] = capture(BUILDS_BY_ID[build_id], self.build_dir)
        return self._done[build_id]


@pytest.fixture(scope="session")
def captures(build_dir: Path) -> Iterator[Captures]:
    yield Captures(build_dir)


# -- the tests ------------------------------------------------------------------------


def _redhand_names(result: Capture, thread_name: str) -> list[str]:
    frames = result.redhand_thread(thread_name).frames
    return result.names([frame.function for frame in frames], [frame.pc for frame in frames])


def _gdb_names(result: Capture, thread_name: str) -> list[str]:
    frames = result.gdb_thread(thread_name).real_frames
    return result.names([frame.function for frame in frames], [frame.pc for frame in frames])


def _chain(build: BuildSpec, thread: ThreadSpec) -> list[str]:
    return [canonical_name(name, build.language) for name in thread.chain]


@pytest.mark.parametrize(("build_id", "thread_name"), thread_params())
def test_gdb_sees_program(captures: Captures, build_id: str, thread_name: str) -> None:
    """The oracle itself: gdb's trace has the call chain the program's source makes.

    (In the stripped build, the executable's ?? frames are named from the
    unstripped twin.)
    """
    result = captures[build_id]
    build = result.build
    gdb_thread = result.gdb_thread(thread_name)
    names = _gdb_names(result, thread_name)
    chain = _chain(build, build.thread(thread_name))

    def same(gdb_name: str, name: str) -> bool:
        return same_function(gdb_name, name, build.language)

    assert is_subsequence(chain, names, same), f"chain {chain} not in gdb's {names}"
    assert gdb_thread.stopped is None, gdb_thread.stopped


@pytest.mark.parametrize("build_id", [build.id for build in BUILDS])
def test_thread_set(captures: Captures, build_id: str) -> None:
    """The same threads, by tid and by name, in redhand, gdb, /proc and the program."""
    result = captures[build_id]
    assert set(result.gdb) == result.proc_tids, "gdb and /proc list different threads"
    assert set(result.program_tids.values()) == result.proc_tids
    if result.redhand is None:
        result.fail_capture()
    assert set(result.redhand) == result.proc_tids
    assert {tid: thread.name for tid, thread in result.redhand.items()} == result.proc_names
    assert {tid: thread.name for tid, thread in result.gdb.items()} == result.proc_names


@pytest.mark.parametrize(("build_id", "thread_name"), thread_params())
def test_frames(captures: Captures, build_id: str, thread_name: str) -> None:
    """redhand's frames are gdb's: names, pcs, stack pointers, inline flags."""
    result = captures[build_id]
    spec = result.build.thread(thread_name)
    gdb_thread = result.gdb_thread(thread_name)
    redhand_thread = result.redhand_thread(thread_name)
    spinning = frozenset(canonical_name(name, result.build.language) for name in spec.spinning)
    comparison = compare_backtrace(
        gdb_thread,
        redhand_thread.frames,
        result.build.language,
        spinning=spinning,
        symbolize=result.symbolize if result.build.strip else None,
    )
    assert not comparison.problems, comparison.report()


@pytest.mark.parametrize(("build_id", "thread_name"), thread_params())
def test_source_chain(captures: Captures, build_id: str, thread_name: str) -> None:
    """redhand's trace has the program's call chain in order, whatever gdb says.

    (In the stripped build, unnamed frames of the executable are named from
    the unstripped twin by their offsets: that checks the offsets too.)
    Until redhand reports inlined frames, a function of the chain that the
    compiler inlined (gdb shows it only as an inlined frame) has no frame of
    its own to find.
    """
    result = captures[build_id]
    build = result.build
    names = _redhand_names(result, thread_name)
    chain = _chain(build, build.thread(thread_name))
    if not INLINED_FRAMES:
        gdb_frames = result.gdb_thread(thread_name).real_frames
        inlined = {
            canonical_name(frame.function, build.language)
            for frame in gdb_frames
            if frame.kind == "inline" and frame.function
        }
        chain = [
            name
            for name in chain
            if not any(same_function(gdb_name, name, build.language) for gdb_name in inlined)
        ]
    assert is_subsequence(chain, names), f"chain {chain} not in redhand's {names}"


@pytest.mark.parametrize(("build_id", "thread_name"), thread_params())
def test_trust(captures: Captures, build_id: str, thread_name: str) -> None:
    """Frames come from context, CFI or frame pointers; frame 0 and signal contexts by context.

    The frame a signal interrupted is also marked ``signal_frame`` (its pc is
    exact, not a return address).
    """
    result = captures[build_id]
    frames = result.redhand_thread(thread_name).frames
    assert frames, "no frames"
    trusts = [str(frame.trust) for frame in frames]
    assert set(trusts) <= {"context", "cfi", "fp"}, trusts
    assert trusts[0] == "context", trusts
    # The frame a signal interrupted: after gdb's signal trampoline frame, at
    # an exact pc; redhand must have restored it from the signal's context.
    gdb_frames = result.gdb_thread(thread_name).real_frames
    for position, gdb_frame in enumerate(gdb_frames[:-1]):
        interrupted = gdb_frames[position + 1].pc
        if gdb_frame.kind != "sigtramp" or interrupted is None:
            continue
        matches = [(index, frame) for index, frame in enumerate(frames) if frame.pc == interrupted]
        assert matches, f"redhand has no frame at {interrupted:#x}, which a signal interrupted"
        for index, frame in matches:
            assert str(frame.trust) == "context", (
                f"frame {index} ({frame.function}), interrupted by a signal, is {frame.trust}"
            )
            assert frame.signal_frame, f"frame {index} ({frame.function}): signal_frame is False"


@pytest.mark.parametrize(("build_id", "thread_name"), thread_params())
def test_end_reason(captures: Captures, build_id: str, thread_name: str) -> None:
    """Every thread of these programs reaches its first frame: the trace ends 'outermost'."""
    result = captures[build_id]
    gdb_frames = result.gdb_thread(thread_name).real_frames
    last = gdb_frames[-1].function
    # The premise, from gdb: the thread starts in clone3 or _start (?? when stripped).
    assert last in ("clone3", "_start", UNKNOWN_FUNCTION), f"gdb's trace ends in {last}"
    assert result.redhand_thread(thread_name).end == "outermost"


@pytest.mark.parametrize("build_id", [build.id for build in BUILDS])
def test_cli_json(captures: Captures, build_id: str) -> None:
    """``redhand stack PID --json`` says what the library says (blocked threads are still)."""
    result = captures[build_id]
    assert result.cli is not None
    assert result.cli.returncode == 0, result.cli.stderr
    document = json.loads(result.cli.stdout)
    assert (document["redhand"], document["kind"], document["pid"]) == (1, "stack", result.pid)
    threads = {thread["tid"]: thread for thread in document["threads"]}
    assert set(threads) == result.proc_tids
    if result.redhand is None:
        result.fail_capture()
    for spec in result.build.threads:
        if spec.syscall is None:
            continue  # running: its innermost frames change from one capture to the next
        tid = result.tid(spec.name)
        library = result.redhand[tid]
        printed = threads[tid]
        assert printed["name"] == library.name
        assert printed["end"] == library.end, spec.name
        assert [(frame["pc"], frame["function"]) for frame in printed["frames"]] == [
            (frame.pc, frame.function) for frame in library.frames
        ], spec.name


STRIPPED = tuple(build for build in BUILDS if build.strip)


@pytest.mark.parametrize(("build_id", "thread_name"), thread_params(STRIPPED))
def test_stripped_frames(captures: Captures, build_id: str, thread_name: str) -> None:
    """The stripped executable's functions have no name: module + offset, at gdb's pcs."""
    result = captures[build_id]
    exe = os.path.realpath(result.binary)
    base = load_base(result.maps, exe)
    assert base is not None, f"{exe} is not mapped"
    exe_range = [(start, end) for start, end, _off, path in result.maps if path == exe]
    spinning = result.build.thread(thread_name).spinning
    gdb_unknown = [
        frame
        for frame in result.gdb_thread(thread_name).real_frames
        if frame.function == UNKNOWN_FUNCTION
        and frame.pc is not None
        and any(start <= frame.pc < end for start, end in exe_range)
        and result.symbolize(frame.pc) not in spinning  # gdb saw it at another moment
    ]
    assert gdb_unknown, "gdb named every frame of the stripped executable"
    by_pc: dict[int, FrameLike] = {}
    for frame in result.redhand_thread(thread_name).frames:
        by_pc.setdefault(frame.pc, frame)
    problems = []
    for gdb_frame in gdb_unknown:
        assert gdb_frame.pc is not None
        found = by_pc.get(gdb_frame.pc)
        if found is None:
            problems.append(f"gdb's ?? at {gdb_frame.pc:#x}: redhand has no frame at that pc")
            continue
        function, module, offset = found.function, found.module, found.offset
        if function is not None:
            problems.append(f"{gdb_frame.pc:#x}: named {function!r} in a stripped executable")
        if module is None or os.path.realpath(module) != exe:
            problems.append(f"{gdb_frame.pc:#x}: module {module!r}, expected {exe}")
        if offset != gdb_frame.pc - base:
            problems.append(
                f"{gdb_frame.pc:#x}: offset {offset!r}, expected {gdb_frame.pc - base:#x}"
            )
    assert not problems, "\n".join(problems)


# -- the oracle's own rules, without any program ------------------------------------------

GDB_SAMPLE = """\
Thread 3 (Thread 0x7f17678f86c0 (LWP 7035) "channel"):
#0  0x00007f1767bfe829 in syscall () at ../sysdeps/unix/sysv/linux/x86_64/syscall.S:38
#1  0x0000558036a4f486 in std::sys::pal::unix::futex::futex_wait () at library/std/src/sys/pal/unix/futex.rs:73
#2  0x00007f5c260a8e1a in ?? () from /lib/x86_64-linux-gnu/libstdc++.so.6
#3  <signal handler called>
#4  0x0000559ec039d85b in std::function<void (int)>::operator()(int) const (__args#0=..., this=...) at /usr/include/c++/12/bits/std_function.h:591
#5  0x0000559ec039d85b in rh::call_it(std::function<void (int)> const&) (function=...) at x.cpp:184
#6  0x00007f5c260a85a6 in __gxx_personality_v0 () from /lib/x86_64-linux-gnu/libstdc++.so.6
#7  __futex_abstimed_wait_common64 (private=..., cancel=...) at ./nptl/futex-internal.c:57
Backtrace stopped: previous frame inner to this frame (corrupt stack?)

Thread 1 (Thread 0x7f5c26260740 (LWP 6810) "main"):
#0  0x0000559ec039d541 in _start ()
RH-FRAMES 7035 normal:7f1767bfe829:10 inline:558036a4f486:20 normal:7f5c260a8e1a:30 sigtramp:1:40 inline:559ec039d85b:50 normal:559ec039d85b:60 normal:7f5c260a85a6:70 normal:99:80
"""  # noqa: E501


def test_parse_gdb_backtraces() -> None:
    threads = parse_gdb_backtraces(GDB_SAMPLE)
    assert set(threads) == {7035, 6810}
    channel = threads[7035]
    assert (channel.number, channel.name) == (3, "channel")
    assert [frame.function for frame in channel.frames] == [
        "syscall",
        "std::sys::pal::unix::futex::futex_wait",
        "??",
        "<signal handler called>",
        "std::function<void (int)>::operator()(int) const",
        "rh::call_it(std::function<void (int)> const&)",
        "__gxx_personality_v0",
        "__futex_abstimed_wait_common64",
    ]
    assert channel.frames[1] == GdbFrame(
        index=1,
        function="std::sys::pal::unix::futex::futex_wait",
        pc=0x558036A4F486,
        file="library/std/src/sys/pal/unix/futex.rs",
        line=73,
        kind="inline",
        sp=0x20,
    )
    assert channel.frames[2].library == "/lib/x86_64-linux-gnu/libstdc++.so.6"
    assert channel.frames[3].kind == "sigtramp"
    assert channel.frames[7].pc == 0x99  # no address printed: taken from gdb's Python
    assert channel.stopped == "previous frame inner to this frame (corrupt stack?)"
    assert threads[6810].frames[0].function == "_start"
    assert threads[6810].frames[0].kind == "unknown"


_FUNCTION_HANDLER = "std::_Function_handler<void(int),rh::lambda_entry(void*)::<lambda(int)>>"
_BOXED_CALL_ONCE = (
    "alloc::boxed::{impl#31}::call_once<(), (dyn core::ops::function::FnOnce<(), Output=()>"
    " + core::marker::Send), alloc::alloc::Global>"
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("void rh::thrower<int>(int)", "rh::thrower<int>"),
        ("rh::thrower<int>", "rh::thrower<int>"),
        ("rh::catcher() [clone .cold]", "rh::catcher"),
        (
            "std::function<void (int)>::operator()(int) const",
            "std::function<void(int)>::operator()",
        ),
        ("std::function<void(int)>::operator()", "std::function<void(int)>::operator()"),
        ("rh::(anonymous namespace)::f(rh::Oops const&)", "rh::(anonymous namespace)::f"),
        (
            "rh::detail::Worker<std::vector<int, std::allocator<int> > >::run(int)",
            "rh::detail::Worker<std::vector<int,std::allocator<int>>>::run",
        ),
        (
            "std::_Function_handler<void (int), rh::lambda_entry(void*)::{lambda(int)#1}>"
            "::_M_invoke(std::_Any_data const&, int&&)",
            f"{_FUNCTION_HANDLER}::_M_invoke",
        ),
        (
            "std::_Function_handler<void(int), rh::lambda_entry(void*)::<lambda(int)> >"
            "::_M_invoke(const std::_Any_data &, int &&)",
            f"{_FUNCTION_HANDLER}::_M_invoke",
        ),
        ("operator new(unsigned long)", "operator new"),
        ("__pthread_kill_implementation.constprop.0", "__pthread_kill_implementation"),
        ("__GI___poll", "__GI___poll"),
    ],
)
def test_cxx_names(name: str, expected: str) -> None:
    assert canonical_name(name, "c++") == expected
    assert cxx_function_name(expected) == expected


@pytest.mark.parametrize(
    ("gdb_name", "demangled"),
    [
        (
            _BOXED_CALL_ONCE,
            "<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once",
        ),
        ("threads::sleep_entry::{closure#0}", "threads::sleep_entry::{{closure}}"),
        ("threads::nap<threads::sleep_entry::{closure_env#0}>", "threads::nap::h0123456789abcdef"),
        (
            "std::sys::thread::unix::{impl#2}::new::thread_start",
            "<std::sys::thread::unix::Thread>::new::thread_start",
        ),
        (
            "core::ops::function::impls::{impl#2}::call_once<(), (dyn core::ops::function::Fn)>",
            "core::ops::function::impls::<impl core::ops::function::FnOnce<A> for &F>::call_once",
        ),
        ("threads::Waiter::wait_forever<u64>", "threads::Waiter<T>::wait_forever"),
        ("threads::main::{closure#0}::{closure#0}", "threads::main::{{closure}}::{{closure}}"),
    ],
)
def test_rust_names(gdb_name: str, demangled: str) -> None:
    assert rust_function_key(gdb_name) == rust_function_key(demangled)
    assert canonical_name(gdb_name, "rust") == canonical_name(demangled, "rust")


def test_rust_names_differ() -> None:
    assert rust_function_key("std::thread::sleep") != rust_function_key("std::thread::park")
    assert rust_function_key("threads::main") != rust_function_key("threads::main::{{closure}}")
    assert rust_function_key("core::x::call_once") != rust_function_key("alloc::x::call_once")


def test_ocaml_names() -> None:
    assert ocaml_function_name("camlRecurse__descend_254") == "Recurse.descend"
    assert ocaml_function_name("camlRecurse__entry") == "Recurse.entry"
    assert ocaml_function_name("caml_program") == "caml_program"
    assert canonical_name("camlUnix__read_507", "ocaml") == "Unix.read"


@dataclass(frozen=True)
class _Frame:
    function: str | None
    pc: int = 0
    sp: int = 0
    module: str | None = None
    offset: int | None = None
    exact: bool = True
    inlined: bool = False
    trust: str = "cfi"
    signal_frame: bool = False


def test_names_match_rules() -> None:
    signal_frame = GdbFrame(index=3, function=SIGNAL_HANDLER_CALLED, pc=None, kind="sigtramp")
    assert names_match(signal_frame, _Frame("__restore_rt"), "c")
    assert not names_match(signal_frame, _Frame("__libc_pause"), "c")
    unknown = GdbFrame(index=1, function="??", pc=5)
    assert names_match(unknown, _Frame(None), "c")
    assert names_match(unknown, _Frame("_init", exact=False), "c")
    assert not names_match(unknown, _Frame("main"), "c")
    with_debug_info = GdbFrame(index=0, function="__GI___poll", pc=1, file="poll.c", line=29)
    assert names_match(with_debug_info, _Frame("__GI___poll"), "c")
    assert not names_match(with_debug_info, _Frame("poll"), "c")
    lambda_frame = GdbFrame(index=3, function="operator()", pc=1, file="x.cpp", line=1)
    assert names_match(
        lambda_frame,
        _Frame("rh::lambda_entry(void*)::{lambda(int)#1}::operator()(int) const"),
        "c++",
    )
