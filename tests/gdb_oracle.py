"""gdb as the oracle for redhand's stacks: its backtraces of a live process (the text of
``thread apply all bt``, completed by gdb's Python API), and how its names are compared with
redhand's (``names_match``: the rules are the contract between gdb's spelling and redhand's).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    pass


# -- gdb ---------------------------------------------------------------------------

SIGNAL_HANDLER_CALLED = "<signal handler called>"
UNKNOWN_FUNCTION = "??"

# Run inside gdb after `thread apply all bt`: one line per thread with each
# frame's kind (gdb.Frame.type()), pc and stack pointer, in bt's order.
GDB_PYTHON = """
import gdb
kinds = {
    gdb.NORMAL_FRAME: "normal",
    gdb.DUMMY_FRAME: "dummy",
    gdb.INLINE_FRAME: "inline",
    gdb.TAILCALL_FRAME: "tailcall",
    gdb.SIGTRAMP_FRAME: "sigtramp",
    gdb.ARCH_FRAME: "arch",
}
for thread in sorted(gdb.selected_inferior().threads(), key=lambda t: t.num):
    thread.switch()
    out = []
    frame = gdb.newest_frame()
    while frame is not None:
        try:
            sp = int(frame.read_register("rsp"))
        except gdb.error:
            sp = -1
        kind = kinds.get(frame.type(), "other")
        out.append("%s:%x:%x" % (kind, frame.pc(), sp & (2**64 - 1)))
        try:
            frame = frame.older()
        except gdb.error:
            break
    print("RH-FRAMES %d %s" % (thread.ptid[1], " ".join(out)))
"""


@dataclass(frozen=True)
class GdbFrame:
    """One line of gdb's ``bt``, completed with its kind and stack pointer."""

    index: int
    function: str
    """gdb's name with the argument list removed; ``??`` or ``<signal handler called>``."""
    pc: int | None
    file: str | None = None
    line: int | None = None
    library: str | None = None
    """The shared library gdb named (``from LIB``): set only when gdb had no debug info."""
    kind: str = "normal"
    """normal, inline, tailcall, sigtramp (from gdb's Python API) or unknown."""
    sp: int | None = None

    @property
    def has_debug_info(self) -> bool:
        return self.file is not None

    @property
    def from_assembly(self) -> bool:
        """An assembly source: gdb has lines but names the function by a symbol."""
        return self.file is not None and self.file.endswith((".S", ".s"))


@dataclass
class GdbThread:
    tid: int
    number: int
    name: str | None
    frames: list[GdbFrame] = field(default_factory=list)
    stopped: str | None = None
    """gdb's "Backtrace stopped: ..." message, when it printed one."""

    @property
    def real_frames(self) -> list[GdbFrame]:
        """The frames that exist on the stack: gdb's synthetic tail-call frames left out."""
        return [frame for frame in self.frames if frame.kind != "tailcall"]


_THREAD_RE = re.compile(r"^Thread (\d+) \((.*)\):$")
_LWP_RE = re.compile(r"\b(?:LWP|process) (\d+)\b")
_THREAD_NAME_RE = re.compile(r'"(.*)"$')
_FRAME_RE = re.compile(
    r"^#(?P<index>\d+)\s+"
    r"(?:(?P<pc>0x[0-9a-f]+) in )?"
    r"(?P<function>.+?)"
    r" \((?P<args>[^()]*)\)"
    r"(?: at (?P<file>.+):(?P<line>\d+)| from (?P<library>\S+))?$"
)
_SIGNAL_FRAME_RE = re.compile(
    r"^#(?P<index>\d+)\s+(?:(?P<pc>0x[0-9a-f]+) in )?<signal handler called>$"
)


