"""redhand.symbols against real files: names of addresses compared with nm,
addr2line, objdump and gdb; libc with libc6-dbg's debug file; stripped
binaries; PLT stubs; debug files found by build-id, .gnu_debuglink and
MiniDebugInfo."""

from __future__ import annotations

import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest
from elf_helpers import (
    DEBUG_ROOT,
    LIBC,
    PROGRAM_C,
    compile_c,
    gdb_info_symbol,
    make_minidebuginfo,
    nm_symbols,
    objdump_plt_names,
    require,
    run,
)

from redhand.elf import ElfFile
from redhand.elf import constants as c
from redhand.elf.plt import iter_plt_stubs
from redhand.errors import ElfError
from redhand.symbols import (
    ModuleSymbols,
    Symbol,
    SymbolMatch,
    clear_cache,
    debug_file_candidates,
    find_debug_file,
)

LIBRARY_C = r"""
__attribute__((noinline)) static int hidden_worker(int x) { asm volatile(""); return x * 7; }
__attribute__((noinline)) int exported_entry(int x) { return hidden_worker(x) + 1; }
"""

LABELS_C = r"""
/* A sized function with a '$x' mapping-style label inside it, then an untyped
   region after a '$d' label: neither label may ever name an address. */
asm(".text\n"
    ".p2align 4\n"
    ".globl real_asm\n"
    ".type real_asm, @function\n"
    "real_asm:\n"
    "  nop\n  nop\n"
    "\"$x\":\n"
    "  nop\n  ret\n"
    ".size real_asm, .-real_asm\n"
    "\"$d\":\n"
    "  nop\n  nop\n  nop\n  ret\n");
int main(void) { return 0; }
"""


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    clear_cache()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require("gcc")
    tmp = tmp_path_factory.mktemp("symbols")
    out = {
        "pie": compile_c(tmp, "pie", PROGRAM_C, "-O2", "-g"),
        "nopie": compile_c(tmp, "nopie", PROGRAM_C, "-O2", "-g", "-no-pie"),
        "ibt": compile_c(
            tmp, "ibt", PROGRAM_C, "-O2", "-fcf-protection", "-Wl,-z,ibtplt", "-Wl,-z,now"
        ),
        "static": compile_c(tmp, "static", PROGRAM_C, "-O2", "-static"),
        "nobuildid": compile_c(tmp, "nobuildid", PROGRAM_C, "-O2", "-g", "-Wl,--build-id=none"),
        "lib": compile_c(tmp, "libdemo.so", LIBRARY_C, "-O2", "-shared", "-fPIC"),
        "labels": compile_c(tmp, "labels", LABELS_C, "-O2"),
    }
    stripped = tmp / "stripped"
    shutil.copy(out["pie"], stripped)
    run("strip", stripped)
    out["stripped"] = stripped
    lib_stripped = tmp / "libdemo-stripped.so"
    shutil.copy(out["lib"], lib_stripped)
    run("strip", lib_stripped)
    out["lib-stripped"] = lib_stripped
    out["mini"] = make_minidebuginfo(out["pie"], tmp / "mini")
    out["lib-mini"] = make_minidebuginfo(out["lib"], tmp / "libdemo-mini.so")
    return out


def symbols_of(path: Path | str, **kwargs: object) -> ModuleSymbols:
    return ModuleSymbols(ElfFile.open(str(path)), **kwargs)  # type: ignore[arg-type]


def name_at(symbols: ModuleSymbols, address: int) -> str | None:
    match = symbols.lookup(address)
    return None if match is None else match.symbol.name


# -- compiled programs -----------------------------------------------------------------


