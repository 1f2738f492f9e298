"""An ELF core file as a Target: threads, memory, mappings and modules.

:func:`open_core` reads a core written by the kernel or by gdb's gcore
(plain, or compressed with zstd, gzip or xz) and returns the same
:class:`~redhand.target.target.Target` a live capture does, so unwinding,
symbols and the analyses never ask where it came from.

- Threads come from the NT_PRSTATUS notes (tid, registers); the first is
  the thread that took the fatal signal, and the NT_SIGINFO after it says
  why.  Cores do not record thread names: every thread is named after the
  program (NT_PRPSINFO's pr_fname).
- Mappings are the PT_LOAD segments (addresses, permissions), named and
  placed in their files by NT_FILE; the vdso (AT_SYSINFO_EHDR) is ``[vdso]``.
- Memory is the core's PT_LOAD data.  What the kernel left out (file-backed
  read-only mappings under the default coredump_filter: code, .rodata) is
  read from the files NT_FILE names, at their file offsets.
- Modules are the ELF files of NT_FILE, found on disk (under ``sysroot`` if
  given; ``exe`` replaces the executable), each checked against the
  build-id the core itself holds (the first page of every ELF mapping is in
  the core): a mismatch is a warning in ``target.warnings``, not an error.

Damage is survived where the rest is still true: a truncated core, a
corrupt note or segment table entry gives partial results and a warning
that says what is missing.  A file that cannot be a core at all is an
:class:`~redhand.errors.ElfError` (:class:`NotACore` for an executable or
library given in place of a core).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import time

from redhand.elf import ElfFile
from redhand.elf import constants as c
from redhand.elf.file import map_descriptor, open_regular_file
from redhand.errors import ElfError, FileNotFound, MemoryReadError, RedhandError
from redhand.symbols.debugfile import DEFAULT_DEBUG_DIRS
from redhand.symbols.perfmap import PerfMap
from redhand.target.corenotes import (
    AT_ENTRY,
    AT_EXECFN,
    AT_PHDR,
    AT_SYSINFO_EHDR,
    CoreNotes,
    FileMapping,
    ProcessInfo,
    read_core_notes,
)
from redhand.target.decompress import ProgressCallback, decompress, detect_compression
from redhand.target.model import Mapping
from redhand.target.module import (
    VDSO,
    Module,
    ModuleMap,
    group_file_mappings,
    segment_perms,
    vdso_module,
)
from redhand.target.target import Target, Thread
from redhand.target.unpacked import find_unpacked

TYPE_CHECKING = False

if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable, Sequence

VSYSCALL = "[vsyscall]"
VSYSCALL_START = 0xFFFFFFFFFF600000  # fixed on x86_64 (legacy vsyscall page)
STACK = "[stack]"
_DELETED = " (deleted)"

_MAX_READ = 1 << 28  # one read of target memory; the unwinder asks for a few bytes
_MAX_VDSO = 1 << 20
_MAX_WARNED_TRUNCATIONS = 5

_EHDR_HEAD = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_NHDR = struct.Struct("<III")


class NotACore(ElfError):
    """An ELF file that is not a core: an executable, a library or an object file."""


class CoreMapping(Mapping):
    """A mapping of a core.

    Cores record no device or inode (``dev`` is ``00:00``, ``inode`` 0), nor
    whether a mapping was shared: ``perms`` ends in ``p``.
    """

    __slots__ = ()


class CoreTarget(Target):
    """A Target read from a core file.

    Adds ``process`` (NT_PRPSINFO: pid, ppid, uid, gid, command name and
    arguments; None when the note is missing), ``auxv`` (the auxiliary
    vector by AT_* number), ``core_path`` and ``compression`` (``"zstd"``,
    ``"gzip"``, ``"xz"`` or None).  ``made_by``: what redhand's note says
    when ``redhand gcore`` wrote the core.
    """

    def __init__(
        self,
        *,
        core_path: str,
        core: ElfFile,
        process: ProcessInfo | None,
        auxv: dict[int, int],
        compression: str | None,
        sysroot: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.sysroot = sysroot
        self.core_path = core_path
        self.process = process
        self.auxv = auxv
        self.compression = compression
        self.made_by: dict[str, object] | None = None
        """How redhand gcore made this core (its own note), or None."""
        self._core = core

    def __repr__(self) -> str:
        return f"<Target core {self.core_path!r} pid={self.pid} threads={len(self.threads)}>"

    def _perf_map(self) -> PerfMap | None:
        """The perf map the crashed process wrote, if it is still there (see PerfMap.for_core)."""
        if not self._perf_maps:
            code = [(m.start, m.end) for m in self.mappings if not m.path and "x" in m.perms]
            found, warning = None, None
            if self.pid:
                found, warning = PerfMap.for_core(self.pid, code, self.sysroot)
            if warning is not None:
                self.warnings.append(warning)
            self._perf_maps.append(found)
        return self._perf_maps[0]

    def close(self) -> None:
        """Release the core's mapping and the files opened for modules."""
        super().close()
        self._core.close()


