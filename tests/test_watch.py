"""redhand watch: stop a program the moment a system call fails, act, and let it run on.

The target is tests/programs/badclose.c: worker threads close thousands of
good descriptors, and some close one twice; right after the failing close a
thread increments ``after_bad`` and prints a line, so the program itself
says whether the thread ran past the call before the capture.  Real kernel,
real eBPF, real seccomp filters; gdb reads the cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compile_c, kernel_writes_cores_here, wait_until
from watch_helpers import (
    TIMEOUT,
    Program,
    Watcher,
    after_lines,
    all_stopped,
    build_badclose,
    frames_of,
    our_programs,
    states,
    wait_no_programs,
    world_readable_copy,
)

import redhand

ENOSYS_TEXT = "Function not implemented"


def tracers(pid: int) -> list[int]:
    found = []
    for tid in states(pid):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                found.append(int(line.split()[1]))
    return found


@pytest.fixture(scope="module")
def badclose(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_badclose(tmp_path_factory.mktemp("watch-build"))


def unlimited_core() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def gdb_print(exe: Path, core: Path, *commands: str) -> str:
    argv = ["gdb", "-batch", "-nx", str(exe), str(core)]
    for command in commands:
        argv += ["-ex", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT).stdout


# -- launch mode: seccomp + ptrace ---------------------------------------------------------


def test_launch_stops_at_the_failing_close_and_the_core_shows_it(
    badclose: Path, tmp_path: Path
) -> None:
    core = tmp_path / "watched.core"
    with Watcher(
        [
            "close fails EBADF",
            "--json",
            "--then",
            f"stack,gcore {core}",
            "--",
            str(badclose),
            "--threads",
            "4",
            "--bad",
            "1",
        ],
        cwd=tmp_path,
    ) as watcher:
        assert watcher.finish() == 0, watcher.stderr
    assert "seccomp" in watcher.stderr
    (document,) = watcher.documents()
    event = document["event"]
    assert document["kind"] == "watch"
    assert event["name"] == "close" and event["number"] == 3  # type: ignore[index]
    assert event["arguments"] == [900]  # type: ignore[index]
    assert event["errno_name"] == "EBADF" and event["return"] == -9  # type: ignore[index]
    (after,) = after_lines(watcher.stdout)
    assert after[1] == event["tid"]  # type: ignore[index]
    assert document["threads"][0]["tid"] == event["tid"]  # type: ignore[index]
    names = frames_of(document, event["tid"])  # type: ignore[index]
    assert names[:4] == ["close", "release_handle", "cleanup_twice", "worker"]
    assert document["actions"][1]["ok"], document["actions"]  # type: ignore[index]
    assert "done 1" in watcher.stdout  # it ran on, to its normal end
    # The thread ran nothing after the failing call before the core was taken.
    printed = gdb_print(badclose, core, "print after_bad", f"thread find {event['tid']}")  # type: ignore[index]
    assert "$1 = 0" in printed
    readback = subprocess.run(
        [sys.executable, "-m", "redhand", "core", str(core), "--json", "--no-source"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert readback.returncode == 0, readback.stderr
    assert "release_handle" in readback.stdout


def test_abort_leaves_the_kernels_core_with_the_close_caller_on_top(
    badclose: Path, tmp_path: Path
) -> None:
    with Watcher(
        ["close fails EBADF", "--then", "abort", "--", str(badclose), "--bad", "1"],
        cwd=tmp_path,
        preexec_fn=unlimited_core,
    ) as watcher:
        code = watcher.finish()
    assert code == 128 + signal.SIGABRT, watcher.stderr
    assert "abort: SIGABRT sent to thread" in watcher.stdout
    assert not after_lines(watcher.stdout)  # it died before the line after the close
    if not kernel_writes_cores_here():
        return  # the exit status says the abort happened; the core went to core_pattern
    cores = list(tmp_path.glob("core*"))
    assert len(cores) == 1, cores
    backtrace = gdb_print(badclose, cores[0], "bt")
    assert "release_handle" in backtrace and "cleanup_twice" in backtrace
    assert backtrace.index("close") < backtrace.index("release_handle")


def test_several_threads_failing_at_once_are_all_reported(badclose: Path) -> None:
    with Watcher(
        [
            "close fails EBADF",
            "--json",
            "--count",
            "3",
            "--",
            str(badclose),
            "--threads",
            "6",
            "--bad",
            "3",
            "--good",
            "50",
        ]
    ) as watcher:
        assert watcher.finish() == 0, watcher.stderr
    failed = {tid for _count, tid, _errno in after_lines(watcher.stdout)}
    assert len(failed) == 3
    seen: set[int] = set()
    for document in watcher.documents():
        seen.add(document["event"]["tid"])  # type: ignore[index]
        seen.update(also["tid"] for also in document["also"])  # type: ignore[attr-defined]
    assert seen == failed
    assert ENOSYS_TEXT not in watcher.stdout


def test_launch_follows_forks_and_execs(badclose: Path, tmp_path: Path) -> None:
    script = f"{badclose} --bad 1 --threads 2; {badclose} --bad 1 --threads 2; true"
    with Watcher(
        ["close fails EBADF", "--json", "--count", "2", "--", "sh", "-c", script],
        cwd=tmp_path,
    ) as watcher:
        assert watcher.finish() == 0, watcher.stderr
    documents = watcher.documents()
    assert len(documents) == 2
    pids = {document["pid"] for document in documents}
    assert len(pids) == 2  # two processes, neither of them the shell
    for document in documents:
        assert document["exe"] == str(badclose)
    assert watcher.stdout.count("done 1") == 2


def test_count_and_skip(badclose: Path, tmp_path: Path) -> None:
    """Hits 3 and 4 of 5: the program has printed 2 (then 3) lines at those moments."""
    out = tmp_path / "out.txt"
    snapshots = tmp_path / "snapshots.txt"
    script = f"{badclose} --bad 1 --threads 2 --good 20 --loops 5 > {out}"
    with Watcher(
        [
            "close fails EBADF",
            "--skip",
            "2",
            "--count",
            "2",
            "--then",
            f"exec sh -c 'grep -c after {out} >> {snapshots}'",
            "--",
            "sh",
            "-c",
            script,
        ]
    ) as watcher:
        assert watcher.finish() == 0, watcher.stderr
    assert snapshots.read_text().split() == ["2", "3"]
    assert out.read_text().count("after") == 5


@pytest.mark.parametrize("how", ["launch", "attach"])
def test_syscalls_shows_the_calls_that_led_to_the_hit(badclose: Path, how: str) -> None:
    """badclose's bad thread: open /dev/null, dup2 it to 900, close 900 twice (the hit)."""
    args = ["close fails EBADF", "--syscalls", "5", "--json"]
    if how == "launch":
        with Watcher([*args, "--", str(badclose), "--threads", "2", "--bad", "1"]) as watcher:
            assert watcher.finish() == 0, watcher.stderr
    else:
        with (
            Program([badclose, "--threads", "2", "--bad", "1", "--wait"]) as program,
            Watcher([*args, "-p", str(program.pid)]) as watcher,
        ):
            watcher.header()
            program.go()
            assert watcher.finish() == 0, watcher.stderr
    assert "ptrace" in watcher.stderr and "last 5 system calls" in watcher.stderr
    (document,) = watcher.documents()
    calls = document["syscalls"]
    assert [call["name"] for call in calls][-3:] == ["dup2", "close", "close"]  # type: ignore[index]
    assert calls[-1]["arguments"][0] == 900 and calls[-1]["errno_name"] == "EBADF"  # type: ignore[index]
    assert calls[-2]["arguments"][0] == 900 and calls[-2]["return"] == 0  # type: ignore[index]


