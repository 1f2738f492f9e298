"""redhand linkage FILE: where ld.so would find each library on this machine and where each
import would bind, without running anything; against ldd (ld.so's own trace of the objects
it loads) and LD_DEBUG=bindings of a real start."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import compile_c
from test_linkage import LINKED, RTLD_MALLOC, ld_bindings, same_file
from watch_helpers import TIMEOUT, Program, redhand

LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(\S+|not found)(?: \(0x[0-9a-f]+\))?$")


def ldd(path: Path | str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(name, path or 'not found') of every object ldd lists, in its order; no vdso."""
    result = subprocess.run(
        ["ldd", str(path)], capture_output=True, text=True, timeout=TIMEOUT, env=env
    )
    found = []
    for line in result.stdout.splitlines():
        match = LDD_LINE.match(line)
        if match is None or "linux-vdso" in line:
            continue
        name, where = match.groups()
        found.append((name or where, where))
    return found


def plan_of(path: Path | str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = redhand("linkage", str(path), "--json", env=env)
    assert result.returncode == 0, result.stderr
    plan: dict[str, object] = json.loads(result.stdout)["plan"]
    return plan


def assert_same_objects(plan: dict[str, object], listed: list[tuple[str, str]]) -> None:
    """The objects ld.so would load, in ldd's order; the names it would not find."""
    ours: list[str] = plan["load_order"][1:]  # type: ignore[index]
    theirs = [where for _name, where in listed if where != "not found"]
    assert len(ours) == len(theirs), (ours, theirs)
    for mine, its in zip(ours, theirs, strict=True):
        assert same_file(mine, its), (mine, its)
    missing = {name for name, where in listed if where == "not found"}
    not_found = {
        str(f["name"])
        for f in plan["libraries"]  # type: ignore[attr-defined]
        if f["path"] is None
    }
    assert not_found == missing


REAL_PROGRAMS = [
    "/usr/bin/python3",
    "/usr/bin/gdb",
    "/usr/lib/chromium/chromium",
    "/usr/bin/lldb",
    *sorted(str(p) for p in Path("/usr/lib/postgresql").glob("*/bin/postgres"))[-1:],
    "/usr/bin/strace",
]


@pytest.mark.parametrize("program", REAL_PROGRAMS, ids=lambda p: Path(p).name)
def test_the_libraries_of_real_programs_are_where_ldd_finds_them(program: str) -> None:
    path = Path(program).resolve()
    if not path.exists():
        pytest.skip(f"{program} is not installed")
    plan = plan_of(path)
    assert_same_objects(plan, ldd(path))
    assert plan["problems"] == []


def build_tree(tmp_path: Path, exe_dtags: str) -> tuple[Path, Path]:
    """An application beside its libraries: app/prog needs lib1/libmid.so (which needs
    libdep.so) and libgone.so; libdep.so is in deps/ and another in override/.  prog's
    search path is an RPATH (``--disable-new-dtags``) or a RUNPATH."""
    app, lib1, deps, override = (tmp_path / d for d in ("app", "app/lib1", "deps", "override"))
    for folder in (lib1, deps, override):
        folder.mkdir(parents=True, exist_ok=True)

    def shared(source: str, output: Path, *flags: str) -> None:
        text = tmp_path / f"{output.stem}-{output.parent.name}.c"
        text.write_text(source)
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", str(output), str(text),
             f"-Wl,-soname,{output.name}", *flags],
            check=True, timeout=TIMEOUT,
        )  # fmt: skip

    shared("int dep(void) { return 1; }\n", deps / "libdep.so")
    shared("int dep(void) { return 2; }\n", override / "libdep.so")
    shared("int gone(void) { return 3; }\n", tmp_path / "libgone.so")
    shared(
        "int dep(void);\nint mid(void) { return dep() + 10; }\n",
        lib1 / "libmid.so",
        f"-L{deps}",
        "-ldep",
    )
    source = tmp_path / "prog.c"
    source.write_text(
        "int mid(void);\nint gone(void);\nint main(void) { return mid() + gone(); }\n"
    )
    exe = app / "prog"
    subprocess.run(
        ["gcc", "-o", str(exe), str(source), f"-L{lib1}", f"-L{tmp_path}", "-lmid", "-lgone",
         f"-Wl,-rpath-link,{deps}", f"-Wl,{exe_dtags}",
         "-Wl,-rpath,$ORIGIN/lib1:$ORIGIN/../deps"],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    return exe, override


CPU_SUBDIRECTORIES = [
    "glibc-hwcaps/x86-64-v4",
    "glibc-hwcaps/x86-64-v3",
    "glibc-hwcaps/x86-64-v2",
    "tls/x86_64",
    "x86_64",
    "tls",
    "",
]


@pytest.mark.parametrize("search", ["LD_LIBRARY_PATH", "RUNPATH", "RPATH"])
def test_the_cpus_subdirectories_are_tried_first_as_ld_so_tries_them(
    tmp_path: Path, search: str
) -> None:
    """A library in a directory and in each of its CPU subdirectories (the glibc-hwcaps
    levels, and glibc 2.36's legacy tls and x86_64): the copy the plan names is the one ld.so
    takes, as ldd says."""
    folder = tmp_path / "libs"
    for number, sub in enumerate(CPU_SUBDIRECTORIES):
        where = folder / sub
        where.mkdir(parents=True, exist_ok=True)
        source = tmp_path / f"hw{number}.c"
        source.write_text(f"int hw(void) {{ return {number}; }}\n")
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", str(where / "libhw.so"), str(source),
             "-Wl,-soname,libhw.so"],
            check=True, timeout=TIMEOUT,
        )  # fmt: skip
    program = tmp_path / "prog.c"
    program.write_text("int hw(void);\nint main(void) { return hw(); }\n")
    exe = tmp_path / "prog"
    link = {
        "LD_LIBRARY_PATH": [],
        "RUNPATH": ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{folder}"],
        "RPATH": ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{folder}"],
    }[search]
    subprocess.run(
        ["gcc", "-o", str(exe), str(program), f"-L{folder}", "-lhw", *link],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    env = {**os.environ}
    env.pop("LD_LIBRARY_PATH", None)
    if search == "LD_LIBRARY_PATH":
        env["LD_LIBRARY_PATH"] = str(folder)
    listed = ldd(exe, env)
    taken = dict(listed)["libhw.so"]
    if same_file(taken, str(folder / "libhw.so")):
        pytest.skip("this CPU and this glibc search no subdirectory of a library directory")
    plan = plan_of(exe, env)
    assert_same_objects(plan, listed)
    libraries = {f["name"]: f for f in plan["libraries"]}  # type: ignore[attr-defined]
    assert libraries["libhw.so"]["how"] == (
        search if search == "LD_LIBRARY_PATH" else f"{search} of prog"
    )


@pytest.mark.parametrize("nodeflib", [False, True])
def test_a_library_marked_nodefaultlib_has_its_needs_looked_for_in_its_paths_alone(
    tmp_path: Path, nodeflib: bool
) -> None:
    """A library linked with ``-z nodefaultlib`` needs libz.so.1, which only the system's
    directories (and ld.so.cache) have: ld.so does not find it for that library, as ldd
    says; unmarked, it does."""
    source = tmp_path / "a.c"
    source.write_text("int zlibVersion(void);\nint a(void) { return zlibVersion() != 0; }\n")
    library = tmp_path / "libs" / "liba.so"
    library.parent.mkdir()
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(library), str(source), "-Wl,-soname,liba.so",
         "-L/lib/x86_64-linux-gnu", "-l:libz.so.1", "-Wl,--no-as-needed",
         *(["-Wl,-z,nodefaultlib"] if nodeflib else [])],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    program = tmp_path / "prog.c"
    program.write_text("int a(void);\nint main(void) { return a(); }\n")
    exe = tmp_path / "prog"
    subprocess.run(
        ["gcc", "-o", str(exe), str(program), f"-L{library.parent}", "-la",
         f"-Wl,-rpath,{library.parent}", "-Wl,-rpath-link,/lib/x86_64-linux-gnu"],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    env = {**os.environ}
    env.pop("LD_LIBRARY_PATH", None)
    listed = ldd(exe, env)
    assert (("libz.so.1", "not found") in listed) == nodeflib, listed
    plan = plan_of(exe, env)
    assert_same_objects(plan, listed)


@pytest.mark.parametrize("dtags", ["--disable-new-dtags", "--enable-new-dtags"])
@pytest.mark.parametrize("library_path", [False, True])
def test_rpath_runpath_ld_library_path_and_a_missing_library_as_ldd_says(
    tmp_path: Path, dtags: str, library_path: bool
) -> None:
    """An RPATH serves the libraries' needs too, before LD_LIBRARY_PATH; a RUNPATH serves
    only its own object's, after it; a library nowhere is not found."""
    exe, override = build_tree(tmp_path, dtags)
    env = {**os.environ}
    env.pop("LD_LIBRARY_PATH", None)
    if library_path:
        env["LD_LIBRARY_PATH"] = str(override)
    plan = plan_of(exe, env)
    listed = ldd(exe, env)
    assert_same_objects(plan, listed)
    assert ("libgone.so", "not found") in listed
    assert "libgone.so (needed by prog) not found" in plan["problems"]  # type: ignore[operator]
    libraries = {f["name"]: f for f in plan["libraries"]}  # type: ignore[attr-defined]
    how = str(libraries["libdep.so"]["how"])
    if dtags == "--disable-new-dtags":
        assert how == "RPATH of prog"  # the executable's RPATH, for libmid's need
    else:
        assert how == ("LD_LIBRARY_PATH" if library_path else "not found")
    text = redhand("linkage", str(exe), env=env).stdout
    assert "libgone.so" in text and "not found" in text


def test_a_version_the_library_lacks_is_said_as_ld_so_says(tmp_path: Path) -> None:
    """A program built against libv's version V2, run with a libv that has only V1: ld.so
    refuses to start it ("version `V2' not found"), and redhand says so beforehand."""
    lib = tmp_path / "lib"
    lib.mkdir()
    script = tmp_path / "v.map"

    def build_lib(versions: str, source: str) -> None:
        script.write_text(versions)
        text = tmp_path / "v.c"
        text.write_text(source)
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", str(lib / "libv.so"), str(text),
             "-Wl,-soname,libv.so", f"-Wl,--version-script,{script}"],
            check=True, timeout=TIMEOUT,
        )  # fmt: skip

    build_lib("V1 { global: f1; local: *; };\nV2 { global: f2; } V1;\n",
              "int f1(void) { return 1; }\nint f2(void) { return 2; }\n")  # fmt: skip
    source = tmp_path / "uses.c"
    source.write_text("int f2(void);\nint main(void) { return f2(); }\n")
    exe = tmp_path / "uses"
    subprocess.run(
        ["gcc", "-o", str(exe), str(source), f"-L{lib}", "-lv", "-Wl,-rpath,$ORIGIN/lib"],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert plan_of(exe)["problems"] == []
    build_lib("V1 { global: f1; local: *; };\n", "int f1(void) { return 1; }\n")
    started = subprocess.run([str(exe)], capture_output=True, text=True, timeout=TIMEOUT)
    assert "version `V2' not found" in started.stderr  # ld.so's own refusal
    problems = plan_of(exe)["problems"]
    assert "version V2 not found in libv.so (needed by uses)" in problems  # type: ignore[operator]


@pytest.mark.parametrize("preload", [None, "libfaketime"])
def test_each_import_binds_where_ld_so_binds_it_at_start(
    tmp_path: Path, preload: str | None
) -> None:
    """Immediate binding: ld.so binds every slot of every object before main, and
    LD_DEBUG=bindings says where; the file view, computed without running, agrees."""
    exe = compile_c("linked.c", tmp_path, [*LINKED, "-Wl,-z,now"])
    env = {**os.environ}
    if preload is not None:
        library = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
        if not Path(library).exists():
            pytest.skip("libfaketime is not installed (tests/run.sh installs it)")
        env["LD_PRELOAD"] = library
    plan = plan_of(exe, env)
    log = tmp_path / "ld"
    # LD_BIND_NOW: the libraries' slots bound at start too, so each is reported.
    traced = {**env, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(log), "LD_BIND_NOW": "1"}
    with Program([exe], env=traced) as run:
        pid = run.pid
    told: dict[tuple[str, str], set[str]] = {}
    for file, space, definer, _space, symbol in ld_bindings(Path(f"{log}.{pid}")):
        if space == 0:
            told.setdefault((file, symbol), set()).add(definer)
    checked = 0
    for item in plan["bindings"]:  # type: ignore[attr-defined]
        symbol = str(item["symbol"]).split("@")[0]
        if item["binds_to"] is None or symbol in RTLD_MALLOC:
            continue
        definers = [
            d
            for (f, s), ds in told.items()
            if s == symbol and same_file(f, item["module"])
            for d in ds
        ]
        if not definers:
            continue  # a slot ld.so filled without a lookup (a relative relocation)
        # Also there: what an interposer's dlsym(RTLD_NEXT) found, which is not a slot's.
        assert any(same_file(d, item["binds_to"]["module"]) for d in definers), (item, definers)
        checked += 1
    assert checked >= 50
    if preload is not None:
        times = [
            b for b in plan["bindings"]  # type: ignore[attr-defined]
            if str(b["symbol"]).startswith("time") and same_file(b["module"], str(exe))
        ]  # fmt: skip
        assert times and "faketime" in times[0]["binds_to"]["module"]


def test_a_static_program_loads_nothing(tmp_path: Path) -> None:
    exe = compile_c("int main(void) { return 0; }\n", tmp_path, ["-static"])
    document = json.loads(redhand("linkage", str(exe), "--json").stdout)
    assert document["plan"] is None
    told = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, timeout=TIMEOUT)
    assert "not a dynamic executable" in told.stdout + told.stderr


