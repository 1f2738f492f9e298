"""The crash store read from Python: buckets and crashes, filtered as ``redhand crashes``.

    >>> import redhand
    >>> for bucket in redhand.crash_buckets(since=time.time() - 86400):
    ...     print(bucket.count, bucket.signature)

:func:`crash_buckets` reads this machine's store, or a fleet's PostgreSQL
(``db=``); :func:`crash_list` reads the store.  ``redhand crashes`` and
``redhand crashes list`` print the same objects, and their ``--json`` is
:func:`dataclasses.asdict` of them.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

from redhand.collect.store import DEFAULT_STORE, connect, open_store


@dataclass(frozen=True)
class CrashFilter:
    """Which crashes: a program (its path, or its file name), a pid, a crash kind, a time
    range (seconds since the epoch), and in a fleet's database a host."""

    exe: str | None = None
    pid: int | None = None
    kind: str | None = None
    since: float | None = None
    until: float | None = None
    host: str | None = None

    def where(self, mark: str = "?", time: str = "time") -> tuple[str, list[object]]:
        """The SQL condition and its values (``mark`` and ``time`` as the database spells
        them: SQLite's ``?`` and seconds, or PostgreSQL's ``%s`` and a timestamp)."""
        where, values = ["1 = 1"], list[object]()
        if self.exe:
            where.append(f"(exe = {mark} OR exe LIKE {mark})")
            values += [self.exe, f"%/{self.exe}"]
        if self.pid is not None:
            where.append(f"pid = {mark}")
            values.append(self.pid)
        if self.kind:
            where.append(f"kind = {mark}")
            values.append(self.kind)
        if self.since is not None:
            where.append(f"{time} >= {mark}")
            values.append(self.since)
        if self.until is not None:
            where.append(f"{time} <= {mark}")
            values.append(self.until)
        if self.host and mark != "?":  # a machine's own store has no hosts
            where.append(f"host = {mark}")
            values.append(self.host)
        return " AND ".join(where), values


@dataclass(frozen=True)
class CrashBucket:
    """The crashes of one signature.  ``hosts``: on how many machines (a fleet's database;
    None for one machine's store)."""

    bucket: str
    count: int
    cores: int
    first_seen: float
    last_seen: float
    kind: str | None
    exe: str | None
    signature: str
    hosts: int | None = None


@dataclass(frozen=True)
class CrashRecord:
    """One crash as ``redhand crashes list`` shows it; ``status`` is ``collected`` (its
    analysis waits), ``analyzed`` or ``failed``."""

    id: str
    time: float
    pid: int | None
    signal: int | None
    exe: str | None
    comm: str | None
    kind: str | None
    bucket: str | None
    core_kept: bool
    status: str
    note: str | None


def _store(store: str) -> sqlite3.Connection:
    fd = open_store(store, create=False)
    try:
        return connect(fd)
    finally:
        os.close(fd)


def store_buckets(
    connection: sqlite3.Connection, filter: CrashFilter
) -> tuple[list[CrashBucket], int]:
    """The buckets of a store, the most crashes first, and how many crashes wait for their
    analysis."""
    where, values = filter.where()
    rows = connection.execute(
        "SELECT bucket, COUNT(*), SUM(core IS NOT NULL), MIN(time), MAX(time), MAX(kind), "
        f"MAX(exe), MAX(signature) FROM crashes WHERE {where} AND bucket IS NOT NULL "
        "GROUP BY bucket ORDER BY COUNT(*) DESC, MAX(time) DESC",
        values,
    ).fetchall()
    waiting = connection.execute(
        f"SELECT COUNT(*) FROM crashes WHERE {where} AND bucket IS NULL", values
    ).fetchone()[0]
    return [CrashBucket(*row) for row in rows], waiting


def fleet_buckets(url: str, filter: CrashFilter) -> list[CrashBucket]:
    """The buckets of a fleet's PostgreSQL, the most crashes first."""
    from redhand.collect.fleet import buckets

    where, values = filter.where("%s", "EXTRACT(EPOCH FROM time)")
    return [
        CrashBucket(key, count, cores, first, last, kind, exe, text, hosts)
        for key, count, cores, hosts, first, last, kind, exe, text in buckets(url, where, values)
    ]


def store_list(connection: sqlite3.Connection, filter: CrashFilter) -> list[CrashRecord]:
    """The crashes of a store, the newest first."""
    where, values = filter.where()
    rows = connection.execute(
        "SELECT id, time, pid, signal, exe, comm, kind, bucket, core IS NOT NULL, status, note "
        f"FROM crashes WHERE {where} ORDER BY time DESC",
        values,
    ).fetchall()
    return [
        CrashRecord(crash_id, when, pid, sig, exe, comm, kind, bucket, bool(kept), status, note)
        for crash_id, when, pid, sig, exe, comm, kind, bucket, kept, status, note in rows
    ]


def crash_buckets(
    store: str = DEFAULT_STORE, *, db: str | None = None, **filter: object
) -> list[CrashBucket]:
    """The buckets of this machine's crash store (or of a fleet's PostgreSQL, ``db``),
    filtered by :class:`CrashFilter`'s fields given as keywords.  Raises
    :class:`~redhand.collect.store.StoreError` for a store that cannot be opened."""
    chosen = CrashFilter(**filter)  # type: ignore[arg-type]
    if db is not None:
        return fleet_buckets(db, chosen)
    connection = _store(store)
    try:
        return store_buckets(connection, chosen)[0]
    finally:
        connection.close()


def crash_list(store: str = DEFAULT_STORE, **filter: object) -> list[CrashRecord]:
    """The crashes of this machine's crash store, the newest first, filtered by
    :class:`CrashFilter`'s fields given as keywords."""
    connection = _store(store)
    try:
        return store_list(connection, CrashFilter(**filter))  # type: ignore[arg-type]
    finally:
        connection.close()
