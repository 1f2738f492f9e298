"""redhand.capture.bpf against the real kernel: assembler, maps, a tracepoint program, a ring.

These tests need root (eBPF and perf events); nothing is mocked.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from redhand.capture import bpf
from redhand.capture.bpf import (
    DW,
    JEQ,
    JNE,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R10,
    RSH,
    Assembler,
    BpfError,
    W,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="eBPF needs root")

RING_SIZE = 4096 * 4
ROUNDS = 3
# A record takes 48 bytes of the ring (8 of header): one round's 200 fit in its 16 KiB, and
# the second round ends past its end, with a record cut in two by it (16384 % 48 = 16).
CALLS = 200
RECORD = struct.Struct("<Qqq16s")  # pid_tgid, getppid's return value, ktime, comm
FREE_TIMEOUT = 10.0  # the kernel frees programs after an RCU grace period


def insn(opcode: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)


# -- the assembler ------------------------------------------------------------------


def test_assemble_labels_and_ld_imm64() -> None:
    asm = Assembler()
    asm.jump_imm(JEQ, R1, 7, "end")  # slot 0
    asm.load_imm64(R2, 0x1122334455667788)  # slots 1, 2
    asm.load_map_fd(R3, 5)  # slots 3, 4
    asm.goto("end")  # slot 5
    asm.mov_reg(R0, R1)  # slot 6
    asm.label("end")
    asm.mov_imm(R0, 0)  # slot 7
    asm.exit()  # slot 8
    assert len(asm) == 9
    code = asm.assemble()
    assert len(code) == 9 * 8
    slots = [code[i : i + 8] for i in range(0, len(code), 8)]
    assert slots[0] == insn(0x15, R1, off=6, imm=7)
    assert slots[1] == insn(0x18, R2, imm=0x55667788)
    assert slots[2] == insn(0x00, imm=0x11223344)
    assert slots[3] == insn(0x18, R3, src=1, imm=5)
    assert slots[4] == insn(0x00)
    assert slots[5] == insn(0x05, off=1)
    assert slots[6] == insn(0xBF, R0, R1)
    assert slots[7] == insn(0xB7, R0)
    assert slots[8] == insn(0x95)


def test_assemble_backward_jump_and_atomics() -> None:
    asm = Assembler()
    asm.label("top")
    asm.atomic_add(DW, R0, R1, 8, fetch=True)
    asm.store_imm(W, R10, -4, -1)
    asm.jump_reg(JNE, R1, R2, "top")
    code = asm.assemble()
    assert code[:8] == insn(0xDB, R0, R1, off=8, imm=1)
    assert code[8:16] == insn(0x62, R10, off=-4, imm=-1)
    assert code[16:24] == insn(0x5D, R1, R2, off=-3)


def test_assemble_errors() -> None:
    asm = Assembler()
    asm.goto("nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        asm.assemble()
    asm = Assembler()
    asm.goto("far")
    for _ in range(1 << 15):
        asm.mov_imm(R0, 0)
    asm.label("far")
    asm.exit()
    with pytest.raises(ValueError, match="far"):
        asm.assemble()
    with pytest.raises(ValueError):
        asm.mov_imm(R0, 1 << 31)
    with pytest.raises(ValueError):
        asm.mov_reg(11, R0)
    with pytest.raises(ValueError):
        asm.atomic_add(2, R0, R1, 0)
    with pytest.raises(ValueError):
        asm.label("far")


# -- maps -----------------------------------------------------------------------------


def test_hash_map() -> None:
    fd = bpf.create_map(bpf.MAP_HASH, 4, 8, 16, name="rh_test_hash")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        key = struct.pack("<I", 42)
        assert bpf.map_lookup(fd, key, 8) is None
        bpf.map_update(fd, key, struct.pack("<Q", 7))
        assert bpf.map_lookup(fd, key, 8) == struct.pack("<Q", 7)
        with pytest.raises(BpfError) as caught:
            bpf.map_update(fd, key, struct.pack("<Q", 8), flags=1)  # BPF_NOEXIST
        assert caught.value.errno == 17  # EEXIST
        assert bpf.map_delete(fd, key)
        assert not bpf.map_delete(fd, key)
    finally:
        os.close(fd)


# -- tracepoints ------------------------------------------------------------------------


def test_tracepoints() -> None:
    root, _mounted = bpf.tracefs()
    assert os.path.isdir(os.path.join(root, "events"))
    assert bpf.tracepoint_exists("syscalls", "sys_exit_getppid")
    assert bpf.tracepoint_id("syscalls", "sys_exit_getppid") > 0
    assert not bpf.tracepoint_exists("syscalls", "sys_exit_redhand_nonesuch")
    with pytest.raises(BpfError, match="no tracepoint syscalls:sys_exit_redhand_nonesuch"):
        bpf.tracepoint_id("syscalls", "sys_exit_redhand_nonesuch")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_tracefs_mounts_it() -> None:
    """In a mount namespace of its own, with tracefs unmounted, tracefs() mounts it."""
    code = (
        "from redhand.capture import bpf\n"
        "root, mounted = bpf.tracefs()\n"
        "print(root, mounted, bpf.tracepoint_exists('syscalls', 'sys_exit_getppid'))\n"
    )
    script = (
        "umount -R /sys/kernel/debug 2>/dev/null\n"
        "while umount /sys/kernel/tracing 2>/dev/null; do :; done\n"
        "test ! -e /sys/kernel/tracing/events || exit 3\n"
        'exec "$0" -c "$1"\n'
    )
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [bpf.TRACEFS, "True", "True"]


# -- programs ---------------------------------------------------------------------------


def test_verifier_refusal() -> None:
    asm = Assembler()
    asm.mov_reg(R0, R2)  # r2 is not initialised at entry
    asm.exit()
    with pytest.raises(BpfError) as caught:
        bpf.load_program(asm.assemble(), name="rh_test_bad")
    assert caught.value.log
    assert caught.value.errno is not None
    assert "R2" in caught.value.log
    assert caught.value.exit_code == 14


def getppid_program(child: int, ring_fd: int, counter_fd: int) -> bytes:
    """At sys_exit_getppid of ``child``: a RECORD in the ring, and counter += 1."""
    asm = Assembler()
    asm.mov_reg(R6, R1)  # the tracepoint's context
    asm.call(bpf.GET_CURRENT_PID_TGID)
    asm.mov_reg(R7, R0)
    asm.alu_imm(RSH, R0, 32)
    asm.jump_imm(JNE, R0, child, "out")
    asm.load(DW, R1, R6, 16)  # ret
    asm.store(DW, R10, R7, -40)
    asm.store(DW, R10, R1, -32)
    asm.call(bpf.KTIME_GET_NS)
    asm.store(DW, R10, R0, -24)
    asm.mov_reg(R1, R10)
    asm.alu_imm(bpf.ADD, R1, -16)
    asm.mov_imm(R2, 16)
    asm.call(bpf.GET_CURRENT_COMM)
    asm.load_map_fd(R1, ring_fd)
    asm.mov_reg(R2, R10)
    asm.alu_imm(bpf.ADD, R2, -40)
    asm.mov_imm(R3, RECORD.size)
    asm.mov_imm(R4, 0)
    asm.call(bpf.RINGBUF_OUTPUT)
    asm.store_imm(W, R10, -44, 0)  # the counter's key
    asm.load_map_fd(R1, counter_fd)
    asm.mov_reg(R2, R10)
    asm.alu_imm(bpf.ADD, R2, -44)
    asm.call(bpf.MAP_LOOKUP_ELEM)
    asm.jump_imm(JEQ, R0, 0, "out")
    asm.mov_imm(R1, 1)
    asm.atomic_add(DW, R0, R1, 0)
    asm.label("out")
    asm.mov_imm(R0, 0)
    asm.exit()
    return asm.assemble()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A Python process that calls getppid() CALLS times for each line it reads, ROUNDS times.

    It runs on the last CPU it may use: the program, attached through a perf
    event on cpu 0 only, must see it anyway.
    """
    code = (
        "import os, sys\n"
        "os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})\n"
        f"for _ in range({ROUNDS}):\n"
        "    sys.stdin.readline()\n"
        f"    for _ in range({CALLS}):\n"
        "        os.getppid()\n"
        "    print('done', flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


def program_names() -> set[str]:
    return {name for _id, name in bpf.list_programs()}


def test_tracepoint_program(child: subprocess.Popen[bytes]) -> None:
    name = f"rh_t{os.getpid():x}"[:15]
    fds: list[int] = []
    try:
        ring_fd = bpf.create_map(bpf.MAP_RINGBUF, 0, 0, RING_SIZE, name="rh_test_ring")
        fds.append(ring_fd)
        counter_fd = bpf.create_map(bpf.MAP_ARRAY, 4, 8, 1, name="rh_test_count")
        fds.append(counter_fd)
        code = getppid_program(child.pid, ring_fd, counter_fd)
        prog_fd = bpf.load_program(code, name=name)
        fds.append(prog_fd)
        perf_fd = bpf.attach_tracepoint(prog_fd, bpf.tracepoint_id("syscalls", "sys_exit_getppid"))
        fds.append(perf_fd)
        for fd in fds:
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert name in program_names()

        with bpf.RingBuffer(ring_fd, RING_SIZE) as ring:
            assert child.stdin is not None and child.stdout is not None
            records: list[bytes] = []
            for rounds in range(1, ROUNDS + 1):
                # the ring holds one round's records, not all of them: read between rounds
                child.stdin.write(b"go\n")
                child.stdin.flush()
                assert child.stdout.readline() == b"done\n"
                with open(f"/proc/{child.pid}/comm", "rb") as file:
                    child_comm = file.read().rstrip(b"\n")
                deadline = time.monotonic() + 30
                while len(records) < rounds * CALLS and time.monotonic() < deadline:
                    if ring.wait(1.0):
                        records += ring.read()
                records += ring.read()
                assert len(records) == rounds * CALLS
            assert child.wait(timeout=60) == 0
        times = []
        for record in records:
            pid_tgid, ret, ktime, comm = RECORD.unpack(record)
            assert comm.rstrip(b"\0") == child_comm
            assert pid_tgid >> 32 == child.pid
            assert pid_tgid & 0xFFFFFFFF == child.pid
            assert ret == os.getpid()
            times.append(ktime)
        assert times == sorted(times)
        count = bpf.map_lookup(counter_fd, struct.pack("<I", 0), 8)
        assert count is not None
        assert struct.unpack("<Q", count)[0] == ROUNDS * CALLS
    finally:
        for fd in reversed(fds):
            os.close(fd)

    deadline = time.monotonic() + FREE_TIMEOUT
    while name in program_names():
        assert time.monotonic() < deadline, f"program {name} still loaded after its fds closed"
        time.sleep(0.05)
