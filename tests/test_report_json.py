"""redhand's indented JSON writer gives json.dumps(indent=...)'s text, character for character."""

from __future__ import annotations

import enum
import json
import random

import pytest

from redhand.report._json import dumps


class Kind(enum.StrEnum):
    CFI = "cfi"


class Level(enum.IntEnum):
    HIGH = 3


SCALARS: list[object] = [
    None,
    True,
    False,
    0,
    -5,
    2**70,
    1.5,
    float("nan"),
    float("inf"),
    -float("inf"),
    1e-7,
    "",
    "s",
    "café",
    "a\x00b",
    "line\nbreak",
    '"quoted", and: commas',
    "\U0001f600",
    "std::map<int, int>::find(int const&) const",
    Kind.CFI,
    Level.HIGH,
]
KEYS = ["a", "b", "kéy", "x,y", "\x00", "", 'q"', "0"]


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth < 4 and roll < 0.2:
        return {
            rng.choice(KEYS) + str(i): random_value(rng, depth + 1) for i in range(rng.randrange(5))
        }
    if depth < 4 and roll < 0.35:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if depth < 4 and roll < 0.4:
        return tuple(random_value(rng, depth + 1) for _ in range(rng.randrange(3)))
    if depth < 4 and roll < 0.5:
        # A list of records with one shape, like the frames of a thread.
        keys = rng.sample(KEYS, rng.randrange(1, 5))
        return [{key: rng.choice(SCALARS) for key in keys} for _ in range(rng.randrange(1, 6))]
    return rng.choice(SCALARS)


@pytest.mark.parametrize("indent", [2, 4, 0])
def test_random_documents(indent: int) -> None:
    rng = random.Random(indent)
    for _ in range(5000):
        value = random_value(rng)
        assert dumps(value, indent=indent) == json.dumps(value, indent=indent), value


def test_records_and_odd_keys() -> None:
    frames = [
        {"index": i, "pc": 0x7F00 + i, "function": name, "file": None, "inlined": False}
        for i, name in enumerate(["poll", "main", 'a "quoted", name', "café", "\x00"])
    ]
    documents: list[object] = [
        {"threads": [{"tid": 1, "frames": frames, "groups": [[1, 2], []]}]},
        [frames, frames[:1], [{}], [{}, {}], [{"a": 1}, {"b": 1}], [{"a": [1]}, {"a": [2]}]],
        {1: [1, 2], "a": {2: "x", None: 3, True: 4}, "t": (1, (2, 3)), "e": {}},
        [{1: "int key"}, {1: "int key"}],
        [{Kind.CFI: 1}, {Kind.CFI: 2}],
        [],
        {},
        "top",
        None,
    ]
    for document in documents:
        assert dumps(document) == json.dumps(document, indent=2), document


def test_unencodable_values_fail_like_json() -> None:
    for bad in ({"a": object()}, [object()], [{"a": object()}, {"a": 1}]):
        with pytest.raises(TypeError):
            json.dumps(bad, indent=2)
        with pytest.raises(TypeError):
            dumps(bad)
