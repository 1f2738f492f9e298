"""``redhand crashes serve``: a read-only web page of the crashes, on localhost.

Rendered on the server by Flask and its Jinja templates (escaped by default);
no JavaScript.  Three pages: the buckets, with a chart of crashes per day
(an inline SVG drawn here); a bucket, with its signature, its crashes and the
report of its latest one; a crash.  The pages come from a source: this
machine's store (SQLite), or a fleet's PostgreSQL (``--db``), with the hosts.
Every request opens its own connection and only reads.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from redhand.collect.fleet import connect as fleet_connect
from redhand.collect.fleet import migrate
from redhand.collect.query import (
    CrashBucket,
    CrashFamily,
    CrashFilter,
    crash_frames,
    families_of,
    fleet_buckets,
    fleet_families,
    store_buckets,
)
from redhand.collect.store import connect, open_store, stamp

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} — redhand crashes</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { text-align: left; padding: 0.2em 0.8em; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.9em; }
.muted { color: #777; }
</style></head><body>
<p><a href="/">all buckets</a> · <a href="/families">families</a>
<span class="muted">of {{ origin }}</span></p>
<h1>{{ title }}</h1>
{{ body | safe }}
</body></html>
"""

_BUCKETS = """
<p class="muted">{{ total }} crashes in {{ count }} buckets;
{{ waiting }} not analyzed yet.{% if count > buckets | length %}
The {{ buckets | length }} with the most crashes are listed:
<a href="?{% if host %}host={{ host | urlencode }}&amp;{% endif %}all=1">all of them</a>.
{% endif %}</p>
{{ chart | safe }}
<table id="buckets">
<tr><th>bucket</th><th>count</th><th>cores</th>{% if fleet %}<th>hosts</th>{% endif %}
<th>first seen</th><th>last seen</th><th>program</th><th>signature</th></tr>
{% for b in buckets %}
<tr><td><a href="/bucket/{{ b.key }}">{{ b.key[:12] }}</a></td><td class="n">{{ b.count }}</td>
<td class="n">{{ b.cores }}</td>{% if fleet %}<td class="n">{{ b.hosts }}</td>{% endif %}
<td>{{ b.first }}</td><td>{{ b.last }}</td>
<td>{{ b.program }}</td><td><code>{{ b.signature }}</code></td></tr>
{% endfor %}
</table>
"""

_FAMILIES = """
<p class="muted">The buckets of one crash site reached from different callers.</p>
<table id="families">
<tr><th>family</th><th>count</th>{% if fleet %}<th>hosts</th>{% endif %}<th>buckets</th>
<th>first seen</th><th>last seen</th><th>program</th><th>crash site</th></tr>
{% for f in families %}
<tr><td>{{ f.key[:12] }}</td><td class="n">{{ f.count }}</td>
{% if fleet %}<td class="n">{{ f.hosts }}</td>{% endif %}
<td>{% for b in f.buckets %}<a href="/bucket/{{ b }}">{{ b[:12] }}</a> {% endfor %}</td>
<td>{{ f.first }}</td><td>{{ f.last }}</td><td>{{ f.program }}</td>
<td><code>{{ f.site }}</code></td></tr>
{% endfor %}
</table>
"""

_BUCKET = """
<p>signature: <code id="signature">{{ signature }}</code></p>
<p class="muted">{{ count }} crashes, {{ first }} to {{ last }}{% if shown < count %};
the newest {{ shown }} listed{% endif %}</p>
<table id="crashes">
<tr><th>crash</th><th>time</th>{% if fleet %}<th>host</th>{% endif %}<th>pid</th><th>program</th>
<th>core</th></tr>
{% for c in crashes %}
<tr><td><a href="/crash/{{ c.id }}">{{ c.id[:12] }}</a></td><td>{{ c.time }}</td>
{% if fleet %}<td><a href="/?host={{ c.host | urlencode }}">{{ c.host }}</a></td>{% endif %}
<td class="n">{{ c.pid }}</td><td>{{ c.program }}</td><td>{{ c.core }}</td></tr>
{% endfor %}
</table>
{% if siblings %}<h2>the same crash site, from other callers</h2>
<table id="family">
<tr><th>bucket</th><th>crashes</th><th>signature</th></tr>
{% for b in siblings %}
<tr><td><a href="/bucket/{{ b.key }}">{{ b.key[:12] }}</a></td><td class="n">{{ b.count }}</td>
<td><code>{{ b.signature }}</code></td></tr>
{% endfor %}
</table>{% endif %}
{% if report %}<h2>the latest crash</h2>{{ report | safe }}{% endif %}
"""

