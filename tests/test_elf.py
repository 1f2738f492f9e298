"""redhand.elf against real files: this machine's libc and programs built at test
time, compared with readelf; and corrupt files, which must give redhand's own
errors only, quickly."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import struct
import time
from pathlib import Path

import pytest
from elf_helpers import (
    LIBC,
    PROGRAM_C,
    compile_c,
    make_minidebuginfo,
    readelf_build_id,
    readelf_sections,
    readelf_segments,
    readelf_symbol_count,
    require,
    run,
)

from redhand.elf import ElfFile, Note, Section, Segment
from redhand.elf import constants as c
from redhand.errors import ElfError, FileNotFound, UnsupportedElf

_SEGMENT_TYPES = {
    "NULL": c.PT_NULL,
    "LOAD": c.PT_LOAD,
    "DYNAMIC": c.PT_DYNAMIC,
    "INTERP": c.PT_INTERP,
    "NOTE": c.PT_NOTE,
    "PHDR": c.PT_PHDR,
    "TLS": c.PT_TLS,
    "GNU_EH_FRAME": c.PT_GNU_EH_FRAME,
    "GNU_STACK": c.PT_GNU_STACK,
    "GNU_RELRO": c.PT_GNU_RELRO,
    "GNU_PROPERTY": c.PT_GNU_PROPERTY,
}
_SECTION_TYPES = {
    "NULL": c.SHT_NULL,
    "PROGBITS": c.SHT_PROGBITS,
    "SYMTAB": c.SHT_SYMTAB,
    "STRTAB": c.SHT_STRTAB,
    "RELA": c.SHT_RELA,
    "HASH": c.SHT_HASH,
    "DYNAMIC": c.SHT_DYNAMIC,
    "NOTE": c.SHT_NOTE,
    "NOBITS": c.SHT_NOBITS,
    "DYNSYM": c.SHT_DYNSYM,
    "INIT_ARRAY": c.SHT_INIT_ARRAY,
    "FINI_ARRAY": c.SHT_FINI_ARRAY,
    "GNU_HASH": c.SHT_GNU_HASH,
    "VERSYM": c.SHT_GNU_VERSYM,
    "VERDEF": c.SHT_GNU_VERDEF,
    "VERNEED": c.SHT_GNU_VERNEED,
    "RELR": c.SHT_RELR,
}
_FLAG_LETTERS = {
    "W": c.SHF_WRITE,
    "A": c.SHF_ALLOC,
    "X": c.SHF_EXECINSTR,
    "M": c.SHF_MERGE,
    "S": c.SHF_STRINGS,
    "I": c.SHF_INFO_LINK,
    "L": c.SHF_LINK_ORDER,
    "G": c.SHF_GROUP,
    "T": c.SHF_TLS,
    "C": c.SHF_COMPRESSED,
}

OWN_ERRORS: tuple[type[Exception], ...] = (ElfError, FileNotFound)


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test program built every way the tests need, once per module."""
    require("gcc")
    tmp = tmp_path_factory.mktemp("elf")
    built = {
        "pie": compile_c(tmp, "pie", PROGRAM_C, "-O2", "-g", "-Wl,--build-id"),
        "nopie": compile_c(tmp, "nopie", PROGRAM_C, "-O2", "-no-pie", "-Wl,--build-id=sha1"),
        "static": compile_c(tmp, "static", PROGRAM_C, "-O2", "-static"),
        "zlib": compile_c(tmp, "zlib", PROGRAM_C, "-O2", "-g", "-gz=zlib"),
        "nobuildid": compile_c(tmp, "nobuildid", PROGRAM_C, "-O2", "-Wl,--build-id=none"),
    }
    stripped = tmp / "stripped"
    shutil.copy(built["pie"], stripped)
    run("strip", stripped)
    built["stripped"] = stripped
    for kind in ("zlib-gnu", "zstd"):
        out = tmp / f"objcopy-{kind}"
        run("objcopy", f"--compress-debug-sections={kind}", built["pie"], out)
        built[kind] = out
    debug = tmp / "pie.debug"
    run("objcopy", "--only-keep-debug", built["pie"], debug)
    linked = tmp / "linked"
    run("objcopy", "--strip-debug", f"--add-gnu-debuglink={debug}", built["pie"], linked)
    built["debug"] = debug
    built["linked"] = linked
    built["mini"] = make_minidebuginfo(built["pie"], tmp / "mini")
    return built


