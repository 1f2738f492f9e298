"""The dynamic linking of a process (live or from a core): the link map, every GOT slot,
and where the dynamic linker's own lookup would have bound it.

The link map is found as debuggers find it: the executable's ``DT_DEBUG``
entry (the dynamic linker writes the address of its ``r_debug`` there), else
the dynamic linker's ``_r_debug`` symbol.  ``r_debug`` (version 2, glibc
2.35 and later) chains one ``r_debug`` per ``dlmopen`` namespace.  Each
``link_map`` gives a module's load bias (``l_addr``), its name and its
dynamic section (``l_ld``, which names the mapping it belongs to).

Each slot's value is read from memory (``process_vm_readv``: a live process
is never stopped) and compared with the binding that ld.so's lookup gives:
the global scope (the executable, the ``LD_PRELOAD`` libraries, then the
libraries loaded at start in load order, which is breadth-first), then, for
a ``dlopen``-ed library, its own dependencies; ``DT_SYMBOLIC`` objects
first; symbol versions; protected symbols bound to their own module; the
executable skipped for a copy relocation.
"""

from __future__ import annotations

import functools
import logging
import os
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from redhand.dynlink.dynamic import Dynamic, DynSymbol, Import, Kind, cached_dynamic
from redhand.elf import constants as c
from redhand.errors import ElfError, MemoryReadError, RedhandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from redhand.elf import ElfFile
    from redhand.target.module import Module
    from redhand.target.target import Target

log = logging.getLogger(__name__)

_R_DEBUG = struct.Struct("<i4xQQi4xQ")  # r_version, r_map, r_brk, r_state, r_ldbase
_LINK_MAP = struct.Struct("<QQQQQ")  # l_addr, l_name, l_ld, l_next, l_prev
_DYN = struct.Struct("<qQ")
_MAX_MODULES = 1 << 16
_MAX_NAMESPACES = 256
_ACCEPTED_TYPES = frozenset(
    {c.STT_NOTYPE, c.STT_OBJECT, c.STT_FUNC, c.STT_COMMON, c.STT_TLS, c.STT_GNU_IFUNC}
)


class Status(Enum):
    """What a slot holds, compared with the lookup."""

    BOUND = "bound"  # where the lookup binds it
    INTERPOSED = "interposed"  # bound, to an LD_PRELOAD library's definition
    UNBOUND = "not yet bound"  # lazy binding: still points back into the module's PLT
    IFUNC = "ifunc"  # an IFUNC's chosen variant, in the module that defines it
    UNRESOLVED = "unresolved"  # no definition anywhere (a weak reference: 0)
    REASSIGNED = "reassigned"  # a pointer in writable data that the program changed since
    DIFFERS = "differs"  # another module's definition of the same symbol
    HOOKED = "hooked"  # somewhere no lookup puts it
    UNREADABLE = "unreadable"

    @property
    def unusual(self) -> bool:
        return self in (Status.INTERPOSED, Status.DIFFERS, Status.HOOKED)


@dataclass(eq=False)
class LinkedModule:
    """One object of the link map, with the module it is mapped as."""

    name: str
    base: int
    dynamic_address: int
    namespace: int
    module: Module | None
    dynamic: Dynamic | None = None
    preload: bool = False
    startup: bool = True  # in the global scope since start (else: dlopen'ed)
    same_as: LinkedModule | None = None  # this object in an earlier namespace (ld.so)
    problem: str | None = None
    _by_value: dict[int, list[str]] | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        if self.module is not None:
            return self.module.path
        return self.name

    def elf(self) -> ElfFile | None:
        return self.module.elf() if self.module is not None else None

    @functools.cached_property
    def short(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def names_at(self, address: int) -> list[str]:
        """The exported names whose definition is at run-time ``address``."""
        if self._by_value is None:
            self._by_value = {}
            for name, symbols in (self.dynamic.exports if self.dynamic else {}).items():
                for symbol in symbols:
                    self._by_value.setdefault(symbol.value, []).append(name)
        return self._by_value.get(address - self.base, [])

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": self.path,
            "base": self.base,
            "dynamic": self.dynamic_address,
            "namespace": self.namespace,
            "preload": self.preload,
            "startup": self.startup,
            "same_as_namespace": self.same_as.namespace if self.same_as else None,
            "type": self.dynamic.type if self.dynamic else None,
            "bind_now": self.dynamic.bind_now if self.dynamic else None,
            "relro": self.dynamic.relro if self.dynamic else None,
            "problem": self.problem,
        }


