"""Unwinding real stacks, with gdb as the oracle.

A C program is stopped by gdb at a breakpoint (deep in a recursion, inside
signal handlers, in PLT stubs, after a call through a null pointer, in a
thread); gdb's Python dumps the thread's registers, its stack bytes and its
own frames.  We unwind the copy with :class:`Unwinder` and must find the same
pc and sp in every frame.  The copies are then damaged on purpose to reach
every end reason.
"""

from __future__ import annotations

import random
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from unwind_helpers import Capture, ProcessImage, build_all, gdb_capture, missing_tools, run

from redhand.elf import ElfFile
from redhand.target.model import EndReason, Registers, Trust
from redhand.unwind import RawFrame, Unwinder, is_call_before

_missing = missing_tools(["gcc", "gdb", "objcopy"])
if _missing:
    pytest.fail(f"test prerequisites missing: {', '.join(_missing)}", pytrace=False)

TARGET_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

volatile int sink;

__attribute__((noipa)) void stop_here(int value) { sink = value; }

__attribute__((noipa)) int recurse(int n) {
    if (n == 0) { stop_here(n); return 1; }
    int r = recurse(n - 1);
    sink += r;
    return r + 1;
}

__attribute__((noipa)) void in_handler(int sig) { stop_here(sig); }
static void handler(int sig) { in_handler(sig); sink++; }
static void segv_handler(int sig) { in_handler(sig); _exit(3); }

__attribute__((noipa)) void raiser(void) { raise(SIGUSR1); sink++; }
__attribute__((noipa)) void faulter(void) { *(volatile int *)(long)sink = 1; sink++; }
__attribute__((noipa)) void bad_call(void) { void (*volatile f)(void) = 0; f(); sink++; }

/* A sigreturn trampoline without CFI (named as gdb expects one to be), and
   sigaction through the raw system call so that the kernel returns into it. */
void bare_restorer(void) __asm__("__restore_rt");
__asm__(".text\n.type __restore_rt,@function\n"
        "nop\n__restore_rt:\n\tmov $15, %rax\n\tsyscall\n");
/* The same trampoline right after a function with CFI: the FDE that covers the
   return address minus one is that function's, and does not apply. */
void adjacent_restorer(void) __asm__("adjacent_restorer");
__asm__(".text\n.type helper_before,@function\nhelper_before:\n.cfi_startproc\n\tret\n"
        ".cfi_endproc\n.type adjacent_restorer,@function\nadjacent_restorer:\n"
        "\tmov $15, %rax\n\tsyscall\n");
struct kernel_sigaction {
    void (*handler)(int); unsigned long flags; void (*restorer)(void); unsigned long mask;
};

__attribute__((noipa)) void signal_with(void (*restorer)(void)) {
    struct kernel_sigaction ksa = { handler, 0x04000000 /* SA_RESTORER */, restorer, 0 };
    syscall(SYS_rt_sigaction, SIGUSR2, &ksa, NULL, 8);
    syscall(SYS_kill, getpid(), SIGUSR2);
    sink++;
}

/* A leaf written in assembly without CFI and without a frame. */
long bare_leaf(long) __asm__("bare_leaf");
__asm__(".text\n.globl bare_leaf\n.type bare_leaf,@function\nbare_leaf:\n"
        "\tmov %rdi, %rax\n\tadd $1, %rax\n\tret\n");
__attribute__((noipa)) long call_leaf(long x) { return bare_leaf(x) * 3; }

static char altstack[65536] __attribute__((aligned(16)));