def test_launched_program_that_never_fails_keeps_its_exit_status(badclose: Path) -> None:
    with Watcher(["close fails EBADF", "--", "sh", "-c", f"{badclose} --bad 0; exit 7"]) as w:
        assert w.finish() == 7
    assert "ended after 0 of 1" in w.stderr


def test_launch_of_a_missing_program() -> None:
    with Watcher(["close fails EBADF", "--", "/nonexistent/program"]) as watcher:
        assert watcher.finish() == 11
    assert "/nonexistent/program" in watcher.stderr
    assert "Traceback" not in watcher.stderr


# -- attach mode: eBPF ---------------------------------------------------------------------


def test_ebpf_stops_a_running_process_at_the_failing_close(badclose: Path, tmp_path: Path) -> None:
    before = {i for i, _name in our_programs()}
    core = tmp_path / "ebpf.core"
    with (
        Program([badclose, "--threads", "4", "--bad", "1", "--wait"]) as program,
        Watcher(
            ["close fails EBADF", "-p", str(program.pid), "--json", "--then", f"stack,gcore {core}"]
        ) as watcher,
    ):
        header = watcher.header()
        assert "eBPF" in header
        assert our_programs()
        program.go()
        assert watcher.finish() == 0, watcher.stderr
        status, output = program.finish()
    assert status == 0 and "done 1" in output
    (document,) = watcher.documents()
    assert document["backend"] == "ebpf"
    event = document["event"]
    ((_count, tid, errno),) = after_lines(output)
    assert event["tid"] == tid and errno == 9  # type: ignore[index]
    assert event["arguments"] == [900] and event["errno_name"] == "EBADF"  # type: ignore[index]
    assert frames_of(document, tid)[:3] == ["close", "release_handle", "cleanup_twice"]
    # Every thread was stopped when the stacks were copied, and the thread that hit had
    # run nothing after the call when the core was taken.
    assert {t["state"] for t in document["threads"]} <= {"T", "t"}  # type: ignore[attr-defined]
    assert "$1 = 0" in gdb_print(badclose, core, "print after_bad")
    wait_no_programs(before)


