"""The persistent cache of source locations: a second look at a program asks drgn nothing,
gives the same frames, notices a debug file that appeared, survives corrupt entries, keeps
the answers of redhand processes that ran at once, and is not written when the cache is off."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import LiveProgram, compile_c
from test_source import INLINE_C

from redhand import cache

# Blocked in another libc function than INLINE_C: other libc addresses.
POLL_C = r"""
#include <poll.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
__attribute__((noinline)) int wait_in_poll(void) { return poll(NULL, 0, -1); }
int main(void) {
    printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    return wait_in_poll();
}
"""

# Runs redhand's CLI with its JSON on stdout.  With "block" first, drgn cannot
# be imported, and any attempt to import it is reported on stderr.  With
# "wait" first, it waits for a line on stdin before exiting (the answers of
# this process are written to the cache at exit).
LOOK = r"""
import sys
mode, argv = sys.argv[1], sys.argv[2:]
if mode == "block":
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("drgn", "_drgn"):
                sys.stderr.write(f"import of {name} attempted\n")
                raise ImportError(f"{name} is blocked by the test")
            return None
    sys.meta_path.insert(0, Blocker())
from redhand.cli import main
code = main(argv)
sys.stdout.flush()
if mode == "wait":
    sys.stderr.write("looked\n")
    sys.stderr.flush()
    sys.stdin.readline()
if "drgn" in sys.modules:
    sys.stderr.write("drgn was imported\n")
sys.exit(code)
"""

TIMEOUT = 120


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache of this test (XDG_CACHE_HOME), for redhand in subprocesses and here."""
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    monkeypatch.delenv("REDHAND_CACHE", raising=False)
    yield home


