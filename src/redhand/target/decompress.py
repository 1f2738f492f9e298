"""Compressed cores (.zst, .gz, .xz), made readable at random.

systemd-coredump stores cores compressed with zstd; others gzip or xz them.
Reading a core needs random access, so a compressed core is decompressed,
as a stream, into an anonymous file: a ``memfd`` while it fits comfortably
in memory, else a temporary file in $TMPDIR that is unlinked at once (it
has no name from the start: ``O_TMPFILE``).  Either way nothing is left
behind: the data lives as long as the mapping of it.

The format is recognised by its magic bytes, never by the file's name.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Callable

from redhand.errors import ElfError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import contextlib
    from typing import Protocol

    class _Decompressor(Protocol):
        def decompress(self, data: bytes) -> bytes: ...


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"

CHUNK = 1 << 20

ProgressCallback = Callable[[int, int], None]
"""Called with (compressed bytes read, compressed size) as decompression goes on."""


def detect_compression(head: bytes) -> str | None:
    """``"zstd"``, ``"gzip"``, ``"xz"`` or None, from the first bytes of a file."""
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return None


def _decompressor(kind: str) -> _Decompressor:
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if kind == "xz":
        import lzma

        return lzma.LZMADecompressor()
    import zlib

    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)


def _stream_errors() -> tuple[type[Exception], ...]:
    import lzma
    import zlib

    errors: list[type[Exception]] = [zlib.error, lzma.LZMAError, EOFError, ValueError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - a dependency
        pass
    return tuple(errors)


def _memory_budget() -> int:
    """How many bytes a memfd may hold: a quarter of the memory available now."""
    from redhand.proc.procfs import read_meminfo

    available = read_meminfo("MemAvailable")
    return available // 4 if available is not None else 1 << 30


class Decompressed:
    """A decompressed core: a read-only mapping of an anonymous file.

    ``warning`` says when the stream ended early or was corrupt (the data
    before that point is kept: a truncated core).  ``in_memory`` tells
    whether a memfd (True) or an unlinked temporary file holds it.
    """

    def __init__(self, data: mmap.mmap, kind: str, in_memory: bool, warning: str | None):
        self.data = data
        self.kind = kind
        self.in_memory = in_memory
        self.warning = warning


def _new_memfd() -> int | None:
    create = getattr(os, "memfd_create", None)
    if create is None:  # pragma: no cover - Linux always has it
        return None
    try:
        fd: int = create("redhand-core", os.MFD_CLOEXEC)
    except OSError:
        return None
    return fd


def _temporary_fd() -> int:
    """A file in $TMPDIR without a name (O_TMPFILE, or created and unlinked at once)."""
    with tempfile.TemporaryFile(prefix="redhand-core-") as handle:
        return os.dup(handle.fileno())


_PAGE = 4096
_ZERO_PAGE = bytes(_PAGE)
_MAX_OUTPUT = 8 * CHUNK  # the most one decompress() call should return


class _SparseSink:
    """Writes decompressed data to a file, leaving all-zero pages as holes.

    Cores are mostly zeros (untouched stack and heap pages); holes cost no
    memory in a memfd and no disk in a temporary file.  ``stored`` counts
    the bytes actually written, which is what the memory budget limits.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self.stored = 0
        fd = _new_memfd()
        self.in_memory = fd is not None
        self.fd = fd if fd is not None else _temporary_fd()

    def write(self, data: bytes) -> None:
        size = self.size
        at = 0
        end = len(data)
        zero_page = _ZERO_PAGE
        # Up to the next page boundary of the file, then page by page: whole
        # zero pages are skipped (bytes slices compare at C speed).
        head = min(end, -size % _PAGE)
        if head:
            self._store(data[:head], size)
            at = head
        while at < end:
            step = min(end - at, _PAGE)
            block = data[at : at + step]
            if step != _PAGE or block != zero_page:
                self._store(block, size + at)
            at += step
        self.size = size + end

    def _store(self, block: bytes, offset: int) -> None:
        if self.in_memory and self.stored + len(block) > self.budget:
            self._spill()
        view = memoryview(block)
        while view:
            written = os.pwrite(self.fd, view, offset)
            view = view[written:]
            offset += written
            self.stored += written

    def _spill(self) -> None:
        """Too big for memory: move what is stored to a temporary file."""
        target = _temporary_fd()
        try:
            offset = 0
            end = os.fstat(self.fd).st_size
            while offset < end:
                block = os.pread(self.fd, 8 * CHUNK, offset)
                if not block:
                    break
                os.pwrite(target, block, offset)
                offset += len(block)
        except BaseException:
            os.close(target)
            raise
        os.close(self.fd)
        self.fd = target
        self.in_memory = False

    def finish(self) -> mmap.mmap:
        os.ftruncate(self.fd, self.size)
        return mmap.mmap(self.fd, self.size, access=mmap.ACCESS_READ)

    def close(self) -> None:
        # The mapping holds the file; its descriptor can go (and with it,
        # once the mapping is closed, every byte: the file has no name).
        os.close(self.fd)