_REPORT = """
<p id="explanation">{{ explanation }}</p>
<pre id="frames">{% for f in frames %}#{{ f.index }}  {{ f.name }}{{ f.where }} ({{ f.module }})
{% endfor %}</pre>
"""


_CRASH = """
<p>signature: <code id="signature">{{ signature }}</code></p>
<p class="muted">{{ program }} at {{ when }}</p>
{{ report | safe if report else "" }}
"""


def _chart(days: list[tuple[str, int]]) -> str:
    """Crashes per day over the last 30 days, as bars in an inline SVG."""
    width, height = 600, 80
    top = max((count for _day, count in days), default=0) or 1
    step = width / max(len(days), 1)
    bars = []
    for index, (day, count) in enumerate(days):
        tall = round(count / top * (height - 14))
        bars.append(
            f'<rect x="{index * step:.1f}" y="{height - 12 - tall}" width="{step - 2:.1f}" '
            f'height="{tall}" fill="#c0392b"><title>{day}: {count}</title></rect>'
        )
    label = f'<text x="0" y="{height}" font-size="10">crashes per day, last 30 days</text>'
    return (
        f'<svg id="chart" width="{width}" height="{height}" role="img" '
        f'aria-label="crashes per day">{"".join(bars)}{label}</svg>'
    )


@dataclass
class Crash:
    id: str
    time: float
    pid: int | None
    exe: str | None
    core: bool
    host: str | None
    signature: str | None
    report: dict[str, Any] | None


_SHOWN = 500  # buckets (the most crashes) and crashes of a bucket (the newest) listed at most


def _siblings_sql(mark: str, table: str) -> str:
    """The other buckets of a bucket's family: (key, signature, crashes), the most first."""
    return (
        f"SELECT bucket, MAX(signature), COUNT(*) FROM {table} WHERE family = (SELECT family "
        f"FROM {table} WHERE bucket = {mark} AND family IS NOT NULL LIMIT 1) AND bucket <> {mark} "
        "GROUP BY bucket ORDER BY COUNT(*) DESC"
    )


