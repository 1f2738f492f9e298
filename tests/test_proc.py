"""redhand.proc against real processes: the freeze, its errors, /proc readers, ptrace bindings.

The target is tests/programs/threads_heartbeat.c, compiled here: worker threads
blocked in different calls, one spinning, and a heartbeat thread that records
the longest gap between its ticks (how long it was frozen, as it saw it).
Needs root (or CAP_SYS_PTRACE), gcc and strace.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import mmap
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import HeartbeatProgram, build_heartbeat, thread_state, wait_until

from redhand.errors import (
    AlreadyTraced,
    KernelThread,
    MemoryReadError,
    PermissionDenied,
    ProcessError,
    ProcessExited,
    ProcessNotFound,
    ZombieProcess,
)
from redhand.proc import checks, procfs, ptrace
from redhand.proc.checks import check_process
from redhand.proc.freeze import Snapshot, freeze
from redhand.proc.ptrace import LiveMemory
from redhand.target.model import Mapping, Registers

# The module, not the function that redhand.proc.freeze.freeze also names.
freeze_module = sys.modules["redhand.proc.freeze"]

NOBODY = 65534


# -- the target program ---------------------------------------------------------------

Target = HeartbeatProgram
_serial = itertools.count()


def end_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s, a process this test started; reap it."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def reap(child: int, timeout: float = 30.0) -> None:
    """Reap a child forked by this test, killing it (by pid) if it has not ended in time."""
    deadline = time.monotonic() + timeout
    while os.waitpid(child, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail(f"forked child {child} did not end")
        time.sleep(0.001)


@pytest.fixture(scope="session")
def heartbeat_exe(build_dir: Path) -> Path:
    if os.geteuid() != 0:
        pytest.fail("these tests trace processes: run them as root")
    return build_heartbeat(build_dir)


@pytest.fixture
def start_target(heartbeat_exe: Path, tmp_path: Path) -> Iterator[Callable[..., Target]]:
    targets: list[Target] = []

    def start(workers: int = 18, *options: str) -> Target:
        heartbeat = tmp_path / f"heartbeat-{next(_serial)}"
        target = Target(heartbeat_exe, heartbeat, workers, *options)
        targets.append(target)
        return target

    try:
        yield start
    finally:
        for target in targets:
            target.close()


@pytest.fixture
def target(start_target: Callable[..., Target]) -> Target:
    """20 threads: main, heartbeat, 18 workers (one spinning)."""
    return start_target(18)


def mapping_of(snapshot: Snapshot, address: int) -> Mapping | None:
    for mapping in snapshot.mappings:
        if mapping.contains(address):
            return mapping
    return None


def path_at(snapshot: Snapshot, address: int) -> str | None:
    mapping = mapping_of(snapshot, address)
    assert mapping is not None, hex(address)
    return mapping.path


def syscall_file(pid: int, tid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{tid}/syscall") as file:
        return file.read().split()


def blocked_in(pid: int, tid: int, number: int) -> bool:
    fields = syscall_file(pid, tid)
    return bool(fields) and fields[0] == str(number)


def assert_sane(snapshot: Snapshot) -> None:
    """Every captured thread: rip in executable code, its stack copied from sp-128 up."""
    for thread in snapshot.threads:
        assert thread.registers is not None, thread
        assert thread.stack is not None, thread
        code = mapping_of(snapshot, thread.registers.rip)
        assert code is not None and code.executable, (thread, code)
        stack = mapping_of(snapshot, thread.registers.rsp)
        assert stack is not None and stack.writable and not stack.executable
        start, data = thread.stack
        assert start == max(thread.registers.rsp - 128, stack.start)
        assert start + len(data) == stack.end  # well under 1 MiB for these threads


# -- the freeze ---------------------------------------------------------------------------


def test_freeze_20_threads(target: Target) -> None:
    before = target.states()
    snapshot = freeze(target.pid)
    assert snapshot.pid == target.pid
    assert [thread.tid for thread in snapshot.threads] == sorted(
        before, key=lambda tid: (tid != target.pid, tid)
    )
    assert len(snapshot.threads) == 20
    assert {thread.tid: thread.name for thread in snapshot.threads} == {
        tid: name for tid, (name, _) in before.items()
    }
    names = {thread.name for thread in snapshot.threads}
    assert {"heartbeat", "spin-0", "sleep-1", "read-2", "poll-3", "epoll-4", "cond-5"} <= names
    assert all(thread.error is None for thread in snapshot.threads)
    assert_sane(snapshot)
    main = snapshot.threads[0]
    assert main.registers is not None
    assert path_at(snapshot, main.registers.rsp) == "[stack]"
    for thread in snapshot.threads[1:]:  # pthread stacks: anonymous mappings
        assert thread.registers is not None
        assert path_at(snapshot, thread.registers.rsp) is None
    assert snapshot.exe is not None and os.path.basename(snapshot.exe).startswith(
        "threads_heartbeat"
    )
    assert snapshot.cmdline[1:3] == ["18", str(target.heartbeat_path)]
    assert 0 < snapshot.frozen_ns < 1_000_000_000
    for phase in ("maps", "seize", "interrupt", "wait", "registers", "stacks", "detach"):
        assert phase in snapshot.timings
    states = {thread.name: thread.state for thread in snapshot.threads}
    assert states["read-2"] == "S" and states["heartbeat"] in ("S", "R")
    target.assert_running()


def test_stack_and_registers_of_a_blocked_thread(target: Target) -> None:
    """A thread blocked in read(): registers match /proc's, stack bytes match its memory."""
    tid = target.tid_named("read-2")
    wait_until(lambda: blocked_in(target.pid, tid, 0), "read-2 to block in read")
    snapshot = freeze(target.pid)
    thread = snapshot.thread(tid)
    assert thread.registers is not None and thread.stack is not None
    # /proc/PID/task/TID/syscall: "nr arg1 ... arg6 sp pc" once blocked again
    # (the kernel restarts the interrupted read).
    wait_until(lambda: blocked_in(target.pid, tid, 0), "read-2 to block again")
    fields = syscall_file(target.pid, tid)
    assert fields[0] == "0"
    assert thread.registers.orig_rax == 0  # the read system call
    assert thread.registers.rsp == int(fields[7], 16)
    assert thread.registers.rip == int(fields[8], 16)
    assert thread.registers.rdi == int(fields[1], 16)  # the pipe's fd
    start, data = thread.stack
    # The stack proper ends where the thread's TLS and TCB begin (fs_base points
    # into them); the TCB holds the rseq area, which the kernel rewrites when
    # the thread moves to another CPU, as it may when it runs again.
    below_tls = thread.registers.fs_base - start
    assert 0 < below_tls < len(data)
    with LiveMemory(target.pid) as memory:
        assert memory.read(start, below_tls) == data[:below_tls]
    # The thread is still blocked in the same read, untouched by the freeze.
    assert syscall_file(target.pid, tid) == fields