static void *thread_main(void *arg) { (void)arg; recurse(3); return NULL; }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "deep";
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    if (!strcmp(mode, "deep")) {
        recurse(argc > 2 ? atoi(argv[2]) : 5);
    } else if (!strcmp(mode, "signal")) {
        sigaction(SIGUSR1, &sa, NULL);
        raiser();
    } else if (!strcmp(mode, "altstack")) {
        stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack, .ss_flags = 0 };
        sigaltstack(&ss, NULL);
        sa.sa_flags = SA_ONSTACK;
        sigaction(SIGUSR1, &sa, NULL);
        raiser();
    } else if (!strcmp(mode, "segv")) {
        sa.sa_handler = segv_handler;
        sigaction(SIGSEGV, &sa, NULL);
        faulter();
    } else if (!strcmp(mode, "restorer")) {
        signal_with(bare_restorer);
    } else if (!strcmp(mode, "adjacent")) {  /* as long as "restorer": the same stack layout */
        signal_with(adjacent_restorer);
    } else if (!strcmp(mode, "leaf")) {
        sink = (int)call_leaf(sink);
    } else if (!strcmp(mode, "badcall")) {
        bad_call();
    } else if (!strcmp(mode, "thread")) {
        pthread_t t;
        pthread_create(&t, NULL, thread_main, NULL);
        pthread_join(t, NULL);
    } else if (!strcmp(mode, "plt")) {
        puts("plt");
    }
    return sink & 1;
}
"""

VARIANTS = {
    # PIE, optimised, no frame pointers: CFI everywhere
    "o2": ["-O2", "-fomit-frame-pointer", "-g"],
    "o0": ["-O0", "-g"],
    # frame pointers and no unwind tables: the program's own frames need the rbp chain
    "fp": [
        "-O0", "-fno-omit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
    ],
    # the program's CFI only in .debug_frame
    "debugframe": ["-O2", "-fomit-frame-pointer", "-g", "-fno-asynchronous-unwind-tables"],
    # fixed addresses and lazy binding, to stop inside PLT stubs and PLT0
    "nopie": ["-O2", "-no-pie", "-Wl,-z,lazy"],
    # static: no .eh_frame_hdr, so the CFI comes through the linear index of .eh_frame
    "static": ["-O2", "-static"],
}  # fmt: skip

SIGNALS = ["handle SIGUSR1 nostop noprint pass", "handle SIGUSR2 nostop noprint pass"]
BREAK = [*SIGNALS, "handle SIGSEGV nostop noprint pass", "break stop_here", "run"]


def _scenarios(programs: dict[str, Path]) -> dict[str, tuple[Path, list[str], list[str]]]:
    plt = ElfFile.open(str(programs["nopie"])).get_section_by_name(".plt")
    assert plt is not None
    plt0 = plt.sh_addr
    return {
        "o2-deep": (programs["o2"], ["deep"], BREAK),
        "o2-deep200": (programs["o2"], ["deep", "200"], BREAK),
        "o0-deep": (programs["o0"], ["deep"], BREAK),
        "fp-deep": (programs["fp"], ["deep"], BREAK),
        "debugframe-deep": (programs["debugframe"], ["deep"], BREAK),
        "o2-signal": (programs["o2"], ["signal"], BREAK),
        "fp-signal": (programs["fp"], ["signal"], BREAK),
        "o2-altstack": (programs["o2"], ["altstack"], BREAK),
        "o2-segv": (programs["o2"], ["segv"], BREAK),
        "o2-restorer": (programs["o2"], ["restorer"], BREAK),
        "o2-adjacent": (programs["o2"], ["adjacent"], BREAK),
        "o2-badcall": (programs["o2"], ["badcall"], ["run"]),  # stops at the SIGSEGV
        "o2-leaf": (programs["o2"], ["leaf"], ["break *bare_leaf+3", "run"]),
        "fp-leaf": (programs["fp"], ["leaf"], ["break *bare_leaf+3", "run"]),
        "o2-thread": (programs["o2"], ["thread"], BREAK),
        # the main thread, blocked in a futex wait inside pthread_join
        "o2-thread-main": (programs["o2"], ["thread"], [*BREAK, "thread 1"]),
        "static-deep": (programs["static"], ["deep"], BREAK),
        "plt-entry": (programs["nopie"], ["plt"], ["break *'puts@plt'", "run"]),
        "plt-push": (programs["nopie"], ["plt"], ["break *'puts@plt'+11", "run"]),
        "plt0": (programs["nopie"], ["plt"], [f"break *{plt0:#x}", "run"]),
        "plt0-push": (programs["nopie"], ["plt"], [f"break *{plt0 + 6:#x}", "run"]),
    }


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unwind")
    source = root / "target.c"
    source.write_text(TARGET_SOURCE)
    out = {name: root / f"target-{name}" for name in VARIANTS}
    build_all(
        [
            ["gcc", *flags, "-pthread", "-o", str(out[name]), str(source)]
            for name, flags in VARIANTS.items()
        ]
    )
    return out


@pytest.fixture(scope="module")
def captures(programs: dict[str, Path]) -> dict[str, Capture]:
    """Every scenario run under gdb once, in parallel."""
    scenarios = _scenarios(programs)
    root = programs["o2"].parent

    def one(name: str) -> Capture:
        program, args, commands = scenarios[name]
        directory = root / name
        directory.mkdir(exist_ok=True)
        return gdb_capture(program, commands, directory / "capture.json", args=args)

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(one, name) for name in scenarios}
        return {name: future.result() for name, future in futures.items()}


def _unwind(
    capture: Capture, *, max_frames: int = 256, **kwargs: object
) -> tuple[list[RawFrame], EndReason, str | None, ProcessImage]:
    image = ProcessImage(capture, **kwargs)  # type: ignore[arg-type]
    unwinder = Unwinder(image.memory, image.find_module, image.is_executable)
    frames, end, detail = unwinder.unwind(capture.registers, max_frames=max_frames)
    return frames, end, detail, image


def _gdb_frames(capture: Capture) -> list[tuple[int, int]]:
    """gdb's frames as (pc, sp), without its inlined and tail-call frames."""
    return [(int(f["pc"]), int(f["sp"])) for f in capture.frames if not f["virtual"]]  # type: ignore[call-overload]


