"""Quantities as people read them."""

from __future__ import annotations


def format_size(count: int) -> str:
    """``769 MiB``, ``1.1 GiB``, ``12 KiB``, ``512 bytes``."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "bytes":
                return f"{count} bytes"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
