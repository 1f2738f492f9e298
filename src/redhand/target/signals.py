"""Signals and their ``siginfo_t``: which signal, why, and from where.

:class:`SignalInfo` is read from the 128-byte ``siginfo_t`` that a core's
NT_SIGINFO note holds and that ``PTRACE_GETSIGINFO`` returns (the same
layout: the kernel's ``struct siginfo`` on x86_64).  Which union member of
``siginfo_t`` is valid depends on the signal and on ``si_code``; the fields
that do not apply are None.

Numbers and names are Linux x86_64's (<asm-generic/signal.h>,
<asm-generic/siginfo.h>), written out here so that a core from Linux reads
the same on any host.
"""

from __future__ import annotations

import struct

from redhand._value import Value

SIGINFO_SIZE = 128

SIGHUP, SIGINT, SIGQUIT, SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE = range(1, 9)
SIGKILL, SIGUSR1, SIGSEGV, SIGUSR2, SIGPIPE, SIGALRM, SIGTERM = range(9, 16)
SIGCHLD = 17
SIGPOLL = 29
SIGSYS = 31
SIGRTMIN = 32  # the kernel's; glibc reserves 32 and 33 and calls 34 SIGRTMIN
SIGRTMAX = 64

SIGNAL_NAMES: dict[int, str] = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
    7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2",
    13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD",
    18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG",
    24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH",
    29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
}  # fmt: skip

# si_code values any signal can carry (<= 0: sent by a process; 0x80: the kernel).
SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TIMER = -2
SI_MESGQ = -3
SI_ASYNCIO = -4
SI_SIGIO = -5
SI_TKILL = -6
SI_DETHREAD = -7
SI_ASYNCNL = -60

_GENERIC_CODES: dict[int, str] = {
    SI_USER: "SI_USER", SI_KERNEL: "SI_KERNEL", SI_QUEUE: "SI_QUEUE", SI_TIMER: "SI_TIMER",
    SI_MESGQ: "SI_MESGQ", SI_ASYNCIO: "SI_ASYNCIO", SI_SIGIO: "SI_SIGIO", SI_TKILL: "SI_TKILL",
    SI_DETHREAD: "SI_DETHREAD", SI_ASYNCNL: "SI_ASYNCNL",
}  # fmt: skip

# si_code values (> 0) that mean something only for one signal.
SEGV_MAPERR = 1
SEGV_ACCERR = 2
BUS_ADRALN = 1
BUS_ADRERR = 2
FPE_INTDIV = 1
ILL_ILLOPN = 2

_SIGNAL_CODES: dict[int, tuple[str, ...]] = {
    SIGILL: (
        "ILL_ILLOPC", "ILL_ILLOPN", "ILL_ILLADR", "ILL_ILLTRP", "ILL_PRVOPC", "ILL_PRVREG",
        "ILL_COPROC", "ILL_BADSTK", "ILL_BADIADDR",
    ),
    SIGFPE: (
        "FPE_INTDIV", "FPE_INTOVF", "FPE_FLTDIV", "FPE_FLTOVF", "FPE_FLTUND", "FPE_FLTRES",
        "FPE_FLTINV", "FPE_FLTSUB", "", "", "", "", "", "FPE_FLTUNK", "FPE_CONDTRAP",
    ),
    SIGSEGV: (
        "SEGV_MAPERR", "SEGV_ACCERR", "SEGV_BNDERR", "SEGV_PKUERR", "SEGV_ACCADI",
        "SEGV_ADIDERR", "SEGV_ADIPERR", "SEGV_MTEAERR", "SEGV_MTESERR", "SEGV_CPERR",
    ),
    SIGBUS: ("BUS_ADRALN", "BUS_ADRERR", "BUS_OBJERR", "BUS_MCEERR_AR", "BUS_MCEERR_AO"),
    SIGTRAP: ("TRAP_BRKPT", "TRAP_TRACE", "TRAP_BRANCH", "TRAP_HWBKPT", "TRAP_UNK", "TRAP_PERF"),
    SIGCHLD: ("CLD_EXITED", "CLD_KILLED", "CLD_DUMPED", "CLD_TRAPPED", "CLD_STOPPED",
              "CLD_CONTINUED"),
    SIGPOLL: ("POLL_IN", "POLL_OUT", "POLL_MSG", "POLL_ERR", "POLL_PRI", "POLL_HUP"),
    SIGSYS: ("SYS_SECCOMP", "SYS_USER_DISPATCH"),
}  # fmt: skip

# Signals whose kernel-made siginfo (si_code > 0) holds the faulting address.
FAULT_SIGNALS = frozenset({SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV})

_HEAD = struct.Struct("<iii")  # si_signo, si_errno, si_code
_KILL = struct.Struct("<iI")  # _kill / _rt / _sigchld: si_pid, si_uid (at 16)
_FAULT = struct.Struct("<Q")  # _sigfault: si_addr (at 16)
_SIGSYS = struct.Struct("<QiI")  # _sigsys: si_call_addr, si_syscall, si_arch (at 16)
_CHLD_STATUS = struct.Struct("<i")  # _sigchld: si_status (at 24)


