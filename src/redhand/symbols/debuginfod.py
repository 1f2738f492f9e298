"""A debuginfod client: separate debug files (and executables) fetched by build-id.

The servers are those of ``DEBUGINFOD_URLS`` (space-separated base URLs, tried
in order); with none set the client is off and nothing touches the network.
``GET {url}/buildid/{BUILD_ID}/debuginfo`` (or ``/executable``) answers the
file.  What is fetched is kept in a cache shared by redhand's runs:

- ``$DEBUGINFOD_CACHE_PATH/<build-id>/debuginfo`` when that is set (the layout
  of elfutils' client, so both can share it), else
  ``$XDG_CACHE_HOME/redhand/debuginfod/<build-id>/debuginfo``;
- a download goes to a temporary file in the same folder, is fsynced, checked
  (an ELF file with the build-id asked for: a wrong answer is thrown away),
  then renamed into place (invariant 2: never half a file);
- a miss (no server has it, or none answered) is remembered as an empty file
  of mode 000 in place of the entry, elfutils' way, for
  ``DEBUGINFOD_CACHE_MISS_S`` seconds (default 600): an offline machine does
  not retry on every run.

Time is bounded so that redhand never hangs on a network: host names are
resolved in a helper thread given ``DEBUGINFOD_TIMEOUT`` seconds (default 5),
which also bounds the connection and every wait for data; the whole fetch of
one file, over all servers, gets ``DEBUGINFOD_MAXTIME`` seconds (default 10).
Failures are never raised: a file that cannot be fetched is simply absent.

Only this module's functions import :mod:`urllib.request` (slow to import),
and only when a server is configured.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable

from redhand import cache

ProgressCallback = Callable[[int, "int | None"], None]
"""``progress(done, total)``: bytes received so far, and the size when the server said it."""

DEFAULT_TIMEOUT = 5.0
"""Seconds for name resolution, the connection, and any one wait for data."""

DEFAULT_MAXTIME = 10.0
"""Seconds for the whole fetch of one file, over all servers."""

DEFAULT_CACHE_MISS_S = 600.0
"""Seconds a miss is remembered before the servers are asked again."""

MAX_FILE_BYTES = 4 << 30
"""A larger answer is abandoned (a server gone wrong)."""

MAX_CACHE_BYTES = 2 << 30
"""redhand's own debuginfod cache is trimmed to this size after a download (least recently
used build-ids first); a ``DEBUGINFOD_CACHE_PATH`` cache is left to elfutils' cleaning."""

_BUILD_ID = re.compile(r"[0-9a-f]{2,}")
_CHUNK = 1 << 16
_TEMPORARY_SUFFIX = ".tmp"
_UNREACHABLE = ("cannot connect", "cannot resolve", "resolving")
_private_cache: list[str] = []
# Servers that could not be reached in this process: not tried again by it, so
# that a program with many modules costs one connection timeout, not one each.
_unreachable: set[str] = set()


def forget_unreachable() -> None:
    """Try again the servers found unreachable earlier in this process (tests)."""
    _unreachable.clear()


def server_urls() -> list[str]:
    """The servers of ``DEBUGINFOD_URLS``, in order; empty when the client is off."""
    urls = os.environ.get("DEBUGINFOD_URLS", "").split()
    return [url.rstrip("/") for url in urls if url.startswith(("http://", "https://"))]


def enabled() -> bool:
    """Whether a server is configured."""
    return bool(server_urls())


def cache_directory() -> str:
    """Where fetched files are kept (see the module's documentation).

    With redhand's cache off (``REDHAND_CACHE=0``) and no
    ``DEBUGINFOD_CACHE_PATH``, a private temporary folder of this process.
    """
    path = os.environ.get("DEBUGINFOD_CACHE_PATH", "")
    if os.path.isabs(path):
        return path
    root = cache.directory()
    if root is not None:
        return os.path.join(root, "debuginfod")
    if not _private_cache:
        _private_cache.append(tempfile.mkdtemp(prefix="redhand-debuginfod-"))
    return _private_cache[0]