def full_walk(elf: ElfFile) -> None:
    """Touch everything a reader of this file might: the corrupt-input tests' workload."""
    for seg in elf.iter_segments():
        if seg.p_filesz < 1 << 20:
            seg.data()
    for sec in elf.iter_sections():
        if sec.sh_size < 1 << 20:
            sec.data()
    list(elf.iter_notes())
    for name in (".symtab", ".dynsym"):
        list(elf.iter_symbols(name))
    list(elf.iter_dynamic())
    _ = elf.build_id
    _ = elf.debuglink
    elf.gnu_debugdata()
    for sec in elf.iter_sections():
        if sec.sh_type == c.SHT_RELA:
            list(elf.iter_relocations(sec))
    elf.vaddr_to_offset(elf.e_entry)
    with contextlib.suppress(ElfError):
        elf.read_vaddr(elf.e_entry, 16)


# -- real files against readelf -------------------------------------------------------


def check_against_readelf(path: Path | str) -> None:
    with ElfFile.open(str(path)) as elf:
        expected = readelf_sections(path)
        sections = list(elf.iter_sections())
        assert len(sections) == len(expected)
        for sec, row in zip(sections, expected, strict=True):
            assert isinstance(sec, Section)
            assert sec.index == row["index"]
            # readelf cuts long names only without -W; with -W they are whole.
            assert sec.name == row["name"]
            if row["type"] in _SECTION_TYPES:
                assert sec.sh_type == _SECTION_TYPES[row["type"]], sec.name
            assert (sec.sh_addr, sec.sh_offset, sec.sh_size, sec.sh_entsize) == (
                row["addr"],
                row["offset"],
                row["size"],
                row["entsize"],
            ), sec.name
            assert (sec.sh_link, sec.sh_info, sec.sh_addralign) == (
                row["link"],
                row["info"],
                row["align"],
            )
            flags = 0
            for letter in str(row["flags"]):
                flags |= _FLAG_LETTERS.get(letter, 0)
            known = sum(_FLAG_LETTERS.values())
            assert sec.sh_flags & known == flags, sec.name
        segments = list(elf.iter_segments())
        expected_segments = readelf_segments(path)
        assert len(segments) == len(expected_segments)
        for seg, row in zip(segments, expected_segments, strict=True):
            assert isinstance(seg, Segment)
            if row["type"] in _SEGMENT_TYPES:
                assert seg.p_type == _SEGMENT_TYPES[row["type"]]
            assert (seg.p_offset, seg.p_vaddr, seg.p_paddr) == (
                row["offset"],
                row["vaddr"],
                row["paddr"],
            )
            assert (seg.p_filesz, seg.p_memsz, seg.p_align) == (
                row["filesz"],
                row["memsz"],
                row["align"],
            )
            letters = "".join(
                letter for letter, bit in (("R", 4), ("W", 2), ("E", 1)) if seg.p_flags & bit
            )
            assert letters == row["flags"]
        assert elf.build_id == readelf_build_id(path)
        for dynamic in (False, True):
            name = ".dynsym" if dynamic else ".symtab"
            assert len(list(elf.iter_symbols(name))) == readelf_symbol_count(path, dynamic)


@pytest.mark.parametrize(
    "kind", ["pie", "nopie", "static", "stripped", "zlib", "zstd", "nobuildid", "mini", "debug"]
)
def test_compiled_programs_match_readelf(programs: dict[str, Path], kind: str) -> None:
    check_against_readelf(programs[kind])


def test_libc_matches_readelf() -> None:
    check_against_readelf(LIBC)


