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
    """``handled``: redhand gets the machine's cores (``mode``: ``pipe`` or ``socket``)."""

    pattern: str
    handled: bool
    mode: str | None
    store: str
    lines: list[str]


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
    store = store or DEFAULT_STORE
    lines.append(f"store: {store}: {_store_facts(store)}")
    return Status(pattern, handled, mode, store, lines)


def _store_facts(store: str) -> str:
    try:
        store_fd = open_store(store, create=False)
    except StoreError as error:
        return str(error.strerror or error)
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
        return f"the crash database cannot be used ({error})"
    finally:
        os.close(store_fd)
    return (
        f"{total} crash(es), {recent or 0} in the last day, "
        f"{waiting or 0} waiting for their analysis"
    )
