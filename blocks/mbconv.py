"""The parts MaxViT and CoAtNet share: the MBConv block, its squeeze-excitation, the two-conv
stem and TensorFlow's 'same' padding (their block types live in ``blocks/maxvit.py`` and
``blocks/coatnet.py``).

Follows timm's ``MbConvBlock`` and ``Stem`` (``timm/models/maxxvit.py``), whose
``maxvit_tiny_tf_224`` and ``coatnet_0_rw_224`` the presets equal. An MBConv block is

    shortcut(x) + conv3_1x1(SE(norm2(conv2_kxk(norm1(conv1_1x1(down(pre_norm(x))))))))

with a pre-norm BN, a 1x1 expansion -> BN -> act, a 3x3 depthwise conv -> BN -> act, a
squeeze-excitation (before or after that BN) and a 1x1 projection; the shortcut average-pools
2x2 in a stride-2 block and takes a 1x1 conv where the width changes. The two families build it
differently (timm's ``MaxxVitConvCfg``); an ``MBConvStyle`` holds those differences:

- MaxViT (Google's TF code): GELU with the tanh approximation, BN eps 1e-3, expansion from the
  output width, the depthwise conv applies the stride with TF 'same' padding (one pixel on the
  bottom and right of an even map), SE after the BN reducing to a quarter of the output width
  with SiLU, biases on the projection and the shortcut conv;
- CoAtNet as timm first trained it ("rw"): SiLU, BN eps 1e-5, an activation after the pre-norm,
  expansion from the input width, the stride by a 2x2 average pool before the expansion, SE
  between the depthwise conv and its BN reducing to a quarter of the expanded width with ReLU, no
  projection or shortcut biases.

Deviation: a stride-2 average pool over an odd side averages the last row alone (``ceil_mode``);
TF 'same' pooling would pad it with a zero. At even sides (all of the presets') they agree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from blocks.formulas import Cost, conv, norm
from blocks.layers import DepthwiseConv2d, DropPath

__all__ = [
    "ACTIVATIONS",
    "COATNET_RW",
    "MAXVIT_TF",
    "Downsample",
    "MBConv",
    "MBConvStyle",
    "SameConv2d",
    "SqueezeExcite",
    "TwoConvStem",
    "make_divisible",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` to ``value``, raised by one step if that loses more
    than 10% (EfficientNet's and timm's channel rounding)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclasses.dataclass(frozen=True)
class MBConvStyle:
    """How a family builds its MBConv blocks (the fields of timm's ``MaxxVitConvCfg`` in
    which MaxViT and CoAtNet differ)."""

    act: str
    eps: float
    expand_from_input: bool  # expansion (and SE reduction) from the input width, not the output
    pre_norm_act: bool  # an activation after the pre-norm BN
    stride_by_pool: bool  # stride by a 2x2 average pool first, not in the depthwise conv
    se_early: bool  # SE between the depthwise conv and its BN
    se_act: str
    output_bias: bool  # biases on the projection and the shortcut conv
    tf_padding: bool  # TF 'same' padding in strided convs

    def __post_init__(self) -> None:
        for name in ("act", "se_act"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {', '.join(ACTIVATIONS)}")

    def activation(self) -> nn.Module:
        return ACTIVATIONS[self.act]()


MAXVIT_TF = MBConvStyle(
    act="gelu_tanh",
    eps=1e-3,
    expand_from_input=False,
    pre_norm_act=False,
    stride_by_pool=False,
    se_early=False,
    se_act="silu",
    output_bias=True,
    tf_padding=True,
)
COATNET_RW = MBConvStyle(
    act="silu",
    eps=1e-5,
    expand_from_input=True,
    pre_norm_act=True,
    stride_by_pool=True,
    se_early=True,
    se_act="relu",
    output_bias=False,
    tf_padding=False,
)


class SameConv2d(nn.Conv2d):
    """A conv padded as TensorFlow's 'same': output side ceil(n / stride), the odd pixel of
    padding on the bottom and right. At stride 1 (odd kernel) that is padding ``kernel // 2``."""

    def __init__(
        self,
        in_width: int,
        out_width: int,
        kernel: int,
        *,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        padding = kernel // 2 if stride == 1 else 0
        super().__init__(
            in_width, out_width, kernel, stride, padding=padding, groups=groups, bias=bias
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            pads = []
            for side in (x.shape[-1], x.shape[-2]):
                total = max(
                    (math.ceil(side / self.stride[0]) - 1) * self.stride[0]
                    + self.kernel_size[0]
                    - side,
                    0,
                )
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _conv(
    in_width: int,
    out_width: int,
    kernel: int,
    *,
    stride: int,
    tf: bool,
    groups: int = 1,
    bias: bool = True,
) -> nn.Conv2d:
    """A conv with TF 'same' padding (``tf``) or PyTorch's symmetric ``kernel // 2``."""
    if tf:
        return SameConv2d(in_width, out_width, kernel, stride=stride, groups=groups, bias=bias)
    return nn.Conv2d(
        in_width, out_width, kernel, stride, padding=kernel // 2, groups=groups, bias=bias
    )


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(act(fc1(mean of x over the map)))), 1x1 convs with biases."""

    def __init__(self, width: int, reduced: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(width, reduced, 1)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Conv2d(reduced, width, 1)

    @staticmethod
    def cost(width: int, reduced: int) -> Cost:
        return conv(width, reduced, 1, 1) + conv(reduced, width, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * gate.sigmoid()


class Downsample(nn.Module):
    """2x2 average pool when strided, then a 1x1 conv when the width changes (timm's
    ``Downsample2d``, the shortcut of a block that changes the map); the identity otherwise."""

    def __init__(self, in_width: int, width: int, stride: int, *, bias: bool) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.expand = nn.Conv2d(in_width, width, 1, bias=bias) if in_width != width else None

    @staticmethod
    def cost(in_width: int, width: int, pixels: int, *, bias: bool) -> Cost:
        return conv(in_width, width, 1, pixels, bias=bias) if in_width != width else Cost()

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        return x if self.expand is None else self.expand(x)


class MBConv(nn.Module):
    """Pre-norm inverted bottleneck with squeeze-excitation (``MBConvStyle`` says how);
    (B, in_width, H, W) -> (B, width, ceil(H / stride), ceil(W / stride))."""

    def __init__(
        self,
        in_width: int,
        width: int,
        *,
        style: MBConvStyle,
        expansion: float = 4.0,
        stride: int = 1,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.style = style
        mid = self.mid_width(in_width, width, expansion, style)
        self.shortcut = Downsample(in_width, width, stride, bias=style.output_bias)
        self.pre_norm = nn.BatchNorm2d(in_width, eps=style.eps)
        self.pre_act = style.activation() if style.pre_norm_act else nn.Identity()
        pooled = style.stride_by_pool and stride == 2
        self.down = nn.AvgPool2d(2, 2, ceil_mode=True) if pooled else nn.Identity()
        conv_stride = 1 if style.stride_by_pool else stride
        self.conv1_1x1 = nn.Conv2d(in_width, mid, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(mid, eps=style.eps)
        self.conv2_kxk: nn.Conv2d = (
            DepthwiseConv2d(mid, 3, bias=False)
            if conv_stride == 1
            else _conv(mid, mid, 3, stride=conv_stride, tf=style.tf_padding, groups=mid, bias=False)
        )
        self.norm2 = nn.BatchNorm2d(mid, eps=style.eps)
        se = SqueezeExcite(mid, self.se_width(mid, width, style), style.se_act)
        self.se_early = se if style.se_early else None
        self.se = None if style.se_early else se
        self.conv3_1x1 = nn.Conv2d(mid, width, 1, bias=style.output_bias)
        self.act = style.activation()
        self.drop_path = DropPath(drop_path)

    @staticmethod
    def mid_width(in_width: int, width: int, expansion: float, style: MBConvStyle) -> int:
        return make_divisible((in_width if style.expand_from_input else width) * expansion)

    @staticmethod
    def se_width(mid: int, width: int, style: MBConvStyle) -> int:
        return int(0.25 * (mid if style.expand_from_input else width))

    @classmethod
    def cost(
        cls,
        in_width: int,
        width: int,
        *,
        style: MBConvStyle,
        expansion: float,
        stride: int,
        in_size: int,
    ) -> Cost:
        """On an ``in_size`` x ``in_size`` input."""
        size = math.ceil(in_size / stride)
        mid = cls.mid_width(in_width, width, expansion, style)
        expand_pixels = size * size if style.stride_by_pool else in_size * in_size
        return (
            Downsample.cost(in_width, width, size * size, bias=style.output_bias)
            + norm(in_width)
            + conv(in_width, mid, 1, expand_pixels, bias=False)
            + norm(mid)
            + conv(mid, mid, 3, size * size, groups=mid, bias=False)
            + norm(mid)
            + SqueezeExcite.cost(mid, cls.se_width(mid, width, style))
            + conv(mid, width, 1, size * size, bias=style.output_bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = self.shortcut(x)
        x = self.down(self.pre_act(self.pre_norm(x)))
        x = self.act(self.norm1(self.conv1_1x1(x)))
        x = self.conv2_kxk(x)
        if self.se_early is not None:
            x = self.se_early(x)
        x = self.act(self.norm2(x))
        if self.se is not None:
            x = self.se(x)
        return shortcut + self.drop_path(self.conv3_1x1(x))


class TwoConvStem(nn.Module):
    """3x3 conv stride 2 to ``widths[0]`` -> BN -> act -> 3x3 conv to ``widths[1]`` (no norm
    after it: the first block's pre-norm follows); output stride 2 (timm's MaxxVit ``Stem``).
    A subclass sets the widths from the stem width, the style and the biases."""

    stride = 2
    style: MBConvStyle
    bias: bool

    def __init__(self, width: int) -> None:
        super().__init__()
        first, second = self.widths(width)
        tf = self.style.tf_padding
        self.conv1 = _conv(3, first, 3, stride=2, tf=tf, bias=self.bias)
        self.norm1 = nn.BatchNorm2d(first, eps=self.style.eps)
        self.act = self.style.activation()
        self.conv2 = _conv(first, second, 3, stride=1, tf=tf, bias=self.bias)

    @staticmethod
    def widths(width: int) -> tuple[int, int]:
        raise NotImplementedError

    @classmethod
    def cost(cls, width: int, resolution: int) -> Cost:
        first, second = cls.widths(width)
        pixels = math.ceil(resolution / 2) ** 2
        return (
            conv(3, first, 3, pixels, bias=cls.bias)
            + norm(first)
            + conv(first, second, 3, pixels, bias=cls.bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.act(self.norm1(self.conv1(x))))
