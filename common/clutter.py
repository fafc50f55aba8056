"""Cluttered, translated digits: one digit placed anywhere on a larger canvas among crops of
other digits (Mnih et al. 2014, "Recurrent Models of Visual Attention", section 4.1).

A canvas is ``side`` x ``side`` pixels. The digit (28 x 28) is placed at a position drawn
uniformly over the canvas; ``pieces`` square crops of ``crop`` x ``crop`` pixels, cut at random
places from other digits of the same pool, are laid at random places; overlaps keep the brighter
pixel. Finding one object among distractors anywhere on the canvas is a task where attention and
convolution differ, and its difficulty is a parameter.

Two parts, so that the same seed gives the same images on every machine and device:
``draw_layout`` draws every random number (positions, crop sources and offsets) on the CPU from
a seeded generator, and ``compose`` writes the canvases with integer indexing alone on any device
(the training device: nothing but the layout crosses from the host). A pool's clutter comes only
from that pool, so a split built from its own digits never shows another split's digit.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import Tensor

from common.fields import check_integer

__all__ = ["Clutter", "Layout", "compose", "draw_layout", "layout_seed"]


@dataclasses.dataclass(frozen=True)
class Clutter:
    """A cluttered task: canvas side, clutter pieces per canvas, crop side, and whether a
    training set's canvases are drawn afresh every epoch (``fresh``) or fixed once."""

    side: int = 60
    pieces: int = 4
    crop: int = 8
    fresh: bool = False

    def __post_init__(self) -> None:
        check_integer("clutter side", self.side, 0)
        check_integer("clutter pieces", self.pieces, 0)
        check_integer("clutter crop", self.crop)

    def check(self, digit_side: int) -> None:
        """Raise ValueError unless the canvas holds a digit and a crop fits in a digit."""
        if self.side < digit_side:
            raise ValueError(
                f"the canvas ({self.side} px) must be at least as large as a digit "
                f"({digit_side} px)"
            )
        if self.crop > digit_side:
            raise ValueError(f"a crop ({self.crop} px) must fit in a digit ({digit_side} px)")

    def __str__(self) -> str:
        return f"{self.side}x{self.pieces}x{self.crop},{'fresh' if self.fresh else 'fixed'}"


class Layout(NamedTuple):
    """Where everything goes on ``n`` canvases (int64 CPU tensors): the digit's top-left corner
    (n, 2); per clutter piece its source digit (n, pieces), the crop's top-left corner in the
    source (n, pieces, 2) and its top-left corner on the canvas (n, pieces, 2)."""

    digit_at: Tensor
    sources: Tensor
    crop_at: Tensor
    piece_at: Tensor


def layout_seed(seed: int, epoch: int | None) -> int:
    """The layout generator's seed for a fixed set (``epoch`` None) or an epoch's fresh draw."""
    return seed if epoch is None else seed * 1_000_003 + epoch + 1


def draw_layout(
    targets: Tensor, pool_size: int, digit_side: int, clutter: Clutter, seed: int
) -> Layout:
    """Draw a layout for canvases of the pool digits ``targets`` (indices into a pool of
    ``pool_size`` digits), on the CPU, from ``seed`` alone. Clutter never comes from the canvas's
    own digit when the pool has another."""
    clutter.check(digit_side)
    generator = torch.Generator().manual_seed(seed)
    n, k = len(targets), clutter.pieces
    span = clutter.side - digit_side + 1
    digit_at = torch.randint(0, span, (n, 2), generator=generator)
    sources = torch.randint(0, max(pool_size - 1, 1), (n, k), generator=generator)
    if pool_size > 1:  # skip the canvas's own digit: indices at or above it move up by one
        sources += (sources >= targets.cpu()[:, None]).long()
    crop_at = torch.randint(0, digit_side - clutter.crop + 1, (n, k, 2), generator=generator)
    piece_at = torch.randint(0, clutter.side - clutter.crop + 1, (n, k, 2), generator=generator)
    return Layout(digit_at, sources, crop_at, piece_at)


def compose(pool: Tensor, targets: Tensor, layout: Layout, clutter: Clutter) -> Tensor:
    """Canvases (n, 1, side, side) uint8 on ``pool``'s device: pool digits (N, 1, d, d) uint8,
    ``targets`` (n,) the digit of each canvas, ``layout`` from ``draw_layout``."""
    device, d, side = pool.device, pool.shape[-1], clutter.side
    layout = Layout(*(part.to(device) for part in layout))
    targets = targets.to(device)
    n = len(targets)
    canvas = torch.zeros(n, side * side, dtype=torch.uint8, device=device)
    _paste(canvas, pool[targets, 0], layout.digit_at, side)
    if clutter.pieces:
        c = clutter.crop
        steps = torch.arange(c, device=device)
        rows = layout.crop_at[..., 0, None] + steps  # (n, k, c)
        cols = layout.crop_at[..., 1, None] + steps
        sources = pool[layout.sources, 0]  # (n, k, d, d)
        crops = sources.gather(2, rows[..., None].expand(-1, -1, -1, d))
        crops = crops.gather(3, cols[..., None, :].expand(-1, -1, c, -1))  # (n, k, c, c)
        for piece in range(clutter.pieces):
            _paste(canvas, crops[:, piece], layout.piece_at[:, piece], side)
    return canvas.view(n, 1, side, side)


def _paste(canvas: Tensor, patches: Tensor, at: Tensor, side: int) -> None:
    """Lay square ``patches`` (n, p, p) on flat canvases (n, side * side) with their top-left
    corners at ``at`` (n, 2), keeping the brighter pixel where they overlap."""
    p = patches.shape[-1]
    steps = torch.arange(p, device=canvas.device)
    rows = at[:, 0, None] + steps  # (n, p)
    cols = at[:, 1, None] + steps
    index = (rows[:, :, None] * side + cols[:, None, :]).reshape(len(canvas), -1)
    canvas.scatter_reduce_(1, index, patches.reshape(len(canvas), -1), "amax")
