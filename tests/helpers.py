"""Test helpers: build tiny programs, run them as live targets, ask gdb for their stacks.

gdb is the oracle for ``redhand stack``.  Its answer is taken from the text of
``thread apply all bt`` (names, pcs, source locations), completed by a few
lines of gdb's Python API that say what kind each frame is (inlined,
tail-call, signal trampoline) and its stack pointer; the two are joined by
frame number.

How names are compared (``names_match``) is documented on that function: the
rules are the contract between gdb's spelling and redhand's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import re
import resource
import select
import selectors
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from redhand import Backtrace, Target

PROGRAMS = Path(__file__).resolve().parent / "programs"

SYS_READ = 0
SYS_POLL = 7
SYS_PAUSE = 34
SYS_RT_SIGSUSPEND = 130
SYS_FUTEX = 202
SYS_RESTART_SYSCALL = 219
SYS_CLOCK_NANOSLEEP = 230
SYS_EPOLL_WAIT = 232


# -- prerequisites -------------------------------------------------------------


@dataclass(frozen=True)
class Prerequisite:
    """A tool the tests need, how to tell it is there, and how to install it."""

    name: str
    install: str
    command: str | None = None
    """An executable that must be on PATH; None when ``present`` decides."""

    def present(self) -> bool:
        if self.command is not None:
            return shutil.which(self.command) is not None
        if self.name == "libc6-dbg":
            return libc_debug_file() is not None
        if self.name == "ptrace":
            return ptrace_problem() is None
        raise AssertionError(self.name)


PREREQUISITES = (
    Prerequisite("gcc", "apt-get install gcc", "gcc"),
    Prerequisite("g++", "apt-get install g++", "g++"),
    Prerequisite("gdb", "apt-get install gdb", "gdb"),
    Prerequisite("eu-stack", "apt-get install elfutils", "eu-stack"),
    Prerequisite("strip, nm, readelf", "apt-get install binutils", "strip"),
    Prerequisite("dwz", "apt-get install dwz", "dwz"),
    Prerequisite(
        "libc6-dbg",
        "apt-get install libc6-dbg (its version must match libc6's: "
        "apt-get install --only-upgrade libc6 libc6-dbg)",
    ),
    Prerequisite(
        "rustc", "install Rust from https://rustup.rs (or apt-get install rustc)", "rustc"
    ),
    Prerequisite("ocamlopt", "apt-get install ocaml-nox", "ocamlopt"),
    Prerequisite("debuginfod", "apt-get install debuginfod", "debuginfod"),
    Prerequisite("lldb", "apt-get install lldb python3-lldb-14", "lldb"),
    Prerequisite("unshare", "apt-get install util-linux", "unshare"),
    Prerequisite("setpriv", "apt-get install util-linux", "setpriv"),
    Prerequisite("ptrace", "(ptrace_problem says what to do)"),
)


def libc_debug_file() -> Path | None:
    """The separate debug file of the system's libc, found by build-id, or None."""
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.exists() or shutil.which("readelf") is None:
        return None
    return build_id_debug_file(str(libc))


def ptrace_problem() -> str | None:
    """Why this user cannot ptrace its own children's siblings (gdb -p), or None."""
    scope_file = Path("/proc/sys/kernel/yama/ptrace_scope")
    if not scope_file.exists():
        return None
    scope = int(scope_file.read_text())
    if scope == 3:
        return "kernel.yama.ptrace_scope is 3: no process may be traced until reboot"
    if scope >= 1 and os.geteuid() != 0:
        return (
            f"kernel.yama.ptrace_scope is {scope}: gdb cannot attach to the test programs; "
            "run `sudo sysctl kernel.yama.ptrace_scope=0` or run the tests as root"
        )
    return None


def missing_prerequisites() -> list[str]:
    """One line per missing tool, saying how to install it."""
    lines = []
    for item in PREREQUISITES:
        if not item.present():
            if item.name == "ptrace":
                lines.append(f"  ptrace: {ptrace_problem()}")
            else:
                lines.append(f"  {item.name}: {item.install}")
    return lines


# -- building programs ------------------------------------------------------------


class BuildError(RuntimeError):
    pass


_build_locks: dict[str, threading.Lock] = {}
_build_locks_guard = threading.Lock()


def _source(source_name_or_text: str, default_suffix: str) -> tuple[str, str, Path | None]:
    """(stem, text, path) of a program: a file name in tests/programs, or source text."""
    if "\n" not in source_name_or_text and (PROGRAMS / source_name_or_text).is_file():
        path = PROGRAMS / source_name_or_text
        return path.stem, path.read_text(), path
    digest = hashlib.sha256(source_name_or_text.encode()).hexdigest()[:8]
    return f"inline{default_suffix.replace('.', '_')}_{digest}", source_name_or_text, None


def _cached_build(
    cache_dir: Path,
    stem: str,
    key: Sequence[str],
    build: _Builder,
) -> Path:
    """Build once per session: the binary's name carries a hash of what made it."""
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:12]
    output = cache_dir / f"{stem}-{digest}"
    with _build_locks_guard:
        lock = _build_locks.setdefault(str(output), threading.Lock())
    with lock:
        if output.exists():
            return output
        work = cache_dir / f".{stem}-{digest}.build"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        built = build(work)
        os.replace(built, output)
        shutil.rmtree(work, ignore_errors=True)
    return output


class _Builder(Protocol):
    def __call__(self, work: Path) -> Path: ...


def _run_tool(argv: Sequence[str], cwd: Path) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")


def compile_c(
    source_name_or_text: str,
    tmp_path: Path,
    flags: Sequence[str] = (),
    *,
    language: str | None = None,
    strip: bool = False,
) -> Path:
    """Compile a C or C++ program with gcc or g++ and return the executable.

    ``source_name_or_text`` is a file in tests/programs (``threads.c``) or
    source text.  The language follows the file's suffix (.c, .cpp/.cc) or
    ``language`` ("c" or "c++"; C when neither says).  ``strip=True`` runs
    ``strip`` on a copy of the unstripped build (same code and build-id).
    Binaries are cached in ``tmp_path`` by a hash of the source, the
    compiler, the flags and ``strip``.
    """
    suffix_language = {".c": "c", ".cpp": "c++", ".cc": "c++", ".cxx": "c++"}
    stem, text, path = _source(source_name_or_text, ".c")
    if language is None:
        language = suffix_language.get(path.suffix, "c") if path is not None else "c"
    compiler = "g++" if language == "c++" else "gcc"
    suffix = ".cpp" if language == "c++" else ".c"
    compiler_path = shutil.which(compiler) or compiler

    def build(work: Path) -> Path:
        output = work / stem
        if strip:
            # Strip a copy of the very same build: same code, same build-id.
            unstripped = compile_c(source_name_or_text, tmp_path, flags, language=language)
            shutil.copyfile(unstripped, output)
            output.chmod(0o755)
            _run_tool(["strip", str(output)], work)
            return output
        if path is None:
            source = work / f"{stem}{suffix}"
            source.write_text(text)
        else:
            source = path
        _run_tool([compiler, *flags, "-o", str(output), str(source)], work)
        return output

    key = [compiler_path, text, *flags, f"strip={strip}"]
    return _cached_build(tmp_path, stem, key, build)


