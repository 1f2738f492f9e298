"""What ``redhand linkage`` found, for people and as JSON.

A file: its type, interpreter, binding mode and RELRO, what it needs (and
the RPATH or RUNPATH it looks there with), its imports by kind with their
versions and PLT stubs, and how many symbols it exports (``--exports`` lists
them).  A process or a core: the link map (each object's path, load address,
binding mode, and how many of its GOT slots are bound, not yet bound, IFUNCs
...), then whatever is unusual (hooked, bound elsewhere, interposed), each
with the slot, what it holds and what the lookup gives.  ``--symbol NAME``
lists every slot of that symbol; ``--all`` every slot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TextIO

from redhand.dynlink import FileLinkage, Linkage, LinkedModule, LoadPlan, Slot, Status
from redhand.elf import constants as c
from redhand.report.style import Style

_ORDER = (
    Status.HOOKED,
    Status.DIFFERS,
    Status.INTERPOSED,
    Status.BOUND,
    Status.IFUNC,
    Status.UNBOUND,
    Status.UNRESOLVED,
    Status.REASSIGNED,
    Status.UNREADABLE,
)


def _plural(count: int, what: str) -> str:
    return f"{count:,} {what}{'' if count == 1 else 's'}"


def _binding(module: LinkedModule) -> str:
    dynamic = module.dynamic
    if dynamic is None:
        return module.problem or "not read"
    binding = "immediate binding" if dynamic.bind_now else "lazy binding"
    relro = {"full": "full RELRO", "partial": "partial RELRO"}.get(dynamic.relro, "no RELRO")
    return f"{dynamic.type}, {binding}, {relro}"


def select_slots(linkage: Linkage, *, symbol: str | None, check: bool, every: bool) -> list[Slot]:
    """The slots a report lists: of one symbol, every one, or the unusual ones."""
    if symbol is not None:
        return [s for s in linkage.slots if s.entry.symbol is not None and s.entry.name == symbol]
    if every:
        return list(linkage.slots)
    return [s for s in linkage.slots if s.status.unusual]


def _slot_line(slot: Slot, style: Style) -> str:
    entry = slot.entry
    what = entry.symbol.versioned_name if entry.symbol is not None else f"IFUNC *{entry.addend:#x}"
    value = f"{slot.value:#x}" if slot.value is not None else "?"
    status = slot.status.value
    colour = {Status.HOOKED: "red", Status.DIFFERS: "magenta", Status.INTERPOSED: "cyan"}
    if slot.status in colour:
        status = style(status, "bold", colour[slot.status])
    line = (
        f"  {slot.owner.short}: {entry.kind.label} {what} at {slot.address:#x} = {value} "
        f"-> {slot.points_to or '?'} [{status}]"
    )
    if slot.reason:
        line += f"\n      {slot.reason}"
    elif slot.status is Status.INTERPOSED and slot.expected is not None:
        line += f"\n      interposed by {slot.expected.module.path} (LD_PRELOAD)"
    return line


def render_linkage_text(
    linkage: Linkage,
    stream: TextIO,
    *,
    symbol: str | None = None,
    check: bool = False,
    every: bool = False,
    style: Style | None = None,
) -> None:
    style = style or Style.for_stream(stream)
    write = stream.write
    where = f"process {linkage.pid}" if linkage.source == "live" else "the core"
    if linkage.source == "core" and linkage.pid is not None:
        where = f"the core of process {linkage.pid}"
    namespaces = f" in {_plural(linkage.namespaces, 'namespace')}" if linkage.namespaces else ""
    write(
        style(f"linkage of {where} ({linkage.exe or '?'})", "bold")
        + f": {_plural(len(linkage.modules), 'object')}{namespaces}, "
        f"{_plural(len(linkage.slots), 'GOT slot')}\n"
    )
    if linkage.found_through:
        write(f"link map: from {linkage.found_through}\n")
    preloaded = [m.path for m in linkage.modules if m.preload]
    if linkage.preload:
        write(f"preload asked for: {' '.join(linkage.preload)}\n")
    if not check and symbol is None:
        write("\n")
        by_module = linkage.counts_by_module()
        for module in linkage.modules:
            counts = by_module.get(id(module), {})
            said = ", ".join(
                f"{counts[status]:,} {status.value}" for status in _ORDER if counts.get(status)
            )
            marks = []
            if module.preload:
                marks.append("preloaded")
            if not module.startup:
                marks.append("dlopen'ed")
            if module.namespace:
                marks.append(f"namespace {module.namespace}")
            if module.same_as is not None:
                marks.append(
                    f"the same object as in namespace {module.same_as.namespace}: "
                    "its slots are listed there"
                )
            mark = f" ({', '.join(marks)})" if marks else ""
            write(f"{module.base:#018x}  {style(module.path or module.name, 'bold')}{mark}\n")
            write(f"{'':20}{_binding(module)}" + (f"; slots: {said}" if said else "") + "\n")
    slots = select_slots(linkage, symbol=symbol, check=check, every=every)
    write("\n")
    if symbol is not None:
        write(style(f"{_plural(len(slots), 'slot')} of {symbol}:", "bold") + "\n")
    elif every:
        write(style("every slot:", "bold") + "\n")
    elif slots:
        write(style(f"unusual: {_plural(len(slots), 'slot')}", "bold") + "\n")
    else:
        write(
            "nothing unusual: every slot holds what the dynamic linker's lookup gives "
            "(or is not yet bound)"
            + (f"; preloaded: {', '.join(preloaded)}" if preloaded else "")
            + "\n"
        )
    for slot in slots:
        write(_slot_line(slot, style) + "\n")
    for warning in linkage.warnings:
        write(style(f"warning: {warning}", "red") + "\n")
    stream.flush()


def linkage_json(
    linkage: Linkage, *, symbol: str | None = None, check: bool = False, every: bool = True
) -> dict[str, object]:
    slots = select_slots(linkage, symbol=symbol, check=check, every=every)
    counts = linkage.counts()
    return {
        "redhand": 1,
        "kind": "linkage",
        "source": linkage.source,
        "pid": linkage.pid,
        "exe": linkage.exe,
        "link_map": linkage.found_through or None,
        "namespaces": linkage.namespaces,
        "preload": linkage.preload,
        "modules": [module.to_json() for module in linkage.modules],
        "counts": {status.value: counts.get(status, 0) for status in _ORDER},
        "slots": [slot.to_json() for slot in slots],
        "warnings": linkage.warnings,
    }


def render_file_text(
    result: FileLinkage,
    stream: TextIO,
    *,
    symbol: str | None = None,
    exports: bool = False,
    style: Style | None = None,
) -> None:
    style = style or Style.for_stream(stream)
    write = stream.write
    dynamic = result.dynamic
    binding = "immediate binding" if dynamic.bind_now else "lazy binding"
    relro = {"full": "full RELRO", "partial": "partial RELRO"}.get(dynamic.relro, "no RELRO")
    head = f"{dynamic.path}: {dynamic.type}"
    if dynamic.interpreter:
        head += f", interpreter {dynamic.interpreter}"
    write(style(head, "bold") + f"; {binding}, {relro}\n")
    if dynamic.soname:
        write(f"soname: {dynamic.soname}\n")
    write(f"needs: {', '.join(dynamic.needed) if dynamic.needed else 'nothing'}\n")
    if dynamic.rpath:
        write(f"rpath: {dynamic.rpath}\n")
    if dynamic.runpath:
        write(f"runpath: {dynamic.runpath}\n")
    bound = _render_plan(result.plan, write, style) if result.plan is not None else {}
    plt_of = {stub.got_address: stub for stub in result.plt}
    imports = [i for i in dynamic.imports if symbol is None or i.name == symbol]
    write(style(f"\nimports: {_plural(len(imports), 'relocation')}", "bold") + "\n")
    for entry in imports:
        what = entry.symbol.versioned_name if entry.symbol is not None else f"*{entry.addend:#x}"
        notes = []
        if entry.symbol is not None and entry.symbol.bind == 2:
            notes.append("weak")
        if entry.lazy:
            notes.append("lazy")
        stub = plt_of.get(entry.offset)
        if stub is not None:
            notes.append(f"PLT {stub.address:#x} in {stub.section}")
        note = f"  ({', '.join(notes)})" if notes else ""
        where = bound.get(entry.offset, "")
        write(f"  {entry.kind.label:<9} {entry.offset:#010x}  {what}{where}{note}\n")
    exported = [
        s for name, found in sorted(dynamic.exports.items()) for s in found
        if symbol is None or name == symbol
    ]  # fmt: skip
    write(style(f"\nexports: {_plural(len(exported), 'symbol')}", "bold"))
    if exports or symbol is not None:
        write("\n")
        for s in exported:
            kind = s.to_json()
            write(f"  {s.value:#010x} {kind['type']:<6} {kind['bind']:<6} {s.versioned_name}\n")
    else:
        write(" (--exports lists them)\n")
    for warning in dynamic.warnings:
        write(style(f"warning: {warning}", "red") + "\n")
    stream.flush()


def _render_plan(plan: LoadPlan, write: Callable[[str], object], style: Style) -> dict[int, str]:
    """The libraries as ld.so would load them here, what would stop the program from
    starting; the text each of the file's own imports gets (where it binds), by offset."""
    write(style("\nlibraries, as ld.so would load them on this machine:", "bold") + "\n")
    shown: set[tuple[str, str | None]] = set()
    owner = plan.modules[0].path
    for found in plan.libraries:
        if found.already and found.needed_by != owner:
            continue  # a library's need of something already loaded: ldd's list omits it
        if (found.name, found.path) in shown:
            continue
        shown.add((found.name, found.path))
        by = "" if found.needed_by == owner else f", for {found.needed_by.rsplit('/', 1)[-1]}"
        if found.path is None:
            write(style(f"  {found.name:<24} not found{by}", "red") + "\n")
        else:
            write(f"  {found.name:<24} {found.path}  ({found.how}{by})\n")
    problems = _plan_problems(plan)
    for problem in problems:
        write(style(f"problem: {problem}", "red") + "\n")
    counts: dict[str, int] = {}
    bound: dict[int, str] = {}
    main = plan.modules[0]
    for item in plan.bindings:
        if item.owner is not main:
            continue
        if item.binding is None:
            bound[item.entry.offset] = "  -> unresolved"
            continue
        short = item.binding.module.short
        counts[short] = counts.get(short, 0) + 1
        bound[item.entry.offset] = f"  -> {short}"
    if counts:
        spread = ", ".join(f"{name} {n}" for name, n in sorted(counts.items(), key=lambda x: -x[1]))
        write(f"its imports would bind to: {spread}\n")
    return bound


