"""redhand linkage: a file's imports and PLT against readelf and objdump; a process's GOT
slots against the dynamic linker's own account of its bindings (LD_DEBUG=bindings); real
LD_PRELOAD interposers; programs that hook their own GOT; damaged input."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import compile_c
from watch_helpers import Program, redhand

import redhand as api

LINKED = ["-O1", "-g", "-Wl,--no-as-needed"]
PLUGIN = ["-O1", "-g", "-shared", "-fPIC", "-Wl,--no-as-needed", "-lm"]
GOOD = {"bound", "ifunc", "interposed"}
MULTIARCH = "/usr/lib/x86_64-linux-gnu"
INTERPOSERS = {
    "libfaketime": (f"{MULTIARCH}/faketime/libfaketime.so.1", {"FAKETIME": "2020-01-01 00:00:00"}),
    "libeatmydata": (f"{MULTIARCH}/libeatmydata.so.1", {}),
    "jemalloc": (f"{MULTIARCH}/libjemalloc.so.2", {}),
    "tcmalloc": (f"{MULTIARCH}/libtcmalloc_minimal.so.4", {}),
    "mimalloc": (f"{MULTIARCH}/libmimalloc.so.2", {}),
}


def linkage_of(what: str | int, *options: str) -> dict[str, object]:
    result = redhand("linkage", str(what), "--json", *options)
    assert result.returncode in (0, 15), result.stderr
    assert "Traceback" not in result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def slots(document: dict[str, object]) -> list[dict[str, object]]:
    found: list[dict[str, object]] = document["slots"]  # type: ignore[assignment]
    return found


def same_file(a: str, b: str) -> bool:
    if "[vdso]" in (a, b) or "linux-vdso.so.1" in (a, b):
        return {a, b} <= {"[vdso]", "linux-vdso.so.1"}
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# -- against LD_DEBUG=bindings ------------------------------------------------------------

# ld.so looks these up itself, in the executable's name, to replace its own minimal malloc
# once libc is loaded: LD_DEBUG shows those lookups as the executable's bindings.
RTLD_MALLOC = {"malloc", "calloc", "realloc", "free"}
BINDING = re.compile(r"binding file (.+?) \[(\d+)\] to (.+?) \[(\d+)\]: normal symbol `([^']+)'")


def ld_bindings(log: Path) -> set[tuple[str, int, str, int, str]]:
    """(file, its namespace, definer, its namespace, symbol) of every binding ld.so made,
    as LD_DEBUG=bindings says."""
    found = set()
    for line in log.read_text().splitlines():
        match = BINDING.search(line)
        if match is not None:
            file, space, definer, definer_space, symbol = match.groups()
            found.add((file, int(space), definer, int(definer_space), symbol))
    return found


@pytest.mark.parametrize(
    ("binding", "load"), [("lazy", "--plugin"), ("now", "--plugin"), ("lazy", "--dlmopen")]
)
def test_every_slot_agrees_with_the_dynamic_linkers_own_account(
    tmp_path: Path, binding: str, load: str
) -> None:
    """A program, a dlopen'ed (or dlmopen'ed) plugin, its libm: every binding ld.so reports
    is the slot's, to the same object, and every slot redhand calls bound was reported."""
    flags = [*LINKED, f"-Wl,-z,{binding}"]
    exe = compile_c("linked.c", tmp_path, flags)
    plugin = compile_c("linked_plugin.c", tmp_path, [*PLUGIN, f"-Wl,-z,{binding}"])
    log = tmp_path / "ld"
    env = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(log)}
    with Program([exe, load, plugin], env=env) as program:
        document = linkage_of(program.pid, "--data")
    if load == "--dlmopen":
        assert document["namespaces"] == 2
        isolated = [m for m in document["modules"] if m["namespace"] == 1]  # type: ignore[attr-defined,index]
        assert any(same_file(str(plugin), m["path"]) for m in isolated)
        assert any(m["path"].endswith("/libc.so.6") for m in isolated)
    bindings = ld_bindings(Path(f"{log}.{program.pid}"))
    assert bindings
    modules = {m["path"] for m in document["modules"]}  # type: ignore[attr-defined,index]
    assert any(same_file(str(plugin), m) for m in modules)
    checked = 0
    by_slot: dict[tuple[str, int, str], list[dict[str, object]]] = {}
    for slot in slots(document):
        if slot["kind"] in ("JUMP_SLOT", "GLOB_DAT", "64"):
            key = (str(slot["module"]), int(slot["namespace"]), str(slot["symbol"]))  # type: ignore[call-overload]
            by_slot.setdefault(key, []).append(slot)
    for file, space, definer, definer_space, symbol in bindings:
        for (module, namespace, name), found in by_slot.items():
            if name != symbol or namespace != space or not same_file(module, file):
                continue
            for slot in found:
                if symbol in RTLD_MALLOC and slot["status"] == "not yet bound":
                    continue
                assert slot["status"] in GOOD, (slot["symbol"], slot["status"], slot["kind"])
                expected: dict[str, object] = slot["expected"]  # type: ignore[assignment]
                assert same_file(str(expected["module"]), definer), (slot, definer)
                assert expected["namespace"] == definer_space, (slot, definer_space)
                checked += 1
    assert checked >= 50
    # Every slot redhand calls bound was bound by ld.so, and lazy ones not yet called are not.
    told = {(file, space, symbol) for file, space, _definer, _space, symbol in bindings}
    for (module, namespace, symbol), found in by_slot.items():
        if any(slot["status"] in GOOD for slot in found):
            assert any(
                same_file(module, f) and namespace == n and symbol == s for f, n, s in told
            ), found
    statuses = {str(slot["status"]) for slot in slots(document)}
    assert "hooked" not in statuses and "differs" not in statuses
    own = {str(s["status"]) for s in slots(document) if same_file(str(s["module"]), str(exe))}
    assert ("not yet bound" in own) is (binding == "lazy")
    assert "ifunc" in statuses
    # IFUNCs named by the variant their resolver chose (memcpy -> __memmove_avx_unaligned...).
    variants = {
        str(s["symbol"]): str(s["points_to"]) for s in slots(document) if s["status"] == "ifunc"
    }
    assert "memmove" in variants["memcpy"] and "strlen" in variants["strlen"]
    assert variants["memcpy"].split()[0] != "memcpy"
    time_slot = [
        s
        for s in slots(document)
        if s["symbol"] == "time" and same_file(str(s["module"]), str(exe))
    ]
    assert time_slot and "vdso" in str(time_slot[0]["points_to"])


