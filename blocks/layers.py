"""Layers shared by the block families: channel LayerNorm, stochastic depth, stage transitions.

Feature maps are (B, C, H, W) everywhere between modules. Every downsampling layer in the
toolkit maps a side of n pixels to ceil(n / stride), padding where it must, so the feature size of
stage i at input resolution r is ``stage_size(r, i)`` whatever stem or block type is used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks.formulas import Cost, conv, norm

__all__ = [
    "DepthwiseConv2d",
    "DropPath",
    "LayerNorm2d",
    "Transition",
    "drop_path_rates",
    "map_to_tokens",
    "pad_to_multiple",
    "shape_cached",
    "stage_size",
    "tokens_to_map",
    "trunc_normal_init",
]


def stage_size(resolution: int, stage: int) -> int:
    """Side of stage ``stage``'s (0-based) map at input ``resolution``: strides 4, 8, 16, 32."""
    return math.ceil(resolution / 2 ** (stage + 2))


Builder = TypeVar("Builder", bound=Callable[..., Any])


def shape_cached(build: Builder) -> Builder:
    """Cache a builder of tensors that depend only on shapes and device (masks, index tables),
    so that a forward pass builds each once. While ``torch.compile`` or ``torch.export`` traces
    (the ONNX export among them) the builder runs uncached: its tensors are then fake or
    symbolic, and caching them would break every later eager call with those shapes. The
    tensors are built outside inference mode: one built inside it (a latency measurement)
    could not be used by a later training in the same process."""
    cached = functools.lru_cache(maxsize=256)(build)

    @functools.wraps(build)
    def shapes_only(*args: Any) -> Any:
        if torch.compiler.is_compiling():
            return build(*args)
        with torch.inference_mode(False):
            return cached(*args)

    shapes_only.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return shapes_only  # type: ignore[return-value]


def pad_to_multiple(x: Tensor, multiple_h: int, multiple_w: int) -> Tensor:
    """Zero-pad a (B, C, H, W) map on the bottom and right to multiples of the given sides."""
    pad_h = -x.shape[-2] % multiple_h
    pad_w = -x.shape[-1] % multiple_w
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return x


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.flatten(2).transpose(1, 2)


def tokens_to_map(x: Tensor, height: int, width: int) -> Tensor:
    """(B, H*W, C) -> (B, C, H, W)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], height, width)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _TinyDepthwise(torch.autograd.Function):
    """A depthwise convolution (stride 1, zero padding ``padding``) whose backward is written
    out: the input's gradient is the convolution of the output's gradient with the flipped
    kernel, the kernel's gradient one product-sum per tap. Same arithmetic as the library's;
    used where oneDNN's depthwise backward is slow (maps no larger than twice the padding)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        pad, kernel, channels = ctx.padding, weight.shape[-1], x.shape[1]
        grad_x = F.conv2d(
            grad, weight.flip(-1, -2), None, padding=kernel - 1 - pad, groups=channels
        )
        padded, (h, w) = F.pad(x, (pad, pad, pad, pad)), grad.shape[-2:]
        taps = [
            (grad * padded[:, :, i : i + h, j : j + w]).sum(dim=(0, 2, 3))
            for i in range(kernel)
            for j in range(kernel)
        ]
        grad_weight = torch.stack(taps, dim=1).view_as(weight)
        grad_bias = grad.sum(dim=(0, 2, 3)) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise k x k convolution that keeps the map's size (padding k // 2).

    On the CPU, maps no larger than twice the padding (2x2 and 1x1 for k = 3: the last stages
    of a small proxy input) train through a written-out backward with the same arithmetic:
    oneDNN's depthwise backward is 10-15x slower there. Everywhere else, and whenever no
    gradient is taken (evaluation, fvcore's trace), it is ``nn.Conv2d``.
    """

    def __init__(self, channels: int, kernel: int = 3, *, bias: bool = True) -> None:
        super().__init__(
            channels, channels, kernel, padding=kernel // 2, groups=channels, bias=bias
        )

    def forward(self, x: Tensor) -> Tensor:
        pad = self.padding[0]
        if (
            x.device.type == "cpu"
            and torch.is_grad_enabled()
            and max(x.shape[-2:]) <= 2 * pad
            and not torch.jit.is_tracing()
        ):
            return _TinyDepthwise.apply(x, self.weight, self.bias, pad)
        return super().forward(x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``rate``."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class Transition(nn.Module):
    """Entry of a transformer stage: conv (kernel, stride) -> LayerNorm, or identity.

    With stride 1 and equal widths it is the identity; with stride 1 and a width change it is a
    1x1 conv. A stride-``s`` conv whose kernel equals its stride (CMT's 2x2 patch aggregation)
    pads odd sides first, and an odd kernel uses padding ``kernel // 2``, so sides become
    ceil(n / s) in both cases.
    """

    def __init__(
        self,
        in_width: int,
        out_width: int,
        *,
        stride: int,
        kernel: int,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if stride == 1:
            kernel = 1
        self.stride = stride
        self.identity = stride == 1 and in_width == out_width
        if self.identity:
            return
        self.pads_input = kernel == stride
        padding = 0 if self.pads_input else kernel // 2
        self.conv = nn.Conv2d(in_width, out_width, kernel, stride=stride, padding=padding)
        self.norm = LayerNorm2d(out_width, eps=eps)

    @staticmethod
    def cost(in_width: int, out_width: int, *, stride: int, kernel: int, pixels: int) -> Cost:
        """Parameters and MACs for an output map of ``pixels`` positions."""
        if stride == 1 and in_width == out_width:
            return Cost()
        return conv(in_width, out_width, 1 if stride == 1 else kernel, pixels) + norm(out_width)

    def forward(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        if self.pads_input:
            x = pad_to_multiple(x, self.stride, self.stride)
        return self.norm(self.conv(x))


def trunc_normal_init(module: nn.Module) -> None:
    """The initialisation the transformer papers share: linear weights N(0, 0.02) truncated,
    convs Kaiming (fan out), biases zero, norms one and zero."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def drop_path_rates(total_rate: float, depths: list[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``total_rate`` over all blocks."""
    count = sum(depths)
    rates = [total_rate * i / max(count - 1, 1) for i in range(count)]
    out, start = [], 0
    for depth in depths:
        out.append(rates[start : start + depth])
        start += depth
    return out
