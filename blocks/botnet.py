"""BoTNet: Bottleneck Transformers for Visual Recognition (Srinivas et al., CVPR 2021, arXiv
2101.11605).

A BoT block is a ResNet bottleneck whose 3x3 conv is global multi-head self-attention over the
whole map (``blocks/bottleneck.py``). Follows timm's ``BottleneckAttn``
(``timm/layers/bottleneck_attn.py``, after the paper's reference gist), which the preset
``botnet26t`` equals:

- q, k and v from one 1x1 conv without bias, split as [q of all heads, k of all heads, v of all
  heads];
- logits = q k^T / sqrt(d) + relative position logits: one learned table per axis of
  (2 side - 1) x d rows shared by the heads (``relative_logits``), added unscaled;
- in a stride-2 block, attention runs on the input map and a 2x2 average pool follows.

Deviation: the position tables are sized for the map the stage has at the resolution the model
is built for (timm fixes the input size); on another map they are resampled linearly along their
offsets (centre on centre), and a pool over an odd side keeps the last row (``ceil_mode``), so
the block works at any size the proxy gives. At the built size both are exactly timm's.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.attention import attend
from blocks.bottleneck import (
    BottleneckOptions,
    BottleneckStage,
    relative_logits,
    relative_logits_cost,
)
from blocks.formulas import Cost, attention, conv
from blocks.registry import BLOCKS, Fused, StagePlan

__all__ = ["BoTOptions", "BoTStage", "BottleneckAttention"]


def resize_offsets(table: Tensor, side: int) -> Tensor:
    """A (2 n - 1, d) relative table resampled to (2 side - 1, d) rows, offset 0 on offset 0."""
    if table.shape[0] == 2 * side - 1:
        return table
    resized = F.interpolate(table.t()[None], size=2 * side - 1, mode="linear", align_corners=True)
    return resized[0].t()


class BottleneckAttention(nn.Module):
    """Global multi-head self-attention with relative position logits over a ``size`` x
    ``size`` map; stride 2 average-pools the output."""

    def __init__(self, dim: int, *, heads: int, size: int, stride: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1, bias=False)
        scale = self.head_dim**-0.5
        self.height_rel = nn.Parameter(torch.randn(2 * size - 1, self.head_dim) * scale)
        self.width_rel = nn.Parameter(torch.randn(2 * size - 1, self.head_dim) * scale)
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()

    @staticmethod
    def cost(dim: int, *, heads: int, size: int, stride: int) -> Cost:
        pixels = size * size
        tables = Cost(2 * (2 * size - 1) * (dim // heads), 0)
        positions = relative_logits_cost((size, size), (size, size), dim)
        return (
            conv(dim, 3 * dim, 1, pixels, bias=False)
            + attention(pixels, pixels, dim)
            + (tables + positions)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, self.head_dim, h * w).unbind(1)
        q, k, v = (t.transpose(-2, -1) for t in (q, k, v))  # (B, heads, h*w, d)
        grid = q.reshape(b * self.heads, h, w, self.head_dim)
        positions = relative_logits(
            grid, resize_offsets(self.height_rel, h), resize_offsets(self.width_rel, w)
        )
        out = attend(q, k, v, positions.reshape(b, self.heads, h * w, h * w))
        return self.pool(out.transpose(-2, -1).reshape(b, c, h, w))


@dataclasses.dataclass(frozen=True)
class BoTOptions(BottleneckOptions):
    """layout: which blocks of the stage attend (``conv``, ``alternate``, ``attention``)."""


@BLOCKS.register("bot")
class BoTStage(BottleneckStage):
    """BoTNet stage: bottlenecks, global relative-position attention in those that attend."""

    options_type = BoTOptions
    prefix = "bot"
    # q, k, v one after another (its relative tables follow the stage's map: shared)
    fused_tensors: ClassVar[dict[str, Fused]] = {r".+\.middle\.0\.qkv\.weight": Fused(0, 3)}

    @classmethod
    def attention(cls, plan: StagePlan, mid: int, stride: int, size: int) -> nn.Module:
        return BottleneckAttention(mid, heads=plan.spec.heads, size=size, stride=stride)

    @classmethod
    def attention_cost(cls, plan: StagePlan, mid: int, stride: int, size: int) -> Cost:
        return BottleneckAttention.cost(mid, heads=plan.spec.heads, size=size, stride=stride)

    @classmethod
    def costliest_options(cls, stage: int) -> BoTOptions:
        """At the space's largest scale (where its ceiling is taken) global attention costs
        more than a 3x3 conv on stage 1's map (3136 positions at 224 px) and less on the later,
        smaller maps at those widths."""
        return BoTOptions(layout="attention" if stage == 0 else "alternate")