def test_libc_header_notes_and_debuglink() -> None:
    with ElfFile.open(LIBC) as elf:
        assert elf.e_type == c.ET_DYN
        assert elf.e_machine == c.EM_X86_64
        assert elf.ei_osabi in (0, 3)
        notes = list(elf.iter_notes())
        assert all(isinstance(note, Note) for note in notes)
        kinds = {(note.name, note.type) for note in notes}
        assert ("GNU", c.NT_GNU_BUILD_ID) in kinds
        assert ("GNU", c.NT_GNU_ABI_TAG) in kinds
        text = run("readelf", "--debug-dump=links", LIBC)
        link = elf.debuglink
        assert link is not None
        assert f"Separate debug info file: {link[0]}" in text
        assert f"CRC value: {link[1]:#x}" in text


def test_types_of_compiled_programs(programs: dict[str, Path]) -> None:
    assert ElfFile.open(str(programs["pie"])).e_type == c.ET_DYN
    assert ElfFile.open(str(programs["nopie"])).e_type == c.ET_EXEC
    assert ElfFile.open(str(programs["static"])).e_type == c.ET_EXEC
    assert ElfFile.open(str(programs["nobuildid"])).build_id is None
    stripped = ElfFile.open(str(programs["stripped"]))
    assert stripped.get_section_by_name(".symtab") is None
    assert list(stripped.iter_symbols()) == []
    assert stripped.build_id == ElfFile.open(str(programs["pie"])).build_id


def test_symbols_match_nm(programs: dict[str, Path]) -> None:
    with ElfFile.open(str(programs["pie"])) as elf:
        by_name = {sym.name: sym for sym in elf.iter_symbols()}
    for line in run("nm", "--defined-only", programs["pie"]).splitlines():
        address, _kind, name = line.split()
        assert by_name[name].value == int(address, 16)
    assert by_name["asm_label"].type == c.STT_NOTYPE
    assert by_name["asm_label"].size == 0
    assert by_name["weak_alias"].bind == c.STB_WEAK
    assert by_name["static_helper"].bind == c.STB_LOCAL
    assert by_name["main"].type == c.STT_FUNC


def test_ifunc_symbols_keep_their_type() -> None:
    with ElfFile.open(LIBC) as elf:
        types = {sym.name: sym.type for sym in elf.iter_symbols(".dynsym")}
    assert types["memcpy"] == c.STT_GNU_IFUNC == 10
    assert types["strlen"] == c.STT_GNU_IFUNC


def test_compressed_sections_decompress(programs: dict[str, Path]) -> None:
    plain = ElfFile.open(str(programs["pie"]))
    expected = plain.get_section_by_name(".debug_info")
    assert expected is not None and not expected.is_compressed
    for kind in ("zstd",):
        elf = ElfFile.open(str(programs[kind]))
        sec = elf.get_section_by_name(".debug_info")
        assert sec is not None and sec.is_compressed
        assert sec.data() == expected.data()
    gnu = ElfFile.open(str(programs["zlib-gnu"]))
    zsec = gnu.get_section_by_name(".zdebug_info")
    assert zsec is not None
    assert zsec.data() == expected.data()
    # -gz=zlib: compare with objcopy's own decompression of the same file.
    zlib_elf = ElfFile.open(str(programs["zlib"]))
    compressed = zlib_elf.get_section_by_name(".debug_info")
    assert compressed is not None and compressed.is_compressed
    out = programs["zlib"].parent / "zlib-decompressed"
    run("objcopy", "--decompress-debug-sections", programs["zlib"], out)
    reference = ElfFile.open(str(out)).get_section_by_name(".debug_info")
    assert reference is not None
    assert compressed.data() == reference.data()


