"""Writing a core: never half a file, holes for what is zero, zstd when asked.

:class:`OutputFile` is the destination.  The data goes to a file without a
name (``O_TMPFILE``; a hidden temporary name where the file system has no
such thing) in the destination's folder; :meth:`OutputFile.commit` fsyncs it,
gives it its name in one step (``link`` when nothing may be replaced,
``rename`` with ``force``) and fsyncs the folder.  Until then the name shows
nothing, or the old file; a kill leaves no trace (with O_TMPFILE) or a
hidden temporary file.

A sink takes the core in file order.  :class:`SparseSink` leaves every
all-zero page a hole (``pwrite`` past it; the file is sized at the end);
:class:`ZstdSink` streams one zstd frame, the holes as zeros.

:class:`MemoryCopier` reads a process's memory through /proc/PID/mem into a
sink: pages its page table has never had (pagemap) are not even read for
anonymous memory, all-zero pages are not written, and pages that cannot be
read become holes, counted.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import numpy.typing

from redhand.capture.corefile import PAGE_SIZE
from redhand.errors import OutputError, ProcessError, ProcessExited

CHUNK = 4 << 20
"""Bytes read from the process at a time."""

_PAGEMAP_PAGES = 1 << 16
"""Pages of pagemap read at a time (512 KiB of entries, 256 MiB of memory)."""
_PRESENT = np.uint64(1 << 63)
_SWAPPED = np.uint64(1 << 62)
_WORDS_PER_PAGE = PAGE_SIZE // 8

Progress = Callable[[int, "int | None"], None]


class Cancelled(Exception):
    """Raised inside a copy when the cancel event is set."""


class OutputFile:
    """The file a core is written to, named only once it is whole.

    Raises OutputError at once when ``path`` exists (unless ``force``), is a
    symbolic link (always refused: it may point anywhere), or its folder is
    missing or not writable.
    """

    def __init__(self, path: str, *, force: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.force = force
        self.folder = os.path.dirname(self.path)
        self._temporary: str | None = None
        self.fd = -1
        self._check_destination()
        try:
            self.fd = os.open(self.folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise self._error(error) from None
            self._open_named()

    def _check_destination(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            info = None
        except OSError as error:
            raise self._error(error) from None
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise OutputError(
                self.path,
                f"{self.path} is a symbolic link",
                hint="give the real path of the core (a link could point anywhere)",
            )
        if info is not None and not self.force:
            raise OutputError(
                self.path, f"{self.path} exists", hint="remove it, or pass --force to replace it"
            )
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise OutputError(self.path, f"{self.path} is a directory", hint="give a file name")
        if not os.path.isdir(self.folder):
            raise OutputError(self.path, f"{self.folder} is not a directory")

    def _hidden_names(self) -> Iterator[str]:
        """Names for a temporary file beside the destination, hidden by a leading dot."""
        name = os.path.basename(self.path)
        for attempt in range(100):
            yield os.path.join(self.folder, f".{name}.redhand-{os.getpid()}-{attempt}")

    def _open_named(self) -> None:
        for candidate in self._hidden_names():
            try:
                self.fd = os.open(
                    candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                )
            except FileExistsError:
                continue
            except OSError as error:
                raise self._error(error) from None
            self._temporary = candidate
            return
        raise OutputError(self.path, f"no temporary name is free in {self.folder}")

    def _error(self, error: OSError) -> OutputError:
        return output_error(self.path, error)

    def free_bytes(self) -> int:
        info = os.fstatvfs(self.fd)
        return info.f_bavail * info.f_frsize

    def commit(self) -> None:
        """Make the file whole on disk, then give it its name, then make the name durable."""
        try:
            os.fsync(self.fd)
            if self._temporary is None:
                self._link_anonymous()
            elif self.force:
                os.rename(self._temporary, self.path)
                self._temporary = None
            else:
                os.link(self._temporary, self.path)
                os.unlink(self._temporary)
                self._temporary = None
            folder = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except FileExistsError:
            raise OutputError(
                self.path,
                f"{self.path} appeared while the core was written",
                hint="pass --force to replace it",
            ) from None
        except OutputError:
            raise
        except OSError as error:
            raise self._error(error) from None
        finally:
            self.close()

    def _link_anonymous(self) -> None:
        if not self.force:
            self._link(self.path)
            return
        # Replacing: a hidden name first, then rename over the old file.
        for candidate in self._hidden_names():
            try:
                self._link(candidate)
            except FileExistsError:
                continue
            os.rename(candidate, self.path)
            return
        raise OutputError(self.path, f"no temporary name is free in {self.folder}")

    def _link(self, path: str) -> None:
        """Give the O_TMPFILE file a name: linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW).

        (os.link without a directory descriptor calls link(2), which would
        link the /proc symbolic link itself.)
        """
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{self.fd}", path, src_dir_fd=root, follow_symlinks=True)
        finally:
            os.close(root)

    def discard(self) -> None:
        """Forget what was written: the destination is as it was."""
        self.close()
        if self._temporary is not None:
            try:  # noqa: SIM105
                os.unlink(self._temporary)
            except OSError:
                pass
            self._temporary = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def output_error(path: str, error: OSError) -> OutputError:
    """The OutputError for a failed write or open of ``path``, by errno."""
    reason = os.strerror(error.errno or 0)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(
            path,
            f"cannot write {path}: {reason}",
            hint="free some space or write the core elsewhere (-o); --zstd makes it smaller",
            no_space=True,
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return OutputError(path, f"cannot write {path}: {reason}", hint="choose another folder")
    return OutputError(path, f"cannot write {path}: {reason}")


# -- sinks ------------------------------------------------------------------------------


class Sink(Protocol):
    position: int

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` at :attr:`position`."""

    def skip(self, size: int) -> None:
        """Append ``size`` zero bytes."""

    def finish(self) -> None:
        """Everything is written: size the file, flush the stream."""


