"""Inlined frames named in full (redhand.symbols.dwarfnames), against eu-stack and addr2line.

drgn names an inlined call by its DW_AT_name (``wait``); redhand names it
like its physical frames and like eu-stack: the demangled linkage name
(``shop::Cart::wait() const``), else the scope-qualified name, else drgn's.
Every test runs a real program and looks at it live.
"""

from __future__ import annotations

import itertools
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import SYS_PAUSE, LiveProgram, compile_c, rustc
from test_source import INLINE_C

import redhand
from redhand.elf import ElfFile
from redhand.symbols import dwarfnames

TIMEOUT = 120

CXX = r"""
#include <cstdio>
#include <sys/syscall.h>
#include <unistd.h>
namespace shop {
namespace detail {
template <typename T> __attribute__((always_inline)) inline T twice(T x) { pause(); return x * 2; }
}
namespace {
__attribute__((always_inline)) inline int hidden(int x) { return detail::twice(x) + 3; }
}
struct Cart {
  int n;
  static __attribute__((always_inline)) inline int scale(int x) { return hidden(x) + 1; }
  __attribute__((always_inline)) inline int wait() const { return scale(n) - 1; }
  __attribute__((noinline)) int total() const { return wait() * 2 + 1; }
};
}
int main(int argc, char **) {
  std::printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
  std::fflush(stdout);
  shop::Cart c{argc};
  return c.total();
}
"""

# Innermost first: a template function, a function of an anonymous
# namespace, a static member, a const method; all inlined into total().
# GCC gives the function of the anonymous namespace no linkage name: it is
# qualified by its scopes, as gdb names it (eu-stack prints "hidden").
CXX_INLINED = [
    "int shop::detail::twice<int>(int)",
    "shop::(anonymous namespace)::hidden",
    "shop::Cart::scale(int)",
    "shop::Cart::wait() const",
]
EU_STACK_CXX = [name if "hidden" not in name else "hidden" for name in CXX_INLINED]
CXX_SHORT = ["twice<int>", "hidden", "scale", "wait"]

# C linkage in C++: no linkage name, so the name is qualified by its scopes
# (as gdb prints it; eu-stack prints the bare DW_AT_name).
EXTERN_C = r"""
#include <cstdio>
#include <sys/syscall.h>
#include <unistd.h>
namespace outer { namespace inner {
extern "C" __attribute__((always_inline)) inline int c_style(int x) { pause(); return x + 1; }
struct Local {
  static __attribute__((always_inline)) inline int plain(int x) { return c_style(x) * 2; }
};
}}
__attribute__((noinline)) int run(int x) { return outer::inner::Local::plain(x) + 1; }
int main(int argc, char **) {
  std::printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
  std::fflush(stdout);
  return run(argc);
}
"""

C = INLINE_C

RUST = r"""
use std::io::Write;
mod shop {
    pub struct Cart { pub n: i32 }
    impl Cart {
        #[inline(always)]
        pub fn wait(&self) -> i32 {
            unsafe { pause(); }
            self.n
        }
        #[inline(never)]
        pub fn total(&self) -> i32 { self.wait() * 2 + 1 }
    }
    extern "C" { fn pause() -> i32; }
}
extern "C" { fn gettid() -> i32; }
fn main() {
    println!("thread main {}\nready", unsafe { gettid() });
    std::io::stdout().flush().unwrap();
    let c = shop::Cart { n: std::env::args().count() as i32 };
    std::process::exit(c.total());
}
"""


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache of this test's own: answers cached by other tests are not served here."""
    home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("REDHAND_CACHE", raising=False)
    yield home


def _stack(binary: Path) -> tuple[list[redhand.Frame], list[tuple[int, str]], int]:
    """redhand's frames, eu-stack's (pc, name) and the binary's load bias, of one live look."""
    with LiveProgram([binary], blocked={"main": SYS_PAUSE}) as program:
        with redhand.attach(program.pid) as target:
            frames = list(target.threads[0].backtrace())
            bias = next(m for m in target.modules if m.path == str(binary)).bias
        expected = _eu_stack(program.pid)
    return frames, expected, bias


