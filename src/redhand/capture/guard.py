"""A small process that outlives redhand to resume what redhand left stopped.

``redhand watch`` stops a process for an action (a stack, a core, a command)
and resumes it afterwards.  If redhand dies in between, even by SIGKILL,
nobody would send the SIGCONT: a process in a group-stop stays stopped
forever.  The guard is forked before the watch starts and reads one pipe;
redhand writes ``hold PID cont`` before it leaves a process stopped and
``release PID`` once it runs again.  When the pipe ends (redhand exited, by
any means) the guard resumes every process still held (or kills it, for
``hold PID kill``: a launched program whose seccomp filter would make its
watched calls fail with ENOSYS once nobody traces it), then exits.

The guard holds a pidfd of each process, so a recycled pid is never signalled.
It ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C at the terminal reaches the
whole process group, and the guard must still be there when redhand ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

__all__ = ["Guard"]

_PR_SET_NAME = 15


class Guard:
    """The guard process and the pipe to it."""

    def __init__(self) -> None:
        read_end, write_end = os.pipe()  # both close on exec
        pid = os.fork()
        if pid == 0:  # pragma: no cover (runs in the child; tested through watch)
            try:
                os.close(write_end)
                _serve(read_end)
            finally:
                os._exit(0)
        os.close(read_end)
        self.pid = pid
        self._pipe: int | None = write_end
        self._held: set[int] = set()

    def hold(self, pid: int, *, kill: bool = False) -> None:
        """``pid`` is stopped by redhand: resume it (or kill it) if redhand dies now."""
        self._held.add(pid)
        self._send(f"hold {pid} {'kill' if kill else 'cont'}\n")

    def release(self, pid: int) -> None:
        """``pid`` runs again (or is none of redhand's business any more)."""
        if pid in self._held:
            self._held.discard(pid)
            self._send(f"release {pid}\n")

    def _send(self, line: str) -> None:
        if self._pipe is None:
            return
        with contextlib.suppress(OSError):  # the guard is gone: nothing to tell it
            os.write(self._pipe, line.encode())

    def close(self) -> None:
        """End the guard: every process still held is resumed by it."""
        if self._pipe is None:
            return
        os.close(self._pipe)
        self._pipe = None
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(pipe: int) -> None:  # pragma: no cover (the child)
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(number, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(_PR_SET_NAME, b"redhand-guard", 0, 0, 0)
    except (OSError, AttributeError):
        pass
    held: dict[int, tuple[int, bool]] = {}  # pid -> (pidfd, kill)
    buffered = b""
    while True:
        try:
            chunk = os.read(pipe, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            words = line.decode().split()
            if len(words) == 3 and words[0] == "hold":
                pid = int(words[1])
                try:
                    held[pid] = (os.pidfd_open(pid), words[2] == "kill")
                except OSError:
                    continue
            elif len(words) == 2 and words[0] == "release":
                entry = held.pop(int(words[1]), None)
                if entry is not None:
                    os.close(entry[0])
    for pidfd, kill in held.values():
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL if kill else signal.SIGCONT)