class StoreSource:
    """A machine's crash store (SQLite), opened read-only for every request."""

    fleet = False

    def __init__(self, store: str) -> None:
        self.name = store

    def _connect(self) -> sqlite3.Connection:
        fd = open_store(self.name, create=False)
        try:
            return connect(fd)
        finally:
            os.close(fd)

    def _query(self, sql: str, values: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        connection = self._connect()
        try:
            return list(connection.execute(sql, values).fetchall())
        finally:
            connection.close()

    def buckets(self, _host: str | None) -> tuple[list[CrashBucket], int, int]:
        connection = self._connect()
        try:
            found, waiting = store_buckets(connection, CrashFilter())
            total = connection.execute("SELECT COUNT(*) FROM crashes").fetchone()[0]
        finally:
            connection.close()
        return found, total, waiting

    def hours(self, since: float, _host: str | None) -> list[tuple[float, int]]:
        return self._query(
            "SELECT CAST(time / 3600 AS INTEGER) * 3600, COUNT(*) FROM crashes "
            "WHERE time >= ? GROUP BY 1",
            (since,),
        )

    def _crashes(self, where: str, value: str) -> list[Crash]:
        import zstandard

        rows = self._query(
            "SELECT id, time, pid, exe, core IS NOT NULL, NULL, signature, report FROM crashes "
            f"WHERE {where} = ? ORDER BY time DESC LIMIT {_SHOWN}",
            (value,),
        )
        unpack = zstandard.ZstdDecompressor().decompress
        crashes = []
        for index, (crash_id, when, pid, exe, core, host, signature, report) in enumerate(rows):
            wanted = index == 0 and report  # only the newest report is shown
            document = json.loads(unpack(report)) if wanted else None
            crashes.append(Crash(crash_id, when, pid, exe, bool(core), host, signature, document))
        return crashes

    def bucket(self, key: str) -> tuple[list[Crash], int]:
        crashes = self._crashes("bucket", key)
        count = self._query("SELECT COUNT(*) FROM crashes WHERE bucket = ?", (key,))[0][0]
        return crashes, count

    def crash(self, crash_id: str) -> Crash | None:
        found = self._crashes("id", crash_id)
        return found[0] if found else None

    def siblings(self, key: str) -> list[tuple[str, str, int]]:
        return self._query(_siblings_sql("?", "crashes"), (key, key))

    def families(self, _host: str | None) -> list[CrashFamily]:
        return families_of(self.buckets(None)[0])


class FleetSource:
    """A fleet's crashes in PostgreSQL (``redhand crashes push``), one connection per request."""

    fleet = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = url.split("@")[-1]  # never the password
        connection = fleet_connect(url)
        try:
            migrate(connection)
        finally:
            connection.close()

    def _query(self, sql: str, values: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        connection = fleet_connect(self.url)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, values)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def buckets(self, host: str | None) -> tuple[list[CrashBucket], int, int]:
        found = fleet_buckets(self.url, CrashFilter(host=host))
        where, values = CrashFilter(host=host).where("%s")
        total = self._query(f"SELECT COUNT(*) FROM redhand_crashes WHERE {where}", tuple(values))
        return found, total[0][0], 0

    def hours(self, since: float, host: str | None) -> list[tuple[float, int]]:
        where, values = ("AND host = %s", (host,)) if host else ("", ())
        return self._query(
            "SELECT EXTRACT(EPOCH FROM date_trunc('hour', time))::float8, COUNT(*) "
            f"FROM redhand_crashes WHERE time >= to_timestamp(%s) {where} GROUP BY 1",
            (since, *values),
        )

    def _crashes(self, where: str, value: str) -> list[Crash]:
        rows = self._query(
            "SELECT id, EXTRACT(EPOCH FROM time)::float8, pid, exe, core_kept, host, signature, "
            f"NULL FROM redhand_crashes WHERE {where} = %s ORDER BY time DESC LIMIT {_SHOWN}",
            (value,),
        )
        crashes = [Crash(*row) for row in rows]
        if crashes:
            found = self._query("SELECT report FROM redhand_crashes WHERE id = %s", (rows[0][0],))
            crashes[0].report = found[0][0] if found else None
        return crashes

    def bucket(self, key: str) -> tuple[list[Crash], int]:
        count = self._query("SELECT COUNT(*) FROM redhand_crashes WHERE bucket = %s", (key,))
        return self._crashes("bucket", key), count[0][0]

    def crash(self, crash_id: str) -> Crash | None:
        found = self._crashes("id", crash_id)
        return found[0] if found else None

    def siblings(self, key: str) -> list[tuple[str, str, int]]:
        return self._query(_siblings_sql("%s", "redhand_crashes"), (key, key))

    def families(self, host: str | None) -> list[CrashFamily]:
        return fleet_families(self.url, CrashFilter(host=host))[1]


Source = StoreSource | FleetSource


def _program(exe: str | None) -> str:
    return (exe or "?").rsplit("/", 1)[-1]


def make_app(source: Source) -> Any:
    """The Flask application serving ``source`` (a store or a fleet's database)."""
    from flask import Flask, abort, render_template_string, request

    app = Flask("redhand")

    def page(title: str, template: str, **values: object) -> str:
        body = render_template_string(template, fleet=source.fleet, **values)
        return render_template_string(_PAGE, title=title, body=body, origin=source.name)

    def report_html(report: dict[str, Any] | None) -> str | None:
        if not report:
            return None
        explanation = (report.get("crash") or {}).get("explanation", "")
        return render_template_string(_REPORT, explanation=explanation, frames=crash_frames(report))

    @app.get("/")
    def buckets() -> str:
        host = request.args.get("host") or None
        found, total, waiting = source.buckets(host)
        since = time.time() - 30 * 86400
        per_day: dict[str, int] = {}
        for hour, count in source.hours(since, host):
            day = datetime.date.fromtimestamp(float(hour)).isoformat()
            per_day[day] = per_day.get(day, 0) + count
        days = []
        for offset in range(29, -1, -1):
            day = (datetime.date.today() - datetime.timedelta(days=offset)).isoformat()
            days.append((day, per_day.get(day, 0)))
        shown = [
            {
                "key": b.bucket,
                "count": b.count,
                "cores": b.cores,
                "hosts": b.hosts,
                "first": stamp(b.first_seen),
                "last": stamp(b.last_seen),
                "program": _program(b.exe),
                "signature": b.signature,
            }
            for b in (found if request.args.get("all") else found[:_SHOWN])
        ]
        title = f"crash buckets of {host}" if host else "crash buckets"
        return page(
            title,
            _BUCKETS,
            buckets=shown,
            count=len(found),
            host=host,
            total=total,
            waiting=waiting,
            chart=_chart(days),
        )

    @app.get("/families")
    def families() -> str:
        host = request.args.get("host") or None
        shown = [
            {
                "key": f.family,
                "count": f.count,
                "hosts": f.hosts,
                "buckets": f.buckets,
                "first": stamp(f.first_seen),
                "last": stamp(f.last_seen),
                "program": _program(f.exe),
                "site": f.site,
            }
            for f in source.families(host)[:_SHOWN]
        ]
        return page(f"crash families of {host}" if host else "crash families", _FAMILIES,
                    families=shown)  # fmt: skip

    @app.get("/bucket/<key>")
    def bucket(key: str) -> str:
        crashes, count = source.bucket(key)
        if not crashes:
            abort(404)
        listed = [
            {
                "id": c.id,
                "time": stamp(c.time),
                "pid": c.pid,
                "host": c.host,
                "program": _program(c.exe),
                "core": "kept" if c.core else "-",
            }
            for c in crashes
        ]
        return page(
            f"bucket {key[:12]}",
            _BUCKET,
            signature=crashes[0].signature,
            count=count,
            shown=len(crashes),
            first=stamp(crashes[-1].time),
            last=stamp(crashes[0].time),
            crashes=listed,
            siblings=[
                {"key": other, "signature": text, "count": n}
                for other, text, n in source.siblings(key)
            ],
            report=report_html(crashes[0].report),
        )

    @app.get("/crash/<crash_id>")
    def crash(crash_id: str) -> str:
        found = source.crash(crash_id)
        if found is None:
            abort(404)
        where = f" on {found.host}" if found.host else ""
        body = render_template_string(
            _CRASH,
            signature=found.signature or "(not analyzed yet)",
            program=found.exe or "?",
            when=stamp(found.time) + where,
            report=report_html(found.report),
        )
        return render_template_string(
            _PAGE, title=f"crash {crash_id[:12]}", body=body, origin=source.name
        )

    return app


def serve(source: Source, listen: str = "127.0.0.1", port: int = 8420) -> None:
    """Serve the source's pages until interrupted; says where on standard output."""
    from werkzeug.serving import make_server

    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:  # bind errors are ours to say
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((listen, port))
        listener.listen(128)
        server = make_server(listen, port, make_app(source), threaded=True, fd=listener.fileno())
    print(f"serving the crashes of {source.name} on http://{listen}:{server.port}/", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
