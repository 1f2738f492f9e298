"""Where the dynamic linker would find a file's libraries on this machine, and what each of
the file's imports would bind to: ``ldd`` without running anything.

ld.so (glibc's ``_dl_map_object``) looks for a needed name without a slash in this order:
the DT_RPATH of the object that needs it and of the objects that loaded that one, then of
the executable (each only while the object has no DT_RUNPATH); LD_LIBRARY_PATH; the
object's own DT_RUNPATH; /etc/ld.so.cache; the system directories.  ``$ORIGIN``, ``$LIB``
and ``$PLATFORM`` are expanded in the paths; a file of another class or machine is passed
over; a name with a slash is opened as it is.  Objects are loaded breadth-first from the
executable (after LD_PRELOAD's), and a name that an object already loaded answers to (its
soname, or the name it was found by) is not loaded again.  The result is the link map the
process would start with; the lookup of :mod:`redhand.dynlink.process` then binds every
import in it, and the versions each object needs are checked against those its providers
define, as ld.so does before it runs anything.

In each directory, ld.so first tries subdirectories for what the CPU supports: the
glibc-hwcaps ones (``glibc-hwcaps/x86-64-v3``, ...) and, up to glibc 2.36, the legacy ones
(``tls``, ``x86_64`` and their combinations).  Which, and in what order, depends on the CPU
and the glibc: this machine's ld.so is asked once (its ``--list`` mode, which runs no program,
with ``LD_DEBUG=libs`` on a search path of one probe directory).

An object marked DF_1_NODEFLIB (``-z nodefaultlib``) has its needs looked for in its search
paths alone: not in the cache, nor in the system directories.

Not modelled: the glibc-hwcaps entries of ld.so.cache (the first entry of a name is taken),
secure mode (set-uid programs ignore LD_LIBRARY_PATH), and ld.so.conf edits not yet cached
by ldconfig.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from redhand.dynlink.dynamic import Import, Kind, cached_dynamic
from redhand.dynlink.process import Binding, LinkedModule, Scopes, lookup
from redhand.elf import constants as c

CACHE = "/etc/ld.so.cache"
SYSTEM_DIRECTORIES = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")
_LIB = "lib/x86_64-linux-gnu"  # what $LIB expands to on this kind of system
_PLATFORM = "x86_64"
_CACHE_MAGIC = b"glibc-ld.so.cache1.1"
_CACHE_HEADER = struct.Struct("<20sIIB3xI12x")
_CACHE_ENTRY = struct.Struct("<iIIIQ")
_X86_64_LIBC6 = 0x0303  # FLAG_ELF_LIBC6 | FLAG_X8664_LIB64
_MAX_OBJECTS = 4096


def read_cache(path: str = CACHE) -> dict[str, str]:
    """ldconfig's cache: a library's name -> its path, the first x86-64 entry of each
    name (as ld.so takes it).  Empty when the cache is missing or not understood."""
    try:
        with open(path, "rb") as file:
            data = file.read(64 << 20)
    except OSError:
        return {}
    start = data.find(_CACHE_MAGIC)  # after the old format's part, when there is one
    if start < 0 or len(data) < start + _CACHE_HEADER.size:
        return {}
    _magic, count, _strings, _flags, _extension = _CACHE_HEADER.unpack_from(data, start)
    found: dict[str, str] = {}
    at = start + _CACHE_HEADER.size
    for _ in range(min(count, (len(data) - at) // _CACHE_ENTRY.size)):
        flags, key, value, _os, _hwcap = _CACHE_ENTRY.unpack_from(data, at)
        at += _CACHE_ENTRY.size
        if flags != _X86_64_LIBC6:
            continue
        name, where = _string(data, start + key), _string(data, start + value)
        if name and where:
            found.setdefault(name, where)
    return found


def _string(data: bytes, offset: int) -> str:
    end = data.find(b"\0", offset)
    return data[offset:end].decode("utf-8", "replace") if 0 <= offset < end else ""


@dataclass
class FoundLibrary:
    """One name an object needs, and where ld.so would take it from."""

    name: str
    needed_by: str
    path: str | None  # None: not found (ld.so would refuse to start the program)
    how: str  # "RPATH of ...", "LD_LIBRARY_PATH", "RUNPATH of ...", "ld.so.cache", ...
    already: bool = False  # an object loaded before answers to this name
    tried: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "needed_by": self.needed_by,
            "path": self.path,
            "how": self.how,
            "already_loaded": self.already,
        }


@dataclass
class FileBinding:
    """Where one import of an object would bind at start, or why it would not."""

    owner: LinkedModule
    entry: Import
    binding: Binding | None

    @property
    def fatal(self) -> bool:
        """An undefined strong reference that ld.so resolves at start (a data reference, or
        any under immediate binding): the program would not start."""
        symbol = self.entry.symbol
        if self.binding is not None or symbol is None or symbol.bind == c.STB_WEAK:
            return False
        dynamic = self.owner.dynamic
        return not self.entry.lazy or (dynamic is not None and dynamic.bind_now)


@dataclass
class LoadPlan:
    """The objects a program would start with, in ld.so's order, and how they bind."""

    modules: list[LinkedModule]
    libraries: list[FoundLibrary]
    bindings: list[FileBinding] = field(default_factory=list)
    version_problems: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[FoundLibrary]:
        return [found for found in self.libraries if found.path is None]

    @property
    def unresolved(self) -> list[FileBinding]:
        return [b for b in self.bindings if b.binding is None and b.entry.symbol is not None]