# -- memory ----------------------------------------------------------------------


class _FileRegion:
    """A range of addresses backed by a file that can be read (an ELF file on disk)."""

    __slots__ = ("elf", "end", "offset", "start")

    def __init__(self, start: int, end: int, offset: int, elf: ElfFile) -> None:
        self.start = start
        self.end = end
        self.offset = offset
        self.elf = elf


class CoreMemory:
    """A core's memory: its PT_LOAD data, then the mapped files behind it.

    ``segments`` are ``(vaddr, memsz, file offset, bytes present)`` of the
    PT_LOADs; bytes past the present ones (p_filesz smaller than p_memsz, or
    the core cut short) are read from a file region when one covers them.
    Reads are by bisection, so thousands of segments cost nothing.
    """

    def __init__(
        self,
        data: mmap.mmap | bytes,
        segments: Sequence[tuple[int, int, int, int]],
        file_regions: Sequence[_FileRegion] = (),
    ) -> None:
        ordered = sorted(segments)
        self._data = data
        self._starts = [s[0] for s in ordered]
        self._ends = [s[0] + s[1] for s in ordered]
        self._offsets = [s[2] for s in ordered]
        self._present = [s[3] for s in ordered]
        self.set_file_regions(file_regions)

    def set_file_regions(self, regions: Sequence[_FileRegion]) -> None:
        self._regions = sorted(regions, key=lambda region: region.start)
        self._region_starts = [region.start for region in self._regions]

    def read(self, address: int, size: int) -> bytes:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0 and size >= 0:
            rel = address - self._starts[index]
            if rel + size <= self._present[index]:
                at = self._offsets[index] + rel
                try:
                    return self._data[at : at + size]
                except ValueError:  # the core was closed
                    raise MemoryReadError(address, size, "the core file is closed") from None
        return self._read_pieces(address, size, files=True)

    def read_core(self, address: int, size: int) -> bytes:
        """Like :meth:`read`, from the core's own bytes only (never from a mapped file)."""
        return self._read_pieces(address, size, files=False)

    def in_core(self, address: int) -> bool:
        """Whether the core itself holds the byte at ``address``."""
        index = bisect.bisect_right(self._starts, address) - 1
        return index >= 0 and address - self._starts[index] < self._present[index]

    def _read_pieces(self, address: int, size: int, *, files: bool) -> bytes:
        if size < 0 or size > _MAX_READ or address < 0 or address + size > 1 << 64:
            raise MemoryReadError(address & ((1 << 64) - 1), max(size, 0), "impossible read")
        parts: list[bytes] = []
        at = address
        remaining = size
        while remaining > 0:
            index = bisect.bisect_right(self._starts, at) - 1
            in_segment = index >= 0 and at < self._ends[index]
            if in_segment:
                rel = at - self._starts[index]
                present = self._present[index]
                if rel < present:
                    count = min(remaining, present - rel)
                    offset = self._offsets[index] + rel
                    try:
                        parts.append(self._data[offset : offset + count])
                    except ValueError:
                        raise MemoryReadError(address, size, "the core file is closed") from None
                    at += count
                    remaining -= count
                    continue
            piece = self._read_file(at, remaining) if files else None
            if piece is None:
                if in_segment:
                    reason = (
                        "not in the core (left out by the kernel or cut off), and no file holds it"
                    )
                else:
                    reason = "not mapped in the core"
                raise MemoryReadError(address, size, reason)
            parts.append(piece)
            at += len(piece)
            remaining -= len(piece)
        return b"".join(parts)

    def _read_file(self, address: int, size: int) -> bytes | None:
        index = bisect.bisect_right(self._region_starts, address) - 1
        if index < 0:
            return None
        region = self._regions[index]
        if address >= region.end:
            return None
        # Stop at the end of the region or of the next core segment.
        count = min(size, region.end - address)
        segment = bisect.bisect_right(self._starts, address)
        if segment < len(self._starts):
            count = min(count, max(1, self._starts[segment] - address))
        offset = region.offset + address - region.start
        count = min(count, region.elf.size - offset)
        if count <= 0:
            return None  # past the end of the file (a SIGBUS in the process)
        try:
            return region.elf.read(offset, count)
        except ElfError:
            return None


