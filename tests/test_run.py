"""redhand run: the crash report of a live process at its fatal signal, then the crash as
without redhand.

Each crash program of tests/programs runs twice in a folder of its own, with
RLIMIT_CORE raised in the child: bare, and under ``redhand run --json``.
Under redhand, the report must be the one ``redhand core`` gives on the
kernel's core of the same crash (kind, signal, code, address, the crashing
thread's frames); the exit status must be the bare run's; and the kernel
must still write its core where core_pattern says.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compile_c, kernel_writes_cores_here, rustc, unlimited_core, wait_until
from test_crash_kinds import CASES, Case
from watch_helpers import TIMEOUT, Program, all_stopped, redhand, states

import redhand as redhand_module

RUN_CASES = [
    case
    for case in CASES
    if case.name
    in (
        "null-write",
        "wild",
        "stack-overflow",
        "thread-overflow",
        "abort",
        "assert",
        "cxx-std",
        "rust-panic",
        "divide-by-zero",
        "trap",
    )
]


def build(case: Case, directory: Path) -> Path:
    if case.source.endswith(".rs"):
        return rustc(case.source, directory, case.flags)
    return compile_c(case.source, directory, case.flags)


def frame_names(document: dict[str, object], tid: int, count: int) -> list[str | None]:
    for thread in document["threads"]:  # type: ignore[attr-defined]
        if thread["tid"] == tid:
            return [frame["function"] for frame in thread["frames"][:count]]
    raise AssertionError(f"no thread {tid}")


def kernel_core(folder: Path) -> Path | None:
    cores = [p for p in folder.iterdir() if p.name.startswith("core")]
    return cores[0] if len(cores) == 1 else None


@pytest.mark.parametrize("case", RUN_CASES, ids=[case.name for case in RUN_CASES])
def test_report_matches_redhand_core_on_the_kernels_core(
    case: Case, build_dir: Path, tmp_path: Path
) -> None:
    exe = build(case, build_dir)
    argv = [str(exe), *case.args]
    bare_dir, guarded_dir = tmp_path / "bare", tmp_path / "guarded"
    bare_dir.mkdir()
    guarded_dir.mkdir()
    bare = subprocess.run(
        argv, cwd=bare_dir, preexec_fn=unlimited_core, capture_output=True, timeout=TIMEOUT
    )
    assert bare.returncode == -case.signal
    guarded = redhand("run", "--json", "--", *argv, cwd=guarded_dir, preexec_fn=unlimited_core)
    # The same end as without redhand, as a shell reports it.
    assert guarded.returncode == 128 + case.signal, guarded.stderr
    document = json.loads(guarded.stdout.splitlines()[-1])
    assert document["kind"] == "run" and document["report"] == "crash"
    assert document["exit"]["signal"] == case.signal
    crash = document["crash"]
    assert crash["signal"] == case.signal and crash["code"] == case.code
    assert crash["kind"] == case.kind, crash
    if not kernel_writes_cores_here():
        return
    core = kernel_core(guarded_dir)
    assert core is not None, "the kernel wrote no core under redhand"
    assert document["exit"]["core_dumped"]
    readback = redhand("core", "--json", str(core), "--exe", str(exe))
    assert readback.returncode == 0, readback.stderr
    expected = json.loads(readback.stdout)
    for key in ("signal", "code", "kind", "address", "thread"):
        assert crash[key] == expected["crash"][key], key
    thread = crash["thread"]
    assert frame_names(document, thread, 8) == frame_names(expected, thread, 8)


def test_million_frame_overflow_is_summarised(build_dir: Path, tmp_path: Path) -> None:
    """ping and pong, 16 bytes a frame, on a 16 MiB stack: a million frames, summarised."""
    exe = compile_c("recurse_pingpong.c", build_dir, ["-O2", "-g"])

    def big_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (16 << 20, 16 << 20))

    result = redhand("run", "--json", "--", str(exe), cwd=tmp_path, preexec_fn=big_stack)
    assert result.returncode == 128 + signal.SIGSEGV, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    assert document["crash"]["kind"] == "stack-overflow"
    (thread,) = document["threads"]
    assert thread["depth"] > 1_000_000
    recursion = thread["recursion"]
    assert recursion["repeats"] > 500_000
    assert {frame["function"] for frame in recursion["frames"]} == {"ping", "pong"}


HANDLERS = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static sigjmp_buf recover;
static void recovering(int sig) { siglongjmp(recover, 1); }
static void reraising(int sig)
{
	static const char message[] = "crash reporter: re-raising\n";
	write(2, message, sizeof message - 1);
	signal(sig, SIG_DFL);
	raise(sig);
}
__attribute__((noinline)) static void poke(volatile int *p) { *p = 1; }
int main(int argc, char **argv)
{
	int reraise = argc > 1 && !strcmp(argv[1], "reraise");
	signal(SIGSEGV, reraise ? reraising : recovering);
	if (!reraise && sigsetjmp(recover, 1)) {
		printf("recovered\n");
		return 0;
	}
	poke((volatile int *)0x18);
	return 3;
}
"""


