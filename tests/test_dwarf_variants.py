"""file:line:column and inlined frames however the DWARF is shipped, against addr2line.

The same C program and the same C++ program (namespaces, methods, calls
inlined into the function blocked in ``pause()``), each built from two
translation units that share a header (a second program shares one of them,
for dwz's multifile mode), are made into one variant per way a
toolchain or a distribution ships DWARF: DWARF 4 and 5, zlib-compressed
sections, a separate debug file found by .gnu_debuglink or by build-id under a
``--debug-dir``, dwz (single file, and multifile with .gnu_debugaltlink), and
split DWARF (.dwo files, and a .dwp package).

Each variant runs as a live process; every frame redhand finds in the
executable, inlined ones included, is compared with ``addr2line -i -f -C``
(function, file, line) and ``eu-addr2line -i`` (column) asked about the same
address in an *oracle*: a binary with the very same code (checked byte for
byte) whose DWARF sits in ordinary sections, so that the oracle never depends
on the variant's packaging.

Each variant first checks that the toolchain really made it (a dwz that
changed nothing, a .dwp without units, fail the build rather than let a test
pass on plain DWARF).  Variants redhand does not handle yet are strict xfails
naming the failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import SYS_PAUSE, BuildError, LiveProgram

import redhand

TOOL_TIMEOUT = 60.0

# -- the programs ------------------------------------------------------------------

C_HEADER = r"""#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
struct point { long x, y; };
struct shape { const char *name; struct point corners[4]; int sides; double area; };
struct scene { struct shape shapes[8]; int count; sigset_t mask; };
static inline __attribute__((always_inline)) long block_here(const struct scene *s) {
    pause();
    return s->count;
}
static inline __attribute__((always_inline)) long measure(const struct scene *s) {
    return block_here(s) * 2 + s->shapes[0].sides;
}
long walk(struct scene *s);
"""

C_WALK = r"""#include "shapes.h"
__attribute__((noinline)) long walk(struct scene *s) {
    long total = measure(s);
    __asm__ volatile("" ::: "memory");
    return total + 1;
}
"""

C_MAIN = r"""#include "shapes.h"
int main(int argc, char **argv) {
    (void)argv;
    static struct scene scene;
    scene.count = argc + OFFSET;
    printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    return (int)walk(&scene);
}
"""

CXX_HEADER = r"""#include <unistd.h>
namespace warehouse {
namespace detail {
struct Shelf {
  long items[16];
  int count;
  __attribute__((always_inline)) inline long wait_for_stock() const {
    pause();
    return count;
  }
};
}  // namespace detail
class Picker {
 public:
  explicit Picker(int n) : shelf_{} { shelf_.count = n; }
  __attribute__((always_inline)) inline long pick() const {
    return shelf_.wait_for_stock() * 3 + shelf_.items[1];
  }
  long run() const;

 private:
  detail::Shelf shelf_;
};
}  // namespace warehouse
"""

CXX_PICKER = r"""#include "warehouse.h"
namespace warehouse {
__attribute__((noinline)) long Picker::run() const {
  long picked = pick();
  __asm__ volatile("" ::: "memory");
  return picked + 2;
}
}  // namespace warehouse
"""

CXX_MAIN = r"""#include <cstdio>
#include <sys/syscall.h>
#include "warehouse.h"
int main(int argc, char **) {
  std::printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
  std::fflush(stdout);
  warehouse::Picker picker(argc + OFFSET);
  return static_cast<int>(picker.run());
}
"""


@dataclass(frozen=True)
class Language:
    name: str
    compiler: str
    files: dict[str, str]
    """Source files by name; ``main_a``/``main_b`` are the two programs' mains."""
    shared: str
    """The translation unit both programs link (the blocked function's)."""
    suffix: str
    blocked: str
    """The function blocked in pause(), as the symbol table names it."""
    inlined: tuple[str, ...]
    """The calls inlined into it at the blocked pc, innermost first (as redhand names them)."""


