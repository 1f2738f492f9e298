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
A core's is the map of its pid (under the sysroot, for a core from another
machine, and only there), provided it names code in the core's anonymous
executable memory: perf maps are never deleted, and a map left by an earlier
process that had the same pid names none of it (ASLR puts JIT code
elsewhere in each run).  Its age says nothing: a process that is still
running (a core written by gcore) keeps appending to its map.
"""

from __future__ import annotations

import os
import stat
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
        cls, pid: int, code: list[tuple[int, int]], sysroot: str | None = None
    ) -> tuple[PerfMap | None, str | None]:
        """The perf map the process of a core wrote, and a warning when one was refused.

        ``/tmp/perf-PID.map``, under ``sysroot`` when one is given; ``code`` is
        the core's anonymous executable memory, as ``(start, end)`` ranges.
        The map is used if one of its functions starts in that memory.
        """
        if not code:
            return None, None  # no JIT code: nothing to name
        root = "/" if sysroot is None else sysroot
        path = os.path.join(root, "tmp", f"perf-{pid}.map")
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None, None
        except OSError:
            return None, None
        found = cls(path)
        starts = found._load()
        if found.error is not None:
            return None, found.error
        ranges = sorted(code)
        range_starts = [start for start, _end in ranges]
        for start in starts:
            at = bisect_right(range_starts, start) - 1
            if at >= 0 and start < ranges[at][1]:
                return found, None
        return None, (
            f"{path} ignored: it names none of the core's JIT code, so it was written by "
            "another process that had the same pid (JIT frames stay unnamed)"
        )

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
