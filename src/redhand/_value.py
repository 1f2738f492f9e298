"""A small base for immutable value objects, in place of frozen dataclasses.

STYLE.md asks for frozen dataclasses for value objects.  On the import path of
``redhand stack`` they cost too much: creating one ``@dataclass(frozen=True,
slots=True)`` class took 0.6-0.9 ms on the reference machine (the decorator
writes the methods as source text and compiles them with ``exec``), there were
about 20 of them on the path, and ``import dataclasses`` pulls in ``inspect``
(with ``ast``, ``dis`` and ``tokenize``), another 10-15 ms.  Their instances
are slow to make, too: a frozen dataclass's ``__init__`` sets every field
through ``object.__setattr__``, 2.2 us for a 15-field frame against 0.4 us
for plain assignments, and ``redhand stack`` makes one frame object per frame
of every thread (6,400 for 1,000 threads).

A class built on :class:`Value` takes a few microseconds to create and
behaves the same for its users: attributes, equality with an object of the
same class (field by field), a hash consistent with it, a ``repr`` that
names the fields, pickling, and no assignment to a field (``AttributeError``).
``dataclasses.replace`` does not apply; classes that need a modified copy say
so with a method of their own.

How: a subclass lists its fields in ``_fields`` (in the order of its
``__init__`` parameters) and keeps each in a slot named after it with a
leading underscore (``__slots__ = ("_pc", ...)``), which its ``__init__``
assigns (``self._pc = pc``); each field is then a read-only property over its
slot.  The slots stay writable for the class's own code, as private names.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any


class Value:
    """Immutable fields, compared and hashed by the fields named in ``_fields``."""

    __slots__ = ()

    _fields: tuple[str, ...] = ()
    _get: Callable[[object], tuple[object, ...]]
    """The values of ``_fields`` as a tuple (an ``attrgetter``, set per class)."""

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        fields = cls._fields
        for name in fields:
            if name not in cls.__dict__:
                field = property(attrgetter("_" + name), doc=f"The {name} field (read-only).")
                # So that errors name the field (typeshed does not know this method).
                field.__set_name__(cls, name)  # type: ignore[attr-defined]
                setattr(cls, name, field)
        private = [f"_{name}" for name in fields]
        if len(private) == 1:
            one = attrgetter(private[0])
            cls._get = staticmethod(lambda value: (one(value),))
        else:
            cls._get = staticmethod(attrgetter(*private))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        get = self._get
        return get(self) == get(other)

    def __ne__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        get = self._get
        return get(self) != get(other)

    def __hash__(self) -> int:
        return hash(self._get(self))

    def __repr__(self) -> str:
        values = self._get(self)
        fields = ", ".join(f"{n}={v!r}" for n, v in zip(self._fields, values, strict=True))
        return f"{type(self).__qualname__}({fields})"

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), self._get(self))


class _ConstantType(type):
    """Iterating over a set of constants yields its members, as with enum."""

    _members: tuple[Constant, ...]

    def __iter__(cls) -> Iterator[Any]:
        return iter(cls._members)

    def __len__(cls) -> int:
        return len(cls._members)

    def __call__(cls, value: object) -> Any:
        """The member whose value is ``value`` (``Trust("cfi") is Trust.CFI``), as with enum."""
        names: dict[object, str] = cls.__dict__.get("_names", {})
        try:
            return getattr(cls, names[value])
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} is not a valid {cls.__name__}") from None


class Constant(metaclass=_ConstantType):
    """The members of a closed set of named constants, in place of ``enum``.

    ``import enum`` cost 3-5 ms of the start of ``redhand stack`` on the
    reference machine (with ``functools`` and ``collections``, which nothing
    else on that path needs).  A set of constants is a subclass of this and of
    ``str`` or ``int``; :func:`define` makes one instance per member and sets
    it as a class attribute, so members compare equal to their values, format
    as them, serialise to JSON as them, and are singletons (``is`` works, even
    after pickling).  ``name`` is the member's name and ``value`` its plain
    value, and iterating over the class yields the members in definition
    order, as with enum.
    """

    __slots__ = ()

    _names: dict[object, str]
    _values: dict[object, object]

    @property
    def name(self) -> str:
        """The member's name, as it is spelled in the class."""
        return type(self)._names[self]

    @property
    def value(self) -> object:
        """The member's value, as a plain str or int."""
        return type(self)._values[self]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value!r}>"

    def __str__(self) -> str:
        return str(self.value)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (getattr, (type(self), self.name))


def define(cls: type[Constant], **members: object) -> None:
    """Make the members of ``cls``: ``define(Trust, CFI="cfi", FP="fp")``."""
    made = []
    cls._names = {}
    cls._values = {}
    for name, value in members.items():
        member = type.__call__(cls, value)
        cls._names[value] = name
        cls._values[value] = value
        setattr(cls, name, member)
        made.append(member)
    cls._members = tuple(made)
