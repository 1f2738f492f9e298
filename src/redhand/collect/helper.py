"""``redhand collect``: the kernel's core handler.

The kernel runs it as root for every crash (``core_pattern`` is
``|/usr/bin/redhand collect %P %i %I %s %t %c %d %u %g %F %h %e``), with the
core on standard input and, on Linux 6.16 and later, a pidfd of the crashed
process on fd 3 (``%F``).  It imports the standard library and zstandard
only, and does as little as it can while the crashed process waits:

1. **Identity from the pidfd**, never from a pid alone: the process's /proc
   files are read only while the pidfd still names it (its fdinfo gives the
   pid, or -1 once the process is gone), before and after reading.  Without
   ``%F`` (an older kernel) it opens a pidfd itself and checks the command
   name and the start time; the record says which.  A process whose root is
   not ours (a container's) has that root opened as an O_PATH descriptor, not
   read, and handed to the analysis: its program and libraries are there.
2. **Privileges from %d only**: everything is root's (0600 in a 0700 store);
   nothing is ever made readable to the crashed process's user.
3. **Limits before writing**: ``%c`` (RLIMIT_CORE) 0 keeps no core, a smaller
   one cuts it; a store over its size limit or a file system short of free
   space keeps no core; more than 10 crashes of one program in a minute keep
   no core.  The record is kept in every case, with the reason; and but for a crash
   loop, the core is held in memory (zstd) and handed to the analysis for its report.
4. **The core** is drained from stdin (all of it: the kernel waits for that)
   into ``spool/ID.core.zst``, created with O_EXCL|O_NOFOLLOW relative to the
   checked store, compressed with zstd (level 3) and fsynced.
5. **The record** goes into SQLite (WAL, one short IMMEDIATE transaction); when the
   database cannot be used, beside the core (``spool/ID.record.json``), and the core is
   kept all the same.
6. **The analysis** (the crash report, the signature) is left to a separate,
   unprivileged process (``redhand crashes analyze``), started detached; the files
   of a container's process are read through its root's descriptor, as ``--sysroot``,
   and checked by build-id as any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sqlite3
import sys
import time
from typing import BinaryIO

from redhand.collect.store import (
    DEFAULT_STORE,
    SPOOL,
    StoreError,
    connect,
    insert,
    open_store,
    write_pending,
)

_CHUNK = 1 << 20
_PROC_LIMIT = 64 << 10
MAX_CORE = 8 << 30  # bytes of core kept at most, whatever %c says
KEEP_FREE = 0.15  # of the file system
MAX_USE = 0.10  # of the file system, for the whole store
RATE = 10  # crashes of one program per minute that keep their core
_RATE_NOTE = "a crash loop"
# Crashes whose analysis has waited this long (it was killed, with the service that started
# it) are taken up by the next crash's analysis.
STALE = 600
TRANSIENT_MAX = 256 << 20  # compressed bytes of a core held in memory for its report alone
_SYS_PIDFD_OPEN = 434
_ARGUMENTS = ("pid", "ns_tid", "tid", "signal", "time", "core_limit", "dump_mode", "uid", "gid",
              "pidfd", "hostname", "comm")  # fmt: skip


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _limit(text: str) -> int | None:
    """%c as stored: None for unlimited (RLIM_INFINITY does not fit SQLite's integers)."""
    value = _number(text)
    return None if value is None or value >= 1 << 63 else value


def _pidfd_pid(pidfd: int) -> int | None:
    """The pid a pidfd names now (None: not a pidfd; -1 once the process is gone)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as file:
            for line in file.read(4096).splitlines():
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def read_proc(pid: int, name: str) -> bytes | None:
    """A /proc file of the process, bounded, never following a link or opening a FIFO."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, _PROC_LIMIT)
    except OSError:
        return None
    finally:
        os.close(fd)


def _own_root(pid: int) -> int | None:
    """The process's root directory when it is not ours (a container's files), as an O_PATH
    descriptor the analysis inherits: the frames of a program that exists only in the
    container are named from it.  Nothing is read through it here."""
    try:
        fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None
    theirs, ours = os.fstat(fd), os.stat("/")
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        os.close(fd)
        return None
    return fd


def identify(args: dict[str, str]) -> tuple[str, dict[str, str | None], int | None]:
    """('pidfd', 'pidfd_open' or 'none'; what /proc said while the pidfd named the process;
    its root directory when it is not ours, see :func:`_own_root`)."""
    pid = _number(args["pid"])
    facts: dict[str, str | None] = {"exe": None, "cmdline": None, "cgroup": None, "container": None}
    if pid is None or pid <= 0:
        return "none", facts, None
    pidfd = _number(args["pidfd"]) if args["pidfd"] else None
    how = "pidfd"
    if pidfd is None or _pidfd_pid(pidfd) != pid:
        how = "pidfd_open"
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pidfd = int(libc.syscall(_SYS_PIDFD_OPEN, pid, 0))
        if pidfd < 0:
            return "none", facts, None
        comm = (read_proc(pid, "comm") or b"").strip().decode("utf-8", "replace")
        if comm[:15] != args["comm"][:15]:
            os.close(pidfd)
            return "none", facts, None  # another process has this pid now
    try:
        exe = None
        with contextlib.suppress(OSError):
            exe = os.readlink(f"/proc/{pid}/exe")
        cmdline = read_proc(pid, "cmdline")
        cgroups = read_proc(pid, "cgroup")
        namespace = None
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid"):
                namespace = os.readlink(f"/proc/{pid}/ns/pid")
        root = _own_root(pid)
        if _pidfd_pid(pidfd) != pid:  # the process went away while /proc was read
            if root is not None:
                os.close(root)
            return "none", facts, None
        if cgroups is not None:
            facts["cgroup"], facts["container"] = _container(cgroups.decode("utf-8", "replace"))
        if facts["container"] is None and namespace is not None:
            facts["container"] = "pid namespace " + namespace.strip("pid:[]")
        facts["exe"] = exe
        if cmdline is not None:
            facts["cmdline"] = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        return how, facts, root
    finally:
        if how == "pidfd_open":
            os.close(pidfd)


# Where container engines put a container's cgroup: (a path component's start, its end,
# the engine).  The part between is the container's id (or name).
_ENGINES = (
    ("docker-", ".scope", "docker"),
    ("cri-containerd-", ".scope", "containerd"),
    ("crio-", ".scope", "cri-o"),
    ("libpod-", ".scope", "podman"),
    ("lxc.payload.", "", "lxc"),
    ("machine-", ".scope", "systemd-nspawn"),
)
_PARENTS = {"docker": "docker", "lxc": "lxc", "libpod_parent": "podman"}  # /docker/ID, ...


def _container(cgroups: str) -> tuple[str | None, str | None]:
    """(the process's cgroup path, the container it is in: 'docker 0123456789ab') from
    /proc/PID/cgroup; the unified hierarchy's path, else the first one that is not /."""
    entries = [line.split(":", 2) for line in cgroups.splitlines() if line.count(":") >= 2]
    paths = [path for _number, _controllers, path in entries]
    unified = [path for number, _controllers, path in entries if number == "0"]
    chosen = next((p for p in unified + paths if p not in ("", "/")), None)
    for path in paths:
        parts = [part for part in path.split("/") if part]
        for part in parts:  # a scope named after the engine first (under a parent of its own)
            for start, end, engine in _ENGINES:
                if part.startswith(start) and part.endswith(end) and len(part) > len(start + end):
                    name = part[len(start) : len(part) - len(end) if end else None]
                    return chosen, f"{engine} {name[:12] if engine != 'lxc' else name}"
        for index, part in enumerate(parts):
            parent = _PARENTS.get(part)
            if parent is not None and index + 1 < len(parts):
                return chosen, f"{parent} {parts[index + 1][:12]}"
        if "kubepods" in parts:
            return chosen, f"kubernetes {parts[-1][-12:]}"
    return chosen, None


def _room(store_fd: int, connection: object) -> str | None:
    """Why a core cannot be kept now (None: it can)."""
    space = os.statvfs(f"/proc/self/fd/{store_fd}")
    total = space.f_blocks * space.f_frsize
    free = space.f_bavail * space.f_frsize
    if total and free < KEEP_FREE * total:
        return f"the file system has {free >> 20} MiB free, under {KEEP_FREE:.0%}"
    if connection is None:
        return None  # the store's size is in the database
    used = connection.execute(  # type: ignore[attr-defined]
        "SELECT COALESCE(SUM(core_stored), 0) FROM crashes WHERE core IS NOT NULL"
    ).fetchone()[0]
    if total and used > MAX_USE * total:
        return f"the store holds {used >> 20} MiB of cores, over {MAX_USE:.0%} of the disk"
    return None


def _compress(file: BinaryIO, limit: int, cap: int | None = None) -> tuple[int, bool]:
    """The core from stdin into ``file`` (zstd), at most ``limit`` bytes of it and ``cap``
    bytes compressed; the rest is read and dropped.  (bytes read, cut)."""
    import zstandard

    # Level 3 on every CPU: the crashed process's exit waits for this.
    compressor = zstandard.ZstdCompressor(level=3, threads=-1)
    writer = compressor.stream_writer(file, closefd=False)
    stdin = os.fdopen(0, "rb", buffering=0, closefd=False)
    read = 0
    cut = False
    while chunk := stdin.read(_CHUNK):
        if read < limit and not cut:
            writer.write(chunk[: limit - read])
            cut = cap is not None and file.tell() >= cap
        read += len(chunk)
    writer.flush(zstandard.FLUSH_FRAME)
    file.flush()
    return read, cut or read > limit


def _drain(store_fd: int, name: str, limit: int) -> tuple[int, int, bool]:
    """The core from stdin into spool/NAME, fsynced.  (bytes read, bytes written, cut)."""
    spool = os.open(SPOOL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=store_fd)
    try:
        fd = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=spool,
        )
        with os.fdopen(fd, "wb") as file:
            read, cut = _compress(file, limit)
            os.fsync(file.fileno())
            written = file.tell()
        os.fsync(spool)
        return read, written, cut
    finally:
        os.close(spool)


