"""A persistent cache of what redhand derives from files (symbol indexes), shared by its runs.

Entries live in ``$XDG_CACHE_HOME/redhand/`` (``~/.cache/redhand/`` by
default), one file per entry, in a subdirectory per kind of entry.  The cache
is an optimisation and never a source of errors:

- an entry that is missing, unreadable, of another format version, or corrupt
  (checked by a CRC32 of its payload) reads as a miss, and the caller builds
  the data afresh and writes it again;
- a cache that cannot be written (no home directory, a read-only or full
  disk) is skipped silently;
- ``REDHAND_CACHE=0`` (or ``off``, ``no``, ``false``) turns it off.

Writes are atomic (invariant 2 of the design): a temporary file in the same
directory, fsynced, then renamed over the entry, so a reader sees either the
old entry or the new one, never half of one, however many redhand processes
run at once.  The total size is bounded by :data:`MAX_BYTES`: after a write,
the least recently used entries (by mtime, which a read refreshes once a day)
are deleted until the cache is under the bound again.

What an entry's payload means, and which inputs it was derived from, is the
caller's business (:mod:`redhand.symbols.table` keeps the inputs in the
payload and compares them on load).
"""

from __future__ import annotations

import os
import struct
import time
import zlib

FORMAT = 1
"""The version of the entry file layout below (the payloads have their own)."""

MAX_BYTES = 256 << 20
"""The size the whole cache is trimmed to after a write."""

_MAGIC = b"redhand\x00"
# magic, format, payload length, payload CRC32
_HEADER = struct.Struct("<8sIQI")
_TOUCH_AFTER = 24 * 3600  # refresh an entry's mtime on use at most once a day
_STALE_TEMPORARY = 3600  # a temporary file this old was left by a killed writer
_TEMPORARY_SUFFIX = ".tmp"
_OFF = frozenset({"0", "off", "no", "false"})


def directory() -> str | None:
    """The cache directory, or None when the cache is off or there is no home to put it in."""
    if os.environ.get("REDHAND_CACHE", "").strip().lower() in _OFF:
        return None
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative path is to be ignored
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "redhand")


def entry_path(kind: str, name: str) -> str | None:
    """Where the entry ``name`` of ``kind`` is (or would be), or None without a cache."""
    root = directory()
    if root is None:
        return None
    return os.path.join(root, kind, name)


def read(kind: str, name: str) -> bytes | None:
    """The payload of an entry, or None if there is none usable (never raises)."""
    path = entry_path(kind, name)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if info.st_size < _HEADER.size or info.st_size > MAX_BYTES:
            return None
        data = _read_all(fd, info.st_size)
        if time.time() - info.st_mtime > _TOUCH_AFTER:
            _touch(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    magic, version, length, crc = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != FORMAT or length != len(data) - _HEADER.size:
        return None
    payload = memoryview(data)[_HEADER.size :]
    if zlib.crc32(payload) != crc:
        return None
    return bytes(payload)


def write(kind: str, name: str, payload: bytes) -> bool:
    """Store an entry atomically; False if it could not be (never raises for I/O)."""
    path = entry_path(kind, name)
    if path is None or len(payload) + _HEADER.size > MAX_BYTES:
        return False
    folder = os.path.dirname(path)
    temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}{_TEMPORARY_SUFFIX}"
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        try:
            header = _HEADER.pack(_MAGIC, FORMAT, len(payload), zlib.crc32(payload))
            _write_all(fd, header + payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        _unlink(temporary)
        return False
    root = os.path.dirname(folder)
    trim(root)
    return True


def trim(root: str, max_bytes: int = MAX_BYTES) -> None:
    """Delete the least recently used entries under ``root`` until they fit in ``max_bytes``.

    Temporary files left by a writer that was killed are deleted once they are
    an hour old.  Races with other redhand processes are harmless: a file
    deleted by someone else is simply skipped.
    """
    now = time.time()
    entries: list[tuple[float, int, str]] = []
    total = 0
    try:
        kinds = [entry.path for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for folder in kinds:
        try:
            listing = list(os.scandir(folder))
        except OSError:
            continue
        for entry in listing:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.name.endswith(_TEMPORARY_SUFFIX):
                if now - info.st_mtime > _STALE_TEMPORARY:
                    _unlink(entry.path)
                continue
            entries.append((info.st_mtime, info.st_size, entry.path))
            total += info.st_size
    if total <= max_bytes:
        return
    entries.sort()
    for _mtime, size, path in entries:
        if total <= max_bytes:
            break
        _unlink(path)
        total -= size


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _touch(fd: int) -> None:
    try:  # noqa: SIM105 (no contextlib on the path of `redhand stack`)
        os.utime(fd)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 (no contextlib on the path of `redhand stack`)
        os.unlink(path)
    except OSError:
        pass