def cache_path(build_id: str, kind: str = "debuginfo") -> str:
    """Where the file ``kind`` ("debuginfo" or "executable") of ``build_id`` is cached."""
    return os.path.join(cache_directory(), build_id.lower(), kind)


def _float_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def recent_miss(path: str) -> bool:
    """Whether ``path`` is a miss marker young enough to skip asking the servers."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if info.st_size != 0:
        return False
    age = time.time() - info.st_mtime
    return age < _float_env("DEBUGINFOD_CACHE_MISS_S", DEFAULT_CACHE_MISS_S)


def _cached(path: str, build_id: str) -> str | None:
    """The cached file at ``path`` when it is there and right."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return None
    if _problem(path, build_id) is not None:
        return None
    if time.time() - info.st_mtime > 24 * 3600:  # recently used, for trim()
        with contextlib.suppress(OSError):
            os.utime(path)
    return path


def trim(root: str, max_bytes: int = MAX_CACHE_BYTES, *, keep: str | None = None) -> None:
    """Delete the least recently used build-id folders under ``root`` until they fit.

    ``keep`` (a folder just written) is never deleted.
    """
    folders: list[tuple[float, int, str]] = []
    total = 0
    try:
        listing = [entry.path for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for folder in listing:
        size = 0
        newest = 0.0
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                info = entry.stat(follow_symlinks=False)
                size += info.st_size
                newest = max(newest, info.st_mtime)
        folders.append((newest, size, folder))
        total += size
    if total <= max_bytes:
        return
    for _newest, size, folder in sorted(folders):
        if total <= max_bytes:
            break
        if folder == keep:
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(folder):
                os.unlink(entry.path)
            os.rmdir(folder)
        total -= size


def _problem(path: str, build_id: str) -> str | None:
    """Why the file at ``path`` is not the ELF file of ``build_id``, or None."""
    from redhand.elf import ElfFile
    from redhand.errors import RedhandError

    try:
        with ElfFile.open(path) as elf:
            theirs = elf.build_id
    except RedhandError as exc:
        return f"not an ELF file: {exc}"
    if theirs != build_id:
        return f"build-id {theirs} is not {build_id}"
    return None


def fetch_debuginfo(
    build_id: str,
    *,
    progress: ProgressCallback | None = None,
    problems: list[str] | None = None,
) -> str | None:
    """The path of the separate debug file of ``build_id``, from the cache or a server.

    None when the client is off, no server has the file, none answered in
    time (remembered for a while), or an answer was not the file asked for.
    ``progress`` is called as bytes arrive; ``problems``, when given, collects
    one line per server that failed, and why.  Never raises.
    """
    return _fetch(build_id, "debuginfo", progress, problems)


def fetch_executable(
    build_id: str,
    *,
    progress: ProgressCallback | None = None,
    problems: list[str] | None = None,
) -> str | None:
    """The path of the executable or library of ``build_id`` (see :func:`fetch_debuginfo`)."""
    return _fetch(build_id, "executable", progress, problems)


def _fetch(
    build_id: str,
    kind: str,
    progress: ProgressCallback | None,
    problems: list[str] | None,
) -> str | None:
    build_id = build_id.lower()
    urls = server_urls()
    if not urls or not _BUILD_ID.fullmatch(build_id):
        return None
    path = cache_path(build_id, kind)
    found = _cached(path, build_id)
    if found is not None:
        return found
    if recent_miss(path):
        if problems is not None:
            problems.append(f"{path}: a recent miss, not asking the servers again yet")
        return None
    timeout = _float_env("DEBUGINFOD_TIMEOUT", DEFAULT_TIMEOUT)
    deadline = time.monotonic() + _float_env("DEBUGINFOD_MAXTIME", DEFAULT_MAXTIME)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        if problems is not None:
            problems.append(f"cannot create {folder}: {exc.strerror}")
        return None
    for url in urls:
        if url in _unreachable:
            _note(problems, url, "unreachable earlier in this process")
            continue
        if time.monotonic() >= deadline:
            _note(problems, url, "no time left")
            break
        try:
            done = _download(
                f"{url}/buildid/{build_id}/{kind}", path, build_id, timeout, deadline, progress
            )
        except Exception as exc:  # a fetch never raises
            _note(problems, url, str(exc) or type(exc).__name__)
            continue
        if done is None:
            if not os.environ.get("DEBUGINFOD_CACHE_PATH"):
                trim(os.path.dirname(folder), keep=folder)
            return path
        if done.startswith(_UNREACHABLE):
            _unreachable.add(url)
        _note(problems, url, done)
    _remember_miss(path)
    return None


def _note(problems: list[str] | None, url: str, what: str) -> None:
    if problems is not None:
        problems.append(f"debuginfod {url}: {what}")


def _remember_miss(path: str) -> None:
    """Put a miss marker in place of the entry (never over a real file)."""
    with contextlib.suppress(OSError):
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0)
        os.close(fd)
        os.utime(path)