# -- opening ---------------------------------------------------------------------


def _open_core_file(
    path: str, progress: ProgressCallback | None
) -> tuple[ElfFile, mmap.mmap, str | None, str | None]:
    """The core's ElfFile, its mapped bytes, its compression and a warning from decompression."""
    with open_regular_file(
        path,
        path,
        what="a core file",
        permission_hint=(
            "cores are often readable only by root or their owner (sudo, or the file mode)"
        ),
        empty_message="the file is empty, not a core",
        empty_hint="a core of size 0 usually means the core size limit was 0 (ulimit -c) "
        "or the disk was full when it was written",
        missing_hint="give the path of a core file",
    ) as fd:
        kind = detect_compression(os.pread(fd, 8, 0))
        if kind is None:
            data = map_descriptor(fd, path)
            warning = None
        else:
            result = decompress(path, kind, progress=progress)
            data, warning = result.data, result.warning
    try:
        elf = ElfFile(data, name=path)
    except ElfError as error:
        data.close()
        if kind is not None:
            raise ElfError(
                path, f"{kind}-compressed, but not an ELF core inside: {error.message}"
            ) from None
        if "not an ELF file" in error.message:
            error.hint = "expected an ELF core file (plain, or compressed with zstd, gzip or xz)"
        raise
    except BaseException:
        data.close()
        raise
    return elf, data, kind, warning


def _check_is_core(elf: ElfFile, path: str) -> None:
    if elf.e_type == c.ET_CORE:
        return
    if elf.e_type in (c.ET_EXEC, c.ET_DYN):
        interp = False
        with contextlib.suppress(ElfError):
            interp = any(seg.p_type == c.PT_INTERP for seg in elf.iter_segments())
        what = "an executable" if elf.e_type == c.ET_EXEC or interp else "a shared library"
        raise NotACore(
            path,
            f"this is {what}, not a core file",
            hint="did you mean `redhand core CORE --exe FILE`?",
        )
    if elf.e_type == c.ET_REL:
        raise NotACore(path, "this is an object file (.o), not a core file")
    raise NotACore(path, f"not a core file (ELF type {elf.e_type})")


def open_core(
    path: str | os.PathLike[str],
    exe: str | os.PathLike[str] | None = None,
    sysroot: str | os.PathLike[str] | None = None,
    debug_dirs: Sequence[str] = DEFAULT_DEBUG_DIRS,
    *,
    progress: ProgressCallback | None = None,
    source: bool = True,
    inline: bool = True,
) -> CoreTarget:
    """Read the core file at ``path`` (plain, .zst, .gz or .xz) as a :class:`Target`.

    ``exe`` is the executable the core came from, when the one named in the
    core is gone or elsewhere; ``sysroot`` a directory under which the
    core's files are looked for (a copy of another machine's files);
    ``debug_dirs`` where separate debug files are looked for.  ``progress``
    is called as a compressed core is decompressed.  ``source`` gives frames
    file:line:column from DWARF (through drgn) and ``inline`` the calls
    inlined at each pc as frames of their own.

    What could not be read is said in ``target.warnings``; the target
    holds everything that could.  Raises ElfError (NotACore, UnsupportedElf)
    when the file is no x86_64 core at all, FileNotFound when it is missing.
    """
    started = time.perf_counter()
    core_path = os.fspath(path)
    elf, data, compression, decompress_warning = _open_core_file(core_path, progress)
    try:
        _check_is_core(elf, core_path)
        target = _build(
            elf,
            data,
            core_path,
            None if exe is None else os.fspath(exe),
            None if sysroot is None else os.fspath(sysroot),
            debug_dirs,
            compression,
            decompress_warning,
        )
    except RedhandError:
        elf.close()
        raise
    except (struct.error, ValueError, OverflowError, IndexError, KeyError, UnicodeError) as error:
        # One choke point for what a damaged core makes the decoders trip on.
        elf.close()
        raise ElfError(core_path, f"corrupt core: {error}") from None
    except BaseException:
        elf.close()
        raise
    target.timings["open"] = time.perf_counter() - started
    target.source_lines = source
    target.inline = inline
    return target