def rustc(source_name_or_text: str, tmp_path: Path, flags: Sequence[str] = ()) -> Path:
    """Compile a Rust program with rustc (edition 2021); cached like ``compile_c``."""
    stem, text, path = _source(source_name_or_text, ".rs")

    def build(work: Path) -> Path:
        source = path if path is not None else work / f"{stem}.rs"
        if path is None:
            source.write_text(text)
        output = work / stem
        _run_tool(["rustc", "--edition", "2021", *flags, "-o", str(output), str(source)], work)
        return output

    version = subprocess.run(["rustc", "-V"], capture_output=True, text=True).stdout
    return _cached_build(tmp_path, stem, [version, text, *flags], build)


def ocamlopt(source_name_or_text: str, tmp_path: Path, flags: Sequence[str] = ()) -> Path:
    """Compile an OCaml program with ocamlopt, linked with the unix library.

    The source is copied into a private folder first (ocamlopt writes .cmx,
    .cmi and .o files next to it); its file name gives the module's name, so
    ``recurse.ml`` becomes the module ``Recurse``.
    """
    stem, text, _path = _source(source_name_or_text, ".ml")

    def build(work: Path) -> Path:
        source = work / f"{stem}.ml"
        source.write_text(text)
        output = work / stem
        _run_tool(["ocamlopt", *flags, "-I", "+unix", "unix.cmxa", source.name, "-o", stem], work)
        return output

    version = subprocess.run(["ocamlopt", "-version"], capture_output=True, text=True).stdout
    return _cached_build(tmp_path, stem, [version, text, *flags], build)


# -- live programs ----------------------------------------------------------------


class ProgramFailed(RuntimeError):
    pass


def thread_syscall(pid: int, tid: int) -> int | None:
    """The system call a thread is blocked in (/proc/PID/task/TID/syscall), or None.

    None also when the thread is running on a CPU (the kernel says
    ``running``) or has exited.
    """
    try:
        text = Path(f"/proc/{pid}/task/{tid}/syscall").read_text()
    except OSError:
        return None
    first = text.split(" ", 1)[0].strip()
    return int(first) if first.isdigit() else None


PARKING_SYSCALLS = frozenset(
    {
        0,  # read
        7,  # poll
        23,  # select
        34,  # pause
        35,  # nanosleep
        43,  # accept
        45,  # recvfrom
        47,  # recvmsg
        61,  # wait4
        128,  # rt_sigtimedwait
        SYS_RT_SIGSUSPEND,
        SYS_FUTEX,
        SYS_RESTART_SYSCALL,  # a sleep restarted after a ptrace stop
        SYS_CLOCK_NANOSLEEP,
        SYS_EPOLL_WAIT,
        247,  # waitid
        270,  # pselect6
        271,  # ppoll
        281,  # epoll_pwait
        288,  # accept4
    }
)
"""System calls a test program parks in: it stays there until the test ends it.

A thread blocked in one of these is in the state the test inspects; a
thread in any other system call (``write`` of its "ready" line, say) or
running is not there yet.
"""


def thread_parked(pid: int, tid: int, syscalls: Collection[int] = PARKING_SYSCALLS) -> bool:
    """Whether the thread sleeps in one of ``syscalls`` (a parking call by default).

    /proc/PID/task/TID/syscall gives the number only while the thread is
    off the CPU inside a system call, and its state must say it sleeps
    (S, or D for an uninterruptible wait): a thread preempted on its way
    in or out is not parked.
    """
    if thread_syscall(pid, tid) not in syscalls:
        return False
    try:
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state in ("S", "D")