def test_debuglink_and_minidebuginfo(programs: dict[str, Path]) -> None:
    linked = ElfFile.open(str(programs["linked"]))
    link = linked.debuglink
    assert link is not None
    assert link[0] == "pie.debug"
    assert link[1] == ElfFile.open(str(programs["debug"])).crc32()
    assert ElfFile.open(str(programs["pie"])).debuglink is None

    mini = ElfFile.open(str(programs["mini"]))
    inner = mini.gnu_debugdata()
    assert inner is not None
    assert mini.gnu_debugdata() is inner  # cached
    names = {sym.name for sym in inner.iter_symbols()}
    assert "static_helper" in names
    assert "leaf_function" in names
    assert ElfFile.open(str(programs["pie"])).gnu_debugdata() is None


def test_dynamic_and_relocations(programs: dict[str, Path]) -> None:
    path = programs["pie"]
    elf = ElfFile.open(str(path))
    tags = list(elf.iter_dynamic())
    text = run("readelf", "-dW", path)
    count = sum(1 for line in text.splitlines() if line.strip().startswith("0x"))
    assert len(tags) == count - 1  # readelf also lists the terminating NULL
    needed = [val for tag, val in tags if tag == c.DT_NEEDED]
    strtab = elf.get_section_by_name(".dynstr")
    assert strtab is not None
    names = [strtab.data()[val:].split(b"\0", 1)[0].decode() for val in needed]
    assert names == ["libc.so.6"]
    relocs = list(elf.iter_relocations(".rela.plt"))
    assert {r.r_type for r in relocs} == {c.R_X86_64_JUMP_SLOT}
    assert len(relocs) == run("readelf", "-rW", path).count("R_X86_64_JUMP_SLO")


def test_addresses_through_pt_load(programs: dict[str, Path]) -> None:
    elf = ElfFile.open(str(programs["nopie"]))
    text = elf.get_section_by_name(".text")
    assert text is not None
    offset = elf.vaddr_to_offset(text.sh_addr + 5)
    assert offset == text.sh_offset + 5
    assert elf.read_vaddr(text.sh_addr, 32) == elf.read(text.sh_offset, 32)
    bss = elf.get_section_by_name(".bss")
    assert bss is not None and bss.sh_size > 0
    assert elf.vaddr_to_offset(bss.sh_addr + bss.sh_size - 1) is None
    assert elf.read_vaddr(bss.sh_addr, bss.sh_size) == bytes(bss.sh_size)
    assert elf.vaddr_to_offset(0x10) is None
    with pytest.raises(ElfError, match="not in any PT_LOAD"):
        elf.read_vaddr(0x10, 4)


def test_opening_is_lazy() -> None:
    """The build-id comes from the program headers alone; symbols are read on demand."""
    elf = ElfFile.open(LIBC)
    assert elf.build_id
    assert elf._sections is None
    elf.close()
    elf = ElfFile.open(LIBC)
    assert sum(1 for _ in elf.iter_symbols(".dynsym")) > 2000


def test_no_descriptor_is_kept_per_file() -> None:
    before = len(os.listdir("/proc/self/fd"))
    files = [ElfFile.open(LIBC) for _ in range(50)]
    assert all(f.build_id for f in files)
    during = len(os.listdir("/proc/self/fd"))
    for f in files:
        f.close()
    after = len(os.listdir("/proc/self/fd"))
    assert during - before <= 50  # the mapping's own descriptor only
    assert after <= before


def test_close_and_context_manager() -> None:
    with ElfFile.open(LIBC) as elf:
        assert elf.read(0, 4) == b"\x7fELF"
    assert elf.closed
    with pytest.raises(ElfError, match="closed"):
        elf.read(0, 4)
    with pytest.raises(ElfError, match="closed"):
        list(elf.iter_sections())


def test_from_bytes_and_bounds() -> None:
    data = Path(LIBC).read_bytes()
    elf = ElfFile.from_bytes(data, name="libc-copy")
    assert elf.build_id == ElfFile.open(LIBC).build_id
    with pytest.raises(ElfError, match="libc-copy"):
        elf.read(len(data) - 2, 4)
    with pytest.raises(ElfError):
        elf.read(-1, 1)


# -- extended numbering (e_shnum 0, SHN_XINDEX, PN_XNUM) -----------------------------


