"""Crash signatures: which crashes are the same bug.

A signature is made from the crash report (``redhand core --json``) of one
crash, and crashes with the same signature share a bucket.  Version 1:

1. The crashing thread's frames, innermost first (inlined calls included).
2. Each frame becomes a token: its function's name with parameter lists,
   template arguments (``<T>``), compiler suffixes (``.isra.0``, ``.cold``,
   ``.constprop.1``, ``.part.0``, ``.lto_priv.0``) and Rust hashes
   (``::h0123456789abcdef``) removed, glibc's IFUNC variants folded
   (``__strlen_avx2`` is ``strlen``); a frame without a name is its module and
   offset (``app@0x1240``) in the program, or the library's name alone.
3. The crash machinery is cut: everything down to the deepest frame, among the
   top 16, that is signal delivery, ``abort``, ``raise``, an assertion's,
   C++'s throw and terminate, Rust's panic, glibc's checks
   (``__stack_chk_fail``, ``__fortify_fail``, ``malloc_printerr``).
4. Library frames are kept until the first frame of the program, then at
   most two of the program's frames (the function that crashed and its
   caller: the same bug reached from ``main`` and from a thread is one
   bucket), never below ``main`` or a thread's start; repeated tokens
   (recursion) are folded.
5. A recursion (the report's cycle) becomes ``recursion(f > g)`` in a fixed
   rotation with the frame that entered it; where the stack overflowed inside
   it does not matter.
6. The crash kind comes first, and what the program said, when it is stable:
   an assertion's expression (not its line), an exception's type (not its
   message), glibc's abort message with numbers masked.

The text is the parts joined by `` | ``; the key is SHA-256 of the version,
the executable's name and the text.  Program versions and build-ids are
per-crash facts, not part of the key, so a rebuild does not split a bucket.

7. A family gathers the buckets of one crash site reached from different
   callers: the signature without its last frame (the caller of the
   program's function that crashed) when it has two frames or more; a
   recursion's family is the cycle.  Its key is SHA-256 of the version, the
   executable's name, ``family`` and that text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

VERSION = 1
_TOP = 16
_APP_FRAMES = 2

_MACHINERY = re.compile(
    r"^(__restore_rt|raise|abort|__pthread_kill\w*|pthread_kill|__GI_\w+|__assert_fail\w*"
    r"|__assert_perror_fail|__libc_message\w*|__fortify_fail\w*|__stack_chk_fail\w*"
    r"|__chk_fail|malloc_printerr|__malloc_assert|std::terminate|__cxxabiv1::.*"
    r"|__gnu_cxx::__verbose_terminate_handler|__cxa_(re)?throw|__cxa_call_terminate"
    r"|_Unwind_\w+|core::panicking::.*|std::panicking::.*|rust_panic\w*|__rust_start_panic"
    r"|__rust_\w+|std::process::abort|g_assertion_message\w*|g_assert_warning)$"
)
_THREAD_START = frozenset(
    {"__libc_start_call_main", "__libc_start_main", "_start", "start_thread", "clone", "clone3"}
)
_IFUNC_VARIANT = re.compile(
    r"^__(mem\w+|str\w+|wcs\w+|wmem\w+|stp\w+|rawmem\w+)_"
    r"(avx\w*|evex\w*|sse\d\w*|erms|unaligned\w*|ssse3\w*)$"
)
_SUFFIX = re.compile(r"(\.(isra|constprop|part|cold|lto_priv|localalias)(\.\d+)?)+$")
_CLONE = re.compile(r" \[clone [^\]]*\]")
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")


def _strip_templates(name: str) -> str:
    """``std::vector<int, std::allocator<int> >::at`` -> ``std::vector<T>::at``."""
    out: list[str] = []
    depth = 0
    for char in name:
        if char == "<":
            if depth == 0:
                out.append("<T>")
            depth += 1
        elif char == ">" and depth:
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


def _strip_parameters(name: str) -> str:
    """``f(int) const`` -> ``f``; ``operator()(int)`` keeps ``operator()``."""
    if name.startswith("operator()"):
        return "operator()"
    depth = 0
    for index, char in enumerate(name):
        if char == "(" and depth == 0 and not name[:index].endswith("operator"):
            return name[:index]
        if char == "<":
            depth += 1
        elif char == ">":
            depth = max(depth - 1, 0)
    return name


def normalise(function: str) -> str:
    """The token of a function name (see the module's documentation)."""
    name = _CLONE.sub("", function)
    name = _RUST_HASH.sub("", name)
    name = _strip_parameters(name)
    name = _strip_templates(name)
    name = _SUFFIX.sub("", name)
    name = name.replace("(anonymous namespace)", "{anon}").strip()
    variant = _IFUNC_VARIANT.match(name)
    if variant is not None:
        name = variant.group(1)
    return name


@dataclass(frozen=True)
class Signature:
    """A crash's signature: ``text`` for people, ``key`` for buckets, ``frames`` (every
    normalised frame of the crashing thread) kept to rebucket when the rules change."""

    text: str
    key: str
    version: int
    kind: str
    frames: tuple[str, ...]
    family: str = ""  # the key of the buckets of the same crash site (see point 7)
    family_text: str = ""


def _token(frame: dict[str, object], exe: str | None, biases: dict[str, int]) -> tuple[str, bool]:
    """(token, whether the frame is the program's own)."""
    module = str(frame.get("module") or "")
    own = bool(exe) and module == exe
    function = frame.get("function")
    if function:
        return normalise(str(function)), own
    base = module.rsplit("/", 1)[-1] or "?"
    if own:
        pc, bias = frame.get("pc"), biases.get(module)
        if isinstance(pc, int) and bias is not None:
            return f"{base}@{pc - bias:#x}", True
        return f"{base}@?", True
    return base, False


def signature(report: dict[str, object]) -> Signature:
    """The signature of one crash from its report (the JSON of ``redhand core``)."""
    crash = report.get("crash") or {}
    assert isinstance(crash, dict)
    kind = str(crash.get("kind") or "unknown")
    exe = report.get("exe")
    exe_name = str(exe).rsplit("/", 1)[-1] if exe else "?"
    thread = _crashing_thread(report, crash.get("thread"))
    frames = thread.get("frames", []) if thread else []
    assert isinstance(frames, list)
    biases = {
        str(m.get("path")): int(m["bias"])
        for m in report.get("modules") or []  # type: ignore[attr-defined]
        if isinstance(m, dict) and isinstance(m.get("bias"), int)
    }
    tokens = [_token(frame, str(exe) if exe else None, biases) for frame in frames]
    # 3. the crash machinery
    cut = 0
    for index, (token, _own) in enumerate(tokens[:_TOP]):
        if _MACHINERY.match(token):
            cut = index + 1
    kept = tokens[cut:]
    parts: list[str] = []
    recursion = thread.get("recursion") if thread else None
    if isinstance(recursion, dict) and recursion.get("frames"):
        biases_exe = str(exe) if exe else None
        cycle = [_token(f, biases_exe, biases)[0] for f in recursion["frames"]]
        start = cycle.index(min(cycle))
        rotated = cycle[start:] + cycle[:start]
        parts.append(f"recursion({' > '.join(dict.fromkeys(rotated))})")
        entered_at = recursion.get("end_index")
        for frame in frames:
            if isinstance(entered_at, int) and frame.get("index") == entered_at + 1:
                parts.append(_token(frame, biases_exe, biases)[0])
    else:
        app = 0
        for token, own in kept:
            if token in _THREAD_START or (token == "main" and app == 0 and parts):
                if token == "main":
                    parts.append(token)
                break
            if parts and parts[-1] == token:
                continue  # a repeated frame: recursion the report did not fold
            parts.append(token)
            if own:
                app += 1
                if app >= _APP_FRAMES or token == "main":
                    break
    said = _said(crash)
    head = [kind] + ([said] if said else [])
    text = " | ".join(head + parts)
    key = hashlib.sha256(f"{VERSION}\0{exe_name}\0{text}".encode()).hexdigest()
    family_text = " | ".join(head + (parts[:-1] if len(parts) >= 2 else parts))
    family = hashlib.sha256(f"{VERSION}\0{exe_name}\0family\0{family_text}".encode())
    return Signature(
        text,
        key,
        VERSION,
        kind,
        tuple(token for token, _ in tokens),
        family.hexdigest(),
        family_text,
    )


def _crashing_thread(report: dict[str, object], tid: object) -> dict[str, object] | None:
    threads = report.get("threads") or []
    assert isinstance(threads, list)
    for thread in threads:
        if thread.get("tid") == tid:
            return thread  # type: ignore[no-any-return]
    return threads[0] if threads else None


def _said(crash: dict[str, object]) -> str | None:
    """What the program said, when it is stable across runs."""
    details = crash.get("details") or {}
    assert isinstance(details, dict)
    assertion = details.get("assertion")
    if isinstance(assertion, dict) and assertion.get("expression"):
        return f"assert({assertion['expression']})"
    if details.get("exception_type"):
        return str(details["exception_type"])
    if details.get("panic_message"):
        return f"panic({_NUMBERS.sub('N', str(details['panic_message']))[:80]})"
    message = details.get("abort_message")
    if message:
        text = str(message).strip().splitlines()[0] if str(message).strip() else ""
        return _NUMBERS.sub("N", text)[:80] or None
    return None
