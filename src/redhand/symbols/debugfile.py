"""Finding the separate debug file of an ELF file, in gdb's order.

1. By build-id, in each debug directory:
   ``{debug_dir}/.build-id/{first two hex digits}/{the rest}.debug``.
2. By the .gnu_debuglink name, in the binary's own directory, its
   ``.debug`` subdirectory, then ``{debug_dir}/{the binary's directory}``.

3. Last, from a debuginfod server by build-id (:mod:`redhand.symbols.debuginfod`),
   when ``DEBUGINFOD_URLS`` names one (or the caller says so), through its
   cache.

A candidate is accepted only when it is the right file: its build-id equals
the binary's, or, when one of them has none, its CRC32 equals the one stored
in .gnu_debuglink.
"""

from __future__ import annotations

import os
import sys

from redhand.elf import ElfFile
from redhand.errors import ElfError, FileNotFound

TYPE_CHECKING = False

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_DEBUG_DIRS: tuple[str, ...] = ("/usr/lib/debug",)


def debug_file_candidates(
    elf: ElfFile,
    file_path: str | None = None,
    debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
    *,
    origin_path: str | None = None,
    debuginfod: bool | None = None,
) -> list[tuple[str, str]]:
    """Where to look, in order: ``(path, "build-id", "debuglink" or "debuginfod")`` pairs.

    ``origin_path`` is the binary's path as the process saw it (from
    /proc/PID/maps or a core's NT_FILE); ``file_path`` where it can be read
    now, which may be a /proc/PID/map_files/... link whose directory means
    nothing.  The debuglink directories come from ``origin_path`` when given,
    then from the real path ``file_path`` resolves to, if that differs.

    With debuginfod on (``debuginfod``; None: when ``DEBUGINFOD_URLS`` is
    set), the last pair is the file's place in the debuginfod cache, unless a
    recent miss is remembered there: a cached symbol index built before a
    download, or before a miss expired, is then stale.
    """
    candidates: list[tuple[str, str]] = []
    build_id = elf.build_id
    if build_id and len(build_id) > 2:
        for debug_dir in debug_dirs:
            path = os.path.join(debug_dir, ".build-id", build_id[:2], build_id[2:] + ".debug")
            candidates.append((path, "build-id"))
    link = elf.debuglink
    where = origin_path or file_path or elf.path
    if link is not None and where:
        name = link[0]
        if os.sep in name:
            name = os.path.basename(name)  # a link names a file, never a path
        directories = [os.path.dirname(os.path.abspath(where))]
        # Through a symlink (or a /proc/PID/map_files/... link), the real
        # directory too, like gdb's retry with the canonical path.
        real = os.path.dirname(os.path.realpath(file_path or where))
        if real not in directories:
            directories.append(real)
        for directory in directories:
            candidates.append((os.path.join(directory, name), "debuglink"))
            candidates.append((os.path.join(directory, ".debug", name), "debuglink"))
            for debug_dir in debug_dirs:
                path = os.path.join(debug_dir, directory.lstrip(os.sep), name)
                candidates.append((path, "debuglink"))
    if build_id and _debuginfod_on(debuginfod):
        from redhand.symbols import debuginfod as client

        path = client.cache_path(build_id)
        if not client.recent_miss(path):
            candidates.append((path, "debuginfod"))
    return candidates


def alternate_file_candidates(
    path: str, name: str, build_id: str, debug_dirs: Sequence[str]
) -> list[str]:
    """Where dwz's alternate file ``name`` (.gnu_debugaltlink of the file at ``path``) may be.

    The name as it is when absolute, else in the folder of ``path`` (and of
    its real path); then by build-id (hex) in the debug folders, where
    distributions install them.  In that order, whether they exist or not.
    """
    candidates = []
    if os.path.isabs(name):
        candidates.append(name)
    else:
        for folder in (os.path.dirname(path), os.path.dirname(os.path.realpath(path))):
            candidates.append(os.path.join(folder, name))
    if len(build_id) > 2:
        for folder in debug_dirs:
            candidates.append(
                os.path.join(folder, ".build-id", build_id[:2], build_id[2:] + ".debug")
            )
    return list(dict.fromkeys(candidates))