def test_every_function_by_nm_and_gdb(built: dict[str, Path]) -> None:
    path = built["pie"]
    symbols = symbols_of(path)
    sized = {sym.name: sym for sym in ElfFile.open(str(path)).iter_symbols() if sym.size}
    functions = {
        name: address
        for name, address in nm_symbols(path).items()
        if name in sized and sized[name].type == c.STT_FUNC
    }
    addresses = []
    for name, address in sorted(functions.items()):
        match = symbols.lookup(address)
        assert match is not None and match.exact and match.offset == 0, name
        mid = address + sized[name].size // 2
        assert symbols.lookup(mid) == SymbolMatch(match.symbol, mid - address, True)
        addresses += [address, mid]
    # gdb's minimal symbols are the oracle for names and offsets, aliases included.
    answers = gdb_info_symbol(path, addresses)
    assert len(answers) == len(addresses)
    for address, answer in zip(addresses, answers, strict=True):
        found = re.match(r"(\S+)(?: \+ (\d+))? in section", answer)
        assert found, answer
        match = symbols.lookup(address)
        assert match is not None
        assert (match.symbol.name, match.offset) == (found.group(1), int(found.group(2) or 0))


def test_aliases_choose_the_public_name_gdb_prints(built: dict[str, Path]) -> None:
    symbols = symbols_of(built["pie"])
    address = nm_symbols(built["pie"])["middle_function"]
    match = symbols.lookup(address + 1)
    assert match is not None
    # middle_function and weak_alias share start and size; gdb prints the greater name.
    assert match.symbol.name == "weak_alias"
    static = nm_symbols(built["pie"])["static_helper"]
    assert name_at(symbols, static + 1) == "static_helper"


def test_names_agree_with_addr2line(built: dict[str, Path]) -> None:
    path = built["nopie"]
    symbols = symbols_of(path)
    nm = nm_symbols(path)
    wanted = ["leaf_function", "static_helper", "main"]
    addresses = [f"{nm[name] + 2:#x}" for name in wanted]
    lines = run("addr2line", "-f", "-e", path, *addresses).splitlines()[::2]
    assert [name_at(symbols, int(a, 16)) for a in addresses] == lines == wanted


def test_assembly_label_is_a_nearest_guess(built: dict[str, Path]) -> None:
    symbols = symbols_of(built["pie"])
    label = nm_symbols(built["pie"])["asm_label"]
    exact = symbols.lookup(label)
    assert exact is not None
    assert exact.symbol.name == "asm_label"
    assert not exact.exact and exact.offset == 0
    inside = symbols.lookup(label + 3)
    assert inside is not None
    assert (inside.symbol.name, inside.offset, inside.exact) == ("asm_label", 3, False)
    assert "nearest label" in str(inside)


def test_mapping_style_labels_never_name_code(built: dict[str, Path]) -> None:
    path = built["labels"]
    names = {sym.name: sym for sym in ElfFile.open(str(path)).iter_symbols()}
    assert "$x" in names and "$d" in names
    symbols = symbols_of(path)
    start = names["real_asm"].value
    assert name_at(symbols, names["$x"].value) == "real_asm"
    assert symbols.lookup(names["$d"].value + 1) is None
    assert symbols.lookup(start + 3) == SymbolMatch(
        Symbol("real_asm", "real_asm", start, names["real_asm"].size), 3, True
    )


def test_outside_every_symbol_is_none(built: dict[str, Path]) -> None:
    symbols = symbols_of(built["pie"])
    assert symbols.lookup(0) is None
    assert symbols.lookup(1 << 40) is None
    elf = ElfFile.open(str(built["pie"]))
    plt = elf.get_section_by_name(".plt")
    assert plt is not None
    assert symbols.lookup(plt.sh_addr) is None  # PLT0, the resolver trampoline: no name


def test_stripped_binary_has_no_invented_names(built: dict[str, Path]) -> None:
    nm = nm_symbols(built["pie"])
    symbols = symbols_of(built["stripped"], debug_dirs=())
    for name in ("leaf_function", "static_helper", "middle_function", "main"):
        assert symbols.lookup(nm[name] + 1) is None, name
    plt = objdump_plt_names(built["stripped"])
    assert plt and all(name_at(symbols, a) == name for a, name in plt.items())


def test_stripped_library_keeps_exported_names(built: dict[str, Path]) -> None:
    nm = nm_symbols(built["lib"])
    symbols = symbols_of(built["lib-stripped"], debug_dirs=())
    assert name_at(symbols, nm["exported_entry"] + 1) == "exported_entry"
    assert symbols.lookup(nm["hidden_worker"] + 1) is None
    assert any(".dynsym" in line for line in symbols.sources)


