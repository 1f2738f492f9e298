"""Shared by test_cfi.py and test_unwind.py: building test programs, readelf's CFI tables,
and gdb captures of real stacks."""

from __future__ import annotations

import bisect
import json
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from redhand.elf import ElfFile
from redhand.errors import MemoryReadError
from redhand.target.memory import RegionMemory
from redhand.target.model import Registers
from redhand.unwind.cfi import CfiTable, Row, Rule, RuleKind

# -- prerequisites -------------------------------------------------------------------

TOOLS = {
    "gcc": "apt-get install gcc",
    "g++": "apt-get install g++",
    "readelf": "apt-get install binutils",
    "objcopy": "apt-get install binutils",
    "as": "apt-get install binutils",
    "gdb": "apt-get install gdb",
    "rustc": "install Rust with rustup (https://rustup.rs)",
    "ocamlopt": "apt-get install ocaml-nox",
}


def missing_tools(names: Iterable[str]) -> list[str]:
    """``name (how to install it)`` for each tool that is not on PATH."""
    return [f"{name} ({TOOLS[name]})" for name in names if shutil.which(name) is None]


def run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result  # type: ignore[no-any-return]


def build_all(jobs: Sequence[Sequence[str]]) -> None:
    """Run compiler command lines in parallel."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for future in [pool.submit(run, job) for job in jobs]:
            future.result()


# -- readelf's interpreted frame tables ------------------------------------------------

# readelf's names for the x86_64 DWARF registers it may show as columns.
READELF_REGISTERS: dict[str, int] = {
    name: number
    for number, name in enumerate(
        ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp"]
        + [f"r{n}" for n in range(8, 16)]
        + ["rip"]
    )
}
READELF_REGISTERS.update({f"xmm{i}": 17 + i for i in range(16)})
READELF_REGISTERS.update({f"st{i}": 33 + i for i in range(8)})
READELF_REGISTERS.update({f"mm{i}": 41 + i for i in range(8)})
READELF_REGISTERS.update({"rflags": 49, "es": 50, "cs": 51, "ss": 52, "ds": 53, "fs": 54, "gs": 55})
READELF_REGISTERS.update({"fs.base": 58, "gs.base": 59, "tr": 62, "ldtr": 63, "mxcsr": 64})
REGISTER_NAMES = {number: name for name, number in READELF_REGISTERS.items()}

_SECTION = re.compile(r"^Contents of the (\S+) section")
_FDE = re.compile(
    r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ FDE cie=[0-9a-f]+ pc=([0-9a-f]+)\.\.([0-9a-f]+)"
)


@dataclass
class ReadelfFde:
    section: str
    offset: int
    pc_begin: int
    pc_end: int
    columns: list[str] = field(default_factory=list)
    rows: dict[int, list[str]] = field(default_factory=dict)


def readelf_frames(path: str | Path) -> dict[tuple[str, int], ReadelfFde]:
    """Every FDE readelf --debug-dump=frames-interp shows, by (section, offset)."""
    argv = ["readelf", "--debug-dump=frames-interp", "--debug-dump=no-follow-links", "-W"]
    text = run([*argv, str(path)]).stdout
    fdes: dict[tuple[str, int], ReadelfFde] = {}
    section = ""
    current: ReadelfFde | None = None
    for line in text.splitlines():
        match = _SECTION.match(line)
        if match:
            section = match.group(1)
            current = None
            continue
        match = _FDE.match(line)
        if match:
            offset, begin, end = (int(group, 16) for group in match.groups())
            current = ReadelfFde(section, offset, begin, end)
            fdes[(section, offset)] = current
            continue
        if " CIE " in line or "ZERO terminator" in line:
            current = None
            continue
        if not line.strip():
            continue
        if current is None:
            continue
        tokens = line.split()
        if tokens[0] == "LOC":
            current.columns = tokens[1:]
        elif re.fullmatch(r"[0-9a-f]{8,16}", tokens[0]):
            current.rows[int(tokens[0], 16)] = tokens[1:]
    return fdes


def readelf_rule(rule: Rule | None) -> str:
    """A rule as readelf's frames-interp shows it."""
    if rule is None or rule.kind is RuleKind.UNDEFINED:
        return "u"
    kind = rule.kind
    if kind is RuleKind.SAME_VALUE:
        return "s"
    if kind is RuleKind.OFFSET:
        return f"c{rule.value:+d}"
    if kind is RuleKind.VAL_OFFSET:
        return f"v{rule.value:+d}"
    if kind is RuleKind.REGISTER:  # readelf shows "r1 (rdx)"
        return f"r{rule.value} ({REGISTER_NAMES.get(rule.value, '?')})"
    if kind is RuleKind.EXPRESSION:
        return "exp"
    return "vexp"


