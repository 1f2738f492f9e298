"""Readable names from mangled ones: C++, Rust (legacy and v0) and OCaml.

:func:`demangle` never raises: a name it cannot decode comes back as it was
(less its symbol version), because a frame with a raw name is still useful and
a crash inside a demangler would lose the whole report.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

# cxxfilt and pyderust are imported on the first C++ or Rust name: importing
# cxxfilt took 10-35 ms on the reference machine (it runs ctypes.util's
# find_library, which starts ldconfig) and pyderust a few ms, while most
# stacks of C programs need neither.

# Rust's legacy scheme is C++-shaped (_ZN...E) and ends its path with a
# 17-character hash segment "h" + 16 hex digits, optionally followed by a
# suffix that LLVM adds (".llvm.1234").
_RUST_LEGACY = r"_ZN.*17h[0-9a-f]{16}E(?:\.|$)"

# The OCaml compiler's markers around a compilation unit's code and data:
# labels, not functions.  Names as in `nm` of ocamlopt output, 4.x and 5.x.
_OCAML_MARKERS = (
    "code_begin",
    "code_end",
    "data_begin",
    "data_end",
    "frametable",
    "gc_roots",
)
# Units start "caml" + capital; the runtime's own sections are caml_hot,
# caml_system, caml_startup (caml_system__code_begin).
_OCAML_MARKER = r"caml[A-Za-z0-9_$.]*?(?:__|\.)(?:" + "|".join(_OCAML_MARKERS) + ")$"
_OCAML_STAMP = r"(.*[^_.])_([0-9]+)$"
# The patterns are compiled on first use (by re's own cache), and re itself is
# imported then: only C++, Rust and OCaml names need it, and importing it
# (with enum) took 3-4 ms of the start of `redhand stack` for a C program;
# compiling the three patterns at import, another 0.5 ms.
_HEX = frozenset("0123456789abcdefABCDEF")


def strip_version(name: str) -> str:
    """``poll@@GLIBC_2.2.5`` -> ``poll``; ``memcpy@GLIBC_2.2.5`` -> ``memcpy``."""
    at = name.find("@")
    return name[:at] if at > 0 else name


def _match(pattern: str, text: str) -> re.Match[str] | None:
    import re

    return re.match(pattern, text)


def is_ocaml_marker(name: str) -> bool:
    """True for ``camlFoo__code_begin``, ``caml_system__code_end`` and such (not functions)."""
    return name.startswith("caml") and _match(_OCAML_MARKER, name) is not None


_DEMANGLED: dict[str, str] = {}
_DEMANGLED_MAX = 65536


def demangle(name: str) -> str:
    """The readable form of a symbol name (remembered); see :func:`_demangle`."""
    found = _DEMANGLED.get(name)
    if found is None:
        if len(_DEMANGLED) >= _DEMANGLED_MAX:
            _DEMANGLED.clear()
        found = _DEMANGLED[name] = _demangle(name)
    return found


def _demangle(name: str) -> str:
    """The readable form of a symbol name; the name itself when it is not mangled.

    - C++ ``_Z...`` through cxxfilt (the same output as ``c++filt``);
    - Rust legacy ``_ZN...17h<hash>E`` and v0 ``_R...`` through pyderust,
      without the legacy hash;
    - OCaml ``camlModule__name_NNN`` (up to 5.0) and ``camlModule.name_NNN``
      (5.1 on): ``Module.name``, with ``$xx`` escapes decoded;
    - a symbol version (``@GLIBC_2.2.5``, ``@@GLIBC_2.14``) is dropped.
    """
    base = strip_version(name)
    if base.startswith("_Z"):
        if _match(_RUST_LEGACY, base):
            rust = _demangle_rust(base)
            if rust is not None:
                return rust
        return _demangle_cxx(base)
    if base.startswith("_R"):
        rust = _demangle_rust(base)
        return base if rust is None else rust
    if base.startswith("caml") and len(base) > 4 and "A" <= base[4] <= "Z":
        return demangle_ocaml(base) or base
    return base


def _demangle_cxx(name: str) -> str:
    try:
        import cxxfilt

        result = cxxfilt.demangle(name)
    except Exception:  # cxxfilt.InvalidName, and anything else libiberty's wrapper raises
        return name
    return result if isinstance(result, str) and result else name


def _demangle_rust(name: str) -> str | None:
    try:
        import pyderust

        result = pyderust.demangle(name)
    except Exception:  # pyderust.DemangleError (a ValueError); never let a name crash a report
        return None
    return result if isinstance(result, str) and result else None


def demangle_ocaml(name: str) -> str | None:
    """``camlStdlib__List__iter_261`` -> ``Stdlib.List.iter``; None if not an OCaml name.

    The rules, checked against ocamlopt 4.13's output (``nm``):

    - ``caml`` + a capitalised compilation-unit name; ``__`` separates path
      components (4.x also uses it between unit and function; 5.1 uses ``.``);
      units of the standard library are ``Stdlib__List`` and so on, so every
      ``__`` reads as ``.``;
    - characters that cannot appear in a symbol are ``$`` + two hex digits
      (``( +++ )`` is ``$2b$2b$2b``, ``f'`` is ``f$27``);
    - the final ``_NNN`` is the compiler's unique stamp and is dropped, except
      for anonymous functions: they are all called ``fun``, and without the
      stamp two different lambdas of one module would print alike (and look
      like a recursion cycle to the analysis), so ``camlFoo__fun_172`` is
      ``Foo.fun_172``;
    - code/data markers (``__code_begin``, ``__frametable``, ...) are not
      functions and are left alone (None).
    """
    if not (name.startswith("caml") and len(name) > 4 and "A" <= name[4] <= "Z"):
        return None
    if is_ocaml_marker(name):
        return None
    body = name[4:]
    stamp = _match(_OCAML_STAMP, body)
    if stamp is not None:
        stem = stamp.group(1)
        last = max(stem.rfind("__"), stem.rfind("."))
        leaf = stem[last + (1 if stem[last : last + 1] == "." else 2) :] if last >= 0 else stem
        if leaf != "fun" and last >= 0:
            body = stem
    out: list[str] = []
    index = 0
    length = len(body)
    while index < length:
        char = body[index]
        if char == "_" and index + 1 < length and body[index + 1] == "_":
            out.append(".")
            index += 2
        elif (
            char == "$"
            and index + 2 < length
            and body[index + 1] in _HEX
            and body[index + 2] in _HEX
        ):
            out.append(chr(int(body[index + 1 : index + 3], 16)))
            index += 3
        else:
            out.append(char)
            index += 1
    return "".join(out)
