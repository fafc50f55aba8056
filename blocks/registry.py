"""Registries of block types, stems and heads; the stage and options base classes.

A registry is a small name -> object table filled by decorators: a duplicate name is an error,
an unknown name is an error that lists the known ones. A block type is a ``Stage`` subclass; a
stem is a module class with a ``stride`` (2 or 4), ``__init__(width)`` and
``cost(width, resolution)``; a head is a module class with ``has_width`` (whether it takes the
genotype's ``head_width``), ``__init__(last_stage, *, width, num_classes, dropout)``,
``forward(x, tokens)`` and ``cost(last_stage, *, width, num_classes, feature_size, tokens)``.

``blocks`` never imports ``space``; what it needs of a genotype is described by the
``StageLike`` and ``ArchLike`` protocols below, which ``space.genotype.StageSpec`` and
``ArchSpec`` satisfy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

from torch import Tensor, nn

from blocks.formulas import Cost

__all__ = [
    "BLOCKS",
    "HEADS",
    "STEMS",
    "ArchLike",
    "BlockOptions",
    "Fused",
    "MapChoice",
    "Registry",
    "SharedChoices",
    "Stage",
    "StageChoice",
    "StageLike",
    "StagePlan",
    "TrialLike",
    "require_one_ratio",
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
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} must be a name, got {name!r}")
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names())
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it named (an unknown name is an error)."""
        item = self.get(name)
        del self._items[name]
        return item

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
    mlp_ratio: float | tuple[float, ...]
    options: Any

    @property
    def block_ratios(self) -> tuple[float, ...]: ...


class ArchLike(Protocol):
    """What the backbone reads from an architecture genotype (``space.genotype.ArchSpec``)."""

    resolution: int
    stem: str
    stem_width: int
    head: str
    head_width: int
    stages: Sequence[StageLike]


class TrialLike(Protocol):
    """The part of ``optuna.trial.Trial`` that search-space draws use."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int) -> int: ...

    def suggest_float(self, name: str, low: float, high: float) -> float: ...


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


def require_one_ratio(stage: StageLike, kind: str) -> None:
    """Raise ``ValueError`` if ``stage``'s ``mlp_ratio`` is a pattern where ``kind`` (e.g. "a
    MaxViT stage") takes one number."""
    if isinstance(stage.mlp_ratio, tuple):
        raise ValueError(
            f"mlp_ratio of {kind} is one number, got the pattern {list(stage.mlp_ratio)}"
        )


class StagePlan(NamedTuple):
    """Where a stage sits in the network: its genotype, what it receives (``in_width``
    channels of an ``in_size`` map, ``tokens_in`` semantic tokens, 0 for none), the stride it
    applies (1 or 2), the side of its own map, ``feature_size``, at the built resolution, and
    whether it is the last stage (its output goes to the head)."""

    spec: StageLike
    stage_type: type[Stage]
    in_width: int
    stride: int
    in_size: int
    feature_size: int
    tokens_in: int
    last: bool = False


class MapChoice(NamedTuple):
    """A searched dimension whose computation depends on the stage's map side: its choices and
    what each becomes on the map at hand (equal ``effective`` entries compute the same)."""

    dimension: str
    choices: tuple
    effective: tuple


class Fused(NamedTuple):
    """A tensor whose ``dimension`` stacks ``parts`` equal parts (a fused q/k/v layer): one part
    after another, or ``per_head`` (each head's parts together: head 0's q, k, v, then head 1's).
    """

    dimension: int
    parts: int
    per_head: bool = False


class StageChoice(NamedTuple):
    """A stage's drawn heads, MLP (or expansion) ratio and block options."""

    heads: int
    mlp_ratio: float
    options: BlockOptions


@dataclasses.dataclass(frozen=True)
class SharedChoices:
    """The search space's choices that every block type draws from: heads per stage and MLP
    ratios. ``network`` holds what is drawn once per network and shared by stages (Dual-ViT's
    token pool); a draw adds to it."""

    heads: tuple[tuple[int, ...], ...]
    mlp_ratios: tuple[float, ...]
    network: dict[str, Any] = dataclasses.field(default_factory=dict)


