"""The core writer's pure parts: each note read back field by field, the layout, the
kernel's rules for which memory goes in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gcore_helpers import Core

from redhand.capture.corefile import (
    PAGE_SIZE,
    PN_XNUM,
    Layout,
    MappedFile,
    Note,
    ProcessState,
    Segment,
    ThreadState,
    file_note,
    prpsinfo_note,
    prstatus_note,
    segment_flags,
    siginfo_note,
    thread_notes,
)
from redhand.capture.selection import (
    DEFAULT_FILTER,
    Dump,
    Reason,
    SmapsEntry,
    choose,
    parse_smaps,
)
from redhand.elf import ElfFile
from redhand.target.corenotes import (
    parse_nt_file,
    parse_prpsinfo,
    parse_prstatus,
    read_core_notes,
)
from redhand.target.model import USER_REGS_FIELDS, Mapping
from redhand.target.signals import SignalInfo

PROCESS = ProcessState(
    pid=4242, ppid=1, pgrp=4242, sid=4000, uid=1000, gid=100, comm="shop",
    args=["/usr/bin/shop", "--port", "8080"], state="S", nice=-5, flags=0x400140,
)  # fmt: skip
REGISTERS = list(range(100, 100 + len(USER_REGS_FIELDS)))


def test_prstatus_reads_back() -> None:
    thread = ThreadState(
        tid=4243, registers=REGISTERS, fpregs=bytes(512), cursig=11,
        sigpend=0x4, sighold=0x10000, utime_us=1_500_000, stime_us=250,
    )  # fmt: skip
    desc = prstatus_note(thread, PROCESS)
    assert len(desc) == 336
    status = parse_prstatus(desc)
    assert (status.pid, status.cursig, status.ppid, status.pgrp, status.sid) == (
        4243, 11, 1, 4242, 4000
    )  # fmt: skip
    assert (status.sigpend, status.sighold) == (0x4, 0x10000)
    assert [getattr(status.registers, name) for name in USER_REGS_FIELDS] == REGISTERS
    assert desc[328:332] == (1).to_bytes(4, "little")  # pr_fpvalid
    with pytest.raises(ValueError):
        prstatus_note(ThreadState(tid=1, registers=[0] * 3), PROCESS)


def test_prpsinfo_reads_back() -> None:
    info = parse_prpsinfo(prpsinfo_note(PROCESS))
    assert (info.pid, info.ppid, info.uid, info.gid, info.pgrp, info.sid) == (
        4242, 1, 1000, 100, 4242, 4000
    )  # fmt: skip
    assert info.fname == "shop" and info.state == "S"
    assert info.psargs == "/usr/bin/shop --port 8080"
    long = ProcessState(**{**PROCESS.__dict__, "args": ["x" * 200], "comm": "c" * 40})
    cut = parse_prpsinfo(prpsinfo_note(long))
    assert cut.psargs == "x" * 79 and cut.psargs_truncated and cut.fname == "c" * 15


def test_siginfo_and_file_notes() -> None:
    assert SignalInfo.from_bytes(siginfo_note()).signo == 0
    assert len(siginfo_note(11)) == 128 and SignalInfo.from_bytes(siginfo_note(11)).signo == 11
    files = [
        MappedFile(0x400000, 0x401000, 0, "/usr/bin/shop"),
        MappedFile(0x7F0000000000, 0x7F0000002000, 0x3000, "/lib/libc.so.6 (deleted)"),
    ]
    parsed, page = parse_nt_file(file_note(files))
    assert page == PAGE_SIZE
    assert [(m.start, m.end, m.offset, m.path) for m in parsed] == [
        (f.start, f.end, f.offset, f.path) for f in files
    ]


def test_notes_in_the_kernels_order_read_back() -> None:
    threads = [
        ThreadState(tid=4242, registers=REGISTERS, fpregs=bytes(512), xstate=bytes(832)),
        ThreadState(tid=4243, registers=REGISTERS, fpregs=None, xstate=None),
    ]
    names = Note("REDHAND", 1, b'{"threads": [[4243, "io"]]}')
    auxv = (6).to_bytes(8, "little") + (4096).to_bytes(8, "little") + bytes(16)
    notes = thread_notes(threads, PROCESS, auxv=auxv, files=[], extra=[names])
    assert [(n.name, n.type) for n in notes] == [
        ("CORE", 1), ("CORE", 3), ("CORE", 0x53494749), ("CORE", 6), ("CORE", 0x46494C45),
        ("CORE", 2), ("LINUX", 0x202), ("CORE", 1), ("REDHAND", 1),
    ]  # fmt: skip
    layout = Layout(notes, [Segment(0x10000, 0x12000, 6, 0x2000)])
    head = layout.head()
    image = head + bytes(layout.data_start - len(head)) + bytes(0x2000) + layout.tail()
    assert len(image) == layout.size
    with ElfFile.from_bytes(image, name="core") as elf:
        read = read_core_notes(elf.iter_notes())
    assert [status.pid for status, _ in read.threads] == [4242, 4243]
    assert read.process is not None and read.process.fname == "shop"
    assert read.thread_names == {4243: "io"} and read.warnings == []


def test_layout_with_more_than_65535_segments(tmp_path: Path) -> None:
    """PN_XNUM: e_phnum says 0xffff and section 0's sh_info holds the count."""
    segments = [Segment(0x10000 + i * 0x2000, 0x11000 + i * 0x2000, 4, 0) for i in range(70_000)]
    segments[5] = Segment(segments[5].start, segments[5].end, 4, PAGE_SIZE)
    layout = Layout([Note("CORE", 6, bytes(16))], segments)
    assert layout.extended and layout.phnum == 70_001
    path = tmp_path / "core"
    with path.open("wb") as file:
        head = layout.head()
        file.write(head)
        file.write(bytes(layout.data_start - len(head)))
        file.write(b"\x5a" * PAGE_SIZE)
        file.write(layout.tail())
    assert path.stat().st_size == layout.size
    core = Core.read(path)
    assert len(core.loads) == 70_000
    assert core.memory(segments[5].start, 8) == b"\x5a" * 8
    header = subprocess.run(["readelf", "-h", str(path)], capture_output=True, text=True).stdout
    assert f"({PN_XNUM:#x})" in header or "70001" in header, header


