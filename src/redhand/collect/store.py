"""The crash store: a root-only folder with the cores and an SQLite database of the crashes.

    STORE/              0700, root's
      crashes.db        SQLite in WAL mode: one row per crash, one per bucket
      spool/            0700: CRASH_ID.core.zst, 0600

Only the standard library here: the collector (run by the kernel as root at
every crash) imports this module.  Every path is opened relative to the
store's directory descriptor with O_NOFOLLOW, and the store itself is checked
(a directory, not a symbolic link, owned by the user running, mode 0700)
before anything is written: a store or a core path replaced by a link is
refused, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import time

DEFAULT_STORE = "/var/lib/redhand"
DATABASE = "crashes.db"
SPOOL = "spool"
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS crashes (
    id TEXT PRIMARY KEY,            -- a random 128-bit id, in hex
    time REAL NOT NULL,             -- the kernel's %t (seconds since the epoch)
    collected REAL NOT NULL,
    pid INTEGER, tid INTEGER,       -- in the initial pid namespace (%P, %I)
    ns_pid INTEGER, ns_tid INTEGER, -- in the process's own (%p is not passed; %i)
    signal INTEGER, uid INTEGER, gid INTEGER,
    dump_mode INTEGER,              -- %d: 1 the process's user may read it, 2 root only
    core_limit INTEGER,             -- %c, RLIMIT_CORE when it crashed
    hostname TEXT, comm TEXT, exe TEXT, cmdline TEXT,
    cgroup TEXT,                    -- its cgroup (the unified hierarchy's, else the first)
    container TEXT,                 -- 'docker 0123456789ab', 'pid namespace 4026532000', ...
    identity TEXT,                  -- 'pidfd' (from the kernel), 'pidfd_open' or 'none'
    core TEXT,                      -- the core's file in the spool, or NULL
    core_bytes INTEGER,             -- bytes of core read from the kernel
    core_stored INTEGER,            -- bytes of the compressed file
    truncated INTEGER NOT NULL DEFAULT 0,
    note TEXT,                      -- why the core was not kept, or was cut
    status TEXT NOT NULL,           -- 'collected', 'analyzed', 'failed'
    attempts INTEGER NOT NULL DEFAULT 0,
    report BLOB,                    -- the crash report (JSON, zstd)
    signature TEXT, bucket TEXT, sig_version INTEGER, kind TEXT, frames TEXT,
    family TEXT                     -- the key of its bucket's family (one crash site)
);
CREATE INDEX IF NOT EXISTS crashes_bucket ON crashes (bucket, time);
CREATE INDEX IF NOT EXISTS crashes_exe ON crashes (exe, time);
CREATE INDEX IF NOT EXISTS crashes_time ON crashes (time);
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT PRIMARY KEY,
    signature TEXT NOT NULL, exe TEXT, kind TEXT,
    first_seen REAL, last_seen REAL, count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class StoreError(OSError):
    """The store cannot be used safely (a link, another owner, loose permissions)."""


def open_store(path: str, *, create: bool) -> int:
    """A descriptor of the store's directory, checked; created (0700) when missing and
    ``create``."""
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            message = f"the crash store {path} cannot be made: {error.strerror}"
            if error.errno == errno.ENOENT:
                message += " (the folder it goes in must exist)"
            raise StoreError(error.errno, message) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        message = f"the crash store {path} cannot be opened: {error.strerror}"
        if error.errno == errno.EACCES:
            message += " (the store is root's alone: run this as root)"
        elif error.errno == errno.ENOENT and not create:
            message += " (no crash was collected yet: see redhand collect --install, or --store)"
        raise StoreError(error.errno, message) from None
    try:
        _check(fd, path)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(SPOOL, 0o700, dir_fd=fd)
        try:
            spool = os.open(SPOOL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as error:  # a link, a file, or missing
            message = f"{path}/{SPOOL} cannot be used: {error.strerror}"
            raise StoreError(error.errno, message) from None
        try:
            _check(spool, f"{path}/{SPOOL}")
        finally:
            os.close(spool)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check(fd: int, path: str) -> None:
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode):
        raise StoreError(0, f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise StoreError(0, f"{path} belongs to uid {info.st_uid}, not to uid {os.geteuid()}")
    if info.st_mode & 0o077:
        raise StoreError(0, f"{path} is open to others (mode {info.st_mode & 0o777:o}, not 700)")


def connect(store_fd: int, patience: float = 30.0) -> sqlite3.Connection:
    """The crash database of a checked store (through its descriptor: no path is followed).

    Many collectors may open a new store at once: switching it to WAL and creating the
    tables can fail with "database is locked" before SQLite's busy handler is asked, so
    that is tried again, for ``patience`` seconds."""
    database = f"/proc/self/fd/{store_fd}/{DATABASE}"
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        connection = sqlite3.connect(database, timeout=patience, isolation_level=None)
        try:
            connection.execute("PRAGMA busy_timeout=30000")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            connection.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
            _migrate(connection)
            return connection
        except sqlite3.OperationalError as error:
            connection.close()
            busy = "locked" in str(error) or "busy" in str(error)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1 + int.from_bytes(os.urandom(1), "little") / 255))
            delay = min(delay * 2, 0.2)


# The statements that bring a store of the version before up to each version.
_MIGRATIONS = {
    2: [
        "ALTER TABLE crashes ADD COLUMN cgroup TEXT",
        "ALTER TABLE crashes ADD COLUMN container TEXT",
    ],
    3: ["ALTER TABLE crashes ADD COLUMN family TEXT"],  # filled by the analysis, or rebucket
}


def _migrate(connection: sqlite3.Connection) -> None:
    """An older store's tables brought up to :data:`SCHEMA_VERSION`, once, under the write
    lock (collectors may all try at once)."""

    def version() -> int:
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return int(row[0]) if row and str(row[0]).isdigit() else SCHEMA_VERSION

    if version() >= SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version() + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                connection.execute(statement)
        connection.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def stamp(seconds: float | None) -> str:
    """A crash's time as people read it (local time), or ``-``."""
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(seconds)))


