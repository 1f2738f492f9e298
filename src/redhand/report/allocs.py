"""What ``redhand allocs`` recorded: for people, as JSON, folded stacks and an SVG flame graph.

Text: the probed functions and their exact totals, the top call sites by
bytes and by calls (exact, counted in the kernel), the sampled stacks by
estimated bytes (marked ``≈``: samples scaled by the gate's weights), the
live blocks by stack (the leak suspects: sampled and never freed), and what
was lost.  JSON: the same, ``"kind": "allocs"``.
"""

from __future__ import annotations

import html
import zlib
from typing import TextIO

from redhand.capture.allocs import AllocsResult, Stack, describe_probes
from redhand.report.style import Style
from redhand.units import format_size

_TOP = 15
_FRAMES = 12


def _frames_text(stack: Stack, limit: int) -> list[str]:
    lines = []
    for n, frame in enumerate(stack.frames[:limit]):
        mark = "  (read past the copied stack)" if n == stack.from_live and n else ""
        lines.append(f"      {frame}{mark}")
    if len(stack.frames) > limit:
        lines.append(f"      … {len(stack.frames) - limit} more frames")
    if not stack.complete:
        lines.append("      (the stack ends here: the rest could not be unwound)")
    return lines


_SHARE = 0.01  # a branch under this share of the bytes is summed up, not shown
_DEPTH = 16


class _Node:
    __slots__ = ("bytes", "calls", "children", "samples")

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self.samples = 0
        self.children: dict[str, _Node] = {}


def _tree_text(stacks: list[Stack]) -> list[str]:
    """The sampled stacks as a tree, the allocating function first and its callers below it,
    each with its estimated bytes and share; branches under 1 % are summed up."""
    root = _Node()
    for stack in stacks:
        node = root
        for frame in stack.frames[:_DEPTH]:
            node = node.children.setdefault(frame, _Node())
            node.bytes += stack.bytes
            node.calls += stack.calls
            node.samples += stack.samples
    total = sum(child.bytes for child in root.children.values()) or 1
    lines: list[str] = []

    def walk(node: _Node, depth: int) -> None:
        children = sorted(node.children.items(), key=lambda item: -item[1].bytes)
        small = [child for _name, child in children if child.bytes < _SHARE * total]
        for name, child in children:
            if child.bytes < _SHARE * total:
                continue
            share = child.bytes / total
            lines.append(f"  {'  ' * depth}≈ {format_size(child.bytes)} {share:4.0%}  {name}")
            walk(child, depth + 1)
        if small:
            bytes_ = sum(child.bytes for child in small)
            lines.append(
                f"  {'  ' * depth}≈ {format_size(bytes_)} in {len(small)} smaller branches"
            )

    walk(root, 0)
    return lines


def render_allocs_text(
    result: AllocsResult, stream: TextIO, *, top: int = _TOP, style: Style | None = None
) -> None:
    style = style or Style.for_stream(stream)
    write = stream.write
    sampling = (
        "every call sampled"
        if result.sample_bytes == 0
        else f"stacks sampled once per {format_size(result.sample_bytes)} allocated on average"
    )
    write(
        style(f"allocations of process {result.pid} ({result.exe or '?'})", "bold")
        + f" for {result.seconds:.1f} s: {sampling}; attached in "
        f"{result.attach_seconds * 1000:.0f} ms, detached in "
        f"{result.detach_seconds * 1000:.0f} ms\n"
    )
    write(f"probed: {describe_probes(result.probes)}\n")
    for note in result.notes:
        write(f"note: {note}\n")
    write("\n" + style("every call, exact:", "bold") + "\n")
    for total in result.totals:
        amount = "" if total.free else f"  {format_size(total.bytes)}"
        write(f"  {total.name:<24} {total.calls:>12,} calls{amount}  ({total.module})\n")
    allocating = [site for site in result.call_sites if not site.free]
    if allocating:
        write(
            "\n" + style(f"top call sites by bytes (exact), of {len(allocating)}:", "bold") + "\n"
        )
        for site in allocating[:top]:
            write(
                f"  {format_size(site.bytes):>10} {site.calls:>12,} calls  {site.function} "
                f"from {site.caller}" + (f" ({site.module})" if site.module else "") + "\n"
            )
        by_calls = sorted(allocating, key=lambda site: -site.calls)
        write("\n" + style("top call sites by calls (exact):", "bold") + "\n")
        for site in by_calls[:top]:
            write(
                f"  {site.calls:>12,} calls {format_size(site.bytes):>10}  {site.function} "
                f"from {site.caller}" + (f" ({site.module})" if site.module else "") + "\n"
            )
    share = f"{result.complete / result.samples:.1%}" if result.samples else "none"
    write(
        "\n"
        + style(f"sampled stacks (estimates, ≈), {result.samples:,} samples:", "bold")
        + f" {share} complete to _start or clone\n"
    )
    write("\n".join(_tree_text(result.stacks)) + "\n")
    write("\n" + style("live at the end (sampled, never freed: the leak suspects):", "bold") + "\n")
    if not result.live:
        write("  none\n")
    for stack in result.live[:top]:
        write(
            f"  ≈ {format_size(stack.bytes)} in {stack.blocks} sampled blocks, the oldest "
            f"{stack.oldest:.1f} s old\n"
        )
        write("\n".join(_frames_text(stack, _FRAMES)) + "\n")
    write("\n" + style("mmap, munmap and brk (every call):", "bold") + "\n")
    if not result.maps:
        write("  none\n")
    for entry in result.maps[:top]:
        amount = f"{format_size(abs(entry.bytes))}" + (" back" if entry.bytes < 0 else "")
        write(f"  {entry.call}: {entry.calls:,} calls, {amount}\n")
        frames = Stack(entry.frames, complete=entry.complete)
        write("\n".join(_frames_text(frames, _FRAMES)) + "\n")
    lost = (result.lost_samples, result.lost_call_sites, result.lost_live)
    write(
        "\nlost: "
        + (
            "nothing"
            if not any(lost)
            else f"{lost[0]} samples (ring full), {lost[1]} call-site counts (table full), "
            f"{lost[2]} live blocks (table full)"
        )
        + "\n"
    )
    if result.exit_status is not None:
        import os

        write(f"the program ended: status {os.waitstatus_to_exitcode(result.exit_status)}\n")
    stream.flush()


