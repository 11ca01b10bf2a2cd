"""Valid ranges of the recipe's numeric fields, declared beside each field and checked by one walk.

Every int or float field of the recipe (tuples of them included) is declared with `within("[0, 1)",
default)`; `range_problems` walks a recipe and reports each value outside its range, NaN always,
±inf unless the range's bracket at inf is closed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar, overload

RANGE_KEY = "fgrpo.range"  # dataclasses.field metadata key
T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """An interval such as `(0, inf)` or `[0, 1)`, optionally with single values allowed besides it
    (`[1, inf) or -1`). inf is inside only when its bracket is closed; NaN never is."""

    text: str
    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool
    extra: tuple[float, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Range:
        interval, *extra = (p.strip() for p in text.split(" or "))
        try:
            if interval[0] not in "[(" or interval[-1] not in ")]":
                raise ValueError("brackets")
            lo, hi = (float(x) for x in interval[1:-1].split(","))
            values = tuple(float(x) for x in extra)
        except (ValueError, IndexError):
            raise ValueError(f"bad range {text!r}: expected e.g. '[0, 1)' or '[1, inf) or -1'") from None
        if not lo < hi or math.isnan(lo) or math.isnan(hi) or any(map(math.isnan, values)):
            raise ValueError(f"bad range {text!r}: needs low < high")
        return cls(text, lo, hi, interval[0] == "[", interval[-1] == "]", values)

    def __contains__(self, v: float) -> bool:
        if v in self.extra:
            return True
        above = self.lo <= v if self.lo_closed else self.lo < v
        below = v <= self.hi if self.hi_closed else v < self.hi
        return above and below

    def __str__(self) -> str:
        return self.text


# Overloads so a field declared `x: int = within("[0, inf)", 0)` types as its default, as
# dataclasses.field's own stubs do (the dataclass machinery, not the caller, sees the Field).
@overload
def within(text: str, default: T) -> T: ...
@overload
def within(text: str, *, default_factory: Callable[[], T]) -> T: ...
@overload
def within(text: str) -> Any: ...
def within(text: str, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose valid values are `text` (see `Range`)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={RANGE_KEY: Range.parse(text)})


def numeric_kind(tp) -> tuple[type, bool] | None:
    """(int or float, is a tuple of them) for a numeric field type (None allowed), else None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return numeric_kind(rest[0]) if len(rest) == 1 else None
    if origin is tuple:
        elems = {a for a in args if a is not Ellipsis}
        return (elems.pop(), True) if len(elems) == 1 and elems <= {int, float} else None
    return (tp, False) if tp in (int, float) else None


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _dataclass_in(tp):
    """The dataclass type of a field that holds one, or a tuple of them (`rewards`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is tuple:
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) == 1 and dataclasses.is_dataclass(args[0]):
            return args[0]
    return None


def numeric_fields(cls, prefix: str = "") -> list[tuple[str, dataclasses.Field, type, bool]]:
    """(dotted name, field, int or float, is a tuple) for every numeric field under dataclass `cls`
    (a tuple of dataclasses, such as `rewards`, is entered as its element `0`)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if (sub := _dataclass_in(tp)) is not None:
            out += numeric_fields(sub, f"{prefix}{f.name}{'.0' if sub is not tp else ''}.")
        elif (kind := numeric_kind(tp)) is not None:
            out.append((prefix + f.name, f, *kind))
    return out


def range_problems(obj, prefix: str = "") -> list[str]:
    """One line per numeric field of dataclass `obj` (nested) outside its declared range, each
    starting with the dotted field name; non-finite floats in dict fields (reward args) too."""
    errs: list[str] = []
    for f in dataclasses.fields(obj):
        name, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            errs += range_problems(value, name + ".")
            continue
        if isinstance(value, tuple) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, v in enumerate(value):
                errs += range_problems(v, f"{name}.{i}.")
            continue
        if isinstance(value, dict):
            errs += [
                f"{name}.{k}: must be finite, got {v!r}"
                for k, v in value.items()
                if isinstance(v, float) and not math.isfinite(v)
            ]
            continue
        tp = _hints(type(obj))[f.name]
        kind = numeric_kind(tp)
        if kind is None or (value is None and type(None) in typing.get_args(tp)):
            continue
        number, is_tuple = kind
        rng = f.metadata.get(RANGE_KEY)
        each = "each element " if is_tuple else ""
        values = value if is_tuple and isinstance(value, tuple) else (value,)
        if rng is None:
            errs.append(f"{name}: no valid range declared (declare it with fgrpo.recipe.ranges.within)")
        elif any(isinstance(v, bool) or not isinstance(v, int if number is int else (int, float)) for v in values):
            errs.append(f"{name}: {each}must be {'an integer' if number is int else 'a number'}, got {value!r}")
        elif any(v not in rng for v in values):
            errs.append(f"{name}: {each}must be in {rng}, got {value!r}")
    return errs


def is_type_problem(message: str) -> bool:
    """A `range_problems` line saying a value has the wrong type (nothing else can be checked)."""
    return "must be an integer, got" in message or "must be a number, got" in message
