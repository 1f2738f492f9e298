"""Names for JIT code from a perf map (``/tmp/perf-PID.map``).

JIT compilers (node --perf-basic-prof, LuaJIT, JVM agents such as
perf-map-agent) generate code in anonymous memory, with no ELF file behind it,
and write one line per function they emit::

    START SIZE name

START and SIZE in hex (with or without ``0x``), the name the rest of the line
(it may contain spaces).  A later line for the same range wins (code is
regenerated in place).  The file is read on the first lookup, sorted once;
lines that do not parse are skipped.

A live target's map is ``/tmp/perf-PID.map``; for a process in another mount
namespace (a container), the same path under ``/proc/PID/root``, tried first.
A core's is the map of its pid, under the sysroot if there is one, provided
it was last written no later than the core: a map written after it belongs
to a later process that was given the same pid.
"""

from __future__ import annotations

import os
from bisect import bisect_right


class PerfMap:
    """The functions of one perf map, looked up by address."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._starts: list[int] | None = None
        self._entries: list[tuple[int, int, str]] = []
        self.error: str | None = None
        """Why the file could not be read, once a lookup tried."""

    @classmethod
    def for_pid(cls, pid: int) -> PerfMap | None:
        """The perf map of live process ``pid``, or None when it has none.

        The file as the process sees it (through /proc/PID/root, for a process
        in another mount namespace) is preferred over ours.
        """
        # In its own pid namespace, the process writes the map under its pid there.
        inside = os.path.join(f"/proc/{pid}/root/tmp", f"perf-{_namespace_pid(pid)}.map")
        outside = os.path.join("/tmp", f"perf-{pid}.map")
        for path in (inside, outside):
            try:
                if os.path.isfile(path):
                    return cls(path)
            except OSError:
                continue
        return None

    @classmethod
    def for_core(
        cls, pid: int, core_path: str, sysroot: str | None = None
    ) -> tuple[PerfMap | None, str | None]:
        """The perf map the process of a core wrote, and a warning when one was refused.

        ``/tmp/perf-PID.map`` (under ``sysroot`` first, for a core from another
        machine), if it was last modified no later than the core file.
        """
        return _core_map(pid, core_path, sysroot)

    @staticmethod
    def parse(text: str) -> list[tuple[int, int, str]]:
        """``(start, size, name)`` of each line of a perf map, in file order."""
        entries = []
        for line in text.splitlines():
            parts = line.strip().split(None, 2)
            if len(parts) != 3:
                continue
            try:
                start = int(parts[0], 16)
                size = int(parts[1], 16)
            except ValueError:
                continue
            if start < 0 or size < 0:
                continue
            entries.append((start, size, parts[2]))
        return entries

    def _load(self) -> list[int]:
        if self._starts is not None:
            return self._starts
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                text = file.read()
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror}"
            text = ""
        # Later lines win: keep the last entry per start, then sort by start.
        latest: dict[int, tuple[int, int, str]] = {}
        for entry in self.parse(text):
            latest[entry[0]] = entry
        self._entries = sorted(latest.values())
        self._starts = [start for start, _size, _name in self._entries]
        return self._starts

    def __len__(self) -> int:
        return len(self._load())

    def lookup(self, address: int) -> tuple[str, int, int] | None:
        """``(name, start, size)`` of the function containing ``address``, or None."""
        starts = self._load()
        position = bisect_right(starts, address) - 1
        # Walk back over a few overlapping entries (a smaller, later one may sit inside).
        for index in range(position, max(position - 8, -1), -1):
            start, size, name = self._entries[index]
            if start <= address < start + max(size, 1):
                return name, start, size
        return None


def _core_map(pid: int, core_path: str, sysroot: str | None) -> tuple[PerfMap | None, str | None]:
    """See :meth:`PerfMap.for_core`."""
    name = f"perf-{pid}.map"
    places = [os.path.join(sysroot, "tmp", name)] if sysroot is not None else []
    places.append(os.path.join("/tmp", name))
    try:
        core_time = os.stat(core_path).st_mtime_ns
    except OSError:
        return None, None
    for path in places:
        try:
            info = os.stat(path)
        except OSError:
            continue
        if not os.path.isfile(path):
            continue
        if info.st_mtime_ns > core_time:
            return None, (
                f"{path} ignored: written after the core, so by a later process with the "
                "same pid (JIT frames stay unnamed)"
            )
        return PerfMap(path), None
    return None, None


def _namespace_pid(pid: int) -> int:
    """``pid`` as the process knows itself (the last NSpid of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    fields = line.split()
                    if len(fields) > 1 and fields[-1].isdigit():
                        return int(fields[-1])
    except OSError:
        pass
    return pid


__all__ = ["PerfMap"]
