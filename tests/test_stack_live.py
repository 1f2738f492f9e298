"""Live-capture cases beyond the gdb comparison: the vdso, the Python API, limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import EVERY_THREAD, LiveProgram, compile_c

import redhand

VDSO_SPINNER = r"""
#include <stdio.h>
#include <time.h>

__attribute__((noinline)) void spin(void) {
    struct timespec now;
    for (;;) clock_gettime(CLOCK_MONOTONIC, &now);
}
int main(void) {
    printf("ready\n");
    fflush(stdout);
    spin();
}
"""


def test_frames_in_the_vdso(tmp_path: Path) -> None:
    """A thread caught inside the vdso: named from the vdso image read out of the process."""
    binary = compile_c(VDSO_SPINNER, tmp_path, ["-O1", "-g"])
    with LiveProgram([binary], running=EVERY_THREAD) as program:
        for _ in range(200):
            with redhand.attach(program.pid) as target:
                backtrace = target.threads[0].backtrace()
            if backtrace[0].module == "[vdso]":
                break
        else:
            pytest.fail("never caught the thread inside the vdso")
        names = [frame.function for frame in backtrace]
        assert names[0] in ("clock_gettime", "__vdso_clock_gettime"), names
        assert backtrace[0].build_id is not None
        assert names[1] == "clock_gettime" and backtrace[1].module_name == "libc.so.6"
        assert names[2:4] == ["spin", "main"], names
        assert backtrace.end == redhand.EndReason.OUTERMOST


def test_python_api(tmp_path: Path) -> None:
    """`redhand.attach` gives a Target whose threads' backtraces are sequences of Frames."""
    binary = compile_c(VDSO_SPINNER, tmp_path, ["-O1", "-g"])
    with (
        LiveProgram([binary], running=EVERY_THREAD) as program,
        redhand.attach(program.pid) as target,
    ):
        assert target.pid == program.pid
        assert target.exe == str(binary)
        assert target.frozen_ns is not None and target.frozen_ns > 0
        thread = target.thread(program.pid)
        assert thread is target.threads[0]
        backtrace = thread.backtrace()
        assert isinstance(backtrace[0], redhand.Frame)
        assert backtrace[0].trust is redhand.Trust.CONTEXT
        assert len(backtrace[:2]) == 2
        assert "main" in str(backtrace)
        assert thread.backtrace() is backtrace  # computed once
        short = thread.backtrace(max_frames=2)
        assert len(short) == 2 and short.end == redhand.EndReason.LIMIT
        main_frame = next(frame for frame in backtrace if frame.function == "main")
        main = target.find_module(main_frame.pc)
        assert main is not None and main.path == str(binary)
        assert main.build_id == main_frame.build_id
        assert target.find_mapping(backtrace[0].pc) is not None


def test_attach_errors_are_redhand_errors() -> None:
    with pytest.raises(redhand.ProcessNotFound) as caught:
        redhand.attach(2**22 + 7)
    assert isinstance(caught.value, ProcessLookupError)
    assert caught.value.exit_code == 3
    with pytest.raises(redhand.KernelThread):
        redhand.attach(2)
