"""CoAtNet: Marrying Convolution and Attention for All Data Sizes (Dai et al., NeurIPS 2021,
arXiv 2106.04803).

A CoAtNet stage is either convolution (MBConv blocks, ``blocks/mbconv.py``) or relative attention
(pre-norm transformer blocks whose self-attention spans the whole map and adds a learned bias per
relative offset and head: the paper's "relative attention"); the paper stacks C-C-T-T. Follows
timm's ``MbConvBlock`` and ``TransformerBlock2d`` in the configuration of its first CoAtNet
weights (``_rw_coat_cfg`` in ``timm/models/maxxvit.py``), which the preset ``coatnet_0`` equals:

- a strided transformer block pools 2x2 after its LayerNorm and attends on the pooled map; its
  shortcut pools and widens with a 1x1 conv without bias;
- attention at the block's input width (the output projection widens), with heads of the
  stage's head width (``width / heads``; a block whose input width that does not divide uses
  the largest head width dividing both); q, k and v from one 1x1 conv with biases whose channels
  are grouped per head as [q, k, v];
- the bias table is Swin's, ((2 n - 1)^2, heads) for an n x n map, indexed by
  ``query - key + n - 1``; LayerNorm eps 1e-6, exact GELU, MLP by 1x1 convs;
- the MBConv in its CoAtNet style; the stem's two convs go to half and all of the stem width;
  the head is a LayerNorm (eps 1e-6) on the last map, the pool and a linear layer.

Searched: the stage kind (``conv`` or ``attention``), the MLP ratio (the MBConv's expansion in a
conv stage) and, in an attention stage, the heads. Deviations: the bias table is sized for the
map the stage has at the resolution the model is built for (timm fixes the input size); a smaller
map takes the table's central offsets, a larger one resamples it linearly (centre on centre). A
pool over an odd side keeps the last row (``ceil_mode``) where timm's drops it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.aewin import relative_index
from blocks.attention import attend
from blocks.formulas import Cost, attention, conv, norm
from blocks.heads import NormHead
from blocks.layers import DropPath, LayerNorm2d
from blocks.mbconv import ACTIVATIONS, COATNET_RW, Downsample, MBConv, TwoConvStem
from blocks.registry import (
    BLOCKS,
    HEADS,
    STEMS,
    BlockOptions,
    Fused,
    SharedChoices,
    Stage,
    StageChoice,
    StageLike,
    StagePlan,
    TrialLike,
    require_one_ratio,
)

__all__ = [
    "CoAtHead",
    "CoAtOptions",
    "CoAtStage",
    "CoAtStem",
    "CoAtTransformer",
    "RelativeAttention",
]

KINDS = ("conv", "attention")
EPS = 1e-6  # the transformer's and the head's LayerNorm eps


@dataclasses.dataclass(frozen=True)
class CoAtOptions(BlockOptions):
    """kind: ``conv`` (MBConv blocks) or ``attention`` (relative-attention transformer blocks)."""

    kind: str = "attention"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    def check(self, stage: StageLike) -> None:
        require_one_ratio(stage, "a CoAtNet stage")


@STEMS.register("coatnet")
class CoAtStem(TwoConvStem):
    """3x3 conv stride 2 to half the stem width -> BN -> SiLU -> 3x3 conv to the stem width,
    no biases (timm's CoAtNet-rw stem)."""

    style = COATNET_RW
    bias = False

    @staticmethod
    def widths(width: int) -> tuple[int, int]:
        return width // 2, width


@HEADS.register("coat")
class CoAtHead(NormHead):
    """LayerNorm (eps 1e-6) -> global average pool -> dropout -> linear (timm's CoAtNet)."""

    eps = EPS


def head_channels(in_width: int, stage_head_channels: int) -> int:
    """The channels per head of a block attending at ``in_width``: the stage's, or the largest
    number dividing both where the stage's does not divide ``in_width``."""
    return math.gcd(in_width, stage_head_channels)


class RelativeAttention(nn.Module):
    """Multi-head self-attention over the whole map with a relative position bias per head,
    projected from ``dim`` to ``dim_out`` channels; built for a ``size`` x ``size`` map."""

    def __init__(self, dim: int, dim_out: int, *, heads: int, size: int) -> None:
        super().__init__()
        self.heads, self.size = heads, size
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        table = torch.zeros((2 * size - 1) ** 2, heads)
        self.bias_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
        self.proj = nn.Conv2d(dim, dim_out, 1)

    @staticmethod
    def cost(dim: int, dim_out: int, *, heads: int, size: int) -> Cost:
        pixels = size * size
        return (
            conv(dim, 3 * dim, 1, pixels)
            + attention(pixels, pixels, dim)
            + Cost((2 * size - 1) ** 2 * heads, 0)
            + conv(dim, dim_out, 1, pixels)
        )

    def relative_bias(self, height: int, width: int) -> Tensor:
        """(heads, h w, h w): the table read at every (query, key) offset of an h x w map."""
        side, table = self.size, self.bias_table
        if max(height, width) > side:
            grid = table.t().reshape(1, self.heads, 2 * side - 1, 2 * side - 1)
            side = max(height, width)
            rows = 2 * side - 1
            grid = F.interpolate(grid, size=(rows, rows), mode="bilinear", align_corners=True)
            table = grid.reshape(self.heads, -1).t()
        index = relative_index(side, height, width, table.device)
        return table[index].permute(2, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, self.heads, 3 * (c // self.heads), h * w)
        q, k, v = (t.transpose(-2, -1) for t in qkv.chunk(3, dim=2))  # (B, heads, N, d)
        out = attend(q, k, v, self.relative_bias(h, w))
        return self.proj(out.transpose(-2, -1).reshape(b, c, h, w))


class CoAtTransformer(nn.Module):
    """x = shortcut(x) + Attn(pool(LN(x))); x = x + MLP(LN(x)); (B, in_width, H, W) ->
    (B, width, H', W'), attention built for an output map of ``size``."""

    def __init__(
        self,
        in_width: int,
        width: int,
        *,
        head_channels: int,
        mlp_ratio: float,
        size: int,
        stride: int = 1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.shortcut = Downsample(in_width, width, stride, bias=False)
        self.norm1 = LayerNorm2d(in_width, eps=EPS)
        self.down = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.attn = RelativeAttention(in_width, width, heads=in_width // head_channels, size=size)
        self.norm2 = LayerNorm2d(width, eps=EPS)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Conv2d(width, hidden, 1))
        self.mlp.add_module("act", ACTIVATIONS["gelu"]())
        self.mlp.add_module("fc2", nn.Conv2d(hidden, width, 1))
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(in_width: int, width: int, *, head_channels: int, mlp_ratio: float, size: int) -> Cost:
        hidden, pixels = int(width * mlp_ratio), size * size
        heads = in_width // head_channels
        return (
            Downsample.cost(in_width, width, pixels, bias=False)
            + norm(in_width)
            + RelativeAttention.cost(in_width, width, heads=heads, size=size)
            + norm(width)
            + conv(width, hidden, 1, pixels)
            + conv(hidden, width, 1, pixels)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.shortcut(x) + self.drop_path(self.attn(self.down(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@BLOCKS.register("coatnet")
class CoAtStage(Stage):
    """``depth`` MBConv or relative-attention transformer blocks (by ``options.kind``); the
    first changes the width and applies the stride."""

    options_type = CoAtOptions
    KINDS: ClassVar[tuple[str, ...]] = KINDS
    one_shot = True  # its tensors' sharing is declared (oneshot.supernet)
    # the first block attends at the input width, in as many heads as it has groups of the
    # stage's head channels (``head_channels``): its q/k/v and bias table follow both widths
    one_shot_every_width = True
    # q, k, v head by head (the bias table follows the stage's map: shared, leading heads)
    fused_tensors: ClassVar[dict[str, Fused]] = {
        r".+\.attn\.qkv\.(weight|bias)": Fused(0, 3, per_head=True)
    }

    @classmethod
    def own_tensors(cls, spec: StageLike) -> dict[str, str]:
        """The two pre-norms normalise an MBConv or an attention block: each kind its own (the
        width-changing shortcut is the same layer in both, shared)."""
        return {r"blocks\.\d+\.norm[12]\..+": f"kind={spec.options.kind}"}

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec = plan.spec
        blocks: list[nn.Module] = []
        for i, (ratio, rate) in enumerate(zip(spec.block_ratios, drop_path, strict=True)):
            in_width = plan.in_width if i == 0 else spec.width
            stride = plan.stride if i == 0 else 1
            if spec.options.kind == "conv":
                blocks.append(
                    MBConv(
                        in_width,
                        spec.width,
                        style=COATNET_RW,
                        expansion=ratio,
                        stride=stride,
                        drop_path=rate,
                    )
                )
            else:
                blocks.append(
                    CoAtTransformer(
                        in_width,
                        spec.width,
                        head_channels=head_channels(in_width, spec.width // spec.heads),
                        mlp_ratio=ratio,
                        size=plan.feature_size,
                        stride=stride,
                        drop_path=rate,
                    )
                )
        self.blocks = nn.Sequential(*blocks)

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec, total = plan.spec, Cost()
        for i, ratio in enumerate(spec.block_ratios):
            in_width = plan.in_width if i == 0 else spec.width
            if spec.options.kind == "conv":
                stride = plan.stride if i == 0 else 1
                in_size = plan.in_size if i == 0 else plan.feature_size
                total += MBConv.cost(
                    in_width,
                    spec.width,
                    style=COATNET_RW,
                    expansion=ratio,
                    stride=stride,
                    in_size=in_size,
                )
            else:
                total += CoAtTransformer.cost(
                    in_width,
                    spec.width,
                    head_channels=head_channels(in_width, spec.width // spec.heads),
                    mlp_ratio=ratio,
                    size=plan.feature_size,
                )
        return total

    @classmethod
    def draw(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> StageChoice:
        """The kind, the MLP ratio, then (attention only) the heads."""
        kind = trial.suggest_categorical(f"s{stage}_coatnet_kind", cls.KINDS)
        ratio = trial.suggest_categorical(f"s{stage}_mlp_ratio", shared.mlp_ratios)
        heads = 1
        if kind == "attention":
            heads = trial.suggest_categorical(f"s{stage}_heads", shared.heads[stage])
        return StageChoice(heads, ratio, CoAtOptions(kind))

    @classmethod
    def cheapest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        """An MBConv stage at the smallest expansion."""
        return StageChoice(1, min(shared.mlp_ratios), CoAtOptions("conv"))

    @classmethod
    def costliest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        """Global attention at the largest MLP ratio."""
        return StageChoice(max(shared.heads[stage]), max(shared.mlp_ratios), CoAtOptions())

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, None]:
        return self.blocks(x), None