def insert(connection: sqlite3.Connection, row: dict[str, object]) -> None:
    """A crash's record, in one short transaction."""
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    connection.execute("BEGIN IMMEDIATE")
    connection.execute(
        f"INSERT OR IGNORE INTO crashes ({columns}) VALUES ({marks})", tuple(row.values())
    )
    connection.execute("COMMIT")


_PENDING = ".record.json"
_COLUMNS = frozenset(
    [
        "id",
        "time",
        "collected",
        "pid",
        "tid",
        "ns_pid",
        "ns_tid",
        "signal",
        "uid",
        "gid",
        "dump_mode",
        "core_limit",
        "hostname",
        "comm",
        "exe",
        "cmdline",
        "cgroup",
        "container",
        "identity",
        "core",
        "core_bytes",
        "core_stored",
        "truncated",
        "note",
        "status",
    ]
)


def write_pending(store_fd: int, row: dict[str, object]) -> None:
    """A record the database could not take, kept beside the cores (``spool/ID.record.json``)
    until :func:`import_pending` moves it in."""
    import json

    spool = os.open(SPOOL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=store_fd)
    try:
        fd = os.open(
            f"{row['id']}{_PENDING}",
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=spool,
        )
        with os.fdopen(fd, "w") as file:
            json.dump(row, file)
            file.flush()
            os.fsync(file.fileno())
        os.fsync(spool)
    finally:
        os.close(spool)


def import_pending(store_fd: int, connection: sqlite3.Connection) -> int:
    """The records kept beside the cores while the database could not be used, moved into
    it; how many.  A file that is not such a record is left where it is."""
    import json

    spool = os.open(SPOOL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=store_fd)
    moved = 0
    try:
        for name in os.listdir(spool):
            if not name.endswith(_PENDING):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=spool)
                with os.fdopen(fd) as file:
                    row = json.loads(file.read(1 << 20))
            except (OSError, ValueError):
                continue
            if not isinstance(row, dict) or not set(row) <= _COLUMNS or "id" not in row:
                continue
            insert(connection, row)
            os.unlink(name, dir_fd=spool)
            moved += 1
    finally:
        os.close(spool)
    return moved


ORPHAN_AGE = 300.0  # seconds since a core's last write before it is taken for an orphan
_CORE = ".core.zst"


def adopt_orphans(store_fd: int, connection: sqlite3.Connection, now: float | None = None) -> int:
    """Cores in the spool that no record names (their records were lost with a damaged
    database that was moved aside) given a record of their own, to be analyzed: its facts
    (pid, signal, program, ...) then come from the core's report.  A core written to in the
    last :data:`ORPHAN_AGE` seconds may be a collector's that has yet to record it, and is
    left alone.  How many."""
    now = time.time() if now is None else now
    spool = os.open(SPOOL, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=store_fd)
    adopted = 0
    try:
        for name in os.listdir(spool):
            crash_id = name.removesuffix(_CORE)
            if (
                not name.endswith(_CORE)
                or len(crash_id) != 32
                or any(c not in "0123456789abcdef" for c in crash_id)
            ):
                continue
            try:
                facts = os.stat(name, dir_fd=spool, follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(facts.st_mode) or now - facts.st_mtime < ORPHAN_AGE:
                continue
            if connection.execute("SELECT 1 FROM crashes WHERE id = ?", (crash_id,)).fetchone():
                continue
            row: dict[str, object] = {
                "id": crash_id,
                "time": facts.st_mtime,
                "collected": facts.st_mtime,
                "identity": "none",
                "core": f"{SPOOL}/{name}",
                "core_stored": facts.st_size,
                "note": "its record was lost (a damaged crash database): "
                "its facts are the core's, its time the core's last write",
                "status": "collected",
            }
            insert(connection, row)
            adopted += 1
    finally:
        os.close(spool)
    return adopted