SCENARIOS = [
    "o2-deep", "o2-deep200", "o0-deep", "fp-deep", "debugframe-deep", "o2-signal",
    "fp-signal", "o2-altstack", "o2-segv", "o2-restorer", "o2-badcall", "o2-thread",
    "o2-thread-main", "static-deep", "o2-leaf", "fp-leaf",
    "plt-entry", "plt-push", "plt0", "plt0-push",
]  # fmt: skip


@pytest.mark.parametrize("name", SCENARIOS)
def test_frames_match_gdb(captures: dict[str, Capture], name: str) -> None:
    capture = captures[name]
    frames, end, detail, _ = _unwind(capture)
    mine = [(frame.pc, frame.sp) for frame in frames]
    expected = _gdb_frames(capture)
    assert mine == expected, "\n".join(
        f"{i:3} mine {m[0]:#x}/{m[1]:#x}  gdb {g[0]:#x}/{g[1]:#x}"
        for i, (m, g) in enumerate(zip(mine + [(0, 0)] * 9, expected + [(0, 0)] * 9, strict=False))
    )
    assert end is EndReason.OUTERMOST, detail
    assert frames[0].trust is Trust.CONTEXT and frames[0].signal_frame
    assert all(not f.signal_frame or f.trust is Trust.CONTEXT for f in frames)


def _names(capture: Capture) -> list[str | None]:
    return [f["name"] for f in capture.frames if not f["virtual"]]  # type: ignore[misc]


@pytest.mark.parametrize(
    "name", ["o2-signal", "o2-altstack", "o2-segv", "o2-restorer", "fp-signal"]
)
def test_signal_frames(captures: dict[str, Capture], name: str) -> None:
    """Through the trampoline into the interrupted code: exact pc, trust CONTEXT."""
    capture = captures[name]
    frames, _, _, _ = _unwind(capture)
    names = _names(capture)
    trampoline = names.index("__restore_rt")
    interrupted = frames[trampoline + 1]
    assert interrupted.trust is Trust.CONTEXT and interrupted.signal_frame
    assert [f.signal_frame for f in frames].count(True) == 2
    # The trampoline's own pc is exact: it is where the handler returns, not after a call.
    assert [f.trampoline for f in frames].count(True) == 1
    assert frames[trampoline].trampoline and not frames[trampoline].signal_frame
    assert frames[trampoline].lookup_pc == frames[trampoline].pc
    assert frames[trampoline - 1].lookup_pc == frames[trampoline - 1].pc - 1
    if name == "o2-segv":
        assert names[trampoline + 1] == "faulter"  # the faulting instruction itself
    if name == "o2-altstack":
        assert abs(frames[trampoline].sp - interrupted.sp) > 1 << 20  # another stack


def test_trampoline_right_after_a_function(captures: dict[str, Capture]) -> None:
    """gdb takes the preceding function's FDE here (and fails); the bytes tell us better.

    The oracle is gdb's unwind of the same program through the same trampoline
    placed where no FDE covers the byte before it ("o2-restorer").
    """
    reference = _gdb_frames(captures["o2-restorer"])
    names = _names(captures["o2-restorer"])
    frames, end, detail, _ = _unwind(captures["o2-adjacent"])
    assert end is EndReason.OUTERMOST, detail
    assert [f.sp for f in frames] == [sp for _, sp in reference]
    trampoline = names.index("__restore_rt")
    main = names.index("main")
    for index, (frame, (pc, _)) in enumerate(zip(frames, reference, strict=True)):
        if index not in (trampoline, main):  # the trampolines and main's call sites differ
            assert frame.pc == pc, index
    assert frames[trampoline + 1].trust is Trust.CONTEXT and frames[trampoline + 1].signal_frame