def _drain_to_memory(limit: int) -> tuple[int, int, int]:
    """The core from stdin into a memory file (zstd, at most :data:`TRANSIENT_MAX`), for the
    report of a crash whose core is not kept: (the memory file, bytes read, bytes in memory).
    The file is inherited by the analysis and gone when it ends."""
    memfd = os.memfd_create("redhand-core", 0)
    with os.fdopen(memfd, "wb", closefd=False) as file:
        read, _cut = _compress(file, limit, TRANSIENT_MAX)
        return memfd, read, file.tell()


def _drain_to_nothing() -> int:
    stdin = os.fdopen(0, "rb", buffering=0, closefd=False)
    total = 0
    while chunk := stdin.read(_CHUNK):
        total += len(chunk)
    return total


def recent_crashes(
    connection: sqlite3.Connection, uid: int | None, exe: str | None, comm: str
) -> int:
    """How many crashes of a program had their core kept or their report made in the last
    minute: at :data:`RATE`, it is in a crash loop.  The program is a user's (a user cannot
    name a process to silence another's) with the same executable, or the same command name
    (a record may have either, or be given its executable by its analysis).  By the crash
    time's index: only the last minute is read."""
    count: int = connection.execute(
        "SELECT COUNT(*) FROM crashes WHERE time > ? AND uid IS ? AND (exe = ? OR comm = ?) "
        "AND (note IS NULL OR note NOT LIKE ?)",
        (time.time() - 60, uid, exe, comm, f"{_RATE_NOTE}%"),
    ).fetchone()[0]
    return count


