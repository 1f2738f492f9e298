"""A fleet's crashes in PostgreSQL: ``redhand crashes push`` and ``redhand crashes --db``.

Never used by the root collector (a database driver is no thing to import at a
crash, and a slow network no thing to wait for): ``push`` runs later, as any
user that can read the store, over one connection, and sends the analyzed
crashes not sent yet.  Idempotent: a crash's id is its primary key, and a
crash sent twice is kept once (``ON CONFLICT DO NOTHING``).  Buckets are the
same keys on every machine, so the fleet's buckets are a GROUP BY, with the
number of hosts each was seen on.

The schema is versioned: :data:`MIGRATIONS` are applied in order, each once,
and recorded in ``redhand_schema``.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from typing import Any

MIGRATIONS: list[str] = [
    # 1: crashes and the schema's version
    """
    CREATE TABLE IF NOT EXISTS redhand_crashes (
        id text PRIMARY KEY,
        host text NOT NULL,
        time timestamptz NOT NULL,
        pid integer, signal integer, uid integer,
        exe text, comm text, kind text,
        bucket text, signature text, sig_version integer,
        core_bytes bigint, core_kept boolean,
        received timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS redhand_crashes_bucket ON redhand_crashes (bucket, time DESC);
    CREATE INDEX IF NOT EXISTS redhand_crashes_time ON redhand_crashes (time DESC);
    """,
    # 2: the crash report itself, for `show` across the fleet
    """
    ALTER TABLE redhand_crashes ADD COLUMN IF NOT EXISTS report jsonb;
    """,
    # 3: the container a crash was in
    """
    ALTER TABLE redhand_crashes ADD COLUMN IF NOT EXISTS container text;
    """,
    # 4: its bucket's family (one crash site reached from different callers)
    """
    ALTER TABLE redhand_crashes ADD COLUMN IF NOT EXISTS family text;
    """,
]


def connect(url: str) -> Any:
    try:
        import psycopg
    except ImportError:
        raise RuntimeError(
            "PostgreSQL needs psycopg 3: pip install 'redhand[fleet]' (or psycopg[binary])"
        ) from None
    return psycopg.connect(url, autocommit=False, connect_timeout=30)


def migrate(connection: Any) -> int:
    """Apply the migrations not applied yet; the schema's version."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS redhand_schema (version integer PRIMARY KEY, "
            "applied timestamptz NOT NULL DEFAULT now())"
        )
        cursor.execute("SELECT pg_advisory_xact_lock(7451020)")  # one migrating host at a time
        cursor.execute("SELECT COALESCE(MAX(version), 0) FROM redhand_schema")
        current = int(cursor.fetchone()[0])
        for version, statement in enumerate(MIGRATIONS[current:], start=current + 1):
            cursor.execute(statement)
            cursor.execute("INSERT INTO redhand_schema (version) VALUES (%s)", (version,))
    connection.commit()
    return len(MIGRATIONS)


def push(store_connection: sqlite3.Connection, url: str, host: str | None = None) -> int:
    """Send this machine's analyzed crashes; how many the fleet did not have."""
    import zstandard

    host = host or socket.gethostname()
    rows = store_connection.execute(
        "SELECT id, time, pid, signal, uid, exe, comm, kind, bucket, signature, sig_version, "
        "core_bytes, core IS NOT NULL, container, family, report FROM crashes "
        "WHERE status = 'analyzed'"
    ).fetchall()
    decompress = zstandard.ZstdDecompressor().decompress
    connection = connect(url)
    try:
        migrate(connection)
        sent = 0
        with connection.cursor() as cursor:
            for row in rows:
                *fields, report = row
                document = json.loads(decompress(report)) if report else None
                # A crash sent before families were made gets its family now, in the same
                # statement (one round trip a crash): the row tells whether it was new.
                cursor.execute(
                    "INSERT INTO redhand_crashes (id, host, time, pid, signal, uid, exe, comm, "
                    "kind, bucket, signature, sig_version, core_bytes, core_kept, container, "
                    "family, report) VALUES (%s, %s, to_timestamp(%s), %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                    "family = EXCLUDED.family WHERE redhand_crashes.family IS NULL "
                    "AND EXCLUDED.family IS NOT NULL RETURNING (xmax = 0)",
                    (fields[0], host, *fields[1:12], bool(fields[12]), fields[13], fields[14],
                     json.dumps(document) if document is not None else None),
                )  # fmt: skip
                inserted = cursor.fetchone()
                sent += bool(inserted and inserted[0])
        connection.commit()
        return sent
    finally:
        connection.close()


