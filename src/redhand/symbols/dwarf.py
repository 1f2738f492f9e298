"""Source lines and inlined calls from DWARF, with drgn as the engine, and a cache of its answers.

redhand unwinds; drgn only symbolizes: each module that has frames is added
to one ``drgn.Program`` per target (its ELF file and its separate debug file,
at its load address), and a pc is turned into its chain of source locations,
innermost inlined call first, the real function last.  drgn is never asked to
unwind or to read the target's memory.  A module whose DWARF dwz moved
partly into an alternate file (.gnu_debugaltlink) gets that file too, found
like gdb finds it.

drgn names an inlined call by its DW_AT_name only (``wait``), while the
physical frame is named by its symbol (``shop::Cart::total() const``):
:mod:`redhand.symbols.dwarfnames`, a small DWARF reader of redhand's own,
gives inlined calls the same kind of name (``shop::Cart::wait() const``, as
eu-stack prints it) when it agrees with drgn on the calls at the pc.

drgn is imported on first use only.  When it cannot be imported, or a module
has no DWARF, there are simply no source locations: names still come from the
ELF symbol tables.

drgn indexes a module's DWARF before it answers anything (80 ms for libc's
debug file), so its answers are kept in the persistent cache
(:mod:`redhand.cache`, kind ``source``), one entry per module, and a second
look at the same program asks drgn nothing and does not even import it.  An
entry maps link-time addresses (a pc minus the module's load bias: the same
in every run, whatever ASLR did) to their chains of locations, or to "no
DWARF here"; or it says that the module has no usable DWARF at all.  It is
named by the module's build-id and a CRC32 of its key, and the key is stored
in it and compared on load:

- the module's file: its build-id and size (a stripped copy keeps the
  build-id), or without a build-id its path, device, inode, size and mtime;
- the separate debug file drgn was given (:meth:`Module.dwarf_file`: path,
  device, inode, size and mtime), or none; installing a debug package,
  or a debuginfod download, changes the key, so that "no DWARF" answers
  given before are not served after;
- the version of the payload's layout (:data:`_PAYLOAD_VERSION`).

The version of drgn that answered is stored in the entry as well.  It is
found without importing drgn; an entry of another version reads as a miss,
except when drgn is not installed at all: old answers then beat none.

Answers drgn gave in this process are written back once, when
:meth:`SourceLines.flush` is called or at exit, merged with the entry as it
is on disk by then (another redhand may have written it meanwhile; when two
write at once the last one wins, and each write is atomic).  An entry keeps
at most :data:`MAX_ADDRESSES` addresses, dropping the least recently
written or used.  Only what drgn said is stored: nothing when drgn cannot be
imported, or fails on a module or an address.
"""

from __future__ import annotations

import marshal
import os
import sys
import zlib

from redhand import cache
from redhand.symbols.debugfile import alternate_file_candidates
from redhand.target.module import VDSO, Module

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    _Location: TypeAlias = tuple[str | None, str | None, int | None, int | None]
    """A location as the cache keeps it: a plain tuple."""

MAX_ADDRESSES = 100_000
"""The most addresses one module's cache entry keeps."""

# The version of the entries' payload (bump it whenever what an answer holds,
# or how the payload below is laid out, changes).  2: inlined calls are named
# in full (dwarfnames), no longer by drgn's DW_AT_name.
_PAYLOAD_VERSION = 2
_CACHE_KIND = "source"


class SourceLocation(tuple[str | None, str | None, int | None, int | None]):
    """One source location at a pc: the function and where in it.

    The function is named by DWARF: for an inlined call, its demangled
    linkage name or scope-qualified name where redhand's reader finds it
    (``shop::Cart::wait() const``), else its DW_AT_name (``wait``, and every
    C function's name).

    A tuple ``(function, file, line, column)``, each None when DWARF does not
    say.  (Not a ``typing.NamedTuple``: importing typing costs more than the
    whole lookup does with a warm cache.)
    """

    __slots__ = ()

    def __new__(
        cls, function: str | None, file: str | None, line: int | None, column: int | None
    ) -> SourceLocation:
        return tuple.__new__(cls, (function, file, line, column))

    def __getnewargs__(self) -> tuple[str | None, str | None, int | None, int | None]:
        return (self[0], self[1], self[2], self[3])

    @property
    def function(self) -> str | None:
        """The function's name (the inlined function's, for an inlined call)."""
        return self[0]

    @property
    def file(self) -> str | None:
        return self[1]

    @property
    def line(self) -> int | None:
        return self[2]

    @property
    def column(self) -> int | None:
        return self[3]

    def __repr__(self) -> str:
        return (
            f"SourceLocation(function={self[0]!r}, file={self[1]!r}, "
            f"line={self[2]!r}, column={self[3]!r})"
        )