def test_trust_by_strategy(captures: dict[str, Capture]) -> None:
    fp_frames, _, _, _ = _unwind(captures["fp-deep"])
    names = _names(captures["fp-deep"])
    by_name = {name: frame.trust for name, frame in zip(names[1:], fp_frames[1:], strict=True)}
    assert by_name["recurse"] is Trust.FP  # no CFI in the program: the rbp chain
    assert by_name["__libc_start_main_impl"] is Trust.CFI
    o2_frames, _, _, _ = _unwind(captures["o2-deep"])
    assert all(frame.trust is Trust.CFI for frame in o2_frames[1:])
    assert all(frame.cfa is not None for frame in o2_frames[:-1])
    bad, _, _, _ = _unwind(captures["o2-badcall"])
    assert bad[0].pc == 0 and bad[1].trust is Trust.SCAN  # the word at sp after the bad call
    for name in ("o2-leaf", "fp-leaf"):
        leaf, _, _, _ = _unwind(captures[name])
        assert leaf[1].trust is Trust.SCAN  # a stub without CFI or frame: the word at sp


def test_debug_frame_in_separate_file(
    captures: dict[str, Capture], programs: dict[str, Path], tmp_path: Path
) -> None:
    """The program's CFI only in a separate debug file: unwinding needs ``extra``."""
    program = programs["debugframe"]
    debug = tmp_path / "target.debug"
    stripped = tmp_path / "target.stripped"
    run(["objcopy", "--only-keep-debug", str(program), str(debug)])
    run(["objcopy", "--strip-debug", str(program), str(stripped)])
    capture = captures["debugframe-deep"]
    expected = _gdb_frames(capture)
    without, end, _, _ = _unwind(capture, files={str(program): (ElfFile.open(str(stripped)), ())})
    assert [(f.pc, f.sp) for f in without] != expected
    files = {str(program): (ElfFile.open(str(stripped)), [ElfFile.open(str(debug))])}
    frames, end, _, _ = _unwind(capture, files=files)
    assert [(f.pc, f.sp) for f in frames] == expected
    assert end is EndReason.OUTERMOST


# -- end reasons on damaged copies --------------------------------------------------------------


def _patched(capture: Capture, address: int, value: int) -> list[tuple[int, bytes]]:
    regions = []
    for start, data in capture.regions:
        if start <= address < start + len(data):
            buf = bytearray(data)
            struct.pack_into("<Q", buf, address - start, value)
            data = bytes(buf)
        regions.append((start, data))
    return regions


def test_limit(captures: dict[str, Capture]) -> None:
    frames, end, detail, _ = _unwind(captures["o2-deep200"], max_frames=50)
    assert len(frames) == 50 and end is EndReason.LIMIT and detail and "50" in detail
    full, end, _, _ = _unwind(captures["o2-deep200"], max_frames=1000)
    assert len(full) > 200 and end is EndReason.OUTERMOST
    exact, end, _, _ = _unwind(captures["o2-deep200"], max_frames=len(full))
    assert len(exact) == len(full) and end is EndReason.OUTERMOST


def test_unreadable_stack(captures: dict[str, Capture]) -> None:
    capture = captures["o2-deep"]
    start, data = capture.regions[0]
    frames, end, detail, _ = _unwind(capture, regions=[(start, data[:200])])
    assert end is EndReason.UNREADABLE_MEMORY, detail
    assert 1 <= len(frames) < len(_gdb_frames(capture))


def test_bad_return_address(captures: dict[str, Capture]) -> None:
    capture = captures["o2-deep"]
    good, _, _, _ = _unwind(capture)
    slot = good[3].sp - 8  # where frame 2 saved its return address
    frames, end, detail, _ = _unwind(capture, regions=_patched(capture, slot, 0x1234))
    assert end is EndReason.BAD_PC and detail is not None and "0x1234" in detail
    assert len(frames) == 3


def test_loop(captures: dict[str, Capture]) -> None:
    """A saved rbp overwritten with a low value: the next CFA (rbp + 16) is below sp."""
    capture = captures["o0-deep"]
    good, _, _, _ = _unwind(capture)
    saved_rbp = good[3].sp - 16  # frame 2 saved its caller's rbp at its CFA - 16
    regions = _patched(capture, saved_rbp, good[3].sp - 64)
    frames, end, detail, _ = _unwind(capture, regions=regions)
    assert end is EndReason.LOOP, detail
    assert len(frames) == 4


def test_frame_pointer_chain_end(captures: dict[str, Capture]) -> None:
    capture = captures["fp-deep"]
    good, _, _, _ = _unwind(capture)
    rbp = good[3].sp - 16
    frames, end, detail, _ = _unwind(capture, regions=_patched(capture, rbp + 8, 0))
    assert end is EndReason.OUTERMOST and len(frames) == 3, detail


