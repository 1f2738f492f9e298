"""redhand collect and redhand crashes, driven as the kernel drives a core handler: real
kernel cores on stdin, the core_pattern arguments, a real pidfd on fd 3.  The machine's
core_pattern is never changed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import compile_c, crash_into_core
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
    args = [str(pid), str(pid), str(pid), "11", str(int(time.time())), core_limit, dump_mode,
            "0", "0", "3" if pidfd is not None else "", "host", comm]  # fmt: skip
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
    with subprocess.Popen(["sleep", "60"]) as crashed, subprocess.Popen(["cat"],
                          stdin=subprocess.PIPE) as other:  # fmt: skip
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
        [*REDHAND, "collect", "--store", str(store), "--no-analyze", "1", "1", "1", "11",
         "0", "1000000", "1", "0", "0", "", "host", "bugs"],
        input=a_core.read_bytes(), capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
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