# -- real interposers ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INTERPOSERS))
def test_an_ld_preload_interposer_is_marked_interposed_and_nothing_hooked(
    tmp_path: Path, name: str
) -> None:
    library, extra = INTERPOSERS[name]
    if not Path(library).exists():
        pytest.skip(f"{library} is not installed (tests/run.sh installs it)")
    exe = compile_c("linked.c", tmp_path, LINKED)
    env = {**os.environ, "LD_PRELOAD": library, **extra}
    core = tmp_path / f"{name}.core"
    with Program([exe], env=env) as program:
        document = linkage_of(program.pid)
        text = redhand("linkage", str(program.pid), "--check").stdout
        assert redhand("gcore", str(program.pid), "-o", str(core)).returncode == 0
    # The same from its core: the environment is read from the strings atop the stack.
    from_core = linkage_of(str(core))
    assert from_core["preload"] == [library]
    assert {s["status"] for s in slots(from_core)} == {s["status"] for s in slots(document)}
    assert document["preload"] == [library]
    (preloaded,) = [m for m in document["modules"] if m["preload"]]  # type: ignore[attr-defined,index]
    assert same_file(preloaded["path"], library)
    interposed = [s for s in slots(document) if s["status"] == "interposed"]
    assert interposed, f"no slot bound to {library}"
    assert all(same_file(str(s["expected"]["module"]), library) for s in interposed)  # type: ignore[index]
    assert not [s for s in slots(document) if s["status"] in ("hooked", "differs")]
    assert "interposed" in text and "hooked" not in text


# -- hooks ------------------------------------------------------------------------------------


