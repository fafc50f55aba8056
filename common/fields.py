"""The checks every typed value shares: unknown keys in a dict it is built from (genotypes, block
options, the run configuration) are an error that lists the known ones, and an integer field is
checked by ``check_integer`` (booleans are not integers)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["check_integer", "check_values", "field_names", "reject_unknown"]

Rule = tuple[Callable[[float], bool], str]  # a test of a number and how it reads: (v > 0, "> 0")


def field_names(cls: Any) -> tuple[str, ...]:
    """The field names of a dataclass type, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def reject_unknown(
    data: Mapping[str, Any], known: Iterable[str], *, what: str = "field", where: str = ""
) -> None:
    """Raise ``ValueError`` if ``data`` has keys outside ``known``: ``"{where}unknown
    field(s) a, b; known: c, d"``."""
    known = sorted(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"{where}unknown {what}(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(known) or 'none'}"
        )


def check_integer(name: str, value: Any, low: int = 1) -> None:
    """Raise ``ValueError`` ("{name} must be an integer >= {low}, got ...") unless ``value`` is an
    integer (not a bool) of at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_values(value: Any, integers: Iterable[str], numbers: Mapping[str, Rule]) -> None:
    """Raise ``ValueError`` naming the first field of ``value`` that is not an integer >= 1
    (``integers``) or not a finite number passing its rule (``numbers``)."""
    for name in integers:
        check_integer(name, getattr(value, name))
    for name, (ok, rule) in numbers.items():
        item = getattr(value, name)
        number = isinstance(item, (int, float)) and not isinstance(item, bool)
        if not number or not math.isfinite(item) or not ok(item):
            raise ValueError(f"{name} must be a number {rule}, got {item!r}")
