"""Which memory goes into a core, by the kernel's rules (fs/coredump.c, vma_dump_size).

The kernel decides per mapping, from the process's ``coredump_filter`` and
the mapping's flags: the vdso and vsyscall pages always; nothing of a
MADV_DONTDUMP or I/O mapping; shared memory whole when its file has no
name left (anonymous shared memory, System V shm, memfd: filter bit 1) and
a shared file mapping only with bit 3; private memory that was written to
(it has anonymous pages: bit 0); a private file mapping whole with bit 2,
else only its first page when it starts the file (bit 4: the ELF header,
program headers and build-id note of every mapped binary).

From user space the flags come from /proc/PID/smaps (``VmFlags``), and
"was written to" from its ``Anonymous`` count; a private anonymous mapping
is dumped whole when readable (its untouched pages become holes in the
file, so this costs nothing on disk).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Sequence

from redhand.capture.corefile import PAGE_SIZE
from redhand.proc.procfs import split_deleted
from redhand.target.model import Mapping

DEFAULT_FILTER = 0x33
"""The kernel's default coredump_filter: anonymous private and shared memory,
ELF headers, private huge pages."""

ANON_PRIVATE = 1 << 0
ANON_SHARED = 1 << 1
MAPPED_PRIVATE = 1 << 2
MAPPED_SHARED = 1 << 3
ELF_HEADERS = 1 << 4
HUGETLB_PRIVATE = 1 << 5
HUGETLB_SHARED = 1 << 6


@dataclasses.dataclass(frozen=True)
class SmapsEntry:
    """What /proc/PID/smaps adds to a line of maps: flags and page counts (bytes)."""

    start: int
    flags: frozenset[str]
    rss: int = 0
    anonymous: int = 0
    swap: int = 0


def parse_smaps(data: bytes) -> dict[int, SmapsEntry]:
    """The smaps entries of a process by start address (unknown lines are skipped)."""
    entries: dict[int, SmapsEntry] = {}
    start: int | None = None
    fields: dict[str, int] = {}
    flags: frozenset[str] = frozenset()

    def finish() -> None:
        if start is not None:
            entries[start] = SmapsEntry(
                start,
                flags,
                fields.get("Rss", 0),
                fields.get("Anonymous", 0),
                fields.get("Swap", 0),
            )

    for raw in data.split(b"\n"):
        if not raw:
            continue
        head, _, rest = raw.partition(b" ")
        if head.endswith(b":"):
            key = head[:-1].decode("ascii", "replace")
            if key == "VmFlags":
                flags = frozenset(rest.decode("ascii", "replace").split())
            elif key in ("Rss", "Anonymous", "Swap"):
                value = rest.split()
                if value and value[0].isdigit():
                    fields[key] = int(value[0]) * 1024
            continue
        if b"-" in head:  # a new mapping: "start-end perms offset dev inode path"
            low = head.split(b"-", 1)[0]
            try:
                address = int(low, 16)
            except ValueError:
                continue
            finish()
            start, fields, flags = address, {}, frozenset()
    finish()
    return entries


def read_smaps(pid: int) -> dict[int, SmapsEntry]:
    with open(f"/proc/{pid}/smaps", "rb") as file:
        return parse_smaps(file.read())


def read_filter(pid: int) -> int:
    """The process's coredump_filter; the kernel's default when it cannot be read."""
    try:
        with open(f"/proc/{pid}/coredump_filter", "rb") as file:
            return int(file.read().strip() or b"33", 16)
    except (OSError, ValueError):
        return DEFAULT_FILTER


class Dump(enum.Enum):
    """How much of a mapping goes into the core."""

    WHOLE = "whole"
    FIRST_PAGE = "first page"
    """The first page, if it starts with the ELF magic (or the file is executable)."""
    NOTHING = "nothing"


class Reason(enum.Enum):
    """Why a mapping is left out of the core, or only partly in it."""

    DONTDUMP = "MADV_DONTDUMP"
    IO = "an I/O mapping"
    SHARED_FILE = "a shared file mapping (coredump_filter bit 3 is off)"
    FILTERED = "excluded by coredump_filter"
    NOT_READABLE = "not readable"
    EXECUTE_ONLY = "execute-only (the vsyscall page)"
    HEADER_ONLY = "a file mapping: its first page only (coredump_filter)"


@dataclasses.dataclass(frozen=True)
class Choice:
    """What to dump of one mapping, and why when not all of it."""

    mapping: Mapping
    dump: Dump
    reason: Reason | None = None
    shared: bool = False
    """MAP_SHARED memory: a fork does not snapshot it."""
    anonymous: bool = False
    """No file behind it: pages never touched (pagemap) are holes, not reads."""
    no_fork: bool = False
    """MADV_DONTFORK or MADV_WIPEONFORK: a forked copy lacks its contents."""

    @property
    def size(self) -> int:
        if self.dump is Dump.WHOLE:
            return self.mapping.size
        if self.dump is Dump.FIRST_PAGE:
            return min(PAGE_SIZE, self.mapping.size)
        return 0

    @property
    def worth_saying(self) -> bool:
        """Left out, and a user should hear of it: MADV_DONTDUMP, I/O and writable shared
        file mappings.  (The kernel's own pseudo-mappings, [vvar] and such, go unsaid, as do
        file mappings of which only the first page is kept, as the kernel keeps them, and a
        read-only shared file mapping, which holds what the file holds.)"""
        if self.dump is not Dump.NOTHING or (self.mapping.path or "").startswith("["):
            return False
        if self.reason is Reason.SHARED_FILE:
            return self.mapping.writable
        return self.reason in (Reason.DONTDUMP, Reason.IO)


def choose(mapping: Mapping, smaps: SmapsEntry | None, coredump_filter: int) -> Choice:
    """What the kernel would dump of ``mapping`` (see the module's description)."""
    flags = smaps.flags if smaps is not None else frozenset()
    path = mapping.path
    shared = "sh" in flags or mapping.perms[3:4] == "s"
    no_fork = bool(flags & {"dc", "wf"})
    if path == "[vdso]":
        return Choice(mapping, Dump.WHOLE)
    if path == "[vsyscall]":  # the kernel's "always" has nothing readable behind it any more
        return Choice(mapping, Dump.NOTHING, Reason.EXECUTE_ONLY)
    if "dd" in flags:
        return Choice(mapping, Dump.NOTHING, Reason.DONTDUMP, shared)
    if "ht" in flags:
        bit = HUGETLB_SHARED if shared else HUGETLB_PRIVATE
        if coredump_filter & bit:
            return Choice(mapping, Dump.WHOLE, shared=shared, no_fork=no_fork)
        return Choice(mapping, Dump.NOTHING, Reason.FILTERED, shared)
    if "io" in flags or (path or "").startswith("[vvar"):
        return Choice(mapping, Dump.NOTHING, Reason.IO, shared)
    if shared:
        # No name left (anonymous shared memory, shm, memfd, a deleted file): bit 1.
        if mapping.inode == 0 or (path is not None and split_deleted(path)[1]):
            if coredump_filter & ANON_SHARED:
                return Choice(mapping, Dump.WHOLE, shared=True, no_fork=no_fork)
            return Choice(mapping, Dump.NOTHING, Reason.FILTERED, True)
        if coredump_filter & MAPPED_SHARED:
            return Choice(mapping, Dump.WHOLE, shared=True, no_fork=no_fork)
        return Choice(mapping, Dump.NOTHING, Reason.SHARED_FILE, True)
    is_file = mapping.inode != 0 and path is not None and path.startswith("/")
    written = smaps is not None and smaps.anonymous > 0
    if not is_file:
        if not coredump_filter & ANON_PRIVATE:
            return Choice(mapping, Dump.NOTHING, Reason.FILTERED)
        touched = smaps is None or smaps.rss > 0 or smaps.swap > 0 or smaps.anonymous > 0
        if not mapping.readable and not touched:
            return Choice(mapping, Dump.NOTHING, Reason.NOT_READABLE)
        return Choice(mapping, Dump.WHOLE, anonymous=True, no_fork=no_fork)
    if written and coredump_filter & ANON_PRIVATE:
        return Choice(mapping, Dump.WHOLE, no_fork=no_fork)
    if coredump_filter & MAPPED_PRIVATE:
        return Choice(mapping, Dump.WHOLE, no_fork=no_fork)
    if coredump_filter & ELF_HEADERS and mapping.offset == 0 and mapping.readable:
        return Choice(mapping, Dump.FIRST_PAGE, Reason.HEADER_ONLY, no_fork=no_fork)
    return Choice(mapping, Dump.NOTHING, Reason.FILTERED)


def executable_file(mapping: Mapping) -> bool:
    """Whether a mapping's file has an execute bit (the kernel then dumps its first page as
    is, without looking for the ELF magic)."""
    if mapping.path is None:
        return False
    try:
        return bool(os.stat(split_deleted(mapping.path)[0]).st_mode & 0o111)
    except OSError:
        return False


def file_mappings(mappings: Sequence[Mapping]) -> list[Mapping]:
    """The mappings with a file behind them, for NT_FILE (anonymous shared memory included)."""
    return [m for m in mappings if m.inode != 0 and m.path is not None and m.path.startswith("/")]
