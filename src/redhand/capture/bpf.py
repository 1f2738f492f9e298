"""eBPF from Python: an assembler, maps, program loading, tracepoints, ring buffers.

Everything goes through two system calls made with ctypes on libc:
``bpf(2)`` (321 on x86_64) and ``perf_event_open(2)`` (298); no libbpf, no
compiler, no kernel headers.

Kernel facts this module relies on:

- ``bpf(2)`` takes a ``union bpf_attr``; each command reads its own struct at
  the start of the union.  The buffer passed here is 128 zeroed bytes: the
  kernel copies what it knows of a shorter buffer and insists that the bytes
  past the fields it knows are zero.  Every fd it returns (maps, programs,
  perf events opened with PERF_FLAG_FD_CLOEXEC) is already close-on-exec.
- A program of type TRACEPOINT is attached by opening a perf event for the
  tracepoint and handing it the program (PERF_EVENT_IOC_SET_BPF).  The
  program is then stored in the tracepoint's own prog array, shared by all
  CPUs, and runs wherever the tracepoint fires: one perf event, on cpu 0,
  is enough.  Attaching the same program through a perf event per CPU fails
  with EEXIST, since it is already in that array.  Closing the perf fd
  detaches it; the program is freed when its last fd goes (the kernel frees
  it a little later, after an RCU grace period).
- The verifier answers EACCES or EINVAL for a program it refuses; EPERM (or
  EACCES with no verifier log) means the caller may not use eBPF at all.
- A BPF_MAP_TYPE_RINGBUF map is read by mmap: the consumer page (read-write,
  offset 0), then the producer page and the data area (read-only, offset
  one page).  The kernel maps the data area twice in a row, so a record
  that wraps around the end of the ring is contiguous in memory.
- tracefs may not be mounted; :func:`tracefs` mounts it at its standard place.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import mmap
import os
import re
import select
import struct
from types import TracebackType

from redhand.errors import RedhandError

# -- errors ------------------------------------------------------------------

_LOG_TAIL_LINES = 40


class BpfError(RedhandError):
    """A bpf(2) or perf_event_open(2) call failed, or the verifier refused a program.

    ``errno`` is the failing call's errno (None when no call failed);
    ``log`` is the verifier's whole log (empty when there is none).  The
    hint ends with the log's last lines.
    """

    exit_code = 14

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        log: str = "",
        hint: str | None = None,
    ) -> None:
        tail = "\n".join(log.rstrip("\n").splitlines()[-_LOG_TAIL_LINES:])
        if tail:
            hint = f"{hint}; verifier log:\n{tail}" if hint else f"verifier log:\n{tail}"
        super().__init__(message, hint=hint)
        self.errno = errno
        self.log = log


_PRIVILEGE_HINT = (
    "eBPF needs root (CAP_BPF and CAP_PERFMON); kernel.unprivileged_bpf_disabled "
    "or kernel lockdown may refuse it even so"
)


def _error(what: str, err: int) -> BpfError:
    reason = f"{os.strerror(err)} ({_errno.errorcode.get(err, err)})"
    if err in (_errno.EPERM, _errno.EACCES):
        return BpfError(f"{what}: not allowed: {reason}", errno=err, hint=_PRIVILEGE_HINT)
    return BpfError(f"{what} failed: {reason}", errno=err)


# -- system calls --------------------------------------------------------------

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.restype = ctypes.c_int
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]

SYS_BPF = 321
SYS_PERF_EVENT_OPEN = 298


def _syscall(number: int, *args: int) -> int:
    """A raw system call; -errno on failure."""
    result = int(_libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args)))
    return -ctypes.get_errno() if result == -1 else result


_ATTR_SIZE = 128

# bpf(2) commands
BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15


def _raw_bpf(cmd: int, attr: bytearray) -> int:
    """bpf(cmd, attr), -errno on failure; the kernel may write into ``attr``."""
    buffer = (ctypes.c_char * len(attr)).from_buffer(attr)
    return _syscall(SYS_BPF, cmd, ctypes.addressof(buffer), len(attr))


def _bpf(cmd: int, attr: bytearray, what: str) -> int:
    """bpf(cmd, attr): the result, or BpfError."""
    result = _raw_bpf(cmd, attr)
    if result < 0:
        raise _error(what, -result)
    return result


def _attr(layout: str, *values: int | bytes) -> bytearray:
    """A zeroed bpf_attr starting with ``struct.pack(layout, *values)``."""
    attr = bytearray(_ATTR_SIZE)
    struct.pack_into(layout, attr, 0, *values)
    return attr


_NAME_CHARS = re.compile(r"[A-Za-z0-9_.]*")


def _object_name(name: str) -> bytes:
    """A map or program name as the kernel accepts it: up to 15 of [A-Za-z0-9_.]."""
    if not _NAME_CHARS.fullmatch(name):
        raise ValueError(f"BPF object name {name!r}: only letters, digits, '_' and '.'")
    return name[:15].encode()


# -- the instruction set -------------------------------------------------------

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

B, H, W, DW = 1, 2, 4, 8
_SIZE_CODE = {W: 0x00, H: 0x08, B: 0x10, DW: 0x18}

# instruction classes, modes, sources
_LD, _LDX, _ST, _STX, _JMP, _ALU64 = 0, 1, 2, 3, 5, 7
_IMM, _MEM, _ATOMIC = 0x00, 0x60, 0xC0
_K, _X = 0x00, 0x08

ADD, SUB, MUL, DIV, OR, AND, LSH, RSH = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
NEG, MOD, XOR, MOV, ARSH = 0x80, 0x90, 0xA0, 0xB0, 0xC0

JA, JEQ, JGT, JGE, JSET, JNE, JSGT, JSGE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
_CALL, _EXIT = 0x80, 0x90
JLT, JLE, JSLT, JSLE = 0xA0, 0xB0, 0xC0, 0xD0

_ATOMIC_ADD, _FETCH = 0x00, 0x01
BPF_PSEUDO_MAP_FD = 1

# helper functions
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
KTIME_GET_NS = 5
GET_CURRENT_PID_TGID = 14
GET_CURRENT_COMM = 16
SEND_SIGNAL = 109
SEND_SIGNAL_THREAD = 117
RINGBUF_OUTPUT = 130
GET_PRANDOM_U32 = 7
PROBE_READ_USER = 112
RINGBUF_RESERVE = 131
RINGBUF_SUBMIT = 132
RINGBUF_DISCARD = 133
GET_ATTACH_COOKIE = 174

_S16 = range(-(1 << 15), 1 << 15)
_S32 = range(-(1 << 31), 1 << 31)


def _check_range(value: int, allowed: range, what: str) -> int:
    # Compared, not ``in``: a range tests membership in constant time only for an exact
    # int; for an IntEnum (signal.SIGSTOP) it walks the range, 2**32 values.
    value = int(value)
    if not allowed.start <= value < allowed.stop:
        raise ValueError(f"{what} {value} out of range [{allowed.start}, {allowed.stop - 1}]")
    return value


def _signed32(value: int) -> int:
    return value - (1 << 32) if value & (1 << 31) else value


class Assembler:
    """Builds a program one instruction at a time; jumps name labels.

    ``len(asm)`` is the number of 8-byte slots so far (an LD_IMM64 takes two),
    which is also the index of the next instruction.
    """

    def __init__(self) -> None:
        # (opcode, dst, src, off, imm, label the offset is taken from)
        self._slots: list[tuple[int, int, int, int, int, str | None]] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def _emit(
        self,
        opcode: int,
        dst: int = 0,
        src: int = 0,
        off: int = 0,
        imm: int = 0,
        label: str | None = None,
    ) -> None:
        for reg in (dst, src):
            _check_range(reg, range(11), "register")
        _check_range(off, _S16, "offset")
        _check_range(imm, _S32, "immediate")
        self._slots.append((opcode, dst, src, off, imm, label))

    @staticmethod
    def _size(size: int) -> int:
        if size not in _SIZE_CODE:
            raise ValueError(f"access size {size}: not one of 1, 2, 4, 8")
        return _SIZE_CODE[size]

    # ALU (64-bit)
    def alu_imm(self, op: int, dst: int, imm: int) -> None:
        self._emit(_ALU64 | op | _K, dst, imm=imm)

    def alu_reg(self, op: int, dst: int, src: int) -> None:
        self._emit(_ALU64 | op | _X, dst, src)

    def mov_imm(self, dst: int, imm: int) -> None:
        self.alu_imm(MOV, dst, imm)

    def mov_reg(self, dst: int, src: int) -> None:
        self.alu_reg(MOV, dst, src)

    # memory
    def load(self, size: int, dst: int, src: int, off: int) -> None:
        """dst = *(size *)(src + off)"""
        self._emit(_LDX | _MEM | self._size(size), dst, src, off)

    def store(self, size: int, dst: int, src: int, off: int) -> None:
        """*(size *)(dst + off) = src"""
        self._emit(_STX | _MEM | self._size(size), dst, src, off)

    def store_imm(self, size: int, dst: int, off: int, imm: int) -> None:
        """*(size *)(dst + off) = imm"""
        self._emit(_ST | _MEM | self._size(size), dst, off=off, imm=imm)

    def atomic_add(self, size: int, dst: int, src: int, off: int, fetch: bool = False) -> None:
        """lock *(size *)(dst + off) += src; with ``fetch``, src gets the old value."""
        if size not in (W, DW):
            raise ValueError(f"atomic access size {size}: only 4 or 8")
        imm = _ATOMIC_ADD | (_FETCH if fetch else 0)
        self._emit(_STX | _ATOMIC | self._size(size), dst, src, off, imm)

    def _ld_imm64(self, dst: int, src: int, value: int) -> None:
        value &= (1 << 64) - 1
        self._emit(_LD | _IMM | _SIZE_CODE[DW], dst, src, imm=_signed32(value & 0xFFFFFFFF))
        self._emit(0, imm=_signed32(value >> 32))

    def load_imm64(self, dst: int, value: int) -> None:
        """dst = value (any 64-bit value; two slots)."""
        _check_range(value, range(-(1 << 63), 1 << 64), "64-bit immediate")
        self._ld_imm64(dst, 0, value)

    def load_map_fd(self, dst: int, fd: int) -> None:
        """dst = the map of ``fd`` (the kernel puts its address there; two slots)."""
        self._ld_imm64(dst, BPF_PSEUDO_MAP_FD, fd)

    # control flow
    def label(self, name: str) -> None:
        """Name the next instruction."""
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._slots)

    def jump_imm(self, op: int, dst: int, imm: int, label: str) -> None:
        self._emit(_JMP | op | _K, dst, imm=imm, label=label)

    def jump_reg(self, op: int, dst: int, src: int, label: str) -> None:
        self._emit(_JMP | op | _X, dst, src, label=label)

    def goto(self, label: str) -> None:
        self._emit(_JMP | JA, label=label)

    def call(self, helper: int) -> None:
        self._emit(_JMP | _CALL, imm=helper)

    def exit(self) -> None:
        self._emit(_JMP | _EXIT)

    def assemble(self) -> bytes:
        """The program's bytes, labels resolved (ValueError for unknown or too far ones)."""
        out = bytearray()
        for index, (opcode, dst, src, off, imm, label) in enumerate(self._slots):
            if label is not None:
                if label not in self._labels:
                    raise ValueError(f"unknown label {label!r}")
                off = self._labels[label] - (index + 1)
                _check_range(off, _S16, f"jump to {label!r}: offset")
            out += struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)
        return bytes(out)


