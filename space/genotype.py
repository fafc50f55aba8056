"""The architecture genotype: a frozen, validated, hashable value that round-trips through JSON.

An ``ArchSpec`` holds the input resolution, the stem, four ``StageSpec`` and the head. A stage
names its block type (a key of ``blocks.BLOCKS``) and carries that type's own options dataclass
(``CMTOptions``, ``AEWinOptions``, ``CoTOptions``, ``DualOptions``). Invalid values raise
``ValueError`` naming the field; change a genotype with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from blocks import BLOCKS, HEADS, STEMS
from common.fields import check_integer, field_names, reject_unknown

__all__ = ["MIN_RESOLUTION", "NUM_STAGES", "ArchSpec", "StageSpec"]

NUM_STAGES = 4
MIN_RESOLUTION = 32  # the four stages downsample by 32 in all


def _ratio_or_pattern(value: Any) -> float | tuple[float, ...]:
    """One finite ratio > 0 as a float, or a non-empty pattern of them as a tuple (a pattern
    of one is that one ratio)."""
    ratios = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    for ratio in ratios:
        if (
            isinstance(ratio, bool)
            or not isinstance(ratio, (int, float))
            or not math.isfinite(ratio)
            or ratio <= 0
        ):
            raise ValueError(
                f"mlp_ratio must be a finite number > 0 or a list of them, got {value!r}"
            )
    if not ratios:
        raise ValueError("mlp_ratio must be a number or a non-empty list, got []")
    return float(ratios[0]) if len(ratios) == 1 else tuple(float(r) for r in ratios)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: ``depth`` blocks of type ``block`` at ``width`` channels.

    mlp_ratio is the MLP (or IRFFN) hidden width over ``width`` for transformer blocks, and
    ``width`` over the bottleneck width for CoT. It is one number for every block, or a pattern
    that repeats over the blocks (``(4, 3)``: 4, 3, 4, 3 ..., as Dual-ViT-S's stage 3 does);
    ``block_ratios`` gives each block's. The search space draws single numbers only.
    ``options`` is the block type's options dataclass, a dict of its fields, or None for its
    defaults.
    """

    block: str
    depth: int
    width: int
    heads: int = 1
    mlp_ratio: float | tuple[float, ...] = 4.0
    options: Any = None

    def __post_init__(self) -> None:
        options_type = BLOCKS.get(self.block).options_type
        check_integer("depth", self.depth)
        check_integer("width", self.width)
        check_integer("heads", self.heads)
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        object.__setattr__(self, "mlp_ratio", _ratio_or_pattern(self.mlp_ratio))
        options = self.options
        if options is None:
            options = options_type()
        elif isinstance(options, dict):
            reject_unknown(
                options, field_names(options_type), where=f"options of block {self.block!r}: "
            )
            try:
                options = options_type(**options)
            except ValueError as error:
                raise ValueError(f"options.{error}") from None
        if type(options) is not options_type:
            raise ValueError(
                f"options must be {options_type.__name__} for block {self.block!r}, "
                f"got {type(options).__name__}"
            )
        object.__setattr__(self, "options", options)
        options.check(self)

    @property
    def block_ratios(self) -> tuple[float, ...]:
        """Each block's MLP ratio, the pattern repeated over the stage's depth."""
        pattern = self.mlp_ratio if isinstance(self.mlp_ratio, tuple) else (self.mlp_ratio,)
        return tuple(pattern[i % len(pattern)] for i in range(self.depth))

    @property
    def ratio_label(self) -> str:
        """The MLP ratio as text: ``4``, or ``4/3`` for a pattern."""
        pattern = self.mlp_ratio if isinstance(self.mlp_ratio, tuple) else (self.mlp_ratio,)
        return "/".join(f"{ratio:g}" for ratio in pattern)

    def to_dict(self) -> dict[str, Any]:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.mlp_ratio, tuple):
            fields["mlp_ratio"] = list(self.mlp_ratio)
        fields["options"] = dataclasses.asdict(self.options)
        return fields


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """A whole network: stem, four stages, head, at input ``resolution``.

    ``head_width`` is the conv head's 1x1 expansion (CMT's 1280) or the class-attention head's
    MLP hidden width (Dual-ViT-S's 896), and must be 0 for heads without one.
    """

    stages: tuple[StageSpec, ...]
    resolution: int = 224
    stem: str = "cmt"
    stem_width: int = 32
    head: str = "conv"
    head_width: int = 1280

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        if len(stages) != NUM_STAGES:
            raise ValueError(f"stages must hold {NUM_STAGES} stages, got {len(stages)}")
        for i, stage in enumerate(stages):
            if not isinstance(stage, StageSpec):
                raise ValueError(f"stages[{i}] must be a StageSpec, got {type(stage).__name__}")
        object.__setattr__(self, "stages", stages)
        check_integer("resolution", self.resolution)
        if self.resolution < MIN_RESOLUTION:
            raise ValueError(
                f"resolution must be at least {MIN_RESOLUTION} (the stages downsample by 32), "
                f"got {self.resolution}"
            )
        STEMS.get(self.stem)
        HEADS.get(self.head)
        check_integer("stem_width", self.stem_width)
        if HEADS.get(self.head).has_width:
            check_integer("head_width", self.head_width)
        elif self.head_width != 0:
            raise ValueError(
                f"head_width must be 0 for head {self.head!r}, got {self.head_width!r}"
            )
        for i in range(1, NUM_STAGES):
            try:
                stages[i].options.check_follows(stages[i - 1])
            except ValueError as error:
                raise ValueError(f"stages[{i}].options: {error}") from None

    @property
    def block_mix(self) -> str:
        """The block types of the four stages, e.g. ``cmt-aewin-dual-dual``."""
        return "-".join(stage.block for stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "stem": self.stem,
            "stem_width": self.stem_width,
            "head": self.head,
            "head_width": self.head_width,
            "stages": [stage.to_dict() for stage in self.stages],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        """Build from ``to_dict``'s output; errors name the field, e.g. ``stages[2].width``."""
        if not isinstance(data, dict):
            raise ValueError(f"an architecture must be a JSON object, got {type(data).__name__}")
        reject_unknown(data, field_names(cls))
        if "stages" not in data or not isinstance(data["stages"], list):
            raise ValueError("stages must be a list of stage objects")
        stages = []
        for i, stage in enumerate(data["stages"]):
            if not isinstance(stage, dict):
                raise ValueError(f"stages[{i}] must be an object, got {type(stage).__name__}")
            reject_unknown(stage, field_names(StageSpec), where=f"stages[{i}]: ")
            try:
                stages.append(StageSpec(**stage))
            except (TypeError, ValueError) as error:
                raise ValueError(f"stages[{i}]: {error}") from None
        return cls(**{**data, "stages": tuple(stages)})

    @classmethod
    def from_json(cls, text: str) -> ArchSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"not valid JSON: {error}") from None
        return cls.from_dict(data)