def parse_gdb_backtraces(text: str) -> dict[int, GdbThread]:
    """Parse ``thread apply all bt`` output (and RH-FRAMES lines) into threads by tid.

    Frame lines look like ``#0  0x00007f... in __GI___poll (fds=..., ...) at
    ../sysdeps/unix/sysv/linux/poll.c:29``, ``#1  main () at x.c:5`` (no
    address: an inlined frame, or a pc at the start of a line),
    ``#4  0x00007f... in ?? () from /lib/.../libstdc++.so.6`` and
    ``#3  <signal handler called>``; C++ names keep their own parameter
    lists (``rh::call_it(std::function<void (int)> const&) (function=...)``),
    so the argument list is the last parenthesised group.
    """
    threads: dict[int, GdbThread] = {}
    current: GdbThread | None = None
    extra: dict[int, list[tuple[str, int, int]]] = {}
    for raw in text.splitlines():
        line = raw.rstrip()
        header = _THREAD_RE.match(line)
        if header:
            inside = header.group(2)
            lwp = _LWP_RE.search(inside)
            if lwp is None:
                current = None
                continue
            name = _THREAD_NAME_RE.search(inside)
            current = GdbThread(
                tid=int(lwp.group(1)),
                number=int(header.group(1)),
                name=name.group(1) if name else None,
            )
            threads[current.tid] = current
            continue
        if line.startswith("RH-FRAMES "):
            _marker, lwp_text, *items = line.split(" ")
            entries = []
            for item in items:
                kind, pc_text, sp_text = item.split(":")
                entries.append((kind, int(pc_text, 16), int(sp_text, 16)))
            extra[int(lwp_text)] = entries
            continue
        if current is None:
            continue
        if line.startswith("Backtrace stopped:"):
            current.stopped = line[len("Backtrace stopped:") :].strip()
            continue
        signal_frame = _SIGNAL_FRAME_RE.match(line)
        if signal_frame:
            pc = signal_frame.group("pc")
            current.frames.append(
                GdbFrame(
                    index=int(signal_frame.group("index")),
                    function=SIGNAL_HANDLER_CALLED,
                    pc=int(pc, 16) if pc else None,
                    kind="sigtramp",
                )
            )
            continue
        frame = _FRAME_RE.match(line)
        if frame:
            pc = frame.group("pc")
            number = frame.group("line")
            current.frames.append(
                GdbFrame(
                    index=int(frame.group("index")),
                    function=frame.group("function"),
                    pc=int(pc, 16) if pc else None,
                    file=frame.group("file"),
                    line=int(number) if number else None,
                    library=frame.group("library"),
                    kind="unknown",
                )
            )
    for thread_id, entries in extra.items():
        if thread_id in threads:
            thread = threads[thread_id]
            thread.frames = [_complete(frame, entries) for frame in thread.frames]
    return threads


def _complete(frame: GdbFrame, entries: Sequence[tuple[str, int, int]]) -> GdbFrame:
    """A frame of the text with the kind, pc and sp that gdb's Python gave for it."""
    if frame.index >= len(entries):
        return frame
    kind, pc, sp = entries[frame.index]
    if frame.pc is not None and frame.pc != pc:
        return frame  # the two passes disagree: keep what the text says, kind unknown
    return dataclasses.replace(frame, pc=pc, kind=kind, sp=sp if sp != 2**64 - 1 else None)


def run_gdb_backtraces(pid: int, timeout: float = 60.0) -> tuple[dict[int, GdbThread], str]:
    """Attach gdb to ``pid``, take every thread's backtrace, detach; parsed and raw.

    gdb runs with ``-nx`` (no ~/.gdbinit), frame arguments elided, an
    address on every frame (``print frame-info location-and-address``) and
    ``backtrace past-main`` so the main thread's trace reaches ``_start``.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as script:
        script.write(GDB_PYTHON)
    try:
        argv = [
            "gdb", "-batch", "-nx", "-p", str(pid),
            "-ex", "set pagination off",
            "-ex", "set width 0",
            "-ex", "set print frame-arguments none",
            "-ex", "set print address on",
            "-ex", "set print frame-info location-and-address",
            "-ex", "set backtrace past-main on",
            "-ex", "thread apply all bt",
            "-x", script.name,
        ]  # fmt: skip
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    finally:
        os.unlink(script.name)
    text = result.stdout
    threads = parse_gdb_backtraces(text)
    if not threads:
        raise RuntimeError(f"gdb printed no threads for {pid}:\n{text}\n{result.stderr}")
    return threads, text


def gdb_backtraces(pid: int, timeout: float = 60.0) -> dict[int, list[str]]:
    """Every thread's frame names as gdb prints them, innermost first, by tid."""
    threads, _text = run_gdb_backtraces(pid, timeout)
    return {tid: [frame.function for frame in thread.frames] for tid, thread in threads.items()}