C = Language(
    name="c",
    compiler="gcc",
    files={
        "shapes.h": C_HEADER,
        "walk.c": C_WALK,
        "main_a.c": C_MAIN.replace("OFFSET", "0"),
        "main_b.c": C_MAIN.replace("OFFSET", "7"),
    },
    shared="walk",
    suffix=".c",
    blocked="walk",
    inlined=("block_here", "measure"),
)
CXX = Language(
    name="c++",
    compiler="g++",
    files={
        "warehouse.h": CXX_HEADER,
        "picker.cpp": CXX_PICKER,
        "main_a.cpp": CXX_MAIN.replace("OFFSET", "0"),
        "main_b.cpp": CXX_MAIN.replace("OFFSET", "7"),
    },
    shared="picker",
    suffix=".cpp",
    blocked="warehouse::Picker::run() const",
    inlined=(
        "warehouse::detail::Shelf::wait_for_stock() const",
        "warehouse::Picker::pick() const",
    ),
)
LANGUAGES = {language.name: language for language in (C, CXX)}


# -- tools ----------------------------------------------------------------------------


class ToolchainCannot(BuildError):
    """The tools installed here cannot make this variant."""


def _tool(argv: Sequence[str | os.PathLike[str]], cwd: Path | None = None) -> str:
    """Run a build tool, bounded; its stdout, or BuildError with its stderr."""
    command = [os.fspath(arg) for arg in argv]
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise BuildError(f"{' '.join(command)} took over {TOOL_TIMEOUT} s") from error
    if result.returncode != 0:
        raise BuildError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def _require(tool: str, package: str) -> None:
    """Fail (never skip) when a tool is missing, saying how to install it."""
    if shutil.which(tool) is None:
        pytest.fail(
            f"{tool} is missing: apt-get install {package} (tests/run.sh installs it)",
            pytrace=False,
        )


def _sections(path: Path) -> dict[str, tuple[int, str]]:
    """Section name -> (address, flags) from ``readelf -SW``."""
    found: dict[str, tuple[int, str]] = {}
    for line in _tool(["readelf", "-SW", path]).splitlines():
        match = re.match(
            r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+[0-9a-f]+\s+[0-9a-f]+\s*"
            r"([A-Za-z]*)\s",
            line,
        )
        if match:
            found[match.group(1)] = (int(match.group(2), 16), match.group(3))
    return found


def _debug_info(path: Path) -> str:
    """The file's own .debug_info (readelf follows no .dwo nor .gnu_debugaltlink link)."""
    return _tool(["readelf", "--debug-dump=no-follow-links", "--debug-dump=info", path])


def _build_id(path: Path) -> str:
    match = re.search(r"Build ID: ([0-9a-f]+)", _tool(["readelf", "-n", path]))
    if match is None:
        raise BuildError(f"{path} has no build-id note")
    return match.group(1)


def _same_code(binary: Path, oracle: Path) -> None:
    """The two files hold the same .text at the same address (so addresses mean the same)."""
    texts = []
    for path in (binary, oracle):
        out = path.with_name(path.name + ".text")
        _tool(["objcopy", "-O", "binary", "--only-section=.text", path, out])
        texts.append((_sections(path)[".text"][0], out.read_bytes()))
        out.unlink()
    if texts[0] != texts[1]:
        raise BuildError(f"{binary} and its oracle {oracle} differ in .text")


# -- the variants ---------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """A variant ready to run: its executable, the oracle, where its debug files are."""

    binary: Path
    oracle: Path
    debug_dirs: tuple[str, ...] = ()


@dataclass
class Workshop:
    """One language's sources under ``root``, with object files cached by flags."""

    root: Path
    language: Language
    _objects: dict[tuple[str, ...], dict[str, Path]] = field(default_factory=dict)

    @property
    def src(self) -> Path:
        src = self.root / "src"
        if not src.exists():
            src.mkdir(parents=True)
            for name, text in self.language.files.items():
                (src / name).write_text(text)
        return src

    def objects(self, flags: Sequence[str], where: Path | None = None) -> dict[str, Path]:
        """Every translation unit compiled with ``-O2 -g`` and ``flags`` (by unit stem).

        Compiled in the source folder by file name, so every variant's DWARF
        names the same files; with -gsplit-dwarf each .dwo lands beside its .o.
        The objects go to ``where``, or to a folder shared by all the variants
        built with the same flags.
        """
        if where is None:
            where = self.root / ("obj" + "".join(re.sub(r"[^a-z0-9]+", "_", f) for f in flags))
        key = (str(where), *flags)
        if key not in self._objects:
            out = where
            out.mkdir(parents=True)
            objects = {}
            for name in self.language.files:
                if name.endswith(self.language.suffix):
                    stem = name.removesuffix(self.language.suffix)
                    obj = out / f"{stem}.o"
                    _tool(
                        [self.language.compiler, "-O2", "-g", *flags, "-c", name, "-o", obj],
                        self.src,
                    )
                    objects[stem] = obj
            self._objects[key] = objects
        return self._objects[key]

    def link(
        self, flags: Sequence[str], program: str, output: Path, objects_in: Path | None = None
    ) -> Path:
        """Link ``main_a`` or ``main_b`` with the shared unit into ``output``."""
        objects = self.objects(flags, objects_in)
        output.parent.mkdir(parents=True, exist_ok=True)
        units = [objects[self.language.shared], objects[program]]
        _tool([self.language.compiler, "-O2", "-g", *flags, "-o", output, *units])
        return output


