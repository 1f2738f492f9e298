"""Mutated real cores: only redhand's own errors come out, in bounded time.

Two small real cores of tests/programs/core_crash.c (one written by the
kernel, one by gdb's gcore at the fatal signal: their layouts differ) are
mutated with a seeded generator: the ELF header, the program headers, the
notes' headers and contents, the memory (stacks, code pages), and cuts at
many offsets.  For every case, ``open_core`` either raises a
:class:`~redhand.errors.RedhandError` or returns a target whose full walk
(every thread's backtrace, every mapping, every module's build-id and
symbols) completes; anything else (another exception, a case slower than
``CASE_SECONDS``) fails the test and names the case, so it can be replayed.

The default run makes 6,000 cases (about 30 s; ``REDHAND_FUZZ_CASES`` sets another count);
set the variable for a longer run, and ``REDHAND_FUZZ_SEED`` to vary it.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import pytest
from helpers import compile_c, crash_into_core, gdb_core_at_signal
from test_core import FLAGS

from redhand.errors import RedhandError
from redhand.target.core import open_core

CASES = int(os.environ.get("REDHAND_FUZZ_CASES", "6000"))
SEED = int(os.environ.get("REDHAND_FUZZ_SEED", "20240601"))
CASE_SECONDS = 30.0
"""No case may take longer (a hang or a runaway loop fails the test)."""

_EHDR_SIZE = 64
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")

INTERESTING_32 = (0, 1, 3, 4, 7, 8, 12, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
INTERESTING_64 = (
    0, 1, 8, 0x1000, 0xFFF, 0x7FFFFFFFFFFF, 0x800000000000, 0xFFFFFFFFFFFFF000,
    0xFFFFFFFFFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 1 << 32, 1 << 40,
)  # fmt: skip


class CaseTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise CaseTimeout(f"case took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _phdrs(data: bytes) -> list[tuple[int, tuple[int, ...]]]:
    (phoff,) = struct.unpack_from("<Q", data, 32)
    (phnum,) = struct.unpack_from("<H", data, 56)
    return [
        (phoff + i * _PHDR.size, _PHDR.unpack_from(data, phoff + i * _PHDR.size))
        for i in range(phnum)
    ]


def _note_headers(data: bytes) -> list[int]:
    """File offsets of every note header of the core."""
    offsets = []
    for _at, (p_type, _f, offset, _v, _p, filesz, _m, _a) in _phdrs(data):
        if p_type != 4:
            continue
        at = offset
        while at + 12 <= offset + filesz:
            offsets.append(at)
            namesz, descsz, _type = _NHDR.unpack_from(data, at)
            at += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return offsets


def _loads(data: bytes) -> list[tuple[int, int]]:
    """(file offset, size) of the PT_LOAD data present in the file."""
    return [
        (offset, filesz)
        for _at, (p_type, _f, offset, _v, _p, filesz, _m, _a) in _phdrs(data)
        if p_type == 1 and filesz
    ]


class Mutator:
    """Seeded mutations of one core, by kind."""

    def __init__(self, core: bytes) -> None:
        self.core = core
        self.phdr_at = [at for at, _fields in _phdrs(core)]
        self.notes = _note_headers(core)
        self.loads = _loads(core)
        assert self.phdr_at and self.notes and self.loads

    def mutate(self, rng: random.Random) -> tuple[str, bytes]:
        kind = rng.choice(
            ["header", "phdr", "phdr", "note", "note", "note-desc", "note-desc",
             "memory", "truncate", "bytes"]
        )  # fmt: skip
        data = bytearray(self.core)
        if kind == "header":
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(16, _EHDR_SIZE)
                data[at] = rng.randrange(256)
        elif kind == "phdr":
            at = rng.choice(self.phdr_at)
            field = rng.randrange(8)
            if field < 2:
                struct.pack_into("<I", data, at + 4 * field, rng.choice(INTERESTING_32))
            else:
                value = rng.choice(
                    (*INTERESTING_64, len(self.core), len(self.core) - 1, rng.getrandbits(64))
                )
                struct.pack_into("<Q", data, at + 8 + 8 * (field - 2), value)
        elif kind == "note":
            at = rng.choice(self.notes)
            field = rng.randrange(3)
            value = rng.choice((*INTERESTING_32, rng.getrandbits(32)))
            struct.pack_into("<I", data, at + 4 * field, value)
        elif kind == "note-desc":
            at = rng.choice(self.notes)
            namesz, descsz, _type = _NHDR.unpack_from(data, at)
            desc = at + 12 + ((namesz + 3) & ~3)
            for _ in range(rng.randint(1, 8)):
                if descsz == 0:
                    break
                where = desc + rng.randrange(descsz) // 8 * 8
                if where + 8 <= len(data):
                    struct.pack_into(
                        "<Q", data, where, rng.choice((*INTERESTING_64, rng.getrandbits(64)))
                    )
        elif kind == "memory":
            offset, size = rng.choice(self.loads)
            for _ in range(rng.randint(1, 32)):
                where = offset + rng.randrange(size) // 8 * 8
                if where + 8 <= len(data):
                    struct.pack_into(
                        "<Q", data, where, rng.choice((*INTERESTING_64, rng.getrandbits(64)))
                    )
        elif kind == "truncate":
            cut = rng.choice(
                [rng.randrange(len(data)), rng.randrange(max(self.notes) + 64), rng.randrange(4096)]
            )
            del data[cut:]
        else:
            for _ in range(rng.randint(1, 16)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        return kind, bytes(data)


def walk(path: Path) -> None:
    """Everything a crash report reads from a target."""
    with open_core(path) as target:
        for mapping in target.mappings:
            mapping.perms, mapping.path, mapping.is_file  # noqa: B018
            target.find_mapping(mapping.start)
        for module in target.modules:
            module.build_id  # noqa: B018
            module.bias  # noqa: B018
        for thread in target.threads:
            trace = thread.backtrace()
            for frame in trace:
                str(frame)
            if thread.siginfo is not None:
                str(thread.siginfo)
        if target.process is not None:
            target.process.to_json()
        target.warnings  # noqa: B018


@pytest.fixture(scope="module")
def fuzz_cores(build_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    exe = compile_c("core_crash.c", build_dir, FLAGS)
    work = tmp_path_factory.mktemp("fuzz-cores")
    kernel = crash_into_core([str(exe), "segv", "0"], work / "kernel")
    gcore = gdb_core_at_signal([str(exe), "fpe", "0"], work / "gdb")
    return {"kernel": kernel.core.read_bytes(), "gdb": gcore.core.read_bytes()}


@pytest.mark.parametrize("which", ["kernel", "gdb"])
def test_mutated_cores(fuzz_cores: dict[str, bytes], tmp_path: Path, which: str) -> None:
    core = fuzz_cores[which]
    walk_original = tmp_path / "original"
    walk_original.write_bytes(core)
    walk(walk_original)
    mutator = Mutator(core)
    path = tmp_path / "case"
    failures: list[str] = []
    outcomes: dict[str, int] = {}
    slowest = 0.0
    cases = CASES // 2
    for case in range(cases):
        rng = random.Random(f"{SEED}-{which}-{case}")
        kind, data = mutator.mutate(rng)
        path.write_bytes(data)
        started = time.perf_counter()
        try:
            with time_limit(CASE_SECONDS):
                walk(path)
            outcome = "read"
        except RedhandError as error:
            outcome = type(error).__name__
        except Exception:  # the bug this test is for
            failures.append(
                f"case {case} ({kind}, REDHAND_FUZZ_SEED={SEED}):\n{traceback.format_exc()}"
            )
            outcome = "bug"
        slowest = max(slowest, time.perf_counter() - started)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if len(failures) >= 5:
            break
    print(f"{which}: {cases} cases, outcomes {outcomes}, slowest {slowest * 1000:.0f} ms")
    assert not failures, "\n".join(failures)
    assert outcomes.get("read", 0) > cases // 4, outcomes  # most mutations leave something to read


def test_truncated_at_every_page(fuzz_cores: dict[str, bytes], tmp_path: Path) -> None:
    """A core cut at any page boundary (and inside its headers) reads or fails cleanly."""
    path = tmp_path / "case"
    for which, core in fuzz_cores.items():
        cuts = [*range(0, 4096, 37), *range(4096, len(core), 4096)]
        for cut in cuts:
            path.write_bytes(core[:cut])
            try:
                with time_limit(CASE_SECONDS):
                    walk(path)
            except RedhandError:
                pass
            except Exception as error:
                raise AssertionError(f"{which} core cut at {cut}: {error!r}") from error
