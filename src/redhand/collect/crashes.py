"""``redhand crashes``: the crashes kept on this machine, grouped by bucket.

    redhand crashes [--store DIR] [FILTERS] [--json]      buckets: count, first and last seen
    redhand crashes list [FILTERS] [--json]               every crash, newest first
    redhand crashes families [FILTERS] [--json]           buckets of one crash site together
    redhand crashes show CRASH|BUCKET|FAMILY [--json]     a crash's report, a bucket's crashes
    redhand crashes dump CRASH -o FILE                    the core, decompressed, sparse
    redhand crashes debug CRASH                           gdb on the program and its core
    redhand crashes analyze [CRASH ...]                   analyze what is waiting (see analyze.py)
    redhand crashes rebucket                              signatures again, by the current rules
    redhand crashes du                                    the store's size
    redhand crashes prune [--cores-older-than 30d] [--records-older-than 180d]
    redhand crashes push --to postgresql://...            send the analyzed crashes to a fleet
    redhand crashes --db URL [list|families|show ID]      the fleet's buckets or crashes (--host)
    redhand crashes [--db URL] serve [--listen 127.0.0.1] [--port 8420]  a read-only web page

FILTERS: ``--exe PATH-OR-NAME``, ``--pid N``, ``--kind KIND``, ``--since``
and ``--until`` (``2026-12-01``, ``2026-12-01 14:00``, or ``3d``/``12h`` ago).
Ids are a crash's id or a bucket's key, or any unique prefix of either.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import errno
import json
import os
import sqlite3
import sys
import time
from typing import Any

from redhand.collect.query import (
    CrashBucket,
    CrashFamily,
    CrashFilter,
    CrashRecord,
    crash_frames,
    families_of,
    fleet_buckets,
    fleet_families,
    fleet_list,
    fleet_record,
    store_buckets,
    store_list,
)
from redhand.collect.store import DEFAULT_STORE, StoreError, connect, open_store, stamp

_EXIT_NOT_FOUND = 3
_EXIT_DATABASE = 9
_EXIT_OUTPUT = 13


def _store_exit(error: StoreError) -> int:
    """The exit code of a store that cannot be opened: 4 not allowed, 11 otherwise."""
    return 4 if error.errno in (errno.EACCES, errno.EPERM) else 11


_VERBS = [
    "buckets",
    "list",
    "families",
    "show",
    "dump",
    "debug",
    "push",
    "serve",
    "analyze",
    "rebucket",
    "du",
    "prune",
]


def _when(text: str) -> float:
    """A time: an ISO date (and time), or a duration ago (``3d``, ``12h``, ``30m``)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if text and text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(text[:-1]) * units[text[-1]]
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {text!r} (2026-12-01, '2026-12-01 14:00', or 3d, 12h ago)"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="redhand crashes", description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("REDHAND_STORE", DEFAULT_STORE))
    parser.add_argument("--json", action="store_true", help="print JSON (one document)")
    parser.add_argument("--exe", help="only this program (a path, or its file name)")
    parser.add_argument("--pid", type=int, help="only crashes of this pid")
    parser.add_argument("--kind", help="only this crash kind (null-dereference, assertion, ...)")
    parser.add_argument("--since", type=_when, help="only crashes since then")
    parser.add_argument("--until", type=_when, help="only crashes until then")
    parser.add_argument("-o", "--output", help="dump: the file to write")
    parser.add_argument("--to", help="push: the fleet's PostgreSQL (postgresql://...)")
    parser.add_argument("--db", help="read the fleet's buckets from PostgreSQL instead")
    parser.add_argument("--host", help="--db: only crashes of this host")
    parser.add_argument("--listen", default="127.0.0.1", help="serve: the address (localhost)")
    parser.add_argument("--port", type=int, default=8420, help="serve: the port (0: any free)")
    parser.add_argument("--core-fd", type=int, help=argparse.SUPPRESS)  # from the collector
    parser.add_argument("--root-fd", type=int, help=argparse.SUPPRESS)  # from the collector
    parser.add_argument("--and-stale", type=float, help=argparse.SUPPRESS)  # from the collector
    parser.add_argument("--cores-older-than", type=_when, dest="cores_before")
    parser.add_argument("--records-older-than", type=_when, dest="records_before")
    parser.add_argument(
        "verb",
        nargs="?",
        default="buckets",
        choices=_VERBS,
    )
    parser.add_argument("ids", nargs="*")
    return parser


