"""The persistent cache of symbol indexes: exact, invalidated when its inputs change,
never an error, atomic, bounded, and shared by redhand processes running at once."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from elf_helpers import LIBC, PROGRAM_C, compile_c, make_minidebuginfo, nm_symbols, require, run
from helpers import LiveProgram
from helpers import compile_c as compile_program

from redhand import cache
from redhand.elf import ElfFile
from redhand.symbols import ModuleSymbols, clear_cache
from redhand.symbols import table as table_module

CXX_PROGRAM = r"""
#include <cstdio>
#include <map>
#include <string>
#include <vector>
namespace shop {
template <typename T> struct Basket {
    std::vector<T> items;
    __attribute__((noinline)) T total() const {
        T sum{};
        for (auto &i : items) sum += i;
        return sum;
    }
};
__attribute__((noinline)) std::string label(const std::map<std::string, int> &prices) {
    std::string out;
    for (auto &kv : prices) out += kv.first;
    return out;
}
}
int main(int argc, char **) {
    shop::Basket<double> basket{{1.0, 2.0 * argc}};
    std::map<std::string, int> prices{{"a", 1}};
    std::printf("%f %s\n", basket.total(), shop::label(prices).c_str());
    return 0;
}
"""

SLEEPER_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) void wait_here(void) { for (;;) pause(); }
int main(void) {
    printf("thread main %ld\nready\n", (long)getpid());
    fflush(stdout);
    wait_here();
}
"""


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory of this test, and no index shared in the process."""
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("REDHAND_CACHE", raising=False)
    clear_cache()
    yield home / "redhand"
    clear_cache()


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require("gcc")
    require("g++")
    tmp = tmp_path_factory.mktemp("cache-programs")
    out = {
        "pie": compile_c(tmp, "pie", PROGRAM_C, "-O2", "-g"),
        "nopie": compile_c(tmp, "nopie", PROGRAM_C, "-O2", "-no-pie"),
        "static": compile_c(tmp, "static", PROGRAM_C, "-O2", "-static"),
        "nobuildid": compile_c(tmp, "nobuildid", PROGRAM_C, "-O2", "-Wl,--build-id=none"),
        "cxx": compile_c(tmp, "cxx", CXX_PROGRAM, "-O2", cxx=True),
    }
    stripped = tmp / "stripped"
    shutil.copy(out["pie"], stripped)
    run("strip", stripped)
    out["stripped"] = stripped
    out["mini"] = make_minidebuginfo(out["pie"], tmp / "mini")
    return out


def entries(root: Path) -> list[Path]:
    folder = root / "symbols"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def symbols_of(path: Path | str, **kwargs: object) -> ModuleSymbols:
    """The symbols of a file, the index built or read (the in-process sharing forgotten)."""
    clear_cache()
    symbols = ModuleSymbols(ElfFile.open(str(path)), **kwargs)  # type: ignore[arg-type]
    symbols._ensure()
    return symbols


def fresh_symbols(
    path: Path | str, monkeypatch: pytest.MonkeyPatch, **kwargs: object
) -> ModuleSymbols:
    with monkeypatch.context() as patch:
        patch.setenv("REDHAND_CACHE", "0")
        symbols = symbols_of(path, **kwargs)
        symbols._ensure()
    assert symbols.cache_path is None
    return symbols


def probe_addresses(symbols: ModuleSymbols, seed: int) -> list[int]:
    """Every symbol's edges and middle, and random addresses around them."""
    ranges = symbols.function_ranges()
    index = symbols._ensure()
    starts = list(index.starts)
    addresses = set()
    for start in starts:
        addresses.update((start - 1, start, start + 1))
    for start, end in ranges:
        addresses.update(((start + end) // 2, end - 1, end, end + 1))
    rng = random.Random(seed)
    low, high = min(starts, default=0), max((end for _, end in ranges), default=0x10000)
    addresses.update(rng.randrange(max(low - 0x1000, 0), high + 0x1000) for _ in range(3000))
    return sorted(a for a in addresses if a >= 0)


def assert_same_index(fresh: ModuleSymbols, cached: ModuleSymbols, seed: int = 1) -> None:
    """The cached index answers every question exactly as the freshly built one."""
    a, b = fresh._ensure(), cached._ensure()
    assert list(a.starts) == list(b.starts)
    assert list(a.sizes) == list(b.sizes)
    assert list(a.maxend) == list(b.maxend)
    assert bytes(a.flags) == bytes(b.flags)
    assert list(a.refs) == list(b.refs)
    assert a.names == b.names
    assert a.limits == b.limits and a.large == b.large
    assert len(fresh) == len(cached)
    assert fresh.debug_file == cached.debug_file
    assert fresh.sources == [line for line in cached.sources if "from the cache" not in line]
    assert fresh.function_ranges() == cached.function_ranges()
    for address in probe_addresses(fresh, seed):
        assert fresh.lookup(address) == cached.lookup(address), hex(address)
    for i in range(len(a.starts)):
        name = a.raw_name(i)
        assert fresh.get_symbol(name) == cached.get_symbol(name), name


def cached_copy(path: Path | str, root: Path, **kwargs: object) -> ModuleSymbols:
    """Build (and store) an index, then read it back from the persistent cache."""
    writer = symbols_of(path, **kwargs)
    writer._ensure()
    assert writer.cache_path is None, "the first index must be built, not read"
    assert entries(root), "nothing was written to the cache"
    reader = symbols_of(path, **kwargs)
    reader._ensure()
    assert reader.cache_path is not None, "the second index must come from the cache"
    return reader


# -- exactness -------------------------------------------------------------------------


def test_libc_from_the_cache_is_exact(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = fresh_symbols(LIBC, monkeypatch)
    assert fresh.debug_file is not None, "libc6-dbg's debug file should be used"
    cached = cached_copy(LIBC, cache_home)
    assert_same_index(fresh, cached)
    assert cached.lookup(cached.get_symbol("__poll").start + 4).symbol.name == "poll"  # type: ignore[union-attr]
    # Without debug files the index is another one, in another entry.
    fresh_plain = fresh_symbols(LIBC, monkeypatch, debug_dirs=())
    cached_plain = cached_copy(LIBC, cache_home, debug_dirs=())
    assert cached_plain.cache_path != cached.cache_path
    assert cached_plain.debug_file is None
    assert_same_index(fresh_plain, cached_plain, seed=2)


@pytest.mark.parametrize("kind", ["pie", "nopie", "static", "cxx", "stripped", "mini", "nobuildid"])
def test_programs_from_the_cache_are_exact(
    programs: dict[str, Path], kind: str, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = fresh_symbols(programs[kind], monkeypatch, debug_dirs=())
    cached = cached_copy(programs[kind], cache_home, debug_dirs=())
    assert_same_index(fresh, cached)
    if kind == "cxx":
        names = set()
        for start, _end in cached.function_ranges():
            match = cached.lookup(start)
            assert match is not None
            names.add(match.symbol.name)
        assert any(name.startswith("shop::label(") for name in names)
        assert "shop::Basket<double>::total() const" in names
        assert any(name.endswith("@plt") for name in names)


def test_live_stack_is_the_same_cold_warm_and_without_cache(
    tmp_path: Path, cache_home: Path
) -> None:
    binary = compile_program(SLEEPER_C, tmp_path, ["-O2", "-g"])
    env = dict(os.environ, XDG_CACHE_HOME=str(cache_home.parent))

    def stack(pid: int, **extra: str) -> list[dict[str, object]]:
        result = subprocess.run(
            [sys.executable, "-m", "redhand", "stack", "--json", str(pid)],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        threads: list[dict[str, object]] = json.loads(result.stdout)["threads"]
        return threads

    with LiveProgram([binary], blocked={"main": 34}) as program:
        without = stack(program.pid, REDHAND_CACHE="0")
        assert not entries(cache_home)
        cold = stack(program.pid)
        written = entries(cache_home)
        assert written, "the cold run writes the cache"
        warm = stack(program.pid)
        assert entries(cache_home) == written
    frames = [[(f["pc"], f["function"], f["offset"]) for f in t["frames"]] for t in without]  # type: ignore[attr-defined]
    assert [[(f["pc"], f["function"], f["offset"]) for f in t["frames"]] for t in cold] == frames  # type: ignore[attr-defined]
    assert [[(f["pc"], f["function"], f["offset"]) for f in t["frames"]] for t in warm] == frames  # type: ignore[attr-defined]
    names = [f["function"] for f in without[0]["frames"]]  # type: ignore[index]
    assert "wait_here" in names and "main" in names


# -- invalidation ----------------------------------------------------------------------


def split_debug(binary: Path, directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    debug = directory / "prog.debug"
    run("objcopy", "--only-keep-debug", binary, debug)
    stripped = directory / "prog"
    run("objcopy", "--strip-all", binary, stripped)
    return stripped, debug


def test_a_debug_file_installed_later_is_used(
    programs: dict[str, Path], tmp_path: Path, cache_home: Path
) -> None:
    stripped, debug = split_debug(programs["pie"], tmp_path / "bin")
    build_id = ElfFile.open(str(stripped)).build_id
    assert build_id
    debug_dir = tmp_path / "debug"
    debug_dir.mkdir()
    static_helper = nm_symbols(programs["pie"])["static_helper"]

    before = symbols_of(stripped, debug_dirs=[str(debug_dir)])
    assert before.debug_file is None and before.lookup(static_helper + 1) is None
    assert entries(cache_home)

    # Installed: the entry no longer describes what is on disk.
    target = debug_dir / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    target.parent.mkdir(parents=True)
    shutil.copy(debug, target)
    after = symbols_of(stripped, debug_dirs=[str(debug_dir)])
    assert after.cache_path is None, "a stale entry was used"
    assert after.debug_file == str(target)
    assert after.lookup(static_helper + 1).symbol.name == "static_helper"  # type: ignore[union-attr]
    again = symbols_of(stripped, debug_dirs=[str(debug_dir)])
    assert again.cache_path is not None and again.debug_file == str(target)

    # Replaced (another mtime): rebuilt.  Removed: rebuilt without it.
    os.utime(target, ns=(time.time_ns(), time.time_ns() - 10**9))
    replaced = symbols_of(stripped, debug_dirs=[str(debug_dir)])
    assert replaced.cache_path is None and replaced.debug_file == str(target)
    target.unlink()
    removed = symbols_of(stripped, debug_dirs=[str(debug_dir)])
    assert removed.cache_path is None and removed.debug_file is None
    assert removed.lookup(static_helper + 1) is None


def test_copies_with_one_build_id_do_not_share_an_entry(
    programs: dict[str, Path], cache_home: Path
) -> None:
    # strip keeps the build-id: a stripped copy must not get the full copy's names.
    full = symbols_of(programs["pie"], debug_dirs=())
    full._ensure()
    stripped = symbols_of(programs["stripped"], debug_dirs=())
    stripped._ensure()
    assert full.build_id == stripped.build_id
    assert stripped.cache_path is None
    assert len(entries(cache_home)) == 2
    static_helper = nm_symbols(programs["pie"])["static_helper"]
    assert stripped.lookup(static_helper + 1) is None


# -- never an error ----------------------------------------------------------------------


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":
        data[len(data) // 2] ^= 0x40
    elif how == "format":
        data[8] ^= 0xFF  # the format number
    elif how == "garbage":
        data = bytearray(random.Random(3).randbytes(len(data)))
    elif how == "empty":
        data = bytearray()
    elif how == "payload":
        # A valid entry (header and CRC right) whose payload is not an index.
        import marshal
        import zlib

        payload = marshal.dumps((1, "not", "an", "index"))
        header = cache._HEADER.pack(cache._MAGIC, cache.FORMAT, len(payload), zlib.crc32(payload))
        data = bytearray(header + payload)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "flipped", "format", "garbage", "empty", "payload"])
def test_a_corrupt_entry_is_ignored_and_rewritten(
    programs: dict[str, Path], cache_home: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    fresh = fresh_symbols(programs["pie"], monkeypatch, debug_dirs=())
    cached_copy(programs["pie"], cache_home, debug_dirs=())
    (entry,) = entries(cache_home)
    corrupt(entry, how)
    rebuilt = symbols_of(programs["pie"], debug_dirs=())
    rebuilt._ensure()
    assert rebuilt.cache_path is None
    assert_same_index(fresh, rebuilt)
    again = symbols_of(programs["pie"], debug_dirs=())
    again._ensure()
    assert again.cache_path == str(entry), "the entry was not rewritten"
    assert_same_index(fresh, again)


@pytest.mark.parametrize("where", ["file", "off", "relative", "no-home"])
def test_no_usable_cache_directory_is_no_cache(
    programs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.delenv("REDHAND_CACHE", raising=False)
    if where == "file":
        monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    elif where == "off":
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("REDHAND_CACHE", "off")
    elif where == "relative":
        # The XDG spec: a relative XDG_CACHE_HOME is ignored; HOME's .cache is used.
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
        monkeypatch.setenv("HOME", str(blocker))
    else:
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", "")
    clear_cache()
    symbols = symbols_of(programs["pie"], debug_dirs=())
    assert symbols.lookup(nm_symbols(programs["pie"])["main"]) is not None
    assert symbols.cache_path is None
    assert not (tmp_path / "home").exists()
    assert not Path("relative").exists()
    if where == "off":
        assert cache.directory() is None


# -- writing: atomic, concurrent, bounded ------------------------------------------------

WRITER = r"""
import sys
from redhand import cache
name, size, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(rounds):
    assert cache.write("race", name, bytes([int(sys.argv[4])]) * size)
    data = cache.read("race", name)
    assert data is not None and len(data) == size and len(set(data)) == 1, "a torn entry"
"""


def test_concurrent_writers_never_leave_a_torn_entry(cache_home: Path) -> None:
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, "shared", str(1 << 20), "15", str(n)],
            env=dict(os.environ, XDG_CACHE_HOME=str(cache_home.parent)),
        )
        for n in range(1, 5)
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0, 0, 0]
    data = cache.read("race", "shared")
    assert data is not None and len(data) == 1 << 20 and len(set(data)) == 1
    assert [path.name for path in (cache_home / "race").iterdir()] == ["shared"]


def test_trim_keeps_the_cache_under_its_bound(cache_home: Path) -> None:
    now = time.time()
    for n in range(10):
        assert cache.write("bulk", f"entry{n}", bytes(1000))
        os.utime(cache_home / "bulk" / f"entry{n}", (now - 100 + n, now - 100 + n))
    stale = cache_home / "bulk" / "entry3.123.abcd.tmp"
    stale.write_bytes(b"left by a killed writer")
    os.utime(stale, (now - 7200, now - 7200))
    fresh_temporary = cache_home / "bulk" / "entry4.456.beef.tmp"
    fresh_temporary.write_bytes(b"being written right now")
    entry_size = (cache_home / "bulk" / "entry0").stat().st_size
    cache.trim(str(cache_home), max_bytes=4 * entry_size)
    left = sorted(path.name for path in (cache_home / "bulk").iterdir())
    # The oldest entries went first; a stale temporary file went, a young one stays.
    assert left == ["entry4.456.beef.tmp", "entry6", "entry7", "entry8", "entry9"]


def test_a_read_refreshes_an_old_entry(cache_home: Path) -> None:
    assert cache.write("lru", "old", b"x" * 100)
    path = cache_home / "lru" / "old"
    old = time.time() - 3 * 24 * 3600
    os.utime(path, (old, old))
    assert cache.read("lru", "old") == b"x" * 100
    assert path.stat().st_mtime > old + 24 * 3600


def test_writes_leave_no_temporary_files(cache_home: Path) -> None:
    assert cache.write("tidy", "one", b"payload")
    assert cache.write("tidy", "empty", b"")
    assert sorted(path.name for path in (cache_home / "tidy").iterdir()) == ["empty", "one"]
    assert cache.read("tidy", "one") == b"payload"
    assert cache.read("tidy", "empty") == b""
    assert cache.read("tidy", "missing") is None


def test_warm_libc_index_is_read_not_built(
    cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm look at libc reads its index from the cache and never parses its symbols.

    (How long that takes is for bench/stack.py's warm runs.)
    """
    cached_copy(LIBC, cache_home)
    malloc = nm_symbols(LIBC, "-D")["malloc@@GLIBC_2.2.5"]

    def no_build(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("the index was built again")

    monkeypatch.setattr(table_module, "_build", no_build)
    for _ in range(3):
        clear_cache()
        symbols = ModuleSymbols(ElfFile.open(LIBC), origin_path=LIBC)
        symbols._ensure()
        assert symbols.cache_path is not None
        assert symbols.lookup(malloc) is not None
