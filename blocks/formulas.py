"""Closed-form parameters and MACs of the layers the blocks are made of.

Each stage, stem and head has a ``cost`` method built from these, next to its module, so the
cost of a genotype is a sum of formulas of its configuration and feature sizes, the way the CMT
paper writes 10nd^2(1 + 0.2/k^2) + 2n^2 d/k^2 + 45nd for its block. The formulas follow the
counting convention of ``space.cost.count`` (fvcore): convolutions, linear layers and attention
products count their multiply-accumulates, biases and normalisation count parameters only.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

__all__ = ["Cost", "attention", "conv", "linear", "norm", "per_ratio"]


@dataclasses.dataclass(frozen=True)
class Cost:
    """Parameters and multiply-accumulates (MACs) of one forward pass of one image."""

    params: int = 0
    macs: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)

    def __mul__(self, times: int) -> Cost:
        return Cost(self.params * times, self.macs * times)

    __rmul__ = __mul__


def conv(
    in_ch: int, out_ch: int, kernel: int, out_pixels: int, *, groups: int = 1, bias: bool = True
) -> Cost:
    """A k x k convolution producing ``out_pixels`` positions."""
    weights = out_ch * (in_ch // groups) * kernel * kernel
    return Cost(weights + (out_ch if bias else 0), weights * out_pixels)


def linear(in_features: int, out_features: int, rows: int, *, bias: bool = True) -> Cost:
    """A linear layer applied to ``rows`` tokens."""
    weights = in_features * out_features
    return Cost(weights + (out_features if bias else 0), weights * rows)


def norm(channels: int) -> Cost:
    """An affine LayerNorm, BatchNorm or GroupNorm: parameters only."""
    return Cost(2 * channels, 0)


def attention(queries: int, keys: int, channels: int) -> Cost:
    """q k^T and (attention) v for ``queries`` x ``keys`` over ``channels`` summed over heads."""
    return Cost(0, 2 * queries * keys * channels)


def per_ratio(spec: Any, block_cost: Callable[[float], Cost]) -> Cost:
    """The cost of a stage's blocks, ``block_cost(ratio)`` each, over their MLP ratios
    (``spec.block_ratios``: one ratio, or a pattern repeated over the depth)."""
    total = Cost()
    for ratio, blocks in Counter(spec.block_ratios).items():
        total += block_cost(ratio) * blocks
    return total