def signal_name(signo: int) -> str:
    """``SIGSEGV``; ``SIGRTMIN+3`` for real-time signals; ``signal 99`` for nonsense."""
    name = SIGNAL_NAMES.get(signo)
    if name is not None:
        return name
    if SIGRTMIN <= signo <= SIGRTMAX:
        return f"SIGRTMIN+{signo - SIGRTMIN}" if signo > SIGRTMIN else "SIGRTMIN"
    return f"signal {signo}"


def code_name(signo: int, code: int) -> str:
    """The name of ``si_code`` for ``signo``: ``SEGV_MAPERR``, ``SI_KERNEL``, ``SI_TKILL``...

    An unknown code reads ``si_code N``.
    """
    if code > 0 and code != SI_KERNEL:
        names = _SIGNAL_CODES.get(signo, ())
        if code <= len(names) and names[code - 1]:
            return names[code - 1]
    generic = _GENERIC_CODES.get(code)
    if generic is not None:
        return generic
    return f"si_code {code}"


class SignalInfo(Value):
    """One signal as ``siginfo_t`` describes it.

    - ``signo``, ``errno``, ``code``: si_signo, si_errno, si_code.
    - ``address``: si_addr, the faulting address, for SIGSEGV, SIGBUS,
      SIGFPE, SIGILL and SIGTRAP raised by the kernel for a fault (si_code
      > 0).  None otherwise, and None for ``SI_KERNEL``: then the kernel
      reports 0, which is not an address (a general-protection fault, such
      as an access to a non-canonical address, has none).
    - ``pid``, ``uid``: the sender, for signals sent by a process (kill,
      tgkill, sigqueue: si_code <= 0) and for SIGCHLD; else None.
    - ``status``: SIGCHLD's exit status or signal; else None.
    - ``syscall``: SIGSYS's system call number (a seccomp filter's
      verdict); else None.
    - ``raw``: the 128 bytes as read, for what is not decoded here.

    Immutable.  (Not a dataclass: see :mod:`redhand._value` for why.)
    """

    __slots__ = (
        "_address",
        "_code",
        "_errno",
        "_pid",
        "_raw",
        "_signo",
        "_status",
        "_syscall",
        "_uid",
    )
    _fields = ("signo", "code", "errno", "address", "pid", "uid", "status", "syscall", "raw")
    __match_args__ = ("signo", "code", "errno", "address", "pid", "uid", "status", "syscall")

    signo: int
    code: int
    errno: int
    address: int | None
    pid: int | None
    uid: int | None
    status: int | None
    syscall: int | None
    raw: bytes

    def __init__(
        self,
        signo: int,
        code: int,
        errno: int = 0,
        address: int | None = None,
        pid: int | None = None,
        uid: int | None = None,
        status: int | None = None,
        syscall: int | None = None,
        raw: bytes = b"",
    ) -> None:
        self._signo = signo
        self._code = code
        self._errno = errno
        self._address = address
        self._pid = pid
        self._uid = uid
        self._status = status
        self._syscall = syscall
        self._raw = raw

    @classmethod
    def from_bytes(cls, data: bytes) -> SignalInfo:
        """Decode a ``siginfo_t`` (NT_SIGINFO's descriptor, or PTRACE_GETSIGINFO's buffer).

        ValueError if ``data`` is shorter than the 128 bytes of a siginfo_t.
        """
        if len(data) < SIGINFO_SIZE:
            raise ValueError(f"a siginfo_t has {SIGINFO_SIZE} bytes, got {len(data)}")
        raw = bytes(data[:SIGINFO_SIZE])
        signo, errno, code = _HEAD.unpack_from(raw, 0)
        address = pid = uid = status = syscall = None
        if code <= 0 or signo == SIGCHLD:
            pid, uid = _KILL.unpack_from(raw, 16)
            if signo == SIGCHLD and code > 0:
                (status,) = _CHLD_STATUS.unpack_from(raw, 24)
        elif code != SI_KERNEL:
            if signo in FAULT_SIGNALS:
                (address,) = _FAULT.unpack_from(raw, 16)
            elif signo == SIGSYS:
                address, syscall, _arch = _SIGSYS.unpack_from(raw, 16)
        return cls(signo, code, errno, address, pid, uid, status, syscall, raw)

    @property
    def name(self) -> str:
        """``SIGSEGV``."""
        return signal_name(self.signo)

    @property
    def code_name(self) -> str:
        """``SEGV_MAPERR``, ``SI_KERNEL``, ``FPE_INTDIV``, ``SI_TKILL``..."""
        return code_name(self.signo, self.code)

    @property
    def sent_by_process(self) -> bool:
        """Sent with kill(), tgkill(), sigqueue() and such (si_code <= 0), not by a fault."""
        return self.code <= 0

    def __str__(self) -> str:
        text = f"{self.name} ({self.code_name})"
        if self.address is not None:
            text += f" at {self.address:#x}"
        if self.pid is not None and self.signo != SIGCHLD:
            text += f" from pid {self.pid}, uid {self.uid}"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "signal": self.signo,
            "signal_name": self.name,
            "code": self.code,
            "code_name": self.code_name,
            "errno": self.errno,
            "address": self.address,
            "pid": self.pid,
            "uid": self.uid,
        }


__all__ = ["SIGINFO_SIZE", "SignalInfo", "code_name", "signal_name"]