# -- comparing names ---------------------------------------------------------------

_CLONE_SUFFIX_RE = re.compile(r"(?:\.(?:cold|part|isra|constprop|lto_priv)(?:\.\d+)?)+$")
_CXX_CLONE_RE = re.compile(r"(?: \[clone [^\]]*\])+$")
_CXX_QUALIFIERS_RE = re.compile(r"(?:\s*(?:const|volatile|&&|&|noexcept))+$")
_OCAML_RE = re.compile(r"^caml([A-Z][A-Za-z0-9_']*?)__(.+?)(?:_\d+)?$")
_RUST_HASH_RE = re.compile(r"::h[0-9a-f]{16}$")


def _matching_open(text: str, close_index: int) -> int:
    """Index of the bracket that opens the one closing at ``close_index``, or -1."""
    pairs = {")": "(", ">": "<", "]": "[", "}": "{"}
    depth = 0
    opener = pairs[text[close_index]]
    closer = text[close_index]
    for index in range(close_index, -1, -1):
        char = text[index]
        if char == closer:
            depth += 1
        elif char == opener:
            depth -= 1
            if depth == 0:
                return index
    return -1


def _top_level_split(text: str, separator: str) -> list[str]:
    """Split at ``separator`` where it is outside (), <>, [], {}."""
    parts, depth, start = [], 0, 0
    index = 0
    while index < len(text):
        char = text[index]
        if char in "(<[{":
            depth += 1
        elif char in ")>]}":
            # "->" and "operator>" are rare in names we compare; keep depth >= 0
            depth = max(depth - 1, 0)
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    parts.append(text[start:])
    return parts


def _squeeze_spaces(text: str) -> str:
    """Drop spaces next to punctuation: ``> >`` and ``>>``, ``void (int)`` and ``void(int)``."""
    text = re.sub(r"\s+", " ", text.strip())
    return re.sub(r" ?([<>(),&*\[\]{}]) ?", r"\1", text)


def cxx_function_name(name: str) -> str:
    """A C++ name reduced to the function's qualified name, template arguments kept.

    ``void rh::thrower<int>(int) [clone .cold]`` -> ``rh::thrower<int>``;
    ``std::function<void (int)>::operator()(int) const`` ->
    ``std::function<void(int)>::operator()``; lambdas spelled by the
    demangler (``{lambda(int)#1}``) or by gdb (``<lambda(int)>``) agree.
    """
    name = _CXX_CLONE_RE.sub("", name.strip())
    name = _CLONE_SUFFIX_RE.sub("", name)
    name = _CXX_QUALIFIERS_RE.sub("", name)
    if name.endswith(")"):
        open_index = _matching_open(name, len(name) - 1)
        # "...::operator()" without a parameter list keeps its own "()"
        if open_index > 0 and not name[:open_index].endswith("operator"):
            name = name[:open_index]
    # A return type (template functions' manglings have one) is a top-level
    # word before the name: keep the last top-level word, gluing
    # "operator" to what follows it ("operator new", "operator int").
    words = _top_level_split(name, " ")
    merged: list[str] = []
    for word in words:
        if merged and (merged[-1].endswith("operator") or merged[-1] in {"unsigned", "signed"}):
            merged[-1] += " " + word
        else:
            merged.append(word)
    name = merged[-1] if merged else name
    name = re.sub(r"\{lambda\(([^)]*)\)#\d+\}", r"<lambda(\1)>", name)
    return _squeeze_spaces(name)


