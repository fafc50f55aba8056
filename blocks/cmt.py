"""CMT: Convolutional Neural Networks Meet Vision Transformers (Guo et al., CVPR 2022,
arXiv 2107.06263).

Follows the official code (huawei-noah/Efficient-AI-Backbones, cmt_pytorch/cmt.py):

- stem: 3x3 conv stride 2 -> GELU -> BN, then twice 3x3 conv -> GELU -> BN (activation before BN);
- each stage opens with a 2x2 stride-2 conv -> LayerNorm ("patch aggregation");
- block: LPU x = x + DWConv3x3(x); x = x + LMHSA(LN(x)); x = x + IRFFN(LN(x)) (LN eps 1e-6);
- LMHSA: separate q, k, v linears with bias; for reduction k > 1, K and V come from a k x k
  depthwise conv of stride k followed by BatchNorm; logits = q k^T / sqrt(d) + B;
- the relative position bias B is the official full table of shape (heads, n, n / k^2) per stage,
  shared by the stage's blocks (not a Swin-style displacement table). It is sized for the
  genotype's resolution; at another input size it is resized bicubically over the query grid and
  the key grid, so one model runs at any size;
- IRFFN: 1x1 conv (expand R) -> GELU -> BN, h = DWConv3x3(h) + h -> GELU -> BN, 1x1 conv -> BN;
- head (``blocks.heads.ConvHead``): 1x1 conv to 1280 -> BN -> Swish -> global average pool ->
  dropout -> linear.

The paper's complexity of one block with R = 4 is 10nd^2(1 + 0.2/k^2) + 2n^2d/k^2 + 45nd MACs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.attention import attend, merge_heads, split_heads
from blocks.formulas import Cost, attention, conv, linear, norm, per_ratio
from blocks.layers import (
    DepthwiseConv2d,
    DropPath,
    LayerNorm2d,
    Transition,
    map_to_tokens,
    pad_to_multiple,
    tokens_to_map,
)
from blocks.registry import (
    BLOCKS,
    STEMS,
    BlockOptions,
    MapChoice,
    SharedChoices,
    Stage,
    StageLike,
    StagePlan,
    TrialLike,
)
from common.fields import check_integer

__all__ = ["CMTBlock", "CMTOptions", "CMTStage", "CMTStem"]


@dataclasses.dataclass(frozen=True)
class CMTOptions(BlockOptions):
    """kv_reduction: the k of LMHSA; K and V are computed on a map k times smaller per side."""

    kv_reduction: int = 1

    def __post_init__(self) -> None:
        check_integer("kv_reduction", self.kv_reduction)


@STEMS.register("cmt")
class CMTStem(nn.Module):
    """3x3 conv stride 2 -> GELU -> BN, then two [3x3 conv -> GELU -> BN]; output stride 2."""

    stride = 2

    def __init__(self, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(3 if i == 0 else width, width, 3, stride=2 if i == 0 else 1, padding=1),
                nn.GELU(),
                nn.BatchNorm2d(width),
            ]
        self.layers = nn.Sequential(*layers)

    @staticmethod
    def cost(width: int, resolution: int) -> Cost:
        pixels = math.ceil(resolution / 2) ** 2
        first = conv(3, width, 3, pixels) + norm(width)
        return first + (conv(width, width, 3, pixels) + norm(width)) * 2

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


Grid = tuple[int, int]


def resize_relative_bias(table: Tensor, old: tuple[Grid, Grid], new: tuple[Grid, Grid]) -> Tensor:
    """Resize a (heads, Hq*Wq, Hk*Wk) bias table from ``old`` (query grid, key grid) to ``new``.

    The table is read as 4-D (query row, query column, key row, key column) and interpolated
    bicubically over the query grid, then over the key grid.
    """
    heads = table.shape[0]
    (hq0, wq0), (hk0, wk0) = old
    query, key = new
    t = table.reshape(heads, hq0, wq0, hk0 * wk0).permute(0, 3, 1, 2)  # (h, nk0, Hq0, Wq0)
    t = F.interpolate(t, size=query, mode="bicubic", align_corners=False)
    t = t.permute(0, 2, 3, 1).reshape(heads * query[0] * query[1], 1, hk0, wk0)
    t = F.interpolate(t, size=key, mode="bicubic", align_corners=False)
    return t.reshape(heads, query[0] * query[1], key[0] * key[1])


class LocalPerceptionUnit(nn.Module):
    """LPU(x) = DWConv3x3(x) + x."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = DepthwiseConv2d(dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x)