def process_tids(pid: int) -> list[int]:
    """The threads of a process now (/proc/PID/task), in tid order; [] once it is gone."""
    try:
        return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def thread_comm(pid: int, tid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().rstrip("\n")
    except OSError:
        return None


def unparked_threads(
    pid: int,
    *,
    expected: Mapping[int, int] | None = None,
    running: Callable[[int], bool] | None = None,
) -> list[str]:
    """The threads of ``pid`` not yet in the state a test inspects, described; [] when all are.

    ``expected`` maps tids to the system call each must sleep in (a
    restarted sleep counts too); every other thread must sleep in a parking
    call (:data:`PARKING_SYSCALLS`), except those for which ``running(tid)``
    is true: threads that are meant to run (spinners, heartbeats).
    """
    expected = expected or {}
    problems = []
    tids = process_tids(pid)
    if not tids:
        return [f"process {pid} is gone"]
    for tid in tids:
        if tid in expected:
            wanted = {expected[tid], SYS_RESTART_SYSCALL}
            if not thread_parked(pid, tid, wanted):
                problems.append(f"{tid} ({thread_comm(pid, tid)}) not in syscall {expected[tid]}")
        elif (running is None or not running(tid)) and not thread_parked(pid, tid):
            now = thread_syscall(pid, tid)
            where = "running" if now is None else f"in syscall {now}"
            problems.append(f"{tid} ({thread_comm(pid, tid)}) {where}")
    missing = set(expected) - set(tids)
    problems += [f"{tid} has exited" for tid in sorted(missing)]
    return problems


def wait_parked(
    pid: int,
    *,
    expected: Mapping[int, int] | None = None,
    running: Callable[[int], bool] | None = None,
    timeout: float = 60.0,
) -> None:
    """Wait until every thread of ``pid`` sleeps where the test expects it (see
    :func:`unparked_threads`), all at one moment; TimeoutError says which are not."""
    problems: list[str] = []

    def parked() -> bool:
        nonlocal problems
        problems = unparked_threads(pid, expected=expected, running=running)
        return not problems

    try:
        wait_until(parked, f"the threads of {pid} to park", timeout)
    except TimeoutError as error:
        raise TimeoutError(f"{error}: {'; '.join(problems)}") from None


def wait_until(
    condition: _Condition, what: str, timeout: float = 60.0, *, interval: float | None = None
) -> None:
    """Poll ``condition`` until true: every millisecond at first, backing off to 50 ms,
    or every ``interval`` seconds (to catch a state that lasts only milliseconds).

    ``timeout`` is a bound against a hang, never a measure of speed: it is
    generous, for a machine busy with other work.  TimeoutError names ``what``.
    """
    deadline = time.monotonic() + timeout
    delay = interval if interval is not None else 0.001
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        if interval is None:
            delay = min(delay * 2, 0.05)


class _Condition(Protocol):
    def __call__(self) -> bool: ...


EVERY_THREAD = frozenset({"*"})
"""``LiveProgram(running=EVERY_THREAD)``: no thread is required to park."""


class LiveProgram:
    """A test program running as a live target, killed and reaped on exit.

    The program prints ``thread NAME TID`` for each of its threads, then
    ``ready``, then parks each thread in a blocking system call.  Entering
    the context starts it, reads its stdout until "ready" (or ``timeout``:
    no sleeps), then waits until the program is in the state the test
    inspects, not merely past its "ready" line: every thread asleep in a
    parking call (:data:`PARKING_SYSCALLS`), the ones named in ``blocked``
    in that very call (restart_syscall counts too, for a sleep restarted
    after a tracer stopped it).  Threads named in ``running`` (by the name
    the program reported or by their comm) may do anything; ``EVERY_THREAD``
    waits for none.  :meth:`wait_blocked` checks again later (after gdb
    let go, say).

    ``pid`` and ``tids`` (name -> tid, as the program reported them) are set
    once it is ready.  Leaving the context kills the process by its pid
    (SIGKILL, which also ends it if a tracer left it stopped) and reaps it.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float = 60.0,
        blocked: Mapping[str, int] | None = None,
        running: Collection[str] = (),
        cwd: str | os.PathLike[str] | None = None,
        preexec_fn: Callable[[], object] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = [os.fspath(arg) for arg in argv]
        self.env = dict(env) if env is not None else None
        self.timeout = timeout
        self.blocked = dict(blocked or {})
        self.running = frozenset(running)
        self.cwd = cwd
        self.preexec_fn = preexec_fn
        self.tids: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._output: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None, "the program is not running"
        return self.process.pid

    @property
    def output(self) -> list[str]:
        """The lines the program printed up to "ready"."""
        return list(self._output)

    def name_of(self, tid: int) -> str | None:
        """The name the program gave the thread, or None if it did not report it."""
        return next((name for name, value in self.tids.items() if value == tid), None)

    def __enter__(self) -> LiveProgram:
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=self.cwd,
            preexec_fn=self.preexec_fn,
            env=self.env,
        )
        try:
            self._read_until_ready()
            self.wait_blocked()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _read_until_ready(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        deadline = time.monotonic() + self.timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProgramFailed(self._failure(f"no 'ready' within {self.timeout} s"))
                if not selector.select(remaining):
                    continue
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    raise ProgramFailed(self._failure("exited before 'ready'"))
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    text = line.decode(errors="replace").strip()
                    self._output.append(text)
                    if text == "ready":
                        return
                    words = text.split()
                    if len(words) == 3 and words[0] == "thread":
                        self.tids[words[1]] = int(words[2])

    def _may_run(self, tid: int) -> bool:
        if self.running == EVERY_THREAD:
            return True
        name = self.name_of(tid)
        return (name is not None and name in self.running) or thread_comm(
            self.pid, tid
        ) in self.running

    def wait_blocked(self, timeout: float | None = None) -> None:
        """Wait until the program is where the test inspects it (see the class).

        Every thread named in ``blocked`` sleeps in its system call and every
        other thread, except those allowed to run, in a parking call.
        """
        expected = {}
        for name, number in self.blocked.items():
            tid = self.tids.get(name)
            if tid is None:
                raise ProgramFailed(self._failure(f"never reported a thread named {name!r}"))
            expected[tid] = number
        try:
            wait_parked(
                self.pid,
                expected=expected,
                running=self._may_run,
                timeout=timeout or self.timeout,
            )
        except TimeoutError as error:
            raise ProgramFailed(self._failure(str(error))) from None

    def _failure(self, what: str) -> str:
        stderr = b""
        if self._stderr is not None:
            self._stderr.seek(0)
            stderr = self._stderr.read()
        output = "\n".join(self._output)
        return (
            f"{' '.join(self.argv)}: {what}\nstdout:\n{output}\n"
            f"stderr:\n{stderr.decode(errors='replace')}"
        )

    def __exit__(self, *exc_info: object) -> None:
        process = self.process
        if process is None:
            return
        try:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.stdout is not None:
                process.stdout.close()
            if self._stderr is not None:
                self._stderr.close()


HEARTBEAT_PROGRAM = PROGRAMS / "threads_heartbeat.c"
HEARTBEAT_FIELDS = (
    *("ticks", "max_gap_ns", "last_ns", "reset", "reset_ack"),
    *("churned", "spins", "usr1", "vforks"),
)
"""The 64-bit fields of struct heartbeat in threads_heartbeat.c, in order."""

_HEARTBEAT_RUNNING = ("heartbeat", "spin", "churn", "vfork")
"""threads_heartbeat's threads that run rather than park (by comm prefix)."""


def build_heartbeat(directory: Path) -> Path:
    """threads_heartbeat.c compiled into ``directory`` (-O1 -g -pthread)."""
    return compile_c(str(HEARTBEAT_PROGRAM.name), directory, ["-O1", "-g", "-pthread"])


def thread_state(pid: int, tid: int) -> str | None:
    """The state letter of /proc/PID/task/TID/stat (S, R, t, T, Z, ...), None once gone."""
    try:
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def tracer_of(pid: int, tid: int | None = None) -> int:
    """TracerPid of a process (or one of its threads); 0 when none traces it."""
    where = f"/proc/{pid}/task/{tid}/status" if tid is not None else f"/proc/{pid}/status"
    for line in Path(where).read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


class HeartbeatProgram:
    """tests/programs/threads_heartbeat.c running: workers parked in different calls,
    a heartbeat thread that records the longest gap between its ticks.

    Starting it waits for "ready", then until every worker sleeps in its
    call (the heartbeat, spinning, churning and vforking threads excepted).
    The heartbeat's fields are read from the file it maps shared.
    ``close`` (or leaving the context) kills it by its pid and reaps it.
    """

    def __init__(
        self, exe: Path, heartbeat_path: Path, workers: int, *options: str, timeout: float = 60.0
    ) -> None:
        self.heartbeat_path = heartbeat_path
        self.timeout = timeout
        self._map: mmap.mmap | None = None
        self.process = subprocess.Popen(
            [str(exe), str(workers), str(heartbeat_path), *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert self.process.stdout is not None
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            line = self.process.stdout.readline() if ready else b""
            if line != b"ready\n":
                raise ProgramFailed(f"{exe}: did not say ready (got {line!r})")
            with open(heartbeat_path, "r+b") as file:
                self._map = mmap.mmap(file.fileno(), 8 * len(HEARTBEAT_FIELDS))
            self.wait_settled()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HeartbeatProgram:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def runs(self, tid: int) -> bool:
        """Whether the thread is one that runs rather than parks (or the exited leader)."""
        comm = thread_comm(self.pid, tid) or ""
        return comm.startswith(_HEARTBEAT_RUNNING) or thread_state(self.pid, tid) == "Z"

    def wait_settled(self) -> None:
        """Wait until every parking thread sleeps in its call (again, after a capture)."""
        try:
            wait_parked(self.pid, running=self.runs, timeout=self.timeout)
        except TimeoutError as error:
            raise ProgramFailed(str(error)) from None

    def field(self, name: str) -> int:
        assert self._map is not None
        value: int = struct.unpack_from("<Q", self._map, 8 * HEARTBEAT_FIELDS.index(name))[0]
        return value

    def reset_gap(self) -> None:
        """Start a new measurement of the heartbeat's longest gap."""
        assert self._map is not None
        reset = self.field("reset") + 1
        struct.pack_into("<Q", self._map, 8 * HEARTBEAT_FIELDS.index("reset"), reset)
        wait_until(lambda: self.field("reset_ack") == reset, "the heartbeat to reset", self.timeout)

    def wait_ticks(self, count: int = 3) -> None:
        """Wait until the heartbeat has ticked ``count`` more times: it runs."""
        start = self.field("ticks")
        wait_until(lambda: self.field("ticks") >= start + count, "heartbeat ticks", self.timeout)

    def gap_ms_of(self, action: Callable[[], object]) -> float:
        """The heartbeat's longest gap (ms) around ``action``: how long it was kept
        from running, as it saw it.  A figure to print, not to assert on."""
        self.reset_gap()
        action()
        self.wait_ticks()
        return self.field("max_gap_ns") / 1e6

    def states(self) -> dict[int, tuple[str, str]]:
        """tid -> (name, state letter) of every thread now."""
        states = {}
        for tid in process_tids(self.pid):
            comm, state = thread_comm(self.pid, tid), thread_state(self.pid, tid)
            if comm is not None and state is not None:
                states[tid] = (comm, state)
        return states

    def stopped(self) -> list[tuple[int, str, str]]:
        return [(tid, n, s) for tid, (n, s) in self.states().items() if s in ("t", "T")]

    def tid_named(self, name: str) -> int:
        for tid, (comm, _) in self.states().items():
            if comm == name:
                return tid
        raise AssertionError(f"no thread named {name}")

    def assert_running(self, why: str = "") -> None:
        """No thread stopped (t or T), nothing traces it, and the heartbeat ticks."""
        stopped = self.stopped()
        assert stopped == [], f"{why}: threads left stopped: {stopped}"
        assert tracer_of(self.pid) == 0, f"{why}: still traced"
        self.wait_ticks()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        if self._map is not None:
            self._map.close()
            self._map = None


def read_maps(pid: int) -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, path) of each file-backed mapping of a process."""
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            start, end = (int(value, 16) for value in parts[0].split("-"))
            maps.append((start, end, int(parts[2], 16), parts[5]))
    return maps


def load_base(maps: Iterable[tuple[int, int, int, str]], path: str) -> int | None:
    """Where a file's first byte is mapped (its mapping at file offset 0)."""
    real = os.path.realpath(path)
    starts = [start for start, _end, offset, name in maps if name == real and offset == 0]
    return min(starts) if starts else None


def module_at(maps: Iterable[tuple[int, int, int, str]], address: int) -> str | None:
    return next((name for start, end, _off, name in maps if start <= address < end), None)


# -- gdb ---------------------------------------------------------------------------

SIGNAL_HANDLER_CALLED = "<signal handler called>"
UNKNOWN_FUNCTION = "??"

# Run inside gdb after `thread apply all bt`: one line per thread with each
# frame's kind (gdb.Frame.type()), pc and stack pointer, in bt's order.
_GDB_PYTHON = """
import gdb
kinds = {
    gdb.NORMAL_FRAME: "normal",
    gdb.DUMMY_FRAME: "dummy",
    gdb.INLINE_FRAME: "inline",
    gdb.TAILCALL_FRAME: "tailcall",
    gdb.SIGTRAMP_FRAME: "sigtramp",
    gdb.ARCH_FRAME: "arch",
}
for thread in sorted(gdb.selected_inferior().threads(), key=lambda t: t.num):
    thread.switch()
    out = []
    frame = gdb.newest_frame()
    while frame is not None:
        try:
            sp = int(frame.read_register("rsp"))
        except gdb.error:
            sp = -1
        kind = kinds.get(frame.type(), "other")
        out.append("%s:%x:%x" % (kind, frame.pc(), sp & (2**64 - 1)))
        try:
            frame = frame.older()
        except gdb.error:
            break
    print("RH-FRAMES %d %s" % (thread.ptid[1], " ".join(out)))
"""


@dataclass(frozen=True)
class GdbFrame:
    """One line of gdb's ``bt``, completed with its kind and stack pointer."""

    index: int
    function: str
    """gdb's name with the argument list removed; ``??`` or ``<signal handler called>``."""
    pc: int | None
    file: str | None = None
    line: int | None = None
    library: str | None = None
    """The shared library gdb named (``from LIB``): set only when gdb had no debug info."""
    kind: str = "normal"
    """normal, inline, tailcall, sigtramp (from gdb's Python API) or unknown."""
    sp: int | None = None

    @property
    def has_debug_info(self) -> bool:
        return self.file is not None

    @property
    def from_assembly(self) -> bool:
        """An assembly source: gdb has lines but names the function by a symbol."""
        return self.file is not None and self.file.endswith((".S", ".s"))


@dataclass
class GdbThread:
    tid: int
    number: int
    name: str | None
    frames: list[GdbFrame] = field(default_factory=list)
    stopped: str | None = None
    """gdb's "Backtrace stopped: ..." message, when it printed one."""

    @property
    def real_frames(self) -> list[GdbFrame]:
        """The frames that exist on the stack: gdb's synthetic tail-call frames left out."""
        return [frame for frame in self.frames if frame.kind != "tailcall"]


_THREAD_RE = re.compile(r"^Thread (\d+) \((.*)\):$")
_LWP_RE = re.compile(r"\b(?:LWP|process) (\d+)\b")
_THREAD_NAME_RE = re.compile(r'"(.*)"$')
_FRAME_RE = re.compile(
    r"^#(?P<index>\d+)\s+"
    r"(?:(?P<pc>0x[0-9a-f]+) in )?"
    r"(?P<function>.+?)"
    r" \((?P<args>[^()]*)\)"
    r"(?: at (?P<file>.+):(?P<line>\d+)| from (?P<library>\S+))?$"
)
_SIGNAL_FRAME_RE = re.compile(
    r"^#(?P<index>\d+)\s+(?:(?P<pc>0x[0-9a-f]+) in )?<signal handler called>$"
)


def parse_gdb_backtraces(text: str) -> dict[int, GdbThread]:
    """Parse ``thread apply all bt`` output (and RH-FRAMES lines) into threads by tid.

    Frame lines look like ``#0  0x00007f... in __GI___poll (fds=..., ...) at
    ../sysdeps/unix/sysv/linux/poll.c:29``, ``#1  main () at x.c:5`` (no
    address: an inlined frame, or a pc at the start of a line),
    ``#4  0x00007f... in ?? () from /lib/.../libstdc++.so.6`` and
    ``#3  <signal handler called>``; C++ names keep their own parameter
    lists (``rh::call_it(std::function<void (int)> const&) (function=...)``),
    so the argument list is the last parenthesised group.
    """
    threads: dict[int, GdbThread] = {}
    current: GdbThread | None = None
    extra: dict[int, list[tuple[str, int, int]]] = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        header = _THREAD_RE.match(line)
        if header:
            inside = header.group(2)
            lwp = _LWP_RE.search(inside)
            if lwp is None:
                current = None
                continue
            name = _THREAD_NAME_RE.search(inside)
            current = GdbThread(
                tid=int(lwp.group(1)),
                number=int(header.group(1)),
                name=name.group(1) if name else None,
            )
            threads[current.tid] = current
            continue
        if line.startswith("RH-FRAMES "):
            _marker, lwp_text, *items = line.split(" ")
            entries = []
            for item in items:
                kind, pc_text, sp_text = item.split(":")
                entries.append((kind, int(pc_text, 16), int(sp_text, 16)))
            extra[int(lwp_text)] = entries
            continue
        if current is None:
            continue
        if line.startswith("Backtrace stopped:"):
            current.stopped = line[len("Backtrace stopped:") :].strip()
            continue
        signal_frame = _SIGNAL_FRAME_RE.match(line)
        if signal_frame:
            pc = signal_frame.group("pc")
            current.frames.append(
                GdbFrame(
                    index=int(signal_frame.group("index")),
                    function=SIGNAL_HANDLER_CALLED,
                    pc=int(pc, 16) if pc else None,
                    kind="sigtramp",
                )
            )
            continue
        frame = _FRAME_RE.match(line)
        if frame:
            pc = frame.group("pc")
            number = frame.group("line")
            current.frames.append(
                GdbFrame(
                    index=int(frame.group("index")),
                    function=frame.group("function"),
                    pc=int(pc, 16) if pc else None,
                    file=frame.group("file"),
                    line=int(number) if number else None,
                    library=frame.group("library"),
                    kind="unknown",
                )
            )
    for thread_id, entries in extra.items():
        if thread_id in threads:
            thread = threads[thread_id]
            thread.frames = [_complete(frame, entries) for frame in thread.frames]
    return threads


def _complete(frame: GdbFrame, entries: Sequence[tuple[str, int, int]]) -> GdbFrame:
    """A frame of the text with the kind, pc and sp that gdb's Python gave for it."""
    if frame.index >= len(entries):
        return frame
    kind, pc, sp = entries[frame.index]
    if frame.pc is not None and frame.pc != pc:
        return frame  # the two passes disagree: keep what the text says, kind unknown
    return dataclasses.replace(frame, pc=pc, kind=kind, sp=sp if sp != 2**64 - 1 else None)


def run_gdb_backtraces(pid: int, timeout: float = 60.0) -> tuple[dict[int, GdbThread], str]:
    """Attach gdb to ``pid``, take every thread's backtrace, detach; parsed and raw.

    gdb runs with ``-nx`` (no ~/.gdbinit), frame arguments elided, an
    address on every frame (``print frame-info location-and-address``) and
    ``backtrace past-main`` so the main thread's trace reaches ``_start``.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(_GDB_PYTHON)
    try:
        argv = [
            "gdb", "-batch", "-nx", "-p", str(pid),
            "-ex", "set pagination off",
            "-ex", "set width 0",
            "-ex", "set print frame-arguments none",
            "-ex", "set print address on",
            "-ex", "set print frame-info location-and-address",
            "-ex", "set backtrace past-main on",
            "-ex", "thread apply all bt",
            "-x", script.name,
        ]  # fmt: skip
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    finally:
        os.unlink(script.name)
    text = result.stdout
    threads = parse_gdb_backtraces(text)
    if not threads:
        raise RuntimeError(f"gdb printed no threads for {pid}:\n{text}\n{result.stderr}")
    return threads, text


def gdb_backtraces(pid: int, timeout: float = 60.0) -> dict[int, list[str]]:
    """Every thread's frame names as gdb prints them, innermost first, by tid."""
    threads, _text = run_gdb_backtraces(pid, timeout)
    return {tid: [frame.function for frame in thread.frames] for tid, thread in threads.items()}


# -- comparing names ---------------------------------------------------------------

_CLONE_SUFFIX_RE = re.compile(r"(?:\.(?:cold|part|isra|constprop|lto_priv)(?:\.\d+)?)+$")
_CXX_CLONE_RE = re.compile(r"(?: \[clone [^\]]*\])+$")
_CXX_QUALIFIERS_RE = re.compile(r"(?:\s*(?:const|volatile|&&|&|noexcept))+$")
_OCAML_RE = re.compile(r"^caml([A-Z][A-Za-z0-9_']*?)__(.+?)(?:_\d+)?$")
_RUST_HASH_RE = re.compile(r"::h[0-9a-f]{16}$")


def _matching_open(text: str, close_index: int) -> int:
    """Index of the bracket that opens the one closing at ``close_index``, or -1."""
    pairs = {")": "(", ">": "<", "]": "[", "}": "{"}
    depth = 0
    opener = pairs[text[close_index]]
    closer = text[close_index]
    for index in range(close_index, -1, -1):
        char = text[index]
        if char == closer:
            depth += 1
        elif char == opener:
            depth -= 1
            if depth == 0:
                return index
    return -1


def _top_level_split(text: str, separator: str) -> list[str]:
    """Split at ``separator`` where it is outside (), <>, [], {}."""
    parts, depth, start = [], 0, 0
    index = 0
    while index < len(text):
        char = text[index]
        if char in "(<[{":
            depth += 1
        elif char in ")>]}":
            # "->" and "operator>" are rare in names we compare; keep depth >= 0
            depth = max(depth - 1, 0)
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    parts.append(text[start:])
    return parts


def _squeeze_spaces(text: str) -> str:
    """Drop spaces next to punctuation: ``> >`` and ``>>``, ``void (int)`` and ``void(int)``."""
    text = re.sub(r"\s+", " ", text.strip())
    return re.sub(r" ?([<>(),&*\[\]{}]) ?", r"\1", text)


def cxx_function_name(name: str) -> str:
    """A C++ name reduced to the function's qualified name, template arguments kept.

    ``void rh::thrower<int>(int) [clone .cold]`` -> ``rh::thrower<int>``;
    ``std::function<void (int)>::operator()(int) const`` ->
    ``std::function<void(int)>::operator()``; lambdas spelled by the
    demangler (``{lambda(int)#1}``) or by gdb (``<lambda(int)>``) agree.
    """
    name = _CXX_CLONE_RE.sub("", name.strip())
    name = _CLONE_SUFFIX_RE.sub("", name)
    name = _CXX_QUALIFIERS_RE.sub("", name)
    if name.endswith(")"):
        open_index = _matching_open(name, len(name) - 1)
        # "...::operator()" without a parameter list keeps its own "()"
        if open_index > 0 and not name[:open_index].endswith("operator"):
            name = name[:open_index]
    # A return type (template functions' manglings have one) is a top-level
    # word before the name: keep the last top-level word, gluing
    # "operator" to what follows it ("operator new", "operator int").
    words = _top_level_split(name, " ")
    merged: list[str] = []
    for word in words:
        if merged and (merged[-1].endswith("operator") or merged[-1] in {"unsigned", "signed"}):
            merged[-1] += " " + word
        else:
            merged.append(word)
    name = merged[-1] if merged else name
    name = re.sub(r"\{lambda\(([^)]*)\)#\d+\}", r"<lambda(\1)>", name)
    return _squeeze_spaces(name)


def rust_function_key(name: str) -> str:
    """A Rust name reduced to its crate and the function's own name with closures.

    gdb names Rust frames by DWARF scopes (``alloc::boxed::{impl#31}::call_once<...>``,
    ``threads::sleep_entry::{closure#0}``), a demangler by the symbol
    (``<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once``,
    ``threads::sleep_entry::{{closure}}``).  What both spell the same is the
    crate, the last named path segment and the closures under it:
    ``alloc … call_once``, ``threads … sleep_entry::{closure}``.
    """
    name = _RUST_HASH_RE.sub("", name.strip())
    # A vtable shim is the function it forwards to, called through a trait
    # object; its symbol says so, gdb's DWARF name does not.
    name = re.sub(r"\{\{vtable[.-]shim\}\}|\{shim:vtable#\d+\}", "", name)
    name = re.sub(r"\{\{closure\}\}|\{closure#\d+\}", "{closure}", name)
    crate_match = re.match(r"^<*(?:impl )?&?(?:mut )?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)", name)
    crate = crate_match.group(1) if crate_match else ""
    # Drop every <...> group (generic arguments, qualified-self paths).
    while True:
        stripped = re.sub(r"<[^<>]*>", "", name)
        if stripped == name:
            break
        name = stripped
    segments = [segment for segment in name.split("::") if segment]
    tail: list[str] = []
    for segment in reversed(segments):
        tail.insert(0, segment)
        if segment != "{closure}" and not segment.startswith("{impl"):
            break
    return f"{crate} … {'::'.join(tail)}"


def ocaml_function_name(name: str) -> str:
    """``camlRecurse__descend_254`` -> ``Recurse.descend`` (OCaml up to 5.0; stamp dropped)."""
    match = _OCAML_RE.match(name)
    if match is None:
        return name
    module, function = match.groups()
    return f"{module.replace('__', '.')}.{function}"


def canonical_name(name: str, language: str) -> str:
    """The form in which gdb's and redhand's names of one function are equal.

    - every language: GCC's clone suffixes (``.cold``, ``.part.N``,
      ``.isra.N``, ``.constprop.N``) and C++'s ``[clone ...]`` are dropped:
      gdb names such a piece by its DWARF function (no suffix) when it has
      debug info and by its symbol otherwise;
    - OCaml symbols ``camlModule__name_NNN`` become ``Module.name``;
    - C++ (names with ``::``, ``<`` or ``(``): :func:`cxx_function_name`;
    - Rust programs: :func:`rust_function_key`.
    """
    name = _CLONE_SUFFIX_RE.sub("", _CXX_CLONE_RE.sub("", name.strip()))
    if name.startswith("caml"):
        return ocaml_function_name(name)
    if language == "rust" and ("::" in name or "<" in name):
        return rust_function_key(name)
    if "::" in name or "(" in name or "<" in name:
        return cxx_function_name(name)
    return name


class FrameLike(Protocol):
    """What the comparison reads of a redhand frame (redhand.target.model.Frame)."""

    @property
    def pc(self) -> int: ...
    @property
    def sp(self) -> int: ...
    @property
    def function(self) -> str | None: ...
    @property
    def module(self) -> str | None: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def exact(self) -> bool: ...
    @property
    def inlined(self) -> bool: ...
    @property
    def signal_frame(self) -> bool: ...
    @property
    def trust(self) -> object: ...


_alias_cache: dict[str, dict[str, frozenset[str]]] = {}
_alias_lock = threading.Lock()


def build_id_debug_file(path: str) -> Path | None:
    """The separate debug file of an ELF file, found by its build-id, or None."""
    identifier = read_build_id(path)
    if identifier is None:
        return None
    debug = Path("/usr/lib/debug/.build-id") / identifier[:2] / f"{identifier[2:]}.debug"
    return debug if debug.exists() else None


def symbol_aliases(path: str) -> dict[str, frozenset[str]]:
    """For each demangled symbol of an ELF file, every symbol at the same address.

    Read with ``nm`` from .symtab and .dynsym, and from the .symtab of the
    separate debug file found by build-id: glibc has several names for one
    function (``clone3`` and ``__clone3``; ``poll``, ``__poll``,
    ``__GI___poll``), and where gdb names a function by a symbol it picks
    one of them by its own preference.
    """
    with _alias_lock:
        if path in _alias_cache:
            return _alias_cache[path]
    by_address: dict[str, set[str]] = {}
    debug = build_id_debug_file(path)
    sources = [[path], ["-D", path]] + ([[str(debug)]] if debug else [])
    for arguments in sources:
        result = subprocess.run(
            ["nm", "-C", "--defined-only", *arguments], capture_output=True, text=True
        )
        for line in result.stdout.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in "TtWwiI":
                name = parts[2].split("@", 1)[0]
                by_address.setdefault(parts[0], set()).add(name)
    aliases: dict[str, frozenset[str]] = {}
    for names in by_address.values():
        group = frozenset(names)
        for name in names:
            aliases[name] = aliases.get(name, frozenset()) | group
    with _alias_lock:
        _alias_cache[path] = aliases
    return aliases


def names_match(gdb_frame: GdbFrame, frame: FrameLike, language: str) -> bool:
    """Whether redhand's frame has the name gdb gave that frame.

    The rules:

    1. ``<signal handler called>`` is the signal trampoline, which redhand
       names by its symbol, ``__restore_rt``.
    2. ``??`` (gdb found no symbol containing the pc) matches a frame with no
       function, or one whose name is only the nearest symbol below the pc
       (``exact`` False).
    3. Otherwise the names must be equal in :func:`canonical_name` form,
       or be aliases (rule 4).
    4. A name matches any alias of it: a symbol at the same address in the
       same file or its debug file.  gdb picks among aliases by its own
       preference, and for functions with DWARF it prints the DWARF name
       (``__GI___poll``); redhand names a function by its public alias
       (``poll``), the same name whether or not debug files are installed,
       so that crash signatures stay stable.  An alias is the same function.
    5. gdb names a C++ lambda's ``operator()`` by its bare DWARF name; such an
       unqualified gdb name matches the last component of redhand's name.
    """
    if gdb_frame.function == SIGNAL_HANDLER_CALLED:
        return frame.function == "__restore_rt"
    if gdb_frame.function == UNKNOWN_FUNCTION:
        return frame.function is None or not frame.exact
    if frame.function is None:
        return False
    expected = canonical_name(gdb_frame.function, language)
    actual = canonical_name(frame.function, language)
    if expected == actual:
        return True
    if getattr(frame, "inlined", False) and _inlined_name_matches(
        gdb_frame.function, frame.function
    ):
        return True
    if frame.module:
        aliases = symbol_aliases(frame.module)
        group = aliases.get(frame.function, frozenset()) | aliases.get(
            _CXX_CLONE_RE.sub("", frame.function), frozenset()
        )
        if any(canonical_name(alias, language) == expected for alias in group):
            return True
    return same_function(expected, actual, language)


def _strip_parameters(name: str) -> str:
    """``std::f<int>::g(int) const`` -> ``std::f<int>::g``: the trailing parameter list cut off."""
    text = name.removesuffix(" const")
    if not text.endswith(")"):
        return text
    depth = 0
    for position in range(len(text) - 1, -1, -1):
        if text[position] == ")":
            depth += 1
        elif text[position] == "(":
            depth -= 1
            if depth == 0:
                return text[:position]
    return text


def _inlined_name_matches(gdb_name: str, name: str) -> bool:
    """6. An inlined frame is named as eu-stack names it: its demangled linkage
    name, parameters included (``shop::Cart::wait() const``), where gdb prints
    the qualified name without them (``shop::Cart::wait``); they match once the
    parameters are stripped.  Where redhand's DWARF reader cannot say more,
    the name is drgn's unqualified DW_AT_name (``operator()``, Rust's ``new``),
    which matches the qualified one's last component."""
    for candidate in (gdb_name, _strip_parameters(gdb_name)):
        for own in (name, _strip_parameters(name)):
            if candidate == own or candidate.endswith("::" + own):
                return True
    return False


def same_function(gdb_name: str, name: str, language: str) -> bool:
    """Two canonical names of one function: equal, or rule 5 of :func:`names_match`."""
    if gdb_name == name:
        return True
    return language == "c++" and "::" not in gdb_name and name.rsplit("::", 1)[-1] == gdb_name


@dataclass(frozen=True)
class Comparison:
    """A side-by-side comparison of one thread's frames; empty ``problems`` when equal."""

    rows: list[tuple[str, str, str]]
    problems: list[str]
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        width = max((len(row[1]) for row in self.rows), default=10)
        lines = [f"     {'gdb':<{width}}  redhand"]
        lines += [f"{mark:>3}  {left:<{width}}  {right}" for mark, left, right in self.rows]
        return "\n".join([*self.problems, *self.notes, "", *lines])


def describe(frame: FrameLike | None) -> str:
    if frame is None:
        return "-"
    if frame.function is not None:
        name = frame.function
    else:
        offset = f"+{frame.offset:#x}" if frame.offset is not None else ""
        name = f"<{os.path.basename(frame.module or '?')}{offset}>"
    suffix = "" if frame.exact else " (inexact)"
    return f"{frame.pc:#x} {name}{suffix} [{frame.trust}]"


def describe_gdb(frame: GdbFrame | None) -> str:
    if frame is None:
        return "-"
    pc = f"{frame.pc:#x} " if frame.pc is not None else ""
    kind = f" [{frame.kind}]" if frame.kind not in ("normal", "unknown") else ""
    return f"{pc}{frame.function}{kind}"


INLINED_FRAMES = True
"""Whether redhand reports inlined calls as frames of their own.

It does (DWARF through drgn): each physical frame is compared with gdb's
inlined frames at its pc too, innermost first.
"""


def compare_backtrace(
    gdb_thread: GdbThread,
    frames: Sequence[FrameLike],
    language: str,
    *,
    spinning: frozenset[str] = frozenset(),
    symbolize: _Symbolize | None = None,
) -> Comparison:
    """Compare redhand's frames with gdb's, frame by frame.

    Both traces are cut into physical frames: one real stack frame together
    with the inlined frames at its pc (innermost first, gdb's INLINE_FRAME
    kind, redhand's ``inlined``).  Physical frames are compared in order:

    - the same number of them;
    - the pc of each (gdb's frame pc: the exact pc for frame 0 and for a
      frame a signal interrupted, the return address otherwise), and the
      stack pointer of ordinary frames (gdb's ``$sp`` in that frame);
    - the same names (:func:`names_match`), including the inlined frames,
      in the same order.

    gdb's tail-call frames are left out: gdb makes them up from DWARF
    call-site records (DW_TAG_call_site with DW_AT_call_tail_call) for a
    function that jumped to its callee and so has no frame on the stack.

    ``spinning`` names the functions a running thread may be in: the leading
    physical frames whose names are in it are shown but not compared (gdb
    and redhand saw the thread at different moments), and redhand's trace
    must start with one.  ``symbolize(pc)`` names frames that have no name
    (a stripped executable) for this purpose only.
    """
    expected = _physical_frames(gdb_thread.real_frames, lambda f: f.kind == "inline")
    actual = _physical_frames(list(frames), lambda f: f.inlined)
    problems: list[str] = []
    rows: list[tuple[str, str, str]] = []
    gdb_index = redhand_index = 0

    if spinning:

        def spins(group: Sequence[GdbFrame | FrameLike]) -> bool:
            frame = group[-1]
            function = frame.function
            if function in (None, UNKNOWN_FUNCTION) and symbolize and frame.pc:
                function = symbolize(frame.pc)
            return function is not None and canonical_name(function, language) in spinning

        skip_gdb = next((n for n, group in enumerate(expected) if not spins(group)), len(expected))
        skip_redhand = next((n for n, group in enumerate(actual) if not spins(group)), len(actual))
        if skip_redhand == 0:
            problems.append(
                f"redhand's innermost frame is not one of the spinning functions {sorted(spinning)}"
            )
        gdb_skipped = [frame for group in expected[:skip_gdb] for frame in group]
        redhand_skipped = [frame for group in actual[:skip_redhand] for frame in group]
        for index in range(max(len(gdb_skipped), len(redhand_skipped))):
            gdb_frame = gdb_skipped[index] if index < len(gdb_skipped) else None
            frame = redhand_skipped[index] if index < len(redhand_skipped) else None
            rows.append(("~", describe_gdb(gdb_frame), describe(frame)))
        gdb_index, redhand_index = len(gdb_skipped), len(redhand_skipped)
        expected, actual = expected[skip_gdb:], actual[skip_redhand:]

    for position in range(max(len(expected), len(actual))):
        gdb_group = expected[position] if position < len(expected) else []
        group = actual[position] if position < len(actual) else []
        where = f"gdb #{gdb_index}, redhand #{redhand_index}"
        group_problems: list[str] = []
        if not gdb_group or not group:
            which = "gdb" if group == [] else "redhand"
            names = [f.function for f in (gdb_group or group)]
            group_problems.append(f"{where}: only {which} has the frame {names}")
        else:
            gdb_frame, frame = gdb_group[-1], group[-1]
            if gdb_frame.pc is not None and gdb_frame.pc != frame.pc:
                group_problems.append(f"{where}: pc {frame.pc:#x}, gdb says {gdb_frame.pc:#x}")
            if gdb_frame.kind == "normal" and gdb_frame.sp is not None and gdb_frame.sp != frame.sp:
                group_problems.append(f"{where}: sp {frame.sp:#x}, gdb says {gdb_frame.sp:#x}")
            # drgn finds no inline chain in Rust's std (gdb does): Rust's
            # physical frames are compared by their real function only.
            inline_names = INLINED_FRAMES and language != "rust"
            compared = gdb_group if inline_names else gdb_group[-1:]
            own = group if inline_names else group[-1:]
            if len(compared) != len(own) or not all(
                names_match(g, r, language) for g, r in zip(compared, own, strict=True)
            ):
                gdb_names = [g.function for g in gdb_group]
                redhand_names = [r.function for r in group]
                inlined = " (with the frames inlined there)" if len(gdb_group) > 1 else ""
                group_problems.append(
                    f"{where}: names{inlined} {redhand_names}, gdb says {gdb_names}"
                )
        problems += group_problems
        for index in range(max(len(gdb_group), len(group))):
            gdb_frame = gdb_group[index] if index < len(gdb_group) else None
            frame = group[index] if index < len(group) else None
            rows.append(("!" if group_problems else "", describe_gdb(gdb_frame), describe(frame)))
        gdb_index += len(gdb_group)
        redhand_index += len(group)
    notes = [f"gdb stopped early: {gdb_thread.stopped}"] if gdb_thread.stopped else []
    return Comparison(rows, problems, notes)


def _physical_frames(frames: Sequence[_F], is_inline: Callable[[_F], bool]) -> list[list[_F]]:
    """Group frames: each real frame with the inlined frames before it (innermost first)."""
    groups: list[list[_F]] = []
    pending: list[_F] = []
    for frame in frames:
        pending.append(frame)
        if not is_inline(frame):
            groups.append(pending)
            pending = []
    if pending:
        groups.append(pending)  # inlined frames with no real frame: keep them visible
    return groups


_F = TypeVar("_F", GdbFrame, FrameLike)


class _Symbolize(Protocol):
    def __call__(self, pc: int) -> str | None: ...


def function_ranges(path: str | os.PathLike[str]) -> list[tuple[int, int, str]]:
    """(start, end, name) of each sized function symbol of an ELF file, by file address."""
    result = subprocess.run(
        ["nm", "-S", "-C", "--defined-only", os.fspath(path)], capture_output=True, text=True
    )
    ranges = []
    for line in result.stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "TtWw":
            start, size = int(parts[0], 16), int(parts[1], 16)
            ranges.append((start, start + size, parts[3]))
    return ranges


def read_build_id(path: str | os.PathLike[str]) -> str | None:
    notes = subprocess.run(
        ["readelf", "-n", os.fspath(path)], capture_output=True, text=True
    ).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", notes)
    return match.group(1) if match else None


def _same_name(item: str, needle: str) -> bool:
    """Equal, or ``item`` an inlined frame's short DWARF name for ``needle`` (rule 6)."""
    if item == needle:
        return True
    return "::" not in _strip_parameters(item) and _inlined_name_matches(needle, item)


def is_subsequence(
    needles: Sequence[str], haystack: Sequence[str], same: Callable[[str, str], bool] | None = None
) -> bool:
    """Whether ``needles`` appear in ``haystack`` in this order (not necessarily adjacent).

    ``same(needle, item)`` says whether an item is the needle (default: equal).
    """
    iterator = iter(haystack)
    return all(
        any((same(item, needle) if same else _same_name(item, needle)) for item in iterator)
        for needle in needles
    )


CORE_TIMEOUT = 60.0


# -- making cores --------------------------------------------------------------------


def unlimited_core() -> None:
    """In a child before exec: no limit on the size of its core."""
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def core_pattern() -> str:
    return Path("/proc/sys/kernel/core_pattern").read_text().strip()


def kernel_writes_cores_here() -> bool:
    """Whether the kernel writes cores as files in the crashing process's directory."""
    pattern = core_pattern()
    return bool(pattern) and not pattern.startswith("|") and "/" not in pattern


@dataclass
class CoreCrash:
    """A program run until it died of a signal, and the core it left."""

    core: Path
    exe: Path
    argv: list[str]
    by: str
    """``kernel`` or ``gdb``: who wrote the core."""


def crash_into_core(argv: list[str], workdir: Path) -> CoreCrash:
    """Run ``argv`` until it dies of a signal; its core, written in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    if kernel_writes_cores_here():
        before = set(workdir.iterdir())
        result = subprocess.run(
            argv,
            cwd=workdir,
            preexec_fn=unlimited_core,
            capture_output=True,
            text=True,
            timeout=CORE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode < 0, f"{argv} did not die of a signal: {result}"
        prefix = core_pattern().split("%", 1)[0]
        new = [p for p in set(workdir.iterdir()) - before if p.name.startswith(prefix)]
        if len(new) == 1:
            return CoreCrash(new[0], Path(argv[0]), argv, "kernel")
    return gdb_core_at_signal(argv, workdir)


def gdb_core_at_signal(argv: list[str], workdir: Path) -> CoreCrash:
    """Run ``argv`` under gdb and write the core with gcore when the fatal signal arrives."""
    workdir.mkdir(parents=True, exist_ok=True)
    core = workdir / "core.gdb"
    result = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "run", "-ex", f"gcore {core}", "--args", *argv],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=CORE_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert core.exists(), f"gdb wrote no core:\n{result.stdout}\n{result.stderr}"
    return CoreCrash(core, Path(argv[0]), argv, "gdb")


def gcore_of_live(argv: list[str], workdir: Path, threads: int) -> tuple[Path, list[int], int]:
    """Start ``argv`` (core_crash.c's protocol), write a core with gdb's gcore, kill it.

    Returns the core, the worker tids the program reported and its pid.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    core = workdir / "core.gcore"
    process = subprocess.Popen(
        argv, cwd=workdir, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    timer = threading.Timer(CORE_TIMEOUT, process.kill)  # bounds the wait for "ready"
    timer.start()
    try:
        assert process.stdout is not None
        tids = []
        for line in process.stdout:
            if line.startswith("thread "):
                tids.append(int(line.split()[-1]))  # "thread TID" or "thread NAME TID"
            if line.strip() == "ready":
                break
        assert len(tids) == threads, f"the program reported {tids}"
        wait_parked(process.pid)  # every thread in its pause() or poll()
        subprocess.run(
            ["gdb", "-batch", "-nx", "-p", str(process.pid), "-ex", f"gcore {core}"],
            capture_output=True,
            timeout=CORE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=True,
        )
        return core, tids, process.pid
    finally:
        timer.cancel()
        process.kill()
        process.wait(timeout=CORE_TIMEOUT)


@dataclass
class GdbCore:
    threads: dict[int, GdbThread]
    text: str
    siginfo: dict[str, int]


_SIGINFO_PYTHON = """
try:
    next(t for t in gdb.selected_inferior().threads() if t.num == 1).switch()
    si = gdb.parse_and_eval('$_siginfo')
    print('RH-SIGINFO', int(si['si_signo']), int(si['si_code']),
          int(si['_sifields']['_sigfault']['si_addr']))
except gdb.error:
    pass
"""


def gdb_on_core(exe: Path, core: Path) -> GdbCore:
    """gdb's ``thread apply all bt`` of a core (with frame kinds) and its ``$_siginfo``."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(_GDB_PYTHON + _SIGINFO_PYTHON)
    try:
        argv = [
            "gdb", "-batch", "-nx",
            "-ex", "set pagination off",
            "-ex", "set width 0",
            "-ex", "set print frame-arguments none",
            "-ex", "set print frame-info location-and-address",
            "-ex", "set backtrace past-main on",
            "-ex", "thread apply all bt",
            "-x", script.name,
            str(exe), str(core),
        ]  # fmt: skip
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=CORE_TIMEOUT, stdin=subprocess.DEVNULL
        )
    finally:
        os.unlink(script.name)
    siginfo: dict[str, int] = {}
    for line in result.stdout.splitlines():
        if line.startswith("RH-SIGINFO "):
            signo, code, address = (int(x) for x in line.split()[1:])
            siginfo = {"signo": signo, "code": code, "address": address & (2**64 - 1)}
    threads = parse_gdb_backtraces(result.stdout)
    assert threads, f"gdb printed no threads:\n{result.stdout}\n{result.stderr}"
    return GdbCore(threads, result.stdout, siginfo)


def check_against_unwinder(target: Target, tid: int, backtrace: Backtrace) -> None:
    """Every frame of a summarised (deep) backtrace is the frame the plain unwinder finds."""
    thread = target.thread(tid)
    assert thread.registers is not None
    raw, end, _ = target._unwinder.unwind(thread.registers, max_frames=len(backtrace) + 10)
    assert end is backtrace.end
    assert [(frame.pc, frame.sp) for frame in raw] == [(frame.pc, frame.sp) for frame in backtrace]
