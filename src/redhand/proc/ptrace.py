"""ptrace, waitpid and process_vm_readv through ctypes on libc (Linux x86_64).

Two handles on libc are kept.  ``_libc`` releases the GIL around each call and
serves calls that may block (a waitpid without WNOHANG).  ``_fast`` keeps the
GIL: the calls made while a target is frozen are short system calls, and
giving the GIL away around each of them would let any busy Python thread of
the host delay the capture by a whole switch interval (5 ms) per call.  The
``raw_*`` functions return -1 and leave errno (:func:`get_errno`) on failure;
the others raise.

Failures are turned into redhand's errors in one place, :func:`errno_error`,
by errno value.
"""

from __future__ import annotations

import array
import ctypes
import errno as _errno
import os
import struct

from redhand.errors import (
    MemoryReadError,
    PermissionDenied,
    ProcessError,
    ProcessNotFound,
    RedhandError,
)
from redhand.proc._record import Record
from redhand.target.model import USER_REGS_FIELDS, Registers
from redhand.target.signals import SignalInfo

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# -- constants (<sys/ptrace.h>, <linux/ptrace.h>, <linux/elf.h>, <sys/wait.h>) --

PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3

NT_PRSTATUS = 1
NT_X86_XSTATE = 0x202
FPREGS_SIZE = 512  # struct user_fpregs_struct (the FXSAVE area)
XSTATE_MAX = 16384  # more than any XSAVE area so far (AMX tiles make it about 11 KiB)
WNOHANG = 1
WSTOPPED = 2
WEXITED = 4
WNOWAIT = 0x01000000  # report, but leave the child waitable (do not reap it)
WNOTHREAD = 0x20000000  # __WNOTHREAD: only this thread's children and tracees
WALL = 0x40000000  # __WALL: clone children (threads) as well as normal ones
P_PID = 1
CLD_EXITED, CLD_KILLED, CLD_DUMPED, CLD_TRAPPED, CLD_STOPPED = 1, 2, 3, 4, 5
IOV_MAX = 1024

USER_REGS_WORDS = len(USER_REGS_FIELDS)  # 27
USER_REGS_SIZE = USER_REGS_WORDS * 8
_SIGINFO_SIZE = 128
_SYSCALL_INFO_SIZE = 88


class IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class ChildInfo(ctypes.Structure):
    """siginfo_t as waitid() fills it (the SIGCHLD fields), 128 bytes."""

    _fields_ = (
        ("signo", ctypes.c_int),
        ("errno", ctypes.c_int),
        ("code", ctypes.c_int),  # CLD_*
        ("_pad", ctypes.c_int),
        ("pid", ctypes.c_int),  # 0 when WNOHANG found nothing
        ("uid", ctypes.c_uint),
        ("status", ctypes.c_int),  # exit code, or for a ptrace stop (event << 8) | signal
        ("_rest", ctypes.c_byte * 100),
    )


class Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _bind(
    lib: ctypes.CDLL, name: str, restype: type, argtypes: Sequence[type]
) -> Callable[..., int]:
    func: Callable[..., int] = getattr(lib, name)
    func.restype = restype  # type: ignore[attr-defined]
    func.argtypes = list(argtypes)  # type: ignore[attr-defined]
    return func


def iovecs(pairs: Sequence[tuple[int, int]]) -> ctypes.Array[IOVec]:
    """An array of struct iovec from ``(base, length)`` pairs."""
    words = array.array("Q", [word for pair in pairs for word in pair])
    return (IOVec * len(pairs)).from_buffer(words)  # keeps ``words`` alive


_LIBC_NAME = "libc.so.6"
_libc = ctypes.CDLL(_LIBC_NAME, use_errno=True)
_fast = ctypes.PyDLL(_LIBC_NAME, use_errno=True)

