"""`redhand core` as a user runs it: the report's sections, JSON, compressed cores, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from helpers import CoreCrash, compile_c, crash_into_core

from redhand.cli import main

THREADS = 3


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> CoreCrash:
    work = tmp_path_factory.mktemp("cli-core")
    exe = compile_c("core_crash.c", work, ["-O1", "-g", "-pthread"])
    return crash_into_core([str(exe), "thread-segv", str(THREADS)], work / "run")


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_report(crash: CoreCrash, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["core", str(crash.core)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("core of process ") and str(crash.exe) in lines[0]
    assert f"{THREADS + 1} threads" in lines[0]
    assert f"core file: {crash.core}" in out
    assert "SIGSEGV (SEGV_MAPERR) at address 0x10 in thread " in out
    assert "null dereference: write at 0x10: a field 16 bytes into a NULL pointer" in out
    # the crashing thread comes first, before the others
    first_thread = next(line for line in lines if line.startswith(("thread ", f"{THREADS} ")))
    assert "(crashed: SIGSEGV)" in first_thread
    assert " in write_field" in out
    assert "registers of thread " in out and "     rip 0x" in out
    assert "address 0x10: " in out
    assert "\x1b[" not in out


def test_json_report(crash: CoreCrash, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["core", "--json", str(crash.core)], capsys)
    assert code == 0
    document = json.loads(out)
    assert document["redhand"] == 1 and document["kind"] == "core"
    assert document["core"] == str(crash.core)
    assert document["exe"] == str(crash.exe)
    report = document["crash"]
    assert report["signal"] == 11 and report["signal_name"] == "SIGSEGV"
    assert report["code_name"] == "SEGV_MAPERR" and report["address"] == 0x10
    assert report["kind"] == "null-dereference"
    crashed = [thread for thread in document["threads"] if thread["crashed"]]
    assert len(crashed) == 1 and crashed[0]["tid"] == report["thread"]
    assert len(document["threads"]) == THREADS + 1
    names = [frame["function"] for frame in crashed[0]["frames"]]
    assert names[0] == "write_field"
    assert document["registers"]["rip"] == crashed[0]["frames"][0]["pc"]
    assert document["process"]["pid"] == document["pid"]
    assert any(mapping["path"] == str(crash.exe) for mapping in document["mappings"])


def test_compressed_core_gives_the_same_report(
    crash: CoreCrash, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packed = tmp_path / "core.zst"
    with open(crash.core, "rb") as source, open(packed, "wb") as sink:
        zstandard.ZstdCompressor().copy_stream(source, sink)
    code, plain, _ = run(["core", "--json", str(crash.core)], capsys)
    assert code == 0
    code, unpacked, _ = run(["core", "--json", str(packed)], capsys)
    assert code == 0
    first, second = json.loads(plain), json.loads(unpacked)
    assert second["compression"] == "zstd"
    assert first["crash"] == second["crash"]
    assert first["threads"] == second["threads"]
    assert list(tmp_path.iterdir()) == [packed]  # nothing written beside it


def _redhand(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redhand", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("make", "code", "words"),
    [
        (lambda tmp, crash: str(tmp / "missing"), 11, "no such file"),
        (lambda tmp, crash: str(tmp), 10, "directory"),
        (lambda tmp, crash: str(crash.exe), 10, "not a core file"),
        (lambda tmp, crash: _write(tmp / "empty", b""), 10, "empty"),
        (lambda tmp, crash: _write(tmp / "text", b"hello\n" * 100), 10, "not an ELF file"),
    ],
    ids=["missing", "directory", "executable", "empty", "text"],
)
def test_bad_input_is_one_line(crash: CoreCrash, tmp_path: Path, make, code, words) -> None:  # type: ignore[no-untyped-def]
    result = _redhand("core", make(tmp_path, crash))
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("redhand: "), result.stderr
    assert words in lines[0]
    assert "Traceback" not in result.stderr


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_truncated_core_gives_partial_results(
    crash: CoreCrash, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = crash.core.read_bytes()
    cut = tmp_path / "core.cut"
    cut.write_bytes(data[: len(data) * 2 // 3])
    code, out, _ = run(["core", str(cut)], capsys)
    assert code == 0
    assert "warning: " in out
    assert "SIGSEGV" in out
