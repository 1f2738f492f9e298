"""The ``redhand`` command's entry point: signals first, then everything else.

SIGINT, SIGTERM and SIGHUP end the command at once with one line and exit
code 130, wherever they land.  The handlers are installed before anything
else is imported, so a Ctrl-C during start-up prints no traceback.  Ending at
once is safe: the freeze blocks these signals from its first stop to its last
detach, so when a handler runs no thread of the target is stopped.
"""

import _signal  # type: ignore[import-not-found]  # signal without enum; no stubs
import gc
import os
import sys

EXIT_INTERRUPTED = 130


def _interrupted(signum: int, frame: object) -> None:
    try:
        os.write(2, b"redhand: interrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


def entry_point() -> None:
    # _signal, not signal: the latter imports enum (3-5 ms) to name the numbers.
    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, _interrupted)
    # A command runs for a moment, then exits.  The cycle collector's passes
    # over every object (during the imports, during the work, and a last one
    # at exit) took 10-20 ms of `redhand stack` on the reference machine and
    # freed next to nothing: reference counting frees what a command drops.
    # So it is off while the command runs, and what is left at exit is frozen
    # so that the interpreter's final pass skips it (the OS frees it all).
    gc.disable()
    from redhand.cli import main

    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
