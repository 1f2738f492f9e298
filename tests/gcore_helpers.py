"""Helpers for redhand gcore's tests: the target program, and cores read independently.

A core is read here with a few lines of ``struct`` (program headers, notes),
not with redhand's own ELF reader, so that a bug in one cannot hide a bug in
the other.  Other readers are run as programs: gdb, eu-stack and lldb.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helpers import LiveProgram, compile_c, thread_comm, thread_state

PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
READ_TIMEOUT = 300.0

NO_RSEQ = {"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
"""No rseq area: the kernel rewrites it when a thread moves to another CPU, so two
cores of the same parked process would differ there."""


@dataclass(frozen=True)
class Load:
    vaddr: int
    memsz: int
    filesz: int
    offset: int
    flags: int

    @property
    def end(self) -> int:
        return self.vaddr + self.memsz


@dataclass
class Core:
    """A core file read with struct alone."""

    path: Path
    loads: list[Load]
    notes: list[tuple[str, int, bytes]]
    data: bytes = field(repr=False)

    @classmethod
    def read(cls, path: Path) -> Core:
        data = path.read_bytes()
        assert data[:4] == b"\x7fELF" and struct.unpack_from("<H", data, 16)[0] == 4, path
        phoff, shoff = struct.unpack_from("<QQ", data, 32)
        phnum = struct.unpack_from("<H", data, 56)[0]
        if phnum == PN_XNUM:  # the count is in section header 0's sh_info
            phnum = struct.unpack_from("<I", data, shoff + 44)[0]
        loads, notes = [], []
        for index in range(phnum):
            kind, flags, offset, vaddr, _paddr, filesz, memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", data, phoff + index * 56
            )
            if kind == PT_LOAD:
                loads.append(Load(vaddr, memsz, filesz, offset, flags))
            elif kind == PT_NOTE:
                notes += _notes(data[offset : offset + filesz])
        return cls(path, loads, notes, data)

    def memory(self, start: int, size: int) -> bytes | None:
        """The bytes of memory from ``start``, as the core has them (zeros past a
        segment's data); None where no segment covers an address."""
        out = bytearray()
        address = start
        end = start + size
        for load in sorted(self.loads, key=lambda load: load.vaddr):
            if load.end <= address or load.vaddr >= end:
                continue
            if load.vaddr > address:
                return None
            upto = min(end, load.end)
            inside = address - load.vaddr
            want = upto - address
            have = max(0, min(want, load.filesz - inside))
            out += self.data[load.offset + inside : load.offset + inside + have]
            out += bytes(want - have)
            address = upto
        return bytes(out) if address >= end else None

    def load_at(self, address: int) -> Load | None:
        return next((load for load in self.loads if load.vaddr <= address < load.end), None)

    def is_hole(self, address: int) -> bool:
        """Whether the page at ``address`` is a hole in the file (no disk block)."""
        load = self.load_at(address)
        assert load is not None and address - load.vaddr < load.filesz
        offset = load.offset + (address - load.vaddr)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                return os.lseek(fd, offset, os.SEEK_DATA) != offset
            except OSError:  # ENXIO: only holes from there on
                return True
        finally:
            os.close(fd)

    def note_types(self) -> list[tuple[str, int]]:
        return [(name, kind) for name, kind, _desc in self.notes]


def _notes(data: bytes) -> list[tuple[str, int, bytes]]:
    notes, at = [], 0
    while at + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, at)
        at += 12
        name = data[at : at + namesz].rstrip(b"\0").decode()
        at += -(-namesz // 4) * 4
        notes.append((name, kind, data[at : at + descsz]))
        at += -(-descsz // 4) * 4
    return notes


# -- the target -------------------------------------------------------------------------


class GcoreTarget(LiveProgram):
    """tests/programs/gcore_target.c running, parked, with its regions known."""

    @property
    def regions(self) -> dict[str, tuple[int, int]]:
        found = {}
        for line in self.output:
            words = line.split()
            if len(words) == 4 and words[0] == "region":
                found[words[1]] = (int(words[2], 16), int(words[3]))
        return found

    @property
    def state_file(self) -> Path:
        return Path(self.argv[1])

    def state(self) -> dict[str, int]:
        sigchld, reaped, own_child = struct.unpack("<QQQ", self.state_file.read_bytes()[:24])
        return {"sigchld": sigchld, "reaped": reaped, "own_child": own_child}


def build_gcore_target(directory: Path) -> Path:
    return compile_c("gcore_target.c", directory, ["-O1", "-g", "-pthread"])


_serial = itertools.count()


def gcore_target(binary: Path, directory: Path, *options: str, threads: int = 3) -> GcoreTarget:
    state = directory / f"state-{next(_serial)}"
    blocked = {"main": 34, "reader": 0, **{f"w{i}": 202 for i in range(threads)}}
    if "--child" in options:
        blocked["waiter"] = 61
    return GcoreTarget(
        [binary, state, f"--threads={threads}", *options],
        blocked=blocked,
        env={**os.environ, **NO_RSEQ},
        cwd=directory,
    )


def run_redhand(*args: str, timeout: float = READ_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redhand", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            found += [int(word) for word in Path(task).read_text().split()]
        except OSError:
            continue
    return found


def copies_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of every child named redhand-copy."""
    found = []
    for child in children_of(pid):
        state = thread_state(child, child)
        if thread_comm(child, child) == "redhand-copy" and state is not None:
            found.append((child, state))
    return found


# -- other readers ---------------------------------------------------------------------------


def eu_stack_core(exe: Path, core: Path) -> dict[int, list[int]]:
    """pcs of every thread, by tid, from ``eu-stack --core``."""
    out = subprocess.run(
        ["eu-stack", "--core", str(core), "-e", str(exe)],
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT,
    )
    threads: dict[int, list[int]] = {}
    current: list[int] | None = None
    for line in out.stdout.splitlines():
        header = re.match(r"^TID (\d+):", line)
        if header:
            current = threads.setdefault(int(header.group(1)), [])
            continue
        frame = re.match(r"^#\d+\s+(0x[0-9a-f]+)", line)
        if frame and current is not None:
            current.append(int(frame.group(1), 16))
    assert threads, f"eu-stack read nothing:\n{out.stdout}\n{out.stderr}"
    return threads


def lldb_python_path() -> str | None:
    """Where Debian's lldb keeps its Python module (lldb -P names a folder without it)."""
    for candidate in sorted(glob.glob("/usr/lib/llvm-*/lib/python3*/dist-packages")):
        if os.path.exists(os.path.join(candidate, "lldb", "embedded_interpreter.py")):
            return candidate
    return None


def lldb_core(exe: Path, core: Path) -> dict[int, list[int]]:
    """pcs of every thread, by tid, from lldb's ``thread list`` and ``thread backtrace all``.

    (lldb shows a frame that calls were inlined into at another pc than the
    return address: compare as a subsequence.)"""
    env = dict(os.environ)
    python = lldb_python_path()
    if python is not None:
        env["PYTHONPATH"] = python
    out = subprocess.run(
        ["lldb", "-b", "-c", str(core), str(exe), "-o", "thread list",
         "-o", "thread backtrace all"],
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT,
        env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    tids: dict[int, int] = {}
    for match in re.finditer(r"thread #(\d+): tid = (\d+)", out.stdout):
        tids[int(match.group(1))] = int(match.group(2))
    threads: dict[int, list[int]] = {}
    current: list[int] | None = None
    backtraces = out.stdout.split("thread backtrace all", 1)[-1]
    for line in backtraces.splitlines():
        header = re.match(r"^[* ] thread #(\d+)", line)
        if header:
            current = threads.setdefault(tids[int(header.group(1))], [])
            continue
        frame = re.search(r"frame #\d+: (0x[0-9a-f]+)", line)
        if frame and current is not None:
            current.append(int(frame.group(1), 16))
    assert threads, f"lldb read nothing:\n{out.stdout}\n{out.stderr}"
    return threads
