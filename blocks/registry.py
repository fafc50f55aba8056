"""Registries of block types, stems and heads, and the options base class of a block type.

A registry is a small name -> object table filled by decorators: a duplicate name is an error,
an unknown name is an error that lists the known ones. ``blocks`` never imports ``space``; what it
needs of a genotype is described by the ``StageLike`` and ``ArchLike`` protocols below, which
``space.genotype.StageSpec`` and ``ArchSpec`` satisfy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

__all__ = [
    "BLOCKS",
    "HEADS",
    "STEMS",
    "ArchLike",
    "BlockOptions",
    "Registry",
    "StageLike",
]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of ``T``, filled with ``@registry.register("name")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names())
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


class StageLike(Protocol):
    """What a stage module reads from a stage genotype (``space.genotype.StageSpec``)."""

    block: str
    depth: int
    width: int
    heads: int
    mlp_ratio: float
    options: Any


class ArchLike(Protocol):
    """What the backbone reads from an architecture genotype (``space.genotype.ArchSpec``)."""

    resolution: int
    stem: str
    stem_width: int
    head: str
    head_width: int
    stages: Sequence[StageLike]


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """Base of a block type's own hyper-parameters (a frozen dataclass per block type).

    ``check`` validates the options against the rest of their stage; ``check_follows`` against
    the stage before it. Both raise ``ValueError`` naming the offending field.
    """

    def check(self, stage: StageLike) -> None:
        """Raise ``ValueError`` if these options do not fit ``stage``."""

    def check_follows(self, previous: StageLike) -> None:
        """Raise ``ValueError`` if a stage with these options cannot follow ``previous``."""


BLOCKS: Registry[type] = Registry("block type")
STEMS: Registry[type] = Registry("stem")
HEADS: Registry[type] = Registry("head")
