"""The analysis of collected crashes: the crash report, the signature, the bucket.

Never done by the root collector.  For each crash still ``collected``, the
store's owner (root) decompresses the core into a memory file and starts
``redhand core --json`` on it as an unprivileged user of its own, with no
new privileges, no core dumps of its own, and bounded memory and CPU time; the
report comes back on a pipe.  The signature is made from that report (plain
data: names and numbers), and the crash, its bucket and the cores kept per
bucket (the first two and the last three) are updated in one transaction.  A
crash whose analysis failed (the analyzer killed, a damaged core) keeps its
record and is tried again, up to three times.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from redhand.collect.signature import signature
from redhand.collect.store import adopt_orphans, connect, import_pending, open_store

log = logging.getLogger(__name__)

ATTEMPTS = 3
KEEP_FIRST = 2
KEEP_LAST = 3
ANALYZER_SECONDS = 120
ANALYZER_MEMORY = 4 << 30
ANALYZER_ID = 0x7FFFFFFE  # the analyzer's uid and gid: in no passwd, no process's but its own
_CHUNK = 1 << 20


@dataclass
class Analysis:
    crash: str
    ok: bool
    signature: str | None = None
    bucket: str | None = None
    problem: str | None = None


def _sandbox() -> None:
    """In the analyzer, before it runs: an unprivileged user, nothing to gain, bounded."""
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (ANALYZER_MEMORY, ANALYZER_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (ANALYZER_SECONDS, ANALYZER_SECONDS))
    os.nice(10)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if os.geteuid() == 0:
        # A user and group of its own, no one else's (not even nobody's): the exec that
        # follows makes it dumpable again, and a process of the same user could then trace
        # it and read the core it holds.
        os.setgroups([])
        os.setresgid(ANALYZER_ID, ANALYZER_ID, ANALYZER_ID)
        os.setresuid(ANALYZER_ID, ANALYZER_ID, ANALYZER_ID)


def _memory_copy(compressed: int) -> int:
    """The core (zstd, read from the descriptor ``compressed``), decompressed, in a memory
    file the analyzer can open.  Sparse: pages of zeros (a process's untouched memory, which
    compresses to nothing) take no memory; more data than the analyzer may map is refused."""
    import zstandard

    memfd = os.memfd_create("redhand-core", os.MFD_CLOEXEC)
    zeros = bytes(_CHUNK)
    try:
        with (
            os.fdopen(compressed, "rb", closefd=False) as file,
            os.fdopen(memfd, "wb", closefd=False) as out,
        ):
            reader = zstandard.ZstdDecompressor().stream_reader(file)
            data = 0
            while chunk := reader.read(_CHUNK):
                if chunk == zeros[: len(chunk)]:
                    out.seek(len(chunk), os.SEEK_CUR)
                    continue
                data += len(chunk)
                if data > ANALYZER_MEMORY:
                    raise RuntimeError(
                        f"the core holds over {ANALYZER_MEMORY >> 30} GiB of data, more than "
                        "the analyzer may map: `redhand crashes dump` it and run `redhand "
                        "core` on the copy"
                    )
                out.write(chunk)
            out.truncate(out.tell())
    except BaseException:
        os.close(memfd)
        raise
    return memfd


def report_of(compressed: int, root_fd: int | None = None) -> dict[str, object]:
    """The crash report of a core (zstd, read from the descriptor ``compressed``), made by a
    sandboxed ``redhand core --json``; its files under the directory ``root_fd`` when given
    (a container's root, opened by the collector)."""
    memfd = _memory_copy(compressed)
    command = [sys.executable, "-m", "redhand", "core", "--json", "--no-source"]
    if root_fd is not None:
        command += ["--sysroot", f"/proc/self/fd/{root_fd}"]
    try:
        result = subprocess.run(
            [*command, f"/proc/self/fd/{memfd}"],
            pass_fds=(memfd,) if root_fd is None else (memfd, root_fd),
            preexec_fn=_sandbox,
            capture_output=True,
            text=True,
            timeout=ANALYZER_SECONDS * 2,
            stdin=subprocess.DEVNULL,
            cwd="/",
        )  # fmt: skip
    finally:
        os.close(memfd)
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()
        raise RuntimeError(said[-1] if said else f"the analyzer ended with {result.returncode}")
    document: dict[str, object] = json.loads(result.stdout)
    return document


def _report(
    store_fd: int, core: str | None, core_fd: int | None, root_fd: int | None
) -> dict[str, object]:
    """The report of a stored core, or of the one held in memory (``core_fd``)."""
    if core is not None:
        source = os.open(core, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=store_fd)
        try:
            return report_of(source, root_fd)
        finally:
            os.close(source)
    if core_fd is not None:
        os.lseek(core_fd, 0, os.SEEK_SET)
        return report_of(core_fd, root_fd)
    raise RuntimeError("no core was kept")


def analyze(
    store: str,
    crash_ids: list[str] | None = None,
    core_fd: int | None = None,
    root_fd: int | None = None,
    stale: float | None = None,
) -> list[Analysis]:
    """Analyze the crashes still waiting (or those named).  ``core_fd``: the core of the one
    crash named, held in memory by the collector because it was not kept; ``root_fd``: that
    crash's process's own root directory (a container's), opened by the collector.
    ``stale``: after those named, also the crashes that have waited longer than that many
    seconds (their own analysis was killed, with the service that started it): a crash
    younger than that may have an analysis of its own waiting its turn, with a descriptor
    only it has."""
    if (core_fd is not None or root_fd is not None) and (not crash_ids or len(crash_ids) != 1):
        raise ValueError("a core in memory or a root is that of one crash, named")
    import zstandard

    store_fd = open_store(store, create=False)
    connection = connect(store_fd)
    try:
        import_pending(store_fd, connection)  # records the database could not take then
        if not crash_ids and stale is None:
            # Cores whose records were lost with a database moved aside: looked for by the
            # analysis a user asks for (the one README says to run then), not by the one of
            # every crash, which would list and stat the whole spool each time.
            adopt_orphans(store_fd, connection)
        waiting = (
            "SELECT id, core, exe, attempts FROM crashes WHERE status = 'collected' "
            "AND attempts < ? AND collected < ? ORDER BY time"
        )
        rows = []
        if crash_ids:
            marks = ", ".join("?" for _ in crash_ids)
            # From a collector (with ``stale``): only if no other analysis took it meanwhile.
            waiting_only = " AND status = 'collected'" if stale is not None else ""
            rows += connection.execute(
                f"SELECT id, core, exe, attempts FROM crashes WHERE id IN ({marks})" + waiting_only,
                crash_ids,
            ).fetchall()
        if stale is not None:
            rows += connection.execute(waiting, (ATTEMPTS, time.time() - stale)).fetchall()
        elif not crash_ids:
            rows += connection.execute(waiting, (ATTEMPTS, time.time() + 1)).fetchall()
        results = []
        done: set[str] = set()
        for crash_id, core, exe, attempts in rows:
            if crash_id in done:
                continue
            done.add(crash_id)
            named = crash_id in (crash_ids or [])  # the descriptors are its
            fd_core, fd_root = (core_fd, root_fd) if named else (None, None)
            hopeless = core is None and fd_core is None  # no core: never worth another try
            connection.execute(
                "UPDATE crashes SET attempts = ? WHERE id = ?",
                (ATTEMPTS if hopeless else attempts + 1, crash_id),
            )
            try:
                report = _report(store_fd, core, fd_core, fd_root)
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
                results.append(_record_failure(connection, crash_id, str(error)))
                continue
            found = signature(report)
            packed = zstandard.ZstdCompressor(level=3).compress(json.dumps(report).encode())
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(
                "UPDATE crashes SET status = 'analyzed', report = ?, signature = ?, bucket = ?, "
                "sig_version = ?, kind = ?, frames = ?, family = ?, exe = COALESCE(exe, ?) "
                "WHERE id = ?",
                (packed, found.text, found.key, found.version, found.kind,
                 json.dumps(found.frames), found.family, report.get("exe"), crash_id),
            )  # fmt: skip
            _fill_from_report(connection, crash_id, report)
            when = connection.execute(
                "SELECT time FROM crashes WHERE id = ?", (crash_id,)
            ).fetchone()[0]
            connection.execute(
                "INSERT INTO buckets (key, signature, exe, kind, first_seen, last_seen, count) "
                "VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (key) DO UPDATE SET "
                "count = count + 1, first_seen = MIN(first_seen, excluded.first_seen), "
                "last_seen = MAX(last_seen, excluded.last_seen)",
                (found.key, found.text, exe or report.get("exe"), found.kind, when, when),
            )
            removed = _prune_bucket(connection, found.key)
            connection.execute("COMMIT")
            for path in removed:
                with contextlib.suppress(OSError):
                    os.unlink(path, dir_fd=store_fd)
            results.append(Analysis(crash_id, True, found.text, found.key))
        return results
    finally:
        connection.close()
        os.close(store_fd)


def _fill_from_report(connection: object, crash_id: str, report: dict[str, object]) -> None:
    """The facts a record lacks (one made for a core whose record was lost, or one whose
    process was gone before the collector could ask) taken from the core's report."""
    process = report.get("process")
    crash = report.get("crash")
    process = process if isinstance(process, dict) else {}
    crash = crash if isinstance(crash, dict) else {}
    cmdline = report.get("cmdline")
    connection.execute(  # type: ignore[attr-defined]
        "UPDATE crashes SET pid = COALESCE(pid, ?), tid = COALESCE(tid, ?), "
        "signal = COALESCE(signal, ?), uid = COALESCE(uid, ?), gid = COALESCE(gid, ?), "
        "comm = COALESCE(comm, ?), cmdline = COALESCE(cmdline, ?) WHERE id = ?",
        (
            report.get("pid"),
            crash.get("thread"),
            crash.get("signal"),
            process.get("uid"),
            process.get("gid"),
            process.get("fname"),
            " ".join(str(word) for word in cmdline) if isinstance(cmdline, list) else None,
            crash_id,
        ),
    )


def _record_failure(connection: object, crash_id: str, problem: str) -> Analysis:
    attempts = connection.execute(  # type: ignore[attr-defined]
        "SELECT attempts FROM crashes WHERE id = ?", (crash_id,)
    ).fetchone()[0]
    status = "failed" if attempts >= ATTEMPTS else "collected"
    connection.execute(  # type: ignore[attr-defined]
        "UPDATE crashes SET status = ?, note = COALESCE(note || '; ', '') || ? WHERE id = ?",
        (status, f"analysis: {problem}", crash_id),
    )
    return Analysis(crash_id, False, problem=problem)


def _prune_bucket(connection: object, key: str) -> list[str]:
    """Keep the cores of a bucket's first two and last three crashes; the rest go (their
    records stay).  The files to delete."""
    rows = connection.execute(  # type: ignore[attr-defined]
        "SELECT id, core FROM crashes WHERE bucket = ? AND core IS NOT NULL ORDER BY time",
        (key,),
    ).fetchall()
    if len(rows) <= KEEP_FIRST + KEEP_LAST:
        return []
    drop = rows[KEEP_FIRST : len(rows) - KEEP_LAST]
    for crash_id, _core in drop:
        connection.execute(  # type: ignore[attr-defined]
            "UPDATE crashes SET core = NULL, note = COALESCE(note || '; ', '') || ? WHERE id = ?",
            (f"core removed {time.strftime('%Y-%m-%d')}: its bucket keeps "
             f"{KEEP_FIRST} first and {KEEP_LAST} last", crash_id),
        )  # fmt: skip
    return [core for _crash, core in drop]