def _debuginfod_on(debuginfod: bool | None) -> bool:
    if debuginfod is None:
        return bool(os.environ.get("DEBUGINFOD_URLS", "").strip())
    return debuginfod


def find_debug_file(
    elf: ElfFile,
    file_path: str | None = None,
    debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
    *,
    origin_path: str | None = None,
    tried: list[str] | None = None,
    debuginfod: bool | None = None,
) -> ElfFile | None:
    """The opened separate debug file of ``elf``, or None; the caller closes it.

    ``file_path`` is where the binary is on disk, ``origin_path`` the path the
    process saw (see :func:`debug_file_candidates`).  ``tried``, when given,
    collects one line per candidate that exists but was rejected, and why.

    When no local candidate is right and debuginfod is on (``debuginfod``;
    None: when ``DEBUGINFOD_URLS`` is set), the file is fetched by build-id
    (with a progress bar when stderr is a terminal), as the last resort.
    """
    try:
        candidates = debug_file_candidates(
            elf, file_path, debug_dirs, origin_path=origin_path, debuginfod=False
        )
        build_id = elf.build_id
        link = elf.debuglink
    except ElfError as exc:
        if tried is not None:
            tried.append(f"cannot look for a debug file: {exc}")
        return None
    own = _identity(file_path) or _identity(elf.path)
    seen: set[str] = set()
    for path, how in candidates:
        if path in seen:
            continue
        seen.add(path)
        identity = _identity(path)
        if identity is None or identity == own:
            continue  # missing, or the binary itself
        found = _open_verified(path, how, build_id, link, tried)
        if found is not None:
            return found
    if build_id and _debuginfod_on(debuginfod):
        return _from_debuginfod(build_id, tried)
    return None


def _from_debuginfod(build_id: str, tried: list[str] | None) -> ElfFile | None:
    """The debug file of ``build_id`` from a debuginfod server (or its cache), opened."""
    from redhand.symbols import debuginfod as client

    problems: list[str] = []
    description = f"debuginfod {build_id[:12]}"
    on_terminal = sys.stderr is not None and sys.stderr.isatty()
    with client.terminal_progress(description, enabled=on_terminal) as progress:
        path = client.fetch_debuginfo(build_id, progress=progress, problems=problems)
    if tried is not None:
        tried.extend(problems)
    if path is None:
        return None
    return _open_verified(path, "debuginfod", build_id, None, tried)


def _open_verified(
    path: str, how: str, build_id: str | None, link: tuple[str, int] | None, tried: list[str] | None
) -> ElfFile | None:
    """``path`` opened if it is the debug file wanted (build-id or debuglink CRC), else None.

    A missing file is silently None; any other refusal is noted in ``tried``.
    """
    try:
        candidate = ElfFile.open(path)
    except FileNotFound:
        return None
    except ElfError as exc:
        if tried is not None:
            tried.append(f"{path}: {exc.message}")
        return None
    try:
        problem = _mismatch(candidate, how, build_id, link)
    except ElfError as exc:
        problem = exc.message
    if problem is None:
        return candidate
    candidate.close()
    if tried is not None:
        tried.append(f"{path} ({how}): {problem}")
    return None


def _mismatch(
    candidate: ElfFile, how: str, build_id: str | None, link: tuple[str, int] | None
) -> str | None:
    """Why ``candidate`` is not the debug file wanted, or None when it is."""
    theirs = candidate.build_id
    if build_id and theirs:
        if theirs != build_id:
            return f"build-id {theirs} does not match {build_id}"
        return None
    if how in ("build-id", "debuginfod"):
        return "has no build-id" if build_id else "no build-id to compare"
    if link is None:
        return "no debuglink CRC to compare"
    crc = candidate.crc32()
    if crc != link[1]:
        return f"CRC32 {crc:#010x} does not match the debuglink's {link[1]:#010x}"
    return None


def _identity(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino)