class _Loaded:
    """A module added to a drgn Program."""

    __slots__ = ("delta", "program")

    def __init__(self, program: Any, delta: int) -> None:
        self.program = program
        """A drgn.Program with this one module."""
        self.delta = delta
        """redhand's load bias minus drgn's: a pc minus delta is drgn's address."""


# What _load says of a module that drgn did not load: it has no usable DWARF
# (an answer, kept in the cache), or drgn is missing or failed (kept nowhere).
_NO_DWARF = "no DWARF"
_FAILED = "failed"

# One drgn Program per module file (at link-time addresses), shared by every
# target of this process: a second look at the same library parses nothing.
_PROGRAMS: dict[tuple[object, ...], tuple[Any, int] | None] = {}


class _Entry:
    """One module's cache entry: read once per process, written back once per flush."""

    __slots__ = ("answers", "changed", "key", "name", "new", "no_dwarf", "path", "used")

    def __init__(
        self,
        name: str,
        path: str,
        key: tuple[object, ...],
        no_dwarf: bool,
        answers: dict[int, object],
    ) -> None:
        self.name = name
        self.path = path
        """Where the entry was read from (it is written back only there)."""
        self.key = key
        self.no_dwarf = no_dwarf
        """Whether drgn found no usable DWARF in the module at all."""
        self.answers = answers
        """Link-time address -> answer (unchecked when read from disk: see :func:`_chain`)."""
        self.new: dict[int, None] = {}
        """Addresses drgn answered in this process since the last write, in that order."""
        self.used: dict[int, None] = {}
        """Addresses served from the entry since the last write (young again), in order."""
        self.changed = False
        """Whether there is something to write: new answers, or a new ``no_dwarf``."""


# The entries read in this process, by path: shared by every target, so that a
# module is read from the cache once.  Entries with changes are also in
# _UNSAVED until written (at the latest at exit).
_ENTRIES: dict[str, _Entry] = {}
_ENTRIES_SIZE = 256
_UNSAVED: dict[int, _Entry] = {}
_AT_EXIT: list[bool] = []  # whether _save_at_exit is registered
_MISSING = object()
_DRGN_VERSION: list[str | None] = []


