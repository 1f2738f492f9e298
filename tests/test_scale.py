"""A process with 1,000 threads: every thread captured, and output people can read.

The program (tests/programs/many_threads.c) runs 1,000 workers named
w-0000 … w-0999 in three stack shapes, a heartbeat thread and the main
thread.  The JSON keeps every thread; the text sums the process up in a line,
shows each stack once under a title of bounded length, and says what the
freeze cost per thread.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gdb_oracle import CORE_TIMEOUT
from helpers import LiveProgram, compile_c, thread_state, wait_until

from redhand.cli import main
from redhand.report.stack import summarize_names, summarize_tids

WORKERS = 1000
THREADS = WORKERS + 2  # the workers, the heartbeat and main
LONGEST_LINE = 200
"""No line of a report is longer than this, but frame lines (``#12 …``)."""

SHAPES = {0: "wait_forever", 1: "sleep_forever", 2: "read_forever"}


class Program(LiveProgram):
    @property
    def heartbeat(self) -> Path:
        return Path(self.argv[2])

    def ticks(self) -> int:
        return int.from_bytes(self.heartbeat.read_bytes()[:8], "little")

    def assert_runs_on(self) -> None:
        """No thread left stopped, and the heartbeat ticks again."""
        states = {thread_state(self.pid, tid) for tid in self.tids.values()}
        assert not states & {"t", "T"}, states
        before = self.ticks()
        wait_until(lambda: self.ticks() > before + 2, "the heartbeat to tick")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Program]:
    directory = tmp_path_factory.mktemp("scale")
    binary = compile_c("many_threads.c", directory, ["-O1", "-g", "-pthread"])
    argv = [binary, str(WORKERS), directory / "heartbeat"]
    with Program(argv, running={"heartbeat"}, blocked={"main": 34}) as started:
        yield started


