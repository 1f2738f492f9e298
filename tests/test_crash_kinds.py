"""Crash classification on real kernel cores: one tiny program per crash kind.

Each program in tests/programs/crash_* crashes in one known way; it runs in a
temporary folder with RLIMIT_CORE raised in the child, the kernel writes its
core there, and :func:`redhand.analysis.crash.classify` must name the kind,
the signal, si_code and the fault address that the program's own source
implies (NULL + 16 is 0x10), with the key words of its explanation.  gdb reads
the same core as the oracle for the faulting pc and the siginfo.

When /proc/sys/kernel/core_pattern is a pipe (systemd-coredump, apport) or an
absolute path, the kernel's core cannot be picked up here: the program is then
run under gdb, which writes the core with ``gcore`` at the fatal signal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import (
    SYS_PAUSE,
    SYS_RT_SIGSUSPEND,
    compile_c,
    kernel_writes_cores_here,
    rustc,
    thread_parked,
    unlimited_core,
    wait_until,
)

import redhand
from redhand.analysis.crash import Crash, classify, explain_mapping
from redhand.target.target import Target

SEGV_MAPERR, SEGV_ACCERR, SI_KERNEL, SI_TKILL, SI_USER = 1, 2, 0x80, -6, 0
FPE_INTDIV, ILL_ILLOPN, BUS_ADRERR = 1, 2, 2
SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV = 4, 6, 7, 8, 11

PRINTED = -1
"""The expected address is the one the program printed ("page 0x..."), plus ``offset``."""


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    signal: int
    code: int
    kind: str
    address: int | None
    words: Sequence[str]
    flags: Sequence[str] = ("-O1", "-g")
    args: Sequence[str] = ()
    offset: int = 0
    details: dict[str, object] = field(default_factory=dict)


CASES = [
    Case(
        "null-read", "crash_null_read.c", SIGSEGV, SEGV_MAPERR, "null-dereference", 0x10,
        ["read at 0x10", "a field 16 bytes into a NULL pointer", "rdi is NULL", "read_value"],
        details={"access": "read", "null_register": "rdi"},
    ),
    Case(
        "null-write", "crash_null_write.c", SIGSEGV, SEGV_MAPERR, "null-dereference", 0x8,
        ["write at 0x8", "8 bytes into a NULL pointer", "set_second"],
        details={"access": "write"},
    ),
    Case(
        "wild", "crash_wild.c", SIGSEGV, SEGV_MAPERR, "unmapped-access", 0x100000000000,
        ["read at 0x100000000000", "nothing is mapped", "wild or dangling pointer", "load"],
    ),
    Case(
        "dangling", "crash_dangling.c", SIGSEGV, SEGV_MAPERR, "unmapped-access", PRINTED,
        ["nothing is mapped", "24 bytes past the end of an anonymous mapping",
         "4.0 KiB below an anonymous mapping", "dangling"],
        offset=24,
    ),
    Case(
        "rodata", "crash_rodata.c", SIGSEGV, SEGV_ACCERR, "write-to-read-only", PRINTED,
        ["write to", "read-only memory: .rodata of", "(r--p), in shout"],
    ),
    Case(
        "nx-heap", "crash_nx_heap.c", SIGSEGV, SEGV_ACCERR, "bad-pc", PRINTED,
        ["a jump to", "in [heap] (rw-p)", "not executable", "run+0x"],
    ),
    Case(
        "jump-garbage", "crash_jump_garbage.c", SIGSEGV, SEGV_MAPERR, "bad-pc", 0xDEADBEEF000,
        ["a jump to 0xdeadbeef000", "nothing is mapped", "the likely caller", "run+0x"],
    ),
    Case(
        "stack-overflow", "crash_stack_overflow.c", SIGSEGV, SEGV_MAPERR, "stack-overflow", None,
        ["stack overflow", "the main thread's stack", "the stack mapping is 8 MiB",
         "guard gap", "recurse"],
        flags=("-O0", "-g"),
    ),
    Case(
        "thread-overflow", "crash_thread_overflow.c", SIGSEGV, SEGV_ACCERR, "stack-overflow",
        None,
        ["stack overflow", "the stack of thread", "the stack mapping is 256 KiB", "guard page",
         "recurse"],
        flags=("-O0", "-g", "-pthread"),
    ),
    Case(
        "non-canonical", "crash_noncanonical.c", SIGSEGV, SI_KERNEL, "non-canonical-address",
        None,
        ["read at 0x4141414141414141", "'AAAAAAAA'", "non-canonical", "it is not NULL", "load"],
        details={"effective_address": 0x4141414141414141},
    ),
    Case(
        "smashed-return", "crash_smashed_return.c", SIGSEGV, SI_KERNEL, "non-canonical-address",
        None,
        ["a `ret`", "overflow+0x", "0x4141414141414141", "'AAAAAAAA'",
         "the return address was overwritten"],
        flags=("-O0", "-g", "-fno-stack-protector"),
        details={"return_address": 0x4141414141414141},
    ),
    Case(
        "abort", "crash_abort.c", SIGABRT, SI_TKILL, "abort", None,
        ["called abort()", "give_up", "no message"],
    ),
    Case(
        "assert", "crash_assert.c", SIGABRT, SI_TKILL, "assertion", None,
        ["assertion `answer == 42' failed", "in check()", "crash_assert.c:5"],
    ),
    Case(
        "divide-by-zero", "crash_divzero.c", SIGFPE, FPE_INTDIV, "divide-by-zero", None,
        ["integer division by zero", "divide+0x", "is 0"],
        details={"divisor": 0},
    ),
    Case(
        "trap", "crash_trap.c", SIGILL, ILL_ILLOPN, "illegal-instruction", None,
        ["ud2", "unreachable_state+0x", "__builtin_trap()"],
        details={"instruction": "0f 0b"},
    ),
    Case(
        "sigbus", "crash_sigbus.c", SIGBUS, BUS_ADRERR, "bus-error", PRINTED,
        ["read at", "offset 0x1000 of", "beyond the end of the file", "load"],
        args=("data",),
        details={"file_offset": 0x1000},
    ),
    Case(
        "cxx-std", "crash_exception.cpp", SIGABRT, SI_TKILL, "uncaught-exception", None,
        ["uncaught C++ exception of type std::runtime_error", "what(): disk full",
         "thrown from load_config"],
        args=("std",),
        details={"exception_type": "std::runtime_error", "exception_what": "disk full"},
    ),
    Case(
        "cxx-custom", "crash_exception.cpp", SIGABRT, SI_TKILL, "uncaught-exception", None,
        ["uncaught C++ exception of type app::ConfigError", "thrown from load_config"],
        args=("custom",),
        details={"exception_type": "app::ConfigError"},
    ),
    Case(
        "rust-panic", "crash_panic.rs", SIGABRT, SI_TKILL, "rust-panic", None,
        ["a Rust panic at", "crash_panic.rs:6:19", "invalid port number in configuration"],
        flags=("-C", "panic=abort"),
        details={"panic_message": "invalid port number in configuration"},
    ),
]  # fmt: skip
"""The expected address of a case is None when the signal carries none (SI_KERNEL, SI_TKILL)
or when it is not known in advance (the stack overflows: checked against gdb instead)."""


# -- making cores ------------------------------------------------------------------------


def _find_core(folder: Path) -> Path:
    pattern = Path("/proc/sys/kernel/core_pattern").read_text().strip()
    prefix = pattern.split("%", 1)[0] or "core"
    cores = [path for path in folder.iterdir() if path.name.startswith(prefix)]
    assert cores, f"no core in {folder} (core_pattern {pattern!r})"
    return max(cores, key=lambda path: path.stat().st_mtime)


@dataclass
class Crashed:
    exe: Path
    core: Path
    stdout: str
    target: Target
    crash: Crash


def crash_program(
    exe: Path,
    folder: Path,
    args: Sequence[str] = (),
    *,
    expect_signal: int,
    while_running: Callable[[subprocess.Popen[str]], None] | None = None,
) -> tuple[Path, str]:
    """Run ``exe`` in ``folder`` until it dies of a signal; return (core, its stdout)."""
    if not kernel_writes_cores_here():
        assert while_running is None, "a core from gdb needs no outside signal"
        core = folder / "core.gdb"
        result = subprocess.run(
            ["gdb", "-batch", "-nx", "-ex", "run", "-ex", f"gcore {core}", "--args",
             str(exe), *args],
            cwd=folder, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert core.exists(), result.stdout + result.stderr
        return core, result.stdout
    process = subprocess.Popen(
        [str(exe), *args],
        cwd=folder,
        preexec_fn=unlimited_core,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if while_running is not None:
        while_running(process)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == -expect_signal, (process.returncode, stderr)
    return _find_core(folder), stdout


def gdb_facts(exe: Path, core: Path) -> dict[str, int]:
    """gdb's pc and siginfo (si_signo, si_code, si_addr) of the core's crashing thread."""
    result = subprocess.run(
        ["gdb", "-batch", "-nx",
         "-ex", "printf \"pc=%lu\\n\", $pc",
         "-ex", "printf \"signo=%d\\n\", $_siginfo.si_signo",
         "-ex", "printf \"code=%d\\n\", $_siginfo.si_code",
         "-ex", "printf \"addr=%lu\\n\", $_siginfo._sifields._sigfault.si_addr",
         str(exe), str(core)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    facts = {key: int(value) for key, value in re.findall(r"^(\w+)=(-?\d+)$", result.stdout, re.M)}
    assert {"pc", "signo", "code"} <= facts.keys(), result.stdout + result.stderr
    return facts


def _build(case: Case, build_dir: Path) -> Path:
    if case.source.endswith(".rs"):
        return rustc(case.source, build_dir, case.flags)
    return compile_c(case.source, build_dir, case.flags)


def _printed_address(stdout: str) -> int:
    match = re.search(r"^\w+ (0x[0-9a-f]+)$", stdout, re.M)
    assert match, f"the program printed no address: {stdout!r}"
    return int(match.group(1), 16)


# -- the cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_crash_kind(case: Case, build_dir: Path, tmp_path: Path) -> None:
    exe = _build(case, build_dir)
    core, stdout = crash_program(exe, tmp_path, case.args, expect_signal=case.signal)
    with redhand.open_core(core) as target:
        crash = classify(target)
        assert crash is not None
        context = f"{crash.kind}: {crash.explanation}\n{dict(crash.details)}"
        assert crash.kind == case.kind, context
        assert crash.signal == case.signal, context
        assert crash.code == case.code, context
        expected = case.address
        if expected == PRINTED:
            expected = _printed_address(stdout) + case.offset
        if expected is not None:
            assert crash.address == expected, context
        if case.code in (SI_KERNEL, SI_TKILL):
            assert crash.address is None, context
        for words in case.words:
            assert words in crash.explanation, context
        for key, value in case.details.items():
            assert crash.details.get(key) == value, (key, context)
        assert crash.thread == target.threads[0].tid
        assert crash.to_json()["kind"] == case.kind

        oracle = gdb_facts(exe, core)
        assert crash.details["pc"] == oracle["pc"], context
        assert (crash.signal, crash.code) == (oracle["signo"], oracle["code"]), context
        if crash.address is not None:
            assert crash.address == oracle["addr"], context
        if case.kind == "stack-overflow":
            stack = crash.details["stack"]
            assert isinstance(stack, dict)
            assert stack["start"] - (1 << 20) <= oracle["addr"] < stack["start"] + 0x10000


@pytest.mark.skipif(
    not kernel_writes_cores_here(),
    reason="core_pattern is a pipe or a path elsewhere: a core at a signal sent from outside "
    "needs the kernel's own core in the working directory",
)
def test_killed_from_outside(build_dir: Path, tmp_path: Path) -> None:
    exe = compile_c("crash_kill.c", build_dir, ["-O1", "-g"])

    def kill_when_ready(process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        wait_until(
            lambda: thread_parked(process.pid, process.pid, {SYS_PAUSE, SYS_RT_SIGSUSPEND}),
            "the program to sleep in pause()",
        )
        os.kill(process.pid, signal.SIGSEGV)

    core, _ = crash_program(exe, tmp_path, expect_signal=SIGSEGV, while_running=kill_when_ready)
    with redhand.open_core(core) as target:
        crash = classify(target)
        assert crash is not None
        assert (crash.kind, crash.signal, crash.code, crash.address) == (
            "fatal-signal",
            SIGSEGV,
            SI_USER,
            None,
        ), crash
        assert f"sent by pid {os.getpid()} (uid {os.getuid()})" in crash.explanation, crash
        assert "pause" in crash.explanation, crash
        assert crash.details["sender_pid"] == os.getpid()


def test_explain_mapping(build_dir: Path, tmp_path: Path) -> None:
    """Words for addresses in a module, between mappings, and nowhere canonical."""
    exe = compile_c("crash_null_read.c", build_dir, ["-O1", "-g"])
    core, _ = crash_program(exe, tmp_path, expect_signal=SIGSEGV)
    with redhand.open_core(core) as target:
        pc = target.threads[0].registers.rip  # type: ignore[union-attr]
        text = explain_mapping(target, pc)
        assert re.fullmatch(r"in \.text of .*crash_null_read.* \(r-xp\)", text), text
        libc = next(m for m in target.mappings if m.path and "libc.so" in m.path and m.executable)
        text = explain_mapping(target, libc.start)
        assert text.startswith("in ") and f"{libc.path} (r-xp)" in text, text
        first = target.mappings[0]
        below_all = explain_mapping(target, first.start - 0x100000)
        assert below_all == f"nothing is mapped there: 1 MiB below {first.path}, the lowest mapping"
        assert "not a canonical address" in explain_mapping(target, 0x4141414141414141)
        gaps = [
            (below, above)
            for below, above in zip(target.mappings, target.mappings[1:], strict=False)
            if below.end < above.start
        ]
        below, _ = gaps[-1]
        text = explain_mapping(target, below.end)
        assert text.startswith("between "), text


# -- the instruction decoder, on bytes gcc and glibc emit ------------------------------------


@pytest.mark.parametrize(
    ("code", "kind", "access", "operand"),
    [
        ("48 8b 47 10", "other", "read", "[rdi + 0x10]"),  # mov 0x10(%rdi),%rax
        ("48 89 77 08", "other", "write", "[rdi + 0x8]"),  # mov %rsi,8(%rdi)
        ("c6 07 48", "other", "write", "[rdi]"),  # movb $0x48,(%rdi)
        ("41 ff 54 24 08", "call", "read", "[r12 + 0x8]"),  # call *0x8(%r12)
        ("48 8d 44 24 10", "other", None, "[rsp + 0x10]"),  # lea: touches no memory
        ("c5 fe 6f 06", "other", "read", "[rsi]"),  # vmovdqu (%rsi),%ymm0
        ("c5 fe 7f 07", "other", "write", "[rdi]"),  # vmovdqu %ymm0,(%rdi)
        ("62 e1 fe 28 7f 07", "other", "write", "[rdi]"),  # vmovdqu64 %ymm16,(%rdi)
        ("64 48 8b 04 25 28 00 00 00", "other", "read", "fs:[0x28]"),  # mov %fs:0x28,%rax
        ("48 8b 05 10 00 00 00", "other", "read", "[rip + 0x10]"),  # mov 0x10(%rip),%rax
        ("8b 04 8a", "other", "read", "[rdx + rcx*4]"),  # mov (%rdx,%rcx,4),%eax
        ("f3 ab", "string", "write", None),  # rep stos
        ("c3", "ret", "read", None),
        ("e8 00 00 00 00", "call", "write", None),  # pushes the return address
        ("55", "push", "write", None),
        ("0f 0b", "ud2", None, None),
        ("f7 fe", "div", None, None),  # idiv %esi
        ("f4", "privileged", None, None),  # hlt
    ],
)
def test_decode(code: str, kind: str, access: str | None, operand: str | None) -> None:
    from redhand.analysis.insn import decode

    instruction = decode(bytes.fromhex(code.replace(" ", "")) + b"\x90" * 8)
    assert instruction is not None
    assert (instruction.kind, instruction.access) == (kind, access), instruction
    assert (str(instruction.memory) if instruction.memory else None) == operand
    if kind != "privileged":
        assert instruction.length == len(bytes.fromhex(code.replace(" ", "")))


def test_decode_effective_address() -> None:
    from redhand.analysis.insn import decode
    from redhand.target.model import Registers

    registers = Registers(rdx=0x1000, rcx=3, rip=0x400000, fs_base=0x7F0000)
    for code, expected in [
        ("8b 04 8a", 0x100C),
        ("48 8b 05 10 00 00 00", 0x400000 + 7 + 0x10),
        ("64 48 8b 04 25 28 00 00 00", 0x7F0028),
    ]:
        instruction = decode(bytes.fromhex(code.replace(" ", "")))
        assert instruction is not None and instruction.memory is not None
        assert instruction.memory.address(registers, 0x400000, instruction.length) == expected
    assert decode(b"") is None
    assert decode(b"\x48") is None
