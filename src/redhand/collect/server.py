"""``redhand collect --serve``: the kernel's core handler as a server on a socket.

From Linux 6.17 a ``core_pattern`` of ``@@/path/to/socket`` makes the kernel
connect to a listening AF_UNIX stream socket for every crash instead of
starting a program.  Its protocol: the kernel sends a ``coredump_req`` (its
size, the size of the answer it takes, the features it has); the server
answers with a ``coredump_ack`` (the features it wants: the kernel writes the
core, and waits for the server before the process's exit completes, as with a
pipe; or REJECT, no core at all); the kernel confirms with a four-byte mark,
then streams the core and hangs up.  The crashed process is the connection's
peer: ``SO_PEERPIDFD`` gives its pidfd, and ``PIDFD_GET_INFO`` its pid, its
credentials and its dump mode (``PIDFD_COREDUMP_USER`` or ``_ROOT``, what
``%d`` says to a pipe).

Nothing is started per crash: the server forks, and the child does what
``redhand collect`` does for a pipe (see :mod:`redhand.collect.helper`), with
the connection as its standard input and the pidfd on fd 3.  A program over
the crash-loop rate is refused before the kernel writes a byte of its core.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sqlite3
import stat
import struct
import time
from dataclasses import dataclass

from redhand.collect.helper import (
    CORE_PATTERN,
    RATE,
    arguments,
    collect,
    identify,
    occupy_standard_descriptors,
    read_proc,
    recent_crashes,
    remember_pattern,
    start_analysis,
    uninstall,
)
from redhand.collect.status import listening
from redhand.collect.store import DATABASE, DEFAULT_STORE, connect, open_store

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/redhand/coredump.socket"

# include/uapi/linux/coredump.h
COREDUMP_KERNEL = 1 << 0
COREDUMP_REJECT = 1 << 2
COREDUMP_WAIT = 1 << 3
_REQ = struct.Struct("<IIQ")  # size, size_ack, mask (COREDUMP_REQ_SIZE_VER0: 16)
_ACK = struct.Struct("<IIQ")  # size, spare, mask
_MARK = struct.Struct("<I")  # COREDUMP_MARK_REQACK: 0
_REQ_MAX = 4096

# include/uapi/linux/pidfd.h and socket.h
SO_PEERPIDFD = 77
PIDFD_INFO_PID = 1 << 0
PIDFD_INFO_CREDS = 1 << 1
PIDFD_INFO_COREDUMP = 1 << 4
PIDFD_INFO_COREDUMP_SIGNAL = 1 << 6  # Linux 6.19
PIDFD_COREDUMPED = 1 << 0
PIDFD_COREDUMP_USER = 1 << 2
PIDFD_COREDUMP_ROOT = 1 << 3
_PIDFD_INFO = struct.Struct("<QQ" + "I" * 11 + "iII")  # 72 bytes: ... coredump_mask, _signal
_CLONE_NEWUTS = 0x04000000
_PR_SET_DUMPABLE = 4
_PIDFD_GET_INFO = (3 << 30) | (_PIDFD_INFO.size << 16) | (0xFF << 8) | 11


class ServeError(Exception):
    """The server cannot start (one line: what, why, what to do)."""


@dataclass
class Peer:
    """The crashed process, as its pidfd tells."""

    pid: int  # the thread group, in our pid namespace
    tid: int
    uid: int
    gid: int
    dump_mode: int | None  # 1: its user may read the core, 2: root only
    signal: int | None  # from Linux 6.19
    dumping: bool  # the kernel is dumping its core: a connection the kernel made for it


def peer_of(pidfd: int) -> Peer:
    """What ``PIDFD_GET_INFO`` says of the process behind ``pidfd``."""
    buffer = bytearray(_PIDFD_INFO.size)
    struct.pack_into(
        "<Q", buffer, 0, PIDFD_INFO_PID | PIDFD_INFO_CREDS | PIDFD_INFO_COREDUMP
        | PIDFD_INFO_COREDUMP_SIGNAL
    )  # fmt: skip
    fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buffer)
    fields = _PIDFD_INFO.unpack(buffer)
    mask, pid, tgid, ruid, rgid = fields[0], fields[2], fields[3], fields[5], fields[6]
    coredump_mask, coredump_signal = fields[14], fields[15]
    mode = None
    if mask & PIDFD_INFO_COREDUMP:
        mode = 2 if coredump_mask & PIDFD_COREDUMP_ROOT else 1
        mode = mode if coredump_mask & (PIDFD_COREDUMP_ROOT | PIDFD_COREDUMP_USER) else None
    return Peer(
        pid=tgid,
        tid=pid,
        uid=ruid,
        gid=rgid,
        dump_mode=mode,
        signal=coredump_signal if mask & PIDFD_INFO_COREDUMP_SIGNAL and coredump_signal else None,
        dumping=bool(mask & PIDFD_INFO_COREDUMP and coredump_mask & PIDFD_COREDUMPED),
    )


def _proc(pid: int, name: str) -> str:
    return (read_proc(pid, name) or b"").decode("utf-8", "replace")


def _core_limit(pid: int) -> str:
    """RLIMIT_CORE's soft limit as ``%c`` gives it (the kernel does not apply it to a
    socket), from /proc/PID/limits; empty when it cannot be read."""
    for line in _proc(pid, "limits").splitlines():
        if line.startswith("Max core file size"):
            soft = line[len("Max core file size") :].split()[0]
            return str(2**64 - 1) if soft == "unlimited" else soft
    return ""


def _receive(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the kernel hung up")
        data += chunk
    return data


def _handshake(connection: socket.socket, reject: bool) -> None:
    """The request, our answer, the kernel's mark."""
    head = _receive(connection, _REQ.size)
    size, size_ack, mask = _REQ.unpack(head)
    if size > _REQ.size:
        _receive(connection, min(size, _REQ_MAX) - _REQ.size)  # a newer kernel's fields
    if size_ack < _ACK.size or not mask & COREDUMP_KERNEL:
        raise ConnectionError(f"a coredump request this server does not know ({mask:#x})")
    # Not COREDUMP_WAIT: the process's /proc files are read before the core, so its exit
    # need not wait for the record and the analysis to be started once the core is read.
    wanted = COREDUMP_REJECT if reject else COREDUMP_KERNEL
    connection.sendall(_ACK.pack(_ACK.size, 0, wanted))
    (mark,) = _MARK.unpack(_receive(connection, _MARK.size))
    if mark != 0:
        raise ConnectionError(f"the kernel refused the answer (mark {mark})")


