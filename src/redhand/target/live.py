"""A live process as a Target: freeze, copy, resume; the slow work comes after.

The process is stopped only while :func:`redhand.proc.freeze.freeze` copies
every thread's registers and the used part of its stack.  Unwinding runs on
that copy.  Reads outside the copy (code, read-only data, a signal frame on
an alternate stack) go to the live process, which by then runs again: for
code and read-only data that is the same thing; for writable memory it is
newer than the snapshot, which the unwinder tolerates (it validates every
address it is given).
"""

from __future__ import annotations

import os
import time

from redhand.proc.freeze import Snapshot, freeze
from redhand.proc.ptrace import LiveMemory
from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS
from redhand.target.memory import RegionMemory
from redhand.target.model import Mapping
from redhand.target.module import (
    VDSO,
    Module,
    ModuleMap,
    group_file_mappings,
    live_open_path,
    vdso_module,
)
from redhand.target.target import Target, Thread

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from redhand.target.unpacked import Placement

DEFAULT_STACK_BYTES = 1 << 20


def attach(
    pid: int,
    *,
    threads: Collection[int] | None = None,
    stack_bytes: int = DEFAULT_STACK_BYTES,
    debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
    source: bool = True,
    inline: bool = True,
) -> Target:
    """Capture a live process and return it as a :class:`Target`.

    The process is frozen while registers and stack bytes are copied, then
    resumes; ``target.frozen_ns`` says for how long.  ``threads`` limits the
    capture to some tids; ``stack_bytes`` bounds the bytes copied per thread.
    ``source`` gives frames file:line:column from DWARF (through drgn) and
    ``inline`` the calls inlined at each pc as frames of their own.
    """
    snapshot = freeze(pid, stack_bytes=stack_bytes, tids=threads)
    target = target_from_snapshot(snapshot, debug_dirs=debug_dirs)
    target.source_lines = source
    target.inline = inline
    return target


def target_from_snapshot(
    snapshot: Snapshot,
    *,
    debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
    exe: str | None = None,
) -> Target:
    """The Target of a frozen process's snapshot.

    ``exe`` is an unpacked copy of a packed program, matched byte for byte
    to the code the program unpacked into anonymous memory (the process's own
    executable is always read through /proc); why it was not used goes to
    ``target.warnings``.
    """
    started = time.perf_counter()
    pid = snapshot.pid
    live = LiveMemory(pid)
    regions = [t.stack for t in snapshot.threads if t.stack is not None]
    memory = RegionMemory(regions, fallback=live)
    modules = live_modules(pid, snapshot.mappings, live, debug_dirs)
    problem = None
    found = _unpacked(pid, snapshot, exe, live, debug_dirs)
    if found is not None and found.module is not None:
        modules = ModuleMap([*modules, found.module])
    elif exe is not None and (found is None or found.how is None):
        problem = (
            f"--exe {exe} was not used: none of the code of process {pid} that no file "
            "holds is its code (a process's own executable is read through /proc)"
        )
    elif found is not None:
        problem = found.problem
    target = Target(
        pid=pid,
        exe=snapshot.exe,
        cmdline=snapshot.cmdline,
        mappings=snapshot.mappings,
        modules=modules,
        memory=memory,
        source="live",
        frozen_ns=snapshot.frozen_ns,
        timings=snapshot.timings,
    )
    if problem is not None:
        target.warnings.append(problem)
    if found is not None and found.module is not None:
        target.unpacked = found
    for captured in snapshot.threads:
        target.threads.append(
            Thread(
                tid=captured.tid,
                name=captured.name,
                registers=captured.registers,
                target=target,
                state=captured.state,
                problem=captured.error,
            )
        )
    target._add_time("modules", started)
    return target


def _unpacked(
    pid: int, snapshot: Snapshot, exe: str | None, live: LiveMemory, debug_dirs: Sequence[str]
) -> Placement | None:
    """A packed program's code named from ``exe``, or from what upx unpacks of its file."""
    # Looked for only when executable code belongs to no file (a packed program, a JIT):
    # `redhand stack` of anything else imports nothing for it.
    if not any(m.path in (None, "") and "x" in m.perms for m in snapshot.mappings):
        return None
    from redhand.target.unpacked import find_unpacked

    packed = f"/proc/{pid}/exe"
    try:  # its own name when it still is the same file, for the frames' module name
        if snapshot.exe and os.stat(snapshot.exe).st_ino == os.stat(packed).st_ino:
            packed = snapshot.exe
    except OSError:
        pass
    return find_unpacked(exe, packed, snapshot.mappings, live.read, debug_dirs)


def live_modules(
    pid: int, mappings: Sequence[Mapping], live: LiveMemory, debug_dirs: Sequence[str]
) -> ModuleMap:
    modules: list[Module] = []
    for group in group_file_mappings(mappings):
        path = group[0].path
        assert path is not None
        display = path.removesuffix(" (deleted)")
        modules.append(
            Module(
                path=display,
                mappings=group,
                open_path=live_open_path(pid, group[0]),
                debug_dirs=debug_dirs,
            )
        )
    for mapping in mappings:
        if mapping.path == VDSO:
            modules.append(vdso_module(mapping, live.read, debug_dirs))
    return ModuleMap(modules)


def observe(pid: int, *, debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS) -> Target:
    """A running process as a :class:`Target` without stopping it: its mappings and modules,
    its memory read as it runs (process_vm_readv), and no threads."""
    from redhand.errors import KernelThread, ProcessNotFound, ZombieProcess
    from redhand.proc.procfs import read_cmdline, read_exe, read_maps, read_stat

    if pid <= 0:
        raise ProcessNotFound(pid, f"{pid} is not a process id", hint="give a positive pid")
    stat = read_stat(pid)
    if stat.is_kernel_thread:
        raise KernelThread(pid, f"process {pid} ({stat.comm}) is a kernel thread: no user space")
    if stat.state in ("Z", "X"):
        raise ZombieProcess(pid, f"process {pid} ({stat.comm}) is a zombie: it has exited")
    mappings = read_maps(pid)
    live = LiveMemory(pid)
    return Target(
        pid=pid,
        exe=read_exe(pid),
        cmdline=read_cmdline(pid),
        mappings=mappings,
        modules=live_modules(pid, mappings, live, debug_dirs),
        memory=live,
        source="live",
    )