def _dwarf_versions(path: Path) -> set[int]:
    return {int(v) for v in re.findall(r"^\s+Version:\s+(\d+)$", _debug_info(path), re.M)}


def _plain(shop: Workshop, out: Path, version: int) -> Built:
    binary = shop.link([f"-gdwarf-{version}"], "main_a", out / "prog")
    versions = _dwarf_versions(binary)
    if versions != {version}:
        raise ToolchainCannot(f"-gdwarf-{version} made units of DWARF versions {versions}")
    return Built(binary, binary)


def _zlib_sections(shop: Workshop, out: Path) -> Built:
    binary = shop.link(["-gdwarf-5", "-gz=zlib"], "main_a", out / "prog")
    _assert_compressed(binary)
    return Built(binary, binary)  # binutils' addr2line reads compressed sections


def _assert_compressed(path: Path) -> None:
    sections = _sections(path)
    if "C" not in sections.get(".debug_info", (0, ""))[1]:
        raise ToolchainCannot(f"{path}: .debug_info is not compressed (SHF_COMPRESSED)")


def _split_off(binary: Path, strip: str, *, compress: bool) -> Path:
    """Move ``binary``'s DWARF into ``binary.debug`` and strip the binary; the debug file."""
    debug = binary.with_name(binary.name + ".debug")
    _tool(["objcopy", "--only-keep-debug", binary, debug])
    if compress:
        _tool(["objcopy", "--compress-debug-sections=zlib", debug])
        _assert_compressed(debug)
    _tool(["strip", f"--{strip}", binary])
    if ".debug_info" in _sections(binary) or ".debug_line" in _sections(binary):
        raise BuildError(f"strip --{strip} left DWARF in {binary}")
    return debug


def _debuglink(shop: Workshop, out: Path, strip: str, compress: bool = False) -> Built:
    oracle = shop.link(["-gdwarf-5"], "main_a", out / "oracle")
    binary = out / "prog"
    shutil.copy2(oracle, binary)
    debug = _split_off(binary, strip, compress=compress)
    _tool(["objcopy", f"--add-gnu-debuglink={debug.name}", binary.name], out)
    if ".gnu_debuglink" not in _sections(binary):
        raise BuildError(f"objcopy added no .gnu_debuglink to {binary}")
    return Built(binary, oracle)


def _in_build_id_dir(binary: Path, debug: Path, debug_dir: Path) -> None:
    build_id = _build_id(binary)
    if _build_id(debug) != build_id:
        raise BuildError(f"{debug} does not carry {binary}'s build-id")
    place = debug_dir / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
    place.parent.mkdir(parents=True, exist_ok=True)
    debug.rename(place)


def _build_id_dir(shop: Workshop, out: Path, strip: str) -> Built:
    oracle = shop.link(["-gdwarf-5"], "main_a", out / "oracle")
    binary = out / "prog"
    shutil.copy2(oracle, binary)
    debug = _split_off(binary, strip, compress=False)
    if ".gnu_debuglink" in _sections(binary):
        raise BuildError(f"{binary} has a .gnu_debuglink: the build-id must be what finds it")
    debug_dir = out / "debug"
    _in_build_id_dir(binary, debug, debug_dir)
    return Built(binary, oracle, (str(debug_dir),))


def _partial_units(path: Path) -> int:
    return _debug_info(path).count("DW_TAG_partial_unit")


def _dwz_single(shop: Workshop, out: Path) -> Built:
    _require("dwz", "dwz")
    oracle = shop.link(["-gdwarf-5"], "main_a", out / "oracle")
    binary = out / "prog"
    shutil.copy2(oracle, binary)
    _tool(["dwz", binary])
    if _partial_units(binary) == 0:
        raise ToolchainCannot(f"dwz {binary} made no partial unit: nothing was shared")
    return Built(binary, oracle)