def _build(
    elf: ElfFile,
    data: mmap.mmap,
    core_path: str,
    exe: str | None,
    sysroot: str | None,
    debug_dirs: Sequence[str],
    compression: str | None,
    decompress_warning: str | None,
) -> CoreTarget:
    warnings: list[str] = []
    if decompress_warning:
        warnings.append(f"{core_path}: {decompress_warning}")
    file_size = elf.size
    segments = list(elf.iter_segments())

    # -- notes
    notes_list = []
    try:
        for note in elf.iter_notes():
            notes_list.append(note)
    except ElfError as error:
        warnings.append(
            f"{error}; the {len(notes_list)} notes before it are used, the rest is lost"
        )
    notes: CoreNotes = read_core_notes(notes_list)
    warnings.extend(f"{core_path}: {w}" for w in notes.warnings)
    if not any(seg.p_type == c.PT_NOTE for seg in segments):
        warnings.append(f"{core_path}: the core has no PT_NOTE segment: no threads, no file names")

    # -- memory: PT_LOAD data, noting what a truncated core lost
    loads: list[tuple[int, int, int, int]] = []
    load_flags: dict[int, int] = {}
    truncated: list[tuple[int, int]] = []  # (vaddr, end) of ranges missing from the file
    truncated_starts: set[int] = set()
    for seg in segments:
        if seg.p_type != c.PT_LOAD or seg.p_memsz == 0:
            continue
        vaddr, memsz = seg.p_vaddr, seg.p_memsz
        if vaddr + memsz > 1 << 64:
            warnings.append(
                f"{core_path}: segment {seg.index} wraps past the end of the address space; ignored"
            )
            continue
        filesz = min(seg.p_filesz, memsz)
        present = max(0, min(filesz, file_size - seg.p_offset))
        if present < filesz:
            truncated.append((vaddr + present, vaddr + filesz))
            truncated_starts.add(vaddr)
        loads.append((vaddr, memsz, seg.p_offset, present))
        load_flags.setdefault(vaddr, seg.p_flags)
    if truncated:
        shown = ", ".join(f"{a:#x}-{b:#x}" for a, b in truncated[:_MAX_WARNED_TRUNCATIONS])
        more = len(truncated) - _MAX_WARNED_TRUNCATIONS
        lost = sum(b - a for a, b in truncated)
        warnings.append(
            f"{core_path}: the core is truncated ({file_size} bytes): {lost} bytes of memory "
            f"in {len(truncated)} segments are missing: {shown}"
            + (f" and {more} more" if more > 0 else "")
            + "; stacks there cannot be read (was the disk full, or a size limit hit?)"
        )
    memory = CoreMemory(data, loads)

    # -- mappings
    auxv = notes.auxv
    files = sorted(notes.files, key=lambda f: f.start)
    file_starts = [f.start for f in files]

    def file_at(address: int) -> FileMapping | None:
        index = bisect.bisect_right(file_starts, address) - 1
        if index >= 0 and address < files[index].end:
            return files[index]
        return None

    vdso_at = auxv.get(AT_SYSINFO_EHDR)
    execfn_at = auxv.get(AT_EXECFN)
    mappings: list[CoreMapping] = []
    for vaddr, memsz, _offset, _present in sorted(loads):
        end = vaddr + memsz
        flags = load_flags.get(vaddr, 0)
        mapped = file_at(vaddr)
        path: str | None = None
        offset = 0
        if mapped is not None:
            path = mapped.path
            offset = mapped.offset + (vaddr - mapped.start)
        elif vdso_at is not None and vaddr <= vdso_at < end:
            path = VDSO
        elif vaddr == VSYSCALL_START:
            path = VSYSCALL
        elif execfn_at is not None and vaddr <= execfn_at < end:
            path = STACK
        mappings.append(CoreMapping(vaddr, end, segment_perms(flags), offset, "00:00", 0, path))
    # gdb's gcore leaves read-only file mappings (code) out entirely, without
    # even a PT_LOAD: NT_FILE still lists them.  Their permissions come from
    # the file's own program headers once it is found (see _modules).
    for start, end, offset, path in _file_gaps(files, loads):
        mappings.append(CoreMapping(start, end, _UNKNOWN_PERMS, offset, "00:00", 0, path))
    mappings.sort(key=lambda m: m.start)

    # -- threads' process and modules
    process = notes.process
    execfn = _read_cstring(memory, execfn_at) if execfn_at is not None else None
    exe_group_path = _exe_path(mappings, auxv, execfn)
    packed = None
    if exe_group_path is not None:
        packed = _where(exe_group_path.removesuffix(_DELETED), sysroot)
    found = find_unpacked(exe, packed, mappings, memory.read_core, debug_dirs)
    if found.problem is not None:
        warnings.append(found.problem)
    if exe is not None and found.how == f"--exe {exe}":
        exe = None  # an unpacked copy, not a replacement for the packed file
    modules, regions, mappings = _modules(
        mappings,
        memory,
        exe=exe,
        exe_group_path=exe_group_path,
        sysroot=sysroot,
        debug_dirs=debug_dirs,
        warnings=warnings,
        writable_truncated={v for v in truncated_starts if load_flags.get(v, 0) & c.PF_W},
    )
    memory.set_file_regions(regions)
    if found.module is not None:
        modules = ModuleMap([*modules, found.module])
    if not files and any(seg.p_type == c.PT_NOTE for seg in segments):
        warnings.append(
            f"{core_path}: the core has no NT_FILE note: mapped files are unknown, so are "
            "modules and symbols (cores from kernels before 3.7 lack it)"
        )

    exe_name = exe_group_path or execfn
    cmdline: list[str] = []
    if process is not None:
        cmdline = process.psargs.split(" ") if process.psargs else [process.fname]
    target = CoreTarget(
        core_path=core_path,
        core=elf,
        process=process,
        auxv=dict(auxv),
        compression=compression,
        sysroot=sysroot,
        pid=process.pid
        if process is not None
        else (notes.threads[0][0].pid if notes.threads else None),
        exe=exe_name,
        cmdline=cmdline,
        mappings=mappings,
        modules=modules,
        memory=memory,
        source="core",
    )
    target.warnings.extend(warnings)
    if found.module is not None:
        target.unpacked = found

    name = process.fname if process is not None else (exe_name or "").rsplit("/", 1)[-1]
    target.made_by = notes.made_by
    for index, (status, siginfo) in enumerate(notes.threads):
        # A debugger's core of a stopped process says SIGSTOP: a stop, not a crash.
        crashed = index == 0 and status.cursig not in _NOT_FATAL
        target.threads.append(
            Thread(
                tid=status.pid,
                name=notes.thread_names.get(status.pid, name),
                registers=status.registers,
                target=target,
                crashed=crashed,
                signal=status.cursig if crashed else None,
                siginfo=siginfo if crashed or (siginfo is not None and siginfo.signo) else None,
            )
        )
    if not notes.threads:
        target.warnings.append(
            f"{core_path}: the core holds no thread (no usable NT_PRSTATUS note)"
        )
    return target


