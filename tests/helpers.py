"""Test helpers: build tiny programs, run them as live targets, make cores of them.

gdb, the oracle for ``redhand stack``, and the rules by which its names are compared
with redhand's are in :mod:`gdb_oracle`.
"""

from __future__ import annotations

import hashlib
import mmap
import os
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from gdb_oracle import (
    CORE_TIMEOUT,
    GDB_PYTHON,
    GdbThread,
    build_id_debug_file,
    parse_gdb_backtraces,
)

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
        script.write(GDB_PYTHON + _SIGINFO_PYTHON)
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