# -- maps ------------------------------------------------------------------------

MAP_HASH = 1
MAP_ARRAY = 2
MAP_PERCPU_ARRAY = 6
MAP_LRU_HASH = 9
MAP_RINGBUF = 27


def create_map(
    map_type: int, key_size: int, value_size: int, max_entries: int, *, name: str = ""
) -> int:
    """BPF_MAP_CREATE: the new map's fd."""
    # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd,
    # numa_node, map_name[16]
    attr = _attr("<7I16s", map_type, key_size, value_size, max_entries, 0, 0, 0, _object_name(name))
    return _bpf(BPF_MAP_CREATE, attr, f"creating BPF map {name or map_type!r}")


def _elem_attr(fd: int, key: ctypes.Array[ctypes.c_char], value: int, flags: int) -> bytearray:
    # map_fd, pad, key, value (or next_key), flags
    return _attr("<IIQQQ", fd, 0, ctypes.addressof(key), value, flags)


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """BPF_MAP_UPDATE_ELEM (flags: 0 any, 1 only new, 2 only existing)."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value, len(value))
    attr = _elem_attr(fd, key_buf, ctypes.addressof(value_buf), flags)
    _bpf(BPF_MAP_UPDATE_ELEM, attr, f"updating BPF map fd {fd}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """BPF_MAP_LOOKUP_ELEM: the value, or None when the key is not there."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    value_buf = ctypes.create_string_buffer(value_size)
    attr = _elem_attr(fd, key_buf, ctypes.addressof(value_buf), 0)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, attr, f"looking up BPF map fd {fd}")
    except BpfError as error:
        if error.errno == _errno.ENOENT:
            return None
        raise
    return value_buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    """BPF_MAP_DELETE_ELEM: False when the key was not there."""
    key_buf = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _elem_attr(fd, key_buf, 0, 0), f"deleting from BPF map fd {fd}")
    except BpfError as error:
        if error.errno == _errno.ENOENT:
            return False
        raise
    return True


