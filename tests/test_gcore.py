"""redhand gcore: cores of running processes that every reader reads, and a target that
never notices.

The target (tests/programs/gcore_target.c) parks every thread; what its memory
holds is known.  Cores are checked with gdb, eu-stack, lldb and redhand core,
byte for byte against the kernel's own core of the same process, and read
independently of redhand's ELF code (gcore_helpers.Core).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gcore_helpers import (
    Core,
    GcoreTarget,
    build_gcore_target,
    children_of,
    copies_of,
    eu_stack_core,
    gcore_target,
    lldb_core,
    run_redhand,
)
from gdb_oracle import CORE_TIMEOUT, compare_backtrace, is_subsequence
from helpers import (
    compile_c,
    gdb_on_core,
    kernel_writes_cores_here,
    process_tids,
    thread_state,
    tracer_of,
    wait_until,
)

import redhand
from redhand.capture.gcore import Mode

NT_PRSTATUS, NT_PRFPREG, NT_PRPSINFO, NT_AUXV = 1, 2, 3, 6
NT_SIGINFO, NT_FILE, NT_X86_XSTATE = 0x53494749, 0x46494C45, 0x202


@pytest.fixture(scope="module")
def target_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_gcore_target(tmp_path_factory.mktemp("gcore-build"))


@pytest.fixture
def target(target_binary: Path, tmp_path: Path) -> Iterator[GcoreTarget]:
    with gcore_target(target_binary, tmp_path) as started:
        yield started


def stack_frames(pid: int) -> dict[int, list[tuple[int, str | None]]]:
    """(pc, function) of every physical frame of every thread, from `redhand stack --json`."""
    result = run_redhand("stack", "--json", str(pid))
    assert result.returncode == 0, result.stderr
    return {
        thread["tid"]: [(f["pc"], f["function"]) for f in thread["frames"] if not f["inlined"]]
        for thread in json.loads(result.stdout)["threads"]
    }


def assert_untouched(target: GcoreTarget) -> None:
    """The target runs on as before: no thread stopped or traced, every one back in its
    call, no signal, no copy left under it."""
    for tid in process_tids(target.pid):
        assert thread_state(target.pid, tid) not in ("t", "T"), tid
    assert tracer_of(target.pid) == 0
    target.wait_blocked()
    assert target.state()["sigchld"] == 0
    assert copies_of(target.pid) == []


# -- every reader reads it ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fork", "stop"])
def test_every_reader_reads_the_core(
    target: GcoreTarget, target_binary: Path, tmp_path: Path, mode: str
) -> None:
    before = stack_frames(target.pid)
    core_path = tmp_path / "core"
    result = run_redhand("gcore", str(target.pid), "-o", str(core_path), "--mode", mode)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{core_path}: ") and f"{mode} mode, process paused" in line, line
    assert "MADV_DONTDUMP" in line  # what was left out is said
    assert_untouched(target)
    tids = sorted(before)
    core = Core.read(core_path)
    # The kernel's notes, in the kernel's order: the main thread's first.
    types = core.note_types()
    assert types[:7] == [
        ("CORE", NT_PRSTATUS), ("CORE", NT_PRPSINFO), ("CORE", NT_SIGINFO), ("CORE", NT_AUXV),
        ("CORE", NT_FILE), ("CORE", NT_PRFPREG), ("LINUX", NT_X86_XSTATE),
    ]  # fmt: skip
    assert types.count(("CORE", NT_PRSTATUS)) == len(tids)
    assert types[-1][0] == "REDHAND"
    assert [load.vaddr for load in core.loads] == sorted(load.vaddr for load in core.loads)

    # gdb: every thread, the same frames as redhand stack a moment before.
    gdb = gdb_on_core(target_binary, core_path)
    assert sorted(gdb.threads) == tids
    problems = []
    with redhand.open_core(core_path) as opened:
        assert sorted(thread.tid for thread in opened.threads) == tids
        assert not any(thread.crashed for thread in opened.threads)
        names = {thread.tid: thread.name for thread in opened.threads}
        for thread in opened.threads:
            frames = list(thread.backtrace())
            comparison = compare_backtrace(gdb.threads[thread.tid], frames, "c")
            if comparison.problems:
                problems.append(f"thread {thread.tid}:\n{comparison.report()}")
            physical = [(f.pc, f.function) for f in frames if not f.inlined]
            assert physical == before[thread.tid], thread.tid
    assert not problems, "\n\n".join(problems)
    comms = {tid: Path(f"/proc/{target.pid}/task/{tid}/comm").read_text().strip() for tid in tids}
    assert names == comms  # from redhand's note
    pcs = {tid: [pc for pc, _name in frames] for tid, frames in before.items()}
    # eu-stack: every thread, the same pcs.  lldb: every thread, the same pcs in the
    # same order, among the call sites of the frames it shows for inlined calls.
    assert eu_stack_core(target_binary, core_path) == pcs
    lldb = lldb_core(target_binary, core_path)
    assert sorted(lldb) == tids
    for tid, expected in pcs.items():
        assert is_subsequence(expected, lldb[tid], lambda a, b: a == b), (tid, lldb[tid])
    # redhand core: the report says how the core was made.
    report = run_redhand("core", str(core_path), "--no-source")
    assert report.returncode == 0, report.stderr
    assert f"written by redhand gcore from the running process ({mode} snapshot" in report.stdout


def test_memory_matches_the_kernels_core(
    target: GcoreTarget, target_binary: Path, tmp_path: Path
) -> None:
    """Every byte the kernel dumps, redhand dumps the same; no more on disk than the kernel."""
    core_path = tmp_path / "core.redhand"
    result = run_redhand("gcore", str(target.pid), "-o", str(core_path))
    assert result.returncode == 0, result.stderr
    regions = target.regions
    ours = Core.read(core_path)
    # The process's own view of its memory, for the regions a fork cannot copy.
    for name, fill in (("dontfork", 0x22), ("wipeonfork", 0x33), ("shared", 0x44)):
        start, size = regions[name]
        assert ours.memory(start, size) == bytes([fill]) * size, name
    start, size = regions["dontdump"]
    load = ours.load_at(start)
    assert load is not None and load.filesz == 0  # described, not dumped
    heap, heap_size = regions["heap"]
    assert ours.is_hole(heap + 3 * 4096)  # never touched
    assert ours.is_hole(heap + heap_size // 2)  # written zeros
    assert not ours.is_hole(heap)
    # The kernel's core of the same process, a moment later (every thread parked).
    if kernel_writes_cores_here():
        kernel_path = kernel_core(target, tmp_path / "kernel")
    else:  # core_pattern sends cores elsewhere: gdb's gcore is the reference
        kernel_path = tmp_path / "core.gdb"
        subprocess.run(
            ["gdb", "-batch", "-nx", "-p", str(target.pid), "-ex", f"gcore {kernel_path}"],
            capture_output=True,
            timeout=CORE_TIMEOUT,
            check=True,
        )
    theirs = Core.read(kernel_path)
    if kernel_writes_cores_here():  # the same mappings, in the same order, the same flags
        assert [(seg.vaddr, seg.memsz, seg.flags) for seg in ours.loads] == [
            (seg.vaddr, seg.memsz, seg.flags) for seg in theirs.loads
        ]
    compared = 0
    for load in theirs.loads:
        if not load.filesz:
            continue
        expected = theirs.memory(load.vaddr, load.filesz)
        assert expected is not None
        got = ours.memory(load.vaddr, load.filesz)
        assert got is not None, f"{load.vaddr:#x} is not in redhand's core"
        if got != expected:
            at = next(i for i in range(len(got)) if got[i] != expected[i])
            pytest.fail(f"memory differs at {load.vaddr + at:#x} (segment {load.vaddr:#x})")
        compared += load.filesz
    assert compared > heap_size
    # Sparse: no bigger on disk than the kernel's core.
    assert os.stat(core_path).st_blocks <= os.stat(kernel_path).st_blocks


def kernel_core(target: GcoreTarget, folder: Path) -> Path:
    """Make the kernel dump ``target`` (SIGABRT, RLIMIT_CORE raised) and return its core."""
    folder.mkdir()
    # The target runs in its own folder (cwd) with the limit of its parent; raise it there.
    limit = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    resource.prlimit(target.pid, resource.RLIMIT_CORE, limit)
    cwd = Path(f"/proc/{target.pid}/cwd").resolve()
    before = set(cwd.iterdir())
    os.kill(target.pid, signal.SIGABRT)
    assert target.process is not None
    target.process.wait(timeout=CORE_TIMEOUT)
    new = [path for path in set(cwd.iterdir()) - before if path.name.startswith("core")]
    assert len(new) == 1, new
    return new[0]


# -- the target never notices ----------------------------------------------------------------


def test_no_signal_no_zombie_and_its_own_children_untouched(
    target_binary: Path, tmp_path: Path
) -> None:
    with gcore_target(target_binary, tmp_path, "--child") as target:
        own = target.state()["own_child"]
        fds = sorted(os.listdir(f"/proc/{target.pid}/fd"))
        for attempt in range(3):
            result = run_redhand(
                "gcore", str(target.pid), "-o", str(tmp_path / f"core{attempt}"), "--json"
            )
            assert result.returncode == 0, result.stderr
            document = json.loads(result.stdout)
            assert document["mode"] == "fork" and document["reap_pause_ns"] > 0
        assert_untouched(target)
        assert children_of(target.pid) == [own]
        assert sorted(os.listdir(f"/proc/{target.pid}/fd")) == fds
        assert target.state()["reaped"] == 0  # its waitpid(-1) never saw a copy
        os.kill(own, signal.SIGKILL)  # its own child still reaches it
        wait_until(lambda: target.state()["reaped"] == own, "the target to reap its child")
        # The handler runs in whichever thread takes the signal, maybe after the waiting
        # thread has reaped the child: wait for it, then say it ran once.
        wait_until(lambda: target.state()["sigchld"] >= 1, "the target's SIGCHLD handler")
        assert target.state()["sigchld"] == 1


def test_seccomp_filter_falls_back_to_stop(target_binary: Path, tmp_path: Path) -> None:
    """A filter that kills on a process-making clone(): auto says why it stops instead."""
    with gcore_target(target_binary, tmp_path, "--seccomp") as target:
        result = run_redhand("gcore", str(target.pid), "-o", str(tmp_path / "core"), "--json")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["mode"] == "stop" and "seccomp" in document["mode_reason"]
        text = run_redhand("gcore", str(target.pid), "-o", str(tmp_path / "core2"))
        assert "stop mode: process" in text.stdout and "seccomp" in text.stdout
        refused = run_redhand("gcore", str(target.pid), "-o", str(tmp_path / "core3"), "--mode",
                              "fork")  # fmt: skip
        assert refused.returncode == 9
        assert refused.stderr.count("\n") == 1 and "--mode stop" in refused.stderr
        assert not (tmp_path / "core3").exists()
        assert_untouched(target)
        with redhand.open_core(tmp_path / "core") as opened:
            assert len(opened.threads) == len(target.tids)


def test_thousand_threads(tmp_path: Path) -> None:
    from helpers import LiveProgram

    binary = compile_c("many_threads.c", tmp_path, ["-O1", "-g", "-pthread"])
    argv = [binary, "1000", tmp_path / "heartbeat"]
    with LiveProgram(argv, running={"heartbeat"}, blocked={"main": 34}) as program:
        core_path = tmp_path / "core"
        result = run_redhand("gcore", str(program.pid), "-o", str(core_path), "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["threads"] == 1002
        assert copies_of(program.pid) == []
        with redhand.open_core(core_path) as opened:
            names = {thread.tid: thread.name for thread in opened.threads}
        assert names == {tid: (name if name != "main" else names[tid])
                         for name, tid in program.tids.items()}  # fmt: skip
        assert len(eu_stack_core(binary, core_path)) == 1002
        gdb = gdb_on_core(binary, core_path)
        assert len(gdb.threads) == 1002


# -- never a partial file --------------------------------------------------------------------


def test_output_is_never_clobbered(target: GcoreTarget, tmp_path: Path) -> None:
    existing = tmp_path / "core"
    existing.write_bytes(b"precious")
    refused = run_redhand("gcore", str(target.pid), "-o", str(existing))
    assert refused.returncode == 13 and "exists" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "--force" in refused.stderr
    assert existing.read_bytes() == b"precious"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    for args in ([], ["--force"]):
        result = run_redhand("gcore", str(target.pid), "-o", str(link), *args)
        assert result.returncode == 13 and "symbolic link" in result.stderr
    assert not (tmp_path / "elsewhere").exists()
    missing = run_redhand("gcore", str(target.pid), "-o", str(tmp_path / "no" / "core"))
    assert missing.returncode == 13
    replaced = run_redhand("gcore", str(target.pid), "-o", str(existing), "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert existing.read_bytes()[:4] == b"\x7fELF"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["core", "link", target.state_file.name]
    )
    assert_untouched(target)


NO_SPACE_SCRIPT = """
set -e
mount -t tmpfs -o size=2m redhand-test "$1"
shift
folder="$1"
shift
set +e
"$@"
echo "exit=$?"
ls -A "$folder"
"""


@pytest.mark.parametrize("compression", [[], ["--zstd"]])
def test_no_space_left(target_binary: Path, tmp_path: Path, compression: list[str]) -> None:
    """A 2 MiB tmpfs (in a mount namespace of its own): refused before the freeze, or
    ENOSPC while writing (zstd has no size to check first); nothing is left."""
    folder = tmp_path / "small"
    folder.mkdir()
    with gcore_target(target_binary, tmp_path) as target:
        command = [sys.executable, "-m", "redhand", "gcore", str(target.pid), "-o",
                   str(folder / "core"), *compression]  # fmt: skip
        result = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", NO_SPACE_SCRIPT, "sh",
             str(folder), str(folder), *command],
            capture_output=True, text=True, timeout=CORE_TIMEOUT,
        )  # fmt: skip
        assert "exit=13" in result.stdout, (result.stdout, result.stderr)
        assert result.stdout.strip().endswith("exit=13"), "files were left behind"
        assert result.stderr.count("\n") == 1, result.stderr
        assert ("free" if not compression else "No space left") in result.stderr
        assert_untouched(target)


# -- interrupted -------------------------------------------------------------------------------


def start_gcore(pid: int, core: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "redhand", "gcore", str(pid), "-o", str(core), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def wait_for_copy(target: GcoreTarget, tool: subprocess.Popen[str]) -> int:
    """The copy of the process, once it exists (the dump has begun)."""
    found: list[int] = []

    def copy_exists() -> bool:
        assert tool.poll() is None, tool.communicate()
        found[:] = [pid for pid, state in copies_of(target.pid) if state == "t"]
        return bool(found)

    wait_until(copy_exists, "the copy of the process")
    return found[0]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_interrupted_during_the_dump(target_binary: Path, tmp_path: Path, how: str) -> None:
    core = tmp_path / "core"
    with gcore_target(target_binary, tmp_path, "--heap-mb=512") as target:
        tool = start_gcore(target.pid, core, "--zstd")
        try:
            copy = wait_for_copy(target, tool)
            assert os.listdir(f"/proc/{copy}/fd") == []  # it let go of the process's files
            tool.send_signal(getattr(signal, how))
            _out, err = tool.communicate(timeout=CORE_TIMEOUT)
        finally:
            if tool.poll() is None:
                tool.kill()
                tool.wait()
        assert not core.exists()
        assert [path.name for path in tmp_path.iterdir() if "core" in path.name] == []
        if how == "SIGINT":
            assert tool.returncode == 130 and err.strip() == "redhand: interrupted"
            assert copies_of(target.pid) == []
        else:
            # Killed: the copy died with it (EXITKILL) and waits as a zombie, reaped
            # by the next redhand gcore.
            wait_until(lambda: copies_of(target.pid) == [(copy, "Z")], "the copy to die")
            result = run_redhand("gcore", str(target.pid), "-o", str(core))
            assert result.returncode == 0, result.stderr
        assert_untouched(target)


FREEZE_DRIVER = r"""
import importlib, sys, time
gcore = importlib.import_module("redhand.capture.gcore")  # the module, not the function
keep = gcore._Job._keep_threads
def slow(self, capture):
    keep(self, capture)
    print("frozen", flush=True)
    time.sleep(600)
gcore._Job._keep_threads = slow
gcore.gcore(int(sys.argv[1]), sys.argv[2], mode=sys.argv[3])
"""


@pytest.mark.parametrize("mode", ["fork", "stop"])
def test_killed_while_frozen(target_binary: Path, tmp_path: Path, mode: str) -> None:
    """SIGKILL while every thread is stopped: the kernel lets them all go."""
    core = tmp_path / "core"
    with gcore_target(target_binary, tmp_path) as target:
        driver = subprocess.Popen(
            [sys.executable, "-c", FREEZE_DRIVER, str(target.pid), str(core), mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert driver.stdout is not None and driver.stdout.readline() == "frozen\n"
            assert thread_state(target.pid, target.pid) == "t"
            driver.kill()
            driver.wait(timeout=CORE_TIMEOUT)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        assert not core.exists()
        assert_untouched(target)


EXIT_DRIVER = r"""
import importlib, os, signal, sys
import redhand
gcore = importlib.import_module("redhand.capture.gcore")  # the module, not the function
write = gcore._Job._write
def write_after_the_end(self, source, smaps, frozen):
    os.kill(self.pid, signal.SIGKILL)  # the process ends as the dump begins
    return write(self, source, smaps, frozen=frozen)
gcore._Job._write = write_after_the_end
try:
    result = gcore.gcore(int(sys.argv[1]), sys.argv[2], mode=sys.argv[3])
except redhand.RedhandError as error:
    print(type(error).__name__, error.exit_code)
else:
    print("written", len(result.warnings))
"""


@pytest.mark.parametrize("mode", ["fork", "stop"])
def test_process_ends_during_the_dump(target_binary: Path, tmp_path: Path, mode: str) -> None:
    """fork: the copy holds the moment, the core is whole; stop: nothing is left."""
    core = tmp_path / "core"
    with gcore_target(target_binary, tmp_path) as target:
        result = subprocess.run(
            [sys.executable, "-c", EXIT_DRIVER, str(target.pid), str(core), mode],
            capture_output=True, text=True, timeout=CORE_TIMEOUT,
        )  # fmt: skip
        assert target.process is not None
        target.process.wait(timeout=CORE_TIMEOUT)
    if mode == "fork":
        assert result.stdout.startswith("written"), result.stderr
        with redhand.open_core(core) as opened:
            assert len(opened.threads) == len(target.tids)
    else:
        assert result.stdout.strip() == "ProcessExited 8", result.stderr
        assert not core.exists()
    assert [path.name for path in tmp_path.iterdir() if "core" in path.name] == (
        ["core"] if mode == "fork" else []
    )


# -- the Python API ------------------------------------------------------------------------


def test_python_api(target: GcoreTarget, tmp_path: Path) -> None:
    done: list[tuple[int, int | None]] = []
    result = redhand.gcore(
        target.pid, str(tmp_path / "core"), mode="stop",
        progress=lambda now, total: done.append((now, total)),
    )  # fmt: skip
    assert isinstance(result, redhand.GcoreResult)
    assert result.mode == Mode.STOP.value and result.mode_reason is None
    assert result.threads == len(target.tids) and result.pause_ns > 0
    assert result.disk_bytes < result.apparent_bytes
    assert done and done[-1][0] == done[-1][1]
    document = result.to_json()
    assert document["redhand"] == 1 and document["kind"] == "gcore"
    assert [region["reason"] for region in document["left_out"]] == ["MADV_DONTDUMP",
        "a shared file mapping (coredump_filter bit 3 is off)"]  # fmt: skip
    with pytest.raises(redhand.OutputError):
        redhand.gcore(target.pid, str(tmp_path / "core"))
    assert_untouched(target)


def test_zstd_core_reads_as_the_plain_one(target: GcoreTarget, tmp_path: Path) -> None:
    plain, packed = tmp_path / "core", tmp_path / "core.zst"
    for path, args in ((plain, []), (packed, ["--zstd"])):
        result = run_redhand("gcore", str(target.pid), "-o", str(path), *args)
        assert result.returncode == 0, result.stderr
    assert packed.stat().st_size < plain.stat().st_blocks * 512
    import zstandard

    with packed.open("rb") as source:
        unpacked = zstandard.ZstdDecompressor().stream_reader(source).read()
    plain_core = Core.read(plain)
    (tmp_path / "unpacked").write_bytes(unpacked)
    unpacked_core = Core.read(tmp_path / "unpacked")
    assert [load for load in plain_core.loads] == [load for load in unpacked_core.loads]
    for load in plain_core.loads:
        assert plain_core.memory(load.vaddr, load.filesz) == unpacked_core.memory(
            load.vaddr, load.filesz
        )
    reports = []
    for path in (plain, packed):
        result = run_redhand("core", str(path), "--no-source", "--json")
        assert result.returncode == 0, result.stderr
        reports.append(json.loads(result.stdout))
    assert reports[1]["compression"] == "zstd"
    assert reports[0]["threads"] == reports[1]["threads"]


# -- when a fork is unsafe ------------------------------------------------------------------


def _cgroup_root(controller: str) -> Path | None:
    """Where a child cgroup with ``controller`` can be made: its v1 hierarchy, or the v2
    root when the controller is enabled for children there."""
    v1 = Path("/sys/fs/cgroup") / controller
    if (v1 / "cgroup.procs").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    try:
        if controller in (v2 / "cgroup.subtree_control").read_text().split():
            return v2
    except OSError:
        pass
    return None


@pytest.mark.parametrize(
    ("controller", "limit_file", "reason"),
    [("pids", "pids.max", "pids limit"), ("memory", None, "copy-on-write memory")],
)
def test_unsafe_fork_falls_back_to_stop(
    target_binary: Path, tmp_path: Path, controller: str, limit_file: str | None, reason: str
) -> None:
    """A process whose cgroup could not hold a copy (no pids left, or too little memory for
    what it may dirty during the dump): stop mode, and the reason said."""
    root = _cgroup_root(controller)
    if root is None:
        pytest.skip(f"no {controller} cgroup controller to make a child group with")
    group = root / f"redhand-test-{os.getpid()}-{controller}"
    group.mkdir()
    try:
        with gcore_target(target_binary, tmp_path) as target:
            threads = len(process_tids(target.pid))
            if controller == "pids":
                (group / "pids.max").write_text(str(threads))
            else:  # a limit well under the 16 MiB the process has written
                name = "memory.max" if root == Path("/sys/fs/cgroup") else "memory.limit_in_bytes"
                (group / name).write_text(str(8 << 20))
            (group / "cgroup.procs").write_text(str(target.pid))
            result = run_redhand("gcore", str(target.pid), "-o", str(tmp_path / "core"), "--json")
            assert result.returncode == 0, result.stderr
            document = json.loads(result.stdout)
            assert document["mode"] == "stop" and reason in document["mode_reason"], document
            assert_untouched(target)
    finally:
        wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), "an empty cgroup")
        group.rmdir()


def test_thread_shown_first(target: GcoreTarget, tmp_path: Path) -> None:
    reader = target.tids["reader"]
    core_path = tmp_path / "core"
    result = run_redhand("gcore", str(target.pid), "-o", str(core_path), "-t", str(reader))
    assert result.returncode == 0, result.stderr
    first = Core.read(core_path).notes[0]
    assert first[1] == NT_PRSTATUS and int.from_bytes(first[2][32:36], "little") == reader
    with redhand.open_core(core_path) as opened:
        assert opened.threads[0].tid == reader and not opened.threads[0].crashed
    unknown = run_redhand("gcore", str(target.pid), "-o", str(tmp_path / "x"), "-t", "1")
    assert unknown.returncode == 3 and "has no thread 1" in unknown.stderr