class Binding(NamedTuple):
    """A definition: the module and its symbol, at ``address`` in the process."""

    module: LinkedModule
    symbol: DynSymbol
    address: int


@dataclass
class Slot:
    """One GOT slot of one module: what it holds now and what the lookup gives."""

    owner: LinkedModule
    entry: Import
    address: int
    value: int | None
    status: Status
    expected: Binding | None = None
    points_to: str = ""  # what lies at ``value``, in words
    reason: str = ""  # why a slot is hooked or differs

    def to_json(self) -> dict[str, object]:
        expected = None
        if self.expected is not None:
            expected = {
                "module": self.expected.module.path,
                "namespace": self.expected.module.namespace,
                "symbol": self.expected.symbol.versioned_name,
                "address": self.expected.address,
            }
        return {
            "module": self.owner.path,
            "namespace": self.owner.namespace,
            "address": self.address,
            **self.entry.to_json(),
            "value": self.value,
            "status": self.status.value,
            "expected": expected,
            "points_to": self.points_to,
            "reason": self.reason or None,
        }


@dataclass
class Linkage:
    """The dynamic linking of a process: its link map and every GOT slot."""

    source: str  # "live" or "core"
    pid: int | None
    exe: str | None
    modules: list[LinkedModule] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    preload: list[str] = field(default_factory=list)
    found_through: str = ""  # how the link map was found
    namespaces: int = 0
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[Status, int]:
        """How many slots have each status."""
        counts: dict[Status, int] = {}
        for slot in self.slots:
            counts[slot.status] = counts.get(slot.status, 0) + 1
        return counts

    def counts_by_module(self) -> dict[int, dict[Status, int]]:
        """The same for each object, by the object's id()."""
        counts: dict[int, dict[Status, int]] = {}
        for slot in self.slots:
            mine = counts.setdefault(id(slot.owner), {})
            mine[slot.status] = mine.get(slot.status, 0) + 1
        return counts


# -- the link map -------------------------------------------------------------


def _read_word(target: Target, address: int) -> int:
    return int.from_bytes(target.memory.read(address, 8), "little")


def _read_string(target: Target, address: int, limit: int = 4096) -> str:
    data = b""
    at = address
    while len(data) < limit and b"\0" not in data:
        size = min(0x1000 - (at & 0xFFF), limit - len(data))
        data += target.memory.read(at, size)
        at += size
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _exe_module(target: Target) -> Module | None:
    exe = (target.exe or "").removesuffix(" (deleted)")
    for module in target.modules:
        if module.path == exe:
            return module
    return None


def _r_debug_address(target: Target, linkage: Linkage) -> int | None:
    """Where ld.so's r_debug is: DT_DEBUG of the executable's dynamic section in memory,
    else ld.so's ``_r_debug`` symbol."""
    exe = _exe_module(target)
    elf = exe.elf() if exe is not None else None
    if exe is not None and elf is not None:
        segment = next((s for s in elf.iter_segments() if s.p_type == c.PT_DYNAMIC), None)
        if segment is not None:
            address = exe.bias + segment.p_vaddr
            try:
                raw = target.memory.read(address, segment.p_memsz - segment.p_memsz % 16)
            except MemoryReadError as error:
                linkage.warnings.append(f"the executable's dynamic section: {error}")
                raw = b""
            for tag, value in _DYN.iter_unpack(raw):
                if tag == c.DT_NULL:
                    break
                if tag == c.DT_DEBUG and value:
                    linkage.found_through = f"DT_DEBUG of {exe.path}"
                    return int(value)
    for module in target.modules:
        if module.name.startswith("ld-linux") or module.name.startswith("ld-"):
            module_elf = module.elf()
            if module_elf is None:
                continue
            for symbol in module_elf.iter_symbols(".dynsym"):
                if symbol.name == "_r_debug" and symbol.value:
                    linkage.found_through = f"_r_debug of {module.path}"
                    return int(module.bias + symbol.value)
    return None