_PTRACE_ARGS = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
_READV_ARGS = (
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_WAITPID_ARGS = (ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int)

# The raw functions: each returns -1 and leaves errno (ctypes.get_errno()) on failure.
raw_ptrace = _bind(_fast, "ptrace", ctypes.c_long, _PTRACE_ARGS)
raw_waitpid = _bind(_fast, "waitpid", ctypes.c_int, _WAITPID_ARGS)
raw_process_vm_readv = _bind(_fast, "process_vm_readv", ctypes.c_ssize_t, _READV_ARGS)
raw_waitid = _bind(
    _fast, "waitid", ctypes.c_int, (ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_int)
)
raw_sched_yield = _bind(_fast, "sched_yield", ctypes.c_int, ())
raw_nanosleep = _bind(_fast, "nanosleep", ctypes.c_int, (ctypes.c_void_p, ctypes.c_void_p))
_blocking_waitpid = _bind(_libc, "waitpid", ctypes.c_int, _WAITPID_ARGS)
get_errno = ctypes.get_errno


# -- errors ---------------------------------------------------------------------


def errno_error(err: int, pid: int, what: str) -> RedhandError:
    """The redhand error for a failed call on ``pid``; ``what`` names the call.

    ESRCH means the thread is gone, or (for ptrace) not stopped under us;
    EPERM and EACCES mean tracing is not allowed; EFAULT and EIO mean an
    address cannot be read.
    """
    reason = os.strerror(err)
    if err == _errno.ESRCH:
        return ProcessNotFound(
            pid, f"{what}: thread {pid} does not exist or is not stopped under redhand"
        )
    if err == _errno.ECHILD:
        return ProcessNotFound(pid, f"{what}: {pid} is neither a child nor a tracee of redhand")
    if err in (_errno.EPERM, _errno.EACCES):
        return PermissionDenied(pid, f"{what}: not allowed to trace process {pid} ({reason})")
    return ProcessError(pid, f"{what} failed on {pid}: {reason} ({_errno.errorcode.get(err, err)})")


def _check(result: int, pid: int, what: str) -> int:
    if result == -1:
        raise errno_error(get_errno(), pid, what)
    return result


# -- ptrace requests -------------------------------------------------------------


def seize(tid: int, options: int = 0) -> None:
    """PTRACE_SEIZE: become the tracer of one thread without stopping it."""
    _check(raw_ptrace(PTRACE_SEIZE, tid, None, options), tid, "PTRACE_SEIZE")


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: ask a seized thread to stop (no signal involved)."""
    _check(raw_ptrace(PTRACE_INTERRUPT, tid, None, None), tid, "PTRACE_INTERRUPT")


def detach(tid: int, signal: int = 0) -> None:
    """PTRACE_DETACH a stopped tracee, delivering ``signal`` if not 0."""
    _check(raw_ptrace(PTRACE_DETACH, tid, None, signal), tid, "PTRACE_DETACH")


def cont(tid: int, signal: int = 0) -> None:
    """PTRACE_CONT: resume a stopped tracee, delivering ``signal`` if not 0."""
    _check(raw_ptrace(PTRACE_CONT, tid, None, signal), tid, "PTRACE_CONT")


def syscall(tid: int, signal: int = 0) -> None:
    """PTRACE_SYSCALL: resume until the next syscall entry or exit."""
    _check(raw_ptrace(PTRACE_SYSCALL, tid, None, signal), tid, "PTRACE_SYSCALL")


def set_options(tid: int, options: int) -> None:
    _check(raw_ptrace(PTRACE_SETOPTIONS, tid, None, options), tid, "PTRACE_SETOPTIONS")


def get_event_message(tid: int) -> int:
    value = ctypes.c_ulong()
    _check(
        raw_ptrace(PTRACE_GETEVENTMSG, tid, None, ctypes.addressof(value)),
        tid,
        "PTRACE_GETEVENTMSG",
    )
    return value.value


def get_registers(tid: int) -> Registers:
    """PTRACE_GETREGSET NT_PRSTATUS of a stopped tracee."""
    return Registers.from_user_regs(get_register_words(tid))


def set_registers(tid: int, words: Sequence[int]) -> None:
    """PTRACE_SETREGSET NT_PRSTATUS: the 27 words of user_regs_struct, in their order."""
    values = (ctypes.c_uint64 * USER_REGS_WORDS)(*words)
    iov = IOVec(ctypes.addressof(values), USER_REGS_SIZE)
    _check(
        raw_ptrace(PTRACE_SETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov)),
        tid,
        "PTRACE_SETREGSET",
    )


def get_register_words(tid: int) -> list[int]:
    """PTRACE_GETREGSET NT_PRSTATUS as the 27 raw words (for an exact restore)."""
    words = (ctypes.c_uint64 * USER_REGS_WORDS)()
    iov = IOVec(ctypes.addressof(words), USER_REGS_SIZE)
    _check(
        raw_ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, ctypes.addressof(iov)),
        tid,
        "PTRACE_GETREGSET",
    )
    return list(words)


def get_fpregs(tid: int) -> bytes | None:
    """PTRACE_GETFPREGS: the 512-byte FXSAVE area (x87, SSE); None if refused."""
    buf = ctypes.create_string_buffer(FPREGS_SIZE)
    if raw_ptrace(PTRACE_GETFPREGS, tid, None, ctypes.addressof(buf)) == -1:
        return None
    return buf.raw


def set_fpregs(tid: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    _check(raw_ptrace(PTRACE_SETFPREGS, tid, None, ctypes.addressof(buf)), tid, "PTRACE_SETFPREGS")


def get_xstate(tid: int) -> bytes | None:
    """PTRACE_GETREGSET NT_X86_XSTATE: the XSAVE area, as long as this CPU's; None if refused."""
    buf = ctypes.create_string_buffer(XSTATE_MAX)
    iov = IOVec(ctypes.addressof(buf), XSTATE_MAX)
    if raw_ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov)) == -1:
        return None
    return buf.raw[: iov.iov_len]