class SourceLines:
    """The DWARF line and inline information of one target's modules, loaded lazily."""

    def __init__(self) -> None:
        self._drgn: Any = None
        self._program: Any = None
        self.problem: str | None = None
        """Why source lines are unavailable altogether (drgn missing), once known."""
        self._modules: dict[int, _Loaded | str] = {}
        self._entries: dict[int, tuple[_Entry, int] | None] = {}
        self._touched: list[_Entry] = []

    def _program_or_none(self) -> Any:
        if self._program is None and self.problem is None:
            try:
                import drgn
            except ImportError as error:
                self.problem = (
                    f"source lines and inlined frames are unavailable: drgn cannot be imported "
                    f"({error}); install redhand[source]"
                )
                return None
            self._drgn = drgn
            self._program = True
        return self._program

    def _load(self, module: Module) -> _Loaded | str:
        """The module in drgn; else :data:`_NO_DWARF` or :data:`_FAILED` (see there)."""
        key = id(module)
        if key in self._modules:
            return self._modules[key]
        self._modules[key] = _FAILED
        if self._program_or_none() is None or module.path == VDSO or module.open_path is None:
            return _FAILED
        try:
            debug_file = module.dwarf_file()
            bias = module.bias
            start, end = module.start - bias, module.end - bias
            stat = os.stat(module.open_path)
            file_key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, debug_file, start, end)
            if file_key in _PROGRAMS:
                cached = _PROGRAMS[file_key]
            else:
                cached = _PROGRAMS[file_key] = self._new_program(module, debug_file, start, end)
            self._modules[key] = (
                _NO_DWARF if cached is None else _Loaded(cached[0], bias - cached[1])
            )
        except Exception:  # drgn raises many kinds on damaged or odd files
            return _FAILED
        return self._modules[key]

    def _new_program(
        self, module: Module, debug_file: str | None, start: int, end: int
    ) -> tuple[Any, int] | None:
        """A drgn Program holding only this module, at its link-time addresses."""
        drgn = self._drgn
        program = drgn.Program(drgn.host_platform)
        found = program.extra_module(module.path, 0, create=True)
        found.address_range = (start, end)
        found.try_file(module.open_path, force=True)
        if debug_file is not None and found.debug_file_status != drgn.ModuleFileStatus.HAVE:
            found.try_file(debug_file, force=True)
        if found.debug_file_status == drgn.ModuleFileStatus.WANT_SUPPLEMENTARY:
            # dwz's alternate file (.gnu_debugaltlink, .debug_sup): drgn checks its build-id.
            wanted = found.wanted_supplementary_debug_file()
            candidates = alternate_file_candidates(
                wanted.path, wanted.supplementary_path, wanted.checksum.hex(), module.debug_dirs
            )
            for candidate in filter(os.path.isfile, candidates):
                found.try_file(candidate, force=True)
                if found.debug_file_status != drgn.ModuleFileStatus.WANT_SUPPLEMENTARY:
                    break
            else:  # not "no DWARF" (kept in the cache): the file may be installed later
                raise LookupError(
                    f"{module.path}: no alternate debug file {wanted.supplementary_path}"
                )
        if found.debug_file_status != drgn.ModuleFileStatus.HAVE:
            return None
        bias = found.debug_file_bias
        return None if bias is None else (program, bias)

    def _entry(self, module: Module) -> tuple[_Entry, int] | None:
        """The module's cache entry and load bias; None without a cache or a key for it."""
        key = id(module)
        if key in self._entries:
            return self._entries[key]
        self._entries[key] = None
        try:
            entry = _entry_for(module)
            if entry is not None:
                self._entries[key] = (entry, module.bias)
                self._touched.append(entry)
        except Exception:  # an unreadable file: drgn will say the same, or not
            pass
        return self._entries[key]

    def locate(self, module: Module, address: int) -> list[SourceLocation] | None:
        """The source locations at ``address`` (a run-time address in ``module``).

        Innermost inlined call first, the real function last; None when the
        module has no usable DWARF for that address.
        """
        cached = self._entry(module)
        if cached is not None:
            entry, bias = cached
            if entry.no_dwarf:
                return None
            answer = entry.answers.get(address - bias, _MISSING)
            if answer is not _MISSING:
                try:
                    locations = _chain(answer)
                except ValueError:  # a malformed entry: asked again, and replaced
                    pass
                else:
                    entry.used[address - bias] = None
                    return locations
        loaded = self._load(module)
        if not isinstance(loaded, _Loaded):
            if loaded == _NO_DWARF and cached is not None:
                entry = cached[0]
                entry.no_dwarf = True
                _changed(entry)
            return None
        try:
            found = loaded.program.source_location(address - loaded.delta)
            chain = tuple(_location(location) for location in found)
        except LookupError:  # no DWARF for this address: an answer
            chain = ()
        except Exception:  # a damaged DWARF unit: no lines for it, not a failed trace
            return None
        if len(chain) > 1:
            chain = _full_names(module, address, chain)
        if cached is not None:
            entry, bias = cached
            entry.answers[address - bias] = chain or None
            entry.new[address - bias] = None
            _changed(entry)
        return [SourceLocation(*location) for location in chain] or None

    def flush(self) -> None:
        """Write what drgn answered for this target's modules to the persistent cache.

        Each changed entry is written once, merged with what is on disk then.
        What is not flushed is written at exit.  Never raises.
        """
        _save(self._touched)


def _location(location: Any) -> _Location:
    """One of drgn's SourceLocation objects as a tuple of plain values."""
    try:
        name = location.name()
    except Exception:
        name = None
    file = location.filename or None
    return (
        None if name is None else sys.intern(name),
        None if file is None else sys.intern(file),
        location.line or None,
        location.column or None,
    )


