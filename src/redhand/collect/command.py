"""``redhand collect``: its command line, parsed by hand for the kernel's calls (the
collector imports nothing it does not need), and its other forms (``--install``,
``--uninstall``, ``--status``, ``--serve``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_COLLECT_USAGE = """\
usage: redhand collect --install [--store DIR]     become the kernel's core handler (a pipe)
       redhand collect --uninstall [--store DIR]   put the previous core_pattern back
       redhand collect --status [--store DIR] [--json]
                                                   is redhand the core handler? (exit 16: no)
       redhand collect --serve [--install] [--socket PATH] [--store DIR]
                                                   the kernel's coredump socket (Linux 6.17+)
       redhand collect [--store DIR] [--no-analyze] %P %i %I %s %t %c %d %u %g %F %h %e
                                                   what the kernel runs: the core on stdin

The store is /var/lib/redhand unless --store says; `redhand crashes` reads it."""


def collect_command(argv: Sequence[str]) -> int:
    """``redhand collect [--store DIR] %P %i %I %s %t %c %d %u %g %F %h %e``: the kernel's
    core handler, parsed by hand (it imports nothing it does not need)."""
    from redhand.collect.helper import collect
    from redhand.collect.store import DEFAULT_STORE

    words = list(argv)
    store = DEFAULT_STORE
    if words[:1] in (["-h"], ["--help"]) or (not words and sys.stdin.isatty()):
        print(_COLLECT_USAGE)
        return 0
    if len(words) >= 3 and words[1] == "--store":
        store = words[2]
    if "--serve" in words:
        return _collect_serve(words, store)
    if words[:1] == ["--status"]:
        import json

        from redhand.collect.status import status

        as_json = "--json" in words
        words = [word for word in words if word != "--json"]
        found = status(words[2] if words[1:2] == ["--store"] and len(words) > 2 else None)
        print(json.dumps(found.to_json()) if as_json else "\n".join(found.lines))
        return 0 if found.handled else 16
    if words[:1] in (["--install"], ["--uninstall"]):
        from redhand.collect.helper import install, uninstall

        if os.geteuid() != 0:
            print(
                "redhand collect: only root may change the kernel's core_pattern", file=sys.stderr
            )
            return 4
        try:
            if words[0] == "--install":
                print(f"core_pattern is now: {install(store)}")
            else:
                print(f"core_pattern is back to: {uninstall(store)}")
        except (OSError, ValueError) as error:
            print(f"redhand collect: {error}", file=sys.stderr)
            return 13
        return 0
    analyze = True
    while words[:1] in (["--store"], ["--no-analyze"]):
        if words[0] == "--no-analyze":
            analyze, words = False, words[1:]
        elif len(words) > 1:
            store, words = words[1], words[2:]
        else:
            break
    if words[:1] == ["--"]:
        words = words[1:]
    elif words[:1] and words[0].startswith("-"):  # the kernel's first argument is %P, a number
        print(
            f"redhand collect: unknown option {words[0]}: see redhand collect --help",
            file=sys.stderr,
        )
        return 2
    if sys.stdin is not None and sys.stdin.isatty():
        print(
            "redhand collect: the kernel runs this with a core on standard input, not a "
            "terminal: `redhand collect --install` makes redhand the core handler",
            file=sys.stderr,
        )
        return 2
    return collect(words, store, analyze=analyze)


def _collect_serve(words: list[str], store: str) -> int:
    """``redhand collect --serve [--socket PATH] [--install] [--store DIR] [--no-analyze]``:
    the kernel's coredump socket (Linux 6.17 and later)."""
    import argparse
    import errno

    from redhand.collect.server import DEFAULT_SOCKET, ServeError, serve
    from redhand.collect.store import StoreError

    parser = argparse.ArgumentParser(prog="redhand collect --serve")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--store", default=store)
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="where to listen")
    parser.add_argument(
        "--install", action="store_true", help="point core_pattern here while serving"
    )
    parser.add_argument("--no-analyze", action="store_true")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(words)
    if os.geteuid() != 0:
        print("redhand collect --serve: only root may serve the kernel's cores", file=sys.stderr)
        return 4
    try:
        return serve(
            args.store,
            os.path.abspath(args.socket),
            install=args.install,
            analyze=not args.no_analyze,
            ready=args.ready_fd,
        )
    except StoreError as error:
        print(f"redhand collect: {error.strerror or error}", file=sys.stderr)
        return 4 if error.errno in (errno.EACCES, errno.EPERM) else 11
    except (ServeError, OSError) as error:
        print(f"redhand collect: {error}", file=sys.stderr)
        return 13
