"""redhand allocs on real programs: exact counts per call site against the program's own,
stacks against its known call chains, the leak it makes on purpose, its own allocator,
jemalloc preloaded, and the program untouched after detach (or redhand killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from helpers import compile_c, wait_until
from watch_helpers import TIMEOUT, Program, redhand

PROGRAM = ["-O1", "-g", "-pthread"]
PLUGIN = ["-O1", "-g", "-shared", "-fPIC"]
STRING = "a string of thirty-nine characters!!!!"
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("allocs")
    return (
        compile_c("allocs.cpp", folder, PROGRAM),
        compile_c("allocs_plugin.c", folder, PLUGIN),
    )


class Recording:
    """``redhand allocs PID ...`` in the background, stopped with SIGINT (as Ctrl-C)."""

    def __init__(self, pid: int, *options: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "redhand", "allocs", str(pid), *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()
        assert "recording the allocations" in line, line + self.process.stderr.read()

    def stop(self) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, out, err

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def run_program(program: Program) -> dict[str, int]:
    """Let the program do its work; its "compares" and "checksum" lines."""
    program.go()
    assert program.process is not None and program.process.stdout is not None
    said: dict[str, int] = {}
    while "checksum" not in said:
        line = program.process.stdout.readline()
        assert line, "the program ended early"
        key, _, value = line.partition(" ")
        if key in ("compares", "checksum"):
            said[key] = int(value)
    return said


def finish(program: Program) -> int:
    assert program.process is not None and program.process.stdin is not None
    program.process.stdin.write("end\n")
    program.process.stdin.flush()
    return program.process.wait(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def unprofiled(built: tuple[Path, Path]) -> dict[str, int]:
    exe, plugin = built
    with Program([exe, plugin]) as program:
        said = run_program(program)
        assert finish(program) == 0
    return said


def site(document: dict[str, object], function: str, caller: str) -> dict[str, object]:
    found = [
        s
        for s in document["call_sites"]  # type: ignore[attr-defined]
        if s["function"] == function
        and caller in str(s["caller"])
        and "ld-linux" not in str(s["module"])  # the dynamic linker's own (dlopen's strdup)
    ]
    assert len(found) == 1, (function, caller, found)
    return found[0]  # type: ignore[no-any-return]


def stacks_with(document: dict[str, object], frame: str) -> list[list[str]]:
    return [
        [f.split(" (")[0] for f in s["frames"]]
        for s in document["stacks"]  # type: ignore[attr-defined]
        if any(f.startswith(frame + " ") for f in s["frames"])
    ]


def test_exact_call_sites_and_true_stacks_of_a_running_program(
    built: tuple[Path, Path], unprofiled: dict[str, int], tmp_path: Path
) -> None:
    exe, plugin = built
    folded, svg = tmp_path / "stacks.folded", tmp_path / "flame.svg"
    options = ["--all", "--stack-bytes", "4096", "--json", "--force"]
    options += ["--alloc", "pool_get:size=arg0", "--free", "pool_put:ptr=arg0"]
    options += ["--folded", str(folded), "--svg", str(svg)]
    with Program([exe, plugin]) as program:
        recording = Recording(program.pid, *options)
        said = run_program(program)  # a thread and the plugin appear after the attach
        code, out, err = recording.stop()
        assert code == 0, err
        assert finish(program) == 0
    assert said == unprofiled  # the program computed the same
    document = json.loads(out)
    assert document["kind"] == "allocs" and document["sample_bytes"] == 0
    # Exact counts and bytes per call site, as the program makes them.
    expected = {
        ("malloc", "direct"): (1000, 1000 * 100),
        ("malloc", "strdup"): (500, 500 * (len(STRING) + 1)),
        ("malloc", "compare"): (said["compares"], said["compares"] * 24),
        ("operator new", "make_widgets"): (300, 300 * 48),
        ("malloc", "thread_work"): (200, 200 * 64),
        ("malloc", "plugin_alloc"): (150, 150 * 32),
        ("pool_get", "use_pool"): (70, 70 * 80),
        ("malloc", "leaky"): (40, 40 * 65536),
    }
    for (function, caller), (calls, size) in expected.items():
        found = site(document, function, caller)
        assert (found["calls"], found["bytes"]) == (calls, size), (function, caller)
    assert site(document, "pool_put", "use_pool")["calls"] == 70
    probes = {(p["symbol"], Path(p["module"]).name) for p in document["probes"]}
    assert ("malloc", "libc.so.6") in probes and ("_Znwm", "libstdc++.so.6.0.30") in probes
    # Stacks: complete, and the true callers, where frame pointers lose them (strdup keeps
    # none, so a frame-pointer walk gives malloc alone; the qsort callback's caller would be
    # msort_with_tmp's caller's caller).
    assert document["samples"] >= 2400
    assert document["complete"] >= 0.99 * document["samples"]
    (strdup,) = stacks_with(document, "via_strdup")
    assert strdup[:3] == ["malloc", "strdup", "via_strdup"] and strdup[-1] == "_start"
    sorting = stacks_with(document, "compare")  # merge sort recurses: several depths
    for qsort in sorting:
        assert qsort[:3] == ["malloc", "compare", "msort_with_tmp.part.0"]
        assert qsort[-6:-3] == ["qsort_r", "via_qsort", "main"] and qsort[-1] == "_start"
    (new,) = stacks_with(document, "make_widgets")
    assert new[0] == "operator new(unsigned long)" and new[1] == "make_widgets"
    (thread,) = stacks_with(document, "thread_work")
    assert thread[:3] == ["malloc", "thread_work", "start_thread"] and "clone" in thread[-1]
    assert stacks_with(document, "plugin_alloc")
    # The leak: every sampled block of leaky() is still live, with its size.
    (leak,) = [s for s in document["live"] if any("leaky" in f for f in s["frames"])]
    assert leak["blocks"] == 40 and leak["bytes"] == 40 * 65536
    assert not [s for s in document["live"] if any("direct" in f for f in s["frames"])]
    # mmap and munmap, from their tracepoints, with their stacks.
    maps = {
        (m["call"], m["frames"][1].split(" (")[0]): m
        for m in document["maps"]
        if len(m["frames"]) > 1
    }
    mapped = maps[("mmap (anonymous)", "map_pages")]
    assert (mapped["calls"], mapped["bytes"]) == (1, 1 << 20) and mapped["complete"]
    assert maps[("munmap", "map_pages")]["bytes"] == 1 << 20
    # Folded stacks and the flame graph.
    lines = folded.read_text().splitlines()
    assert any(line.split()[0].endswith("via_strdup (allocs);strdup (libc.so.6);malloc (libc.so.6)")
               or "via_strdup" in line for line in lines)  # fmt: skip
    root = ElementTree.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert any("make_widgets" in (t.text or "") for t in root.iter() if t.tag.endswith("title"))


def test_the_leak_is_found_by_sampling_within_its_error(built: tuple[Path, Path]) -> None:
    """One stack sample per 64 KiB on average: leaky()'s 2.5 MiB is estimated from its
    samples; the freed blocks of everything else leave nothing live of their stacks."""
    exe, plugin = built
    with Program([exe, plugin]) as program:
        recording = Recording(program.pid, "--sample-bytes", "65536", "--json", "--force")
        run_program(program)
        code, out, err = recording.stop()
        assert code == 0, err
        finish(program)
    document = json.loads(out)
    assert document["sample_bytes"] == 65536
    (leak,) = [s for s in document["live"] if any("leaky" in f for f in s["frames"])]
    assert 0.6 * 40 * 65536 <= leak["bytes"] <= 1.5 * 40 * 65536, leak
    assert leak["frames"][1].startswith("leaky ")
    assert site(document, "malloc", "leaky")["calls"] == 40  # the totals stay exact


def test_a_launched_program_and_its_text_report(built: tuple[Path, Path]) -> None:
    exe, plugin = built
    result = subprocess.run(
        [sys.executable, "-m", "redhand", "allocs", "--force", "--", str(exe), str(plugin)],
        input="go\nend\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "malloc from direct (allocs" in text
    assert "operator new from make_widgets" in text
    assert "live at the end" in text and "leaky" in text
    assert "the program ended: status 0" in text


def test_a_static_executables_own_allocator(tmp_path: Path) -> None:
    static = compile_c(
        r"""
        #include <stdio.h>
        #include <stdlib.h>
        __attribute__((noinline)) void work(void)
        {
            for (int i = 0; i < 100; i++) {
                char *volatile block = malloc(64);
                free(block);
            }
        }
        int main(void) { work(); puts("done"); return 0; }
        """,
        tmp_path,
        ["-O1", "-g", "-static"],
    )
    result = redhand("allocs", "--force", "--json", "--", str(static))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    modules = {Path(p["module"]).name for p in document["probes"] if p["symbol"] == "malloc"}
    assert modules == {static.name}
    assert site(document, "malloc", "work")["calls"] == 100


PRELOADED = {
    "jemalloc": ("libjemalloc2", JEMALLOC),
    "tcmalloc": ("libtcmalloc-minimal4", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
    "mimalloc": ("libmimalloc2.0", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
}


@pytest.mark.parametrize("allocator", PRELOADED)
def test_a_preloaded_allocator_is_the_one_probed(built: tuple[Path, Path], allocator: str) -> None:
    """Debian's jemalloc, tcmalloc and mimalloc, preloaded: their malloc is the one the GOT
    slots hold, so the one probed, and every call is counted."""
    package, library = PRELOADED[allocator]
    if not Path(library).exists():
        pytest.skip(f"{package} is not installed (tests/run.sh installs it)")
    exe, plugin = built
    env = {**os.environ, "LD_PRELOAD": library}
    with Program([exe, plugin], env=env) as program:
        recording = Recording(program.pid, "--json", "--force")
        run_program(program)
        code, out, err = recording.stop()
        assert code == 0, err
        finish(program)
    document = json.loads(out)
    modules = {Path(p["module"]).name for p in document["probes"] if p["symbol"] == "malloc"}
    assert modules == {Path(library).resolve().name}
    assert site(document, "malloc", "direct")["calls"] == 1000
    freed = sum(s["calls"] for s in document["call_sites"] if s["function"] == "free")
    assert freed >= 1000


def mapped(pid: int) -> tuple[set[str], list[str]]:
    """The files a process maps, and its executable mappings that no file backs."""
    files: set[str] = set()
    anonymous: list[str] = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) == 6 else ""
        if path.startswith("/"):
            files.add(path)
        elif "x" in fields[1]:
            anonymous.append(path or fields[0])
    return files, anonymous


def test_nothing_is_left_after_detach_not_even_when_redhand_is_killed(
    built: tuple[Path, Path], unprofiled: dict[str, int]
) -> None:
    exe, plugin = built
    with Program([exe, plugin]) as program:
        recording = Recording(program.pid, "--force")
        recording.kill()  # SIGKILL while recording: the kernel drops the probes
        wait_until(lambda: not _probes_of_redhand(), "the kernel to drop the probes")
        said = run_program(program)
        files, anonymous = mapped(program.pid)
        assert finish(program) == 0
    assert said == unprofiled
    # No library of redhand's, no code of its: the program's own files, and at most the
    # kernel's [uprobes] page (made at a probe's first hit).
    assert not [f for f in files if "redhand" in f or "python" in f]
    assert set(anonymous) <= {"[vdso]", "[vsyscall]", "[uprobes]"}


def _probes_of_redhand() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", "from redhand.capture.bpf import list_programs as l; "
         "print([n for _, n in l() if n.startswith('redhand_a') or n == 'redhand_free'])"],
        capture_output=True, text=True, timeout=TIMEOUT,
    ).stdout  # fmt: skip
    return [] if out.strip() == "[]" else [out]


def test_a_program_that_allocates_too_often_is_refused_without_force(tmp_path: Path) -> None:
    with Program([_busy_loop(tmp_path)]) as program:
        started = time.monotonic()
        result = redhand("allocs", str(program.pid))
        assert result.returncode == 14, result.stderr
        assert "--force" in result.stderr and "allocator calls per second" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 2  # the attach line, then the error
        assert time.monotonic() - started < TIMEOUT
        assert Path(f"/proc/{program.pid}").exists()  # left running


def test_losing_samples_makes_the_sampling_interval_grow(tmp_path: Path) -> None:
    """A stack for every call of a busy loop is more than any ring holds: the samples lost are
    counted, and past 1 % the gate samples less often, which the report says."""
    with Program([_busy_loop(tmp_path)]) as program:
        result = redhand("allocs", str(program.pid), "--all", "--force", "--duration", "1s",
                         "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["lost"]["samples"] > 0
    assert any("sampling interval grows" in note for note in document["notes"])
    assert document["sample_bytes"] >= 64 << 10


def _busy_loop(folder: Path) -> Path:
    return compile_c(
        r"""
        #include <stdio.h>
        #include <stdlib.h>
        int main(void)
        {
            puts("ready");
            fflush(stdout);
            for (;;) {
                char *volatile block = malloc(32);
                free(block);
            }
        }
        """,
        folder,
        ["-O1"],
    )


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ([], 2, ["PID or -- CMD"]),
        (["999999999"], 3, ["999999999"]),
        (["1", "--stack-bytes", "3000"], 2, ["16384"]),
        (["1", "--alloc", ":size=arg0"], 2, ["function name"]),
        (["1", "--alloc", "f:size=arg9"], 2, ["arg0 ... arg5"]),
        (["--", "/nonexistent/program"], 14, ["could not be started"]),
    ],
)
def test_bad_input_gets_one_clear_line(args: list[str], code: int, words: list[str]) -> None:
    result = redhand("allocs", *args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr
