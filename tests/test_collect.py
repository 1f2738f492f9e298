"""redhand collect and redhand crashes, driven as the kernel drives a core handler: real
kernel cores on stdin, the core_pattern arguments, a real pidfd on fd 3.  The machine's
core_pattern is never changed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import compile_c, crash_into_core, unlimited_core
from watch_helpers import TIMEOUT, world_readable_copy

REDHAND = [sys.executable, "-m", "redhand"]


@pytest.fixture(scope="module")
def a_core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("collect")
    exe = compile_c("bugs.c", folder, ["-O1", "-g", "-pthread"])
    return crash_into_core([str(exe), "null", "main"], folder / "run").core


def collect(
    store: Path,
    core: Path | bytes,
    *,
    pid: int = 999999,
    comm: str = "bugs",
    core_limit: str = "18446744073709551615",
    dump_mode: str = "1",
    pidfd: int | None = None,
    analyze: bool = False,
) -> str:
    """One run of the collector, as the kernel starts it: the crash's id."""
    data = core.read_bytes() if isinstance(core, Path) else core
    args = [
        str(pid),
        str(pid),
        str(pid),
        "11",
        str(int(time.time())),
        core_limit,
        dump_mode,
        "0",
        "0",
        "3" if pidfd is not None else "",
        "host",
        comm,
    ]
    command = [*REDHAND, "collect", "--store", str(store)]
    if not analyze:
        command.append("--no-analyze")

    def fd3() -> None:
        if pidfd is not None:
            os.dup2(pidfd, 3)

    result = subprocess.run(
        [*command, *args],
        input=data,
        capture_output=True,
        timeout=TIMEOUT,
        preexec_fn=fd3,
        close_fds=pidfd is None,  # fd 3 made by fd3() must stay open
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def rows(store: Path) -> list[dict[str, object]]:
    connection = sqlite3.connect(store / "crashes.db")
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute("SELECT * FROM crashes ORDER BY time")]
    finally:
        connection.close()


def crashes(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REDHAND, "crashes", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_a_kernel_core_is_kept_compressed_and_root_only(a_core: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    crash_id = collect(store, a_core)
    (row,) = rows(store)
    assert row["id"] == crash_id and row["status"] == "collected"
    assert row["core_bytes"] == a_core.stat().st_size
    core = store / str(row["core"])
    info = core.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert core.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd
    dumped = tmp_path / "dumped"
    result = crashes(store, "dump", crash_id[:8], "-o", str(dumped))
    assert result.returncode == 0, result.stderr
    assert dumped.read_bytes() == a_core.read_bytes()


def test_the_identity_comes_from_the_pidfd_and_a_reused_pid_is_not_believed(
    a_core: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    with (
        subprocess.Popen(["sleep", "60"]) as crashed,
        subprocess.Popen(["cat"], stdin=subprocess.PIPE) as other,
    ):
        pidfd = os.pidfd_open(crashed.pid)
        try:
            collect(store, a_core, pid=crashed.pid, comm="sleep", pidfd=pidfd)
            # The kernel's pidfd names the crashed process; %P names another one (the pid
            # was reused): nothing is read from that other process.
            collect(store, a_core, pid=other.pid, comm="sleep", pidfd=pidfd)
        finally:
            os.close(pidfd)
            crashed.kill()
            other.kill()
    first, second = rows(store)
    assert first["identity"] == "pidfd" and str(first["exe"]).endswith("/sleep")
    assert second["identity"] == "none" and second["exe"] is None


@pytest.mark.parametrize("limit", ["0", "65536"])
def test_the_core_size_limit_is_honoured_and_the_record_kept(
    a_core: Path, tmp_path: Path, limit: str
) -> None:
    store = tmp_path / "store"
    collect(store, a_core, core_limit=limit)
    (row,) = rows(store)
    assert row["core_bytes"] == a_core.stat().st_size
    if limit == "0":
        assert row["core"] is None and "RLIMIT_CORE" in str(row["note"])
    else:
        assert row["truncated"] == 1 and "cut at 65536" in str(row["note"])


@pytest.mark.parametrize("attack", ["store-link", "spool-link", "loose-mode"])
def test_a_store_that_is_not_safe_is_refused(a_core: Path, tmp_path: Path, attack: str) -> None:
    store = tmp_path / "store"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    if attack == "store-link":
        store.symlink_to(elsewhere)
    else:
        store.mkdir(mode=0o700)
        if attack == "spool-link":
            (store / "spool").symlink_to(elsewhere)
        else:
            store.chmod(0o755)
    result = subprocess.run(
        [
            *REDHAND,
            "collect",
            "--store",
            str(store),
            "--no-analyze",
            "1",
            "1",
            "1",
            "11",
            "0",
            "1000000",
            "1",
            "0",
            "0",
            "",
            "host",
            "bugs",
        ],
        input=a_core.read_bytes(),
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert b"redhand collect:" in result.stderr
    assert not list(elsewhere.iterdir())  # nothing written through the link


def test_garbage_is_kept_and_its_analysis_fails_three_times_then_stops(tmp_path: Path) -> None:
    store = tmp_path / "store"
    collect(store, b"this is not a core file" * 1000)
    for _ in range(4):
        assert crashes(store, "analyze").returncode == 0
    (row,) = rows(store)
    assert row["status"] == "failed" and row["attempts"] == 3
    assert "analysis:" in str(row["note"]) and row["core"] is not None


def test_fifty_crashes_at_once_are_all_stored(a_core: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    data = a_core.read_bytes()
    processes = [
        subprocess.Popen(
            [
                *REDHAND,
                "collect",
                "--store",
                str(store),
                "--no-analyze",
                str(100000 + n),
                str(100000 + n),
                "1",
                "11",
                str(int(time.time())),
                "18446744073709551615",
                "1",
                "0",
                "0",
                "",
                "host",
                f"program{n}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(50)
    ]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(data)
        process.stdin.close()
    for process in processes:
        assert process.wait(timeout=TIMEOUT) == 0, process.stderr.read() if process.stderr else ""
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    stored = rows(store)
    assert len(stored) == 50 and len({row["id"] for row in stored}) == 50
    assert all(row["core"] is not None and row["core_bytes"] == len(data) for row in stored)
    assert len(list((store / "spool").iterdir())) == 50
    connection = sqlite3.connect(store / "crashes.db")
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


def test_a_program_that_crashes_again_and_again_keeps_records_not_cores(
    a_core: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    for _ in range(12):
        collect(store, a_core, comm="crashy")
    stored = rows(store)
    assert len(stored) == 12
    kept = [row for row in stored if row["core"] is not None]
    assert len(kept) == 10
    assert all("last minute" in str(row["note"]) for row in stored if row["core"] is None)


BUGS = ("null", "strlen", "assert", "recurse")
BUILDS = {"O0": ["-O0", "-g"], "O2": ["-O2", "-g"], "other": ["-O2", "-g", "-DVARIANT=2"]}


def test_one_bug_one_bucket_whatever_the_build_and_the_entry(tmp_path: Path) -> None:
    """Four bugs, each from main and from a thread, in three builds: four buckets of six."""
    store = tmp_path / "store"
    with contextlib.ExitStack() as copies:
        for build, flags in BUILDS.items():
            # The analyzer runs as nobody: the programs must be readable to it, as
            # installed programs are (the test's own folders are root's alone).
            built = compile_c("bugs.c", tmp_path / build, [*flags, "-pthread"])
            named = tmp_path / build / "bugs"  # every build installed as the same program
            shutil.copyfile(built, named)
            exe = copies.enter_context(world_readable_copy(named))
            for bug in BUGS:
                for where in ("main", "thread"):
                    folder = tmp_path / build / bug / where
                    crash = crash_into_core([str(exe), bug, where], folder)
                    collect(store, crash.core, comm=f"bugs-{build}-{bug}-{where}")
                    crash.core.unlink()
        assert crashes(store, "analyze").returncode == 0
    listed = json.loads(crashes(store, "--json").stdout)
    buckets = listed["buckets"]
    assert listed["not_analyzed"] == 0
    assert sorted(bucket["count"] for bucket in buckets) == [6, 6, 6, 6], [
        (b["count"], b["signature"]) for b in buckets
    ]
    signatures = {bucket["signature"] for bucket in buckets}
    assert any("store_value | process_null" in s for s in signatures)
    assert any("assert(value > 0) | check_value | process_assert" in s for s in signatures)
    assert any("recursion(descend)" in s for s in signatures)
    # Each bucket keeps the cores of its first two and last three crashes.
    assert all(bucket["cores"] == 5 for bucket in buckets)
    assert Counter(row["status"] for row in rows(store)) == {"analyzed": 24}
    shown = crashes(store, "show", buckets[0]["bucket"][:10])
    assert shown.returncode == 0 and "signature:" in shown.stdout


def wait_for_status(store: Path, status: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if rows(store) and all(row["status"] == status for row in rows(store)):
            return
        time.sleep(0.05)
    raise AssertionError(f"not {status}: {rows(store)}")


def test_the_collector_starts_the_analysis_detached(tmp_path: Path) -> None:
    built = compile_c("bugs.c", tmp_path, ["-O1", "-g", "-pthread"])
    with world_readable_copy(built) as exe:
        core = crash_into_core([str(exe), "assert", "main"], tmp_path / "run").core
        started = time.monotonic()
        collect(store := tmp_path / "store", core, analyze=True)
        collected = time.monotonic() - started
        wait_for_status(store, "analyzed")
    (row,) = rows(store)
    assert "assert(value > 0) | check_value | process_assert" in str(row["signature"])
    assert collected < TIMEOUT  # the collector did not wait for the analysis


def test_an_analyzer_killed_halfway_leaves_the_record_and_is_tried_again(
    a_core: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    collect(store, a_core)
    analyzer = subprocess.Popen(
        [*REDHAND, "crashes", "--store", str(store), "analyze"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    while rows(store)[0]["attempts"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    analyzer.send_signal(signal.SIGKILL)
    analyzer.wait()
    (row,) = rows(store)
    if row["status"] == "analyzed":
        pytest.skip("the analysis finished before it could be killed")
    assert row["status"] == "collected" and row["attempts"] == 1
    assert crashes(store, "analyze").returncode == 0
    assert rows(store)[0]["status"] == "analyzed"


def test_a_full_disk_keeps_the_record(tmp_path: Path) -> None:
    """A small tmpfs, in a mount namespace of the test's own: the core does not fit, the
    record does."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    noise = tmp_path / "noise"
    noise.write_bytes(os.urandom(2 << 20))  # does not compress: fills 512 KiB at once
    script = (
        f"mount -t tmpfs -o size=512k,mode=0700 none {mountpoint} && "
        f"{' '.join(REDHAND)} collect --store {mountpoint}/store --no-analyze 1 1 1 11 0 "
        f"18446744073709551615 1 0 0 '' host noisy < {noise} && "
        f"{' '.join(REDHAND)} crashes --store {mountpoint}/store list --json"
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    (crash,) = json.loads(result.stdout.splitlines()[-1])["crashes"]
    assert crash["core_kept"] == 0
    assert "No space left" in crash["note"] or "free" in crash["note"], crash["note"]


@pytest.mark.skipif(
    os.environ.get("REDHAND_TEST_CORE_PATTERN") != "1",
    reason="changes the machine's core_pattern: set REDHAND_TEST_CORE_PATTERN=1 to run it",
)
def test_install_and_uninstall_put_the_core_pattern_back(tmp_path: Path) -> None:
    before = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    short = Path(tempfile.mkdtemp(prefix="rh"))  # the pattern has 127 characters at most
    store = short / "s"
    try:
        done = subprocess.run(
            [*REDHAND, "collect", "--install", "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
        pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
        assert pattern.startswith("|") and "collect --store" in pattern and "%F" in pattern
        # A real crash, through the kernel's pipe: kept, its identity from the pidfd, analyzed.
        built = compile_c("bugs.c", tmp_path, ["-O1", "-g", "-pthread"])
        with world_readable_copy(built) as exe:
            crashed = subprocess.run(
                [str(exe), "null", "main"],
                preexec_fn=unlimited_core,
                capture_output=True,
                timeout=TIMEOUT,
            )
            assert crashed.returncode == -signal.SIGSEGV
            wait_for_status(store, "analyzed")
        (row,) = rows(store)
        assert row["identity"] == "pidfd" and row["exe"] == str(exe)
        assert "store_value | process_null" in str(row["signature"])
    finally:
        undone = subprocess.run(
            [*REDHAND, "collect", "--uninstall", "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if Path("/proc/sys/kernel/core_pattern").read_text().strip() != before:
            Path("/proc/sys/kernel/core_pattern").write_text(before)
    shutil.rmtree(short)
    assert undone.returncode == 0, undone.stderr
    assert Path("/proc/sys/kernel/core_pattern").read_text().strip() == before
