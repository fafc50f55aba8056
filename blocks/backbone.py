"""The one backbone: a stem, four stages of any registered block types, and a head.

The stem brings the image to stride 2 or 4; the first stage makes up the rest of stride 4 and each
later stage halves the map, so stage i runs at ``stage_size(resolution, i)``. Stages pass a
(B, C, H, W) map and, from Dual stages, semantic tokens (B, m, C) that the next Dual stage or the
head may use; other stages drop them.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from blocks.formulas import Cost
from blocks.layers import drop_path_rates, stage_size, trunc_normal_init
from blocks.registry import BLOCKS, HEADS, STEMS, ArchLike, StagePlan

__all__ = ["Backbone", "StagePlan", "build_model", "estimate_cost", "plan_stages"]


def plan_stages(arch: ArchLike, resolution: int | None = None) -> list[StagePlan]:
    """The four stages of ``arch`` with their input widths, strides and sizes for an input of
    ``resolution`` (default: the genotype's own)."""
    resolution = resolution or arch.resolution
    stem_stride = STEMS.get(arch.stem).stride
    in_width, stride = arch.stem_width, 4 // stem_stride
    in_size, tokens_in = math.ceil(resolution / stem_stride), 0
    plans = []
    for i, spec in enumerate(arch.stages):
        stage_type = BLOCKS.get(spec.block)
        size = stage_size(resolution, i)
        last = i == len(arch.stages) - 1
        plans.append(StagePlan(spec, stage_type, in_width, stride, in_size, size, tokens_in, last))
        in_width, stride, in_size = spec.width, 2, size
        tokens_in = stage_type.token_count(spec, size, tokens_in)
    return plans


def estimate_cost(arch: ArchLike, num_classes: int = 1000) -> Cost:
    """Parameters and MACs of ``arch`` at its own resolution from the blocks' own formulas."""
    plans = plan_stages(arch)
    total = STEMS.get(arch.stem).cost(arch.stem_width, arch.resolution)
    for plan in plans:
        total += plan.stage_type.cost(plan)
    last = plans[-1]
    return total + HEADS.get(arch.head).cost(
        last.spec,
        width=arch.head_width,
        num_classes=num_classes,
        feature_size=last.feature_size,
        tokens=last.stage_type.token_count(last.spec, last.feature_size, last.tokens_in),
    )


class Backbone(nn.Module):
    """Stem -> stages -> head, built from an architecture genotype.

    ``resolution`` is the input size the model is built for (position tables, token grids);
    it defaults to the genotype's. The model runs at any input size.
    """

    def __init__(
        self,
        arch: ArchLike,
        num_classes: int = 1000,
        *,
        resolution: int | None = None,
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = STEMS.get(arch.stem)(arch.stem_width)
        rates = drop_path_rates(drop_path_rate, [spec.depth for spec in arch.stages])
        self.stages = nn.ModuleList(
            plan.stage_type(plan, rate)
            for plan, rate in zip(plan_stages(arch, resolution), rates, strict=True)
        )
        self.head = HEADS.get(arch.head)(
            arch.stages[-1], width=arch.head_width, num_classes=num_classes, dropout=dropout
        )
        trunc_normal_init(self)
        for module in self.modules():
            if hasattr(module, "zero_init_last"):
                module.zero_init_last()

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Image (B, 3, H, W) -> last stage map (B, C, H/32, W/32) and semantic tokens or None."""
        x, tokens = self.stem(x), None
        for stage in self.stages:
            x, tokens = stage(x, tokens)
        return x, tokens

    def forward(self, x: Tensor) -> Tensor:
        return self.head(*self.forward_features(x))


def build_model(
    arch: ArchLike,
    num_classes: int = 1000,
    *,
    resolution: int | None = None,
    drop_path_rate: float = 0.0,
    dropout: float = 0.0,
) -> Backbone:
    """Build the PyTorch model of an architecture genotype (``space.genotype.ArchSpec``),
    for inputs of ``resolution`` (default: the genotype's own)."""
    return Backbone(
        arch,
        num_classes,
        resolution=resolution,
        drop_path_rate=drop_path_rate,
        dropout=dropout,
    )
