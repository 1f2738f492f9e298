"""redhand collect --serve: the kernel's coredump socket (Linux 6.17 and later).

Only the kernel connects to that socket, so the crashes go through the machine's
core_pattern: that test is opt-in (REDHAND_TEST_CORE_PATTERN=1) and puts the pattern back.
The others start and stop the server without a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from collect_helpers import (
    REDHAND,
    age,
    changes_core_pattern,
    collect,
    container_root,
    crash_through_the_kernel,
    crashes,
    in_a_container,
    rows,
    wait_for_status,
)
from helpers import compile_c, crash_into_core
from watch_helpers import TIMEOUT, world_readable_copy

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


def kernel_has_coredump_sockets() -> bool:
    modes = Path("/proc/sys/kernel/core_modes")
    return modes.exists() and "socket" in modes.read_text().split()


needs_sockets = pytest.mark.skipif(
    not kernel_has_coredump_sockets(), reason="this kernel has no coredump socket (6.17+)"
)


@contextlib.contextmanager
def server(store: Path, path: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """``redhand collect --serve``, once it listens; ended by SIGTERM at the end.  What it
    says goes to ``server.log`` beside the store."""
    read, write = os.pipe()
    with open(store.parent / "server.log", "w") as log:
        process = subprocess.Popen(
            [*REDHAND, "collect", "--serve", "--store", str(store), "--socket", str(path),
             "--ready-fd", str(write), *extra],
            pass_fds=(write,),
            stdout=log,
            stderr=log,
            text=True,
        )  # fmt: skip
    os.close(write)
    try:
        with os.fdopen(read) as ready:
            said = ready.readline()
        assert said.startswith("listening"), (store.parent / "server.log").read_text()
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def status(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*REDHAND, "collect", "--status", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


@needs_sockets
def test_the_server_listens_root_only_and_ends_cleanly(tmp_path: Path) -> None:
    """Without --install the core_pattern is not touched; SIGTERM ends the server with its
    socket removed."""
    before = CORE_PATTERN.read_text()
    path = tmp_path / "run" / "core.sock"
    with server(tmp_path / "store", path) as process:
        assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert CORE_PATTERN.read_text() == before
        second = subprocess.run(
            [*REDHAND, "collect", "--serve", "--store", str(tmp_path / "store"),
             "--socket", str(path)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )  # fmt: skip
        assert second.returncode == 13 and "listens on" in second.stderr
        assert path.is_socket()  # the first one's, still there
    assert process.returncode == 0, (tmp_path / "server.log").read_text()
    assert not path.exists()


@needs_sockets
def test_a_server_that_starts_analyzes_what_its_predecessor_left(tmp_path: Path) -> None:
    """The analyses of the crashes a killed server collected went with it: the next server
    takes up those that have waited ten minutes."""
    built = compile_c("bugs.c", tmp_path, ["-O1", "-g", "-pthread"])
    with world_readable_copy(built) as exe:
        core = crash_into_core([str(exe), "null", "main"], tmp_path / "run").core
        store = tmp_path / "store"
        left = collect(store, core)
        age(store, left, 3600)
        with server(store, tmp_path / "run" / "core.sock"):
            wait_for_status(store, "analyzed")
    assert "store_value | process_null" in str(rows(store)[0]["signature"])


@needs_sockets
def test_a_connection_that_is_not_the_kernels_is_ignored(tmp_path: Path) -> None:
    """Only root can reach the socket, but a process of root's that connects is not a crash:
    its peer is not dumping core.  Nothing is recorded, and the server serves on."""
    store, path = tmp_path / "store", tmp_path / "run" / "core.sock"
    with server(store, path) as process:
        for _ in range(3):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(TIMEOUT)
                client.connect(str(path))
                answer = b""
                # Hung up on: before the bytes are sent, or with them unread.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    client.sendall(b"\x10\x00\x00\x00" * 4 + os.urandom(4096))
                    answer = client.recv(16)
                assert answer == b""  # no answer
        assert process.poll() is None
    assert process.returncode == 0
    assert (tmp_path / "server.log").read_text().count("not dumping core") == 3
    assert rows(store) == [] and not list((store / "spool").iterdir())


@needs_sockets
def test_a_socket_folder_open_to_others_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    result = subprocess.run(
        [*REDHAND, "collect", "--serve", "--store", str(tmp_path / "store"),
         "--socket", str(folder / "core.sock")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 13
    assert len(result.stderr.splitlines()) == 1 and "closed to others" in result.stderr
    assert "Traceback" not in result.stderr
    # A store that cannot be made: said in one line, and no socket is left.
    socket_path = tmp_path / "run" / "core.sock"
    no_store = subprocess.run(
        [*REDHAND, "collect", "--serve", "--store", str(tmp_path / "no" / "store"),
         "--socket", str(socket_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert no_store.returncode == 11 and len(no_store.stderr.splitlines()) == 1
    assert "the folder it goes in must exist" in no_store.stderr
    assert not socket_path.exists()


@needs_sockets
@changes_core_pattern
def test_crashes_through_the_kernels_socket(tmp_path: Path) -> None:
    """A real crash through @@socket: the identity from the peer's pidfd, the dump mode and
    the signal from its pidfd info or the core, analyzed; a crash loop refused before the
    kernel writes a byte; a container's program named; the pattern put back at the end."""
    before = CORE_PATTERN.read_text().strip()
    short = Path(tempfile.mkdtemp(prefix="rh"))  # the pattern has 127 characters at most
    store, path = short / "s", short / "run" / "c.sock"
    built = compile_c("bugs.c", tmp_path, ["-O1", "-g", "-pthread"])
    try:
        with server(store, path, "--install"), world_readable_copy(built) as exe:
            assert CORE_PATTERN.read_text().strip() == f"@@{path}"
            first = crash_through_the_kernel(store, [str(exe), "null", "main"], signal.SIGSEGV)
            assert first["identity"] == "pidfd" and first["exe"] == str(exe)
            assert first["tid"] == first["pid"]  # from the core: the peer is the thread group
            assert first["signal"] == signal.SIGSEGV and first["dump_mode"] == 1
            assert "store_value | process_null" in str(first["signature"])
            assert first["core"] is not None and first["core_bytes"]
            # A crash loop: ten cores a minute, then records only (the kernel writes nothing).
            for _ in range(10):
                last = crash_through_the_kernel(store, [str(exe), "assert", "main"], signal.SIGABRT)
            assert last["core_bytes"] == 0 and last["core"] is None
            assert "crash loop" in str(last["note"])
            assert sum(bool(row["core_stored"]) for row in rows(store)) == 10
            # A program only a container has, with a host name of its own.
            root = container_root(tmp_path, {"bugs": built})
            contained = crash_through_the_kernel(
                store,
                [*in_a_container(root, "box"), "/opt/app/bugs", "strlen", "main"],
                signal.SIGSEGV,
            )
            assert "process_strlen" in str(contained["signature"]), contained["note"]
            assert contained["hostname"] == "box"
        assert CORE_PATTERN.read_text().strip() == before
        listed = crashes(store, "list")
        assert listed.returncode == 0 and listed.stdout.count("\n") == 12
        # A server killed by SIGKILL leaves its pattern: --uninstall, or the next server's
        # end, puts back the one from before it.
        with server(store, path, "--install") as killed:
            assert status(store).returncode == 0
            killed.kill()
        assert CORE_PATTERN.read_text().strip() == f"@@{path}"
        dead = status(store)
        assert dead.returncode == 16 and "nothing listens on it" in dead.stdout
        with server(store, path, "--install"):
            assert CORE_PATTERN.read_text().strip() == f"@@{path}"
        assert CORE_PATTERN.read_text().strip() == before
        with server(store, path, "--install") as killed:
            killed.kill()
        undone = subprocess.run(
            [*REDHAND, "collect", "--uninstall", "--store", str(store)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert undone.returncode == 0 and CORE_PATTERN.read_text().strip() == before
    finally:
        if CORE_PATTERN.read_text().strip() != before:
            CORE_PATTERN.write_text(before)
        subprocess.run(["rm", "-rf", str(short)], check=False, timeout=TIMEOUT)
