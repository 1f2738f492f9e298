"""Readers of a target's memory.

Every source of memory (a copied snapshot of a live process, the live process
itself, a core's segments with ELF files behind them) answers the same
:class:`Memory` interface.  A read either returns exactly ``size`` bytes or
raises :class:`~redhand.errors.MemoryReadError`; never a short read.
"""

from __future__ import annotations

import bisect
import struct

from redhand.errors import MemoryReadError

# Protocols are for the type checker only: importing typing at run time cost
# 5-10 ms of the start of `redhand stack` on the reference machine.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Protocol
else:
    Protocol = object

_U64 = struct.Struct("<Q")


class Memory(Protocol):
    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address``, or MemoryReadError."""
        ...


def read_u64(memory: Memory, address: int) -> int:
    value: int = _U64.unpack(memory.read(address, 8))[0]
    return value


class RegionMemory:
    """Memory made of copied regions: ``(start, bytes)`` pairs that do not overlap.

    Reads that fall outside every region go to ``fallback`` if one is given.
    """

    def __init__(self, regions: Iterable[tuple[int, bytes]], fallback: Memory | None = None):
        ordered = sorted((start, data) for start, data in regions if data)
        self._starts = [start for start, _ in ordered]
        self._datas = [data for _, data in ordered]
        self.fallback = fallback

    def add(self, start: int, data: bytes) -> None:
        if not data:
            return
        index = bisect.bisect_right(self._starts, start)
        self._starts.insert(index, start)
        self._datas.insert(index, data)

    def regions(self) -> list[tuple[int, int]]:
        """The ``(start, end)`` ranges held, in address order."""
        return [
            (start, start + len(data))
            for start, data in zip(self._starts, self._datas, strict=True)
        ]

    def read(self, address: int, size: int) -> bytes:
        index = bisect.bisect_right(self._starts, address) - 1
        if index >= 0:
            start = self._starts[index]
            data = self._datas[index]
            offset = address - start
            if offset + size <= len(data):
                return data[offset : offset + size]
        if self.fallback is not None:
            return self.fallback.read(address, size)
        raise MemoryReadError(address, size, "not in the captured memory")