_NOT_FATAL = frozenset({0, 19, 20, 21, 22})  # none, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU

_UNKNOWN_PERMS = "????"


def _file_gaps(
    files: Sequence[FileMapping], loads: Sequence[tuple[int, int, int, int]]
) -> list[tuple[int, int, int, str]]:
    """The parts of NT_FILE's mappings that no PT_LOAD covers: (start, end, offset, path)."""
    ordered = sorted((vaddr, vaddr + memsz) for vaddr, memsz, _o, _p in loads)
    starts = [start for start, _end in ordered]
    gaps = []
    for mapped in files:
        at = mapped.start
        index = max(0, bisect.bisect_right(starts, at) - 1)
        while at < mapped.end:
            while index < len(ordered) and ordered[index][1] <= at:
                index += 1
            if index < len(ordered) and ordered[index][0] <= at:
                at = ordered[index][1]
                continue
            stop = mapped.end if index >= len(ordered) else min(mapped.end, ordered[index][0])
            gaps.append((at, stop, mapped.offset + at - mapped.start, mapped.path))
            at = stop
    return gaps


def _exe_path(
    mappings: Sequence[CoreMapping], auxv: dict[int, int], execfn: str | None
) -> str | None:
    """The NT_FILE path of the main executable: the file mapped at AT_ENTRY (or AT_PHDR).

    A packed program's stub replaced its own mappings with anonymous memory:
    then the file mapped from offset 0 whose name AT_EXECFN ends with, when
    there is exactly one.
    """
    starts = [m.start for m in mappings]
    for key in (AT_ENTRY, AT_PHDR):
        address = auxv.get(key)
        if not address:
            continue
        index = bisect.bisect_right(starts, address) - 1
        if index >= 0 and address < mappings[index].end and mappings[index].is_file:
            return mappings[index].path
    if execfn:
        name = "/" + execfn.rsplit("/", 1)[-1]
        named = {
            m.path
            for m in mappings
            if m.is_file and m.offset == 0 and m.path is not None and m.path.endswith(name)
        }
        if len(named) == 1:
            return named.pop()
    return None