def _plan_problems(plan: LoadPlan) -> list[str]:
    """Why the program would not start here (ld.so's own complaints, in its words)."""
    problems = [
        f"{found.name} (needed by {found.needed_by.rsplit('/', 1)[-1]}) not found"
        for found in plan.missing
    ]
    problems += plan.version_problems
    for item in plan.unresolved:
        symbol = item.entry.symbol
        if symbol is None or symbol.bind == c.STB_WEAK:
            continue  # a weak reference may stay unresolved (it reads 0)
        name = symbol.versioned_name
        if item.fatal:
            problems.append(f"undefined symbol {name} (in {item.owner.short}): it would not start")
        else:
            problems.append(
                f"undefined symbol {name} (in {item.owner.short}): the first call to it would "
                "end the program (lazy binding)"
            )
    return problems


def _plan_json(plan: LoadPlan) -> dict[str, object]:
    return {
        "libraries": [found.to_json() for found in plan.libraries],
        "load_order": [module.path for module in plan.modules],
        "problems": _plan_problems(plan),
        "bindings": [
            {
                "module": item.owner.path,
                "offset": item.entry.offset,
                "symbol": item.entry.symbol.versioned_name if item.entry.symbol else None,
                "binds_to": None
                if item.binding is None
                else {
                    "module": item.binding.module.path,
                    "symbol": item.binding.symbol.versioned_name,
                },
                "fatal": item.fatal,
            }
            for item in plan.bindings
        ],
    }


def file_json(result: FileLinkage, *, symbol: str | None = None) -> dict[str, object]:
    dynamic = result.dynamic
    imports = [i for i in dynamic.imports if symbol is None or i.name == symbol]
    exports = [
        s.to_json() for name, found in sorted(dynamic.exports.items()) for s in found
        if symbol is None or name == symbol
    ]  # fmt: skip
    return {
        "redhand": 1,
        "kind": "linkage",
        "source": "file",
        "path": dynamic.path,
        "type": dynamic.type,
        "interpreter": dynamic.interpreter,
        "soname": dynamic.soname,
        "needed": dynamic.needed,
        "rpath": dynamic.rpath,
        "runpath": dynamic.runpath,
        "bind_now": dynamic.bind_now,
        "relro": dynamic.relro,
        "imports": [entry.to_json() for entry in imports],
        "exports": exports,
        "plt": [
            {
                "address": stub.address,
                "section": stub.section,
                "got": stub.got_address,
                "symbol": stub.symbol,
            }
            for stub in result.plt
            if symbol is None or stub.symbol == symbol
        ],
        "plan": _plan_json(result.plan) if result.plan is not None else None,
        "warnings": dynamic.warnings,
    }