def _walk(
    target: Target, first: int, namespace: int, seen: set[int], linkage: Linkage
) -> Iterator[LinkedModule]:
    """The link_map entries of one namespace, from ``first``."""
    at = first
    count = 0
    while at:
        if at in seen:
            linkage.warnings.append(f"the link map loops back to {at:#x}: read up to there")
            return
        if count >= _MAX_MODULES:
            linkage.warnings.append(
                f"the link map has over {_MAX_MODULES} entries: read up to there"
            )
            return
        seen.add(at)
        count += 1
        try:
            l_addr, l_name, l_ld, l_next, _prev = _LINK_MAP.unpack(target.memory.read(at, 40))
            name = _read_string(target, l_name) if l_name else ""
        except MemoryReadError as error:
            linkage.warnings.append(
                f"a link map entry at {at:#x} cannot be read ({error.reason}): the link map "
                "ends there"
            )
            return
        module = target.modules.find(l_ld) if l_ld else None
        yield LinkedModule(name, l_addr, l_ld, namespace, module)
        at = l_next


def read_link_map(target: Target, linkage: Linkage) -> list[LinkedModule]:
    """The objects of every namespace's link map, in load order."""
    address = _r_debug_address(target, linkage)
    if address is None:
        linkage.warnings.append(
            "no link map: the executable has no DT_DEBUG and no dynamic linker is mapped "
            "(a static executable?); only the executable's own slots are read"
        )
        return []
    modules: list[LinkedModule] = []
    seen_maps: set[int] = set()
    seen_debug: set[int] = set()
    namespace = 0
    while address and namespace < _MAX_NAMESPACES and address not in seen_debug:
        seen_debug.add(address)
        try:
            raw = target.memory.read(address, _R_DEBUG.size + 8)
        except MemoryReadError as error:
            linkage.warnings.append(f"r_debug at {address:#x} cannot be read: {error.reason}")
            break
        version, r_map, _brk, _state, _ldbase = _R_DEBUG.unpack_from(raw)
        if namespace == 0 and version == 0:
            linkage.warnings.append("r_debug says the dynamic linker has not started yet")
        modules.extend(_walk(target, r_map, namespace, seen_maps, linkage))
        namespace += 1
        if version < 2:
            break
        address = int.from_bytes(raw[_R_DEBUG.size :], "little")
    linkage.namespaces = namespace
    return modules


# -- preloads and scopes ---------------------------------------------------------


def process_preload(target: Target) -> list[str]:
    """What LD_PRELOAD (and, for a live process, /etc/ld.so.preload) asked to preload."""
    names: list[str] = []
    environment = _environment(target)
    value = environment.get("LD_PRELOAD", "")
    names.extend(part for part in value.replace(":", " ").split() if part)
    if target.source == "live":
        try:
            with open("/etc/ld.so.preload") as file:
                names.extend(file.read().split())
        except OSError:
            pass
    return names


def _environment(target: Target) -> dict[str, str]:
    raw = b""
    if target.source == "live" and target.pid is not None:
        try:
            with open(f"/proc/{target.pid}/environ", "rb") as file:
                raw = file.read()
        except OSError:
            raw = b""
    else:
        raw = _core_environment(target)
    environment: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, equals, value = item.partition(b"=")
        if equals and key and key.isascii():
            environment.setdefault(key.decode(), value.decode("utf-8", "surrogateescape"))
    return environment


def _core_environment(target: Target) -> bytes:
    """The strings at the top of the main thread's stack (arguments, then the environment),
    up to AT_EXECFN's string: where the kernel put them at exec."""
    from redhand.target.corenotes import AT_EXECFN

    auxv: dict[int, int] = getattr(target, "auxv", None) or {}
    execfn = auxv.get(AT_EXECFN)
    if not execfn:
        return b""
    start = max(execfn - (128 << 10), (execfn & ~0xFFF) - (31 << 12))
    for begin in range(start, execfn, 0x1000):
        try:
            return target.memory.read(begin, execfn - begin)
        except MemoryReadError:
            continue
    return b""


