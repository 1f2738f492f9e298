"""DWARF CFI: parsing, the CFA interpreter and the expression evaluator.

The oracle is binutils' ``readelf --debug-dump=frames-interp``: for every FDE
of real binaries (libc, libstdc++, the dynamic linker, C++, Rust, OCaml and
static programs compiled here) each row of our interpreter must match
readelf's table.  Synthetic CFI (assembled .cfi directives, and raw bytes
built below) covers every call-frame instruction, pointer encoding,
augmentation and CIE version that real binaries on this machine lack.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from unwind_helpers import (
    build_all,
    compare_with_readelf,
    missing_tools,
    readelf_frames,
    run,
)

from redhand.elf import ElfFile
from redhand.errors import MemoryReadError
from redhand.target.memory import RegionMemory
from redhand.unwind import CfiError, CfiTable, ExpressionError, RuleKind, evaluate
from redhand.unwind import cfi as cfi_module
from redhand.unwind._reader import PointerBases, Reader

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
LD_SO = "/lib64/ld-linux-x86-64.so.2"

_missing = missing_tools(["gcc", "g++", "readelf", "objcopy", "as", "rustc", "ocamlopt"])
if _missing:
    pytest.fail(f"test prerequisites missing: {', '.join(_missing)}", pytrace=False)


# -- test programs ---------------------------------------------------------------------

CXX_SOURCE = r"""
#include <cstdio>
#include <stdexcept>
struct Guard { ~Guard() { std::puts("unwound"); } };
__attribute__((noinline)) int thrower(int x) {
    if (x > 2) throw std::runtime_error("too big");
    return x;
}
int main(int argc, char **) {
    try { Guard g; return thrower(argc + 3); }
    catch (const std::exception &e) { std::puts(e.what()); }
    return 0;
}
"""

RUST_SOURCE = r"""
fn main() {
    let v: Vec<u64> = (0..10).collect();
    let r = std::panic::catch_unwind(|| {
        if v.len() > 100 { panic!("no") }
        v.iter().sum::<u64>()
    });
    println!("{:?}", r.is_ok());
}
"""

OCAML_SOURCE = r"""
let rec f n = if n = 0 then raise Exit else 1 + f (n - 1)
let () = try print_int (f 10) with Exit -> print_endline "exit"
"""

C_SOURCE = r"""
#include <stdio.h>
__attribute__((noinline)) int leaf(int x) { printf("%d\n", x); return x + 1; }
__attribute__((noinline)) int mid(int x) { return leaf(x * 2) + 3; }
int main(int argc, char **argv) { (void)argv; return mid(argc) & 1; }
"""

# Every call-frame instruction that GNU as can be made to emit, through .cfi
# directives and .cfi_escape; readelf checks what we make of each.
OPS_ASM = r"""
        .text
        .globl _start
        .type _start, @function
_start:
        .cfi_startproc
        .cfi_undefined %rip
        xor %edi, %edi
        mov $60, %eax
        syscall
        .cfi_endproc

        .globl every_op
        .type every_op, @function
every_op:
        .cfi_startproc
        push %rbp
        .cfi_def_cfa_offset 16
        .cfi_offset %rbp, -16
        nop
        .cfi_escape 0x12, 0x07, 0x7c            # DW_CFA_def_cfa_sf rsp, -4 * -8
        nop
        .cfi_escape 0x13, 0x7d                  # DW_CFA_def_cfa_offset_sf -3 * -8
        nop
        .cfi_escape 0x14, 0x03, 0x02            # DW_CFA_val_offset rbx, 2 * -8
        nop
        .cfi_escape 0x15, 0x0c, 0x7f            # DW_CFA_val_offset_sf r12, -1 * -8
        nop
        .cfi_escape 0x05, 0x0d, 0x03            # DW_CFA_offset_extended r13, 3 * -8
        nop
        .cfi_escape 0x2f, 0x0e, 0x04            # DW_CFA_GNU_negative_offset_extended r14
        nop
        .cfi_escape 0x16, 0x0f, 0x02, 0x77, 0x10  # DW_CFA_val_expression r15 (breg7 16)
        nop
        .cfi_escape 0x10, 0x03, 0x02, 0x76, 0x08  # DW_CFA_expression rbx (breg6 8)
        nop
        .cfi_same_value %r12
        nop
        .cfi_escape 0x06, 0x0d                  # DW_CFA_restore_extended r13
        nop
        .cfi_register %rbp, %r10
        nop
        .cfi_undefined %r14
        nop
        .cfi_remember_state
        .cfi_def_cfa_register %rbp
        .cfi_offset %r15, -24
        nop
        .cfi_restore_state
        .cfi_escape 0x2e, 0x10                  # DW_CFA_GNU_args_size 16
        .skip 70000, 0x90                       # far enough for DW_CFA_advance_loc4
        .cfi_escape 0x0f, 0x03, 0x77, 0x08, 0x06  # DW_CFA_def_cfa_expression (breg7 8; deref)
        nop
        .cfi_def_cfa %rsp, 8
        .cfi_restore %rbp
        .cfi_escape 0xd0                        # DW_CFA_restore rip
        .cfi_offset 64, -32                     # DW_CFA_offset_extended (mxcsr)
        .cfi_restore 64                         # DW_CFA_restore_extended
        ret
        .cfi_endproc

        .globl trampoline
        .type trampoline, @function
        nop
