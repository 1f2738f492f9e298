"""``redhand.open_core`` against real cores, with gdb as the oracle.

tests/programs/core_crash.c is crashed into real kernel cores (RLIMIT_CORE
raised in the child, run in a fresh directory; /proc/sys/kernel/core_pattern
is read, never changed: when it is a pipe, gdb runs the program and writes
the core with ``gcore`` at the fatal signal), and dumped alive with gdb's
``gcore``.  On each core, redhand's threads, tids, registers, signal
information, mappings, build-ids and backtraces are compared with what gdb
reads from the same core (``thread apply all bt``, ``$_siginfo``); names are
compared by alias (``gdb_oracle.names_match``: gdb prints DWARF names such as
``__GI___poll`` and inlined frames).

Then the same core compressed (zstd, gzip, xz), moved and rebuilt
executables (``exe``, ``sysroot``, build-id mismatches) and bad input
(truncated, corrupt notes, not ELF, an executable, 32-bit, another machine,
empty files, directories): a clear redhand error or partial results with a
warning, never a traceback.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import signal
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from gdb_oracle import compare_backtrace, read_build_id
from helpers import (
    CoreCrash as Crash,
)
from helpers import (
    GdbCore,
    compile_c,
    crash_into_core,
    gcore_of_live,
    gdb_core_at_signal,
    gdb_on_core,
)

import redhand
from redhand.errors import ElfError, FileNotFound, MemoryReadError, UnsupportedElf
from redhand.target.core import CoreTarget, NotACore, open_core
from redhand.target.decompress import decompress
from redhand.target.signals import SignalInfo

TIMEOUT = 60.0
THREADS = 3
FLAGS = ("-O1", "-g", "-pthread")

# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def core_exe(build_dir: Path) -> Path:
    return compile_c("core_crash.c", build_dir, FLAGS)


_crashes: dict[tuple[str, ...], Crash] = {}
_crash_lock = threading.Lock()


@pytest.fixture(scope="session")
def make_crash(core_exe: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Crash]:
    """A core of core_crash.c run with some arguments, made once per session."""

    def make(*args: str) -> Crash:
        key = args
        with _crash_lock:
            if key not in _crashes:
                workdir = tmp_path_factory.mktemp("crash-" + "-".join(args))
                _crashes[key] = crash_into_core([str(core_exe), *args], workdir)
            return _crashes[key]

    return make


_gdb_cache: dict[Path, GdbCore] = {}


def gdb_core(crash: Crash) -> GdbCore:
    if crash.core not in _gdb_cache:
        _gdb_cache[crash.core] = gdb_on_core(crash.exe, crash.core)
    return _gdb_cache[crash.core]


MODES = ("segv", "thread-segv", "fpe", "abort")


# -- threads, registers, signals -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_threads_registers_and_signal(make_crash: Callable[..., Crash], mode: str) -> None:
    crash = make_crash(mode, str(THREADS))
    gdb = gdb_core(crash)
    with open_core(crash.core) as target:
        assert isinstance(target, CoreTarget)
        assert target.source == "core"
        assert target.warnings == []
        assert sorted(t.tid for t in target.threads) == sorted(gdb.threads)
        assert len(target.threads) == THREADS + 1
        # The thread that took the signal comes first, as gdb's thread 1.
        crashed = [t for t in target.threads if t.crashed]
        assert crashed == [target.threads[0]]
        first = target.threads[0]
        gdb_first = next(t for t in gdb.threads.values() if t.number == 1)
        assert first.tid == gdb_first.tid
        main_thread = target.thread(target.pid)  # type: ignore[arg-type]
        assert (first is main_thread) == (mode != "thread-segv")
        # The pc of the crashing thread is the faulting instruction gdb reports.
        assert first.registers is not None
        assert first.registers.rip == gdb_first.frames[0].pc
        assert first.registers.rsp == gdb_first.frames[0].sp
        # Cores keep no thread names: all are named after the program.
        assert {t.name for t in target.threads} == {crash.exe.name[:15]}

        info = first.siginfo
        assert info is not None
        assert first.signal == info.signo == gdb.siginfo["signo"]
        assert info.code == gdb.siginfo["code"]
        assert all(t.siginfo is None and t.signal is None for t in target.threads[1:])
        if mode in ("segv", "thread-segv"):
            assert (info.name, info.code_name, info.address) == ("SIGSEGV", "SEGV_MAPERR", 0x10)
            assert info.address == gdb.siginfo["address"]
        elif mode == "fpe":
            assert (info.name, info.code_name) == ("SIGFPE", "FPE_INTDIV")
            assert info.address == first.registers.rip == gdb.siginfo["address"]
        else:
            assert (info.name, info.code_name, info.address) == ("SIGABRT", "SI_TKILL", None)
            if crash.by == "kernel":
                assert info.pid == target.pid and info.uid == os.getuid()


@pytest.mark.parametrize("mode", MODES)
def test_backtraces_match_gdb(make_crash: Callable[..., Crash], mode: str) -> None:
    crash = make_crash(mode, str(THREADS))
    gdb = gdb_core(crash)
    problems = []
    with open_core(crash.core) as target:
        for thread in target.threads:
            trace = thread.backtrace()
            comparison = compare_backtrace(gdb.threads[thread.tid], list(trace), "c")
            if comparison.problems:
                problems.append(f"thread {thread.tid}:\n{comparison.report()}")
            assert trace.end == "outermost", (thread.tid, trace.end, trace.end_detail)
        names = [f.function for f in target.threads[0].backtrace()]
    assert not problems, "\n\n".join(problems)
    expected = {
        "segv": ["write_field", "crash_now", "run", "main"],
        "thread-segv": ["write_field", "worker", "start_thread"],
        "fpe": ["divide", "crash_now", "run", "main"],
        "abort": ["abort", "crash_now", "run", "main"],
    }[mode]
    it = iter(names)
    assert all(name in it for name in expected), names


def test_process_mappings_modules_memory(make_crash: Callable[..., Crash]) -> None:
    crash = make_crash("segv", str(THREADS))
    exe = str(crash.exe)
    with open_core(crash.core) as target:
        process = target.process
        assert process is not None
        assert process.pid == target.pid == target.threads[0].tid
        assert process.fname == crash.exe.name[:15]
        assert process.uid == os.getuid() and process.gid == os.getgid()
        assert process.ppid > 0 and not process.psargs_truncated
        assert target.cmdline == crash.argv
        assert target.exe == exe
        # Mappings: the executable's code, libc's, the vdso, the main stack.
        code = [m for m in target.mappings if m.path == exe and m.executable]
        assert len(code) == 1 and code[0].perms == "r-xp" and code[0].is_file
        stack = [m for m in target.mappings if m.path == "[stack]"]
        registers = target.thread(target.pid).registers  # type: ignore[arg-type]
        assert registers is not None
        assert len(stack) == 1 and stack[0].contains(registers.rsp)
        assert target.find_mapping(registers.rip) == code[0]
        assert target.find_mapping(0x10) is None
        # Modules carry the files' build-ids, which are the core's.
        by_name = {m.name: m for m in target.modules}
        assert by_name[crash.exe.name].build_id == read_build_id(exe)
        libc = next(m for m in target.modules if m.name.startswith("libc.so"))
        assert libc.build_id == read_build_id(libc.path)
        assert "[vdso]" in by_name and by_name["[vdso]"].build_id is not None
        # Code is not in a kernel core: it is read from the executable on disk.
        pc = registers.rip
        module = by_name[crash.exe.name]
        elf = module.elf()
        assert elf is not None
        assert target.memory.read(pc, 16) == elf.read_vaddr(pc - module.bias, 16)
        with pytest.raises(MemoryReadError):
            target.memory.read(0x10, 8)
        # The stack is in the core: the return address frame 1 came from.
        frames = target.threads[0].backtrace()
        assert frames[1].function == "crash_now"


def test_gcore_of_live_process(core_exe: Path, tmp_path: Path) -> None:
    threads = 4
    core, tids, pid = gcore_of_live([str(core_exe), "wait", str(threads)], tmp_path, threads)
    gdb = gdb_on_core(core_exe, core)
    with open_core(core) as target:
        assert target.warnings == []
        assert target.pid == pid
        assert sorted(t.tid for t in target.threads) == sorted([pid, *tids])
        assert sorted(gdb.threads) == sorted([pid, *tids])
        assert not any(t.crashed for t in target.threads)
        problems = []
        for thread in target.threads:
            comparison = compare_backtrace(gdb.threads[thread.tid], list(thread.backtrace()), "c")
            if comparison.problems:
                problems.append(f"thread {thread.tid}:\n{comparison.report()}")
        assert not problems, "\n\n".join(problems)
        main = [f.function for f in target.thread(pid).backtrace()]
        assert main[1:4] == ["block_in_pause", "run", "main"]
        # gdb leaves code out of its cores, with no PT_LOAD at all: the mapping
        # comes from NT_FILE, its permissions from the file's program headers.
        code = [m for m in target.mappings if m.path == str(core_exe) and m.executable]
        assert len(code) == 1 and code[0].perms == "r-xp"
        assert not any("?" in m.perms for m in target.mappings)


def test_gdb_core_at_fatal_signal(core_exe: Path, tmp_path: Path) -> None:
    """The fallback when core_pattern is a pipe: gdb's gcore at the signal reads the same."""
    crash = gdb_core_at_signal([str(core_exe), "thread-segv", str(THREADS)], tmp_path)
    gdb = gdb_on_core(crash.exe, crash.core)
    with open_core(crash.core) as target:
        assert target.warnings == []
        first = target.threads[0]
        assert first.crashed and first.signal == signal.SIGSEGV
        assert first.siginfo is not None and first.siginfo.address == 0x10
        assert first.siginfo.code_name == "SEGV_MAPERR"
        assert sorted(t.tid for t in target.threads) == sorted(gdb.threads)
        for thread in target.threads:
            comparison = compare_backtrace(gdb.threads[thread.tid], list(thread.backtrace()), "c")
            assert not comparison.problems, comparison.report()
        assert [f.function for f in first.backtrace()][:2] == ["write_field", "worker"]