def _matches(module: LinkedModule, name: str) -> bool:
    if "/" in name:
        return (
            module.path == name
            or module.name == name
            or (
                os.path.basename(module.path) == os.path.basename(name)
                and os.path.realpath(name) == os.path.realpath(module.path)
            )
        )
    return module.short == name or os.path.basename(module.name) == name


def _mark_scopes(modules: Sequence[LinkedModule], preload: Sequence[str]) -> None:
    """Which objects are preloaded, and which were loaded at start (the global scope)."""
    first = [m for m in modules if m.namespace == 0]
    if not first:
        return
    for module in first[1:]:
        module.preload = any(_matches(module, name) for name in preload)
    by_name: dict[str, LinkedModule] = {}
    for module in first:
        for key in {module.short, os.path.basename(module.name)}:
            by_name.setdefault(key, module)
        if module.dynamic is not None and module.dynamic.soname:
            by_name.setdefault(module.dynamic.soname, module)
    reached = {id(first[0])}
    queue = [first[0], *[m for m in first if m.preload]]
    reached.update(id(m) for m in queue)
    while queue:
        module = queue.pop(0)
        for needed in module.dynamic.needed if module.dynamic else ():
            found = by_name.get(needed) or by_name.get(os.path.basename(needed))
            if found is not None and id(found) not in reached:
                reached.add(id(found))
                queue.append(found)
    for module in first:
        # The vdso is in the link map, loaded at start, but in no object's scope: ld.so
        # looks up only its own __vdso_* symbols there.
        module.startup = id(module) in reached or _is_vdso(module)


def _is_vdso(module: LinkedModule) -> bool:
    return module.path == "[vdso]" or module.name.startswith("linux-vdso")


class Scopes:
    """The lookup scope of each object, as ld.so builds them."""

    def __init__(self, modules: Sequence[LinkedModule], *, data: bool = False) -> None:
        self.modules = modules
        self.data = data  # whether pointers in data are looked up too
        self.global_scope = [
            m for m in modules if m.namespace == 0 and m.startup and not _is_vdso(m)
        ]
        # A dlopen'ed object and the dependencies loaded with it are relocated with the
        # global scope, then the searchlist of the object dlopen() was called for (its
        # root): the first not-yet-placed object of the link map, and everything it needs.
        # A dlopen'ed object's own part of its scope: object id -> rank in that part.
        self._extra: dict[int, dict[int, int]] = {}
        self._global = {id(m) for m in self.global_scope}
        for module in modules:
            placed = id(module) in self._extra or id(module) in self._global
            if module.namespace != 0 or placed or _is_vdso(module):
                continue
            extra = [m for m in self._dependencies(module) if id(m) not in self._global]
            ranks = {id(member): rank for rank, member in enumerate(extra)}
            for member in extra:
                self._extra.setdefault(id(member), ranks)
        # One index per namespace, over every object in link-map order; a lookup keeps the
        # objects of the referencing object's scope (the global scope keeps that order).
        self._indexes: dict[int, dict[str, list[_Provider]]] = {}
        # (name, namespace, part) -> providers
        self._kept: dict[tuple[str, int, int], list[_Provider]] = {}

    def providers(self, module: LinkedModule, name: str) -> list[_Provider]:
        """The objects of ``module``'s scope that define ``name`` (or hold a canonical PLT
        address for it), in scope order; kept by name and part of a scope."""
        extra = self._extra.get(id(module))
        key = (name, module.namespace, id(extra))
        kept = self._kept.get(key)
        if kept is not None:
            return kept
        index = self._indexes.get(module.namespace)
        if index is None:
            members = [m for m in self.modules if m.namespace == module.namespace]
            index = self._indexes[module.namespace] = _index(members, self.data)
        found = index.get(name) or []
        if module.namespace != 0:
            kept = found
        else:
            in_global = self._global
            kept = [p for p in found if id(p[0]) in in_global]
            if extra is not None:
                own = [p for p in found if id(p[0]) in extra]
                own.sort(key=lambda p: extra[id(p[0])])
                kept += own
        self._kept[key] = kept
        return kept

    def _dependencies(self, root: LinkedModule) -> list[LinkedModule]:
        peers = [m for m in self.modules if m.namespace == root.namespace]
        order = [root]
        queue = [root]
        while queue:
            module = queue.pop(0)
            for needed in module.dynamic.needed if module.dynamic else ():
                for peer in peers:
                    soname = peer.dynamic.soname if peer.dynamic else None
                    if peer not in order and (soname == needed or peer.short == needed):
                        order.append(peer)
                        queue.append(peer)
                        break
        return order