def rust_function_key(name: str) -> str:
    """A Rust name reduced to its crate and the function's own name with closures.

    gdb names Rust frames by DWARF scopes (``alloc::boxed::{impl#31}::call_once<...>``,
    ``threads::sleep_entry::{closure#0}``), a demangler by the symbol
    (``<alloc::boxed::Box<F,A> as core::ops::function::FnOnce<Args>>::call_once``,
    ``threads::sleep_entry::{{closure}}``).  What both spell the same is the
    crate, the last named path segment and the closures under it:
    ``alloc … call_once``, ``threads … sleep_entry::{closure}``.
    """
    name = _RUST_HASH_RE.sub("", name.strip())
    # A vtable shim is the function it forwards to, called through a trait
    # object; its symbol says so, gdb's DWARF name does not.
    name = re.sub(r"\{\{vtable[.-]shim\}\}|\{shim:vtable#\d+\}", "", name)
    name = re.sub(r"\{\{closure\}\}|\{closure#\d+\}", "{closure}", name)
    crate_match = re.match(r"^<*(?:impl )?&?(?:mut )?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)", name)
    crate = crate_match.group(1) if crate_match else ""
    # Drop every <...> group (generic arguments, qualified-self paths).
    while True:
        stripped = re.sub(r"<[^<>]*>", "", name)
        if stripped == name:
            break
        name = stripped
    segments = [segment for segment in name.split("::") if segment]
    tail: list[str] = []
    for segment in reversed(segments):
        tail.insert(0, segment)
        if segment != "{closure}" and not segment.startswith("{impl"):
            break
    return f"{crate} … {'::'.join(tail)}"


def ocaml_function_name(name: str) -> str:
    """``camlRecurse__descend_254`` -> ``Recurse.descend`` (OCaml up to 5.0; stamp dropped)."""
    match = _OCAML_RE.match(name)
    if match is None:
        return name
    module, function = match.groups()
    return f"{module.replace('__', '.')}.{function}"


def canonical_name(name: str, language: str) -> str:
    """The form in which gdb's and redhand's names of one function are equal.

    - every language: GCC's clone suffixes (``.cold``, ``.part.N``,
      ``.isra.N``, ``.constprop.N``) and C++'s ``[clone ...]`` are dropped:
      gdb names such a piece by its DWARF function (no suffix) when it has
      debug info and by its symbol otherwise;
    - OCaml symbols ``camlModule__name_NNN`` become ``Module.name``;
    - C++ (names with ``::``, ``<`` or ``(``): :func:`cxx_function_name`;
    - Rust programs: :func:`rust_function_key`.
    """
    name = _CLONE_SUFFIX_RE.sub("", _CXX_CLONE_RE.sub("", name.strip()))
    if name.startswith("caml"):
        return ocaml_function_name(name)
    if language == "rust" and ("::" in name or "<" in name):
        return rust_function_key(name)
    if "::" in name or "(" in name or "<" in name:
        return cxx_function_name(name)
    return name


class FrameLike(Protocol):
    """What the comparison reads of a redhand frame (redhand.target.model.Frame)."""

    @property
    def pc(self) -> int: ...
    @property
    def sp(self) -> int: ...
    @property
    def function(self) -> str | None: ...
    @property
    def module(self) -> str | None: ...
    @property
    def offset(self) -> int | None: ...
    @property
    def exact(self) -> bool: ...
    @property
    def inlined(self) -> bool: ...
    @property
    def signal_frame(self) -> bool: ...
    @property
    def trust(self) -> object: ...


_alias_cache: dict[str, dict[str, frozenset[str]]] = {}
_alias_lock = threading.Lock()


def build_id_debug_file(path: str) -> Path | None:
    """The separate debug file of an ELF file, found by its build-id, or None."""
    identifier = read_build_id(path)
    if identifier is None:
        return None
    debug = Path("/usr/lib/debug/.build-id") / identifier[:2] / f"{identifier[2:]}.debug"
    return debug if debug.exists() else None


def symbol_aliases(path: str) -> dict[str, frozenset[str]]:
    """For each demangled symbol of an ELF file, every symbol at the same address.

    Read with ``nm`` from .symtab and .dynsym, and from the .symtab of the
    separate debug file found by build-id: glibc has several names for one
    function (``clone3`` and ``__clone3``; ``poll``, ``__poll``,
    ``__GI___poll``), and where gdb names a function by a symbol it picks
    one of them by its own preference.
    """
    with _alias_lock:
        if path in _alias_cache:
            return _alias_cache[path]
    by_address: dict[str, set[str]] = {}
    debug = build_id_debug_file(path)
    sources = [[path], ["-D", path]] + ([[str(debug)]] if debug else [])
    for arguments in sources:
        result = subprocess.run(
            ["nm", "-C", "--defined-only", *arguments], capture_output=True, text=True
        )
        for line in result.stdout.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in "TtWwiI":
                name = parts[2].split("@", 1)[0]
                by_address.setdefault(parts[0], set()).add(name)
    aliases: dict[str, frozenset[str]] = {}
    for names in by_address.values():
        group = frozenset(names)
        for name in names:
            aliases[name] = aliases.get(name, frozenset()) | group
    with _alias_lock:
        _alias_cache[path] = aliases
    return aliases