def test_segment_flags() -> None:
    assert segment_flags("r-xp") == 5 and segment_flags("rw-s") == 6 and segment_flags("---p") == 0


# -- which memory, by the kernel's rules -------------------------------------------------


SMAPS = b"""\
55d1c0a00000-55d1c0a1b000 r--p 00000000 fd:01 1234 /usr/bin/shop
Size:                108 kB
Rss:                  64 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 512 kB
Anonymous:           512 kB
Swap:                 16 kB
VmFlags: rd wr mr mw me ac dd
"""


def test_parse_smaps() -> None:
    entries = parse_smaps(SMAPS)
    assert sorted(entries) == [0x55D1C0A00000, 0x7F0000000000]
    anon = entries[0x7F0000000000]
    assert (anon.rss, anon.anonymous, anon.swap) == (512 << 10, 512 << 10, 16 << 10)
    assert "dd" in anon.flags and "dd" not in entries[0x55D1C0A00000].flags


def _mapping(perms: str, path: str | None = None, offset: int = 0, inode: int = 0) -> Mapping:
    return Mapping(0x1000000, 0x1100000, perms, offset, "00:00", inode, path)


def _smaps(*flags: str, anonymous: int = 0, rss: int = 0) -> SmapsEntry:
    return SmapsEntry(0x1000000, frozenset(flags), rss=rss, anonymous=anonymous)


@pytest.mark.parametrize(
    ("mapping", "smaps", "dump", "reason"),
    [
        (_mapping("r-xp", "[vdso]"), _smaps("rd", "ex"), Dump.WHOLE, None),
        (_mapping("rw-p"), _smaps("rd", "wr", "dd", anonymous=4096), Dump.NOTHING, Reason.DONTDUMP),
        (_mapping("rw-p"), _smaps("rd", "wr", "io"), Dump.NOTHING, Reason.IO),
        (_mapping("rw-p"), _smaps("rd", "wr", anonymous=4096, rss=4096), Dump.WHOLE, None),
        (_mapping("---p"), _smaps("mr"), Dump.NOTHING, Reason.NOT_READABLE),
        (_mapping("rw-s", "/dev/zero (deleted)", inode=7), _smaps("sh"), Dump.WHOLE, None),
        (_mapping("rw-s", "/SYSV00000000 (deleted)", inode=8), _smaps("sh"), Dump.WHOLE, None),
        (_mapping("rw-s", "/var/db/file", inode=9), _smaps("sh"), Dump.NOTHING,
         Reason.SHARED_FILE),
        (_mapping("r--p", "/usr/lib/libc.so.6", inode=10), _smaps("rd"), Dump.FIRST_PAGE,
         Reason.HEADER_ONLY),
        (_mapping("r-xp", "/usr/lib/libc.so.6", 0x28000, inode=10), _smaps("rd", "ex"),
         Dump.NOTHING, Reason.FILTERED),
        (_mapping("rw-p", "/usr/lib/libc.so.6", 0x1d6000, inode=10),
         _smaps("rd", "wr", anonymous=8192), Dump.WHOLE, None),
    ],
)  # fmt: skip
def test_the_kernels_choice(
    mapping: Mapping, smaps: SmapsEntry, dump: Dump, reason: Reason | None
) -> None:
    choice = choose(mapping, smaps, DEFAULT_FILTER)
    assert (choice.dump, choice.reason) == (dump, reason)


def test_coredump_filter_bits() -> None:
    shared_file = _mapping("rw-s", "/var/db/file", inode=9)
    assert choose(shared_file, _smaps("sh"), DEFAULT_FILTER | 0x8).dump is Dump.WHOLE
    text = _mapping("r-xp", "/usr/lib/libc.so.6", 0x28000, inode=10)
    assert choose(text, _smaps("rd", "ex"), DEFAULT_FILTER | 0x4).dump is Dump.WHOLE
    heap = _mapping("rw-p")
    assert choose(heap, _smaps("rd", "wr", anonymous=4096), 0x32).dump is Dump.NOTHING
    fork_proof = choose(heap, _smaps("rd", "wr", "dc", anonymous=4096), DEFAULT_FILTER)
    assert fork_proof.dump is Dump.WHOLE and fork_proof.no_fork and fork_proof.anonymous