def _dwz_multi(shop: Workshop, out: Path, then_split: bool = False) -> Built:
    """``dwz -m``: the DIEs two programs share move to common.debug (.gnu_debugaltlink).

    With ``then_split`` the binaries are then stripped and their debug files
    (still linked to common.debug) put under a build-id directory, as
    Debian's dh_dwz followed by dh_strip does.
    """
    _require("dwz", "dwz")
    oracle = shop.link(["-gdwarf-5"], "main_a", out / "oracle")
    binary, other = out / "prog", out / "other"
    shutil.copy2(oracle, binary)
    shop.link(["-gdwarf-5"], "main_b", other)
    common = out / "common.debug"
    _tool(["dwz", "-m", common, "-M", common, binary, other])
    if not common.exists() or ".gnu_debugaltlink" not in _sections(binary):
        raise ToolchainCannot(f"dwz -m wrote no common file or no .gnu_debugaltlink in {binary}")
    if "<alt 0x" not in _debug_info(binary):
        raise ToolchainCannot(f"{binary} refers to nothing in {common}")
    if not then_split:
        return Built(binary, oracle)
    debug = _split_off(binary, "strip-unneeded", compress=False)
    if ".gnu_debugaltlink" not in _sections(debug):
        raise BuildError(f"{debug} lost its .gnu_debugaltlink")
    debug_dir = out / "debug"
    _in_build_id_dir(binary, debug, debug_dir)
    return Built(binary, oracle, (str(debug_dir),))


def _split_dwarf(shop: Workshop, out: Path, version: int, package: bool) -> Built:
    """-gsplit-dwarf: the skeleton in the binary, the rest in .dwo files or a .dwp."""
    flags = [f"-gdwarf-{version}", "-gsplit-dwarf"]
    # Objects of its own: the .dwp variant deletes its .dwo files.
    binary = shop.link(flags, "main_a", out / "prog", objects_in=out / "obj")
    oracle = shop.link([f"-gdwarf-{version}"], "main_a", out / "oracle")
    info = _debug_info(binary)
    if "dwo_name" not in info or "DW_TAG_inlined_subroutine" in info:
        raise ToolchainCannot(f"{binary} has no skeleton units (-gsplit-dwarf)")
    # Where each skeleton says its .dwo is: DW_AT_dwo_name, relative to DW_AT_comp_dir.
    dwos = []
    comp_dir = ""
    for line in info.splitlines():  # a skeleton's comp_dir comes before its dwo_name
        if "DW_AT_comp_dir" in line:
            comp_dir = line.split()[-1]
        elif re.search(r"DW_AT_(GNU_)?dwo_name", line):
            dwos.append(Path(comp_dir, line.split()[-1]))
    if not dwos or not all(dwo.is_file() for dwo in dwos):
        raise BuildError(f"the skeletons point at {dwos}, which are not all there")
    if not package:
        return Built(binary, oracle)
    _require("dwp", "binutils")
    dwp = binary.with_name(binary.name + ".dwp")
    problems = []
    try:
        _tool(["dwp", "-e", binary, "-o", dwp])
    except BuildError as error:
        problems.append(str(error).strip() or "dwp -e failed")
        try:  # dwp -e needs to read the skeletons; the .dwo files named outright need not
            _tool(["dwp", "-o", dwp, *dwos])
        except BuildError as again:
            problems.append(str(again).strip())
    wanted = set(re.findall(r"(?:DWO ID:|DW_AT_GNU_dwo_id\s*:)\s*(0x[0-9a-f]+)", info))
    listed = _dwp_units(dwp) if dwp.exists() else set()
    if not wanted or not wanted <= listed:
        problems.append(
            f"{dwp.name}'s .debug_cu_index lists units {sorted(listed)}, "
            f"the skeletons want {sorted(wanted)}"
        )
        raise ToolchainCannot(
            f"binutils dwp cannot package DWARF {version} split units: " + "; ".join(problems)
        )
    scratch = dwos[0].parent / "dwo-moved-away"
    scratch.mkdir(exist_ok=True)
    for dwo in dwos:
        dwo.rename(scratch / dwo.name)  # only the .dwp is left to read
    return Built(binary, oracle)


