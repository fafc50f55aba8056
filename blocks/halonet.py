"""HaloNet: Scaling Local Self-Attention for Parameter Efficient Visual Backbones (Vaswani et
al., CVPR 2021, arXiv 2103.12731).

A HaloNet block is a ResNet bottleneck whose 3x3 conv is blocked local self-attention
(``blocks/bottleneck.py``): the map is cut into ``block`` x ``block`` query blocks, and each
attends to its block grown by ``halo`` pixels on every side (a window of block + 2 halo). Follows
timm's ``HaloAttn`` (``timm/layers/halo_attn.py``), which the preset ``halonet26t`` equals:

- q from a 1x1 conv without bias, of stride 2 in a stride-2 block (queries subsampled, keys
  not: each of the block / 2 query blocks still sees its whole window); k and v from one 1x1
  conv without bias whose channels are grouped per head as [k, v];
- the window reaches past the map's border into zeros (keys and values of zero, as timm pads);
- logits = q k^T / sqrt(d) + relative position logits, one table per axis of 2 window - 1 rows
  shared by the heads, indexed ``key - query + window - 1`` (``relative_logits``).

Deviation: timm requires the map side to be a multiple of the block; here a map that is not is
zero-padded on the bottom and right first and the output cropped back, so the block works at any
size the proxy gives (at the preset's sizes nothing is padded).
"""

from __future__ import annotations

import dataclasses
import math
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
from blocks.layers import pad_to_multiple
from blocks.registry import BLOCKS, Fused, StageLike, StagePlan, TrialLike
from common.fields import check_integer

__all__ = ["HaloAttention", "HaloOptions", "HaloStage"]


class HaloAttention(nn.Module):
    """Blocked local multi-head self-attention: ``block`` x ``block`` queries over their block
    plus a ``halo`` on every side."""

    def __init__(self, dim: int, *, heads: int, block: int, halo: int, stride: int = 1) -> None:
        super().__init__()
        if block % stride:
            raise ValueError(f"a stride-{stride} halo block needs an even block, got {block}")
        self.heads, self.head_dim = heads, dim // heads
        self.block, self.halo, self.stride = block, halo, stride
        self.window = block + 2 * halo
        self.q = nn.Conv2d(dim, dim, 1, stride=stride, bias=False)
        self.kv = nn.Conv2d(dim, 2 * dim, 1, bias=False)
        scale = self.head_dim**-0.5
        rows = 2 * self.window - 1
        self.height_rel = nn.Parameter(torch.randn(rows, self.head_dim) * scale)
        self.width_rel = nn.Parameter(torch.randn(rows, self.head_dim) * scale)

    @staticmethod
    def cost(dim: int, *, heads: int, block: int, halo: int, stride: int, size: int) -> Cost:
        side = size + -size % block  # padded to whole blocks
        blocks, window, query_block = (side // block) ** 2, block + 2 * halo, block // stride
        queries = blocks * query_block**2
        tables = Cost(2 * (2 * window - 1) * (dim // heads), 0)
        positions = relative_logits_cost((query_block, query_block), (window, window), dim)
        return (
            conv(dim, dim, 1, (side // stride) ** 2, bias=False)
            + conv(dim, 2 * dim, 1, side * side, bias=False)
            + attention(queries, window * window, dim)
            + tables
            + positions * blocks
        )

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x = pad_to_multiple(x, self.block, self.block)
        rows, cols = x.shape[-2] // self.block, x.shape[-1] // self.block
        query_block, heads, d = self.block // self.stride, self.heads, self.head_dim
        q = self.q(x).reshape(b * heads, d, rows, query_block, cols, query_block)
        q = q.permute(0, 2, 4, 3, 5, 1).reshape(b * heads, rows * cols, query_block**2, d)
        kv = F.pad(self.kv(x), (self.halo,) * 4)
        kv = kv.unfold(2, self.window, self.block).unfold(3, self.window, self.block)
        kv = kv.reshape(b * heads, 2 * d, rows * cols, self.window**2).permute(0, 2, 3, 1)
        k, v = kv.split(d, dim=-1)
        grid = q.reshape(-1, query_block, query_block, d)
        positions = relative_logits(grid, self.height_rel, self.width_rel)
        out = attend(q, k, v, positions.reshape(b * heads, rows * cols, query_block**2, -1))
        out = out.reshape(b, heads, rows, cols, query_block, query_block, d)
        out = out.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, c, rows * query_block, cols * query_block)
        return out[..., : math.ceil(h / self.stride), : math.ceil(w / self.stride)]


@dataclasses.dataclass(frozen=True)
class HaloOptions(BottleneckOptions):
    """layout: which blocks of the stage attend (``conv``, ``alternate``, ``attention``);
    block: the side of a query block (even, so that a stride-2 block halves it); halo: the
    pixels a block's window reaches past it on every side."""

    block: int = 8
    halo: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_integer("block", self.block, 2)
        check_integer("halo", self.halo, 0)
        if self.block % 2:
            raise ValueError(f"block must be even, got {self.block!r}")


@BLOCKS.register("halo")
class HaloStage(BottleneckStage):
    """HaloNet stage: bottlenecks, blocked local attention with a halo in those that attend."""

    options_type = HaloOptions
    prefix = "halo"
    BLOCK_SIZES = (4, 8)  # searched query-block sides
    HALOS = (1, 2, 3)  # searched halo widths
    # k and v head by head (q is its own layer)
    fused_tensors: ClassVar[dict[str, Fused]] = {
        r".+\.middle\.0\.kv\.weight": Fused(0, 2, per_head=True)
    }

    @classmethod
    def own_tensors(cls, spec: StageLike) -> dict[str, str]:
        """The relative tables span the query block and its halo: each (block, halo) its own."""
        options = spec.options
        window = f"block={options.block},halo={options.halo}"
        return {**super().own_tensors(spec), r".+\.middle\.0\.(height|width)_rel": window}

    @classmethod
    def attention(cls, plan: StagePlan, mid: int, stride: int, size: int) -> nn.Module:
        options = plan.spec.options
        return HaloAttention(
            mid, heads=plan.spec.heads, block=options.block, halo=options.halo, stride=stride
        )

    @classmethod
    def attention_cost(cls, plan: StagePlan, mid: int, stride: int, size: int) -> Cost:
        options = plan.spec.options
        return HaloAttention.cost(
            mid,
            heads=plan.spec.heads,
            block=options.block,
            halo=options.halo,
            stride=stride,
            size=size,
        )

    @classmethod
    def draw_own(cls, trial: TrialLike, stage: int, layout: str) -> HaloOptions:
        block = trial.suggest_categorical(f"s{stage}_{cls.prefix}_block", cls.BLOCK_SIZES)
        halo = trial.suggest_categorical(f"s{stage}_{cls.prefix}_halo", cls.HALOS)
        return HaloOptions(layout=layout, block=block, halo=halo)

    @classmethod
    def cheapest_options(cls, stage: int) -> HaloOptions:
        return HaloOptions(block=min(cls.BLOCK_SIZES), halo=min(cls.HALOS))

    @classmethod
    def costliest_options(cls, stage: int) -> HaloOptions:
        """At the space's largest scale (where its ceiling is taken) a 3x3 conv costs more than
        halo attention over a window of 14 x 14, so the conv-holding layout is the costlier."""
        return HaloOptions(layout="alternate", block=max(cls.BLOCK_SIZES), halo=max(cls.HALOS))