_Provider = tuple["LinkedModule", "Sequence[DynSymbol]", "Sequence[DynSymbol]"]


def _index(modules: Sequence[LinkedModule], data: bool) -> dict[str, list[_Provider]]:
    """Symbol name -> (object, its definitions, its canonical PLT addresses), in order, for
    the names the objects import."""
    wanted: set[str] = set()
    for member in modules:
        if member.dynamic is not None:
            # With ``data``, every import: pointers in data, and copies and TLS too.
            entries = member.dynamic.imports if data else member.dynamic.slot_imports(False)
            wanted.update(e.symbol.name for e in entries if e.symbol)
    index: dict[str, list[_Provider]] = {}
    for member in modules:
        dynamic = member.dynamic
        if dynamic is None:
            continue
        exports, canonical = dynamic.export_numbers, dynamic.canonical_numbers
        for key in exports.keys() & wanted:
            addresses = dynamic.canonical(key) if key in canonical else ()
            index.setdefault(key, []).append((member, dynamic.exported(key), addresses))
        for key in canonical.keys() & wanted:
            if key not in exports:
                index.setdefault(key, []).append((member, (), dynamic.canonical(key)))
    return index


def _choose(candidates: Sequence[DynSymbol], wanted: DynSymbol) -> DynSymbol | None:
    """The definition among one object's that a reference binds to (ld.so's check_match):
    the version asked for, or an unversioned definition; for an unversioned reference the
    default version, else a non-default one when it is the only one."""
    version = wanted.version
    hidden: list[DynSymbol] = []
    for symbol in candidates:
        if symbol.type not in _ACCEPTED_TYPES or (symbol.value == 0 and symbol.type != c.STT_TLS):
            continue
        if version is not None:
            if symbol.version == version or (symbol.version is None and not symbol.hidden):
                return symbol
        elif not symbol.hidden:
            return symbol
        else:
            hidden.append(symbol)
    return hidden[0] if version is None and len(hidden) == 1 else None


def lookup(entry: Import, owner: LinkedModule, scopes: Scopes) -> Binding | None:
    """Where ld.so binds ``entry`` of ``owner``: the first definition in its scope."""
    wanted = entry.symbol
    if wanted is None:
        return None
    kind = entry.kind
    if wanted.defined and wanted.visibility == c.STV_PROTECTED and kind is not Kind.COPY:
        return Binding(owner, wanted, owner.base + wanted.value)
    providers = scopes.providers(owner, wanted.name)
    if owner.dynamic is not None and owner.dynamic.symbolic:
        own = owner.dynamic
        providers = [(owner, own.exported(wanted.name), own.canonical(wanted.name)), *providers]
    main = scopes.modules[0] if kind is Kind.COPY else None
    for module, defined, canonical in providers:
        if module is main:
            continue  # a copy relocation copies from the definition after the executable's
        # A non-PIE executable's PLT entry is the canonical address of a function it takes
        # the address of (an undefined symbol with a value): data references bind there,
        # calls through a PLT slot never do.
        candidates = defined if kind is Kind.JUMP_SLOT or not canonical else [*defined, *canonical]
        chosen = _choose(candidates, wanted) if candidates else None
        if chosen is not None:
            return Binding(module.same_as or module, chosen, module.base + chosen.value)
    return None


# -- slots --------------------------------------------------------------------------