def test_slots_a_program_overwrote_are_hooked_and_say_where_they_point(tmp_path: Path) -> None:
    exe = compile_c("linked.c", tmp_path, [*LINKED, "-Wl,-z,now", "-Wl,-z,relro"])
    with Program([exe, "--hook-own", "--hook-anon"]) as program:
        document = linkage_of(program.pid, "--data")
        got_only = linkage_of(program.pid)
        checked = redhand("linkage", str(program.pid), "--check")
    hooked = {str(s["symbol"]): s for s in slots(document) if s["status"] == "hooked"}
    assert set(hooked) == {"puts", "getpid"}
    assert "hooked_puts" in str(hooked["puts"]["points_to"])
    assert "libc.so.6's puts" in str(hooked["puts"]["reason"])
    assert "anonymous rwxp memory" in str(hooked["getpid"]["reason"])
    assert {s["kind"] for s in slots(got_only)} <= {"JUMP_SLOT", "GLOB_DAT", "IRELATIVE"}
    (reassigned,) = [s for s in slots(document) if s["status"] == "reassigned"]
    assert reassigned["symbol"] == "malloc" and "hooked_allocate" in str(reassigned["points_to"])
    assert checked.returncode == 15
    assert "hooked" in checked.stdout and "hooked_puts in" in checked.stdout


def test_python_api_and_the_symbol_filter(tmp_path: Path) -> None:
    exe = compile_c("linked.c", tmp_path, LINKED)
    with Program([exe]) as program:
        result = api.linkage(program.pid, data=True)
        text = redhand("linkage", str(program.pid), "--symbol", "malloc", "--data").stdout
    from redhand.dynlink import Linkage

    assert isinstance(result, Linkage)
    mallocs = [s for s in result.slots if s.entry.name == "malloc"]
    assert {s.owner.short for s in mallocs} >= {exe.name, "libc.so.6"}
    assert "slots of malloc:" in text and exe.name in text


# -- files ------------------------------------------------------------------------------------


SYMBOL_KINDS = {"JUMP_SLOT", "GLOB_DAT", "COPY", "TPOFF64", "DTPMOD64", "DTPOFF64", "64"}


def readelf_imports(path: Path) -> set[tuple[int, str, str]]:
    """(offset, type, symbol) of every relocation that names a symbol, and IRELATIVE."""
    out = subprocess.run(["readelf", "-rW", str(path)], capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) < 3 or not words[2].startswith("R_X86_64_"):
            continue
        kind = words[2].removeprefix("R_X86_64_")
        if kind == "IRELATIVE":
            found.add((int(words[0], 16), kind, ""))
        elif len(words) >= 5 and kind in {
            "JUMP_SLOT",
            "GLOB_DAT",
            "COPY",
            "TPOFF64",
            "DTPMOD64",
            "DTPOFF64",
            "64",
        }:
            found.add((int(words[0], 16), kind, words[4].split("@")[0]))
    return found


def objdump_plt(path: Path) -> set[tuple[int, str]]:
    """(address, symbol) of each PLT stub objdump names ``<symbol@plt>``."""
    out = subprocess.run(
        ["objdump", "-d", "-j", ".plt", "-j", ".plt.sec", "-j", ".plt.got", str(path)],
        capture_output=True,
        text=True,
    ).stdout
    found = set()
    for match in re.finditer(r"^([0-9a-f]+) <([^@>]+)@plt>:", out, re.M):
        found.add((int(match.group(1), 16), match.group(2)))
    return found


FILE_BUILDS = {
    "lazy": [*LINKED, "-Wl,-z,lazy"],
    "now": [*LINKED, "-Wl,-z,now"],
    "relro": [*LINKED, "-Wl,-z,relro", "-Wl,-z,now"],
    "no-plt": [*LINKED, "-fno-plt"],
    "ibt": [*LINKED, "-fcf-protection", "-Wl,-z,ibtplt"],
    "static-pie": ["-O1", "-g", "-static-pie"],
}


