"""The one backbone: a stem, four stages of any registered block types, and a head.

The stem brings the image to stride 2 or 4; the first stage makes up the rest of stride 4 and each
later stage halves the map, so stage i runs at ``stage_size(resolution, i)``. Stages pass a
(B, C, H, W) map and, from Dual stages, semantic tokens (B, m, C) that the next Dual stage or the
head may use; other stages drop them.
"""

from __future__ import annotations

from torch import Tensor, nn

from blocks.layers import drop_path_rates, stage_size, trunc_normal_init
from blocks.registry import BLOCKS, HEADS, STEMS, ArchLike

__all__ = ["Backbone", "build_model"]


class Backbone(nn.Module):
    """Stem -> stages -> head, built from an architecture genotype."""

    def __init__(
        self,
        arch: ArchLike,
        num_classes: int = 1000,
        *,
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = STEMS.get(arch.stem)(arch.stem_width)
        rates = drop_path_rates(drop_path_rate, [spec.depth for spec in arch.stages])
        stages: list[nn.Module] = []
        in_width, stride, tokens_in = arch.stem_width, 4 // self.stem.stride, False
        for i, spec in enumerate(arch.stages):
            stage_type = BLOCKS.get(spec.block)
            stages.append(
                stage_type(
                    spec,
                    in_width=in_width,
                    stride=stride,
                    feature_size=stage_size(arch.resolution, i),
                    drop_path=rates[i],
                    tokens_in=tokens_in,
                )
            )
            in_width, stride, tokens_in = spec.width, 2, stage_type.emits_tokens
        self.stages = nn.ModuleList(stages)
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
    drop_path_rate: float = 0.0,
    dropout: float = 0.0,
) -> Backbone:
    """Build the PyTorch model of an architecture genotype (``space.genotype.ArchSpec``)."""
    return Backbone(arch, num_classes, drop_path_rate=drop_path_rate, dropout=dropout)