class SparseSink:
    """Appends to a file with ``pwrite``; zeros are skipped, so they become holes.

    Every few dozen MiB, writeback to the disk is started for what was
    written (sync_file_range), so that the final fsync has little left to
    wait for and the page cache does not fill with dirty pages.
    """

    WRITEBACK_EVERY = 32 << 20

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.position = 0
        self._unsynced_from = 0  # writeback was started for the file up to here

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.position)
            view = view[written:]
            self.position += written
        if self.position - self._unsynced_from >= self.WRITEBACK_EVERY:
            _start_writeback(self.fd, self._unsynced_from, self.position - self._unsynced_from)
            self._unsynced_from = self.position

    def skip(self, size: int) -> None:
        self.position += size

    def finish(self) -> None:
        os.ftruncate(self.fd, self.position)


_SYNC_FILE_RANGE_WRITE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    _sync_file_range.restype = ctypes.c_int


def _start_writeback(fd: int, offset: int, size: int) -> None:
    """Ask the kernel to start writing a range to disk, without waiting (best effort)."""
    if _sync_file_range is not None and size > 0:
        _sync_file_range(fd, offset, size, _SYNC_FILE_RANGE_WRITE)


class ZstdSink:
    """One zstd frame (level 3; two worker threads when the machine has the cores)."""

    _ZEROS = bytes(1 << 20)

    def __init__(self, fd: int, *, level: int = 3) -> None:
        import zstandard

        threads = 2 if (os.cpu_count() or 1) > 1 else 0
        compressor = zstandard.ZstdCompressor(level=level, threads=threads)
        self._file = os.fdopen(os.dup(fd), "wb", buffering=1 << 20)
        self._stream = compressor.stream_writer(self._file, closefd=False)
        self.position = 0

    def write(self, data: bytes | memoryview) -> None:
        self._stream.write(data)
        self.position += len(data)

    def skip(self, size: int) -> None:
        zeros = memoryview(self._ZEROS)
        while size > 0:
            step = min(size, len(zeros))
            self._stream.write(zeros[:step])
            self.position += step
            size -= step

    def finish(self) -> None:
        self._stream.close()  # type: ignore[no-untyped-call]
        self._file.flush()
        self._file.close()


# -- reading memory ------------------------------------------------------------------------