@pytest.mark.parametrize("final", ["stop", "kill"])
def test_stop_and_kill_end_the_watch(badclose: Path, final: str) -> None:
    with (
        Program([badclose, "--threads", "2", "--bad", "1", "--wait"]) as program,
        Watcher(["close fails EBADF", "-p", str(program.pid), "--then", final]) as watcher,
    ):
        watcher.header()
        program.go()
        assert watcher.finish() == 0, watcher.stderr
        if final == "stop":
            assert f"resume with 'kill -CONT {program.pid}'" in watcher.stdout
            assert all_stopped(program.pid)  # and redhand is gone: nobody traces it
            assert all(tracer == 0 for tracer in tracers(program.pid))
            os.kill(program.pid, signal.SIGCONT)
            status, output = program.finish()
            assert status == 0 and "done 1" in output
        else:
            status, _output = program.finish()
            assert status == -signal.SIGKILL


def test_ebpf_argument_condition_and_skip(badclose: Path, tmp_path: Path) -> None:
    """`if arg0 == 901` picks worker-1's failing close; --skip in the kernel passes the first."""
    with (
        Program([badclose, "--threads", "3", "--bad", "2", "--loops", "3", "--wait"]) as program,
        Watcher(
            [
                "close fails EBADF if arg0 == 901",
                "-p",
                str(program.pid),
                "--skip",
                "1",
                "--json",
                "--then",
                "exec true",
            ]
        ) as watcher,
    ):
        watcher.header()
        program.go()
        assert watcher.finish() == 0, watcher.stderr
        _status, output = program.finish()
    (document,) = watcher.documents()
    tid_of_901 = {tid for _c, tid, _e in after_lines(output)}
    assert document["event"]["arguments"] == [901]  # type: ignore[index]
    assert document["event"]["tid"] in tid_of_901  # type: ignore[index]
    assert "threads" not in document  # no stack asked for


def test_comm_catches_a_process_started_after_the_watch(badclose: Path, tmp_path: Path) -> None:
    named = tmp_path / "bclose-later"
    shutil.copy(badclose, named)
    with Watcher(["close fails EBADF", "--comm", "bclose-later", "--json"]) as watcher:
        watcher.header()
        with Program([named, "--bad", "1", "--threads", "2"]) as program:
            assert watcher.finish() == 0, watcher.stderr
            status, _output = program.finish()
    assert status == 0
    (document,) = watcher.documents()
    assert document["pid"] == program.pid


def test_timeout_gives_up_and_leaves_the_process_running(badclose: Path) -> None:
    before = {i for i, _name in our_programs()}
    with (
        Program([badclose, "--bad", "1", "--wait"]) as program,
        Watcher(["close fails EBADF", "-p", str(program.pid), "--timeout", "1s"]) as watcher,
    ):
        assert watcher.finish() == 124
        assert "no hit" in watcher.stderr
        assert not all_stopped(program.pid)
        program.go()
        status, _ = program.finish()
    assert status == 0
    wait_no_programs(before)