@pytest.mark.parametrize("binding", ["lazy", "now"])
def test_undefined_symbols_are_those_ldd_r_finds(tmp_path: Path, binding: str) -> None:
    """A library that lost a function and a variable the program uses: ``ldd -r`` (ld.so
    relocating everything) names both; redhand too, and says which one stops the start."""
    lib = tmp_path / "lib"
    lib.mkdir()

    def build_lib(source: str) -> None:
        text = tmp_path / "u.c"
        text.write_text(source)
        subprocess.run(
            ["gcc", "-shared", "-fPIC", "-o", str(lib / "libu.so"), str(text),
             "-Wl,-soname,libu.so"],
            check=True, timeout=TIMEOUT,
        )  # fmt: skip

    build_lib("int kept(void) { return 1; }\nint lost(void) { return 2; }\nint lost_data = 3;\n")
    source = tmp_path / "prog.c"
    source.write_text(
        "int kept(void);\nint lost(void);\nextern int lost_data;\n"
        "int main(int argc, char **argv) { return argc > 5 ? lost() + lost_data : kept(); }\n"
    )
    exe = tmp_path / "prog"
    subprocess.run(
        ["gcc", "-o", str(exe), str(source), f"-L{lib}", "-lu", "-Wl,-rpath,$ORIGIN/lib",
         f"-Wl,-z,{binding}"],
        check=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert plan_of(exe)["problems"] == []
    build_lib("int kept(void) { return 1; }\n")
    relocated = subprocess.run(
        ["ldd", "-r", str(exe)], capture_output=True, text=True, timeout=TIMEOUT
    )
    theirs = set(re.findall(r"undefined symbol: (\w+)", relocated.stdout + relocated.stderr))
    assert theirs == {"lost", "lost_data"}
    problems: list[str] = plan_of(exe)["problems"]  # type: ignore[assignment]
    ours = {re.match(r"undefined symbol (\w+)", p).group(1) for p in problems}  # type: ignore[union-attr]
    assert ours == theirs
    assert any(p.startswith("undefined symbol lost_data") and "not start" in p for p in problems)
    lost = next(p for p in problems if p.startswith("undefined symbol lost "))
    assert ("not start" in lost) is (binding == "now")