def queries(url: str, *asked: tuple[str, list[object]]) -> list[list[tuple[Any, ...]]]:
    """The rows of each query (a statement and its values), over one connection to the
    fleet's database (its schema brought up to date first)."""
    connection = connect(url)
    try:
        migrate(connection)
        answers = []
        with connection.cursor() as cursor:
            for statement, values in asked:
                cursor.execute(statement, values)
                answers.append(list(cursor.fetchall()))
        return answers
    finally:
        connection.close()


def query(url: str, statement: str, values: list[object]) -> list[tuple[Any, ...]]:
    """The rows of one query of the fleet's database."""
    return queries(url, (statement, values))[0]


def _buckets_query(where: str, values: list[object]) -> tuple[str, list[object]]:
    """The fleet's buckets, the most crashes first: (bucket, crashes, cores kept, hosts,
    first seen, last seen, kind, exe, signature, family)."""
    # Counted per (bucket, host) first, then per bucket: half the time of one GROUP BY with
    # COUNT(DISTINCT host); the words of a bucket are its latest crash's.
    return (
        "WITH per_host AS (SELECT bucket, host, COUNT(*) AS n, "
        "COUNT(*) FILTER (WHERE core_kept) AS cores, MIN(time) AS first, "
        f"MAX(time) AS last FROM redhand_crashes WHERE {where} AND bucket IS NOT NULL "
        "GROUP BY bucket, host), per_bucket AS (SELECT bucket, SUM(n)::bigint AS n, "
        "SUM(cores)::bigint AS cores, "
        "COUNT(*) AS hosts, MIN(first) AS first, MAX(last) AS last FROM per_host "
        "GROUP BY bucket) "
        "SELECT b.bucket, n, cores, hosts, EXTRACT(EPOCH FROM first)::float8, "
        "EXTRACT(EPOCH FROM last)::float8, "
        "latest.kind, latest.exe, latest.signature, latest.family FROM per_bucket b "
        "CROSS JOIN LATERAL (SELECT kind, exe, signature, family FROM redhand_crashes c "
        f"WHERE c.bucket = b.bucket AND {where} ORDER BY time DESC LIMIT 1) latest "
        "ORDER BY n DESC, last DESC",
        [*values, *values],
    )


def buckets(url: str, where: str, values: list[object]) -> list[tuple[Any, ...]]:
    """The fleet's buckets (see :func:`_buckets_query`)."""
    return query(url, *_buckets_query(where, values))


def families(
    url: str, where: str, values: list[object]
) -> tuple[list[tuple[Any, ...]], dict[str, int]]:
    """The fleet's buckets (see :func:`_buckets_query`) and on how many hosts each family was
    seen (a bucket without a family is a family of its own), over one connection."""
    found, hosts = queries(
        url,
        _buckets_query(where, values),
        (  # (family, host) pairs first, then counted: as for the buckets, not COUNT(DISTINCT)
            "SELECT family, COUNT(*) FROM (SELECT COALESCE(family, bucket) AS family, host "
            f"FROM redhand_crashes WHERE {where} AND bucket IS NOT NULL GROUP BY 1, 2) pairs "
            "GROUP BY family",
            values,
        ),
    )
    return found, {key: int(count) for key, count in hosts}