def _crash(connection: socket.socket, store: str, analyze: bool) -> int:
    """In the child, for one connection: what ``redhand collect`` does for a pipe.  All
    that is read of the process is read before the answer: once the kernel has written the
    core, the process may be gone."""
    pidfd = connection.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    peer = peer_of(pidfd)
    if not peer.dumping:  # root's own process, not the kernel: nothing of it is kept
        raise ConnectionError(f"a connection from process {peer.pid}, which is not dumping core")
    argv = [
        str(peer.pid),
        "",  # the crashing thread: the peer is the thread group (the core says which)
        "",
        str(peer.signal or ""),
        str(int(time.time())),
        _core_limit(peer.pid),
        str(peer.dump_mode if peer.dump_mode is not None else ""),
        str(peer.uid),
        str(peer.gid),
        str(pidfd),  # where a pipe's collector has it on 3 (%F); here, where it is
        _their_hostname(pidfd),
        _proc(peer.pid, "comm").strip(),
    ]
    args = arguments(argv)
    known = identify(args)
    _handshake(connection, reject=_looping(store, peer.uid, known[1]["exe"], args["comm"]))
    stream = connection.detach()  # the core on standard input, as for a pipe
    os.dup2(stream, 0)
    os.close(stream)
    return collect(argv, store, analyze=analyze, known=known)