class _Resolver:
    """Finds which object holds an address, and says what lies there."""

    def __init__(self, target: Target, modules: Sequence[LinkedModule], data: bool) -> None:
        self.target = target
        self.scopes = Scopes(modules, data=data)
        self._linked: dict[int, LinkedModule] = {}
        for module in modules:
            if module.module is not None:
                self._linked.setdefault(id(module.module), module)

    def holder(self, address: int) -> LinkedModule | None:
        module = self.target.modules.find(address)
        return self._linked.get(id(module)) if module is not None else None

    def describe(self, address: int) -> str:
        """What lies at ``address``: a module's symbol, or the kind of mapping."""
        if address == 0:
            return "0 (nothing)"
        holder = self.holder(address)
        if holder is not None and holder.module is not None:
            names = holder.names_at(address)
            if names:
                return f"{names[0]} in {holder.short}"
            match = holder.module.lookup(address)
            if match is not None:
                offset = f"+{match.offset:#x}" if match.offset else ""
                return f"{match.symbol.name}{offset} in {holder.short}"
            return f"{holder.short}+{address - holder.base:#x}"
        module = self.target.modules.find(address)
        if module is not None:
            return f"{module.name}+{address - module.bias:#x} (not in the link map)"
        mapping = self.target.find_mapping(address)
        if mapping is None:
            return f"{address:#x}, which nothing maps"
        what = mapping.path or "anonymous"
        return f"{address:#x} in {what} {mapping.perms} memory {mapping.start:#x}-{mapping.end:#x}"

    def classify(self, slot: Slot) -> None:
        value = slot.value
        assert value is not None
        owner, entry = slot.owner, slot.entry
        if entry.kind is Kind.IRELATIVE:
            holder = self.holder(value)
            slot.points_to = self.describe(value)
            if value == 0:
                slot.points_to = "0 (what its resolver returned)"
            slot.status = Status.IFUNC if holder is owner or value == 0 else Status.HOOKED
            if holder is not owner:
                slot.reason = f"an IFUNC slot of {owner.short} points outside it"
            return
        if entry.lazy and self.holder(value) is owner and _in_own_plt(owner, value):
            slot.status = Status.UNBOUND
            slot.points_to = f"the PLT of {owner.short}"
            slot.expected = lookup(entry, owner, self.scopes)  # where it will be bound
            return
        expected = lookup(entry, owner, self.scopes)
        slot.expected = expected
        name = entry.name
        if entry.kind is Kind.ABS64 and entry.addend:
            # A pointer into the object (a vtable's entries): the symbol is at value - addend.
            value -= entry.addend
        if expected is not None and value == expected.address:
            preloaded = expected.module.preload and expected.module is not owner
            slot.status = Status.INTERPOSED if preloaded else Status.BOUND
            slot.points_to = f"{name} in {expected.module.short}"
            return
        holder = self.holder(value)
        slot.points_to = self.describe(value)
        if expected is None and value == 0:
            slot.status = Status.UNRESOLVED
            return
        # An IFUNC's resolver chose a variant: in its own module, or the vdso's (glibc's
        # time() and gettimeofday()).
        if (
            expected is not None
            and expected.symbol.type == c.STT_GNU_IFUNC
            and holder is not None
            and (holder is expected.module or holder.path == "[vdso]")
        ):
            slot.status = Status.IFUNC
            return
        if holder is not None and name in holder.names_at(value):
            preloaded = holder.preload and holder is not owner
            slot.status = Status.INTERPOSED if preloaded else Status.DIFFERS
            if expected is None:
                slot.reason = f"bound to {holder.short}'s {name}, which the lookup does not reach"
            else:
                slot.reason = (
                    f"bound to {holder.short}'s {name}, where the lookup gives "
                    f"{expected.module.short}'s"
                )
            return
        if entry.kind is Kind.ABS64 and not _in_relro(owner, slot.address):
            # A variable that held the symbol's address at start (a function pointer the
            # program may set, such as libmpdec's mpd_mallocfunc): changed by the program.
            slot.status = Status.REASSIGNED
            return
        slot.status = Status.HOOKED
        mapping = self.target.find_mapping(value)
        wanted = f"{expected.module.short}'s {name}" if expected is not None else name
        if holder is None and mapping is not None and mapping.path in (None, "", "[heap]"):
            slot.reason = f"points into anonymous {mapping.perms} memory, not to {wanted}"
        else:
            slot.reason = f"points to {slot.points_to}, not to {wanted}"