class Stage(nn.Module):
    """A stage of one block type, registered in ``BLOCKS``.

    Building: ``__init__(plan, drop_path)`` builds from a ``StagePlan`` (the stage opens by
    taking ``plan.in_width`` channels to ``plan.spec.width`` and dividing the map side by
    ``plan.stride``); ``drop_path`` holds its blocks' stochastic-depth rates.
    ``forward(x, tokens) -> (x, tokens)`` maps a (B, C_in, H, W) map and optional semantic
    tokens to (B, C, ceil(H / stride), ceil(W / stride)) and the tokens it passes on, or None.

    One-shot sharing: ``fused_tensors`` and ``own_tensors`` tell the supernet how to slice the
    stage's tensors from the ones shared by every stage of its type.

    Costing: ``cost(plan)`` gives the stage's parameters and MACs without building it, and
    ``token_count`` how many semantic tokens it passes on.

    Searching (``space.sampling`` calls these, so a new block type needs no other edit):
    ``draw(trial, stage, shared)`` draws the stage's heads, ratio and options with
    ``trial.suggest_*`` only; ``cheapest(stage, shared)`` and ``costliest(stage, shared)`` give
    its choices with the fewest and the most MACs (the space's floor and ceiling). By default
    heads and ratio come from ``shared`` and the options from ``draw_options``,
    ``cheapest_options`` and ``costliest_options``. ``searchable = False`` keeps a block type
    out of the search space. ``map_choices(stage, side)`` lists the searched dimensions whose
    computation depends on the map side (``space.geometry``'s blind-spot report reads it).
    """

    options_type: ClassVar[type[BlockOptions]]
    searchable: ClassVar[bool] = True
    # For the one-shot supernet (``oneshot.supernet``), which runs a stage on slices of tensors
    # shared by every stage of its type: the fused tensors (``Fused``), by a pattern of their
    # name within the stage, so that each part is sliced alike. ``own_tensors`` names those that
    # cannot be shared across an option's values.
    fused_tensors: ClassVar[dict[str, Fused]] = {}
    # Whether those declarations have been made for this type (the supernet refuses it until
    # they are: a fused layer sliced as one tensor would share the wrong channels).
    one_shot: ClassVar[bool] = False
    # Whether the shapes of its tensors follow its input and own widths beyond leading channels
    # (CoAtNet's first attention: its heads), so the supernet sizes them from every pair.
    one_shot_every_width: ClassVar[bool] = False

    @staticmethod
    def token_count(spec: StageLike, feature_size: int, tokens_in: int) -> int:
        """How many semantic tokens the stage passes on (0: none)."""
        return 0

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        """Parameters and MACs of the stage planned by ``plan``."""
        raise NotImplementedError

    @classmethod
    def draw(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> StageChoice:
        """Draw heads, then the MLP ratio, then the block's options for stage ``stage``."""
        heads = trial.suggest_categorical(f"s{stage}_heads", shared.heads[stage])
        ratio = trial.suggest_categorical(f"s{stage}_mlp_ratio", shared.mlp_ratios)
        return StageChoice(heads, ratio, cls.draw_options(trial, stage, shared))

    @classmethod
    def draw_options(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> BlockOptions:
        """The block's own options for stage ``stage`` (default: the options' defaults)."""
        return cls.options_type()

    @classmethod
    def cheapest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        """The choices of stage ``stage`` with the fewest MACs."""
        heads, ratio = min(shared.heads[stage]), min(shared.mlp_ratios)
        return StageChoice(heads, ratio, cls.cheapest_options(stage))

    @classmethod
    def cheapest_options(cls, stage: int) -> BlockOptions:
        """The block's options with the fewest MACs (default: the options' defaults)."""
        return cls.options_type()

    @classmethod
    def costliest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        """The choices of stage ``stage`` with the most MACs."""
        heads, ratio = max(shared.heads[stage]), max(shared.mlp_ratios)
        return StageChoice(heads, ratio, cls.costliest_options(stage))

    @classmethod
    def costliest_options(cls, stage: int) -> BlockOptions:
        """The block's options with the most MACs (default: the options' defaults)."""
        return cls.options_type()

    @classmethod
    def own_tensors(cls, spec: StageLike) -> dict[str, str]:
        """Name pattern (within the stage) -> the option value owning the tensors it matches:
        a supernet keeps one copy of them per value (default: every tensor shared)."""
        return {}

    @classmethod
    def map_choices(cls, stage: int, side: int) -> list[MapChoice]:
        """The stage's searched dimensions whose effect depends on its map, and what each choice
        becomes on a ``side`` x ``side`` map in stage ``stage`` (default: none)."""
        return []

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


BLOCKS: Registry[type[Stage]] = Registry("block type")
STEMS: Registry[type] = Registry("stem")
HEADS: Registry[type] = Registry("head")