def _dwp_units(dwp: Path) -> set[str]:
    """The DWO ids a .dwp's .debug_cu_index lists (readelf's offset table)."""
    # readelf exits 1 on the empty .debug_tu_index every dwp writes: read its stdout anyway.
    text = subprocess.run(
        ["readelf", "--debug-dump=cu_index", str(dwp)],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        stdin=subprocess.DEVNULL,
    ).stdout
    if ".debug_info.dwo" not in _sections(dwp) or "Offset table" not in text:
        return set()
    table = text.split("Offset table", 1)[1].split("Size table", 1)[0]
    return set(re.findall(r"^\s*\[\s*\d+\]\s+(0x[0-9a-f]+|0)\s", table, re.M))


NO_DWARF5_DWP = (
    "binutils 2.40 dwp cannot package gcc 12's DWARF 5 .dwo files: `dwp -e` dies of SIGSEGV, "
    "and `dwp -o x.dwp a.dwo b.dwo` writes a version-2 .debug_cu_index with one unit of "
    "DWO id 0 (or no .debug_info.dwo at all), which gdb rejects too ('Could not find DWO CU'); "
    "llvm-dwp 14 loops forever on them"
)


@dataclass(frozen=True)
class Variant:
    name: str
    make: Callable[[Workshop, Path], Built]
    xfail: str | None = None
    """Why the variant fails today: a strict xfail, so that a fix shows as XPASS."""
    toolchain_cannot: bool = False
    """The expected failure is the build's ToolchainCannot, not redhand's answer: any
    other failure (redhand wrong on a package the toolchain did make) still fails."""

    def param(self, *prefix: object) -> object:
        marks = []
        if self.xfail is not None:
            raises = ToolchainCannot if self.toolchain_cannot else AssertionError
            marks.append(pytest.mark.xfail(strict=True, raises=raises, reason=self.xfail))
        return pytest.param(
            *prefix, self.name, marks=marks, id="-".join([*map(str, prefix), self.name])
        )


VARIANTS = [
    Variant("dwarf4", lambda shop, out: _plain(shop, out, 4)),
    Variant("dwarf5", lambda shop, out: _plain(shop, out, 5)),
    Variant("gz-zlib", _zlib_sections),
    Variant(
        "debuglink-strip-debug",
        lambda shop, out: _debuglink(shop, out, "strip-debug"),
    ),
    Variant("debuglink-strip-unneeded", lambda shop, out: _debuglink(shop, out, "strip-unneeded")),
    Variant(
        "debuglink-zlib",
        lambda shop, out: _debuglink(shop, out, "strip-unneeded", compress=True),
    ),
    Variant(
        "build-id-strip-debug",
        lambda shop, out: _build_id_dir(shop, out, "strip-debug"),
    ),
    Variant(
        "build-id-strip-unneeded", lambda shop, out: _build_id_dir(shop, out, "strip-unneeded")
    ),
    Variant("dwz", _dwz_single),
    Variant("dwz-multifile", _dwz_multi),
    Variant("dwz-multifile-build-id", lambda shop, out: _dwz_multi(shop, out, then_split=True)),
    Variant("split-dwo-dwarf5", lambda shop, out: _split_dwarf(shop, out, 5, package=False)),
    Variant("split-dwo-dwarf4", lambda shop, out: _split_dwarf(shop, out, 4, package=False)),
    Variant("split-dwp-dwarf4", lambda shop, out: _split_dwarf(shop, out, 4, package=True)),
    Variant(
        "split-dwp-dwarf5",
        lambda shop, out: _split_dwarf(shop, out, 5, package=True),
        NO_DWARF5_DWP,
        toolchain_cannot=True,
    ),
]
VARIANTS_BY_NAME = {variant.name: variant for variant in VARIANTS}


