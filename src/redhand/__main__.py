"""The ``redhand`` command's entry point: signals first, then everything else.

SIGINT, SIGTERM and SIGHUP end the command at once with one line and exit
code 130, wherever they land.  The handlers are installed before anything
else is imported, so a Ctrl-C during start-up prints no traceback.  Ending at
once is safe: the freeze blocks these signals from its first stop to its last
detach, so when a handler runs no thread of the target is stopped.
"""

import os
import signal
import sys

EXIT_INTERRUPTED = 130


def _interrupted(signum: int, frame: object) -> None:
    try:
        os.write(2, b"redhand: interrupted\n")
    finally:
        os._exit(EXIT_INTERRUPTED)


def entry_point() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    from redhand.cli import main

    sys.exit(main())


if __name__ == "__main__":
    entry_point()
