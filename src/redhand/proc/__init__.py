"""The live process: ptrace and process_vm_readv through ctypes, /proc readers, the freeze.

``redhand.proc.freeze.freeze(pid)`` is the entry point; the function is not
re-exported here, so that ``redhand.proc.freeze`` stays the module.
"""

from __future__ import annotations

from redhand.proc.checks import check_process
from redhand.proc.freeze import Snapshot, ThreadSnapshot
from redhand.proc.ptrace import LiveMemory

__all__ = ["LiveMemory", "Snapshot", "ThreadSnapshot", "check_process"]