@pytest.mark.parametrize("kind", ["nopie", "pie", "ibt", "stripped"])
def test_plt_names_match_objdump(built: dict[str, Path], kind: str) -> None:
    expected = objdump_plt_names(built[kind])
    assert {"printf@plt", "puts@plt", "strlen@plt"} <= set(expected.values())
    if kind == "ibt":
        elf = ElfFile.open(str(built[kind]))
        plt_sec = elf.get_section_by_name(".plt.sec")
        assert plt_sec is not None
        assert any(plt_sec.contains_vaddr(a) for a in expected)
    symbols = symbols_of(built[kind])
    for address, name in expected.items():
        match = symbols.lookup(address)
        assert match is not None, name
        assert (match.symbol.name, match.offset, match.exact) == (name, 0, True)
        assert name_at(symbols, address + 4) == name


def test_static_binary_ifunc_plt_named_after_the_ifunc(built: dict[str, Path]) -> None:
    path = built["static"]
    elf = ElfFile.open(str(path))
    stubs = list(iter_plt_stubs(elf))
    assert stubs and all(stub.reloc_type == c.R_X86_64_IRELATIVE for stub in stubs)
    ifuncs: dict[int, set[str]] = {}
    for sym in elf.iter_symbols():
        if sym.type == c.STT_GNU_IFUNC and sym.bind != c.STB_LOCAL:
            ifuncs.setdefault(sym.value, set()).add(sym.name)
    symbols = ModuleSymbols(elf)
    for stub in stubs:
        match = symbols.lookup(stub.address)
        assert match is not None and match.symbol.name.endswith("@plt")
        name = match.symbol.name[: -len("@plt")]
        if stub.addend in ifuncs:
            assert name in ifuncs[stub.addend]
        else:
            assert name.startswith("*ABS*+0x")


def test_symbol_objects_and_lookup_by_name(built: dict[str, Path]) -> None:
    symbols = symbols_of(built["pie"])
    leaf = symbols.get_symbol("leaf_function")
    assert leaf is not None and leaf.size > 0
    assert leaf.contains(leaf.start) and not leaf.contains(leaf.end)
    match = symbols.lookup(leaf.start + 1)
    assert match is not None and match.symbol is symbols.lookup(leaf.start + 1).symbol  # type: ignore[union-attr]
    assert str(match) == "leaf_function+0x1"
    ranges = symbols.function_ranges()
    assert ranges == sorted(ranges)
    assert (leaf.start, leaf.end) in ranges
    assert len(symbols) >= len(ranges)


# -- libc and libc6-dbg ----------------------------------------------------------------


def libc_debug_file() -> str:
    build_id = ElfFile.open(LIBC).build_id
    assert build_id
    path = f"{DEBUG_ROOT}/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    if not os.path.exists(path):
        pytest.fail(f"libc's debug file {path} is missing: apt-get install libc6-dbg")
    return path


def test_libc_with_debug_file() -> None:
    debug = libc_debug_file()
    symbols = symbols_of(LIBC)
    assert symbols.debug_file == debug
    assert any(debug in line for line in symbols.sources)
    for raw, shown in [
        ("__poll", "poll"),
        ("__GI___poll", "poll"),
        ("__nanosleep", "nanosleep"),
        ("__libc_read", "read"),
        ("__memcpy_avx_unaligned_erms", "__memmove_avx_unaligned_erms"),
        ("__strlen_avx2", "__strlen_avx2"),
    ]:
        sym = symbols.get_symbol(raw)
        assert sym is not None, raw
        match = symbols.lookup(sym.start + 3)
        assert match is not None and match.exact
        assert (match.symbol.name, match.offset) == (shown, 3), raw
    # memcpy is an IFUNC (type 10): it must be in the index, not dropped.
    memcpy = symbols.get_symbol("memcpy")
    assert memcpy is not None
    assert name_at(symbols, memcpy.start) == "memcpy"
    # Internal functions only the debug file names.
    hidden = symbols.get_symbol("__pthread_kill_implementation")
    assert hidden is not None
    assert name_at(symbols, hidden.start + 1) == "__pthread_kill_implementation"