def test_target_keeps_running(target: Target) -> None:
    before = target.states()
    spins = target.field("spins")
    for _ in range(5):
        freeze(target.pid)
    target.assert_running()
    wait_until(lambda: target.field("spins") > spins + 10, "the spinning thread to spin")
    target.wait_settled()  # the restarted calls
    after = target.states()
    assert set(after) == set(before)
    for tid, (name, state) in before.items():
        if name.startswith(("read", "poll", "cond", "sleep")):
            assert after[tid] == (name, state)


def test_freeze_stops_every_thread_together(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While frozen, no thread runs: the heartbeat cannot tick during a 100 ms copy.

    How long a freeze takes is measured by bench/stack.py, not here.
    """
    real_copy = freeze_module._copy_stacks

    def slow_copy(capture: object) -> None:
        time.sleep(0.1)
        real_copy(capture)

    monkeypatch.setattr(freeze_module, "_copy_stacks", slow_copy)
    snapshots: list[Snapshot] = []
    gap = target.gap_ms_of(lambda: snapshots.append(freeze(target.pid)))
    (snapshot,) = snapshots
    assert len(snapshot.threads) == 20
    assert snapshot.frozen_ns >= 100_000_000
    assert gap >= 100, f"the heartbeat ticked while the process was frozen (gap {gap:.1f} ms)"
    assert_sane(snapshot)
    target.assert_running()


def test_freeze_1000_threads(start_target: Callable[..., Target]) -> None:
    """1,000 threads: every one captured whole, and the process runs on.

    The freeze's cost at this size is measured by bench/stack.py; the
    figures printed here are for the curious reader of a test log.
    """
    target = start_target(998)
    frozen: list[int] = []
    seen: list[float] = []
    snapshots: list[Snapshot] = []

    def capture() -> None:
        snapshots.append(freeze(target.pid))
        frozen.append(snapshots[-1].frozen_ns)

    for _ in range(3):
        seen.append(target.gap_ms_of(capture))
        assert len(snapshots[-1].threads) == 1000
        assert_sane(snapshots[-1])
        target.assert_running()
    print(f"1,000 threads: frozen_ns {sorted(frozen)}, heartbeat gaps (ms) {sorted(seen)}")


def test_threads_starting_and_exiting(start_target: Callable[..., Target]) -> None:
    """Threads created and joined in a loop: every capture is whole and nothing stays stopped."""
    target = start_target(4, "--no-spin", "--churn=4")
    churned = target.field("churned")
    caught = 0
    for count in itertools.count(1):
        snapshot = freeze(target.pid)
        captured = [thread for thread in snapshot.threads if thread.error is None]
        for thread in snapshot.threads:
            assert thread.error is None or "exited" in thread.error, thread
        assert {"heartbeat", "churn-0", "churn-3"} <= {thread.name for thread in captured}
        assert_sane(snapshot.replace_threads(captured))
        # Short-lived threads carry their creator's name.
        caught += sum(thread.name.startswith("churn") for thread in captured) > 4
        if count >= 30 and caught:
            break
        assert count < 300, "no short-lived thread was ever caught"
    target.assert_running()
    wait_until(lambda: target.field("churned") > churned + 100, "threads to come and go")


def test_thread_found_during_capture(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread missing from the first listing is found by the next one and frozen too."""
    hidden = target.tid_named("poll-3")
    real_list_tids = procfs.list_tids
    calls = itertools.count()

    def first_listing_misses_one(pid: int) -> list[int]:
        tids = real_list_tids(pid)
        return [tid for tid in tids if tid != hidden] if next(calls) == 0 else tids

    monkeypatch.setattr(procfs, "list_tids", first_listing_misses_one)
    snapshot = freeze(target.pid)
    thread = snapshot.thread(hidden)
    assert thread.error is None and thread.registers is not None and thread.stack is not None
    assert thread.name == "poll-3"
    assert len(snapshot.threads) == 20
    assert snapshot.timings["rescan"] > 0
    assert_sane(snapshot)
    target.assert_running()


def test_only_requested_threads_are_stopped(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tids, the other threads run on: the heartbeat ticks while read-2 is frozen."""
    tid = target.tid_named("read-2")
    heartbeat = target.tid_named("heartbeat")
    real_copy = freeze_module._copy_stacks
    seen: list[tuple[str | None, str | None]] = []

    def copy_while_checking(capture: object) -> None:
        # Inside the frozen section: the heartbeat keeps ticking, read-2 is stopped.
        target.wait_ticks(5)
        seen.append((thread_state(target.pid, tid), thread_state(target.pid, heartbeat)))
        real_copy(capture)

    monkeypatch.setattr(freeze_module, "_copy_stacks", copy_while_checking)
    snapshot = freeze(target.pid, tids=[tid])
    assert [thread.tid for thread in snapshot.threads] == [tid]
    (states,) = seen
    assert states[0] == "t" and states[1] != "t", states
    assert_sane(snapshot)
    target.assert_running()


def test_unknown_thread_requested(target: Target) -> None:
    with pytest.raises(ProcessNotFound, match="has no thread 1"):
        freeze(target.pid, tids=[1])


def test_stack_bytes_limit(target: Target) -> None:
    snapshot = freeze(target.pid, stack_bytes=256)
    for thread in snapshot.threads:
        assert thread.stack is not None and thread.registers is not None
        assert thread.stack[0] == thread.registers.rsp - 128
        assert len(thread.stack[1]) == 256
    snapshot = freeze(target.pid, stack_bytes=0)
    assert all(t.stack is None and t.registers is not None for t in snapshot.threads)


def test_signal_arriving_while_stopping_is_delivered(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal that stops a seized thread (a signal-delivery stop) is handed back at detach."""
    tid = target.tid_named("read-2")
    real_stop = freeze_module._Capture._interrupt_and_wait

    def signal_first(capture: object, seized: list[int]) -> None:
        if tid in seized:
            _tgkill(target.pid, tid, signal.SIGUSR1)
            # Seized, not yet interrupted: the signal stops it for its tracer.
            wait_until(lambda: procfs.read_stat(target.pid, tid).state == "t", "a signal stop")
        real_stop(capture, seized)

    monkeypatch.setattr(freeze_module._Capture, "_interrupt_and_wait", signal_first)
    snapshot = freeze(target.pid)
    assert snapshot.thread(tid).signal == signal.SIGUSR1
    assert snapshot.thread(tid).registers is not None
    wait_until(lambda: target.field("usr1") == 1, "the SIGUSR1 handler to run")
    target.assert_running()


def _tgkill(pid: int, tid: int, sig: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.syscall(234, pid, tid, sig) != 0:  # SYS_tgkill
        raise OSError(ctypes.get_errno(), "tgkill")


STEALING_HOST = r"""
import os, signal, sys
from redhand.proc.freeze import freeze

stolen = []

def collect_children(signum, frame):  # as supervisors do: reap whatever is waitable
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG | 0x40000000)  # __WALL
        except ChildProcessError:
            return
        if pid == 0:
            return
        stolen.append(pid)

signal.signal(signal.SIGCHLD, collect_children)
for _ in range(5):
    snapshot = freeze(int(sys.argv[1]))
    errors = [thread.error for thread in snapshot.threads if thread.error]
    print(snapshot.timings["total"], len(errors), flush=True)
print("stolen", len(stolen))
"""


def test_host_that_reaps_every_child(target: Target) -> None:
    """A SIGCHLD handler calling waitpid(-1) takes tracees' stop reports; /proc still tells."""
    result = subprocess.run(
        [sys.executable, "-c", STEALING_HOST, str(target.pid)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    *captures, stolen = result.stdout.splitlines()
    assert len(captures) == 5
    for line in captures:
        total, errors = line.split()
        assert errors == "0" and float(total) < 0.5, line  # no wait ran into the timeout
    assert stolen.startswith("stolen ")
    target.assert_running()


def test_stopped_process_stays_stopped(target: Target) -> None:
    """A process stopped by SIGSTOP is captured and left stopped (redhand did not stop it)."""
    os.kill(target.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: len(target.stopped()) == 20, "SIGSTOP to stop every thread")
        snapshot = freeze(target.pid)
        assert {thread.state for thread in snapshot.threads} == {"T"}
        assert_sane(snapshot)
        # Detached, each thread goes back into the group stop (running for an instant).
        wait_until(
            lambda: [state for _, _, state in target.stopped()] == ["T"] * 20,
            "every thread to be stopped again",
        )
    finally:
        os.kill(target.pid, signal.SIGCONT)
    wait_until(lambda: not target.stopped(), "SIGCONT")
    target.assert_running()


def test_thread_that_cannot_stop(start_target: Callable[..., Target]) -> None:
    """A thread in an uninterruptible wait (D) is reported, and not left stopped later."""
    target = start_target(4, "--no-spin", "--vfork-ms=3000")
    tid = target.tid_named("vfork")
    # Just after a vfork began, its child sleeps for 3 s: the thread waits in D.
    vforks = target.field("vforks")
    wait_until(lambda: target.field("vforks") > vforks, "a new vfork")
    wait_until(lambda: procfs.read_stat(target.pid, tid).state == "D", "the vfork wait")
    snapshot = freeze(target.pid, stop_timeout=1.0)
    stuck = snapshot.thread(tid)
    assert stuck.registers is None and stuck.state == "D"
    assert stuck.error is not None and "did not stop within 1000 ms" in stuck.error
    others = [thread for thread in snapshot.threads if thread.tid != tid]
    assert len(others) == 6 and all(thread.error is None for thread in others)
    assert_sane(snapshot.replace_threads(others))
    # The tracer thread has exited and the kernel detached the stuck thread: when
    # its vfork child ends, it goes on instead of stopping for a gone tracer.
    assert procfs.tracer_pid(target.pid, tid) == 0
    vforks = target.field("vforks")
    wait_until(lambda: target.field("vforks") >= vforks + 2, "two more vforks")
    target.assert_running()


def test_leader_that_exited(start_target: Callable[..., Target]) -> None:
    """The main thread called pthread_exit: a zombie leader, the other threads run on."""
    target = start_target(6, "--leader-exits")
    wait_until(lambda: procfs.read_stat(target.pid).state == "Z", "the leader to exit")
    check_process(target.pid)
    snapshot = freeze(target.pid)
    leader = snapshot.threads[0]
    assert leader.tid == target.pid and leader.registers is None
    assert leader.error == "exited before it could be stopped"
    assert len(snapshot.threads) == 8
    assert_sane(snapshot.replace_threads(snapshot.threads[1:]))
    assert snapshot.mappings and snapshot.exe is not None and snapshot.cmdline
    assert snapshot.threads[1].stack is not None
    start, data = snapshot.threads[1].stack
    with LiveMemory(target.pid) as memory:  # reads go through a live thread
        assert len(memory.read(start, len(data))) == len(data)
    target.assert_running()


@pytest.mark.parametrize("when", ["_interrupt_and_wait", "_copy_registers", "_copy_stacks"])
def test_process_exits_during_capture(
    target: Target, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """Killed at three points of the capture: ProcessExited, and its exit status is not taken."""
    owner = freeze_module if when == "_copy_stacks" else freeze_module._Capture
    real = getattr(owner, when)

    def kill_first(*args: object) -> None:
        os.kill(target.pid, signal.SIGKILL)
        # Every thread gone, not only the leader: a thread still exiting keeps
        # the memory readable.
        wait_until(lambda: not checks.has_live_thread(target.pid), "the target to die")
        real(*args)

    monkeypatch.setattr(owner, when, kill_first)
    with pytest.raises(ProcessExited, match="exited during the capture") as caught:
        freeze(target.pid)
    assert caught.value.exit_code == 8
    assert target.process.wait(timeout=10) == -signal.SIGKILL  # still ours to reap


# -- errors ------------------------------------------------------------------------------


def free_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 300, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid")


def test_no_such_process() -> None:
    pid = free_pid()
    with pytest.raises(ProcessNotFound, match=f"no process with pid {pid}") as caught:
        freeze(pid)
    assert caught.value.exit_code == 3 and caught.value.pid == pid
    with pytest.raises(ProcessNotFound):
        check_process(0)


def kernel_thread_pid() -> int:
    for name in sorted(os.listdir("/proc"), key=lambda name: (len(name), name)):
        if name.isdigit():
            try:
                if procfs.read_stat(int(name)).is_kernel_thread:
                    return int(name)
            except ProcessNotFound:
                continue
    pytest.skip("no kernel thread is visible in this pid namespace")


def test_kernel_thread() -> None:
    pid = kernel_thread_pid()
    assert pid == 2 or not os.path.exists("/proc/2")  # kthreadd, when visible
    with pytest.raises(KernelThread, match="is a kernel thread") as caught:
        freeze(pid)
    assert caught.value.exit_code == 6 and caught.value.hint


def test_zombie() -> None:
    child = subprocess.Popen(["true"])
    try:
        wait_until(lambda: procfs.is_zombie(child.pid), "the child to exit")
        with pytest.raises(ZombieProcess, match="is a zombie") as caught:
            freeze(child.pid)
        assert caught.value.exit_code == 7
        assert str(os.getpid()) in (caught.value.hint or "")
    finally:
        child.wait(timeout=10)


def test_already_traced_by_strace(target: Target) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is missing: apt-get install strace")
    tracer = subprocess.Popen([strace, "-qq", "-o", "/dev/null", "-p", str(target.pid)])
    try:
        wait_until(lambda: procfs.tracer_pid(target.pid) == tracer.pid, "strace to attach")
        with pytest.raises(AlreadyTraced) as caught:
            freeze(target.pid)
        error = caught.value
        assert error.tracer == tracer.pid and error.exit_code == 5
        assert f"is already traced by process {tracer.pid} (strace)" in str(error)
    finally:
        end_process(tracer)
    target.assert_running()


def test_one_thread_already_traced(target: Target) -> None:
    """Refused in the middle of seizing: the threads already seized are let go."""
    strace = shutil.which("strace")
    assert strace is not None
    tid = target.tid_named("sleep-1")
    tracer = subprocess.Popen([strace, "-qq", "-o", "/dev/null", "-p", str(tid)])
    try:
        wait_until(lambda: procfs.tracer_pid(target.pid, tid) == tracer.pid, "strace to attach")
        with pytest.raises(AlreadyTraced, match=f"by process {tracer.pid}"):
            freeze(target.pid)
        others = [t for t in procfs.list_tids(target.pid) if t != tid]
        assert all(procfs.tracer_pid(target.pid, t) == 0 for t in others)
        target.assert_running()
    finally:
        end_process(tracer)


def test_already_traced_by_us(target: Target) -> None:
    """Seized by another thread of this process (which then exits: the kernel detaches)."""
    seized = threading.Event()
    release = threading.Event()

    def hold() -> None:
        ptrace.seize(target.pid)
        seized.set()
        release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert seized.wait(10)
        with pytest.raises(AlreadyTraced, match=f"by process {os.getpid()} ") as caught:
            freeze(target.pid)
        assert caught.value.tracer == os.getpid()  # the process, not its tracing thread
    finally:
        release.set()
        holder.join(10)
    wait_until(lambda: procfs.tracer_pid(target.pid) == 0, "the kernel to detach")
    freeze(target.pid)
    target.assert_running()


def test_own_process() -> None:
    with pytest.raises(ProcessError, match="is redhand itself") as caught:
        freeze(os.getpid())
    assert caught.value.exit_code == 9
    # Another thread of this process is refused too.
    started = threading.Event()
    release = threading.Event()
    native: list[int] = []

    def wait() -> None:
        native.append(threading.get_native_id())
        started.set()
        release.wait(10)

    thread = threading.Thread(target=wait)
    thread.start()
    try:
        assert started.wait(10)
        with pytest.raises(ProcessError, match="is redhand itself"):
            check_process(native[0])
    finally:
        release.set()
        thread.join(10)


def test_thread_id_instead_of_pid(target: Target) -> None:
    tid = target.tid_named("cond-5")
    with pytest.raises(ProcessError, match=f"{tid} is a thread of process {target.pid}") as caught:
        freeze(tid)
    assert f"--thread {tid}" in (caught.value.hint or "")


def _as_nobody(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child with uid and gid nobody; its result or error as text."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                result = work()
            except Exception as error:  # reported to the parent
                result = f"{type(error).__name__} {getattr(error, 'exit_code', '')}: {error}"
            os.write(write_end, result.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    try:
        deadline = time.monotonic() + 30
        while select.select([read_end], [], [], max(deadline - time.monotonic(), 0))[0]:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        reap(child)
    return b"".join(chunks).decode()


def test_permission_denied_other_user(target: Target) -> None:
    result = _as_nobody(lambda: str(freeze(target.pid)))
    assert result.startswith("PermissionDenied 4: cannot trace process")
    assert "it runs as uid 0 and redhand as uid 65534, without CAP_SYS_PTRACE" in result
    assert "run redhand as root" in result


def test_permission_denied_not_dumpable() -> None:
    """A process of the same user that is not dumpable (it changed its uid and did not exec)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            os.close(write_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)  # makes it not dumpable (fs.suid_dumpable is 0 or 2)
            os.read(read_end, 1)
        finally:
            os._exit(0)
    os.close(read_end)
    try:
        wait_until(lambda: procfs.read_status(child)["Uid"].split()[0] == str(NOBODY), "setuid")
        result = _as_nobody(lambda: str(freeze(child)))
    finally:
        os.close(write_end)
        reap(child)
    if Path("/proc/sys/fs/suid_dumpable").read_text().strip() == "1":
        pytest.skip("fs.suid_dumpable is 1: processes stay dumpable")
    assert result.startswith("PermissionDenied 4:"), result
    assert "is not dumpable" in result


def test_permission_reasons(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    """How each Yama scope is explained (the setting is read from /proc; this kernel has none)."""
    monkeypatch.setattr(checks, "has_cap_sys_ptrace", lambda: False)
    expected = {
        3: ("ptrace_scope is 3: ptrace is disabled for everyone", True),
        2: ("ptrace_scope is 2: only a process with CAP_SYS_PTRACE may trace", True),
        1: ("ptrace_scope is 1: only a parent process may trace it", False),
    }
    for scope, (reason, certain) in expected.items():
        monkeypatch.setattr(checks, "yama_scope", lambda scope=scope: scope)
        found, hint, sure = checks.permission_problem(os.getppid())
        assert reason in found and sure == certain and hint
    # Our own child is a descendant: scope 1 does not forbid it.
    found, _, sure = checks.permission_problem(target.pid)
    assert "ptrace_scope" not in found and not sure


def test_same_user_is_allowed(heartbeat_exe: Path) -> None:
    """Without CAP_SYS_PTRACE, a process of one's own uid can be captured."""
    directory = Path(tempfile.mkdtemp(prefix="redhand-nobody-", dir="/tmp"))
    try:
        directory.chmod(0o777)  # pytest's own temporary folders are private to root
        exe = directory / heartbeat_exe.name
        shutil.copy(heartbeat_exe, exe)
        process = subprocess.Popen(
            [str(exe), "3", str(directory / "hb"), "--no-spin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
        try:
            assert process.stdout is not None and process.stdout.readline() == b"ready\n"
            result = _as_nobody(lambda: ",".join(t.name for t in freeze(process.pid).threads))
            assert result.startswith("threads_heartbe,heartbeat,"), result
        finally:
            process.kill()
            process.wait(timeout=10)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
    finally:
        shutil.rmtree(directory)


# -- /proc readers ---------------------------------------------------------------------


def test_parse_maps() -> None:
    text = (
        b"55d1c0a00000-55d1c0a1b000 r--p 00000000 fd:01 1234   /usr/bin/my prog\n"
        b"55d1c0a1b000-55d1c0a2b000 r-xp 0001b000 fd:01 1234   /usr/bin/my prog\n"
        b"7f3a1c000000-7f3a1c021000 rw-p 00000000 00:00 0 \n"
        b"7f3a1c200000-7f3a1c228000 r-xp 00028000 fd:01 99     /usr/lib/libx.so (deleted)\n"
        b"7f3a1c300000-7f3a1c301000 rw-s 00000000 00:05 7      /tmp/a\\012b\n"
        b"7fff4709c000-7fff470bd000 rw-p 00000000 00:00 0      [stack]\n"
        b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]\n"
    )
    maps = procfs.parse_maps(text)
    assert len(maps) == 7
    assert maps[0] == Mapping(
        0x55D1C0A00000, 0x55D1C0A1B000, "r--p", 0, "fd:01", 1234, "/usr/bin/my prog"
    )
    assert maps[1].executable and maps[1].offset == 0x1B000 and maps[1].is_file
    assert maps[2].path is None and maps[2].writable
    assert maps[3].path == "/usr/lib/libx.so (deleted)"
    assert procfs.split_deleted(maps[3].path) == ("/usr/lib/libx.so", True)
    assert maps[4].path == "/tmp/a\nb"
    assert maps[5].path == "[stack]" and not maps[5].is_file
    assert maps[6].end == 0xFFFFFFFFFF601000


def test_parse_many_maps() -> None:
    line = b"7f3a1c200000-7f3a1c228000 r-xp 00028000 fd:01 99      /usr/lib/libfoo.so.1\n"
    maps = procfs.parse_maps(line * 3000)
    assert len(maps) == 3000
    assert maps[-1] == maps[0] and maps[0].path == "/usr/lib/libfoo.so.1"


def test_read_maps_of_a_live_process(target: Target) -> None:
    maps = procfs.read_maps(target.pid)
    assert any(m.path == "[stack]" for m in maps)
    assert any(m.path is not None and "threads_heartbeat" in m.path for m in maps)
    assert [m.start for m in maps] == sorted(m.start for m in maps)


def test_parse_stat_with_awkward_names() -> None:
    line = b"4242 (a) (b c) R 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 3 0 1 2 3\n"
    stat = procfs.parse_stat(line)
    assert (stat.pid, stat.comm, stat.state, stat.ppid) == (4242, "a) (b c", "R", 1)
    assert stat.flags == 4194560 and stat.num_threads == 3 and not stat.is_kernel_thread


def test_process_readers(target: Target) -> None:
    pid = target.pid
    args = [str(arg) for arg in target.process.args]  # type: ignore[union-attr]
    assert procfs.read_exe(pid) == os.path.realpath(args[0])
    assert procfs.read_cmdline(pid) == args
    status = procfs.read_status(pid)
    assert status["Name"] == "threads_heartbe" and status["Tgid"] == str(pid)
    assert procfs.tracer_pid(pid) == 0
    assert not procfs.is_kernel_thread(pid) and not procfs.is_zombie(pid)
    names = procfs.thread_names(pid)
    assert names[pid] == "threads_heartbe" and "heartbeat" in names.values()
    assert procfs.list_tids(pid) == sorted(names)
    assert procfs.read_stat(pid).num_threads == 20
    with pytest.raises(ProcessNotFound):
        procfs.read_status(free_pid())
    kernel = kernel_thread_pid()
    assert procfs.read_cmdline(kernel) == [] and procfs.read_exe(kernel) is None


# -- ptrace bindings and memory ----------------------------------------------------------


def test_live_memory(target: Target) -> None:
    maps = procfs.read_maps(target.pid)
    stack = next(m for m in maps if m.path == "[stack]")
    guard = next(m for m in maps if m.perms == "---p")
    with LiveMemory(target.pid) as memory:
        assert len(memory.read(stack.end - 4096, 4096)) == 4096
        assert memory.read(stack.end - 16, 0) == b""
        # process_vm_readv refuses a PROT_NONE page; /proc/PID/mem reads it.
        assert memory.read(guard.start, 64) == bytes(64)
        with pytest.raises(MemoryReadError, match="cannot read 8 bytes at 0x1000"):
            memory.read(0x1000, 8)
        with pytest.raises(MemoryReadError):
            memory.read(stack.end - 8, 16)  # runs off the end of the stack


def test_reading_many_ranges(target: Target) -> None:
    """One process_vm_readv for many ranges; the ones it cannot read go through /proc/PID/mem."""
    maps = procfs.read_maps(target.pid)
    stack = next(m for m in maps if m.path == "[stack]")
    guard = next(m for m in maps if m.perms == "---p")  # PROT_NONE: only /proc/PID/mem reads it
    good = (stack.end - 512, 512)
    ranges = [good, (guard.start, 256), good, (0x1000, 64), *[good] * 1500]
    buffer = mmap.mmap(-1, sum(size for _, size in ranges))
    try:
        got = freeze_module._read_ranges(target.pid, buffer, ranges)
        assert got == [512, 256, 512, 0] + [512] * 1500
        assert buffer[512 : 512 + 256] == bytes(256)
        with LiveMemory(target.pid) as memory:
            assert buffer[:512] == memory.read(*good) == buffer[-512:]
    finally:
        buffer.close()


def test_errno_errors() -> None:
    assert isinstance(ptrace.errno_error(errno.ESRCH, 5, "x"), ProcessNotFound)
    assert isinstance(ptrace.errno_error(errno.EPERM, 5, "x"), PermissionDenied)
    assert isinstance(ptrace.errno_error(errno.EACCES, 5, "x"), PermissionDenied)
    other = ptrace.errno_error(errno.EINVAL, 5, "PTRACE_FOO")
    assert type(other) is ProcessError and "EINVAL" in str(other)
    with pytest.raises(ProcessNotFound):
        ptrace.seize(free_pid())


def test_ptrace_requests(target: Target) -> None:
    """Seize, interrupt, wait, read registers, siginfo and syscall info, detach."""
    tid = target.tid_named("read-2")
    wait_until(lambda: blocked_in(target.pid, tid, 0), "read-2 to block in read")
    results: dict[str, object] = {}

    def trace() -> None:  # in a thread of its own: when it ends, the kernel detaches
        ptrace.seize(tid)
        ptrace.interrupt(tid)
        waited, status = ptrace.waitpid(tid, ptrace.WALL)
        results["stop"] = (waited, os.WIFSTOPPED(status), ptrace.stop_event(status))
        results["registers"] = ptrace.get_registers(tid)
        results["siginfo"] = ptrace.get_siginfo(tid)
        results["syscall"] = ptrace.get_syscall_info(tid)
        ptrace.detach(tid)

    thread = threading.Thread(target=trace)
    thread.start()
    thread.join(10)
    assert results["stop"] == (tid, True, ptrace.PTRACE_EVENT_STOP)
    siginfo = results["siginfo"]
    assert isinstance(siginfo, ptrace.SigInfo) and siginfo.signo == signal.SIGTRAP
    assert siginfo.code == (ptrace.PTRACE_EVENT_STOP << 8) | signal.SIGTRAP
    registers = results["registers"]
    info = results["syscall"]
    assert isinstance(info, ptrace.SyscallInfo) and isinstance(registers, Registers)
    assert info.op == ptrace.PTRACE_SYSCALL_INFO_NONE
    assert info.instruction_pointer == registers.rip
    assert info.stack_pointer == registers.rsp
    assert procfs.tracer_pid(target.pid, tid) == 0
    target.assert_running()