def _damaged(store: str, error: sqlite3.DatabaseError) -> int:
    print(
        f"redhand crashes: the crash database {store}/crashes.db cannot be used ({error}): "
        "move it aside, and `redhand crashes analyze` makes a new one with the records the "
        "collector kept beside the cores since, and a record for every core whose record "
        "was lost",
        file=sys.stderr,
    )
    return 10


def _filter(args: argparse.Namespace) -> CrashFilter:
    return CrashFilter(args.exe, args.pid, args.kind, args.since, args.until, args.host)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "serve":
        return _serve(args)
    if args.db:
        return _fleet(args)
    if args.verb == "analyze":
        from redhand.collect.analyze import analyze

        try:
            results = analyze(
                args.store, args.ids or None, args.core_fd, args.root_fd, args.and_stale
            )
        except StoreError as error:
            print(f"redhand: {error.strerror or error}", file=sys.stderr)
            return _store_exit(error)
        except sqlite3.DatabaseError as error:
            return _damaged(args.store, error)
        except ValueError as error:
            print(f"redhand crashes analyze: {error}", file=sys.stderr)
            return 2
        for result in results:
            status = result.signature if result.ok else f"failed: {result.problem}"
            print(f"{result.crash}: {status}")
        return 0
    try:
        store_fd = open_store(args.store, create=False)
    except StoreError as error:
        print(f"redhand: {error.strerror or error}", file=sys.stderr)
        return _store_exit(error)
    try:
        connection = connect(store_fd)
    except sqlite3.DatabaseError as error:
        os.close(store_fd)
        return _damaged(args.store, error)
    try:
        verb = {
            "buckets": _buckets,
            "list": _list,
            "families": _families,
            "show": _show,
            "dump": _dump,
            "push": _push,
            "debug": _debug,
            "rebucket": _rebucket,
            "du": _du,
            "prune": _prune,
        }[args.verb]
        return verb(connection, store_fd, args)
    finally:
        connection.close()
        os.close(store_fd)


def _buckets(connection: sqlite3.Connection, _fd: int, args: argparse.Namespace) -> int:
    found, waiting = store_buckets(connection, _filter(args))
    if args.json:
        document = {
            "redhand": 1,
            "kind": "crash-buckets",
            "buckets": [dataclasses.asdict(bucket) for bucket in found],
            "not_analyzed": waiting,
        }
        print(json.dumps(document))
        return 0
    _print_buckets(found)
    if waiting:
        print(f"{waiting} crash(es) not analyzed yet (redhand crashes analyze)")
    return 0


def _line(key: str, count: object, middle: object, first: object, last: object, text: str) -> str:
    """A line of the bucket and family tables (their headings too)."""
    return f"{key[:12]:<12} {count:>6} {middle:>7}  {first:<19}  {last:<19}  {text[:200]}"


def _print_buckets(found: list[CrashBucket]) -> None:
    fleet = any(bucket.hosts is not None for bucket in found)
    many, how_many = ("HOSTS", "hosts") if fleet else ("CORES", "cores")
    print(_line("BUCKET", "COUNT", many, "FIRST SEEN", "LAST SEEN", "PROGRAM: SIGNATURE"))
    for bucket in found:
        name = (bucket.exe or "?").rsplit("/", 1)[-1]
        print(
            _line(bucket.bucket, bucket.count, getattr(bucket, how_many),
                  stamp(bucket.first_seen), stamp(bucket.last_seen),
                  f"{name}: {bucket.signature}")
        )  # fmt: skip
    shared = [family for family in families_of(found) if len(family.buckets) > 1]
    if shared:
        print(
            f"{sum(len(family.buckets) for family in shared)} buckets are {len(shared)} crash "
            "site(s) reached from different callers: redhand crashes families"
        )


def _families(connection: sqlite3.Connection, _fd: int, args: argparse.Namespace) -> int:
    found, _waiting = store_buckets(connection, _filter(args))
    return _print_families(found, families_of(found), args.json)