class LightweightAttention(nn.Module):
    """LMHSA: multi-head attention whose keys and values come from a k-times reduced map."""

    def __init__(self, dim: int, heads: int, kv_reduction: int) -> None:
        super().__init__()
        self.heads = heads
        self.kv_reduction = kv_reduction
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if kv_reduction > 1:
            self.reduce = nn.Sequential(
                nn.Conv2d(dim, dim, kv_reduction, stride=kv_reduction, groups=dim),
                nn.BatchNorm2d(dim),
            )

    def kv_grid(self, height: int, width: int) -> tuple[int, int]:
        k = self.kv_reduction
        return -(-height // k), -(-width // k)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        tokens = map_to_tokens(x)
        if self.kv_reduction > 1:
            kv = map_to_tokens(
                self.reduce(pad_to_multiple(x, self.kv_reduction, self.kv_reduction))
            )
        else:
            kv = tokens
        q, k, v = (split_heads(t, self.heads) for t in (self.q(tokens), self.k(kv), self.v(kv)))
        return tokens_to_map(self.proj(merge_heads(attend(q, k, v, bias))), h, w)


class InvertedResidualFFN(nn.Module):
    """IRFFN: 1x1 conv -> GELU -> BN, h + DWConv3x3(h) -> GELU -> BN, 1x1 conv -> BN."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.BatchNorm2d(hidden))
        self.dwconv = DepthwiseConv2d(hidden)
        self.act = nn.Sequential(nn.GELU(), nn.BatchNorm2d(hidden))
        self.reduce = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = self.expand(x)
        h = self.act(h + self.dwconv(h))
        return self.reduce(h)


class CMTBlock(nn.Module):
    """x = LPU(x); x = x + LMHSA(LN(x)); x = x + IRFFN(LN(x)). Maps (B, C, H, W) to itself."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        kv_reduction: int,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.lpu = LocalPerceptionUnit(dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.attn = LightweightAttention(dim, heads, kv_reduction)
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.ffn = InvertedResidualFFN(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(dim: int, mlp_ratio: float, kv_reduction: int, side: int) -> Cost:
        """One block on a side x side map: with n = side^2, d = dim, k = kv_reduction and R = 4
        this is the paper's 10nd^2(1 + 0.2/k^2) + 2n^2 d/k^2 + 45nd plus the reduction conv."""
        n, n_kv = side * side, math.ceil(side / kv_reduction) ** 2
        hidden = int(dim * mlp_ratio)
        lpu = conv(dim, dim, 3, n, groups=dim)
        attn = linear(dim, dim, n) * 2 + linear(dim, dim, n_kv) * 2 + attention(n, n_kv, dim)
        if kv_reduction > 1:
            attn += conv(dim, dim, kv_reduction, n_kv, groups=dim) + norm(dim)
        ffn = conv(dim, hidden, 1, n) + conv(hidden, hidden, 3, n, groups=hidden)
        ffn += conv(hidden, dim, 1, n) + norm(hidden) * 2 + norm(dim)
        return lpu + norm(dim) * 2 + attn + ffn

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = self.lpu(x)
        x = x + self.drop_path(self.attn(self.norm1(x), bias))
        return x + self.drop_path(self.ffn(self.norm2(x)))


@BLOCKS.register("cmt")
class CMTStage(Stage):
    """2x2 stride-2 patch aggregation, then ``depth`` CMT blocks sharing one position-bias table."""

    options_type = CMTOptions
    KV_REDUCTIONS = ((4, 8), (2, 4), (1, 2), (1, 2))  # searched k per stage
    one_shot = True  # its tensors' sharing is declared (oneshot.supernet)

    @classmethod
    def own_tensors(cls, spec: StageLike) -> dict[str, str]:
        """The key grid is k times smaller: the reduction conv and the bias table are k's own."""
        k = f"k={spec.options.kv_reduction}"
        return {r"relative_bias": k, r"blocks\.\d+\.attn\.reduce\..+": k}

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec, feature_size = plan.spec, plan.feature_size
        k = spec.options.kv_reduction
        self.transition = Transition(plan.in_width, spec.width, stride=plan.stride, kernel=2)
        self.blocks = nn.ModuleList(
            CMTBlock(spec.width, spec.heads, ratio, k, rate)
            for ratio, rate in zip(spec.block_ratios, drop_path, strict=True)
        )
        self.grid_query = (feature_size, feature_size)
        self.grid_key = self.blocks[0].attn.kv_grid(feature_size, feature_size)
        n_query = feature_size * feature_size
        n_key = self.grid_key[0] * self.grid_key[1]
        self.relative_bias = nn.Parameter(torch.randn(spec.heads, n_query, n_key))

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec, side = plan.spec, plan.feature_size
        k, n = spec.options.kv_reduction, side * side
        entry = Transition.cost(plan.in_width, spec.width, stride=plan.stride, kernel=2, pixels=n)
        blocks = per_ratio(spec, lambda ratio: CMTBlock.cost(spec.width, ratio, k, side))
        bias_table = Cost(spec.heads * n * math.ceil(side / k) ** 2, 0)
        return entry + blocks + bias_table

    @classmethod
    def draw_options(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> CMTOptions:
        return CMTOptions(
            trial.suggest_categorical(f"s{stage}_kv_reduction", cls.KV_REDUCTIONS[stage])
        )

    @classmethod
    def cheapest_options(cls, stage: int) -> CMTOptions:
        return CMTOptions(max(cls.KV_REDUCTIONS[stage]))

    @classmethod
    def costliest_options(cls, stage: int) -> CMTOptions:
        return CMTOptions(min(cls.KV_REDUCTIONS[stage]))

    @classmethod
    def map_choices(cls, stage: int, side: int) -> list[MapChoice]:
        """k: the key grid ceil(side / k) of each choice."""
        ks = cls.KV_REDUCTIONS[stage]
        keys = tuple(f"{math.ceil(side / k)}x{math.ceil(side / k)} keys" for k in ks)
        return [MapChoice("CMT k", ks, keys)]

    def bias_for(self, height: int, width: int) -> Tensor:
        """The stage's bias table for an (height, width) map, resized if the size differs."""
        grid_key = self.blocks[0].attn.kv_grid(height, width)
        if (height, width) == self.grid_query and grid_key == self.grid_key:
            return self.relative_bias
        old = (self.grid_query, self.grid_key)
        return resize_relative_bias(self.relative_bias, old, ((height, width), grid_key))

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, None]:
        x = self.transition(x)
        bias = self.bias_for(x.shape[-2], x.shape[-1])
        for block in self.blocks:
            x = block(x, bias)
        return x, None