def _in_relro(owner: LinkedModule, address: int) -> bool:
    """Whether ``address`` is in the module's RELRO region (read-only once relocated)."""
    elf = owner.elf()
    if elf is None:
        return False
    link = address - owner.base
    return any(
        s.p_type == c.PT_GNU_RELRO and s.p_vaddr <= link < s.p_vaddr + s.p_memsz
        for s in elf.iter_segments()
    )


def _in_own_plt(owner: LinkedModule, value: int) -> bool:
    """A lazy slot still points back into its module's PLT (the push-and-jump stub)."""
    elf = owner.elf()
    if elf is None:
        return False
    link = value - owner.base
    for name in (".plt", ".plt.sec"):
        section = elf.get_section_by_name(name) if elf.num_sections() else None
        if section is not None and section.sh_addr <= link < section.sh_addr + section.sh_size:
            return True
    return False


def _read_slots(
    target: Target, owner: LinkedModule, entries: Sequence[Import]
) -> dict[int, int | None]:
    """The slots' values, read a run of pages at a time."""
    addresses = sorted({owner.base + e.offset for e in entries})
    values: dict[int, int | None] = {}
    index = 0
    while index < len(addresses):
        start = addresses[index]
        end = index
        while end + 1 < len(addresses) and addresses[end + 1] - addresses[end] <= 4096:
            end += 1
        last = addresses[end]
        try:
            raw = target.memory.read(start, last + 8 - start)
            for address in addresses[index : end + 1]:
                values[address] = int.from_bytes(
                    raw[address - start : address - start + 8], "little"
                )
        except MemoryReadError:
            for address in addresses[index : end + 1]:
                try:
                    values[address] = _read_word(target, address)
                except MemoryReadError:
                    values[address] = None
        index = end + 1
    return values


def process_linkage(target: Target, *, data: bool = False) -> Linkage:
    """The link map and every GOT slot of a process (a :class:`Target`, live or a core);
    with ``data``, the pointers in data too (R_X86_64_64: function pointers, vtables)."""
    linkage = Linkage(source=target.source, pid=target.pid, exe=target.exe)
    modules = read_link_map(target, linkage)
    if not modules:
        exe = _exe_module(target)
        if exe is not None:
            modules = [LinkedModule("", exe.bias, 0, 0, exe)]
    for module in modules:
        if module.module is None:
            module.problem = (
                f"{module.name or 'the executable'}: its dynamic section at "
                f"{module.dynamic_address:#x} is in no mapped file"
            )
            continue
        elf = module.module.elf()
        if elf is None:
            module.problem = module.module.problem or f"{module.path} cannot be read"
            continue
        try:
            module.dynamic = cached_dynamic(elf, module.path)
        except (ElfError, RedhandError) as error:
            module.problem = str(error)
            continue
        linkage.warnings.extend(f"{module.path}: {w}" for w in module.dynamic.warnings)
    linkage.preload = process_preload(target)
    _mark_scopes(modules, linkage.preload)
    linkage.modules = modules
    first: dict[int, LinkedModule] = {}
    for module in modules:
        if module.module is not None:
            original = first.setdefault(id(module.module), module)
            if original is not module:
                # The dynamic linker is in every namespace's list: one object, relocated once.
                module.same_as = original
    resolver = _Resolver(target, modules, data)
    for module in modules:
        if module.dynamic is None or module.same_as is not None:
            continue
        entries = module.dynamic.slot_imports(data)
        values = _read_slots(target, module, entries)
        for entry in entries:
            address = module.base + entry.offset
            value = values.get(address)
            slot = Slot(module, entry, address, value, Status.UNREADABLE)
            if value is not None:
                resolver.classify(slot)
            linkage.slots.append(slot)
    return linkage