trampoline:
        .cfi_startproc simple
        .cfi_signal_frame
        .cfi_def_cfa %rsp, 8
        .cfi_offset %rip, -8
        nop
        ret
        .cfi_endproc

        .globl with_personality
        .type with_personality, @function
with_personality:
        .cfi_startproc
        .cfi_personality 0x9b, DW.ref.pers
        .cfi_lsda 0x1b, lsda1
        push %rbx
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbx, 0
        pop %rbx
        .cfi_adjust_cfa_offset -8
        ret
        .cfi_endproc

        .globl with_absolute_personality
        .type with_absolute_personality, @function
with_absolute_personality:
        .cfi_startproc
        .cfi_personality 0x00, pers
        .cfi_lsda 0x03, lsda1
        ret
        .cfi_endproc

        .globl pers
pers:   ret

        .section .rodata
lsda1:  .long 0
        .data
        .align 8
DW.ref.pers:
        .quad pers
"""


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Build the test programs once, in parallel."""
    root = tmp_path_factory.mktemp("cfi")
    sources = {
        "cxx.cc": CXX_SOURCE,
        "rust.rs": RUST_SOURCE,
        "ocaml.ml": OCAML_SOURCE,
        "prog.c": C_SOURCE,
        "ops.s": OPS_ASM,
    }
    for name, text in sources.items():
        (root / name).write_text(text)
    out = {name: root / name for name in ("cxx", "rust", "ocaml", "static", "debugframe", "ops")}
    jobs = [
        ["g++", "-O2", "-o", str(out["cxx"]), str(root / "cxx.cc")],
        ["gcc", "-O2", "-static", "-o", str(out["static"]), str(root / "prog.c")],
        [
            "gcc", "-O2", "-g", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
            "-o", str(out["debugframe"]), str(root / "prog.c"),
        ],
        [
            "gcc", "-nostdlib", "-static", "-no-pie", "-Wl,--eh-frame-hdr",
            "-o", str(out["ops"]), str(root / "ops.s"),
        ],
    ]  # fmt: skip
    if shutil.which("rustc"):
        jobs.append(["rustc", "-O", "-o", str(out["rust"]), str(root / "rust.rs")])
    if shutil.which("ocamlopt"):
        jobs.append(["ocamlopt", "-o", str(out["ocaml"]), str(root / "ocaml.ml")])
    build_all(jobs)
    # ocamlopt leaves its intermediate files next to the source; that is fine in a temp dir.
    return {name: path for name, path in out.items() if path.exists()}


def _binary(programs: dict[str, Path], name: str) -> str:
    if name in ("libc", "libstdc++", "ld.so"):
        path = {"libc": LIBC, "libstdc++": LIBSTDCXX, "ld.so": LD_SO}[name]
        if not Path(path).exists():
            pytest.fail(f"{path} is missing (g++ installs libstdc++)")
        return path
    if name not in programs:
        tool = {"rust": "rustc", "ocaml": "ocamlopt"}.get(name, name)
        pytest.fail(f"{name} test program was not built: is {tool} installed?", pytrace=False)
    return str(programs[name])


# -- readelf as the oracle -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["libc", "libstdc++", "ld.so", "cxx", "rust", "ocaml", "static", "debugframe", "ops"],
)
def test_rows_match_readelf(programs: dict[str, Path], name: str) -> None:
    path = _binary(programs, name)
    oracle = readelf_frames(path)
    table = CfiTable.from_elf(ElfFile.open(path))
    assert table is not None
    # Every FDE of the smaller files; every other one of the two big libraries.
    every = 2 if name in ("libc", "libstdc++") else 1
    fdes, rows, problems = compare_with_readelf(table, oracle, every=every)
    assert not problems, "\n".join(problems[:20])
    assert fdes > 0 and rows >= fdes
    if name == "static":
        assert not table.uses_search_table  # no .eh_frame_hdr: the linear index
    elif name != "debugframe":
        assert table.uses_search_table