def _eu_stack(pid: int) -> list[tuple[int, str]]:
    """(pc, name) of each frame of ``eu-stack -i -p PID``, innermost first."""
    out = subprocess.run(
        ["eu-stack", "-i", "-p", str(pid)],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    frames = []
    for line in out.splitlines():
        if line.startswith("#"):
            words = line.split(maxsplit=2)
            frames.append((int(words[1], 16), words[2] if len(words) > 2 else "??"))
    return frames


def _addr2line(binary: Path, address: int) -> list[str]:
    """Function names of ``addr2line -i -f -C`` at a link-time address, innermost first."""
    out = subprocess.run(
        ["addr2line", "-i", "-f", "-C", "-e", str(binary), f"{address:#x}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout.splitlines()
    return out[0::2]


def _group(frames: list[redhand.Frame], name: str) -> list[redhand.Frame]:
    """The frames of the physical frame whose function is ``name``: its inlined calls, then it."""
    group: list[redhand.Frame] = []
    for frame in frames:
        group.append(frame)
        if not frame.inlined:
            if frame.function is not None and frame.function.startswith(name):
                return group
            group = []
    raise AssertionError(f"{name} not in {[f.function for f in frames]}")


def _inlined_names(frames: list[redhand.Frame], physical: str) -> list[str | None]:
    group = _group(frames, physical)
    assert all(f.inlined for f in group[:-1]) and not group[-1].inlined
    return [f.function for f in group[:-1]]


def _text_pcs(binary: Path, step: int = 1) -> list[int]:
    with ElfFile.open(str(binary)) as elf:
        text = elf.get_section_by_name(".text")
        assert text is not None
        return list(range(text.sh_addr, text.sh_addr + text.sh_size, step))


def _section_range(binary: Path, name: str) -> tuple[int, int]:
    with ElfFile.open(str(binary)) as elf:
        section = elf.get_section_by_name(name)
        assert section is not None, name
        return section.sh_offset, section.sh_size


@pytest.mark.parametrize(
    "flags",
    [
        ["-O2", "-gdwarf-4"],
        ["-O2", "-gdwarf-5"],
        ["-O2", "-gdwarf-5", "-gz"],
        ["-O2", "-gdwarf-4", "-gz=zlib-gnu"],
    ],
    ids=["dwarf4", "dwarf5", "dwarf5-gz", "dwarf4-zdebug"],
)
def test_cxx_inlined_names_are_eu_stacks(tmp_path: Path, flags: list[str]) -> None:
    """Namespaces, a class, a const method, a template, a static member, an anonymous namespace."""
    binary = compile_c(CXX, tmp_path, flags, language="c++")
    frames, expected, bias = _stack(binary)
    assert _inlined_names(frames, "shop::Cart::total") == CXX_INLINED
    # eu-stack names the chain alike (the same frames, in order).
    assert [pc for pc, _ in expected] == [f.pc for f in frames]
    group = _group(frames, "shop::Cart::total")
    start = frames.index(group[0])
    assert [name for _, name in expected[start : start + len(CXX_INLINED)]] == EU_STACK_CXX
    # addr2line says the same, and the physical frame is named as before.
    assert _addr2line(binary, group[0].pc - 1 - bias)[:-1] == EU_STACK_CXX
    assert group[-1].function is not None and group[-1].function.startswith(
        "shop::Cart::total() const"
    )


def test_short_names_agree_with_drgn(tmp_path: Path) -> None:
    """The reader's DW_AT_name of each inlined call is drgn's, at every pc of the program."""
    drgn = pytest.importorskip("drgn")
    binary = compile_c(CXX, tmp_path, ["-O2", "-g"], language="c++")
    program = drgn.Program(drgn.host_platform)
    module = program.extra_module(str(binary), 0, create=True)
    module.address_range = (0, 1 << 32)
    module.try_file(str(binary), force=True)
    compared = 0
    for pc in _text_pcs(binary):
        try:
            chain = list(program.source_location(pc))
        except LookupError:
            continue
        names = dwarfnames.inline_names([str(binary)], pc)
        assert names is not None, hex(pc)
        assert [short for short, _ in names] == [loc.name() for loc in chain[:-1]], hex(pc)
        compared += len(names)
    assert compared > 0
    at_pause = dwarfnames.inline_names([str(binary)], _pause_return(binary) - 1)
    assert at_pause == list(zip(CXX_SHORT, CXX_INLINED, strict=True))


def _pause_return(binary: Path) -> int:
    """The link-time return address of the call to pause() in the program."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(binary)],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout.splitlines()
    for line, following in itertools.pairwise(out):
        if "call" in line and "<pause@plt>" in line:
            return int(following.split(":")[0], 16)
    raise AssertionError("no call to pause")


def test_c_names_are_plain(tmp_path: Path) -> None:
    """C has no linkage names and no scopes: the DW_AT_name, as drgn and eu-stack say."""
    binary = compile_c(C, tmp_path, ["-O2", "-g"])
    frames, expected, _ = _stack(binary)
    assert _inlined_names(frames, "outer") == ["leaf", "mid"]
    group = _group(frames, "outer")
    start = frames.index(group[0])
    assert [name for _, name in expected[start : start + 2]] == ["leaf", "mid"]
    # (redhand does not even ask its reader for code of a .c file; the reader agrees)
    names = dwarfnames.inline_names([str(binary)], _pause_return(binary) - 1)
    assert names == [("leaf", "leaf"), ("mid", "mid")]


def test_extern_c_in_namespace_is_qualified(tmp_path: Path) -> None:
    """Without a linkage name, the DW_AT_name is qualified by its namespaces and classes."""
    binary = compile_c(EXTERN_C, tmp_path, ["-O2", "-g"], language="c++")
    frames, _, _ = _stack(binary)
    assert _inlined_names(frames, "run") == [
        "outer::inner::c_style",
        "outer::inner::Local::plain(int)",
    ]


def test_rust_inlined_names_are_demangled_paths(tmp_path: Path) -> None:
    binary = rustc(RUST, tmp_path, ["-C", "opt-level=2", "-g"])
    frames, _, bias = _stack(binary)
    crate = binary.name.rsplit("-", 1)[0]  # the source file's name; the binary's has a hash
    group = _group(frames, crate + "::shop::Cart::total")
    names = [f.function for f in group[:-1]]
    assert names == [crate + "::shop::Cart::wait"]
    assert _addr2line(binary, group[0].pc - 1 - bias)[:-1] == names


# redhand's CLI with drgn and redhand's own DWARF reader blocked: answers
# can only come from the cache.
BLOCKED = r"""
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("drgn", "_drgn") or name == "redhand.symbols.dwarfnames":
            raise ImportError(f"{name} is blocked by the test")
        return None
sys.meta_path.insert(0, Blocker())
from redhand.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_second_look_serves_full_names_from_the_cache(tmp_path: Path) -> None:
    binary = compile_c(CXX, tmp_path, ["-O2", "-g"], language="c++")
    with LiveProgram([binary], blocked={"main": SYS_PAUSE}) as program:
        looks = [
            subprocess.run(
                [sys.executable, *prefix, "stack", "--source", str(program.pid)],
                capture_output=True,
                text=True,
                check=True,
                timeout=TIMEOUT,
            ).stdout
            for prefix in (["-m", "redhand.cli"], ["-c", BLOCKED])
        ]
    for text in looks:
        for name in CXX_INLINED:
            assert f" in {name} (inlined) at " in text
    assert looks[0].splitlines()[1:] == looks[1].splitlines()[1:]


def _dwz(tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of the C++ program sharing a dwz alternate file: (one of them, the alt file)."""
    if shutil.which("dwz") is None:
        pytest.skip("dwz is not installed (apt-get install dwz)")
    binary = compile_c(CXX, tmp_path, ["-O2", "-g"], language="c++")
    folder = tmp_path / "dwz"
    folder.mkdir()
    for name in ("first", "second"):
        shutil.copy(binary, folder / name)
    subprocess.run(
        ["dwz", "-m", "common.debug", "-M", "common.debug", "first", "second"],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    with ElfFile.open(str(folder / "first")) as elf:
        assert elf.get_section_by_name(".gnu_debugaltlink") is not None
    return folder / "first", folder / "common.debug"


def test_dwz_alternate_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Abstract origins and strings that dwz moved to the alternate file are read there."""
    binary, alt = _dwz(tmp_path)
    frames, expected, _ = _stack(binary)
    assert _inlined_names(frames, "shop::Cart::total") == CXX_INLINED
    assert [name for _, name in expected if name in EU_STACK_CXX] == EU_STACK_CXX

    # Without the alternate file (a copy, and another cache: nothing of the
    # first look is reused): no error, the frames keep their symbols, inlined
    # calls drgn's names if any.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "another-cache"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(binary, lonely / "first")
    alt.rename(tmp_path / "hidden.debug")
    frames, _, _ = _stack(lonely / "first")
    assert any((f.function or "").startswith("shop::Cart::total() const") for f in frames)
    assert all(name in CXX_SHORT for name in _inlined_names(frames, "shop::Cart::total"))
    names = dwarfnames.inline_names([str(lonely / "first")], _pause_return(binary) - 1)
    assert names is None or all(full is None for _, full in names)


def test_without_aranges_units_are_found_by_their_ranges(tmp_path: Path) -> None:
    """No .debug_aranges (Clang's default), or a damaged one: the units' own ranges say."""
    binary = compile_c(CXX, tmp_path, ["-O2", "-g"], language="c++")
    bare = tmp_path / "bare"
    subprocess.run(
        ["objcopy", "--remove-section", ".debug_aranges", str(binary), str(bare)],
        check=True,
        timeout=TIMEOUT,
    )
    frames, _, _ = _stack(bare)
    assert _inlined_names(frames, "shop::Cart::total") == CXX_INLINED

    wrong = tmp_path / "wrong"
    shutil.copy(binary, wrong)
    offset, _ = _section_range(wrong, ".debug_aranges")
    with open(wrong, "r+b") as file:  # the (one) set's unit offset points into nowhere
        file.seek(offset + 6)
        file.write(b"\xff\xff\xff\x7f")
    pc = _pause_return(binary) - 1
    assert dwarfnames.inline_names([str(wrong)], pc) == list(
        zip(CXX_SHORT, CXX_INLINED, strict=True)
    )


def _corrupt(binary: Path, target: Path, section: str, seed: int, flips: int) -> None:
    shutil.copy(binary, target)
    offset, size = _section_range(target, section)
    rng = random.Random(seed)
    data = bytearray(target.read_bytes())
    for _ in range(flips):
        data[offset + rng.randrange(size)] ^= 1 << rng.randrange(8)
    target.write_bytes(bytes(data))


@pytest.mark.parametrize("section", [".debug_info", ".debug_abbrev", ".debug_str"])
def test_corrupt_dwarf_never_raises(tmp_path: Path, section: str) -> None:
    """Flipped bits: every pc gets an answer or None, quickly; never an exception."""
    binary = compile_c(CXX, tmp_path, ["-O2", "-g"], language="c++")
    pcs = _text_pcs(binary, 3)
    pause = _pause_return(binary) - 1
    for seed in range(12):
        damaged = tmp_path / f"damaged-{section[1:]}-{seed}"
        _corrupt(binary, damaged, section, seed, flips=1 + seed * 4)
        started = time.monotonic()
        for pc in [pause, *pcs]:
            names = dwarfnames.inline_names([str(damaged)], pc)
            assert names is None or all(
                (short is None or isinstance(short, str))
                and (full is None or isinstance(full, str))
                for short, full in names
            )
        assert time.monotonic() - started < 300  # a bound against a runaway loop


def test_corrupt_dwarf_live(tmp_path: Path) -> None:
    """A running program whose .debug_info is damaged: frames named, full names or drgn's."""
    binary = compile_c(CXX, tmp_path, ["-O2", "-g"], language="c++")
    damaged = tmp_path / "damaged"
    shutil.copy(binary, damaged)
    offset, size = _section_range(damaged, ".debug_info")
    data = bytearray(damaged.read_bytes())
    # The last quarter of the entries (main's unit is the only one): abbreviation
    # codes and references become garbage, the code itself is intact.
    for position in range(offset + size * 3 // 4, offset + size, 7):
        data[position] = 0xFF
    damaged.write_bytes(bytes(data))
    frames, _, _ = _stack(damaged)
    assert any((f.function or "").startswith("shop::Cart::total() const") for f in frames)
    for frame in frames:
        if frame.inlined:
            assert frame.function in (*CXX_SHORT, *CXX_INLINED)


@pytest.mark.parametrize(
    ("version", "package"), [(4, False), (5, False), (4, True)], ids=["dwo4", "dwo5", "dwp4"]
)
def test_split_dwarf(tmp_path: Path, version: int, package: bool) -> None:
    """Split DWARF: names in the .dwo file (or the .dwp package), addresses in the binary."""
    source = tmp_path / "split.cpp"
    source.write_text(CXX)
    binary = tmp_path / "split"
    subprocess.run(
        ["g++", "-O2", f"-gdwarf-{version}", "-gsplit-dwarf", "-o", binary, source],
        cwd=tmp_path,
        check=True,
        timeout=TIMEOUT,
    )
    dwos = list(tmp_path.glob("*.dwo"))
    assert dwos
    if package:
        subprocess.run(["dwp", "-e", binary, "-o", f"{binary}.dwp"], check=True, timeout=TIMEOUT)
        for dwo in dwos:
            dwo.unlink()
    pc = _pause_return(binary) - 1
    assert dwarfnames.inline_names([str(binary)], pc) == list(
        zip(CXX_SHORT, CXX_INLINED, strict=True)
    )
    frames, _, _ = _stack(binary)
    assert _inlined_names(frames, "shop::Cart::total") == CXX_INLINED