def names_match(gdb_frame: GdbFrame, frame: FrameLike, language: str) -> bool:
    """Whether redhand's frame has the name gdb gave that frame.

    The rules:

    1. ``<signal handler called>`` is the signal trampoline, which redhand
       names by its symbol, ``__restore_rt``.
    2. ``??`` (gdb found no symbol containing the pc) matches a frame with no
       function, or one whose name is only the nearest symbol below the pc
       (``exact`` False).
    3. Otherwise the names must be equal in :func:`canonical_name` form,
       or be aliases (rule 4).
    4. A name matches any alias of it: a symbol at the same address in the
       same file or its debug file.  gdb picks among aliases by its own
       preference, and for functions with DWARF it prints the DWARF name
       (``__GI___poll``); redhand names a function by its public alias
       (``poll``), the same name whether or not debug files are installed,
       so that crash signatures stay stable.  An alias is the same function.
    5. gdb names a C++ lambda's ``operator()`` by its bare DWARF name; such an
       unqualified gdb name matches the last component of redhand's name.
    """
    if gdb_frame.function == SIGNAL_HANDLER_CALLED:
        return frame.function == "__restore_rt"
    if gdb_frame.function == UNKNOWN_FUNCTION:
        return frame.function is None or not frame.exact
    if frame.function is None:
        return False
    expected = canonical_name(gdb_frame.function, language)
    actual = canonical_name(frame.function, language)
    if expected == actual:
        return True
    if getattr(frame, "inlined", False) and _inlined_name_matches(
        gdb_frame.function, frame.function
    ):
        return True
    if frame.module:
        aliases = symbol_aliases(frame.module)
        group = aliases.get(frame.function, frozenset()) | aliases.get(
            _CXX_CLONE_RE.sub("", frame.function), frozenset()
        )
        if any(canonical_name(alias, language) == expected for alias in group):
            return True
    return same_function(expected, actual, language)


def _strip_parameters(name: str) -> str:
    """``std::f<int>::g(int) const`` -> ``std::f<int>::g``: the trailing parameter list cut off."""
    text = name.removesuffix(" const")
    if not text.endswith(")"):
        return text
    depth = 0
    for position in range(len(text) - 1, -1, -1):
        if text[position] == ")":
            depth += 1
        elif text[position] == "(":
            depth -= 1
            if depth == 0:
                return text[:position]
    return text


def _inlined_name_matches(gdb_name: str, name: str) -> bool:
    """6. An inlined frame is named as eu-stack names it: its demangled linkage
    name, parameters included (``shop::Cart::wait() const``), where gdb prints
    the qualified name without them (``shop::Cart::wait``); they match once the
    parameters are stripped.  Where redhand's DWARF reader cannot say more,
    the name is drgn's unqualified DW_AT_name (``operator()``, Rust's ``new``),
    which matches the qualified one's last component."""
    for candidate in (gdb_name, _strip_parameters(gdb_name)):
        for own in (name, _strip_parameters(name)):
            if candidate == own or candidate.endswith("::" + own):
                return True
    return False


def same_function(gdb_name: str, name: str, language: str) -> bool:
    """Two canonical names of one function: equal, or rule 5 of :func:`names_match`."""
    if gdb_name == name:
        return True
    return language == "c++" and "::" not in gdb_name and name.rsplit("::", 1)[-1] == gdb_name


@dataclass(frozen=True)
class Comparison:
    """A side-by-side comparison of one thread's frames; empty ``problems`` when equal."""

    rows: list[tuple[str, str, str]]
    problems: list[str]
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        width = max((len(row[1]) for row in self.rows), default=10)
        lines = [f"     {'gdb':<{width}}  redhand"]
        lines += [f"{mark:>3}  {left:<{width}}  {right}" for mark, left, right in self.rows]
        return "\n".join([*self.problems, *self.notes, "", *lines])