def decompress(
    path: str,
    kind: str,
    *,
    progress: ProgressCallback | None = None,
    memory_budget: int | None = None,
) -> Decompressed:
    """Decompress the ``kind``-compressed file at ``path`` into an anonymous mapping.

    Raises ElfError when nothing could be decompressed or no space was left.
    """
    budget = _memory_budget() if memory_budget is None else memory_budget
    errors = _stream_errors()
    total = os.path.getsize(path)
    done = 0
    decompressor = _decompressor(kind)
    warning: str | None = None
    sink: _SparseSink | None = None
    try:
        sink = _SparseSink(budget)
        with open(path, "rb") as source:
            started = False  # the current member/frame has had input
            feed = 1024  # compressed bytes per decompress() call (grows with the ratio)
            while warning is None:
                chunk = source.read(CHUNK)
                if not chunk:
                    break
                done += len(chunk)
                # A file may hold several frames (zstd) or members (gzip, xz):
                # a new decompressor takes over where one ends.  Input goes in
                # pieces small enough that one call's output stays bounded
                # (a core's zero pages compress a thousandfold).
                pending = chunk
                while pending:
                    piece, pending = pending[:feed], pending[feed:]
                    try:
                        out = decompressor.decompress(piece)
                    except errors as error:
                        what = "corrupt" if started or not sink.size else "followed by garbage"
                        warning = (
                            f"the {kind} stream is {what} after {sink.size} decompressed "
                            f"bytes ({error}); what came before is used"
                        )
                        break
                    started = True
                    if out:
                        sink.write(out)
                    if out:
                        ratio = len(out) // max(1, len(piece))
                        feed = max(512, min(CHUNK, _MAX_OUTPUT // max(1, ratio)))
                    else:  # input buffered, output to come: do not guess big
                        feed = min(CHUNK, feed * 2)
                    if getattr(decompressor, "eof", False):
                        pending = bytes(getattr(decompressor, "unused_data", b"")) + pending
                        decompressor = _decompressor(kind)
                        started = False
                if progress is not None:
                    progress(done, total)
        if warning is None and started:
            warning = (
                f"the {kind} stream ends early (the compressed file is truncated) after "
                f"{sink.size} decompressed bytes; what came before is used"
            )
        if sink.size == 0:
            raise ElfError(path, f"{kind}-compressed, but nothing could be decompressed: {warning}")
        return Decompressed(sink.finish(), kind, sink.in_memory, warning)
    except OSError as error:
        raise ElfError(
            path,
            f"cannot decompress the {kind}-compressed core: {os.strerror(error.errno or 0)}",
            hint="set TMPDIR to a directory with room for the decompressed core",
        ) from None
    finally:
        if sink is not None:
            sink.close()


def terminal_progress(
    description: str, *, enabled: bool = True, threshold: int = 64 << 20
) -> contextlib.AbstractContextManager[ProgressCallback | None]:
    """A progress bar on stderr for a decompression (see :mod:`redhand.report.progress`).

    Shown only when ``enabled`` (the CLI passes whether stderr is a terminal)
    and the compressed file is at least ``threshold`` bytes.
    """
    from redhand.report.progress import terminal_progress as bar

    return bar(description, enabled=enabled, threshold=threshold)


__all__ = [
    "Decompressed",
    "ProgressCallback",
    "decompress",
    "detect_compression",
    "terminal_progress",
]