def start_analysis(
    store: str, crash_id: str | None, core_fd: int | None = None, root_fd: int | None = None
) -> None:
    """``redhand crashes analyze ID``, detached (the kernel does not wait for it), then the
    crashes that have waited too long; given ``core_fd``, the core in memory that it
    analyzes instead of a stored one; ``root_fd``, the crashed process's own root directory
    (a container's), where its files are.  No ``crash_id``: only those that waited."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                null = os.open(os.devnull, os.O_RDWR)
                log = os.open(
                    os.path.join(store, "analysis.log"),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
                    0o600,
                )
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(log, 2)
                # Nothing else of the collector's goes on (a pidfd on 3, a server's socket),
                # and the stop signals a server's child ignores are the analysis's again.
                keep = {fd for fd in (core_fd, root_fd) if fd is not None}
                for fd in range(3, max(keep | {3}) + 1):
                    if fd not in keep:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                os.closerange(max(keep | {3}) + 1, 65536)
                for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signo, signal.SIG_DFL)
                # One analysis at a time, behind the collectors of a burst of crashes: the
                # lock is waited for here, before Python starts again, and held to the end.
                os.nice(10)
                lock = os.open(
                    os.path.join(store, "analysis.lock"),
                    os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW,
                    0o600,
                )
                fcntl.flock(lock, fcntl.LOCK_EX)
                os.set_inheritable(lock, True)
                command = [sys.executable, "-m", "redhand", "crashes", "--store", store,
                           "analyze", *([crash_id] if crash_id else []),
                           "--and-stale", str(STALE)]  # fmt: skip
                if core_fd is not None:
                    command += ["--core-fd", str(core_fd)]
                if root_fd is not None:
                    os.set_inheritable(root_fd, True)
                    command += ["--root-fd", str(root_fd)]
                os.execv(sys.executable, command)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def occupy_standard_descriptors() -> None:
    """The kernel starts the collector without standard output and error: /dev/null takes
    their numbers, so that no file opened later (the store, a root) gets them and is then
    written to, or replaced when the analysis is given its log."""
    while (fd := os.open(os.devnull, os.O_RDWR)) <= 2:
        os.set_inheritable(fd, True)
    os.close(fd)


def arguments(argv: list[str]) -> dict[str, str]:
    """The core_pattern's arguments by name (``%P %i %I %s %t %c %d %u %g %F %h %e``)."""
    values = (argv + [""] * len(_ARGUMENTS))[: len(_ARGUMENTS)]
    args = dict(zip(_ARGUMENTS, values, strict=True))
    if len(argv) > len(_ARGUMENTS):  # %e last: a command name with spaces
        args["comm"] = " ".join(argv[len(_ARGUMENTS) - 1 :])
    return args