def _read_cstring(memory: CoreMemory, address: int, limit: int = 4096) -> str | None:
    """A NUL-terminated string of the core, read a page at a time (AT_EXECFN's string
    ends a few bytes before the end of the stack)."""
    data = b""
    at = address
    while len(data) < limit and b"\0" not in data:
        size = min(0x1000 - (at & 0xFFF), limit - len(data))
        try:
            data += memory.read_core(at, size)
        except MemoryReadError:
            break
        at += size
    nul = data.find(b"\0")
    if nul <= 0:
        return None
    return data[:nul].decode("utf-8", "surrogateescape")


# -- modules ----------------------------------------------------------------------


_Phdr = tuple[int, int, int, int, int, int, int, int]


def core_phdrs(memory: CoreMemory, start: int) -> list[_Phdr] | None:
    """The program headers of the ELF image mapped at ``start``, from the core's own bytes.

    The kernel (coredump_filter bit 4, on by default) and gdb's gcore dump
    the first page of every ELF mapping: the ELF header, the program headers
    and, in practice, the build-id note.  None when those bytes are not there.
    """
    try:
        head = memory.read_core(start, _EHDR_HEAD.size)
    except MemoryReadError:
        return None
    if head[:4] != c.ELFMAG:
        return None
    fields = _EHDR_HEAD.unpack(head)
    e_phoff, e_phentsize, e_phnum = fields[5], fields[9], fields[10]
    if e_phentsize != _PHDR.size or not 0 < e_phnum <= 256 or e_phoff > 1 << 20:
        return None
    try:
        table = memory.read_core(start + e_phoff, e_phnum * _PHDR.size)
    except MemoryReadError:
        return None
    return list(_PHDR.iter_unpack(table))


def core_build_id(memory: CoreMemory, start: int) -> str | None:
    """The GNU build-id of the ELF image mapped at ``start``, from the core's own bytes."""
    phdrs = core_phdrs(memory, start)
    if phdrs is None:
        return None
    first_load = next((p for p in phdrs if p[0] == c.PT_LOAD), None)
    if first_load is None:
        return None
    bias = start - (first_load[3] & ~0xFFF)
    for p_type, _flags, _offset, p_vaddr, _paddr, p_filesz, _memsz, p_align in phdrs:
        if p_type != c.PT_NOTE or p_filesz > 1 << 16:
            continue
        try:
            data = memory.read_core(bias + p_vaddr, p_filesz)
        except MemoryReadError:
            continue
        found = _build_id_in_notes(data, 8 if p_align == 8 else 4)
        if found is not None:
            return found
    return None


