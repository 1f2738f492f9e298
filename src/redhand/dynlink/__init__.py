"""Dynamic linking: what a file needs and exports, and where a process's GOT slots point.

``redhand.linkage(what)`` takes a file's path (its imports, exports, PLT and
binding mode: a :class:`FileLinkage`), a pid or a :class:`Target` (the link
map and every GOT slot, compared with where the dynamic linker's lookup binds
it: a :class:`Linkage`), or a core's path (the same, from the core).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from redhand.dynlink.dynamic import (
    Dynamic,
    DynSymbol,
    Import,
    Kind,
    cached_dynamic,
    read_dynamic,
)
from redhand.dynlink.process import Binding, Linkage, LinkedModule, Slot, Status, process_linkage
from redhand.dynlink.search import FileBinding, FoundLibrary, LoadPlan, plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from redhand.elf.plt import PltStub
    from redhand.target.target import Target

__all__ = [
    "Binding",
    "DynSymbol",
    "Dynamic",
    "FileBinding",
    "FileLinkage",
    "FoundLibrary",
    "Import",
    "Kind",
    "Linkage",
    "LinkedModule",
    "LoadPlan",
    "Slot",
    "Status",
    "file_linkage",
    "linkage",
    "process_linkage",
    "read_dynamic",
]


@dataclass
class FileLinkage:
    """A file's dynamic linking (:class:`Dynamic`), its PLT stubs, and what it would start
    with on this machine (:class:`LoadPlan`: its libraries and where its imports bind;
    None for a file that loads nothing)."""

    dynamic: Dynamic
    plt: list[PltStub] = field(default_factory=list)
    plan: LoadPlan | None = None


def file_linkage(
    path: str | os.PathLike[str],
    *,
    preload: Sequence[str] | None = None,
    library_path: Sequence[str] | None = None,
) -> FileLinkage:
    """What the ELF file at ``path`` needs, exports and imports, its PLT stubs, and where
    ld.so would find its libraries and bind its imports here.  ``preload`` and
    ``library_path`` default to this process's LD_PRELOAD and LD_LIBRARY_PATH, as ldd's."""
    from redhand.elf import ElfFile
    from redhand.elf.plt import iter_plt_stubs
    from redhand.errors import ElfError

    name = os.fspath(path)
    with ElfFile.open(name) as elf:
        dynamic = cached_dynamic(elf, name)
        result = FileLinkage(dynamic)
        if elf.num_sections():
            try:
                result.plt = list(iter_plt_stubs(elf))
            except ElfError as error:
                dynamic.warnings.append(f"the PLT cannot be read: {error.message}")
    if dynamic.needed or dynamic.interpreter:
        if preload is None:
            preload = os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
        if library_path is None:
            library_path = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
        result.plan = plan(name, preload=preload, library_path=library_path)
    return result


def linkage(
    what: int | str | os.PathLike[str] | Target, *, data: bool = False
) -> Linkage | FileLinkage:
    """The linkage of a pid, a :class:`Target`, a core file or an ELF file (see above).
    ``data``: a process's pointers in data too (function pointers, vtables), not only its
    GOT slots."""
    from redhand.target.target import Target

    if isinstance(what, Target):
        return process_linkage(what, data=data)
    if isinstance(what, int):
        from redhand.target.live import observe

        return process_linkage(observe(what), data=data)
    path = os.fspath(what)
    if _is_core(path):
        from redhand.target.core import open_core

        with open_core(path, source=False) as target:
            return process_linkage(target, data=data)
    return file_linkage(path)


def _is_core(path: str) -> bool:
    """An ELF core (or a compressed file, which only a core may be here)."""
    from redhand.elf import constants as c
    from redhand.target.decompress import detect_compression

    try:
        with open(path, "rb") as file:
            head = file.read(18)
    except OSError:
        return False
    if detect_compression(head[:8]) is not None:
        return True
    return head[:4] == c.ELFMAG and int.from_bytes(head[16:18], "little") == c.ET_CORE