def look(*argv: str, mode: str = "plain", **env: str) -> tuple[dict[str, object], str]:
    """``redhand ARGV --json`` in a subprocess: (its document, its stderr)."""
    result = subprocess.run(
        [sys.executable, "-c", LOOK, mode, *argv, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document, result.stderr


def frames(document: dict[str, object]) -> list[list[dict[str, object]]]:
    """Each thread's frames, as the JSON has them (pc, names, files, lines, inline flags...)."""
    threads = document["threads"]
    assert isinstance(threads, list)
    return [thread["frames"] for thread in threads]


def physical(thread: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    """The frames of the physical frame whose real function is ``name``: inlined ones, then it."""
    group: list[dict[str, object]] = []
    for frame in thread:
        group.append(frame)
        if not frame["inlined"]:
            if frame["function"] == name:
                return group
            group = []
    raise AssertionError(f"{name} not in {[frame['function'] for frame in thread]}")


def assert_full_lines(document: dict[str, object]) -> None:
    """The INLINE_C program's stack with every DWARF answer: inline chain, lines, libc lines."""
    thread = frames(document)[0]
    group = physical(thread, "outer")
    assert [frame["function"] for frame in group] == ["leaf", "mid", "outer"]
    assert all(frame["file"] and frame["line"] and frame["column"] for frame in group)
    libc = [frame for frame in thread if str(frame["module"]).endswith("libc.so.6")]
    assert libc and all(frame["line"] is not None for frame in libc)
    warnings = document["warnings"]
    assert isinstance(warnings, list) and not any("drgn" in warning for warning in warnings)


def entries(home: Path) -> dict[str, bytes]:
    """The source cache's entries: name -> file contents."""
    folder = home / "redhand" / "source"
    if not folder.is_dir():
        return {}
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_second_look_asks_drgn_nothing(tmp_path: Path, cache_home: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    with LiveProgram([binary]) as program:
        pid = str(program.pid)
        first, _ = look("stack", "--source", pid)
        assert_full_lines(first)
        written = entries(cache_home)
        assert len(written) >= 2  # the program and libc at least
        second, stderr = look("stack", "--source", pid, mode="block")
        assert "attempted" not in stderr and "drgn was imported" not in stderr
        assert frames(second) == frames(first)
        assert_full_lines(second)
        # Nothing new to say: the entries are not rewritten.
        assert entries(cache_home) == written
        # The library, in this process: the same locations.
        import redhand

        with redhand.attach(program.pid) as target:
            here = list(target.threads[0].backtrace())
        assert [(f.function, f.file, f.line, f.column, f.inlined) for f in here] == [
            (f["function"], f["file"], f["line"], f["column"], f["inlined"])
            for f in frames(first)[0]
        ]


def test_core_second_look_asks_drgn_nothing(tmp_path: Path, cache_home: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    core = tmp_path / "inline.core"
    with LiveProgram([binary]) as program:
        prefix = tmp_path / "inline"
        result = subprocess.run(
            ["gcore", "-o", str(prefix), str(program.pid)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        written = tmp_path / f"inline.{program.pid}"
        assert result.returncode == 0 and written.exists(), f"gcore failed: {result.stderr}"
        written.rename(core)
    first, _ = look("core", str(core))
    assert_full_lines(first)
    second, stderr = look("core", str(core), mode="block")
    assert "attempted" not in stderr and "drgn was imported" not in stderr
    assert frames(second) == frames(first)


def test_debug_file_that_appears_is_used(tmp_path: Path, cache_home: Path) -> None:
    """A first look without the debug file says "no DWARF"; that answer dies with its key."""
    built = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    work = tmp_path / "split"
    hidden = work / "hidden"
    hidden.mkdir(parents=True)
    debug = work / "prog.debug"
    binary = work / "prog"
    subprocess.run(["objcopy", "--only-keep-debug", str(built), str(debug)], check=True, timeout=60)
    subprocess.run(
        ["objcopy", "--strip-all", f"--add-gnu-debuglink={debug}", str(built), str(binary)],
        check=True,
        timeout=60,
    )
    debug.rename(hidden / debug.name)
    with LiveProgram([binary]) as program:
        pid = str(program.pid)
        before, _ = look("stack", "--source", pid)
        thread = frames(before)[0]
        mine = [frame for frame in thread if frame["module"] == str(binary)]
        assert mine and all(frame["file"] is None and not frame["inlined"] for frame in mine)
        count = len(entries(cache_home))
        (hidden / debug.name).rename(debug)
        after, stderr = look("stack", "--source", pid)
        assert_full_lines(after)
        assert len(entries(cache_home)) == count + 1  # a new entry for the new key
        # and that one is served from the cache too
        again, stderr = look("stack", "--source", pid, mode="block")
        assert "attempted" not in stderr
        assert frames(again) == frames(after)


def test_corrupt_and_foreign_entries_are_misses(tmp_path: Path, cache_home: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    with LiveProgram([binary]) as program:
        pid = str(program.pid)
        first, _ = look("stack", "--source", pid)
        good = entries(cache_home)
        assert good
        folder = cache_home / "redhand" / "source"

        def check_misses() -> None:
            document, _ = look("stack", "--source", pid)
            assert frames(document) == frames(first)

        # Garbage in the entry files.
        for name in good:
            (folder / name).write_bytes(b"\x00garbage" * 50)
        check_misses()
        # Valid entry files whose payloads are not source entries.
        payloads = [
            b"not marshal at all",
            marshal.dumps("hello"),
            marshal.dumps((1, 2, 3)),
            marshal.dumps((1, None, None, None, None)),
        ]
        for payload in payloads:
            for name in good:
                assert cache.write("source", name, payload)
            check_misses()
        # The right key, but answers of the wrong shape: asked again, and rewritten.
        for name, contents in good.items():
            (folder / name).write_bytes(contents)
        for name in good:
            stored = cache.read("source", name)
            assert stored is not None
            version, key, drgn_version, no_dwarf, answers = marshal.loads(stored)
            assert answers, name
            bad: dict[int, object] = {address: ("leaf", 1, None, None) for address in answers}
            bad[next(iter(answers))] = (("leaf", "a.c", "one", None),)
            payload = marshal.dumps((version, key, drgn_version, no_dwarf, bad))
            assert cache.write("source", name, payload)
        check_misses()
        repaired, stderr = look("stack", "--source", pid, mode="block")
        assert "attempted" not in stderr
        assert frames(repaired) == frames(first)
        # Written by another drgn: a miss, then replaced.
        for name in good:
            stored = cache.read("source", name)
            assert stored is not None
            values = list(marshal.loads(stored))
            values[2] = "0.0.1-other"
            assert cache.write("source", name, marshal.dumps(tuple(values)))
        check_misses()
        for name in good:
            stored = cache.read("source", name)
            assert stored is not None and marshal.loads(stored)[2] != "0.0.1-other"


def test_concurrent_looks_keep_each_others_answers(tmp_path: Path, cache_home: Path) -> None:
    """Two redhand processes at once, each with answers for other libc addresses: both kept."""
    pausing = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    polling = compile_c(POLL_C, tmp_path, ["-O2", "-g"])
    with LiveProgram([pausing]) as one, LiveProgram([polling]) as two:
        # The first look has its answers, and keeps them until it exits...
        waiting = subprocess.Popen(
            [sys.executable, "-c", LOOK, "wait", "stack", "--source", str(one.pid), "--json"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert waiting.stderr is not None
            assert waiting.stderr.readline() == "looked\n"
            # ...while a second one looks at another program and writes libc's entry;
            look("stack", "--source", str(two.pid))
            # then the first exits, and writes the entry merged with the second's.
            _out, err = waiting.communicate("\n", timeout=TIMEOUT)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait(timeout=TIMEOUT)
        assert waiting.returncode == 0, err
        for program in (one, two):
            document, stderr = look("stack", "--source", str(program.pid), mode="block")
            assert "attempted" not in stderr, stderr
            thread = frames(document)[0]
            libc = [frame for frame in thread if str(frame["module"]).endswith("libc.so.6")]
            assert libc and all(frame["line"] is not None for frame in libc)


def test_cache_off_writes_nothing(tmp_path: Path, cache_home: Path) -> None:
    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    with LiveProgram([binary]) as program:
        for _ in range(2):
            document, _ = look("stack", "--source", str(program.pid), REDHAND_CACHE="0")
            assert_full_lines(document)
    assert not cache_home.exists() or not any(cache_home.rglob("*"))
    shutil.rmtree(cache_home, ignore_errors=True)


def test_entries_are_bounded_least_recent_out(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redhand
    from redhand.symbols import dwarf

    binary = compile_c(INLINE_C, tmp_path, ["-O2", "-g"])
    monkeypatch.setattr(dwarf, "MAX_ADDRESSES", 2)
    with LiveProgram([binary]) as program, redhand.attach(program.pid, source=False) as target:
        trace = target.threads[0].backtrace()
        module = next(m for m in target.modules if m.path == str(binary))
        outer = next(frame for frame in trace if frame.function == "outer")
        build_id = module.build_id
        assert outer.offset is not None and build_id is not None
        start = outer.pc - outer.offset
        first, second, third = outer.pc - 1, start, start + 1

        def stored() -> list[int]:
            """The link-time addresses in the program's entry, oldest first."""
            (name,) = (name for name in entries(cache_home) if name.startswith(build_id))
            payload = cache.read("source", name)
            assert payload is not None
            return [address + module.bias for address in marshal.loads(payload)[4]]

        lines = dwarf.SourceLines()
        answers = [lines.locate(module, address) for address in (first, second, third)]
        assert answers[0] is not None and answers[0][-1].function == "outer"
        lines.flush()
        assert stored() == [second, third]
        # An address served from the entry is young again: the other one goes.
        lines = dwarf.SourceLines()
        assert lines.locate(module, second) == answers[1]
        assert lines.locate(module, first) == answers[0]
        lines.flush()
        assert stored() == [second, first]