def _segment_perms(phdrs: Sequence[_Phdr] | None, offset: int) -> str:
    """Permissions of a file mapping at file ``offset``: its PT_LOAD's flags.

    Unknown (no program headers): ``r--p``, what a mapping gdb's gcore left
    out (read-only, file-backed) most likely was.
    """
    for p_type, p_flags, p_offset, _v, _p, p_filesz, _m, _a in phdrs or ():
        if p_type == c.PT_LOAD and (p_offset & ~0xFFF) <= offset < p_offset + max(p_filesz, 1):
            return segment_perms(p_flags)
    return "r--p"


def _with_perms(group: Sequence[CoreMapping], phdrs: Sequence[_Phdr] | None) -> list[CoreMapping]:
    return [
        m
        if m.perms != _UNKNOWN_PERMS
        else CoreMapping(
            m.start, m.end, _segment_perms(phdrs, m.offset), m.offset, m.dev, 0, m.path
        )
        for m in group
    ]


def _build_id_in_notes(data: bytes, align: int) -> str | None:
    mask = align - 1
    at = 0
    while at + _NHDR.size <= len(data):
        namesz, descsz, ntype = _NHDR.unpack_from(data, at)
        name_at = at + _NHDR.size
        desc_at = (name_at + namesz + mask) & ~mask
        end = desc_at + descsz
        if end > len(data):
            return None
        if ntype == c.NT_GNU_BUILD_ID and data[name_at : name_at + namesz].rstrip(b"\0") == b"GNU":
            return data[desc_at:end].hex() or None
        at = (end + mask) & ~mask
    return None


def _where(path: str, sysroot: str | None) -> str:
    """Where a file of the core is looked for on this machine."""
    if sysroot is None:
        return path
    return os.path.join(sysroot, path.lstrip("/"))


def _is_special(path: str) -> bool:
    return path.startswith(("/dev/", "/memfd:", "/SYSV", "/proc/", "/anon_hugepage", "/[aio]"))


