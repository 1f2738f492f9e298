"""Readers of /proc/PID: maps, threads, status, stat, names, exe, cmdline.

Every reader raises :class:`~redhand.errors.ProcessNotFound` when the process
(or thread) does not exist and :class:`~redhand.errors.PermissionDenied` when
/proc refuses the read; nothing else is raised for a missing process.
"""

from __future__ import annotations

import errno
import os
import time

from redhand.errors import PermissionDenied, ProcessNotFound
from redhand.proc._record import Record
from redhand.target.model import Mapping

PF_EXITING = 0x00000004  # task->flags (include/linux/sched.h): the thread is exiting
PF_KTHREAD = 0x00200000  # a kernel thread
DELETED_SUFFIX = " (deleted)"
_CHUNK = 1 << 16


def _task_dir(pid: int, tid: int | None = None) -> str:
    return f"/proc/{pid}" if tid is None else f"/proc/{pid}/task/{tid}"


def _read(path: str, pid: int) -> bytes:
    """The whole file, with /proc's failures turned into redhand errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # os-level calls cost half of open().read(); a short read is not the
            # end of a /proc file (seq_file stops at record boundaries).
            chunks = []
            while data := os.read(fd, _CHUNK):
                chunks.append(data)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError) as error:
        raise ProcessNotFound(pid, f"no process with pid {pid}") from error
    except PermissionError as error:
        raise PermissionDenied(
            pid,
            f"cannot read {path}: permission denied",
            hint="run as the process's user or as root",
        ) from error
    except OSError as error:
        # A task that exits while its file is being read can answer ESRCH.
        if error.errno == errno.ESRCH:
            raise ProcessNotFound(pid, f"no process with pid {pid}") from error
        raise


# -- maps --------------------------------------------------------------------------


def _decode_path(raw: bytes) -> str:
    # The kernel escapes a newline in a path as \012 (seq_path's escape set "\n").
    text = os.fsdecode(raw)
    return text.replace("\\012", "\n") if "\\012" in text else text


def parse_maps(data: bytes) -> list[Mapping]:
    """Parse the text of /proc/PID/maps.

    Paths keep spaces, and a mapping of a deleted file keeps the kernel's
    " (deleted)" suffix (see :func:`split_deleted`): the file at that path now,
    if any, is not the one mapped, and its contents are in
    /proc/PID/map_files/START-END.
    """
    mappings: list[Mapping] = []
    append = mappings.append
    for line in data.split(b"\n"):
        if not line:
            continue
        fields = line.split(None, 5)
        start, _, end = fields[0].partition(b"-")
        path = _decode_path(fields[5]) if len(fields) > 5 else None
        append(
            Mapping(
                int(start, 16),
                int(end, 16),
                fields[1].decode(),
                int(fields[2], 16),
                fields[3].decode(),
                int(fields[4]),
                path,
            )
        )
    return mappings


def read_maps(pid: int, tid: int | None = None) -> list[Mapping]:
    """The mappings of a process, in address order.

    Pass a live ``tid`` when the leader has exited (pthread_exit): a zombie
    leader has no memory left to describe, so /proc/PID/maps is empty.
    """
    return parse_maps(_read(f"{_task_dir(pid, tid)}/maps", pid))


def split_deleted(path: str) -> tuple[str, bool]:
    """``("/usr/lib/x.so", True)`` for ``"/usr/lib/x.so (deleted)"``."""
    if path.endswith(DELETED_SUFFIX):
        return path[: -len(DELETED_SUFFIX)], True
    return path, False


# -- threads ----------------------------------------------------------------------


def list_tids(pid: int) -> list[int]:
    """The thread ids of a process, ascending."""
    try:
        names = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError) as error:
        raise ProcessNotFound(pid, f"no process with pid {pid}") from error
    except PermissionError as error:
        raise PermissionDenied(pid, f"cannot list the threads of process {pid}") from error
    return sorted(int(name) for name in names if name.isdigit())


class ProcStat(Record):
    """The fields of /proc/PID/stat (or /proc/PID/task/TID/stat) redhand uses.

    ``state``: R running, S sleeping, D uninterruptible, Z zombie, T stopped,
    t traced, X dead, I idle.  ``flags``: task->flags (PF_*); PF_KTHREAD marks
    a kernel thread.  ``num_threads``: threads of the process, counting exited
    ones not yet reaped.
    """

    __slots__ = ("comm", "flags", "num_threads", "pid", "ppid", "state")

    def __init__(
        self, pid: int, comm: str, state: str, ppid: int, flags: int, num_threads: int
    ) -> None:
        self.pid = pid
        self.comm = comm
        self.state = state
        self.ppid = ppid
        self.flags = flags
        self.num_threads = num_threads

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


def parse_stat(data: bytes) -> ProcStat:
    """Parse a stat line; the comm in parentheses may itself hold ``)`` and spaces."""
    open_paren = data.index(b"(")
    close_paren = data.rindex(b")")
    comm = os.fsdecode(data[open_paren + 1 : close_paren])
    rest = data[close_paren + 2 :].split()
    # rest[0] is field 3 (state), rest[1] field 4 (ppid), rest[6] field 9 (flags),
    # rest[17] field 20 (num_threads).
    return ProcStat(
        int(data[:open_paren]),
        comm,
        rest[0].decode(),
        int(rest[1]),
        int(rest[6]),
        int(rest[17]),
    )


def read_stat(pid: int, tid: int | None = None) -> ProcStat:
    return parse_stat(_read(f"{_task_dir(pid, tid)}/stat", pid if tid is None else tid))


def read_stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """Every field of a stat line after the command name, from field 3 (state) on:
    ``fields[0]`` is the state, ``fields[n - 3]`` stat(5)'s field n."""
    data = _read(f"{_task_dir(pid, tid)}/stat", pid if tid is None else tid)
    return data[data.rindex(b")") + 2 :].decode().split()


