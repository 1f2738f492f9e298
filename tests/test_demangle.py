"""Demangling: C++ against c++filt, Rust (legacy and v0) from rustc's own output
against c++filt with its extra detail removed, OCaml from ocamlopt's output."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from elf_helpers import compile_c, require, run

from redhand.elf import ElfFile
from redhand.symbols import ModuleSymbols, clear_cache, demangle, demangle_ocaml, is_ocaml_marker

CXX_SOURCE = r"""
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace outer { namespace inner {
template <typename T, int N> struct Box {
    T items[N];
    __attribute__((noinline)) T sum() const {
        T t{};
        for (auto &x : items) t += x;
        return t;
    }
    Box &operator+=(const Box &other) {
        for (int i = 0; i < N; i++) items[i] += other.items[i];
        return *this;
    }
};
struct Widget {
    explicit Widget(std::string name) : name_(std::move(name)) {}
    virtual ~Widget() { std::puts(name_.c_str()); }
    virtual int poke(int how) const;
    std::string name_;
};
__attribute__((noinline)) int Widget::poke(int how) const {
    if (how > 100) throw std::runtime_error("x");
    return how;
}
}}

namespace {
__attribute__((noinline)) int anonymous_helper(std::vector<int> &v) {
    return static_cast<int>(v.size());
}
}

template <typename F> __attribute__((noinline)) int apply(F f) { return f(3); }

int main(int argc, char **) {
    outer::inner::Box<double, 3> a{{1, 2, 3}}, b{{4, 5, 6}};
    a += b;
    outer::inner::Widget w("w");
    std::vector<int> v{1, 2, 3};
    std::map<std::string, std::unique_ptr<int>> m;
    m["k"] = std::make_unique<int>(argc);
    std::printf("%f %d %d %d\n", a.sum(), w.poke(argc), anonymous_helper(v),
                apply([&](int x) { return x + argc; }));
    return 0;
}
"""

RUST_SOURCE = r"""
mod inner {
    pub struct S<T>(pub T);
    impl<T: std::fmt::Debug> S<T> {
        #[inline(never)]
        pub fn show(&self) -> String { format!("{:?}", self.0) }
    }
}
#[inline(never)]
fn generic<T: Copy + std::ops::Add<Output = T>>(a: T) -> T { a + a }
fn main() {
    let s = inner::S(5u8);
    let c = |x: i32| x * 2;
    println!("{} {} {} {}", s.show(), generic(3i32), generic(2.0f64), c(3));
}
"""

OCAML_SOURCE = """
let ( +++ ) a b = a * 10 + b
let rec loop n acc = if n = 0 then acc else loop (n - 1) (acc +++ n)
module Inner = struct
  let deep x = List.iter (fun y -> print_int (x + y)) [1; 2]
