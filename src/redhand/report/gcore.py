"""What ``redhand gcore`` did, as one line for people and as JSON."""

from __future__ import annotations

from typing import TextIO

from redhand.capture.gcore import GcoreResult, Region
from redhand.report.style import Style
from redhand.units import format_size


def _regions(regions: list[Region], what: str) -> str:
    count = len(regions)
    total = sum(region.size for region in regions)
    reasons = sorted({region.reason for region in regions})
    return f"{count} {what}{'s' if count != 1 else ''} ({format_size(total)}: {', '.join(reasons)})"


def gcore_line(result: GcoreResult) -> str:
    """``core.4242: 769 MiB on disk (1.1 GiB apparent), fork mode, process paused 34.1 ms``."""
    text = (
        f"{result.path}: {format_size(result.disk_bytes)} on disk "
        f"({format_size(result.apparent_bytes)} apparent"
        + (", zstd" if result.compression else "")
        + f"), {result.threads:,} thread{'s' if result.threads != 1 else ''}, "
        f"{result.mode} mode, process paused {result.pause_ns / 1e6:.1f} ms"
    )
    if result.reap_pause_ns is not None:
        text += f" (+{result.reap_pause_ns / 1e6:.1f} ms for one thread to reap its copy)"
    if result.left_out:
        text += "; left out: " + _regions(result.left_out, "region")
    if result.not_snapshot:
        text += "; read after the pause, not a snapshot: " + _regions(
            result.not_snapshot, "shared region"
        )
    return text


def render_gcore_text(result: GcoreResult, stream: TextIO, style: Style | None = None) -> None:
    style = style or Style.for_stream(stream)
    stream.write(gcore_line(result) + "\n")
    if result.mode_reason:
        stream.write(style(f"{result.mode} mode: {result.mode_reason}", "magenta") + "\n")
    for warning in result.warnings:
        stream.write(style(f"warning: {warning}", "red") + "\n")


def render_gcore_json(result: GcoreResult, stream: TextIO) -> None:
    import json

    stream.write(json.dumps(result.to_json(), indent=2) + "\n")