# -- compressed cores --------------------------------------------------------------------


def report(target: redhand.Target) -> list[object]:
    """What a crash report is made of, comparable between targets."""
    return [
        target.pid,
        target.exe,
        target.cmdline,
        target.warnings,
        [(m.start, m.end, m.perms, m.offset, m.path) for m in target.mappings],
        [(m.path, m.build_id) for m in target.modules],
        [
            (
                t.tid,
                t.crashed,
                t.signal,
                t.siginfo,
                [(f.pc, f.sp, f.function) for f in t.backtrace()],
            )
            for t in target.threads
        ],
    ]


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "zst": lambda data: zstandard.ZstdCompressor(level=3).compress(data),
    "gz": lambda data: gzip.compress(data, compresslevel=1),
    "xz": lambda data: lzma.compress(data, preset=0),
}


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
def test_compressed_core_same_report(
    make_crash: Callable[..., Crash], tmp_path: Path, suffix: str
) -> None:
    crash = make_crash("segv", str(THREADS))
    with open_core(crash.core) as plain:
        expected = report(plain)
    # Named without its suffix: the format is known by its magic bytes.
    packed = tmp_path / "core-compressed"
    packed.write_bytes(COMPRESSORS[suffix](crash.core.read_bytes()))
    calls: list[tuple[int, int]] = []
    with open_core(packed, progress=lambda done, total: calls.append((done, total))) as target:
        assert target.compression == {"zst": "zstd", "gz": "gzip", "xz": "xz"}[suffix]
        assert report(target) == expected
    assert calls and calls[-1][0] == calls[-1][1] == packed.stat().st_size


