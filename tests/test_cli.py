"""`redhand stack` as a user runs it: text, JSON, options, errors and exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import LiveProgram, compile_c, thread_state, tracer_of, wait_until

from redhand.cli import main

WORKERS = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t started;

__attribute__((noinline)) void park(void) {
    pthread_mutex_lock(&lock);
    for (;;) pthread_cond_wait(&never, &lock);
}
__attribute__((noinline)) void middle(int depth) {
    if (depth > 0) middle(depth - 1); else park();
    __asm__ volatile("" ::: "memory");
}
__attribute__((noinline)) void *worker(void *arg) {
    printf("thread worker%ld %ld\n", (long)arg, (long)syscall(SYS_gettid));
    fflush(stdout);
    pthread_barrier_wait(&started);
    middle(6);
    return NULL;
}
int main(void) {
    pthread_t t;
    pthread_barrier_init(&started, NULL, 5);
    for (long i = 0; i < 4; i++) pthread_create(&t, NULL, worker, (void *)i);
    pthread_barrier_wait(&started);
    printf("thread main %ld\nready\n", (long)getpid());
    fflush(stdout);
    for (;;) pause();
}
"""

SYS_FUTEX = 202
SYS_PAUSE = 34


@pytest.fixture(scope="module")
def workers_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_c(WORKERS, tmp_path_factory.mktemp("cli"), ["-O2", "-g", "-pthread"])