def _expand(path: str, origin: str) -> str:
    for token, value in (("ORIGIN", origin), ("LIB", _LIB), ("PLATFORM", _PLATFORM)):
        path = path.replace(f"${{{token}}}", value).replace(f"${token}", value)
    return path


def _directories(paths: str | None, origin: str) -> list[str]:
    return [_expand(p, origin) or "." for p in (paths or "").split(":") if p] if paths else []


def _usable(path: str) -> bool:
    """A 64-bit x86-64 ELF file, as ld.so accepts (it passes over others and goes on)."""
    try:
        with open(path, "rb") as file:
            head = file.read(20)
    except OSError:
        return False
    return (
        len(head) == 20
        and head[:4] == c.ELFMAG
        and head[4] == 2  # ELFCLASS64
        and int.from_bytes(head[18:20], "little") == 62  # EM_X86_64
    )


_PROBE = "/.redhand-hwcaps-probe"


@functools.cache
def subdirectories(interpreter: str) -> tuple[str, ...]:
    """The subdirectories ld.so tries in each directory of a search path, best first, the
    directory itself (``""``) last: as this machine's ``interpreter`` says when it looks for
    a library of Python's own in a probe directory (nothing runs: its ``--list`` mode)."""
    import subprocess
    import sys

    try:
        told = subprocess.run(
            [interpreter, "--list", sys.executable],
            env={"LD_LIBRARY_PATH": _PROBE, "LD_DEBUG": "libs"},
            capture_output=True,
            text=True,
            timeout=10,
        ).stderr
    except (OSError, subprocess.SubprocessError):
        return ("",)
    for line in told.splitlines():
        if "search path=" in line and line.rstrip().endswith("(LD_LIBRARY_PATH)"):
            paths = line.split("search path=", 1)[1].split()[0].split(":")
            found = [p[len(_PROBE) :].lstrip("/") for p in paths if p.startswith(_PROBE)]
            return tuple(dict.fromkeys([*found, ""]))
    return ("",)


class _Search:
    def __init__(
        self, library_path: Sequence[str], cache: dict[str, str], interpreter: str | None
    ) -> None:
        self.library_path = list(library_path)
        self.cache = cache
        self.subdirectories = subdirectories(interpreter) if interpreter else ("",)

    def _in(self, directory: str, name: str) -> Iterator[str]:
        """Where ``name`` is tried in ``directory``: its CPU subdirectories, then itself."""
        for sub in self.subdirectories:
            yield os.path.join(directory, sub, name) if sub else os.path.join(directory, name)

    def find(self, name: str, loader: LinkedModule, chain: Sequence[LinkedModule]) -> FoundLibrary:
        found = FoundLibrary(name, loader.path, None, "not found")
        if "/" in name:
            path = _expand(name, os.path.dirname(loader.path))
            found.tried.append(path)
            if _usable(path):
                found.path, found.how = path, "its path"
            return found
        for directory, how in self._places(loader, chain):
            for candidate in self._in(directory, name):
                found.tried.append(candidate)
                if _usable(candidate):
                    found.path, found.how = os.path.normpath(candidate), how
                    return found
        if loader.dynamic is not None and loader.dynamic.nodeflib:
            return found  # DF_1_NODEFLIB: neither the cache nor the system directories
        cached = self.cache.get(name)
        if cached is not None and _usable(cached):
            found.path, found.how = cached, "ld.so.cache"
            return found
        for directory in SYSTEM_DIRECTORIES:
            for candidate in self._in(directory, name):
                found.tried.append(candidate)
                if _usable(candidate):
                    found.path, found.how = candidate, "a system directory"
                    return found
        return found

    def _places(
        self, loader: LinkedModule, chain: Sequence[LinkedModule]
    ) -> Iterator[tuple[str, str]]:
        """The directories before the cache: RPATHs, LD_LIBRARY_PATH, the RUNPATH."""
        dynamic = loader.dynamic
        if dynamic is not None and dynamic.runpath is None:
            # The RPATH of the loader, of the objects that loaded it, of the executable:
            # each of an object without a RUNPATH.
            for holder in chain:
                held = holder.dynamic
                if held is None or held.runpath is not None or not held.rpath:
                    continue
                for directory in _directories(held.rpath, os.path.dirname(holder.path)):
                    yield directory, f"RPATH of {os.path.basename(holder.path)}"
        for directory in self.library_path:
            yield directory, "LD_LIBRARY_PATH"
        if dynamic is not None and dynamic.runpath:
            for directory in _directories(dynamic.runpath, os.path.dirname(loader.path)):
                yield directory, f"RUNPATH of {os.path.basename(loader.path)}"