def describe(frame: FrameLike | None) -> str:
    if frame is None:
        return "-"
    if frame.function is not None:
        name = frame.function
    else:
        offset = f"+{frame.offset:#x}" if frame.offset is not None else ""
        name = f"<{os.path.basename(frame.module or '?')}{offset}>"
    suffix = "" if frame.exact else " (inexact)"
    return f"{frame.pc:#x} {name}{suffix} [{frame.trust}]"


def describe_gdb(frame: GdbFrame | None) -> str:
    if frame is None:
        return "-"
    pc = f"{frame.pc:#x} " if frame.pc is not None else ""
    kind = f" [{frame.kind}]" if frame.kind not in ("normal", "unknown") else ""
    return f"{pc}{frame.function}{kind}"


INLINED_FRAMES = True
"""Whether redhand reports inlined calls as frames of their own.

It does (DWARF through drgn): each physical frame is compared with gdb's
inlined frames at its pc too, innermost first.
"""


def compare_backtrace(
    gdb_thread: GdbThread,
    frames: Sequence[FrameLike],
    language: str,
    *,
    spinning: frozenset[str] = frozenset(),
    symbolize: _Symbolize | None = None,
) -> Comparison:
    """Compare redhand's frames with gdb's, frame by frame.

    Both traces are cut into physical frames: one real stack frame together
    with the inlined frames at its pc (innermost first, gdb's INLINE_FRAME
    kind, redhand's ``inlined``).  Physical frames are compared in order:

    - the same number of them;
    - the pc of each (gdb's frame pc: the exact pc for frame 0 and for a
      frame a signal interrupted, the return address otherwise), and the
      stack pointer of ordinary frames (gdb's ``$sp`` in that frame);
    - the same names (:func:`names_match`), including the inlined frames,
      in the same order.

    gdb's tail-call frames are left out: gdb makes them up from DWARF
    call-site records (DW_TAG_call_site with DW_AT_call_tail_call) for a
    function that jumped to its callee and so has no frame on the stack.

    ``spinning`` names the functions a running thread may be in: the leading
    physical frames whose names are in it are shown but not compared (gdb
    and redhand saw the thread at different moments), and redhand's trace
    must start with one.  ``symbolize(pc)`` names frames that have no name
    (a stripped executable) for this purpose only.
    """
    expected = _physical_frames(gdb_thread.real_frames, lambda f: f.kind == "inline")
    actual = _physical_frames(list(frames), lambda f: f.inlined)
    problems: list[str] = []
    rows: list[tuple[str, str, str]] = []
    gdb_index = redhand_index = 0

    if spinning:

        def spins(group: Sequence[GdbFrame | FrameLike]) -> bool:
            frame = group[-1]
            function = frame.function
            if function in (None, UNKNOWN_FUNCTION) and symbolize and frame.pc:
                function = symbolize(frame.pc)
            return function is not None and canonical_name(function, language) in spinning

        skip_gdb = next((n for n, group in enumerate(expected) if not spins(group)), len(expected))
        skip_redhand = next((n for n, group in enumerate(actual) if not spins(group)), len(actual))
        if skip_redhand == 0:
            problems.append(
                f"redhand's innermost frame is not one of the spinning functions {sorted(spinning)}"
            )
        gdb_skipped = [frame for group in expected[:skip_gdb] for frame in group]
        redhand_skipped = [frame for group in actual[:skip_redhand] for frame in group]
        for index in range(max(len(gdb_skipped), len(redhand_skipped))):
            gdb_frame = gdb_skipped[index] if index < len(gdb_skipped) else None
            frame = redhand_skipped[index] if index < len(redhand_skipped) else None
            rows.append(("~", describe_gdb(gdb_frame), describe(frame)))
        gdb_index, redhand_index = len(gdb_skipped), len(redhand_skipped)
        expected, actual = expected[skip_gdb:], actual[skip_redhand:]

    for position in range(max(len(expected), len(actual))):
        gdb_group = expected[position] if position < len(expected) else []
        group = actual[position] if position < len(actual) else []
        where = f"gdb #{gdb_index}, redhand #{redhand_index}"
        group_problems: list[str] = []
        if not gdb_group or not group:
            which = "gdb" if group == [] else "redhand"
            names = [f.function for f in (gdb_group or group)]
            group_problems.append(f"{where}: only {which} has the frame {names}")
        else:
            gdb_frame, frame = gdb_group[-1], group[-1]
            if gdb_frame.pc is not None and gdb_frame.pc != frame.pc:
                group_problems.append(f"{where}: pc {frame.pc:#x}, gdb says {gdb_frame.pc:#x}")
            if gdb_frame.kind == "normal" and gdb_frame.sp is not None and gdb_frame.sp != frame.sp:
                group_problems.append(f"{where}: sp {frame.sp:#x}, gdb says {gdb_frame.sp:#x}")
            # drgn finds no inline chain in Rust's std (gdb does): Rust's
            # physical frames are compared by their real function only.
            inline_names = INLINED_FRAMES and language != "rust"
            compared = gdb_group if inline_names else gdb_group[-1:]
            own = group if inline_names else group[-1:]
            if len(compared) != len(own) or not all(
                names_match(g, r, language) for g, r in zip(compared, own, strict=True)
            ):
                gdb_names = [g.function for g in gdb_group]
                redhand_names = [r.function for r in group]
                inlined = " (with the frames inlined there)" if len(gdb_group) > 1 else ""
                group_problems.append(
                    f"{where}: names{inlined} {redhand_names}, gdb says {gdb_names}"
                )
        problems += group_problems
        for index in range(max(len(gdb_group), len(group))):
            gdb_frame = gdb_group[index] if index < len(gdb_group) else None
            frame = group[index] if index < len(group) else None
            rows.append(("!" if group_problems else "", describe_gdb(gdb_frame), describe(frame)))
        gdb_index += len(gdb_group)
        redhand_index += len(group)
    notes = [f"gdb stopped early: {gdb_thread.stopped}"] if gdb_thread.stopped else []
    return Comparison(rows, problems, notes)