def _full_names(
    module: Module, address: int, chain: tuple[_Location, ...]
) -> tuple[_Location, ...]:
    """``chain`` with its inlined calls named in full (see :mod:`redhand.symbols.dwarfnames`).

    drgn names an inlined call by its DW_AT_name (``wait``); the physical
    frame is named from the symbol table (``shop::Cart::total() const``).
    The inlined calls get the same kind of name, the demangled linkage name
    (else the scope-qualified name), when redhand's own reader finds as many
    inlined calls at the address as drgn did, with the same short names;
    otherwise drgn's names stay.  The last location (the physical function)
    keeps drgn's name.

    Code of a ``.c`` file is C, whose names are plain DW_AT_names, drgn's
    already: the reader is not asked (it would decompress 5.8 MB of libc's
    .debug_info, 40-90 ms, to find the same names).
    """
    physical_file = chain[-1][1]
    if physical_file is not None and physical_file.endswith(".c"):
        return chain
    from redhand.symbols.dwarfnames import inline_names

    try:
        paths = (module.open_path, module.dwarf_file())
        names = inline_names(paths, address - module.bias, module.debug_dirs)
    except Exception:  # the module's files cannot be read now: drgn's names
        return chain
    inlined = len(chain) - 1
    if names is None or len(names) != inlined:
        return chain
    if any(short != location[0] for (short, _), location in zip(names, chain, strict=False)):
        return chain
    renamed = [
        location if full is None else (sys.intern(full), *location[1:])
        for (_, full), location in zip(names, chain, strict=False)
    ]
    return (*renamed, chain[-1])


def _chain(answer: object) -> list[SourceLocation] | None:
    """An answer from the cache as locations (None: no DWARF there).

    Raises ValueError when it is malformed.  Answers are checked here, when
    used, rather than all when read: an entry holds many more addresses than
    one stack has frames.
    """
    if answer is None:
        return None
    if type(answer) is not tuple or not answer:
        raise ValueError(answer)
    locations: list[SourceLocation] = []
    for item in answer:
        if type(item) is not tuple or len(item) != 4:
            raise ValueError(item)
        function, file, line, column = item
        if not (
            (function is None or type(function) is str)
            and (file is None or type(file) is str)
            and (line is None or type(line) is int)
            and (column is None or type(column) is int)
        ):
            raise ValueError(item)
        locations.append(SourceLocation(function, file, line, column))
    return locations


def _changed(entry: _Entry) -> None:
    if not entry.changed:
        entry.changed = True
        if not _AT_EXIT:
            import atexit

            atexit.register(_save_at_exit)
            _AT_EXIT.append(True)
        _UNSAVED[id(entry)] = entry