class MemoryCopier:
    """Copies ranges of processes' memory into a sink, page-aware, reading and writing at once.

    The calling thread reads (``/proc/PID/mem``) and finds the zero pages; a
    writer thread of its own writes what is not zero, from a small pool of
    buffers, so that reading the next chunk and writing this one overlap.
    ``done`` counts the bytes of address space handled (for a progress bar),
    ``stored`` the bytes written as data, ``unreadable`` those that could
    not be read (written as holes).  :meth:`finish` waits for the writer and
    raises what it met (a full disk).
    """

    def __init__(
        self,
        sink: Sink,
        *,
        cancel: threading.Event | None = None,
        progress: Progress | None = None,
        total: int | None = None,
        buffers: int = 3,
    ) -> None:
        self.sink = sink
        self.cancel = cancel
        self.progress = progress
        self.total = total
        self.done = 0
        self.stored = 0
        self.unreadable = 0
        self._files: dict[int, tuple[int, int | None]] = {}  # pid -> (mem, pagemap)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(CHUNK))
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._writer = threading.Thread(target=self._write_all, name="redhand-writer", daemon=True)
        self._writer.start()

    # -- the reading side --

    def copy(self, pid: int, start: int, size: int, *, anonymous: bool) -> None:
        """Append the memory of ``pid`` from ``start`` (``size`` bytes, whole pages).

        With ``anonymous``, pages that are neither present nor swapped out
        (never touched) are holes without being read.
        """
        end = start + size
        fed = start  # the sink holds the range up to here
        for window in range(start, end, _PAGEMAP_PAGES * PAGE_SIZE):
            span = min(end - window, _PAGEMAP_PAGES * PAGE_SIZE)
            if not anonymous:
                self._copy_run(pid, window, span)
                fed = window + span
                continue
            for run_start, run_pages in _runs(self._present(pid, window, span // PAGE_SIZE)):
                address = window + run_start * PAGE_SIZE
                self.skip(address - fed)
                self._copy_run(pid, address, run_pages * PAGE_SIZE)
                fed = address + run_pages * PAGE_SIZE
        self.skip(end - fed)

    def copy_bytes(self, data: bytes) -> None:
        """Append bytes captured earlier (a region copied while the process was frozen)."""
        for offset in range(0, len(data), CHUNK):
            piece = data[offset : offset + CHUNK]
            buffer = self._take()
            buffer[: len(piece)] = piece
            self._queue_pages(buffer, len(piece))

    def write(self, data: bytes) -> None:
        """Append ``data`` as it is (headers)."""
        self._check()
        self._jobs.put(_Job(data=data))

    def skip(self, size: int) -> None:
        if size > 0:
            self._check()
            self._jobs.put(_Job(skip=size))
            self._advance(size)

    def _copy_run(self, pid: int, address: int, size: int) -> None:
        end = address + size
        while address < end:
            if self.cancel is not None and self.cancel.is_set():
                raise Cancelled
            step = min(end - address, CHUNK)
            buffer = self._take()
            view = memoryview(buffer)[:step]
            got = self._read(pid, address, view)
            if got < step:
                if got == 0 and not _alive(pid):
                    self._free.put(buffer)
                    raise ProcessExited(pid, f"process {pid} ended during the dump")
                self._read_pages(pid, address, view)  # what cannot be read becomes zeros
            del view
            self._queue_pages(buffer, step)
            address += step

    def _files_of(self, pid: int) -> tuple[int, int | None]:
        files = self._files.get(pid)
        if files is None:
            try:
                mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as error:
                if not _alive(pid):
                    raise ProcessExited(pid, f"process {pid} ended during the dump") from None
                raise ProcessError(
                    pid, f"cannot read the memory of {pid}: {error.strerror}"
                ) from None
            try:
                pagemap: int | None = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pagemap = None
            files = self._files[pid] = (mem, pagemap)
        return files

    def _read(self, pid: int, address: int, view: memoryview) -> int:
        mem = self._files_of(pid)[0]
        done = 0
        while done < len(view):
            try:
                count = os.preadv(mem, [view[done:]], address + done)
            except OSError:
                return done
            if count <= 0:
                return done
            done += count
        return done

    def _read_pages(self, pid: int, address: int, view: memoryview) -> None:
        for offset in range(0, len(view), PAGE_SIZE):
            page = view[offset : offset + PAGE_SIZE]
            if self._read(pid, address + offset, page) < len(page):
                page[:] = bytes(len(page))
                self.unreadable += len(page)

    def _present(self, pid: int, address: int, pages: int) -> np.typing.NDArray[np.bool_]:
        """Which of ``pages`` pages from ``address`` are present or swapped out."""
        pagemap = self._files_of(pid)[1]
        if pagemap is None:
            return np.ones(pages, dtype=bool)
        try:
            raw = os.pread(pagemap, pages * 8, (address // PAGE_SIZE) * 8)
        except OSError:
            return np.ones(pages, dtype=bool)
        entries = np.frombuffer(raw[: len(raw) - len(raw) % 8], dtype=np.uint64)
        present: np.typing.NDArray[np.bool_] = (entries & (_PRESENT | _SWAPPED)) != 0
        if len(present) < pages:  # unreadable entries: read those pages
            present = np.concatenate([present, np.ones(pages - len(present), dtype=bool)])
        return present

    def _queue_pages(self, buffer: bytearray, length: int) -> None:
        """Hand ``length`` bytes of ``buffer`` to the writer, with its runs of non-zero pages."""
        whole = length - length % PAGE_SIZE
        runs: list[tuple[int, int]] = []
        if whole:
            words = np.frombuffer(buffer, dtype=np.uint64, count=whole // 8)
            nonzero = np.asarray(words.reshape(-1, _WORDS_PER_PAGE).any(axis=1), dtype=bool)
            runs = [(start * PAGE_SIZE, pages * PAGE_SIZE) for start, pages in _runs(nonzero)]
        if whole < length and any(buffer[whole:length]):
            runs.append((whole, length - whole))
        self.stored += sum(size for _, size in runs)
        self._check()
        self._jobs.put(_Job(buffer=buffer, length=length, runs=runs))
        self._advance(length)

    def _take(self) -> bytearray:
        self._check()
        return self._free.get()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _advance(self, size: int) -> None:
        self.done += size
        if self.progress is not None:
            self.progress(self.done, self.total)

    # -- the writing side --

    def _write_all(self) -> None:
        sink = self.sink
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._failure is not None:
                    continue
                if job.data is not None:
                    sink.write(job.data)
                elif job.buffer is not None:
                    view = memoryview(job.buffer)
                    at = 0
                    for begin, size in job.runs:
                        sink.skip(begin - at)
                        sink.write(view[begin : begin + size])
                        at = begin + size
                    sink.skip(job.length - at)
                    del view
                else:
                    sink.skip(job.skip)
            except BaseException as error:  # handed to the reading side
                self._failure = error
            finally:
                if job.buffer is not None:
                    self._free.put(job.buffer)

    def finish(self) -> None:
        """Wait until everything is written; raise what the writer met."""
        self._stop_writer()
        self._check()

    def _stop_writer(self) -> None:
        if self._writer.is_alive():
            self._jobs.put(None)
            self._writer.join()

    def close(self) -> None:
        self._stop_writer()
        for mem, pagemap in self._files.values():
            os.close(mem)
            if pagemap is not None:
                os.close(pagemap)
        self._files.clear()


class _Job:
    """One piece of work for the writer: data, a hole, or a buffer of pages with its
    runs of non-zero bytes (offset, size)."""

    __slots__ = ("buffer", "data", "length", "runs", "skip")

    def __init__(
        self,
        *,
        data: bytes | None = None,
        skip: int = 0,
        buffer: bytearray | None = None,
        length: int = 0,
        runs: list[tuple[int, int]] | None = None,
    ) -> None:
        self.data = data
        self.skip = skip
        self.buffer = buffer
        self.length = length
        self.runs = runs or []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _runs(flags: np.typing.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a boolean array."""
    if not len(flags):
        return []
    padded = np.concatenate(([False], flags, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, stops = edges[0::2], edges[1::2]
    return [(int(a), int(b - a)) for a, b in zip(starts, stops, strict=True)]
