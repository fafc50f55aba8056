"""MaxViT: Multi-Axis Vision Transformer (Tu et al., ECCV 2022, arXiv 2204.01697).

A MaxViT block is an MBConv (``blocks/mbconv.py``), then block attention (self-attention within
non-overlapping ``window`` x ``window`` windows, local), then grid attention (the map cut into a
``grid`` x ``grid`` grid of cells; each attention group takes one token from every cell, the
tokens at the same place in each, so it mixes the whole map sparsely). Each attention is a
pre-norm transformer layer: x + Attn(LN(x)), then x + MLP(LN(x)). Follows timm's
``MaxxVitBlock`` with ``PartitionAttentionCl`` and its TF configuration (``_tf_cfg`` in
``timm/models/maxxvit.py``, after Google's code), which the preset ``maxvit_tiny`` equals:

- heads of 32 channels in the presets; q, k and v from one linear layer with biases, split as
  [q of all heads, k of all heads, v of all heads];
- a relative position bias per head, one (2P - 1) x (2P - 1) table per attention layer (P the
  window or grid side), indexed by ``key - query + P - 1`` along each axis (TF's convention), in
  grid attention by the cells' grid coordinates;
- LayerNorm eps 1e-5 and GELU with the tanh approximation in the attention layers; the MBConv
  in its MaxViT style.

Searched: the window and grid sides (4 or 7), heads and MLP ratio; the MBConv expansion is
MaxViT's 4. Deviations, for the maps the proxy gives: timm requires the map side to be a multiple
of the window and of the grid. Here a window or grid larger than the map shrinks to the map
(one window: global attention; the table's central rows give the offsets), and a map that is not
a multiple is zero-padded on the bottom and right after the norm, the padded keys masked and the
padded queries cropped. At the presets' sizes nothing is padded or shrunk.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.attention import attend
from blocks.formulas import Cost, attention, linear, norm
from blocks.layers import DropPath, shape_cached
from blocks.mbconv import ACTIVATIONS, MAXVIT_TF, MBConv, TwoConvStem
from blocks.registry import (
    BLOCKS,
    STEMS,
    BlockOptions,
    Fused,
    MapChoice,
    SharedChoices,
    Stage,
    StageLike,
    StagePlan,
    TrialLike,
    require_one_ratio,
)
from common.fields import check_integer

__all__ = ["MaxViTBlock", "MaxViTOptions", "MaxViTStage", "MaxViTStem", "PartitionAttention"]

MASKED = -100.0  # additive logit of a padded key (as the other blocks' masks)
EXPANSION = 4.0  # MaxViT's MBConv expansion


@dataclasses.dataclass(frozen=True)
class MaxViTOptions(BlockOptions):
    """window: side of block attention's windows; grid: side of grid attention's grid."""

    window: int = 7
    grid: int = 7

    def __post_init__(self) -> None:
        check_integer("window", self.window)
        check_integer("grid", self.grid)

    def check(self, stage: StageLike) -> None:
        require_one_ratio(stage, "a MaxViT stage")


@STEMS.register("maxvit")
class MaxViTStem(TwoConvStem):
    """3x3 conv stride 2 -> BN (eps 1e-3) -> GELU (tanh) -> 3x3 conv, both to the stem width,
    with biases and TF 'same' padding (timm's MaxViT-TF stem)."""

    style = MAXVIT_TF
    bias = True

    @staticmethod
    def widths(width: int) -> tuple[int, int]:
        return width, width


def partition(x: Tensor, part: tuple[int, int], grid: bool) -> Tensor:
    """(B, H, W, C) whose sides are multiples of ``part`` -> (B, groups, part_h * part_w, C).

    Block partition: each group is one window of ``part`` contiguous pixels. Grid partition: the
    map is a ``part`` grid of cells and each group takes the pixel at one place in every cell,
    in grid order."""
    b, h, w, c = x.shape
    ph, pw = part
    if grid:
        x = x.reshape(b, ph, h // ph, pw, w // pw, c).permute(0, 2, 4, 1, 3, 5)
    else:
        x = x.reshape(b, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, -1, ph * pw, c)


def unpartition(x: Tensor, part: tuple[int, int], size: tuple[int, int], grid: bool) -> Tensor:
    """The inverse of ``partition``: (B, groups, part_h * part_w, C) -> (B, H, W, C)."""
    b, _, _, c = x.shape
    (ph, pw), (h, w) = part, size
    if grid:
        x = x.reshape(b, h // ph, w // pw, ph, pw, c).permute(0, 3, 1, 4, 2, 5)
    else:
        x = x.reshape(b, h // ph, w // pw, ph, pw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


@shape_cached
def _offsets(part: int, table_side: int, device: torch.device) -> Tensor:
    """(part, part) rows of a (2 table_side - 1)-row table: key - query + table_side - 1."""
    position = torch.arange(part, device=device)
    return position[None, :] - position[:, None] + table_side - 1


@shape_cached
def _padded_keys(
    size: tuple[int, int],
    padded: tuple[int, int],
    part: tuple[int, int],
    grid: bool,
    device: torch.device,
) -> Tensor | None:
    """Additive mask (groups, 1, 1, N) of the padded keys of each group, or None."""
    if size == padded:
        return None
    rows = torch.arange(padded[0], device=device) >= size[0]
    cols = torch.arange(padded[1], device=device) >= size[1]
    outside = (rows[:, None] | cols[None, :]).float()[None, :, :, None]
    return partition(outside, part, grid)[0, :, None, None, :, 0] * MASKED


class PartitionAttention(nn.Module):
    """Multi-head self-attention within windows (``grid=False``) or grid groups of side
    ``part`` with a relative position bias; (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, *, heads: int, part: int, grid: bool) -> None:
        super().__init__()
        self.heads, self.part, self.grid = heads, part, grid
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        table = torch.zeros(heads, 2 * part - 1, 2 * part - 1)
        self.bias_table = nn.Parameter(nn.init.normal_(table, std=0.02))

    @staticmethod
    def cost(dim: int, *, heads: int, part: int, side: int) -> Cost:
        """On a ``side`` x ``side`` map; padded queries count, as they run."""
        p = min(part, side)
        padded = math.ceil(side / p) * p
        tokens = side * side
        return (
            linear(dim, 3 * dim, tokens)
            + linear(dim, dim, tokens)
            + attention(padded * padded, p * p, dim)
            + Cost(heads * (2 * part - 1) ** 2, 0)
        )

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        part = (min(self.part, h), min(self.part, w))
        padded = (math.ceil(h / part[0]) * part[0], math.ceil(w / part[1]) * part[1])
        qkv = F.pad(self.qkv(x), (0, 0, 0, padded[1] - w, 0, padded[0] - h))
        groups = partition(qkv, part, self.grid)  # (B, G, N, 3C)
        groups = groups.reshape(b, groups.shape[1], part[0] * part[1], 3, self.heads, -1)
        q, k, v = groups.permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B, G, heads, N, d)
        rows = _offsets(part[0], self.part, x.device)
        cols = _offsets(part[1], self.part, x.device)
        bias = self.bias_table[:, rows[:, None, :, None], cols[None, :, None, :]]
        bias = bias.reshape(self.heads, part[0] * part[1], part[0] * part[1])
        mask = _padded_keys((h, w), padded, part, self.grid, x.device)
        if mask is not None:
            bias = bias + mask
        out = attend(q, k, v, bias)  # (B, G, heads, N, d)
        # heads concatenated by a copy: a reshape of the transposed output is a view that
        # torch.export's decomposition of the fused kernel cannot take (the ONNX export fails)
        out = torch.cat(out.unbind(2), dim=-1)  # (B, G, N, C)
        out = unpartition(out, part, padded, self.grid)[:, :h, :w]
        return self.proj(out)


class PartitionTransformer(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)), attention by window or grid; (B, H, W, C)."""

    def __init__(
        self, dim: int, *, heads: int, mlp_ratio: float, part: int, grid: bool, drop_path: float
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = PartitionAttention(dim, heads=heads, part=part, grid=grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", ACTIVATIONS[MAXVIT_TF.act]())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(dim: int, *, heads: int, mlp_ratio: float, part: int, side: int) -> Cost:
        hidden, tokens = int(dim * mlp_ratio), side * side
        mlp = linear(dim, hidden, tokens) + linear(hidden, dim, tokens)
        return norm(dim) * 2 + PartitionAttention.cost(dim, heads=heads, part=part, side=side) + mlp

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    """MBConv, block attention, grid attention; (B, in_width, H, W) -> (B, width, H', W')."""

    def __init__(
        self,
        in_width: int,
        width: int,
        *,
        heads: int,
        mlp_ratio: float,
        options: MaxViTOptions,
        stride: int = 1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv = MBConv(
            in_width,
            width,
            style=MAXVIT_TF,
            expansion=EXPANSION,
            stride=stride,
            drop_path=drop_path,
        )
        common = {"heads": heads, "mlp_ratio": mlp_ratio, "drop_path": drop_path}
        self.attn_block = PartitionTransformer(width, part=options.window, grid=False, **common)
        self.attn_grid = PartitionTransformer(width, part=options.grid, grid=True, **common)

    @staticmethod
    def cost(
        in_width: int,
        width: int,
        *,
        heads: int,
        mlp_ratio: float,
        options: MaxViTOptions,
        stride: int,
        in_size: int,
    ) -> Cost:
        side = math.ceil(in_size / stride)
        mbconv = MBConv.cost(
            in_width, width, style=MAXVIT_TF, expansion=EXPANSION, stride=stride, in_size=in_size
        )
        common = {"heads": heads, "mlp_ratio": mlp_ratio, "side": side}
        return (
            mbconv
            + PartitionTransformer.cost(width, part=options.window, **common)
            + PartitionTransformer.cost(width, part=options.grid, **common)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.attn_grid(self.attn_block(x)).permute(0, 3, 1, 2)


@BLOCKS.register("maxvit")
class MaxViTStage(Stage):
    """``depth`` MaxViT blocks; the first one's MBConv changes the width and applies the stride."""

    options_type = MaxViTOptions
    PARTS: ClassVar[tuple[int, ...]] = (4, 7)  # searched window and grid sides
    one_shot = True  # its tensors' sharing is declared (oneshot.supernet)
    # q, k, v one after another in both attentions
    fused_tensors: ClassVar[dict[str, Fused]] = {r".+\.attn\.qkv\.(weight|bias)": Fused(0, 3)}

    @classmethod
    def own_tensors(cls, spec: StageLike) -> dict[str, str]:
        """A bias table spans the offsets of a window (or grid) side: each side its own."""
        window, grid = spec.options.window, spec.options.grid
        return {
            r".+\.attn_block\.attn\.bias_table": f"window={window}",
            r".+\.attn_grid\.attn\.bias_table": f"grid={grid}",
        }

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec = plan.spec
        self.blocks = nn.Sequential(
            *(
                MaxViTBlock(
                    plan.in_width if i == 0 else spec.width,
                    spec.width,
                    heads=spec.heads,
                    mlp_ratio=ratio,
                    options=spec.options,
                    stride=plan.stride if i == 0 else 1,
                    drop_path=rate,
                )
                for i, (ratio, rate) in enumerate(zip(spec.block_ratios, drop_path, strict=True))
            )
        )

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec = plan.spec

        def block(i: int, in_width: int, stride: int, in_size: int) -> Cost:
            return MaxViTBlock.cost(
                in_width,
                spec.width,
                heads=spec.heads,
                mlp_ratio=spec.block_ratios[i],
                options=spec.options,
                stride=stride,
                in_size=in_size,
            )

        first = block(0, plan.in_width, plan.stride, plan.in_size)
        rest = [block(i, spec.width, 1, plan.feature_size) for i in range(1, spec.depth)]
        return sum(rest, first)

    @classmethod
    def draw_options(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> MaxViTOptions:
        window = trial.suggest_categorical(f"s{stage}_maxvit_window", cls.PARTS)
        grid = trial.suggest_categorical(f"s{stage}_maxvit_grid", cls.PARTS)
        return MaxViTOptions(window, grid)

    @classmethod
    def cheapest_options(cls, stage: int) -> MaxViTOptions:
        return MaxViTOptions(min(cls.PARTS), min(cls.PARTS))

    @classmethod
    def costliest_options(cls, stage: int) -> MaxViTOptions:
        return MaxViTOptions(max(cls.PARTS), max(cls.PARTS))

    @classmethod
    def map_choices(cls, stage: int, side: int) -> list[MapChoice]:
        """A window or grid as large as the map is global attention over it."""

        def effective(kind: str) -> tuple[str, ...]:
            return tuple(
                f"{kind} {part}" if part < side else "global attention" for part in cls.PARTS
            )

        return [
            MapChoice("MaxViT window", cls.PARTS, effective("windows of")),
            MapChoice("MaxViT grid", cls.PARTS, effective("grid of")),
        ]

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, None]:
        return self.blocks(x), None