def test_extended_section_and_segment_counts(programs: dict[str, Path]) -> None:
    data = bytearray(programs["pie"].read_bytes())
    original = ElfFile.from_bytes(bytes(data), name="orig")
    shoff, phnum, shnum, shstrndx = (
        original.e_shoff,
        original.e_phnum,
        original.e_shnum,
        original.e_shstrndx,
    )
    # Section 0 carries the real counts: sh_size = e_shnum, sh_link = e_shstrndx,
    # sh_info = e_phnum.
    struct.pack_into("<Q", data, shoff + 32, shnum)
    struct.pack_into("<I", data, shoff + 40, shstrndx)
    struct.pack_into("<I", data, shoff + 44, phnum)
    struct.pack_into("<H", data, 56, c.PN_XNUM)  # e_phnum
    struct.pack_into("<H", data, 60, 0)  # e_shnum
    struct.pack_into("<H", data, 62, c.SHN_XINDEX)  # e_shstrndx
    patched = ElfFile.from_bytes(bytes(data), name="extended")
    assert patched.num_sections() == shnum
    assert patched.num_segments() == phnum
    assert [s.name for s in patched.iter_sections()][1:] == [
        s.name for s in original.iter_sections()
    ][1:]
    assert len(list(patched.iter_segments())) == phnum
    assert patched.build_id == original.build_id


# -- what is not a usable x86_64 ELF file -----------------------------------------------


