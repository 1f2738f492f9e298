"""The event grammar of redhand watch, the actions, and the seccomp filter built from them."""

from __future__ import annotations

import errno
import os
import signal
import struct

import pytest

from redhand.capture import bpf, syscalls
from redhand.capture.bpfwatch import Who, exec_program, exit_program, fork_program
from redhand.capture.events import (
    Condition,
    EventSpecError,
    Result,
    SignalEvent,
    SyscallEvent,
    parse_event,
)
from redhand.capture.hits import SyscallCall
from redhand.capture.tracer import seccomp_filter
from redhand.capture.watch import ActionKind, parse_actions


def syscall_event(text: str) -> SyscallEvent:
    event = parse_event(text)
    assert isinstance(event, SyscallEvent)
    return event


def test_fails_with_errnos() -> None:
    event = syscall_event("close fails EBADF")
    assert event.calls == ("close",) and event.numbers == (3,)
    assert event.result is Result.FAILS and event.errnos == (errno.EBADF,)
    assert event.matches(3, (987,), -errno.EBADF)
    assert not event.matches(3, (987,), -errno.EIO)
    assert not event.matches(3, (987,), 0)
    assert not event.matches(2, (987,), -errno.EBADF)  # another call


def test_fails_without_errno_is_any_error_and_not_a_large_value() -> None:
    event = syscall_event("mmap fails")
    assert event.matches(9, (), -errno.ENOMEM)
    assert not event.matches(9, (), -512)  # ERESTARTSYS: the call is made again
    assert not event.matches(9, (), -5000)  # not an error code
    assert not event.matches(9, (), 0x7F0000000000)


def test_several_calls_errnos_and_conditions() -> None:
    event = syscall_event("close,dup2 fails ebadf, ENOENT if arg0 >= 3 and arg1 != 0x10")
    assert event.calls == ("close", "dup2") and event.numbers == (3, 33)
    assert event.errnos == (errno.EBADF, errno.ENOENT)
    assert event.conditions == (Condition(0, ">=", 3), Condition(1, "!=", 16))
    assert event.matches(33, (5, 0, 0, 0, 0, 0), -errno.EBADF)
    assert not event.matches(33, (2, 0, 0, 0, 0, 0), -errno.EBADF)
    assert not event.matches(33, (5, 16, 0, 0, 0, 0), -errno.EBADF)


def test_arguments_compare_as_signed_64_bit_values() -> None:
    event = syscall_event("write fails if arg0 == -1")
    assert event.matches(1, ((1 << 64) - 1,), -errno.EBADF)


def test_returns_and_every_call() -> None:
    event = syscall_event("read returns > 4096")
    assert event.result is Result.RETURNS and (event.op, event.value) == (">", 4096)
    assert event.matches(0, (), 8192) and not event.matches(0, (), 10)
    every = syscall_event("openat")
    assert every.result is Result.EVERY and every.matches(257, (), -2)


def test_any_call() -> None:
    event = syscall_event("any fails ENOSPC")
    assert event.any_call and event.numbers == ()
    assert event.matches(1, (), -errno.ENOSPC) and event.matches(18, (), -errno.ENOSPC)


def test_signals() -> None:
    for text in ("signal SIGUSR1", "signal usr1", "signal 10"):
        event = parse_event(text)
        assert isinstance(event, SignalEvent) and event.signal == signal.SIGUSR1
    realtime = parse_event("signal SIGRTMIN+2")
    assert isinstance(realtime, SignalEvent) and realtime.signal == signal.SIGRTMIN + 2


@pytest.mark.parametrize(
    ("text", "column", "words"),
    [
        ("clos fails EBADF", 1, ["'clos' is not an x86_64 system call", "did you mean 'close'"]),
        ("close fials EBADF", 7, ["'fials'", "did you mean 'fails'"]),
        ("close fails EBADX", 13, ["'EBADX' is not an errno name"]),
        ("close fails EBADF,", 19, ["after ','"]),
        ("close returns = 3", 15, ["a comparison"]),
        ("close returns > lots", 17, ["a number expected, not 'lots'"]),
        ("write fails if arg9 == 1", 16, ["arg0 ... arg5"]),
        ("close fails EBADF extra", 19, ["nothing expected after the event"]),
        ("any", 1, ["'any' needs a result"]),
        ("", 1, ["empty"]),
        ("signal SIGFOO", 8, ["'SIGFOO' is not a signal"]),
        ("close fails 5000", 13, ["out of range"]),
    ],
)
def test_mistakes_point_at_the_word(text: str, column: int, words: list[str]) -> None:
    with pytest.raises(EventSpecError) as raised:
        parse_event(text)
    message = str(raised.value)
    assert f"at column {column}:" in message
    assert "\n" not in message
    for word in words:
        assert word in message
    assert raised.value.exit_code == 2