def allocs_json(result: AllocsResult) -> dict[str, object]:
    def stack_json(stack: Stack) -> dict[str, object]:
        return {
            "frames": stack.frames,
            "samples": stack.samples,
            "bytes": stack.bytes,
            "calls": stack.calls,
            "complete": stack.complete,
            "from_live": stack.from_live,
            "blocks": stack.blocks,
            "oldest_seconds": round(stack.oldest, 3),
        }

    return {
        "redhand": 1,
        "kind": "allocs",
        "pid": result.pid,
        "exe": result.exe,
        "seconds": round(result.seconds, 3),
        "sample_bytes": result.sample_bytes,
        "attach_seconds": round(result.attach_seconds, 4),
        "detach_seconds": round(result.detach_seconds, 4),
        "probes": [
            {
                "symbol": p.symbol,
                "module": p.display_path,
                "address": p.address,
                "offset": p.offset,
                "free": p.spec.free,
            }
            for p in result.probes
        ],
        "totals": [
            {
                "function": t.name,
                "module": t.module,
                "calls": t.calls,
                "bytes": t.bytes,
                "free": t.free,
            }
            for t in result.totals
        ],
        "call_sites": [
            {
                "function": s.function,
                "caller": s.caller,
                "module": s.module,
                "address": s.address,
                "calls": s.calls,
                "bytes": s.bytes,
                "free": s.free,
            }
            for s in result.call_sites
        ],
        "samples": result.samples,
        "complete": result.complete,
        "stacks": [stack_json(s) for s in result.stacks],
        "live": [stack_json(s) for s in result.live],
        "maps": [
            {
                "call": m.call,
                "frames": m.frames,
                "calls": m.calls,
                "bytes": m.bytes,
                "complete": m.complete,
            }
            for m in result.maps
        ],
        "lost": {
            "samples": result.lost_samples,
            "call_sites": result.lost_call_sites,
            "live": result.lost_live,
        },
        "notes": result.notes,
        "exit_status": result.exit_status,
    }


# -- the flame graph ---------------------------------------------------------------------

_WIDTH = 1200
_ROW = 17
_FONT = 11


def flame_graph_svg(result: AllocsResult, title: str = "bytes allocated (estimated)") -> str:
    """An SVG flame graph of the sampled stacks by bytes: the outermost frame at the bottom,
    each box as wide as its share; hover for the frame and its bytes."""
    tree: dict[str, object] = {}
    total = 0
    for stack in result.stacks:
        total += stack.bytes
        node = tree
        for frame in reversed(stack.frames):
            child = node.setdefault(frame, {"": 0})
            assert isinstance(child, dict)
            child[""] = int(child[""]) + stack.bytes
            node = child
    depth = _depth(tree)
    height = (depth + 2) * _ROW + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{_FONT}">',
        '<rect width="100%" height="100%" fill="#fdfdf6"/>',
        f'<text x="{_WIDTH // 2}" y="18" text-anchor="middle" font-size="14">'
        f"{html.escape(title)}: {total:,} bytes, {result.samples} samples</text>",
    ]
    scale = (_WIDTH - 20) / total if total else 0.0

    def draw(node: dict[str, object], x: float, level: int) -> None:
        for name, child in sorted((k, v) for k, v in node.items() if k):
            assert isinstance(child, dict)
            value = int(child[""])
            width = value * scale
            if width >= 0.5:
                y = height - (level + 1) * _ROW - 10
                hue = zlib.crc32(name.encode()) % 60
                label = html.escape(name)
                parts.append(
                    f"<g><title>{label}: {value:,} bytes ({value / total:.1%})</title>"
                    f'<rect x="{x:.1f}" y="{y}" width="{width:.1f}" height="{_ROW - 1}" '
                    f'fill="hsl({hue},85%,60%)" rx="2"/>'
                )
                chars = int(width / (_FONT * 0.62))
                if chars >= 3:
                    shown = name if len(name) <= chars else name[: chars - 1] + "…"
                    parts.append(
                        f'<text x="{x + 3:.1f}" y="{y + _ROW - 5}">{html.escape(shown)}</text>'
                    )
                parts.append("</g>")
                draw(child, x, level + 1)
            x += width

    draw(tree, 10.0, 0)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _depth(node: dict[str, object]) -> int:
    children = [v for k, v in node.items() if k and isinstance(v, dict)]
    return 1 + max((_depth(c) for c in children), default=0) if children else 0