def test_synthetic_program_uses_every_cfa_instruction(programs: dict[str, Path]) -> None:
    """The assembled CFI (checked against readelf above) holds every instruction but set_loc."""
    text = run(["readelf", "--debug-dump=frames", "-W", str(programs["ops"])]).stdout
    wanted = {
        "advance_loc", "advance_loc4", "offset", "offset_extended", "restore",
        "restore_extended", "undefined", "same_value", "register", "remember_state",
        "restore_state", "def_cfa", "def_cfa_sf", "def_cfa_register", "def_cfa_offset",
        "def_cfa_offset_sf", "def_cfa_expression", "expression", "val_offset",
        "val_offset_sf", "val_expression", "GNU_args_size", "GNU_negative_offset_extended",
        "nop",
    }  # fmt: skip
    seen = {word.removeprefix("DW_CFA_").rstrip(":") for word in text.split()}
    assert wanted <= seen, wanted - seen
    table = CfiTable.from_elf(ElfFile.open(str(programs["ops"])))
    assert table is not None
    every_op = ElfFile.open(str(programs["ops"]))
    symbols = {symbol.name: symbol.value for symbol in every_op.iter_symbols()}
    start = symbols["every_op"]
    row = table.row_for(start + 9)
    assert row is not None
    fde, _ = row
    assert fde.pc_begin == start
    # DW_CFA_GNU_args_size is kept with the row.
    far = table.row_for(start + 20)
    assert far is not None and far[1].args_size == 16
    tramp = table.find(symbols["trampoline"])
    assert tramp is not None and tramp.signal_frame
    assert table.find(symbols["trampoline"] - 1) is None
    personality = table.find(symbols["with_personality"])
    assert personality is not None and personality.lsda is not None
    assert personality.cie.augmentation == "zPLR"
    absolute = table.find(symbols["with_absolute_personality"])
    assert absolute is not None and absolute.lsda is not None
    outermost = table.row_for(symbols["_start"])
    assert outermost is not None
    assert outermost[1].registers[16].kind is RuleKind.UNDEFINED


# -- synthetic CFI from raw bytes: every pointer encoding, CIE version, augmentation ------


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