def test_decompress_spills_to_unlinked_temporary_file(
    make_crash: Callable[..., Crash], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the memory budget the data moves to a file in $TMPDIR that has no name."""
    crash = make_crash("segv", str(THREADS))
    data = crash.core.read_bytes()
    packed = tmp_path / "core.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(data))
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    result = decompress(str(packed), "zstd", memory_budget=64 << 10)
    try:
        assert not result.in_memory
        assert result.warning is None
        assert result.data[:] == data
        assert list(scratch.iterdir()) == []
    finally:
        result.data.close()
    assert list(scratch.iterdir()) == []


def test_truncated_compressed_core(make_crash: Callable[..., Crash], tmp_path: Path) -> None:
    crash = make_crash("segv", str(THREADS))
    data = zstandard.ZstdCompressor().compress(crash.core.read_bytes())
    packed = tmp_path / "core.zst"
    packed.write_bytes(data[: len(data) * 3 // 4])
    with open_core(packed) as target:
        assert any("zstd stream ends early" in w for w in target.warnings), target.warnings
        assert any("truncated" in w for w in target.warnings)
        assert len(target.threads) == THREADS + 1


# -- files that moved, were rebuilt, or come from elsewhere --------------------------------


@pytest.fixture
def moved_exe_core(core_exe: Path, tmp_path: Path) -> tuple[Crash, Path]:
    """A core of a copy of the program that was then moved away; the copy's new place."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    program = run_dir / "prog"
    shutil.copy2(core_exe, program)
    crash = crash_into_core([str(program), "segv", "1"], tmp_path / "cwd")
    moved = tmp_path / "elsewhere" / "prog"
    moved.parent.mkdir()
    program.rename(moved)
    return crash, moved


def test_missing_executable_and_exe(moved_exe_core: tuple[Crash, Path]) -> None:
    crash, moved = moved_exe_core
    with open_core(crash.core) as target:
        assert len(target.warnings) == 1, target.warnings
        warning = target.warnings[0]
        assert str(crash.exe) in warning and "--exe" in warning and "not found" in warning
        # Without the file there is no name and no CFI: frame 0 is placed by
        # module and offset (and unwinding may stop there).
        frames = target.threads[0].backtrace()
        assert frames[0].function is None and frames[0].module == str(crash.exe)
        assert frames[0].offset is not None
        # The other thread, blocked in libc, still has libc's names.
        assert target.threads[1].backtrace()[0].function in ("pause", "poll")
    with open_core(crash.core, exe=moved) as target:
        assert target.warnings == []
        names = [f.function for f in target.threads[0].backtrace()]
        assert names[:4] == ["write_field", "crash_now", "run", "main"]
    with open_core(crash.core, exe=moved.parent / "nothing") as target:
        assert any("--exe" in w and "does not exist" in w for w in target.warnings)


def test_sysroot(moved_exe_core: tuple[Crash, Path], tmp_path: Path) -> None:
    crash, moved = moved_exe_core
    sysroot = tmp_path / "sysroot"
    with open_core(crash.core, exe=moved) as target:
        files = [m.path for m in target.modules if m.path.startswith("/")]
    for path in files:
        source = moved if path == str(crash.exe) else Path(path)
        copy = sysroot / path.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, copy)
    with open_core(crash.core, sysroot=sysroot) as target:
        assert target.warnings == []
        assert all(m.open_path.startswith(str(sysroot)) for m in target.modules if m.open_path)
        names = [f.function for f in target.threads[0].backtrace()]
        assert names[:4] == ["write_field", "crash_now", "run", "main"]
    empty = tmp_path / "empty-sysroot"
    empty.mkdir()
    with open_core(crash.core, sysroot=empty) as target:
        missing = [w for w in target.warnings if "not found" in w]
        assert len(missing) == len(files)
        assert all(str(empty) in w for w in missing)