def run(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def long_lines(text: str) -> list[str]:
    """Lines over the bound, frame lines excepted."""
    return [
        line
        for line in text.splitlines()
        if len(line) > LONGEST_LINE and not line.lstrip().startswith("#")
    ]


def test_json_keeps_every_thread(program: Program, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(run(capsys, "stack", "--json", str(program.pid)))
    threads = document["threads"]
    assert len(threads) == THREADS
    names = {thread["tid"]: thread["name"] for thread in threads}
    assert set(names) == set(program.tids.values())
    assert all(names[tid] == name for name, tid in program.tids.items() if name != "main")
    for thread in threads:
        assert thread["frames"], thread["tid"]
        assert thread["end"] == "outermost", (thread["tid"], thread["end_detail"])
    # Every tid in exactly one group; each worker shape is one group of its own.
    grouped = [tid for group in document["groups"] for tid in group]
    assert sorted(grouped) == sorted(thread["tid"] for thread in threads)
    by_tid = {thread["tid"]: thread for thread in threads}
    for shape, function in SHAPES.items():
        tids = {program.tids[f"w-{i:04d}"] for i in range(WORKERS) if i % 3 == shape}
        (group,) = [group for group in document["groups"] if tids & set(group)]
        assert set(group) == tids
        names = [frame["function"] for frame in by_tid[group[0]]["frames"]]
        assert function in names and "worker" in names, names
    program.assert_runs_on()


def test_text_is_bounded_and_summed_up(
    program: Program, capsys: pytest.CaptureFixture[str]
) -> None:
    text = run(capsys, "stack", str(program.pid))
    lines = text.splitlines()
    # The header: the count and the freeze's cost per thread.
    assert re.fullmatch(
        rf"process {program.pid} \(.*\), 1,002 threads, frozen for [\d.]+ ms "
        r"\([\d.]+ µs per thread\)",
        lines[0],
    ), lines[0]
    # The shape of the process before any frame.
    summary = next(line for line in lines if line.startswith("1,002 threads: "))
    assert lines.index(summary) < min(i for i, line in enumerate(lines) if line.startswith("#"))
    shapes = r"(1,002 sleeping in 5 stacks|1,001 sleeping in 4 stacks, 1 running)"
    assert re.fullmatch(rf"1,002 threads: {shapes}", summary), summary
    # Each worker shape under one title of bounded length.
    titles = [line for line in lines if re.match(r"\d+ threads \"w-", line)]
    assert len(titles) == 3, titles
    for title in titles:
        match = re.fullmatch(
            r"(33[34]) threads \"w-000[0-2]\" … \"w-099[7-9]\" "
            r"\((\d+) (\d+) (\d+) … and (33[01]) more\):",
            title,
        )
        assert match, title
        assert int(match.group(1)) == int(match.group(5)) + 3
    assert text.count("\n#0 ") <= 10  # one stack per group, not one per thread
    assert long_lines(text) == []
    program.assert_runs_on()


def test_single_threads_on_request(program: Program, capsys: pytest.CaptureFixture[str]) -> None:
    text = run(capsys, "stack", "--no-group", str(program.pid))
    titles = [line for line in text.splitlines() if line.startswith("thread ")]
    assert len(titles) == THREADS
    assert f'thread {program.tids["w-0500"]} "w-0500" (S):' in titles
    assert long_lines(text) == []
    one = run(capsys, "stack", "--thread", str(program.tids["w-0007"]), str(program.pid))
    assert f'thread {program.tids["w-0007"]} "w-0007" (S):' in one.splitlines()
    assert "sleep_forever" in one
    program.assert_runs_on()


def test_core_report_follows_the_same_rules(
    program: Program, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    core = tmp_path / "core"
    subprocess.run(
        ["gdb", "-batch", "-nx", "-p", str(program.pid), "-ex", f"gcore {core}"],
        capture_output=True,
        timeout=CORE_TIMEOUT * 5,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    program.assert_runs_on()
    text = run(capsys, "core", str(core))
    lines = text.splitlines()
    assert re.match(rf"core of process {program.pid} \(.*\), 1,002 threads$", lines[0]), lines[0]
    summary = next(line for line in lines if line.startswith("1,002 threads: "))
    assert re.fullmatch(r"1,002 threads: 1,002 in 5 stacks", summary), summary
    titles = [line for line in lines if re.match(r"33[34] threads ", line)]
    assert len(titles) == 3, titles
    assert all(re.search(r"\(\d+ \d+ \d+ … and 33[01] more\):$", title) for title in titles)
    assert long_lines(text) == []
    document = json.loads(run(capsys, "core", "--json", str(core)))
    assert len(document["threads"]) == THREADS
    assert sorted(tid for group in document["groups"] for tid in group) == sorted(
        program.tids.values()
    )


# -- the rules, on their own -----------------------------------------------------------------


def test_names_summarised() -> None:
    assert summarize_names(["main"]) == '"main"'
    assert summarize_names(["w-0003", "w-0000", "w-0999", "w-0500"]) == '"w-0000" … "w-0999"'
    assert summarize_names(["io-1", "io-2"]) == '"io-1", "io-2"'
    assert summarize_names(["a", "b", "c", "d"]) == '"a", "b", "c", "d"'
    assert summarize_names(["a", "b", "c", "d", "e", "f"]) == '"a", "b", "c" and 3 more names'
    many = [f"pool-{i}-worker" for i in range(40)] + ["main", "gc"]
    assert summarize_names(many) == '"pool-0-worker" … "pool-39-worker", "main", "gc"'
    # Long names, many of them: still one bounded line.
    distinct = [f"{chr(97 + i)}" * 15 for i in range(26)]
    assert len(summarize_names(distinct)) < 80
    assert summarize_names(distinct).endswith("and 23 more names")


def test_tids_summarised() -> None:
    assert summarize_tids([5, 6, 7]) == "5 6 7"
    assert summarize_tids([1, 2, 3, 4, 5]) == "1 2 3 4 5"
    assert summarize_tids(list(range(100, 1100))) == "100 101 102 … and 997 more"