# -- programs ----------------------------------------------------------------------

PROG_KPROBE = 2
PROG_TRACEPOINT = 5
_LOG_SIZE = 1 << 20


def load_program(
    insns: bytes,
    *,
    prog_type: int = PROG_TRACEPOINT,
    name: str = "",
    license: str = "GPL",
    expected_attach_type: int = 0,
) -> int:
    """BPF_PROG_LOAD: the program's fd, or BpfError with the verifier's log."""
    if not insns or len(insns) % 8:
        raise ValueError(f"a BPF program is a non-empty multiple of 8 bytes, not {len(insns)}")
    code = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(license.encode())
    prog_name = _object_name(name)
    what = f"loading BPF program {name!r}" if name else "loading a BPF program"

    def attempt(log_level: int, log_size: int, log_buf: int) -> int:
        # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf,
        # kern_version, prog_flags, prog_name[16], prog_ifindex, expected_attach_type
        layout = "<IIQQIIQII16sII"
        code_address, license_address = ctypes.addressof(code), ctypes.addressof(license_buf)
        attr = _attr(layout, prog_type, len(insns) // 8, code_address, license_address,
                     log_level, log_size, log_buf, 0, 0, prog_name, 0,
                     expected_attach_type)  # fmt: skip
        return _raw_bpf(BPF_PROG_LOAD, attr)

    fd = attempt(0, 0, 0)
    if fd >= 0:
        return fd
    log_buf = ctypes.create_string_buffer(_LOG_SIZE)
    fd = attempt(1, _LOG_SIZE, ctypes.addressof(log_buf))
    if fd >= 0:  # the kernel changed its mind: take the program
        return fd
    err = -fd
    log = log_buf.value.decode(errors="replace")
    if log:
        reason = f"{os.strerror(err)} ({_errno.errorcode.get(err, err)})"
        raise BpfError(f"{what}: the BPF verifier refused it: {reason}", errno=err, log=log)
    raise _error(what, err)