def test_build_id_mismatch(core_exe: Path, tmp_path: Path) -> None:
    program = tmp_path / "prog"
    shutil.copy2(core_exe, program)
    crash = crash_into_core([str(program), "segv", "1"], tmp_path / "cwd")
    old_id = read_build_id(program)
    rebuilt = compile_c("core_crash.c", tmp_path, [*FLAGS, "-DREBUILT=1", "-O0"])
    shutil.copy2(rebuilt, program)
    new_id = read_build_id(program)
    assert old_id and new_id and old_id != new_id
    with open_core(crash.core) as target:
        mismatch = [w for w in target.warnings if "build-id mismatch" in w]
        assert len(mismatch) == 1, target.warnings
        assert old_id in mismatch[0] and new_id in mismatch[0] and str(program) in mismatch[0]
        assert len(target.threads) == 2
        target.threads[0].backtrace()  # still goes on


# -- bad input ------------------------------------------------------------------------------


def _notes_offset(data: bytes) -> tuple[int, int]:
    (phoff,) = struct.unpack_from("<Q", data, 32)
    (phnum,) = struct.unpack_from("<H", data, 56)
    for index in range(phnum):
        p_type, _f, offset, _v, _p, filesz = struct.unpack_from("<IIQQQQ", data, phoff + 56 * index)
        if p_type == 4:
            return offset, filesz
    raise AssertionError("no PT_NOTE")