def plan(
    path: str,
    *,
    preload: Sequence[str] = (),
    library_path: Sequence[str] = (),
    cache: dict[str, str] | None = None,
) -> LoadPlan:
    """The objects the program at ``path`` would start with, and where each of its imports
    (and its libraries') would bind."""
    executable = _module(path)
    interpreter = executable.dynamic.interpreter if executable.dynamic else None
    usable = interpreter if interpreter and _usable(interpreter) else None
    search = _Search(library_path, read_cache() if cache is None else cache, usable)
    modules = [executable]
    libraries: list[FoundLibrary] = []
    loaded_by: dict[int, LinkedModule] = {}  # an object -> the one that loaded it
    # The names each object answers to (ld.so's l_libname): those it was asked for by,
    # its soname, the path it was opened by.
    names: dict[int, set[str]] = {id(executable): set()}

    def load(name: str, loader: LinkedModule, *, preloaded: bool = False) -> None:
        already = next((m for m in modules if name in names[id(m)]), None)
        if already is not None:
            libraries.append(FoundLibrary(name, loader.path, already.path, "loaded", True))
            return
        if rtld is not None and rtld not in modules and name in names[id(rtld)]:
            libraries.append(FoundLibrary(name, loader.path, rtld.path, "the interpreter"))
            modules.append(rtld)
            loaded_by[id(rtld)] = loader
            return
        chain = [loader]
        while id(chain[-1]) in loaded_by:
            chain.append(loaded_by[id(chain[-1])])
        found = search.find(name, loader, chain)
        libraries.append(found)
        if found.path is None or len(modules) >= _MAX_OBJECTS:
            return
        same = next((m for m in modules[1:] if _same_file(m.path, found.path)), None)
        if same is not None:  # the same file by another name: ld.so compares inodes
            found.already = True
            names[id(same)].add(name)
            return
        module = _module(found.path)
        module.preload = preloaded
        modules.append(module)
        loaded_by[id(module)] = loader
        soname = module.dynamic.soname if module.dynamic else None
        names[id(module)] = {name, found.path, *([soname] if soname else [])}

    rtld = _module(usable) if usable else None
    if rtld is not None:
        # ld.so is loaded before anything: a need of it (libc's) finds it by its soname, and
        # it takes its place in the map there.
        soname = rtld.dynamic.soname if rtld.dynamic else None
        names[id(rtld)] = {str(interpreter), *([soname] if soname else [])}

    for name in preload:
        load(name, executable, preloaded=True)
    index = 0
    while index < len(modules):  # breadth-first, as _dl_map_object_deps
        module = modules[index]
        for name in module.dynamic.needed if module.dynamic else ():
            load(name, module)
        index += 1
    if rtld is not None and rtld not in modules:
        modules.append(rtld)  # ld.so joins the map last when nothing needs it
    result = LoadPlan(modules, libraries)
    scopes = Scopes(modules, data=True)
    for module in modules:
        # Many relocations of one object name one symbol (a vtable's in data): one lookup.
        looked_up: dict[tuple[int, bool], Binding | None] = {}
        for entry in module.dynamic.imports if module.dynamic else ():
            if entry.symbol is None:
                continue  # a relative or IRELATIVE relocation: no lookup
            key = (entry.symbol.number, entry.kind is Kind.COPY)
            if key not in looked_up:
                looked_up[key] = lookup(entry, module, scopes)
            result.bindings.append(FileBinding(module, entry, looked_up[key]))
    result.version_problems = _check_versions(modules)
    return result


def _module(path: str) -> LinkedModule:
    from redhand.elf import ElfFile
    from redhand.errors import ElfError

    module = LinkedModule(path, 0, 0, 0, None)
    try:
        with ElfFile.open(path) as elf:
            module.dynamic = cached_dynamic(elf, path)
    except (ElfError, OSError) as error:
        module.problem = str(getattr(error, "message", error))
    return module


def _same_file(one: str, other: str) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:
        return one == other


def _check_versions(modules: Sequence[LinkedModule]) -> list[str]:
    """ld.so's check before anything runs: every version an object's references need is
    defined by the object they name (``version `GLIBC_2.38' not found``)."""
    uses = {id(m): m.dynamic.version_use() for m in modules if m.dynamic is not None}
    defines: dict[str, set[str]] = {}
    for module in modules:
        if module.dynamic is None:
            continue
        for key in {module.dynamic.soname, os.path.basename(module.path)} - {None}:
            defines.setdefault(str(key), set()).update(uses[id(module)][0])
    problems = []
    for module in modules:
        if module.dynamic is None:
            continue
        for file, version in sorted(uses[id(module)][1]):
            provided = defines.get(file)
            if provided is not None and version not in provided:
                problems.append(
                    f"version {version} not found in {file} (needed by "
                    f"{os.path.basename(module.path)})"
                )
    return problems


__all__ = [
    "CACHE",
    "SYSTEM_DIRECTORIES",
    "FileBinding",
    "FoundLibrary",
    "LoadPlan",
    "plan",
    "read_cache",
]