Identity = tuple[str, dict[str, str | None], int | None]


def collect(
    argv: list[str],
    store: str = DEFAULT_STORE,
    *,
    analyze: bool = True,
    known: Identity | None = None,
) -> int:
    """Collect one crash (see the module's documentation); the crash's id is printed.
    ``known``: what :func:`identify` said while the process was there (the coredump socket's
    server asks before the kernel writes the core, after which the process may be gone)."""
    os.umask(0o077)
    occupy_standard_descriptors()
    args = arguments(argv)
    crash_id = os.urandom(16).hex()
    try:
        store_fd = open_store(store, create=True)
    except StoreError as error:
        _drain_to_nothing()
        if sys.stderr is not None:
            print(f"redhand collect: {error.strerror or error}", file=sys.stderr)
        return 1
    try:
        identity, facts, root = known if known is not None else identify(args)
        connection: sqlite3.Connection | None = None
        trouble = None  # why the database could not be used: the record goes beside the core
        limit = _number(args["core_limit"])
        limit = MAX_CORE if limit is None or limit < 0 else min(limit, MAX_CORE)
        note = None
        recent = 0
        try:
            connection = connect(store_fd)
            if limit != 0:
                note = _room(store_fd, connection)
            recent = recent_crashes(connection, _number(args["uid"]), facts["exe"], args["comm"])
        except sqlite3.Error as error:  # it cannot be opened, or is damaged inside
            trouble = f"the crash database could not be used ({error})"
            if connection is not None:
                connection.close()
                connection = None
            note = note or _room(store_fd, None)
        if limit == 0:
            note = "the core size limit (RLIMIT_CORE) was 0"
        if note is None and recent >= RATE:
            note = f"{_RATE_NOTE}: {recent} in the last minute, no more cores or reports"
        core_name = None
        read = written = 0
        truncated = False
        transient = None
        if note is not None and not note.startswith(_RATE_NOTE) and analyze:
            # No core is kept, but a report is made from one held in memory.
            transient, read, in_memory = _drain_to_memory(limit or MAX_CORE)
            note += f"; held in memory for its report ({in_memory >> 10} KiB compressed)"
        elif note is None:
            core_name = f"{crash_id}.core.zst"
            try:
                read, written, truncated = _drain(store_fd, core_name, limit)
            except OSError as error:  # the disk filled while it was written
                with contextlib.suppress(OSError):
                    os.unlink(f"{SPOOL}/{core_name}", dir_fd=store_fd)
                core_name, written = None, 0
                note = f"the core could not be written: {error.strerror or error}"
                read = _drain_to_nothing()
            if truncated:
                note = f"cut at {limit} bytes (the core size limit) of {read}"
        else:
            read = _drain_to_nothing()
        row = {
            "id": crash_id,
            "time": float(_number(args["time"]) or time.time()),
            "collected": time.time(),
            "pid": _number(args["pid"]),
            "tid": _number(args["tid"]),
            "ns_pid": None,
            "ns_tid": _number(args["ns_tid"]),
            "signal": _number(args["signal"]),
            "uid": _number(args["uid"]),
            "gid": _number(args["gid"]),
            "dump_mode": _number(args["dump_mode"]),
            "core_limit": _limit(args["core_limit"]),
            "hostname": args["hostname"] or None,
            "comm": args["comm"] or None,
            "exe": facts["exe"],
            "cmdline": facts["cmdline"],
            "cgroup": facts["cgroup"],
            "container": facts["container"],
            "identity": identity,
            "core": f"{SPOOL}/{core_name}" if core_name else None,
            "core_bytes": read,
            "core_stored": written,
            "truncated": int(truncated),
            "note": note,
            "status": "collected",
        }
        if connection is not None:
            try:
                insert(connection, row)
            except sqlite3.Error as error:
                trouble = f"the crash database could not be used ({error})"
            finally:
                connection.close()
        if trouble is not None:
            row["note"] = "; ".join(str(n) for n in (row["note"], trouble) if n)
            write_pending(store_fd, row)
    finally:
        os.close(store_fd)
    # The kernel starts the collector with no standard output or error at all.
    if sys.stdout is not None:
        print(crash_id, flush=True)
    if analyze:
        start_analysis(store, crash_id, transient, root)
    for fd in (transient, root):
        if fd is not None:
            os.close(fd)
    return 0


