"""Capturing a live process: core files of running processes (gcore)."""

from redhand.capture.gcore import GcoreResult, Mode, Region, gcore

__all__ = ["GcoreResult", "Mode", "Region", "gcore"]