_FORMATS = {0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q", 0x00: "<Q"}


def encode_value(value: int, encoding: int) -> bytes:
    fmt = encoding & 0x0F
    if fmt == 0x01:
        return uleb(value)
    if fmt == 0x09:
        return sleb(value)
    return struct.pack(_FORMATS[fmt], value)


def encode_pointer(value: int, encoding: int, field: int, base: int = 0) -> bytes:
    application = encoding & 0x70
    if application == 0x10:
        value -= field
    elif application in (0x20, 0x30):
        value -= base
    return encode_value(value, encoding)


class FrameBuilder:
    """Writes CIEs and FDEs byte by byte, into .eh_frame or .debug_frame layout."""

    def __init__(self, *, eh: bool, vaddr: int = 0, base: int = 0) -> None:
        self.eh = eh
        self.vaddr = vaddr
        self.base = base  # the text/data base for textrel and datarel pointers
        self.data = bytearray()
        self.cies: dict[int, tuple[bytes, int, bool]] = {}

    def _entry(self, body: bytes, dwarf64: bool) -> int:
        offset = len(self.data)
        pad = (-(len(body) + (12 if dwarf64 else 4))) % 8 if self.eh else 0
        body += b"\0" * pad  # DW_CFA_nop
        if dwarf64:
            self.data += struct.pack("<IQ", 0xFFFFFFFF, len(body))
        else:
            self.data += struct.pack("<I", len(body))
        self.data += body
        return offset

    def cie(
        self,
        *,
        version: int = 1,
        augmentation: bytes = b"zR",
        aug_data: bytes = b"\x1b",
        ra: int = 16,
        instructions: bytes = b"\x0c\x07\x08\x90\x01",  # def_cfa rsp+8; offset rip at cfa-8
        dwarf64: bool = False,
        fde_encoding: int = 0x1B,
    ) -> int:
        ident = b"\0\0\0\0" if self.eh else b"\xff" * (8 if dwarf64 else 4)
        body = ident + bytes([version]) + augmentation + b"\0"
        if augmentation == b"eh":
            body += b"\0" * 8
        if version == 4:
            body += b"\x08\x00"
        body += uleb(1) + sleb(-8) + (bytes([ra]) if version == 1 else uleb(ra))
        if augmentation.startswith(b"z"):
            body += uleb(len(aug_data)) + aug_data
        body += instructions
        offset = self._entry(body, dwarf64)
        self.cies[offset] = (augmentation, fde_encoding, dwarf64)
        return offset

    def fde(
        self,
        cie: int,
        pc_begin: int,
        pc_range: int,
        instructions: Callable[[int], bytes],
        *,
        aug_data: bytes = b"",
    ) -> int:
        augmentation, encoding, dwarf64 = self.cies[cie]
        offset = len(self.data)
        id_field = offset + (12 if dwarf64 else 4)
        size = 8 if dwarf64 else 4
        pointer = id_field - cie if self.eh else cie
        body = pointer.to_bytes(size, "little")
        field = self.vaddr + id_field + size
        body += encode_pointer(pc_begin, encoding, field, self.base)
        body += encode_value(pc_range, encoding & 0x0F)
        if augmentation.startswith(b"z"):
            body += uleb(len(aug_data)) + aug_data
        code_vaddr = self.vaddr + id_field + len(body)
        body += instructions(code_vaddr)
        return self._entry(body, dwarf64)

    def terminate(self) -> bytes:
        if self.eh:
            self.data += b"\0\0\0\0"
        return bytes(self.data)


def standard_program(encoding: int, pc_begin: int, base: int = 0) -> Callable[[int], bytes]:
    """advance 1; cfa+16; rbx at cfa-16; advance 4; set_loc pc_begin+0x20; cfa+8."""

    def build(code_vaddr: int) -> bytes:
        head = b"\x41\x0e\x10\x83\x02\x44"
        set_loc_field = code_vaddr + len(head) + 1
        set_loc = b"\x01" + encode_pointer(pc_begin + 0x20, encoding, set_loc_field, base)
        return head + set_loc + b"\x0e\x08"

    return build


# The FDE pointer encodings readelf decodes like the psABI (it has no LEB128 or
# aligned pointers, and no data or text base: those are checked separately).
READELF_ENCODINGS = [0x00, 0x02, 0x03, 0x04, 0x0A, 0x0B, 0x0C, 0x1B, 0x1C, 0x13, 0x12, 0x3B, 0x23]
OTHER_ENCODINGS = [0x01, 0x09, 0x19, 0x11, 0x31, 0x21]


def _synthetic(encodings: list[int], *, vaddr: int = 0, base: int = 0) -> tuple[bytes, bytes]:
    """An .eh_frame with one CIE+FDE per FDE encoding and every CIE flavour, and a .debug_frame."""
    eh = FrameBuilder(eh=True, vaddr=vaddr, base=base)
    pc = 0x1000
    for encoding in encodings:
        cie = eh.cie(aug_data=bytes([encoding]), fde_encoding=encoding)
        eh.fde(cie, pc, 0x40, standard_program(encoding, pc, base))
        pc += 0x100
    # CIE version 3 with personality, LSDA and signal-frame augmentations.
    for aug, data in (
        (b"zPLR", b"\x9b\x10\x00\x00\x00\x1b\x1b"),
        (b"zPLR", b"\x00" + (0x4000).to_bytes(8, "little") + b"\x03\x1b"),
        (b"zLRS", b"\x0c\x1b"),
        (b"zRB", b"\x1b"),
        (b"zRSBG", b"\x1b"),
    ):
        lsda_encoding = data[-2] if b"L" in aug else None
        cie = eh.cie(version=3, augmentation=aug, aug_data=data)
        lsda = b""
        if lsda_encoding is not None:
            lsda = encode_value(0x5000, lsda_encoding) if lsda_encoding != 0x1B else b"\0" * 4
        eh.fde(cie, pc, 0x40, standard_program(0x1B, pc), aug_data=lsda)
        pc += 0x100
    # No augmentation at all: absolute 8-byte pointers; and the pre-2000 "eh".
    for aug in (b"", b"eh"):
        cie = eh.cie(augmentation=aug, aug_data=b"", fde_encoding=0x00)
        eh.fde(cie, pc, 0x40, standard_program(0x00, pc))
        pc += 0x100
    eh_frame = eh.terminate()

    debug = FrameBuilder(eh=False)
    for version, dwarf64 in ((1, False), (3, False), (4, False), (1, True), (4, True)):
        cie = debug.cie(version=version, augmentation=b"", dwarf64=dwarf64, fde_encoding=0x00)
        debug.fde(cie, pc, 0x40, standard_program(0x00, pc))
        pc += 0x100
    return eh_frame, bytes(debug.data)


def _assemble(tmp_path: Path, sections: dict[str, bytes]) -> Path:
    lines = []
    for name, data in sections.items():
        lines.append(f'.section {name},"{"a" if name == ".eh_frame" else ""}",@progbits')
        for index in range(0, len(data), 16):
            lines.append(".byte " + ",".join(str(b) for b in data[index : index + 16]))
    source = tmp_path / "raw.s"
    source.write_text("\n".join(lines) + "\n")
    obj = tmp_path / "raw.o"
    run(["as", "-o", str(obj), str(source)])
    return obj


def _shape(table: CfiTable) -> list[tuple[object, ...]]:
    """Each FDE's rows relative to its start: must be the same for every encoding."""
    shapes: list[tuple[object, ...]] = []
    for fde in table.iter_fdes():
        rows = tuple(
            (row.start - fde.pc_begin, row.end - fde.pc_begin, str(row.cfa), dict(row.registers))
            for row in fde.rows()
        )
        shapes.append((fde.pc_end - fde.pc_begin, rows))
    return shapes


def test_synthetic_encodings_match_readelf(tmp_path: Path) -> None:
    eh_frame, debug_frame = _synthetic(READELF_ENCODINGS)
    obj = _assemble(tmp_path, {".eh_frame": eh_frame, ".debug_frame": debug_frame})
    oracle = readelf_frames(obj)
    table = CfiTable.from_bytes(
        eh_frame=eh_frame, debug_frame=debug_frame, text_vaddr=0, got_vaddr=0
    )
    assert table is not None
    fdes, _, problems = compare_with_readelf(table, oracle)
    assert not problems, "\n".join(problems[:20])
    assert fdes == len(READELF_ENCODINGS) + 5 + 2 + 5
    shapes = _shape(table)
    assert all(shape == shapes[0] for shape in shapes), "an encoding changed the rows"
    # The file read through ElfFile gives the same FDEs.
    from_elf = CfiTable.from_elf(ElfFile.open(str(obj)))
    assert from_elf is not None
    assert [(f.pc_begin, f.pc_end) for f in from_elf.iter_fdes()] == [
        (f.pc_begin, f.pc_end) for f in table.iter_fdes()
    ]


@pytest.mark.parametrize("base", [0, 0x200])
def test_every_pointer_encoding(base: int) -> None:
    """LEB128 pointers, pcrel from a nonzero address, data- and text-relative pointers."""
    vaddr = 0x200  # below every pc, so pc-relative unsigned pointers stay positive
    eh_frame, debug_frame = _synthetic(READELF_ENCODINGS + OTHER_ENCODINGS, vaddr=vaddr, base=base)
    table = CfiTable.from_bytes(
        eh_frame=eh_frame,
        eh_frame_vaddr=vaddr,
        debug_frame=debug_frame,
        text_vaddr=base,
        got_vaddr=base,
    )
    assert table is not None
    fdes = list(table.iter_fdes())
    assert [fde.pc_begin for fde in fdes] == [0x1000 + 0x100 * i for i in range(len(fdes))]
    shapes = _shape(table)
    assert all(shape == shapes[0] for shape in shapes)
    for fde in fdes:
        assert table.find(fde.pc_begin + 0x3F) is fde
        assert table.find(fde.pc_begin + 0x40) is not fde
    assert [fde.cie.version for fde in fdes[-5:]] == [1, 3, 4, 1, 4]
    signal = [fde.signal_frame for fde in fdes]
    assert signal.count(True) == 2


def test_pointer_reader_edge_cases() -> None:
    bases = PointerBases(read_pointer=lambda address: address + 0x10)
    # indirect: the value is read from the computed slot
    assert Reader(struct.pack("<I", 0x100)).pointer(0x83, 0, bases) == 0x110
    # aligned: skip to the next 8-byte boundary, then an absolute pointer
    data = b"\xaa" * 8 + struct.pack("<Q", 0x1234)
    reader = Reader(data, 2)
    assert reader.pointer(0x50, 0x1002, bases) == 0x1234 and reader.pos == len(data)
    # funcrel
    assert Reader(b"\x10").pointer(0x41, 0, bases, func=0x500) == 0x510
    for encoding, data in ((0x07, b"\0" * 8), (0x70, b"\0" * 8), (0xFF, b"")):
        with pytest.raises(CfiError):
            Reader(data).pointer(encoding, 0, bases)
    with pytest.raises(CfiError):
        Reader(b"\x80" * 12).uleb()
    with pytest.raises(CfiError):
        Reader(b"\x80\x80").sleb()


def test_hdr_table_without_sections_and_bad_hdr() -> None:
    """A bad .eh_frame_hdr is ignored for the linear index; omit-encoded tables too."""
    eh_frame, _ = _synthetic(READELF_ENCODINGS)
    vaddr = 0x2000
    hdr = bytes([1, 0x1B, 0xFF, 0xFF]) + struct.pack("<i", 0 - 4)  # eh_frame_ptr: pcrel
    table = CfiTable.from_bytes(
        eh_frame=eh_frame, eh_frame_vaddr=vaddr, eh_frame_hdr=hdr, eh_frame_hdr_vaddr=vaddr
    )
    assert table is not None and not table.uses_search_table
    assert table.find(0x1001) is not None
    bad = CfiTable.from_bytes(eh_frame=eh_frame, eh_frame_hdr=b"\x02junk")
    assert bad is not None and not bad.uses_search_table
    assert bad.find(0x1001) is not None


# -- .eh_frame_hdr against a linear walk ---------------------------------------------------


@pytest.mark.parametrize("name", ["libc", "libstdc++", "ld.so", "cxx", "rust", "ocaml", "ops"])
def test_hdr_lookups_agree_with_linear_walk(programs: dict[str, Path], name: str) -> None:
    path = _binary(programs, name)
    hdr = CfiTable.from_elf(ElfFile.open(path))
    linear = CfiTable.from_elf(ElfFile.open(path), use_eh_frame_hdr=False)
    assert hdr is not None and linear is not None
    assert hdr.uses_search_table and not linear.uses_search_table
    fdes = list(linear.iter_fdes())
    low = min(fde.pc_begin for fde in fdes)
    high = max(fde.pc_end for fde in fdes)
    rng = random.Random(1234)
    pcs = [rng.randrange(low - 64, high + 64) for _ in range(1500)]
    for fde in rng.sample(fdes, min(300, len(fdes))):
        pcs += [fde.pc_begin, fde.pc_end - 1, fde.pc_end, fde.pc_begin - 1]
    found = 0
    for pc in pcs:
        a, b = hdr.find(pc), linear.find(pc)
        assert (a and a.offset) == (b and b.offset), hex(pc)
        found += a is not None
    assert found > len(pcs) // 4


def test_section_headers_stripped(tmp_path: Path) -> None:
    """With no section headers the PT_GNU_EH_FRAME segment leads to .eh_frame."""
    data = bytearray(Path(LIBC).read_bytes())
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff
    struct.pack_into("<HHH", data, 0x3A, 0, 0, 0)  # e_shentsize, e_shnum, e_shstrndx
    stripped_path = tmp_path / "libc-noshdr.so"
    stripped_path.write_bytes(bytes(data))
    stripped = ElfFile.open(str(stripped_path))
    assert stripped.get_section_by_name(".eh_frame") is None
    table = CfiTable.from_elf(stripped)
    normal = CfiTable.from_elf(ElfFile.open(LIBC))
    assert table is not None and normal is not None and table.uses_search_table
    rng = random.Random(7)
    for _ in range(500):
        pc = rng.randrange(0x26000, 0x1A0000)
        a, b = table.row_for(pc), normal.row_for(pc)
        assert (a and (a[0].offset, a[1])) == (b and (b[0].offset, b[1]))


def test_debug_frame_from_separate_debug_file(programs: dict[str, Path], tmp_path: Path) -> None:
    program = programs["debugframe"]
    debug = tmp_path / "prog.debug"
    stripped = tmp_path / "prog.stripped"
    run(["objcopy", "--only-keep-debug", str(program), str(debug)])
    run(["objcopy", "--strip-debug", str(program), str(stripped)])
    symbols = {s.name: s.value for s in ElfFile.open(str(program)).iter_symbols()}
    alone = CfiTable.from_elf(ElfFile.open(str(stripped)))
    assert alone is not None
    assert alone.find(symbols["mid"]) is None  # only .debug_frame describes it
    with_debug = CfiTable.from_elf(ElfFile.open(str(stripped)), [ElfFile.open(str(debug))])
    full = CfiTable.from_elf(ElfFile.open(str(program)))
    assert with_debug is not None and full is not None
    for name in ("mid", "leaf", "main"):
        fde = with_debug.find(symbols[name] + 1)
        assert fde is not None and fde.section.startswith(".debug_frame")
        reference = full.find(symbols[name] + 1)
        assert reference is not None
        assert fde.rows() == reference.rows()


# -- the expression evaluator ----------------------------------------------------------------


def _eval(code: bytes, regs: dict[int, int] | None = None, **kwargs: object) -> int:
    memory = RegionMemory([(0x1000, bytes(range(256)) * 2)])
    values = regs or {}

    def register(number: int) -> int:
        if number not in values:
            raise ExpressionError(f"no register {number}")
        return values[number]

    return evaluate(code, register, memory, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (b"\x30", 0),  # lit0
        (b"\x4f", 31),  # lit31
        (b"\x08\xff", 0xFF),  # const1u
        (b"\x09\xff", (1 << 64) - 1),  # const1s -1
        (b"\x0a\x34\x12", 0x1234),  # const2u
        (b"\x0b\xfe\xff", (1 << 64) - 2),  # const2s
        (b"\x0c\x78\x56\x34\x12", 0x12345678),  # const4u
        (b"\x0d\xff\xff\xff\xff", (1 << 64) - 1),  # const4s
        (b"\x0e" + (5).to_bytes(8, "little"), 5),  # const8u
        (b"\x0f" + (-5).to_bytes(8, "little", signed=True), (1 << 64) - 5),  # const8s
        (b"\x10\xe5\x8e\x26", 624485),  # constu
        (b"\x11\x7f", (1 << 64) - 1),  # consts -1
        (b"\x31\x32\x12\x22\x22", 5),  # 1 2 dup plus plus
        (b"\x31\x32\x13", 1),  # drop
        (b"\x31\x32\x14\x22\x22", 4),  # over: 1 2 1
        (b"\x31\x32\x33\x15\x02", 1),  # pick 2
        (b"\x31\x32\x16\x1c", 1),  # swap: 2 - 1
        (b"\x31\x32\x33\x17\x1c\x1c", 0),  # rot: 3 1 2 -> 3 - (1 - 2)... checked below
        (b"\x11\x7b\x19", 5),  # abs(-5)
        (b"\x3c\x36\x1a", 4),  # 12 & 6
        (b"\x11\x79\x32\x1b", (1 << 64) - 3),  # -7 / 2 = -3
        (b"\x37\x32\x1d", 1),  # 7 mod 2
        (b"\x37\x33\x1e", 21),  # mul
        (b"\x37\x1f", (1 << 64) - 7),  # neg
        (b"\x30\x20", (1 << 64) - 1),  # not
        (b"\x3c\x33\x21", 15),  # or
        (b"\x37\x23\x10", 23),  # plus_uconst 16
        (b"\x31\x34\x24", 16),  # shl
        (b"\x40\x32\x25", 4),  # shr
        (b"\x11\x70\x32\x26", (1 << 64) - 4),  # shra(-16, 2)
        (b"\x3c\x36\x27", 10),  # xor
        (b"\x31\x31\x29", 1),  # eq
        (b"\x11\x7f\x30\x2a", 0),  # ge: -1 >= 0 is false (signed)
        (b"\x32\x31\x2b", 1),  # gt
        (b"\x31\x32\x2c", 1),  # le
        (b"\x32\x31\x2d", 0),  # lt
        (b"\x31\x32\x2e", 1),  # ne
        (b"\x31\x28\x02\x00\x35\x96\x33", 3),  # bra taken over "lit5 nop"
        (b"\x30\x28\x01\x00\x96\x33", 3),  # bra not taken
        (b"\x2f\x01\x00\x35\x36", 6),  # skip lit5
        (b"\x03" + (0x100).to_bytes(8, "little"), 0x1100),  # addr + bias
        (b"\x0a\x10\x10\x06", int.from_bytes(bytes(range(16, 24)), "little")),  # deref
        (b"\x0a\x10\x10\x94\x02", 0x1110),  # deref_size 2
        (b"\x77\x08", 0x1008),  # breg7 8
        (b"\x57", 0x1000),  # reg7 (its value)
        (b"\x92\x10\x7f", 0x401000 - 1),  # bregx rip -1
        (b"\x90\x10", 0x401000),  # regx rip
        (b"\x9c", 0x2000),  # call_frame_cfa
    ],
)
def test_expression_operations(code: bytes, expected: int) -> None:
    result = _eval(code, {7: 0x1000, 16: 0x401000}, bias=0x1000, cfa=0x2000)
    if code == b"\x31\x32\x33\x17\x1c\x1c":
        # rot turns (1 2 3) into (3 1 2); then 1 - 2 and 3 - that.
        assert result == (3 - ((1 - 2) & ((1 << 64) - 1))) & ((1 << 64) - 1)
    else:
        assert result == expected


