"""Shared fixtures: the prerequisites check and a per-session cache of built programs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers import missing_prerequisites

_cache_dir: str | None = None
"""This session's cache directory (XDG_CACHE_HOME), removed at the end."""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying what to install, when a tool the tests need is missing.

    The tests build real programs and compare with gdb; a missing compiler
    or debugger must not turn into a run of silently skipped tests.
    """
    # Debian's libdebuginfod-common sets DEBUGINFOD_URLS for login shells: the
    # tests must never reach a server that is not their own, on 127.0.0.1.
    os.environ.pop("DEBUGINFOD_URLS", None)
    missing = missing_prerequisites()
    if missing:
        pytest.exit(
            "redhand's tests need tools that are missing on this machine:\n"
            + "\n".join(missing)
            + "\nInstall them and run the tests again.",
            returncode=4,
        )
    # redhand's persistent cache (symbol indexes) goes to a directory of this
    # session, for redhand run in-process and in subprocesses alike: the tests
    # build hundreds of programs, none of which belongs in the user's cache.
    global _cache_dir
    _cache_dir = tempfile.mkdtemp(prefix="redhand-test-cache-")
    os.environ["XDG_CACHE_HOME"] = _cache_dir
    os.environ.pop("REDHAND_CACHE", None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _cache_dir is not None:
        shutil.rmtree(_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where compile_c, rustc and ocamlopt keep this session's binaries."""
    return tmp_path_factory.mktemp("programs")
