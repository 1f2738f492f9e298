"""debuginfod: debug files only a server has, fetched, checked, cached; never a hang offline.

The server is elfutils' real ``debuginfod``, started by the tests on
127.0.0.1 with a free port, serving a folder that holds the separate debug
file (objcopy --only-keep-debug) of a stripped program.  No other address is
ever contacted.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from helpers import LiveProgram, compile_c

import redhand
from redhand.elf import ElfFile
from redhand.symbols import debuginfod, table

PROGRAM = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile int sink;

__attribute__((noinline)) static void hidden_wait(int depth) {
    printf("thread main %ld\nready\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    for (;;) {
        pause();
        sink += depth;
    }
}

__attribute__((noinline)) static int hidden_middle(int n) {
    hidden_wait(n + 1);
    return sink + 1;
}

int main(void) {
    return hidden_middle(1) & 1;
}
"""

FLAGS = ["-g", "-O1", "-fno-omit-frame-pointer"]
INTERNAL = ["hidden_wait", "hidden_middle"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty cache, no proxy (only 127.0.0.1 is ever contacted), no in-process indexes."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("DEBUGINFOD_URLS", "DEBUGINFOD_CACHE_PATH", "DEBUGINFOD_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    cache_home = tmp_path / "cache"
    cache_home.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    table.clear_cache()
    debuginfod.forget_unreachable()
    yield cache_home
    table.clear_cache()
    debuginfod.forget_unreachable()


@pytest.fixture
def programs(build_dir: Path, tmp_path: Path) -> tuple[Path, Path, str]:
    """(the stripped program, a folder holding only its debug file, its build-id)."""
    unstripped = compile_c(PROGRAM, build_dir, FLAGS)
    stripped = compile_c(PROGRAM, build_dir, FLAGS, strip=True)
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(
        ["objcopy", "--only-keep-debug", str(unstripped), str(served / "program.debug")],
        check=True,
    )
    with ElfFile.open(str(stripped)) as elf:
        build_id = elf.build_id
        assert build_id is not None
        assert elf.get_symbol_table(".symtab") is None
    return stripped, served, build_id


def _no_network(*args: object, **kwargs: object) -> NoReturn:
    raise AssertionError("a server was asked")


@contextlib.contextmanager
def debuginfod_server(folder: Path, database: Path, build_id: str) -> Iterator[str]:
    """elfutils' debuginfod serving ``folder`` on 127.0.0.1; its URL once it has indexed."""
    port = free_port()
    log = open(database.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        ["debuginfod", "-F", str(folder), "-p", str(port), "-d", str(database), "-t", "1"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, database.with_suffix(".log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/buildid/{build_id}/debuginfo", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail("debuginfod did not index the folder within 60 s")
                time.sleep(0.2)
        yield url
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        log.close()


def names_of(pid: int) -> list[str | None]:
    with redhand.attach(pid) as target:
        return [frame.function for frame in target.threads[0].backtrace()]


def test_names_from_a_debug_file_only_the_server_has(
    programs: tuple[Path, Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_environment: Path,
) -> None:
    stripped, served, build_id = programs
    cached = clean_environment / "redhand" / "debuginfod" / build_id / "debuginfo"
    with LiveProgram([stripped]) as program:
        # No server: the stripped program's internal functions have no names.
        assert not set(INTERNAL) & set(names_of(program.pid))
        table.clear_cache()
        with debuginfod_server(served, tmp_path / "db.sqlite", build_id) as url:
            monkeypatch.setenv("DEBUGINFOD_URLS", f"http://127.0.0.1:{free_port()} {url}/")
            names = names_of(program.pid)
            assert INTERNAL[0] in names and INTERNAL[1] in names and "main" in names, names
        assert cached.is_file()
        with ElfFile.open(str(cached)) as elf:
            assert elf.build_id == build_id
        assert not [p for p in cached.parent.iterdir() if p.name != "debuginfo"]

        # Server gone, symbol indexes forgotten: the downloaded file serves again,
        # and no server is asked for it.
        table.clear_cache()
        shutil.rmtree(clean_environment / "redhand" / "symbols", ignore_errors=True)
        monkeypatch.setattr(debuginfod, "_download", _no_network)
        names = names_of(program.pid)
        assert INTERNAL[0] in names and INTERNAL[1] in names, names


def test_cache_path_and_fetch_api(
    programs: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stripped, served, build_id = programs
    assert debuginfod.fetch_debuginfo(build_id) is None  # off: no DEBUGINFOD_URLS
    monkeypatch.setenv("DEBUGINFOD_CACHE_PATH", str(tmp_path / "elfutils-cache"))
    calls: list[tuple[int, int | None]] = []
    with debuginfod_server(served, tmp_path / "db.sqlite", build_id) as url:
        monkeypatch.setenv("DEBUGINFOD_URLS", url)
        path = debuginfod.fetch_debuginfo(
            build_id.upper(), progress=lambda done, total: calls.append((done, total))
        )
    assert path == str(tmp_path / "elfutils-cache" / build_id / "debuginfo")
    size = os.path.getsize(path)
    assert calls[0][0] == 0 and calls[-1] == (size, size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    # Cached: no server needed, no progress.
    calls.clear()
    assert debuginfod.fetch_debuginfo(build_id, progress=lambda d, t: calls.append((d, t))) == path
    assert calls == []
    # A build-id no server knows (the server is gone: a miss either way).
    problems: list[str] = []
    assert debuginfod.fetch_debuginfo("ab" * 20, problems=problems) is None
    assert problems


def test_offline_is_quick_and_quiet(
    programs: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    stripped, _served, build_id = programs
    monkeypatch.setenv("DEBUGINFOD_URLS", f"http://127.0.0.1:{free_port()}")
    with LiveProgram([stripped]) as program:
        names = names_of(program.pid)
        assert not set(INTERNAL) & set(names)
    marker = clean_environment / "redhand" / "debuginfod" / build_id / "debuginfo"
    assert marker.exists() and marker.stat().st_size == 0  # the miss, remembered
    problems: list[str] = []
    with monkeypatch.context() as patch:  # a recent miss asks no server
        patch.setattr(debuginfod, "_download", _no_network)
        assert debuginfod.fetch_debuginfo(build_id, problems=problems) is None
    assert "recent miss" in problems[0]
    # Once the miss is old, the servers are asked again, but not one that
    # could not be reached earlier in this process.
    monkeypatch.setenv("DEBUGINFOD_CACHE_MISS_S", "0.01")
    time.sleep(0.05)
    problems.clear()
    assert debuginfod.fetch_debuginfo(build_id, problems=problems) is None
    assert any("unreachable earlier" in line for line in problems), problems
    debuginfod.forget_unreachable()
    time.sleep(0.05)
    problems.clear()
    assert debuginfod.fetch_debuginfo(build_id, problems=problems) is None
    assert any("cannot connect" in line for line in problems), problems


class _Answer(http.server.BaseHTTPRequestHandler):
    body = b""
    hang = False

    def do_GET(self) -> None:
        if self.hang:
            time.sleep(30)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def fake_server(body: bytes, *, hang: bool = False) -> Iterator[str]:
    """A server on 127.0.0.1 that answers every request with ``body`` (or never)."""
    handler = type("Handler", (_Answer,), {"body": body, "hang": hang})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wrong_answers_are_rejected(
    programs: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    stripped, _served, build_id = programs
    folder = clean_environment / "redhand" / "debuginfod" / build_id
    other = Path("/bin/true").read_bytes()  # an ELF file with another build-id
    for body, why in ((other, "build-id"), (b"not an ELF file" * 100, "not an ELF")):
        shutil.rmtree(folder, ignore_errors=True)
        with fake_server(body) as url:
            monkeypatch.setenv("DEBUGINFOD_URLS", url)
            problems: list[str] = []
            assert debuginfod.fetch_debuginfo(build_id, problems=problems) is None
            assert any("wrong answer" in line and why in line for line in problems), problems
        assert [p.name for p in folder.iterdir()] == ["debuginfo"]  # a miss marker, no temporary
        assert (folder / "debuginfo").stat().st_size == 0
    # Through the symbols: the wrong file is never used for names.
    shutil.rmtree(folder, ignore_errors=True)
    with fake_server(other) as url:
        monkeypatch.setenv("DEBUGINFOD_URLS", url)
        with LiveProgram([stripped]) as program:
            assert not set(INTERNAL) & set(names_of(program.pid))


def test_a_server_that_never_answers_is_given_up_on(
    programs: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _stripped, _served, build_id = programs
    monkeypatch.setenv("DEBUGINFOD_TIMEOUT", "1")
    with fake_server(b"", hang=True) as url:
        monkeypatch.setenv("DEBUGINFOD_URLS", url)
        started = time.monotonic()
        problems: list[str] = []
        assert debuginfod.fetch_debuginfo(build_id, problems=problems) is None
        # The server never answers: only DEBUGINFOD_TIMEOUT ended the wait
        # (a generous bound, for a busy machine).
        assert time.monotonic() - started < 30, problems
        assert problems


def test_nothing_imported_when_off(tmp_path: Path) -> None:
    """Without DEBUGINFOD_URLS, the debug-file search imports neither the client nor urllib."""
    env = {k: v for k, v in os.environ.items() if k != "DEBUGINFOD_URLS"}
    code = (
        "import sys; from redhand.elf import ElfFile; "
        "from redhand.symbols.debugfile import find_debug_file; "
        "find_debug_file(ElfFile.open('/bin/true')); "
        "print('urllib.request' in sys.modules, 'redhand.symbols.debuginfod' in sys.modules)"
    )
    python = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_trim_deletes_the_least_recently_used(tmp_path: Path) -> None:
    for age, name in enumerate(["new", "middle", "old"]):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "debuginfo").write_bytes(b"x" * 1000)
        stamp = time.time() - 1000 * age
        os.utime(folder / "debuginfo", (stamp, stamp))
    debuginfod.trim(str(tmp_path), 2500, keep=str(tmp_path / "old"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]
    debuginfod.trim(str(tmp_path), 1500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_terminal_progress() -> None:
    with debuginfod.terminal_progress("x", enabled=False) as progress:
        assert progress is None
    with debuginfod.terminal_progress("debuginfod abc", enabled=True) as progress:
        assert progress is not None
        progress(0, None)
        progress(10, 100)
        progress(100, 100)


def test_stack_command_uses_the_server(
    programs: tuple[Path, Path, str], tmp_path: Path, clean_environment: Path
) -> None:
    stripped, served, build_id = programs
    python = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"
    with (
        LiveProgram([stripped]) as program,
        debuginfod_server(served, tmp_path / "db.sqlite", build_id) as url,
    ):
        env = {**os.environ, "DEBUGINFOD_URLS": url, "XDG_CACHE_HOME": str(clean_environment)}
        out = subprocess.run(
            [str(python), "-m", "redhand", "stack", str(program.pid)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 0, out.stderr
    assert "hidden_wait" in out.stdout and "hidden_middle" in out.stdout, out.stdout
    assert "\x1b" not in out.stderr  # no progress bar when stderr is not a terminal
