"""ResNet bottlenecks with self-attention in place of the 3x3 conv: the parts BoTNet and HaloNet
share (their block types live in ``blocks/botnet.py`` and ``blocks/halonet.py``).

Follows timm's "bring your own blocks" network (``timm/models/byobnet.py``), whose
``botnet26t_256`` and ``halonet26t`` the presets equal:

- the tiered stem: 3x3 convs stride 2, 1, 1 to 3/8, 1/2 and all of the stem width, each -> BN ->
  ReLU, then a 3x3 max pool stride 2 (output stride 4);
- a conv bottleneck: 1x1 conv -> BN -> ReLU, 3x3 conv (the block's stride) -> BN -> ReLU, 1x1
  conv -> BN, plus the shortcut (1x1 conv of the block's stride -> BN when the shape changes),
  then ReLU;
- an attention bottleneck: the same with the 3x3 conv replaced by a self-attention layer that
  applies the block's stride itself, then BN -> ReLU.

A stage's ``layout`` says which of its blocks attend: ``conv`` none (a ResNet stage),
``attention`` all, ``alternate`` every second one starting with the second (timm's
``interleave_blocks``; a stage of one block attends). ``mlp_ratio`` is the stage's width over its
bottleneck width, as for CoT.
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
from blocks.layers import DropPath, shape_cached
from blocks.registry import (
    STEMS,
    BlockOptions,
    SharedChoices,
    Stage,
    StageChoice,
    StageLike,
    StagePlan,
    TrialLike,
    require_one_ratio,
)

__all__ = [
    "LAYOUTS",
    "AttentionBottleneck",
    "BottleneckOptions",
    "BottleneckStage",
    "ConvBottleneck",
    "TieredStem",
    "attends",
    "relative_logits",
    "relative_logits_cost",
]

LAYOUTS = ("conv", "alternate", "attention")


def attends(layout: str, index: int, depth: int) -> bool:
    """Whether block ``index`` of a stage of ``depth`` blocks with ``layout`` attends."""
    if layout == "attention":
        return True
    if layout == "alternate":
        return index % 2 == 1 or depth == 1
    return False


@dataclasses.dataclass(frozen=True)
class BottleneckOptions(BlockOptions):
    """layout: which blocks of the stage attend (``conv``, ``alternate``, ``attention``)."""

    layout: str = "attention"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    def check(self, stage: StageLike) -> None:
        require_one_ratio(stage, "a bottleneck stage (width over bottleneck width)")
        mid = stage.width / stage.mlp_ratio
        if mid != int(mid) or int(mid) % stage.heads:
            raise ValueError(
                f"width / mlp_ratio (the bottleneck width) must be a whole multiple of heads "
                f"({stage.heads}), got {stage.width} / {stage.mlp_ratio} = {mid:g}"
            )


def _conv_bn(in_width: int, out_width: int, kernel: int, *, stride: int = 1) -> nn.Sequential:
    """kernel x kernel conv (no bias, padding kernel // 2) -> BN."""
    return nn.Sequential(
        nn.Conv2d(in_width, out_width, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_width),
    )


def _conv_bn_cost(in_width: int, out_width: int, kernel: int, pixels: int) -> Cost:
    return conv(in_width, out_width, kernel, pixels, bias=False) + norm(out_width)


@STEMS.register("tiered")
class TieredStem(nn.Module):
    """3x3 convs (stride 2, 1, 1) to 3/8, 1/2 and 1 x ``width``, each -> BN -> ReLU, then a 3x3
    max pool stride 2; output stride 4 (timm's ``tiered`` stem)."""

    stride = 4

    def __init__(self, width: int) -> None:
        super().__init__()
        widths = self.widths(width)
        self.convs = nn.ModuleList(
            _conv_bn(c_in, c_out, 3, stride=2 if i == 0 else 1)
            for i, (c_in, c_out) in enumerate(zip((3, *widths[:-1]), widths, strict=True))
        )
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    @staticmethod
    def widths(width: int) -> tuple[int, int, int]:
        return 3 * width // 8, width // 2, width

    @classmethod
    def cost(cls, width: int, resolution: int) -> Cost:
        pixels = math.ceil(resolution / 2) ** 2
        widths = cls.widths(width)
        return sum(
            (
                _conv_bn_cost(c_in, c_out, 3, pixels)
                for c_in, c_out in zip((3, *widths[:-1]), widths, strict=True)
            ),
            Cost(),
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.convs:
            x = F.relu(layer(x))
        return self.pool(x)


class _Bottleneck(nn.Module):
    """1x1 reduce -> ``middle`` -> 1x1 expand -> BN, plus the shortcut, then ReLU."""

    def __init__(
        self, in_width: int, width: int, mid: int, middle: nn.Module, stride: int, drop_path: float
    ) -> None:
        super().__init__()
        self.reduce = _conv_bn(in_width, mid, 1)
        self.middle = middle
        self.expand = _conv_bn(mid, width, 1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_width != width:
            self.shortcut = _conv_bn(in_width, width, 1, stride=stride)
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def outer_cost(in_width: int, width: int, mid: int, stride: int, in_size: int) -> Cost:
        """Everything but the middle: reduce, expand and the shortcut."""
        size = math.ceil(in_size / stride)
        total = _conv_bn_cost(in_width, mid, 1, in_size**2) + _conv_bn_cost(mid, width, 1, size**2)
        if stride != 1 or in_width != width:
            total += _conv_bn_cost(in_width, width, 1, size**2)
        return total

    def zero_init_last(self) -> None:
        """Start the block as its shortcut (the backbone calls this after initialising)."""
        nn.init.zeros_(self.expand[1].weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(self.middle(F.relu(self.reduce(x))))
        return F.relu(self.shortcut(x) + self.drop_path(out))


class ConvBottleneck(_Bottleneck):
    """A ResNet bottleneck whose 3x3 conv applies the stride."""

    def __init__(
        self, in_width: int, width: int, mid: int, *, stride: int = 1, drop_path: float = 0.0
    ) -> None:
        middle = nn.Sequential(*_conv_bn(mid, mid, 3, stride=stride), nn.ReLU(inplace=True))
        super().__init__(in_width, width, mid, middle, stride, drop_path)

    @classmethod
    def cost(cls, in_width: int, width: int, mid: int, *, stride: int, in_size: int) -> Cost:
        size = math.ceil(in_size / stride)
        middle = _conv_bn_cost(mid, mid, 3, size**2)
        return cls.outer_cost(in_width, width, mid, stride, in_size) + middle


class AttentionBottleneck(_Bottleneck):
    """A bottleneck whose 3x3 conv is ``attention`` (which applies the stride), then BN ->
    ReLU."""

    def __init__(
        self,
        in_width: int,
        width: int,
        mid: int,
        attention: nn.Module,
        *,
        stride: int = 1,
        drop_path: float = 0.0,
    ) -> None:
        middle = nn.Sequential(attention, nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        super().__init__(in_width, width, mid, middle, stride, drop_path)


@shape_cached
def _relative_index(queries: int, window: int, device: torch.device) -> Tensor:
    """(queries, window) index into a (2 window - 1)-row table: key j - query i + window - 1."""
    query = torch.arange(queries, device=device)
    key = torch.arange(window, device=device)
    return key[None, :] - query[:, None] + window - 1


def relative_logits(q: Tensor, height_table: Tensor, width_table: Tensor) -> Tensor:
    """Relative position logits of queries on an (h, w) grid over keys on a (wh, ww) window.

    q: (N, h, w, d); tables (2 wh - 1, d) and (2 ww - 1, d), row ``key - query + window - 1``
    (the Attention Augmented Convolutional Networks' factorisation, as BoTNet's and HaloNet's
    reference code computes it). Returns (N, h * w, wh * ww): query (y, x) against key (ky, kx)
    gets ``q . height_table[ky - y + wh - 1] + q . width_table[kx - x + ww - 1]``.
    """
    n, h, w, _ = q.shape
    wh, ww = (height_table.shape[0] + 1) // 2, (width_table.shape[0] + 1) // 2
    along_w = q @ width_table.transpose(0, 1)  # (N, h, w, 2 ww - 1)
    along_w = along_w.gather(-1, _relative_index(w, ww, q.device).expand(n, h, w, ww))
    along_h = q.transpose(1, 2) @ height_table.transpose(0, 1)  # (N, w, h, 2 wh - 1)
    along_h = along_h.gather(-1, _relative_index(h, wh, q.device).expand(n, w, h, wh))
    logits = along_h.transpose(1, 2)[..., :, None] + along_w[..., None, :]  # (N, h, w, wh, ww)
    return logits.reshape(n, h * w, wh * ww)


def relative_logits_cost(queries: tuple[int, int], window: tuple[int, int], channels: int) -> Cost:
    """MACs of ``relative_logits`` per query grid: both products with the tables, over
    ``channels`` (heads x head width)."""
    (h, w), (wh, ww) = queries, window
    return Cost(0, h * w * ((2 * ww - 1) + (2 * wh - 1)) * channels)


class BottleneckStage(Stage):
    """``depth`` bottlenecks, conv or attention by the options' ``layout``; the first changes
    width and stride. A subclass supplies the attention layer and its cost, its own options
    (a ``BottleneckOptions`` subclass) and its searched choices."""

    options_type: ClassVar[type[BlockOptions]] = BottleneckOptions
    prefix: ClassVar[str]  # of its searched parameters' names: s{stage}_{prefix}_heads ...
    RATIOS: ClassVar[tuple[float, ...]] = (2.0, 4.0)  # searched width / bottleneck width
    HEADS: ClassVar[tuple[int, ...]] = (4, 8)
    SEARCHED_LAYOUTS: ClassVar[tuple[str, ...]] = ("alternate", "attention")
    one_shot = True  # its tensors' sharing is declared (oneshot.supernet)

    @classmethod
    def own_tensors(cls, spec: StageLike) -> dict[str, str]:
        """The norm after a block's middle layer normalises its 3x3 conv or its attention:
        each keeps its own (which blocks attend depends on the layout, the block's parity and a
        one-block stage: ``attends``)."""
        layout, depth = spec.options.layout, spec.depth

        def owner(index: int) -> str:
            return "attends" if attends(layout, index, depth) else "convs"

        return {
            r"blocks\.\d*[02468]\.middle\.1\..+": owner(0),
            r"blocks\.\d*[13579]\.middle\.1\..+": owner(1),
        }

    def __init__(self, plan: StagePlan, drop_path: Sequence[float]) -> None:
        super().__init__()
        spec = plan.spec
        mid = int(spec.width / spec.mlp_ratio)
        blocks = []
        in_width, size = plan.in_width, plan.in_size
        for i, rate in enumerate(drop_path):
            stride = plan.stride if i == 0 else 1
            if attends(spec.options.layout, i, spec.depth):
                attention = self.attention(plan, mid, stride, size)
                block: nn.Module = AttentionBottleneck(
                    in_width, spec.width, mid, attention, stride=stride, drop_path=rate
                )
            else:
                block = ConvBottleneck(in_width, spec.width, mid, stride=stride, drop_path=rate)
            blocks.append(block)
            in_width, size = spec.width, math.ceil(size / stride)
        self.blocks = nn.Sequential(*blocks)

    @classmethod
    def attention(cls, plan: StagePlan, mid: int, stride: int, size: int) -> nn.Module:
        """The attention layer of a block whose input is a ``size`` x ``size`` map."""
        raise NotImplementedError

    @classmethod
    def attention_cost(cls, plan: StagePlan, mid: int, stride: int, size: int) -> Cost:
        """Parameters and MACs of ``attention(plan, mid, stride, size)``."""
        raise NotImplementedError

    @classmethod
    def cost(cls, plan: StagePlan) -> Cost:
        spec = plan.spec
        mid = int(spec.width / spec.mlp_ratio)
        total, in_width, size = Cost(), plan.in_width, plan.in_size
        for i in range(spec.depth):
            stride = plan.stride if i == 0 else 1
            if attends(spec.options.layout, i, spec.depth):
                total += AttentionBottleneck.outer_cost(in_width, spec.width, mid, stride, size)
                total += cls.attention_cost(plan, mid, stride, size) + norm(mid)
            else:
                total += ConvBottleneck.cost(in_width, spec.width, mid, stride=stride, in_size=size)
            in_width, size = spec.width, math.ceil(size / stride)
        return total

    @classmethod
    def draw(cls, trial: TrialLike, stage: int, shared: SharedChoices) -> StageChoice:
        """Heads, the bottleneck ratio, then the layout and the type's own options."""
        name = f"s{stage}_{cls.prefix}"
        heads = trial.suggest_categorical(f"{name}_heads", cls.HEADS)
        ratio = trial.suggest_categorical(f"{name}_ratio", cls.RATIOS)
        layout = trial.suggest_categorical(f"{name}_layout", cls.SEARCHED_LAYOUTS)
        return StageChoice(heads, ratio, cls.draw_own(trial, stage, layout))

    @classmethod
    def draw_own(cls, trial: TrialLike, stage: int, layout: str) -> BlockOptions:
        """The options after the layout (default: the layout alone)."""
        return cls.options_type(layout=layout)

    @classmethod
    def cheapest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        """Heads change no MACs; the floor is taken at depth 1, where every layout attends."""
        return StageChoice(min(cls.HEADS), max(cls.RATIOS), cls.cheapest_options(stage))

    @classmethod
    def costliest(cls, stage: int, shared: SharedChoices) -> StageChoice:
        return StageChoice(max(cls.HEADS), min(cls.RATIOS), cls.costliest_options(stage))

    def forward(self, x: Tensor, tokens: Tensor | None = None) -> tuple[Tensor, None]:
        return self.blocks(x), None