def readelf_row(row: Row, columns: Sequence[str], ra_register: int) -> list[str]:
    """``row`` in the columns of a readelf table."""
    cfa = row.cfa
    if cfa.expression is not None:
        shown = ["exp"]
    else:
        shown = [f"{REGISTER_NAMES.get(cfa.register, f'r{cfa.register}')}{cfa.offset:+d}"]
    for column in columns[1:]:
        number = ra_register if column == "ra" else READELF_REGISTERS[column]
        shown.append(readelf_rule(row.registers.get(number)))
    return shown


def compare_with_readelf(
    table: CfiTable, oracle: dict[tuple[str, int], ReadelfFde], *, every: int = 1
) -> tuple[int, int, list[str]]:
    """Compare each ``every``-th FDE's rows with readelf: (FDEs, rows compared, mismatches)."""
    mine = {(fde.section, fde.offset): fde for fde in table.iter_fdes()}
    problems: list[str] = []
    if set(mine) != set(oracle):
        problems.append(
            f"FDE sets differ: only mine {sorted(set(mine) - set(oracle))[:5]},"
            f" only readelf {sorted(set(oracle) - set(mine))[:5]}"
        )
    checked_fdes = checked_rows = 0
    for index, (key, expected) in enumerate(sorted(oracle.items())):
        fde = mine.get(key)
        if fde is None or index % every:
            continue
        if (fde.pc_begin, fde.pc_end) != (expected.pc_begin, expected.pc_end):
            problems.append(f"{key}: range {fde.pc_begin:#x}..{fde.pc_end:#x}")
            continue
        if not expected.columns:
            continue  # readelf shows no table for an FDE of nops only
        checked_fdes += 1
        unknown = [c for c in expected.columns[1:] if c != "ra" and c not in READELF_REGISTERS]
        if unknown:
            problems.append(f"{key}: unknown readelf columns {unknown}")
            continue
        starts = {row.start for row in fde.rows()}
        locs = {loc for loc in expected.rows if fde.pc_begin <= loc < fde.pc_end}
        if starts != locs:
            problems.append(
                f"{key}: row starts differ: mine {sorted(starts - locs)[:4]},"
                f" readelf {sorted(locs - starts)[:4]}"
            )
        for loc in sorted(locs):
            checked_rows += 1
            got = readelf_row(fde.row_at(loc), expected.columns, fde.cie.ra_register)
            if " ".join(got).split() != expected.rows[loc]:
                problems.append(
                    f"{key} at {loc:#x}: mine {got}, readelf {expected.rows[loc]}"
                    f" ({expected.columns})"
                )
    return checked_fdes, checked_rows, problems


# -- gdb captures ---------------------------------------------------------------------

_GDB_SCRIPT = r"""
import gdb, json

def capture(path):
    frame = gdb.newest_frame()
    frame.select()
    names = ["r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
             "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
             "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs"]
    regs = {}
    for name in names:
        try:
            regs[name] = int(frame.read_register(name)) & 0xFFFFFFFFFFFFFFFF
        except gdb.error:
            regs[name] = 0
    pid = gdb.selected_inferior().pid
    with open("/proc/%d/maps" % pid) as f:
        maps = f.read()
    frames = []
    f = frame
    while f is not None and len(frames) < 1000:
        frames.append({
            "pc": int(f.pc()),
            "sp": int(f.read_register("rsp")) & 0xFFFFFFFFFFFFFFFF,
            "type": int(f.type()),
            # inlined and tail-call frames are gdb's own: they share a real frame
            "virtual": f.type() in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME),
            "sigtramp": f.type() == gdb.SIGTRAMP_FRAME,
            "name": f.name(),
        })
        try:
            f = f.older()
        except gdb.error:
            break
    sp = regs["rsp"]
    spans = []
    for line in maps.splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= sp - 128 < hi:
            spans.append((sp - 128, hi))
        elif len(fields) > 5 and fields[5] == "[stack]" and not lo <= sp < hi:
            spans.append((lo, hi))  # a signal handler on another stack: keep the main one
    regions = []
    for lo, hi in spans:
        data = bytes(gdb.selected_inferior().read_memory(lo, hi - lo))
        regions.append((lo, data.hex()))
    with open(path, "w") as out:
        json.dump({"registers": regs, "maps": maps, "frames": frames, "regions": regions}, out)
"""