def test_no_unwind_info(captures: dict[str, Capture]) -> None:
    capture = replace(captures["fp-deep"], registers=captures["fp-deep"].registers.replace(rbp=0))
    frames, end, detail, _ = _unwind(capture)
    assert end is EndReason.NO_UNWIND_INFO and len(frames) == 1
    assert detail is not None and "rbp" in detail


def test_unknown_pc(captures: dict[str, Capture]) -> None:
    """A pc in no executable mapping, and no return address at sp to recover from."""
    registers = Registers(rip=0xDEAD0000, rsp=0x10)
    frames, end, detail, _ = _unwind(replace(captures["o2-deep"], registers=registers))
    assert len(frames) == 1 and end is EndReason.BAD_PC, detail
    assert detail is not None and "0xdead0000" in detail


def test_damaged_stacks_never_raise(captures: dict[str, Capture]) -> None:
    """Random words of real stacks overwritten: every trace still ends with a reason."""
    rng = random.Random(99)
    names = ["o2-deep", "fp-deep", "o2-signal", "o2-altstack", "plt0"]
    started = time.perf_counter()
    reasons = set()
    for case in range(200):
        capture = captures[names[case % len(names)]]
        regions = []
        for start, data in capture.regions:
            buf = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                offset = rng.randrange(0, min(len(buf), 1024) - 8) & ~7
                value = rng.choice(
                    [0, 1, rng.getrandbits(64), capture.registers.rsp + rng.randrange(-64, 4096)]
                )
                struct.pack_into("<Q", buf, offset, value)
            regions.append((start, bytes(buf)))
        frames, end, _, _ = _unwind(capture, regions=regions)
        assert frames and isinstance(end, EndReason)
        reasons.add(end)
    assert time.perf_counter() - started < 300  # a bound against a runaway loop
    assert len(reasons) >= 3


# -- cost ------------------------------------------------------------------------------------------


def test_per_frame_cost(captures: dict[str, Capture]) -> None:
    capture = captures["o2-deep200"]
    image = ProcessImage(capture)
    warm = Unwinder(image.memory, image.find_module, image.is_executable)
    frames, _, _ = warm.unwind(capture.registers, max_frames=1000)  # parses the FDEs once
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        # A fresh unwinder per round, as for each capture; the modules' CFI stays cached.
        unwinder = Unwinder(image.memory, image.find_module, image.is_executable)
        unwinder.unwind(capture.registers, max_frames=1000)
    fresh = (time.perf_counter() - started) / rounds / len(frames)
    started = time.perf_counter()
    for _ in range(rounds):
        warm.unwind(capture.registers, max_frames=1000)  # threads of one capture
    shared = (time.perf_counter() - started) / rounds / len(frames)
    print(f"unwind: {fresh * 1e6:.1f} us/frame (new unwinder), {shared * 1e6:.1f} (shared)")
    assert shared < 100e-6 and fresh < 200e-6


# -- call-site recognition -------------------------------------------------------------------------

CALLS = [
    ("call target", True),
    ("call *%rax", True),
    ("call *%r11", True),
    ("call *(%rax)", True),
    ("call *(%r12)", True),
    ("call *8(%rax)", True),
    ("call *0x100(%rax)", True),
    ("call *(%rax,%rbx,8)", True),
    ("call *8(%rsp)", True),
    ("call *0x200(%rsp)", True),
    ("call *0x12345678(,%rax,8)", True),
    ("call *0x10(%rip)", True),
    ("call *%fs:0x28", True),
    ("jmp *%rax", False),
    ("jmp target", False),
    ("push 8(%rax)", False),
    ("mov %rax, %rbx", False),
    ("ret", False),
    ("add $0x12345678, %eax", False),
    ("nop", False),
]


def test_call_sites(tmp_path: Path) -> None:
    """Each instruction assembled alone: is it a call, judged from the bytes before its end?"""
    lines = ["target:"]
    for index, (text, _) in enumerate(CALLS):
        lines += [f'.section .text.{index},"ax",@progbits', f"\t{text}"]
    source = tmp_path / "calls.s"
    source.write_text("\n".join(lines) + "\n")
    run(["as", "-o", str(tmp_path / "calls.o"), str(source)])
    elf = ElfFile.open(str(tmp_path / "calls.o"))
    for index, (text, expected) in enumerate(CALLS):
        section = elf.get_section_by_name(f".text.{index}")
        assert section is not None
        code = section.data()
        # What came before the instruction must not matter (but must not look like a call).
        for before in (b"", b"\x90" * 8, b"\x48\x8b\x45\xf8" * 2):
            assert is_call_before(before + code) is expected, (text, code.hex())