def _their_hostname(pidfd: int) -> str:
    """The host name the crashed process saw (its UTS namespace: a container's own), as
    ``%h`` gives a pipe.  This child joins that namespace: it has no other use for its own."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(pidfd, _CLONE_NEWUTS) != 0:
        log.debug("setns: %s", os.strerror(ctypes.get_errno()))
    return socket.gethostname()


def _looping(store: str, uid: int, exe: str | None, comm: str) -> bool:
    """Whether the program crashed more than the rate allows in the last minute: its core
    is refused before the kernel writes it (its record is kept).  Read-only and quick: the
    crashed process waits for this answer, so a busy or damaged database means no."""
    try:
        store_fd = open_store(store, create=False)
    except OSError:
        return False
    try:
        connection = sqlite3.connect(
            f"file:/proc/self/fd/{store_fd}/{DATABASE}?mode=ro", uri=True, timeout=0.5
        )
        try:
            return recent_crashes(connection, uid, exe, comm) >= RATE
        finally:
            connection.close()
    except sqlite3.Error:
        return False
    finally:
        os.close(store_fd)


def _listen(path: str) -> socket.socket:
    """The socket, in a folder of root's that nobody else may enter; not another server's."""
    folder = os.path.dirname(path) or "/"
    os.makedirs(folder, mode=0o700, exist_ok=True)
    facts = os.lstat(folder)
    if not stat.S_ISDIR(facts.st_mode) or facts.st_uid != os.geteuid() or facts.st_mode & 0o022:
        raise ServeError(
            f"{folder} is not a folder of root's closed to others: give the socket another "
            "place with --socket PATH"
        )
    if listening(path):
        raise ServeError(f"a server listens on {path} already: stop it, or give --socket PATH")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a socket left by a server that was killed
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
    except OSError as error:
        server.close()
        raise ServeError(f"cannot listen on {path}: {error.strerror or error}") from error
    os.chmod(path, 0o600)
    server.listen(socket.SOMAXCONN)  # a burst of crashes: the kernel gives up on a full queue
    return server


def _kernel_has_sockets() -> bool:
    try:
        with open("/proc/sys/kernel/core_modes") as file:
            return "socket" in file.read().split()
    except OSError:
        release = os.uname().release.split(".")
        with contextlib.suppress(ValueError, IndexError):
            return (int(release[0]), int(release[1].split("-")[0])) >= (6, 17)
        return False


def serve(
    store: str = DEFAULT_STORE,
    path: str = DEFAULT_SOCKET,
    *,
    install: bool = False,
    analyze: bool = True,
    ready: int | None = None,
) -> int:
    """Serve the kernel's coredump socket until SIGTERM, SIGINT or SIGHUP.  ``install``:
    point core_pattern at it (``@@PATH``) while serving, and put the previous pattern back
    at the end.  ``ready``: a descriptor to write a line to once listening."""
    if not _kernel_has_sockets():
        raise ServeError(
            "this kernel has no coredump socket (Linux 6.17 or later): use "
            "`redhand collect --install`, which runs the collector from a pipe"
        )
    if len(f"@@{path}") > 127:
        raise ServeError(f"the socket path {path} is too long for core_pattern (127 at most)")
    os.umask(0o077)
    occupy_standard_descriptors()
    # A server that dumped core would wait for itself on its own socket, and every crash
    # after it: the kernel is told not to dump it (nor the children, which inherit this).
    import ctypes

    ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    import zstandard  # noqa: F401  (once here, not in every crash's child)

    ours = f"@@{path}"
    restore: str | None = None  # the core_pattern to put back at the end
    server: socket.socket | None = None
    store_fd = open_store(store, create=True)  # checked now: an unsafe store stops the start
    try:
        connect(store_fd).close()  # the database made, or brought up to date
        server = _listen(path)
        if install:
            with open(CORE_PATTERN) as file:
                previous = file.read().strip()
            kept = remember_pattern(store_fd, previous, serving=ours)
            # Another of redhand's (a pipe) is put back; one of this store's servers, killed,
            # is not: the pattern before it, kept in the store, is.
            restore = previous if kept or previous.startswith("|") else ""
    except BaseException:
        if server is not None:
            server.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    finally:
        os.close(store_fd)

    stop = False

    def finish(_signo: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signo, finish)
    children: set[int] = set()
    try:
        if install:
            with open(CORE_PATTERN, "w") as file:
                file.write(ours)
        if ready is not None:
            os.write(ready, f"listening on {path}\n".encode())
            os.close(ready)
        if analyze:  # the crashes whose analyses were killed with the last server
            start_analysis(store, None)
        server.settimeout(0.5)
        while not stop:
            try:
                connection, _address = server.accept()
                children.add(_fork(connection, server, store, analyze))
            except TimeoutError:
                pass
            except InterruptedError:
                continue
            except OSError as error:  # out of descriptors or processes: the next may do
                log.warning("a crash could not be taken: %s", error)
                time.sleep(0.05)
            children = _reap(children)
    finally:
        with open(CORE_PATTERN) as file:
            still_ours = file.read().strip() == ours
        if restore is not None and still_ours:  # left alone if someone changed it since
            _put_back(store, restore)
        server.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        deadline = time.monotonic() + 60  # crashes being collected are finished
        while children and time.monotonic() < deadline:
            children = _reap(children)
            time.sleep(0.05)
    return 0


def _put_back(store: str, pattern: str) -> None:
    """The core_pattern from before the server: ``pattern``, or the one kept in the store."""
    try:
        if pattern:
            with open(CORE_PATTERN, "w") as file:
                file.write(pattern)
        else:
            uninstall(store)
    except (OSError, sqlite3.Error) as error:
        log.warning("core_pattern could not be put back: %s", error)
        with open(CORE_PATTERN, "w") as file:
            file.write(pattern or "core")


def _fork(connection: socket.socket, server: socket.socket, store: str, analyze: bool) -> int:
    try:
        child = os.fork()
    except OSError:
        connection.close()
        raise
    if child == 0:
        code = 1
        try:
            server.close()
            # A crash being collected is finished: the server's stop (a signal to its
            # process group, or to its service) does not cut a core in the middle.
            for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(signo, signal.SIG_IGN)
            connection.settimeout(None)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # the crash's id, which the collector prints, is not the server's
            os.close(null)
            code = _crash(connection, store, analyze)
        except (OSError, ConnectionError) as error:
            log.warning("a crash could not be collected: %s", error)
        except Exception:
            log.exception("a crash could not be collected")
        finally:
            os._exit(code)
    connection.close()
    return child


def _reap(children: set[int]) -> set[int]:
    left = set()
    for child in children:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(child, os.WNOHANG)[0] == 0:
                left.add(child)
    return left