def test_process_that_exits_during_the_watch(badclose: Path) -> None:
    with (
        Program([badclose, "--bad", "0", "--wait"]) as program,
        Watcher(["close fails EBADF", "-p", str(program.pid)]) as watcher,
    ):
        watcher.header()
        program.go()
        program.finish()
        assert watcher.finish() == 8
    assert "exited after 0 of 1" in watcher.stderr


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_waiting_detaches_everything(badclose: Path, signo: int) -> None:
    before = {i for i, _name in our_programs()}
    with (
        Program([badclose, "--bad", "1", "--wait"]) as program,
        Watcher(["close fails EBADF", "-p", str(program.pid)]) as watcher,
    ):
        watcher.header()
        os.kill(watcher.pid, signo)
        assert watcher.finish() == 128 + signo
        wait_no_programs(before)
        program.go()  # the double close now goes unwatched
        status, output = program.finish()
    assert status == 0 and "done 1" in output


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGKILL])
def test_signal_while_the_target_is_stopped_resumes_it(
    badclose: Path, signo: int, tmp_path: Path
) -> None:
    before = {i for i, _name in our_programs()}
    action = tmp_path / "action.pid"  # the exec action says its pid, to be ended by the test
    command = f"exec sh -c 'echo $$ > {action}; exec sleep 60'"
    with (
        Program([badclose, "--bad", "1", "--wait"]) as program,
        Watcher(
            ["close fails EBADF", "-p", str(program.pid), "--then", f"stack,{command}"]
        ) as watcher,
    ):
        watcher.header()
        program.go()
        wait_until(lambda: all_stopped(program.pid), "the target to be stopped", TIMEOUT)
        wait_until(
            lambda: action.exists() and action.read_text().strip() != "", "the action", TIMEOUT
        )
        os.kill(watcher.pid, signo)
        if signo == signal.SIGKILL:
            # Nobody is left to end the action (it keeps redhand's output open): the test does.
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(action.read_text()), signal.SIGKILL)
        code = watcher.finish()
        assert code == (128 + signo if signo != signal.SIGKILL else -signal.SIGKILL)
        status, output = program.finish()  # it runs on to its end
    assert status == 0 and "done 1" in output
    wait_no_programs(before)


def test_launched_program_is_killed_with_redhand_never_left_untraced(badclose: Path) -> None:
    """SIGKILL of redhand: the launched program dies too; it never sees ENOSYS."""
    with Watcher(
        [
            "close fails EBADF",
            "--then",
            "exec sleep 60",
            "--",
            str(badclose),
            "--bad",
            "1",
            "--good",
            "200000",
        ]
    ) as watcher:

        def launched() -> int | None:
            for child in (
                Path(f"/proc/{watcher.pid}/task/{watcher.pid}/children").read_text().split()
            ):
                if Path(f"/proc/{child}/exe").resolve() == badclose.resolve():
                    return int(child)
            return None

        wait_until(
            lambda: launched() is not None and all_stopped(launched() or 0), "the hit", TIMEOUT
        )
        child = launched()
        assert child is not None
        os.kill(watcher.pid, signal.SIGKILL)
        watcher.finish()
        wait_until(
            lambda: not states(child) or states(child).get(child) == "Z",
            "the program's end",
            TIMEOUT,
        )
    assert ENOSYS_TEXT not in watcher.stdout


# -- signals -------------------------------------------------------------------------------

USR1_PROGRAM = r"""
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t got, from;
__attribute__((noinline)) static void on_usr1(int sig, siginfo_t *info, void *context)
{
	got++;
	from = info->si_pid;
}
int main(void)
{
	struct sigaction action;
	memset(&action, 0, sizeof action);
	action.sa_sigaction = on_usr1;
	action.sa_flags = SA_SIGINFO;
	sigaction(SIGUSR1, &action, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (!got)
		pause();
	printf("got %d from %d\n", (int)got, (int)from);
	return 0;
}
"""


def test_signal_event_stops_before_the_handler_with_the_senders_siginfo(tmp_path: Path) -> None:
    exe = compile_c(USR1_PROGRAM, tmp_path, ["-g"])
    with (
        Program([exe]) as program,
        Watcher(["signal SIGUSR1", "-p", str(program.pid), "--json"]) as watcher,
    ):
        watcher.header()
        os.kill(program.pid, signal.SIGUSR1)
        assert watcher.finish() == 0, watcher.stderr
        status, output = program.finish()
    (document,) = watcher.documents()
    event = document["event"]
    assert event["signal_name"] == "SIGUSR1"  # type: ignore[index]
    assert event["siginfo"]["sender_pid"] == os.getpid()  # type: ignore[index]
    assert frames_of(document, program.pid)[0] == "pause"
    assert "crash" not in document  # handled: no crash report (see the next test)
    # The handler ran once, after the capture, and saw the real sender.
    assert status == 0 and f"got 1 from {os.getpid()}" in output


