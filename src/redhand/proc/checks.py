"""Can this pid be traced?  The pre-checks, and why ptrace was refused.

:func:`check_process` raises the error that best names the problem before
anything is stopped.  :func:`permission_error` explains a refusal after the
fact (an EPERM from PTRACE_SEIZE): Yama's ptrace_scope, a missing
CAP_SYS_PTRACE, another user's process, a process that is not dumpable.
"""

from __future__ import annotations

import os

from redhand.errors import (
    AlreadyTraced,
    KernelThread,
    PermissionDenied,
    ProcessError,
    ProcessNotFound,
    ZombieProcess,
)
from redhand.proc import procfs

CAP_SYS_PTRACE = 19
YAMA_SCOPE_PATH = "/proc/sys/kernel/yama/ptrace_scope"


def describe(pid: int) -> str:
    """``process 1234 (name)`` for messages; the name is left out when unreadable."""
    name = procfs.comm_of(pid)
    return f"process {pid} ({name})" if name else f"process {pid}"


def yama_scope() -> int | None:
    """kernel.yama.ptrace_scope, or None when Yama is not active."""
    try:
        with open(YAMA_SCOPE_PATH, "rb") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def has_cap_sys_ptrace() -> bool:
    """Whether redhand's effective capabilities include CAP_SYS_PTRACE."""
    try:
        capabilities = int(procfs.read_status(os.getpid()).get("CapEff", "0"), 16)
    except (ProcessNotFound, PermissionDenied, ValueError):
        return os.geteuid() == 0
    return bool(capabilities >> CAP_SYS_PTRACE & 1)


def _is_descendant(pid: int, ancestor: int) -> bool:
    seen = 0
    while pid > 1 and seen < 4096:
        if pid == ancestor:
            return True
        try:
            pid = procfs.read_stat(pid).ppid
        except (ProcessNotFound, PermissionDenied):
            return False
        seen += 1
    return pid == ancestor


def _ids(status: dict[str, str], key: str) -> list[int]:
    try:
        return [int(value) for value in status.get(key, "").split()]
    except ValueError:
        return []


def permission_problem(pid: int, status: dict[str, str] | None = None) -> tuple[str, str, bool]:
    """Why tracing ``pid`` is or would be refused: ``(reason, hint, certain)``.

    ``certain`` is False when what is visible only probably forbids it (Yama
    scope 1 lets a target name its tracer with prctl(PR_SET_PTRACER)) or when
    nothing visible explains it (an LSM or a seccomp filter may).
    """
    capable = has_cap_sys_ptrace()
    if status is None:
        try:
            status = procfs.read_status(pid)
        except (ProcessNotFound, PermissionDenied):
            status = {}
    scope = yama_scope()
    if scope == 3:
        return (
            "kernel.yama.ptrace_scope is 3: ptrace is disabled for everyone",
            "only a reboot can lower ptrace_scope from 3",
            True,
        )
    if scope == 2 and not capable:
        return (
            "kernel.yama.ptrace_scope is 2: only a process with CAP_SYS_PTRACE may trace",
            "run redhand as root",
            True,
        )
    if not capable:
        uid, gid = os.getuid(), os.getgid()
        uids, gids = _ids(status, "Uid")[:3], _ids(status, "Gid")[:3]
        if uids and any(value != uid for value in uids):
            owner = uids[1]
            return (
                f"it runs as uid {owner} and redhand as uid {uid}, without CAP_SYS_PTRACE",
                f"run redhand as root or as uid {owner}",
                True,
            )
        if gids and any(value != gid for value in gids):
            group = gids[1]
            return (
                f"it runs as gid {group} and redhand as gid {gid}, without CAP_SYS_PTRACE",
                f"run redhand as root or with gid {group}",
                True,
            )
        # The files in /proc/PID of a process that is not dumpable belong to root
        # (the directory itself may keep the process's uid).
        try:
            files_owner: int | None = os.stat(f"/proc/{pid}/stat").st_uid
        except OSError:
            files_owner = None
        if uids and files_owner is not None and files_owner != uids[1]:
            return (
                "it is not dumpable (a setuid or setgid program, or prctl(PR_SET_DUMPABLE, 0)), "
                "and redhand lacks CAP_SYS_PTRACE",
                "run redhand as root",
                True,
            )
        if scope == 1 and not _is_descendant(pid, os.getpid()):
            return (
                "kernel.yama.ptrace_scope is 1: only a parent process may trace it",
                "run redhand as root, or allow tracing with `sysctl kernel.yama.ptrace_scope=0`",
                False,
            )
    return (
        "the kernel refused ptrace (an LSM such as SELinux or AppArmor, or a seccomp filter)",
        "check the security policy confining redhand or the process",
        False,
    )


