"""The one check for unknown keys, shared by every typed value built from a dict (genotypes,
block options, the run configuration): an unknown key is an error that lists the known ones."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["field_names", "reject_unknown"]


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
