"""Frames past a smashed return address: the function a scanned caller called directly was
running too; it is shown between them, inferred from that call."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compile_c, kernel_writes_cores_here, unlimited_core

SMASHED = r"""
#include <string.h>
__attribute__((noinline, noipa)) void overflow(size_t size)
{
	char buffer[16];
	memset(buffer, 0x41, size);
	__asm__ volatile("" : : "r"(buffer) : "memory");
}
/* overflow's 32 bytes reach its own return address, not work's frame above it. */
__attribute__((noinline, noipa)) void work(void)
{
	overflow(32);
	__asm__ volatile("" ::: "memory");
}
int main(void)
{
	work();
	return 0;
}
"""


def frames(document: dict[str, object]) -> list[dict[str, object]]:
    thread = document["crash"]["thread"]  # type: ignore[index]
    for entry in document["threads"]:  # type: ignore[attr-defined]
        if entry["tid"] == thread:
            return list(entry["frames"])
    raise AssertionError("no crashing thread")


@pytest.mark.parametrize("optimisation", ["-O0", "-O2"])
def test_the_function_whose_frame_was_smashed_is_inferred(
    tmp_path: Path, optimisation: str
) -> None:
    exe = compile_c(SMASHED, tmp_path, [optimisation, "-g", "-fno-stack-protector"])
    result = subprocess.run(
        [sys.executable, "-m", "redhand", "run", "--json", "--", str(exe)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        preexec_fn=unlimited_core,
    )
    assert result.returncode == 139, result.stderr
    document = json.loads(result.stdout.splitlines()[-1])
    top = frames(document)[:3]
    assert [f["function"] for f in top] == ["overflow", "work", "main"]
    assert [f["trust"] for f in top] == ["context", "inferred", "scan"]
    assert re.fullmatch(r"main\+0x[0-9a-f]+", str(top[1]["called_from"]))
    assert [f["index"] for f in top] == [0, 1, 2]
    text = subprocess.run(
        [sys.executable, "-m", "redhand", "run", "--", str(exe)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    ).stdout
    assert re.search(r"#1 +0x[0-9a-f]+ in work .*\[inferred from the call at main\+0x", text)
    if kernel_writes_cores_here():  # the kernel's core says the same
        (core,) = [p for p in tmp_path.iterdir() if p.name.startswith("core")]
        from_core = subprocess.run(
            [sys.executable, "-m", "redhand", "core", "--json", str(core), "--exe", str(exe)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert [f["function"] for f in frames(json.loads(from_core.stdout))[:3]] == [
            "overflow",
            "work",
            "main",
        ]