def _entry_key(module: Module) -> tuple[object, ...] | None:
    """What drgn's answers for ``module`` depend on, but drgn's version (see the module's doc)."""
    if module.path == VDSO or module.open_path is None:
        return None
    elf = module.elf()
    if elf is None:
        return None
    build_id = elf.build_id
    identity: tuple[object, ...]
    if build_id:
        identity = ("build-id", build_id, elf.size)
    else:
        info = os.stat(module.open_path)
        identity = ("file", module.path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    debug_file = module.dwarf_file()
    debug: tuple[object, ...] | None = None
    if debug_file is not None:
        info = os.stat(debug_file)
        debug = (debug_file, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    return (_PAYLOAD_VERSION, identity, debug)


def _entry_for(module: Module) -> _Entry | None:
    """The module's entry (read from the cache once per process); None without a cache."""
    if cache.directory() is None:
        return None
    key = _entry_key(module)
    if key is None:
        return None
    build_id = module.build_id
    name = f"{build_id or 'no-build-id'}-{zlib.crc32(repr(key).encode()):08x}"
    path = cache.entry_path(_CACHE_KIND, name)
    if path is None:
        return None
    entry = _ENTRIES.get(path)
    if entry is None or entry.key != key:
        found = _decode(cache.read(_CACHE_KIND, name), key, _drgn_version())
        no_dwarf, answers = found if found is not None else (False, {})
        entry = _Entry(name, path, key, no_dwarf, answers)
        if len(_ENTRIES) >= _ENTRIES_SIZE:
            del _ENTRIES[next(iter(_ENTRIES))]
        _ENTRIES[path] = entry
    return entry


def _decode(
    payload: bytes | None, key: tuple[object, ...], drgn_version: str | None
) -> tuple[bool, dict[int, object]] | None:
    """``(no_dwarf, answers)`` of an entry's payload, or None when it is not one for ``key``."""
    if payload is None:
        return None
    try:
        values = marshal.loads(payload)
    except Exception:  # ValueError, EOFError, TypeError: not a marshal payload
        return None
    if type(values) is not tuple or len(values) != 5:
        return None
    version, stored_key, stored_drgn, no_dwarf, answers = values
    if version != _PAYLOAD_VERSION or stored_key != key:
        return None
    if drgn_version is not None and stored_drgn != drgn_version:
        return None
    if type(no_dwarf) is not bool or type(answers) is not dict:
        return None
    return no_dwarf, answers


def _save(entries: list[_Entry]) -> None:
    """Write the entries that changed, each merged with its copy on disk (never raises)."""
    for entry in entries:
        if not entry.changed:
            continue
        entry.changed = False
        _UNSAVED.pop(id(entry), None)
        try:  # noqa: SIM105 (no contextlib on the path of `redhand stack`)
            _write(entry)
        except Exception:  # the cache never is a source of errors
            pass
        entry.new.clear()
        entry.used.clear()


def _save_at_exit() -> None:
    _save(list(_UNSAVED.values()))


def _write(entry: _Entry) -> None:
    # Only to the cache the entry was read from, and only while it exists:
    # not to another one named by a changed environment, and not into one
    # deleted meanwhile (by its owner, or by a test session at its end).
    if cache.entry_path(_CACHE_KIND, entry.name) != entry.path:
        return
    if not os.path.isdir(os.path.dirname(os.path.dirname(entry.path))):
        return
    drgn_version = _drgn_version()
    found = _decode(cache.read(_CACHE_KIND, entry.name), entry.key, drgn_version)
    no_dwarf, answers = found if found is not None else (False, {})
    no_dwarf = no_dwarf or entry.no_dwarf
    for address in entry.used:  # served again: moved to the young end
        answers[address] = answers.pop(address, entry.answers.get(address))
    for address in entry.new:
        answers.pop(address, None)
        answers[address] = entry.answers[address]
    excess = len(answers) - MAX_ADDRESSES
    if excess > 0:  # the oldest first: dicts keep their order, marshal too
        answers = dict(list(answers.items())[excess:])
    values = (_PAYLOAD_VERSION, entry.key, drgn_version, no_dwarf, answers)
    payload = marshal.dumps(values)  # type: ignore[arg-type]
    if cache.write(_CACHE_KIND, entry.name, payload):
        entry.answers = answers  # with another process's answers, and bounded like on disk
        entry.no_dwarf = no_dwarf


def _drgn_version() -> str | None:
    """drgn's version, or None when it is not installed; found without importing it."""
    version = getattr(sys.modules.get("drgn"), "__version__", None)
    if isinstance(version, str):
        return version
    if not _DRGN_VERSION:
        _DRGN_VERSION.append(_installed_drgn_version())
    return _DRGN_VERSION[0]


def _installed_drgn_version() -> str | None:
    """The version drgn's package says it has (drgn/internal/version.py), else its identity.

    Importing drgn would cost 30-40 ms, which a lookup answered from the
    cache must not pay.
    """
    from importlib.machinery import PathFinder

    try:
        spec = PathFinder.find_spec("drgn")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    try:
        with open(os.path.join(folder, "internal", "version.py"), encoding="utf-8") as file:
            text = file.read(4096)
    except (OSError, ValueError):
        text = ""
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.strip() == "__version__":
            return value.strip().strip("\"'")
    try:  # another layout: the package's own identity stands for its version
        info = os.stat(spec.origin)
    except OSError:
        return None
    return f"{spec.origin}:{info.st_size}:{info.st_mtime_ns}"


__all__ = ["MAX_ADDRESSES", "SourceLines", "SourceLocation"]