def _print_families(found: list[CrashBucket], families: list[CrashFamily], as_json: bool) -> int:
    if as_json:
        document = [dataclasses.asdict(family) for family in families]
        print(json.dumps({"redhand": 1, "kind": "crash-families", "families": document}))
        return 0
    signatures = {bucket.bucket: bucket for bucket in found}
    print(_line("FAMILY", "COUNT", "BUCKETS", "FIRST SEEN", "LAST SEEN", "PROGRAM: CRASH SITE"))
    for family in families:
        name = (family.exe or "?").rsplit("/", 1)[-1]
        print(
            _line(family.family, family.count, len(family.buckets), stamp(family.first_seen),
                  stamp(family.last_seen), f"{name}: {family.site}")
        )  # fmt: skip
        if len(family.buckets) > 1:  # each way to the site: the bucket and its own frames
            for key in family.buckets:
                bucket = signatures[key]
                rest = bucket.signature[len(family.site) :].lstrip(" |") or "(the site itself)"
                print(f"  bucket {key[:12]} {bucket.count:>6}  ... | {rest[:160]}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from redhand.collect import web
    except ImportError:
        print("redhand crashes serve needs Flask: pip install 'redhand[web]'", file=sys.stderr)
        return 2
    try:
        source: web.Source = web.FleetSource(args.db) if args.db else web.StoreSource(args.store)
        if not args.db:
            os.close(open_store(args.store, create=False))  # refused now, not at the first page
    except StoreError as error:
        print(f"redhand: {error.strerror or error}", file=sys.stderr)
        return _store_exit(error)
    except Exception as error:  # the driver's errors: one line, not a traceback
        print(f"redhand crashes: {args.db}: {error}".splitlines()[0], file=sys.stderr)
        return _EXIT_DATABASE
    try:
        web.serve(source, args.listen, args.port)
    except OSError as error:
        print(
            f"redhand crashes serve: cannot listen on {args.listen}:{args.port}: "
            f"{error.strerror or error} (another --port?)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _fleet(args: argparse.Namespace) -> int:
    """``--db``: the fleet's buckets, its crashes, or one crash's report."""
    verbs = {
        "buckets": _fleet_buckets,
        "list": _fleet_list,
        "show": _fleet_show,
        "families": _fleet_families,
    }
    verb = verbs.get(args.verb)
    if verb is None:
        print(
            f"redhand crashes {args.verb}: not with --db (a fleet's database has buckets, "
            "list, families and show, and serve; the rest works on a machine's store)",
            file=sys.stderr,
        )
        return 2
    try:
        return verb(args)
    except Exception as error:  # the driver's errors: one line, not a traceback
        print(f"redhand crashes: {args.db}: {error}".splitlines()[0], file=sys.stderr)
        return _EXIT_DATABASE


def _fleet_list(args: argparse.Namespace) -> int:
    return _print_crashes(fleet_list(args.db, _filter(args)), args.json)


def _fleet_show(args: argparse.Namespace) -> int:
    if not args.ids:
        print("redhand crashes show: a crash id is expected", file=sys.stderr)
        return 2
    record = fleet_record(args.db, args.ids[0])
    if record is None:
        print(f"redhand crashes: no crash {args.ids[0]!r} in {args.db}", file=sys.stderr)
        return _EXIT_NOT_FOUND
    if args.json:
        print(json.dumps({"redhand": 1, "kind": "crash-record", "note": None, "core": None,
                          **record}))  # fmt: skip
        return 0
    _print_record(
        record["id"], record["exe"], record["time"], record["signature"], record["bucket"],
        None, record["report"], record["host"], record["container"],
    )  # fmt: skip
    return 0


def _fleet_families(args: argparse.Namespace) -> int:
    return _print_families(*fleet_families(args.db, _filter(args)), args.json)


def _fleet_buckets(args: argparse.Namespace) -> int:
    found = fleet_buckets(args.db, _filter(args))
    if args.json:
        document = [dataclasses.asdict(bucket) for bucket in found]
        print(json.dumps({"redhand": 1, "kind": "crash-buckets", "buckets": document}))
        return 0
    _print_buckets(found)
    return 0


def _push(connection: sqlite3.Connection, _fd: int, args: argparse.Namespace) -> int:
    from redhand.collect.fleet import push

    if not args.to:
        print("redhand crashes push: --to postgresql://... is expected", file=sys.stderr)
        return 2
    try:
        sent = push(connection, args.to, args.host)
    except Exception as error:  # the driver's errors: one line, not a traceback
        print(f"redhand crashes: {args.to}: {error}".splitlines()[0], file=sys.stderr)
        return _EXIT_DATABASE
    print(f"{sent} crash(es) sent to the fleet")
    return 0


def _list(connection: sqlite3.Connection, _fd: int, args: argparse.Namespace) -> int:
    return _print_crashes(store_list(connection, _filter(args)), args.json)


def _print_crashes(found: list[CrashRecord], as_json: bool) -> int:
    if as_json:
        crashes = [dataclasses.asdict(crash) for crash in found]
        print(json.dumps({"redhand": 1, "kind": "crash-list", "crashes": crashes}))
        return 0
    for crash in found:
        name = (crash.exe or crash.comm or "?").rsplit("/", 1)[-1]
        host = f"  {crash.host}" if crash.host else ""
        host += f"  [{crash.container}]" if crash.container else ""
        print(
            f"{crash.id[:12]}  {stamp(crash.time)}{host}  pid {crash.pid}  signal {crash.signal}  "
            f"{name}  {crash.kind or crash.status}  bucket {(crash.bucket or '-')[:12]}  "
            f"core {'kept' if crash.core_kept else 'no'}"
            + (f"  ({crash.note})" if crash.note else "")
        )
    return 0


def _find(connection: sqlite3.Connection, text: str) -> tuple[str, str] | None:
    """('crash', 'bucket' or 'family', the full key) for a key or a unique prefix."""
    for what, column in (("crash", "id"), ("bucket", "bucket"), ("family", "family")):
        rows = connection.execute(
            f"SELECT DISTINCT {column} FROM crashes WHERE {column} LIKE ? LIMIT 2",
            (text.replace("%", "") + "%",),
        ).fetchall()
        if len(rows) == 1:
            return what, rows[0][0]
    return None


def _show(connection: sqlite3.Connection, _fd: int, args: argparse.Namespace) -> int:
    import zstandard

    if not args.ids:
        print(
            "redhand crashes show: a crash id, a bucket key or a family key is expected",
            file=sys.stderr,
        )
        return 2
    found = _find(connection, args.ids[0])
    if found is None:
        print(f"redhand crashes: no crash, bucket or family {args.ids[0]!r}", file=sys.stderr)
        return _EXIT_NOT_FOUND
    what, key = found
    if what == "family":
        buckets = [b for b in store_buckets(connection, CrashFilter())[0] if b.family == key]
        return _print_families(buckets, families_of(buckets), args.json)
    if what == "bucket":
        args.ids = []
        signature_row = connection.execute(
            "SELECT signature, count, first_seen, last_seen FROM buckets WHERE key = ?", (key,)
        ).fetchone()
        if not args.json:
            print(
                f"bucket {key}\nsignature: {signature_row[0]}\n{signature_row[1]} crashes, "
                f"{stamp(signature_row[2])} to {stamp(signature_row[3])}\n"
            )
        args.kind = None
        return _list_bucket(connection, key, args)
    row = connection.execute(
        "SELECT report, signature, bucket, note, core, exe, time, container FROM crashes "
        "WHERE id = ?",
        (key,),
    ).fetchone()
    report = json.loads(zstandard.ZstdDecompressor().decompress(row[0])) if row[0] else None
    if args.json:
        print(
            json.dumps(
                {
                    "redhand": 1,
                    "kind": "crash-record",
                    "id": key,
                    "signature": row[1],
                    "bucket": row[2],
                    "note": row[3],
                    "core": row[4],
                    "container": row[7],
                    "report": report,
                }
            )
        )
        return 0
    _print_record(key, row[5], row[6], row[1], row[2], row[3], report, container=row[7])
    return 0


def _print_record(
    crash_id: str,
    exe: str | None,
    when: float,
    signature: str | None,
    bucket: str | None,
    note: str | None,
    report: dict[str, Any] | None,
    host: str | None = None,
    container: str | None = None,
) -> None:
    on = f" on {host}" if host else ""
    print(f"crash {crash_id} of {exe or '?'} at {stamp(when)}{on}")
    if container:
        print(f"container: {container}")
    print(f"signature: {signature or '(not analyzed yet)'}\nbucket: {bucket or '-'}")
    if note:
        print(f"note: {note}")
    if report:
        print(f"\n{(report.get('crash') or {}).get('explanation', '')}\n")
        for frame in crash_frames(report, 30):
            print(f"#{frame['index']}  {frame['name']}{frame['where']} ({frame['module']})")


def _list_bucket(connection: sqlite3.Connection, key: str, args: argparse.Namespace) -> int:
    rows = connection.execute(
        "SELECT id, time, pid, core IS NOT NULL FROM crashes WHERE bucket = ? ORDER BY time DESC",
        (key,),
    ).fetchall()
    if args.json:
        crashes = [{"id": i, "time": t, "pid": p, "core_kept": bool(k)} for i, t, p, k in rows]
        print(json.dumps({"redhand": 1, "kind": "crash-bucket", "bucket": key, "crashes": crashes}))
        return 0
    for crash_id, when, pid, kept in rows:
        print(f"{crash_id}  {stamp(when)}  pid {pid}  core {'kept' if kept else 'no'}")
    return 0


def _dump(connection: sqlite3.Connection, store_fd: int, args: argparse.Namespace) -> int:
    import zstandard

    if not args.ids or not args.output:
        print("redhand crashes dump: CRASH and -o FILE are expected", file=sys.stderr)
        return 2
    found = _find(connection, args.ids[0])
    if found is None or found[0] != "crash":
        print(f"redhand crashes: no crash {args.ids[0]!r}", file=sys.stderr)
        return _EXIT_NOT_FOUND
    crash = found[1]
    core = connection.execute("SELECT core FROM crashes WHERE id = ?", (crash,)).fetchone()[0]
    if core is None:
        print(f"redhand crashes: crash {crash} has no core kept", file=sys.stderr)
        return _EXIT_NOT_FOUND
    try:
        source = os.open(core, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=store_fd)
    except OSError as error:
        print(f"redhand crashes: the core of crash {crash} is gone: {error.strerror}; "
              "its record and report stay (redhand crashes show)", file=sys.stderr)  # fmt: skip
        return 11
    try:
        _decompress_sparse(source, args.output)
    except zstandard.ZstdError as error:
        print(f"redhand crashes: the stored core of crash {crash} is damaged ({error}); "
              "its record and report stay (redhand crashes show)", file=sys.stderr)  # fmt: skip
        return 10
    except OSError as error:
        print(
            f"redhand crashes dump: {args.output}: {error.strerror or error} "
            "(a new file is written, never an existing one: another -o?)",
            file=sys.stderr,
        )
        return _EXIT_OUTPUT
    finally:
        os.close(source)
    print(f"{args.output}: the core of crash {crash}")
    return 0


def _decompress_sparse(source: int, output: str) -> None:
    """A stored core (zstd, the descriptor ``source``) into a new file ``output``, its runs
    of zeros left as holes; a progress bar on a terminal.  Nothing is left behind on
    failure."""
    import zstandard

    from redhand.report.progress import terminal_progress

    with os.fdopen(source, "rb", closefd=False) as file:
        target = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with (
                os.fdopen(target, "wb") as out,
                terminal_progress("decompressing the core", threshold=64 << 20) as progress,
            ):
                total = os.fstat(source).st_size
                reader = zstandard.ZstdDecompressor().stream_reader(file)
                zero = bytes(1 << 16)
                while chunk := reader.read(1 << 16):
                    if chunk == zero[: len(chunk)]:
                        out.seek(len(chunk), os.SEEK_CUR)  # a hole: the dump stays sparse
                    else:
                        out.write(chunk)
                    if progress is not None:
                        progress(file.tell(), total)
                out.truncate()
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(output)
            raise


def _debug(connection: sqlite3.Connection, store_fd: int, args: argparse.Namespace) -> int:
    """gdb on the crash's program and its core (decompressed into a private folder)."""
    import shutil
    import subprocess
    import tempfile

    if not args.ids:
        print("redhand crashes debug: a crash id is expected", file=sys.stderr)
        return 2
    found = _find(connection, args.ids[0])
    if found is None or found[0] != "crash":
        print(f"redhand crashes: no crash {args.ids[0]!r}", file=sys.stderr)
        return _EXIT_NOT_FOUND
    exe = connection.execute("SELECT exe FROM crashes WHERE id = ?", (found[1],)).fetchone()[0]
    folder = tempfile.mkdtemp(prefix="redhand-debug-")
    try:
        args.output = os.path.join(folder, "core")
        args.ids = [found[1]]
        if shutil.which("gdb") is None:
            print(
                "redhand crashes debug: gdb is not installed (apt-get install gdb)", file=sys.stderr
            )
            return 11
        status = _dump(connection, store_fd, args)
        if status != 0:
            return status
        command = ["gdb", *([exe] if exe else []), "-c", args.output]
        return subprocess.run(command).returncode
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rebucket(connection: sqlite3.Connection, _fd: int, args: argparse.Namespace) -> int:
    import zstandard

    from redhand.collect.signature import signature

    rows = connection.execute("SELECT id, report, time, exe FROM crashes WHERE report IS NOT NULL")
    connection.execute("BEGIN IMMEDIATE")
    connection.execute("DELETE FROM buckets")
    moved = 0
    for crash_id, packed, when, exe in rows.fetchall():
        report = json.loads(zstandard.ZstdDecompressor().decompress(packed))
        found = signature(report)
        moved += connection.execute(
            "UPDATE crashes SET signature = ?, bucket = ?, sig_version = ?, kind = ? "
            "WHERE id = ? AND bucket IS NOT ?",
            (found.text, found.key, found.version, found.kind, crash_id, found.key),
        ).rowcount
        connection.execute("UPDATE crashes SET family = ? WHERE id = ?", (found.family, crash_id))
        connection.execute(
            "INSERT INTO buckets (key, signature, exe, kind, first_seen, last_seen, count) "
            "VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (key) DO UPDATE SET count = count + 1, "
            "first_seen = MIN(first_seen, excluded.first_seen), "
            "last_seen = MAX(last_seen, excluded.last_seen)",
            (found.key, found.text, exe, found.kind, when, when),
        )
    connection.execute("COMMIT")
    print(f"{moved} crash(es) changed bucket")
    return 0


def _du(connection: sqlite3.Connection, store_fd: int, args: argparse.Namespace) -> int:
    cores, stored, read = connection.execute(
        "SELECT COUNT(core), COALESCE(SUM(CASE WHEN core IS NOT NULL THEN core_stored END), 0), "
        "COALESCE(SUM(CASE WHEN core IS NOT NULL THEN core_bytes END), 0) FROM crashes"
    ).fetchone()
    records = connection.execute("SELECT COUNT(*) FROM crashes").fetchone()[0]
    database = os.stat("crashes.db", dir_fd=store_fd).st_size
    if args.json:
        print(
            json.dumps(
                {
                    "redhand": 1,
                    "kind": "crash-store",
                    "records": records,
                    "cores": cores,
                    "core_bytes": read,
                    "stored_bytes": stored,
                    "database_bytes": database,
                }
            )
        )
        return 0
    print(
        f"{records} crash records, {cores} cores kept: {stored / (1 << 20):.1f} MiB stored "
        f"({read / (1 << 20):.1f} MiB uncompressed); database {database / (1 << 20):.1f} MiB"
    )
    return 0


def _prune(connection: sqlite3.Connection, store_fd: int, args: argparse.Namespace) -> int:
    cores_before = args.cores_before or time.time() - 30 * 86400
    records_before = args.records_before or time.time() - 180 * 86400
    connection.execute("BEGIN IMMEDIATE")
    old = connection.execute(
        "SELECT id, core FROM crashes WHERE core IS NOT NULL AND time < ?", (cores_before,)
    ).fetchall()
    connection.execute(
        "UPDATE crashes SET core = NULL, note = COALESCE(note || '; ', '') || 'core pruned' "
        "WHERE core IS NOT NULL AND time < ?",
        (cores_before,),
    )
    gone = connection.execute("DELETE FROM crashes WHERE time < ?", (records_before,)).rowcount
    connection.execute(
        "DELETE FROM buckets WHERE key NOT IN (SELECT bucket FROM crashes WHERE bucket IS NOT NULL)"
    )
    connection.execute("COMMIT")
    for _crash, core in old:
        with contextlib.suppress(OSError):
            os.unlink(core, dir_fd=store_fd)
    print(f"{len(old)} core(s) and {gone} record(s) pruned")
    return 0