end
let f' x = x + 1
let () =
  Inner.deep (loop 3 0);
  print_int (f' 3);
  List.iter (fun x -> print_int (x +++ 1)) [1]
"""


def defined_and_undefined(path: Path, prefix: str) -> list[str]:
    names = []
    for line in run("nm", "-a", path).splitlines():
        name = line.split()[-1]
        if name.startswith(prefix):
            names.append(name)
    return sorted(set(names))


def cxxfilt_all(names: list[str]) -> list[str]:
    require("c++filt")
    out = run("c++filt", input="\n".join(names) + "\n").splitlines()
    assert len(out) == len(names)
    return out


# -- C++ -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cxx_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("g++")
    tmp = tmp_path_factory.mktemp("cxx")
    return compile_c(tmp, "cxx", CXX_SOURCE, "-O2", "-std=c++17", cxx=True)


def test_cxx_names_match_cxxfilt(cxx_binary: Path) -> None:
    binary = cxx_binary
    names = defined_and_undefined(binary, "_Z")
    assert len(names) > 25
    assert any("@GLIBCXX" in name for name in names)  # nm shows versions of imports
    # redhand drops symbol versions; c++filt keeps them, so it gets names without.
    expected = cxxfilt_all([name.split("@", 1)[0] for name in names])
    for name, want in zip(names, expected, strict=True):
        assert demangle(name) == want, name
    joined = "\n".join(expected)
    assert "outer::inner::Box<double, 3>::sum() const" in joined
    assert "outer::inner::Widget::poke(int) const" in joined
    assert "(anonymous namespace)::anonymous_helper(std::vector<int, std::allocator<int> >&)" in (
        joined
    )


def test_cxx_in_the_symbol_index(cxx_binary: Path) -> None:
    binary = cxx_binary
    clear_cache()
    symbols = ModuleSymbols(ElfFile.open(str(binary)))
    for line in run("nm", "-C", "--defined-only", binary).splitlines():
        if "Widget::poke(int) const" in line:
            address = int(line.split()[0], 16)
            match = symbols.lookup(address + 1)
            assert match is not None
            assert match.symbol.name == "outer::inner::Widget::poke(int) const"
            assert match.symbol.raw_name == "_ZNK5outer5inner6Widget4pokeEi"
            break
    else:
        pytest.fail("Widget::poke not found by nm")


def test_cxx_special_cases() -> None:
    assert demangle("_Z3foov.cold") == cxxfilt_all(["_Z3foov.cold"])[0] == "foo() [clone .cold]"
    assert demangle("_Z3barii.isra.0") == "bar(int, int) [clone .isra.0]"
    assert demangle("_ZNSt6vectorIiSaIiEE9push_backERKi@@GLIBCXX_3.4") == (
        "std::vector<int, std::allocator<int> >::push_back(int const&)"
    )
    # Not valid manglings: the name comes back as it was, never an exception.
    for bad in ("_Z", "_Zxxx", "_Z3fo", "_ZN" + "1a" * 5, "_Z\udcff"):
        assert demangle(bad) == bad
    assert demangle("main") == "main"
    assert demangle("") == ""


def test_symbol_versions_are_dropped() -> None:
    assert demangle("poll@@GLIBC_2.2.5") == "poll"
    assert demangle("memcpy@GLIBC_2.2.5") == "memcpy"
    assert demangle("@odd") == "@odd"


# -- Rust ------------------------------------------------------------------------------


def _normalized_cxxfilt_rust(text: str) -> str:
    """c++filt's Rust output (its verbose form) with what redhand leaves out, as
    rustc-demangle's alternate form does: v0 crate disambiguators
    (``core[c1f1a4ba060b9bfa]``), the types of const generic arguments and the
    legacy hash (``::h0123456789abcdef``)."""
    text = re.sub(r"\[[0-9a-f]{1,16}\]", "", text)
    # and the types it writes after const generic values (<2: usize> for <2>)
    text = re.sub(
        r"(-?\d+|true|false|'(?:[^'\\]|\\.)*'): (?:[ui](?:8|16|32|64|128|size)|bool|char)\b",
        r"\1",
        text,
    )
    return re.sub(r"::h[0-9a-f]{16}$", "", text)


@pytest.fixture(scope="module")
def rust_binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rust")
    return {version: _rustc(tmp, version) for version in ("v0", "legacy")}


def _rustc(tmp_path: Path, version: str) -> Path:
    require("rustc")
    directory = tmp_path / version
    directory.mkdir()
    src = directory / "r.rs"  # the crate is called r
    src.write_text(RUST_SOURCE)
    out = directory / "r"
    env = dict(os.environ)
    cmd = ["rustc", "-C", f"symbol-mangling-version={version}", "-o", str(out), str(src)]
    if version == "legacy":
        # Legacy mangling needs -Z unstable-options on rustc versions where v0 is the default.
        env["RUSTC_BOOTSTRAP"] = "1"
        cmd[1:1] = ["-Z", "unstable-options"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    if result.returncode != 0:
        pytest.fail(f"rustc failed:\n{result.stderr}")
    return out


def test_rust_v0_names(rust_binaries: dict[str, Path]) -> None:
    binary = rust_binaries["v0"]
    names = defined_and_undefined(binary, "_R")
    assert len(names) > 100
    # rustc-demangle keeps a suffix like ".0" after the mangling (c++filt drops
    # it): compare the manglings alone, and check the suffix separately.
    suffixed = [name for name in names if "." in name]
    names = [name for name in names if "." not in name]
    expected = [_normalized_cxxfilt_rust(line) for line in cxxfilt_all(names)]
    for name, want in zip(names, expected, strict=True):
        assert demangle(name) == want, name
    for name in suffixed:
        base, suffix = name.split(".", 1)
        assert demangle(name) == demangle(base) + "." + suffix
    ours = {demangle(name) for name in names}
    # Checked by reading the mangling: crate r, instances of generic for f64 and i32,
    # the inherent impl of S<u8>, main's first closure.
    assert {"r::generic::<f64>", "r::generic::<i32>", "<r::inner::S<u8>>::show"} <= ours
    assert "r::main::{closure#0}" in ours


def test_rust_legacy_names(rust_binaries: dict[str, Path]) -> None:
    binary = rust_binaries["legacy"]
    names = [n for n in defined_and_undefined(binary, "_ZN") if re.search(r"17h[0-9a-f]{16}E", n)]
    assert len(names) > 5
    expected = [_normalized_cxxfilt_rust(line) for line in cxxfilt_all(names)]
    for name, want in zip(names, expected, strict=True):
        assert demangle(name) == want, name
    ours = {demangle(name) for name in names}
    assert {"r::main", "r::generic", "r::inner::S<T>::show", "r::main::{{closure}}"} <= ours
    # LLVM's suffix after the hash is dropped too.
    with_suffix = next(n for n in names if "4main17h" in n) + ".llvm.12345"
    assert demangle(with_suffix) == "r::main"


def test_rust_in_the_symbol_index(rust_binaries: dict[str, Path]) -> None:
    binary = rust_binaries["v0"]
    clear_cache()
    symbols = ModuleSymbols(ElfFile.open(str(binary)))
    elf = ElfFile.open(str(binary))
    starts = [
        s.value for s in elf.iter_symbols() if s.name.startswith("_RINvCs") and "7generic" in s.name
    ]
    assert starts
    names = {symbols.lookup(a + 1).symbol.name for a in starts}  # type: ignore[union-attr]
    assert names == {"r::generic::<f64>", "r::generic::<i32>"}


def test_rust_bad_names_stay_raw() -> None:
    assert demangle("_RNvC") == "_RNvC"
    assert demangle("_ZN3foo17h0123456789abcdefE") == "foo"
    # Not a Rust hash, so a C++ name with two components, as c++filt reads it.
    not_rust = "_ZN3foo17hzzzzzzzzzzzzzzzzE"
    assert demangle(not_rust) == cxxfilt_all([not_rust])[0] == "foo::hzzzzzzzzzzzzzzzz"


# -- OCaml -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ocaml_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ocaml")
    src = tmp / "foo.ml"
    src.write_text(OCAML_SOURCE)
    run("ocamlopt", "-o", tmp / "foo", src, cwd=tmp, timeout=120)
    return tmp / "foo"


def _one(names: list[str], pattern: str) -> str:
    found = [n for n in names if re.fullmatch(pattern, n)]
    assert len(found) == 1, (pattern, found)
    return found[0]


def test_ocaml_names_from_ocamlopt(ocaml_binary: Path) -> None:
    names = defined_and_undefined(ocaml_binary, "caml")
    # What ocamlopt 4.x writes: camlUnit__name_stamp, $xx escapes for operator
    # characters, anonymous functions called fun, nested modules flattened.
    cases = {
        r"camlFoo__loop_\d+": "Foo.loop",
        r"camlFoo__\$2b\$2b\$2b_\d+": "Foo.+++",
        r"camlFoo__f\$27_\d+": "Foo.f'",
        r"camlFoo__deep_\d+": "Foo.deep",
        r"camlStdlib__List__iter_\d+": "Stdlib.List.iter",
        r"camlFoo__entry": "Foo.entry",
    }
    for pattern, want in cases.items():
        assert demangle(_one(names, pattern)) == want
    lambdas = [n for n in names if re.fullmatch(r"camlFoo__fun_\d+", n)]
    assert len(lambdas) == 2
    shown = {demangle(n) for n in lambdas}
    assert len(shown) == 2  # two different lambdas must not print alike
    assert all(re.fullmatch(r"Foo\.fun_\d+", s) for s in shown)
    for marker in ("camlFoo__code_begin", "camlFoo__code_end", "camlFoo__frametable",
                   "caml_system__code_begin"):  # fmt: skip
        assert marker in names
        assert is_ocaml_marker(marker)
        assert demangle(marker) == marker
    # The C runtime's names are not OCaml manglings.
    assert demangle("caml_alloc_shr") == "caml_alloc_shr"
    assert demangle("caml_start_program") == "caml_start_program"


def test_ocaml_in_the_symbol_index(ocaml_binary: Path) -> None:
    clear_cache()
    elf = ElfFile.open(str(ocaml_binary))
    symbols = ModuleSymbols(elf)
    table = {s.name: s for s in elf.iter_symbols()}
    begin = table["camlFoo__code_begin"].value
    end = table["camlFoo__code_end"].value
    operator = _one(list(table), r"camlFoo__\$2b\$2b\$2b_\d+")
    assert table[operator].value == begin  # the marker shares the first function's address
    match = symbols.lookup(begin)
    assert match is not None and match.symbol.name == "Foo.+++"
    # No lookup anywhere in the unit's code returns a marker.
    for address in range(begin, end, 3):
        found = symbols.lookup(address)
        if found is not None:
            assert not is_ocaml_marker(found.symbol.raw_name), hex(address)
    loop = table[_one(list(table), r"camlFoo__loop_\d+")]
    assert symbols.lookup(loop.value + 2).symbol.name == "Foo.loop"  # type: ignore[union-attr]


def test_ocaml_5_style_names() -> None:
    # 5.1 and later separate unit and function with a dot; the library's units
    # keep their __ prefix (Stdlib__List).
    assert demangle("camlFoo.bar_12") == "Foo.bar"
    assert demangle("camlStdlib__List.iter_273") == "Stdlib.List.iter"
    assert demangle("camlFoo.fun_321") == "Foo.fun_321"
    assert demangle("camlFoo.$3e$3e$3d_40") == "Foo.>>="
    assert is_ocaml_marker("camlFoo.code_begin")
    assert demangle_ocaml("caml_alloc") is None
    assert demangle_ocaml("camlFoo__1") == "Foo.1"
    assert demangle("camlFoo__bad$zz_3") == "Foo.bad$zz"
