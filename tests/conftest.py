"""Shared fixtures: the prerequisites check and a per-session cache of built programs."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import missing_prerequisites


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying what to install, when a tool the tests need is missing.

    The tests build real programs and compare with gdb; a missing compiler
    or debugger must not turn into a run of silently skipped tests.
    """
    missing = missing_prerequisites()
    if missing:
        pytest.exit(
            "redhand's tests need tools that are missing on this machine:\n"
            + "\n".join(missing)
            + "\nInstall them and run the tests again.",
            returncode=4,
        )


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where compile_c, rustc and ocamlopt keep this session's binaries."""
    return tmp_path_factory.mktemp("programs")