def test_not_elf_files(tmp_path: Path) -> None:
    text = tmp_path / "script.sh"
    text.write_text("#!/bin/sh\necho hello\n")
    with pytest.raises(ElfError, match=r"not an ELF file \(starts with b'#!/bin/sh"):
        ElfFile.open(str(text))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ElfError, match=r"not an ELF file \(the file is empty\)"):
        ElfFile.open(str(empty))
    with pytest.raises(ElfError, match="is a directory"):
        ElfFile.open(str(tmp_path))
    with pytest.raises(FileNotFound):
        ElfFile.open(str(tmp_path / "missing"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ElfError, match="not a regular file"):
        ElfFile.open(str(fifo))  # must not block
    with pytest.raises(ElfError, match="not an ELF file"):
        ElfFile.from_bytes(b"\x7fEL", name="short")
    with pytest.raises(ElfError, match="truncated ELF header"):
        ElfFile.from_bytes(b"\x7fELF\x02\x01\x01" + bytes(20), name="short")


def _patched(offset: int, value: bytes) -> bytes:
    data = bytearray(Path(LIBC).read_bytes()[:4096])
    data[offset : offset + len(value)] = value
    return bytes(data)


def test_unsupported_elf_says_what_it_is(tmp_path: Path) -> None:
    copy = tmp_path / "elf32"
    copy.write_bytes(_patched(c.EI_CLASS, bytes([c.ELFCLASS32])))
    with pytest.raises(UnsupportedElf) as info:
        ElfFile.open(str(copy))
    assert "32-bit ELF (ELFCLASS32) is not supported: redhand reads x86_64 ELF64 files" in str(
        info.value
    )
    assert str(copy) in str(info.value)
    with pytest.raises(UnsupportedElf, match=r"AArch64 \(ARM64\) \(e_machine 183\)"):
        ElfFile.from_bytes(_patched(18, struct.pack("<H", c.EM_AARCH64)), name="arm")
    with pytest.raises(UnsupportedElf, match=r"big-endian ELF \(ELFDATA2MSB\)"):
        ElfFile.from_bytes(_patched(c.EI_DATA, bytes([c.ELFDATA2MSB])), name="be")
    with pytest.raises(ElfError, match="invalid ELF class"):
        ElfFile.from_bytes(_patched(c.EI_CLASS, bytes([7])), name="bad")
    assert issubclass(UnsupportedElf, ElfError)


def test_real_32bit_object_if_gcc_can_build_one(tmp_path: Path) -> None:
    src = tmp_path / "x.c"
    src.write_text("int f(void) { return 1; }\n")
    obj = tmp_path / "x.o"
    result = os.system(f"gcc -m32 -c -o {obj} {src} 2>/dev/null")
    if result != 0:
        pytest.skip("gcc -m32 cannot build here; the patched-header test covers ELFCLASS32")
    with pytest.raises(UnsupportedElf, match="ELFCLASS32"):
        ElfFile.open(str(obj))


# -- corrupt files: only redhand's errors, in bounded time -----------------------------


def _walk_bytes(data: bytes, name: str) -> None:
    try:
        elf = ElfFile.from_bytes(data, name=name)
    except OWN_ERRORS:
        return
    with contextlib.suppress(*OWN_ERRORS):
        full_walk(elf)


def test_truncated_files_give_elf_errors(programs: dict[str, Path]) -> None:
    started = time.monotonic()
    for kind in ("pie", "static", "mini"):
        data = programs[kind].read_bytes()
        points = sorted(
            {0, 1, 4, 5, 16, 63, 64, 65, 100, 200, 500}
            | set(range(0, len(data), max(1, len(data) // 150)))
            | {len(data) - 1, len(data) - 64}
        )
        for point in points:
            _walk_bytes(data[:point], f"{kind}[:{point}]")
    libc = Path(LIBC).read_bytes()
    for point in range(0, len(libc), len(libc) // 40):
        _walk_bytes(libc[:point], f"libc[:{point}]")
    assert time.monotonic() - started < 600  # a bound against a runaway loop


def test_truncated_file_on_disk(tmp_path: Path, programs: dict[str, Path]) -> None:
    data = programs["pie"].read_bytes()
    for point in (10, 64, 1000, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{point}"
        path.write_bytes(data[:point])
        try:
            with ElfFile.open(str(path)) as elf:
                full_walk(elf)
        except ElfError as exc:
            assert str(path) in str(exc)


def test_flipped_header_fields(programs: dict[str, Path]) -> None:
    data = programs["pie"].read_bytes()
    elf = ElfFile.from_bytes(data, name="pie")
    interesting = list(range(16, 64))  # every byte of the ELF header after e_ident
    interesting += list(range(elf.e_phoff, elf.e_phoff + 56 * 3))
    interesting += list(range(elf.e_shoff, elf.e_shoff + 64 * 8))
    for offset in interesting:
        for value in (0x00, 0xFF, 0x7F):
            mutated = bytearray(data)
            mutated[offset] = value
            _walk_bytes(bytes(mutated), f"pie@{offset:#x}={value:#x}")


def test_random_mutations_with_fixed_seed(programs: dict[str, Path]) -> None:
    rng = random.Random(0x5EED)
    started = time.monotonic()
    sources = [programs[kind].read_bytes() for kind in ("pie", "stripped", "mini", "zlib")]
    for case in range(400):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 8)):
            where = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.5:
                data[where] = rng.randrange(256)
            elif choice < 0.8:
                # a plausible-looking wrong number in a header-sized field
                size = rng.choice((2, 4, 8))
                value = rng.choice((0, 1, 0x7FFFFFFF, 0xFFFFFFFF, (1 << (8 * size)) - 1))
                value &= (1 << (8 * size)) - 1
                data[where : where + size] = value.to_bytes(size, "little")[: len(data) - where]
            else:
                del data[where : where + rng.randrange(1, 64)]
        _walk_bytes(bytes(data), f"mutation {case}")
    assert time.monotonic() - started < 600  # a bound against a runaway loop


def test_corrupt_notes_keep_earlier_ones(programs: dict[str, Path]) -> None:
    data = bytearray(programs["pie"].read_bytes())
    elf = ElfFile.from_bytes(bytes(data), name="pie")
    notes = list(elf.iter_notes())
    assert len(notes) >= 2
    last = notes[-1]
    struct.pack_into("<I", data, last.offset + 4, 0xFFFFFFF0)  # absurd descsz
    broken = ElfFile.from_bytes(bytes(data), name="broken")
    got: list[Note] = []
    with pytest.raises(ElfError, match="descsz"):
        for note in broken.iter_notes():
            got.append(note)
    assert got == notes[:-1]