def test_truncated_core(make_crash: Callable[..., Crash], tmp_path: Path) -> None:
    crash = make_crash("segv", str(THREADS))
    data = crash.core.read_bytes()
    notes_at, notes_size = _notes_offset(data)
    cut = tmp_path / "core"
    # Cut inside the memory: threads and notes are whole, some memory is gone.
    cut.write_bytes(data[: len(data) // 2])
    with open_core(cut) as target:
        truncated = [w for w in target.warnings if "truncated" in w]
        assert len(truncated) == 1 and "missing" in truncated[0] and "0x" in truncated[0]
        assert len(target.threads) == THREADS + 1
        for thread in target.threads:
            thread.backtrace()
    # Cut inside the notes: the notes before the cut are kept.
    cut.write_bytes(data[: notes_at + notes_size // 2])
    with open_core(cut) as target:
        assert target.warnings
        assert 1 <= len(target.threads) <= THREADS + 1
        assert target.threads[0].crashed
        target.threads[0].backtrace()
    # Cut inside the program headers: an error that says so.
    cut.write_bytes(data[:100])
    with pytest.raises(ElfError, match="past the end of the file"):
        open_core(cut)


def test_corrupt_note(make_crash: Callable[..., Crash], tmp_path: Path) -> None:
    crash = make_crash("segv", str(THREADS))
    data = bytearray(crash.core.read_bytes())
    notes_at, _size = _notes_offset(bytes(data))
    # The second note (NT_PRPSINFO after the first NT_PRSTATUS) claims a huge descsz.
    namesz, descsz, _type = struct.unpack_from("<III", data, notes_at)
    second = notes_at + 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    struct.pack_into("<I", data, second + 4, 0x7FFFFFF0)
    bad = tmp_path / "core"
    bad.write_bytes(bytes(data))
    with open_core(bad) as target:
        assert any("descsz" in w and "the 1 notes before it are used" in w for w in target.warnings)
        assert [t.tid for t in target.threads] == [target.threads[0].tid]
        assert target.process is None and target.mappings
        target.threads[0].backtrace()


def test_not_a_core(core_exe: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ElfError, match="not an ELF file") as error:
        open_core(text)
    assert "zstd, gzip or xz" in str(error.value)
    with pytest.raises(NotACore, match="this is an executable, not a core file") as not_core:
        open_core(core_exe)
    assert "redhand core CORE --exe FILE" in str(not_core.value)
    assert isinstance(not_core.value, ElfError)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ElfError, match="empty"):
        open_core(empty)
    with pytest.raises(ElfError, match="directory"):
        open_core(tmp_path)
    with pytest.raises(FileNotFound):
        open_core(tmp_path / "no-such-core")
    garbage = tmp_path / "garbage.zst"
    garbage.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(64))
    with pytest.raises(ElfError):
        open_core(garbage)


def test_32_bit_and_other_machines(make_crash: Callable[..., Crash], tmp_path: Path) -> None:
    data = bytearray(make_crash("segv", str(THREADS)).core.read_bytes()[:65536])
    path = tmp_path / "core"
    thirty_two = bytearray(data)
    thirty_two[4] = 1  # ELFCLASS32
    path.write_bytes(bytes(thirty_two))
    with pytest.raises(UnsupportedElf, match="32-bit"):
        open_core(path)
    arm = bytearray(data)
    struct.pack_into("<H", arm, 18, 183)  # EM_AARCH64
    path.write_bytes(bytes(arm))
    with pytest.raises(UnsupportedElf, match="not supported"):
        open_core(path)


# -- signal information ----------------------------------------------------------------------


def _siginfo(signo: int, errno: int, code: int, *words: int) -> bytes:
    body = struct.pack("<iii4x", signo, errno, code) + b"".join(
        struct.pack("<Q", word) for word in words
    )
    return body.ljust(128, b"\0")


def test_signal_info_decoding() -> None:
    segv = SignalInfo.from_bytes(_siginfo(signal.SIGSEGV, 0, 1, 0x10))
    assert (segv.name, segv.code_name, segv.address, segv.pid) == (
        "SIGSEGV", "SEGV_MAPERR", 0x10, None,
    )  # fmt: skip
    assert str(segv) == "SIGSEGV (SEGV_MAPERR) at 0x10"
    kernel = SignalInfo.from_bytes(_siginfo(signal.SIGSEGV, 0, 0x80, 0))
    assert (kernel.code_name, kernel.address) == ("SI_KERNEL", None)
    bus = SignalInfo.from_bytes(_siginfo(signal.SIGBUS, 0, 1, 0x1001))
    assert (bus.name, bus.code_name, bus.address) == ("SIGBUS", "BUS_ADRALN", 0x1001)
    user = SignalInfo.from_bytes(_siginfo(signal.SIGTERM, 0, 0, 1234 | 1000 << 32))
    assert (user.code_name, user.pid, user.uid, user.address) == ("SI_USER", 1234, 1000, None)
    tkill = SignalInfo.from_bytes(_siginfo(signal.SIGABRT, 0, -6, 77))
    assert (tkill.code_name, tkill.pid) == ("SI_TKILL", 77)
    ill = SignalInfo.from_bytes(_siginfo(signal.SIGILL, 0, 2, 0x401000))
    assert (ill.code_name, ill.address) == ("ILL_ILLOPN", 0x401000)
    odd = SignalInfo.from_bytes(_siginfo(40, 0, 99))
    assert (odd.name, odd.code_name) == ("SIGRTMIN+8", "si_code 99")
    with pytest.raises(ValueError):
        SignalInfo.from_bytes(b"\0" * 12)


def test_public_api() -> None:
    assert redhand.open_core is open_core
    assert "open_core" in redhand.__all__