def test_a_handler_that_recovers_gets_no_report(tmp_path: Path) -> None:
    exe = compile_c(HANDLERS, tmp_path, ["-O1", "-g"])
    result = redhand("run", "--", str(exe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "recovered" in result.stdout
    assert "SIGSEGV" not in result.stdout


def test_a_handler_that_reraises_gets_the_report(tmp_path: Path) -> None:
    exe = compile_c(HANDLERS, tmp_path, ["-O1", "-g"])
    result = redhand("run", "--json", "--", str(exe), "reraise", cwd=tmp_path)
    assert result.returncode == 128 + signal.SIGSEGV, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    assert document["crash"]["signal"] == signal.SIGSEGV
    # The handler's raise() queues the signal, blocked while the handler runs: it is
    # delivered after the handler returns, at the faulting instruction (as in the kernel's
    # core of the same program).
    assert "crash reporter: re-raising" in result.stderr
    assert frame_names(document, document["crash"]["thread"], 2) == ["poke", "main"]


def test_on_reports_a_handled_signal_too(tmp_path: Path) -> None:
    exe = compile_c(HANDLERS, tmp_path, ["-O1", "-g"])
    result = redhand("run", "--on", "SIGSEGV", "--json", "--", str(exe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    (report,) = document["reports"]
    assert report["crash"]["signal"] == signal.SIGSEGV
    assert "poke" in frame_names(report, report["crash"]["thread"], 4)


WAITER = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	if (argc > 1)  /* ignore SIGTERM: only SIGKILL ends it */
		signal(SIGTERM, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	for (;;)
		pause();
}
"""


def test_sigterm_from_another_process_names_the_sender(tmp_path: Path) -> None:
    exe = compile_c(WAITER, tmp_path, ["-g"])
    process = subprocess.Popen(
        [sys.executable, "-m", "redhand", "run", "--json", "--", str(exe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the program's "ready"
        assert line.strip() == "ready"
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        (child,) = [int(c) for c in children if Path(f"/proc/{c}/exe").resolve() == exe]
        os.kill(child, signal.SIGTERM)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, err
    document = json.loads(out.splitlines()[-1])
    assert document["event"]["siginfo"]["sender_pid"] == os.getpid()
    assert document["crash"]["signal"] == signal.SIGTERM
    assert str(os.getpid()) in json.dumps(document["crash"])


def test_timeout_prints_the_stacks_then_kills(tmp_path: Path) -> None:
    exe = compile_c(WAITER, tmp_path, ["-g"])
    result = redhand("run", "--timeout", "1s", "--json", "--", str(exe), cwd=tmp_path)
    assert result.returncode == 124, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    assert document["report"] == "timeout"
    assert document["exit"]["signal"] == signal.SIGTERM and document["exit"]["timed_out"]
    assert frame_names(document, document["threads"][0]["tid"], 2)[0] in ("pause", "__libc_pause")


def test_timeout_escalates_to_sigkill(tmp_path: Path) -> None:
    exe = compile_c(WAITER, tmp_path, ["-g"])
    result = redhand(
        "run", "--timeout", "1s", "--kill-after", "1s", "--", str(exe), "ignore", cwd=tmp_path
    )
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    assert "time is up after 1 s" in result.stdout
    assert "sent SIGKILL" in result.stderr


def test_core_option_writes_a_core_of_the_crash(build_dir: Path, tmp_path: Path) -> None:
    (case,) = [case for case in CASES if case.name == "null-write"]
    exe = build(case, build_dir)
    core = tmp_path / "crash.core"
    result = redhand("run", "--core", str(core), "--", str(exe), cwd=tmp_path)
    assert result.returncode == 128 + signal.SIGSEGV, result.stderr
    readback = redhand("core", "--json", str(core))
    assert readback.returncode == 0, readback.stderr
    assert "set_second" in readback.stdout


def test_guarding_a_running_process_and_sigkill_of_redhand(tmp_path: Path) -> None:
    """-p guards a running process; redhand killed leaves it running, untraced."""
    exe = compile_c(WAITER, tmp_path, ["-g"])
    with Program([exe]) as program:
        guard = subprocess.Popen(
            [sys.executable, "-m", "redhand", "run", "-p", str(program.pid)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: any(
                    line.startswith("TracerPid:") and line.split()[1] == str(guard.pid)
                    for line in Path(f"/proc/{program.pid}/status").read_text().splitlines()
                ),
                "redhand to trace the program",
                TIMEOUT,
            )
            guard.kill()
            guard.wait()
            wait_until(
                lambda: "TracerPid:\t0" in Path(f"/proc/{program.pid}/status").read_text(),
                "the program to be untraced",
                TIMEOUT,
            )
            assert not all_stopped(program.pid)
            assert states(program.pid)
        finally:
            if guard.poll() is None:
                guard.kill()
                guard.wait()


def test_guarding_a_running_process_reports_its_crash(tmp_path: Path) -> None:
    exe = compile_c(WAITER, tmp_path, ["-g"])
    with Program([exe]) as program:
        guard = subprocess.Popen(
            [sys.executable, "-m", "redhand", "run", "-p", str(program.pid), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(
                lambda: (
                    f"TracerPid:\t{guard.pid}" in Path(f"/proc/{program.pid}/status").read_text()
                ),
                "redhand to trace the program",
                TIMEOUT,
            )
            os.kill(program.pid, signal.SIGQUIT)
            out, err = guard.communicate(timeout=TIMEOUT)
        finally:
            if guard.poll() is None:
                guard.kill()
                guard.wait()
        assert guard.returncode == 128 + signal.SIGQUIT, err
        document = json.loads(out.splitlines()[-1])
        assert document["crash"]["signal"] == signal.SIGQUIT


FORKER = r"""
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
__attribute__((noinline)) static void child_work(volatile int *p) { *p = 7; }
int main(void)
{
	pid_t child = fork();
	if (child == 0)
		child_work((volatile int *)0x20);
	int status;
	waitpid(child, &status, 0);
	printf("child ended by signal %d\n", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	return 0;
}
"""


def test_a_crash_in_a_forked_child(tmp_path: Path) -> None:
    exe = compile_c(FORKER, tmp_path, ["-O1", "-g"])
    result = redhand("run", "--json", "--", str(exe), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    (report,) = document["reports"]
    assert report["crash"]["signal"] == signal.SIGSEGV
    assert "child_work" in frame_names(report, report["crash"]["thread"], 3)
    assert "child ended by signal 11" in result.stdout


def test_bad_input() -> None:
    for args, code in (
        (["run"], 2),
        (["run", "-p", "999999999"], 3),
        (["run", "--", "/nonexistent/program"], 11),
        (["run", "--kill-signal", "SIGNOPE", "--", "true"], 2),
    ):
        result = redhand(*args)
        assert result.returncode == code, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_python_api_returns_the_reports_and_the_status(build_dir: Path, tmp_path: Path) -> None:
    (case,) = [case for case in CASES if case.name == "assert"]
    exe = build(case, build_dir)
    result = redhand_module.run([str(exe)])
    assert result.exit_code == 128 + signal.SIGABRT
    assert result.status is not None and os.WTERMSIG(result.status) == signal.SIGABRT
    (report,) = result.reports
    assert report.target is not None
    crash = report.target.crash
    assert crash is not None and crash.kind == "assertion"
    assert "answer == 42" in crash.explanation


PIPE_WRITER = r"""
#include <stdio.h>
#include <unistd.h>
int main(void)
{
	int ends[2];
	pipe(ends);
	close(ends[0]);
	write(ends[1], "x", 1);  /* SIGPIPE: the default kills */
	return 0;
}
"""


def test_the_program_gets_the_signal_dispositions_it_would_have_without_redhand(
    tmp_path: Path,
) -> None:
    """Python ignores SIGPIPE; the program redhand launches must not inherit that."""
    exe = compile_c(PIPE_WRITER, tmp_path, ["-g"])
    bare = subprocess.run([str(exe)], timeout=TIMEOUT, check=False)
    assert bare.returncode == -signal.SIGPIPE
    result = redhand("run", "--json", "--", str(exe), cwd=tmp_path)
    assert result.returncode == 128 + signal.SIGPIPE, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    assert document["crash"]["signal"] == signal.SIGPIPE
    assert document["timing"]["paused_ns"] > 0