class Builds:
    """Every (language, variant) built once per module, lazily."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._shops: dict[str, Workshop] = {}
        self._built: dict[tuple[str, str], Built | BuildError] = {}

    def get(self, language: str, variant: str) -> Built:
        key = (language, variant)
        if key not in self._built:
            shop = self._shops.setdefault(
                language, Workshop(self.root / language.replace("+", "x"), LANGUAGES[language])
            )
            out = shop.root / variant
            out.mkdir(parents=True)
            try:
                built = VARIANTS_BY_NAME[variant].make(shop, out)
                if built.oracle != built.binary:
                    _same_code(built.binary, built.oracle)
                self._built[key] = built
            except BuildError as error:
                self._built[key] = error
        built = self._built[key]
        if isinstance(built, BuildError):
            raise built
        return built


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(tmp_path_factory.mktemp("dwarf-variants"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the user's cache (nor another test's): whatever redhand caches starts empty."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REDHAND_CACHE", raising=False)
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)


# -- the oracle -----------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """One source location of a frame: the function, file, line and column."""

    function: str | None
    file: str | None
    line: int | None
    column: int | None

    def __str__(self) -> str:
        return f"{self.function} at {self.file}:{self.line}:{self.column}"


def _pairs(text: str) -> list[tuple[str, str]]:
    lines = text.rstrip("\n").split("\n")
    return list(zip(lines[0::2], lines[1::2], strict=True))


def oracle_places(oracle: Path, address: int) -> list[Place]:
    """The locations at a link-time address, innermost inlined call first.

    Functions, files and lines from binutils' ``addr2line -i -f -C``; columns
    from elfutils' ``eu-addr2line -i``, whose lines must agree.
    """
    where = f"{address:#x}"
    gnu = _pairs(_tool(["addr2line", "-i", "-f", "-C", "-e", oracle, where]))
    elf = _pairs(_tool(["eu-addr2line", "-i", "-f", "-C", "-e", oracle, where]))
    assert len(gnu) == len(elf), f"addr2line {gnu} and eu-addr2line {elf} disagree at {where}"
    places = []
    for (function, location), (_, eu_location) in zip(gnu, elf, strict=True):
        match = re.match(r"(.+):(\d+)(?: \(discriminator \d+\))?$", location)
        if function == "??" or match is None or match.group(1) == "??":
            places.append(Place(None if function == "??" else function, None, None, None))
            continue
        eu = re.match(r"(.+):(\d+):(\d+)$", eu_location)
        assert eu is not None and eu.group(2) == match.group(2), (
            f"addr2line says {location}, eu-addr2line {eu_location} at {where}"
        )
        places.append(
            Place(function, os.path.normpath(match.group(1)), int(match.group(2)), int(eu.group(3)))
        )
    return places


def _bare(name: str) -> str:
    """A function name without its parameter list and cv-qualifiers."""
    name = name.strip()
    while name.endswith((" const", " volatile")):
        name = name.rsplit(" ", 1)[0]
    if name.endswith(")"):
        depth = 0
        for index in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[index], 0)
            if depth == 0:
                return name[:index]
    return name


def _same_function(got: str | None, expected: str | None) -> bool:
    """Equal but for parameters; an inlined call's DWARF name may lack its qualifiers."""
    if got is None or expected is None:
        return got == expected
    mine, theirs = _bare(got), _bare(expected)
    return mine == theirs or theirs.endswith("::" + mine)


# -- the comparison -------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What redhand said of one frame (from the Python API or the JSON document)."""

    pc: int
    function: str | None
    file: str | None
    line: int | None
    column: int | None
    inlined: bool
    module: str | None
    signal_frame: bool

    @classmethod
    def of(cls, frame: redhand.Frame) -> Seen:
        return cls(
            frame.pc,
            frame.function,
            frame.file,
            frame.line,
            frame.column,
            frame.inlined,
            frame.module,
            frame.signal_frame,
        )

    def place(self) -> Place:
        file = os.path.normpath(self.file) if self.file is not None else None
        return Place(self.function, file, self.line, self.column)


def physical_frames(frames: Iterable[Seen]) -> list[list[Seen]]:
    """Frames grouped by the stack frame they belong to: inlined calls, then the real one."""
    groups: list[list[Seen]] = []
    group: list[Seen] = []
    for frame in frames:
        group.append(frame)
        if not frame.inlined:
            groups.append(group)
            group = []
    assert not group, f"inlined frames without a real frame: {group}"
    return groups


