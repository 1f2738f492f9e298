"""redhand: catch native Linux programs red-handed.

``redhand.attach(pid)`` captures a live process and returns a :class:`Target`;
its ``threads`` each have a ``backtrace()``, a sequence of :class:`Frame`.
``redhand.open_core(path)`` reads a core file into the same :class:`Target`;
``redhand.gcore(pid, path)`` writes one of a running process;
``redhand.watch(spec, pid=...)`` waits for an event (a failing system call)
and yields what it caught; ``redhand.run(argv)`` runs a program under a crash
guard and returns its crash reports and its status; ``redhand.linkage(what)``
reads the dynamic linking of a file, a process or a core (where every GOT slot
points, and whether that is where the dynamic linker would bind it).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.capture.allocs import allocs
    from redhand.capture.gcore import GcoreResult, gcore
    from redhand.capture.run import Run, RunResult, run
    from redhand.capture.watch import Caught, Watch, watch
    from redhand.collect.query import (
        CrashBucket,
        CrashFamily,
        CrashRecord,
        crash_buckets,
        crash_families,
        crash_list,
    )
    from redhand.dynlink import linkage
    from redhand.errors import (
        AlreadyTraced,
        ElfError,
        FileNotFound,
        KernelThread,
        MemoryReadError,
        OutputError,
        PermissionDenied,
        ProcessError,
        ProcessExited,
        ProcessNotFound,
        RedhandError,
        UnsupportedElf,
        ZombieProcess,
    )
    from redhand.target.core import open_core
    from redhand.target.live import attach
    from redhand.target.model import Backtrace, EndReason, Frame, Mapping, Registers, Trust
    from redhand.target.module import Module
    from redhand.target.target import Target, Thread

# Everything is imported on first use: `import redhand` (and so the start of
# the `redhand` command, which must be ready for a Ctrl-C at once) costs
# nothing, and the model and the errors are usable without the live-process
# and ELF machinery.
_ERRORS = "redhand.errors"
_MODEL = "redhand.target.model"
_LAZY = {
    "AlreadyTraced": _ERRORS,
    "ElfError": _ERRORS,
    "FileNotFound": _ERRORS,
    "KernelThread": _ERRORS,
    "MemoryReadError": _ERRORS,
    "OutputError": _ERRORS,
    "PermissionDenied": _ERRORS,
    "ProcessError": _ERRORS,
    "ProcessExited": _ERRORS,
    "ProcessNotFound": _ERRORS,
    "RedhandError": _ERRORS,
    "UnsupportedElf": _ERRORS,
    "ZombieProcess": _ERRORS,
    "Backtrace": _MODEL,
    "EndReason": _MODEL,
    "Frame": _MODEL,
    "Mapping": _MODEL,
    "Registers": _MODEL,
    "Trust": _MODEL,
    "attach": "redhand.target.live",
    "gcore": "redhand.capture.gcore",
    "watch": "redhand.capture.watch",
    "run": "redhand.capture.run",
    "Run": "redhand.capture.run",
    "RunResult": "redhand.capture.run",
    "Watch": "redhand.capture.watch",
    "Caught": "redhand.capture.watch",
    "GcoreResult": "redhand.capture.gcore",
    "open_core": "redhand.target.core",
    "linkage": "redhand.dynlink",
    "allocs": "redhand.capture.allocs",
    "crash_buckets": "redhand.collect.query",
    "crash_list": "redhand.collect.query",
    "crash_families": "redhand.collect.query",
    "CrashBucket": "redhand.collect.query",
    "CrashFamily": "redhand.collect.query",
    "CrashRecord": "redhand.collect.query",
    "Module": "redhand.target.module",
    "Target": "redhand.target.target",
    "Thread": "redhand.target.target",
}


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'redhand' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "AlreadyTraced",
    "Backtrace",
    "Caught",
    "CrashBucket",
    "CrashFamily",
    "CrashRecord",
    "ElfError",
    "EndReason",
    "FileNotFound",
    "Frame",
    "GcoreResult",
    "KernelThread",
    "Mapping",
    "MemoryReadError",
    "Module",
    "OutputError",
    "PermissionDenied",
    "ProcessError",
    "ProcessExited",
    "ProcessNotFound",
    "RedhandError",
    "Registers",
    "Run",
    "RunResult",
    "Target",
    "Thread",
    "Trust",
    "UnsupportedElf",
    "Watch",
    "ZombieProcess",
    "__version__",
    "allocs",
    "attach",
    "crash_buckets",
    "crash_families",
    "crash_list",
    "gcore",
    "linkage",
    "open_core",
    "run",
    "watch",
]