def _modules(
    mappings: Sequence[CoreMapping],
    memory: CoreMemory,
    *,
    exe: str | None,
    exe_group_path: str | None,
    sysroot: str | None,
    debug_dirs: Sequence[str],
    warnings: list[str],
    writable_truncated: set[int],
) -> tuple[ModuleMap, list[_FileRegion], list[CoreMapping]]:
    """The modules, the file regions behind memory, and the mappings with all permissions known."""
    modules: list[Module] = []
    regions: list[_FileRegion] = []
    opened: dict[str, ElfFile | None] = {}
    fixed: dict[int, CoreMapping] = {}
    exe_used = False
    for group in group_file_mappings(mappings):
        path = group[0].path
        assert path is not None
        display = path.removesuffix(_DELETED)
        deleted = path.endswith(_DELETED)
        core_is_elf = memory.in_core(group[0].start) and _starts_elf(memory, group[0].start)
        phdrs = core_phdrs(memory, group[0].start) if core_is_elf else None
        is_exe = exe_group_path is not None and path == exe_group_path
        if is_exe and exe is not None:
            candidate = exe
            exe_used = True
        else:
            candidate = _where(display, sysroot)
        elf_file: ElfFile | None = None
        problem: str | None = None
        if group[0].offset == 0 and (core_is_elf or not memory.in_core(group[0].start)):
            if candidate in opened:
                elf_file = opened[candidate]
            elif core_is_elf or not _is_special(display):
                elf_file, problem = _open_module_file(
                    display, candidate, is_exe, exe, sysroot, deleted
                )
                opened[candidate] = elf_file
                if problem is not None and (core_is_elf or any(m.perms[2:3] == "x" for m in group)):
                    warnings.append(problem)
        if phdrs is None and elf_file is not None:
            with contextlib.suppress(ElfError):
                phdrs = [
                    (s.p_type, s.p_flags, s.p_offset, s.p_vaddr, s.p_paddr, s.p_filesz,
                     s.p_memsz, s.p_align)
                    for s in elf_file.iter_segments()
                ]  # fmt: skip
        group = _with_perms(group, phdrs)
        for mapping in group:
            fixed[mapping.start] = mapping
        if elf_file is None:
            if core_is_elf or (problem is not None and any(m.executable for m in group)):
                modules.append(
                    Module(
                        path=display,
                        mappings=list(group),
                        debug_dirs=debug_dirs,
                        problem=problem or f"{display}: not found at {candidate}",
                    )
                )
            continue
        expected = core_build_id(memory, group[0].start) if core_is_elf else None
        actual = elf_file.build_id if expected is not None else None
        if expected is not None and actual != expected:
            what = "--exe" if is_exe and exe is not None else "the file"
            warnings.append(
                f"{display}: build-id mismatch: the core's is {expected}, {what} {candidate} "
                f"has {actual or 'none'}: it is not the file the process ran (rebuilt or "
                "updated since?); frames and code read from it may be wrong"
            )
        modules.append(
            Module(
                path=display,
                mappings=list(group),
                open_path=candidate,
                loader=_loader(elf_file),
                debug_dirs=debug_dirs,
            )
        )
        for mapping in group:
            if mapping.start in writable_truncated:
                continue  # the file's bytes are not what the process had written there
            regions.append(_FileRegion(mapping.start, mapping.end, mapping.offset, elf_file))
    if exe is not None and not exe_used:
        warnings.append(
            f"--exe {exe} was not used: the core does not say which mapping is the executable "
            "(no AT_ENTRY in NT_AUXV, or no NT_FILE)"
        )
    result = [fixed.get(m.start, m) for m in mappings]
    result = [
        m
        if m.perms != _UNKNOWN_PERMS
        else CoreMapping(m.start, m.end, "r--p", m.offset, m.dev, 0, m.path)
        for m in result
    ]
    for mapping in result:
        if mapping.path == VDSO and mapping.size <= _MAX_VDSO:
            modules.append(vdso_module(mapping, _read_vdso(memory), debug_dirs))
    return ModuleMap(modules), regions, result


def _starts_elf(memory: CoreMemory, address: int) -> bool:
    try:
        return memory.read_core(address, 4) == c.ELFMAG
    except MemoryReadError:
        return False


def _open_module_file(
    display: str, candidate: str, is_exe: bool, exe: str | None, sysroot: str | None, deleted: bool
) -> tuple[ElfFile | None, str | None]:
    """The ELF file of a module, or None and why not."""
    try:
        return ElfFile.open(candidate, display_path=candidate), None
    except FileNotFound:
        return None, _missing_message(display, candidate, is_exe, exe, sysroot, deleted)
    except ElfError as error:
        return None, f"{display}: cannot use {candidate}: {error.message}"


def _missing_message(
    path: str, candidate: str, is_exe: bool, exe: str | None, sysroot: str | None, deleted: bool
) -> str:
    looked = f"looked at {candidate}"
    if is_exe and exe is not None:
        return f"the executable given with --exe, {exe}, does not exist"
    if deleted:
        looked += " (the file had been deleted while the process ran)"
    hint = (
        "pass the executable with --exe FILE" if is_exe else
        "give the directory that holds a copy of the crashed machine's files with --sysroot DIR"
        if sysroot is None else "is --sysroot the right directory?"
    )  # fmt: skip
    what = "the executable" if is_exe else "library"
    return f"{what} {path} not found ({looked}): {hint}; its frames will have no names"


def _loader(elf_file: ElfFile) -> Callable[[], ElfFile]:
    def load() -> ElfFile:
        return elf_file

    return load


def _read_vdso(memory: CoreMemory) -> Callable[[int, int], bytes]:
    """Reads of the vdso from the core itself (no file holds it)."""

    def read(address: int, size: int) -> bytes:
        try:
            return memory.read_core(address, size)
        except MemoryReadError as error:
            raise ElfError(VDSO, f"the vdso is not in the core: {error.reason}") from None

    return read


__all__ = [
    "CoreMapping",
    "CoreMemory",
    "CoreTarget",
    "NotACore",
    "ProcessInfo",
    "open_core",
]
