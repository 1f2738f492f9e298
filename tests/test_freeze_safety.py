"""Never leave a target stopped: captures interrupted by SIGINT, SIGTERM and SIGKILL.

A driver process (``python3 -c``, a loop of freeze(pid)) captures a 50-thread
target again and again and is sent signals at random (seeded) moments; some
rounds lengthen the frozen section and signal the driver while the target is
frozen.  After every round no thread of the target may be stopped (t or T)
and its heartbeat must tick.  Faults injected into the driver (an exception
inside the frozen section, a tracer thread that never detaches) must leave
the target running too.
"""

from __future__ import annotations

import itertools
import mmap
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from redhand.errors import ProcessNotFound
from redhand.proc import procfs

PROGRAM = Path(__file__).parent / "programs" / "threads_heartbeat.c"
WORKERS = 48  # + main + heartbeat = 50 threads
CAPTURES = 200
ROUNDS = 30  # at least: 10 of each signal
BUDGET = 50.0  # seconds for the whole signal test

# The driver: freeze(pid) in a loop, one "." per capture on stdout.
#   argv: pid, modes (comma-separated), count (0: until killed)
#   "slow": 3-20 ms more inside the frozen section;
#   "survive": catch KeyboardInterrupt and SIGTERM (as a long-running program
#     using redhand would), say "caught" and stay alive without capturing;
#   "fail": every other capture raises inside the frozen section;
#   "no-detach": the tracer thread ends without detaching anything.
DRIVER = r"""
import os, random, signal, sys, time
import redhand.proc.freeze
freeze_module = sys.modules["redhand.proc.freeze"]
pid, modes, count = int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
rng = random.Random(pid)
real_copy = freeze_module._copy_stacks
calls = []

def copy(capture):
    calls.append(1)
    if "slow" in modes:
        time.sleep(rng.uniform(0.003, 0.02))
    if "fail" in modes and len(calls) % 2:
        raise RuntimeError("injected fault inside the frozen section")
    real_copy(capture)

def on_sigterm(signum, frame):
    raise SystemExit("SIGTERM")

freeze_module._copy_stacks = copy
if "no-detach" in modes:
    freeze_module._Capture._detach_all = lambda capture: None
if "survive" in modes:
    signal.signal(signal.SIGTERM, on_sigterm)
os.write(1, b"ready\n")
done = 0
try:
    while count == 0 or done < count:
        try:
            freeze_module.freeze(pid)
        except RuntimeError:
            pass
        done += 1
        os.write(1, b".")
except (KeyboardInterrupt, SystemExit):
    if "survive" not in modes:
        raise
    os.write(1, b"caught\n")
else:
    os.write(1, b"done\n")
sys.stdin.read()
"""


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` (a condition on another process) until true, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


def read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else b""


class Target:
    def __init__(self, exe: Path, heartbeat_path: Path) -> None:
        self.process = subprocess.Popen(
            [str(exe), str(WORKERS), str(heartbeat_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        if read_line(self.process, 30) != b"ready\n":
            pytest.fail("the target did not say ready")
        with open(heartbeat_path, "r+b") as file:
            self._map = mmap.mmap(file.fileno(), 72)
        self.heartbeat = next(
            tid for tid in procfs.list_tids(self.pid) if self.state_of(tid)[0] == "heartbeat"
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def state_of(self, tid: int) -> tuple[str, str]:
        stat = procfs.read_stat(self.pid, tid)
        return stat.comm, stat.state

    def stopped(self) -> list[tuple[int, str, str]]:
        found = []
        for tid in procfs.list_tids(self.pid):
            try:
                name, state = self.state_of(tid)
            except ProcessNotFound:
                continue
            if state in ("t", "T"):
                found.append((tid, name, state))
        return found

    def ticks(self) -> int:
        value: int = struct.unpack_from("<Q", self._map, 0)[0]
        return value

    def assert_running(self, why: str) -> None:
        """No thread stopped, nothing traces it, and the heartbeat ticks."""
        stopped = self.stopped()
        assert stopped == [], f"{why}: threads left stopped: {stopped}"
        assert procfs.tracer_pid(self.pid) == 0, why
        start = self.ticks()
        wait_until(lambda: self.ticks() >= start + 3, f"the heartbeat to tick ({why})", 5)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._map.close()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing: apt-get install gcc (or run bash tests/run.sh)")
    if os.geteuid() != 0:
        pytest.fail("these tests trace processes: run them as root")
    directory = tmp_path_factory.mktemp("safety")
    exe = directory / "threads_heartbeat"
    subprocess.run(
        [gcc, "-O1", "-g", "-pthread", "-o", str(exe), str(PROGRAM)], check=True, timeout=120
    )
    started = Target(exe, directory / "heartbeat")
    try:
        yield started
    finally:
        started.close()


class Driver:
    def __init__(self, target: Target, modes: str, count: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(target.pid), modes, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a KeyboardInterrupt's traceback
        )
        if read_line(self.process, 30) != b"ready\n":
            self.kill()
            pytest.fail(f"the {modes} driver did not start")

    def finish(self, timeout: float = 10.0) -> int:
        """Close its stdin, wait for it to end; the number of captures it printed."""
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the driver did not end")
        return output.count(b".")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


def test_interrupted_captures_never_leave_target_stopped(target: Target) -> None:
    rng = random.Random(20240611)
    kinds = itertools.cycle([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
    started = time.monotonic()
    captures = rounds = 0
    while_frozen: dict[int, int] = {signal.SIGINT: 0, signal.SIGTERM: 0, signal.SIGKILL: 0}
    target.assert_running("before")
    while captures < CAPTURES or rounds < ROUNDS:
        assert time.monotonic() - started < BUDGET, f"{rounds} rounds, {captures} captures"
        kind = next(kinds)
        slow = rounds % 2 == 1
        survive = kind != signal.SIGKILL and (rounds // 3) % 2 == 1
        modes = ["slow" if slow else "plain"] + (["survive"] if survive else [])
        driver = Driver(target, ",".join(modes))
        try:
            time.sleep(rng.uniform(0.0, 0.12))  # a random moment, not a readiness wait
            if slow:
                # Hit the frozen section: wait for the heartbeat to be stopped.
                wait_until(lambda: target.state_of(target.heartbeat)[1] == "t", "a freeze", 5)
            frozen = target.state_of(target.heartbeat)[1] == "t"
            os.kill(driver.process.pid, kind)
            why = f"round {rounds}, {signal.Signals(kind).name}, {modes}, frozen={frozen}"
            if survive:
                # The driver lives on: only redhand's own code can have resumed the target.
                line = read_line(driver.process, 10)
                assert line.endswith(b"caught\n"), why
                captures += line.count(b".")
                target.assert_running(why)
                assert driver.process.poll() is None, why
            captures += driver.finish()
        finally:
            driver.kill()
        while_frozen[kind] += frozen
        rounds += 1
        target.assert_running(why)
    elapsed = time.monotonic() - started
    print(f"{rounds} rounds, {captures} captures, while frozen {while_frozen}, {elapsed:.1f} s")
    assert captures >= CAPTURES
    # Every slow round was signalled while the target was frozen.
    assert all(count >= ROUNDS // 6 for count in while_frozen.values()), while_frozen


def test_exception_inside_frozen_section(target: Target) -> None:
    driver = Driver(target, "fail", count=40)
    try:
        line = read_line(driver.process, 30)  # one "." per capture, then "done"
        assert line == b"." * 40 + b"done\n"
        target.assert_running("after injected exceptions")
        driver.finish()
        assert driver.process.returncode == 0
    finally:
        driver.kill()


def test_tracer_thread_that_never_detaches(target: Target) -> None:
    """When the tracer thread ends, the kernel lets every thread it stopped run again."""
    driver = Driver(target, "no-detach", count=10)
    try:
        assert read_line(driver.process, 30) == b"." * 10 + b"done\n"
        assert driver.process.poll() is None  # redhand lives on; only its tracer thread ended
        target.assert_running("after captures that never detached")
    finally:
        driver.kill()


_RAISING_HANDLER = r"""
import _thread, signal, sys, time
from redhand.proc import freeze

class Alarm(Exception):
    pass

def handler(signum, frame):
    raise Alarm("alarm")

signal.signal(signal.SIGUSR1, handler)

def work():
    # A signal Python handles (and the caller's handler raises) while the
    # caller waits for the tracer.
    signal.pthread_kill(_thread.get_ident(), signal.SIGUSR1)
    time.sleep(0.05)

try:
    freeze._run_as_tracer(work)
except Alarm:
    print("raised after the tracer finished")
"""


def test_a_raising_signal_handler_neither_hangs_nor_abandons_the_tracer() -> None:
    """A host's handler that raises while a capture runs: re-raised once the tracer is done."""
    done = subprocess.run(
        [sys.executable, "-c", _RAISING_HANDLER], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "raised after the tracer finished"