def test_libc_names_match_gdb_info_symbol() -> None:
    libc_debug_file()
    symbols = symbols_of(LIBC)
    elf = ElfFile.open(LIBC)
    exported = sorted(
        {s.value for s in elf.iter_symbols(".dynsym") if s.type == c.STT_FUNC and s.size > 8}
    )
    sample = exported[:: max(1, len(exported) // 40)]
    extra = [
        symbols.get_symbol(name)
        for name in ("__memmove_avx_unaligned_erms", "__GI___poll", "__nanosleep")
    ]
    addresses = [a + 4 for a in sample] + [s.start + 7 for s in extra if s is not None]
    answers = gdb_info_symbol(LIBC, addresses)
    assert len(answers) == len(addresses)
    for address, answer in zip(addresses, answers, strict=True):
        found = re.match(r"(\S+)(?: \+ (\d+))? in section", answer)
        assert found, answer
        match = symbols.lookup(address)
        assert match is not None
        assert (match.symbol.name, match.offset) == (found.group(1), int(found.group(2) or 0))


def test_libc_names_are_the_same_without_debug_files() -> None:
    with_debug = symbols_of(LIBC)
    without = symbols_of(LIBC, debug_dirs=())
    assert without.debug_file is None
    for name in ("poll", "nanosleep", "read", "write", "memcpy", "malloc", "free"):
        sym = with_debug.get_symbol(name)
        assert sym is not None
        assert name_at(without, sym.start + 2) == name_at(with_debug, sym.start + 2) == name
    internal = with_debug.get_symbol("__memmove_avx_unaligned_erms")
    assert internal is not None
    assert without.lookup(internal.start + 2) is None


def test_libc_speed() -> None:
    libc_debug_file()
    elf = ElfFile.open(LIBC)
    started = time.perf_counter()
    symbols = ModuleSymbols(elf)
    assert name_at(symbols, symbols_of(LIBC).get_symbol("__poll").start + 1) == "poll"  # type: ignore[union-attr]
    first = time.perf_counter() - started
    assert first < 0.25, f"first lookup in libc took {first * 1e3:.1f} ms"
    addresses = [r[0] + 3 for r in symbols.function_ranges()[::7]][:2000]
    for address in addresses:
        symbols.lookup(address)
    started = time.perf_counter()
    for address in addresses:
        symbols.lookup(address + 1)
    per_lookup = (time.perf_counter() - started) / len(addresses)
    assert per_lookup < 100e-6, f"a lookup took {per_lookup * 1e6:.1f} µs"


def test_debug_elf_is_reopened_for_other_readers() -> None:
    debug = libc_debug_file()
    symbols = symbols_of(LIBC)
    elf = symbols.debug_elf
    assert elf is not None and elf.path == debug
    assert elf.build_id == ElfFile.open(LIBC).build_id
    assert symbols.debug_elf is elf
    symbols.close()
    assert elf.closed
    assert name_at(symbols, symbols.get_symbol("__poll").start) == "poll"  # type: ignore[union-attr]
    assert symbols_of(LIBC, debug_dirs=()).debug_elf is None


def test_index_is_shared_per_build_id() -> None:
    first_elf = ElfFile.open(LIBC)
    first = ModuleSymbols(first_elf)
    assert first.lookup(first.get_symbol("__poll").start) is not None  # type: ignore[union-attr]
    second_elf = ElfFile.open(LIBC)
    second_elf_closed = second_elf
    second = ModuleSymbols(second_elf)
    second_elf_closed.close()  # the shared index needs nothing from it
    assert second._ensure() is first._ensure()
    assert name_at(second, first.get_symbol("__poll").start) == "poll"  # type: ignore[union-attr]


# -- separate debug files --------------------------------------------------------------


def split_debug(binary: Path, directory: Path, name: str) -> tuple[Path, Path]:
    """A stripped copy with a .gnu_debuglink, and its debug file, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    debug = directory / f"{name}.debug"
    run("objcopy", "--only-keep-debug", binary, debug)
    stripped = directory / name
    run("objcopy", "--strip-all", f"--add-gnu-debuglink={debug}", binary, stripped)
    return stripped, debug


def test_debug_file_by_build_id(built: dict[str, Path], tmp_path: Path) -> None:
    stripped, debug = split_debug(built["pie"], tmp_path / "bin", "prog")
    build_id = ElfFile.open(str(stripped)).build_id
    assert build_id
    debug_dir = tmp_path / "debug"
    target = debug_dir / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    target.parent.mkdir(parents=True)
    shutil.move(debug, target)
    symbols = symbols_of(stripped, debug_dirs=[str(debug_dir)])
    assert symbols.debug_file == str(target)
    nm = nm_symbols(built["pie"])
    assert name_at(symbols, nm["static_helper"] + 1) == "static_helper"
    found = find_debug_file(ElfFile.open(str(stripped)), str(stripped), [str(debug_dir)])
    assert found is not None and found.path == str(target)


@pytest.mark.parametrize("where", ["same", "dot-debug", "global"])
def test_debug_file_by_debuglink(built: dict[str, Path], tmp_path: Path, where: str) -> None:
    bindir = tmp_path / "bin"
    stripped, debug = split_debug(built["pie"], bindir, "prog")
    debug_dir = tmp_path / "debug"
    debug_dir.mkdir()
    if where == "dot-debug":
        (bindir / ".debug").mkdir()
        debug = Path(shutil.move(debug, bindir / ".debug" / debug.name))
    elif where == "global":
        place = debug_dir / str(bindir).lstrip("/") / debug.name
        place.parent.mkdir(parents=True)
        debug = Path(shutil.move(debug, place))
    # No build-id directory holds it: only the debuglink can find it.
    symbols = symbols_of(stripped, debug_dirs=[str(debug_dir)])
    assert symbols.debug_file == str(debug)
    assert name_at(symbols, nm_symbols(built["pie"])["static_helper"] + 1) == "static_helper"


def test_debuglink_with_crc_and_origin_path(built: dict[str, Path], tmp_path: Path) -> None:
    # No build-id: the debuglink CRC32 decides.
    stripped, debug = split_debug(built["nobuildid"], tmp_path / "bin", "prog")
    elf = ElfFile.open(str(stripped))
    assert elf.build_id is None
    found = find_debug_file(elf, str(stripped), ())
    assert found is not None and found.path == str(debug)
    # The binary read through another path (like /proc/PID/map_files/...):
    # the debuglink directory comes from the path the process saw.
    elsewhere = tmp_path / "map_files"
    elsewhere.mkdir()
    alias = elsewhere / "7f00-7f10"
    alias.symlink_to(stripped)
    # A symlink is followed to the directory of the file it points to.
    assert find_debug_file(ElfFile.open(str(alias)), str(alias), ()) is not None
    copy = elsewhere / "copy"
    shutil.copy(stripped, copy)
    assert find_debug_file(ElfFile.open(str(copy)), str(copy), ()) is None
    found = find_debug_file(ElfFile.open(str(copy)), str(copy), (), origin_path=str(stripped))
    assert found is not None and found.path == str(debug)
    # A debug file with the wrong CRC is rejected, and says why.
    data = bytearray(debug.read_bytes())
    data[-1] ^= 0xFF
    debug.write_bytes(bytes(data))
    tried: list[str] = []
    assert find_debug_file(elf, str(stripped), (), tried=tried) is None
    assert any("CRC32" in line and str(debug) in line for line in tried)


def test_debug_file_with_another_build_id_is_rejected(
    built: dict[str, Path], tmp_path: Path
) -> None:
    stripped, _ = split_debug(built["pie"], tmp_path / "bin", "prog")
    _, other_debug = split_debug(built["nopie"], tmp_path / "other", "other")
    build_id = ElfFile.open(str(stripped)).build_id
    assert build_id
    target = tmp_path / "debug" / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    target.parent.mkdir(parents=True)
    shutil.copy(other_debug, target)
    (tmp_path / "bin" / "prog.debug").unlink()
    tried: list[str] = []
    elf = ElfFile.open(str(stripped))
    assert find_debug_file(elf, str(stripped), [str(tmp_path / "debug")], tried=tried) is None
    assert any("does not match" in line for line in tried)
    symbols = symbols_of(stripped, debug_dirs=[str(tmp_path / "debug")])
    assert symbols.debug_file is None
    assert any("does not match" in line for line in symbols.sources)


def test_candidates_follow_gdbs_order(built: dict[str, Path], tmp_path: Path) -> None:
    stripped, _ = split_debug(built["pie"], tmp_path / "bin", "prog")
    elf = ElfFile.open(str(stripped))
    build_id = elf.build_id
    assert build_id
    candidates = debug_file_candidates(elf, str(stripped), ["/d1", "/d2"])
    bindir = str(tmp_path / "bin")
    assert candidates == [
        (f"/d1/.build-id/{build_id[:2]}/{build_id[2:]}.debug", "build-id"),
        (f"/d2/.build-id/{build_id[:2]}/{build_id[2:]}.debug", "build-id"),
        (f"{bindir}/prog.debug", "debuglink"),
        (f"{bindir}/.debug/prog.debug", "debuglink"),
        (f"/d1{bindir}/prog.debug", "debuglink"),
        (f"/d2{bindir}/prog.debug", "debuglink"),
    ]


def test_minidebuginfo(built: dict[str, Path]) -> None:
    nm = nm_symbols(built["pie"])
    symbols = symbols_of(built["mini"], debug_dirs=())
    assert name_at(symbols, nm["static_helper"] + 1) == "static_helper"
    assert name_at(symbols, nm["leaf_function"] + 1) == "leaf_function"
    assert any(".gnu_debugdata" in line for line in symbols.sources)
    # A library: exported names from .dynsym, internal ones from .gnu_debugdata.
    lib_nm = nm_symbols(built["lib"])
    lib = symbols_of(built["lib-mini"], debug_dirs=())
    assert name_at(lib, lib_nm["exported_entry"] + 1) == "exported_entry"
    assert name_at(lib, lib_nm["hidden_worker"] + 1) == "hidden_worker"


def test_corrupt_symbol_table_is_skipped_not_raised(built: dict[str, Path]) -> None:
    data = bytearray(built["pie"].read_bytes())
    elf = ElfFile.from_bytes(bytes(data), name="pie")
    symtab = elf.get_section_by_name(".symtab")
    assert symtab is not None
    # Point .symtab's sh_link at a section index that does not exist.
    header = elf.e_shoff + symtab.index * 64
    data[header + 40 : header + 44] = (0xFFFF).to_bytes(4, "little")
    broken = ElfFile.from_bytes(bytes(data), name="broken")
    symbols = ModuleSymbols(broken, debug_dirs=())
    assert any("skipped .symtab" in line for line in symbols.sources)
    plt = objdump_plt_names(built["pie"])
    assert all(name_at(symbols, a) == n for a, n in plt.items())


def test_mutated_files_never_raise_from_lookups(built: dict[str, Path]) -> None:
    rng = random.Random(0xBADF11E)
    sources = [built[kind].read_bytes() for kind in ("pie", "mini", "static", "lib-stripped")]
    started = time.monotonic()
    for case in range(150):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 6)):
            where = rng.randrange(len(data))
            data[where : where + 4] = rng.randbytes(4)
        try:
            elf = ElfFile.from_bytes(bytes(data), name=f"mutation {case}")
        except ElfError:
            continue
        clear_cache()
        symbols = ModuleSymbols(elf, debug_dirs=())
        for address in range(0, 0x2000, 0x40):
            match = symbols.lookup(0x1000 + address)
            assert match is None or isinstance(match.symbol.name, str)
        _ = symbols.sources
    assert time.monotonic() - started < 600  # a bound against a runaway loop
