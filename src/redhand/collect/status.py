"""``redhand collect --status``: whether redhand is the kernel's core handler, and how.

Read from ``core_pattern`` (a pipe to ``redhand collect``, or a coredump
socket that a ``redhand collect --serve`` listens on: ``/proc/net/unix``
says so without connecting to it) and from the store: how many crashes, how
many of the last day, how many wait for their analysis.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import time
from dataclasses import dataclass

from redhand.collect.helper import CORE_PATTERN
from redhand.collect.store import DEFAULT_STORE, StoreError, connect, open_store

_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags: a listening socket


@dataclass
class Status:
    """``handled``: redhand gets the machine's cores (``mode``: ``pipe`` or ``socket``);
    what the store holds (``crashes``, ``last_day``, ``waiting``: None, with ``problem``,
    when it cannot be read); ``lines``: the same for people."""

    pattern: str
    handled: bool
    mode: str | None
    store: str
    lines: list[str]
    crashes: int | None = None
    last_day: int | None = None
    waiting: int | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {"redhand": 1, "kind": "collect-status"}
        document.update(
            (key, value) for key, value in vars(self).items() if key not in ("pattern", "lines")
        )
        document["core_pattern"] = self.pattern
        return document


def listening(path: str) -> bool:
    """Whether a socket listens at ``path`` (from /proc/net/unix: nothing connects to it)."""
    try:
        with open("/proc/net/unix") as table:
            next(table)
            for line in table:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & _ACCEPTING:
                    return True
    except (OSError, ValueError, StopIteration):
        pass
    return False


def status(store: str | None = None) -> Status:
    """What the kernel does with a crash's core now, and what the store holds."""
    with open(CORE_PATTERN) as file:
        pattern = file.read().strip()
    lines = [f"core_pattern: {pattern}"]
    mode = None
    handled = False
    if pattern.startswith("|"):
        words = shlex.split(pattern[1:])
        ours = "collect" in words and any(w.endswith("redhand") or w == "redhand" for w in words)
        ours = ours or (words[1:3] == ["-m", "redhand"] and "collect" in words)
        if ours:
            mode, handled = "pipe", True
            if "--store" in words and words.index("--store") + 1 < len(words):
                store = store or words[words.index("--store") + 1]
            lines.append("redhand collect gets every core through a pipe (started per crash)")
        else:
            lines.append(f"not redhand: the kernel pipes cores to {words[0] if words else '?'}")
    elif pattern.startswith("@"):
        path = pattern.lstrip("@")
        mode = "socket"
        handled = listening(path)
        lines.append(
            f"a coredump socket, {path}: "
            + ("a server listens on it" if handled else
               "nothing listens on it, so cores are lost: start `redhand collect --serve "
               "--install`, or put the previous pattern back with `redhand collect --uninstall`")
        )  # fmt: skip
    else:
        lines.append(
            "not redhand: the kernel writes core files itself "
            f"({'named ' + pattern if pattern else 'none'}); `redhand collect --install` "
            "makes redhand the core handler"
        )
    found = Status(pattern, handled, mode, store or DEFAULT_STORE, lines)
    _store_facts(found)
    if found.problem is not None:
        lines.append(f"store: {found.store}: {found.problem}")
    else:
        lines.append(
            f"store: {found.store}: {found.crashes} crash(es), {found.last_day} in the last "
            f"day, {found.waiting} waiting for their analysis"
        )
    return found


def _store_facts(found: Status) -> None:
    try:
        store_fd = open_store(found.store, create=False)
    except StoreError as error:
        found.problem = str(error.strerror or error)
        return
    try:
        connection = connect(store_fd)
        try:
            total, recent, waiting = connection.execute(
                "SELECT COUNT(*), SUM(time > ?), SUM(status = 'collected') FROM crashes",
                (time.time() - 86400,),
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error as error:
        found.problem = f"the crash database cannot be used ({error})"
        return
    finally:
        os.close(store_fd)
    found.crashes, found.last_day, found.waiting = total, recent or 0, waiting or 0