def permission_error(pid: int) -> PermissionDenied:
    """The error for an EPERM from PTRACE_SEIZE on ``pid``, saying why."""
    reason, hint, _ = permission_problem(pid)
    return PermissionDenied(pid, f"cannot trace {describe(pid)}: {reason}", hint=hint)


def already_traced_error(pid: int, tracer: int) -> AlreadyTraced:
    """``tracer`` is a TracerPid: the tracing thread; the error names its process."""
    try:  # noqa: SIM105 (no contextlib on the path of `redhand stack`)
        tracer = int(procfs.read_status(tracer).get("Tgid", tracer))
    except (ProcessNotFound, PermissionDenied, ValueError):
        pass
    return AlreadyTraced(
        pid,
        tracer,
        f"{describe(pid)} is already traced by {describe(tracer)}",
        hint="Linux allows one tracer at a time: detach the other tracer "
        "(quit gdb or strace) and try again",
    )


def own_process_error(pid: int) -> ProcessError:
    return ProcessError(
        pid,
        f"process {pid} is redhand itself",
        hint="a process cannot freeze itself; run redhand from another process",
    )


def check_process(pid: int) -> None:
    """Raise the error that says why ``pid`` cannot be captured; return if it can be tried.

    ProcessNotFound (no such process), ProcessError (redhand's own process, or
    a thread id rather than a process id), KernelThread, ZombieProcess,
    AlreadyTraced, PermissionDenied (only when certain; other refusals show up
    when seizing).
    """
    me = os.getpid()
    if pid <= 0:
        raise ProcessNotFound(pid, f"{pid} is not a process id", hint="give a positive pid")
    if pid == me:
        raise own_process_error(pid)
    stat = procfs.read_stat(pid)
    status = procfs.read_status(pid)
    tgid = int(status.get("Tgid", pid))
    if tgid == me:
        raise own_process_error(pid)
    if tgid != pid:
        raise ProcessError(
            pid,
            f"{pid} is a thread of process {tgid}, not a process",
            hint=f"capture process {tgid}; to stop only this thread: "
            f"redhand stack {tgid} --thread {pid}",
        )
    if stat.is_kernel_thread:
        raise KernelThread(
            pid,
            f"process {pid} ({stat.comm}) is a kernel thread: it has no user-space stack",
            hint=f"its kernel stack is in /proc/{pid}/stack (as root)",
        )
    if stat.state in ("Z", "X") and not has_live_thread(pid):
        raise ZombieProcess(
            pid,
            f"process {pid} ({stat.comm}) is a zombie: it has exited and has no threads left",
            hint=f"its parent (process {stat.ppid}) has not reaped it yet; "
            "there is nothing to capture",
        )
    tracer = int(status.get("TracerPid", "0"))
    if tracer:
        raise already_traced_error(pid, tracer)
    reason, hint, certain = permission_problem(pid, status)
    if certain:
        raise PermissionDenied(pid, f"cannot trace {describe(pid)}: {reason}", hint=hint)


def has_live_thread(pid: int) -> bool:
    """Whether some thread of ``pid`` has not exited.

    A leader that called pthread_exit is a zombie while its other threads run on;
    a thread on its way out (PF_EXITING, say after a SIGKILL) does not count.
    """
    try:
        tids = procfs.list_tids(pid)
    except (ProcessNotFound, PermissionDenied):
        return False
    for tid in tids:
        try:
            stat = procfs.read_stat(pid, tid)
        except ProcessNotFound:
            continue
        if stat.state not in ("Z", "X") and not stat.flags & procfs.PF_EXITING:
            return True
    return False