# -- installing -------------------------------------------------------------------------

CORE_PATTERN = "/proc/sys/kernel/core_pattern"
SPECIFIERS = "%P %i %I %s %t %c %d %u %g %F %h %e"


def install(store: str = DEFAULT_STORE, command: str | None = None) -> str:
    """Make redhand the kernel's core handler; the previous core_pattern is kept in the
    store, for :func:`uninstall`.  The new pattern."""
    import shutil

    script = os.path.join(os.path.dirname(sys.executable), "redhand")  # beside this Python
    program = command or (script if os.access(script, os.X_OK) else None)
    program = program or shutil.which("redhand") or f"{sys.executable} -m redhand"
    if " " in program:
        raise ValueError(f"the kernel runs one program without spaces in its path: {program!r}")
    os.umask(0o077)
    store_fd = open_store(store, create=True)
    try:
        with open(CORE_PATTERN) as file:
            previous = file.read().strip()
        pattern = f"|{program} collect"
        if store != DEFAULT_STORE:
            pattern += f" --store {store}"
        pattern += f" {SPECIFIERS}"
        if len(pattern) > 127:
            raise ValueError(f"the core_pattern would be {len(pattern)} characters, over 127")
        remember_pattern(store_fd, previous)
        with open(CORE_PATTERN, "w") as file:
            file.write(pattern)
        return pattern
    finally:
        os.close(store_fd)


def remember_pattern(store_fd: int, previous: str, serving: str | None = None) -> bool:
    """Keep the core_pattern redhand replaces in the store, for :func:`uninstall` (also
    after a ``collect --serve`` that was killed before it could put it back), unless it is
    redhand's own: a pipe to ``redhand collect``, or the socket of a server of this store
    (``serving``: the pattern of the server now starting, kept as such).  Whether it was
    kept."""
    connection = connect(store_fd)
    try:
        row = connection.execute("SELECT value FROM meta WHERE key = 'server_pattern'").fetchone()
        ours = (previous.startswith("|") and "redhand" in previous and " collect" in previous) or (
            row is not None and previous == row[0]
        )
        if not ours:
            connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('previous_core_pattern', ?)",
                (previous,),
            )
        if serving is not None:
            connection.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('server_pattern', ?)",
                (serving,),
            )
        return not ours
    finally:
        connection.close()


def uninstall(store: str = DEFAULT_STORE) -> str:
    """Put back the core_pattern that was there before :func:`install`; that pattern."""
    store_fd = open_store(store, create=False)
    try:
        connection = connect(store_fd)
        row = connection.execute(
            "SELECT value FROM meta WHERE key = 'previous_core_pattern'"
        ).fetchone()
        connection.close()
    finally:
        os.close(store_fd)
    previous = row[0] if row else "core"
    with open(CORE_PATTERN, "w") as file:
        file.write(previous)
    return previous