def check_against_oracle(
    frames: Sequence[Seen], binary: Path, bias: int, built: Built, language: Language
) -> None:
    """Every physical frame in ``binary``: redhand's chain is the oracle's, field by field."""
    path = os.path.realpath(binary)
    mine = [
        g
        for g in physical_frames(frames)
        if g[-1].module and os.path.realpath(g[-1].module) == path
    ]
    names = [[f.function for f in g] for g in mine]
    assert len(mine) >= 3, f"expected {language.blocked}, main and _start in {path}: {names}"
    # The blocked frame really has its inline chain, and it is the program's innermost frame.
    blocked = mine[0]
    assert blocked[-1].function == language.blocked, names
    assert tuple(f.function for f in blocked[:-1]) == language.inlined, (
        f"the inline chain at the blocked pc: {names[0]}, expected "
        f"{[*language.inlined, language.blocked]} (redhand found no DWARF for it?)\n"
        + "\n".join(str(f.place()) for f in blocked)
    )
    problems = []
    for group in mine:
        pc = group[0].pc
        assert all(f.pc == pc for f in group), group
        address = pc - bias - (0 if group[-1].signal_frame else 1)
        expected = oracle_places(built.oracle, address)
        got = [f.place() for f in group]
        if expected[0].file is None:  # no DWARF there (_start, from crt1.o)
            if len(got) != 1 or got[0].file is not None:
                problems.append(f"{address:#x}: redhand {got}, addr2line has no line")
            continue
        same = len(got) == len(expected) and all(
            _same_function(g.function, e.function)
            and (g.file, g.line, g.column) == (e.file, e.line, e.column)
            for g, e in zip(got, expected, strict=True)
        )
        if not same:
            problems.append(
                f"at {address:#x} ({built.oracle.name}):\n  redhand:   "
                + "\n             ".join(map(str, got))
                + "\n  addr2line: "
                + "\n             ".join(map(str, expected))
            )
    assert not problems, "\n".join(problems)


def _run_and_check(built: Built, language: Language) -> None:
    debug_dirs = (*built.debug_dirs, "/usr/lib/debug")
    with (
        LiveProgram([built.binary], blocked={"main": SYS_PAUSE}) as program,
        redhand.attach(program.pid, debug_dirs=debug_dirs, source=True) as target,
    ):
        thread = target.thread(program.tids["main"])
        frames = [Seen.of(frame) for frame in thread.backtrace()]
        module = next(m for m in target.modules if os.path.realpath(m.path) == str(built.binary))
        bias = module.bias
    check_against_oracle(frames, built.binary, bias, built, language)


@pytest.mark.parametrize(
    ("language", "variant"),
    [variant.param(language) for language in LANGUAGES for variant in VARIANTS],
)
def test_lines_and_inlines_match_addr2line(builds: Builds, language: str, variant: str) -> None:
    built = builds.get(language, variant)
    _run_and_check(built, LANGUAGES[language])


CORE_VARIANTS = ["debuglink-zlib", "build-id-strip-unneeded", "dwz", "split-dwp-dwarf4"]


@pytest.mark.parametrize("variant", CORE_VARIANTS)
def test_core_lines_match_addr2line(builds: Builds, tmp_path: Path, variant: str) -> None:
    """The same from a core written by gdb's gcore, read with ``open_core``."""
    built = builds.get("c", variant)
    with LiveProgram([built.binary], blocked={"main": SYS_PAUSE}) as program:
        prefix = tmp_path / "core"
        result = subprocess.run(
            ["gcore", "-o", str(prefix), str(program.pid)],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        core = tmp_path / f"core.{program.pid}"
        assert result.returncode == 0 and core.exists(), f"gcore failed: {result.stderr}"
    debug_dirs = (*built.debug_dirs, "/usr/lib/debug")
    with redhand.open_core(core, debug_dirs=debug_dirs, source=True) as target:
        frames = [Seen.of(frame) for frame in target.threads[0].backtrace()]
        module = next(m for m in target.modules if os.path.realpath(m.path) == str(built.binary))
        bias = module.bias
    check_against_oracle(frames, built.binary, bias, built, C)


def test_cli_json_with_debug_dir(builds: Builds) -> None:
    """``redhand stack --source --json --debug-dir DIR``: the JSON frames say the same."""
    built = builds.get("c++", "build-id-strip-unneeded")
    (debug_dir,) = built.debug_dirs
    with LiveProgram([built.binary], blocked={"main": SYS_PAUSE}) as program:
        result = subprocess.run(
            [
                sys.executable, "-m", "redhand.cli", "stack", "--source", "--json",
                "--debug-dir", debug_dir, str(program.pid),
            ],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (thread,) = document["threads"]
    frames = [
        Seen(
            f["pc"],
            f["function"],
            f["file"],
            f["line"],
            f["column"],
            f["inlined"],
            f["module"],
            f["signal_frame"],
        )
        for f in thread["frames"]
    ]
    module = next(m for m in document["modules"] if m["path"] == str(built.binary))
    check_against_oracle(frames, built.binary, module["bias"], built, CXX)