def _physical_frames(frames: Sequence[_F], is_inline: Callable[[_F], bool]) -> list[list[_F]]:
    """Group frames: each real frame with the inlined frames before it (innermost first)."""
    groups: list[list[_F]] = []
    pending: list[_F] = []
    for frame in frames:
        pending.append(frame)
        if not is_inline(frame):
            groups.append(pending)
            pending = []
    if pending:
        groups.append(pending)  # inlined frames with no real frame: keep them visible
    return groups


_F = TypeVar("_F", GdbFrame, FrameLike)


class _Symbolize(Protocol):
    def __call__(self, pc: int) -> str | None: ...


def function_ranges(path: str | os.PathLike[str]) -> list[tuple[int, int, str]]:
    """(start, end, name) of each sized function symbol of an ELF file, by file address."""
    result = subprocess.run(
        ["nm", "-S", "-C", "--defined-only", os.fspath(path)], capture_output=True, text=True
    )
    ranges = []
    for line in result.stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[2] in "TtWw":
            start, size = int(parts[0], 16), int(parts[1], 16)
            ranges.append((start, start + size, parts[3]))
    return ranges


def read_build_id(path: str | os.PathLike[str]) -> str | None:
    notes = subprocess.run(
        ["readelf", "-n", os.fspath(path)], capture_output=True, text=True
    ).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", notes)
    return match.group(1) if match else None


def _same_name(item: str, needle: str) -> bool:
    """Equal, or ``item`` an inlined frame's short DWARF name for ``needle`` (rule 6)."""
    if item == needle:
        return True
    return "::" not in _strip_parameters(item) and _inlined_name_matches(needle, item)


def is_subsequence(
    needles: Sequence[str], haystack: Sequence[str], same: Callable[[str, str], bool] | None = None
) -> bool:
    """Whether ``needles`` appear in ``haystack`` in this order (not necessarily adjacent).

    ``same(needle, item)`` says whether an item is the needle (default: equal).
    """
    iterator = iter(haystack)
    return all(
        any((same(item, needle) if same else _same_name(item, needle)) for item in iterator)
        for needle in needles
    )


CORE_TIMEOUT = 60.0