def set_xstate(tid: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = IOVec(ctypes.addressof(buf), len(data))
    _check(
        raw_ptrace(PTRACE_SETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov)),
        tid,
        "PTRACE_SETREGSET",
    )


def single_step(tid: int, signal: int = 0) -> None:
    """PTRACE_SINGLESTEP: run one instruction (a system call runs whole), then stop."""
    _check(raw_ptrace(PTRACE_SINGLESTEP, tid, None, signal), tid, "PTRACE_SINGLESTEP")


# The siginfo_t of a ptrace stop is the same structure as a core's NT_SIGINFO:
# one decoder for both.
SigInfo = SignalInfo


def get_siginfo(tid: int) -> SignalInfo:
    """PTRACE_GETSIGINFO: the signal that caused the current stop."""
    buf = ctypes.create_string_buffer(_SIGINFO_SIZE)
    _check(
        raw_ptrace(PTRACE_GETSIGINFO, tid, None, ctypes.addressof(buf)), tid, "PTRACE_GETSIGINFO"
    )
    return SignalInfo.from_bytes(buf.raw)


def set_siginfo(tid: int, raw: bytes) -> None:
    """PTRACE_SETSIGINFO: the siginfo_t the signal of the current stop is delivered with."""
    buf = ctypes.create_string_buffer(raw[:_SIGINFO_SIZE].ljust(_SIGINFO_SIZE, b"\0"))
    _check(
        raw_ptrace(PTRACE_SETSIGINFO, tid, None, ctypes.addressof(buf)), tid, "PTRACE_SETSIGINFO"
    )


_SYS_TGKILL = 234


def tgkill(pid: int, tid: int, signo: int) -> None:
    """Send ``signo`` to thread ``tid`` of process ``pid``; nothing if the thread is gone."""
    if _libc.syscall(_SYS_TGKILL, pid, tid, signo) == -1:
        err = get_errno()
        if err != _errno.ESRCH:
            raise errno_error(err, tid, "tgkill")


