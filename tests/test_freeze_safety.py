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
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from helpers import HeartbeatProgram, build_heartbeat, thread_state, wait_until

WORKERS = 48  # + main + heartbeat = 50 threads
CAPTURES = 200
ROUNDS = 30  # at least: 10 of each signal
BUDGET = 600.0  # seconds for the whole signal test: a bound against a hang

# The driver: freeze(pid) in a loop, one "." per capture on stdout.
#   argv: pid, modes (comma-separated), count (0: until killed)
#   "slow": 30-100 ms more inside the frozen section (long enough to be hit by a
#     signal on a busy machine);
#   "survive": catch KeyboardInterrupt and SIGTERM (as a long-running program
#     using redhand would), say "caught" and stay alive without capturing;
#   "fail": every other capture raises inside the frozen section;
#   "no-detach": the tracer thread ends without detaching anything.
DRIVER = r"""
import os, random, signal, sys, time
import redhand.proc.freeze
# Python leaves SIGINT ignored when it starts so (a test run from a background
# job): this driver must feel it.
signal.signal(signal.SIGINT, signal.default_int_handler)
freeze_module = sys.modules["redhand.proc.freeze"]
pid, modes, count = int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
rng = random.Random(pid)
real_copy = freeze_module._copy_stacks
calls = []

def copy(capture):
    calls.append(1)
    if "slow" in modes:
        time.sleep(rng.uniform(0.03, 0.1))
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


def read_line(process: subprocess.Popen[bytes], timeout: float) -> bytes:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else b""


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeartbeatProgram]:
    if os.geteuid() != 0:
        pytest.fail("these tests trace processes: run them as root")
    directory = tmp_path_factory.mktemp("safety")
    with HeartbeatProgram(build_heartbeat(directory), directory / "heartbeat", WORKERS) as started:
        yield started


def heartbeat_state(target: HeartbeatProgram) -> str | None:
    return thread_state(target.pid, target.tid_named("heartbeat"))


class Driver:
    def __init__(self, target: HeartbeatProgram, modes: str, count: int = 0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(target.pid), modes, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a KeyboardInterrupt's traceback
        )
        if read_line(self.process, 30) != b"ready\n":
            self.kill()
            pytest.fail(f"the {modes} driver did not start")

    def finish(self, timeout: float = 60.0) -> int:
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


def test_interrupted_captures_never_leave_target_stopped(target: HeartbeatProgram) -> None:
    rng = random.Random(20240611)
    kinds = itertools.cycle([signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
    started = time.monotonic()
    captures = rounds = 0
    while_frozen: dict[int, int] = {signal.SIGINT: 0, signal.SIGTERM: 0, signal.SIGKILL: 0}
    target.assert_running("before")
    # Until each signal has also come while the target was frozen often enough: on a busy
    # machine a slow round's freeze may end between the wait and the signal.
    while captures < CAPTURES or rounds < ROUNDS or min(while_frozen.values()) < ROUNDS // 6:
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
                wait_until(lambda: heartbeat_state(target) == "t", "a freeze", interval=0.0005)
            frozen = heartbeat_state(target) == "t"
            os.kill(driver.process.pid, kind)
            why = f"round {rounds}, {signal.Signals(kind).name}, {modes}, frozen={frozen}"
            if survive:
                # The driver lives on: only redhand's own code can have resumed the target.
                line = read_line(driver.process, 60)
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


def test_exception_inside_frozen_section(target: HeartbeatProgram) -> None:
    driver = Driver(target, "fail", count=40)
    try:
        line = read_line(driver.process, 30)  # one "." per capture, then "done"
        assert line == b"." * 40 + b"done\n"
        target.assert_running("after injected exceptions")
        driver.finish()
        assert driver.process.returncode == 0
    finally:
        driver.kill()


def test_tracer_thread_that_never_detaches(target: HeartbeatProgram) -> None:
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