@pytest.mark.parametrize("build", sorted(FILE_BUILDS))
def test_a_files_imports_and_plt_match_readelf_and_objdump(tmp_path: Path, build: str) -> None:
    exe = compile_c("linked.c", tmp_path, FILE_BUILDS[build])
    document = linkage_of(str(exe))
    ours = {
        (int(i["offset"]), str(i["kind"]), str(i["symbol"] or ""))  # type: ignore[call-overload]
        for i in document["imports"]  # type: ignore[attr-defined]
    }
    assert ours == readelf_imports(exe)
    plt = {(int(p["address"]), str(p["symbol"])) for p in document["plt"] if p["symbol"]}  # type: ignore[attr-defined,index,call-overload]
    assert plt == objdump_plt(exe)
    if build != "static-pie":  # it relocates itself, all at once
        assert document["bind_now"] is (build in ("now", "relro"))
    if build == "relro":
        assert document["relro"] == "full"
    if build == "lazy":
        assert document["relro"] in ("partial", "none")
    if build == "ibt":
        assert any(p["section"] == ".plt.sec" for p in document["plt"])  # type: ignore[attr-defined,index]
    if build == "static-pie":
        assert document["type"] == "static-pie executable" and document["interpreter"] is None
    else:
        assert "libc.so.6" in document["needed"]  # type: ignore[operator]


def test_a_stripped_library_and_its_versions(tmp_path: Path) -> None:
    library = compile_c("linked_plugin.c", tmp_path, PLUGIN, strip=True)
    document = linkage_of(str(library))
    assert ours_symbols(document) >= {"cos", "memcpy"} or ours_symbols(document) >= {"cos"}
    cos = [i for i in document["imports"] if i["symbol"] == "cos"]  # type: ignore[attr-defined,index]
    assert cos and cos[0]["version"].startswith("GLIBC_")  # type: ignore[index]
    exports = {e["name"] for e in document["exports"]}  # type: ignore[attr-defined,index]
    assert "plugin_work" in exports
    libc = linkage_of("/lib/x86_64-linux-gnu/libc.so.6", "--symbol", "malloc")
    (malloc,) = libc["exports"]  # type: ignore[misc]
    assert malloc["version"] == "GLIBC_2.2.5" and malloc["type"] == "FUNC"  # type: ignore[index]


def ours_symbols(document: dict[str, object]) -> set[str]:
    return {str(i["symbol"]) for i in document["imports"]}  # type: ignore[attr-defined,index]


# -- damaged and hostile input ---------------------------------------------------------------


def test_a_file_that_is_not_elf_gets_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF file\n")
    result = redhand("linkage", str(text))
    assert result.returncode == 10
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    missing = redhand("linkage", str(tmp_path / "nothing-here"))
    assert missing.returncode == 11
    for pid, code in (("999999999", 3), ("2", 6)):  # no such process; a kernel thread
        result = redhand("linkage", pid)
        assert result.returncode == code, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_truncated_dynamic_section_is_a_warning(tmp_path: Path) -> None:
    exe = compile_c("linked.c", tmp_path, LINKED)
    out = subprocess.run(["readelf", "-lW", str(exe)], capture_output=True, text=True).stdout
    dynamic = next(line.split() for line in out.splitlines() if line.split()[:1] == ["DYNAMIC"])
    offset = int(dynamic[1], 16)
    cut = tmp_path / "cut"
    cut.write_bytes(exe.read_bytes()[: offset + 40])
    result = redhand("linkage", str(cut), "--json")
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 10), result.stderr
    if result.returncode == 0:
        assert json.loads(result.stdout)["warnings"]


LOOPY = r"""
#include <link.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
int main(int argc, char **argv)
{
	struct link_map *second = _r_debug.r_map->l_next;
	if (strcmp(argv[1], "loop") == 0)
		second->l_next->l_next = second; /* back to an earlier entry */
	else
		second->l_next = (struct link_map *)(uintptr_t)0x10; /* nowhere */
	puts("ready");
	fflush(stdout);
	getchar();
	return 0;
}
"""


@pytest.mark.parametrize("damage", ["loop", "pointer"])
def test_a_core_with_a_damaged_link_map(tmp_path: Path, damage: str) -> None:
    exe = compile_c(LOOPY, tmp_path, ["-O1", "-g"])
    core = tmp_path / "core"
    with Program([exe, damage]) as program:
        written = redhand("gcore", str(program.pid), "-o", str(core))
        assert written.returncode == 0, written.stderr
        live = linkage_of(program.pid)
    from_core = linkage_of(str(core))
    for document in (live, from_core):
        warnings = " ".join(document["warnings"])  # type: ignore[arg-type]
        assert ("loops back" in warnings) if damage == "loop" else ("cannot be read" in warnings)
        assert len(document["modules"]) >= 2  # type: ignore[arg-type]
    assert from_core["source"] == "core"
