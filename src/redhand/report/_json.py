"""``json.dumps(value, indent=2)``, character for character, several times faster.

With ``indent``, the standard library encodes in pure Python, value by value:
the document of ``redhand stack --json`` on a process with 1,000 threads
(6,400 frames) took 134 ms that way on the reference machine, against 28 ms
for the same document without indentation, which the C encoder writes.  Most
of a report is flat objects (a frame is a dict of numbers, strings and None):
here each flat container's values are encoded by the C encoder in one call,
and only the indentation around them is written in Python.
"""

from __future__ import annotations

from itertools import chain
from operator import add

# The C encoder separates the values of a flat container with NUL, a character
# that cannot appear in its output otherwise (ensure_ascii escapes it inside
# strings as \u0000).
_SEPARATOR = "\x00"


# The C encoder is used directly, as JSONEncoder.encode uses it for a flat
# container, rather than through the json package: importing json imports re
# (and re, enum), 3-4 ms of a `redhand stack --json` run on the reference
# machine.  Where _json is missing (another Python), the json package's own.
def _unencodable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


try:
    from _json import encode_basestring_ascii, make_encoder

    _flat = make_encoder(
        None,  # markers: no check for circular references (the values are flat)
        _unencodable,  # default
        encode_basestring_ascii,
        None,  # indent
        ":",  # key separator
        _SEPARATOR,  # item separator
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )

    def _encode_flat(values: list[object]) -> str:
        return "".join(_flat(values, 0))

except ImportError:  # pragma: no cover (CPython has _json)
    import json
    from json.encoder import encode_basestring_ascii

    def _encode_flat(values: list[object]) -> str:
        return json.JSONEncoder(separators=(_SEPARATOR, ":")).encode(values)


def _json_dumps(value: object, indent: int | None = None) -> str:
    """json.dumps, for the rare values the fast paths leave to it."""
    import json

    return json.dumps(value, indent=indent)


# Containers whose values are all of these types are flat (subclasses, such as
# enums, take the general path, where json's own rules encode them).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def dumps(value: object, indent: int = 2) -> str:
    """The same text as ``json.dumps(value, indent=indent)`` (default options otherwise)."""
    parts: list[str] = []
    _Encoder(" " * indent, parts).encode(value, "\n")
    return "".join(parts)


class _Encoder:
    __slots__ = ("_starts", "parts", "step")

    def __init__(self, step: str, parts: list[str]) -> None:
        self.step = step
        self.parts = parts
        # The text before each value of a dict, by its keys and indentation:
        # the first is '\n  "key": ', the others ',\n  "key": '.
        self._starts: dict[tuple[tuple[str, ...], str], list[str]] = {}

    def encode(self, value: object, newline: str) -> None:
        """Append the encoding of ``value``; ``newline`` is a newline and the indentation."""
        parts = self.parts
        if isinstance(value, dict):
            if not value:
                parts.append("{}")
                return
            inner = newline + self.step
            keys = tuple(value)
            if not all(isinstance(key, str) for key in keys):
                # Keys json converts (numbers, booleans, None): leave them to json.
                text = _json_dumps(value, indent=len(self.step))
                parts.append(text.replace("\n", newline))
                return
            starts = self._starts_of(keys, inner)
            values = list(value.values())
            parts.append("{")
            if _SCALARS.issuperset(map(type, values)):
                parts.extend(map(add, starts, _encode_flat(values)[1:-1].split(_SEPARATOR)))
            else:
                for start, item in zip(starts, values, strict=True):
                    parts.append(start)
                    self.encode(item, inner)
            parts.append(newline + "}")
            return
        if isinstance(value, (list, tuple)):
            if not value:
                parts.append("[]")
                return
            inner = newline + self.step
            separator = "," + inner
            if _SCALARS.issuperset(map(type, value)):
                encoded = _encode_flat(list(value))[1:-1].split(_SEPARATOR)
                parts.append("[" + inner + separator.join(encoded) + newline + "]")
                return
            if self._flat_records(value, inner):
                parts.append(newline + "]")
                return
            parts.append("[" + inner)
            first = True
            for item in value:
                if not first:
                    parts.append(separator)
                first = False
                self.encode(item, inner)
            parts.append(newline + "]")
            return
        if type(value) in _SCALARS:
            parts.append(_encode_flat([value])[1:-1])
        else:
            parts.append(_json_dumps(value))

    def _starts_of(self, keys: tuple[str, ...], inner: str) -> list[str]:
        starts = self._starts.get((keys, inner))
        if starts is None:
            starts = [f",{inner}{encode_basestring_ascii(key)}: " for key in keys]
            starts[0] = starts[0][1:]
            self._starts[(keys, inner)] = starts
        return starts

    def _flat_records(self, items: list[object] | tuple[object, ...], inner: str) -> bool:
        """Append ``[`` and a list of flat dicts with the same string keys, if it is one.

        The frames of a thread: all their values are encoded in one call of the
        C encoder, and joined with the text around them in a few more.
        """
        if set(map(type, items)) != {dict}:
            return False
        records: list[dict[object, object]] = items  # type: ignore[assignment]
        shapes: set[tuple[object, ...]] = set(map(tuple, records))
        if len(shapes) != 1:
            return False
        (keys,) = shapes
        if not keys or not all(isinstance(key, str) for key in keys):
            return False
        values: list[object] = list(chain.from_iterable(map(dict.values, records)))
        if not _SCALARS.issuperset(map(type, values)):
            return False
        inside = inner + self.step
        starts = self._starts_of(keys, inside)  # type: ignore[arg-type]
        between = [f"{inner}}},{inner}{{{starts[0]}", *starts[1:]]
        every = ["{" + starts[0], *starts[1:], *between * (len(items) - 1)]
        texts = _encode_flat(values)[1:-1].split(_SEPARATOR)
        self.parts.append("[" + inner + "".join(map(add, every, texts)) + inner + "}")
        return True