# -- tracefs and tracepoints --------------------------------------------------------

TRACEFS = "/sys/kernel/tracing"
_OLD_TRACEFS = "/sys/kernel/debug/tracing"


def tracefs() -> tuple[str, bool]:
    """The tracefs root and whether this call mounted it (at /sys/kernel/tracing)."""
    for root in (TRACEFS, _OLD_TRACEFS):
        if os.path.isdir(os.path.join(root, "events")):
            return root, False
    if _libc.mount(b"nodev", TRACEFS.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise BpfError(
            f"tracefs is not mounted and mounting it at {TRACEFS} failed: {os.strerror(err)}",
            errno=err,
            hint=f"mount it yourself as root: mount -t tracefs nodev {TRACEFS}",
        )
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        raise BpfError(f"{TRACEFS} has no events directory after mounting tracefs")
    return TRACEFS, True


def _tracepoint_id_path(category: str, name: str) -> str:
    for part in (category, name):
        if not part or "/" in part or part in (".", ".."):
            raise ValueError(f"bad tracepoint name {category}:{name}")
    return os.path.join(tracefs()[0], "events", category, name, "id")


def tracepoint_exists(category: str, name: str) -> bool:
    return os.path.exists(_tracepoint_id_path(category, name))


def tracepoint_id(category: str, name: str) -> int:
    """The id of a tracepoint (perf_event_attr.config for PERF_TYPE_TRACEPOINT)."""
    path = _tracepoint_id_path(category, name)
    try:
        with open(path) as file:
            return int(file.read())
    except FileNotFoundError:
        raise BpfError(
            f"no tracepoint {category}:{name} in this kernel",
            errno=_errno.ENOENT,
            hint=f"{path} does not exist",
        ) from None
    except OSError as error:
        raise BpfError(f"cannot read {path}: {error.strerror}", errno=error.errno) from None


# -- perf events ---------------------------------------------------------------------

PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 8
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_ATTR_SIZE = 128
_PERF_DISABLED = 1  # bit 0 of the flag bits


def attach_tracepoint(prog_fd: int, tracepoint: int) -> int:
    """Run a TRACEPOINT program on every hit of tracepoint id ``tracepoint``.

    Returns the perf event's fd: closing it detaches the program.
    """
    # type, size, config, sample_period, sample_type, read_format, flags, wakeup_events
    attr = bytearray(_PERF_ATTR_SIZE)
    layout = "<IIQQQQQI"
    struct.pack_into(layout, attr, 0, PERF_TYPE_TRACEPOINT, _PERF_ATTR_SIZE, tracepoint, 1, 0, 0,
                     _PERF_DISABLED, 1)  # fmt: skip
    buffer = (ctypes.c_char * len(attr)).from_buffer(attr)
    fd = _syscall(SYS_PERF_EVENT_OPEN, ctypes.addressof(buffer), -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise _error(f"perf_event_open of tracepoint {tracepoint}", -fd)
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError as error:
        os.close(fd)
        err = error.errno or _errno.EINVAL
        raise _error(
            f"attaching BPF program fd {prog_fd} to tracepoint {tracepoint}", err
        ) from None
    return fd


# -- uprobes ---------------------------------------------------------------------------

BPF_LINK_CREATE = 28
TRACE_UPROBE_MULTI = 48
TRACE_UPROBE_SESSION = 57


def attach_uprobes(
    prog_fd: int,
    path: str,
    offsets: list[int],
    cookies: list[int],
    *,
    pid: int,
    attach_type: int = TRACE_UPROBE_MULTI,
) -> int:
    """Run a KPROBE program (loaded for ``attach_type``) at each file offset of ``path``,
    in process ``pid`` only (its threads, later ones too), with a cookie each
    (bpf_get_attach_cookie).  One uprobe_multi link for them all: its fd, whose closing
    removes every probe.  With TRACE_UPROBE_SESSION the program runs at the call's
    return too, when it returned 0 at the entry.
    """
    if len(offsets) != len(cookies) or not offsets:
        raise ValueError("one cookie per offset, and at least one offset")
    name = ctypes.create_string_buffer(os.fsencode(path))
    where = (ctypes.c_uint64 * len(offsets))(*offsets)
    values = (ctypes.c_uint64 * len(cookies))(*cookies)
    # prog_fd, target_fd, attach_type, flags, then uprobe_multi: path, offsets,
    # ref_ctr_offsets, cookies, cnt, flags, pid
    attr = _attr("<IIIIQQQQIII", prog_fd, 0, attach_type, 0, ctypes.addressof(name),
                 ctypes.addressof(where), 0, ctypes.addressof(values), len(offsets), 0,
                 pid)  # fmt: skip
    return _bpf(BPF_LINK_CREATE, attr, f"attaching uprobes to {path} in process {pid}")


# -- ring buffers ---------------------------------------------------------------------

PAGE_SIZE = mmap.PAGESIZE
_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30
_RINGBUF_HEADER = 8


class RingBuffer:
    """The reading end of a BPF_MAP_TYPE_RINGBUF map (the caller keeps the map fd)."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1) or size % PAGE_SIZE:
            raise ValueError(f"ring size {size}: not a power of 2 multiple of {PAGE_SIZE}")
        self._mask = size - 1
        try:
            self._consumer = mmap.mmap(
                map_fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
            )
        except OSError as error:
            raise _error("mapping the ring buffer's consumer page", error.errno or 0) from None
        try:
            self._producer = mmap.mmap(
                map_fd, PAGE_SIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE
            )
        except OSError as error:
            self._consumer.close()
            raise _error("mapping the ring buffer's data", error.errno or 0) from None
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def fileno(self) -> int:
        """An epoll fd, readable when the ring has data."""
        return self._epoll.fileno()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: forever); True when data may be ready."""
        return bool(self._epoll.poll(-1 if timeout is None else timeout, 1))

    def _consumer_pos(self) -> int:
        pos: int = struct.unpack_from("<Q", self._consumer, 0)[0]
        return pos

    def _producer_pos(self) -> int:
        # x86 loads are acquire loads: no fence is needed before reading records
        pos: int = struct.unpack_from("<Q", self._producer, 0)[0]
        return pos

    def read(self) -> list[bytes]:
        """The records committed since the last read, oldest first: those there when the
        call began (a producer faster than the reader would never let it return)."""
        records: list[bytes] = []
        consumer = self._consumer_pos()
        producer = self._producer_pos()
        while consumer < producer:
            header = PAGE_SIZE + (consumer & self._mask)
            length = struct.unpack_from("<I", self._producer, header)[0]
            if length & _RINGBUF_BUSY:  # reserved, not committed yet: later records wait
                break
            data_len = length & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not length & _RINGBUF_DISCARD:
                start = header + _RINGBUF_HEADER  # never wraps: the data is mapped twice
                records.append(self._producer[start : start + data_len])
            consumer += (data_len + _RINGBUF_HEADER + 7) & ~7
            # x86 stores are release stores: the kernel sees the record read first
            struct.pack_into("<Q", self._consumer, 0, consumer)
        return records

    def close(self) -> None:
        self._epoll.close()
        self._producer.close()
        self._consumer.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- listing programs ---------------------------------------------------------------

_PROG_INFO_SIZE = 128  # struct bpf_prog_info is longer; the kernel copies this much
_PROG_INFO_ID = 4
_PROG_INFO_NAME = 64


def list_programs() -> list[tuple[int, str]]:
    """(id, name) of every BPF program loaded in the kernel, by id."""
    programs: list[tuple[int, str]] = []
    next_id = 0
    while True:
        attr = _attr("<I", next_id)
        try:
            _bpf(BPF_PROG_GET_NEXT_ID, attr, "listing BPF programs")
        except BpfError as error:
            if error.errno == _errno.ENOENT:
                return programs
            raise
        next_id = struct.unpack_from("<I", attr, 4)[0]
        try:
            fd = _bpf(BPF_PROG_GET_FD_BY_ID, _attr("<I", next_id), f"opening BPF program {next_id}")
        except BpfError as error:
            if error.errno == _errno.ENOENT:  # freed meanwhile
                continue
            raise
        try:
            info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
            attr = _attr("<IIQ", fd, _PROG_INFO_SIZE, ctypes.addressof(info))
            _bpf(BPF_OBJ_GET_INFO_BY_FD, attr, f"reading BPF program {next_id}'s info")
        finally:
            os.close(fd)
        raw_name = info.raw[_PROG_INFO_NAME : _PROG_INFO_NAME + 16]
        name = raw_name.split(b"\0", 1)[0].decode(errors="replace")
        programs.append((struct.unpack_from("<I", info.raw, _PROG_INFO_ID)[0], name))
