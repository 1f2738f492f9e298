"""Helpers shared by the ELF, symbol and demangling tests: build tiny programs
with the system toolchain and ask binutils (the oracle) about them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
DEBUG_ROOT = "/usr/lib/debug"

_PACKAGES = {
    "gcc": "gcc",
    "g++": "g++",
    "readelf": "binutils",
    "objcopy": "binutils",
    "objdump": "binutils",
    "nm": "binutils",
    "strip": "binutils",
    "addr2line": "binutils",
    "c++filt": "binutils",
    "xz": "xz-utils",
    "gdb": "gdb",
    "rustc": "rustc (or rustup)",
    "ocamlopt": "ocaml-nox",
}


def require(tool: str) -> str:
    """The path of ``tool``; fail (not skip) with how to install it when it is missing."""
    path = shutil.which(tool)
    if path is None:
        package = _PACKAGES.get(tool, tool)
        pytest.fail(f"{tool} is needed by this test: apt-get install {package}")
    return path


def run(*cmd: str | Path, timeout: float = 60, cwd: Path | None = None, input: str | None = None
        ) -> str:  # fmt: skip
    """Run a command, return its stdout; fail the test with its stderr if it fails."""
    require(str(cmd[0]))
    result = subprocess.run(
        [str(part) for part in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        input=input,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def compile_c(directory: Path, name: str, source: str, *flags: str, cxx: bool = False) -> Path:
    """Compile ``source`` into ``directory/name`` with gcc (or g++) and ``flags``."""
    src = directory / (name + (".cc" if cxx else ".c"))
    src.write_text(source)
    out = directory / name
    run("g++" if cxx else "gcc", *flags, "-o", out, src)
    return out


# -- readelf's answers ---------------------------------------------------------


def readelf_sections(path: Path | str) -> list[dict[str, int | str]]:
    """Sections from ``readelf -SW``: name, type, addr, off, size, es, flags letters."""
    text = run("readelf", "-SW", path)
    rows = []
    pattern = re.compile(
        r"^\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+"
        r"([0-9a-f]+)\s+([A-Za-z]*)\s+(\d+)\s+(\d+)\s+(\d+)\s*$"
    )
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        index, name, kind, addr, off, size, es, flags, link, info, align = match.groups()
        if kind == "NULL" and index == "0":
            name = ""
        rows.append(
            {
                "index": int(index),
                "name": name,
                "type": kind,
                "addr": int(addr, 16),
                "offset": int(off, 16),
                "size": int(size, 16),
                "entsize": int(es, 16),
                "flags": flags,
                "link": int(link),
                "info": int(info),
                "align": int(align),
            }
        )
    return rows


def readelf_segments(path: Path | str) -> list[dict[str, int | str]]:
    """Program headers from ``readelf -lW``."""
    text = run("readelf", "-lW", path)
    rows = []
    pattern = re.compile(
        r"^\s+([A-Z_0-9+x]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+"
        r"0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+([RWE ]+?)\s+0x([0-9a-f]+)\s*$"
    )
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            kind, off, vaddr, paddr, filesz, memsz, flags, align = match.groups()
            rows.append(
                {
                    "type": kind,
                    "offset": int(off, 16),
                    "vaddr": int(vaddr, 16),
                    "paddr": int(paddr, 16),
                    "filesz": int(filesz, 16),
                    "memsz": int(memsz, 16),
                    "flags": flags.replace(" ", ""),
                    "align": int(align, 16),
                }
            )
    return rows


def readelf_build_id(path: Path | str) -> str | None:
    match = re.search(r"Build ID: ([0-9a-f]+)", run("readelf", "-nW", path))
    return match.group(1) if match else None


def readelf_symbol_count(path: Path | str, dynamic: bool = False) -> int:
    """How many entries ``readelf`` reports in .symtab (or .dynsym), null symbol included."""
    text = run("readelf", "-W", "--dyn-syms" if dynamic else "--syms", path)
    wanted = "'.dynsym'" if dynamic else "'.symtab'"
    for line in text.splitlines():
        if line.startswith("Symbol table " + wanted):
            return int(re.search(r"contains (\d+) entr", line).group(1))  # type: ignore[union-attr]
    return 0


def nm_symbols(path: Path | str, *extra: str) -> dict[str, int]:
    """Defined symbols from ``nm`` (name -> address), text symbols only."""
    out: dict[str, int] = {}
    for line in run("nm", "--defined-only", *extra, path).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TtWwi":
            out.setdefault(parts[2], int(parts[0], 16))
    return out


def objdump_plt_names(path: Path | str) -> dict[int, str]:
    """``address -> name`` of every ``<name@plt>`` label objdump -d prints."""
    names = {}
    for line in run("objdump", "-d", "--no-show-raw-insn", path).splitlines():
        match = re.match(r"^([0-9a-f]+) <(.+@plt)>:$", line)
        if match:
            names[int(match.group(1), 16)] = match.group(2)
    return names


def gdb_info_symbol(path: Path | str, addresses: list[int]) -> list[str]:
    """gdb's ``info symbol`` answer for each address, on the file (not a process)."""
    commands: list[str] = []
    for address in addresses:
        commands += ["-ex", f"info symbol {address:#x}"]
    text = run("gdb", "-nx", "-batch", *commands, path, timeout=120)
    return [line for line in text.splitlines() if " in section " in line or "No symbol" in line]


def make_minidebuginfo(binary: Path, out: Path) -> Path:
    """A stripped copy of ``binary`` with .gnu_debugdata built the way Fedora's
    find-debuginfo does: the function symbols that .dynsym lacks, in an
    --only-keep-debug copy without DWARF, xz-compressed."""
    work = out.parent
    dynsyms = {
        line.split()[0]
        for line in run("nm", "-D", "--format=posix", "--defined-only", binary).splitlines()
        if line.strip()
    }
    funcsyms = set()
    for line in run("nm", "--format=posix", "--defined-only", binary).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("T", "t", "D"):
            funcsyms.add(parts[0])
    keep = work / (out.name + ".keep")
    keep.write_text("".join(f"{name}\n" for name in sorted(funcsyms - dynsyms)))
    mini = work / (out.name + ".mini")
    run("objcopy", "--only-keep-debug", binary, mini)
    run(
        "objcopy", "-S", "--remove-section", ".gdb_index", "--remove-section", ".comment",
        f"--keep-symbols={keep}", mini,
    )  # fmt: skip
    run("xz", "-f", "-k", mini)
    shutil.copy(binary, out)
    run("strip", "--strip-all", "-R", ".comment", out)
    run("objcopy", "--add-section", f".gnu_debugdata={mini}.xz", out)
    return out


# A program whose functions survive optimisation, with an alias pair, a static
# function, an assembly label without type or size, and imports through the PLT.
PROGRAM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) int leaf_function(int x) { asm volatile(""); return x * 3 + 1; }

static __attribute__((noinline)) int static_helper(int x) {
    asm volatile("");
    return leaf_function(x) + 2;
}

__attribute__((noinline)) int middle_function(int x) { return static_helper(x) * 2; }
extern int weak_alias(int) __attribute__((weak, alias("middle_function")));

/* A hand-written label: no .type, no .size (STT_NOTYPE, size 0), then code. */
asm(".text\n"
    ".globl asm_label\n"
    ".p2align 4\n"
    "asm_label:\n"
    "  nop\n  nop\n  nop\n  nop\n"
    "  ret\n");

int main(int argc, char **argv) {
    printf("%d %zu\n", weak_alias(argc), strlen(argv[0]));
    puts("done");
    if (argc > 5)
        exit(3);
    return 0;
}
"""
