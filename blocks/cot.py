"""CoTNet: Contextual Transformer Networks for Visual Recognition (Li et al., TPAMI 2022,
arXiv 2107.12292).

Follows the official code (JDAI-CV/CoTNet, models/cotnet.py). A CoT layer replaces the 3x3 conv
of a ResNet bottleneck; with input x of C channels and kernel k:

- static context K1 = ReLU(BN(k x k conv(x), groups 4));
- attention weights from [x, K1]: 1x1 conv 2C -> C/2, BN, ReLU, 1x1 conv -> k^2 * C/8 (with
  bias), GroupNorm with C/8 groups: one k x k weight per pixel for each of C/8 channel groups,
  channel c using group c mod C/8 (the official interleaved sharing);
- value V = BN(1x1 conv(x)); dynamic context K2 = Swish(BN(local aggregation of V));
- output: radix-2 split attention over [K2, K1] (global pool of K1 + K2, 1x1 conv C ->
  max(C/2, 32), BN, ReLU, 1x1 conv -> 2C, softmax over the two branches).

The bottleneck is 1x1 conv -> BN -> ReLU, [3x3 average pool stride 2 in a stride-2 block], CoT
layer (no BN or ReLU after it), 1x1 conv -> BN (zero-initialised), plus a shortcut (1x1 conv of
the block's stride -> BN when the shape changes), then ReLU. CoTNet-50 is ResNet-50 (7x7 stem,
max pool, 3/4/6/3 bottlenecks of widths 256/512/1024/2048) with every 3x3 conv replaced.

The local aggregation is written as an ``einsum`` so that its multiply-accumulates are counted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.formulas import Cost, conv, norm
from blocks.layers import DropPath
from blocks.registry import (
    BLOCKS,
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
from common.fields import check_integer

__all__ = ["CoTBottleneck", "CoTLayer", "CoTOptions", "CoTStage", "ResNetStem"]

SHARE_PLANES = 8  # channels sharing one aggregation weight
KEY_GROUPS = 4  # groups of the static-context conv


@dataclasses.dataclass(frozen=True)
class CoTOptions(BlockOptions):
    """kernel: the k x k neighbourhood (odd, at least 3) of the static context and of the local
    aggregation."""

    kernel: int = 3

    def __post_init__(self) -> None:
        # k = 1 would be no context at all (and GroupNorm over one value per group).
        check_integer("kernel", self.kernel, 3)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {self.kernel!r}")

    def check(self, stage: StageLike) -> None:
        if stage.heads != 1:
            raise ValueError(
                f"heads must be 1 for a cot stage (it has no heads), got {stage.heads}"
            )
        require_one_ratio(stage, "a cot stage (width over bottleneck width)")
        mid = stage.width / stage.mlp_ratio
        if mid != int(mid) or int(mid) % SHARE_PLANES:
            raise ValueError(
                f"width / mlp_ratio (the bottleneck width) must be a whole multiple of "
                f"{SHARE_PLANES}, got {stage.width} / {stage.mlp_ratio} = {mid:g}"
            )


@STEMS.register("resnet")
class ResNetStem(nn.Module):
    """7x7 conv stride 2 -> BN -> ReLU -> 3x3 max pool stride 2; output stride 4."""

    stride = 4

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.norm = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    @staticmethod
    def cost(width: int, resolution: int) -> Cost:
        return conv(3, width, 7, math.ceil(resolution / 2) ** 2, bias=False) + norm(width)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(F.relu(self.norm(self.conv(x))))


class CoTLayer(nn.Module):
    """Contextual Transformer layer: static context from a k x k conv, dynamic context from
    attention weights computed on [x, static context], fused by split attention."""

    def __init__(self, dim: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.key_embed = nn.Sequential(
            nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=KEY_GROUPS, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        groups = dim // SHARE_PLANES
        self.embed = nn.Sequential(
            nn.Conv2d(2 * dim, dim // 2, 1, bias=False),
            nn.BatchNorm2d(dim // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // 2, kernel * kernel * groups, 1),
            nn.GroupNorm(groups, kernel * kernel * groups),
        )
        self.value = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.dynamic_norm = nn.BatchNorm2d(dim)
        attn_width = max(dim // 2, 32)
        self.split_attention = nn.Sequential(
            nn.Conv2d(dim, attn_width, 1),
            nn.BatchNorm2d(attn_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(attn_width, 2 * dim, 1),
        )

    @staticmethod
    def cost(dim: int, kernel: int, pixels: int) -> Cost:
        k2, groups, attn_width = kernel * kernel, dim // SHARE_PLANES, max(dim // 2, 32)
        static = conv(dim, dim, kernel, pixels, groups=KEY_GROUPS, bias=False) + norm(dim)
        embed = conv(2 * dim, dim // 2, 1, pixels, bias=False) + norm(dim // 2)
        embed += conv(dim // 2, k2 * groups, 1, pixels) + norm(k2 * groups)
        value = conv(dim, dim, 1, pixels, bias=False) + norm(dim)
        dynamic = Cost(0, dim * k2 * pixels) + norm(dim)
        split = conv(dim, attn_width, 1, 1) + norm(attn_width) + conv(attn_width, 2 * dim, 1, 1)
        return static + embed + value + dynamic + split

    def aggregate(self, value: Tensor, weights: Tensor) -> Tensor:
        """Per-pixel k x k weighted sum of ``value`` (B, C, H, W) with ``weights``
        (B, C/8 * k^2, H, W); channel c uses weight group c mod C/8."""
        b, c, h, w = value.shape
        k2 = self.kernel * self.kernel
        groups = c // SHARE_PLANES
        patches = F.unfold(value, self.kernel, padding=self.kernel // 2)  # (B, C * k^2, H*W)
        patches = patches.view(b, SHARE_PLANES, groups, k2, h * w)
        out = torch.einsum("bsgkn,bgkn->bsgn", patches, weights.view(b, groups, k2, h * w))
        return out.reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        static = self.key_embed(x)
        weights = self.embed(torch.cat([x, static], dim=1))
        dynamic = F.silu(self.dynamic_norm(self.aggregate(self.value(x), weights)))
        pooled = (dynamic + static).mean(dim=(2, 3), keepdim=True)
        b, c = x.shape[:2]
        attn = self.split_attention(pooled).view(b, c, 2).softmax(dim=-1)
        attn = attn.view(b, c, 2, 1, 1)
        return dynamic * attn[:, :, 0] + static * attn[:, :, 1]


class CoTBottleneck(nn.Module):
    """ResNet bottleneck whose 3x3 conv is a CoT layer. Maps (B, C_in, H, W) to
    (B, C, ceil(H/s), ceil(W/s))."""

    def __init__(
        self,
        in_width: int,
        width: int,
        mid: int,
        *,
        stride: int = 1,
        kernel: int = 3,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_width, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
        )
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride > 1 else nn.Identity()
        self.cot = CoTLayer(mid, kernel)
        self.expand = nn.Sequential(nn.Conv2d(mid, width, 1, bias=False), nn.BatchNorm2d(width))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_width != width:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_width, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def cost(
        in_width: int, width: int, mid: int, *, stride: int, kernel: int, in_size: int, size: int
    ) -> Cost:
        pixels = size * size
        out = conv(in_width, mid, 1, in_size * in_size, bias=False) + norm(mid)
        out += CoTLayer.cost(mid, kernel, pixels) + conv(mid, width, 1, pixels, bias=False)
        out += norm(width)
        if stride != 1 or in_width != width:
            out += conv(in_width, width, 1, pixels, bias=False) + norm(width)
        return out

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.expand[1].weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(self.cot(self.pool(self.reduce(x))))
        return F.relu(self.shortcut(x) + self.drop_path(out))


@BLOCKS.register("cot")
class CoTStage(Stage):
    """``depth`` CoT bottlenecks; the first one changes width and stride."""

    options_type = CoTOptions
    RATIOS = (2.0, 4.0)  # searched width / bottleneck width
    KERNELS = (3, 5)  # searched kernel sizes
    one_shot = True  # its tensors' sharing is declared (oneshot.supernet)
    # the attention embedding reads [x, static context] stacked on its input channels
    fused_tensors: ClassVar[dict[str, Fused]] = {r"blocks\.\d+\.cot\.embed\.0\.weight": Fused(1, 2)}

    @classmethod
    def own_tensors(cls, spec: StageLike) -> dict[str, str]:
        """The attention weights come k x k per group: their last conv and norm are the
        kernel's own (the static k x k conv shares, a 3 x 3 kernel being the 5 x 5's centre)."""
        return {r"blocks\.\d+\.cot\.embed\.[34]\..+": f"kernel={spec.options.kernel}"}

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec, in_width, stride = plan.spec, plan.in_width, plan.stride
        mid = int(spec.width / spec.mlp_ratio)
        self.blocks = nn.Sequential(
            *(
                CoTBottleneck(
                    in_width if i == 0 else spec.width,
                    spec.width,
                    mid,
                    stride=stride if i == 0 else 1,
                    kernel=spec.options.kernel,
                    drop_path=rate,
                )
                for i, rate in enumerate(drop_path)
            )
        )

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec, size = plan.spec, plan.feature_size
        mid, kernel = int(spec.width / spec.mlp_ratio), spec.options.kernel
        first = CoTBottleneck.cost(
            plan.in_width,
            spec.width,
            mid,
            stride=plan.stride,
            kernel=kernel,
            in_size=plan.in_size,
            size=size,
        )
        rest = CoTBottleneck.cost(
            spec.width, spec.width, mid, stride=1, kernel=kernel, in_size=size, size=size
        )
        return first + rest * (spec.depth - 1)

    @classmethod
    def draw(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> StageChoice:
        """No heads; the ratio is width over bottleneck width, then the kernel."""
        ratio = trial.suggest_categorical(f"s{stage}_cot_ratio", cls.RATIOS)
        kernel = trial.suggest_categorical(f"s{stage}_cot_kernel", cls.KERNELS)
        return StageChoice(1, ratio, CoTOptions(kernel))

    @classmethod
    def cheapest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        return StageChoice(1, max(cls.RATIOS), CoTOptions(min(cls.KERNELS)))

    @classmethod
    def costliest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        return StageChoice(1, min(cls.RATIOS), CoTOptions(max(cls.KERNELS)))

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, None]:
        return self.blocks(x), None
