"""Progress bars for work that takes more than a moment (decompressing a core, a download).

On stderr, only on a terminal, gone when the work ends (rich's Progress,
imported only when a bar is shown).  The work reports through a callback
``(done, total)``; ``total`` may be None when unknown.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Iterator

ProgressCallback = Callable[[int, "int | None"], None]


@contextlib.contextmanager
def terminal_progress(
    description: str, *, enabled: bool | None = None, threshold: int = 0
) -> Iterator[ProgressCallback | None]:
    """A progress bar as a callback; None when off.

    ``enabled`` defaults to whether stderr is a terminal.  Work whose known
    total is below ``threshold`` (bytes) shows no bar: it ends too soon.
    """
    if enabled is None:
        enabled = sys.stderr is not None and sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task: list[object] = []

    def update(done: int, total: int | None) -> None:
        if total is not None and total < threshold:
            return
        if not task:
            bar.start()
            task.append(bar.add_task(description, total=total))
        bar.update(task[0], completed=done, total=total)  # type: ignore[arg-type]

    try:
        yield update
    finally:
        if task:
            bar.stop()