@pytest.mark.parametrize("offset", range(16))
def test_plt_expression(offset: int) -> None:
    """The PLT entries' CFA: rsp + 8, plus 8 once the push at offset 6 (lazy stubs: 11) ran."""
    for lit, threshold in ((0x3A, 10), (0x3B, 11)):
        code = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, lit, 0x2A, 0x33, 0x24, 0x22])
        rip = 0x401020 + offset
        cfa = _eval(code, {7: 0x7000, 16: rip})
        assert cfa == 0x7008 + (8 if offset >= threshold else 0)


def test_restore_rt_expression() -> None:
    memory = RegionMemory([(0x7000, (0x7FFE0000).to_bytes(8, "little") * 40)])
    cfa = evaluate(b"\x77\xa0\x01\x06", lambda n: 0x7000, memory)
    assert cfa == 0x7FFE0000


@pytest.mark.parametrize(
    "code",
    [
        b"\x2f\xfd\xff",  # skip -3: an endless loop
        b"\x30\x28\xfd\xff",  # lit0; bra: pops, not taken, then stack empty
        b"\x31\x2f\x00\x00" * 2000,
        b"\x22",  # plus on an empty stack
        b"\x2f\x10\x00",  # skip out of the expression
        b"\x94\x03",  # deref_size 3
        b"\x18",  # xderef: unsupported
        b"\xe0",  # GNU_push_tls_address: unsupported
        b"\x0e\x01\x02",  # truncated const8u
        b"\x31\x32\x1b\x30\x1b",  # division by zero
        b"\x71\x00",  # breg1: unknown register
        b"",  # empty: nothing on the stack
        b"\x31\x12" * 300,  # stack overflow
        b"\x9c",  # call_frame_cfa without a CFA
    ],
)
def test_bad_expressions_raise_expression_error(code: bytes) -> None:
    with pytest.raises(ExpressionError):
        _eval(code, {7: 0x1000})