def listen(tid: int) -> None:
    """PTRACE_LISTEN: leave a tracee in its group-stop, yet report the SIGCONT that ends it."""
    _check(raw_ptrace(PTRACE_LISTEN, tid, None, None), tid, "PTRACE_LISTEN")


class SyscallInfo(Record):
    """struct ptrace_syscall_info.

    ``op`` says which fields are meaningful: PTRACE_SYSCALL_INFO_ENTRY and
    _SECCOMP fill ``nr`` and ``args`` (and _SECCOMP ``ret_data``);
    PTRACE_SYSCALL_INFO_EXIT fills ``rval`` and ``is_error``.
    """

    __slots__ = (
        "arch",
        "args",
        "instruction_pointer",
        "is_error",
        "nr",
        "op",
        "ret_data",
        "rval",
        "stack_pointer",
    )

    def __init__(
        self,
        op: int,
        arch: int,
        instruction_pointer: int,
        stack_pointer: int,
        nr: int | None = None,
        args: tuple[int, ...] = (),
        rval: int | None = None,
        is_error: bool | None = None,
        ret_data: int | None = None,
    ) -> None:
        self.op = op
        self.arch = arch
        self.instruction_pointer = instruction_pointer
        self.stack_pointer = stack_pointer
        self.nr = nr
        self.args = args
        self.rval = rval
        self.is_error = is_error
        self.ret_data = ret_data


_SYSCALL_INFO_HEAD = struct.Struct("<B3xIQQ")
_SYSCALL_INFO_ENTRY = struct.Struct("<7Q")
_SYSCALL_INFO_EXIT = struct.Struct("<qB")
_SYSCALL_INFO_RET_DATA = struct.Struct("<I")


def parse_syscall_info(raw: bytes) -> SyscallInfo:
    op, arch, ip, sp = _SYSCALL_INFO_HEAD.unpack_from(raw)
    if op in (PTRACE_SYSCALL_INFO_ENTRY, PTRACE_SYSCALL_INFO_SECCOMP):
        nr, *args = _SYSCALL_INFO_ENTRY.unpack_from(raw, 24)
        ret_data = None
        if op == PTRACE_SYSCALL_INFO_SECCOMP:
            ret_data = _SYSCALL_INFO_RET_DATA.unpack_from(raw, 80)[0]
        return SyscallInfo(op, arch, ip, sp, nr=nr, args=tuple(args), ret_data=ret_data)
    if op == PTRACE_SYSCALL_INFO_EXIT:
        rval, is_error = _SYSCALL_INFO_EXIT.unpack_from(raw, 24)
        return SyscallInfo(op, arch, ip, sp, rval=rval, is_error=bool(is_error))
    return SyscallInfo(op, arch, ip, sp)


def get_syscall_info(tid: int) -> SyscallInfo:
    """PTRACE_GET_SYSCALL_INFO (Linux 5.3): the syscall at a syscall or seccomp stop."""
    buf = ctypes.create_string_buffer(_SYSCALL_INFO_SIZE)
    _check(
        raw_ptrace(PTRACE_GET_SYSCALL_INFO, tid, _SYSCALL_INFO_SIZE, ctypes.addressof(buf)),
        tid,
        "PTRACE_GET_SYSCALL_INFO",
    )
    return parse_syscall_info(buf.raw)


# -- waiting ----------------------------------------------------------------------


def waitpid(pid: int, options: int = WALL) -> tuple[int, int]:
    """waitpid(2): ``(pid, status)``; ``(0, 0)`` when WNOHANG finds nothing.

    Without WNOHANG the call blocks with the GIL released.  Decode the status
    with os.WIFSTOPPED and friends, and :func:`stop_event`.
    """
    status = ctypes.c_int()
    func = raw_waitpid if options & WNOHANG else _blocking_waitpid
    while True:
        result: int = func(pid, ctypes.byref(status), options)
        if result != -1:
            return result, status.value
        err = get_errno()
        if err != _errno.EINTR:
            raise errno_error(err, pid, "waitpid")


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a ptrace stop's wait status (0 for a signal-delivery stop)."""
    return (status >> 16) & 0xFF