def test_a_fatal_signal_gets_the_crash_report(tmp_path: Path) -> None:
    """``signal SIGSEGV``: the program dies of it, so the hit is reported as redhand core
    reports a crash (explained, with the program and the host)."""
    null_write = r"""
    #include <stdio.h>
    __attribute__((noinline)) static void set(volatile int *p) { *p = 1; }
    int main(void) { puts("start"); set((volatile int *)0); return 0; }
    """
    exe = compile_c(null_write, tmp_path, ["-O1", "-g"])
    with Watcher(["signal SIGSEGV", "--json", "--", str(exe)]) as watcher:
        assert watcher.finish() == 128 + signal.SIGSEGV, watcher.stderr
    (document,) = watcher.documents()
    assert document["kind"] == "watch"
    assert document["crash"]["kind"] == "null-dereference"  # type: ignore[index]
    assert document["program"]["static"] is False  # type: ignore[index]
    assert document["host"]["kernel"] == os.uname().release  # type: ignore[index]
    with Watcher(["signal SIGSEGV", "--", str(exe)]) as watcher:
        watcher.finish()
    assert "program: dynamic executable" in watcher.stdout
    assert "null dereference" in watcher.stdout


# -- bad input ---------------------------------------------------------------------------


def run_watch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redhand", "watch", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["clos fails EBADF", "-p", "1"], 2, ["'clos'", "did you mean 'close'"]),
        (["close fails EBADX", "-p", "1"], 2, ["'EBADX'", "column 13"]),
        (["close fials EBADF", "-p", "1"], 2, ["'fials'", "did you mean 'fails'"]),
        (["close fails EBADF", "-p", "999999999"], 3, ["999999999"]),
        (["close fails EBADF", "-p", "2"], 6, ["kernel thread"]),
        (["close fails EBADF"], 2, ["-p PID, --comm NAME, or -- CMD"]),
        (["close fails EBADF", "-p", "1", "--then", "dance"], 2, ["unknown action 'dance'"]),
        (["close fails EBADF", "-p", "1", "--then", "abort,stack"], 2, ["last"]),
        (["close fails EBADF", "--then", "stop", "--", "true"], 2, ["ENOSYS"]),
        (["close fails EBADF", "-p", "1", "--timeout", "soon"], 2, ["not a duration"]),
        (["signal SIGFOO", "-p", "1"], 2, ["'SIGFOO'"]),
        (["close fails", "-p", "1", "--syscalls", "5", "--backend", "ebpf"], 2, ["ptrace"]),
        (["close fails", "--comm", "x", "--syscalls", "5"], 2, ["every system call"]),
    ],
)
def test_bad_input_gets_one_clear_line(args: list[str], code: int, words: list[str]) -> None:
    result = run_watch(*args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr


def test_without_permission_for_ebpf_the_ptrace_fallback_is_used_and_named(
    badclose: Path,
) -> None:
    """An unprivileged user cannot load BPF programs: ptrace at every call takes over."""
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    with (
        world_readable_copy(badclose) as exe,
        Program(
            [*nobody, exe, "--bad", "1", "--threads", "2", "--good", "100", "--wait"]
        ) as program,
        Watcher(
            ["close fails EBADF", "-p", str(program.pid), "--json"],
            preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)),
            cwd=Path("/"),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        ) as watcher,
    ):
        header = watcher.header()
        assert "eBPF cannot be used" in header and "every system call" in header
        program.go()
        assert watcher.finish() == 0, watcher.stderr
        status, output = program.finish()
    assert status == 0 and "done 1" in output
    (document,) = watcher.documents()
    assert document["backend"] == "ptrace-syscall"
    assert document["event"]["arguments"] == [900]  # type: ignore[index]


# -- the Python API ------------------------------------------------------------------------


def test_python_api_yields_the_same_events(badclose: Path) -> None:
    with Program([badclose, "--bad", "1", "--threads", "2", "--wait"]) as program:
        watch = redhand.watch("close fails EBADF", pid=program.pid)
        watch.on_start = lambda _w: program.go()
        caught = list(watch)
        status, _output = program.finish()
    assert status == 0
    (hit,) = caught
    assert hit.hit.call is not None and hit.hit.call.errno_name == "EBADF"
    assert str(hit.hit).startswith("close(900) = -1 EBADF (Bad file descriptor) in thread")
    assert hit.target is not None and hit.target.threads[0].tid == hit.hit.tid
    names = [frame.function for frame in hit.target.threads[0].backtrace()]
    assert names[:2] == ["close", "release_handle"]