def test_expression_memory_errors_pass_through() -> None:
    with pytest.raises(MemoryReadError):
        _eval(b"\x30\x06")  # deref of address 0


# -- corrupt CFI -------------------------------------------------------------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:  # truncate
        return bytes(buf[: rng.randrange(len(buf))])
    if kind == 1:  # random bytes
        for _ in range(rng.randrange(1, 16)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 2:  # a length field made huge or tiny
        position = rng.randrange(0, len(buf) - 4) & ~3
        struct.pack_into("<I", buf, position, rng.choice([0, 1, 3, 0xFFFFFFFF, 0x7FFFFFFF]))
    elif kind == 3:  # a run of one byte (LEB128 continuations, advance ops)
        position = rng.randrange(len(buf))
        run_length = rng.randrange(1, 64)
        buf[position : position + run_length] = bytes([rng.choice([0x80, 0xFF, 0x0A, 0x0B])]) * (
            run_length
        )
    else:  # bit flips
        for _ in range(rng.randrange(1, 8)):
            position = rng.randrange(len(buf))
            buf[position] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _exercise(table: CfiTable | None, pcs: list[int], walk: int) -> None:
    if table is None:
        return
    for pc in pcs:
        with contextlib.suppress(CfiError):
            table.row_for(pc)
    with contextlib.suppress(CfiError):
        for count, fde in enumerate(table.iter_fdes()):
            if count >= walk:
                break
            with contextlib.suppress(CfiError):
                fde.rows()


def test_corrupt_cfi_raises_only_cfi_error(programs: dict[str, Path]) -> None:
    rng = random.Random(20240601)
    sources = []
    for path in (str(programs["ocaml"]) if "ocaml" in programs else LD_SO, LIBC):
        elf = ElfFile.open(path)
        eh = elf.get_section_by_name(".eh_frame")
        hdr = elf.get_section_by_name(".eh_frame_hdr")
        assert eh is not None and hdr is not None
        clean = CfiTable.from_elf(elf)
        assert clean is not None
        fdes = list(clean.iter_fdes())
        pcs = [rng.choice(fdes).pc_begin + rng.randrange(16) for _ in range(20)]
        sources.append((eh, hdr, pcs))
    slowest = 0.0
    started = time.perf_counter()
    for case in range(300):
        eh, hdr, pcs = sources[case % 2]
        eh_data, hdr_data = eh.data(), hdr.data()
        target = rng.randrange(3)
        if target in (0, 2):
            eh_data = _mutate(eh_data, rng)
        if target in (1, 2):
            hdr_data = _mutate(hdr_data, rng)
        begin = time.perf_counter()
        try:
            table = CfiTable.from_bytes(
                eh_frame=eh_data,
                eh_frame_vaddr=eh.sh_addr,
                eh_frame_hdr=hdr_data,
                eh_frame_hdr_vaddr=hdr.sh_addr,
            )
            _exercise(table, pcs, 25)
        except CfiError:
            pass
        slowest = max(slowest, time.perf_counter() - begin)
    # Bounds against a runaway loop, generous for a busy machine.
    assert slowest < 30, f"one corrupt case took {slowest:.2f} s"
    assert time.perf_counter() - started < 600


def test_corrupt_synthetic_cfi_raises_only_cfi_error() -> None:
    """Every CIE flavour and pointer encoding, in .eh_frame and .debug_frame, damaged."""
    rng = random.Random(5)
    eh_frame, debug_frame = _synthetic(READELF_ENCODINGS + OTHER_ENCODINGS, vaddr=0x200)
    for _ in range(200):
        eh, debug = _mutate(eh_frame, rng), _mutate(debug_frame, rng)
        try:
            table = CfiTable.from_bytes(eh_frame=eh, eh_frame_vaddr=0x200, debug_frame=debug)
            _exercise(table, [0x1000 + 0x100 * i + 4 for i in range(30)], 40)
        except CfiError:
            pass


def _constant_program(program: bytes) -> Callable[[int], bytes]:
    return lambda _vaddr: program


def test_hostile_cfa_programs() -> None:
    """Unbalanced state stacks, unknown ops, absurd registers: CfiError, quickly."""
    programs = [
        b"\x0b",  # restore_state without remember_state
        b"\x0a" * 100,  # remember_state nested too deep
        b"\x3f",  # unknown opcode
        b"\x05\xff\xff\xff\x7f\x01",  # offset_extended for register 2^28-1
        b"\x0f\x10\x00",  # def_cfa_expression longer than the program
        b"\x2d",  # DW_CFA_GNU_window_save: SPARC only
        b"\x41\x0e\x10\x0b",  # restore_state after an advance
    ]
    for program in programs:
        eh = FrameBuilder(eh=True)
        cie = eh.cie()
        eh.fde(cie, 0x1000, 0x40, _constant_program(program))
        table = CfiTable.from_bytes(eh_frame=eh.terminate())
        assert table is not None
        with pytest.raises(CfiError):
            table.row_for(0x1001)


# -- cost ----------------------------------------------------------------------------------------


def test_lookup_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cold lookups parse one FDE each; repeated lookups parse nothing (dictionary hits).

    What a lookup costs in time is a benchmark's business, not a test's.
    """
    table = CfiTable.from_elf(ElfFile.open(LIBC))
    assert table is not None
    fdes = list(CfiTable.from_elf(ElfFile.open(LIBC)).iter_fdes())  # type: ignore[union-attr]
    rng = random.Random(3)
    pcs = [fde.pc_begin + (fde.pc_end - fde.pc_begin) // 2 for fde in rng.sample(fdes, 1000)]
    parsed: list[int] = []
    real_parse = cfi_module._FrameSection._parse_fde

    def counting_parse(self: object, offset: int) -> object:
        parsed.append(offset)
        return real_parse(self, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(cfi_module._FrameSection, "_parse_fde", counting_parse)
    for pc in pcs:
        assert table.row_for(pc) is not None
    assert len(parsed) <= len(pcs)
    assert len(set(parsed)) == len(pcs)  # each pc's own FDE, once
    parsed.clear()
    for _ in range(3):
        for pc in pcs:
            assert table.row_for(pc) is not None
    assert parsed == []


def test_no_cfi_gives_none(tmp_path: Path) -> None:
    obj = tmp_path / "empty.o"
    source = tmp_path / "empty.s"
    source.write_text(".text\nnop\n")
    subprocess.run(["as", "-o", str(obj), str(source)], check=True)
    assert CfiTable.from_elf(ElfFile.open(str(obj))) is None
