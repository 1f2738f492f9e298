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
from typing import Any

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
    family: str | None = None  # the key of its family: the buckets of one crash site


@dataclass(frozen=True)
class CrashFamily:
    """The buckets of one crash site reached from different callers (the signature without
    the caller's frame): ``site`` is what their signatures share, ``buckets`` their keys,
    the most crashes first."""

    family: str
    count: int
    buckets: list[str]
    first_seen: float
    last_seen: float
    kind: str | None
    exe: str | None
    site: str
    hosts: int | None = None


def families_of(found: list[CrashBucket], hosts: dict[str, int] | None = None) -> list[CrashFamily]:
    """The families of some buckets (the most crashes first); a bucket analyzed before
    families were made (no family until ``rebucket``) is a family of its own."""
    groups: dict[str, list[CrashBucket]] = {}
    for bucket in found:
        groups.setdefault(bucket.family or bucket.bucket, []).append(bucket)
    families = []
    for key, members in groups.items():
        members.sort(key=lambda bucket: (-bucket.count, -bucket.last_seen))
        parts = [bucket.signature.split(" | ") for bucket in members]
        shared = parts[0]
        for other in parts[1:]:
            length = 0
            while length < min(len(shared), len(other)) and shared[length] == other[length]:
                length += 1
            shared = shared[:length]
        families.append(
            CrashFamily(
                family=key,
                count=sum(bucket.count for bucket in members),
                buckets=[bucket.bucket for bucket in members],
                first_seen=min(bucket.first_seen for bucket in members),
                last_seen=max(bucket.last_seen for bucket in members),
                kind=members[0].kind,
                exe=members[0].exe,
                site=" | ".join(shared) or members[0].signature,
                hosts=None if hosts is None else hosts.get(key),
            )
        )
    families.sort(key=lambda family: (-family.count, -family.last_seen))
    return families


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
    container: str | None = None  # 'docker 0123456789ab', 'pid namespace 4026532000', ...
    host: str | None = None  # from a fleet's database


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
        f"MAX(exe), MAX(signature), NULL, MAX(family) FROM crashes WHERE {where} "
        "AND bucket IS NOT NULL GROUP BY bucket ORDER BY COUNT(*) DESC, MAX(time) DESC",
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
    return _fleet_buckets(buckets(url, where, values))


def _fleet_buckets(rows: list[tuple[Any, ...]]) -> list[CrashBucket]:
    return [
        CrashBucket(key, count, cores, first, last, kind, exe, text, hosts, family)
        for key, count, cores, hosts, first, last, kind, exe, text, family in rows
    ]


def fleet_families(url: str, filter: CrashFilter) -> tuple[list[CrashBucket], list[CrashFamily]]:
    """The buckets of a fleet's PostgreSQL and their families, with the hosts of each."""
    from redhand.collect.fleet import families

    where, values = filter.where("%s", "EXTRACT(EPOCH FROM time)")
    rows, hosts = families(url, where, values)
    found = _fleet_buckets(rows)
    return found, families_of(found, hosts)


def store_list(connection: sqlite3.Connection, filter: CrashFilter) -> list[CrashRecord]:
    """The crashes of a store, the newest first."""
    where, values = filter.where()
    rows = connection.execute(
        "SELECT id, time, pid, signal, exe, comm, kind, bucket, core IS NOT NULL, status, note, "
        f"container FROM crashes WHERE {where} ORDER BY time DESC",
        values,
    ).fetchall()
    return [
        CrashRecord(crash_id, when, pid, sig, exe, comm, kind, bucket, bool(kept), status, note,
                    container)
        for crash_id, when, pid, sig, exe, comm, kind, bucket, kept, status, note, container
        in rows
    ]  # fmt: skip


def fleet_list(url: str, filter: CrashFilter) -> list[CrashRecord]:
    """The crashes of a fleet's PostgreSQL, the newest first (all analyzed: only those are
    sent)."""
    from redhand.collect.fleet import query

    where, values = filter.where("%s", "EXTRACT(EPOCH FROM time)")
    rows = query(
        url,
        "SELECT id, EXTRACT(EPOCH FROM time)::float8, pid, signal, exe, comm, kind, "
        f"bucket, core_kept, container, host FROM redhand_crashes WHERE {where} "
        "ORDER BY time DESC",
        values,
    )
    return [
        CrashRecord(
            i, t, pid, sig, exe, comm, kind, bucket, bool(kept), "analyzed", None, container, host
        )
        for i, t, pid, sig, exe, comm, kind, bucket, kept, container, host in rows
    ]


def fleet_record(url: str, text: str) -> dict[str, Any] | None:
    """A crash of a fleet's database by its id or a unique prefix: its fields and report
    (None when no crash, or more than one, has that prefix)."""
    from redhand.collect.fleet import connect

    connection = connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, host, EXTRACT(EPOCH FROM time)::float8, exe, signature, bucket, "
                "core_kept, container, report FROM redhand_crashes WHERE id LIKE %s LIMIT 2",
                (text.replace("%", "") + "%",),
            )
            rows = cursor.fetchall()
    finally:
        connection.close()
    if len(rows) != 1:
        return None
    keys = ("id", "host", "time", "exe", "signature", "bucket", "core_kept", "container", "report")
    return dict(zip(keys, rows[0], strict=True))


def crash_frames(report: dict[str, Any], limit: int = 40) -> list[dict[str, object]]:
    """The crashing thread's frames of a crash report, as ``crashes show`` and the web page
    list them: index, name, where (`` at file:line``) and module (its file name)."""
    crash = report.get("crash") or {}
    frames: list[dict[str, object]] = []
    for thread in report.get("threads", []):
        if thread.get("tid") != crash.get("thread"):
            continue
        for frame in thread.get("frames", [])[:limit]:
            where = f" at {frame['file']}:{frame['line']}" if frame.get("file") else ""
            frames.append(
                {
                    "index": frame.get("index"),
                    "name": frame.get("function") or f"{frame.get('pc', 0):#x}",
                    "where": where,
                    "module": (frame.get("module") or "?").rsplit("/", 1)[-1],
                }
            )
    return frames


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


def crash_families(
    store: str = DEFAULT_STORE, *, db: str | None = None, **filter: object
) -> list[CrashFamily]:
    """The families of :func:`crash_buckets`' buckets: one crash site each, reached from
    different callers (in a fleet's database with the hosts each was seen on)."""
    if db is not None:
        return fleet_families(db, CrashFilter(**filter))[1]  # type: ignore[arg-type]
    return families_of(crash_buckets(store, **filter))  # type: ignore[arg-type]


def crash_list(store: str = DEFAULT_STORE, **filter: object) -> list[CrashRecord]:
    """The crashes of this machine's crash store, the newest first, filtered by
    :class:`CrashFilter`'s fields given as keywords."""
    connection = _store(store)
    try:
        return store_list(connection, CrashFilter(**filter))  # type: ignore[arg-type]
    finally:
        connection.close()