# -- job control and tracefs ----------------------------------------------------------------


def test_parent_sees_the_stop_and_the_continue(badclose: Path) -> None:
    """The eBPF backend's SIGSTOP is job control: a parent waiting with WUNTRACED sees it."""
    with (
        Program([badclose, "--bad", "1", "--threads", "2", "--wait"]) as program,
        Watcher(["close fails EBADF", "-p", str(program.pid)]) as watcher,
    ):
        watcher.header()
        program.go()
        _pid, stopped = os.waitpid(program.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(stopped) and os.WSTOPSIG(stopped) == signal.SIGSTOP
        _pid, continued = os.waitpid(program.pid, os.WCONTINUED)
        assert os.WIFCONTINUED(continued)
        assert watcher.finish() == 0, watcher.stderr
        status, output = program.finish()
    assert status == 0 and "done 1" in output


def test_tracefs_is_mounted_when_it_is_not(badclose: Path) -> None:
    """In a mount namespace of its own without tracefs, redhand mounts it and says so."""
    with Program([badclose, "--bad", "1", "--threads", "2", "--wait"]) as program:
        script = (
            "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; "
            f'exec "$0" -m redhand watch "close fails EBADF" -p {program.pid} --timeout 60s'
        )
        result = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert result.stderr is not None
            header = result.stderr.readline()
            note = result.stderr.readline()
            assert "watching" in header and "eBPF" in header, header
            assert "mounted tracefs" in note, note
            program.go()
            out, err = result.communicate(timeout=TIMEOUT)
        finally:
            if result.poll() is None:
                result.kill()
                result.wait()
        assert result.returncode == 0, err
        assert "close(900) = -1 EBADF" in out
        program.finish()


VFORK_WAIT = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *stuck(void *arg) {
    (void)arg;
    if (vfork() == 0) {  /* the thread waits in the kernel (state D) until this child ends */
        pause();
        _exit(0);
    }
    return NULL;
}

int main(void) {
    pthread_t thread;
    char line[16];
    pthread_create(&thread, NULL, stuck, NULL);
    if (fgets(line, sizeof line, stdin) == NULL)  /* the test: that thread is in D now */
        return 2;
    close(999);
    pthread_join(thread, NULL);
    return 0;
}
"""


def test_a_thread_that_cannot_stop_does_not_hold_the_watch(tmp_path: Path) -> None:
    """A thread in an uninterruptible wait (a vfork parent) stops only when it ends: the
    watch holds the process without it after 5 s, says so, shows the other stacks, and
    the program runs on."""
    exe = compile_c(VFORK_WAIT, tmp_path, ["-O1", "-g", "-pthread"])
    watcher = subprocess.Popen(
        [sys.executable, "-m", "redhand", "watch", "close fails", "--json", "--", str(exe)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        program = child = None

        def children(pid: int) -> list[int]:
            found = []
            for tid in states(pid):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
                    found += [int(word) for word in text.split()]
            return found

        def in_vfork() -> bool:
            nonlocal program, child
            for pid in children(watcher.pid):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/exe") == str(exe) and children(pid):
                        program, child = pid, children(pid)[0]
                        return "D" in states(program).values()
            return False

        wait_until(in_vfork, "a thread waiting for its vfork child", timeout=TIMEOUT)
        assert watcher.stdin is not None and watcher.stdout is not None
        watcher.stdin.write("go\n")
        watcher.stdin.flush()
        document = json.loads(watcher.stdout.readline())
        assert child is not None
        os.kill(child, signal.SIGKILL)  # the vfork child: the program can end now
        assert watcher.wait(timeout=TIMEOUT) == 0, watcher.stderr.read() if watcher.stderr else ""
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    (warning,) = document["warnings"]
    assert "did not stop (state D" in warning
    by_state = {thread["state"]: thread for thread in document["threads"]}
    assert by_state["D"]["frames"] == []
    assert any(frame["function"] == "main" for frame in by_state["T"]["frames"])
    assert 4e9 < document["timing"]["stopped_ns"] < 30e9  # gave up after 5 s, not at the end