def _resolve(host: str, port: int, timeout: float) -> str | None:
    """Resolve ``host`` within ``timeout`` seconds; why not, or None when it resolved."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host.strip("[]"))
        return None  # an address: nothing to resolve
    except OSError:
        pass
    outcome: list[str | None] = []

    def resolve() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot resolve {host}: {exc}")

    worker = threading.Thread(target=resolve, name="redhand-debuginfod-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"resolving {host} took more than {timeout:g} s"
    return outcome[0]


def _download(
    url: str,
    path: str,
    build_id: str,
    timeout: float,
    deadline: float,
    progress: ProgressCallback | None,
) -> str | None:
    """Fetch ``url`` into ``path`` atomically; None when done, else why not."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    remaining = deadline - time.monotonic()
    why = _resolve(host, port, min(timeout, max(remaining, 0.001)))
    if why is not None:
        return why
    request = urllib.request.Request(url, headers={"User-Agent": "redhand"})
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return "no time left"
    try:
        response = urllib.request.urlopen(request, timeout=min(timeout, remaining))
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"cannot connect: {reason}"  # (see _UNREACHABLE)
    folder = os.path.dirname(path)
    temporary = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}{_TEMPORARY_SUFFIX}"
    )
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > MAX_FILE_BYTES:
            return f"{total} bytes is too large"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                done = 0
                if progress is not None:
                    progress(0, total)
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return f"download took more than the time allowed ({done} bytes)"
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    done += len(chunk)
                    if done > MAX_FILE_BYTES:
                        return f"more than {MAX_FILE_BYTES} bytes"
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    if progress is not None:
                        progress(done, total)
                if total is not None and done != total:
                    return f"truncated: {done} of {total} bytes"
                os.fsync(fd)
            finally:
                os.close(fd)
            problem = _problem(temporary, build_id)
            if problem is not None:
                return f"wrong answer: {problem}"
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
            temporary = ""
            return None
        finally:
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)


def terminal_progress(
    description: str, *, enabled: bool | None = None
) -> contextlib.AbstractContextManager[ProgressCallback | None]:
    """A progress bar on stderr for a download (see :mod:`redhand.report.progress`)."""
    from redhand.report.progress import terminal_progress as bar

    return bar(description, enabled=enabled)


__all__ = [
    "DEFAULT_CACHE_MISS_S",
    "DEFAULT_MAXTIME",
    "DEFAULT_TIMEOUT",
    "ProgressCallback",
    "cache_directory",
    "cache_path",
    "enabled",
    "fetch_debuginfo",
    "fetch_executable",
    "forget_unreachable",
    "recent_miss",
    "server_urls",
    "terminal_progress",
]