@dataclass
class Capture:
    """A thread stopped by gdb: its registers, stack bytes, mappings and gdb's frames."""

    registers: Registers
    regions: list[tuple[int, bytes]]
    maps: list[tuple[int, int, str, int, str | None]]  # start, end, perms, offset, path
    frames: list[dict[str, object]]

    @classmethod
    def load(cls, path: Path) -> Capture:
        raw = json.loads(path.read_text())
        registers = Registers(**raw["registers"])
        regions = [(start, bytes.fromhex(data)) for start, data in raw["regions"]]
        maps = []
        for line in raw["maps"].splitlines():
            parts = line.split(None, 5)
            low, high = (int(x, 16) for x in parts[0].split("-"))
            path_ = parts[5].strip() if len(parts) > 5 else None
            maps.append((low, high, parts[1], int(parts[2], 16), path_))
        return cls(registers, regions, maps, raw["frames"])


def gdb_capture(
    program: Path,
    commands: Sequence[str],
    out: Path,
    *,
    args: Sequence[str] = (),
) -> Capture:
    """Run ``program`` under gdb, run ``commands`` (which must stop it), capture the thread."""
    script = out.parent / "redhand_gdb_capture.py"
    script.write_text(_GDB_SCRIPT)
    argv = [
        "gdb",
        "-nx",
        "-batch",
        "-ex", "set debuginfod enabled off",
        "-ex", "set pagination off",
        "-ex", "set confirm off",
        "-ex", "set backtrace past-main on",
        "-ex", "set backtrace past-entry on",
        "-ex", f"source {script}",
        *[part for command in commands for part in ("-ex", command)],
        "-ex", f"python capture({str(out)!r})",
        "-ex", "kill",
        "--args", str(program), *args,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if not out.exists():
        raise AssertionError(f"gdb captured nothing:\n{result.stdout}\n{result.stderr}")
    return Capture.load(out)


class Module:
    """A loaded ELF module as the unwinder sees it: its load bias and its CFI."""

    def __init__(self, path: str, bias: int, elf: ElfFile, extra: Sequence[ElfFile] = ()) -> None:
        self.path = path
        self.bias = bias
        self.elf = elf
        self.extra = tuple(extra)
        self._cfi: CfiTable | None = None
        self._built = False

    def cfi(self) -> CfiTable | None:
        if not self._built:
            self._cfi = CfiTable.from_elf(self.elf, self.extra)
            self._built = True
        return self._cfi


_ELF_CACHE: dict[str, ElfFile] = {}


def open_elf(path: str) -> ElfFile:
    """ElfFile.open, once per path for the whole test session."""
    if path not in _ELF_CACHE:
        _ELF_CACHE[path] = ElfFile.open(path)
    return _ELF_CACHE[path]


class ProcessImage:
    """find_module, is_executable and a Memory for a captured thread (code comes from the files).

    ``files`` replaces the ELF file (and adds separate debug files) of a module by its path.
    """

    def __init__(
        self,
        capture: Capture,
        *,
        files: dict[str, tuple[ElfFile, Sequence[ElfFile]]] | None = None,
        regions: Sequence[tuple[int, bytes]] | None = None,
    ) -> None:
        self.capture = capture
        self._starts = [mapping[0] for mapping in capture.maps]
        self.modules: dict[str, Module] = {}
        for start, _end, _perms, offset, path in capture.maps:
            if not path or path.startswith("[") or offset != 0 or path in self.modules:
                continue
            if files and path in files:
                elf, extra = files[path]
            elif os.path.exists(path):
                elf, extra = open_elf(path), ()
            else:
                continue
            loads = [s for s in elf.iter_segments() if s.p_type == 1]
            first = min(loads, key=lambda s: s.p_vaddr)
            self.modules[path] = Module(path, start - (first.p_vaddr & ~0xFFF), elf, extra)
        self.memory = RegionMemory(capture.regions if regions is None else regions, fallback=self)

    def _mapping(self, address: int) -> tuple[int, int, str, int, str | None] | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and address < self.capture.maps[index][1]:
            return self.capture.maps[index]
        return None

    def find_module(self, address: int) -> Module | None:
        mapping = self._mapping(address)
        if mapping is None or mapping[4] is None:
            return None
        return self.modules.get(mapping[4])

    def is_executable(self, address: int) -> bool:
        mapping = self._mapping(address)
        return mapping is not None and "x" in mapping[2]

    def read(self, address: int, size: int) -> bytes:
        """Code and read-only data, from the module's file."""
        module = self.find_module(address)
        if module is None:
            raise MemoryReadError(address, size, "not captured")
        try:
            return module.elf.read_vaddr(address - module.bias, size)
        except Exception as error:
            raise MemoryReadError(address, size, str(error)) from None


def c_source(text: str) -> str:
    return textwrap.dedent(text).lstrip()
