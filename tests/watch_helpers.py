"""Helpers of the watch tests: the badclose program, redhand watch as a process, BPF listings."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from helpers import compile_c, wait_until

from redhand.capture import bpf

TIMEOUT = 120.0
OUR_PROGRAMS = ("redhand_watch", "redhand_follow")


def redhand(
    *args: str, cwd: Path | None = None, **popen: object
) -> subprocess.CompletedProcess[str]:
    """``redhand ARGS`` to its end, output captured, bounded by :data:`TIMEOUT`."""
    return subprocess.run(
        [sys.executable, "-m", "redhand", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        **popen,  # type: ignore[call-overload]
    )


def build_badclose(directory: Path) -> Path:
    return compile_c("badclose.c", directory, ["-O2", "-g", "-pthread"])


def after_lines(output: str) -> list[tuple[int, int, int]]:
    """(count, tid, errno) of each 'after COUNT tid TID errno E' line badclose printed."""
    found = []
    for line in output.splitlines():
        words = line.split()
        if len(words) == 6 and words[0] == "after":
            found.append((int(words[1]), int(words[3]), int(words[5])))
    return found


class Program:
    """badclose (or another program) started with a pipe on stdin, killed and reaped on exit."""

    def __init__(self, argv: Sequence[str | os.PathLike[str]], **popen: object) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.popen = popen
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Program:
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            **self.popen,  # type: ignore[call-overload]
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise AssertionError(f"{self.argv[0]} ended before it was ready")
            self.lines.append(line)
            if line.strip() == "ready":
                return self
        raise AssertionError(f"{self.argv[0]} was not ready in time")

    def go(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def finish(self) -> tuple[int, str]:
        """Wait for the end: (exit status, everything printed after 'ready')."""
        assert self.process is not None
        out, _err = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, out

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Watcher:
    """``redhand watch ...`` as a process: started, waited for its header, ended by pid."""

    def __init__(self, args: Sequence[str], *, cwd: Path | None = None, **popen: object) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.popen = popen
        self.process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.stdout = ""
        self.stderr = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Watcher:
        self._stderr = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "redhand", "watch", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=self.cwd,
            **self.popen,  # type: ignore[call-overload]
        )
        return self

    def header(self) -> str:
        """Wait until redhand says it is watching (the programs are attached)."""
        assert self._stderr is not None and self.process is not None

        def said() -> bool:
            assert self._stderr is not None and self.process is not None
            self._stderr.seek(0)
            text = self._stderr.read()
            if self.process.poll() is not None:
                raise AssertionError(f"redhand watch ended early: {text}")
            return "watching" in text

        wait_until(said, "redhand watch to start watching", TIMEOUT)
        self._stderr.seek(0)
        return self._stderr.read()

    def finish(self) -> int:
        assert self.process is not None and self._stderr is not None
        self.stdout, _ = self.process.communicate(timeout=TIMEOUT)
        self._stderr.seek(0)
        self.stderr = self._stderr.read()
        return self.process.returncode

    def documents(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._stderr is not None:
            self._stderr.close()


def our_programs() -> list[tuple[int, str]]:
    """BPF programs redhand watch loads, still in the kernel."""
    return [(i, name) for i, name in bpf.list_programs() if name in OUR_PROGRAMS]


def wait_no_programs(before: set[int]) -> None:
    """Every watch program loaded since ``before`` is gone (the kernel frees them soon after)."""
    wait_until(
        lambda: not [i for i, _name in our_programs() if i not in before],
        "redhand's BPF programs to be freed",
        60,
    )


def states(pid: int) -> dict[int, str]:
    found = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                data = Path(f"/proc/{pid}/task/{tid}/stat").read_bytes()
                found[int(tid)] = chr(data[data.rindex(b")") + 2])
    return found


def all_stopped(pid: int) -> bool:
    found = states(pid)
    return bool(found) and all(state in "Tt" for state in found.values())


def frames_of(document: dict[str, object], tid: int) -> list[str]:
    """The function names of one thread's frames in a stack document."""
    for thread in document["threads"]:  # type: ignore[attr-defined]
        if thread["tid"] == tid:
            return [frame["function"] for frame in thread["frames"]]
    raise AssertionError(f"thread {tid} is not in the document")


@contextlib.contextmanager
def world_readable_copy(path: Path) -> Iterator[Path]:
    """A copy of an executable that any user can run (test folders are root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="redhand-watch-"))
    try:
        directory.chmod(0o755)
        copy = directory / path.name
        copy.write_bytes(path.read_bytes())
        copy.chmod(0o755)
        yield copy
    finally:
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()
