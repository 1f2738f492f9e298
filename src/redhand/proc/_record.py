"""A plain record base for the ptrace layer's small structures.

Not dataclasses: on the import path of ``redhand stack`` each dataclass cost
0.6-0.9 ms to create and ``import dataclasses`` another 7-9 ms (it pulls in
``inspect``), about a quarter of the command's whole run at 20 threads.  A
subclass lists its fields in ``__slots__`` and sets them in ``__init__``;
this base gives it a field-by-field ``repr`` and equality.
"""

from __future__ import annotations


class Record:
    __slots__ = ()

    def _names(self) -> tuple[str, ...]:
        names: tuple[str, ...] = self.__slots__
        return names

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._names())

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names())
        return f"{type(self).__name__}({fields})"