def read_meminfo(key: str) -> int | None:
    """A /proc/meminfo figure in bytes (``MemAvailable``), None if it cannot be read."""
    try:
        with open("/proc/meminfo", "rb") as file:
            for line in file:
                name, _, value = line.partition(b":")
                if name == key.encode():
                    return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_status(pid: int, tid: int | None = None) -> dict[str, str]:
    """/proc/PID/status as ``{"Name": "bash", "State": "S (sleeping)", ...}``."""
    text = os.fsdecode(_read(f"{_task_dir(pid, tid)}/status", pid if tid is None else tid))
    status: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            status[key] = value.strip()
    return status


def thread_name(pid: int, tid: int) -> str:
    """The thread's name (comm): at most 15 bytes, set by prctl(PR_SET_NAME)."""
    return os.fsdecode(_read(f"/proc/{pid}/task/{tid}/comm", tid).rstrip(b"\n"))


def thread_names(pid: int) -> dict[int, str]:
    """Every thread's name; threads that exit while being read are left out."""
    names: dict[int, str] = {}
    for tid in list_tids(pid):
        try:
            names[tid] = thread_name(pid, tid)
        except ProcessNotFound:
            continue
    return names


def read_exe(pid: int, tid: int | None = None) -> str | None:
    """The executable's path (with " (deleted)" if replaced); None if unknown (kernel thread)."""
    try:
        return os.readlink(f"{_task_dir(pid, tid)}/exe")
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}"):
            raise ProcessNotFound(pid, f"no process with pid {pid}") from None
        return None
    except ProcessLookupError as error:
        raise ProcessNotFound(pid, f"no process with pid {pid}") from error
    except PermissionError:
        return None


def read_cmdline(pid: int, tid: int | None = None) -> list[str]:
    """The arguments; empty for kernel threads and zombies."""
    data = _read(f"{_task_dir(pid, tid)}/cmdline", pid)
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return [os.fsdecode(arg) for arg in data.split(b"\0")]


def thread_states(pid: int) -> dict[int, str]:
    """The state letter (R, S, D, T, t, Z, ...) of every thread of ``pid``; {} when it is gone."""
    states: dict[int, str] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return states
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        states[int(tid)] = chr(data[data.rindex(b")") + 2])
    return states


def wait_all_stopped(pid: int, timeout: float) -> bool:
    """Wait until every thread of ``pid`` is stopped (T, t) or dead; False at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        states = thread_states(pid)
        if all(state in "TtZX" for state in states.values()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0001)


def has_process(pid: int) -> bool:
    """Whether /proc knows ``pid`` (a process or a thread, alive or a zombie)."""
    return os.path.exists(f"/proc/{pid}")


def is_kernel_thread(pid: int) -> bool:
    return read_stat(pid).is_kernel_thread


def is_zombie(pid: int) -> bool:
    """True when the process has exited and waits to be reaped (state Z or X)."""
    return read_stat(pid).state in ("Z", "X")


def tracer_pid(pid: int, tid: int | None = None) -> int:
    """The pid of the process tracing ``pid`` (its thread ``tid``), 0 if none."""
    return int(read_status(pid, tid).get("TracerPid", "0"))


def comm_of(pid: int) -> str | None:
    """The name of any process, or None if it cannot be read (for messages)."""
    try:
        return os.fsdecode(_read(f"/proc/{pid}/comm", pid).rstrip(b"\n"))
    except (ProcessNotFound, PermissionDenied, OSError):
        return None