# -- memory ---------------------------------------------------------------------


def readv_into(pid: int, local: int, ranges: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """One process_vm_readv of ``ranges`` (address, size) into the buffer at ``local``.

    The ranges land back to back.  Returns ``(bytes copied, errno)``: a short
    count means the range where the count falls could not be read in full (the
    kernel stops there); errno is 0 unless nothing at all was copied.
    """
    count = len(ranges)
    if count == 0:
        return 0, 0
    if count > IOV_MAX:
        raise ValueError(f"at most {IOV_MAX} ranges per call")
    remote = iovecs(ranges)
    total = sum(size for _, size in ranges)
    local_iov = IOVec(local, total)
    result: int = raw_process_vm_readv(
        pid, ctypes.addressof(local_iov), 1, ctypes.addressof(remote), count, 0
    )
    if result < 0:
        return 0, get_errno()
    return result, 0


class LiveMemory:
    """The memory of a running process: process_vm_readv, else /proc/PID/mem.

    /proc/PID/mem also reads what process_vm_readv refuses (a mapping without
    read permission, or a kernel or container that forbids the call).  When
    the main thread has exited (pthread_exit) while others run on, reads go
    through a live thread.  Call :meth:`close` (or use ``with``) to release
    the /proc/PID/mem descriptor.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._via = pid  # the task whose memory (the process's) is read
        self._mem_fd: int | None = None
        self._vm_readv_works = True

    def read(self, address: int, size: int) -> bytes:
        if size < 0:
            raise ValueError("size must not be negative")
        if size == 0:
            return b""
        if address < 0 or address + size > 1 << 64:
            raise MemoryReadError(address, size, "not a valid address")
        buf = ctypes.create_string_buffer(size)
        err = 0
        if self._vm_readv_works:
            copied, err = readv_into(self._via, ctypes.addressof(buf), ((address, size),))
            if err == _errno.ESRCH and self._retarget():
                copied, err = readv_into(self._via, ctypes.addressof(buf), ((address, size),))
            if copied == size:
                return buf.raw
            if err in (_errno.EPERM, _errno.ENOSYS):
                self._vm_readv_works = False
        data = self.read_some(address, size)
        if len(data) == size:
            return data
        if err == _errno.ESRCH:
            raise MemoryReadError(address, size, f"process {self.pid} has exited")
        raise MemoryReadError(address, size)

    def _retarget(self) -> bool:
        """Read through another thread when the one used has no memory left (a zombie)."""
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return False
        for name in tids:
            tid = int(name)
            if tid == self._via:
                continue
            try:
                with open(f"/proc/{self.pid}/task/{tid}/stat", "rb") as file:
                    state = file.read().rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                self._via = tid
                self.close()
                return True
        return False

    def read_some(self, address: int, size: int) -> bytes:
        """As many bytes as /proc/PID/mem gives from ``address`` on (maybe fewer than asked)."""
        chunks: list[bytes] = []
        done = 0
        try:
            if self._mem_fd is None:
                self._mem_fd = os.open(f"/proc/{self._via}/mem", os.O_RDONLY | os.O_CLOEXEC)
            while done < size:
                chunk = os.pread(self._mem_fd, size - done, address + done)
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
        except (OSError, OverflowError):
            pass
        return b"".join(chunks)

    def close(self) -> None:
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None

    def __enter__(self) -> LiveMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_mem_fd", None)
        if fd is not None:
            try:  # noqa: SIM105 (no contextlib on the path of `redhand stack`)
                os.close(fd)
            except OSError:
                pass
