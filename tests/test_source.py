"""Source lines and inlined frames (DWARF through drgn), against addr2line and gdb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import LiveProgram, compile_c

import redhand

INLINE_C = r"""
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
static inline __attribute__((always_inline)) int leaf(int x) { pause(); return x + 1; }
static inline __attribute__((always_inline)) int mid(int x) { return leaf(x) * 2; }
__attribute__((noinline)) int outer(int x) { return mid(x) + 3; }
int main(int argc, char **argv) {
    (void)argv;
    printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    return outer(argc);
}
"""

INLINE_CXX = r"""
#include <cstdio>
#include <sys/syscall.h>
#include <unistd.h>
namespace shop {
struct Cart {
  int n;
  __attribute__((always_inline)) inline int wait() const { pause(); return n; }
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


def _addr2line(exe: Path, address: int) -> list[tuple[str, str, int]]:
    """(function, file, line) innermost first, from ``addr2line -i -f -C``."""
    out = subprocess.run(
        ["addr2line", "-i", "-f", "-C", "-e", str(exe), f"{address:#x}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    result = []
    for function, place in zip(out[0::2], out[1::2], strict=False):
        file, _, line = place.partition(":")
        result.append((function, file, int(line.split()[0]) if line[:1].isdigit() else 0))
    return result


def _physical(frames: list[redhand.Frame], name: str) -> list[redhand.Frame]:
    """The frames of the physical frame whose real function is ``name``."""
    group: list[redhand.Frame] = []
    for frame in frames:
        group.append(frame)
        if not frame.inlined:
            if frame.function is not None and name in frame.function:
                return group
            group = []
    raise AssertionError(f"{name} not in {[f.function for f in frames]}")


@pytest.mark.parametrize(
    ("text", "language", "real", "inlined"),
    [
        (INLINE_C, "c", "outer", ["leaf", "mid"]),
        (INLINE_CXX, "c++", "shop::Cart::total", ["wait"]),
    ],
)
def test_inline_chain_matches_addr2line(
    tmp_path: Path, text: str, language: str, real: str, inlined: list[str]
) -> None:
    binary = compile_c(text, tmp_path, ["-O2", "-g"], language=language)
    with LiveProgram([binary]) as program, redhand.attach(program.pid) as target:
        frames = list(target.threads[0].backtrace())
        module = target.find_module(frames[0].pc)
        assert module is not None
    group = _physical(frames, real)
    assert [f.function for f in group[:-1]] == inlined
    assert all(f.inlined for f in group[:-1]) and not group[-1].inlined
    assert len({f.pc for f in group}) == 1
    exe_module = next(m for m in target.modules if m.path == str(binary))
    expected = _addr2line(binary, group[0].pc - 1 - exe_module.bias)
    assert len(expected) == len(group)
    for frame, (function, file, line) in zip(group, expected, strict=True):
        assert frame.file is not None and os.path.basename(frame.file) == os.path.basename(file)
        assert frame.line == line
        assert frame.column is not None
        assert function.endswith(frame.function.split("::")[-1]) or frame.function in function
    # libc frames get lines too (libc6-dbg)
    libc = [f for f in frames if f.module_name == "libc.so.6" and not f.inlined]
    assert libc and libc[0].file is not None and libc[0].line is not None


def test_no_source_and_no_inline(tmp_path: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    with LiveProgram([binary]) as program:
        with redhand.attach(program.pid, source=False) as target:
            frames = list(target.threads[0].backtrace())
            assert all(f.file is None and not f.inlined for f in frames)
        with redhand.attach(program.pid, inline=False) as target:
            frames = list(target.threads[0].backtrace())
            assert not any(f.inlined for f in frames)
            outer = next(f for f in frames if f.function == "outer")
            assert outer.file is not None and outer.file.endswith(".c")
        text = subprocess.run(
            [sys.executable, "-m", "redhand.cli", "stack", "--source", str(program.pid)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "(inlined)" in text and " at " in text
        plain = subprocess.run(
            [sys.executable, "-m", "redhand.cli", "stack", "--no-source", str(program.pid)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "(inlined)" not in plain and ".c:" not in plain
        default = subprocess.run(  # `stack` is the quick look: no source lines unless asked
            [sys.executable, "-m", "redhand.cli", "stack", str(program.pid)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # the same but for the header's freeze time
        assert default.splitlines()[1:] == plain.splitlines()[1:]
        document = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "redhand.cli",
                    "stack",
                    "--source",
                    "--json",
                    str(program.pid),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert "inlined" in json.dumps(document)


def test_core_has_source_lines(tmp_path: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    core = tmp_path / "inline.core"
    with LiveProgram([binary]) as program:
        prefix = tmp_path / "inline"
        result = subprocess.run(
            ["gcore", "-o", str(prefix), str(program.pid)], capture_output=True, text=True
        )
        written = tmp_path / f"inline.{program.pid}"
        assert result.returncode == 0 and written.exists(), f"gcore failed: {result.stderr}"
        written.rename(core)
    with redhand.open_core(core) as target:
        frames = list(target.threads[0].backtrace())
    group = _physical(frames, "outer")
    assert [f.function for f in group] == ["leaf", "mid", "outer"]
    assert group[0].line is not None


def test_drgn_missing_warns(tmp_path: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    code = (
        "import sys; sys.modules['drgn'] = None\n"
        "import redhand\n"
        "t = redhand.attach({pid})\n"
        "frames = list(t.threads[0].backtrace())\n"
        "assert any(f.function == 'outer' for f in frames)\n"
        "assert not any(f.inlined or f.file for f in frames)\n"
        "print(t.warnings)\n"
    )
    with LiveProgram([binary]) as program:
        result = subprocess.run(
            [sys.executable, "-c", code.format(pid=program.pid)],
            capture_output=True,
            text=True,
            # An empty cache: lines cached by earlier tests would be served without drgn.
            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "drgn" in result.stdout and "unavailable" in result.stdout


def test_no_source_does_not_import_drgn(tmp_path: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    code = (
        "import sys, redhand\n"
        "t = redhand.attach({pid}, source=False)\n"
        "list(t.threads[0].backtrace())\n"
        "assert 'drgn' not in sys.modules\n"
    )
    with LiveProgram([binary]) as program:
        result = subprocess.run(
            [sys.executable, "-c", code.format(pid=program.pid)], capture_output=True, text=True
        )
    assert result.returncode == 0, result.stderr