def test_syscall_table() -> None:
    assert syscalls.number("close") == 3 and syscalls.name(3) == "close"
    assert syscalls.number("openat") == 257 and syscalls.number("nonesuch") is None
    assert syscalls.argument_names("write") == ("fd", "buf", "count")
    assert syscalls.argument_names("getpid") == ()
    assert syscalls.tracepoint_name("stat") == "newstat"
    assert syscalls.name(10_000) == "syscall_10000"


def test_a_call_as_strace_shows_it() -> None:
    failed = SyscallCall(3, (987, 0, 0, 0, 0, 0), -errno.EBADF)
    assert str(failed) == "close(987) = -1 EBADF (Bad file descriptor)"
    written = SyscallCall(1, (1, 0x7FFD12345678, 12, 0, 0, 0), 12)
    assert str(written) == "write(1, 0x7ffd12345678, 12) = 12"
    negative = SyscallCall(3, ((1 << 64) - 1, 0, 0, 0, 0, 0), -errno.EBADF)
    assert str(negative).startswith("close(-1) =")


def test_actions() -> None:
    actions = parse_actions(
        ["stack,gcore /tmp/core.{pid}", "exec gdb -p {pid} -batch -ex 'bt, full'"]
    )
    assert [a.kind for a in actions] == [ActionKind.STACK, ActionKind.GCORE, ActionKind.EXEC]
    assert actions[1].argument == "/tmp/core.{pid}"
    assert actions[2].argument == "gdb -p {pid} -batch -ex 'bt, full'"
    assert [a.kind for a in parse_actions([])] == [ActionKind.STACK]
    for bad in ("dance", "abort,stack", "stack,", "exec", "stop,kill"):
        with pytest.raises(ValueError):
            parse_actions([bad])


def run_classic_bpf(program: bytes, nr: int, arch: int = 0xC000003E) -> int:
    """Run a seccomp filter on seccomp_data {nr, arch}: the few opcodes it uses."""
    data = struct.pack("<iI", nr, arch)
    accumulator, pc = 0, 0
    while True:
        code, jt, jf, k = struct.unpack_from("<HBBI", program, pc * 8)
        pc += 1
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            accumulator = struct.unpack_from("<I", data, k)[0]
        elif code == 0x15:  # BPF_JMP | BPF_JEQ | BPF_K
            pc += jt if accumulator == k else jf
        elif code == 0x35:  # BPF_JMP | BPF_JGE | BPF_K
            pc += jt if accumulator >= k else jf
        elif code == 0x06:  # BPF_RET | BPF_K
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


TRACE, ALLOW = 0x7FF00000, 0x7FFF0000


def test_seccomp_filter_traces_only_the_watched_calls() -> None:
    program = seccomp_filter([3, 33])
    assert len(program) == 8 * (5 + 2)
    assert run_classic_bpf(program, 3) == TRACE
    assert run_classic_bpf(program, 33) == TRACE
    for other in (0, 1, 2, 4, 32, 34, 257):
        assert run_classic_bpf(program, other) == ALLOW
    assert run_classic_bpf(program, 3, arch=0x40000003) == ALLOW  # i386: not decoded


def test_seccomp_filter_for_any_call() -> None:
    program = seccomp_filter([])
    for nr in (0, 3, 257, 450):
        assert run_classic_bpf(program, nr) == TRACE
    assert run_classic_bpf(program, 0x40000000 | 3) == ALLOW  # x32
    assert run_classic_bpf(program, 3, arch=0x40000003) == ALLOW


@pytest.mark.parametrize(
    "spec",
    [
        "close fails EBADF",
        "read fails",
        "read returns > 4096 if arg0 == 3 and arg2 >= 0x100000000",
        "openat",
        "any fails ENOSPC",
        "mmap returns == -0x8000000000",
        "close,dup2 fails EBADF,EINTR if arg0 != -1",
    ],
)
def test_every_event_compiles_to_programs_the_verifier_accepts(spec: str) -> None:
    """The kernel's verifier is the judge: every shape of event, by pid and by name."""
    event = syscall_event(spec)
    fds = [
        bpf.create_map(bpf.MAP_ARRAY, 4, 8, 1, name="rh_test_state"),
        bpf.create_map(bpf.MAP_RINGBUF, 0, 0, 1 << 16, name="rh_test_ring"),
        bpf.create_map(bpf.MAP_HASH, 4, 1, 16, name="rh_test_tgids"),
    ]
    state, ring, tgids = fds
    try:
        for who in (Who(tgid=1), Who(comm=b"node".ljust(16, b"\0"), tgids_fd=tgids)):
            for skip in (0, 5):
                program = exit_program(
                    event, who, state_fd=state, ring_fd=ring, skip=skip, raw=event.any_call
                )
                fds.append(bpf.load_program(program, name="rh_test"))
        comm = Who(comm=b"node".ljust(16, b"\0"), tgids_fd=tgids)
        fds.append(bpf.load_program(exec_program(comm), name="rh_test"))
        fds.append(bpf.load_program(fork_program(comm), name="rh_test"))
    finally:
        for fd in fds:
            os.close(fd)
