"""What the tests of redhand collect and redhand crashes share: the collector driven as the
kernel drives it, the store's records, a container's root file system."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import unlimited_core
from watch_helpers import TIMEOUT

REDHAND = [sys.executable, "-m", "redhand"]

# The one kind of test that changes the machine's core_pattern (and puts it back).
changes_core_pattern = pytest.mark.skipif(
    os.environ.get("REDHAND_TEST_CORE_PATTERN") != "1",
    reason="changes the machine's core_pattern: set REDHAND_TEST_CORE_PATTERN=1 to run it",
)


def collect(
    store: Path,
    core: Path | bytes,
    *,
    pid: int = 999999,
    comm: str = "bugs",
    core_limit: str = "18446744073709551615",
    dump_mode: str = "1",
    uid: int = 0,
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
        str(uid),
        str(uid),
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


def container_root(folder: Path, programs: dict[str, Path]) -> Path:
    """A container's root file system, as an image has it: ``programs`` under /opt/app
    (a path the host does not have), with the libraries they need at their own paths."""
    root = folder / "rootfs"
    for name, program in programs.items():
        (root / "opt/app").mkdir(parents=True, exist_ok=True)
        shutil.copy2(program, root / "opt/app" / name)
        listed = subprocess.run(
            ["ldd", str(program)], capture_output=True, text=True, timeout=TIMEOUT, check=True
        ).stdout
        for word in listed.split():
            if word.startswith("/"):
                (root / word.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(word), root / word.lstrip("/"))
    for folder_in_it in [root, *root.rglob("*")]:
        if folder_in_it.is_dir():
            folder_in_it.chmod(0o755)
    return root


def wait_for_status(store: Path, status: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if rows(store) and all(row["status"] == status for row in rows(store)):
            return
        time.sleep(0.05)
    raise AssertionError(f"not {status}: {rows(store)}")


def crash_through_the_kernel(
    store: Path, argv: list[str], signo: int, limits: Callable[[], None] = unlimited_core
) -> dict[str, object]:
    """Run ``argv`` until it dies of ``signo`` (the kernel hands its core to the collector
    installed): the record of that crash, once analyzed."""
    before = len(rows(store))
    crashed = subprocess.run(argv, preexec_fn=limits, capture_output=True, timeout=TIMEOUT)
    assert crashed.returncode == -signo, crashed.stderr
    deadline = time.monotonic() + TIMEOUT
    while len(rows(store)) <= before or rows(store)[before]["status"] == "collected":
        assert time.monotonic() < deadline, rows(store)
        time.sleep(0.1)
    return rows(store)[before]


def in_a_container(root: Path, hostname: str) -> list[str]:
    """The command words that run a program as in a container: ``root`` as its root, in a
    mount namespace, and ``hostname`` as its host name (a UTS namespace of its own)."""
    enter = (
        "import os, socket, sys; socket.sethostname(sys.argv[1]); "
        "os.execvp('unshare', ['unshare', '--mount', '--root=' + sys.argv[2], '--wd=/', "
        "*sys.argv[3:]])"
    )
    return ["unshare", "--uts", "--", sys.executable, "-c", enter, hostname, str(root)]


def age(store: Path, crash_id: str, seconds: float) -> None:
    """Make a crash's record look collected ``seconds`` ago."""
    database = sqlite3.connect(store / "crashes.db")
    try:
        database.execute(
            "UPDATE crashes SET collected = collected - ? WHERE id = ?", (seconds, crash_id)
        )
        database.commit()
    finally:
        database.close()
