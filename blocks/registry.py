"""Registries of block types, stems and heads; the stage and options base classes.

A registry is a small name -> object table filled by decorators: a duplicate name is an error,
an unknown name is an error that lists the known ones. A block type is a ``Stage`` subclass; a
stem is a module class with a ``stride`` (2 or 4), ``__init__(width)`` and
``cost(width, resolution)``; a head is a module class with
``__init__(last_stage, *, width, num_classes, dropout)``, ``forward(x, tokens)`` and
``cost(last_stage, *, width, num_classes, feature_size, tokens)``.

``blocks`` never imports ``space``; what it needs of a genotype is described by the
``StageLike`` and ``ArchLike`` protocols below, which ``space.genotype.StageSpec`` and
``ArchSpec`` satisfy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from torch import Tensor, nn

from blocks.formulas import Cost

__all__ = [
    "BLOCKS",
    "HEADS",
    "STEMS",
    "ArchLike",
    "BlockOptions",
    "Registry",
    "Stage",
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


class Stage(nn.Module):
    """A stage of one block type, registered in ``BLOCKS``; the backbone calls, in order:

    ``__init__(spec, *, in_width, stride, feature_size, drop_path, tokens_in)``: build from a
    stage genotype; the stage opens by taking ``in_width`` channels to ``spec.width`` and
    dividing the map side by ``stride`` (1 or 2), ``feature_size`` is its map side at the
    genotype's resolution, ``drop_path`` its blocks' stochastic-depth rates, and ``tokens_in``
    how many semantic tokens the previous stage passes (0: none);
    ``forward(x, tokens) -> (x, tokens)``: map a (B, C_in, H, W) map and optional semantic tokens
    to (B, C, ceil(H / stride), ceil(W / stride)) and the tokens it passes on, or None.

    ``cost`` gives the stage's parameters and MACs from the same arguments without building it.
    """

    options_type: ClassVar[type[BlockOptions]]

    @staticmethod
    def token_count(spec: StageLike, feature_size: int, tokens_in: int) -> int:
        """How many semantic tokens the stage passes on (0: none)."""
        return 0

    @classmethod
    def cost(
        cls,
        spec: StageLike,
        *,
        in_width: int,
        stride: int,
        in_size: int,
        feature_size: int,
        tokens_in: int,
    ) -> Cost:
        """Parameters and MACs for an ``in_size`` input map and a ``feature_size`` output map."""
        raise NotImplementedError

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


BLOCKS: Registry[type[Stage]] = Registry("block type")
STEMS: Registry[type] = Registry("stem")
HEADS: Registry[type] = Registry("head")