@pytest.fixture
def workers(workers_binary: Path):  # type: ignore[no-untyped-def]
    blocked = {f"worker{i}": SYS_FUTEX for i in range(4)}
    blocked["main"] = SYS_PAUSE
    with LiveProgram([workers_binary], blocked=blocked) as program:
        yield program


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_redhand(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real entry point in a child process: exit codes and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "redhand", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_text_groups_identical_stacks(workers: LiveProgram, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["stack", str(workers.pid)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"process {workers.pid} (")
    assert "5 threads" in lines[0] and "frozen for" in lines[0]
    tids = " ".join(str(workers.tids[f"worker{i}"]) for i in range(4))
    name = Path(f"/proc/{workers.pid}/comm").read_text().strip()  # unnamed: the program's
    assert f'4 threads "{name}" ({tids}):' in out
    assert f"thread {workers.pid} " in out
    for name in ("park", "middle", "worker", "start_thread", "main", "pause"):
        assert f" in {name}+0x" in out, name
    assert out.count(" in middle+0x") == 7  # one group: middle(6) .. middle(0)
    assert "\x1b[" not in out  # not a terminal: no colour


def test_no_group_and_thread_filter(workers: LiveProgram, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(["stack", "--no-group", str(workers.pid)], capsys)
    assert code == 0
    assert out.count("\nthread ") == 5
    tid = workers.tids["worker2"]
    code, out, _ = run_cli(["stack", "--thread", str(tid), str(workers.pid)], capsys)
    assert code == 0
    assert out.count("\nthread ") == 1
    assert f"\nthread {tid} " in out


def test_max_frames_says_what_it_left_out(workers: LiveProgram, capsys) -> None:  # type: ignore[no-untyped-def]
    tid = workers.tids["worker0"]
    code, full, _ = run_cli(["stack", "-t", str(tid), str(workers.pid)], capsys)
    assert code == 0
    frames = [line for line in full.splitlines() if line.startswith("#")]
    code, out, _ = run_cli(["stack", "-t", str(tid), "--max-frames", "3", str(workers.pid)], capsys)
    assert code == 0
    shown = [line for line in out.splitlines() if line.startswith("#")]
    assert len(shown) == 3
    assert f"… {len(frames) - 3} more frames" in out


def test_json_document(workers: LiveProgram, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(["stack", "--json", str(workers.pid)], capsys)
    assert code == 0
    document = json.loads(out)
    assert document["redhand"] == 1 and document["kind"] == "stack"
    assert document["pid"] == workers.pid
    assert isinstance(document["frozen_ns"], int) and document["frozen_ns"] > 0
    threads = document["threads"]
    assert threads[0]["tid"] == workers.pid
    assert sorted(t["tid"] for t in threads) == sorted(workers.tids.values())
    keys = {"index", "pc", "sp", "function", "offset", "module", "build_id", "file", "line"}
    keys |= {"column", "inlined", "trust"}
    for thread in threads:
        assert {"tid", "name", "crashed", "signal", "frames", "end"} <= thread.keys()
        assert thread["end"] == "outermost"
        for index, frame in enumerate(thread["frames"]):
            assert keys <= frame.keys()
            assert frame["index"] == index
            assert isinstance(frame["pc"], int)
            assert frame["trust"] in ("context", "cfi", "fp", "scan")
        assert thread["frames"][0]["trust"] == "context"
    worker = next(t for t in threads if t["tid"] == workers.tids["worker1"])
    names = [frame["function"] for frame in worker["frames"]]
    assert names[names.index("park") + 1 : names.index("park") + 8] == ["middle"] * 7


def test_timing(workers: LiveProgram, capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(["stack", "--timing", str(workers.pid)], capsys)
    assert code == 0
    timing = out.splitlines()[-1]
    assert timing.startswith("timing: frozen ")
    assert "unwind" in timing and "symbols" in timing and "total" in timing


def test_colour_only_when_asked(workers: LiveProgram) -> None:
    env = dict(os.environ, FORCE_COLOR="1")
    env.pop("NO_COLOR", None)
    coloured = run_redhand("stack", str(workers.pid), env=env)
    assert coloured.returncode == 0 and "\x1b[" in coloured.stdout
    env["NO_COLOR"] = "1"
    plain = run_redhand("stack", str(workers.pid), env=env)
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *words: str
) -> None:
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("redhand: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_error_no_such_process() -> None:
    pid = _dead_pid()
    _assert_one_line_error(run_redhand("stack", str(pid)), 3, str(pid))


def test_error_kernel_thread() -> None:
    _assert_one_line_error(run_redhand("stack", "2"), 6, "kernel thread")


def test_error_zombie(workers_binary: Path) -> None:
    child = subprocess.Popen(["sh", "-c", "exit 0"])
    try:
        wait_until(lambda: thread_state(child.pid, child.pid) == "Z", "the child to exit")
        _assert_one_line_error(run_redhand("stack", str(child.pid)), 7, "zombie")
    finally:
        child.wait()


def test_error_already_traced(workers: LiveProgram) -> None:
    tracer = subprocess.Popen(
        ["gdb", "-batch", "-nx", "-p", str(workers.pid), "-ex", "shell sleep 600"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: tracer_of(workers.pid) != 0, "gdb to attach")
        _assert_one_line_error(
            run_redhand("stack", str(workers.pid)), 5, "already traced", str(workers.pid)
        )
    finally:
        tracer.send_signal(signal.SIGKILL)
        tracer.wait()


def test_error_usage() -> None:
    result = run_redhand("stack", "not-a-pid")
    assert result.returncode == 2
    assert "not a process id" in result.stderr and "Traceback" not in result.stderr
    assert run_redhand("frobnicate").returncode == 2
    assert run_redhand("stack").returncode == 2


def test_help_lists_exit_codes() -> None:
    result = run_redhand("stack", "--help")
    assert result.returncode == 0
    assert "exit codes" in result.stdout and "already traced" in result.stdout


def _wait_for_handlers(pid: int) -> None:
    """Wait until redhand catches SIGTERM: past the interpreter's own start-up.

    (A signal during Python's start-up, before any of redhand's code runs,
    gets Python's default behaviour; that is not what this test is about.)
    """

    def catches_sigterm() -> bool:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return True  # it has ended already
        caught = int(status.split("SigCgt:")[1].split()[0], 16)
        return bool(caught & (1 << (signal.SIGTERM - 1)))

    wait_until(catches_sigterm, "redhand to install its signal handlers")


def test_interrupted_command_leaves_the_target_running(workers: LiveProgram) -> None:
    """SIGINT, SIGTERM or SIGHUP during `redhand stack`: a clean exit, a running target."""
    import random

    rng = random.Random(20261122)
    for attempt in range(24):
        signum = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)[attempt % 3]
        process = subprocess.Popen(
            [sys.executable, "-m", "redhand", "stack", str(workers.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_handlers(process.pid)
        time.sleep(rng.uniform(0.0, 0.15))
        process.send_signal(signum)
        try:
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert "Traceback" not in stderr, stderr
        # Finished before the signal, interrupted cleanly, or ended by the
        # signal's default action during the interpreter's final clean-up
        # (Python restores the default handlers as it exits).
        assert process.returncode in (0, 130, -signum), (process.returncode, stderr)
        if process.returncode == 130:
            assert stderr.strip() == "redhand: interrupted"
        states = {
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            for task in Path(f"/proc/{workers.pid}/task").iterdir()
        }
        assert not states & {"t", "T"}, f"attempt {attempt}: threads left stopped: {states}"


# -- the fast parser agrees with argparse ----------------------------------------------------

_TOKENS = [
    "--json", "--no-group", "--all-frames", "--scan", "--source", "--no-source", "--no-inline",
    "--timing", "--max-frames", "--max-frames=3", "--max-frames=0", "--max-frames=x",
    "--stack-bytes", "--stack-bytes=65536", "--stack-bytes=0x10000", "-t", "--thread",
    "--thread=7", "-t5", "--debug-dir", "--debug-dir=/tmp/d", "--exe", "--exe=/bin/true",
    "--sysroot", "--sysroot=/srv/root", "--json=1", "--jso", "--no-g", "--source=yes", "--",
    "-", "-h", "--help", "--version", "12", "0x10", "0", "-5", "abc", "core.1", "", "/tmp/d",
    "3", "--bogus",
]  # fmt: skip


_POSITIONALS = ["12", "0x10", "core.1", "/tmp/core", "0", "-5", "", "abc"]
_VALUES = ["3", "7", "0", "/tmp/d", "x", "-1"]


def _argparse_result(argv: list[str]) -> object:
    from redhand.cli import Arguments, UsageError, build_parser

    try:
        return Arguments(**vars(build_parser().parse_args(argv)))
    except UsageError as error:
        return error
    except SystemExit as stop:  # --help, --version
        return stop


def test_fast_parser_agrees_with_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the fast parser accepts, argparse parses to the same values.

    Random command lines from a vocabulary of good and bad options, values
    and positionals; the fast parser must take the plain ones (or it saves
    nothing) and leave every odd one to argparse.
    """
    import random

    from redhand.cli import fast_parse

    rng = random.Random(20261122)
    accepted = 0
    lines = [
        ["stack", "12"],
        ["stack", "--json", "12"],
        ["stack", "12", "--source", "--no-source", "-t", "3", "--thread", "4"],
        ["stack", "--max-frames", "3", "--debug-dir", "/tmp/d", "--debug-dir=/x", "12"],
        ["core", "core.1", "--exe", "/bin/true", "--sysroot=/srv", "--no-source"],
    ]
    for _ in range(6000):
        command = rng.choice(["stack", "core", "stack", "bogus"])
        words = [rng.choice(_POSITIONALS)]
        for _ in range(rng.randrange(0, 5)):
            words.append(rng.choice(_TOKENS))
            if rng.random() < 0.5:
                words.append(rng.choice(_VALUES))
        rng.shuffle(words)
        lines.append([command, *words])
    for argv in lines:
        fast = fast_parse(argv)
        if fast is None:
            continue
        accepted += 1
        assert _argparse_result(argv) == fast, argv
    capsys.readouterr()  # argparse's help and version output
    for argv in lines[:5]:
        assert fast_parse(argv) is not None, argv
    assert accepted > 400, f"the fast parser took only {accepted} of {len(lines)} lines"


@pytest.mark.parametrize(
    "argv",
    [
        ["stack"],
        ["stack", "12", "13"],
        ["stack", "--max-frames", "0", "12"],
        ["stack", "--jso", "12"],
        ["stack", "-t5", "12"],
        ["stack", "--json=1", "12"],
        ["stack", "--debug-dir", "--json", "12"],
        ["stack", "--", "12"],
        ["stack", "-h"],
        ["core"],
        ["--version"],
        [],
    ],
)
def test_fast_parser_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    from redhand.cli import fast_parse

    assert fast_parse(argv) is None


@pytest.mark.parametrize("options", [[], ["--json"]])
def test_plain_stack_imports_nothing_it_does_not_need(
    workers: LiveProgram, options: list[str]
) -> None:
    """The modules a plain `redhand stack PID` must not pay for (see the cli module's docstring)."""
    code = (
        "import sys; from redhand.cli import main; "
        "code = main(['stack', *sys.argv[2:], sys.argv[1]]); sys.stdout.flush(); "
        "bad = {'argparse', 're', 'enum', 'json', 'threading', 'signal', 'typing'} & "
        "set(sys.modules); print(sorted(bad), file=sys.stderr); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(workers.pid), *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "worker" in done.stdout
    assert done.stderr.strip() == "[]"
